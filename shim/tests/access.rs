//! End to end, access to an encrypted remote (issue 22 point 4, and KMS
//! wrapping, point 1): `git s3 access list|grant|revoke [--reencrypt]`
//! through the real git, the test S3 server and Debian's `age` CLI (the
//! judge of what a revoked identity can read: it decrypts with the keys
//! that identity once opened); KMS keys made on moto's KMS.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use testkit::TestEnv;
use testkit::{error_lines, keygen, kms_key, require_test_hooks, Held};

/// The keys under `prefix/`.
fn keys(env: &TestEnv, prefix: &str) -> Vec<String> {
    env.keys(&format!("{prefix}/")).into_iter().filter(|k| !k.is_empty()).collect()
}

/// The keys under `prefix/` once it holds `n` objects, exactly `n` (a push uploads its `.idx` after answering git).
fn wait_for_objects(env: &TestEnv, prefix: &str, n: usize) -> Vec<String> {
    let have = testkit::wait_for_objects(env, prefix, n);
    assert_eq!(have.len(), n, "objects under {prefix}: {have:?}");
    have
}

/// Fails unless Debian's `age` is installed (scripts/setup-test-env.sh installs it).
fn age_cli() {
    assert!(
        Command::new("age").arg("--version").output().is_ok(),
        "the `age` command is missing: run scripts/setup-test-env.sh (it installs Debian's age package)"
    );
}

/// Debian's `age -d -i identity` of the object `key`: its plaintext, or None when the identity does not open it.
fn age_d(env: &TestEnv, identity: &Path, key: &str) -> Option<Vec<u8>> {
    let dir = env.dir.path().join("age-d");
    std::fs::create_dir_all(&dir).unwrap();
    let (input, output) = (dir.join("in"), dir.join("out"));
    std::fs::write(&input, env.get_object(key)).unwrap();
    let _ = std::fs::remove_file(&output);
    let o = Command::new("age").arg("-d").arg("-i").arg(identity).arg("-o").arg(&output).arg(&input).output().unwrap();
    o.status.success().then(|| std::fs::read(&output).unwrap())
}

