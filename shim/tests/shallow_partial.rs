//! Shallow and partial clones through git-s3, in both storage formats:
//! `--depth`, `--deepen`, `--shallow-since`, `--shallow-exclude`,
//! `--unshallow`, `--filter=blob:none|blob:limit|tree:0`, `--sparse`, lazy
//! fetches of a partial clone, pushes and pulls from shallow clones. Bytes
//! read from S3 are counted by a proxy in front of the test server.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::path::{Path, PathBuf};

use testkit::{FieldServer, TestEnv};

const FORMATS: [&str; 2] = ["bundles", "packs"];
const COMMITS: u32 = 40;

/// An environment whose S3 traffic goes through the field server, which
/// counts the bytes.
fn counted_env(format: &str) -> (TestEnv, FieldServer) {
    let env = TestEnv::new();
    let proxy = FieldServer::start();
    env.set_env("AWS_ENDPOINT_URL", &proxy.url);
    env.git(&env.work(), &["config", "--global", "s3.format", format]);
    (env, proxy)
}

/// Pseudo-random, incompressible text (deterministic).
fn noise(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|i| {
            if i % 64 == 63 {
                return '\n';
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect()
}

/// A repository of `COMMITS` commits one day apart (from 2023-11-14), each
/// rewriting three ~2 KB files (`a.txt`, `b.txt` and `dir/c.txt`, for
/// sparse checkouts), and a tag `v20` on the 20th commit. Written with
/// `git fast-import`.
fn history(env: &TestEnv, name: &str) -> PathBuf {
    history_of(env, name, 2000)
}

/// `history` with files of `file_bytes` bytes.
fn history_of(env: &TestEnv, name: &str, file_bytes: usize) -> PathBuf {
    let repo = env.path(name);
    std::fs::create_dir_all(&repo).unwrap();
    env.git(&repo, &["init", "-q", "-b", "main"]);
    let mut script = String::new();
    for i in 1..=COMMITS {
        let when = 1_700_000_000 + u64::from(i) * 86_400;
        script.push_str(&format!("commit refs/heads/main\nmark :{i}\ncommitter T <t@example.com> {when} +0000\ndata <<EOM\ncommit {i}\nEOM\n"));
        if i > 1 {
            script.push_str(&format!("from :{}\n", i - 1));
        }
        for (k, f) in ["a", "b", "dir/c"].into_iter().enumerate() {
            let content = noise(u64::from(i) * 7 + k as u64, file_bytes);
            script.push_str(&format!("M 644 inline {f}.txt\ndata {}\n{content}\n", content.len()));
        }
    }
    script.push_str("reset refs/tags/v20\nfrom :20\n");
    testkit::fast_import(env, &repo, &script);
    env.git(&repo, &["checkout", "-q", "main"]);
    repo
}

fn count(env: &TestEnv, repo: &Path, rev: &str) -> u32 {
    env.git(repo, &["rev-list", "--count", rev]).trim().parse().unwrap()
}

/// Helper sessions the daemon has served (the status call itself is one).
fn sessions(env: &TestEnv) -> u64 {
    let out = env.git_s3(&env.work(), &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["daemon"]["total_sessions"].as_u64().expect("total_sessions")
}

/// What the remote's objects weigh packed: the local repository's pack.
fn packed_size(env: &TestEnv, repo: &Path) -> u64 {
    env.git(repo, &["gc", "-q"]);
    let out = env.git(repo, &["count-objects", "-v"]);
    out.lines().find_map(|l| l.strip_prefix("size-pack: ")).unwrap().trim().parse::<u64>().unwrap() * 1024
}

#[test]
fn depth_deepen_shallow_since_exclude_and_unshallow() {
    for format in FORMATS {
        let (env, _proxy) = counted_env(format);
        let src = history(&env, "src");
        let url = env.url("shallow");
        env.git(&src, &["push", "-q", &url, "main", "v20"]);

        env.git(&env.work(), &["clone", "-q", "--depth", "1", &url, "d"]);
        let d = env.path("d");
        assert_eq!(count(&env, &d, "HEAD"), 1, "{format}");
        let shallow = std::fs::read_to_string(d.join(".git/shallow")).expect("a shallow clone has .git/shallow");
        assert_eq!(shallow.trim(), env.git(&src, &["rev-parse", "main"]).trim(), "{format}");
        env.fsck_partial(&d);

        env.git(&d, &["fetch", "-q", "--deepen=3"]);
        assert_eq!(count(&env, &d, "HEAD"), 4, "{format}: --deepen");
        env.git(&d, &["fetch", "-q", "--depth=2"]);
        assert_eq!(count(&env, &d, "HEAD"), 2, "{format}: --depth");
        // commit i is dated day i: since day 31 → commits 31..40
        env.git(&d, &["fetch", "-q", &format!("--shallow-since={}", 1_700_000_000 + 31 * 86_400)]);
        assert_eq!(count(&env, &d, "HEAD"), 10, "{format}: --shallow-since");
        env.git(&d, &["fetch", "-q", "--shallow-exclude=v20", "origin", "main"]);
        assert_eq!(count(&env, &d, "HEAD"), 20, "{format}: --shallow-exclude");
        env.fsck_partial(&d);
        env.git(&d, &["checkout", "-q", "HEAD~15"]);
        env.git(&d, &["fetch", "-q", "--unshallow"]);
        assert_eq!(count(&env, &d, "main"), COMMITS, "{format}: --unshallow");
        assert!(!d.join(".git/shallow").exists(), "{format}");
        env.fsck_partial(&d);
        env.git(&d, &["log", "-p", "--oneline", "-3"]);
    }
}

#[test]
fn partial_clone_is_a_promisor_repository_and_lazy_fetches_are_batched() {
    for format in FORMATS {
        let (env, proxy) = counted_env(format);
        let src = history(&env, "src");
        let url = env.url("partial");
        env.git(&src, &["push", "-q", &url, "main"]);
        let repo_bytes = packed_size(&env, &src);
        // a cold cache: the push left its bundle or pack there
        env.git_s3(&env.work(), &["cache", "clear"]);

        let before = proxy.counts().bytes_down;
        env.git(&env.work(), &["clone", "-q", "--filter=blob:none", &url, "p"]);
        let p = env.path("p");
        assert_eq!(env.git(&p, &["config", "remote.origin.promisor"]).trim(), "true", "{format}");
        assert_eq!(env.git(&p, &["config", "remote.origin.partialclonefilter"]).trim(), "blob:none", "{format}");
        assert!(std::fs::read_dir(p.join(".git/objects/pack")).unwrap().flatten().any(|e| e.path().extension().is_some_and(|x| x == "promisor")));
        // the tip's 3 files were checked out; the older versions are not here
        assert_eq!(env.missing_objects(&p), 3 * (COMMITS as usize - 1), "{format}");
        env.fsck_partial(&p);
        let clone_bytes = proxy.counts().bytes_down - before;

        // A lazy checkout of an old commit: one helper session, nothing
        // downloaded again (the daemon's mirror has it).
        env.git(&p, &["rev-list", "--count", "HEAD"]);
        let s0 = sessions(&env);
        let b0 = proxy.counts().bytes_down;
        env.git(&p, &["checkout", "-q", "HEAD~30"]);
        let lazy_sessions = sessions(&env) - s0 - 1;
        let lazy_bytes = proxy.counts().bytes_down - b0;
        assert_eq!(lazy_sessions, 1, "{format}: one helper session for the lazy checkout");
        assert!(lazy_bytes < 16 << 10, "{format}: a lazy checkout read {lazy_bytes} bytes from S3 (the objects were downloaded once already)");
        // git log -p and blame fetch what they need, and the repository stays whole
        env.git(&p, &["log", "-p", "--oneline", "-5", "main"]);
        env.git(&p, &["blame", "-s", "b.txt"]);
        env.fsck_partial(&p);
        // Everything read from S3 for clone, checkout, log and blame: about
        // the repository's size once, never per object.
        let total = proxy.counts().bytes_down - before;
        eprintln!("{format}: repository {repo_bytes} B packed; partial clone read {clone_bytes} B, all operations {total} B");
        let bound = repo_bytes * 3 / 2 + (64 << 10);
        assert!(total <= bound, "{format}: {total} bytes read from S3 for a {repo_bytes}-byte repository");
    }
}

#[test]
fn other_filters_and_sparse_checkout() {
    for format in FORMATS {
        let (env, _proxy) = counted_env(format);
        let src = history(&env, "src");
        let url = env.url("filters");
        env.git(&src, &["push", "-q", &url, "main"]);

        env.git(&env.work(), &["clone", "-q", "--filter=blob:limit=1k", &url, "lim"]);
        let lim = env.path("lim");
        assert_eq!(env.git(&lim, &["config", "remote.origin.partialclonefilter"]).trim(), "blob:limit=1024", "{format}");
        env.fsck_partial(&lim);

        env.git(&env.work(), &["clone", "-q", "--filter=tree:0", &url, "t0"]);
        let t0 = env.path("t0");
        env.git(&t0, &["checkout", "-q", "HEAD~5"]);
        assert!(t0.join("a.txt").exists() && t0.join("dir/c.txt").exists(), "{format}");
        env.fsck_partial(&t0);

        env.git(&env.work(), &["clone", "-q", "--sparse", "--filter=blob:none", &url, "sp"]);
        let sp = env.path("sp");
        assert!(sp.join("a.txt").exists() && !sp.join("dir").exists(), "{format}: only the top level is checked out");
        let missing_before = env.missing_objects(&sp);
        env.git(&sp, &["sparse-checkout", "add", "dir"]);
        assert!(sp.join("dir/c.txt").exists(), "{format}");
        assert_eq!(env.missing_objects(&sp), missing_before - 1, "{format}: dir/c.txt's blob arrived, nothing else");
        env.fsck_partial(&sp);
    }
}

#[test]
fn pushes_and_pulls_with_shallow_clones() {
    for format in FORMATS {
        let (env, _proxy) = counted_env(format);
        let src = history(&env, "src");
        let url = env.url("shallow-push");
        env.git(&src, &["push", "-q", &url, "main"]);
        env.git(&env.work(), &["clone", "-q", "--depth", "1", &url, "s"]);
        let s = env.path("s");
        let tip = env.commit(&s, "new.txt", "new\n", "from a shallow clone");
        if format == "packs" {
            // the remote has the history behind the boundary: git allows this push
            env.git(&s, &["push", "-q", "origin", "main"]);
            env.git(&src, &["pull", "-q", &url, "main"]);
            assert_eq!(env.git(&src, &["rev-parse", "HEAD"]).trim(), tip);
        } else {
            // a bundle holds the whole history, which a shallow clone lacks
            let err = env.git_fail(&s, &["push", "origin", "main"]);
            assert!(err.contains("shallow clone") && err.contains("git fetch --unshallow"), "{err}");
            env.git(&s, &["fetch", "-q", "--unshallow"]);
            env.git(&s, &["push", "-q", "origin", "main"]);
        }
        // a fresh full clone of the remote is whole
        env.git(&env.work(), &["clone", "-q", &url, "full"]);
        let full = env.path("full");
        assert_eq!(count(&env, &full, "HEAD"), COMMITS + 1, "{format}");
        env.fsck_partial(&full);

        // a depth-1 clone pulls new commits and stays shallow
        env.git(&env.work(), &["clone", "-q", "--depth", "1", &url, "d"]);
        let d = env.path("d");
        let next = env.commit(&full, "next.txt", "next\n", "next");
        env.git(&full, &["push", "-q", "origin", "main"]);
        env.git(&d, &["pull", "-q", "--ff-only"]);
        assert_eq!(env.git(&d, &["rev-parse", "HEAD"]).trim(), next, "{format}");
        assert!(d.join(".git/shallow").exists(), "{format}");
        assert_eq!(count(&env, &d, "HEAD"), 2, "{format}");
        env.fsck_partial(&d);
    }
}

#[test]
fn a_shallow_clone_that_cannot_be_served_leaves_nothing() {
    for format in FORMATS {
        let (env, _proxy) = counted_env(format);
        let src = history(&env, "src");
        let url = env.url("broken");
        env.git(&src, &["push", "-q", &url, "main"]);
        // the bundles and packs the remote names are truncated in the bucket
        for key in env.keys("broken/") {
            if key.ends_with(".pack") || key.ends_with(".bundle") {
                let data = env.get_object(&key);
                env.put_object(&key, &data[..data.len() / 2]);
            }
        }
        // (the push left its bundle or pack in the daemon's cache)
        env.git_s3(&env.work(), &["cache", "clear"]);
        let err = env.git_fail(&env.work(), &["clone", "--depth", "1", &url, "x"]);
        let fatal: Vec<&str> = err.lines().filter(|l| l.starts_with("fatal:")).collect();
        assert!(
            fatal.len() == 1 && fatal[0].contains("broken/") && (fatal[0].contains("truncated") || fatal[0].contains("does not index")),
            "{format}: one clear line naming the key: {err}"
        );
        assert!(!err.contains("Error {") && !err.contains("ServiceError"), "{err}");
        assert!(!env.path("x").exists(), "{format}: no half-shallow repository is left");
    }
}

/// Bytes of the packs in a repository (what a local clone received).
fn pack_bytes(repo: &Path) -> u64 {
    std::fs::read_dir(repo.join(".git/objects/pack"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn after_gc_shallow_and_partial_clones_of_a_packs_remote_download_what_they_ask() {
    let (env, proxy) = counted_env("packs");
    // The views come from gc here, not from a push (see the next test).
    env.set_env("GIT_S3_VIEWS_AUTO_BYTES", "0");
    let src = history_of(&env, "src", 20_000);
    let url = env.url("views");
    env.git(&src, &["push", "-q", &url, "main", "v20"]);
    // local git, the yardstick: the same clones from a bare copy
    let bare = env.path("bare.git");
    env.git(&env.work(), &["clone", "-q", "--bare", src.to_str().unwrap(), bare.to_str().unwrap()]);
    env.git(&bare, &["config", "uploadpack.allowFilter", "true"]);
    let bare_url = format!("file://{}", bare.display());
    env.git(&env.work(), &["clone", "-q", "--depth", "1", "--no-local", &bare_url, "local-d1"]);
    let local_depth1 = pack_bytes(&env.path("local-d1"));
    env.git(&env.work(), &["clone", "-q", "--filter=blob:none", "--no-local", &bare_url, "local-p"]);
    let local_blobless = pack_bytes(&env.path("local-p"));

    // doctor advises a gc: the remote has no views yet
    let doc: serde_json::Value = serde_json::from_str(&env.git_s3(&env.work(), &["doctor", &url, "--json"])).unwrap();
    assert_eq!(doc["advice"][0]["kind"], "views_stale", "{doc}");
    assert!(env.git_s3(&env.work(), &["doctor", &url]).contains("`git s3 gc"));
    let out = env.git_s3(&env.work(), &["gc", &url]);
    assert!(out.contains("views"), "gc reports the views it wrote: {out}");
    let doc: serde_json::Value = serde_json::from_str(&env.git_s3(&env.work(), &["doctor", &url, "--json"])).unwrap();
    assert_eq!(doc["advice"].as_array().map(Vec::len), Some(0), "fresh views: {doc}");
    assert_eq!(doc["issues"].as_array().map(Vec::len), Some(0), "the views' packs are referenced: {doc}");
    let m: serde_json::Value = serde_json::from_slice(&env.get_object("views/.git-s3/manifest.json")).unwrap();
    assert!(m["views"]["skeleton"]["name"].is_string() && m["views"]["tips"]["name"].is_string(), "{m}");

    let measure = |dir: &str, args: &[&str]| testkit::cold_clone_bytes(&env, &proxy, &url, dir, args);
    let depth1 = measure("d1", &["--depth", "1"]);
    assert_eq!(count(&env, &env.path("d1"), "HEAD"), 1);
    let blobless = measure("p", &["--filter=blob:none"]);
    assert_eq!(count(&env, &env.path("p"), "HEAD"), COMMITS);
    eprintln!("depth 1: {depth1} B from S3, local git {local_depth1} B; blob:none: {blobless} B from S3, local git {local_blobless} B");
    assert!(depth1 <= 2 * local_depth1, "a depth-1 clone read {depth1} bytes from S3; local git transfers {local_depth1}");
    assert!(blobless <= 2 * local_blobless, "a blob:none clone read {blobless} bytes from S3; local git transfers {local_blobless}");

    // After a push the views lack the new pack: it is downloaded with them,
    // and a depth-1 clone is still right.
    let tip = env.commit(&src, "a.txt", &noise(999, 20_000), "after gc");
    env.git(&src, &["push", "-q", &url, "main"]);
    measure("d2", &["--depth", "1"]);
    assert_eq!(env.git(&env.path("d2"), &["rev-parse", "HEAD"]).trim(), tip);
    assert_eq!(count(&env, &env.path("d2"), "HEAD"), 1);
    // What the views cannot serve (more depth) comes from the whole remote.
    measure("d5", &["--depth", "5"]);
    assert_eq!(count(&env, &env.path("d5"), "HEAD"), 5);
    // The lazy checkout of an old commit after a blob:none clone works too.
    let p = env.path("p");
    env.git(&p, &["checkout", "-q", "HEAD~30"]);
    env.fsck_partial(&p);
    // A view gone from the bucket: the whole remote serves the clone, and doctor says so.
    let tips = m["views"]["tips"]["name"].as_str().unwrap();
    env.delete_object(&format!("views/.git-s3/packs/pack-{tips}.pack"));
    measure("d6", &["--depth", "1"]);
    assert_eq!(env.git(&env.path("d6"), &["rev-parse", "HEAD"]).trim(), tip);
    let doc: serde_json::Value = serde_json::from_str(&env.git_s3(&env.work(), &["doctor", &url, "--json"])).unwrap();
    assert_eq!(doc["advice"][0]["missing"][0], tips, "{doc}");
}

/// The names in `covers` of the views of manifest `m` and of their increments.
fn views_covers(m: &serde_json::Value) -> Vec<String> {
    let names = |c: &serde_json::Value| -> Vec<String> {
        c.as_array().map(|c| c.iter().filter_map(|n| n.as_str().map(str::to_string)).collect()).unwrap_or_default()
    };
    let mut all = names(&m["views"]["covers"]);
    for i in m["views"]["increments"].as_array().into_iter().flatten() {
        all.extend(names(&i["covers"]));
    }
    all
}

/// The manifest of `prefix` once it has views that cover every pack
/// (written in the background after a push), waiting up to a minute.
fn wait_for_covering_views(env: &TestEnv, prefix: &str) -> serde_json::Value {
    let key = format!("{prefix}/.git-s3/manifest.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let m: serde_json::Value = serde_json::from_slice(&env.get_object(&key)).unwrap();
        let covers = views_covers(&m);
        let packs: Vec<&str> = m["packs"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
        if m["views"]["skeleton"]["name"].is_string() && m["views"]["tips"]["name"].is_string() && packs.iter().all(|p| covers.iter().any(|c| c == p))
        {
            return m;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("no views covering every pack: {}", String::from_utf8_lossy(&env.get_object(&key)));
}

/// Clones `--depth 1` and `--filter=blob:none` of `url` (cold cache) read
/// at most twice what local git transfers for the same clones of `src`
/// (`git clone --no-local` of a bare copy), and are right. `round` names
/// the checkout directories.
fn clones_read_at_most_twice_local_git(env: &TestEnv, proxy: &FieldServer, src: &Path, url: &str, round: &str) {
    let bare = env.path(&format!("bare{round}.git"));
    env.git(&env.work(), &["clone", "-q", "--bare", src.to_str().unwrap(), bare.to_str().unwrap()]);
    env.git(&bare, &["config", "uploadpack.allowFilter", "true"]);
    let bare_url = format!("file://{}", bare.display());
    env.git(&env.work(), &["clone", "-q", "--depth", "1", "--no-local", &bare_url, &format!("local-d1{round}")]);
    env.git(&env.work(), &["clone", "-q", "--filter=blob:none", "--no-local", &bare_url, &format!("local-p{round}")]);
    let (local_depth1, local_blobless) = (pack_bytes(&env.path(&format!("local-d1{round}"))), pack_bytes(&env.path(&format!("local-p{round}"))));
    let measure = |dir: &str, args: &[&str]| testkit::cold_clone_bytes(env, proxy, url, dir, args);
    let tip = env.git(src, &["rev-parse", "HEAD"]).trim().to_string();
    let depth1 = measure(&format!("d1{round}"), &["--depth", "1"]);
    assert_eq!(env.git(&env.path(&format!("d1{round}")), &["rev-parse", "HEAD"]).trim(), tip);
    assert_eq!(count(env, &env.path(&format!("d1{round}")), "HEAD"), 1);
    let blobless = measure(&format!("p{round}"), &["--filter=blob:none"]);
    assert_eq!(count(env, &env.path(&format!("p{round}")), "HEAD"), count(env, src, "HEAD"));
    eprintln!("{round}: depth 1: {depth1} B from S3, local git {local_depth1} B; blob:none: {blobless} B from S3, local git {local_blobless} B");
    assert!(depth1 <= 2 * local_depth1, "{round}: a depth-1 clone read {depth1} bytes from S3; local git transfers {local_depth1}");
    assert!(blobless <= 2 * local_blobless, "{round}: a blob:none clone read {blobless} bytes from S3; local git transfers {local_blobless}");
}

/// Views without a manual step: a packs remote that was never gc'd gets
/// its views in the background after a push (past `GIT_S3_VIEWS_AUTO_BYTES`
/// of packs they do not cover: 1 MiB by default, 200 kB here), so
/// `--depth 1` and blob:none clones right after it read what local git
/// transfers, not the whole remote; a push below the threshold leaves them
/// (its pack is read beside them); one above it has them extended by an
/// increment (the views themselves kept).
#[test]
fn after_a_push_shallow_and_partial_clones_of_a_packs_remote_read_what_they_ask() {
    let (env, proxy) = counted_env("packs");
    env.set_env("GIT_S3_VIEWS_AUTO_BYTES", "200000");
    let src = history_of(&env, "src", 20_000);
    let url = env.url("auto");
    env.git(&src, &["push", "-q", &url, "main", "v20"]);
    let m1 = wait_for_covering_views(&env, "auto");
    let doc: serde_json::Value = serde_json::from_str(&env.git_s3(&env.work(), &["doctor", &url, "--json"])).unwrap();
    assert_eq!(doc["advice"].as_array().map(Vec::len), Some(0), "fresh views, no gc advised: {doc}");
    assert_eq!(doc["issues"].as_array().map(Vec::len), Some(0), "the views' packs are referenced: {doc}");
    clones_read_at_most_twice_local_git(&env, &proxy, &src, &url, "first push");

    // A small push: below the threshold, the views stay; its pack is read beside them.
    env.commit(&src, "a.txt", &noise(999, 20_000), "small");
    env.git(&src, &["push", "-q", &url, "main"]);
    let m: serde_json::Value = serde_json::from_slice(&env.get_object("auto/.git-s3/manifest.json")).unwrap();
    assert_eq!(m["views"], m1["views"], "a small push leaves the views");
    clones_read_at_most_twice_local_git(&env, &proxy, &src, &url, "small push");

    // A big push (over 200 kB of packs the views lack): the views get an
    // increment covering both pushes; nothing is retired.
    for i in 0..3 {
        env.commit(&src, &format!("big{i}.txt"), &noise(2000 + i, 400_000), &format!("big {i}"));
    }
    env.git(&src, &["push", "-q", &url, "main"]);
    let m2 = wait_for_covering_views(&env, "auto");
    assert_eq!(m2["views"]["tips"], m1["views"]["tips"], "{m2}");
    assert_eq!(m2["views"]["skeleton"], m1["views"]["skeleton"], "{m2}");
    let increments = m2["views"]["increments"].as_array().unwrap();
    assert_eq!(increments.len(), 1, "{m2}");
    assert_eq!(increments[0]["covers"].as_array().map(Vec::len), Some(2), "both pushes' packs: {m2}");
    assert!(m2["retired"].as_array().is_none_or(|r| r.is_empty()), "{m2}");
    let doc: serde_json::Value = serde_json::from_str(&env.git_s3(&env.work(), &["doctor", &url, "--json"])).unwrap();
    assert_eq!(doc["issues"].as_array().map(Vec::len), Some(0), "the increment's packs are referenced: {doc}");
    clones_read_at_most_twice_local_git(&env, &proxy, &src, &url, "big push");
}

const DIRS: usize = 40;
const PER_DIR: usize = 10;

/// A wide, long history: `commits` commits over `DIRS` directories of
/// `PER_DIR` ~1 KB files, each commit rewriting three of them: many trees
/// (a big skeleton) and small pushes.
fn wide_history(env: &TestEnv, name: &str, commits: usize) -> PathBuf {
    let repo = env.path(name);
    std::fs::create_dir_all(&repo).unwrap();
    env.git(&repo, &["init", "-q", "-b", "main"]);
    let mut script = String::new();
    for i in 1..=commits {
        let when = 1_700_000_000 + i as u64 * 3600;
        script.push_str(&format!("commit refs/heads/main\nmark :{i}\ncommitter T <t@example.com> {when} +0000\ndata <<EOM\ncommit {i}\nEOM\n"));
        if i > 1 {
            script.push_str(&format!("from :{}\n", i - 1));
        }
        let files: Vec<(usize, usize)> = if i == 1 {
            (0..DIRS).flat_map(|d| (0..PER_DIR).map(move |f| (d, f))).collect()
        } else {
            (0..3).map(|k| ((i * 7 + k * 13) % DIRS, (i + k) % PER_DIR)).collect()
        };
        for (d, f) in files {
            let content = noise((i * 1000 + d * PER_DIR + f) as u64, 1000);
            script.push_str(&format!("M 644 inline d{d}/f{f}.txt\ndata {}\n{content}\n", content.len()));
        }
    }
    testkit::fast_import(env, &repo, &script);
    env.git(&repo, &["checkout", "-q", "main"]);
    repo
}

/// Incremental views: after each of several small pushes (no gc), the
/// background refresh adds an increment of about the push's size: what
/// the push and its refresh upload beyond the pushed pack (the manifest
/// writes and the increment's packs) stays under a quarter of the
/// skeleton, where writing the views whole uploads all of it and the tips;
/// and `--depth 1` and blob:none clones still read at most twice what
/// local git transfers.
#[test]
fn small_pushes_extend_the_views_by_increments_of_about_their_size() {
    let (env, proxy) = counted_env("packs");
    env.set_env("GIT_S3_VIEWS_AUTO_BYTES", "1");
    let src = wide_history(&env, "src", 600);
    let url = env.url("inc");
    env.git(&src, &["push", "-q", &url, "main"]);
    let m0 = wait_for_covering_views(&env, "inc");
    assert!(m0["views"]["increments"].is_null(), "the first views are written whole: {m0}");
    let skeleton = m0["views"]["skeleton"]["size"].as_u64().unwrap();
    let tips = m0["views"]["tips"]["size"].as_u64().unwrap();
    for round in 1..=3usize {
        for k in 0..3 {
            std::fs::write(src.join(format!("d{}/f{k}.txt", (round * 11 + k * 5) % DIRS)), noise((90_000 + round * 10 + k) as u64, 1000)).unwrap();
        }
        env.git(&src, &["commit", "-qam", &format!("round {round}")]);
        let head = env.git(&src, &["rev-parse", "HEAD"]).trim().to_string();
        let before = proxy.counts().bytes_up;
        env.git(&src, &["push", "-q", &url, "main"]);
        let m = wait_for_covering_views(&env, "inc");
        let pushed =
            m["packs"].as_array().unwrap().iter().find(|p| p["tips"].as_array().is_some_and(|t| t.iter().any(|t| t == head.as_str()))).unwrap();
        let name = pushed["name"].as_str().unwrap();
        // The push's `.idx` goes up in the background too: counted once there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !env.keys("inc/.git-s3/packs/").iter().any(|k| k.ends_with(&format!("pack-{name}.idx"))) {
            assert!(std::time::Instant::now() < deadline, "the pushed pack's .idx never arrived");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let up = proxy.counts().bytes_up - before - pushed["size"].as_u64().unwrap() - pushed["idx_size"].as_u64().unwrap();
        eprintln!("round {round}: the push and its refresh uploaded {up} B beyond the pushed pack; the skeleton is {skeleton} B, the tips {tips} B");
        assert!(up * 4 < skeleton, "round {round}: the refresh uploaded {up} B, not about the push's size (the skeleton is {skeleton} B)");
        assert_eq!(m["views"]["increments"].as_array().map(Vec::len), Some(round), "{m}");
        assert_eq!(m["views"]["skeleton"], m0["views"]["skeleton"], "the views themselves are kept");
    }
    clones_read_at_most_twice_local_git(&env, &proxy, &src, &url, "three pushes");
}

/// A background views write never clobbers a push made meanwhile: held
/// (test gate) between its upload and its manifest write while another
/// branch is pushed, it finds the manifest changed (412), reads it again
/// and records its views on top of it: both branches and both packs stay,
/// the later pack uncovered (read beside the views).
#[test]
fn a_background_views_write_keeps_a_push_made_meanwhile() {
    let (env, _proxy) = counted_env("packs");
    let out = env.git_s3(&env.work(), &["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        doc["daemon"]["features"].as_array().is_some_and(|f| f.iter().any(|f| f == "test-hooks")),
        "this test needs a daemon built with --features git-s3-daemon/test-hooks: {doc}"
    );
    let src = history(&env, "src");
    let url = env.url("gate");
    let gate = env.path("views-gate");
    let mut c = env.command("git", &src);
    c.env("GIT_S3_VIEWS_AUTO_BYTES", "1").env("GIT_S3_TEST_VIEWS_WRITE_GATE", &gate).args(["push", "-q", &url, "main"]);
    env.run(c);
    let waiting = env.path("views-gate.waiting");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !waiting.exists() {
        assert!(std::time::Instant::now() < deadline, "the views write never reached its gate");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let key = "gate/.git-s3/manifest.json";
    let before: serde_json::Value = serde_json::from_slice(&env.get_object(key)).unwrap();
    assert!(before["views"].is_null(), "held before its manifest write: {before}");
    let first = before["packs"][0]["name"].as_str().unwrap().to_string();

    // Another branch lands meanwhile (no views of its own).
    env.git(&src, &["checkout", "-q", "-b", "other"]);
    let other = env.commit(&src, "o.txt", "other\n", "other");
    env.git(&src, &["push", "-q", &url, "other"]);
    std::fs::write(&gate, b"").unwrap();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let m = loop {
        let m: serde_json::Value = serde_json::from_slice(&env.get_object(key)).unwrap();
        if m["views"].is_object() {
            break m;
        }
        assert!(std::time::Instant::now() < deadline, "the views were never recorded: {m}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(m["refs"]["refs/heads/other"], other.as_str(), "the push made meanwhile stays: {m}");
    assert_eq!(m["refs"]["refs/heads/main"], before["refs"]["refs/heads/main"], "{m}");
    let packs: Vec<&str> = m["packs"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    let covers: Vec<&str> = m["views"]["covers"].as_array().unwrap().iter().filter_map(|c| c.as_str()).collect();
    assert_eq!(packs.len(), 2, "{m}");
    assert_eq!(covers, vec![first.as_str()], "only the pack the views were made from: {m}");
    // Readers of the views get the later branch from its pack.
    env.git(&env.work(), &["clone", "-q", "--depth", "1", "--branch", "other", &url, "d1"]);
    assert_eq!(env.git(&env.path("d1"), &["rev-parse", "HEAD"]).trim(), other);
    env.fsck_partial(&env.path("d1"));
}

/// The views' pieces are bounded: after `MAX_INCREMENTS` (8) increments,
/// the next refresh, once the packs outside the views come to an eighth of
/// their size, writes them whole again (compaction): no increments, a new
/// skeleton and tips pack, every earlier piece retired for gc.
#[test]
fn past_eight_increments_the_views_are_written_whole_again() {
    let (env, _proxy) = counted_env("packs");
    env.set_env("GIT_S3_VIEWS_AUTO_BYTES", "1");
    let src = history(&env, "src");
    let url = env.url("compact");
    env.git(&src, &["push", "-q", &url, "main"]);
    let m0 = wait_for_covering_views(&env, "compact");
    let piece_names = |m: &serde_json::Value| -> Vec<String> {
        let mut names = vec![m["views"]["skeleton"]["name"].as_str().unwrap().to_string(), m["views"]["tips"]["name"].as_str().unwrap().to_string()];
        for i in m["views"]["increments"].as_array().into_iter().flatten() {
            names.extend(["skeleton", "tips"].iter().filter_map(|k| i[*k]["name"].as_str().map(str::to_string)));
        }
        names
    };
    let mut m = m0.clone();
    for round in 1..=8u64 {
        env.commit(&src, "a.txt", &noise(7000 + round, 2000), &format!("small {round}"));
        env.git(&src, &["push", "-q", &url, "main"]);
        m = wait_for_covering_views(&env, "compact");
        assert_eq!(m["views"]["increments"].as_array().map(Vec::len), Some(round as usize), "{m}");
    }
    let before = piece_names(&m);
    // Past an eighth of the views' size: written whole.
    env.commit(&src, "big.txt", &noise(8000, 100_000), "big");
    env.git(&src, &["push", "-q", &url, "main"]);
    let m9 = wait_for_covering_views(&env, "compact");
    assert!(m9["views"]["increments"].is_null(), "compacted: {m9}");
    assert_ne!(m9["views"]["skeleton"]["name"], m0["views"]["skeleton"]["name"], "{m9}");
    let retired: Vec<&str> = m9["retired"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    for old in &before {
        assert!(retired.contains(&old.as_str()), "the replaced piece {old} retires: {m9}");
    }
    env.git(&env.work(), &["clone", "-q", "--depth", "1", &url, "d1"]);
    assert_eq!(env.git(&env.path("d1"), &["rev-parse", "HEAD"]), env.git(&src, &["rev-parse", "HEAD"]));
    env.fsck_partial(&env.path("d1"));
}
