//! Bad inputs and failures: every one gets a clear error and leaves the
//! remote and the local repository intact.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)] // libc calls on test processes

use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{Held, TestEnv, Tool};

fn stderr_of(env: &TestEnv, cwd: &std::path::Path, args: &[&str]) -> String {
    env.git_fail(cwd, args)
}

#[test]
fn malformed_urls_are_refused_clearly() {
    let env = TestEnv::new();
    for (url, needle) in [
        ("s3://Bad_Bucket/p", "not a valid S3 bucket name"),
        ("s3://bucket-only", "a prefix is required"),
        ("s3://@bucket/p", "empty profile"),
        ("s3://bucket/a/../b", "must not contain"),
    ] {
        let err = stderr_of(&env, &env.work(), &["ls-remote", url]);
        assert!(err.contains(needle), "{url}: {err}");
    }
}

#[test]
fn missing_bucket_is_a_clear_error() {
    let env = TestEnv::new();
    let err = stderr_of(&env, &env.work(), &["ls-remote", "s3://no-such-bucket-for-git-s3/p"]);
    assert!(err.contains("bucket 'no-such-bucket-for-git-s3' does not exist"), "{err}");
    let repo = env.new_repo("r");
    let err = stderr_of(&env, &repo, &["push", "s3://no-such-bucket-for-git-s3/p", "main"]);
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn missing_credentials_are_a_clear_error() {
    let env = TestEnv::new();
    let mut c = env.command("git", &env.work());
    c.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY").env("AWS_EC2_METADATA_DISABLED", "true");
    c.args(["ls-remote", &env.url("p")]);
    let out = env.run_fail(c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no AWS credentials"), "{err}");
}

#[test]
fn rejected_credentials_are_a_clear_error() {
    let env = TestEnv::new();
    let mut c = env.command("git", &env.work());
    c.env("AWS_ENDPOINT_URL", testkit::auth_endpoint()).args(["ls-remote", "s3://auth-bucket/p"]);
    let out = env.run_fail(c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the AWS credentials were rejected (InvalidAccessKeyId)"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
}

#[test]
fn unreachable_endpoint_is_a_clear_error() {
    let env = TestEnv::new();
    let mut c = env.command("git", &env.work());
    c.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9").args(["ls-remote", &env.url("p")]);
    let out = env.run_fail(c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to the S3 endpoint"), "{err}");
}

#[test]
fn missing_daemon_binary_is_a_clear_error() {
    let env = TestEnv::new();
    let mut c = env.command("git", &env.work());
    c.env("GIT_S3_DAEMON", "/nonexistent/git-s3-daemon").args(["ls-remote", &env.url("p")]);
    let out = env.run_fail(c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot start the git-s3 daemon"), "{err}");
}

fn daemon_pid(env: &TestEnv) -> Option<u32> {
    let out = env.git_s3(&env.work(), &["daemon", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    v["pid"].as_u64().map(|p| p as u32)
}

#[test]
fn daemon_autostarts_and_recovers_after_being_killed() {
    let env = TestEnv::new();
    let repo = env.new_repo("r");
    let url = env.url("dead");
    assert_eq!(daemon_pid(&env), None, "no daemon before first use");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let pid = daemon_pid(&env).expect("daemon started by the shim");
    // SIGKILL leaves a stale socket file behind
    unsafe { libc_kill(pid as i32, 9) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(env.daemon_socket().exists(), "stale socket expected after SIGKILL");
    assert_eq!(env.ls_remote(Tool::Ours, &url).len(), 2);
    let new_pid = daemon_pid(&env).expect("restarted");
    assert_ne!(pid, new_pid);
}

#[test]
fn an_idle_daemon_exits_and_the_next_command_starts_another() {
    let env = TestEnv::new();
    let repo = env.new_repo("r");
    let url = env.url("idle");
    // a daemon started with a 1 s idle period
    let mut c = env.command("git", &repo);
    c.env("GIT_S3_DAEMON_IDLE_SECONDS", "1").args(["push", "-q", &url, "main"]);
    env.run(c);
    let pid = daemon_pid(&env).expect("daemon started by the shim");
    // it exits once no session has run for its idle period (woken by the
    // session count and a timer, no polling); the socket goes with it
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the idle daemon did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!env.daemon_socket().exists(), "an idle exit removes the socket");
    // the next command starts a new one
    assert_eq!(env.ls_remote(Tool::Ours, &url).len(), 2);
    assert_ne!(daemon_pid(&env), Some(pid));
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Found by the crash loop (seed 8114): right after a SIGKILL the dead
/// daemon's socket file is there and its lock is held until the kernel has
/// torn the process down. A daemon started then gave up at once ("already
/// running"), and git waited 15 s for nothing. Now it waits for the lock
/// while nobody answers on the socket.
#[test]
fn a_daemon_started_while_a_killed_one_is_torn_down_takes_over() {
    let env = TestEnv::new();
    let repo = env.new_repo("r");
    let url = env.url("teardown");
    env.git(&repo, &["push", "-q", &url, "main"]);
    env.git_s3(&env.work(), &["daemon", "stop"]);
    // The dead daemon: a socket file nobody listens on, and its lock held
    // (by `flock`, for a second) as a process being torn down holds it.
    let socket = env.daemon_socket();
    let lock = socket.with_file_name("daemon.lock");
    let _ = std::fs::remove_file(&socket);
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let mut holder = Command::new("flock").arg(&lock).args(["sleep", "1"]).spawn().unwrap();
    let start = Instant::now();
    while !holder_has_lock(&lock) {
        assert!(start.elapsed() < Duration::from_secs(10), "flock never took the lock");
        std::thread::sleep(Duration::from_millis(10));
    }
    let ls = env.ls_remote(Tool::Ours, &url);
    assert!(ls.iter().any(|l| l.ends_with("refs/heads/main")), "{ls:?}");
    let _ = holder.wait();
}

/// Whether another process holds the daemon's lock (a non-blocking try).
fn holder_has_lock(lock: &std::path::Path) -> bool {
    Command::new("flock").args(["-n", "-E", "75"]).arg(lock).arg("true").status().map(|s| s.code() == Some(75)).unwrap_or(false)
}

#[test]
fn concurrent_pushes_to_one_branch_exactly_one_wins_nothing_lost() {
    // Concurrent conditional writes of one key: atomic in S3, not in moto.
    let env = TestEnv::new().with_atomic_conditional_writes();
    let base = env.new_repo("base");
    let url = env.url("race");
    env.git(&base, &["push", "-q", &url, "main"]);
    let mut shas = Vec::new();
    let mut cmds = Vec::new();
    for i in 0..3 {
        let name = format!("c{i}");
        env.git(&env.work(), &["clone", "-q", &url, &name]);
        let p = env.path(&name);
        shas.push(env.commit(&p, &format!("f{i}"), "x\n", &format!("commit {i}")));
        let mut c = env.command("git", &p);
        c.args(["push", "origin", "main"]);
        cmds.push(c);
    }
    let handles: Vec<_> = cmds.into_iter().map(|mut c| std::thread::spawn(move || c.output().unwrap())).collect();
    let outs: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners: Vec<usize> = (0..3).filter(|i| outs[*i].status.success()).collect();
    assert_eq!(winners.len(), 1, "{:?}", outs.iter().map(|o| String::from_utf8_lossy(&o.stderr).to_string()).collect::<Vec<_>>());
    let w = winners[0];
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{}\trefs/heads/main", shas[w])));
    for (i, o) in outs.iter().enumerate() {
        if i != w {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("fetch first") || err.contains("rejected") || err.contains("lock"), "{err}");
        }
    }
    assert!(!env.keys("race/").iter().any(|k| k.contains("LOCK#")));
    // A loser pulls and pushes again: nothing is lost.
    let loser = (0..3).find(|i| *i != w).unwrap();
    let p = env.path(&format!("c{loser}"));
    env.git(&p, &["pull", "-q", "--no-rebase", "origin", "main"]);
    env.git(&p, &["push", "-q", "origin", "main"]);
    env.git(&env.work(), &["clone", "-q", &url, "check"]);
    let check = env.path("check");
    for i in [w, loser] {
        assert!(env.git(&check, &["merge-base", "--is-ancestor", &shas[i], "HEAD"]).is_empty());
    }
}

#[test]
fn stale_lock_is_taken_over_and_fresh_lock_blocks() {
    let env = TestEnv::new();
    let repo = env.new_repo("r");
    let url = env.url("locks");
    env.git(&repo, &["push", "-q", &url, "main"]);
    env.commit(&repo, "n", "n\n", "next");
    env.put_object("locks/refs/heads/main/LOCK#.lock", b"");
    // fresh lock (TTL 60 s): refused quickly with the lock message
    let mut c = env.command("git", &repo);
    c.env("GIT_REMOTE_S3_LOCK_WAIT_SECONDS", "1").args(["push", &url, "main"]);
    let err = String::from_utf8_lossy(&env.run_fail(c).stderr).to_string();
    assert!(err.contains("failed to acquire ref lock"), "{err}");
    // with a 0 s TTL the lock is stale and taken over
    let mut c = env.command("git", &repo);
    c.env("GIT_REMOTE_S3_LOCK_TTL_SECONDS", "0").args(["push", "-q", &url, "main"]);
    env.run(c);
    let head = env.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{head}\trefs/heads/main")));
    assert!(!env.keys("locks/").iter().any(|k| k.contains("LOCK#")));
}

#[test]
fn truncated_bundle_gives_clear_error_and_keeps_local_repo_intact() {
    let env = TestEnv::new();
    let repo = env.new_repo("r");
    let url = env.url("trunc");
    env.git(&repo, &["push", "-q", &url, "main"]);
    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    let clone = env.path("clone");
    let before = env.git(&clone, &["rev-parse", "HEAD"]);
    // the pusher's next bundle arrives truncated in the bucket
    let sha = env.commit(&repo, "big.txt", &"x".repeat(100_000), "big");
    let mut c = env.command("git", &repo);
    c.args(["push", "-q", &url, "main"]);
    env.run(c);
    let key = format!("trunc/refs/heads/main/{sha}.bundle");
    let data = env.get_object(&key);
    env.put_object(&key, &data[..data.len() / 2]);
    // fetch with an empty cache (the pusher's own cache holds the good bundle)
    std::fs::remove_dir_all(env.dir.path().join("cache")).unwrap();
    env.git_s3(&env.work(), &["daemon", "stop"]);
    let err = env.git_fail(&clone, &["fetch", "origin"]);
    assert!(err.contains("corrupt or truncated"), "{err}");
    assert_eq!(env.git(&clone, &["rev-parse", "HEAD"]), before);
    assert_eq!(env.git(&clone, &["rev-parse", "origin/main"]), before);
    env.git(&clone, &["fsck", "--no-progress"]);
    let leftovers: Vec<_> = std::fs::read_dir(clone.join(".git/objects/pack"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tmp_"))
        .collect();
    assert!(leftovers.is_empty(), "no temp files left: {leftovers:?}");
}

/// Two pushes of the same commit overlap (for instance a push the user
/// interrupted, which the daemon still finishes, and the user's second try):
/// the one that finds the ref already at its commit under the lock succeeds.
#[test]
fn push_finding_its_commit_already_there_under_the_lock_succeeds() {
    let env = TestEnv::new();
    let repo = env.new_repo("r");
    let url = env.url("same");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let new = env.commit(&repo, "f", "x\n", "second");
    let mut c = env.command("git", &repo);
    c.args(["push", "-q", &url, "main"]);
    // The held push has listed the old ref and waits before its lock; an
    // identical repository pushes the same commit meanwhile.
    let held = Held::start(c, "GIT_S3_TEST_PUSH_LOCK_GATE", env.dir.path().join("lock-gate"), "the push");
    env.git(&env.work(), &["clone", "-q", &repo.to_string_lossy(), "twin"]);
    let twin = env.path("twin");
    env.git(&twin, &["push", "-q", &url, "main"]);
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{new}\trefs/heads/main")));
    let out = held.release();
    assert!(out.status.success(), "the held push reports success: {}", String::from_utf8_lossy(&out.stderr));
    let keys = env.keys("same/");
    assert_eq!(keys.iter().filter(|k| k.ends_with(".bundle")).count(), 1, "{keys:?}");
    assert!(!keys.iter().any(|k| k.contains("LOCK#")), "{keys:?}");
}

/// Found by the crash loop (seed 7007): a bundles push killed between its
/// upload and the old bundle's deletion leaves two bundles for the ref. The
/// newest is the ref (every listing says so); the next push, under the
/// ref's lock, builds on it and removes both, instead of asking for doctor.
#[test]
fn next_push_heals_two_bundles_left_by_a_killed_push() {
    let env = TestEnv::new();
    let repo = env.new_repo("r");
    let url = env.url("two");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let old = env.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    // What the killed push had uploaded: the bundle of the next commit,
    // a second later (S3's modification times have whole seconds).
    let killed = env.commit(&repo, "f", "x\n", "killed push");
    let bundle = env.path("killed.bundle");
    env.git(&repo, &["bundle", "create", "-q", &bundle.to_string_lossy(), "main"]);
    std::thread::sleep(Duration::from_millis(1100));
    env.put_object(&format!("two/refs/heads/main/{killed}.bundle"), &std::fs::read(&bundle).unwrap());
    let ls = env.ls_remote(Tool::Ours, &url);
    assert!(ls.contains(&format!("{killed}\trefs/heads/main")), "the newest bundle is the ref: {ls:?}");
    let next = env.commit(&repo, "g", "y\n", "next push");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let keys = env.keys("two/");
    let bundles: Vec<_> = keys.iter().filter(|k| k.ends_with(".bundle")).collect();
    assert_eq!(bundles, vec![&format!("two/refs/heads/main/{next}.bundle")], "{keys:?}");
    assert!(!keys.iter().any(|k| k.contains("LOCK#")), "{keys:?}");
    env.git(&env.work(), &["clone", "-q", &url, "after"]);
    let after = env.path("after");
    assert_eq!(env.git(&after, &["rev-parse", "HEAD"]).trim(), next);
    assert!(env.git(&after, &["merge-base", "--is-ancestor", &old, "HEAD"]).is_empty());
    env.git(&after, &["fsck", "--no-progress"]);
}

#[test]
fn killed_push_leaves_remote_consistent_and_no_lock() {
    let env = TestEnv::new();
    let repo = env.new_repo("r");
    let url = env.url("killed");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let old = env.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    // ~24 MB of incompressible data makes the push take a moment
    let mut data = vec![0u8; 24 << 20];
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(repo.join("blob.bin"), &data).unwrap();
    env.git(&repo, &["add", "blob.bin"]);
    env.git(&repo, &["commit", "-q", "-m", "big"]);
    let new = env.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    let mut c = env.command("git", &repo);
    c.args(["push", &url, "main"]);
    let mut child = c.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    // The daemon may finish the push it had started, or stop it; either way
    // it ends, and then the remote is settled.
    env.wait_daemon_idle(Duration::from_secs(60));
    // The remote is either the old or the new state, never a mix, and the lock goes away.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let keys = env.keys("killed/");
        let bundles: Vec<_> = keys.iter().filter(|k| k.ends_with(".bundle")).collect();
        if !keys.iter().any(|k| k.contains("LOCK#")) && bundles.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "remote not settled: {keys:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ls = env.ls_remote(Tool::Ours, &url);
    assert!(ls.contains(&format!("{old}\trefs/heads/main")) || ls.contains(&format!("{new}\trefs/heads/main")), "{ls:?}");
    env.git(&env.work(), &["clone", "-q", &url, "after"]);
    env.git(&env.path("after"), &["fsck", "--no-progress"]);
    // and pushing again completes
    env.git(&repo, &["push", "-q", &url, "main"]);
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{new}\trefs/heads/main")));
}

#[test]
fn warm_clients_are_reused_and_split_by_credentials() {
    let env = TestEnv::new();
    let repo = env.new_repo("r");
    let url = env.url("warm");
    env.git(&repo, &["push", "-q", &url, "main"]);
    for _ in 0..3 {
        env.ls_remote(Tool::Ours, &url);
    }
    // another shell, other credentials (moto accepts any key)
    let mut c = env.command("git", &env.work());
    c.env("AWS_ACCESS_KEY_ID", "other-user").args(["ls-remote", &url]);
    env.run(c);
    let doc: serde_json::Value = serde_json::from_str(&env.git_s3(&env.work(), &["status", "--json"])).unwrap();
    let clients = doc["daemon"]["clients"].as_array().expect("clients");
    assert_eq!(clients.len(), 2, "{doc}");
    let mut uses: Vec<u64> = clients.iter().map(|c| c["uses"].as_u64().unwrap()).collect();
    uses.sort();
    assert_eq!(uses[0], 1, "{doc}");
    assert!(uses[1] >= 4, "the first client served every session of the first shell: {doc}");
    assert!(!doc.to_string().contains("other-user"), "no secrets or key ids in status");
}

#[test]
fn daemon_is_restarted_when_its_binary_is_replaced() {
    let env = TestEnv::new();
    let url = env.url("upgrade");
    // a private copy of the daemon binary, so changing it affects no other test
    let daemon = env.dir.path().join("git-s3-daemon");
    std::fs::copy(testkit::target_bin_dir().join("git-s3-daemon"), &daemon).unwrap();
    let run = |args: &[&str]| {
        let mut c = env.command(args[0], &env.work());
        c.env("GIT_S3_DAEMON", &daemon).args(&args[1..]);
        String::from_utf8_lossy(&env.run(c).stdout).into_owned()
    };
    let pid = |s: String| serde_json::from_str::<serde_json::Value>(&s).unwrap()["pid"].as_u64().unwrap();
    run(&["git", "ls-remote", &url]);
    let first = pid(run(&["git-s3", "daemon", "status", "--json"]));
    run(&["git", "ls-remote", &url]);
    assert_eq!(pid(run(&["git-s3", "daemon", "status", "--json"])), first, "same binary: same daemon");
    // "upgrade": the binary on disk changes
    // (read-only: the running binary cannot be opened for writing)
    let f = std::fs::File::open(&daemon).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(60)).unwrap();
    drop(f);
    run(&["git", "ls-remote", &url]);
    let second = pid(run(&["git-s3", "daemon", "status", "--json"]));
    assert_ne!(first, second, "a replaced binary restarts the daemon");
}
