//! Shallow and partial clones and lazy fetches of an encrypted packs remote
//! (issue 22 point 6), against the same history on a plaintext remote:
//! views written after a push (encrypted, keyed names), object maps
//! (encrypted, keyed names), lazy fetches read by ranges as whole age
//! chunks; a tampered chunk is refused in one line and nothing is written.
//! Bytes are counted by the field server in front of the test store.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::field::{Fault, FaultAction, RequestKind};
use testkit::{error_lines, keygen, objects, FieldServer, TestEnv};

const COMMITS: u32 = 40;
const FILES: [&str; 3] = ["a.txt", "b.txt", "dir/c.txt"];
const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// A packs environment counted by the field server, with an identity (in
/// every command's `GIT_S3_IDENTITIES`): its file and its recipient.
fn counted_env() -> (TestEnv, FieldServer, PathBuf, String) {
    let env = TestEnv::new();
    let proxy = FieldServer::start();
    env.set_env("AWS_ENDPOINT_URL", &proxy.url);
    env.git(&env.work(), &["config", "--global", "s3.format", "packs"]);
    let ids = env.dir.path().join("identities");
    let recipient = keygen(&env, Some(&ids));
    env.set_env("GIT_S3_IDENTITIES", ids.to_str().unwrap());
    (env, proxy, ids, recipient)
}

/// `git s3 init --format packs --encrypt-to recipient` at `prefix`.
fn encrypted_remote(env: &TestEnv, recipient: &str, prefix: &str) -> String {
    let url = env.url(prefix);
    env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", recipient, &url]);
    url
}

