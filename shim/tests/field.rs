//! End to end through the field server (testkit::field): S3's behaviour that
//! moto alone does not show — a bucket in another region than AWS_REGION,
//! 409 ConditionalRequestConflict on conditional writes, transient 5xx and
//! broken responses — with the real git, both formats.

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
    field.set_faults(
        20261202,
        vec![Fault::new(FaultAction::Conflict, &[RequestKind::ConditionalPut, RequestKind::Complete], 0.3)],
    );
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
