//! End to end through the field server (testkit::field): S3's behaviour that
//! moto alone does not show — a bucket in another region than AWS_REGION,
//! 409 ConditionalRequestConflict on conditional writes, transient 5xx and
//! broken responses — with the real git, both formats.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use testkit::error_lines;
use testkit::field::{Fault, FaultAction, RegionAnswer, RequestKind};
use testkit::{FieldServer, TestEnv, Tool};

/// A test environment whose S3 endpoint is a field server.
fn field_env() -> (TestEnv, FieldServer) {
    let env = TestEnv::new();
    let field = FieldServer::start();
    env.set_env("AWS_ENDPOINT_URL", &field.url);
    (env, field)
}

/// A new repository with `origin` at `url`, in the packs format if asked.
fn repo_for(env: &TestEnv, url: &str, packs: bool) -> std::path::PathBuf {
    let repo = env.new_repo("origin");
    env.git(&repo, &["remote", "add", "origin", url]);
    if packs {
        env.git(&repo, &["config", "s3.format", "packs"]);
    }
    repo
}

fn push_clone_ls_remote_in_eu_west_1(packs: bool, answer: RegionAnswer) {
    let (env, field) = field_env();
    field.set_bucket_region(&env.bucket, "eu-west-1");
    field.set_region_answer(answer);
    let url = env.url("far/repo");
    let repo = repo_for(&env, &url, packs);
    // AWS_REGION is us-east-1 (TestEnv): S3 says the bucket is elsewhere.
    env.git(&repo, &["push", "-q", "origin", "main"]);
    assert!(field.counts().region_answers >= 1, "the field server never enforced the region: {:?}", field.counts());
    let marker = if packs { "far/repo/.git-s3/manifest.json" } else { "far/repo/HEAD" };
    assert!(env.keys("far/repo/").iter().any(|k| k == marker), "{:?}", env.keys("far/repo/"));

    // The daemon remembers the bucket's region: no more wrong-region answers.
    field.reset_counts();
    let head = env.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    let ls = env.ls_remote(Tool::Ours, &url);
    assert!(ls.contains(&format!("{head}\trefs/heads/main")), "{ls:?}");
    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    assert_eq!(env.git(&env.path("clone"), &["rev-parse", "HEAD"]).trim(), head);
    let second = env.commit(&repo, "b.txt", "b\n", "second");
    env.git(&repo, &["push", "-q", "origin", "main"]);
    env.git(&env.path("clone"), &["pull", "-q", "--ff-only"]);
    assert_eq!(env.git(&env.path("clone"), &["rev-parse", "HEAD"]).trim(), second);
    let status = env.git_s3(&repo, &["status", "origin"]);
    assert!(status.contains("main"), "{status}");
    assert_eq!(field.counts().region_answers, 0, "{:?}", field.counts());

    // A new daemon (it forgot): found again, from the first answer.
    env.git_s3(&env.work(), &["daemon", "stop"]);
    field.reset_counts();
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{second}\trefs/heads/main")));
    assert!(field.counts().region_answers >= 1);
}

#[test]
fn bundles_remote_in_another_region_permanent_redirect() {
    push_clone_ls_remote_in_eu_west_1(false, RegionAnswer::PermanentRedirect);
}

#[test]
fn bundles_remote_in_another_region_authorization_header_malformed() {
    push_clone_ls_remote_in_eu_west_1(false, RegionAnswer::AuthorizationHeaderMalformed);
}

#[test]
fn packs_remote_in_another_region_permanent_redirect() {
    push_clone_ls_remote_in_eu_west_1(true, RegionAnswer::PermanentRedirect);
}

#[test]
fn packs_remote_in_another_region_authorization_header_malformed() {
    push_clone_ls_remote_in_eu_west_1(true, RegionAnswer::AuthorizationHeaderMalformed);
}

#[test]
fn git_s3_init_and_commands_find_the_region() {
    let (env, field) = field_env();
    field.set_bucket_region(&env.bucket, "ap-southeast-2");
    let url = env.url("init");
    env.git_s3(&env.work(), &["init", "--format", "packs", &url]);
    let repo = repo_for(&env, &url, false);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    assert!(env.keys("init/.git-s3/").iter().any(|k| k.ends_with("manifest.json")));
    let doctor = env.git_s3(&repo, &["doctor", "origin"]);
    assert!(!doctor.contains("PermanentRedirect"), "{doctor}");
    assert!(field.counts().region_answers >= 1);
}

