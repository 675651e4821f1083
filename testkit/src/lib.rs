//! Shared end-to-end fixtures: a real S3-compatible server on 127.0.0.1
//! (moto's server, from the test venv that `scripts/test.sh` installs, or
//! s3s-fs with `GIT_S3_TEST_SERVER=s3s`: see [`server`]), an
//! isolated environment per test (HOME, git config, daemon runtime dir,
//! cache, a fresh bucket), the built binaries on PATH, and helpers to run
//! the real `git`, `git-lfs` and git-remote-s3 0.4.2.
#![allow(clippy::unwrap_used)] // test fixtures: an unwrap is an assertion (Cargo.toml, [workspace.lints])

pub mod field;
mod helpers;
mod histories;
pub mod identity;
mod lfs_server;
mod proxy;
pub use field::FieldServer;
pub use helpers::{cold_clone_bytes, error_lines, fast_import, keygen, kms_key, lfs_oid, objects, require_test_hooks, wait_for_objects, Held};
pub use histories::{delta_history, noise_line, DELTA_HISTORY_COMMITS, DELTA_HISTORY_FILES};
pub use lfs_server::LfsServer;
pub use proxy::CuttingProxy;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The test venv (moto server, boto3, git-remote-s3 0.4.2):
/// `GIT_S3_TEST_VENV`, else `<workspace>/.test-env/venv`.
pub fn venv() -> PathBuf {
    let p = std::env::var_os("GIT_S3_TEST_VENV").map(PathBuf::from).unwrap_or_else(|| workspace_root().join(".test-env/venv"));
    assert!(
        p.join("bin/moto_server").exists(),
        "test venv missing at {} — run `scripts/test.sh` (it installs moto and git-remote-s3 0.4.2 there)",
        p.display()
    );
    p
}

/// The states of a xorshift generator from `state` (not 0): the one
/// pseudo-random stream of the tests, the same for a start.
pub fn xorshift(mut state: u64) -> impl Iterator<Item = u64> {
    std::iter::repeat_with(move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    })
}

/// Pseudo-random, incompressible bytes (xorshift), the same for a seed:
/// files and LFS objects that differ and do not compress.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).take(len).map(|x| (x >> 24) as u8).collect()
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Directory of the built binaries (the test executable lives in `<dir>/deps`).
pub fn target_bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir").to_path_buf();
    for b in ["git-remote-s3", "git-s3", "git-lfs-s3", "git-s3-daemon"] {
        assert!(dir.join(b).exists(), "{} not built — run `cargo build --workspace` first (scripts/test.sh does)", dir.join(b).display());
    }
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The S3 implementation the suite runs against: `GIT_S3_TEST_SERVER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// moto's server (unset or `moto`): the whole suite.
    Moto,
    /// s3s-fs (`s3s`), an S3 server over a directory that checks signatures
    /// (access key `test`, secret `test`): the core subset `scripts/test.sh`
    /// names. See docs/s3-implementations.md.
    S3s,
}

/// Which server `GIT_S3_TEST_SERVER` selects; panics on an unknown name
/// rather than running the suite against something else.
pub fn server() -> Server {
    match std::env::var("GIT_S3_TEST_SERVER").as_deref() {
        Err(_) | Ok("") | Ok("moto") => Server::Moto,
        Ok("s3s") => Server::S3s,
        Ok(other) => panic!("GIT_S3_TEST_SERVER={other:?}: expected `moto` or `s3s`"),
    }
}

/// The S3 endpoint for this test process: `GIT_S3_TEST_ENDPOINT` when the
/// test script started a server (of the kind [`server`] names), else one
/// started here (killed when this process exits).
pub fn endpoint() -> &'static str {
    static EP: OnceLock<String> = OnceLock::new();
    EP.get_or_init(|| {
        std::env::var("GIT_S3_TEST_ENDPOINT").unwrap_or_else(|_| match server() {
            Server::Moto => start_moto(&[]),
            Server::S3s => start_s3s(),
        })
    })
}

/// A second server that checks credentials (moto's IAM auth, enforced after
/// its first action, which creates the bucket `auth-bucket`): any access key
/// is then rejected with InvalidAccessKeyId.
pub fn auth_endpoint() -> &'static str {
    static EP: OnceLock<String> = OnceLock::new();
    EP.get_or_init(|| {
        let ep = start_moto(&[("INITIAL_NO_AUTH_ACTION_COUNT", "1")]);
        s3tool_at(&ep, &["create-bucket", "auth-bucket"], None);
        ep
    })
}

fn start_moto(env: &[(&str, &str)]) -> String {
    let port = free_port();
    let mut cmd = Command::new(venv().join("bin/moto_server"));
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]).envs(env.iter().copied());
    start_server(cmd, port, "moto_server")
}

/// s3s-fs (`GIT_S3_TEST_S3S_BIN`, else what `scripts/setup-test-env.sh
/// --s3s` installs) over a fresh directory in the temp dir; the directories
/// of runs whose process is gone are removed first.
fn start_s3s() -> String {
    let bin = std::env::var_os("GIT_S3_TEST_S3S_BIN").map(PathBuf::from).unwrap_or_else(|| workspace_root().join(".test-env/s3s/bin/s3s-fs"));
    assert!(bin.exists(), "s3s-fs missing at {} — run `scripts/setup-test-env.sh --s3s`", bin.display());
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("gits3-s3s-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let data = tmp.join(format!("gits3-s3s-{}", std::process::id()));
    std::fs::create_dir_all(&data).expect("s3s-fs data dir");
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "test", "--secret-key", "test"]).arg(data);
    start_server(cmd, port, "s3s-fs")
}

