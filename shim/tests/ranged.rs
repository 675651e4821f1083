//! Lazy fetches of old commits read by ranges from the packs in the bucket:
//! a blob:none clone, then `git checkout <an old commit>`, reads the old
//! files and their delta bases, about what local git transfers, not the
//! whole remote; a range that does not verify is refused and nothing is
//! written. Bytes and requests are counted by the field server in front of
//! the test store.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use testkit::field::{Fault, FaultAction, RequestKind};
use testkit::{FieldServer, TestEnv};

const COMMITS: u32 = 40;
const FILES: [&str; 3] = ["a.txt", "b.txt", "dir/c.txt"];

fn counted_env() -> (TestEnv, FieldServer) {
    let env = TestEnv::new();
    let proxy = FieldServer::start();
    env.set_env("AWS_ENDPOINT_URL", &proxy.url);
    env.git(&env.work(), &["config", "--global", "s3.format", "packs"]);
    (env, proxy)
}

/// Pseudo-random, incompressible lines of 64 bytes (deterministic).
fn noise_line(seed: u64) -> String {
    let mut s: String = testkit::xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).take(63).map(|x| (b'a' + (x % 26) as u8) as char).collect();
    s.push('\n');
    s
}

/// `COMMITS` commits, each rewriting a few lines of three ~40 KB files:
/// git stores most versions of each file as deltas on another one, so an
/// old commit's files need their delta bases too. Commits 11 on also add a
/// file each.
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
        // From commit 11 on, a new 20 KB file each: what an old commit
        // lacks weighs on the remote (a lazy checkout must not read it).
        if i > 10 {
            let content: String = (0..320u64).map(|l| noise_line(5_000_000 + u64::from(i) * 1000 + l)).collect();
            script.push_str(&format!("M 644 inline later/{i}.txt\ndata {}\n{content}\n", content.len()));
        }
    }
    let mut cmd = env.command("git", &repo);
    cmd.args(["fast-import", "--quiet"]).stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    env.git(&repo, &["checkout", "-q", "main"]);
    // Deltas computed afresh (fast-import's are few): the pushed pack has
    // chains of them, as a real repository's packs do.
    env.git(&repo, &["repack", "-adfq"]);
    repo
}