/// Five pushes in a row while 30 % of conditional writes (the bundles lock,
/// the packs manifest, HEAD, completions) get 409 ConditionalRequestConflict.
fn five_pushes_through_conflicts(packs: bool) {
    let (env, field) = field_env();
    let url = env.url("conflicts");
    let repo = repo_for(&env, &url, packs);
    field.set_faults(20261202, vec![Fault::new(FaultAction::Conflict, &[RequestKind::ConditionalPut, RequestKind::Complete], 0.3)]);
    let mut last = String::new();
    for i in 0..5 {
        if i > 0 {
            last = env.commit(&repo, &format!("f{i}.txt"), &format!("{i}\n"), &format!("commit {i}"));
        }
        env.git(&repo, &["push", "-q", "origin", "main"]);
    }
    let c = field.counts();
    assert!(c.faults >= 1, "no conflict was injected: {c:?}");
    assert!(c.of(RequestKind::ConditionalPut) > c.faults, "{c:?}");
    field.clear_faults();
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{last}\trefs/heads/main")));
    assert!(!env.keys("conflicts/").iter().any(|k| k.contains("LOCK#")), "a lock was left behind");
    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    assert_eq!(env.git(&env.path("clone"), &["rev-parse", "HEAD"]).trim(), last);
}

#[test]
fn five_pushes_through_409_conflicts_bundles() {
    five_pushes_through_conflicts(false);
}

#[test]
fn five_pushes_through_409_conflicts_packs() {
    five_pushes_through_conflicts(true);
}

/// 503 SlowDown, 500 InternalError on a share of every request, and
/// responses reset mid-body: pushes, clones and fetches still succeed.
fn transient_faults(packs: bool) {
    use RequestKind::*;
    let (env, field) = field_env();
    let url = env.url("flaky");
    let repo = repo_for(&env, &url, packs);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let all = [List, Get, RangedGet, Head, Put, ConditionalPut, Copy, CreateMultipart, Part, Complete, Delete];
    field.set_faults(
        7,
        vec![
            Fault::new(FaultAction::SlowDown, &all, 0.1),
            Fault::new(FaultAction::InternalError, &all, 0.1),
            Fault::new(FaultAction::ResetMidBody, &[Get, RangedGet, List], 0.2),
        ],
    );
    let mut last = String::new();
    for i in 0..3 {
        last = env.commit(&repo, &format!("t{i}.txt"), &format!("{i}\n"), &format!("t{i}"));
        env.git(&repo, &["push", "-q", "origin", "main"]);
    }
    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    assert_eq!(env.git(&env.path("clone"), &["rev-parse", "HEAD"]).trim(), last);
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{last}\trefs/heads/main")));
    let c = field.counts();
    assert!(c.faults >= 3, "too few faults injected: {c:?}");
}

#[test]
fn transient_faults_are_survived_bundles() {
    transient_faults(false);
}

#[test]
fn transient_faults_are_survived_packs() {
    transient_faults(true);
}

/// The caller's CA bundle and proxy, per command: a daemon serves callers
/// with and without them side by side.
#[test]
fn tls_with_the_callers_ca_bundle_directly_and_through_their_proxy() {
    let env = TestEnv::new();
    let field = FieldServer::start_tls();
    env.set_env("AWS_ENDPOINT_URL", &field.url);
    let ca = field.ca_bundle().unwrap().display().to_string();
    let url = env.url("tls");
    let repo = repo_for(&env, &url, true);

    // No CA bundle: the test CA is unknown; one line that names what was trusted.
    let err = env.git_fail(&repo, &["push", "-q", "origin", "main"]);
    assert!(err.contains("TLS certificate did not verify against the system's trusted CAs"), "{err}");
    assert!(err.lines().filter(|l| l.starts_with("fatal:") || l.starts_with("error:")).count() <= 2, "{err}");

    // AWS_CA_BUNDLE: it works, over TLS.
    env.set_env("AWS_CA_BUNDLE", &ca);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    assert!(field.counts().tls_handshakes >= 1);
    assert_eq!(field.counts().connects, 0);

    // The same daemon, a caller with HTTPS_PROXY: through a CONNECT tunnel.
    env.set_env("HTTPS_PROXY", &field.proxy_url);
    let head = env.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{head}\trefs/heads/main")));
    assert!(field.counts().connects >= 1, "{:?}", field.counts());

    // A proxy that refuses: one line that names it.
    field.set_refuse_proxy(true);
    env.git_s3(&env.work(), &["daemon", "stop"]);
    let err = env.git_fail(&env.work(), &["ls-remote", &url]);
    assert!(err.contains(&format!("the proxy {} did not let the connection to S3 through", field.proxy_url)), "{err}");
    field.set_refuse_proxy(false);

    // Another caller without the proxy, with the CA from its profile's ca_bundle.
    env.set_env("HTTPS_PROXY", "");
    env.set_env("AWS_CA_BUNDLE", "");
    std::fs::create_dir_all(env.home().join(".aws")).unwrap();
    std::fs::write(env.home().join(".aws/config"), format!("[default]\nca_bundle = {ca}\n")).unwrap();
    let connects = field.counts().connects;
    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    assert_eq!(env.git(&env.path("clone"), &["rev-parse", "HEAD"]).trim(), head);
    assert_eq!(field.counts().connects, connects, "no tunnel for a caller without a proxy");

    // A CA bundle that is not the one that signed the endpoint: named.
    let other = testkit::field::TestCa::generate();
    let other_path = other.bundle_path().display().to_string();
    env.set_env("AWS_CA_BUNDLE", &other_path);
    let err = env.git_fail(&env.work(), &["ls-remote", &url]);
    assert!(err.contains(&format!("did not verify against the CA bundle {other_path}")), "{err}");
}

