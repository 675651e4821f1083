//! End to end, client-side encryption of a packs remote with age (issue 22,
//! first slice): `git s3 keygen`, `git s3 init --format packs --encrypt-to`,
//! push, clone and fetch through the real git and the test S3 server; every
//! object in the bucket scanned for what the repository holds; a clone
//! with another identity refused in one line; the refusals for bundles.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use testkit::TestEnv;
use testkit::{error_lines, keygen, objects, wait_for_objects};

const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// `data` zlib-deflated at each level (what git stores in packs and loose objects).
fn deflated(data: &[u8]) -> Vec<Vec<u8>> {
    let script = "import sys, zlib\nd = sys.stdin.buffer.read()\nfor l in range(1, 10):\n    sys.stdout.buffer.write(zlib.compress(d, l).hex().encode() + b'\\n')\n";
    let mut c = Command::new("python3");
    c.args(["-c", script]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = c.spawn().expect("python3");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), data).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    // The deflate stream without its 2-byte zlib header and 4-byte checksum
    // too, as a raw deflate of it would show.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| hex::decode(l).unwrap())
        .flat_map(|z| {
            let body = z[2..z.len() - 4].to_vec();
            [z, body]
        })
        .collect()
}

mod hex {
    pub fn decode(s: &str) -> Result<Vec<u8>, ()> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| ())).collect()
    }
}

/// What must not be in the bucket: (label, bytes).
struct Needles(Vec<(String, Vec<u8>)>);

impl Needles {
    fn add(&mut self, label: &str, bytes: &[u8]) {
        self.0.push((label.to_string(), bytes.to_vec()));
    }

    /// The needles found in any object's key or bytes: (label, key).
    fn found_in(&self, objects: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for (label, n) in &self.0 {
            for (key, data) in objects {
                let in_key = key.as_bytes().windows(n.len()).any(|w| w == &n[..]);
                if in_key || data.windows(n.len()).any(|w| w == &n[..]) {
                    found.push((label.clone(), key.clone()));
                }
            }
        }
        found
    }
}

/// A repository with known secrets: file contents, a commit message, an
/// author address, a branch and a tag. Returns it and the needles.
fn secret_repo(env: &TestEnv, url: &str) -> (PathBuf, Needles) {
    let repo = env.path("secret");
    std::fs::create_dir_all(&repo).unwrap();
    env.git(&repo, &["init", "-q", "-b", "main"]);
    env.git(&repo, &["config", "user.email", "sekrit.author@example.org"]);
    env.git(&repo, &["remote", "add", "origin", url]);
    let short = "launch codes: TOP-SECRET-CONTENT-7f3a9c\n".to_string();
    let long: String = (0..400).map(|i| format!("line {i}: the confidential plan PLAN-XYZZY-{}\n", i * 7919 % 1000)).collect();
    std::fs::write(repo.join("codes.txt"), &short).unwrap();
    std::fs::write(repo.join("plan.txt"), &long).unwrap();
    env.git(&repo, &["add", "-A"]);
    env.git(&repo, &["commit", "-q", "-m", "Confidential commit message MSG-QUUX-42"]);
    env.git(&repo, &["checkout", "-q", "-b", "feature/hidden-branch-name"]);
    env.commit(&repo, "more.txt", "more secret text MORE-SECRET-99\n", "second confidential message MSG-FROB-43");
    env.git(&repo, &["checkout", "-q", "main"]);
    env.git(&repo, &["tag", "-a", "release-hidden-tag", "-m", "tag message TAGMSG-55"]);

    let mut n = Needles(Vec::new());
    for s in [
        "TOP-SECRET-CONTENT-7f3a9c",
        "PLAN-XYZZY-",
        "MORE-SECRET-99",
        "MSG-QUUX-42",
        "MSG-FROB-43",
        "TAGMSG-55",
        "sekrit.author@example.org",
        "hidden-branch-name",
        "release-hidden-tag",
        "refs/heads/main",
    ] {
        n.add(s, s.as_bytes());
    }
    for (label, content) in [("deflated codes.txt", short.as_bytes()), ("deflated plan.txt", long.as_bytes())] {
        for d in deflated(content) {
            n.add(label, &d);
        }
    }
    // Every object id (commits, trees, blobs, the tag), hex and binary.
    let ids = env.git(&repo, &["rev-list", "--objects", "--all"]);
    for id in ids.lines().filter_map(|l| l.split_whitespace().next()) {
        n.add(&format!("id {id}"), id.as_bytes());
        n.add(&format!("binary id {id}"), &hex::decode(id).unwrap());
    }
    (repo, n)
}

