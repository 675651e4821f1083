//! End to end, a repository remembers that its remote is encrypted, and by
//! which key (issue 22, trust on first use): after its first clone, fetch
//! or push, `remote.<name>.s3-keyring` holds the fingerprint of the
//! remote's first key. Someone who can write the bucket and puts a
//! plaintext remote, or one of their own keyring, in its place is refused
//! in one line with nothing fetched; rotations (`revoke --reencrypt`) are
//! not; `git s3 migrate` run from the repository updates what it remembers;
//! a clone told the key to expect (`git clone -c`) checks it too; so do the
//! `git s3` commands given the remote's name (a URL carries no memory).
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::path::{Path, PathBuf};

use testkit::{error_lines, keygen, require_test_hooks, Held};
use testkit::{s3tool, TestEnv};

/// What `repo` remembers of its remote `origin` (None: nothing).
fn remembered(env: &TestEnv, repo: &Path) -> Option<String> {
    let mut c = env.command("git", repo);
    c.args(["config", "--get", "remote.origin.s3-keyring"]);
    let out = c.output().unwrap();
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `git <args>` in `repo` refused in exactly one line: that line.
fn refused(env: &TestEnv, repo: &Path, args: &[&str]) -> String {
    let stderr = env.git_fail(repo, args);
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_string()
}

fn rev(env: &TestEnv, repo: &Path, rev: &str) -> String {
    env.git(repo, &["rev-parse", rev]).trim().to_string()
}

/// Alice's encrypted remote at `prefix` (to her and `others`), pushed from
/// `work/alice` through the remote `origin`: the repository, the URL and
/// Alice's recipient.
fn alice_remote(env: &TestEnv, prefix: &str, others: &[&str]) -> (PathBuf, String, String) {
    let alice = keygen(env, None);
    let url = env.url(prefix);
    let mut init = vec!["init", "--format", "packs", "--encrypt-to", &alice];
    for o in others {
        init.extend(["--encrypt-to", o]);
    }
    init.push(&url);
    env.git_s3(&env.work(), &init);
    let repo = env.new_repo("alice");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    (repo, url, alice)
}

/// Someone who can write the bucket replaces the remote at `prefix` with
/// their own (`init_args` to `git s3 init`), pushed by URL from a
/// repository that remembers nothing: the sha of their `main`.
fn replace_remote(env: &TestEnv, prefix: &str, init_args: &[&str]) -> String {
    for k in env.keys(&format!("{prefix}/")) {
        env.delete_object(&k);
    }
    let url = env.url(prefix);
    let mut init = vec!["init", "--format", "packs"];
    init.extend(init_args);
    init.push(&url);
    env.git_s3(&env.work(), &init);
    let evil = env.new_repo("evil");
    let sha = env.commit(&evil, "README.md", "not alice's\n", "replaced");
    env.git(&evil, &["push", "-q", &url, "main"]);
    sha
}

/// A plaintext remote put in place of the encrypted one: a fetch and a push
/// of the repositories that remember it encrypted are refused in one line
/// that says how to accept it, nothing fetched or pushed; once accepted
/// (`git config --unset`), it fetches.
#[test]
fn a_plaintext_remote_in_place_of_the_encrypted_one_is_refused() {
    let env = TestEnv::new();
    let (repo, url, _) = alice_remote(&env, "swap", &[]);
    let pin = remembered(&env, &repo).expect("the first push remembers the remote's key");
    assert_eq!(pin.len(), 16, "{pin}");
    env.git(&env.work(), &["clone", "-q", &url, "c"]);
    let c = env.path("c");
    assert_eq!(remembered(&env, &c), Some(pin.clone()), "a clone remembers the same key");
    let before = rev(&env, &c, "origin/main");

    let evil = replace_remote(&env, "swap", &[]);
    let line = refused(&env, &c, &["fetch", "-q", "origin"]);
    assert!(line.contains(&format!("{url} is not encrypted, but this repository remembers it encrypted")), "{line}");
    assert!(line.contains("git config --unset remote.origin.s3-keyring"), "{line}");
    assert_eq!(rev(&env, &c, "origin/main"), before, "nothing was fetched");
    env.commit(&repo, "more.txt", "more\n", "more");
    refused(&env, &repo, &["push", "-q", "origin", "main"]);
    assert_eq!(env.git(&env.work(), &["ls-remote", &url, "refs/heads/main"]).split_whitespace().next(), Some(evil.as_str()), "nothing was pushed");

    env.git(&c, &["config", "--unset", "remote.origin.s3-keyring"]);
    env.git(&c, &["fetch", "-q", "origin"]);
    assert_eq!(rev(&env, &c, "origin/main"), evil);
    assert_eq!(remembered(&env, &c), None, "a plaintext remote is not remembered");
}

/// `revoke --reencrypt` drops the remote's first key, yet the keyring keeps
/// its fingerprint: the repositories that remember it fetch as before. A
/// remote of another keyring (made to Alice's public recipient) is refused;
/// accepted by `git config --unset`, it is remembered anew.
#[test]
fn another_keyring_is_refused_and_a_rotation_is_not() {
    let env = TestEnv::new();
    let bob = keygen(&env, Some(&env.dir.path().join("bob")));
    let (repo, url, alice) = alice_remote(&env, "own", &[&bob]);
    env.git(&env.work(), &["clone", "-q", &url, "c"]);
    let c = env.path("c");
    let pin = remembered(&env, &c).unwrap();

    env.git_s3(&env.work(), &["access", "revoke", "--reencrypt", &url, &bob]);
    let pushed = env.commit(&repo, "two.txt", "two\n", "after the revoke");
    env.git(&repo, &["push", "-q", "origin", "main"]);
    env.git(&c, &["fetch", "-q", "origin"]);
    assert_eq!(rev(&env, &c, "origin/main"), pushed);
    assert_eq!(remembered(&env, &c), Some(pin.clone()));

    let evil = replace_remote(&env, "own", &["--encrypt-to", &alice]);
    let line = refused(&env, &c, &["fetch", "-q", "origin"]);
    assert!(
        line.contains(&format!("the keyring of {url} is not the one this repository remembers (git config remote.origin.s3-keyring is {pin}")),
        "{line}"
    );
    assert!(line.contains("accept it with `git config --unset remote.origin.s3-keyring`"), "{line}");
    assert_eq!(rev(&env, &c, "origin/main"), pushed, "nothing was fetched");
    // A clone given the key to expect (`-c`, from a repository that has it) refuses too, and leaves nothing.
    let line = refused(&env, &env.work(), &["clone", "-q", "-c", &format!("remote.origin.s3-keyring={pin}"), &url, "c3"]);
    assert!(line.contains("is not the one this repository remembers"), "{line}");
    assert!(!env.path("c3").exists());

    env.git(&c, &["config", "--unset", "remote.origin.s3-keyring"]);
    env.git(&c, &["fetch", "-q", "origin"]);
    assert_eq!(rev(&env, &c, "origin/main"), evil);
    let again = remembered(&env, &c).unwrap();
    assert_ne!(again, pin, "the new keyring is remembered");
}

/// `git s3 migrate --decrypt origin` from the repository forgets the key
/// there (its fetches go on), while another clone refuses the plaintext
/// remote; `--encrypt-to` from the repository remembers the new key.
#[test]
fn migrate_from_the_repository_updates_what_it_remembers() {
    let env = TestEnv::new();
    let (repo, url, _) = alice_remote(&env, "mig", &[]);
    env.git(&env.work(), &["clone", "-q", &url, "c"]);
    let c = env.path("c");
    let pin = remembered(&env, &repo).unwrap();

    env.git_s3(&repo, &["migrate", "--decrypt", "origin"]);
    assert_eq!(remembered(&env, &repo), None);
    env.git(&repo, &["fetch", "-q", "origin"]);
    env.commit(&repo, "p.txt", "plain\n", "plaintext push");
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let line = refused(&env, &c, &["fetch", "-q", "origin"]);
    assert!(line.contains("is not encrypted, but this repository remembers it encrypted"), "{line}");

    let doc: serde_json::Value = serde_json::from_str(&env.git_s3(&env.work(), &["keygen", "--json"])).unwrap();
    let recipient = doc["recipient"].as_str().unwrap().to_string();
    env.git_s3(&repo, &["migrate", "--encrypt-to", &recipient, "origin"]);
    let now = remembered(&env, &repo).expect("--encrypt-to remembers the new key");
    assert_ne!(now, pin);
    env.git(&repo, &["fetch", "-q", "origin"]);
}

/// Key, size and ETag of every object under `prefix/`.
fn etags(env: &TestEnv, prefix: &str) -> String {
    String::from_utf8_lossy(&s3tool(&["list-etags", &env.bucket, &format!("{prefix}/")], None).stdout).into_owned()
}

/// `git s3 <args>` in `repo` refused in exactly one line that contains
/// `expected`, the bucket under `prefix` left exactly as it was.
fn git_s3_refused(env: &TestEnv, repo: &Path, prefix: &str, args: &[&str], expected: &str) {
    let before = etags(env, prefix);
    let mut c = env.command("git-s3", repo);
    c.args(args);
    let stderr = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "git s3 {args:?}: {stderr}");
    assert!(errors[0].contains(expected), "git s3 {args:?}: {stderr}");
    assert_eq!(etags(env, prefix), before, "git s3 {args:?} changed the bucket");
}