#[test]
fn packs_remote_in_a_new_bucket_of_another_region_temporary_redirect() {
    push_clone_ls_remote_in_eu_west_1(true, RegionAnswer::TemporaryRedirect);
}

/// `503 SlowDown` on every request: the command ends after the caller's
/// `AWS_MAX_ATTEMPTS` per request, with one line naming bucket and key.
#[test]
fn persistent_slowdown_ends_with_one_line_after_bounded_attempts() {
    let (env, field) = field_env();
    let url = env.url("throttled");
    let repo = repo_for(&env, &url, false);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    env.set_env("AWS_MAX_ATTEMPTS", "2");
    field.set_faults(9, vec![Fault::new(FaultAction::SlowDown, testkit::field::ALL_KINDS, 1.0)]);
    field.reset_counts();
    let err = env.git_fail(&env.work(), &["ls-remote", &url]);
    let lines = error_lines(&err);
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("S3 kept throttling requests to s3://")
            && lines[0].contains(&env.bucket)
            && lines[0].contains("throttled/")
            && lines[0].contains("SlowDown"),
        "{err}"
    );
    // The listing, the manifest read and (a bundles remote) the HEAD read,
    // in parallel: two attempts each, nothing more.
    let c = field.counts();
    assert_eq!((c.total(), c.of(RequestKind::List), c.of(RequestKind::Get)), (6, 2, 4), "{c:?}");

    // A push meets it too, and leaves no lock behind.
    let before = env.keys("throttled/");
    env.commit(&repo, "x.txt", "x\n", "x");
    field.reset_counts();
    let err = env.git_fail(&repo, &["push", "-q", "origin", "main"]);
    assert!(err.contains("S3 kept throttling requests to s3://"), "{err}");
    assert!(field.counts().total() <= 2 * 4, "bounded: {:?}", field.counts());
    field.clear_faults();
    assert_eq!(env.keys("throttled/"), before, "a throttled push changed the remote");
}

/// A response that stalls (headers sent, then no body; or no answer at all)
/// is given up after `GIT_S3_READ_TIMEOUT_SECONDS` and sent again; one that
/// always stalls ends with one line.
fn stalls(packs: bool) {
    use std::time::Duration;
    let (env, field) = field_env();
    env.set_env("GIT_S3_READ_TIMEOUT_SECONDS", "1");
    env.set_env("AWS_MAX_ATTEMPTS", "2");
    let url = env.url("stalls");
    let repo = repo_for(&env, &url, packs);
    env.commit(&repo, "big.bin", &"0123456789abcdef".repeat(20_000), "a body worth cutting");
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let head = env.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    let forever = Duration::from_secs(3600);

    // Once each: no answer to the listing, a body that stops halfway (a new
    // daemon with an empty cache, so that the clone downloads).
    std::fs::remove_dir_all(env.dir.path().join("cache")).unwrap();
    env.git_s3(&env.work(), &["daemon", "stop"]);
    field.set_faults(
        12,
        vec![
            Fault::new(FaultAction::NoResponse(forever), &[RequestKind::List], 1.0).times(1),
            Fault::new(FaultAction::Stall(forever), &[RequestKind::Get], 1.0).on_paths_containing(if packs { ".pack" } else { ".bundle" }).times(1),
        ],
    );
    field.reset_counts();
    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    assert_eq!(env.git(&env.path("clone"), &["rev-parse", "HEAD"]).trim(), head);
    let c = field.counts();
    assert_eq!(c.faults, 2, "both stalls happened: {c:?}");
    env.git(&env.path("clone"), &["fsck", "--full", "--no-progress"]);

    // Always no answer: one line, after two attempts of each request.
    field.set_faults(12, vec![Fault::new(FaultAction::NoResponse(forever), testkit::field::ALL_KINDS, 1.0)]);
    field.reset_counts();
    let err = env.git_fail(&env.work(), &["ls-remote", &url]);
    let lines = error_lines(&err);
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("did not answer a request for s3://") && lines[0].contains("GIT_S3_READ_TIMEOUT_SECONDS"), "{err}");
    let c = field.counts();
    // At most two attempts of each: the listing, the manifest and HEAD.
    assert!(c.total() >= 2 && c.of(RequestKind::List) <= 2 && c.of(RequestKind::Get) <= 4, "{c:?}");

    // A body that always stalls: the download is tried a bounded number of times.
    field.set_faults(12, vec![Fault::new(FaultAction::Stall(forever), &[RequestKind::Get, RequestKind::RangedGet], 1.0)]);
    std::fs::remove_dir_all(env.dir.path().join("cache")).unwrap();
    env.git_s3(&env.work(), &["daemon", "stop"]);
    field.reset_counts();
    let err = env.git_fail(&env.work(), &["clone", "-q", &url, "clone2"]);
    assert!(err.contains("broke off") && err.contains("GIT_S3_READ_TIMEOUT_SECONDS"), "{err}");
    assert!(error_lines(&err).len() <= 2, "{err}");
    let gets = field.counts().of(RequestKind::Get) + field.counts().of(RequestKind::RangedGet);
    assert!((2..=5 * 5).contains(&gets), "bounded: {:?}", field.counts());
    assert!(!env.path("clone2").exists(), "a failed clone leaves no directory");
}