/// The remote key(s) `identity` opens from the keyring, as an identity file (what a person could keep).
fn keep_remote_keys(env: &TestEnv, identity: &Path, keyring: &str, name: &str) -> PathBuf {
    let text = age_d(env, identity, keyring).expect("the identity opens the keyring");
    let path = env.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn access_json(env: &TestEnv, url: &str) -> Value {
    serde_json::from_str(&env.git_s3(&env.work(), &["access", "list", "--json", url])).unwrap()
}

fn refused(env: &TestEnv, c: Command) -> String {
    let stderr = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_string()
}

/// Grant, then the new person clones; revoke rotates the remote key: the
/// revoked person's line refuses them, every object written after the
/// revoke is unreadable with the keys they once opened (which still read
/// the older pack: the control), the remaining person clones everything,
/// and `age` reads keyring → keys → every object after the rotation.
#[test]
fn grant_lets_a_person_clone_and_revoke_rotates_the_key() {
    age_cli();
    let env = TestEnv::new();
    let alice_ids = env.home().join(".config/git-s3/identities");
    let alice = keygen(&env, None);
    let bob_ids = env.dir.path().join("bob-identities");
    let bob = keygen(&env, Some(&bob_ids));
    let url = env.url("team");
    env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &alice, &url]);
    let repo = env.new_repo("r");
    env.commit(&repo, "old.txt", "old secret OLD-SECRET-1\n", "old");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let before = wait_for_objects(&env, "team", 4);

    let bob_git = |args: &[&str]| {
        let mut c = env.command("git", &env.work());
        c.args(args).env("GIT_S3_IDENTITIES", &bob_ids);
        c
    };
    let line = refused(&env, bob_git(&["clone", &url, "bob0"]));
    assert!(line.contains("is encrypted to 1 recipient"), "{line}");

    let out = env.git_s3(&env.work(), &["access", "grant", &url, &bob]);
    assert!(out.contains("Granted") && out.contains(&bob), "{out}");
    // Granting again changes nothing.
    assert!(env.git_s3(&env.work(), &["access", "grant", &url, &bob]).contains("can already read"));
    env.run(bob_git(&["clone", "-q", &url, "bob1"]));
    assert_eq!(std::fs::read_to_string(env.path("bob1").join("old.txt")).unwrap(), "old secret OLD-SECRET-1\n");
    let doc = access_json(&env, &url);
    assert_eq!(doc["recipients"].as_array().unwrap().len(), 2, "{doc}");
    assert_eq!(doc["generation"], 1);
    // What bob could keep: the remote key he opened.
    let bob_kept = keep_remote_keys(&env, &bob_ids, "team/.git-s3/keyring", "bob-kept.key");

    let out = env.git_s3(&env.work(), &["access", "revoke", &url, &bob]);
    assert!(out.contains("generation 2") && out.contains("may have kept copies"), "{out}");
    let doc = access_json(&env, &url);
    assert_eq!(doc["recipients"].as_array().unwrap().iter().map(|r| r["recipient"].as_str().unwrap()).collect::<Vec<_>>(), vec![alice.as_str()]);
    assert_eq!(doc["generation"], 2);
    let gens: Vec<(u64, u64)> =
        doc["generations"].as_array().unwrap().iter().map(|g| (g["generation"].as_u64().unwrap(), g["packs"].as_u64().unwrap())).collect();
    assert_eq!(gens, vec![(2, 0), (1, 1)], "{doc}");
    let line = refused(&env, bob_git(&["ls-remote", &url]));
    assert!(line.contains("none of your identities"), "{line}");

    // A push after the revoke: its pack, .idx and the manifest are unreadable with what bob kept.
    env.commit(&repo, "new.txt", "new secret NEW-SECRET-2\n", "new");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let after = wait_for_objects(&env, "team", 6);
    let new: Vec<&String> = after.iter().filter(|k| !before.contains(k)).collect();
    assert_eq!(new.len(), 2, "{after:?}");
    for key in new.iter().copied().chain(std::iter::once(&"team/.git-s3/manifest.json".to_string())) {
        assert!(age_d(&env, &bob_kept, key).is_none(), "the revoked identity's old key decrypts {key}");
    }
    // The control: the old pack still opens with it (it could read that before).
    let old_packs: Vec<&String> = before.iter().filter(|k| k.contains("/packs/")).collect();
    assert!(old_packs.iter().all(|k| age_d(&env, &bob_kept, k).is_some()));

    // Alice clones everything (from the bucket, not the cache).
    env.git_s3(&env.work(), &["cache", "clear"]);
    env.git(&env.work(), &["clone", "-q", &url, "alice"]);
    let a = env.path("alice");
    assert_eq!(std::fs::read_to_string(a.join("old.txt")).unwrap(), "old secret OLD-SECRET-1\n");
    assert_eq!(std::fs::read_to_string(a.join("new.txt")).unwrap(), "new secret NEW-SECRET-2\n");
    env.git(&a, &["fsck", "--full", "--no-progress"]);

    // The age CLI after the rotation: keyring → both keys → every object; the manifest marks the new pack's generation.
    let remote_keys = keep_remote_keys(&env, &alice_ids, "team/.git-s3/keyring", "alice-remote.key");
    let text = std::fs::read_to_string(&remote_keys).unwrap();
    assert!(text.starts_with("# git-s3 keyring v2\n") && text.contains("# key 2 (current)\n") && text.contains("# key 1\n"), "{text}");
    for key in keys(&env, "team").iter().filter(|k| !k.ends_with("/keyring")) {
        assert!(age_d(&env, &remote_keys, key).is_some(), "age cannot decrypt {key} with the keyring's keys");
    }
    let m: Value = serde_json::from_slice(&age_d(&env, &remote_keys, "team/.git-s3/manifest.json").unwrap()).unwrap();
    let marks: Vec<Option<u64>> = m["packs"].as_array().unwrap().iter().map(|p| p["key"].as_u64()).collect();
    assert_eq!(marks, vec![Some(1), Some(2)], "{m}");
}

