//! A profile's `credential_process`, run as the caller would run it: through
//! `sh -c`, with the caller's whole environment (their `PATH`, `HOME`, …)
//! and working directory, never the daemon's. aws-config's own provider
//! spawns with the daemon's environment, hence this one. The answer is the
//! JSON "Version 1" format (`AccessKeyId`, `SecretAccessKey`, optional
//! `SessionToken`, `Expiration`, `AccountId`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{self, error::CredentialsError, future, ProvideCredentials};
use aws_credential_types::Credentials;

/// How long a helper may run before it is killed.
pub(crate) const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);
/// The most of a helper's stdout that is read (the JSON is a few hundred bytes).
const MAX_OUTPUT: usize = 1 << 20;

/// Why a helper gave no credentials. One line each; the helper's own
/// stderr (its last line) says the rest.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcessError {
    #[error("the credential_process `{program}` of profile '{profile}' could not be started ({reason})")]
    Spawn { program: String, profile: String, reason: String },
    #[error("the credential_process `{program}` of profile '{profile}' is not on your PATH (sh: not found); install it or fix the profile")]
    NotFound { program: String, profile: String },
    #[error("the credential_process `{program}` of profile '{profile}' failed ({status}){stderr}")]
    Failed { program: String, profile: String, status: String, stderr: String },
    #[error("the credential_process `{program}` of profile '{profile}' did not finish within {secs} s")]
    Timeout { program: String, profile: String, secs: u64 },
    #[error("the credential_process `{program}` of profile '{profile}' printed no valid credentials: {reason}")]
    Invalid { program: String, profile: String, reason: String },
}

/// `credential_process` with the caller's environment and directory.
#[derive(Clone)]
pub(crate) struct ProcessCredentials {
    command: String,
    profile: String,
    env: Arc<HashMap<String, String>>,
    timeout: Duration,
}

impl std::fmt::Debug for ProcessCredentials {
    // Neither the command's arguments nor the environment: they may hold secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessCredentials").field("program", &program_of(&self.command)).field("profile", &self.profile).finish()
    }
}

/// The first word of a command (what messages show; arguments may be secret).
fn program_of(command: &str) -> String {
    command.split_whitespace().next().unwrap_or("").to_string()
}

/// The working directory of a caller: `PWD` (the shim sets it to its own
/// directory) when it is a directory, else `HOME`, else `/`.
pub(crate) fn caller_cwd(env: &HashMap<String, String>) -> PathBuf {
    ["PWD", "HOME"]
        .iter()
        .filter_map(|k| env.get(*k))
        .map(PathBuf::from)
        .find(|p| p.is_absolute() && p.is_dir())
        .unwrap_or_else(|| PathBuf::from("/"))
}

impl ProcessCredentials {
    pub(crate) fn new(command: &str, profile: &str, env: Arc<HashMap<String, String>>) -> ProcessCredentials {
        ProcessCredentials { command: command.to_string(), profile: profile.to_string(), env, timeout: PROCESS_TIMEOUT }
    }

    #[cfg(test)]
    fn with_timeout(mut self, timeout: Duration) -> ProcessCredentials {
        self.timeout = timeout;
        self
    }

    pub(crate) async fn run(&self) -> Result<Credentials, ProcessError> {
        let program = program_of(&self.command);
        let profile = self.profile.clone();
        // Stats: off the async workers.
        let env = self.env.clone();
        let cwd = crate::local::files::blocking(move || Ok(caller_cwd(&env))).await.unwrap_or_else(|_| PathBuf::from("/"));
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&self.command)
            .env_clear()
            .envs(self.env.iter())
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| ProcessError::Spawn { program: program.clone(), profile: profile.clone(), reason: e.to_string() })?;
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(ProcessError::Spawn { program, profile, reason: e.to_string() }),
            Err(_) => return Err(ProcessError::Timeout { program, profile, secs: self.timeout.as_secs().max(1) }),
        };
        if !out.status.success() {
            if out.status.code() == Some(127) {
                return Err(ProcessError::NotFound { program, profile });
            }
            let status = match out.status.code() {
                Some(c) => format!("exit code {c}"),
                None => "killed by a signal".to_string(),
            };
            let stderr = stderr_tail(&out.stderr).map(|t| format!(": {t}")).unwrap_or_default();
            return Err(ProcessError::Failed { program, profile, status, stderr });
        }
        let stdout = &out.stdout[..out.stdout.len().min(MAX_OUTPUT)];
        parse_output(stdout).map_err(|reason| ProcessError::Invalid { program, profile, reason })
    }
}