/// `git s3 access list|grant`, `gc`, `doctor` and `status` given the name of
/// a remote the repository remembers encrypted work as before (so does
/// `access revoke --reencrypt`, its rotation keeping what is remembered);
/// with another
/// remote's keyring in place of its own (one Alice opens), or a plaintext
/// remote in its place, each is refused in one line, as a fetch is, the
/// bucket untouched. Given the URL, they go on (a URL carries no memory).
#[test]
fn the_git_s3_commands_check_what_the_repository_remembers() {
    let env = TestEnv::new();
    let bob = keygen(&env, Some(&env.dir.path().join("bob")));
    let (repo, url, alice) = alice_remote(&env, "cmd", &[]);
    let pin = remembered(&env, &repo).unwrap();
    let commands: [&[&str]; 5] =
        [&["access", "list", "origin"], &["access", "grant", "origin", &bob], &["gc", "origin"], &["doctor", "origin"], &["status", "origin"]];
    for args in commands {
        env.git_s3(&repo, args);
    }
    // A rotation from the repository keeps what it remembers, and passes.
    env.git_s3(&repo, &["access", "revoke", "--reencrypt", "origin", &bob]);
    assert_eq!(remembered(&env, &repo), Some(pin.clone()));
    env.git_s3(&repo, &["status", "origin"]);

    // Another remote of Alice's: its keyring copied over this one's.
    env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &alice, &env.url("other")]);
    env.copy_object("other/.git-s3/keyring", "cmd/.git-s3/keyring");
    let another = format!("the keyring of {url} is not the one this repository remembers (git config remote.origin.s3-keyring is {pin}");
    for args in commands {
        git_s3_refused(&env, &repo, "cmd", args, &another);
    }

    replace_remote(&env, "cmd", &[]);
    let plaintext = format!("{url} is not encrypted, but this repository remembers it encrypted (git config remote.origin.s3-keyring is {pin})");
    for args in commands {
        git_s3_refused(&env, &repo, "cmd", args, &plaintext);
    }
    let status = env.git_s3(&repo, &["status", &url]);
    assert!(status.contains("packs"), "{status}");
}