/// `revoke --reencrypt`, killed after its manifest swap: readers clone
/// (the manifest names only objects that exist); the rerun finishes; then
/// the old key reads nothing in the bucket, the keyring holds one key, and
/// the remaining person clones everything.
#[test]
fn revoke_reencrypt_leaves_nothing_the_old_key_reads_and_a_rerun_finishes() {
    age_cli();
    let env = TestEnv::new();
    require_test_hooks(&env);
    let alice = keygen(&env, None);
    let bob_ids = env.dir.path().join("bob-identities");
    let bob = keygen(&env, Some(&bob_ids));
    let url = env.url("re");
    env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &alice, "--encrypt-to", &bob, &url]);
    let repo = env.new_repo("r");
    env.git(&repo, &["push", "-q", &url, "main"]);
    env.commit(&repo, "two.txt", "two\n", "two");
    env.git(&repo, &["push", "-q", &url, "main"]);
    wait_for_objects(&env, "re", 6);
    let bob_kept = keep_remote_keys(&env, &bob_ids, "re/.git-s3/keyring", "bob-kept.key");

    let mut c = env.command("git-s3", &env.work());
    c.env("GIT_S3_TEST_CRASH_DURING_REENCRYPT", "1").args(["access", "revoke", "--reencrypt", &url, &bob]);
    env.run_fail(c);
    // Killed after the swap: old and new objects both there; a clone reads the new ones.
    assert_eq!(keys(&env, "re").len(), 10, "{:?}", keys(&env, "re"));
    env.git_s3(&env.work(), &["cache", "clear"]);
    env.git(&env.work(), &["clone", "-q", &url, "during"]);
    env.git(&env.path("during"), &["fsck", "--full", "--no-progress"]);

    let out = env.git_s3(&env.work(), &["access", "revoke", "--reencrypt", &url, &bob]);
    assert!(out.contains("finishing the re-encryption") && out.contains("deleted 4 old objects") && out.contains("dropped 1 older key"), "{out}");
    let left = keys(&env, "re");
    assert_eq!(left.len(), 6, "{left:?}");
    for key in left.iter().filter(|k| !k.ends_with("/keyring")) {
        assert!(age_d(&env, &bob_kept, key).is_none(), "the old key still decrypts {key}");
    }
    let doc = access_json(&env, &url);
    assert_eq!(doc["generations"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["generation"], 2);
    env.git_s3(&env.work(), &["cache", "clear"]);
    env.git(&env.work(), &["clone", "-q", &url, "after"]);
    assert_eq!(std::fs::read_to_string(env.path("after").join("two.txt")).unwrap(), "two\n");
    env.git(&env.path("after"), &["fsck", "--full", "--no-progress"]);
}

/// `--encrypt-to kms:<key>`: a remote initialized with a KMS key only is
/// pushed and cloned by callers with no age identity but AWS access to the
/// key; `access grant kms:…` on an age remote does the same; a bad key id,
/// or a key KMS refuses, is one line naming the key and what to ask for.
#[test]
fn kms_wrapped_keyrings_open_with_aws_access_alone() {
    let env = TestEnv::new();
    // KMS at moto itself (a field server in front of S3 serves no KMS).
    env.set_env("AWS_ENDPOINT_URL_KMS", testkit::endpoint());
    env.set_env("GIT_S3_IDENTITIES", &env.dir.path().join("no-identities").display().to_string());
    let key = kms_key();
    let url = env.url("kms");
    let out = env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &format!("kms:{key}"), &url]);
    assert!(out.contains("and 1 KMS key"), "{out}");
    let file: Value = serde_json::from_slice(&env.get_object("kms/.git-s3/keyring.kms")).unwrap();
    assert_eq!(file["keys"][0]["key_id"].as_str().unwrap(), key);
    let repo = env.new_repo("r");
    env.git(&repo, &["push", "-q", &url, "main"]);
    env.git(&env.work(), &["clone", "-q", &url, "c"]);
    assert_eq!(env.git(&env.path("c"), &["rev-parse", "HEAD"]), env.git(&repo, &["rev-parse", "HEAD"]));
    let doc = access_json(&env, &url);
    assert_eq!(doc["kms"][0]["key_id"].as_str().unwrap(), key, "{doc}");

    // A key id KMS does not know: one line naming it; nothing written.
    let mut c = env.command("git-s3", &env.work());
    c.args(["init", "--format", "packs", "--encrypt-to", "kms:no-such-key", &env.url("bad")]);
    let line = refused(&env, c);
    assert!(line.contains("KMS key no-such-key") && line.contains("kms:Encrypt"), "{line}");
    assert!(keys(&env, "bad").is_empty(), "{:?}", keys(&env, "bad"));

    // An age remote granted to the KMS key: a caller without identities clones.
    let alice_ids = env.dir.path().join("alice");
    let alice = keygen(&env, Some(&alice_ids));
    let url2 = env.url("agekms");
    let mut c = env.command("git-s3", &env.work());
    c.args(["init", "--format", "packs", "--encrypt-to", &alice, &url2]).env("GIT_S3_IDENTITIES", &alice_ids);
    env.run(c);
    let mut c = env.command("git", &repo);
    c.args(["push", "-q", &url2, "main"]).env("GIT_S3_IDENTITIES", &alice_ids);
    env.run(c);
    let mut c = env.command("git-s3", &env.work());
    c.args(["access", "grant", &url2, &format!("kms:{key}")]).env("GIT_S3_IDENTITIES", &alice_ids);
    env.run(c);
    env.git(&env.work(), &["clone", "-q", &url2, "c2"]);

    // KMS refuses (moto answers AccessDenied when the entry names a key
    // other than the ciphertext's, as AWS does without kms:Decrypt): one
    // line that names the key and what to ask for.
    let other = kms_key();
    let text = String::from_utf8(env.get_object("kms/.git-s3/keyring.kms")).unwrap();
    env.put_object("kms/.git-s3/keyring.kms", text.replace(&key, &other).as_bytes());
    let mut c = env.command("git", &env.work());
    c.args(["clone", &url, "c3"]);
    let line = refused(&env, c);
    assert!(line.contains(&format!("KMS key {other} refused Decrypt")) && line.contains("kms:Decrypt"), "{line}");
    eprintln!("refused by KMS: {line}");
    assert!(!env.path("c3").exists());
}

