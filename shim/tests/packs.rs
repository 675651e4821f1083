//! End to end, the packs format (`<prefix>/.git-s3/manifest.json` +
//! `<prefix>/.git-s3/packs/`): clone, fetch, push, delete, force, tags,
//! incremental uploads, one manifest write per push, concurrent pushers, a
//! push killed before its manifest write, protection, format detection and
//! choice, through the real git and the test S3 server.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use testkit::require_test_hooks;
use testkit::{noise, TestEnv, Tool};

/// An environment whose new remotes use the packs format (`s3.format`).
fn packs_env() -> TestEnv {
    let env = TestEnv::new();
    env.git(&env.work(), &["config", "--global", "s3.format", "packs"]);
    env
}

fn manifest(env: &TestEnv, prefix: &str) -> Value {
    let raw = env.get_object(&format!("{prefix}/.git-s3/manifest.json"));
    serde_json::from_slice(&raw).expect("manifest is JSON")
}

fn serial(env: &TestEnv, prefix: &str) -> u64 {
    manifest(env, prefix)["serial"].as_u64().expect("serial")
}

/// `(key, size)` of every object under a prefix.
fn objects(env: &TestEnv, prefix: &str) -> Vec<(String, u64)> {
    let out = testkit::s3tool(&["list", &env.bucket, prefix], None);
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_once('\t')).map(|(k, s)| (k.to_string(), s.parse().unwrap_or(0))).collect()
}