/// Bytes of the packs in a repository.
fn pack_bytes(repo: &Path) -> u64 {
    std::fs::read_dir(repo.join(".git/objects/pack"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// Requests for keys ending with `suffix` since the field server started.
fn requests_for(proxy: &FieldServer, kind: RequestKind, suffix: &str) -> usize {
    proxy.requests().iter().filter(|r| r.kind == kind && r.key.as_deref().is_some_and(|k| k.ends_with(suffix))).count()
}

/// A local bare copy of `src`, the yardstick: what local git transfers for
/// a blob:none clone's lazy checkout of `rev`.
fn local_lazy_checkout_bytes(env: &TestEnv, src: &Path, rev: &str) -> u64 {
    let bare = env.path("bare.git");
    env.git(&env.work(), &["clone", "-q", "--bare", src.to_str().unwrap(), bare.to_str().unwrap()]);
    env.git(&bare, &["config", "uploadpack.allowFilter", "true"]);
    env.git(&bare, &["config", "uploadpack.allowAnySHA1InWant", "true"]);
    let bare_url = format!("file://{}", bare.display());
    env.git(&env.work(), &["clone", "-q", "--filter=blob:none", "--no-local", &bare_url, "local-p"]);
    let local = env.path("local-p");
    let before = pack_bytes(&local);
    env.git(&local, &["checkout", "-q", rev]);
    pack_bytes(&local) - before
}

/// The remote after a push and `git s3 gc` (views written), a cold cache,
/// and a blob:none clone of it.
fn blobless_clone(env: &TestEnv, src: &Path, prefix: &str) -> (String, PathBuf) {
    let url = env.url(prefix);
    env.git(src, &["push", "-q", &url, "main"]);
    env.git_s3(&env.work(), &["gc", &url]);
    env.git_s3(&env.work(), &["cache", "clear"]);
    env.git(&env.work(), &["clone", "-q", "--filter=blob:none", &url, "p"]);
    (url, env.path("p"))
}

#[test]
fn a_lazy_checkout_of_an_old_commit_reads_its_objects_by_ranges() {
    let (env, proxy) = counted_env();
    let src = history(&env, "src");
    let old = env.git(&src, &["rev-parse", "HEAD~30"]).trim().to_string();
    let local = local_lazy_checkout_bytes(&env, &src, &old);
    let (_url, p) = blobless_clone(&env, &src, "ranged");
    let remote_bytes: u64 = {
        let m: serde_json::Value = serde_json::from_slice(&env.get_object("ranged/.git-s3/manifest.json")).unwrap();
        m["packs"].as_array().unwrap().iter().map(|p| p["size"].as_u64().unwrap()).sum()
    };

    let before = proxy.counts();
    env.git(&p, &["checkout", "-q", &old]);
    let after = proxy.counts();
    let read = after.bytes_down - before.bytes_down;
    let ranged = after.of(RequestKind::RangedGet) - before.of(RequestKind::RangedGet);
    eprintln!("lazy checkout of HEAD~30: {read} B from S3 in {ranged} ranged GETs; local git {local} B; the remote's packs {remote_bytes} B");
    for f in FILES {
        assert_eq!(std::fs::read(p.join(f)).unwrap(), env.git(&src, &["show", &format!("{old}:{f}")]).into_bytes(), "{f}");
    }
    env.fsck_partial(&p);
    assert!(read <= 3 * local, "a lazy checkout read {read} bytes from S3; local git transfers {local} (the remote's packs: {remote_bytes})");
    assert!(ranged > 0, "the objects were read by ranges");

    // Another old commit: the .idx files are not read again.
    let idx_reads = requests_for(&proxy, RequestKind::Get, ".idx");
    env.git(&p, &["checkout", "-q", "HEAD~5"]);
    env.fsck_partial(&p);
    assert_eq!(requests_for(&proxy, RequestKind::Get, ".idx"), idx_reads, "the pack indexes are kept with the mirror");
    assert!(env.missing_objects(&p) > 0, "still a partial clone");
}

#[test]
fn a_range_that_does_not_verify_is_refused_and_nothing_is_written() {
    let (env, proxy) = counted_env();
    let src = history(&env, "src");
    let old = env.git(&src, &["rev-parse", "HEAD~30"]).trim().to_string();
    let (_url, p) = blobless_clone(&env, &src, "flipped");
    let missing_before = env.missing_objects(&p);
    let packs_before = pack_bytes(&p);

    // Every ranged read of a pack arrives altered.
    proxy.set_faults(20261204, vec![Fault::new(FaultAction::FlipBytes, &[RequestKind::RangedGet], 1.0).on_paths_containing(".pack")]);
    let stderr = env.git_fail(&p, &["checkout", "-q", &old]);
    assert!(proxy.counts().faults > 0, "the ranged reads met the fault");
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("do not verify")).collect();
    assert_eq!(ours.len(), 1, "one line says what went wrong: {stderr}");
    assert!(ours[0].contains("nothing was written"), "{stderr}");
    assert!(!stderr.contains("DispatchFailure") && !stderr.contains("SdkError"), "no SDK dump: {stderr}");
    assert_eq!(env.missing_objects(&p), missing_before, "nothing was written to the repository");
    assert_eq!(pack_bytes(&p), packs_before);
    assert_eq!(env.git(&p, &["rev-parse", "HEAD"]), env.git(&src, &["rev-parse", "HEAD"]), "the checkout did not happen");

    // Nothing altered was kept anywhere: once the transfer is sound, the
    // objects are read (by ranges) again, and the checkout is right.
    proxy.clear_faults();
    let ranged_before = proxy.counts().of(RequestKind::RangedGet);
    env.git(&p, &["checkout", "-q", &old]);
    assert!(proxy.counts().of(RequestKind::RangedGet) > ranged_before, "read again, not taken from a mirror");
    for f in FILES {
        assert_eq!(std::fs::read(p.join(f)).unwrap(), env.git(&src, &["show", &format!("{old}:{f}")]).into_bytes(), "{f}");
    }
    env.fsck_partial(&p);
}