/// The KMS requests that reached `field` (signed for the `kms` service).
fn kms_requests(field: &testkit::FieldServer) -> u64 {
    field.counts().signers.iter().filter(|((service, _), _)| service == "kms").map(|(_, n)| *n).sum()
}

/// A KMS-wrapped keyring asks KMS once per caller: the daemon keeps the
/// caller's KMS client and what `Decrypt` answered (for a bounded time),
/// so two fetches make no KMS request, and another caller's AWS
/// configuration asks KMS itself. The keyring is still read by every
/// command: a key rotated by a revoke is read at once (no KMS request),
/// and a revoked KMS key opens nothing, remembered answer or not. KMS
/// requests counted through a field server in front of moto's KMS.
#[test]
fn kms_is_asked_once_per_caller_and_revokes_still_count() {
    let env = TestEnv::new();
    let field = testkit::FieldServer::start();
    env.set_env("AWS_ENDPOINT_URL_KMS", &field.url);
    env.set_env("GIT_S3_IDENTITIES", &env.dir.path().join("no-identities").display().to_string());
    let key = kms_key();
    let alice_ids = env.dir.path().join("alice");
    let alice = keygen(&env, Some(&alice_ids));
    let bob = keygen(&env, Some(&env.dir.path().join("bob")));
    let url = env.url("warm");
    let as_alice = |program: &str, cwd: &Path, args: &[&str]| {
        let mut c = env.command(program, cwd);
        c.args(args).env("GIT_S3_IDENTITIES", &alice_ids);
        env.run(c);
    };
    as_alice(
        "git-s3",
        &env.work(),
        &["init", "--format", "packs", "--encrypt-to", &alice, "--encrypt-to", &bob, "--encrypt-to", &format!("kms:{key}"), &url],
    );
    let repo = env.new_repo("r");
    let commit = |n: &str| {
        std::fs::write(repo.join(n), n).unwrap();
        env.git(&repo, &["add", n]);
        env.git(&repo, &["commit", "-q", "-m", n]);
        as_alice("git", &repo, &["push", "-q", &url, "main"]);
    };
    as_alice("git", &repo, &["push", "-q", &url, "main"]);
    let before = kms_requests(&field);
    assert_eq!(before, 1, "init's Encrypt");

    // The caller without identities: one Decrypt for the clone and both fetches.
    env.git(&env.work(), &["clone", "-q", &url, "c"]);
    assert_eq!(kms_requests(&field), before + 1, "the clone unwraps the keyring once");
    let clone = env.path("c");
    for n in ["one", "two"] {
        commit(n);
        env.git(&clone, &["fetch", "-q"]);
    }
    assert_eq!(kms_requests(&field), before + 1, "two fetches: no KMS request (the caller's Decrypt answer is remembered)");
    assert_eq!(env.git(&clone, &["rev-parse", "origin/main"]), env.git(&repo, &["rev-parse", "HEAD"]));

    // Another caller's AWS configuration asks KMS itself.
    let mut c = env.command("git", &clone);
    c.args(["fetch", "-q"]).env("AWS_ACCESS_KEY_ID", "another-caller");
    env.run(c);
    assert_eq!(kms_requests(&field), before + 2, "another caller's credentials: its own Decrypt");

    // A revoke rotates the remote key: the new key is read at once, without KMS.
    as_alice("git-s3", &env.work(), &["access", "revoke", &url, &bob]);
    commit("three");
    env.git(&clone, &["fetch", "-q"]);
    assert_eq!(env.git(&clone, &["rev-parse", "origin/main"]), env.git(&repo, &["rev-parse", "HEAD"]), "the rotated key was read");
    assert_eq!(kms_requests(&field), before + 2);

    // The KMS key revoked: refused, whatever this daemon remembers.
    as_alice("git-s3", &env.work(), &["access", "revoke", &url, &format!("kms:{key}")]);
    let mut c = env.command("git", &clone);
    c.args(["fetch", "-q"]);
    let line = refused(&env, c);
    assert!(line.contains("is encrypted to 1 recipient") && line.contains("ask someone with access"), "{line}");
}

