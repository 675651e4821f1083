//! The code path of Amazon S3 itself, with no endpoint override at all: the
//! SDK resolves `https://<bucket>.s3.<region>.amazonaws.com` from the
//! region, addresses the bucket virtual-hosted, and sends its default
//! request checksums (`aws-chunked` bodies with an `x-amz-checksum-*`
//! trailer). The caller's `HTTPS_PROXY` is the field server, which answers
//! as S3 for those names (TLS from the run's CA, `AWS_CA_BUNDLE`) and
//! passes the requests, path style, to moto; its records show what the
//! requests carried and that moto took them.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use testkit::field::AwsRequest;
use testkit::{FieldServer, TestEnv, Tool};

/// No `AWS_ENDPOINT_URL`; the field server as the caller's proxy, its CA
/// as the caller's CA bundle.
fn aws_env() -> (TestEnv, FieldServer) {
    let env = TestEnv::new();
    let field = FieldServer::start_tls();
    env.unset_env("AWS_ENDPOINT_URL");
    env.set_env("HTTPS_PROXY", &field.proxy_url);
    env.set_env("AWS_CA_BUNDLE", &field.ca_bundle().expect("TLS").display().to_string());
    env.set_env("AWS_EC2_METADATA_DISABLED", "true");
    (env, field)
}

/// Every request went to `<bucket>.s3.us-east-1.amazonaws.com` over TLS and
/// was answered with success (or a 404/412/304 the protocol expects); the
/// uploads carried the SDK's default checksums. Returns the uploads.
fn check_aws_requests(env: &TestEnv, field: &FieldServer) -> Vec<AwsRequest> {
    check_aws_requests_to(env, field, &format!("{}.s3.us-east-1.amazonaws.com", env.bucket))
}

/// [`check_aws_requests`], every request to `host`.
fn check_aws_requests_to(env: &TestEnv, field: &FieldServer, host: &str) -> Vec<AwsRequest> {
    let requests = field.aws_requests();
    assert!(!requests.is_empty(), "nothing reached S3's names: {:?}", field.counts());
    // Every connection was a tunnel to S3's names (none straight to the
    // field server's own address).
    let counts = field.counts();
    assert!(counts.connections == counts.connects && counts.proxied == 0, "not all through S3's names: {counts:?}");
    for r in &requests {
        assert!(r.virtual_hosted && r.tls && r.host.trim_end_matches(":443") == host, "{r:?}");
        assert!(r.path.starts_with(&format!("/{}/", env.bucket)), "{r:?}");
        assert!(matches!(r.status, 200 | 204 | 206 | 304 | 404 | 412), "{r:?}");
    }
    let uploads: Vec<AwsRequest> = requests.into_iter().filter(|r| r.method == "PUT").collect();
    for u in &uploads {
        assert!(u.has_checksum(), "an upload without the default checksum: {u:?}");
        assert!(matches!(u.status, 200 | 412), "{u:?}");
    }
    uploads
}

fn push_clone_fetch(packs: bool) {
    let (env, field) = aws_env();
    let url = env.url("aws/repo");
    let (repo, feature) = env.repo_with_branch_and_tags("origin", &url);
    if packs {
        env.git(&repo, &["config", "s3.format", "packs"]);
    }
    env.git(&repo, &["push", "-q", "origin", "main", "feature/x", "--tags"]);
    let uploads = check_aws_requests(&env, &field);
    assert!(field.counts().connects >= 1, "not through CONNECT: {:?}", field.counts());
    assert!(
        uploads.iter().any(|u| u.aws_chunked() && u.content_sha256.as_deref() == Some("STREAMING-UNSIGNED-PAYLOAD-TRAILER")),
        "no aws-chunked upload with a trailing checksum: {uploads:?}"
    );
    // moto decoded the aws-chunked bodies: the objects hold the bytes, not
    // the chunk framing and trailer.
    if !packs {
        assert_eq!(env.get_object("aws/repo/HEAD"), b"refs/heads/main".to_vec());
    }

    field.reset_counts();
    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    let clone = env.path("clone");
    assert_eq!(env.git(&clone, &["rev-parse", "HEAD"]), env.git(&repo, &["rev-parse", "HEAD"]));
    assert_eq!(env.git(&clone, &["rev-parse", "origin/feature/x"]).trim(), feature);
    env.git(&clone, &["fsck", "--full", "--no-progress"]);
    check_aws_requests(&env, &field);

    let second = env.commit(&repo, "b.txt", "b\n", "second");
    env.git(&repo, &["push", "-q", "origin", "main"]);
    field.reset_counts();
    env.git(&clone, &["fetch", "-q", "origin"]);
    assert_eq!(env.git(&clone, &["rev-parse", "origin/main"]).trim(), second);
    let ls = env.ls_remote(Tool::Ours, &url);
    assert!(ls.contains(&format!("{second}\trefs/heads/main")), "{ls:?}");
    check_aws_requests(&env, &field);
}

