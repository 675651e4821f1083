//! End to end, issue 22's second slice: `git s3 migrate --encrypt-to` of a
//! plaintext packs remote with history, branches, tags, views and retired
//! packs, and `--decrypt` back; a crash at each step of either, then the
//! rerun; concurrent pushes kept; the bundles format refused; `git s3 gc`
//! (full, and the background geometric gc after pushes), `git s3 doctor`
//! and `git s3 status` on an encrypted remote.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::TestEnv;
use testkit::{error_lines, keygen, kms_key, objects, require_test_hooks, wait_for_objects};

const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// A repository with known secrets: two branches with history, an
/// annotated and a lightweight tag, an author address. Returns it and the
/// strings that must not be in an encrypted bucket (every object id too).
fn secret_repo(env: &TestEnv, url: &str) -> (PathBuf, Vec<String>) {
    let repo = env.path("secret");
    std::fs::create_dir_all(&repo).unwrap();
    env.git(&repo, &["init", "-q", "-b", "main"]);
    env.git(&repo, &["config", "user.email", "sekrit.author@example.org"]);
    env.git(&repo, &["remote", "add", "origin", url]);
    env.commit(&repo, "codes.txt", "launch codes: TOP-SECRET-CONTENT-7f3a9c\n", "Confidential commit message MSG-QUUX-42");
    env.commit(&repo, "plan.txt", "the plan PLAN-XYZZY-1\n", "second message MSG-FROB-43");
    env.git(&repo, &["checkout", "-q", "-b", "feature/hidden-branch-name"]);
    env.commit(&repo, "more.txt", "more secret text MORE-SECRET-99\n", "branch message MSG-ZORK-44");
    env.git(&repo, &["checkout", "-q", "main"]);
    env.git(&repo, &["tag", "-a", "release-hidden-tag", "-m", "tag message TAGMSG-55"]);
    env.git(&repo, &["tag", "lightweight-hidden-tag"]);
    let mut needles: Vec<String> = [
        "TOP-SECRET-CONTENT-7f3a9c",
        "PLAN-XYZZY-1",
        "MORE-SECRET-99",
        "MSG-QUUX-42",
        "MSG-FROB-43",
        "MSG-ZORK-44",
        "TAGMSG-55",
        "sekrit.author@example.org",
        "hidden-branch-name",
        "release-hidden-tag",
        "lightweight-hidden-tag",
        "refs/heads/main",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let ids = env.git(&repo, &["rev-list", "--objects", "--all"]);
    needles.extend(ids.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string));
    (repo, needles)
}

/// The needles found in any object's key or bytes: (needle, key).
fn found_in(needles: &[String], objs: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for n in needles {
        for (key, data) in objs {
            if key.contains(n.as_str()) || data.windows(n.len()).any(|w| w == n.as_bytes()) {
                found.push((n.clone(), key.clone()));
            }
        }
    }
    found
}

/// The bucket under `prefix` is an encrypted remote's: every object an age
/// file named `keyring`, `manifest.json` or 64 hex digits (no plaintext
/// pack, `.idx`, zip), and none of `needles` anywhere.
fn assert_encrypted_only(env: &TestEnv, prefix: &str, needles: &[String]) {
    let objs = objects(env, prefix);
    for (key, data) in &objs {
        assert!(data.starts_with(AGE_MAGIC), "{key} is not an age file");
        let leaf = key.rsplit('/').next().unwrap();
        assert!(leaf == "keyring" || leaf == "manifest.json" || (leaf.len() == 64 && leaf.chars().all(|c| c.is_ascii_hexdigit())), "{key}");
    }
    let found = found_in(needles, &objs);
    assert!(found.is_empty(), "the encrypted bucket reveals: {found:?}");
}

/// The refs (branches and tags) of `repo`, as `for-each-ref` prints them.
fn local_refs(env: &TestEnv, repo: &Path) -> String {
    env.git(repo, &["for-each-ref", "--format=%(refname) %(objectname)", "refs/heads", "refs/tags"])
}