/// One-line refusals: a plaintext remote, a recipient that is not one, a
/// revoke of someone not granted, the last recipient, and a caller who
/// cannot open the keyring (nothing changes).
#[test]
fn access_refusals_are_one_line() {
    let env = TestEnv::new();
    let alice = keygen(&env, None);
    let plain = env.url("plain");
    env.git_s3(&env.work(), &["init", "--format", "packs", &plain]);
    let git_s3 = |args: &[&str]| {
        let mut c = env.command("git-s3", &env.work());
        c.args(args);
        c
    };
    let line = refused(&env, git_s3(&["access", "grant", &plain, &alice]));
    assert!(line.contains("is not encrypted"), "{line}");
    let url = env.url("enc");
    env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &alice, &url]);
    let line = refused(&env, git_s3(&["access", "grant", &url, "age1nope"]));
    assert!(line.contains("invalid age recipient 'age1nope'"), "{line}");
    let other_ids = env.dir.path().join("other");
    let other = keygen(&env, Some(&other_ids));
    let line = refused(&env, git_s3(&["access", "revoke", &url, &other]));
    assert!(line.contains("is not a recipient"), "{line}");
    let line = refused(&env, git_s3(&["access", "revoke", &url, &alice]));
    assert!(line.contains("is the last recipient") && line.contains("grant someone else first"), "{line}");
    let before = env.get_object("enc/.git-s3/keyring");
    let mut c = git_s3(&["access", "grant", &url, &other]);
    c.env("GIT_S3_IDENTITIES", &other_ids);
    let line = refused(&env, c);
    assert!(line.contains("is encrypted to 1 recipient") && line.contains("none of your identities"), "{line}");
    assert_eq!(env.get_object("enc/.git-s3/keyring"), before, "a refused grant writes nothing");
}

