//! The crash loop (issue 12): seeded trials that SIGKILL the daemon and/or
//! the shim at a random moment of a push (bundles, packs, one over the
//! 64 MiB multipart threshold now and then), a `git s3 gc` (full,
//! geometric), a `git s3 migrate` (both ways) or an LFS upload, then check
//! what the crash left:
//!
//! - every ref is at its old or its new value, and a push git reported as
//!   done is there;
//! - a fresh clone passes `git fsck --strict` (and `git lfs fsck`); every LFS
//!   object in the bucket holds the bytes its oid names;
//! - no lock is left unless the killed daemon held it, and that one is taken
//!   over once its TTL (2 s here) has passed, by the next push or migration;
//! - `git s3 doctor` repairs what it reports (the repairs it names are run:
//!   `git s3 gc` for unreferenced packs, the migration again for a half-done
//!   one) and then reports clean.
//!
//! `GIT_S3_CRASH_TRIALS` trials (default 20), seeds `GIT_S3_CRASH_SEED`
//! (default: from the clock, printed) onwards. The seed picks the operation,
//! what is killed and when: a fraction (0–110 %) of the operation's duration,
//! measured unkilled once per kind in the same process. A failure names the
//! seed and the delay: `GIT_S3_CRASH_SEED=<seed> GIT_S3_CRASH_TRIALS=1
//! GIT_S3_CRASH_DELAY_MS=<ms>` replays it. `GIT_S3_CRASH_KEEP_GOING=1` runs
//! every trial after a failure too (long runs count them all).
//! `GIT_S3_CRASH_WORKERS` trials run at once (default 3), each worker with
//! its own environment (daemon, cache, bucket).
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)] // libc calls on test processes

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use testkit::require_test_hooks;
use testkit::TestEnv;

/// The lock TTL of every command in the trials (seconds).
const TTL: u64 = 2;
const MIB: usize = 1 << 20;

/// splitmix64: the trial's randomness, all of it from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Format {
    Bundles,
    Packs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Op {
    Push(Format),
    /// A push of one object over the multipart threshold.
    BigPush(Format),
    GcFull,
    GcGeometric,
    MigrateToPacks,
    MigrateToBundles,
    Lfs(Format),
}

impl Op {
    /// The operation of a seed: one in 20 seeds is a big push, the others
    /// cycle through the rest.
    fn of(seed: u64) -> Op {
        if seed % 20 == 7 {
            return Op::BigPush(if (seed / 20).is_multiple_of(2) { Format::Bundles } else { Format::Packs });
        }
        match seed % 8 {
            0 => Op::Push(Format::Bundles),
            1 => Op::Push(Format::Packs),
            2 => Op::GcFull,
            3 => Op::GcGeometric,
            4 => Op::MigrateToPacks,
            5 => Op::MigrateToBundles,
            6 => Op::Lfs(Format::Bundles),
            _ => Op::Lfs(Format::Packs),
        }
    }
    fn name(self) -> String {
        match self {
            Op::Push(f) => format!("push ({f:?})").to_lowercase(),
            Op::BigPush(f) => format!("push of 66 MiB, multipart ({f:?})").to_lowercase(),
            Op::GcFull => "gc, full".into(),
            Op::GcGeometric => "gc --geometric".into(),
            Op::MigrateToPacks => "migrate --to packs".into(),
            Op::MigrateToBundles => "migrate --to bundles".into(),
            Op::Lfs(f) => format!("LFS upload + push ({f:?})").replace("Bundles", "bundles").replace("Packs", "packs"),
        }
    }
    fn is_push(self) -> bool {
        matches!(self, Op::Push(_) | Op::BigPush(_) | Op::Lfs(_))
    }
    fn is_migrate(self) -> bool {
        matches!(self, Op::MigrateToPacks | Op::MigrateToBundles)
    }
    /// The process that counts as the shim of the operation.
    fn shim(self) -> &'static str {
        match self {
            Op::GcFull | Op::GcGeometric | Op::MigrateToPacks | Op::MigrateToBundles => "git-s3",
            _ => "git-remote-s3",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Daemon,
    Shim,
    Both,
}

/// Pseudo-random (incompressible) bytes.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

fn commit_blob(env: &TestEnv, repo: &Path, file: &str, len: usize, seed: u64) -> String {
    std::fs::write(repo.join(file), random_bytes(len, seed)).unwrap();
    env.git(repo, &["add", file]);
    env.git(repo, &["commit", "-q", "-m", file]);
    env.git(repo, &["rev-parse", "HEAD"]).trim().to_string()
}

/// A trial set up: the command to kill and what the remote must hold.
struct Prepared {
    url: String,
    prefix: String,
    repo: PathBuf,
    cmd: Command,
    /// What pushes name: the URL, or `origin` for LFS (git-lfs needs a remote).
    remote: String,
    before: BTreeMap<String, String>,
    /// The refs once the operation is done.
    after: BTreeMap<String, String>,
    /// Refs whose lock the operation takes.
    locked: BTreeSet<String>,
}

/// A worker's environment (its own daemon, cache and bucket), used by one
/// trial after another, each under a prefix of its own.
fn new_env() -> TestEnv {
    let env = TestEnv::new();
    env.set_env("GIT_REMOTE_S3_LOCK_TTL_SECONDS", &TTL.to_string());
    env.git(&env.home(), &["lfs", "install", "--skip-repo"]);
    env
}

fn init(env: &TestEnv, url: &str, f: Format) {
    if f == Format::Packs {
        env.git_s3(&env.work(), &["init", "--format", "packs", url]);
    }
}

fn refs(env: &TestEnv, url: &str) -> Result<BTreeMap<String, String>, String> {
    let mut c = env.command("git", &env.work());
    c.args(["ls-remote", url]);
    let out = c.output().expect("spawn ls-remote");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, r)| r.starts_with("refs/"))
        .map(|(s, r)| (r.to_string(), s.to_string()))
        .collect())
}