#[test]
fn keygen_writes_a_private_identity_file_and_prints_its_recipient() {
    let env = TestEnv::new();
    let r1 = keygen(&env, None);
    let file = env.home().join(".config/git-s3/identities");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(&format!("# public key: {r1}")) && text.contains("AGE-SECRET-KEY-1"), "{text}");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions()) & 0o777, 0o600);
    // --json, appended to the same file: several identities
    let doc: Value = serde_json::from_str(&env.git_s3(&env.work(), &["keygen", "--json"])).unwrap();
    let r2 = doc["recipient"].as_str().unwrap();
    assert!(r2.starts_with("age1") && r2 != r1);
    assert_eq!(doc["identities"].as_str().unwrap(), file.display().to_string());
    assert_eq!(std::fs::read_to_string(&file).unwrap().matches("AGE-SECRET-KEY-1").count(), 2);
    // GIT_S3_IDENTITIES names another file (the caller's environment, not the daemon's)
    let other = env.dir.path().join("keys/other");
    keygen(&env, Some(&other));
    assert!(other.exists());
}

/// Push a repository with known secrets to an encrypted remote: no object
/// in the bucket holds any of them, in any form git stores (the same scan
/// of a plaintext remote finds them); clone with the right identity gives
/// the same repository; with another identity it fails in one line and
/// writes nothing; a one-commit fetch works.
#[test]
fn an_encrypted_remote_reveals_nothing_and_clones_with_the_right_identity() {
    let env = TestEnv::new();
    let recipient = keygen(&env, None);
    let url = env.url("crypt");
    let out = env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &recipient, &url]);
    assert!(out.contains("encrypted to 1 recipient"), "{out}");
    let (repo, needles) = secret_repo(&env, &url);
    env.git(&repo, &["push", "-q", "origin", "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*"]);
    // keyring, manifest, one pack and its .idx
    wait_for_objects(&env, "crypt", 4);
    let objs = objects(&env, "crypt");
    for (key, data) in &objs {
        assert!(data.starts_with(AGE_MAGIC), "{key} is not an age file");
        let leaf = key.rsplit('/').next().unwrap();
        assert!(leaf == "keyring" || leaf == "manifest.json" || (leaf.len() == 64 && leaf.chars().all(|c| c.is_ascii_hexdigit())), "{key}");
    }
    let found = needles.found_in(&objs);
    assert!(found.is_empty(), "the encrypted bucket reveals: {found:?}");

    // The control: the same scan of the same repository pushed in plaintext finds them.
    let plain_url = env.url("plain");
    env.git_s3(&env.work(), &["init", "--format", "packs", &plain_url]);
    env.git(&repo, &["push", "-q", &plain_url, "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*"]);
    wait_for_objects(&env, "plain", 3);
    let found: Vec<String> = needles.found_in(&objects(&env, "plain")).into_iter().map(|f| f.0).collect();
    for expected in ["deflated codes.txt", "deflated plan.txt", "hidden-branch-name", "release-hidden-tag", "refs/heads/main"] {
        assert!(found.iter().any(|f| f == expected), "the scan does not find {expected} in a plaintext remote: {found:?}");
    }
    assert!(found.iter().any(|f| f.starts_with("binary id ")), "{found:?}");

    // Clone with the right identity.
    env.git(&env.work(), &["clone", "-q", &url, "c1"]);
    let c1 = env.path("c1");
    // The remote's HEAD is the first branch pushed (feature/… sorts first): work on main.
    env.git(&c1, &["checkout", "-q", "main"]);
    assert_eq!(std::fs::read_to_string(c1.join("codes.txt")).unwrap(), std::fs::read_to_string(repo.join("codes.txt")).unwrap());
    assert_eq!(std::fs::read_to_string(c1.join("plan.txt")).unwrap(), std::fs::read_to_string(repo.join("plan.txt")).unwrap());
    let refs = |dir: &Path| env.git(dir, &["for-each-ref", "--format=%(refname:lstrip=2) %(objectname)", "refs/remotes/origin", "refs/tags"]);
    let want = env.git(&repo, &["for-each-ref", "--format=origin/%(refname:lstrip=2) %(objectname)", "refs/heads"]);
    assert!(refs(&c1).contains(want.lines().next().unwrap()), "{}", refs(&c1));
    assert!(env.git(&c1, &["log", "-1", "--format=%ae %s"]).contains("sekrit.author@example.org Confidential commit message"));
    assert!(env.git(&c1, &["tag"]).contains("release-hidden-tag"));
    env.git(&c1, &["fsck", "--full", "--no-progress"]);
    // A shallow clone (served whole: an encrypted remote has no views yet).
    env.git(&env.work(), &["clone", "-q", "--depth", "1", "--branch", "main", &url, "shallow"]);
    assert_eq!(std::fs::read_to_string(env.path("shallow").join("plan.txt")).unwrap(), std::fs::read_to_string(repo.join("plan.txt")).unwrap());

    // Another identity: one line that names the keyring's recipients, and no clone directory.
    let other = env.dir.path().join("other-identities");
    keygen(&env, Some(&other));
    let mut c = env.command("git", &env.work());
    c.args(["clone", &url, "c2"]).env("GIT_S3_IDENTITIES", &other);
    let stderr = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("is encrypted to 1 recipient (fingerprints ") && errors[0].contains("git s3 keygen"), "{stderr}");
    eprintln!("refused clone: {}", errors[0]);
    assert!(!env.path("c2").exists(), "a refused clone leaves nothing");
    // No identities at all: the same line, saying so.
    let mut c = env.command("git", &env.work());
    c.args(["ls-remote", &url]).env("GIT_S3_IDENTITIES", env.dir.path().join("none"));
    let stderr = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    assert_eq!(error_lines(&stderr).len(), 1, "{stderr}");
    assert!(stderr.contains("no age identities at"), "{stderr}");

    // A one-commit fetch, and the new pack reveals nothing either.
    let sha = env.commit(&repo, "codes.txt", "new codes NEWCODE-31337\n", "third message MSG-ZORK-44");
    env.git(&repo, &["push", "-q", "origin", "main"]);
    env.git(&c1, &["pull", "-q", "--ff-only"]);
    assert_eq!(env.git(&c1, &["rev-parse", "HEAD"]).trim(), sha);
    assert_eq!(std::fs::read_to_string(c1.join("codes.txt")).unwrap(), "new codes NEWCODE-31337\n");
    wait_for_objects(&env, "crypt", 6);
    let mut more = Needles(Vec::new());
    more.add("new content", b"NEWCODE-31337");
    more.add("new message", b"MSG-ZORK-44");
    more.add("new id", sha.as_bytes());
    let objs = objects(&env, "crypt");
    let found = [needles.found_in(&objs), more.found_in(&objs)].concat();
    assert!(found.is_empty(), "the encrypted bucket reveals: {found:?}");

    // The bundles format stays plaintext: `migrate --to bundles` is refused, nothing deleted.
    let mut c = env.command("git-s3", &env.work());
    c.args(["migrate", "--to", "bundles", &url]);
    let stderr = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    assert!(stderr.contains("run `git s3 migrate --decrypt"), "{stderr}");
    assert_eq!(objects(&env, "crypt").len(), 6);
}