/// Spawns a server that dies with this process and waits until it listens.
fn start_server(mut cmd: Command, port: u16, name: &'static str) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    // The child dies with the thread that spawned it (PDEATHSIG), so spawn
    // it from a thread that lives as long as the process.
    std::thread::spawn(move || {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; it only sets this child's
        // parent-death signal.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        tx.send(child.id()).ok();
        let mut child = child;
        let _ = child.wait();
        loop {
            std::thread::park();
        }
    });
    rx.recv().unwrap_or_else(|_| panic!("{name} did not start"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{name} did not start on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    format!("http://127.0.0.1:{port}")
}

/// s3s-fs checks a conditional write, then writes, with no lock between:
/// of two racing `If-None-Match: *` PUTs both succeed (measured, see
/// docs/s3-implementations.md), where S3 lets one win. Unless
/// `GIT_S3_TEST_FIELD` asks for more, a run against it goes through a field
/// server that adds only what S3 does there: conditional writes to one key
/// one at a time (and `NoSuchUpload` for a completed upload); no latency,
/// TLS or faults. Every other answer is s3s-fs's own.
fn s3s_front() -> Option<field::FieldConditions> {
    (server() == Server::S3s).then_some(field::FieldConditions { rtt: Duration::ZERO, tls: false, fault_rate: 0.0, seed: 0 })
}

/// Runs the bucket tool (boto3) against the test server.
pub fn s3tool(args: &[&str], stdin: Option<&[u8]>) -> Output {
    s3tool_at(endpoint(), args, stdin)
}

/// The bucket tool against another endpoint (a field server in front of the test server).
pub fn s3tool_at(endpoint: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(venv().join("bin/python"));
    cmd.arg(workspace_root().join("testkit/s3tool.py")).arg(endpoint).args(args);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run s3tool");
    if let Some(data) = stdin {
        child.stdin.take().expect("stdin").write_all(data).expect("write stdin");
    }
    let out = child.wait_with_output().expect("s3tool");
    assert!(out.status.success(), "s3tool {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A host name (not an IP address) that resolves to 127.0.0.1 only, for
/// an endpoint such as `http://<name>:<port>` (MinIO or Ceph on a named
/// host): this machine's host name when it does, else `s3.git-s3.test`
/// (`scripts/setup-test-env.sh` adds it to /etc/hosts when run as root).
/// Panics when neither does: a test that needs one must not pass silently.
pub fn loopback_host_name() -> String {
    fn loopback_only(name: &str) -> bool {
        use std::net::ToSocketAddrs;
        match (name, 1).to_socket_addrs() {
            Ok(addrs) => {
                let addrs: Vec<_> = addrs.collect();
                !addrs.is_empty()
                    && addrs.iter().all(|a| a.ip().is_loopback())
                    && addrs.iter().any(|a| a.ip() == std::net::IpAddr::from([127, 0, 0, 1]))
            }
            Err(_) => false,
        }
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let candidates = [hostname.as_str(), "s3.git-s3.test"];
    candidates
        .iter()
        .find(|n| !n.is_empty() && n.parse::<std::net::IpAddr>().is_err() && *n != &"localhost" && !n.ends_with(".localhost") && loopback_only(n))
        .map(|n| n.to_string())
        .unwrap_or_else(|| {
            panic!(
                "no host name resolves to 127.0.0.1 only (tried {candidates:?}): add `127.0.0.1 s3.git-s3.test` to /etc/hosts (scripts/setup-test-env.sh does when run as root)"
            )
        })
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Which implementation a command runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// Our binaries.
    Ours,
    /// git-remote-s3 0.4.2 from the test venv.
    Python,
}

/// An isolated user: HOME, git identity, runtime dir (own daemon), cache,
/// and a fresh bucket on the test server.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub bucket: String,
    bin_dir: PathBuf,
    /// Variables set on every command after the defaults ([`TestEnv::set_env`]).
    extra_env: std::sync::Mutex<Vec<(String, String)>>,
    /// Variables removed from every command ([`TestEnv::unset_env`]).
    removed_env: std::sync::Mutex<Vec<String>>,
    /// With `GIT_S3_TEST_FIELD`: the field server every command goes through.
    field: Option<FieldServer>,
    /// A field server that only makes conditional writes atomic
    /// ([`TestEnv::with_atomic_conditional_writes`]).
    front: Option<FieldServer>,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let dir = tempfile::Builder::new().prefix("gits3-").tempdir_in(short_tmp()).expect("tempdir");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let bucket = format!(
            "test-{}-{}-{n}",
            std::process::id(),
            dir.path().file_name().unwrap().to_string_lossy().to_lowercase().replace(['_', '.'], "-").trim_start_matches("gits3-")
        );
        let bucket: String = bucket.chars().take(63).collect::<String>().trim_end_matches('-').to_string();
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        let target = target_bin_dir();
        for (link, real) in [
            ("git-remote-s3", "git-remote-s3"),
            ("git-remote-s3+zip", "git-remote-s3"),
            ("git-s3", "git-s3"),
            ("git-lfs-s3", "git-lfs-s3"),
            ("git-s3-daemon", "git-s3-daemon"),
        ] {
            std::os::unix::fs::symlink(target.join(real), bin_dir.join(link)).unwrap();
        }
        for d in ["home", "run", "cache", "state", "work"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::set_permissions(dir.path().join("run"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let mut env = TestEnv { dir, bucket, bin_dir, extra_env: Default::default(), removed_env: Default::default(), field: None, front: None };
        std::fs::write(
            env.home().join(".gitconfig"),
            "[user]\n\tname = Test\n\temail = test@example.com\n[init]\n\tdefaultBranch = main\n[protocol \"s3\"]\n\tallow = always\n[advice]\n\tdetachedHead = false\n",
        )
        .unwrap();
        s3tool(&["create-bucket", &env.bucket], None);
        if let Some(conditions) = field::FieldConditions::from_env().or_else(s3s_front) {
            let server = conditions.start();
            env.set_env("AWS_ENDPOINT_URL", &server.url);
            if let Some(ca) = server.ca_bundle() {
                env.set_env("AWS_CA_BUNDLE", &ca.display().to_string());
            }
            env.field = Some(server);
        }
        env
    }

    /// This environment with every command's S3 requests through a field
    /// server that adds nothing but S3's atomic conditional writes: moto
    /// checks `If-Match`/`If-None-Match`, then writes, on concurrent threads,
    /// so two concurrent conditional writes of one key can both succeed (a
    /// lost update S3 never allows). For the tests whose concurrent pushes
    /// assert that nothing is lost; a run that already goes through a field
    /// server (`GIT_S3_TEST_FIELD`, s3s-fs) has it.
    pub fn with_atomic_conditional_writes(mut self) -> TestEnv {
        if self.field.is_none() {
            let front = FieldServer::start();
            self.set_env("AWS_ENDPOINT_URL", &front.url);
            self.front = Some(front);
        }
        self
    }

    /// The field server of a run with `GIT_S3_TEST_FIELD` (see
    /// [`field::FieldConditions`]), if any.
    pub fn field(&self) -> Option<&FieldServer> {
        self.field.as_ref()
    }

    /// Every git repository under `work/` passes `git fsck --full` (what a
    /// run through the field server checks when a test ends).
    pub fn fsck_all(&self) {
        for repo in git_dirs(&self.work()) {
            let mut c = self.command("git", &repo);
            c.args(["fsck", "--full", "--no-progress", "--no-dangling"]);
            let out = c.output().expect("spawn git fsck");
            assert!(
                out.status.success(),
                "git fsck failed in {}:\n{}{}",
                repo.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// A directory for working copies.
    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.work().join(name)
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    pub fn zip_url(&self, prefix: &str) -> String {
        format!("s3+zip://{}/{prefix}", self.bucket)
    }

    fn system_path() -> String {
        "/usr/local/bin:/usr/bin:/bin".to_string()
    }

    /// A command in this environment, with `tool`'s binaries first on PATH.
    pub fn command_with(&self, tool: Tool, program: &str, cwd: &Path) -> Command {
        let path = match tool {
            Tool::Ours => format!("{}:{}", self.bin_dir.display(), Self::system_path()),
            Tool::Python => format!("{}:{}", venv().join("bin").display(), Self::system_path()),
        };
        let mut cmd = Command::new(program);
        cmd.current_dir(cwd)
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.home())
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .env("XDG_CONFIG_HOME", self.home().join(".config"))
            .env("GIT_S3_CACHE_DIR", self.dir.path().join("cache"))
            .env("GIT_S3_STATE_DIR", self.dir.path().join("state"))
            .env("GIT_S3_DAEMON_IDLE_SECONDS", "300")
            // No views written after pushes (`storage/packs/views.rs`) but
            // in the tests that ask: the others count requests and objects.
            .env("GIT_S3_VIEWS_AUTO_BYTES", "0")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", endpoint())
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LANG", "C")
            .stdin(Stdio::null());
        for (k, v) in self.extra_env.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            cmd.env(k, v);
        }
        for k in self.removed_env.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            cmd.env_remove(k);
        }
        cmd
    }

    /// Removes `name` from every later command (e.g. `AWS_ENDPOINT_URL`,
    /// for Amazon S3's own endpoints); a later [`TestEnv::set_env`] of it
    /// sets it again.
    pub fn unset_env(&self, name: &str) {
        self.extra_env.lock().unwrap_or_else(|p| p.into_inner()).retain(|(k, _)| k != name);
        self.removed_env.lock().unwrap_or_else(|p| p.into_inner()).push(name.to_string());
    }

    /// Sets `name` to `value` on every later command (e.g. `AWS_ENDPOINT_URL`
    /// to a [`FieldServer`]'s URL).
    pub fn set_env(&self, name: &str, value: &str) {
        self.removed_env.lock().unwrap_or_else(|p| p.into_inner()).retain(|k| k != name);
        let mut extra = self.extra_env.lock().unwrap_or_else(|p| p.into_inner());
        extra.retain(|(k, _)| k != name);
        extra.push((name.to_string(), value.to_string()));
    }

    pub fn command(&self, program: &str, cwd: &Path) -> Command {
        self.command_with(Tool::Ours, program, cwd)
    }

    /// Runs a command; panics with its output unless it succeeds.
    pub fn run(&self, mut cmd: Command) -> Output {
        let out = cmd.output().expect("spawn");
        if !out.status.success() {
            panic!(
                "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    /// Runs a command that must fail; returns its output.
    pub fn run_fail(&self, mut cmd: Command) -> Output {
        let out = cmd.output().expect("spawn");
        assert!(
            !out.status.success(),
            "{cmd:?} unexpectedly succeeded:\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `git <args>` in `cwd` with our tools; must succeed; returns stdout.
    pub fn git(&self, cwd: &Path, args: &[&str]) -> String {
        self.git_with(Tool::Ours, cwd, args)
    }

    pub fn git_with(&self, tool: Tool, cwd: &Path, args: &[&str]) -> String {
        let mut c = self.command_with(tool, "git", cwd);
        c.args(args);
        String::from_utf8_lossy(&self.run(c).stdout).into_owned()
    }

    /// `git fsck` of a repository that may be partial: no error and no
    /// missing object reported (a promisor's absent objects are not).
    pub fn fsck_partial(&self, repo: &Path) {
        let mut c = self.command("git", repo);
        c.args(["fsck", "--no-progress"]);
        let out = self.run(c);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("error") && !err.contains("missing"), "git fsck: {err}");
    }

    /// How many objects `repo` reaches but lacks (a partial clone's
    /// promised objects: `rev-list --missing=print`).
    pub fn missing_objects(&self, repo: &Path) -> usize {
        self.git(repo, &["rev-list", "--objects", "--all", "--missing=print"]).lines().filter(|l| l.starts_with('?')).count()
    }

    /// `git <args>` that must fail; returns stderr.
    pub fn git_fail(&self, cwd: &Path, args: &[&str]) -> String {
        let mut c = self.command("git", cwd);
        c.args(args);
        String::from_utf8_lossy(&self.run_fail(c).stderr).into_owned()
    }

    /// `git s3 <args>` (our CLI); must succeed; returns stdout.
    pub fn git_s3(&self, cwd: &Path, args: &[&str]) -> String {
        let mut c = self.command("git-s3", cwd);
        c.args(args);
        String::from_utf8_lossy(&self.run(c).stdout).into_owned()
    }

    /// Waits (up to `limit`) until the daemon, if one runs, serves no
    /// session: work a killed shim left running has finished or stopped.
    pub fn wait_daemon_idle(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let out = self.git_s3(&self.work(), &["daemon", "status", "--json"]);
            let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("daemon status --json: {e}: {out}"));
            if v["running"] != serde_json::Value::Bool(true) || v["active_sessions"].as_u64() == Some(0) {
                return;
            }
            assert!(start.elapsed() < limit, "the daemon still serves a session after {limit:?}: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A new repository at `work/<name>` with one commit.
    pub fn new_repo(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(&p).unwrap();
        self.git(&p, &["init", "-q", "-b", "main"]);
        self.commit(&p, "README.md", "hello\n", "initial commit");
        p
    }

    /// A repository at `work/<name>` with `main`, a branch `feature/x` one
    /// commit ahead, a lightweight tag `v1` and an annotated tag
    /// `v1-annotated` on main, and the remote `origin` set to `url`.
    /// Returns the repository and `feature/x`'s sha.
    pub fn repo_with_branch_and_tags(&self, name: &str, url: &str) -> (PathBuf, String) {
        let repo = self.new_repo(name);
        self.git(&repo, &["remote", "add", "origin", url]);
        self.git(&repo, &["checkout", "-q", "-b", "feature/x"]);
        let fx = self.commit(&repo, "f.txt", "feature\n", "feature work");
        self.git(&repo, &["checkout", "-q", "main"]);
        self.git(&repo, &["tag", "v1"]);
        self.git(&repo, &["tag", "-a", "v1-annotated", "-m", "annotated"]);
        (repo, fx)
    }

    /// Writes a file and commits it; returns the new HEAD sha.
    pub fn commit(&self, repo: &Path, file: &str, content: &str, msg: &str) -> String {
        let f = repo.join(file);
        if let Some(parent) = f.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&f, content).unwrap();
        self.git(repo, &["add", file]);
        self.git(repo, &["commit", "-q", "-m", msg]);
        self.git(repo, &["rev-parse", "HEAD"]).trim().to_string()
    }

    /// Commits everything in `repo` (`msg`), adds `url` as `origin` and
    /// installs git-lfs-s3 there (`git-lfs-s3 install`): a repository whose
    /// LFS objects go to S3, ready to push.
    pub fn commit_all_with_lfs_remote(&self, repo: &Path, msg: &str, url: &str) {
        self.git(repo, &["add", "-A"]);
        self.git(repo, &["commit", "-q", "-m", msg]);
        self.git(repo, &["remote", "add", "origin", url]);
        let mut c = self.command("git-lfs-s3", repo);
        c.arg("install");
        self.run(c);
    }

    /// Keys (and sizes) under a prefix, straight from the bucket.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = s3tool(&["list", &self.bucket, prefix], None);
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.split('\t').next().unwrap_or("").to_string()).collect()
    }

    pub fn put_object(&self, key: &str, data: &[u8]) {
        s3tool(&["put", &self.bucket, key], Some(data));
    }

    pub fn get_object(&self, key: &str) -> Vec<u8> {
        s3tool(&["get", &self.bucket, key], None).stdout
    }

    pub fn delete_object(&self, key: &str) {
        s3tool(&["delete", &self.bucket, key], None);
    }

    pub fn copy_object(&self, from: &str, to: &str) {
        s3tool(&["copy", &self.bucket, from, to], None);
    }

    /// Sorted `git ls-remote` lines.
    pub fn ls_remote(&self, tool: Tool, url: &str) -> Vec<String> {
        let mut lines: Vec<String> = self.git_with(tool, &self.work(), &["ls-remote", url]).lines().map(str::to_string).collect();
        lines.sort();
        lines
    }

    pub fn daemon_socket(&self) -> PathBuf {
        self.dir.path().join("run/git-s3/daemon.sock")
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// The git repositories under `dir` (work trees and bare ones), not below
/// another repository's `.git`.
fn git_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        if p.join(".git").exists() || (p.join("HEAD").is_file() && p.join("objects").is_dir()) {
            out.push(p);
        } else {
            out.extend(git_dirs(&p));
        }
    }
    out
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Through the field server: every operation succeeded (or the test
        // failed already); the repositories must be sound too.
        if let Some(field) = &self.field {
            eprintln!("field server: {:?}", field.counts());
            if !std::thread::panicking() {
                self.fsck_all();
            }
        }
        // Stop this test's daemon.
        if self.daemon_socket().exists() {
            let mut c = self.command("git-s3", self.dir.path());
            c.args(["daemon", "stop"]).stdout(Stdio::null()).stderr(Stdio::null());
            let _ = c.status();
        }
    }
}

/// Unix socket paths are limited to 108 bytes: keep temp dirs short.
fn short_tmp() -> PathBuf {
    let p = PathBuf::from("/tmp");
    if p.is_dir() {
        p
    } else {
        std::env::temp_dir()
    }
}