/// `git ls-remote` of `url`, sorted (refs only).
fn remote_refs(env: &TestEnv, url: &str) -> Vec<String> {
    let mut v: Vec<String> = env.git(&env.work(), &["ls-remote", url]).lines().filter(|l| !l.ends_with("\tHEAD")).map(str::to_string).collect();
    v.sort();
    v
}

/// A fresh clone of `url` into `name`, every ref fetched, checked by fsck;
/// its refs must be `want`'s.
fn clone_and_check(env: &TestEnv, url: &str, name: &str, want: &Path) {
    env.git(&env.work(), &["clone", "-q", "--mirror", url, name]);
    let dir = env.path(name);
    env.git(&dir, &["fsck", "--full", "--no-progress"]);
    assert_eq!(local_refs(env, &dir), local_refs(env, want), "{name}: the clone's refs");
}

/// `git s3 status --json <url>`'s remote part.
fn status(env: &TestEnv, url: &str) -> Value {
    let doc: Value = serde_json::from_str(&env.git_s3(&env.work(), &["status", "--json", url])).unwrap();
    doc["remote"].clone()
}

/// A plaintext packs remote at `prefix` holding the secret repository in
/// three pushes, compacted once in between (so it has views and retired
/// packs, all plaintext). Returns the repository and the needles.
fn plaintext_remote(env: &TestEnv, prefix: &str) -> (String, PathBuf, Vec<String>) {
    let url = env.url(prefix);
    env.git_s3(&env.work(), &["init", "--format", "packs", &url]);
    let (repo, needles) = secret_repo(env, &url);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    env.git(&repo, &["push", "-q", "origin", "feature/hidden-branch-name", "--tags"]);
    wait_for_objects(env, prefix, 5);
    env.git_s3(&env.work(), &["gc", &url]);
    env.commit(&repo, "codes.txt", "new codes NEWCODE-31337\n", "third message MSG-GRUE-45");
    let before = objects(env, prefix).len();
    env.git(&repo, &["push", "-q", "origin", "main"]);
    wait_for_objects(env, prefix, before + 2);
    (url, repo, needles)
}