#[test]
fn push_clone_fetch_on_the_aws_code_path_bundles() {
    push_clone_fetch(false);
}

#[test]
fn push_clone_fetch_on_the_aws_code_path_packs() {
    push_clone_fetch(true);
}

/// The endpoint comes from the region; a bucket in another region than
/// `AWS_REGION` is followed there (S3's 301 with `x-amz-bucket-region`), on
/// that region's own name.
#[test]
fn the_endpoint_follows_the_region_and_the_bucket() {
    let (env, field) = aws_env();
    env.set_env("AWS_REGION", "eu-west-2");
    let url = env.url("aws/regions");
    let repo = env.new_repo("origin");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    check_aws_requests_to(&env, &field, &format!("{}.s3.eu-west-2.amazonaws.com", env.bucket));

    field.set_bucket_region(&env.bucket, "ap-southeast-2");
    field.reset_counts();
    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    let requests = field.aws_requests();
    let (wrong, right): (Vec<_>, Vec<_>) = requests.iter().partition(|r| r.host.starts_with(&format!("{}.s3.eu-west-2.", env.bucket)));
    assert!(!wrong.is_empty() && wrong.iter().all(|r| r.status == 301), "{requests:?}");
    assert!(!right.is_empty(), "{requests:?}");
    for r in right {
        assert!(r.host.trim_end_matches(":443") == format!("{}.s3.ap-southeast-2.amazonaws.com", env.bucket), "{r:?}");
        assert!(matches!(r.status, 200 | 404), "{r:?}");
    }
    assert_eq!(env.git(&env.path("clone"), &["rev-parse", "HEAD"]), env.git(&repo, &["rev-parse", "HEAD"]));
}

/// The profile's `s3 = use_accelerate_endpoint / use_dualstack_endpoint`:
/// `<bucket>.s3-accelerate.dualstack.amazonaws.com`.
#[test]
fn accelerate_and_dualstack_from_the_profile() {
    let (env, field) = aws_env();
    std::fs::create_dir_all(env.home().join(".aws")).unwrap();
    std::fs::write(
        env.home().join(".aws/config"),
        "[default]\nregion = us-east-1\ns3 =\n  use_accelerate_endpoint = true\n  use_dualstack_endpoint = true\n",
    )
    .unwrap();
    let url = env.url("aws/fast");
    let repo = env.new_repo("origin");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    check_aws_requests_to(&env, &field, &format!("{}.s3-accelerate.dualstack.amazonaws.com", env.bucket));
}

/// An LFS round trip on the same path.
#[test]
fn lfs_on_the_aws_code_path() {
    let (env, field) = aws_env();
    env.git(&env.home(), &["lfs", "install", "--skip-repo"]);
    let url = env.url("aws/lfs");
    let repo = env.path("origin");
    std::fs::create_dir_all(&repo).unwrap();
    env.git(&repo, &["init", "-q", "-b", "main"]);
    env.git(&repo, &["lfs", "track", "*.bin"]);
    let big = testkit::noise(300_000, 3);
    std::fs::write(repo.join("a.bin"), &big).unwrap();
    env.commit_all_with_lfs_remote(&repo, "lfs files", &url);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let uploads = check_aws_requests(&env, &field);
    let lfs: Vec<_> = uploads.iter().filter(|u| u.path.contains("/aws/lfs/lfs/")).collect();
    assert_eq!(lfs.len(), 1, "{uploads:?}");
    let lfs_keys = env.keys("aws/lfs/lfs/");
    assert_eq!(lfs_keys.len(), 1, "{lfs_keys:?}");
    assert_eq!(env.get_object(&lfs_keys[0]), big, "moto holds the object's bytes");

    field.reset_counts();
    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    assert_eq!(std::fs::read(env.path("clone").join("a.bin")).unwrap(), big);
    check_aws_requests(&env, &field);
}