/// A keyring written before rotation existed (version 1: one key, no
/// `# key N` lines) still opens: the remote clones, and the first grant
/// rewrites it as version 2 with that key as generation 1.
#[test]
fn a_version_1_keyring_opens_and_a_grant_rewrites_it_as_version_2() {
    age_cli();
    let env = TestEnv::new();
    let alice_ids = env.home().join(".config/git-s3/identities");
    let alice = keygen(&env, None);
    let url = env.url("v1");
    env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &alice, &url]);
    let repo = env.new_repo("r");
    env.git(&repo, &["push", "-q", &url, "main"]);
    // The keyring as the first slice wrote it, encrypted by Debian's age.
    let text = String::from_utf8(age_d(&env, &alice_ids, "v1/.git-s3/keyring").unwrap()).unwrap();
    let secret = text.lines().find(|l| l.starts_with("AGE-SECRET-KEY-1")).unwrap();
    let v1 = env.dir.path().join("v1.txt");
    std::fs::write(&v1, format!("# git-s3 keyring v1\n# recipient: {alice}\n{secret}\n")).unwrap();
    let enc = env.dir.path().join("v1.age");
    let o = Command::new("age").args(["-e", "-r", &alice, "-o"]).arg(&enc).arg(&v1).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    env.put_object("v1/.git-s3/keyring", &std::fs::read(&enc).unwrap());
    env.git_s3(&env.work(), &["daemon", "restart"]);
    env.git_s3(&env.work(), &["cache", "clear"]);
    env.git(&env.work(), &["clone", "-q", &url, "c"]);
    assert_eq!(access_json(&env, &url)["keyring_version"], 1);
    let bob = keygen(&env, Some(&env.dir.path().join("bob")));
    env.git_s3(&env.work(), &["access", "grant", &url, &bob]);
    let doc = access_json(&env, &url);
    assert_eq!((doc["keyring_version"].as_u64(), doc["generation"].as_u64()), (Some(2), Some(1)), "{doc}");
    let text = String::from_utf8(age_d(&env, &alice_ids, "v1/.git-s3/keyring").unwrap()).unwrap();
    assert!(text.starts_with("# git-s3 keyring v2\n") && text.contains(&format!("# key 1 (current)\n{secret}\n")), "{text}");
    env.git(&env.work(), &["clone", "-q", &url, "c2"]);
}

/// Runs `git s3 <held>` held at its keyring write (a test gate) while `git
/// s3 <meanwhile>` edits the keyring, then lets it go on: the held edit's
/// conditional write loses the race. The held command's output.
fn held_at_the_keyring_write(env: &TestEnv, held: &[&str], meanwhile: &[&str]) -> std::process::Output {
    let mut c = env.command("git-s3", &env.work());
    c.args(held);
    let running = Held::start(c, "GIT_S3_TEST_KEYRING_WRITE_GATE", env.dir.path().join("keyring-gate"), &format!("`git s3 {held:?}`"));
    env.git_s3(&env.work(), meanwhile);
    running.release()
}

/// A revoke and a grant at once: the revoke, held between its keyring read
/// and its write, loses the conditional write to the grant, reads the
/// keyring again and re-applies its edit on it: the granted person stays,
/// the revoked one is gone (Debian's `age` no longer opens the keyring with
/// their identity; the granted person's does), and the key was rotated once.
#[test]
fn a_revoke_that_loses_its_race_reapplies_on_the_new_keyring() {
    age_cli();
    let env = TestEnv::new();
    require_test_hooks(&env);
    let alice = keygen(&env, None);
    let bob_ids = env.dir.path().join("bob");
    let bob = keygen(&env, Some(&bob_ids));
    let carol_ids = env.dir.path().join("carol");
    let carol = keygen(&env, Some(&carol_ids));
    let url = env.url("revoke-race");
    env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &alice, "--encrypt-to", &bob, &url]);
    let out = held_at_the_keyring_write(&env, &["access", "revoke", &url, &bob], &["access", "grant", &url, &carol]);
    assert!(out.status.success(), "the held revoke: {}", String::from_utf8_lossy(&out.stderr));
    let doc = access_json(&env, &url);
    let mut got: Vec<&str> = doc["recipients"].as_array().unwrap().iter().map(|r| r["recipient"].as_str().unwrap()).collect();
    got.sort();
    let mut want = vec![alice.as_str(), carol.as_str()];
    want.sort();
    assert_eq!(got, want, "{doc}");
    assert_eq!(doc["generation"].as_u64(), Some(2), "one rotation: {doc}");
    assert!(age_d(&env, &bob_ids, "revoke-race/.git-s3/keyring").is_none(), "the revoked identity still opens the keyring");
    assert!(age_d(&env, &carol_ids, "revoke-race/.git-s3/keyring").is_some(), "the grant made meanwhile was lost");
}

