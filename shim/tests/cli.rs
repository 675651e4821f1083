//! End to end: `git s3 status|doctor|delete-branch|protect|unprotect|cache`
//! and `git s3 daemon …`, through the real git, our binaries and the test S3
//! server.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)] // libc calls on test processes

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::TestEnv;

/// `git s3 <args>` in `cwd`, whatever its exit status.
fn s3(env: &TestEnv, cwd: &Path, args: &[&str]) -> Output {
    let mut c = env.command("git-s3", cwd);
    c.args(args);
    c.output().expect("run git-s3")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json(env: &TestEnv, cwd: &Path, args: &[&str]) -> Value {
    let out = env.git_s3(cwd, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not one JSON document ({e}):\n{out}"))
}

fn bundle_keys(env: &TestEnv, dir: &str) -> Vec<String> {
    env.keys(dir).into_iter().filter(|k| k.ends_with(".bundle") && !k[dir.len()..].contains('/')).collect()
}

/// A remote `origin` at `prefix` with main pushed; returns (repo, main sha).
fn pushed(env: &TestEnv, prefix: &str) -> (std::path::PathBuf, String) {
    let repo = env.new_repo("origin");
    env.git(&repo, &["remote", "add", "origin", &env.url(prefix)]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let sha = env.git(&repo, &["rev-parse", "main"]).trim().to_string();
    (repo, sha)
}

/// main at A, `other` at B (a child of A), and a second bundle for main:
/// B's bundle copied to `<prefix>/refs/heads/main/B.bundle`.
fn two_bundles(env: &TestEnv, prefix: &str, newest_copy: bool) -> (std::path::PathBuf, String, String) {
    let (repo, a) = pushed(env, prefix);
    env.git(&repo, &["checkout", "-q", "-b", "other"]);
    let b = env.commit(&repo, "b.txt", "b\n", "b");
    env.git(&repo, &["push", "-q", "origin", "other"]);
    if newest_copy {
        // S3 LastModified has one-second resolution: make the copy the newest.
        std::thread::sleep(Duration::from_millis(1100));
    }
    env.copy_object(&format!("{prefix}/refs/heads/other/{b}.bundle"), &format!("{prefix}/refs/heads/main/{b}.bundle"));
    assert_eq!(bundle_keys(env, &format!("{prefix}/refs/heads/main/")).len(), 2);
    (repo, a, b)
}

#[test]
fn status_shows_refs_head_and_locks_during_and_after_a_push() {
    let env = TestEnv::new();
    let (repo, a) = pushed(&env, "st/repo");
    let lock = "st/repo/refs/heads/main/LOCK#.lock";
    env.put_object(lock, b"");

    // A push waiting for that lock is running meanwhile.
    let b = env.commit(&repo, "x.txt", "x\n", "x");
    let mut push = env.command("git", &repo);
    push.args(["push", "-q", "origin", "main"]).env("GIT_REMOTE_S3_LOCK_WAIT_SECONDS", "60");
    let mut child = push.spawn().expect("spawn push");
    std::thread::sleep(Duration::from_millis(500));

    let doc = json(&env, &repo, &["status", "origin", "--json"]);
    assert_eq!(doc["daemon"]["running"], true);
    assert!(doc["daemon"]["pid"].as_u64().unwrap() > 0);
    assert!(doc["daemon"]["socket"].as_str().unwrap().ends_with("daemon.sock"));
    assert!(!doc["daemon"]["clients"].as_array().unwrap().is_empty(), "a warm client: {doc}");
    assert!(doc["cache"]["dir"].is_string() && doc["cache"]["entries"].is_u64());
    let r = &doc["remote"];
    assert_eq!(r["name"], "origin");
    assert_eq!(r["url"], env.url("st/repo"));
    assert_eq!(r["head"]["ref"], "refs/heads/main");
    assert_eq!(r["head"]["sha"], a.as_str());
    assert_eq!(r["refs"][0]["name"], "refs/heads/main");
    assert_eq!(r["refs"][0]["sha"], a.as_str());
    let locks = r["locks"].as_array().unwrap();
    assert_eq!(locks.len(), 1, "{doc}");
    assert_eq!(locks[0]["ref"], "refs/heads/main");
    assert_eq!(locks[0]["key"], lock);
    assert_eq!(locks[0]["stale"], false);
    assert!(r["warnings"].as_array().unwrap().is_empty(), "{doc}");

    // With a TTL of 0 the same lock is stale, and said so.
    let doc = json(&env, &repo, &["status", &env.url("st/repo"), "--json", "--lock-ttl", "0"]);
    assert_eq!(doc["remote"]["locks"][0]["stale"], true);
    assert!(doc["remote"]["warnings"][0].as_str().unwrap().contains("stale lock"));
    let txt = env.git_s3(&repo, &["status", "origin"]);
    assert!(txt.contains("daemon: running") && txt.contains("refs/heads/main") && txt.contains("(held)"), "{txt}");

    // The lock goes: the waiting push proceeds, takes and releases its own.
    env.delete_object(lock);
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "push did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(st.success());
    let doc = json(&env, &repo, &["status", "origin", "--json"]);
    assert_eq!(doc["remote"]["refs"][0]["sha"], b.as_str());
    assert!(doc["remote"]["locks"].as_array().unwrap().is_empty(), "{doc}");
    let txt = env.git_s3(&repo, &["status", "origin"]);
    assert!(txt.contains("locks: none"), "{txt}");
}

#[test]
fn doctor_deletes_extra_bundle_and_clears_stale_lock() {
    let env = TestEnv::new();
    let (repo, a, b) = two_bundles(&env, "dr", false);
    let main_dir = "dr/refs/heads/main/";

    // Status warns; a dry run reports without changing anything.
    let doc = json(&env, &repo, &["status", "origin", "--json"]);
    assert!(doc["remote"]["warnings"][0].as_str().unwrap().contains("2 bundles"), "{doc}");
    let doc = json(&env, &repo, &["doctor", "origin", "--dry-run", "--json", "--delete-bundle", "--keep", &a]);
    assert_eq!(doc["issues"][0]["kind"], "several_bundles");
    assert_eq!(doc["actions"][0]["action"], "would_delete_bundle");
    assert_eq!(bundle_keys(&env, main_dir).len(), 2);

    // Keep A, delete B's copy; `other` is untouched.
    env.put_object("dr/refs/heads/other/LOCK#.lock", b"");
    let out = env.git_s3(&repo, &["doctor", "origin", "--delete-bundle", "--keep", &a[..10], "--lock-ttl", "0"]);
    assert!(out.contains(&format!("Keeping {a}")), "{out}");
    assert!(out.contains("Found stale locks") && out.contains("dr/refs/heads/other/LOCK#.lock"), "{out}");
    assert_eq!(bundle_keys(&env, main_dir), vec![format!("{main_dir}{a}.bundle")]);
    assert_eq!(bundle_keys(&env, "dr/refs/heads/other/"), vec![format!("dr/refs/heads/other/{b}.bundle")]);
    // Not deleted without the flag.
    assert!(env.keys("dr/").iter().any(|k| k.ends_with("other/LOCK#.lock")));

    let doc = json(&env, &repo, &["doctor", "origin", "--lock-ttl", "0", "--delete-stale-locks", "--json"]);
    assert_eq!(doc["issues"][0]["kind"], "stale_lock", "{doc}");
    assert_eq!(doc["actions"][0]["action"], "deleted_lock");
    assert!(!env.keys("dr/").iter().any(|k| k.contains("LOCK#")));
    assert!(env.ls_remote(testkit::Tool::Ours, &env.url("dr")).contains(&format!("{a}\trefs/heads/main")));
    // Healthy now.
    let out = env.git_s3(&repo, &["doctor", "origin"]);
    assert!(out.contains("No problems found."), "{out}");
}

#[test]
fn doctor_moves_extra_bundle_to_a_new_branch_and_fixes_head() {
    let env = TestEnv::new();
    let (repo, a, b) = two_bundles(&env, "mv", true);
    // Default (unattended): keep the newest (B), move A to refs/heads/main_<A8>.
    let out = env.git_s3(&repo, &["doctor", "origin"]);
    let moved = format!("refs/heads/main_{}", &a[..8]);
    assert!(out.contains(&format!("Moved refs/heads/main bundle {} to new ref {moved}", &a[..12])), "{out}");
    assert_eq!(bundle_keys(&env, "mv/refs/heads/main/"), vec![format!("mv/refs/heads/main/{b}.bundle")]);
    assert_eq!(bundle_keys(&env, &format!("mv/{moved}/")), vec![format!("mv/{moved}/{a}.bundle")]);
    let ls = env.ls_remote(testkit::Tool::Ours, &env.url("mv"));
    assert!(ls.contains(&format!("{b}\trefs/heads/main")), "{ls:?}");
    assert!(ls.contains(&format!("{a}\t{moved}")), "{ls:?}");

    // Missing HEAD → main; dangling HEAD → the --head choice.
    env.delete_object("mv/HEAD");
    let doc = json(&env, &repo, &["doctor", "origin", "--json"]);
    assert_eq!(doc["issues"][0]["kind"], "missing_head");
    assert_eq!(doc["actions"][0]["action"], "set_head");
    assert_eq!(text(&env.get_object("mv/HEAD")), "refs/heads/main");
    env.put_object("mv/HEAD", b"refs/heads/gone");
    let doc = json(&env, &repo, &["status", "origin", "--json"]);
    assert_eq!(doc["remote"]["head"]["state"], "dangling");
    let out = s3(&env, &repo, &["doctor", "origin", "--head", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    env.git_s3(&repo, &["doctor", "origin", "--head", "other", "--yes"]);
    assert_eq!(text(&env.get_object("mv/HEAD")), "refs/heads/other");
}

#[test]
fn delete_branch_removes_only_that_branch() {
    let env = TestEnv::new();
    let (repo, main) = pushed(&env, "del");
    env.git(&repo, &["branch", "x"]);
    env.git(&repo, &["branch", "x2"]);
    env.git(&repo, &["push", "-q", "origin", "x", "x2"]);

    // No tty and no --yes: refused, nothing removed.
    let out = s3(&env, &repo, &["delete-branch", "origin", "-b", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("pass --yes"), "{}", text(&out.stderr));
    assert_eq!(bundle_keys(&env, "del/refs/heads/x/").len(), 1);

    // A ref below it (possible in a bucket, not in one git repo) is not touched.
    let below = format!("del/refs/heads/x/y/{main}.bundle");
    env.copy_object(&format!("del/refs/heads/x/{main}.bundle"), &below);
    let out = env.git_s3(&repo, &["delete-branch", "origin", "-b", "x", "--yes"]);
    assert!(out.contains("Branch x has been deleted"), "{out}");
    assert_eq!(env.keys("del/refs/heads/x/"), vec![below.clone()]);
    env.delete_object(&below);
    let ls = env.ls_remote(testkit::Tool::Ours, &env.url("del"));
    assert_eq!(ls, vec![format!("{main}\tHEAD"), format!("{main}\trefs/heads/main"), format!("{main}\trefs/heads/x2")]);
    assert!(env.keys("del/refs/heads/x/").is_empty());

    // Positional branch (0.4.2 spelling); a missing branch fails.
    env.git_s3(&repo, &["delete-branch", &env.url("del"), "x2", "--yes"]);
    assert!(env.keys("del/refs/heads/x2/").is_empty());
    let out = s3(&env, &repo, &["delete-branch", "origin", "-b", "x2", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("does not exist"), "{}", text(&out.stderr));
    assert!(!bundle_keys(&env, "del/refs/heads/main/").is_empty());
}

#[test]
fn protect_blocks_force_push_and_unprotect_allows_it() {
    let env = TestEnv::new();
    let (repo, main) = pushed(&env, "prot");
    let out = env.git_s3(&repo, &["protect", "origin", "main"]);
    assert!(out.contains("Branch main is now protected"), "{out}");
    assert_eq!(env.get_object("prot/refs/heads/main/PROTECTED#"), b"");

    env.git(&repo, &["commit", "-q", "--amend", "-m", "rewritten"]);
    let rewritten = env.git(&repo, &["rev-parse", "main"]).trim().to_string();
    let err = env.git_fail(&repo, &["push", "-q", "-f", "origin", "main"]);
    assert!(err.contains("protected"), "{err}");
    assert!(env.ls_remote(testkit::Tool::Ours, &env.url("prot")).contains(&format!("{main}\trefs/heads/main")));
    // delete-branch refuses a protected branch
    let out = s3(&env, &repo, &["delete-branch", "origin", "-b", "main", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("protected"));
    let doc = json(&env, &repo, &["status", "origin", "--json"]);
    assert_eq!(doc["remote"]["protected"][0], "refs/heads/main");
    assert_eq!(doc["remote"]["refs"][0]["protected"], true);

    let out = env.git_s3(&repo, &["unprotect", "origin", "-b", "main"]);
    assert!(out.contains("Branch main is now unprotected"), "{out}");
    assert!(!env.keys("prot/").iter().any(|k| k.ends_with("PROTECTED#")));
    env.git(&repo, &["push", "-q", "-f", "origin", "main"]);
    assert!(env.ls_remote(testkit::Tool::Ours, &env.url("prot")).contains(&format!("{rewritten}\trefs/heads/main")));
}

#[test]
fn errors_usage_help_and_compat_spelling() {
    let env = TestEnv::new();
    let (repo, _) = pushed(&env, "err");
    let cases: &[(&[&str], i32, &str)] = &[
        (&["status", "nosuchremote"], 1, "neither an s3:// URL nor a git remote"),
        (&["status", "s3://Bad_Bucket/x"], 1, "invalid remote URL"),
        (&["status", "s3://no-such-bucket-here/x"], 1, "does not exist"),
        (&["doctor", "origin", "--lock-ttl", "soon"], 2, "invalid value"),
        (&["protect", "origin"], 2, "a branch is required"),
        (&["frobnicate"], 2, "unrecognized subcommand"),
        (&[], 2, "Usage"),
    ];
    for (args, code, msg) in cases {
        let out = s3(&env, &repo, args);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(msg), "{args:?}: {}", text(&out.stderr));
        if *code == 1 {
            assert_eq!(text(&out.stderr).lines().count(), 1, "one line: {}", text(&out.stderr));
        }
    }
    let out = s3(&env, &repo, &["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for cmd in ["status", "doctor", "delete-branch", "protect", "unprotect", "cache", "daemon", "lfs"] {
        assert!(help.contains(cmd), "{cmd} not in help:\n{help}");
    }
    // A remote whose URL is not s3
    env.git(&repo, &["remote", "add", "gh", "https://example.com/x.git"]);
    let out = s3(&env, &repo, &["status", "gh"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not an s3://"));

    // git-remote-s3 0.4.2's spelling: `git-remote-s3 <cmd> <remote> <branch>`.
    let mut c = env.command("git-remote-s3", &repo);
    c.args(["protect", "origin", "main"]);
    let out = env.run(c);
    assert!(text(&out.stdout).contains("now protected"));
    let mut c = env.command("git-remote-s3", &repo);
    c.args(["doctor", "origin", "main", "--lock-ttl", "60"]);
    let out = env.run(c);
    assert!(text(&out.stdout).contains(" * refs/heads/main: ok"), "{}", text(&out.stdout));
}

#[test]
fn cache_show_prune_clear() {
    let env = TestEnv::new();
    let (_repo, _) = pushed(&env, "cache");
    env.git(&env.work(), &["clone", "-q", &env.url("cache"), "c1"]);
    let doc = json(&env, &env.work(), &["cache", "--json"]);
    assert!(doc["entries"].as_u64().unwrap() >= 1, "{doc}");
    assert!(doc["bytes"].as_u64().unwrap() > 0);
    assert!(doc["removed"].is_null());
    let doc = json(&env, &env.work(), &["cache", "prune", "--max-bytes", "0", "--json"]);
    assert!(doc["removed"]["entries"].as_u64().unwrap() >= 1, "{doc}");
    assert_eq!(doc["entries"], 0);
    env.git(&env.work(), &["clone", "-q", &env.url("cache"), "c2"]);
    let out = env.git_s3(&env.work(), &["cache", "clear"]);
    // the downloaded bundle and its pre-indexed pack
    assert!(out.contains("removed 2 entries"), "{out}");
    assert!(env.git_s3(&env.work(), &["cache"]).contains("0 entries"));
}

fn daemon_pid(env: &TestEnv) -> u64 {
    let out = env.git_s3(&env.work(), &["daemon", "status", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["running"], true, "{v}");
    v["pid"].as_u64().expect("pid")
}

#[test]
fn daemon_stop_start_restart_leave_no_stale_socket() {
    let env = TestEnv::new();
    let sock = env.daemon_socket();
    env.git_s3(&env.work(), &["daemon", "start"]);
    assert!(sock.exists());
    let pid1 = daemon_pid(&env);
    // A second daemon refuses to run beside it (single instance).
    let mut c = env.command("git-s3-daemon", &env.work());
    c.args(["run", "--foreground"]);
    let out = env.run_fail(c);
    assert!(text(&out.stderr).contains("already running"), "{}", text(&out.stderr));
    assert_eq!(daemon_pid(&env), pid1);

    env.git_s3(&env.work(), &["daemon", "stop"]);
    assert!(!sock.exists(), "socket left after stop");
    let v: Value = serde_json::from_str(&env.git_s3(&env.work(), &["daemon", "status", "--json"])).unwrap();
    assert_eq!(v["running"], false);

    env.git_s3(&env.work(), &["daemon", "restart"]);
    let pid2 = daemon_pid(&env);
    assert_ne!(pid1, pid2);
    env.git_s3(&env.work(), &["daemon", "restart"]);
    let pid3 = daemon_pid(&env);
    assert_ne!(pid2, pid3);
    assert!(sock.exists());

    // A killed daemon leaves its socket file; the next start replaces it.
    unsafe { libc_kill(pid3 as i32) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid3) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sock.exists(), "SIGKILL leaves the socket file");
    let out = env.git_s3(&env.work(), &["status"]);
    assert!(out.contains("daemon: running"), "{out}");
    let pid4 = daemon_pid(&env);
    assert_ne!(pid3, pid4);
    env.git_s3(&env.work(), &["daemon", "stop"]);
    assert!(!sock.exists());
}

/// Running (not gone, not a zombie waiting for its reaper).
fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// SIGKILL, so the daemon cannot clean up.
unsafe fn libc_kill(pid: i32) {
    kill(pid, 9);
}

/// Runs `git s3 <args>` on a pseudo-terminal (util-linux `script`), typing
/// `answers`; returns what the terminal showed.
fn on_tty(env: &TestEnv, cwd: &Path, args: &str, answers: &str, code: i32) -> String {
    use std::io::{Read, Write};
    let mut c = env.command("script", cwd);
    c.args(["-qec", &format!("git s3 {args}"), "/dev/null"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = c.spawn().expect("script (util-linux) is needed for the tty tests");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(answers.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let mut shown = String::new();
    // Keep stdin open until the command is done: `script` stops at its EOF.
    child.stdout.take().unwrap().read_to_string(&mut shown).unwrap();
    drop(stdin);
    assert_eq!(child.wait().unwrap().code(), Some(code), "{shown}");
    shown
}

#[test]
fn doctor_and_delete_branch_ask_on_a_tty() {
    let env = TestEnv::new();
    let (repo, a, b) = two_bundles(&env, "tty", true);
    env.delete_object("tty/HEAD");
    // Bundle 2 (the older, A) is kept; confirm; HEAD: branch 1 (main).
    let shown = on_tty(&env, &repo, "doctor origin --delete-bundle", "2\ny\n1\n", 0);
    assert!(shown.contains("Number of the bundle to keep [1]"), "{shown}");
    assert!(shown.contains("Number of the branch to use as HEAD [1]"), "{shown}");
    assert_eq!(bundle_keys(&env, "tty/refs/heads/main/"), vec![format!("tty/refs/heads/main/{a}.bundle")]);
    assert_eq!(text(&env.get_object("tty/HEAD")), "refs/heads/main");

    // delete-branch: "no" keeps it, "yes" deletes it.
    let shown = on_tty(&env, &repo, "delete-branch origin other", "no\n", 1);
    assert!(shown.contains("Aborted"), "{shown}");
    assert_eq!(bundle_keys(&env, "tty/refs/heads/other/"), vec![format!("tty/refs/heads/other/{b}.bundle")]);
    on_tty(&env, &repo, "delete-branch origin other", "yes\n", 0);
    assert!(bundle_keys(&env, "tty/refs/heads/other/").is_empty());
}

/// A push killed half-way leaves a multipart upload that is never completed
/// (S3 keeps and bills its parts): doctor reports those older than
/// `--upload-age` (a day by default) and aborts them with `--abort-uploads`,
/// in both formats, and leaves younger ones (a push at work) alone.
/// Through the field server: moto lists every upload as started in 2010,
/// the field server gives the time it was created, as S3 does.
#[test]
fn doctor_reports_and_aborts_incomplete_uploads() {
    let env = TestEnv::new();
    let field = testkit::FieldServer::start();
    env.set_env("AWS_ENDPOINT_URL", &field.url);
    for (prefix, packs) in [("iu-bundles", false), ("iu-packs", true)] {
        let url = env.url(prefix);
        if packs {
            env.git_s3(&env.work(), &["init", "--format", "packs", &url]);
        }
        let repo = env.new_repo(prefix);
        env.git(&repo, &["push", "-q", &url, "main"]);
        let key = format!("{prefix}/refs/heads/main/{}.bundle", "a".repeat(40));
        let out = testkit::s3tool_at(&field.url, &["start-upload", &env.bucket, &key], None);
        let upload = text(&out.stdout).trim().to_string();
        // Another prefix's upload is not this remote's business.
        testkit::s3tool_at(&field.url, &["start-upload", &env.bucket, "elsewhere/x.bundle"], None);

        let doc = json(&env, &env.work(), &["doctor", &url, "--json"]);
        assert!(!doc["issues"].to_string().contains("incomplete_upload"), "{prefix}: a fresh upload is left alone: {doc}");
        let doc = json(&env, &env.work(), &["doctor", &url, "--json", "--upload-age", "0"]);
        let issues = doc["issues"].as_array().unwrap();
        let found: Vec<&Value> = issues.iter().filter(|i| i["kind"] == "incomplete_upload").collect();
        assert_eq!(found.len(), 1, "{prefix}: {doc}");
        assert_eq!(found[0]["key"], key.as_str());
        assert_eq!(found[0]["upload_id"], upload.as_str());
        let out = env.git_s3(&env.work(), &["doctor", &url, "--upload-age", "0"]);
        assert!(out.contains("Found incomplete uploads") && out.contains(&key) && out.contains("--abort-uploads"), "{out}");

        let doc = json(&env, &env.work(), &["doctor", &url, "--json", "--upload-age", "0", "--abort-uploads", "--dry-run"]);
        assert!(doc["actions"].as_array().unwrap().is_empty(), "{doc}");
        let doc = json(&env, &env.work(), &["doctor", &url, "--json", "--upload-age", "0", "--abort-uploads", "--yes"]);
        assert!(doc["actions"].to_string().contains("aborted_upload"), "{prefix}: {doc}");
        let left = text(&testkit::s3tool(&["list-uploads", &env.bucket], None).stdout);
        assert!(!left.contains(&key), "{prefix}: {left}");
        assert!(left.contains("elsewhere/x.bundle"), "{prefix}: {left}");
        let out = env.git_s3(&env.work(), &["doctor", &url, "--upload-age", "0"]);
        assert!(out.contains("No incomplete uploads found.") && out.contains("No problems found."), "{prefix}: {out}");
    }
}
