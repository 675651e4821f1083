//! End to end, the integrity of an encrypted packs remote (issue 22 points
//! 5 and 3): an older manifest put back in the bucket is refused by a
//! client that has seen a newer one (also after a daemon restart), while a
//! machine that never saw the newer one gets the old state; two packs'
//! ciphertexts swapped in the bucket are refused before anything is
//! indexed; manifests of different sizes within one bucket of sizes have
//! ciphertexts of equal size.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::path::Path;
use std::time::{Duration, Instant};

use testkit::error_lines;
use testkit::TestEnv;

/// `git s3 keygen`, then `git s3 init --format packs --encrypt-to` at `prefix`: the remote's URL.
fn encrypted_remote(env: &TestEnv, prefix: &str) -> String {
    let recipient = env.git_s3(&env.work(), &["keygen"]).trim().to_string();
    let url = env.url(prefix);
    env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &recipient, &url]);
    url
}

/// The objects under `prefix`/.git-s3/packs/ (a push uploads its `.idx`
/// after answering git: waits until there are `n`).
fn pack_objects(env: &TestEnv, prefix: &str, n: usize) -> Vec<String> {
    let dir = format!("{prefix}/.git-s3/packs/");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let keys: Vec<String> = env.keys(&dir).into_iter().filter(|k| !k.is_empty()).collect();
        if keys.len() >= n {
            assert_eq!(keys.len(), n, "{keys:?}");
            return keys;
        }
        assert!(Instant::now() < deadline, "{dir} holds {keys:?}, expected {n} objects");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn refs(env: &TestEnv, repo: &Path) -> String {
    env.git(repo, &["for-each-ref", "--format=%(refname) %(objectname)"])
}

/// An older manifest put back (its bytes copied with a raw S3 client before
/// the second push) is refused in one line by a client that saw the newer
/// one, the repository's refs unchanged, also after a daemon restart (the
/// serial seen is kept on disk); a machine that never saw the newer one
/// clones the old state (the limit of a per-machine memory).
#[test]
fn an_old_manifest_put_back_is_refused_by_a_client_that_saw_a_newer_one() {
    let env = TestEnv::new();
    let url = encrypted_remote(&env, "rb");
    let manifest = "rb/.git-s3/manifest.json";
    let repo = env.new_repo("r");
    let first = env.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    env.git(&repo, &["push", "-q", &url, "main"]);
    let old = env.get_object(manifest);
    env.git(&env.work(), &["clone", "-q", &url, "c"]);
    let c = env.path("c");
    let second = env.commit(&repo, "f.txt", "two\n", "second");
    env.git(&repo, &["push", "-q", &url, "main"]);
    env.git(&c, &["pull", "-q", "--ff-only"]);
    assert_eq!(env.git(&c, &["rev-parse", "HEAD"]).trim(), second);
    let before = refs(&env, &c);

    env.put_object(manifest, &old);
    let stderr = env.git_fail(&c, &["fetch", "origin"]);
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("is older than one this machine has seen (serial 1 < 2)"), "{stderr}");
    assert!(errors[0].contains("someone put an old manifest back"), "{stderr}");
    eprintln!("rolled back: {}", errors[0]);
    assert_eq!(refs(&env, &c), before, "nothing changed locally");
    // A push on top of the old manifest: refused too.
    env.commit(&repo, "f.txt", "three\n", "third");
    let stderr = env.git_fail(&repo, &["push", &url, "main"]);
    assert!(stderr.contains("is older than one this machine has seen"), "{stderr}");
    assert_eq!(env.get_object(manifest), old, "nothing written over it");

    // The serial seen survives the daemon.
    env.git_s3(&env.work(), &["daemon", "restart"]);
    let stderr = env.git_fail(&c, &["fetch", "origin"]);
    assert!(stderr.contains("is older than one this machine has seen (serial 1 < 2)"), "{stderr}");
    assert_eq!(refs(&env, &c), before);

    // Another machine (a state directory that never saw serial 2): the old state.
    env.git_s3(&env.work(), &["daemon", "stop"]);
    let state = env.dir.path().join("state");
    std::fs::rename(&state, env.dir.path().join("state-seen")).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    env.git(&env.work(), &["clone", "-q", &url, "other"]);
    assert_eq!(env.git(&env.path("other"), &["rev-parse", "HEAD"]).trim(), first);
}

/// Two packs' ciphertexts swapped in the bucket both decrypt (one key):
/// a clone refuses the first one it downloads in one line naming its
/// object and the pack it holds, and leaves nothing.
#[test]
fn swapped_pack_objects_are_refused_before_anything_is_indexed() {
    let env = TestEnv::new();
    let url = encrypted_remote(&env, "sw");
    let repo = env.new_repo("r");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let one = pack_objects(&env, "sw", 2);
    env.commit(&repo, "f.txt", "two\n", "second");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let all = pack_objects(&env, "sw", 4);
    let two: Vec<String> = all.into_iter().filter(|k| !one.contains(k)).collect();
    // Each push's .pack is the smaller of its two objects (an .idx has a
    // 1 KiB fan-out table; these packs hold three objects).
    let pack_of = |keys: &[String]| keys.iter().min_by_key(|k| env.get_object(k).len()).unwrap().clone();
    let (a, b) = (pack_of(&one), pack_of(&two));
    let (da, db) = (env.get_object(&a), env.get_object(&b));
    env.put_object(&a, &db);
    env.put_object(&b, &da);

    // Not from the local cache: downloaded.
    env.git_s3(&env.work(), &["cache", "clear"]);
    let stderr = env.git_fail(&env.work(), &["clone", &url, "c"]);
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("but it holds pack ") && errors[0].contains("objects were swapped or replaced in the bucket"), "{stderr}");
    assert!(errors[0].contains(&a) || errors[0].contains(&b), "names the object: {stderr}");
    eprintln!("swapped: {}", errors[0]);
    assert!(!env.path("c").exists(), "a refused clone leaves nothing");
}

/// The manifest is padded to a bucket of sizes: manifests whose JSON
/// differ in size (no ref and one; two refs and packs and three) have
/// ciphertexts of one size, whatever the size of the random "grease"
/// stanza age puts in each header; and it still reads.
#[test]
fn manifests_of_different_sizes_within_a_bucket_have_equal_ciphertext_sizes() {
    let env = TestEnv::new();
    let url = encrypted_remote(&env, "pad");
    let manifest = "pad/.git-s3/manifest.json";
    let empty = env.get_object(manifest).len();
    let repo = env.new_repo("r");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let one = env.get_object(manifest).len();
    env.git(&repo, &["checkout", "-q", "-b", "feature/some-longer-branch-name"]);
    env.commit(&repo, "f.txt", "two\n", "second");
    env.git(&repo, &["push", "-q", &url, "feature/some-longer-branch-name"]);
    let two = env.get_object(manifest).len();
    env.git(&repo, &["checkout", "-q", "-b", "third"]);
    env.commit(&repo, "g.txt", "three\n", "third");
    env.git(&repo, &["push", "-q", &url, "third"]);
    let three = env.get_object(manifest).len();
    // JSON of ~100 bytes (no ref), ~500 (one ref and pack), ~900 and ~1.3 KiB (two, three), plus age's
    // header of a few hundred bytes: two buckets, each holding two manifests.
    assert_eq!((empty, one, two, three), (1024, 1024, 2048, 2048), "ciphertext sizes of the manifest: 0, 1, 2, 3 refs");
    let listed = env.git(&env.work(), &["ls-remote", &url]);
    assert_eq!(listed.lines().count(), 4, "{listed}");
}
