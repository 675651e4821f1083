//! End to end, LFS objects on an encrypted packs remote (issue 22) through
//! the real git, git-lfs and the test S3 server: every object in the bucket
//! scanned for the LFS files' contents and oids; the one-step clone with the
//! right identity; `git lfs pull` with another identity refused in one line,
//! nothing written; Debian's `age` decrypts an LFS object with the remote
//! key; a tampered or swapped object refused, nothing written; LFS-only in
//! an encrypted prefix with the code on another host.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::TestEnv;
use testkit::{keygen, objects};

const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// A TestEnv whose user has run `git lfs install` once and has an identity; its recipient.
fn lfs_env() -> (TestEnv, String) {
    let env = TestEnv::new();
    env.git(&env.home(), &["lfs", "install", "--skip-repo"]);
    let recipient = keygen(&env, None);
    (env, recipient)
}

/// `git s3 init --format packs --encrypt-to <recipient>` of `prefix`; its URL.
fn encrypted_remote(env: &TestEnv, recipient: &str, prefix: &str) -> String {
    let url = env.url(prefix);
    let out = env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", recipient, &url]);
    assert!(out.contains("encrypted to 1 recipient"), "{out}");
    url
}

/// `len` bytes of text that repeat `marker` (so a scan can find them, in any window).
fn marked(marker: &str, len: usize) -> Vec<u8> {
    let line = format!("{marker} lfs content line\n");
    line.as_bytes().iter().copied().cycle().take(len).collect()
}

/// A repository at `work/<name>` tracking `*.bin` with LFS, `files` committed,
/// `origin` = `url`, git-lfs-s3 installed.
fn lfs_repo(env: &TestEnv, name: &str, url: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let repo = env.path(name);
    std::fs::create_dir_all(&repo).unwrap();
    env.git(&repo, &["init", "-q", "-b", "main"]);
    env.git(&repo, &["lfs", "track", "*.bin"]);
    for (f, data) in files {
        std::fs::write(repo.join(f), data).unwrap();
    }
    env.commit_all_with_lfs_remote(&repo, "lfs files", url);
    repo
}

fn oid_of(env: &TestEnv, repo: &Path, file: &str) -> String {
    env.git(repo, &["lfs", "ls-files", "-l"])
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            let oid = it.next()?;
            let _marker = it.next()?;
            (it.next()? == file).then(|| oid.to_string())
        })
        .unwrap_or_else(|| panic!("{file} is not an LFS file"))
}

/// The objects under `<prefix>/.git-s3/lfs/`.
fn lfs_objects(env: &TestEnv, prefix: &str) -> Vec<(String, Vec<u8>)> {
    objects(env, &format!("{prefix}/.git-s3/lfs"))
}

/// Fails unless Debian's `age` is installed (scripts/setup-test-env.sh installs it).
fn age_cli() {
    assert!(
        Command::new("age").arg("--version").output().is_ok(),
        "the `age` command is missing: run scripts/setup-test-env.sh (it installs Debian's age package)"
    );
}

/// Debian's `age -d -i identity` of `data`.
fn age_d(env: &TestEnv, identity: &Path, data: &[u8]) -> Option<Vec<u8>> {
    let dir = env.dir.path().join("age-d");
    std::fs::create_dir_all(&dir).unwrap();
    let (input, output) = (dir.join("in"), dir.join("out"));
    std::fs::write(&input, data).unwrap();
    let _ = std::fs::remove_file(&output);
    let o = Command::new("age").arg("-d").arg("-i").arg(identity).arg("-o").arg(&output).arg(&input).output().unwrap();
    o.status.success().then(|| std::fs::read(&output).unwrap())
}

/// The remote key of `prefix` as an identity file, opened from the keyring with Debian's age.
fn remote_key(env: &TestEnv, prefix: &str) -> PathBuf {
    let ids = env.home().join(".config/git-s3/identities");
    let text = age_d(env, &ids, &env.get_object(&format!("{prefix}/.git-s3/keyring"))).expect("my identity opens the keyring");
    let path = env.dir.path().join(format!("{}.key", prefix.replace('/', "-")));
    std::fs::write(&path, text).unwrap();
    path
}

