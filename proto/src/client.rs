//! The client side shared by every shim: connect to the daemon over its Unix
//! socket, start it when nothing answers, and pump stdio through a session.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::pb::git_s3_client::GitS3Client;
use crate::pb::{self, session_input, session_output, SessionInput, SessionStart};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the git-s3 daemon at {socket}: {reason}")]
    Unreachable { socket: PathBuf, reason: String },
    #[error("cannot start the git-s3 daemon ({exe}): {reason}. Start it by hand with `git s3 daemon run` to see why")]
    StartFailed { exe: PathBuf, reason: String },
    #[error("the git-s3 daemon closed the session: {0}")]
    Session(String),
}

/// Connects to the daemon at `socket` without starting it.
pub async fn connect(socket: &Path) -> Result<GitS3Client<Channel>, ClientError> {
    let path = socket.to_path_buf();
    if !path.exists() {
        return Err(ClientError::Unreachable { socket: path, reason: "no socket".into() });
    }
    let connector_path = path.clone();
    // The URI is ignored: every connection goes to the Unix socket.
    let channel = Endpoint::try_from("http://[::1]:1")
        .map_err(|e| ClientError::Unreachable { socket: path.clone(), reason: e.to_string() })?
        .connect_timeout(Duration::from_secs(2))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = connector_path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await
        .map_err(|e| ClientError::Unreachable { socket: path.clone(), reason: e.to_string() })?;
    Ok(GitS3Client::new(channel).max_decoding_message_size(64 << 20))
}

