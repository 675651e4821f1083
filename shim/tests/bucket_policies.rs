//! Bucket policies companies set, end to end: encryption demanded on every
//! write, an integrity header on every upload (Object Lock), requester
//! pays with an expected bucket owner — enforced by the field server
//! (testkit/src/field/policy.rs) in front of the test server, which stores
//! the encryption settings and answers them in HeadObject.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::path::{Path, PathBuf};

use testkit::field::BucketPolicyMode;
use testkit::{s3tool, FieldServer, TestEnv};

const KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/0d1c6a6e-policy-test";
const ZIP_KEY: &str = "arn:aws:kms:us-east-1:111122223333:key/zip-remote";
const OWNER: &str = "111122223333";

fn field_env(mode: BucketPolicyMode) -> (TestEnv, FieldServer) {
    let env = TestEnv::new();
    let field = FieldServer::start();
    field.set_bucket_policy(mode);
    env.set_env("AWS_ENDPOINT_URL", &field.url);
    (env, field)
}

/// (key, x-amz-server-side-encryption, KMS key id, bucket key, size) of
/// every object under `prefix`, from HeadObject.
fn encryption_of(env: &TestEnv, prefix: &str) -> Vec<(String, String, String, String, u64)> {
    let out = s3tool(&["head-sse", &env.bucket, prefix], None);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), f[1].to_string(), f[2].to_string(), f[3].to_string(), f[4].parse().unwrap_or(0))
        })
        .collect()
}

fn assert_all_encrypted(env: &TestEnv, prefix: &str, key_id: &str) -> usize {
    let objects = encryption_of(env, prefix);
    assert!(!objects.is_empty(), "nothing under {prefix}");
    for (key, sse, kms, bucket_key, size) in &objects {
        assert_eq!((sse.as_str(), kms.as_str()), ("aws:kms", key_id), "{key}: {objects:?}");
        // moto keeps no bucket key for a multipart upload (S3 does).
        if *size <= 64 << 20 {
            assert_eq!(bucket_key, "True", "{key}: {objects:?}");
        }
    }
    objects.len()
}

/// 72 MiB that does not compress: past the single-PUT threshold.
fn big_noise() -> Vec<u8> {
    testkit::noise(72 << 20, 7)
}

fn lfs_repo(env: &TestEnv, name: &str, url: &str) -> PathBuf {
    env.git(&env.home(), &["lfs", "install", "--skip-repo"]);
    let repo = env.path(name);
    std::fs::create_dir_all(&repo).unwrap();
    env.git(&repo, &["init", "-q", "-b", "main"]);
    env.git(&repo, &["lfs", "track", "*.bin"]);
    std::fs::write(repo.join("a.bin"), b"lfs object a\n").unwrap();
    std::fs::write(repo.join("b.bin"), vec![9u8; 300_000]).unwrap();
    env.commit_all_with_lfs_remote(&repo, "lfs files", url);
    repo
}

fn check_lfs_clone(env: &TestEnv, clone: &Path) {
    assert_eq!(std::fs::read(clone.join("a.bin")).unwrap(), b"lfs object a\n");
    assert_eq!(std::fs::read(clone.join("b.bin")).unwrap(), vec![9u8; 300_000]);
    let _ = env;
}

/// One `fatal:`/`error:` line that names `setting`, and no SDK dump.
fn assert_one_line_naming(stderr: &str, setting: &str) {
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains(setting)).collect();
    assert_eq!(ours.len(), 1, "one line names {setting}: {stderr}");
    assert!(ours[0].starts_with("fatal: ") || ours[0].starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("ErrorMetadata") && !stderr.contains("raw: Response"), "no SDK dump: {stderr}");
}