/// Encrypt a plaintext remote with history, branches, tags, views and
/// retired packs: nothing of it is left in plaintext, a clone with the
/// identity has every ref and passes fsck, another identity is refused,
/// status says who it is encrypted to. Then decrypt it: a reader with no
/// identity at all, in a fresh daemon, clones it; the manifest is JSON and
/// the packs are `pack-<hash>.pack` again.
#[test]
fn migrate_encrypts_a_plaintext_remote_and_decrypts_it_back() {
    let env = TestEnv::new();
    let recipient = keygen(&env, None);
    let (url, repo, needles) = plaintext_remote(&env, "m");
    let control = found_in(&needles, &objects(&env, "m"));
    assert!(control.iter().any(|f| f.0 == "hidden-branch-name"), "the scan finds the plaintext: {control:?}");
    let plain_keys = env.keys("m/.git-s3/packs/");
    assert!(plain_keys.len() >= 8, "packs, views and retired packs before: {plain_keys:?}");

    let out = env.git_s3(&env.work(), &["migrate", "--encrypt-to", &recipient, &url]);
    eprintln!("{out}");
    assert!(out.contains("encrypted it to 1 recipient"), "{out}");
    assert_encrypted_only(&env, "m", &needles);
    clone_and_check(&env, &url, "c1", &repo);
    let st = status(&env, &url);
    assert_eq!(st["encryption"]["recipients"], 1, "{st}");
    let text = env.git_s3(&env.work(), &["status", &url]);
    assert!(text.contains("encrypted to 1 recipient"), "{text}");

    // Someone else's identity: one line, nothing cloned.
    let other = env.dir.path().join("other-identities");
    let mut c = env.command("git-s3", &env.work());
    c.args(["keygen"]).env("GIT_S3_IDENTITIES", &other);
    env.run(c);
    let mut c = env.command("git", &env.work());
    c.args(["clone", &url, "refused"]).env("GIT_S3_IDENTITIES", &other);
    let stderr = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    assert_eq!(error_lines(&stderr).len(), 1, "{stderr}");
    assert!(stderr.contains("is encrypted to 1 recipient"), "{stderr}");

    // A push after the migration is encrypted too.
    env.commit(&repo, "after.txt", "after AFTER-ENCRYPT-77\n", "after message MSG-AFTER-46");
    let before = objects(&env, "m").len();
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let mut more = needles.clone();
    more.extend(["AFTER-ENCRYPT-77".to_string(), "MSG-AFTER-46".to_string()]);
    wait_for_objects(&env, "m", before + 2);
    assert_encrypted_only(&env, "m", &more);

    // Back to plaintext.
    let out = env.git_s3(&env.work(), &["migrate", "--decrypt", &url]);
    eprintln!("{out}");
    assert!(out.contains("decrypted it"), "{out}");
    for (key, data) in objects(&env, "m") {
        assert!(!data.starts_with(AGE_MAGIC), "{key} is still an age file");
        let leaf = key.rsplit('/').next().unwrap();
        assert!(leaf == "manifest.json" || leaf.starts_with("pack-"), "{key}");
    }
    let m: Value = serde_json::from_slice(&env.get_object("m/.git-s3/manifest.json")).unwrap();
    for p in m["packs"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        assert!(env.get_object(&format!("m/.git-s3/packs/pack-{name}.pack")).starts_with(b"PACK"));
    }
    // The daemon that had the key open reads it as plaintext now, and so
    // does a fresh one for a reader with no identities at all. (c1
    // remembers the remote encrypted and refuses it until told: see
    // encryption_trust.rs.)
    env.git_fail(&env.path("c1"), &["fetch", "-q", "origin"]);
    env.git(&env.path("c1"), &["config", "--unset", "remote.origin.s3-keyring"]);
    env.git(&env.path("c1"), &["fetch", "-q", "origin"]);
    env.git_s3(&env.work(), &["daemon", "restart"]);
    env.set_env("GIT_S3_IDENTITIES", &env.dir.path().join("none").display().to_string());
    clone_and_check(&env, &url, "c2", &repo);
    assert!(status(&env, &url)["encryption"].is_null());
    // Run again: nothing to do, said so.
    let mut c = env.command("git-s3", &env.work());
    c.args(["migrate", "--decrypt", &url]);
    let stderr = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    assert!(stderr.contains("is not encrypted"), "{stderr}");
}

/// The bundles format stays plaintext: `migrate --encrypt-to` of a bundles
/// remote is refused in one line that says to migrate to packs first, and
/// so is an `--encrypt-to` that leaves out every identity of the caller.
#[test]
fn migrate_encrypt_to_refuses_bundles_and_recipients_without_the_caller() {
    let env = TestEnv::new();
    let recipient = keygen(&env, None);
    let url = env.url("b");
    let repo = env.new_repo("r");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let mut c = env.command("git-s3", &env.work());
    c.args(["migrate", "--encrypt-to", &recipient, &url]);
    let stderr = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("git s3 migrate --to packs"), "{stderr}");
    assert!(!env.keys("b/").iter().any(|k| k.contains(".git-s3")), "nothing written");

    let url = env.url("p");
    env.git_s3(&env.work(), &["init", "--format", "packs", &url]);
    env.git(&repo, &["push", "-q", &url, "main"]);
    let someone = env.dir.path().join("someone");
    let mut c = env.command("git-s3", &env.work());
    c.args(["keygen"]).env("GIT_S3_IDENTITIES", &someone);
    let theirs = String::from_utf8_lossy(&env.run(c).stdout).trim().to_string();
    let mut c = env.command("git-s3", &env.work());
    c.args(["migrate", "--encrypt-to", &theirs, &url]);
    let stderr = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    assert!(stderr.contains("include your own"), "{stderr}");
    assert!(!env.keys("p/").iter().any(|k| k.ends_with("keyring")), "{:?}", env.keys("p/"));
    clone_and_check(&env, &url, "still-plain", &repo);
}