/// The key of the LFS object holding `content`, found by decrypting each with Debian's age.
fn key_holding(env: &TestEnv, prefix: &str, remote_key: &Path, content: &[u8]) -> String {
    lfs_objects(env, prefix)
        .into_iter()
        .find(|(_, data)| age_d(env, remote_key, data).as_deref() == Some(content))
        .map(|(k, _)| k)
        .unwrap_or_else(|| panic!("no LFS object of {prefix} decrypts to the content"))
}

/// The keys of the objects whose bytes hold any of `needles` (`grep -F`:
/// fast on tens of MiB, where a byte loop of a debug build is not).
fn holding_any(env: &TestEnv, objects: &[(String, Vec<u8>)], needles: &[String]) -> Vec<String> {
    let dir = env.dir.path().join("scan");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("needles"), needles.join("\n") + "\n").unwrap();
    let mut found = Vec::new();
    for (i, (key, data)) in objects.iter().enumerate() {
        let file = dir.join(format!("o{i}"));
        std::fs::write(&file, data).unwrap();
        let o = Command::new("grep").arg("-a").arg("-q").arg("-F").arg("-f").arg(dir.join("needles")).arg(&file).output().unwrap();
        assert!(o.status.code() == Some(0) || o.status.code() == Some(1), "grep failed: {o:?}");
        if o.status.success() {
            found.push(key.clone());
        }
    }
    found
}

fn is_pointer(path: &Path) -> bool {
    std::fs::read(path).unwrap().starts_with(b"version https://git-lfs")
}

/// Whether any file under `dir` has `needle` in its name.
fn any_file_named(dir: &Path, needle: &str) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else { return false };
    rd.flatten().any(|e| e.file_name().to_string_lossy().contains(needle) || (e.path().is_dir() && any_file_named(&e.path(), needle)))
}