#[test]
fn kms_and_integrity_policies_on_every_write_in_both_formats_lfs_zip_and_copies() {
    let (env, _field) = field_env(BucketPolicyMode { require_kms: true, require_integrity: true, ..Default::default() });
    // Without the setting, the policy refuses the first write, in one line.
    let repo = env.new_repo("refused");
    let stderr = env.git_fail(&repo, &["push", &env.url("refused"), "main"]);
    assert_one_line_naming(&stderr, "s3.serverSideEncryption");

    env.git(&env.home(), &["config", "--global", "s3.serverSideEncryption", "aws:kms"]);
    env.git(&env.home(), &["config", "--global", "s3.sseKmsKeyId", KEY]);
    env.git(&env.home(), &["config", "--global", "s3.bucketKeyEnabled", "true"]);

    // A bundle and a pack big enough for multipart, and small objects
    // (HEAD, locks, manifest, .idx), in both formats; a zip for s3+zip
    // with its own key (the per-remote setting wins).
    let repo = env.new_repo("big");
    let data = big_noise();
    std::fs::write(repo.join("blob.bin"), &data).unwrap();
    env.git(&repo, &["add", "blob.bin"]);
    env.git(&repo, &["commit", "-q", "-m", "big"]);
    env.git(&repo, &["remote", "add", "bundles", &env.url("enc/bundles")]);
    env.git(&repo, &["remote", "add", "packs", &env.url("enc/packs")]);
    for (remote, format) in [("bundles", "bundles"), ("packs", "packs")] {
        let mut c = env.command("git", &repo);
        c.env("GIT_REMOTE_S3_VERBOSE", "1").args(["-c", &format!("s3.format={format}"), "push", remote, "main"]);
        let log = String::from_utf8_lossy(&env.run(c).stderr).into_owned();
        assert!(log.matches("git-s3: s3.upload_part").count() >= 5, "{remote}: multipart: {log}");
    }
    let small = env.new_repo("small");
    env.git(&small, &["push", "-q", &env.zip_url("enc/zip"), "main"]);
    env.git(&small, &["remote", "add", "zip", &env.zip_url("enc/zip")]);
    env.git(&small, &["config", "remote.zip.s3SseKmsKeyId", ZIP_KEY]);
    env.commit(&small, "more.txt", "more\n", "more");
    env.git(&small, &["push", "-q", "zip", "main"]);
    env.wait_daemon_idle(std::time::Duration::from_secs(60));

    assert_all_encrypted(&env, "enc/bundles/", KEY);
    assert_all_encrypted(&env, "enc/packs/", KEY);
    // The URL push used the global key; the remote's push its own: both are there.
    let zip = encryption_of(&env, "enc/zip/");
    assert!(zip.iter().any(|o| o.0.ends_with("repo.zip")), "{zip:?}");
    assert!(zip.iter().all(|o| o.1 == "aws:kms" && (o.2 == KEY || o.2 == ZIP_KEY)), "{zip:?}");
    let zip_objects = zip.iter().filter(|o| o.0.ends_with("repo.zip")).collect::<Vec<_>>();
    assert!(zip_objects.iter().all(|o| o.2 == ZIP_KEY), "the last push (remote zip) wrote repo.zip with its key: {zip:?}");

    // LFS objects, through the agent (which knows the remote).
    let lfs = lfs_repo(&env, "lfs", &env.url("enc/lfs"));
    env.git(&lfs, &["push", "-q", "origin", "main"]);
    assert_eq!(assert_all_encrypted(&env, "enc/lfs/lfs/", KEY), 2);
    env.git(&env.work(), &["clone", "-q", &env.url("enc/lfs"), "lfs-clone"]);
    check_lfs_clone(&env, &env.path("lfs-clone"));

    // CopyObject: doctor moves an extra bundle of a ref to a new branch
    // (the bundle of another branch, planted beside main's).
    let first = env.git(&repo, &["rev-parse", "HEAD~1"]).trim().to_string();
    let main = env.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    env.git(&repo, &["push", "-q", "bundles", &format!("{first}:refs/heads/side")]);
    env.copy_object(&format!("enc/bundles/refs/heads/side/{first}.bundle"), &format!("enc/bundles/refs/heads/main/{first}.bundle"));
    env.git_s3(&repo, &["doctor", "bundles", "--yes", "--keep", &main]);
    let moved = encryption_of(&env, "enc/bundles/refs/heads/main_");
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!((moved[0].1.as_str(), moved[0].2.as_str()), ("aws:kms", KEY), "{moved:?}");

    // Both formats clone back through the policy.
    for (remote, name) in [("enc/bundles", "c1"), ("enc/packs", "c2")] {
        env.git(&env.work(), &["clone", "-q", &env.url(remote), name]);
        assert!(std::fs::read(env.path(name).join("blob.bin")).unwrap() == data, "{remote}");
    }
}