/// `migrate --encrypt-to kms:<key>` on moto's KMS: the keyring is wrapped
/// with the KMS key alone, so a caller with no age identity but AWS access
/// to the key migrates, clones and pushes; `keyring.kms` names the key. A
/// key KMS does not know is refused in one line, nothing written.
#[test]
fn migrate_encrypt_to_a_kms_key() {
    let env = TestEnv::new();
    // KMS at moto itself (a field server in front of S3 serves no KMS).
    env.set_env("AWS_ENDPOINT_URL_KMS", testkit::endpoint());
    env.set_env("GIT_S3_IDENTITIES", &env.dir.path().join("no-identities").display().to_string());
    let url = env.url("k");
    env.git_s3(&env.work(), &["init", "--format", "packs", &url]);
    let repo = env.new_repo("r");
    env.git(&repo, &["push", "-q", &url, "main"]);

    let mut c = env.command("git-s3", &env.work());
    c.args(["migrate", "--encrypt-to", "kms:no-such-key", &url]);
    let stderr = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("KMS key no-such-key") && errors[0].contains("kms:Encrypt"), "{stderr}");
    assert!(!env.keys("k/").iter().any(|k| k.contains("keyring")), "nothing written: {:?}", env.keys("k/"));

    let key = kms_key();
    let out = env.git_s3(&env.work(), &["migrate", "--encrypt-to", &format!("kms:{key}"), &url]);
    assert!(out.contains("encrypted it to 0 recipients and 1 KMS key"), "{out}");
    let file: Value = serde_json::from_slice(&env.get_object("k/.git-s3/keyring.kms")).unwrap();
    assert_eq!(file["keys"][0]["key_id"].as_str().unwrap(), key, "{file}");
    assert!(env.get_object("k/.git-s3/manifest.json").starts_with(AGE_MAGIC));
    assert!(!env.keys("k/").iter().any(|k| k.contains("pack-")), "plaintext packs left: {:?}", env.keys("k/"));
    clone_and_check(&env, &url, "kms-clone", &repo);
    env.commit(&repo, "after.txt", "after the migration\n", "after");
    env.git(&repo, &["push", "-q", &url, "main"]);
    clone_and_check(&env, &url, "kms-clone-2", &repo);
}