/// Two grants at once: the one held between its keyring read and its
/// write (a test gate) loses the conditional write to the other, reads
/// the keyring again and re-applies its edit: both recipients are granted.
#[test]
fn concurrent_grants_both_land() {
    let env = TestEnv::new();
    require_test_hooks(&env);
    let alice = keygen(&env, None);
    let bob = keygen(&env, Some(&env.dir.path().join("bob")));
    let carol = keygen(&env, Some(&env.dir.path().join("carol")));
    let url = env.url("race");
    env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &alice, &url]);
    let out = held_at_the_keyring_write(&env, &["access", "grant", &url, &bob], &["access", "grant", &url, &carol]);
    assert!(out.status.success(), "the held grant: {}", String::from_utf8_lossy(&out.stderr));
    let doc = access_json(&env, &url);
    let mut got: Vec<&str> = doc["recipients"].as_array().unwrap().iter().map(|r| r["recipient"].as_str().unwrap()).collect();
    got.sort();
    let mut want = vec![alice.as_str(), bob.as_str(), carol.as_str()];
    want.sort();
    assert_eq!(got, want, "{doc}");
}

/// Packs of two key generations (a revoke between two pushes): `git s3 gc`
/// reads each by its own generation and writes the combined pack with the
/// current one (marked so in the manifest, no plaintext object map), doctor
/// finds every object, and `git s3 migrate --decrypt` turns both
/// generations back into plaintext packs that clone.
#[test]
fn gc_doctor_and_decrypt_read_packs_of_every_key_generation() {
    let env = TestEnv::new();
    let alice = keygen(&env, None);
    let bob = keygen(&env, Some(&env.dir.path().join("bob-identities")));
    let url = env.url("gens");
    env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &alice, "--encrypt-to", &bob, &url]);
    let repo = env.new_repo("r");
    env.commit(&repo, "one.txt", "generation one\n", "one");
    env.git(&repo, &["push", "-q", &url, "main"]);
    wait_for_objects(&env, "gens", 4);
    env.git_s3(&env.work(), &["access", "revoke", &url, &bob]);
    env.commit(&repo, "two.txt", "generation two\n", "two");
    env.git(&repo, &["push", "-q", &url, "main"]);
    wait_for_objects(&env, "gens", 6);
    let gens = |doc: &Value| -> Vec<(u64, u64)> {
        doc["generations"].as_array().unwrap().iter().map(|g| (g["generation"].as_u64().unwrap(), g["packs"].as_u64().unwrap())).collect()
    };
    assert_eq!(gens(&access_json(&env, &url)), vec![(2, 1), (1, 1)]);

    let doctor: Value = serde_json::from_str(&env.git_s3(&env.work(), &["doctor", "--json", &url])).unwrap();
    assert_eq!(doctor["issues"].as_array().map(Vec::len), Some(0), "doctor on two generations: {doctor}");
    env.git_s3(&env.work(), &["gc", &url, "--grace-seconds", "0"]);
    assert_eq!(gens(&access_json(&env, &url)), vec![(2, 1), (1, 0)], "gc wrote its pack with the current key");
    let remaining = keys(&env, "gens/.git-s3/packs");
    assert!(remaining.iter().all(|k| !k.ends_with(".map") && !k.contains("/pack-")), "plaintext objects on an encrypted remote: {remaining:?}");
    let doctor: Value = serde_json::from_str(&env.git_s3(&env.work(), &["doctor", "--json", &url])).unwrap();
    assert_eq!(doctor["issues"].as_array().map(Vec::len), Some(0), "doctor after gc: {doctor}");
    env.git_s3(&env.work(), &["cache", "clear"]);
    env.git(&env.work(), &["clone", "-q", &url, "after-gc"]);
    assert_eq!(std::fs::read_to_string(env.path("after-gc/two.txt")).unwrap(), "generation two\n");

    // One more push (generation 2), then back to plaintext: every pack is
    // decrypted with the generation that wrote it.
    env.commit(&repo, "three.txt", "three\n", "three");
    env.git(&repo, &["push", "-q", &url, "main"]);
    env.git_s3(&env.work(), &["migrate", "--decrypt", &url]);
    assert!(keys(&env, "gens/.git-s3/packs").iter().all(|k| k.contains("/pack-")), "plaintext names after --decrypt");
    env.git_s3(&env.work(), &["cache", "clear"]);
    env.git(&env.work(), &["clone", "-q", &url, "plain"]);
    let p = env.path("plain");
    assert_eq!(std::fs::read_to_string(p.join("one.txt")).unwrap(), "generation one\n");
    assert_eq!(std::fs::read_to_string(p.join("three.txt")).unwrap(), "three\n");
    env.git(&p, &["fsck", "--full", "--no-progress"]);
}