#[test]
fn requester_pays_with_an_expected_owner_per_remote() {
    let (env, _field) = field_env(BucketPolicyMode { requester_pays: true, owner: Some(OWNER.into()), ..Default::default() });
    let url = env.url("payer/repo");
    let repo = env.new_repo("payer");
    env.git(&repo, &["remote", "add", "origin", &url]);
    let stderr = env.git_fail(&repo, &["push", "origin", "main"]);
    assert_one_line_naming(&stderr, "s3.requestPayer");

    // Per remote; a wrong owner is refused too.
    env.git(&repo, &["config", "remote.origin.s3RequestPayer", "requester"]);
    env.git(&repo, &["config", "remote.origin.s3ExpectedBucketOwner", "999999999999"]);
    env.git_fail(&repo, &["push", "origin", "main"]);
    env.git(&repo, &["config", "remote.origin.s3ExpectedBucketOwner", OWNER]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    // Settings of another remote do not apply.
    env.git(&repo, &["remote", "add", "other", &url]);
    env.git_fail(&repo, &["ls-remote", "other"]);

    // A clone gets them with -c; `git s3` commands through the remote name.
    let payer = "remote.origin.s3RequestPayer=requester".to_string();
    let owner = format!("remote.origin.s3ExpectedBucketOwner={OWNER}");
    env.git(&env.work(), &["clone", "-q", "-c", &payer, "-c", &owner, &url, "clone"]);
    let clone = env.path("clone");
    assert_eq!(env.git(&clone, &["rev-parse", "HEAD"]), env.git(&repo, &["rev-parse", "HEAD"]));
    let status = env.git_s3(&clone, &["doctor", "origin", "--yes"]);
    assert!(status.contains("HEAD"), "{status}");

    // LFS, through the agent.
    let lfs = lfs_repo(&env, "lfs", &env.url("payer/lfs"));
    env.git(&lfs, &["config", "remote.origin.s3RequestPayer", "requester"]);
    env.git(&lfs, &["config", "remote.origin.s3ExpectedBucketOwner", OWNER]);
    env.git(&lfs, &["push", "-q", "origin", "main"]);
    assert_eq!(env.keys("payer/lfs/lfs/").len(), 2);
    env.git(&env.work(), &["clone", "-q", "-c", &payer, "-c", &owner, &env.url("payer/lfs"), "lfs-clone"]);
    check_lfs_clone(&env, &env.path("lfs-clone"));
}

#[test]
fn a_bad_setting_is_one_line_naming_it() {
    let env = TestEnv::new();
    let repo = env.new_repo("bad");
    env.git(&repo, &["remote", "add", "origin", &env.url("bad")]);
    env.git(&repo, &["config", "remote.origin.s3ServerSideEncryption", "kms"]);
    let stderr = env.git_fail(&repo, &["push", "origin", "main"]);
    assert_one_line_naming(&stderr, "remote.origin.s3ServerSideEncryption");
    assert!(stderr.contains("AES256, aws:kms or aws:kms:dsse"), "{stderr}");
    // Without a policy, AES256 is stored as asked.
    env.git(&repo, &["config", "remote.origin.s3ServerSideEncryption", "AES256"]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let objects = encryption_of(&env, "bad/");
    assert!(objects.len() >= 2 && objects.iter().all(|o| o.1 == "AES256" && o.2 == "-"), "{objects:?}");
}

/// (key, version id, current, marker) under `prefix`.
fn versions_of(env: &TestEnv, prefix: &str) -> Vec<(String, String, bool, bool)> {
    let out = s3tool(&["list-versions", &env.bucket, prefix], None);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), f[1].to_string(), f[2] == "current", f[3] == "marker")
        })
        .collect()
}