/// A crash at each step of `migrate --encrypt-to` and `--decrypt` (after a
/// first object copied; after the manifest's switch): the remote still
/// clones (as it was before the switch, as it became after), a push made
/// meanwhile is kept, and a rerun finishes the job.
#[test]
fn a_crash_during_migrate_encrypt_to_or_decrypt_is_finished_by_a_rerun() {
    let env = TestEnv::new();
    require_test_hooks(&env);
    let recipient = keygen(&env, None);
    let (url, repo, needles) = plaintext_remote(&env, "k");
    // Each rerun leaves the remote in the other form: the next point starts from it.
    for (point, args) in [
        ("encrypt-copied", vec!["--encrypt-to", recipient.as_str()]),
        ("decrypt-copied", vec!["--decrypt"]),
        ("encrypt-switched", vec!["--encrypt-to", recipient.as_str()]),
        ("decrypt-switched", vec!["--decrypt"]),
    ] {
        // Run from the repository (its remote `origin`), which follows the
        // migrations (encryption_trust.rs), even an interrupted decrypt.
        let mut c = env.command("git-s3", &repo);
        c.env("GIT_S3_TEST_CRASH_DURING_MIGRATE", point).arg("migrate").args(&args).arg("origin");
        env.run_fail(c);
        // Readable, and a push lands (in the form the manifest has).
        clone_and_check(&env, &url, &format!("after-{point}"), &repo);
        // Before the switch (and after a decrypt's), doctor names the unfinished migration.
        if point != "encrypt-switched" && point != "decrypt-copied" {
            let doc: Value = serde_json::from_str(&env.git_s3(&env.work(), &["doctor", "--json", &url])).unwrap();
            let kinds: Vec<&str> = doc["issues"].as_array().unwrap().iter().filter_map(|i| i["kind"].as_str()).collect();
            assert!(kinds.contains(&"unfinished_crypt_migration"), "{point}: {doc}");
        }
        env.commit(&repo, &format!("{point}.txt"), &format!("{point}\n"), point);
        let before = objects(&env, "k").len();
        env.git(&repo, &["push", "-q", "origin", "main"]);
        // (its `.idx` is uploaded after git's answer)
        wait_for_objects(&env, "k", before + 2);
        let pushed = remote_refs(&env, &url);
        let mut rerun = vec!["migrate"];
        rerun.extend(args.iter().copied());
        rerun.push("origin");
        let out = env.git_s3(&repo, &rerun);
        eprintln!("{point}: rerun: {out}");
        assert_eq!(remote_refs(&env, &url), pushed, "{point}: the push made meanwhile is kept");
        clone_and_check(&env, &url, &format!("rerun-{point}"), &repo);
        if point.starts_with("encrypt") {
            let mut more = needles.clone();
            more.push(point.to_string());
            assert_encrypted_only(&env, "k", &more);
        } else {
            assert!(objects(&env, "k").iter().all(|(k, d)| !d.starts_with(AGE_MAGIC) && !k.ends_with("keyring")), "{point}");
        }
    }
}

/// gc on an encrypted remote: a full gc combines its packs (and writes
/// views, encrypted), a clone still works; the background geometric gc
/// after pushes runs too; gc deletes what it replaced once the grace has
/// passed, and nothing else. doctor reports the remote clean, then
/// catches a deleted pack.
#[test]
fn gc_and_doctor_work_on_an_encrypted_remote() {
    let env = TestEnv::new();
    let recipient = keygen(&env, None);
    let url = env.url("g");
    env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &recipient, &url]);
    let repo = env.new_repo("r");
    env.git(&repo, &["remote", "add", "origin", &url]);
    // A big file: the base pack (and the tips view) are the biggest objects.
    std::fs::write(repo.join("big.bin"), testkit::noise(300_000, 7)).unwrap();
    env.git(&repo, &["add", "big.bin"]);
    env.git(&repo, &["commit", "-q", "-m", "big"]);
    for i in 0..3 {
        env.commit(&repo, &format!("f{i}"), &format!("{i}\n"), &format!("c{i}"));
        env.git(&repo, &["push", "-q", "origin", "main"]);
    }
    wait_for_objects(&env, "g", 2 + 3 * 2);
    assert_eq!(status(&env, &url)["packs"]["count"], 3);
    let doc: Value = serde_json::from_str(&env.git_s3(&env.work(), &["doctor", "--json", &url])).unwrap();
    assert_eq!(doc["issues"].as_array().map(Vec::len), Some(0), "{doc}");

    let out = env.git_s3(&env.work(), &["gc", &url]);
    assert!(out.contains("Combined 3 packs"), "{out}");
    assert_eq!(status(&env, &url)["packs"]["count"], 1);
    clone_and_check(&env, &url, "c1", &repo);
    env.git(&env.work(), &["clone", "-q", "--depth", "1", &url, "shallow"]);
    // The replaced packs go once their grace is over; the live ones stay.
    let out = env.git_s3(&env.work(), &["gc", "--grace-seconds", "0", &url]);
    assert!(out.contains("Deleted"), "{out}");
    assert_encrypted_only(&env, "g", &[]);
    clone_and_check(&env, &url, "c2", &repo);
    let doc: Value = serde_json::from_str(&env.git_s3(&env.work(), &["doctor", "--json", &url])).unwrap();
    assert_eq!(doc["issues"].as_array().map(Vec::len), Some(0), "{doc}");

    // The background geometric gc after pushes.
    let push = |repo: &Path| {
        let mut c = env.command("git", repo);
        c.env("GIT_S3_GC_AUTO_PACKS", "3").args(["push", "-q", "origin", "main"]);
        env.run(c);
    };
    for i in 0..2 {
        env.commit(&repo, &format!("b{i}"), &format!("{i}\n"), &format!("b{i}"));
        push(&repo);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&env, &url)["packs"]["count"] != 2 {
        assert!(Instant::now() < deadline, "no background gc: {}", status(&env, &url));
        std::thread::sleep(Duration::from_millis(200));
    }
    clone_and_check(&env, &url, "c3", &repo);

    // doctor catches a deleted pack: the objects holding the big file (the
    // base pack, and the tips view) deleted.
    let victims: Vec<String> = objects(&env, "g").into_iter().filter(|(k, d)| k.contains("/packs/") && d.len() > 250_000).map(|(k, _)| k).collect();
    assert!(!victims.is_empty() && victims.len() <= 2, "{victims:?}");
    for v in &victims {
        env.delete_object(v);
    }
    let mut c = env.command("git-s3", &env.work());
    c.args(["doctor", "--json", &url]);
    let out = env.run_fail(c);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let issues = doc["issues"].as_array().cloned().unwrap_or_default();
    assert!(issues.iter().any(|i| i["kind"] == "broken_pack" && i["problem"].as_str().unwrap_or("").contains("is missing")), "{doc}");
    assert!(victims.iter().any(|v| doc.to_string().contains(v.rsplit('/').next().unwrap())), "doctor names the object: {doc}");
}