/// The bundles format stays plaintext: `--encrypt-to` with it, or on a
/// prefix that holds bundles, is refused in one line that says to use packs.
#[test]
fn encryption_is_refused_for_the_bundles_format() {
    let env = TestEnv::new();
    let recipient = keygen(&env, None);
    let url = env.url("b");
    let mut c = env.command("git-s3", &env.work());
    c.args(["init", "--format", "bundles", "--encrypt-to", &recipient, &url]);
    let stderr = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("use `git s3 init --format packs --encrypt-to"), "{stderr}");
    // A bundles remote that exists.
    let repo = env.new_repo("r");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let mut c = env.command("git-s3", &env.work());
    c.args(["init", "--format", "packs", "--encrypt-to", &recipient, &url]);
    let stderr = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("already holds bundles") && stderr.contains("encryption needs a packs remote"), "{stderr}");
    // A recipient that is not one.
    let mut c = env.command("git-s3", &env.work());
    c.args(["init", "--format", "packs", "--encrypt-to", "age1nope", &env.url("p")]);
    let stderr = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    assert!(stderr.contains("invalid age recipient 'age1nope'"), "{stderr}");
    assert!(env.keys("p/").iter().all(|k| k.is_empty()), "nothing written");
}

/// Nothing locks anyone in: an identity made by `age-keygen` works as it
/// is, and Debian's `age` decrypts the keyring, then the manifest and a
/// pack that git then indexes (scripts/setup-test-env.sh installs age).
#[test]
fn the_age_cli_reads_what_git_s3_writes() {
    assert!(
        Command::new("age").arg("--version").output().is_ok() && Command::new("age-keygen").arg("--version").output().is_ok(),
        "the `age` and `age-keygen` commands are missing: run scripts/setup-test-env.sh (it installs Debian's age package)"
    );
    let env = TestEnv::new();
    let keys = env.dir.path().join("age-keygen.txt");
    let out = Command::new("age-keygen").arg("-o").arg(&keys).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&keys).unwrap();
    let recipient = text.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().trim().to_string();
    env.set_env("GIT_S3_IDENTITIES", &keys.display().to_string());
    let url = env.url("age");
    env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &recipient, &url]);
    let repo = env.new_repo("r");
    env.commit(&repo, "hello.txt", "hello from age\n", "second");
    env.git(&repo, &["push", "-q", &url, "main"]);
    wait_for_objects(&env, "age", 4);

    let dir = env.dir.path().join("decrypted");
    std::fs::create_dir_all(&dir).unwrap();
    let age_d = |identity: &Path, key: &str, out: &Path| {
        let input = dir.join("in");
        std::fs::write(&input, env.get_object(key)).unwrap();
        let o = Command::new("age").arg("-d").arg("-i").arg(identity).arg("-o").arg(out).arg(&input).output().unwrap();
        assert!(o.status.success(), "age -d {key}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let remote_key = dir.join("remote.key");
    age_d(&keys, "age/.git-s3/keyring", &remote_key);
    assert!(std::fs::read_to_string(&remote_key).unwrap().starts_with("# git-s3 keyring v2\n"));
    let manifest = dir.join("manifest.json");
    age_d(&remote_key, "age/.git-s3/manifest.json", &manifest);
    let m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let head = env.git(&repo, &["rev-parse", "HEAD"]);
    assert_eq!(m["refs"]["refs/heads/main"].as_str().unwrap(), head.trim());
    let name = m["packs"][0]["name"].as_str().unwrap().to_string();
    // Decrypt each pack object: one is the pack, and git indexes it.
    let mut packs = 0;
    let mut pack_object = String::new();
    for (i, key) in env.keys("age/.git-s3/packs/").into_iter().filter(|k| !k.is_empty()).enumerate() {
        let out = dir.join(format!("object-{i}"));
        age_d(&remote_key, &key, &out);
        if std::fs::read(&out).unwrap().starts_with(b"PACK") {
            packs += 1;
            pack_object = key.clone();
            let pack = dir.join(format!("pack-{name}.pack"));
            std::fs::rename(&out, &pack).unwrap();
            let mut c = env.command("git", &env.work());
            c.args(["index-pack", pack.to_str().unwrap()]);
            assert_eq!(String::from_utf8_lossy(&env.run(c).stdout).trim(), name);
        }
    }
    assert_eq!(packs, 1);
    // And git-s3 clones it with the age-keygen identity.
    env.git(&env.work(), &["clone", "-q", &url, "c"]);
    assert_eq!(std::fs::read_to_string(env.path("c").join("hello.txt")).unwrap(), "hello from age\n");

    // Tampering: a flipped byte in the manifest, or in a pack, is refused in
    // one line, and a clone from a tampered pack leaves nothing.
    let flip = |key: &str| {
        let good = env.get_object(key);
        let mut bad = good.clone();
        let at = bad.len() - 20;
        bad[at] ^= 0x01;
        env.put_object(key, &bad);
        good
    };
    let good = flip("age/.git-s3/manifest.json");
    let stderr = env.git_fail(&env.work(), &["ls-remote", &url]);
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("does not decrypt with the remote's key"), "{stderr}");
    eprintln!("tampered manifest: {}", errors[0]);
    env.put_object("age/.git-s3/manifest.json", &good);
    flip(&pack_object);
    // (the earlier clone's pack is in the local cache, which a clone would link)
    env.git_s3(&env.work(), &["cache", "clear"]);
    let stderr = env.git_fail(&env.work(), &["clone", &url, "tampered"]);
    assert!(error_lines(&stderr).iter().any(|l| l.contains("does not decrypt with the remote's key")), "{stderr}");
    eprintln!("tampered pack: {stderr}");
    assert!(!env.path("tampered").exists());

    // The keyring gone (in a daemon that has not opened it): one line saying so.
    env.git_s3(&env.work(), &["daemon", "restart"]);
    env.delete_object("age/.git-s3/keyring");
    let stderr = env.git_fail(&env.work(), &["ls-remote", &url]);
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("manifest is encrypted but its keyring") && errors[0].contains("is missing"), "{stderr}");
}