fn prepare(env: &TestEnv, op: Op, seed: u64, prefix: &str) -> Prepared {
    let prefix = prefix.to_string();
    let url = env.url(&prefix);
    let repo = env.new_repo(&prefix);
    let mut locked = BTreeSet::new();
    let mut cmd;
    match op {
        Op::Push(f) | Op::BigPush(f) | Op::Lfs(f) => {
            init(env, &url, f);
            if let Op::Lfs(_) = op {
                env.git(&repo, &["lfs", "track", "*.bin"]);
                env.git(&repo, &["add", ".gitattributes"]);
                env.git(&repo, &["commit", "-q", "-m", "track"]);
                env.git(&repo, &["remote", "add", "origin", &url]);
                let out = env.command("git-lfs-s3", &repo).arg("install").output().unwrap();
                assert!(out.status.success(), "git-lfs-s3 install: {}", String::from_utf8_lossy(&out.stderr));
            }
            env.git(&repo, &["branch", "stable"]);
            let to = if matches!(op, Op::Lfs(_)) { "origin".to_string() } else { url.clone() };
            env.git(&repo, &["push", "-q", &to, "main", "stable"]);
            match op {
                Op::Push(_) => {
                    commit_blob(env, &repo, "a.bin", 2 * MIB, seed);
                    commit_blob(env, &repo, "b.bin", MIB / 2, seed + 1);
                }
                Op::BigPush(_) => {
                    commit_blob(env, &repo, "big.bin", 66 * MIB, seed);
                }
                _ => {
                    for (i, f) in ["x.bin", "y.bin", "z.bin"].iter().enumerate() {
                        commit_blob(env, &repo, f, MIB / 2, seed + i as u64);
                    }
                }
            }
            env.git(&repo, &["branch", "topic"]);
            cmd = env.command("git", &repo);
            if let Op::Lfs(_) = op {
                cmd.args(["push", "origin", "main", "topic"]);
            } else {
                cmd.args(["push", &url, "main", "topic"]);
            }
            if f == Format::Bundles {
                locked.extend(["refs/heads/main".to_string(), "refs/heads/topic".to_string()]);
            }
        }
        Op::GcFull | Op::GcGeometric => {
            init(env, &url, Format::Packs);
            env.git(&repo, &["push", "-q", &url, "main"]);
            // Packs of 1, 0.5, 0.5 and 0.25 MiB: not a geometric progression.
            for (i, len) in [MIB, MIB / 2, MIB / 2, MIB / 4].iter().enumerate() {
                commit_blob(env, &repo, &format!("g{i}.bin"), *len, seed + i as u64);
                let b = format!("HEAD:refs/heads/b{i}");
                env.git(&repo, &["push", "-q", &url, "main", &b]);
            }
            cmd = env.command("git-s3", &env.work());
            cmd.arg("gc");
            if op == Op::GcGeometric {
                cmd.arg("--geometric");
            }
            cmd.arg(&url);
        }
        Op::MigrateToPacks | Op::MigrateToBundles => {
            let (from, to) = if op == Op::MigrateToPacks { (Format::Bundles, "packs") } else { (Format::Packs, "bundles") };
            init(env, &url, from);
            for (i, len) in [MIB, MIB / 2, MIB / 2].iter().enumerate() {
                commit_blob(env, &repo, &format!("m{i}.bin"), *len, seed + i as u64);
                let b = format!("HEAD:refs/heads/b{i}");
                env.git(&repo, &["push", "-q", &url, &b]);
            }
            env.git(&repo, &["push", "-q", &url, "main"]);
            cmd = env.command("git-s3", &env.work());
            cmd.args(["migrate", "--to", to, &url]);
            locked.extend(["refs/heads/main", "refs/heads/b0", "refs/heads/b1", "refs/heads/b2"].map(String::from));
        }
    }
    let before = refs(env, &url).expect("ls-remote before the operation");
    let mut after = before.clone();
    if op.is_push() {
        let head = env.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
        after.insert("refs/heads/main".into(), head.clone());
        after.insert("refs/heads/topic".into(), head);
    }
    let remote = if matches!(op, Op::Lfs(_)) { "origin".to_string() } else { url.clone() };
    Prepared { url, prefix, repo, cmd, remote, before, after, locked }
}