#[test]
fn stalled_responses_are_sent_again_and_end_bounded_bundles() {
    stalls(false);
}

#[test]
fn stalled_responses_are_sent_again_and_end_bounded_packs() {
    stalls(true);
}

/// Two remotes through `profile@bucket` URLs, each profile with its own
/// endpoint (one through the field server, one straight to the store): one
/// daemon serves both. The caller's `AWS_ENDPOINT_URL` wins over the
/// profile's, as the AWS SDKs' shared-config standard says.
#[test]
fn profile_endpoints_select_the_store_per_remote() {
    let env = TestEnv::new();
    let field = FieldServer::start();
    env.set_env("AWS_ENDPOINT_URL", "");
    env.set_env("AWS_ACCESS_KEY_ID", "");
    env.set_env("AWS_SECRET_ACCESS_KEY", "");
    std::fs::create_dir_all(env.home().join(".aws")).unwrap();
    let direct = testkit::endpoint();
    std::fs::write(
        env.home().join(".aws/config"),
        format!(
            "[profile direct]\nregion = us-east-1\naws_access_key_id = test\naws_secret_access_key = test\nendpoint_url = {direct}\n\n\
             [profile far]\nregion = us-east-1\naws_access_key_id = test\naws_secret_access_key = test\n\
             endpoint_url = http://127.0.0.1:9\nservices = field-s3\n\n\
             [services field-s3]\ns3 =\n  endpoint_url = {}\n",
            field.url
        ),
    )
    .unwrap();
    let near_url = format!("s3://direct@{}/near", env.bucket);
    let far_url = format!("s3://far@{}/far", env.bucket);
    let near = env.new_repo("near");
    env.git(&near, &["remote", "add", "origin", &near_url]);
    env.git(&near, &["push", "-q", "origin", "main"]);
    assert_eq!(field.counts().total(), 0, "the direct profile went through the field server");
    let far = env.new_repo("far");
    env.git(&far, &["remote", "add", "origin", &far_url]);
    env.git(&far, &["config", "s3.format", "packs"]);
    env.git(&far, &["push", "-q", "origin", "main"]);
    assert!(field.counts().total() > 0, "the services section's endpoint was not used");
    assert!(env.keys("far/").iter().any(|k| k.ends_with("manifest.json")));
    assert!(env.keys("near/").iter().any(|k| k == "near/HEAD"));

    // The same daemon, both remotes again.
    field.reset_counts();
    let head = env.git(&near, &["rev-parse", "HEAD"]).trim().to_string();
    assert!(env.ls_remote(Tool::Ours, &near_url).contains(&format!("{head}\trefs/heads/main")));
    assert_eq!(field.counts().total(), 0);
    assert!(env.ls_remote(Tool::Ours, &far_url).iter().any(|l| l.ends_with("refs/heads/main")));
    assert!(field.counts().total() > 0);

    // AWS_ENDPOINT_URL in the caller's environment beats the profile's.
    env.set_env("AWS_ENDPOINT_URL", &field.url);
    field.reset_counts();
    assert!(env.ls_remote(Tool::Ours, &near_url).contains(&format!("{head}\trefs/heads/main")));
    assert!(field.counts().total() > 0, "the environment's endpoint did not win");
    // AWS_ENDPOINT_URL_S3 beats AWS_ENDPOINT_URL: a dead one fails, naming the endpoint problem.
    env.set_env("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9");
    env.set_env("AWS_MAX_ATTEMPTS", "1");
    let err = env.git_fail(&env.work(), &["ls-remote", &near_url]);
    assert!(err.contains("cannot connect to the S3 endpoint"), "{err}");
}