/// Another keyring copied in while `git s3 access grant origin` is held
/// between its keyring read and its write (a test gate): the grant's
/// conditional write loses, the keyring it reads again is checked as the
/// first was, and the grant is refused in one line, the swapped keyring
/// left as it is (not re-wrapped to one more recipient).
#[test]
fn a_keyring_swapped_during_a_grant_is_refused() {
    let env = TestEnv::new();
    require_test_hooks(&env);
    let carol = keygen(&env, Some(&env.dir.path().join("carol")));
    let (repo, url, alice) = alice_remote(&env, "race", &[]);
    let pin = remembered(&env, &repo).unwrap();
    env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &alice, &env.url("other")]);
    let mut c = env.command("git-s3", &repo);
    c.args(["access", "grant", "origin", &carol]);
    let running = Held::start(c, "GIT_S3_TEST_KEYRING_WRITE_GATE", env.dir.path().join("keyring-gate"), "the grant");
    env.copy_object("other/.git-s3/keyring", "race/.git-s3/keyring");
    let swapped = etags(&env, "race");
    let out = running.release();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(&format!("the keyring of {url} is not the one this repository remembers (git config remote.origin.s3-keyring is {pin}")),
        "{stderr}"
    );
    assert_eq!(etags(&env, "race"), swapped, "the swapped keyring was rewritten");
}
