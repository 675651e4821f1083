//! The local cache: a second clone on the machine needs no bundle download
//! and links pre-indexed packs; corrupt entries are refetched; the size cap
//! evicts; concurrent clones share it safely.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::path::Path;

use testkit::TestEnv;

fn verbose_clone(env: &TestEnv, url: &str, dest: &str) -> String {
    let mut c = env.command("git", &env.work());
    c.env("GIT_REMOTE_S3_VERBOSE", "1").args(["clone", "-q", url, dest]);
    String::from_utf8_lossy(&env.run(c).stderr).into_owned()
}

fn bundle_gets(log: &str) -> usize {
    log.lines().filter(|l| l.contains("s3.get") && l.contains(".bundle") && l.contains(" ms)")).count()
}

fn cache_dir(env: &TestEnv) -> std::path::PathBuf {
    env.dir.path().join("cache")
}

#[test]
fn pushed_and_cloned_refs_are_served_from_the_cache() {
    let env = TestEnv::new();
    let repo = env.new_repo("src");
    env.git(&repo, &["branch", "dev"]);
    let url = env.url("cached");
    env.git(&repo, &["push", "-q", &url, "main", "dev"]);
    // What we pushed is cached: the first clone downloads no bundle.
    let log = verbose_clone(&env, &url, "c1");
    assert_eq!(bundle_gets(&log), 0, "{log}");
    // The first clone indexed the bundle and kept the pack: the second links it.
    let log = verbose_clone(&env, &url, "c2");
    assert_eq!(bundle_gets(&log), 0, "{log}");
    assert!(log.contains("linked a cached pre-indexed pack"), "{log}");
    env.git(&env.path("c2"), &["fsck", "--no-progress"]);
    assert_eq!(env.git(&env.path("c2"), &["rev-parse", "HEAD"]), env.git(&repo, &["rev-parse", "HEAD"]));

    // Another user (empty cache) downloads.
    let other = TestEnv::new();
    let mut c = other.command("git", &other.work());
    c.env("GIT_REMOTE_S3_VERBOSE", "1").args(["clone", "-q", &url.replace(&other.bucket, &env.bucket), "x"]);
    let log = String::from_utf8_lossy(&other.run(c).stderr).into_owned();
    assert_eq!(bundle_gets(&log), 1, "one bundle for main; dev's tip is the same commit: {log}");
}

#[test]
fn corrupt_cache_entries_are_refetched_not_used() {
    let env = TestEnv::new();
    let repo = env.new_repo("src");
    env.commit(&repo, "data.txt", &"payload\n".repeat(5000), "data");
    let url = env.url("corrupt");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let sha = env.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    let bundle = cache_dir(&env).join(format!("bundles/{sha}.bundle"));
    let len = std::fs::metadata(&bundle).unwrap().len() as usize;
    std::fs::write(&bundle, vec![b'#'; len]).unwrap();
    let log = verbose_clone(&env, &url, "c1");
    assert_eq!(bundle_gets(&log), 1, "refetched once: {log}");
    env.git(&env.path("c1"), &["fsck", "--no-progress"]);
    // the cache now holds a good bundle again
    assert_eq!(&std::fs::read(&bundle).unwrap()[..16], b"# v2 git bundle\n");

    // a cached pack with its .idx gone is dropped and rebuilt from the bundle
    let pack_entry = cache_dir(&env).join(format!("packs/{sha}"));
    for f in std::fs::read_dir(&pack_entry).unwrap().flatten() {
        if f.path().extension().and_then(|e| e.to_str()) == Some("idx") {
            std::fs::remove_file(f.path()).unwrap();
        }
    }
    verbose_clone(&env, &url, "c2");
    env.git(&env.path("c2"), &["fsck", "--no-progress"]);
    assert!(std::fs::read_dir(&pack_entry).unwrap().flatten().any(|f| f.path().extension().and_then(|e| e.to_str()) == Some("idx")));
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() { dir_size(&e.path()) } else { m.len() };
    }
    total
}