/// Debian's `age -d -i identity` of `data`.
fn age_d(env: &TestEnv, identity: &Path, data: &[u8]) -> Vec<u8> {
    let dir = env.dir.path().join("age-d");
    std::fs::create_dir_all(&dir).unwrap();
    let (input, output) = (dir.join("in"), dir.join("out"));
    std::fs::write(&input, data).unwrap();
    let _ = std::fs::remove_file(&output);
    let o = Command::new("age").arg("-d").arg("-i").arg(identity).arg("-o").arg(&output).arg(&input).output().expect("age");
    assert!(o.status.success(), "age -d: {}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(&output).unwrap()
}

/// The manifest of the remote at `prefix`: plaintext, or decrypted with
/// the age CLI (keyring, then manifest) when `ids` is given.
fn manifest(env: &TestEnv, prefix: &str, ids: Option<&Path>) -> Value {
    let body = env.get_object(&format!("{prefix}/.git-s3/manifest.json"));
    let Some(ids) = ids else { return serde_json::from_slice(&body).unwrap() };
    let key = env.dir.path().join(format!("{prefix}.remote-key"));
    std::fs::write(&key, age_d(env, ids, &env.get_object(&format!("{prefix}/.git-s3/keyring")))).unwrap();
    serde_json::from_slice(&age_d(env, &key, &body)).unwrap()
}

/// The manifest of `prefix` once its views (written in the background
/// after a push) cover every pack, waiting up to a minute.
fn wait_for_covering_views(env: &TestEnv, prefix: &str, ids: Option<&Path>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = manifest(env, prefix, ids);
        let names = |c: &Value| -> Vec<String> { c.as_array().into_iter().flatten().filter_map(|n| n.as_str().map(str::to_string)).collect() };
        let mut covers = names(&m["views"]["covers"]);
        for i in m["views"]["increments"].as_array().into_iter().flatten() {
            covers.extend(names(&i["covers"]));
        }
        let packs: Vec<String> = m["packs"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str().map(str::to_string)).collect();
        if m["views"]["skeleton"]["name"].is_string() && m["views"]["tips"]["name"].is_string() && packs.iter().all(|p| covers.contains(p)) {
            return m;
        }
        assert!(Instant::now() < deadline, "no views covering every pack of {prefix}: {m}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Pseudo-random, incompressible lines of 64 bytes (deterministic).
fn noise_line(seed: u64) -> String {
    let mut s: String = testkit::xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).take(63).map(|x| (b'a' + (x % 26) as u8) as char).collect();
    s.push('\n');
    s
}

/// `shim/tests/ranged.rs`'s history: `COMMITS` commits each rewriting a few
/// lines of three ~40 KB files (deltas on deltas), a new 20 KB file in
/// each from the 11th, repacked with fresh deltas.
fn history(env: &TestEnv, name: &str) -> PathBuf {
    let repo = env.path(name);
    std::fs::create_dir_all(&repo).unwrap();
    env.git(&repo, &["init", "-q", "-b", "main"]);
    let mut files: Vec<Vec<String>> = (0..FILES.len()).map(|k| (0..640).map(|l| noise_line((k * 100_000 + l) as u64)).collect()).collect();
    let mut script = String::new();
    for i in 1..=COMMITS {
        let when = 1_700_000_000 + u64::from(i) * 86_400;
        script.push_str(&format!("commit refs/heads/main\nmark :{i}\ncommitter T <t@example.com> {when} +0000\ndata <<EOM\ncommit {i}\nEOM\n"));
        if i > 1 {
            script.push_str(&format!("from :{}\n", i - 1));
        }
        for (k, f) in FILES.iter().enumerate() {
            for j in 0..4u64 {
                let line = ((u64::from(i) * 37 + j * 151 + k as u64 * 13) % 640) as usize;
                files[k][line] = noise_line(1_000_000 + u64::from(i) * 1000 + j * 10 + k as u64);
            }
            let content: String = files[k].concat();
            script.push_str(&format!("M 644 inline {f}\ndata {}\n{content}\n", content.len()));
        }
        if i > 10 {
            let content: String = (0..320u64).map(|l| noise_line(5_000_000 + u64::from(i) * 1000 + l)).collect();
            script.push_str(&format!("M 644 inline later/{i}.txt\ndata {}\n{content}\n", content.len()));
        }
    }
    testkit::fast_import(env, &repo, &script);
    env.git(&repo, &["checkout", "-q", "main"]);
    env.git(&repo, &["repack", "-adfq"]);
    repo
}

/// Bytes read from S3 by a clone of `url` into `dir` with `args` (cold cache).
fn clone_bytes(env: &TestEnv, proxy: &FieldServer, url: &str, dir: &str, args: &[&str]) -> u64 {
    env.git_s3(&env.work(), &["cache", "clear"]);
    let before = proxy.counts().bytes_down;
    let mut all = vec!["clone", "-q"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[url, dir]);
    env.git(&env.work(), &all);
    env.fsck_partial(&env.path(dir));
    proxy.counts().bytes_down - before
}

/// The plaintext sizes of the packs a manifest names (not the views).
fn packs_size(m: &Value) -> u64 {
    m["packs"].as_array().unwrap().iter().map(|p| p["size"].as_u64().unwrap()).sum()
}

/// Every object of the encrypted remote at `prefix` is an age file, and no
/// object id of `src` nor pack name of manifest `m` (views included) shows
/// in a key (12 hex digits of it) or a body (hex or raw).
fn assert_reveals_no_ids(env: &TestEnv, src: &Path, prefix: &str, m: &Value) {
    let mut ids: Vec<String> =
        env.git(src, &["rev-list", "--all", "--objects"]).lines().filter_map(|l| l.split_whitespace().next().map(str::to_string)).collect();
    let entries = m["packs"].as_array().unwrap().iter().chain(["skeleton", "tips"].iter().map(|k| &m["views"][k]));
    ids.extend(entries.filter_map(|p| p["name"].as_str().map(str::to_string)));
    let all = objects(env, prefix);
    assert!(all.len() > 4, "{prefix}: {}", all.len());
    let raw = |h: &str| -> Vec<u8> { (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect() };
    for (key, body) in &all {
        assert!(body.starts_with(AGE_MAGIC), "{key} is not an age file");
        for id in &ids {
            assert!(!key.contains(&id[..12]), "{key} names {id}");
            let (hex, bin) = (id.as_bytes(), raw(id));
            assert!(!body.windows(hex.len()).any(|w| w == hex), "{key} holds {id} in hex");
            assert!(!body.windows(bin.len()).any(|w| w == &bin[..]), "{key} holds {id}");
        }
    }
}

/// Views after a push and object maps on an encrypted remote: the
/// background refresh writes encrypted views under keyed names (as on a
/// plaintext remote, 200 kB threshold here), with encrypted object maps;
/// `--depth 1` and blob:none clones then read about what they read from
/// the same history on a plaintext remote (age's overhead: a header per
/// object, 16 bytes per 64 KiB, the keyring and a padded manifest), far
/// below the whole remote; the bucket names no object id anywhere.
#[test]
fn after_a_push_shallow_and_partial_clones_of_an_encrypted_remote_cost_what_plaintext_ones_do() {
    let (env, proxy, ids, recipient) = counted_env();
    env.set_env("GIT_S3_VIEWS_AUTO_BYTES", "200000");
    let src = history(&env, "src");
    let plain_url = env.url("plain");
    env.git(&src, &["push", "-q", &plain_url, "main"]);
    let enc_url = encrypted_remote(&env, &recipient, "enc");
    env.git(&src, &["push", "-q", &enc_url, "main"]);
    wait_for_covering_views(&env, "plain", None);
    let em = wait_for_covering_views(&env, "enc", Some(&ids));
    for kind in ["skeleton", "tips"] {
        assert!(em["views"][kind]["map_size"].as_u64().unwrap_or(0) > 0, "the encrypted {kind} view has an object map: {em}");
    }
    assert_eq!(em["views"]["tips"]["key"], 1, "views encrypted with the remote key's generation: {em}");

    let whole = packs_size(&em);
    let mut figures = Vec::new();
    let kinds = [
        ("depth 1", &["--depth", "1"][..]),
        ("blob:none", &["--filter=blob:none"][..]),
        ("blob:none --no-checkout", &["--filter=blob:none", "--no-checkout"][..]),
    ];
    for (kind, args) in kinds {
        let tag = kind.replace([' ', ':', '-'], "");
        let p = clone_bytes(&env, &proxy, &plain_url, &format!("p-{tag}"), args);
        let e = clone_bytes(&env, &proxy, &enc_url, &format!("e-{tag}"), args);
        assert_eq!(env.git(&env.path(&format!("e-{tag}")), &["rev-parse", "HEAD"]), env.git(&src, &["rev-parse", "HEAD"]));
        figures.push(format!("{kind}: plaintext {p} B, encrypted {e} B"));
        assert!(e <= p + p / 10 + (32 << 10), "{kind}: the encrypted remote's clone read {e} B, the plaintext one's {p} B");
        if kind == "blob:none --no-checkout" {
            assert!(e < whole / 10, "{kind}: {e} B read of an encrypted remote of {whole} B: its skeleton view was not used");
        }
    }
    eprintln!("views after a push, the remote's packs {whole} B (plaintext sizes): {}", figures.join("; "));
    env.wait_daemon_idle(Duration::from_secs(30));
    assert_reveals_no_ids(&env, &src, "enc", &em);
}

/// A pushed, gc'd remote (views and object maps) and a blob:none clone of it (cold cache).
fn blobless_clone(env: &TestEnv, src: &Path, url: &str, dir: &str) -> PathBuf {
    env.git(src, &["push", "-q", url, "main"]);
    env.git_s3(&env.work(), &["gc", url]);
    env.git_s3(&env.work(), &["cache", "clear"]);
    env.git(&env.work(), &["clone", "-q", "--filter=blob:none", url, dir]);
    env.path(dir)
}

/// A lazy checkout of an old commit, `dir` a blob:none clone: bytes read
/// and ranged GETs made.
fn lazy_checkout(env: &TestEnv, proxy: &FieldServer, src: &Path, dir: &Path, rev: &str) -> (u64, u64) {
    let before = proxy.counts();
    env.git(dir, &["checkout", "-q", rev]);
    let after = proxy.counts();
    for f in FILES {
        assert_eq!(std::fs::read(dir.join(f)).unwrap(), env.git(src, &["show", &format!("{rev}:{f}")]).into_bytes(), "{f}");
    }
    env.fsck_partial(dir);
    (after.bytes_down - before.bytes_down, after.of(RequestKind::RangedGet) - before.of(RequestKind::RangedGet))
}

/// Ranged reads of encrypted packs: a blob:none clone's checkout of an old
/// commit reads the objects (and their delta bases) as whole 64 KiB age
/// chunks: a small multiple of what the plaintext remote's ranged reads
/// cost, far below the pack.
#[test]
fn a_lazy_checkout_from_an_encrypted_remote_reads_chunks_not_the_pack() {
    let (env, proxy, ids, recipient) = counted_env();
    let src = history(&env, "src");
    let old = env.git(&src, &["rev-parse", "HEAD~30"]).trim().to_string();
    let p = blobless_clone(&env, &src, &env.url("plain"), "p");
    let enc_url = encrypted_remote(&env, &recipient, "enc");
    let e = blobless_clone(&env, &src, &enc_url, "e");
    let m = manifest(&env, "enc", Some(&ids));
    assert!(m["packs"].as_array().unwrap().iter().all(|p| p["map_size"].as_u64().unwrap_or(0) > 0), "gc wrote encrypted object maps: {m}");
    let whole = packs_size(&m);
    let (plain_read, plain_ranged) = lazy_checkout(&env, &proxy, &src, &p, &old);
    let (enc_read, enc_ranged) = lazy_checkout(&env, &proxy, &src, &e, &old);
    eprintln!(
        "lazy checkout of HEAD~30: plaintext {plain_read} B in {plain_ranged} ranged GETs; encrypted {enc_read} B in {enc_ranged} ranged GETs; the remote's packs {whole} B"
    );
    assert!(enc_ranged > 0, "the encrypted packs were read by ranges");
    assert!(env.missing_objects(&e) > 0, "still a partial clone");
    assert!(enc_read <= 4 * plain_read + (256 << 10), "encrypted {enc_read} B vs plaintext {plain_read} B");
    assert!(enc_read < whole / 2, "encrypted {enc_read} B of a remote of {whole} B");
    env.wait_daemon_idle(Duration::from_secs(30));
    assert_reveals_no_ids(&env, &src, "enc", &m);

    // gc and doctor tell the maps' keyed names from unreferenced objects: none deleted, none reported.
    env.git_s3(&env.work(), &["gc", &enc_url, "--grace-seconds", "0"]);
    let m = manifest(&env, "enc", Some(&ids));
    let entries = m["packs"].as_array().unwrap().len() + 2;
    assert_eq!(env.keys("enc/.git-s3/packs/").len(), 3 * entries, "a .pack, an .idx and a map for each of {m}");
    let doc: Value = serde_json::from_str(&env.git_s3(&env.work(), &["doctor", &enc_url, "--json"])).unwrap();
    assert_eq!(doc["issues"].as_array().map(Vec::len), Some(0), "the maps are no unreferenced objects: {doc}");
}

/// Every chunk read by ranges is authenticated: altered in transit (every
/// ranged read of a pack), the lazy fetch fails in one line naming the
/// object, nothing is written; once the transfer is sound the checkout works.
#[test]
fn a_tampered_chunk_is_refused_and_nothing_is_written() {
    let (env, proxy, _, recipient) = counted_env();
    let src = history(&env, "src");
    let old = env.git(&src, &["rev-parse", "HEAD~30"]).trim().to_string();
    let enc_url = encrypted_remote(&env, &recipient, "enc");
    let e = blobless_clone(&env, &src, &enc_url, "e");
    let missing = env.missing_objects(&e);
    proxy.set_faults(20261205, vec![Fault::new(FaultAction::FlipBytes, &[RequestKind::RangedGet], 1.0).on_paths_containing("/.git-s3/packs/")]);
    let stderr = env.git_fail(&e, &["checkout", "-q", &old]);
    assert!(proxy.counts().faults > 0, "the ranged reads met the fault");
    let ours: Vec<&str> = error_lines(&stderr).into_iter().filter(|l| l.contains("does not decrypt with the remote's key")).collect();
    assert_eq!(ours.len(), 1, "one line says what went wrong: {stderr}");
    assert!(!stderr.contains("SdkError"), "{stderr}");
    assert_eq!(env.missing_objects(&e), missing, "nothing was written");
    assert_eq!(env.git(&e, &["rev-parse", "HEAD"]), env.git(&src, &["rev-parse", "HEAD"]), "the checkout did not happen");
    proxy.clear_faults();
    let (_, ranged) = lazy_checkout(&env, &proxy, &src, &e, &old);
    assert!(ranged > 0, "read by ranges again");
}

/// `git s3 access revoke --reencrypt` moves the views' packs to the new
/// key with the others (before, it left them under the older key, which it
/// then drops from the keyring): the views stay and serve a depth-1 clone.
#[test]
fn views_survive_a_revoke_with_reencrypt() {
    let (env, proxy, ids, recipient) = counted_env();
    env.set_env("GIT_S3_VIEWS_AUTO_BYTES", "200000");
    let bob = keygen(&env, Some(&env.dir.path().join("bob")));
    let src = history(&env, "src");
    let url = env.url("enc");
    env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &recipient, "--encrypt-to", &bob, &url]);
    env.git(&src, &["push", "-q", &url, "main"]);
    wait_for_covering_views(&env, "enc", Some(&ids));
    env.wait_daemon_idle(Duration::from_secs(30));
    env.git_s3(&env.work(), &["access", "revoke", "--reencrypt", &url, &bob]);
    let m = manifest(&env, "enc", Some(&ids));
    for kind in ["skeleton", "tips"] {
        assert_eq!(m["views"][kind]["key"], 2, "the {kind} view moved to the new key: {m}");
    }
    let tips = m["views"]["tips"]["size"].as_u64().unwrap();
    let read = clone_bytes(&env, &proxy, &url, "d1", &["--depth", "1"]);
    assert_eq!(env.git(&env.path("d1"), &["rev-parse", "HEAD"]), env.git(&src, &["rev-parse", "HEAD"]));
    assert!(read < tips + tips / 10 + (32 << 10), "a depth-1 clone read {read} B; the tips view is {tips} B");
}