fn daemon_status(env: &TestEnv) -> serde_json::Value {
    for i in 0.. {
        let mut c = env.command("git-s3", &env.work());
        c.args(["daemon", "status", "--json"]);
        let o = c.output().unwrap();
        if o.status.success() {
            return serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).expect("daemon status --json");
        }
        let ps = Command::new("ps").args(["-eo", "pid,ppid,stat,etimes,args"]).output().unwrap();
        let ps: String = String::from_utf8_lossy(&ps.stdout)
            .lines()
            .filter(|l| l.contains(&*env.dir.path().to_string_lossy()) || l.contains("git"))
            .collect::<Vec<_>>()
            .join("\n");
        eprintln!("crash loop: daemon status failed (try {i}), processes:\n{}\n{ps}", String::from_utf8_lossy(&o.stderr));
        assert!(i < 20, "daemon status keeps failing");
        std::thread::sleep(Duration::from_millis(200));
    }
    unreachable!()
}

fn daemon_pid(env: &TestEnv) -> u32 {
    let v = daemon_status(env);
    v["pid"].as_u64().map(|p| p as u32).expect("a running daemon")
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()), Some('Z') | Some('X')),
        Err(_) => false,
    }
}

/// `(pid, ppid, comm)` of every process.
fn processes() -> Vec<(u32, u32, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = stat[open + 1..close].to_string();
        let ppid = stat[close + 1..].split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        v.push((pid, ppid, comm));
    }
    v
}

/// The live descendants of `root` (and `root` itself) named `comm`.
fn find_in_tree(root: u32, comm: &str) -> Vec<u32> {
    let ps = processes();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(ps.iter().filter(|(_, pp, _)| *pp == p).map(|(c, _, _)| *c));
        i += 1;
    }
    tree.into_iter().filter(|p| ps.iter().any(|(q, _, c)| q == p && c == comm) && alive(*p)).collect()
}

fn sigkill(pid: u32) {
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

/// Measured durations of each operation, unkilled (once per kind and process).
fn durations() -> &'static Mutex<HashMap<Op, Duration>> {
    static D: OnceLock<Mutex<HashMap<Op, Duration>>> = OnceLock::new();
    D.get_or_init(Default::default)
}

fn duration_of(env: &TestEnv, op: Op) -> Duration {
    if let Some(d) = durations().lock().unwrap().get(&op) {
        return *d;
    }
    // An unkilled run on a prefix of its own.
    let seed = 1_000_000 + op_index(op);
    let mut p = prepare(env, op, seed, &format!("calibrate{seed}"));
    let start = Instant::now();
    let out = p.cmd.output().unwrap();
    let d = start.elapsed();
    assert!(out.status.success(), "{} (unkilled, to measure it) failed: {}", op.name(), String::from_utf8_lossy(&out.stderr));
    assert_eq!(refs(env, &p.url).unwrap(), p.after, "{} (unkilled): refs", op.name());
    eprintln!("crash loop: {} takes {:.2} s unkilled", op.name(), d.as_secs_f64());
    *durations().lock().unwrap().entry(op).or_insert(d)
}

fn op_index(op: Op) -> u64 {
    (0..40).find(|s| Op::of(*s) == op).unwrap_or(0)
}

/// What one trial did, for the figures.
#[derive(Debug, Clone)]
struct Outcome {
    seed: u64,
    op: Op,
    target: Target,
    /// What was killed: "daemon", "shim", "daemon+shim", or "nothing" (the
    /// operation finished first; the shim had not started or had exited).
    killed: String,
    delay_ms: u64,
    reported_done: bool,
    /// Per operation: "old", "new", "mixed" (refs of a push, some old some new).
    state: String,
    locks_left: usize,
    doctor_issues: Vec<String>,
    refused_until_rerun: bool,
    /// Stale locks of a migration to packs, left for doctor to delete.
    locks_for_doctor: usize,
}

