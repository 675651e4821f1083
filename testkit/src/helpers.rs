//! Small checks that many test files share: git's one-line errors, the
//! daemon's test hooks, and the age identities and bucket objects of the
//! encrypted-remote tests (issue 22).

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
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