/// Push LFS files of known content to an encrypted remote: no object of
/// the bucket holds their content or oid (in its key or bytes), each LFS
/// object is an age file under `.git-s3/lfs/<64 hex>`; the one-step clone
/// checks them out; Debian's `age` decrypts one with the remote key from
/// the keyring; a second push uploads nothing again.
#[test]
fn lfs_objects_of_an_encrypted_remote_reveal_nothing_and_clone_in_one_step() {
    age_cli();
    let (env, recipient) = lfs_env();
    let url = encrypted_remote(&env, &recipient, "crypt");
    let small = marked("LFS-SMALL-SECRET-4d1e", 100);
    // Above the single-PUT size (HEAD first), and above the ranged-download size.
    let mid = marked("LFS-MID-SECRET-9b2c", (2 << 20) + 5);
    let big = marked("LFS-BIG-SECRET-77aa", (33 << 20) + 3);
    let repo = lfs_repo(&env, "w", &url, &[("small.bin", small.clone()), ("mid.bin", mid.clone()), ("big.bin", big.clone())]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let oids: Vec<String> = ["small.bin", "mid.bin", "big.bin"].iter().map(|f| oid_of(&env, &repo, f)).collect();

    let all = objects(&env, "crypt");
    let mut needles: Vec<String> = ["LFS-SMALL-SECRET-4d1e", "LFS-MID-SECRET-9b2c", "LFS-BIG-SECRET-77aa"].iter().map(|s| s.to_string()).collect();
    needles.extend(oids.iter().cloned());
    for (key, _) in &all {
        assert!(needles.iter().all(|n| !key.contains(n.as_str())), "{key} names an oid or a content");
    }
    // The control: the scan finds a content where it is.
    assert_eq!(holding_any(&env, &[("control".to_string(), big.clone())], &needles), vec!["control".to_string()]);
    let found = holding_any(&env, &all, &needles);
    assert!(found.is_empty(), "objects holding an LFS file's content or oid: {found:?}");
    let lfs = lfs_objects(&env, "crypt");
    assert_eq!(lfs.len(), 3, "{:?}", lfs.iter().map(|o| &o.0).collect::<Vec<_>>());
    for (key, data) in &lfs {
        let leaf = key.strip_prefix("crypt/.git-s3/lfs/").unwrap();
        assert!(leaf.len() == 64 && leaf.chars().all(|c| c.is_ascii_hexdigit()), "{key}");
        assert!(data.starts_with(AGE_MAGIC), "{key} is not an age file");
    }

    // The one-step clone (the right identity) checks the files out.
    env.git(&env.work(), &["clone", "-q", &url, "c1"]);
    let c1 = env.path("c1");
    assert_eq!(std::fs::read(c1.join("small.bin")).unwrap(), small);
    assert_eq!(std::fs::read(c1.join("mid.bin")).unwrap(), mid);
    assert!(std::fs::read(c1.join("big.bin")).unwrap() == big, "big.bin differs");

    // Debian's age reads an LFS object with the remote key from the keyring.
    let key = remote_key(&env, "crypt");
    let small_key = key_holding(&env, "crypt", &key, &small);
    eprintln!("small.bin is {small_key}");

    // Pushing again uploads nothing: an upload is encrypted afresh, so its bytes would differ.
    let before = lfs_objects(&env, "crypt");
    env.git(&repo, &["lfs", "push", "--all", "origin"]);
    assert_eq!(lfs_objects(&env, "crypt"), before, "existing LFS objects were uploaded again");
}

/// Someone whose identities do not open the keyring: `git lfs pull` fails
/// with the one line a clone gives (the remote, its recipients'
/// fingerprints, what to ask for), and nothing is written.
#[test]
fn another_identity_gets_one_line_and_no_lfs_file() {
    let (env, recipient) = lfs_env();
    let url = encrypted_remote(&env, &recipient, "crypt");
    let repo = lfs_repo(&env, "w", &url, &[("a.bin", b"LFS-ONLY-FOR-ALICE\n".to_vec())]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let oid = oid_of(&env, &repo, "a.bin");
    let mut c = env.command("git", &env.work());
    c.args(["clone", "-q", &url, "c"]).env("GIT_LFS_SKIP_SMUDGE", "1");
    env.run(c);
    let clone = env.path("c");

    let other = env.dir.path().join("other-identities");
    keygen(&env, Some(&other));
    let mut c = env.command("git", &clone);
    c.args(["lfs", "pull"]).env("GIT_S3_IDENTITIES", &other);
    let stderr = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    eprintln!("git lfs pull stderr:\n{stderr}");
    let mentions: Vec<&str> = stderr.lines().filter(|l| l.contains("is encrypted to")).collect();
    assert!(!mentions.is_empty(), "{stderr}");
    assert!(
        mentions.iter().all(|l| l.contains(&format!("{url} is encrypted to 1 recipient (fingerprints ")) && l.contains("git s3 keygen")),
        "{stderr}"
    );
    assert!(is_pointer(&clone.join("a.bin")), "a.bin was checked out");
    assert!(!any_file_named(&clone.join(".git/lfs/objects"), &oid), "an LFS object was stored");
    assert!(!any_file_named(&env.dir.path().join("cache"), &oid), "an LFS object was cached");
}

/// A tampered object (a flipped byte) and a swapped one (another LFS
/// object's age file put under its name: it decrypts, but holds another
/// oid) are refused with one line each; nothing reaches the work tree,
/// git-lfs's object store or temp directory, or the cache. The object left
/// alone checks out.
#[test]
fn tampered_and_swapped_lfs_objects_are_refused_and_nothing_is_written() {
    age_cli();
    let (env, recipient) = lfs_env();
    let url = encrypted_remote(&env, &recipient, "crypt");
    let (a, b, c) = (b"LFS object a\n".to_vec(), b"LFS object b\n".to_vec(), marked("LFS object c", 300_000));
    let repo = lfs_repo(&env, "w", &url, &[("a.bin", a.clone()), ("b.bin", b.clone()), ("c.bin", c.clone())]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let key = remote_key(&env, "crypt");
    let (ka, kb, kc) = (key_holding(&env, "crypt", &key, &a), key_holding(&env, "crypt", &key, &b), key_holding(&env, "crypt", &key, &c));
    let (oa, ob, oc) = (oid_of(&env, &repo, "a.bin"), oid_of(&env, &repo, "b.bin"), oid_of(&env, &repo, "c.bin"));
    // a: one byte flipped in its payload; b: a's age file in its place (a's size: git-lfs announces b's).
    let mut bad = env.get_object(&kc);
    let n = bad.len() - 100;
    bad[n] ^= 1;
    env.put_object(&kc, &bad);
    env.put_object(&kb, &env.get_object(&ka));

    let mut cmd = env.command("git", &env.work());
    cmd.args(["clone", "-q", &url, "clone"]).env("GIT_LFS_SKIP_SMUDGE", "1");
    env.run(cmd);
    let clone = env.path("clone");
    let err = env.git_fail(&clone, &["lfs", "pull"]);
    eprintln!("git lfs pull stderr:\n{err}");
    let bucket = &env.bucket;
    assert!(err.contains(&format!("s3://{bucket}/{kc} does not decrypt with the remote's key (tampered, truncated or of another key)")), "{err}");
    assert!(err.contains(&format!("s3://{bucket}/{kb} should be LFS object {ob} but it holds {oa}: objects were swapped")), "{err}");
    assert_eq!(std::fs::read(clone.join("a.bin")).unwrap(), a);
    for (f, oid) in [("b.bin", &ob), ("c.bin", &oc)] {
        assert!(is_pointer(&clone.join(f)), "{f} was checked out");
        assert!(!any_file_named(&clone.join(".git/lfs"), oid), "{f} was written under .git/lfs");
        assert!(!any_file_named(&env.dir.path().join("cache"), oid), "{f} was cached");
    }
}

/// LFS for code hosted elsewhere: `git s3 init --encrypt-to` makes the LFS
/// prefix an encrypted remote, `git s3 lfs install --remote origin --url`
/// points git-lfs at it; objects go there encrypted under keyed names, and a
/// teammate's clone from the code host gets them. A plaintext LFS prefix
/// keeps `lfs/<oid>`.
#[test]
fn lfs_only_in_an_encrypted_prefix_with_the_code_elsewhere() {
    let (env, recipient) = lfs_env();
    let lfs_url = encrypted_remote(&env, &recipient, "team/lfs");
    let host = env.path("host.git");
    env.git(&env.work(), &["init", "-q", "--bare", "-b", "main", host.to_str().unwrap()]);
    let repo = env.path("w");
    std::fs::create_dir_all(&repo).unwrap();
    env.git(&repo, &["init", "-q", "-b", "main"]);
    env.git(&repo, &["lfs", "track", "*.bin"]);
    std::fs::write(repo.join("x.bin"), b"LFS-ELSEWHERE-SECRET\n").unwrap();
    env.git(&repo, &["add", "-A"]);
    env.git(&repo, &["commit", "-q", "-m", "x"]);
    env.git(&repo, &["remote", "add", "origin", host.to_str().unwrap()]);
    env.git_s3(&repo, &["lfs", "install", "--remote", "origin", "--url", &lfs_url]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let oid = oid_of(&env, &repo, "x.bin");
    let lfs = lfs_objects(&env, "team/lfs");
    assert_eq!(lfs.len(), 1);
    assert!(lfs[0].1.starts_with(AGE_MAGIC));
    assert!(env.keys("team/lfs/").iter().all(|k| !k.contains(&oid)), "{:?}", env.keys("team/lfs/"));

    // A teammate: clone the code without LFS, install, pull.
    let mut c = env.command("git", &env.work());
    c.args(["clone", "-q", host.to_str().unwrap(), "mate"]).env("GIT_LFS_SKIP_SMUDGE", "1");
    env.run(c);
    let mate = env.path("mate");
    env.git_s3(&mate, &["lfs", "install", "--remote", "origin", "--url", &lfs_url]);
    env.git(&mate, &["lfs", "pull"]);
    assert_eq!(std::fs::read(mate.join("x.bin")).unwrap(), b"LFS-ELSEWHERE-SECRET\n");

    // A plaintext LFS prefix: nothing changes.
    let plain = env.url("team/plain-lfs");
    let mut c = env.command("git-lfs-s3", &repo);
    c.args(["uninstall", "--remote", "origin"]);
    env.run(c);
    env.git_s3(&repo, &["lfs", "install", "--remote", "origin", "--url", &plain]);
    env.git(&repo, &["lfs", "push", "--all", "origin"]);
    assert_eq!(env.get_object(&format!("team/plain-lfs/lfs/{oid}")), b"LFS-ELSEWHERE-SECRET\n");
}

/// `git s3 migrate --encrypt-to` carries a plaintext packs remote's LFS
/// objects across (age files at keyed names, the plaintext ones deleted),
/// and `--decrypt` carries them back to `lfs/<oid>`. Each is killed right
/// after its switch (before the LFS objects move): a clone then still gets
/// the files (the agent reads either form), and a rerun moves them.
#[test]
fn migrate_encrypt_and_decrypt_carry_lfs_objects_and_a_rerun_finishes() {
    let (env, recipient) = lfs_env();
    testkit::require_test_hooks(&env);
    let url = env.url("m");
    env.git_s3(&env.work(), &["init", "--format", "packs", &url]);
    let (a, b) = (b"LFS-MIGRATED-SECRET a\n".to_vec(), marked("LFS-MIGRATED-SECRET b", (1 << 20) + 17));
    let repo = lfs_repo(&env, "w", &url, &[("a.bin", a.clone()), ("b.bin", b.clone())]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let (oa, ob) = (oid_of(&env, &repo, "a.bin"), oid_of(&env, &repo, "b.bin"));
    assert_eq!(env.get_object(&format!("m/lfs/{oa}")), a);
    let clone_has_the_files = |name: &str| {
        // From the bucket, not from the daemon's cache.
        env.git_s3(&env.work(), &["cache", "clear"]);
        env.git(&env.work(), &["clone", "-q", &url, name]);
        assert_eq!(std::fs::read(env.path(name).join("a.bin")).unwrap(), a, "{name}");
        assert!(std::fs::read(env.path(name).join("b.bin")).unwrap() == b, "{name}");
    };

    for (point, args) in [("encrypt-switched", vec!["--encrypt-to", recipient.as_str()]), ("decrypt-switched", vec!["--decrypt"])] {
        let mut c = env.command("git-s3", &env.work());
        c.env("GIT_S3_TEST_CRASH_DURING_MIGRATE", point).arg("migrate").args(&args).arg(&url);
        env.run_fail(c);
        clone_has_the_files(&format!("after-{point}"));
        let mut rerun = vec!["migrate"];
        rerun.extend(args.iter().copied());
        rerun.push(url.as_str());
        eprintln!("{point}: rerun: {}", env.git_s3(&env.work(), &rerun));
        clone_has_the_files(&format!("rerun-{point}"));
        if point == "encrypt-switched" {
            let lfs = lfs_objects(&env, "m");
            assert_eq!(lfs.len(), 2);
            assert!(lfs.iter().all(|(_, d)| d.starts_with(AGE_MAGIC)));
            for (key, data) in objects(&env, "m") {
                for n in [&oa, &ob, &"LFS-MIGRATED-SECRET".to_string()] {
                    assert!(!key.contains(n.as_str()) && !data.windows(n.len()).any(|w| w == n.as_bytes()), "{key} reveals {n}");
                }
            }
        } else {
            assert!(lfs_objects(&env, "m").is_empty());
            assert_eq!(env.get_object(&format!("m/lfs/{oa}")), a);
            assert!(env.get_object(&format!("m/lfs/{ob}")) == b);
        }
    }
}

/// A plaintext LFS object left on an encrypted remote (uploaded by a
/// git-s3 before LFS encryption) is still read, checked against its oid;
/// `git s3 migrate --encrypt-to` run on the encrypted remote encrypts it.
/// `git s3 access revoke --reencrypt` re-encrypts LFS objects to the new
/// key too: the old remote key decrypts none of them, and a clone still
/// gets the files.
#[test]
fn leftover_plaintext_and_revoke_reencrypt() {
    age_cli();
    let (env, recipient) = lfs_env();
    let url = encrypted_remote(&env, &recipient, "crypt");
    let bob = keygen(&env, Some(&env.dir.path().join("bob")));
    env.git_s3(&env.work(), &["access", "grant", &url, &bob]);
    let (a, b) = (b"LFS-REVOKE a\n".to_vec(), b"LFS-LEFTOVER b\n".to_vec());
    let repo = lfs_repo(&env, "w", &url, &[("a.bin", a.clone()), ("b.bin", b.clone())]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let ob = oid_of(&env, &repo, "b.bin");
    // b as an older git-s3 left it: plaintext at lfs/<oid>.
    let old_key = remote_key(&env, "crypt");
    let kb = key_holding(&env, "crypt", &old_key, &b);
    env.delete_object(&kb);
    env.put_object(&format!("crypt/lfs/{ob}"), &b);
    env.git(&env.work(), &["clone", "-q", &url, "c1"]);
    assert_eq!(std::fs::read(env.path("c1/b.bin")).unwrap(), b);
    env.git_s3(&env.work(), &["migrate", "--encrypt-to", &recipient, &url]);
    assert!(env.keys("crypt/lfs/").iter().all(|k| k.is_empty()), "{:?}", env.keys("crypt/lfs/"));
    assert_eq!(lfs_objects(&env, "crypt").len(), 2);

    let out = env.git_s3(&env.work(), &["access", "revoke", "--reencrypt", &url, &bob]);
    eprintln!("{out}");
    let lfs = lfs_objects(&env, "crypt");
    assert_eq!(lfs.len(), 2);
    for (key, data) in &lfs {
        assert!(age_d(&env, &old_key, data).is_none(), "the revoked key still decrypts {key}");
    }
    let new_key = remote_key(&env, "crypt");
    key_holding(&env, "crypt", &new_key, &a);
    // From the bucket, not from the daemon's cache.
    env.git_s3(&env.work(), &["cache", "clear"]);
    env.git(&env.work(), &["clone", "-q", &url, "c2"]);
    assert_eq!(std::fs::read(env.path("c2/a.bin")).unwrap(), a);
    assert_eq!(std::fs::read(env.path("c2/b.bin")).unwrap(), b);
}

/// `git s3 lfs migrate --to` an encrypted prefix: the objects fetched from
/// the code host's LFS server are written encrypted at keyed names, and a
/// clone from the code host then gets them from S3.
#[test]
fn lfs_migrate_into_an_encrypted_prefix() {
    let (env, recipient) = lfs_env();
    let server = testkit::LfsServer::start(&env.dir.path().join("lfs-server"));
    let host = env.path("host.git");
    env.git(&env.work(), &["init", "-q", "--bare", "-b", "main", host.to_str().unwrap()]);
    let repo = env.path("w");
    std::fs::create_dir_all(&repo).unwrap();
    env.git(&repo, &["init", "-q", "-b", "main"]);
    env.git(&repo, &["config", "lfs.locksverify", "false"]);
    env.git(&repo, &["config", "--file", ".lfsconfig", "lfs.url", &server.url("repo")]);
    env.git(&repo, &["lfs", "track", "*.bin"]);
    std::fs::write(repo.join("data.bin"), b"LFS-FROM-THE-HOST\n").unwrap();
    env.git(&repo, &["add", "-A"]);
    env.git(&repo, &["commit", "-q", "-m", "v1"]);
    env.git(&repo, &["remote", "add", "origin", host.to_str().unwrap()]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let oid = oid_of(&env, &repo, "data.bin");

    let s3 = encrypted_remote(&env, &recipient, "team/lfs");
    let out = env.git_s3(&repo, &["lfs", "migrate", "--to", &s3]);
    assert!(out.contains("1 copied"), "{out}");
    let lfs = lfs_objects(&env, "team/lfs");
    assert_eq!(lfs.len(), 1);
    assert!(lfs[0].1.starts_with(AGE_MAGIC));
    for (key, data) in objects(&env, "team/lfs") {
        assert!(!key.contains(&oid) && !data.windows(17).any(|w| w == b"LFS-FROM-THE-HOST"), "{key} reveals the object");
    }
    env.git(&repo, &["commit", "-q", "-am", "LFS objects now in S3"]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let mut c = env.command("git", &env.work());
    c.args(["clone", "-q", host.to_str().unwrap(), "mate"]).env("GIT_LFS_SKIP_SMUDGE", "1");
    env.run(c);
    let mate = env.path("mate");
    env.git_s3(&mate, &["lfs", "install", "--remote", "origin", "--url", &s3]);
    env.git(&mate, &["lfs", "pull"]);
    assert_eq!(std::fs::read(mate.join("data.bin")).unwrap(), b"LFS-FROM-THE-HOST\n");
}

/// `git config --get <key>` in `repo` (None: unset).
fn config_of(env: &TestEnv, repo: &Path, key: &str) -> Option<String> {
    let mut c = env.command("git", repo);
    c.args(["config", "--get", key]);
    let out = c.output().unwrap();
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Commits `file` holding `content` in `repo`; its LFS oid.
fn add_lfs_file(env: &TestEnv, repo: &Path, file: &str, content: &[u8]) -> String {
    std::fs::write(repo.join(file), content).unwrap();
    env.git(repo, &["add", "-A"]);
    env.git(repo, &["commit", "-q", "-m", file]);
    oid_of(env, repo, file)
}

/// `git <args>` in `repo` refused by the LFS agent because the repository
/// remembers the LFS store encrypted: nothing of `content` or `oid` reaches
/// the bucket under `prefix`.
fn assert_upload_refused(env: &TestEnv, repo: &Path, args: &[&str], prefix: &str, (oid, content): (&str, &[u8]), variable: &str) {
    let stderr = env.git_fail(repo, args);
    eprintln!("push stderr:\n{stderr}");
    let refusals: Vec<&str> = stderr.lines().filter(|l| l.contains("remembers it encrypted")).collect();
    assert!(!refusals.is_empty() && refusals.iter().all(|l| l.contains(&format!("git config --unset remote.origin.{variable}"))), "{stderr}");
    let all = objects(env, prefix);
    assert!(all.iter().all(|(k, _)| !k.contains(oid)), "an object is named by the oid: {:?}", all.iter().map(|o| &o.0).collect::<Vec<_>>());
    assert!(holding_any(env, &all, &[String::from_utf8_lossy(content).trim().to_string()]).is_empty(), "the file reached the bucket in plaintext");
}

/// A repository remembers its encrypted LFS store as its fetches and
/// pushes remember the remote (`crypt::trust`): the code's remote
/// (`remote.origin.s3-keyring`, pinned by the remote helper) or, with the
/// code on another host, the LFS prefix (`remote.origin.s3-lfs-keyring`,
/// pinned by the LFS agent). Someone who can write the bucket deletes the
/// keyring (or the whole prefix): the next LFS upload is refused in one
/// line and nothing is written in plaintext. `git s3 lfs uninstall`
/// forgets the LFS prefix's key with its URL.
#[test]
fn a_remembered_encrypted_lfs_store_is_never_written_in_plaintext() {
    let (env, recipient) = lfs_env();
    // Code and LFS in one encrypted remote.
    let url = encrypted_remote(&env, &recipient, "both");
    let repo = lfs_repo(&env, "w", &url, &[("a.bin", b"FIRST-LFS-FILE\n".to_vec())]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    assert!(config_of(&env, &repo, "remote.origin.s3-keyring").is_some(), "the push remembers the remote");
    env.delete_object("both/.git-s3/keyring");
    let oid = add_lfs_file(&env, &repo, "b.bin", b"SECOND-LFS-FILE-BOTH\n");
    // (A `git push` stops at the remote helper, which finds the keyring
    // missing; `git lfs push` reaches the agent alone.)
    let content = b"SECOND-LFS-FILE-BOTH\n";
    assert_upload_refused(&env, &repo, &["lfs", "push", "--all", "origin"], "both", (&oid, content), "s3-keyring");

    // LFS alone in an encrypted prefix, the code elsewhere.
    let lfs_url = encrypted_remote(&env, &recipient, "team/lfs");
    let host = env.path("host.git");
    env.git(&env.work(), &["init", "-q", "--bare", "-b", "main", host.to_str().unwrap()]);
    let repo = env.path("elsewhere");
    std::fs::create_dir_all(&repo).unwrap();
    env.git(&repo, &["init", "-q", "-b", "main"]);
    env.git(&repo, &["lfs", "track", "*.bin"]);
    env.git(&repo, &["remote", "add", "origin", host.to_str().unwrap()]);
    env.git_s3(&repo, &["lfs", "install", "--remote", "origin", "--url", &lfs_url]);
    add_lfs_file(&env, &repo, "x.bin", b"LFS-ELSEWHERE-FIRST\n");
    env.git(&repo, &["push", "-q", "origin", "main"]);
    assert!(config_of(&env, &repo, "remote.origin.s3-lfs-keyring").is_some(), "the agent remembers the LFS prefix");
    assert_eq!(config_of(&env, &repo, "remote.origin.s3-keyring"), None, "the code's remote is not S3");
    for k in env.keys("team/lfs/") {
        env.delete_object(&k);
    }
    let oid = add_lfs_file(&env, &repo, "y.bin", b"LFS-ELSEWHERE-SECOND\n");
    let content = b"LFS-ELSEWHERE-SECOND\n";
    assert_upload_refused(&env, &repo, &["push", "-q", "origin", "main"], "team/lfs", (&oid, content), "s3-lfs-keyring");

    // Reconfigured on purpose: uninstall forgets the prefix's key.
    let mut c = env.command("git-lfs-s3", &repo);
    c.args(["uninstall", "--remote", "origin"]);
    env.run(c);
    assert_eq!(config_of(&env, &repo, "remote.origin.s3-lfs-keyring"), None);
    env.git_s3(&repo, &["lfs", "install", "--remote", "origin", "--url", &lfs_url]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    assert_eq!(env.get_object(&format!("team/lfs/lfs/{oid}")), b"LFS-ELSEWHERE-SECOND\n");
}