#[test]
fn size_cap_evicts_least_recently_used() {
    let env = TestEnv::new();
    let cap: u64 = 600_000;
    // random-ish content that does not compress: each bundle ~400 KB
    for i in 0..3 {
        let repo = env.new_repo(&format!("r{i}"));
        let data: String = testkit::xorshift(0x1234_5678 + i).take(400_000).map(|x| (b'a' + (x % 26) as u8) as char).collect();
        env.commit(&repo, "blob.txt", &data, "blob");
        let mut c = env.command("git", &repo);
        c.env("GIT_S3_CACHE_MAX_BYTES", cap.to_string()).args(["push", "-q", &env.url(&format!("cap{i}")), "main"]);
        env.run(c);
    }
    // Eviction runs in the background; `git s3 cache` reports once it is done.
    let doc: serde_json::Value = serde_json::from_str(&env.git_s3(&env.work(), &["cache", "--json"])).unwrap();
    assert!(doc["bytes"].as_u64().unwrap() <= cap, "{doc}");
    let used = dir_size(&cache_dir(&env).join("bundles")) + dir_size(&cache_dir(&env).join("packs"));
    assert!(used <= cap, "cache holds {used} bytes, cap {cap}");
    // the most recent push is still cached
    let newest = env.git(&env.path("r2"), &["rev-parse", "HEAD"]).trim().to_string();
    assert!(cache_dir(&env).join(format!("bundles/{newest}.bundle")).exists());
}

#[test]
fn concurrent_clones_share_a_cold_cache() {
    let env = TestEnv::new();
    let repo = env.new_repo("src");
    for i in 0..4 {
        env.git(&repo, &["checkout", "-q", "-b", &format!("b{i}"), "main"]);
        env.commit(&repo, &format!("f{i}"), &format!("{i}\n").repeat(2000), &format!("b{i}"));
    }
    let url = env.url("shared");
    env.git(&repo, &["push", "-q", &url, "--all"]);
    std::fs::remove_dir_all(cache_dir(&env)).unwrap();
    env.git_s3(&env.work(), &["daemon", "restart"]);
    let handles: Vec<_> = (0..3)
        .map(|i| {
            let mut c = env.command("git", &env.work());
            c.args(["clone", "-q", &url, &format!("c{i}")]);
            std::thread::spawn(move || c.output().unwrap())
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for i in 0..3 {
        let c = env.path(&format!("c{i}"));
        env.git(&c, &["fsck", "--no-progress"]);
        for b in 0..4 {
            assert_eq!(env.git(&c, &["rev-parse", &format!("origin/b{b}")]), env.git(&repo, &["rev-parse", &format!("b{b}")]));
        }
    }
}

#[test]
fn packs_format_repeat_clone_links_cached_packs() {
    let env = TestEnv::new();
    let repo = env.new_repo("src");
    env.commit(&repo, "data.txt", &"line\n".repeat(20000), "data");
    let url = env.url("packs-cached");
    env.git(&repo, &["-c", "s3.format=packs", "push", "-q", &url, "main"]);
    let pack_gets = |log: &str| log.lines().filter(|l| l.contains("s3.get") && l.contains(".pack") && l.contains(" ms)")).count();
    let log = verbose_clone(&env, &url, "c1");
    assert_eq!(pack_gets(&log), 1, "{log}");
    let log = verbose_clone(&env, &url, "c2");
    assert_eq!(pack_gets(&log), 0, "{log}");
    assert!(log.contains("linked a cached pack"), "{log}");
    env.git(&env.path("c2"), &["fsck", "--no-progress"]);
    assert_eq!(env.git(&env.path("c2"), &["rev-parse", "HEAD"]), env.git(&repo, &["rev-parse", "HEAD"]));
}

/// The bytes of the files in the cache's areas, each file (inode) counted
/// once however many entries link it, and the number of entries: what the
/// cache's index must say.
fn unique_file_bytes(cache: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &Path, seen: &mut std::collections::HashSet<(u64, u64)>, total: &mut u64) {
        let m = std::fs::symlink_metadata(p).unwrap();
        if m.is_dir() {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                walk(&e.path(), seen, total);
            }
        } else if seen.insert((m.dev(), m.ino())) {
            *total += m.len();
        }
    }
    let (mut seen, mut total, mut entries) = (std::collections::HashSet::new(), 0, 0);
    for area in ["bundles", "packs", "lfs", "mirrors"] {
        for e in std::fs::read_dir(cache.join(area)).unwrap().flatten() {
            entries += 1;
            walk(&e.path(), &mut seen, &mut total);
        }
    }
    (total, entries)
}

