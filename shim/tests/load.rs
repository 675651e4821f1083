//! Load: one daemon under 64 concurrent sessions (fetch, push, ls-remote,
//! clone and LFS, mixed) for `GIT_S3_LOAD_SECONDS` (default 60); 32
//! concurrent pushers to distinct branches of one packs remote; 8 pushers to
//! one branch, in each format, for `GIT_S3_LOAD_ROUNDS` rounds (default 3).
//!
//! What is asserted: every operation succeeds or fails with one clear line;
//! the daemon's peak RSS (VmHWM) stays under a generous bound; its open
//! files and pipes after the sessions end are no more than before, its
//! sockets within the S3 connection pool's reach; no temp file is left in
//! the cache; the daemon (same pid) still answers. The figures (operations,
//! peak RSS, fds, push attempts) are printed (`--nocapture`) for
//! docs/reliability-campaign.md. No assertion on time.
//!
//! The tests of this file run one at a time (they share the machine's two
//! cores and the single moto process).
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{noise, TestEnv};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn daemon_status(env: &TestEnv) -> Value {
    let v: Value = serde_json::from_str(env.git_s3(&env.work(), &["daemon", "status", "--json"]).trim()).expect("status json");
    if v["daemon"].is_object() {
        v["daemon"].clone()
    } else {
        v
    }
}

fn daemon_pid(env: &TestEnv) -> u32 {
    let v = daemon_status(env);
    v["pid"].as_u64().unwrap_or_else(|| panic!("no pid in {v}")) as u32
}

/// (sessions open now, not counting the asking one; sessions served so far).
fn sessions(env: &TestEnv) -> (u64, u64) {
    let doc: Value = serde_json::from_str(env.git_s3(&env.work(), &["status", "--json"]).trim()).expect("git s3 status --json");
    let v = &doc["daemon"];
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    (n("active_sessions").saturating_sub(1), n("total_sessions"))
}

/// The daemon's open descriptors: (sockets, everything else), with the
/// targets of the others (files, pipes, event fds) for a failure message.
fn fds(pid: u32) -> (usize, Vec<String>) {
    let mut sockets = 0;
    let mut other = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/<pid>/fd").flatten() {
        let target = std::fs::read_link(e.path()).map(|p| p.display().to_string()).unwrap_or_default();
        if target.starts_with("socket:") {
            sockets += 1;
        } else {
            other.push(target);
        }
    }
    other.sort();
    (sockets, other)
}