#[test]
fn versioned_bucket_locks_leave_no_versions_and_doctor_prunes_the_rest() {
    let env = TestEnv::new();
    s3tool(&["enable-versioning", &env.bucket], None);
    let field = FieldServer::start();
    env.set_env("AWS_ENDPOINT_URL", &field.url);
    // Locks refreshed every second while a slow upload holds them.
    env.set_env("GIT_REMOTE_S3_LOCK_TTL_SECONDS", "3");
    let url = env.url("ver/repo");
    let repo = env.new_repo("ver");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    std::fs::write(repo.join("noise.bin"), testkit::noise(600_000, 3)).unwrap();
    env.git(&repo, &["add", "noise.bin"]);
    env.git(&repo, &["commit", "-q", "-m", "noise"]);
    field.set_bandwidth(Some(150_000));
    field.reset_counts();
    env.git(&repo, &["push", "-q", "origin", "main"]);
    field.set_bandwidth(None);
    let lock_writes = field
        .requests()
        .iter()
        .filter(|r| r.key.as_deref().is_some_and(|k| k.ends_with("LOCK%23.lock") || k.ends_with("LOCK#.lock")) && r.method == "PUT")
        .count();
    assert!(lock_writes >= 2, "the lock was refreshed during the slow push: {lock_writes} writes");
    env.commit(&repo, "c.txt", "c\n", "third");
    env.git(&repo, &["push", "-q", "origin", "main"]);

    // The locks left nothing (no version, no delete marker); the replaced
    // bundles are noncurrent versions.
    let versions = versions_of(&env, "ver/repo/");
    assert!(!versions.iter().any(|v| v.0.ends_with("LOCK#.lock")), "{versions:?}");
    let noncurrent = versions.iter().filter(|v| !v.2).count();
    assert!(noncurrent >= 2, "{versions:?}");
    // What an older client leaves: a lock written and deleted.
    env.put_object("ver/repo/refs/heads/old/LOCK#.lock", b"0.4.2 lock");
    env.delete_object("ver/repo/refs/heads/old/LOCK#.lock");

    let report = env.git_s3(&repo, &["doctor", "origin", "--yes"]);
    assert!(report.contains("noncurrent versions") && report.contains("--prune-versions"), "{report}");
    let current: Vec<_> = versions_of(&env, "ver/repo/").into_iter().filter(|v| v.2 && !v.3).collect();
    let dry = env.git_s3(&repo, &["doctor", "origin", "--yes", "--prune-versions", "--dry-run"]);
    assert!(dry.contains("dry run"), "{dry}");
    assert!(versions_of(&env, "ver/repo/").iter().any(|v| !v.2), "a dry run deletes nothing");

    let pruned = env.git_s3(&repo, &["doctor", "origin", "--yes", "--prune-versions"]);
    assert!(pruned.contains("Deleted"), "{pruned}");
    let after = versions_of(&env, "ver/repo/");
    assert!(after.iter().all(|v| v.2 && !v.3), "only current versions remain: {after:?}");
    assert_eq!(after, current, "current versions untouched");
    let again = env.git_s3(&repo, &["doctor", "origin", "--yes"]);
    assert!(again.contains("No noncurrent versions found."), "{again}");
    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    assert_eq!(env.git(&env.path("clone"), &["rev-parse", "HEAD"]), env.git(&repo, &["rev-parse", "HEAD"]));
}