/// `len` bytes no compressor shrinks (xorshift64).
fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Waits (at most two minutes) until `done` says yes.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// What an encrypted push uploads, counted through the field server: a
/// small pack is one PUT of its age file (then the conditional manifest
/// write; the `.idx` after the answer, held here by its gate); a pack past
/// the single-PUT threshold (64 MiB) is one multipart upload of 16 MiB
/// parts whose first part reaches S3 while the encryption waits, at a test
/// gate, right after handing it over: the pack is encrypted as it is
/// uploaded, not into a file first. Bytes up: the age files once. A daemon
/// killed there leaves the remote as it was.
#[test]
fn an_encrypted_push_uploads_its_pack_as_it_is_encrypted() {
    use testkit::field::RequestKind::{Complete, ConditionalPut, CreateMultipart, Part, Put};
    let env = TestEnv::new();
    testkit::require_test_hooks(&env);
    let field = testkit::FieldServer::start();
    env.set_env("AWS_ENDPOINT_URL", &field.url);
    let recipient = keygen(&env, None);
    let url = env.url("stream");
    env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &recipient, &url]);
    let idx_gate = env.dir.path().join("idx-gate");
    env.set_env("GIT_S3_TEST_IDX_UPLOAD_GATE", &idx_gate.display().to_string());
    let pack_objects = || env.keys("stream/.git-s3/packs/").into_iter().filter(|k| !k.is_empty()).collect::<Vec<_>>();

    let repo = env.new_repo("r");
    field.reset_counts();
    env.git(&repo, &["push", "-q", &url, "main"]);
    let c = field.counts();
    let packs = pack_objects();
    assert_eq!(packs.len(), 1, "{packs:?}");
    let small = env.get_object(&packs[0]).len() as u64;
    assert_eq!((c.of(Put), c.of(ConditionalPut), c.of(CreateMultipart)), (1, 1, 0), "{c:?}");
    assert!(c.bytes_up >= small && c.bytes_up < small + 4096, "the pack's age file once, and a manifest of 1 KiB: {} for {small}", c.bytes_up);
    std::fs::write(&idx_gate, b"").unwrap();
    wait_for_objects(&env, "stream", 4);

    // 66 MiB of random bytes: a pack past the threshold.
    let data = random_bytes(66 << 20, 0x9e37_79b9_7f4a_7c15);
    std::fs::write(repo.join("big.bin"), &data).unwrap();
    env.git(&repo, &["add", "big.bin"]);
    env.git(&repo, &["commit", "-q", "-m", "big"]);
    let _ = std::fs::remove_file(&idx_gate);
    let gated_push = |gate: &Path| {
        let mut push = env.command("git", &repo);
        push.args(["push", "-q", &url, "main"]).env("GIT_S3_TEST_ENCRYPT_PART_GATE", gate);
        push.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    };

    // Killed half-way (the daemon dies while the encryption waits after its
    // first part): the remote is as it was, its manifest and its objects.
    let manifest_before = env.get_object("stream/.git-s3/manifest.json");
    let packs_before = pack_objects();
    let kill_gate = env.dir.path().join("kill-gate");
    let child = gated_push(&kill_gate);
    let reached = env.dir.path().join("kill-gate.waiting");
    wait_until("the encryption hands its first part over and waits", || reached.exists());
    wait_until("the first part is uploaded", || field.counts().of(Part) >= 1);
    let status: Value = serde_json::from_str(&env.git_s3(&env.work(), &["daemon", "status", "--json"])).unwrap();
    let pid = status["pid"].as_u64().unwrap().to_string();
    assert!(Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    assert!(!child.wait_with_output().unwrap().status.success(), "the push whose daemon died fails");
    assert!(env.get_object("stream/.git-s3/manifest.json") == manifest_before, "the manifest is untouched");
    assert_eq!(pack_objects(), packs_before, "no object of the killed push (its multipart upload never completed)");

    let gate = env.dir.path().join("encrypt-gate");
    field.reset_counts();
    let child = gated_push(&gate);
    let waiting = env.dir.path().join("encrypt-gate.waiting");
    wait_until("the encryption hands its first part over and waits", || waiting.exists());
    wait_until("the first part is uploaded while the encryption waits", || field.counts().of(Part) >= 1);
    let c = field.counts();
    assert!(!env.dir.path().join("encrypt-gate.timed-out").exists(), "the part went before the encryption's gate gave up waiting");
    assert_eq!((c.of(CreateMultipart), c.of(Part), c.of(Complete)), (1, 1, 0), "one part so far: {c:?}");
    std::fs::write(&gate, b"").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c = field.counts();
    let big = pack_objects().into_iter().map(|k| env.get_object(&k).len() as u64).max().unwrap();
    assert!(big > 66 << 20, "{big}");
    assert_eq!((c.of(CreateMultipart), c.of(Part), c.of(Complete), c.of(Put)), (1, big.div_ceil(16 << 20), 1, 0), "{c:?}");
    assert!(c.bytes_up >= big && c.bytes_up < big + 4096, "the age file once: {} for {big}", c.bytes_up);
    std::fs::write(&idx_gate, b"").unwrap();

    env.git_s3(&env.work(), &["cache", "clear"]);
    env.git(&env.work(), &["clone", "-q", &url, "c"]);
    assert!(std::fs::read(env.path("c").join("big.bin")).unwrap() == data, "the big file came back whole");
}