/// A push that lands while `migrate --encrypt-to` copies (held at a gate
/// before its switch) makes the switch's conditional write fail: the
/// migration copies the push's pack too and switches again, so the push
/// is kept, encrypted, and nothing of it is left in plaintext.
#[test]
fn a_push_during_migrate_encrypt_to_is_kept() {
    let env = TestEnv::new();
    require_test_hooks(&env);
    let recipient = keygen(&env, None);
    let (url, repo, needles) = plaintext_remote(&env, "c");
    let gate = env.path("switch-gate");
    let mut c = env.command("git-s3", &env.work());
    c.env("GIT_S3_TEST_MIGRATE_SWITCH_GATE", &gate).args(["migrate", "--encrypt-to", &recipient, &url]);
    c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let migrate = c.spawn().unwrap();
    let mut waiting = gate.as_os_str().to_owned();
    waiting.push(".waiting");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !Path::new(&waiting).exists() {
        assert!(Instant::now() < deadline, "the migration never reached its switch");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every pack is copied: push now, into the plaintext manifest.
    let sha = env.commit(&repo, "during.txt", "pushed during the migration DURING-MIGRATE-88\n", "during message MSG-DURING-47");
    let before = objects(&env, "c").len();
    env.git(&repo, &["push", "-q", "origin", "main"]);
    wait_for_objects(&env, "c", before + 2);
    std::fs::write(&gate, b"").unwrap();
    let out = migrate.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}");
    assert!(stdout.contains("the manifest changed 1 time(s) meanwhile"), "{stdout}");
    assert!(remote_refs(&env, &url).iter().any(|l| l.starts_with(&sha) && l.ends_with("refs/heads/main")), "the push is kept");
    clone_and_check(&env, &url, "after", &repo);
    let mut more = needles.clone();
    more.extend(["DURING-MIGRATE-88".to_string(), "MSG-DURING-47".to_string(), sha]);
    assert_encrypted_only(&env, "c", &more);
}
