//! How bucket names go into requests, as boto3 (and so git-remote-s3 0.4.2)
//! chooses: an S3-compatible store on a named host (`http://minio.internal:9000`)
//! gets path-style requests unless the profile says `addressing_style =
//! virtual`; and listing answers from servers that ignore
//! `encoding-type=url`. Through the field server (it records each request's
//! bucket as the path names it), with the real git.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use testkit::field::RequestKind;
use testkit::{FieldServer, TestEnv, Tool};

/// A test environment whose endpoint is the field server under a host name
/// (not an IP address) that resolves to 127.0.0.1.
fn named_host_env() -> (TestEnv, FieldServer, String) {
    let env = TestEnv::new();
    let field = FieldServer::start();
    let port = field.authority().rsplit_once(':').map(|(_, p)| p.to_string()).expect("port");
    let endpoint = format!("http://{}:{port}", testkit::loopback_host_name());
    env.set_env("AWS_ENDPOINT_URL", &endpoint);
    (env, field, endpoint)
}

/// Every request named the bucket in its path (path style): a
/// virtual-hosted one would have reached the field server as `/key`.
fn all_path_style(env: &TestEnv, field: &FieldServer) {
    let requests = field.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(r.bucket.as_deref(), Some(env.bucket.as_str()), "not path style: {r:?}");
    }
}

fn push_and_clone_on_a_named_host(profile: Option<&str>, packs: bool) {
    let (env, field, endpoint) = named_host_env();
    if let Some(p) = profile {
        std::fs::create_dir_all(env.home().join(".aws")).unwrap();
        std::fs::write(env.home().join(".aws/config"), p).unwrap();
    }
    let url = env.url("named/repo");
    let (repo, feature) = env.repo_with_branch_and_tags("origin", &url);
    if packs {
        env.git(&repo, &["config", "s3.format", "packs"]);
    }
    env.git(&repo, &["push", "-q", "origin", "main", "feature/x"]);
    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    let clone = env.path("clone");
    assert_eq!(env.git(&clone, &["rev-parse", "HEAD"]), env.git(&repo, &["rev-parse", "HEAD"]));
    assert_eq!(env.git(&clone, &["rev-parse", "origin/feature/x"]).trim(), feature);
    let second = env.commit(&repo, "b.txt", "b\n", "second");
    env.git(&repo, &["push", "-q", "origin", "main"]);
    env.git(&clone, &["pull", "-q", "--ff-only"]);
    assert_eq!(env.git(&clone, &["rev-parse", "HEAD"]).trim(), second);
    all_path_style(&env, &field);
    assert!(field.counts().of(RequestKind::List) > 0 && field.counts().of(RequestKind::Get) > 0, "{:?}", field.counts());
    let status = env.git_s3(&repo, &["status", "origin"]);
    assert!(status.contains("main"), "{endpoint}: {status}");
}

/// `AWS_ENDPOINT_URL=http://<host name>:<port>` and nothing else: path style
/// (0.4.2 does the same; virtual-hosted `bucket.<host>` does not resolve).
#[test]
fn a_named_host_endpoint_uses_path_style_bundles() {
    push_and_clone_on_a_named_host(None, false);
}

/// The same with the profile saying so (`s3 =\n  addressing_style = path`).
#[test]
fn a_named_host_endpoint_with_addressing_style_path_packs() {
    push_and_clone_on_a_named_host(Some("[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n"), true);
}

/// `addressing_style = virtual` on a store without wildcard DNS: one line
/// that says to use path style; `GIT_REMOTE_S3_PATH_STYLE=1` wins over the
/// profile.
#[test]
fn virtual_hosted_names_that_do_not_resolve_say_to_use_path_style() {
    let (env, field, _) = named_host_env();
    std::fs::create_dir_all(env.home().join(".aws")).unwrap();
    std::fs::write(env.home().join(".aws/config"), "[default]\ns3 =\n  addressing_style = virtual\n").unwrap();
    env.set_env("AWS_MAX_ATTEMPTS", "1");
    let url = env.url("virtual/repo");
    let repo = env.new_repo("origin");
    env.git(&repo, &["remote", "add", "origin", &url]);
    let err = env.git_fail(&repo, &["push", "-q", "origin", "main"]);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let host = format!("{}.{}", env.bucket, testkit::loopback_host_name());
    assert!(err.contains(&format!("cannot resolve {host}")), "{err}");
    assert!(err.contains("addressing_style = path") && err.contains("GIT_REMOTE_S3_PATH_STYLE=1"), "{err}");
    assert!(lines.iter().filter(|l| l.contains("cannot resolve")).count() == 1 && !err.contains("DispatchFailure"), "{err}");
    assert_eq!(field.counts().total(), 0);

    env.set_env("GIT_REMOTE_S3_PATH_STYLE", "1");
    env.git(&repo, &["push", "-q", "origin", "main"]);
    all_path_style(&env, &field);
}

/// A server that ignores `encoding-type=url` answers with raw keys and no
/// `<EncodingType>`: they are taken as they are (a `+` stays a `+`, `%41`
/// stays `%41`), while answers that say `url` are decoded. In the prefix
/// (every listing) and in a ref name (a bundles key).
/// (The packs format reads its refs from the manifest, by key.)
fn refs_with_percent_and_plus(ignore_encoding: bool, packs: bool) {
    let env = TestEnv::new();
    let field = FieldServer::start();
    env.set_env("AWS_ENDPOINT_URL", &field.url);
    field.set_list_ignores_encoding(ignore_encoding);
    let url = env.url("o+d%41d/repo");
    let repo = env.new_repo("origin");
    env.git(&repo, &["remote", "add", "origin", &url]);
    if packs {
        env.git(&repo, &["config", "s3.format", "packs"]);
    }
    let odd = "refs/heads/a+b%41c%2Bd";
    env.git(&repo, &["branch", "a+b%41c%2Bd"]);
    env.git(&repo, &["push", "-q", "origin", "main", "a+b%41c%2Bd"]);
    let head = env.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    let keys = env.keys("o+d%41d/repo/");
    let marker = if packs { "o+d%41d/repo/.git-s3/manifest.json" } else { "o+d%41d/repo/refs/heads/a+b%41c%2Bd/" };
    assert!(keys.iter().any(|k| k.starts_with(marker)), "{keys:?}");
    field.reset_counts();
    let ls = env.ls_remote(Tool::Ours, &url);
    assert!(ls.contains(&format!("{head}\t{odd}")), "{ls:?}");
    assert!(packs || field.counts().of(RequestKind::List) > 0);
    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    let clone = env.path("clone");
    assert_eq!(env.git(&clone, &["rev-parse", "origin/a+b%41c%2Bd"]).trim(), head);
}

#[test]
fn listing_keys_taken_as_they_are_when_the_server_ignores_encoding_type_bundles() {
    refs_with_percent_and_plus(true, false);
}

#[test]
fn listing_keys_decoded_when_the_answer_says_url_bundles() {
    refs_with_percent_and_plus(false, false);
}

/// A packs remote under such a prefix, both ways.
#[test]
fn a_prefix_with_percent_and_plus_packs() {
    refs_with_percent_and_plus(true, true);
    refs_with_percent_and_plus(false, true);
}