/// A `kB` field of /proc/<pid>/status, in bytes.
fn status_kb(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    s.lines()
        .find_map(|l| {
            l.strip_prefix(field).and_then(|r| r.trim_start_matches(':').trim().strip_suffix("kB")).and_then(|v| v.trim().parse::<u64>().ok())
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        * 1024
}

/// Entries left in the cache's temp dir.
fn cache_temp_entries(env: &TestEnv) -> Vec<String> {
    std::fs::read_dir(env.dir.path().join("cache/tmp"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// A failure is clear: at most one `fatal:` line, no panic, no SDK or
/// debug dump (git's own `error: failed to push some refs` and ` ! [...]`
/// status lines are git's format for a refused push).
fn assert_clear_failure(what: &str, stderr: &str) {
    let fatals = stderr.lines().filter(|l| l.starts_with("fatal:")).count();
    assert!(fatals <= 1, "{what}: more than one fatal line:\n{stderr}");
    for bad in ["panicked", "SdkError", "DispatchFailure", "Error {", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(!stderr.contains(bad), "{what}: {bad:?} on stderr:\n{stderr}");
    }
    let explained =
        stderr.lines().any(|l| l.starts_with("fatal:") || l.starts_with("error:") || l.contains("[rejected]") || l.contains("[remote rejected]"));
    assert!(explained, "{what}: failed without saying why:\n{stderr}");
}

fn run(env: &TestEnv, cwd: &Path, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut c: Command = env.command("git", cwd);
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in extra {
        c.env(k, v);
    }
    c.output().expect("spawn git")
}

#[derive(Default, Debug)]
struct Tally {
    ok: BTreeMap<&'static str, u64>,
    failed: BTreeMap<&'static str, u64>,
    failures: Vec<String>,
}

impl Tally {
    fn record(&mut self, kind: &'static str, what: &str, out: &Output) {
        if out.status.success() {
            *self.ok.entry(kind).or_default() += 1;
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_clear_failure(what, &stderr);
            *self.failed.entry(kind).or_default() += 1;
            let line =
                stderr.lines().find(|l| l.starts_with("fatal:") || l.starts_with("error:") || l.contains("rejected]")).unwrap_or("").to_string();
            self.failures.push(format!("{what}: {line}"));
        }
    }
}

/// 64 workers, each one git command at a time (a push with LFS objects is
/// two sessions: the helper's and git-lfs's agent), over three remotes of
/// one daemon: packs, bundles, and bundles with LFS. Each worker clones its
/// remote, then cycles: commit + push to its own branch, ls-remote, fetch,
/// a fresh clone (deleted after; for the LFS remote, its objects come
/// through the agent).
#[test]
fn one_daemon_under_64_concurrent_sessions() {
    let _one = serial();
    let seconds = env_u64("GIT_S3_LOAD_SECONDS", 60);
    let workers = env_u64("GIT_S3_LOAD_SESSIONS", 64) as usize;
    // Straight to the test server (not through the field server that makes
    // conditional writes atomic, as the concurrent pushers of packs.rs and
    // robustness.rs do): the socket bound below was set against moto;
    // through the field server 148 were counted against a bound of 135
    // (2026-12-05; why not established: perhaps idle connections the field
    // server keeps open where moto closes them). So moto's rare If-Match
    // race (docs/s3-implementations.md) stays possible here.
    let env = TestEnv::new();
    env.git(&env.home(), &["lfs", "install", "--skip-repo"]);
    let remotes = [("packs", env.url("load-packs")), ("bundles", env.url("load-bundles")), ("lfs", env.url("load-lfs"))];
    env.git_s3(&env.work(), &["init", "--format", "packs", &remotes[0].1]);
    let seed = env.new_repo("seed");
    env.commit(&seed, "src/lib.rs", "pub fn f() {}\n", "second");
    env.git(&seed, &["push", "-q", &remotes[0].1, "main"]);
    env.git(&seed, &["push", "-q", &remotes[1].1, "main"]);
    let lfs_seed = env.path("lfs-seed");
    std::fs::create_dir_all(&lfs_seed).unwrap();
    env.git(&lfs_seed, &["init", "-q", "-b", "main"]);
    env.git(&lfs_seed, &["lfs", "track", "*.bin"]);
    std::fs::write(lfs_seed.join("a.bin"), noise(20 << 10, 1)).unwrap();
    env.commit_all_with_lfs_remote(&lfs_seed, "lfs seed", &remotes[2].1);
    env.git(&lfs_seed, &["push", "-q", "origin", "main"]);
    // Warm: one clone of each.
    for (name, url) in &remotes {
        let dest = env.path(&format!("warm-{name}"));
        env.git(&env.work(), &["clone", "-q", url, dest.to_str().unwrap()]);
    }
    let pid = daemon_pid(&env);
    let (sockets_before, other_before) = fds(pid);
    let rss_before = status_kb(pid, "VmRSS");
    eprintln!(
        "load: daemon {pid} before: {sockets_before} sockets, {} other fds {other_before:?}, VmRSS {} MiB",
        other_before.len(),
        rss_before >> 20
    );

    let (_, sessions_before) = sessions(&env);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tally = Mutex::new(Tally::default());
    let peak_sessions = std::sync::atomic::AtomicU64::new(0);
    let samples = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        // The sessions open at once, sampled each second (a figure, not asserted).
        s.spawn(|| {
            while Instant::now() < deadline {
                peak_sessions.fetch_max(sessions(&env).0, std::sync::atomic::Ordering::Relaxed);
                samples.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        for w in 0..workers {
            let (env, remotes, tally) = (&env, &remotes, &tally);
            s.spawn(move || {
                let (kind, url) = &remotes[w % remotes.len()];
                let lfs = *kind == "lfs";
                let dir: PathBuf = env.path(&format!("w{w}"));
                let out = run(env, &env.work(), &["clone", "-q", url, dir.to_str().unwrap()], &[]);
                tally.lock().unwrap().record("clone", &format!("worker {w} clone {kind}"), &out);
                if !out.status.success() {
                    return;
                }
                env.git(&dir, &["checkout", "-q", "-b", &format!("w{w}")]);
                let mut k = 0u64;
                while Instant::now() < deadline {
                    let (op, out): (&'static str, Output) = match k % 4 {
                        0 => {
                            let name = if lfs { format!("w{w}-{k}.bin") } else { format!("w{w}-{k}.txt") };
                            std::fs::write(dir.join(&name), noise(if lfs { 8 << 10 } else { 512 }, (w as u64) << 20 | k)).unwrap();
                            env.git(&dir, &["add", &name]);
                            env.git(&dir, &["commit", "-q", "-m", &format!("worker {w} op {k}")]);
                            ("push", run(env, &dir, &["push", "-q", "origin", &format!("w{w}")], &[]))
                        }
                        1 => ("ls-remote", run(env, &dir, &["ls-remote", "origin"], &[])),
                        2 => ("fetch", run(env, &dir, &["fetch", "-q", "origin"], &[])),
                        _ => {
                            let dest = env.path(&format!("w{w}-clone{k}"));
                            let out = run(env, &env.work(), &["clone", "-q", url, dest.to_str().unwrap()], &[]);
                            if out.status.success() && lfs {
                                // The LFS object came through the agent, whole.
                                let a = std::fs::read(dest.join("a.bin")).unwrap_or_default();
                                assert_eq!(a.len(), 20 << 10, "worker {w}: a.bin not smudged in a fresh clone");
                            }
                            let _ = std::fs::remove_dir_all(&dest);
                            ("clone", out)
                        }
                    };
                    tally.lock().unwrap().record(op, &format!("worker {w} {op} {kind} #{k}"), &out);
                    k += 1;
                }
            });
        }
    });
    let elapsed = started.elapsed();
    let tally = tally.into_inner().unwrap();
    let ops: u64 = tally.ok.values().sum::<u64>() + tally.failed.values().sum::<u64>();
    let (open_after, sessions_after) = sessions(&env);
    eprintln!(
        "load: {workers} workers for {:.0} s: {ops} operations, {} daemon sessions (at most {} open at once, sampled); ok {:?}; failed {:?}",
        elapsed.as_secs_f64(),
        sessions_after - sessions_before - 1 - samples.into_inner(),
        peak_sessions.into_inner(),
        tally.ok,
        tally.failed
    );
    assert_eq!(open_after, 0, "sessions still open after every command ended");
    for f in &tally.failures {
        eprintln!("load: failure: {f}");
    }

    // The daemon still answers, the same process, and every worker's
    // last push is on its remote.
    assert_eq!(daemon_pid(&env), pid, "the daemon was restarted (crashed?)");
    for (name, url) in &remotes {
        let listed = env.git(&env.work(), &["ls-remote", url]);
        for w in (0..workers).filter(|w| remotes[w % remotes.len()].0 == *name) {
            let dir = env.path(&format!("w{w}"));
            if !dir.join(".git").exists() {
                continue;
            }
            let pushed = run(&env, &dir, &["rev-parse", &format!("origin/w{w}")], &[]);
            if pushed.status.success() {
                let sha = String::from_utf8_lossy(&pushed.stdout).trim().to_string();
                assert!(
                    listed.contains(&format!("{sha}\trefs/heads/w{w}")),
                    "{name}: worker {w}'s acknowledged push {sha} is not on the remote:\n{listed}"
                );
            }
        }
    }
    let all = env.path("after-packs");
    env.git(&env.work(), &["clone", "-q", &remotes[0].1, all.to_str().unwrap()]);
    env.git(&all, &["fsck", "--strict", "--no-progress"]);

    // Background work (idx uploads, compaction) settles; then the
    // descriptors and temp files of the sessions are gone.
    let settle = Instant::now() + Duration::from_secs(60);
    let (mut sockets_after, mut other_after) = fds(pid);
    while (other_after.len() > other_before.len() || !cache_temp_entries(&env).is_empty()) && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(250));
        (sockets_after, other_after) = fds(pid);
    }
    let peak = status_kb(pid, "VmHWM");
    let rss_after = status_kb(pid, "VmRSS");
    eprintln!(
        "load: daemon after: {sockets_after} sockets, {} other fds {other_after:?}; peak RSS (VmHWM) {} MiB, VmRSS {} MiB",
        other_after.len(),
        peak >> 20,
        rss_after >> 20
    );
    assert!(other_after.len() <= other_before.len(), "descriptors leaked: before {other_before:?}\nafter {other_after:?}");
    assert!(
        sockets_after <= sockets_before + 2 * workers,
        "{sockets_after} sockets after the sessions ended ({sockets_before} before): more than the S3 connection pool explains"
    );
    let temps = cache_temp_entries(&env);
    assert!(temps.is_empty(), "temp files left in the cache: {temps:?}");
    // Nor in the working copies: index-pack's temp packs.
    let mut stray = Vec::new();
    for w in 0..workers {
        let pack_dir = env.path(&format!("w{w}")).join(".git/objects/pack");
        for e in std::fs::read_dir(&pack_dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("tmp_") || name.starts_with(".tmp") {
                stray.push(format!("{}/{name}", pack_dir.display()));
            }
        }
    }
    assert!(stray.is_empty(), "temp files left in working copies: {stray:?}");
    assert!(peak < 1 << 30, "peak RSS {} MiB", peak >> 20);
    assert!(ops >= workers as u64, "fewer operations than workers");
}

/// The `attempt=N` of the `manifest updated` event a verbose push prints
/// (0 for the first attempt).
fn attempts_of(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .filter(|l| l.contains("manifest updated"))
        .find_map(|l| l.split_whitespace().find_map(|f| f.strip_prefix("attempt=")).and_then(|v| v.parse::<u64>().ok()).map(|a| a + 1))
}

/// `n` working copies of `url` (local clones of `seed`, origin set to `url`).
fn copies(env: &TestEnv, seed: &Path, url: &str, n: usize, prefix: &str) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = env.path(&format!("{prefix}{i}"));
            env.git(&env.work(), &["clone", "-q", seed.to_str().unwrap(), p.to_str().unwrap()]);
            env.git(&p, &["remote", "set-url", "origin", url]);
            env.git(&p, &["fetch", "-q", "origin"]);
            p
        })
        .collect()
}

#[test]
fn thirty_two_pushers_to_distinct_branches_of_one_packs_remote_all_land() {
    let _one = serial();
    let n = 32;
    let env = TestEnv::new();
    let url = env.url("distinct");
    env.git_s3(&env.work(), &["init", "--format", "packs", &url]);
    let seed = env.new_repo("seed");
    env.git(&seed, &["push", "-q", &url, "main"]);
    let clones = copies(&env, &seed, &url, n, "c");
    let mut shas = Vec::new();
    for (i, p) in clones.iter().enumerate() {
        env.git(p, &["checkout", "-q", "-b", &format!("b{i}")]);
        shas.push(env.commit(p, &format!("f{i}.txt"), &format!("{i}\n"), &format!("work {i}")));
    }
    let children: Vec<_> = clones
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut c = env.command("git", p);
            c.args(["push", "origin", &format!("b{i}")]).env("GIT_REMOTE_S3_VERBOSE", "1").stdout(Stdio::piped()).stderr(Stdio::piped());
            c.spawn().expect("spawn git push")
        })
        .collect();
    let mut attempts = Vec::new();
    for (i, ch) in children.into_iter().enumerate() {
        let out = ch.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "pusher {i} of a distinct branch failed:\n{err}");
        attempts.push(attempts_of(&err).unwrap_or_else(|| panic!("pusher {i}: no `manifest updated` event:\n{err}")));
    }
    attempts.sort();
    let total: u64 = attempts.iter().sum();
    eprintln!(
        "load: {n} pushers to distinct branches: all landed; attempts min {} median {} max {} total {total} (one manifest write each, so {} lost races)",
        attempts[0],
        attempts[n / 2],
        attempts[n - 1],
        total - n as u64
    );
    let fresh = env.path("fresh");
    env.git(&env.work(), &["clone", "-q", &url, fresh.to_str().unwrap()]);
    env.git(&fresh, &["fsck", "--strict", "--no-progress"]);
    let refs = env.git(&fresh, &["for-each-ref", "--format=%(objectname) %(refname)", "refs/remotes/origin/"]);
    for (i, sha) in shas.iter().enumerate() {
        assert!(refs.contains(&format!("{sha} refs/remotes/origin/b{i}")), "b{i} ({sha}) is not in a fresh clone:\n{refs}");
    }
}