/// Connects to a daemon of our version, starting (or restarting) it as needed.
pub async fn connect_or_start() -> Result<GitS3Client<Channel>, ClientError> {
    let socket = crate::paths::socket_path();
    if let Ok(mut c) = connect(&socket).await {
        match c.hello(pb::HelloRequest { client_version: crate::VERSION.into() }).await {
            Ok(r) if is_current(r.get_ref()) => return Ok(c),
            Ok(r) => {
                // Another version: ask it to go away, then start ours.
                let old = r.into_inner().version;
                let _ = c.shutdown(pb::ShutdownRequest {}).await;
                wait_until_gone(&socket, Duration::from_secs(5)).await;
                if std::env::var_os("GIT_REMOTE_S3_VERBOSE").is_some() {
                    eprintln!("git-s3: restarted daemon {old} as {}", crate::VERSION);
                }
            }
            Err(_) => {}
        }
    }
    start_daemon()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut delay = Duration::from_millis(10);
    let mut started = Instant::now();
    loop {
        if let Ok(mut c) = connect(&socket).await {
            if let Ok(r) = c.hello(pb::HelloRequest { client_version: crate::VERSION.into() }).await {
                if is_current(r.get_ref()) {
                    return Ok(c);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(ClientError::Unreachable {
                socket,
                reason: format!("the daemon did not answer within 15 s of being started; see its log at {}", crate::paths::log_file().display()),
            });
        }
        // A daemon that gave up (it found the lock of one still being torn
        // down) is started again; extra ones exit at once, as above.
        if started.elapsed() > Duration::from_secs(3) {
            start_daemon()?;
            started = Instant::now();
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

fn tracing_note(msg: &str) {
    if std::env::var_os("GIT_REMOTE_S3_VERBOSE").is_some() {
        eprintln!("git-s3: {msg}");
    }
}

/// Same version, and its binary was not replaced since it started.
fn is_current(r: &pb::HelloReply) -> bool {
    r.version == crate::VERSION && (r.exe_path.is_empty() || exe_mtime_ns(Path::new(&r.exe_path)) == Some(r.exe_mtime_ns))
}

/// Modification time of a file in ns since the epoch.
pub fn exe_mtime_ns(path: &Path) -> Option<u64> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(m.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as u64)
}

async fn wait_until_gone(socket: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if connect(socket).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether process `pid` is still running (an exited one waiting to be
/// reaped, a zombie, is not).
pub fn process_alive(pid: u32) -> bool {
    // Linux: the state letter after the command name in /proc/<pid>/stat.
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
        return !matches!(state, Some('Z' | 'X') | None);
    }
    if std::path::Path::new("/proc/self/stat").exists() {
        return false; // /proc is there and has no such process
    }
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // Elsewhere signal 0 probes without sending (a zombie still answers).
    // SAFETY: kill with signal 0 only checks the process exists.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The daemon binary: `GIT_S3_DAEMON`, else `git-s3-daemon` beside this
/// executable, else on PATH.
pub fn daemon_exe() -> PathBuf {
    if let Some(p) = std::env::var_os("GIT_S3_DAEMON") {
        return PathBuf::from(p);
    }
    if let Ok(me) = std::env::current_exe() {
        if let Some(dir) = me.parent() {
            let candidate = dir.join("git-s3-daemon");
            if candidate.exists() {
                return candidate;
            }
        }
    }
    PathBuf::from("git-s3-daemon")
}

/// Starts the daemon detached from this process (own session, no stdio).
/// Several shims racing here is fine: the daemon takes an exclusive lock and
/// the losers exit.
pub fn start_daemon() -> Result<(), ClientError> {
    use std::os::unix::process::CommandExt;
    let exe = daemon_exe();
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("run").stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from the
    // caller's terminal and process group so ^C in git does not kill it.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| ClientError::StartFailed { exe: exe.clone(), reason: e.to_string() })?;
    // Reap it in the background so no zombie stays behind while we run.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(())
}

/// The caller's environment that the daemon needs to act on its behalf
/// (variables that are not UTF-8 are left out), with `PWD` set to this
/// process's working directory: where a profile's `credential_process`
/// runs, as it would in this process.
pub fn forwarded_env() -> HashMap<String, String> {
    let mut env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| crate::is_forwarded_env(k))
        .collect();
    if let Some(cwd) = std::env::current_dir().ok().and_then(|p| p.into_os_string().into_string().ok()) {
        env.insert("PWD".to_string(), cwd);
    }
    if let Some(tty) = stderr_tty().filter(|_| !env.contains_key(TTY_VAR)) {
        env.insert(TTY_VAR.to_string(), tty);
    }
    env
}

/// The terminal this process's stderr is, which the daemon's age plugins
/// show their messages and ask for a PIN on (as gpg-agent's pinentry uses
/// `GPG_TTY`); the caller may set it.
pub const TTY_VAR: &str = "GIT_S3_TTY";

fn stderr_tty() -> Option<String> {
    let stderr = std::io::stderr();
    if !rustix::termios::isatty(&stderr) {
        return None;
    }
    rustix::termios::ttyname(&stderr, Vec::new()).ok()?.into_string().ok()
}

/// Runs one session: connects (starting the daemon if needed), forwards stdin,
/// writes what the daemon sends to stdout/stderr, and returns the exit code.
/// The hot path is one connect and one RPC: the session's first message
/// carries the version check.
pub async fn run_session(program: pb::Program, args: Vec<String>, argv0: String) -> Result<i32, ClientError> {
    let socket = crate::paths::socket_path();
    let start = SessionStart {
        program: program as i32,
        args,
        env: forwarded_env(),
        cwd: std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default(),
        stdin_is_tty: std::io::stdin().is_terminal(),
        stderr_is_tty: std::io::stderr().is_terminal(),
        argv0,
        client_version: crate::VERSION.into(),
        daemon_exe_mtime_ns: exe_mtime_ns(&daemon_exe()).unwrap_or(0),
    };
    let mut client = match connect(&socket).await {
        Ok(c) => c,
        Err(_) => connect_or_start().await?,
    };
    let mut attempt = 0;
    let (tx, mut outputs) = loop {
        attempt += 1;
        let (tx, rx) = tokio::sync::mpsc::channel::<SessionInput>(16);
        tx.send(SessionInput { msg: Some(session_input::Msg::Start(start.clone())) }).await.map_err(|e| ClientError::Session(e.to_string()))?;
        match client.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
            Ok(resp) => break (tx, resp.into_inner()),
            Err(status) if attempt == 1 && status.code() == tonic::Code::FailedPrecondition => {
                // Another version, or its binary was replaced: restart it.
                let _ = client.shutdown(pb::ShutdownRequest {}).await;
                wait_until_gone(&socket, Duration::from_secs(10)).await;
                client = connect_or_start().await?;
            }
            Err(status) if attempt == 1 => {
                // The connection broke (e.g. a stale socket of a killed
                // daemon): nothing was sent yet but the start, so start a
                // daemon and try once more.
                tracing_note(&format!("session refused ({}); starting the daemon", status.message()));
                client = connect_or_start().await?;
            }
            Err(status) => return Err(ClientError::Session(status.message().to_string())),
        }
    };
    // Forward stdin only once the daemon accepted the session.
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = tx.send(SessionInput { msg: Some(session_input::Msg::StdinEof(true)) }).await;
                    break;
                }
                Ok(n) => {
                    if tx.send(SessionInput { msg: Some(session_input::Msg::Stdin(buf[..n].to_vec())) }).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    loop {
        match outputs.message().await {
            Ok(Some(out)) => match out.msg {
                Some(session_output::Msg::Stdout(b)) => {
                    let mut o = stdout.lock();
                    let _ = o.write_all(&b);
                    let _ = o.flush();
                }
                Some(session_output::Msg::Stderr(b)) => {
                    let mut e = stderr.lock();
                    let _ = e.write_all(&b);
                    let _ = e.flush();
                }
                Some(session_output::Msg::ExitCode(code)) => return Ok(code),
                None => {}
            },
            Ok(None) => return Err(ClientError::Session("the daemon ended the session without an exit code".into())),
            Err(status) => return Err(ClientError::Session(status.message().to_string())),
        }
    }
}