/// The names of the packs a manifest references: its packs and its views'
/// (what `git s3 gc` keeps once every grace period is over).
fn referenced_packs(m: &Value) -> Vec<String> {
    let mut names: Vec<String> = m["packs"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    for view in ["skeleton", "tips"] {
        if let Some(n) = m["views"][view]["name"].as_str() {
            names.push(n.to_string());
        }
    }
    names
}

fn pack_files(env: &TestEnv, prefix: &str) -> Vec<(String, u64)> {
    objects(env, &format!("{prefix}/.git-s3/packs/")).into_iter().filter(|(k, _)| k.ends_with(".pack")).collect()
}

/// A push uploads each pack's `.idx` after answering git: waits until every
/// pack of the manifest has one.
fn wait_for_idx_uploads(env: &TestEnv, prefix: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let m = manifest(env, prefix);
        let keys = env.keys(&format!("{prefix}/.git-s3/packs/"));
        let missing: Vec<String> = m["packs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str())
            .map(|n| format!("{prefix}/.git-s3/packs/pack-{n}.idx"))
            .filter(|k| !keys.contains(k))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no .idx for {missing:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn rev(env: &TestEnv, repo: &Path, r: &str) -> String {
    env.git(repo, &["rev-parse", r]).trim().to_string()
}

#[test]
fn packs_clone_fetch_push_delete_force_tags() {
    let env = packs_env();
    let url = env.url("team/repo");
    let (repo, fx) = env.repo_with_branch_and_tags("origin", &url);
    env.git(&repo, &["push", "-q", "origin", "main", "feature/x", "v1", "v1-annotated"]);

    // Only the packs layout: no 0.4.2 keys.
    let keys = env.keys("team/repo/");
    assert!(keys.iter().all(|k| k.starts_with("team/repo/.git-s3/")), "{keys:?}");
    assert!(keys.contains(&"team/repo/.git-s3/manifest.json".to_string()));
    let m = manifest(&env, "team/repo");
    assert_eq!(m["version"], 1);
    assert_eq!(m["head"], "refs/heads/main");
    assert_eq!(m["packs"].as_array().map(Vec::len), Some(1), "{m}");

    let main = rev(&env, &repo, "main");
    let annotated = rev(&env, &repo, "v1-annotated");
    let ls = env.ls_remote(Tool::Ours, &url);
    for want in [
        format!("{main}\tHEAD"),
        format!("{main}\trefs/heads/main"),
        format!("{fx}\trefs/heads/feature/x"),
        format!("{main}\trefs/tags/v1"),
        format!("{annotated}\trefs/tags/v1-annotated"),
    ] {
        assert!(ls.contains(&want), "{want} missing from {ls:?}");
    }

    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    let clone = env.path("clone");
    assert_eq!(std::fs::read_to_string(clone.join("README.md")).unwrap(), "hello\n");
    assert_eq!(env.git(&clone, &["rev-parse", "--abbrev-ref", "HEAD"]).trim(), "main");
    assert_eq!(rev(&env, &clone, "origin/feature/x"), fx);
    assert_eq!(rev(&env, &clone, "v1-annotated"), annotated);
    env.git(&clone, &["fsck", "--no-progress"]);

    // fetch / pull a new commit
    let new = env.commit(&repo, "src/lib.rs", "fn main() {}\n", "second");
    env.git(&repo, &["push", "-q", "origin", "main"]);
    env.git(&clone, &["pull", "-q", "--ff-only"]);
    assert_eq!(rev(&env, &clone, "HEAD"), new);
    // a no-op fetch changes nothing
    let before = serial(&env, "team/repo");
    env.git(&clone, &["fetch", "-q"]);
    assert_eq!(serial(&env, "team/repo"), before);

    // delete a branch
    env.git(&repo, &["push", "-q", "origin", ":feature/x"]);
    assert!(manifest(&env, "team/repo")["refs"].get("refs/heads/feature/x").is_none());
    env.git(&clone, &["fetch", "-q", "--prune"]);
    assert!(env.git(&clone, &["branch", "-r"]).lines().all(|l| !l.contains("feature/x")));

    // a moved tag is refused without force
    env.git(&repo, &["tag", "-f", "v1", "HEAD"]);
    let err = env.git_fail(&repo, &["push", "origin", "v1"]);
    assert!(err.contains("already exists") || err.contains("rejected"), "{err}");

    // non-fast-forward refused; force allowed
    let theirs = env.commit(&clone, "b.txt", "b\n", "from clone");
    env.git(&clone, &["push", "-q", "origin", "main"]);
    env.commit(&repo, "a.txt", "a\n", "from repo");
    let err = env.git_fail(&repo, &["push", "origin", "main"]);
    assert!(err.contains("rejected") && err.contains("fetch first"), "{err}");
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{theirs}\trefs/heads/main")));
    let err = env.git_fail(&repo, &["push", "--force-with-lease=main:HEAD~1", "origin", "main"]);
    assert!(err.contains("stale info") || err.contains("rejected"), "{err}");
    env.git(&repo, &["push", "-q", "--force", "origin", "main"]);
    let mine = rev(&env, &repo, "main");
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{mine}\trefs/heads/main")));
    env.git(&env.work(), &["clone", "-q", &url, "clone2"]);
    assert_eq!(rev(&env, &env.path("clone2"), "HEAD"), mine);
    env.git(&env.path("clone2"), &["fsck", "--no-progress"]);
}

#[test]
fn second_push_uploads_only_new_objects_and_multi_ref_push_is_one_write() {
    let env = packs_env();
    let repo = env.new_repo("a");
    std::fs::write(repo.join("big.bin"), noise(400_000, 7)).unwrap();
    env.git(&repo, &["add", "big.bin"]);
    env.git(&repo, &["commit", "-q", "-m", "big"]);
    let url = env.url("inc");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let first = pack_files(&env, "inc");
    assert_eq!(first.len(), 1);
    assert!(first[0].1 > 400_000, "{first:?}");
    let total_before: u64 = objects(&env, "inc/").iter().map(|o| o.1).sum();

    env.commit(&repo, "small.txt", "a small change\n", "small");
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let second = pack_files(&env, "inc");
    assert_eq!(second.len(), 2);
    let new_pack: Vec<_> = second.iter().filter(|p| !first.contains(p)).collect();
    assert_eq!(new_pack.len(), 1);
    assert!(new_pack[0].1 < 2_000, "the second pack holds only the new objects: {new_pack:?}");
    let total_after: u64 = objects(&env, "inc/").iter().map(|o| o.1).sum();
    assert!(total_after - total_before < 6_000, "bucket grew by {} bytes", total_after - total_before);

    // Three refs in one push: one manifest write, one pack.
    let s = serial(&env, "inc");
    env.git(&repo, &["branch", "b1"]);
    env.git(&repo, &["checkout", "-q", "-b", "b2"]);
    env.commit(&repo, "b2.txt", "b2\n", "b2");
    env.git(&repo, &["checkout", "-q", "main"]);
    env.git(&repo, &["tag", "t1"]);
    env.git(&repo, &["push", "-q", "origin", "b1", "b2", "t1"]);
    assert_eq!(serial(&env, "inc"), s + 1, "one manifest write for three refs");
    assert_eq!(pack_files(&env, "inc").len(), 3);
    let refs = manifest(&env, "inc")["refs"].clone();
    assert_eq!(refs["refs/heads/b2"], rev(&env, &repo, "b2"));
    assert_eq!(refs["refs/heads/b1"], rev(&env, &repo, "main"));
    assert_eq!(refs["refs/tags/t1"], rev(&env, &repo, "main"));

    // A fresh clone gets everything; a fetch with nothing new downloads nothing.
    env.git(&env.work(), &["clone", "-q", &url, "c"]);
    let c = env.path("c");
    assert_eq!(std::fs::read(c.join("big.bin")).unwrap(), noise(400_000, 7));
    env.git(&c, &["fsck", "--no-progress"]);
    let local_packs = |p: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(p.join(".git/objects/pack"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
            .filter(|n| n.ends_with(".pack"))
            .collect();
        v.sort();
        v
    };
    let packs_in_clone = local_packs(&c);
    assert_eq!(packs_in_clone.len(), 3, "{packs_in_clone:?}");
    env.git(&c, &["fetch", "-q", "origin"]);
    assert_eq!(local_packs(&c), packs_in_clone);
    // A fetch after a push downloads only the new pack.
    let tip = env.commit(&repo, "later.txt", "later\n", "later");
    env.git(&repo, &["push", "-q", "origin", "main"]);
    env.git(&c, &["fetch", "-q", "origin"]);
    assert_eq!(rev(&env, &c, "origin/main"), tip);
    assert_eq!(local_packs(&c).len(), packs_in_clone.len() + 1, "{:?}", local_packs(&c));
    // The pusher has its own objects (not in packs named like the remote's):
    // fetching someone else's push downloads only that push's pack.
    let before = local_packs(&repo);
    env.git(&c, &["merge", "-q", "--ff-only", "origin/main"]);
    let theirs = env.commit(&c, "theirs.txt", "theirs\n", "theirs");
    env.git(&c, &["push", "-q", "origin", "HEAD:main"]);
    env.git(&repo, &["fetch", "-q", "origin"]);
    assert_eq!(rev(&env, &repo, "origin/main"), theirs);
    assert_eq!(local_packs(&repo).len(), before.len() + 1, "{before:?} -> {:?}", local_packs(&repo));
}

#[test]
fn atomic_push_is_all_or_nothing() {
    let env = packs_env();
    let repo = env.new_repo("a");
    let url = env.url("atomic");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["branch", "other"]);
    env.git(&repo, &["push", "-q", "origin", "main", "other"]);
    // other is rewritten (non-fast-forward), main moves forward
    env.git(&repo, &["checkout", "-q", "other"]);
    env.git(&repo, &["commit", "-q", "--amend", "-m", "rewritten"]);
    env.git(&repo, &["checkout", "-q", "main"]);
    let old_main = rev(&env, &repo, "main");
    env.commit(&repo, "m.txt", "m\n", "main moves");
    let s = serial(&env, "atomic");
    let err = env.git_fail(&repo, &["push", "--atomic", "origin", "main", "other"]);
    assert!(err.contains("rejected"), "{err}");
    assert_eq!(serial(&env, "atomic"), s, "nothing written");
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{old_main}\trefs/heads/main")));
    // without --atomic, main lands and other is refused
    env.git_fail(&repo, &["push", "origin", "main", "other"]);
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{}\trefs/heads/main", rev(&env, &repo, "main"))));

    // The bundle format cannot honour --atomic and says so.
    let b = env.url("atomic-bundles");
    env.git(&repo, &["-c", "s3.format=bundles", "push", "-q", &b, "main"]);
    let err = env.git_fail(&repo, &["push", "--atomic", &b, "main", "other"]);
    assert!(err.contains("atomic"), "{err}");
}

fn spawn_push(env: &TestEnv, repo: &Path, args: &[&str]) -> std::process::Child {
    let mut c = env.command("git", repo);
    c.args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    c.spawn().expect("spawn git push")
}

#[test]
fn concurrent_pushers_different_branches_all_succeed() {
    // Concurrent conditional writes of one manifest: atomic in S3, not in moto.
    let env = packs_env().with_atomic_conditional_writes();
    let repo = env.new_repo("seed");
    let url = env.url("conc-branches");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let n = 4;
    let mut clones = Vec::new();
    for i in 0..n {
        let name = format!("c{i}");
        env.git(&env.work(), &["clone", "-q", &url, &name]);
        let p = env.path(&name);
        env.git(&p, &["checkout", "-q", "-b", &format!("b{i}")]);
        let sha = env.commit(&p, &format!("f{i}.txt"), &format!("{i}\n"), &format!("work {i}"));
        clones.push((p, sha));
    }
    let children: Vec<_> = clones.iter().enumerate().map(|(i, (p, _))| spawn_push(&env, p, &["push", "origin", &format!("b{i}")])).collect();
    for ch in children {
        let out: Output = ch.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let m = manifest(&env, "conc-branches");
    for (i, (_, sha)) in clones.iter().enumerate() {
        assert_eq!(m["refs"][format!("refs/heads/b{i}")], sha.as_str(), "{m}");
    }
    assert_eq!(m["refs"].as_object().map(|o| o.len()), Some(n + 1));
    env.git(&env.work(), &["clone", "-q", &url, "all"]);
    env.git(&env.path("all"), &["fsck", "--no-progress"]);
}

#[test]
fn concurrent_pushers_one_branch_one_winner_per_round_nothing_lost() {
    // Concurrent conditional writes of one manifest: atomic in S3, not in moto.
    let env = packs_env().with_atomic_conditional_writes();
    let repo = env.new_repo("seed");
    let url = env.url("conc-main");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let n = 3;
    let mut clones = Vec::new();
    let mut mine = Vec::new();
    for i in 0..n {
        let name = format!("c{i}");
        env.git(&env.work(), &["clone", "-q", &url, &name]);
        let p = env.path(&name);
        mine.push(env.commit(&p, &format!("f{i}.txt"), &format!("{i}\n"), &format!("work {i}")));
        clones.push(p);
    }
    let mut pending: Vec<usize> = (0..n).collect();
    let mut rounds = 0;
    while !pending.is_empty() {
        rounds += 1;
        assert!(rounds <= n, "more rounds than pushers");
        let children: Vec<_> = pending.iter().map(|&i| (i, spawn_push(&env, &clones[i], &["push", "origin", "main"]))).collect();
        let mut winners = Vec::new();
        for (i, ch) in children {
            let out = ch.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            if out.status.success() {
                winners.push(i);
            } else {
                assert!(err.contains("fetch first"), "loser {i} got: {err}");
            }
        }
        assert_eq!(winners.len(), 1, "exactly one winner in round {rounds}");
        pending.retain(|i| !winners.contains(i));
        for &i in &pending {
            env.git(&clones[i], &["pull", "-q", "--rebase", "origin", "main"]);
        }
    }
    env.git(&env.work(), &["clone", "-q", &url, "final"]);
    let f = env.path("final");
    let log = env.git(&f, &["log", "--format=%s"]);
    for i in 0..n {
        assert!(log.contains(&format!("work {i}")), "work {i} lost:\n{log}");
    }
    env.git(&f, &["fsck", "--no-progress"]);
}

#[test]
fn push_killed_before_manifest_write_leaves_remote_consistent() {
    let env = packs_env();
    require_test_hooks(&env);
    let repo = env.new_repo("a");
    let url = env.url("crash");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let before = manifest(&env, "crash");
    let old = rev(&env, &repo, "main");
    env.commit(&repo, "x.txt", "x\n", "never announced");
    let mut c = env.command("git", &repo);
    c.env("GIT_S3_TEST_CRASH_BEFORE_MANIFEST", "1").args(["push", "origin", "main"]);
    env.run_fail(c);
    // The pack is there, unreferenced; the manifest is untouched.
    assert_eq!(pack_files(&env, "crash").len(), 2);
    assert_eq!(manifest(&env, "crash"), before);
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{old}\trefs/heads/main")));
    env.git(&env.work(), &["clone", "-q", &url, "c"]);
    assert_eq!(rev(&env, &env.path("c"), "HEAD"), old);
    env.git(&env.path("c"), &["fsck", "--no-progress"]);
    // The retry lands.
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let new = rev(&env, &repo, "main");
    assert_eq!(manifest(&env, "crash")["refs"]["refs/heads/main"], new.as_str());
    env.git(&env.path("c"), &["pull", "-q", "--ff-only"]);
    assert_eq!(rev(&env, &env.path("c"), "HEAD"), new);
}

#[test]
fn protected_branches_refuse_force_and_delete() {
    let env = packs_env();
    let repo = env.new_repo("a");
    let url = env.url("prot");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["branch", "release"]);
    let first = env.commit(&repo, "x", "1\n", "one");
    env.git(&repo, &["push", "-q", "origin", "main", "release"]);
    // 0.4.2's marker protects main
    env.put_object("prot/refs/heads/main/PROTECTED#", b"");
    env.git(&repo, &["reset", "-q", "--hard", "HEAD~1"]);
    env.commit(&repo, "y", "2\n", "rewritten");
    let err = env.git_fail(&repo, &["push", "--force", "origin", "main"]);
    assert!(err.contains("protected"), "{err}");
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{first}\trefs/heads/main")));
    let err = env.git_fail(&repo, &["push", "origin", ":main"]);
    assert!(err.contains("protected"), "{err}");
    // the manifest's own list protects release
    let mut m = manifest(&env, "prot");
    m["protected"] = serde_json::json!(["refs/heads/release"]);
    env.put_object("prot/.git-s3/manifest.json", serde_json::to_string(&m).unwrap().as_bytes());
    let err = env.git_fail(&repo, &["push", "origin", ":release"]);
    assert!(err.contains("protected"), "{err}");
    // a fast-forward of a protected branch is fine
    env.git(&repo, &["checkout", "-q", "release"]);
    let ff = env.commit(&repo, "r", "r\n", "release ff");
    env.git(&repo, &["push", "-q", "origin", "release"]);
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{ff}\trefs/heads/release")));
}

#[test]
fn format_detection_choice_init_and_mixed_prefix() {
    let env = TestEnv::new();
    let repo = env.new_repo("a");
    let main = rev(&env, &repo, "main");
    // default: bundles
    env.git(&repo, &["push", "-q", &env.url("default"), "main"]);
    assert!(env.keys("default/").iter().any(|k| k.ends_with(".bundle")));
    assert!(!env.keys("default/").iter().any(|k| k.contains(".git-s3")));
    // s3.format=packs on an existing bundles remote: it stays bundles
    env.commit(&repo, "b", "b\n", "b");
    env.git(&repo, &["-c", "s3.format=packs", "push", "-q", &env.url("default"), "main"]);
    assert!(!env.keys("default/").iter().any(|k| k.contains(".git-s3")));
    // s3.format=packs on an empty prefix: packs; then detected without the setting
    env.git(&repo, &["-c", "s3.format=packs", "push", "-q", &env.url("p"), "main"]);
    assert!(env.keys("p/").iter().all(|k| k.starts_with("p/.git-s3/")));
    env.commit(&repo, "c", "c\n", "c");
    env.git(&repo, &["push", "-q", &env.url("p"), "main"]);
    assert!(env.keys("p/").iter().all(|k| k.starts_with("p/.git-s3/")));
    assert_eq!(manifest(&env, "p")["refs"]["refs/heads/main"], rev(&env, &repo, "main").as_str());
    // a bad setting is a clear error
    let mut c = env.command("git", &repo);
    c.args(["-c", "s3.format=zip", "push", &env.url("q"), "main"]);
    let err = String::from_utf8_lossy(&env.run_fail(c).stderr).to_string();
    assert!(err.contains("s3.format"), "{err}");

    // git s3 init --format packs: an empty manifest; pushes then use packs
    let out = env.git_s3(&env.work(), &["init", "--format", "packs", &env.url("inited")]);
    assert!(out.contains("packs"), "{out}");
    assert_eq!(manifest(&env, "inited")["refs"].as_object().map(|o| o.len()), Some(0));
    assert!(env.ls_remote(Tool::Ours, &env.url("inited")).is_empty());
    env.git(&repo, &["push", "-q", &env.url("inited"), "main"]);
    assert!(env.keys("inited/").iter().all(|k| k.starts_with("inited/.git-s3/")));
    // init again, or of the other format, on a used prefix: refused
    let mut c = env.command("git-s3", &env.work());
    c.args(["init", "--format", "bundles", &env.url("inited")]);
    let err = String::from_utf8_lossy(&env.run_fail(c).stderr).to_string();
    assert!(err.contains("packs"), "{err}");
    let mut c = env.command("git-s3", &env.work());
    c.args(["init", "--format", "packs", &env.url("default")]);
    let err = String::from_utf8_lossy(&env.run_fail(c).stderr).to_string();
    assert!(err.contains("bundles"), "{err}");

    // status shows the format, refs, packs
    let st = env.git_s3(&env.work(), &["status", &env.url("p")]);
    assert!(st.contains("format: packs"), "{st}");
    assert!(st.contains("refs/heads/main"), "{st}");
    assert!(st.contains("2 packs"), "{st}");
    let st = env.git_s3(&env.work(), &["status", &env.url("default")]);
    assert!(st.contains("format: bundles"), "{st}");

    // both formats in one prefix: refused, nothing written
    env.git(&repo, &["push", "-q", &env.url("mixed"), "main"]);
    env.put_object("mixed/.git-s3/manifest.json", br#"{"version":1,"refs":{}}"#);
    let mut c = env.command("git", &env.work());
    c.args(["ls-remote", &env.url("mixed")]);
    let err = String::from_utf8_lossy(&env.run_fail(c).stderr).to_string();
    assert!(err.contains("both formats"), "{err}");
    let err = env.git_fail(&repo, &["push", &env.url("mixed"), "main"]);
    assert!(err.contains("both formats"), "{err}");
    // 0.4.2 still reads the bundles of a bundles remote
    assert!(env.ls_remote(Tool::Python, &env.url("default")).iter().any(|l| l.ends_with("refs/heads/main")));
    let _ = main;
}

#[test]
fn gc_combines_packs_and_deletes_old_ones_after_the_grace_period() {
    let env = packs_env();
    require_test_hooks(&env);
    let repo = env.new_repo("a");
    let url = env.url("gc");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    env.git(&env.work(), &["clone", "-q", &url, "early"]);
    let early = env.path("early");
    for i in 0..2 {
        env.commit(&repo, &format!("f{i}"), &format!("{i}\n"), &format!("c{i}"));
        env.git(&repo, &["push", "-q", "origin", "main"]);
    }
    // a push that died before its manifest write: an unreferenced pack
    env.commit(&repo, "dead", "dead\n", "dead push");
    let mut c = env.command("git", &repo);
    c.env("GIT_S3_TEST_CRASH_BEFORE_MANIFEST", "1").args(["push", "origin", "main"]);
    env.run_fail(c);
    env.git(&repo, &["reset", "-q", "--hard", "HEAD~1"]);
    assert_eq!(pack_files(&env, "gc").len(), 4);
    let s = serial(&env, "gc");

    let out = env.git_s3(&env.work(), &["gc", &url]);
    assert!(out.contains("Combined 3 packs"), "{out}");
    let m = manifest(&env, "gc");
    assert_eq!(m["packs"].as_array().map(Vec::len), Some(1), "{m}");
    assert_eq!(m["retired"].as_array().map(Vec::len), Some(3), "{m}");
    assert_eq!(m["serial"].as_u64(), Some(s + 1));
    // within the grace period nothing is deleted; the full gc also wrote the views (2 packs)
    assert_eq!(referenced_packs(&m).len(), 3, "{m}");
    assert_eq!(pack_files(&env, "gc").len(), 5 + 2);
    env.git(&env.work(), &["clone", "-q", &url, "after"]);
    assert_eq!(rev(&env, &env.path("after"), "HEAD"), rev(&env, &repo, "main"));
    env.git(&env.path("after"), &["fsck", "--no-progress"]);
    assert_eq!(
        std::fs::read_dir(env.path("after/.git/objects/pack"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".pack"))
            .count(),
        1
    );

    // pushes and fetches go on
    let tip = env.commit(&repo, "g", "g\n", "after gc");
    env.git(&repo, &["push", "-q", "origin", "main"]);
    env.git(&early, &["pull", "-q", "--ff-only"]);
    assert_eq!(rev(&env, &early, "HEAD"), tip);

    // grace 0: retired and unreferenced packs go; only the manifest's packs stay
    let out = env.git_s3(&env.work(), &["gc", &url, "--grace-seconds", "0"]);
    assert!(out.contains("Combined 2 packs"), "{out}");
    assert!(out.contains("Deleted"), "{out}");
    let m = manifest(&env, "gc");
    let mut names: Vec<String> = referenced_packs(&m).iter().map(|n| format!("gc/.git-s3/packs/pack-{n}.pack")).collect();
    names.sort();
    assert_eq!(pack_files(&env, "gc").into_iter().map(|p| p.0).collect::<Vec<_>>(), names);
    assert_eq!(m["retired"].as_array().map(Vec::len), Some(0), "{m}");
    assert_eq!(objects(&env, "gc/.git-s3/packs/").len(), 3 * 3, "one .pack, its .idx and its object map, and the two views'");
    env.git(&env.work(), &["clone", "-q", &url, "last"]);
    assert_eq!(rev(&env, &env.path("last"), "HEAD"), tip);
    env.git(&env.path("last"), &["fsck", "--no-progress"]);
    let st = env.git_s3(&env.work(), &["status", &url]);
    assert!(st.contains("format: packs (1 packs"), "{st}");
}

#[test]
fn branch_commands_edit_the_manifest() {
    let env = packs_env();
    let repo = env.new_repo("a");
    let url = env.url("branchcmd");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["branch", "feature"]);
    env.git(&repo, &["push", "-q", "origin", "main", "feature"]);
    let out = env.git_s3(&repo, &["protect", "origin", "main"]);
    assert!(out.contains("now protected"), "{out}");
    assert_eq!(manifest(&env, "branchcmd")["protected"], serde_json::json!(["refs/heads/main"]));
    env.git(&repo, &["commit", "-q", "--amend", "-m", "rewritten"]);
    let err = env.git_fail(&repo, &["push", "--force", "origin", "main"]);
    assert!(err.contains("protected"), "{err}");
    let out = env.git_s3(&repo, &["unprotect", "origin", "main"]);
    assert!(out.contains("now unprotected"), "{out}");
    env.git(&repo, &["push", "-q", "--force", "origin", "main"]);
    let out = env.git_s3(&repo, &["delete-branch", "origin", "feature", "--yes"]);
    assert!(out.contains("deleted"), "{out}");
    let refs = manifest(&env, "branchcmd")["refs"].clone();
    assert!(refs.get("refs/heads/feature").is_none(), "{refs}");
    assert_eq!(refs["refs/heads/main"], rev(&env, &repo, "main").as_str());
    let mut c = env.command("git-s3", &repo);
    c.args(["delete-branch", "origin", "feature", "--yes"]);
    env.run_fail(c);
}

#[test]
fn migrate_bundles_to_packs_and_back() {
    let env = TestEnv::new();
    let repo = env.new_repo("a");
    let url = env.url("mig");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["checkout", "-q", "-b", "feature"]);
    env.commit(&repo, "f", "f\n", "feature");
    env.git(&repo, &["checkout", "-q", "main"]);
    env.git(&repo, &["tag", "-a", "v1", "-m", "v1"]);
    env.git(&repo, &["push", "-q", "origin", "main", "feature", "v1"]);
    env.git_s3(&repo, &["protect", "origin", "main"]);
    let before = env.ls_remote(Tool::Ours, &url);
    assert_eq!(before.len(), 4, "{before:?}");

    let out = env.git_s3(&repo, &["migrate", "--to", "packs", "origin"]);
    assert!(out.contains("3 refs"), "{out}");
    let keys = env.keys("mig/");
    assert!(keys.iter().all(|k| k.starts_with("mig/.git-s3/") || k.ends_with("/PROTECTED#")), "{keys:?}");
    assert_eq!(env.ls_remote(Tool::Ours, &url), before);
    assert_eq!(manifest(&env, "mig")["protected"], serde_json::json!(["refs/heads/main"]));
    env.git(&env.work(), &["clone", "-q", &url, "c1"]);
    env.git(&env.path("c1"), &["fsck", "--no-progress"]);
    let tip = env.commit(&repo, "n", "n\n", "after migration");
    env.git(&repo, &["push", "-q", "origin", "main"]);
    assert_eq!(manifest(&env, "mig")["refs"]["refs/heads/main"], tip.as_str());
    let mut c = env.command("git-s3", &repo);
    c.args(["migrate", "--to", "packs", "origin"]);
    env.run_fail(c);

    let out = env.git_s3(&repo, &["migrate", "--to", "bundles", "origin"]);
    assert!(out.contains("bundles format"), "{out}");
    assert!(!env.keys("mig/").iter().any(|k| k.contains(".git-s3")));
    let after = env.ls_remote(Tool::Ours, &url);
    assert!(after.contains(&format!("{tip}\trefs/heads/main")), "{after:?}");
    assert_eq!(env.ls_remote(Tool::Python, &url), after, "git-remote-s3 0.4.2 reads the result");
    env.git_with(Tool::Python, &env.work(), &["clone", "-q", &url, "py"]);
    assert_eq!(rev(&env, &env.path("py"), "HEAD"), tip);
    // protection survives as the 0.4.2 marker
    assert!(env.keys("mig/").contains(&"mig/refs/heads/main/PROTECTED#".to_string()));
}

#[test]
fn fetches_running_during_compaction_never_miss_a_pack() {
    let env = packs_env();
    let repo = env.new_repo("a");
    let url = env.url("gc-race");
    env.git(&repo, &["remote", "add", "origin", &url]);
    for i in 0..5 {
        env.commit(&repo, &format!("f{i}"), &format!("{i}\n").repeat(500), &format!("c{i}"));
        env.git(&repo, &["push", "-q", "origin", "main"]);
    }
    assert_eq!(pack_files(&env, "gc-race").len(), 5);
    let tip = rev(&env, &repo, "main");
    // clones (each with an empty cache) keep running while gc swaps the pack list
    let cloners: Vec<_> = (0..3)
        .map(|t| {
            let mut cmds = Vec::new();
            for i in 0..4 {
                let mut c = env.command("git", &env.work());
                c.env("GIT_S3_CACHE_DIR", env.dir.path().join(format!("cache-{t}-{i}"))).args(["clone", "-q", &url, &format!("c{t}-{i}")]);
                cmds.push(c);
            }
            std::thread::spawn(move || cmds.into_iter().map(|mut c| c.output().unwrap()).collect::<Vec<_>>())
        })
        .collect();
    for _ in 0..3 {
        env.git_s3(&env.work(), &["gc", &url]);
        env.commit(&repo, "more", &format!("{}\n", rev(&env, &repo, "HEAD")), "more");
        env.git(&repo, &["push", "-q", "origin", "main"]);
    }
    for h in cloners {
        for out in h.join().unwrap() {
            assert!(out.status.success(), "clone during gc failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    for t in 0..3 {
        for i in 0..4 {
            let c = env.path(&format!("c{t}-{i}"));
            env.git(&c, &["fsck", "--no-progress"]);
            // every clone saw a consistent state: the first tip or a later one
            env.git(&c, &["merge-base", "--is-ancestor", &tip, "HEAD"]);
        }
    }
}

/// The names of a manifest's packs (or retired packs), sorted.
fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

#[test]
fn pushes_compact_in_the_background_when_packs_pile_up() {
    let env = packs_env();
    let repo = env.new_repo("a");
    let url = env.url("autogc");
    env.git(&repo, &["remote", "add", "origin", &url]);
    let push = |repo: &Path| {
        let mut c = env.command("git", repo);
        c.env("GIT_S3_GC_AUTO_PACKS", "3").args(["push", "-q", "origin", "main"]);
        env.run(c);
    };
    // a big base pack, then small pushes: below the limit nothing happens
    std::fs::write(repo.join("big.bin"), noise(200_000, 3)).unwrap();
    env.git(&repo, &["add", "big.bin"]);
    env.git(&repo, &["commit", "-q", "-m", "big"]);
    push(&repo);
    let base = names(&manifest(&env, "autogc")["packs"]);
    for i in 0..2 {
        env.commit(&repo, &format!("f{i}"), &format!("{i}\n"), &format!("c{i}"));
        push(&repo);
    }
    // the third pack reaches the limit: a geometric gc combines the two small
    // packs in the background and leaves the base pack alone
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let m = manifest(&env, "autogc");
        if m["retired"].as_array().map(Vec::len) == Some(2) {
            let packs = names(&m["packs"]);
            assert_eq!(packs.len(), 2, "{m}");
            assert!(packs.contains(&base[0]), "the base pack stays: {m}");
            assert!(!names(&m["retired"]).contains(&base[0]), "{m}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no background gc: {m}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    env.git(&env.work(), &["clone", "-q", &url, "after"]);
    assert_eq!(rev(&env, &env.path("after"), "HEAD"), rev(&env, &repo, "main"));
    env.git(&env.path("after"), &["fsck", "--no-progress"]);
}

#[test]
fn concurrent_pushes_start_one_background_gc_per_remote() {
    let env = packs_env();
    require_test_hooks(&env);
    let repo = env.new_repo("a");
    let url = env.url("onegc");
    env.git(&repo, &["remote", "add", "origin", &url]);
    // the background gc waits at this gate until the test opens it
    let gate = env.path("gc-gate");
    let push = |repo: &Path, branch: &str| {
        let mut c = env.command("git", repo);
        c.env("GIT_S3_GC_AUTO_PACKS", "3").env("GIT_S3_TEST_BACKGROUND_GC_GATE", &gate).args(["push", "-q", "origin", branch]);
        c
    };
    std::fs::write(repo.join("big.bin"), noise(200_000, 5)).unwrap();
    env.git(&repo, &["add", "big.bin"]);
    env.git(&repo, &["commit", "-q", "-m", "big"]);
    env.run(push(&repo, "main"));
    for i in 0..2 {
        env.commit(&repo, &format!("f{i}"), &format!("{i}\n"), &format!("c{i}"));
        env.run(push(&repo, "main"));
    }
    // the third pack reached the limit: a background gc started, held at the gate
    let mut waiting = gate.as_os_str().to_owned();
    waiting.push(".waiting");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !Path::new(&waiting).exists() {
        assert!(std::time::Instant::now() < deadline, "the background gc never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // two pushes at once, from two clones, while it runs: each would start one
    let pushers: Vec<_> = ["x", "y"]
        .iter()
        .map(|b| {
            let dir = env.path(b);
            env.git(&env.work(), &["clone", "-q", &url, b]);
            env.git(&dir, &["checkout", "-q", "-b", b]);
            env.commit(&dir, &format!("{b}.txt"), &format!("{b}\n"), b);
            push(&dir, b).spawn().expect("spawn git push")
        })
        .collect();
    for p in pushers {
        let out = p.wait_with_output().expect("git push");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let background = || -> Value {
        let doc: Value = serde_json::from_str(&env.git_s3(&env.work(), &["status", "--json"])).expect("status --json");
        doc["daemon"]["background"].clone()
    };
    let b = background();
    assert_eq!(b["started"]["gc"], 1, "one background gc for the remote: {b}");
    assert_eq!(b["deduplicated"], 2, "the two later pushes found it running: {b}");
    // once it may go on, it compacts, and a later push may start another
    std::fs::write(&gate, b"").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while background()["running"] != 0 {
        assert!(std::time::Instant::now() < deadline, "the background gc never ended: {}", background());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let m = manifest(&env, "onegc");
    assert!(!names(&m["retired"]).is_empty(), "the gc compacted: {m}");
    for b in ["main", "x", "y"] {
        env.git(&env.work(), &["clone", "-q", "-b", b, &url, &format!("after-{b}")]);
        env.git(&env.path(&format!("after-{b}")), &["fsck", "--no-progress"]);
    }
}

#[test]
fn geometric_gc_combines_the_small_packs_and_keeps_the_big_one() {
    let env = packs_env();
    let repo = env.new_repo("a");
    let url = env.url("geo");
    env.git(&repo, &["remote", "add", "origin", &url]);
    std::fs::write(repo.join("big.bin"), noise(2_000_000, 11)).unwrap();
    env.git(&repo, &["add", "big.bin"]);
    env.git(&repo, &["commit", "-q", "-m", "big"]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let big = manifest(&env, "geo")["packs"][0].clone();
    env.git(&env.work(), &["clone", "-q", &url, "early"]);
    let early = env.path("early");
    for i in 0..4 {
        env.commit(&repo, &format!("small{i}"), &format!("{i}\n").repeat(20), &format!("small {i}"));
        env.git(&repo, &["push", "-q", "origin", "main"]);
    }
    let m = manifest(&env, "geo");
    let small: Vec<Value> = m["packs"].as_array().unwrap().iter().filter(|p| p["name"] != big["name"]).cloned().collect();
    assert_eq!(small.len(), 4, "{m}");
    let mut small_tips: Vec<String> =
        small.iter().flat_map(|p| p["tips"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string())).collect();
    small_tips.sort();
    let s = serial(&env, "geo");

    // a dry run says what it would combine and changes nothing
    let out = env.git_s3(&env.work(), &["gc", &url, "--geometric", "--dry-run"]);
    assert!(out.contains("Would combine 4 packs") && out.contains("would keep 1 pack"), "{out}");
    assert_eq!(serial(&env, "geo"), s);

    let out = env.git_s3(&env.work(), &["gc", &url, "--geometric"]);
    assert!(out.contains("Combined 4 packs") && out.contains("kept 1 pack"), "{out}");
    let m = manifest(&env, "geo");
    assert_eq!(m["serial"].as_u64(), Some(s + 1), "one manifest write");
    let packs = m["packs"].as_array().unwrap();
    assert_eq!(packs.len(), 2, "{m}");
    // the big pack is untouched: same entry
    assert!(packs.contains(&big), "{m}");
    let combined = packs.iter().find(|p| p["name"] != big["name"]).unwrap();
    assert_eq!(combined["objects"].as_u64(), Some(small.iter().map(|p| p["objects"].as_u64().unwrap()).sum()), "{m}");
    let mut tips: Vec<String> = combined["tips"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    tips.sort();
    assert_eq!(tips, small_tips, "the combined pack is made for the small packs' tips");
    // only the small packs are retired, and nothing is deleted within the grace period
    let mut small_names: Vec<String> = small.iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    small_names.sort();
    assert_eq!(names(&m["retired"]), small_names, "{m}");
    assert_eq!(pack_files(&env, "geo").len(), 6);

    // a fresh clone is complete; an earlier clone pulls (only the new pack)
    env.git(&env.work(), &["clone", "-q", &url, "after"]);
    let after = env.path("after");
    assert_eq!(rev(&env, &after, "HEAD"), rev(&env, &repo, "main"));
    env.git(&after, &["fsck", "--no-progress"]);
    env.git(&early, &["pull", "-q", "--ff-only"]);
    assert_eq!(rev(&env, &early, "HEAD"), rev(&env, &repo, "main"));
    env.git(&early, &["fsck", "--no-progress"]);
    let local_packs = |dir: &Path| {
        std::fs::read_dir(dir.join(".git/objects/pack"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".pack"))
            .count()
    };
    assert_eq!(local_packs(&early), 2, "the big pack is not downloaded again");

    // the packs form a progression now: nothing to combine, no write
    let out = env.git_s3(&env.work(), &["gc", &url, "--geometric"]);
    assert!(out.contains("nothing to combine"), "{out}");
    assert_eq!(serial(&env, "geo"), s + 1);

    // a full gc afterwards still yields one pack of everything
    let tip = env.commit(&repo, "last", "last\n", "last");
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let out = env.git_s3(&env.work(), &["gc", &url, "--grace-seconds", "0"]);
    assert!(out.contains("Combined 3 packs") && out.contains("Deleted"), "{out}");
    let m = manifest(&env, "geo");
    assert_eq!(m["packs"].as_array().map(Vec::len), Some(1), "{m}");
    assert_eq!(m["retired"].as_array().map(Vec::len), Some(0), "{m}");
    assert_eq!(objects(&env, "geo/.git-s3/packs/").len(), 3 * 3, "one .pack, its .idx and its object map, and the two views'");
    env.git(&env.work(), &["clone", "-q", &url, "last"]);
    assert_eq!(rev(&env, &env.path("last"), "HEAD"), tip);
    env.git(&env.path("last"), &["fsck", "--no-progress"]);
    env.git(&early, &["pull", "-q", "--ff-only"]);
    assert_eq!(rev(&env, &early, "HEAD"), tip);
}

#[test]
fn s3_zip_writes_repo_zip_in_the_packs_format() {
    let env = packs_env();
    let repo = env.new_repo("a");
    let url = env.zip_url("zp");
    let sha = env.commit(&repo, "app.txt", "app\n", "ship it");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let keys = env.keys("zp/");
    assert!(keys.contains(&"zp/.git-s3/manifest.json".to_string()), "{keys:?}");
    assert!(!keys.iter().any(|k| k.ends_with(".bundle")), "{keys:?}");
    assert_eq!(&env.get_object("zp/refs/heads/main/repo.zip")[..2], b"PK");
    let meta = testkit::s3tool(&["head-meta", &env.bucket, "zp/refs/heads/main/repo.zip"], None);
    let meta = String::from_utf8_lossy(&meta.stdout);
    assert!(meta.contains(&format!("attachment; filename=repo-{}.zip", &sha[..8])), "{meta}");
    assert!(meta.contains(&format!("codepipeline-artifact-revision-summary={} ship it", &sha[..7])), "{meta}");
    // a new commit rewrites the zip; the remote stays a packs remote (detected)
    let sha2 = env.commit(&repo, "app.txt", "app 2\n", "second");
    env.git(&repo, &["-c", "s3.format=bundles", "push", "-q", &url, "main", "main:refs/heads/other"]);
    let meta = testkit::s3tool(&["head-meta", &env.bucket, "zp/refs/heads/main/repo.zip"], None);
    assert!(String::from_utf8_lossy(&meta.stdout).contains(&format!("repo-{}.zip", &sha2[..8])));
    assert!(env.keys("zp/refs/heads/other/").contains(&"zp/refs/heads/other/repo.zip".to_string()));
    // each zip carries the manifest serial that made its commit current, and
    // a zip written for a later serial is never overwritten by an earlier push
    let serial_now = serial(&env, "zp");
    let meta = String::from_utf8_lossy(&testkit::s3tool(&["head-meta", &env.bucket, "zp/refs/heads/main/repo.zip"], None).stdout).to_string();
    assert!(meta.contains(&format!("git-s3-serial={serial_now}")), "{meta}");
    let later = b"PK a zip of a later push".to_vec();
    testkit::s3tool(&["put-meta", &env.bucket, "zp/refs/heads/main/repo.zip", "git-s3-serial=999999"], Some(&later));
    env.commit(&repo, "app.txt", "app 3\n", "third");
    env.git(&repo, &["push", "-q", &url, "main"]);
    assert_eq!(env.get_object("zp/refs/heads/main/repo.zip"), later, "an earlier push overwrote a later zip");
    testkit::s3tool(&["put-meta", &env.bucket, "zp/refs/heads/main/repo.zip", "git-s3-serial=1"], Some(&later));
    let sha4 = env.commit(&repo, "app.txt", "app 4\n", "fourth");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let meta = String::from_utf8_lossy(&testkit::s3tool(&["head-meta", &env.bucket, "zp/refs/heads/main/repo.zip"], None).stdout).to_string();
    assert!(meta.contains(&format!("repo-{}.zip", &sha4[..8])), "{meta}");

    // clone through s3+zip and s3://: the same repository
    env.git(&env.work(), &["clone", "-q", &url, "c1"]);
    assert_eq!(std::fs::read_to_string(env.path("c1/app.txt")).unwrap(), "app 4\n");
    assert_eq!(env.ls_remote(Tool::Ours, &env.url("zp")), env.ls_remote(Tool::Ours, &url));
    // deleting a branch (push or git s3 delete-branch) removes its zip too
    env.git(&repo, &["push", "-q", &url, ":other"]);
    assert!(!env.keys("zp/refs/").iter().any(|k| k.contains("/other/")));
    env.git(&repo, &["push", "-q", &url, "main:refs/heads/third"]);
    assert!(env.keys("zp/refs/").contains(&"zp/refs/heads/third/repo.zip".to_string()));
    env.git_s3(&repo, &["delete-branch", &url, "third", "--yes"]);
    assert!(!env.keys("zp/refs/").iter().any(|k| k.contains("/third/")));
    // git s3 init --format packs works for s3+zip:// too
    let out = env.git_s3(&env.work(), &["init", "--format", "packs", &env.zip_url("zp-init")]);
    assert!(out.contains("packs"), "{out}");
}

#[test]
fn interrupted_migrations_finish_when_run_again_and_nothing_is_lost() {
    let env = TestEnv::new();
    require_test_hooks(&env);
    let repo = env.new_repo("a");
    let url = env.url("mig-crash");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["branch", "b1"]);
    env.git(&repo, &["branch", "b2"]);
    env.git(&repo, &["tag", "v1"]);
    env.git(&repo, &["push", "-q", "origin", "main", "b1", "b2", "v1"]);
    let before = env.ls_remote(Tool::Ours, &url);
    assert_eq!(before.len(), 5, "{before:?}");

    // to packs: killed after the manifest write and the first bundle deletion
    let mut c = env.command("git-s3", &repo);
    c.env("GIT_S3_TEST_CRASH_DURING_MIGRATE", "to-packs").args(["migrate", "--to", "packs", "origin"]);
    env.run_fail(c);
    // both formats now: reads use the manifest (every bundle left agrees
    // with it); a push is refused with a clear message, the manifest is intact
    assert_eq!(env.ls_remote(Tool::Ours, &url), before);
    env.commit(&repo, "during", "during\n", "during the half-done migration");
    let err = env.git_fail(&repo, &["push", "origin", "main"]);
    assert!(err.contains("both formats") && err.contains("git s3 migrate"), "{err}");
    env.git(&repo, &["reset", "-q", "--hard", "HEAD~1"]);
    // the rerun takes over the dead run's (stale) locks and finishes
    let mut c = env.command("git-s3", &repo);
    c.env("GIT_REMOTE_S3_LOCK_TTL_SECONDS", "1").args(["migrate", "--to", "packs", "origin"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = String::from_utf8_lossy(&env.run(c).stdout).to_string();
    assert!(out.contains("4 refs"), "{out}");
    assert_eq!(env.ls_remote(Tool::Ours, &url), before);
    let left = env.keys("mig-crash/");
    assert!(!left.iter().any(|k| k.contains("LOCK#") || k.ends_with(".bundle")), "{left:?}");

    // to bundles: killed after the freeze and the first bundle
    let mut c = env.command("git-s3", &repo);
    c.env("GIT_S3_TEST_CRASH_DURING_MIGRATE", "to-bundles").args(["migrate", "--to", "bundles", "origin"]);
    env.run_fail(c);
    // the frozen manifest refuses pushes and edits, saying what to do
    let tip = env.commit(&repo, "x", "x\n", "during the migration");
    let err = env.git_fail(&repo, &["-c", "s3.format=packs", "push", "origin", "main"]);
    assert!(err.contains("both formats") || err.contains("being migrated"), "{err}");
    let mut c = env.command("git-s3", &repo);
    c.env("GIT_REMOTE_S3_LOCK_TTL_SECONDS", "1").args(["migrate", "--to", "bundles", "origin"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    env.run(c);
    assert_eq!(env.ls_remote(Tool::Ours, &url), before);
    assert_eq!(env.ls_remote(Tool::Python, &url), before, "0.4.2 reads the result");
    assert!(!env.keys("mig-crash/").iter().any(|k| k.contains(".git-s3") || k.contains("LOCK#")));
    env.git(&repo, &["push", "-q", "origin", "main"]);
    assert!(env.ls_remote(Tool::Python, &url).contains(&format!("{tip}\trefs/heads/main")));
}

#[test]
fn a_frozen_manifest_refuses_pushes_and_edits() {
    let env = packs_env();
    let repo = env.new_repo("a");
    let url = env.url("frozen");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let mut m = manifest(&env, "frozen");
    m["frozen"] = serde_json::json!("migrating to bundles, since unix time 1");
    env.put_object("frozen/.git-s3/manifest.json", m.to_string().as_bytes());
    env.commit(&repo, "y", "y\n", "y");
    let err = env.git_fail(&repo, &["push", "origin", "main"]);
    assert!(err.contains("being migrated") && err.contains("git s3 migrate --to bundles"), "{err}");
    let mut c = env.command("git-s3", &repo);
    c.args(["protect", "origin", "main"]);
    let err = String::from_utf8_lossy(&env.run_fail(c).stderr).to_string();
    assert!(err.contains("being migrated"), "{err}");
    let mut c = env.command("git-s3", &repo);
    c.args(["gc", "origin"]);
    let err = String::from_utf8_lossy(&env.run_fail(c).stderr).to_string();
    assert!(err.contains("being migrated"), "{err}");
    // reads go on
    env.git(&env.work(), &["clone", "-q", &url, "reader"]);
    assert_eq!(manifest(&env, "frozen")["serial"], m["serial"]);
}

#[test]
fn migration_holds_the_0_4_2_locks_so_concurrent_0_4_2_pushes_fail_cleanly() {
    let env = TestEnv::new();
    require_test_hooks(&env);
    let repo = env.new_repo("a");
    let url = env.url("mig-lock");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    // a live 0.4.2 push holds main's lock: migrate waits, then refuses, untouched
    env.put_object("mig-lock/refs/heads/main/LOCK#.lock", b"");
    let mut c = env.command("git-s3", &repo);
    c.env("GIT_REMOTE_S3_LOCK_WAIT_SECONDS", "1").args(["migrate", "--to", "packs", "origin"]);
    let err = String::from_utf8_lossy(&env.run_fail(c).stderr).to_string();
    assert!(err.contains("a push holds a ref"), "{err}");
    assert!(!env.keys("mig-lock/").iter().any(|k| k.contains(".git-s3")));
    env.delete_object("mig-lock/refs/heads/main/LOCK#.lock");
    env.git(&repo, &["branch", "b1"]);
    env.git(&repo, &["push", "-q", "origin", "b1"]);
    // a migration that died half-way still holds the refs' locks: 0.4.2
    // cannot update them meanwhile, but it can create a new ref
    let mut c = env.command("git-s3", &repo);
    c.env("GIT_S3_TEST_CRASH_DURING_MIGRATE", "to-packs").args(["migrate", "--to", "packs", "origin"]);
    env.run_fail(c);
    env.git_with(Tool::Python, &env.work(), &["clone", "-q", &url, "py"]);
    let py = env.path("py");
    env.commit(&py, "p", "p\n", "python push");
    let mut c = env.command_with(Tool::Python, "git", &py);
    c.args(["push", "origin", "HEAD:refs/heads/b1"]);
    let out = c.output().unwrap();
    let blocked = !out.status.success();
    env.git_with(Tool::Python, &py, &["push", "-q", "origin", "HEAD:refs/heads/late"]);
    let late = rev(&env, &py, "HEAD");
    // the rerun brings every ref over, the late one included
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let mut c = env.command("git-s3", &repo);
    c.env("GIT_REMOTE_S3_LOCK_TTL_SECONDS", "1").args(["migrate", "--to", "packs", "origin"]);
    env.run(c);
    let m = manifest(&env, "mig-lock");
    assert_eq!(m["refs"]["refs/heads/main"], rev(&env, &repo, "main").as_str(), "{m}");
    assert_eq!(m["refs"]["refs/heads/late"], late.as_str(), "{m}");
    if blocked {
        assert_eq!(m["refs"]["refs/heads/b1"], rev(&env, &repo, "b1").as_str(), "{m}");
    } else {
        // 0.4.2 took the lock over as stale (its TTL ran out): its push stands
        assert_eq!(m["refs"]["refs/heads/b1"], late.as_str(), "{m}");
    }
    assert!(!env.keys("mig-lock/").iter().any(|k| k.ends_with(".bundle") || k.contains("LOCK#")));
    env.git(&env.work(), &["clone", "-q", &url, "after"]);
    env.git(&env.path("after"), &["fsck", "--no-progress"]);
}

#[test]
fn doctor_checks_packs_remotes_and_explains_a_prefix_with_both_formats() {
    let env = packs_env();
    require_test_hooks(&env);
    let repo = env.new_repo("a");
    let url = env.url("doc");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["branch", "feature"]);
    env.git(&repo, &["push", "-q", "origin", "main", "feature"]);
    wait_for_idx_uploads(&env, "doc");
    let out = env.git_s3(&repo, &["doctor", "origin"]);
    assert!(out.contains("packs format") && out.contains("No problems found."), "{out}");
    let doc: Value = serde_json::from_str(&env.git_s3(&repo, &["doctor", "origin", "--json"])).unwrap();
    assert_eq!(doc["format"], "packs");
    assert_eq!(doc["issues"].as_array().map(Vec::len), Some(0), "{doc}");
    assert_eq!(doc["refs"].as_array().map(Vec::len), Some(2), "{doc}");

    // a dangling HEAD is fixed unattended (main), with a manifest write
    let mut m = manifest(&env, "doc");
    m["head"] = serde_json::json!("refs/heads/gone");
    env.put_object("doc/.git-s3/manifest.json", m.to_string().as_bytes());
    let out = env.git_s3(&repo, &["doctor", "origin", "--dry-run"]);
    assert!(out.contains("Would set HEAD to refs/heads/main"), "{out}");
    let out = env.git_s3(&repo, &["doctor", "origin", "--yes"]);
    assert!(out.contains("Set HEAD to refs/heads/main"), "{out}");
    assert_eq!(manifest(&env, "doc")["head"], "refs/heads/main");

    // an unreferenced pack (a push killed before its manifest write) is explained
    env.commit(&repo, "dead", "dead\n", "dead push");
    let mut c = env.command("git", &repo);
    c.env("GIT_S3_TEST_CRASH_BEFORE_MANIFEST", "1").args(["push", "origin", "main"]);
    env.run_fail(c);
    let out = env.git_s3(&repo, &["doctor", "origin"]);
    assert!(out.contains("1 unreferenced pack") && out.contains("git s3 gc"), "{out}");

    // a missing .idx (a daemon stopped before uploading it) is re-created
    let name = manifest(&env, "doc")["packs"][0]["name"].as_str().unwrap().to_string();
    let idx_key = format!("doc/.git-s3/packs/pack-{name}.idx");
    let idx = env.get_object(&idx_key);
    env.delete_object(&idx_key);
    let out = env.git_s3(&repo, &["doctor", "origin", "--dry-run"]);
    assert!(out.contains(&format!("pack-{name}.idx is missing")) && out.contains("Would re-create"), "{out}");
    assert!(!env.keys("doc/").contains(&idx_key));
    let out = env.git_s3(&repo, &["doctor", "origin"]);
    assert!(out.contains(&format!("Re-created pack-{name}.idx")), "{out}");
    assert_eq!(env.get_object(&idx_key), idx, "the same index as git wrote at push time");

    // a missing pack is an error (exit 1) with what to do
    env.delete_object(&format!("doc/.git-s3/packs/pack-{name}.pack"));
    let mut c = env.command("git-s3", &repo);
    c.args(["doctor", "origin"]);
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("pack-{name}.pack is missing")) && out.contains("git push --mirror"), "{out}");

    // both formats: 0.4.2 pushed bundles into the packs prefix
    let mixed = env.url("doc-mixed");
    env.git(&repo, &["push", "-q", &mixed, "feature"]);
    env.git(&repo, &["reset", "-q", "--hard", "HEAD~1"]);
    let py_tip = env.commit(&repo, "py", "py\n", "pushed by 0.4.2");
    env.git_with(Tool::Python, &repo, &["push", "-q", &mixed, "main", "main:refs/heads/feature"]);
    let feature = env.git(&repo, &["rev-parse", "feature"]).trim().to_string();
    let out = env.git_s3(&repo, &["doctor", &mixed]);
    assert!(out.contains("both formats"), "{out}");
    assert!(out.contains("refs/heads/main: only as a bundle"), "{out}");
    assert!(out.contains(&format!("refs/heads/feature: manifest {}, bundle {}", &feature[..12], &py_tip[..12])), "{out}");
    assert!(out.contains(&format!("git s3 migrate --to packs {mixed}")), "{out}");
    let doc: Value = serde_json::from_str(&env.git_s3(&repo, &["doctor", &mixed, "--json"])).unwrap();
    assert!(doc["issues"].as_array().unwrap().iter().any(|i| i["kind"] == "both_formats"), "{doc}");
    // the fix it names keeps every ref (a bundle wins for the same ref)
    env.git_s3(&repo, &["migrate", "--to", "packs", &mixed]);
    let ls = env.ls_remote(Tool::Ours, &mixed);
    assert!(ls.contains(&format!("{py_tip}\trefs/heads/main")), "{ls:?}");
    assert!(ls.contains(&format!("{py_tip}\trefs/heads/feature")), "{ls:?}");
    wait_for_idx_uploads(&env, "doc-mixed");
    let out = env.git_s3(&repo, &["doctor", &mixed]);
    assert!(out.contains("No problems found."), "{out}");

    // a frozen manifest is explained
    let mut m = manifest(&env, "doc-mixed");
    m["frozen"] = serde_json::json!("migrating to bundles, since unix time 1");
    env.put_object("doc-mixed/.git-s3/manifest.json", m.to_string().as_bytes());
    let out = env.git_s3(&repo, &["doctor", &mixed]);
    assert!(out.contains("frozen") && out.contains("git s3 migrate --to bundles"), "{out}");
}

#[test]
fn a_no_op_fetch_is_one_conditional_manifest_read() {
    let env = packs_env();
    let repo = env.new_repo("a");
    let url = env.url("cond");
    env.git(&repo, &["push", "-q", &url, "main"]);
    env.git(&env.work(), &["clone", "-q", &url, "c"]);
    let c = env.path("c");
    let fetch = |env: &TestEnv| {
        let mut cmd = env.command("git", &c);
        cmd.env("GIT_REMOTE_S3_VERBOSE", "1").args(["fetch", "origin"]);
        String::from_utf8_lossy(&env.run(cmd).stderr).to_string()
    };
    // the daemon read the manifest during the clone: this read is conditional
    let err = fetch(&env);
    assert!(err.contains("not modified"), "{err}");
    let requests: Vec<&str> = err.lines().filter(|l| l.starts_with("git-s3: s3.")).collect();
    assert_eq!(requests.len(), 1, "one request (the manifest's conditional GET): {err}");
    assert!(!err.contains("index-pack"), "{err}");
    // a push through this daemon: it holds the manifest it wrote (still a
    // 304), and the new commit is fetched
    let tip = env.commit(&repo, "b", "b\n", "b");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let err = fetch(&env);
    assert!(err.contains("not modified"), "{err}");
    assert_eq!(rev(&env, &c, "origin/main"), tip);
    // a change by another writer is seen (200 with the new manifest)
    let mut m = manifest(&env, "cond");
    m["serial"] = serde_json::json!(m["serial"].as_u64().unwrap() + 1);
    env.put_object("cond/.git-s3/manifest.json", m.to_string().as_bytes());
    let err = fetch(&env);
    assert!(!err.contains("not modified") && err.contains("s3.get"), "{err}");
}

#[test]
fn the_idx_follows_the_manifest_write_and_a_stopping_daemon_finishes_it() {
    let env = packs_env();
    require_test_hooks(&env);
    let repo = env.new_repo("a");
    let url = env.url("idx");
    // the .idx upload waits until the test opens this gate
    let gate = env.path("idx-gate");
    let mut c = env.command("git", &repo);
    c.env("GIT_S3_TEST_IDX_UPLOAD_GATE", &gate).args(["push", "-q", &url, "main"]);
    env.run(c);
    // git has its answer: the manifest names the pack, whose .pack is there
    let name = manifest(&env, "idx")["packs"][0]["name"].as_str().unwrap().to_string();
    let keys = env.keys("idx/.git-s3/packs/");
    assert!(keys.contains(&format!("idx/.git-s3/packs/pack-{name}.pack")), "{keys:?}");
    assert!(!keys.contains(&format!("idx/.git-s3/packs/pack-{name}.idx")), "uploaded after the answer: {keys:?}");
    // readers do not need it
    env.git(&env.work(), &["clone", "-q", &url, "c"]);
    // a daemon asked to stop finishes the upload before it exits (the gate
    // opens while it stops, or just before: either way it must wait)
    let mut c = env.command("git-s3", &env.work());
    let stop = c.args(["daemon", "stop"]).stdout(std::process::Stdio::piped()).spawn().expect("spawn git s3 daemon stop");
    std::fs::write(&gate, b"").unwrap();
    let out = stop.wait_with_output().expect("git s3 daemon stop");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("stopped"), "{out}");
    assert!(env.keys("idx/.git-s3/packs/").contains(&format!("idx/.git-s3/packs/pack-{name}.idx")));
}

#[test]
fn a_truncated_or_missing_pack_is_a_clear_error_and_the_clone_stays_intact() {
    let env = packs_env();
    let repo = env.new_repo("a");
    let url = env.url("trunc");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    env.git(&env.work(), &["clone", "-q", &url, "c"]);
    let c = env.path("c");
    let before = rev(&env, &c, "origin/main");
    std::fs::write(repo.join("big.bin"), noise(256 << 10, 3)).unwrap();
    env.git(&repo, &["add", "big.bin"]);
    env.git(&repo, &["commit", "-q", "-m", "big"]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let m = manifest(&env, "trunc");
    let name = m["packs"].as_array().unwrap().last().unwrap()["name"].as_str().unwrap().to_string();
    let key = format!("trunc/.git-s3/packs/pack-{name}.pack");
    let full = env.get_object(&key);
    let pack_dir = c.join(".git/objects/pack");
    let packs_before = std::fs::read_dir(&pack_dir).unwrap().count();

    env.put_object(&key, &full[..full.len() / 2]);
    let err = env.git_fail(&c, &["fetch", "origin"]);
    assert!(err.contains(&format!("pack {name}")) && err.contains("does not index"), "{err}");
    assert_eq!(rev(&env, &c, "origin/main"), before);
    assert_eq!(std::fs::read_dir(&pack_dir).unwrap().count(), packs_before, "no partial pack or temp file left");
    env.git(&c, &["fsck", "--no-progress"]);

    env.delete_object(&key);
    let err = env.git_fail(&c, &["fetch", "origin"]);
    assert!(err.contains(&format!("names pack {name}")) && err.contains("missing"), "{err}");
    assert_eq!(rev(&env, &c, "origin/main"), before);

    // restored, the same fetch works
    env.put_object(&key, &full);
    env.git(&c, &["fetch", "-q", "origin"]);
    assert_eq!(rev(&env, &c, "origin/main"), rev(&env, &repo, "main"));
    env.git(&c, &["fsck", "--no-progress"]);
}

#[test]
fn bundles_pushed_into_a_known_packs_prefix_are_refused_by_pushes_then_by_reads() {
    let env = packs_env();
    let repo = env.new_repo("a");
    let url = env.url("late-mixed");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    // git-remote-s3 0.4.2 pushes a branch into the packs prefix
    let py = env.path("py");
    env.git(&env.work(), &["clone", "-q", &url, "py"]);
    env.commit(&py, "p", "p\n", "by 0.4.2");
    env.git_with(Tool::Python, &py, &["push", "-q", "origin", "HEAD:refs/heads/py"]);
    // this daemon listed refs/ a moment ago: a read serves the manifest
    assert!(env.ls_remote(Tool::Ours, &url).iter().any(|l| l.ends_with("refs/heads/main")));
    // a push lists refs/ before writing anything: refused
    env.commit(&repo, "x", "x\n", "x");
    let serial_before = serial(&env, "late-mixed");
    let err = env.git_fail(&repo, &["push", "origin", "main"]);
    assert!(err.contains("both formats"), "{err}");
    assert_eq!(serial(&env, "late-mixed"), serial_before, "nothing written");
    // from then on reads are refused too, and doctor explains
    let mut c = env.command("git", &env.work());
    c.args(["ls-remote", &url]);
    let err = String::from_utf8_lossy(&env.run_fail(c).stderr).to_string();
    assert!(err.contains("both formats"), "{err}");
    let out = env.git_s3(&repo, &["doctor", "origin"]);
    assert!(out.contains("refs/heads/py: only as a bundle"), "{out}");
}