fn trial(env: &TestEnv, seed: u64) -> Outcome {
    let op = Op::of(seed);
    let mut rng = Rng(seed ^ 0xC0FF_EE00_D15E_A5E5);
    let target = match rng.below(3) {
        0 => Target::Daemon,
        1 => Target::Shim,
        _ => Target::Both,
    };
    let frac = rng.unit() * 1.1;
    let est = duration_of(env, op);
    let t0 = Instant::now();
    let p = prepare(env, op, seed, &format!("crash{seed}"));
    let setup = t0.elapsed();
    let Prepared { url, prefix, repo, mut cmd, before, after, locked, remote } = p;

    // GIT_S3_CRASH_DELAY_MS replays a failed trial's exact moment (the
    // measured duration differs from run to run).
    let delay = std::env::var("GIT_S3_CRASH_DELAY_MS").ok().and_then(|v| v.parse().ok()).map(Duration::from_millis).unwrap_or(est.mul_f64(frac));
    let ctx = format!(
        "seed {seed} ({}, kill {target:?} at {:.0}% of {:.2} s: GIT_S3_CRASH_DELAY_MS={})",
        op.name(),
        frac * 100.0,
        est.as_secs_f64(),
        delay.as_millis()
    );
    eprintln!("crash loop: {ctx}");
    let dpid = daemon_pid(env);
    let log = env.dir.path().join(format!("op{seed}.log"));
    let f = std::fs::File::create(&log).unwrap();
    cmd.stdout(f.try_clone().unwrap()).stderr(f);
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let mut finished = None;
    while start.elapsed() < delay {
        if let Some(s) = child.try_wait().unwrap() {
            finished = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut killed = Vec::new();
    if finished.is_none() {
        if matches!(target, Target::Shim | Target::Both) {
            let shims = find_in_tree(child.id(), op.shim());
            // LFS: the transfer agent too (git-lfs's child) when it runs.
            let agents = if matches!(op, Op::Lfs(_)) { find_in_tree(child.id(), "git-lfs-s3") } else { vec![] };
            for pid in shims.iter().chain(&agents) {
                sigkill(*pid);
            }
            if !agents.is_empty() {
                killed.push("agent");
            } else if !shims.is_empty() {
                killed.push("shim");
            }
        }
        if matches!(target, Target::Daemon | Target::Both) && alive(dpid) {
            sigkill(dpid);
            killed.push("daemon");
        }
    }
    let killed = if killed.is_empty() { "nothing".to_string() } else { killed.join("+") };
    if killed.contains("daemon") {
        // The kernel has torn it down (its socket refuses connections).
        while alive(dpid) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let kill_time = Instant::now();
    // git (or git s3) must end: a hang is a failure.
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if kill_time.elapsed() > Duration::from_secs(300) {
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!("{ctx}: the command still runs 300 s after the kill\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let reported_done = status.success();
    let daemon_killed = killed.contains("daemon");
    if !reported_done {
        assert!(killed != "nothing", "{ctx}: failed without a kill:\n{output}");
    }
    // Whatever the daemon still does for a killed shim ends; then it stops
    // (waiting for its background work).
    quiesce(env, &ctx);
    phase(&ctx, "quiesce", t0);

    let mut out = Outcome {
        seed,
        op,
        target,
        killed: killed.clone(),
        delay_ms: delay.as_millis() as u64,
        reported_done,
        state: String::new(),
        locks_left: 0,
        doctor_issues: Vec::new(),
        refused_until_rerun: false,
        locks_for_doctor: 0,
    };

    // Refs: old or new value each; all new when git said done.
    let now = refs(env, &url).unwrap_or_else(|e| panic!("{ctx}: ls-remote fails after the kill:\n{e}\nop output:\n{output}"));
    out.state = ref_state(&ctx, &before, &after, &now);
    if reported_done {
        assert_eq!(now, after, "{ctx}: git reported the push done:\n{output}");
    }
    // A fresh clone of the state the crash left.
    fresh_clone(env, &url, &ctx, "after the kill", op);
    phase(&ctx, "clone1", t0);
    // What doctor sees in the state the crash left (repairs come later).
    out.doctor_issues = kinds(&doctor(env, &url, &ctx, false));
    if op.is_migrate() {
        out.state = migrate_state(env, &prefix, op).to_string();
    }
    // A push into a half-migrated prefix is refused with one line naming the fix.
    if op.is_migrate() && !reported_done && both_formats(env, &prefix) {
        let mut c = env.command("git", &repo);
        c.args(["push", "-q", &url, "main:refs/heads/during"]);
        let o = c.output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{ctx}: a push into a prefix holding both formats succeeded");
        assert!(e.contains("git s3 migrate") || e.contains("being migrated"), "{ctx}: the refusal names the fix:\n{e}");
        out.refused_until_rerun = true;
    }

    // Locks: only those of a killed daemon, of refs the operation locks.
    let locks = locks_now(env, &prefix);
    out.locks_left = locks.len();
    for l in &locks {
        assert!(daemon_killed, "{ctx}: lock {l} left behind by a daemon that was not killed\n{output}");
        assert!(locked.contains(l), "{ctx}: lock of {l}, which the operation does not lock");
    }
    if !locks.is_empty() {
        // Taken over once the TTL has passed.
        let wait = Duration::from_secs(TTL + 1).saturating_sub(kill_time.elapsed());
        std::thread::sleep(wait);
    }

    // The next push / the migration run again must work (taking over any
    // stale lock), and leaves no lock.
    if op.is_push() {
        let next = commit_small(env, &repo, seed);
        let mut c = env.command("git", &repo);
        // Both refs move, so both locks the killed push held are taken over.
        c.args(["push", "-q", &remote, "main", "main:refs/heads/topic"]);
        let o = c.output().unwrap();
        assert!(o.status.success(), "{ctx}: the next push fails:\n{}", String::from_utf8_lossy(&o.stderr));
        let r = refs(env, &url).unwrap();
        assert_eq!(r.get("refs/heads/main"), Some(&next), "{ctx}: the next push");
        assert_eq!(r.get("refs/heads/topic"), Some(&next), "{ctx}: the next push");
    } else if op.is_migrate() && migrate_state(env, &prefix, op) != "new format" {
        let to = if op == Op::MigrateToPacks { "packs" } else { "bundles" };
        let mut c = env.command("git-s3", &env.work());
        c.args(["migrate", "--to", to, &url]);
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() || err.contains(&format!("already in the {to} format")), "{ctx}: the migration run again fails:\n{err}");
        assert_eq!(refs(env, &url).as_ref(), Ok(&before), "{ctx}: refs after the migration was run again");
    }
    if op.is_migrate() {
        // Nothing of the old format is left behind.
        let keys = env.keys(&format!("{prefix}/"));
        let old: Vec<&String> = if op == Op::MigrateToBundles {
            keys.iter().filter(|k| k.contains("/.git-s3/")).collect()
        } else {
            keys.iter().filter(|k| k.ends_with(".bundle") || **k == format!("{prefix}/HEAD")).collect()
        };
        assert!(old.is_empty(), "{ctx}: the migration is done, yet the old format's objects are left: {old:?}");
    }
    if op.is_migrate() {
        // The next push to every ref: in the bundles format it takes over
        // the locks a killed migration left (a packs push takes none: those
        // are doctor's to report and delete, below).
        let next = commit_small(env, &repo, seed);
        let mut c = env.command("git", &repo);
        c.args(["push", "-q", &url, "main"]);
        c.args(["b0", "b1", "b2"].map(|b| format!("main:refs/heads/{b}")));
        let o = c.output().unwrap();
        assert!(o.status.success(), "{ctx}: the next push fails:\n{}", String::from_utf8_lossy(&o.stderr));
        let r = refs(env, &url).unwrap();
        assert!(r.values().all(|v| *v == next) && r.len() == 4, "{ctx}: the next push: {r:?}");
    }
    let left = locks_now(env, &prefix);
    phase(&ctx, "followup", t0);
    if op != Op::MigrateToPacks {
        assert!(left.is_empty(), "{ctx}: locks after the next push: {left:?}");
    } else {
        out.locks_for_doctor = left.len();
    }

    // doctor: repairs, then reports clean.
    let repaired = doctor_repairs_then_clean(env, &url, &ctx, op);
    assert_eq!(repaired.iter().filter(|k| *k == "stale_lock").count(), out.locks_for_doctor, "{ctx}: doctor reports the stale locks left");
    phase(&ctx, "doctor", t0);
    for k in repaired {
        if !out.doctor_issues.contains(&k) {
            out.doctor_issues.push(k);
        }
    }
    if !out.doctor_issues.is_empty() || op.is_migrate() {
        fresh_clone(env, &url, &ctx, "after doctor's repairs", op);
    }
    phase(&ctx, "clone2", t0);
    if matches!(op, Op::Lfs(_)) {
        lfs_objects_whole(env, &prefix, &ctx);
    }
    eprintln!("crash loop: seed {seed} done: setup {:.1} s, operation and checks {:.1} s", setup.as_secs_f64(), (t0.elapsed() - setup).as_secs_f64());
    out
}

fn phase(ctx: &str, name: &str, t0: Instant) {
    if std::env::var_os("GIT_S3_CRASH_VERBOSE").is_some() {
        eprintln!("crash loop: {ctx}: {name} at {:.1} s", t0.elapsed().as_secs_f64());
    }
}

fn commit_small(env: &TestEnv, repo: &Path, seed: u64) -> String {
    env.commit(repo, "next.txt", &format!("after trial {seed}\n"), "next")
}

/// Where a migration stands: "old format", "new format" (nothing of the
/// old one left), "both formats", or "old objects left" (the new format
/// complete, some of the old format's objects still there).
fn migrate_state(env: &TestEnv, prefix: &str, op: Op) -> &'static str {
    let keys = env.keys(&format!("{prefix}/"));
    let manifest = keys.iter().any(|k| k.ends_with("/.git-s3/manifest.json"));
    let packs = keys.iter().any(|k| k.contains("/.git-s3/packs/"));
    let bundles = keys.iter().any(|k| k.ends_with(".bundle"));
    let head = keys.iter().any(|k| *k == format!("{prefix}/HEAD"));
    match (manifest, bundles, op) {
        (true, true, _) => "both formats",
        (true, false, Op::MigrateToPacks) if head => "old objects left",
        (false, true, Op::MigrateToBundles) if packs => "old objects left",
        (true, false, Op::MigrateToPacks) | (false, true, Op::MigrateToBundles) => "new format",
        _ => "old format",
    }
}

/// Whether the prefix holds a manifest and bundles.
fn both_formats(env: &TestEnv, prefix: &str) -> bool {
    let keys = env.keys(&format!("{prefix}/"));
    keys.iter().any(|k| k.ends_with("/.git-s3/manifest.json")) && keys.iter().any(|k| k.ends_with(".bundle"))
}

fn ref_state(ctx: &str, before: &BTreeMap<String, String>, after: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> String {
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).chain(now.keys()).collect();
    let (mut old, mut new) = (0, 0);
    for n in names {
        let (b, a, x) = (before.get(n), after.get(n), now.get(n));
        assert!(x == b || x == a, "{ctx}: {n} is {x:?}, neither its old value {b:?} nor its new one {a:?}");
        if a != b {
            if x == a {
                new += 1;
            } else {
                old += 1;
            }
        }
    }
    match (old, new) {
        (_, 0) => "old".into(),
        (0, _) => "new".into(),
        _ => "mixed".into(),
    }
}

/// Waits until the daemon (if one runs) has no session, then stops it.
fn quiesce(env: &TestEnv, ctx: &str) {
    let start = Instant::now();
    loop {
        let v = daemon_status(env);
        if v["running"] != serde_json::Value::Bool(true) {
            return;
        }
        if v["active_sessions"].as_u64() == Some(0) {
            let mut c = env.command("git-s3", &env.work());
            c.args(["daemon", "stop"]);
            let o = c.output().unwrap();
            assert!(o.status.success(), "{ctx}: daemon stop: {}", String::from_utf8_lossy(&o.stderr));
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "{ctx}: the daemon still has a session 300 s after the kill");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Refs with a lock in the bucket (their `LOCK#.lock` keys).
fn locks_now(env: &TestEnv, prefix: &str) -> Vec<String> {
    env.keys(&format!("{prefix}/"))
        .iter()
        .filter_map(|k| k.strip_suffix("/LOCK#.lock"))
        .map(|k| k.trim_start_matches(&format!("{prefix}/")).to_string())
        .collect()
}

fn fresh_clone(env: &TestEnv, url: &str, ctx: &str, when: &str, op: Op) {
    let dest = env.path(&format!("clone-{}", rand_suffix()));
    let mut c = env.command("git", &env.work());
    c.args(["clone", "-q", url]).arg(&dest);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{ctx}: a fresh clone {when} fails:\n{}", String::from_utf8_lossy(&o.stderr));
    let mut c = env.command("git", &dest);
    c.args(["fsck", "--strict", "--no-progress"]);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{ctx}: fsck --strict of a clone {when}:\n{}", String::from_utf8_lossy(&o.stderr));
    if matches!(op, Op::Lfs(_)) {
        let mut c = env.command("git", &dest);
        c.args(["lfs", "fsck"]);
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{ctx}: git lfs fsck of a clone {when}:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dest);
}

fn rand_suffix() -> u128 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst) as u128
}

/// Every object under `<prefix>/lfs/` holds the bytes its oid names.
fn lfs_objects_whole(env: &TestEnv, prefix: &str, ctx: &str) {
    for k in env.keys(&format!("{prefix}/lfs/")) {
        let Some(oid) = k.rsplit('/').next() else { continue };
        if oid.len() != 64 {
            continue;
        }
        let data = env.get_object(&k);
        let mut c = Command::new("sha256sum");
        c.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut ch = c.spawn().unwrap();
        use std::io::Write;
        ch.stdin.take().unwrap().write_all(&data).unwrap();
        let o = ch.wait_with_output().unwrap();
        let sum = String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or("").to_string();
        assert_eq!(sum, oid, "{ctx}: LFS object {k} does not hold its oid's bytes ({} bytes)", data.len());
    }
}

fn doctor(env: &TestEnv, url: &str, ctx: &str, repair: bool) -> serde_json::Value {
    let mut c = env.command("git-s3", &env.work());
    c.args(["doctor", "--json", url]);
    if repair {
        // --abort-uploads: a push killed during a multipart upload leaves
        // one (moto reports every upload as started in 2010, so doctor
        // counts even a fresh one as abandoned).
        c.args(["--yes", "--delete-stale-locks", "--abort-uploads"]);
    }
    let o = c.output().unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("{ctx}: doctor --json: {e}\nstdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    })
}

fn kinds(doc: &serde_json::Value) -> Vec<String> {
    doc["issues"].as_array().map(|a| a.iter().filter_map(|i| i["kind"].as_str().map(String::from)).collect()).unwrap_or_default()
}

/// Runs doctor with its repairs, and the ones it names (`git s3 gc` for
/// unreferenced or expired packs); then doctor must report nothing.
fn doctor_repairs_then_clean(env: &TestEnv, url: &str, ctx: &str, _op: Op) -> Vec<String> {
    let first = doctor(env, url, ctx, true);
    let found = kinds(&first);
    if found.iter().any(|k| k == "unreferenced_packs" || k == "retired_packs_expired" || k == "many_packs") {
        let mut c = env.command("git-s3", &env.work());
        c.args(["gc", "--grace-seconds", "0", url]);
        let o = c.output().unwrap();
        assert!(o.status.success(), "{ctx}: git s3 gc (doctor's repair): {}", String::from_utf8_lossy(&o.stderr));
    }
    let second = doctor(env, url, ctx, false);
    assert!(kinds(&second).is_empty(), "{ctx}: doctor still reports after its repairs (first run: {found:?}):\n{second:#}");
    assert!(second["errors"].as_array().is_none_or(|a| a.is_empty()), "{ctx}: doctor reports errors after its repairs:\n{second:#}");
    found
}

fn trials_from_env() -> (u64, u64) {
    let n = std::env::var("GIT_S3_CRASH_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed = std::env::var("GIT_S3_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() % 1_000_000 * 1000).unwrap_or(0));
    (seed, n)
}

#[test]
fn crash_loop() {
    let (first, n) = trials_from_env();
    let workers = std::env::var("GIT_S3_CRASH_WORKERS").ok().and_then(|v| v.parse().ok()).unwrap_or(3u64).max(1);
    eprintln!("crash loop: {n} trials, seeds {first}..{} (replay one: GIT_S3_CRASH_SEED=<seed> GIT_S3_CRASH_TRIALS=1)", first + n);
    // Long runs go on after a failure (GIT_S3_CRASH_KEEP_GOING=1) to count them all.
    let keep_going = std::env::var_os("GIT_S3_CRASH_KEEP_GOING").is_some();
    let next = Arc::new(Mutex::new(first));
    let results: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let failures: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (next, results, failures) = (next.clone(), results.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut env = new_env();
                loop {
                    let seed = {
                        let mut s = next.lock().unwrap();
                        if *s >= first + n || (!keep_going && !failures.lock().unwrap().is_empty()) {
                            return;
                        }
                        *s += 1;
                        *s - 1
                    };
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| trial(&env, seed))) {
                        Ok(o) => results.lock().unwrap().push(o),
                        Err(e) => {
                            let msg =
                                e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                            eprintln!("crash loop: seed {seed} FAILED: {msg}");
                            failures.lock().unwrap().push((seed, msg));
                            // A fresh environment for the next trial.
                            env = new_env();
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let results = results.lock().unwrap().clone();
    summary(&results);
    let failures = failures.lock().unwrap();
    if failures.len() > 1 {
        eprintln!("crash loop: {} trials failed, seeds {:?}", failures.len(), failures.iter().map(|f| f.0).collect::<Vec<_>>());
    }
    if let Some((seed, msg)) = failures.first() {
        panic!("crash loop: trial with seed {seed} failed (replay: GIT_S3_CRASH_SEED={seed} GIT_S3_CRASH_TRIALS=1):\n{msg}");
    }
    assert_eq!(results.len() as u64, n, "every trial ran");
}

fn summary(results: &[Outcome]) {
    let mut by: BTreeMap<String, Vec<&Outcome>> = BTreeMap::new();
    for o in results {
        by.entry(o.op.name()).or_default().push(o);
    }
    eprintln!("crash loop summary: {} trials", results.len());
    eprintln!("| operation | trials | killed: daemon / shim / both / nothing | git reported done | state after: old / new / mixed (migrate: old / new format / half-done) | push refused until rerun | locks left (taken over) | doctor found |");
    for (name, os) in &by {
        let c = |f: &dyn Fn(&Outcome) -> bool| os.iter().filter(|o| f(o)).count();
        let mut issues: BTreeMap<&str, usize> = BTreeMap::new();
        for o in os {
            for i in &o.doctor_issues {
                *issues.entry(i.as_str()).or_default() += 1;
            }
        }
        eprintln!(
            "| {name} | {} | {} / {} / {} / {} | {} | {} / {} / {} | {} | {} | {:?} |",
            os.len(),
            c(&|o| o.killed == "daemon"),
            c(&|o| o.killed == "shim" || o.killed == "agent"),
            c(&|o| o.killed.contains('+')),
            c(&|o| o.killed == "nothing"),
            c(&|o| o.reported_done),
            c(&|o| o.state.starts_with("old")),
            c(&|o| o.state.starts_with("new")),
            c(&|o| o.state == "mixed" || o.state == "both formats" || o.state == "old objects left"),
            c(&|o| o.refused_until_rerun),
            os.iter().map(|o| o.locks_left).sum::<usize>(),
            issues
        );
    }
    for o in results {
        eprintln!(
            "trial seed={} op={:?} target={:?} killed={} delay_ms={} done={} state={} locks={} doctor={:?} refused={}",
            o.seed, o.op, o.target, o.killed, o.delay_ms, o.reported_done, o.state, o.locks_left, o.doctor_issues, o.refused_until_rerun
        );
    }
}

/// A remote with main, b1 and b2 (and HEAD), in `format`.
fn three_refs(env: &TestEnv, url: &str, format: Format) -> PathBuf {
    init(env, url, format);
    let repo = env.new_repo("r");
    env.git(&repo, &["branch", "b1"]);
    env.commit(&repo, "f", "f\n", "second");
    env.git(&repo, &["branch", "b2"]);
    env.git(&repo, &["push", "-q", url, "main", "b1", "b2"]);
    repo
}

fn migrate_with_hook(env: &TestEnv, to: &str, url: &str, point: &str) {
    let mut c = env.command("git-s3", &env.work());
    c.env("GIT_S3_TEST_CRASH_DURING_MIGRATE", point).args(["migrate", "--to", to, url]);
    env.run_fail(c);
}

/// Found by the crash loop: a migration to packs killed while deleting the
/// bundles, or one to bundles killed after the freeze, left a prefix that
/// every read refused ("holds both formats ... delete the bundles or the
/// .git-s3/ directory"). Reads now use the manifest; pushes are refused
/// with a line naming the fix; the rerun finishes.
#[test]
fn reads_work_while_an_interrupted_migration_waits_for_its_rerun() {
    let env = new_env();
    require_test_hooks(&env);
    for (from, to, point) in [(Format::Bundles, "packs", "to-packs"), (Format::Packs, "bundles", "to-bundles")] {
        let url = env.url(point);
        let repo = three_refs(&env, &url, from);
        let before = refs(&env, &url).unwrap();
        migrate_with_hook(&env, to, &url, point);
        assert!(both_formats(&env, point), "{point}: the crash leaves both formats");
        assert_eq!(refs(&env, &url), Ok(before.clone()), "{point}: ls-remote");
        fresh_clone(&env, &url, point, "of a half-migrated prefix", Op::Push(from));
        let mut c = env.command("git", &repo);
        c.args(["push", "-q", &url, "main:refs/heads/new"]);
        let err = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
        assert!(err.contains("git s3 migrate") || err.contains("being migrated"), "{point}: {err}");
        assert!(!err.contains("delete the bundles"), "{point}: {err}");
        std::thread::sleep(Duration::from_secs(TTL + 1));
        env.git_s3(&env.work(), &["migrate", "--to", to, &url]);
        assert_eq!(refs(&env, &url), Ok(before), "{point}: after the rerun");
        assert!(locks_now(&env, point).is_empty());
        std::fs::remove_dir_all(env.path("r")).unwrap();
    }
}

/// Found by the crash loop: a migration to bundles killed after its manifest
/// deletion could not be finished ("has no packs manifest"): its packs and
/// its locks stayed in the bucket for good.
#[test]
fn a_migration_to_bundles_killed_after_its_manifest_deletion_is_finished_by_a_rerun() {
    let env = new_env();
    require_test_hooks(&env);
    let url = env.url("m");
    three_refs(&env, &url, Format::Packs);
    let before = refs(&env, &url).unwrap();
    migrate_with_hook(&env, "bundles", &url, "to-bundles-manifest-deleted");
    let keys = env.keys("m/");
    assert!(keys.iter().any(|k| k.starts_with("m/.git-s3/packs/")), "the packs are left: {keys:?}");
    assert_eq!(locks_now(&env, "m").len(), 3, "{keys:?}");
    assert_eq!(refs(&env, &url), Ok(before.clone()));
    std::thread::sleep(Duration::from_secs(TTL + 1));
    let out = env.git_s3(&env.work(), &["migrate", "--to", "bundles", &url]);
    assert!(out.contains("Migrated"), "{out}");
    let keys = env.keys("m/");
    assert!(!keys.iter().any(|k| k.contains("/.git-s3/") || k.contains("LOCK#")), "{keys:?}");
    assert_eq!(refs(&env, &url), Ok(before));
    fresh_clone(&env, &url, "m", "after the rerun", Op::Push(Format::Bundles));
    // Run once more: nothing left to do, said clearly.
    let mut c = env.command("git-s3", &env.work());
    c.args(["migrate", "--to", "bundles", &url]);
    let err = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    assert!(err.contains("no packs manifest"), "{err}");
}

/// Found by the crash loop (seed 218662012): a migration to packs killed
/// after deleting the bundles, before the HEAD object, was "already in the
/// packs format" on a rerun, and the 0.4.2 HEAD object stayed for good.
#[test]
fn a_migration_to_packs_killed_before_its_head_deletion_is_finished_by_a_rerun() {
    let env = new_env();
    require_test_hooks(&env);
    let url = env.url("h");
    three_refs(&env, &url, Format::Bundles);
    let before = refs(&env, &url).unwrap();
    assert!(env.keys("h/").iter().any(|k| k == "h/HEAD"), "{:?}", env.keys("h/"));
    migrate_with_hook(&env, "packs", &url, "to-packs-before-head");
    let keys = env.keys("h/");
    assert!(keys.iter().any(|k| k == "h/HEAD") && !keys.iter().any(|k| k.ends_with(".bundle")), "{keys:?}");
    assert_eq!(refs(&env, &url), Ok(before.clone()), "ls-remote of the interrupted prefix");
    std::thread::sleep(Duration::from_secs(TTL + 1));
    let out = env.git_s3(&env.work(), &["migrate", "--to", "packs", &url]);
    assert!(out.contains("1 old objects deleted"), "{out}");
    let keys = env.keys("h/");
    assert!(!keys.iter().any(|k| k == "h/HEAD" || k.contains("LOCK#")), "{keys:?}");
    assert_eq!(refs(&env, &url), Ok(before));
    fresh_clone(&env, &url, "h", "after the rerun", Op::Push(Format::Packs));
    let mut c = env.command("git-s3", &env.work());
    c.args(["migrate", "--to", "packs", &url]);
    let err = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    assert!(err.contains("already in the packs format"), "{err}");
}