#[test]
fn clones_and_shallow_fetches_past_the_cap_all_succeed_and_the_cap_holds() {
    let env = TestEnv::new();
    let cap: u64 = 1_500_000;
    env.set_env("GIT_S3_CACHE_MAX_BYTES", &cap.to_string());
    // Four remotes (two of each format), ~400 KB that does not compress in
    // each, two commits deep: together far more than the cap.
    let mut remotes = Vec::new();
    for i in 0..4u64 {
        let repo = env.new_repo(&format!("src{i}"));
        for step in 0..2u64 {
            std::fs::write(repo.join(format!("blob{step}.bin")), testkit::noise(200_000, 10 * i + step)).unwrap();
            env.git(&repo, &["add", "."]);
            env.git(&repo, &["commit", "-q", "-m", &format!("step {step}")]);
        }
        let url = env.url(&format!("load{i}"));
        let format = if i % 2 == 0 { "packs" } else { "bundles" };
        env.git(&repo, &["-c", &format!("s3.format={format}"), "push", "-q", &url, "main"]);
        remotes.push((repo, url));
    }
    // Two rounds of eight at once: a whole clone and a shallow one (through
    // the remote's mirror in the cache) of each remote, while the cache
    // evicts to stay under its cap.
    for round in 0..2 {
        let handles: Vec<_> = remotes
            .iter()
            .enumerate()
            .flat_map(|(i, (_, url))| [vec![], vec!["--depth", "1"]].into_iter().enumerate().map(move |(k, extra)| (i, k, url.clone(), extra)))
            .map(|(i, k, url, extra)| {
                let dest = format!("c{round}-{i}-{k}");
                let mut c = env.command("git", &env.work());
                c.args(["clone", "-q"]).args(extra).args([url.as_str(), dest.as_str()]);
                (i, dest, std::thread::spawn(move || c.output().unwrap()))
            })
            .collect();
        for (i, dest, h) in handles {
            let out = h.join().unwrap();
            assert!(out.status.success(), "clone {dest}: {}", String::from_utf8_lossy(&out.stderr));
            let clone = env.path(&dest);
            env.git(&clone, &["fsck", "--no-progress"]);
            assert_eq!(env.git(&clone, &["rev-parse", "HEAD"]), env.git(&remotes[i].0, &["rev-parse", "HEAD"]), "{dest}");
        }
    }
    // The cap holds, and the cache counts each file once, as on disk.
    let doc: serde_json::Value = serde_json::from_str(&env.git_s3(&env.work(), &["cache", "--json"])).unwrap();
    let (bytes, entries) = unique_file_bytes(&cache_dir(&env));
    assert!(doc["bytes"].as_u64().unwrap() <= cap, "{doc}");
    assert_eq!(doc["bytes"].as_u64().unwrap(), bytes, "{doc}");
    assert_eq!(doc["entries"].as_u64().unwrap(), entries, "{doc}");
    assert!(doc["misses"].as_u64().unwrap() > 0 && doc["hits"].as_u64().unwrap() > 0, "the cache was used: {doc}");
}
