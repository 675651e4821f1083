//! Small checks that many test files share: git's one-line errors, the
//! daemon's test hooks, and the age identities and bucket objects of the
//! encrypted-remote tests (issue 22).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::TestEnv;

/// The `fatal:` and `error:` lines of a command's stderr (a refusal is one).
pub fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("fatal:") || l.starts_with("error:")).collect()
}

/// Fails unless the running daemon was built with the test hooks.
pub fn require_test_hooks(env: &TestEnv) {
    let out = env.git_s3(&env.work(), &["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&out).expect("git s3 status --json is JSON");
    let features = doc["daemon"]["features"].as_array().cloned().unwrap_or_default();
    assert!(
        features.iter().any(|f| f == "test-hooks"),
        "this test needs a daemon built with the test hooks: cargo build --workspace --features git-s3-daemon/test-hooks \
(scripts/test.sh does); the running daemon reports features {features:?}"
    );
}

/// `git s3 keygen` into `identities` (None: the default file): the recipient.
pub fn keygen(env: &TestEnv, identities: Option<&Path>) -> String {
    let mut c = env.command("git-s3", &env.work());
    c.arg("keygen");
    if let Some(p) = identities {
        c.env("GIT_S3_IDENTITIES", p);
    }
    let out = env.run(c);
    let r = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(r.starts_with("age1") && !r.contains('\n'), "{r}");
    r
}

/// Every object under `prefix/`: key and bytes.
pub fn objects(env: &TestEnv, prefix: &str) -> Vec<(String, Vec<u8>)> {
    env.keys(&format!("{prefix}/")).into_iter().filter(|k| !k.is_empty()).map(|k| (k.clone(), env.get_object(&k))).collect()
}

/// The keys under `prefix/` once there are at least `n` (a push uploads
/// its `.idx` after answering git); fails after 30 s.
pub fn wait_for_objects(env: &TestEnv, prefix: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let have: Vec<String> = env.keys(&format!("{prefix}/")).into_iter().filter(|k| !k.is_empty()).collect();
        if have.len() >= n {
            return have;
        }
        assert!(Instant::now() < deadline, "{prefix} holds {} objects, expected {n}: {have:?}", have.len());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Feeds `script` (a `git fast-import` stream) to git in `repo`; fails
/// unless git takes it whole.
pub fn fast_import(env: &TestEnv, repo: &Path, script: &str) {
    let mut cmd = env.command("git", repo);
    cmd.args(["fast-import", "--quiet"]).stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("git fast-import starts");
    child.stdin.take().expect("piped stdin").write_all(script.as_bytes()).expect("git fast-import reads its stream");
    assert!(child.wait().expect("git fast-import ends").success(), "git fast-import failed in {}", repo.display());
}

/// A new KMS key on moto's KMS (boto3 from the test venv): its id. (The
/// daemon reaches it with `AWS_ENDPOINT_URL_KMS` set to [`crate::endpoint`]:
/// a field server in front of S3 serves no KMS.)
pub fn kms_key() -> String {
    let script = "import sys, boto3\nc = boto3.client('kms', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\nprint(c.create_key()['KeyMetadata']['KeyId'])\n";
    let out = std::process::Command::new(crate::venv().join("bin/python")).args(["-c", script, crate::endpoint()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Bytes read from S3 (through `proxy`) by `git clone -q <args> <url> <dir>`
/// in `work/` with the cache cleared first; the clone checked with
/// `fsck_partial`.
pub fn cold_clone_bytes(env: &TestEnv, proxy: &crate::FieldServer, url: &str, dir: &str, args: &[&str]) -> u64 {
    env.git_s3(&env.work(), &["cache", "clear"]);
    let before = proxy.counts().bytes_down;
    let mut all = vec!["clone", "-q"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[url, dir]);
    env.git(&env.work(), &all);
    env.fsck_partial(&env.path(dir));
    proxy.counts().bytes_down - before
}

/// The LFS oid of `file` in `repo` (`git lfs ls-files -l`).
pub fn lfs_oid(env: &TestEnv, repo: &Path, file: &str) -> String {
    env.git(repo, &["lfs", "ls-files", "-l"])
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            let oid = it.next()?;
            let _marker = it.next()?;
            (it.next()? == file).then(|| oid.to_string())
        })
        .unwrap_or_else(|| panic!("{file} is not an LFS file"))
}

/// A command held at one of the daemon's test gates (`daemon/src/test_hooks.rs`:
/// the daemon writes `<gate>.waiting` when it gets there, then waits until
/// `<gate>` exists), so that a test can act while it waits.
pub struct Held {
    gate: PathBuf,
    running: std::thread::JoinHandle<Output>,
}

impl Held {
    /// Runs `cmd` with the variable `var` naming the gate file `gate` and
    /// returns once it waits there; fails after 60 s, naming `what`.
    pub fn start(mut cmd: Command, var: &str, gate: PathBuf, what: &str) -> Held {
        cmd.env(var, &gate);
        let running = std::thread::spawn(move || cmd.output().expect("run the held command"));
        let mut reached = gate.clone().into_os_string();
        reached.push(".waiting");
        let start = Instant::now();
        while !Path::new(&reached).exists() {
            assert!(start.elapsed() < Duration::from_secs(60), "{what} never reached the gate {} (a daemon without test hooks?)", gate.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        Held { gate, running }
    }

    /// Lets the command go on; its output once it ends.
    pub fn release(self) -> Output {
        std::fs::write(&self.gate, b"open").expect("open the gate");
        self.running.join().expect("the held command's thread")
    }
}