/// `s3+zip://` on an encrypted remote: each pushed ref's zip is an age
/// file under a keyed name in `.git-s3/zips/` (no `<ref>/repo.zip`, no key
/// naming a ref), and Debian's `age` decrypts it (keyring → remote key →
/// zip) into exactly the `git archive` of the ref. Deleting the ref removes
/// its zip; `access revoke --reencrypt` re-encrypts the zip to the new key
/// under its new name and deletes the old one; `migrate --decrypt` deletes
/// them.
#[test]
fn zips_on_an_encrypted_remote_are_age_files_under_keyed_names() {
    assert!(Command::new("age").arg("--version").output().is_ok(), "the `age` command is missing: run scripts/setup-test-env.sh");
    let env = TestEnv::new();
    let ids = env.home().join(".config/git-s3/identities");
    let alice = keygen(&env, None);
    let bob = keygen(&env, Some(&env.dir.path().join("bob")));
    let (url, zip_url) = (env.url("z"), env.zip_url("z"));
    env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &alice, "--encrypt-to", &bob, &url]);
    let repo = env.new_repo("r");
    env.commit(&repo, "app.txt", "ZIP-CONTENT-8812\n", "zip me");
    env.git(&repo, &["push", "-q", &zip_url, "main"]);
    env.git(&repo, &["checkout", "-q", "-b", "feature/zipped"]);
    env.commit(&repo, "more.txt", "more\n", "zip me too");
    env.git(&repo, &["push", "-q", &zip_url, "feature/zipped"]);
    let zips = || env.keys("z/.git-s3/zips/").into_iter().filter(|k| !k.is_empty()).collect::<Vec<_>>();
    assert_eq!(zips().len(), 2, "{:?}", env.keys("z/"));
    let all = env.keys("z/");
    assert!(!all.iter().any(|k| k.contains("repo.zip") || k.contains("main") || k.contains("feature")), "{all:?}");

    let dir = env.dir.path().join("zips");
    std::fs::create_dir_all(&dir).unwrap();
    let age_d = |identity: &Path, key: &str| -> Vec<u8> {
        let (input, out) = (dir.join("in"), dir.join("out"));
        std::fs::write(&input, env.get_object(key)).unwrap();
        let o = Command::new("age").arg("-d").arg("-i").arg(identity).arg("-o").arg(&out).arg(&input).output().unwrap();
        assert!(o.status.success(), "age -d {key}: {}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(&out).unwrap()
    };
    let archive = |rev: &str| {
        let mut c = env.command("git", &repo);
        c.args(["archive", "--format=zip", rev]);
        env.run(c).stdout
    };
    let decrypted_zips = || {
        let remote_key = dir.join("remote.key");
        std::fs::write(&remote_key, age_d(&ids, "z/.git-s3/keyring")).unwrap();
        let mut got: Vec<Vec<u8>> = zips().iter().map(|k| age_d(&remote_key, k)).collect();
        got.sort();
        got
    };
    let mut want = vec![archive("main"), archive("feature/zipped")];
    want.sort();
    assert!(want[0].starts_with(b"PK\x03\x04"));
    assert_eq!(decrypted_zips(), want, "the zips are the refs' git archives");

    env.git(&repo, &["push", "-q", &zip_url, ":feature/zipped"]);
    assert_eq!(decrypted_zips(), vec![archive("main")], "the deleted ref's zip is gone");

    let before = zips();
    env.git_s3(&env.work(), &["access", "revoke", "--reencrypt", &url, &bob]);
    assert_eq!(zips().len(), 1);
    assert_ne!(zips(), before, "the zip's name changed with the key");
    assert_eq!(decrypted_zips(), vec![archive("main")], "re-encrypted to the new key");

    // Back to plaintext: the encrypted zips go with the other age files.
    env.git_s3(&env.work(), &["migrate", "--decrypt", &url]);
    assert!(zips().is_empty(), "{:?}", env.keys("z/"));
}