/// `GIT_S3_LOAD_ROUNDS` rounds: every pusher has a new commit on the
/// remote's current `main`; all push at once; exactly one lands, the others
/// get git's `fetch first`.
fn one_branch_rounds(format: &str) {
    let rounds = env_u64("GIT_S3_LOAD_ROUNDS", 3);
    let n = 8;
    let env = TestEnv::new();
    // A bundles push waits for the ref's lock (10 s by default): under this
    // load the wait may be longer; the loser must then see the new tip.
    env.set_env("GIT_REMOTE_S3_LOCK_WAIT_SECONDS", "300");
    let url = env.url(&format!("one-{format}"));
    env.git_s3(&env.work(), &["init", "--format", format, &url]);
    let seed = env.new_repo("seed");
    env.git(&seed, &["push", "-q", &url, "main"]);
    let clones = copies(&env, &seed, &url, n, "p");
    let mut winners = Vec::new();
    for round in 0..rounds {
        let mut mine = Vec::new();
        for (i, p) in clones.iter().enumerate() {
            env.git(p, &["fetch", "-q", "origin"]);
            env.git(p, &["reset", "-q", "--hard", "origin/main"]);
            mine.push(env.commit(p, &format!("r{round}-p{i}.txt"), "x\n", &format!("round {round} pusher {i}")));
        }
        let children: Vec<_> = clones
            .iter()
            .map(|p| {
                let mut c = env.command("git", p);
                c.args(["push", "origin", "main"]).stdout(Stdio::piped()).stderr(Stdio::piped());
                c.spawn().expect("spawn git push")
            })
            .collect();
        let mut won = Vec::new();
        for (i, ch) in children.into_iter().enumerate() {
            let out = ch.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            if out.status.success() {
                won.push(i);
            } else {
                assert!(err.contains("fetch first"), "{format} round {round}: loser {i} did not get `fetch first`:\n{err}");
                assert_clear_failure(&format!("{format} round {round} pusher {i}"), &err);
            }
        }
        assert_eq!(won.len(), 1, "{format} round {round}: exactly one winner, got {won:?}");
        let tip = env.git(&env.work(), &["ls-remote", &url, "refs/heads/main"]);
        assert!(tip.starts_with(&mine[won[0]]), "{format} round {round}: the remote's main is not the winner's {}: {tip}", mine[won[0]]);
        winners.push(mine[won[0]].clone());
    }
    let fresh = env.path("fresh");
    env.git(&env.work(), &["clone", "-q", &url, fresh.to_str().unwrap()]);
    env.git(&fresh, &["fsck", "--strict", "--no-progress"]);
    let log = env.git(&fresh, &["log", "--format=%H"]);
    for w in &winners {
        assert!(log.contains(w.as_str()), "{format}: a winner's commit {w} is lost:\n{log}");
    }
    eprintln!("load: {n} pushers to one branch ({format}): {rounds} rounds, one winner and {} `fetch first` each", n - 1);
}

#[test]
fn eight_pushers_to_one_branch_one_winner_per_round_packs() {
    let _one = serial();
    one_branch_rounds("packs");
}

#[test]
fn eight_pushers_to_one_branch_one_winner_per_round_bundles() {
    let _one = serial();
    one_branch_rounds("bundles");
}
