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
use testkit::require_test_hooks;
use testkit::{FieldServer, TestEnv};

const FILES: [&str; 3] = testkit::DELTA_HISTORY_FILES;

fn counted_env() -> (TestEnv, FieldServer) {
    let env = TestEnv::new();
    let proxy = FieldServer::start();
    env.set_env("AWS_ENDPOINT_URL", &proxy.url);
    env.git(&env.work(), &["config", "--global", "s3.format", "packs"]);
    (env, proxy)
}

/// `testkit::delta_history`: 40 commits, each rewriting a few lines of three ~40 KB files:
/// git stores most versions of each file as deltas on another one, so an
/// old commit's files need their delta bases too. Commits 11 on also add a
/// file each.
fn history(env: &TestEnv, name: &str) -> PathBuf {
    testkit::delta_history(env, name, "sha1")
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

/// A pack retired by gc while a lazy fetch reads it by ranges: the ranged
/// read is held (test gate) once it has read its packs' `.idx`; meanwhile a
/// push and `git s3 gc --grace-seconds 0` combine the packs into one and
/// delete the old ones. Released, the read finds its pack gone, reads the
/// manifest again and reads the objects, by ranges, from the pack that
/// replaced it: the checkout is right and the repository sound.
#[test]
fn a_pack_retired_by_gc_during_a_ranged_read_is_read_from_the_pack_that_replaced_it() {
    let (env, proxy) = counted_env();
    require_test_hooks(&env);
    let src = history(&env, "src");
    let old = env.git(&src, &["rev-parse", "HEAD~30"]).trim().to_string();
    let (url, p) = blobless_clone(&env, &src, "retired");
    let m0: serde_json::Value = serde_json::from_slice(&env.get_object("retired/.git-s3/manifest.json")).unwrap();
    let first = m0["packs"][0]["name"].as_str().unwrap().to_string();

    let gate = env.path("ranged-gate");
    let mut c = env.command("git", &p);
    c.env("GIT_S3_TEST_RANGED_READ_GATE", &gate).args(["checkout", "-q", &old]).stdout(Stdio::piped()).stderr(Stdio::piped());
    let checkout = c.spawn().unwrap();
    let waiting = env.path("ranged-gate.waiting");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !waiting.exists() {
        assert!(std::time::Instant::now() < deadline, "the ranged read never reached its gate");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    env.commit(&src, "new.txt", "new\n", "after the clone");
    env.git(&src, &["push", "-q", &url, "main"]);
    env.git_s3(&env.work(), &["gc", &url, "--grace-seconds", "0"]);
    assert!(!env.keys("retired/.git-s3/packs/").iter().any(|k| k.contains(&first)), "gc deleted the pack being read");
    let ranged_before = proxy.counts().of(RequestKind::RangedGet);
    std::fs::write(&gate, b"").unwrap();

    let out = checkout.wait_with_output().unwrap();
    assert!(out.status.success(), "the checkout failed: {}", String::from_utf8_lossy(&out.stderr));
    for f in FILES {
        assert_eq!(std::fs::read(p.join(f)).unwrap(), env.git(&src, &["show", &format!("{old}:{f}")]).into_bytes(), "{f}");
    }
    env.fsck_partial(&p);
    assert!(proxy.counts().of(RequestKind::RangedGet) > ranged_before + 1, "read by ranges again, from the new pack");
    assert!(env.missing_objects(&p) > 0, "still a partial clone: not the whole remote");
}

/// A lazy fetch that reads by ranges shows its progress on stderr as the
/// other downloads do (after git's `GIT_PROGRESS_DELAY`, 0 here), when git
/// asks for progress (`--progress`), and not with `-q`.
#[test]
fn ranged_reads_show_progress_unless_quiet() {
    let (env, proxy) = counted_env();
    env.set_env("GIT_PROGRESS_DELAY", "0");
    let src = history(&env, "src");
    let (_url, p) = blobless_clone(&env, &src, "progress");
    let blob = |rev: &str, f: &str| env.git(&src, &["rev-parse", &format!("{rev}:{f}")]).trim().to_string();
    let fetch = |args: &[&str]| -> String {
        let mut c = env.command("git", &p);
        c.args(args);
        String::from_utf8_lossy(&env.run(c).stderr).into_owned()
    };
    // Two files of unrelated contents: the second is not among the delta
    // bases the first brought in.
    let quiet = fetch(&["fetch", "-q", "origin", &blob("HEAD~30", "a.txt")]);
    let ranged = proxy.counts().of(RequestKind::RangedGet);
    assert!(ranged > 0, "read by ranges");
    assert!(!quiet.contains("by ranges"), "quiet: {quiet}");
    let shown = fetch(&["fetch", "--progress", "origin", &blob("HEAD~30", "b.txt")]);
    assert!(proxy.counts().of(RequestKind::RangedGet) > ranged, "read by ranges");
    assert!(shown.contains("Reading objects by ranges: ") && shown.contains(", done."), "{shown}");
    env.fsck_partial(&p);
}

/// The manifest of the remote at `prefix`.
fn manifest(env: &TestEnv, prefix: &str) -> serde_json::Value {
    serde_json::from_slice(&env.get_object(&format!("{prefix}/.git-s3/manifest.json"))).unwrap()
}

/// Sum of `field` over the manifest's packs.
fn packs_sum(m: &serde_json::Value, field: &str) -> u64 {
    m["packs"].as_array().unwrap().iter().map(|p| p[field].as_u64().unwrap_or(0)).sum()
}

/// GETs (whole objects) of keys ending with `suffix` made by `run`.
fn gets_during(proxy: &FieldServer, suffix: &str, run: impl FnOnce()) -> usize {
    let before = requests_for(proxy, RequestKind::Get, suffix);
    run();
    requests_for(proxy, RequestKind::Get, suffix) - before
}

/// Issue 20 point 3: the first lazy fetch reads each pack's object map
/// (its blobs' places by prefix), not its `.idx`: fewer bytes, the same
/// ranges. The same remote made "older" (no maps in the manifest or the
/// bucket, as a remote written before them) is still read by ranges, with
/// the `.idx` files: exactly the bytes the maps saved more.
#[test]
fn a_first_lazy_fetch_reads_object_maps_instead_of_pack_indexes() {
    let (env, proxy) = counted_env();
    let src = history(&env, "src");
    let old = env.git(&src, &["rev-parse", "HEAD~30"]).trim().to_string();
    let (url, p) = blobless_clone(&env, &src, "mapped");
    let m = manifest(&env, "mapped");
    let (idx_bytes, map_bytes) = (packs_sum(&m, "idx_size"), packs_sum(&m, "map_size"));
    assert!(map_bytes > 0, "gc wrote object maps: {m}");
    assert!(map_bytes < idx_bytes / 2, "a map is smaller than its .idx: {map_bytes} vs {idx_bytes}");

    let before = proxy.counts().bytes_down;
    let ranged_before = proxy.counts().of(RequestKind::RangedGet);
    let idx_gets = gets_during(&proxy, ".idx", || {
        let map_gets = gets_during(&proxy, ".map", || {
            env.git(&p, &["checkout", "-q", &old]);
        });
        assert!(map_gets > 0, "the maps were read");
    });
    let with_maps = proxy.counts().bytes_down - before;
    assert_eq!(idx_gets, 0, "no .idx was read");
    assert!(proxy.counts().of(RequestKind::RangedGet) > ranged_before, "the objects were read by ranges");
    for f in FILES {
        assert_eq!(std::fs::read(p.join(f)).unwrap(), env.git(&src, &["show", &format!("{old}:{f}")]).into_bytes(), "{f}");
    }
    env.fsck_partial(&p);

    // The remote as one written before maps: none named, none in the bucket.
    let mut older = m.clone();
    for pack in older["packs"].as_array_mut().unwrap() {
        env.delete_object(&format!("mapped/.git-s3/packs/pack-{}.map", pack["name"].as_str().unwrap()));
        pack.as_object_mut().unwrap().remove("map_size");
    }
    if let Some(views) = older.get_mut("views") {
        for kind in ["skeleton", "tips"] {
            if let Some(v) = views.get_mut(kind).and_then(|v| v.as_object_mut()) {
                v.remove("map_size");
            }
        }
    }
    env.put_object("mapped/.git-s3/manifest.json", &serde_json::to_vec(&older).unwrap());
    env.git_s3(&env.work(), &["cache", "clear"]);
    env.git(&env.work(), &["clone", "-q", "--filter=blob:none", &url, "q"]);
    let q = env.path("q");
    let before = proxy.counts().bytes_down;
    let map_gets = gets_during(&proxy, ".map", || {
        let idx_gets = gets_during(&proxy, ".idx", || {
            env.git(&q, &["checkout", "-q", &old]);
        });
        assert!(idx_gets > 0, "an older remote's .idx files are read");
    });
    let with_indexes = proxy.counts().bytes_down - before;
    assert_eq!(map_gets, 0);
    env.fsck_partial(&q);
    eprintln!("first lazy checkout of HEAD~30: {with_maps} B with maps ({map_bytes} B of maps), {with_indexes} B with the .idx ({idx_bytes} B)");
    assert!(
        with_maps + (idx_bytes - map_bytes) * 9 / 10 <= with_indexes,
        "the maps saved about the difference: {with_maps} B with maps, {with_indexes} B with the .idx ({idx_bytes} B of .idx, {map_bytes} B of maps)"
    );
}

/// A SHA-256 remote's lazy fetch is read by ranges too (32-byte ids in the
/// `.idx`, the maps and REF_DELTA bases), and fsck passes.
#[test]
fn a_sha256_lazy_checkout_reads_its_objects_by_ranges() {
    let (env, proxy) = counted_env();
    let src = testkit::delta_history(&env, "src", "sha256");
    let old = env.git(&src, &["rev-parse", "HEAD~30"]).trim().to_string();
    assert_eq!(old.len(), 64);
    let local = local_lazy_checkout_bytes(&env, &src, &old);
    let (_url, p) = blobless_clone(&env, &src, "sha256");
    assert_eq!(env.git(&p, &["rev-parse", "--show-object-format"]).trim(), "sha256");
    let m = manifest(&env, "sha256");
    assert_eq!(m["object_format"], "sha256", "{m}");
    let remote_bytes = packs_sum(&m, "size");

    let before = proxy.counts();
    env.git(&p, &["checkout", "-q", &old]);
    let after = proxy.counts();
    let read = after.bytes_down - before.bytes_down;
    let ranged = after.of(RequestKind::RangedGet) - before.of(RequestKind::RangedGet);
    eprintln!("sha256 lazy checkout of HEAD~30: {read} B from S3 in {ranged} ranged GETs; local git {local} B; the remote's packs {remote_bytes} B");
    assert!(ranged > 0, "the objects were read by ranges");
    for f in FILES {
        assert_eq!(std::fs::read(p.join(f)).unwrap(), env.git(&src, &["show", &format!("{old}:{f}")]).into_bytes(), "{f}");
    }
    env.fsck_partial(&p);
    assert!(read <= 3 * local, "a lazy checkout read {read} bytes from S3; local git transfers {local} (the remote's packs: {remote_bytes})");
    assert!(env.missing_objects(&p) > 0, "still a partial clone");
}

/// The `.map` of every pack the manifest names: each pack has one (its
/// `map_size` bytes in the bucket).
fn assert_every_pack_has_its_map(env: &TestEnv, prefix: &str, when: &str) {
    let m = manifest(env, prefix);
    let packs = m["packs"].as_array().unwrap();
    assert!(!packs.is_empty());
    for p in packs {
        let size = p["map_size"].as_u64().unwrap_or(0);
        assert!(size > 0, "{when}: pack {} has no map: {m}", p["name"]);
        let map = env.get_object(&format!("{prefix}/.git-s3/packs/pack-{}.map", p["name"].as_str().unwrap()));
        assert_eq!(map.len() as u64, size, "{when}");
    }
}

/// A push of a big pack (its map uploaded with the `.idx` after the
/// answer) and a geometric gc (the pack it combines) write object maps, as
/// a full gc does; small pushes write none (no request more).
#[test]
fn big_pushes_and_the_geometric_gc_write_object_maps() {
    let (env, _proxy) = counted_env();
    let src = history(&env, "src");
    let url = env.url("geo");
    for back in [30, 25, 20, 15, 10, 5, 0] {
        env.git(&src, &["push", "-q", &url, &format!("HEAD~{back}:refs/heads/main")]);
    }
    // The daemon finishes its background uploads before it exits.
    env.git_s3(&env.work(), &["daemon", "stop"]);
    let m = manifest(&env, "geo");
    assert!(m["packs"].as_array().unwrap().len() > 1);
    assert_eq!(packs_sum(&m, "map_size"), 0, "small pushes write no map: {m}");
    assert!(!env.keys("geo/.git-s3/packs/").iter().any(|k| k.ends_with(".map")));
    env.git_s3(&env.work(), &["gc", "--geometric", &url]);
    let packs = manifest(&env, "geo")["packs"].as_array().unwrap().len();
    assert!(packs < 7, "the geometric gc combined packs ({packs} left)");
    assert_every_pack_has_its_map(&env, "geo", "after gc --geometric");

    // One commit of 700 files: an .idx above the threshold.
    let bulk = env.path("bulk");
    std::fs::create_dir_all(&bulk).unwrap();
    env.git(&bulk, &["init", "-q", "-b", "main"]);
    let mut script = String::from("commit refs/heads/main\ncommitter T <t@example.com> 1700000000 +0000\ndata 5\nbulk\n");
    for i in 0..700 {
        let content = format!("file {i}\n");
        script.push_str(&format!("M 644 inline f/{i}.txt\ndata {}\n{content}\n", content.len()));
    }
    testkit::fast_import(&env, &bulk, &script);
    let url = env.url("bulk");
    env.git(&bulk, &["push", "-q", &url, "main"]);
    env.git_s3(&env.work(), &["daemon", "stop"]);
    assert_every_pack_has_its_map(&env, "bulk", "after a push of 700 files");
}

/// A map that misleads (every CRC-32 wrong, yet a sound file: its
/// checksum made again) never leads to a wrong object: the ranged fetch it
/// led fails to verify, and is made again with the `.idx` files.
#[test]
fn a_misleading_object_map_falls_back_to_the_pack_index() {
    let (env, proxy) = counted_env();
    let src = history(&env, "src");
    let old = env.git(&src, &["rev-parse", "HEAD~30"]).trim().to_string();
    let (_url, p) = blobless_clone(&env, &src, "misled");
    let m = manifest(&env, "misled");
    for pack in m["packs"].as_array().unwrap() {
        let key = format!("misled/.git-s3/packs/pack-{}.map", pack["name"].as_str().unwrap());
        let mut map = env.get_object(&key);
        let (hash_len, prefix_len) = (map[5] as usize, map[6] as usize);
        let count = u32::from_be_bytes(map[8 + hash_len..12 + hash_len].try_into().unwrap());
        let mut at = 12 + hash_len;
        let varint = |map: &[u8], at: &mut usize| {
            while map[*at] & 0x80 != 0 {
                *at += 1;
            }
            *at += 1;
        };
        for _ in 0..count {
            varint(&map, &mut at);
            varint(&map, &mut at);
            map[at] ^= 0x5a;
            at += 4 + prefix_len;
        }
        let body = map.len() - hash_len;
        let sum = sha1_of(&env, &map[..body]);
        map[body..].copy_from_slice(&sum);
        env.put_object(&key, &map);
    }

    let idx_gets = gets_during(&proxy, ".idx", || {
        let map_gets = gets_during(&proxy, ".map", || {
            env.git(&p, &["checkout", "-q", &old]);
        });
        assert!(map_gets > 0, "the maps were read");
    });
    assert!(idx_gets > 0, "then the .idx files");
    for f in FILES {
        assert_eq!(std::fs::read(p.join(f)).unwrap(), env.git(&src, &["show", &format!("{old}:{f}")]).into_bytes(), "{f}");
    }
    env.fsck_partial(&p);
}

/// The SHA-1 of `data` (`sha1sum`).
fn sha1_of(env: &TestEnv, data: &[u8]) -> Vec<u8> {
    let mut cmd = env.command("sha1sum", &env.work());
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string();
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

/// A repository of `dirs` directories of ten ~4 KB files each, and two
/// files at the top, in one commit.
fn wide_tree(env: &TestEnv, name: &str, dirs: usize) -> PathBuf {
    let repo = env.path(name);
    std::fs::create_dir_all(&repo).unwrap();
    env.git(&repo, &["init", "-q", "-b", "main"]);
    for d in 0..dirs {
        let dir = repo.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..10 {
            let text: String = (0..64).map(|l| testkit::noise_line((d * 10_000 + f * 100 + l) as u64)).collect();
            std::fs::write(dir.join(format!("f{f}.txt")), text).unwrap();
        }
    }
    std::fs::write(repo.join("README"), "top\n").unwrap();
    std::fs::write(repo.join("Makefile"), "all:\n").unwrap();
    env.git(&repo, &["add", "-A"]);
    env.git(&repo, &["commit", "-q", "-m", "wide"]);
    repo
}

/// Issue 20 point 5 (found by the monorepo benchmark): `git clone
/// --filter=blob:none --sparse` then `git sparse-checkout set <one
/// directory>` fetches a few files lazily. They are read by ranges, not by
/// downloading the tips view (every file of the tip) whole; about what
/// local git transfers for the same two commands.
#[test]
fn a_sparse_checkout_of_one_directory_reads_its_files_not_the_tips_view() {
    let (env, proxy) = counted_env();
    let src = wide_tree(&env, "src", 40);
    let url = env.url("sparse");
    env.git(&src, &["push", "-q", &url, "main"]);
    env.git_s3(&env.work(), &["gc", &url]);
    env.git_s3(&env.work(), &["cache", "clear"]);
    let m = manifest(&env, "sparse");
    let tips = m["views"]["tips"]["name"].as_str().expect("gc wrote a tips view").to_string();
    let tips_size = m["views"]["tips"]["size"].as_u64().unwrap();

    // local git, the yardstick
    let bare = env.path("bare.git");
    env.git(&env.work(), &["clone", "-q", "--bare", src.to_str().unwrap(), bare.to_str().unwrap()]);
    env.git(&bare, &["config", "uploadpack.allowFilter", "true"]);
    env.git(&bare, &["config", "uploadpack.allowAnySHA1InWant", "true"]);
    let bare_url = format!("file://{}", bare.display());
    env.git(&env.work(), &["clone", "-q", "--filter=blob:none", "--sparse", "--no-local", &bare_url, "local-sp"]);
    let local = env.path("local-sp");
    env.git(&local, &["sparse-checkout", "set", "d07"]);
    let local_bytes = pack_bytes(&local);

    let before = proxy.counts();
    let tips_gets = gets_during(&proxy, &format!("{tips}.pack"), || {
        env.git(&env.work(), &["clone", "-q", "--filter=blob:none", "--sparse", &url, "sp"]);
        env.git(&env.path("sp"), &["sparse-checkout", "set", "d07"]);
    });
    let read = proxy.counts().bytes_down - before.bytes_down;
    let sp = env.path("sp");
    assert_eq!(std::fs::read(sp.join("d07/f3.txt")).unwrap(), std::fs::read(src.join("d07/f3.txt")).unwrap());
    assert!(sp.join("README").exists() && !sp.join("d08").exists());
    assert_eq!(tips_gets, 0, "the tips view ({tips_size} B) was downloaded for a sparse checkout of ten files");
    assert!(proxy.counts().of(RequestKind::RangedGet) > before.of(RequestKind::RangedGet), "read by ranges");
    println!("sparse checkout: S3 {read} B, local git {local_bytes} B, tips view {tips_size} B");
    assert!(read < 3 * local_bytes, "read {read} B where local git transfers {local_bytes} B");
    env.fsck_partial(&sp);
}
