//! Git LFS through the field server: a bucket in another region than
//! AWS_REGION, and conflicts on the conditional writes of LFS uploads.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use testkit::field::{Fault, FaultAction, RegionAnswer, RequestKind};
use testkit::{FieldServer, TestEnv};

fn lfs_push_and_clone(packs: bool, answer: RegionAnswer, faults: Vec<Fault>) -> (TestEnv, FieldServer) {
    let env = TestEnv::new();
    env.git(&env.home(), &["lfs", "install", "--skip-repo"]);
    let field = FieldServer::start();
    env.set_env("AWS_ENDPOINT_URL", &field.url);
    field.set_bucket_region(&env.bucket, "eu-west-1");
    field.set_region_answer(answer);
    field.set_faults(11, faults);
    let url = env.url("far/lfs");
    let repo = env.path("origin");
    std::fs::create_dir_all(&repo).unwrap();
    env.git(&repo, &["init", "-q", "-b", "main"]);
    if packs {
        env.git(&repo, &["config", "s3.format", "packs"]);
    }
    env.git(&repo, &["lfs", "track", "*.bin"]);
    std::fs::write(repo.join("a.bin"), b"lfs object a\n").unwrap();
    std::fs::write(repo.join("b.bin"), vec![9u8; 300_000]).unwrap();
    env.commit_all_with_lfs_remote(&repo, "lfs files", &url);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let lfs_keys: Vec<_> = env.keys("far/lfs/lfs/");
    assert_eq!(lfs_keys.len(), 2, "{lfs_keys:?}");

    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    let clone = env.path("clone");
    assert_eq!(std::fs::read(clone.join("a.bin")).unwrap(), b"lfs object a\n");
    assert_eq!(std::fs::read(clone.join("b.bin")).unwrap(), vec![9u8; 300_000]);
    assert!(field.counts().region_answers >= 1, "{:?}", field.counts());
    (env, field)
}

#[test]
fn lfs_with_a_bucket_in_another_region_bundles() {
    lfs_push_and_clone(false, RegionAnswer::PermanentRedirect, Vec::new());
}

#[test]
fn lfs_with_a_bucket_in_another_region_packs() {
    lfs_push_and_clone(true, RegionAnswer::AuthorizationHeaderMalformed, Vec::new());
}

#[test]
fn lfs_through_conflicts_and_slowdown() {
    use RequestKind::*;
    let faults = vec![
        Fault::new(FaultAction::Conflict, &[ConditionalPut, Complete], 0.3),
        Fault::new(FaultAction::SlowDown, &[Put, ConditionalPut, Get, RangedGet, Head, List], 0.2),
    ];
    let (_env, field) = lfs_push_and_clone(true, RegionAnswer::PermanentRedirect, faults);
    assert!(field.counts().faults >= 1, "{:?}", field.counts());
}