/// The last non-empty line of a helper's stderr, shortened.
fn stderr_tail(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    let line: String = line.chars().filter(|c| !c.is_control()).take(200).collect();
    Some(line)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Output {
    version: Option<serde_json::Value>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    expiration: Option<String>,
    account_id: Option<String>,
}

/// The JSON a helper prints (Version 1). The reason never quotes a secret.
pub(crate) fn parse_output(stdout: &[u8]) -> Result<Credentials, String> {
    let o: Output = serde_json::from_slice(stdout).map_err(|e| format!("not the JSON of the credential_process format ({})", e.classify_name()))?;
    match o.version {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(1) => {}
        Some(v) => return Err(format!("unsupported \"Version\": {v} (only 1 is known)")),
        None => return Err("no \"Version\" (must be 1)".to_string()),
    }
    let id = o.access_key_id.filter(|s| !s.is_empty()).ok_or("no \"AccessKeyId\"")?;
    let secret = o.secret_access_key.filter(|s| !s.is_empty()).ok_or("no \"SecretAccessKey\"")?;
    let expiry = match o.expiration.as_deref() {
        Some(e) => Some(parse_expiration(e).ok_or_else(|| format!("\"Expiration\" is not an RFC 3339 time: {e:?}"))?),
        None => None,
    };
    let mut b = Credentials::builder().access_key_id(id).secret_access_key(secret).provider_name("credential_process");
    b.set_session_token(o.session_token.filter(|s| !s.is_empty()));
    b.set_expiry(expiry);
    if let Some(a) = o.account_id.filter(|s| !s.is_empty()) {
        b = b.account_id(a);
    }
    Ok(b.build())
}

fn parse_expiration(text: &str) -> Option<SystemTime> {
    let t = aws_smithy_types::DateTime::from_str(text.trim(), aws_smithy_types::date_time::Format::DateTime).ok()?;
    SystemTime::try_from(t).ok()
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "a syntax error",
            serde_json::error::Category::Data => "a field of the wrong type",
            serde_json::error::Category::Eof => "it ends early",
        }
    }
}

impl ProvideCredentials for ProcessCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move { self.run().await.map_err(CredentialsError::provider_error) as provider::Result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with_path(dir: &std::path::Path) -> Arc<HashMap<String, String>> {
        let mut e = HashMap::new();
        e.insert("PATH".to_string(), format!("{}:/usr/bin:/bin", dir.display()));
        e.insert("HOME".to_string(), dir.display().to_string());
        e.insert("PWD".to_string(), dir.display().to_string());
        e.insert("HELPER_SECRET_SOURCE".to_string(), "from-the-caller".to_string());
        Arc::new(e)
    }

    /// An executable script, written by a child process: a file this
    /// process wrote could still be open in a child another test forks at
    /// that moment, and running it would fail with "Text file busy".
    fn script(dir: &std::path::Path, name: &str, body: &str) {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
            .arg(dir.join(name))
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("#!/bin/sh\n{body}\n").as_bytes()).unwrap();
        drop(stdin);
        assert!(child.wait().unwrap().success());
    }

    #[tokio::test]
    async fn runs_with_the_callers_path_environment_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "my-helper",
            r#"printf '{"Version": 1, "AccessKeyId": "%s", "SecretAccessKey": "s", "SessionToken": "%s", "Expiration": "2099-01-02T03:04:05Z"}' "$HELPER_SECRET_SOURCE" "$(basename "$(pwd)")""#,
        );
        let p = ProcessCredentials::new("my-helper --flag", "dev", env_with_path(dir.path()));
        let c = p.run().await.unwrap();
        assert_eq!(c.access_key_id(), "from-the-caller");
        assert_eq!(c.session_token(), Some(dir.path().file_name().unwrap().to_str().unwrap()));
        assert!(c.expiry().is_some());
    }

    #[tokio::test]
    async fn failures_are_one_line_with_the_helpers_stderr() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "failing", "echo 'line one' >&2; echo 'token expired, run: login' >&2; exit 3");
        let env = env_with_path(dir.path());
        let e = ProcessCredentials::new("failing secret-arg", "dev", env.clone()).run().await.unwrap_err().to_string();
        assert_eq!(e, "the credential_process `failing` of profile 'dev' failed (exit code 3): token expired, run: login");
        assert!(!e.contains("secret-arg"));
        let e = ProcessCredentials::new("absent-helper", "dev", env.clone()).run().await.unwrap_err();
        assert!(matches!(e, ProcessError::NotFound { .. }), "{e}");
        script(dir.path(), "slow", "sleep 5");
        let e = ProcessCredentials::new("slow", "dev", env.clone()).with_timeout(Duration::from_millis(200)).run().await.unwrap_err();
        assert!(matches!(e, ProcessError::Timeout { .. }), "{e}");
        script(dir.path(), "garbage", "echo 'AKIA-not-json'");
        let e = ProcessCredentials::new("garbage", "dev", env).run().await.unwrap_err().to_string();
        assert!(e.contains("printed no valid credentials") && !e.contains("AKIA"), "{e}");
    }

    #[test]
    fn the_version_1_format() {
        let c = parse_output(br#"{"Version":1,"AccessKeyId":"A","SecretAccessKey":"S"}"#).unwrap();
        assert_eq!((c.access_key_id(), c.session_token(), c.expiry()), ("A", None, None));
        assert!(parse_output(br#"{"Version":2,"AccessKeyId":"A","SecretAccessKey":"S"}"#).unwrap_err().contains("Version"));
        assert!(parse_output(br#"{"Version":1,"AccessKeyId":"A"}"#).unwrap_err().contains("SecretAccessKey"));
        let e = parse_output(br#"{"Version":1,"AccessKeyId":"A","SecretAccessKey":"S","Expiration":"soon"}"#).unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
        let c = parse_output(br#"{"Version":1,"AccessKeyId":"A","SecretAccessKey":"S","Expiration":"2030-01-01T00:00:00.5Z"}"#).unwrap();
        assert!(c.expiry().is_some());
    }
}
