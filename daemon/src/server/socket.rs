//! The daemon process: one per user (an exclusive lock on a file beside the
//! socket), a Unix socket in a 0700 directory, peer-uid check on every
//! connection, exit after an idle period or on request.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use git_s3_proto::pb::git_s3_server::GitS3Server;
use tokio::net::UnixListener;
use tokio_stream::StreamExt;

use crate::local::cache::Cache;
use crate::server::service::Service;
use crate::session::state::DaemonState;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another git-s3 daemon is already running (lock {0} held)")]
    AlreadyRunning(PathBuf),
    #[error("cannot prepare {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

pub struct ServerConfig {
    pub idle_timeout: Duration,
    pub(crate) cache_max_bytes: u64,
}

impl ServerConfig {
    /// From the daemon's own environment (daemon settings, not request data).
    pub fn from_env() -> ServerConfig {
        let idle = std::env::var("GIT_S3_DAEMON_IDLE_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1800);
        let max = std::env::var("GIT_S3_CACHE_MAX_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(crate::local::cache::DEFAULT_MAX_BYTES);
        ServerConfig { idle_timeout: Duration::from_secs(idle), cache_max_bytes: max }
    }
}

fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Io { path: path.to_path_buf(), source }
}

/// Holds the single-instance lock for the daemon's lifetime.
pub struct InstanceLock {
    _file: std::fs::File,
}

pub fn take_instance_lock() -> Result<InstanceLock, ServerError> {
    use std::os::unix::io::AsRawFd;
    let dir = git_s3_proto::paths::runtime_dir();
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(&dir))?;
    let path = git_s3_proto::paths::lock_path();
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err(&path))?;
    // A daemon that is shutting down removes its socket a moment before it
    // exits and drops the lock, and a killed one leaves its socket behind:
    // wait for the lock rather than give up, so a restart right after a
    // stop or a kill starts a new daemon.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        // SAFETY: flock on a file descriptor we own.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(InstanceLock { _file: file });
        }
        // A daemon that answers on the socket runs: we are not needed. A
        // socket nobody answers is a dead daemon's, whose lock the kernel
        // releases once the process is torn down (after a SIGKILL that can
        // take a moment, longer on a busy disk): wait for it.
        let socket = git_s3_proto::paths::socket_path();
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() || std::time::Instant::now() > deadline {
            return Err(ServerError::AlreadyRunning(path));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The daemon's life. `main` runs it with `block_on`: this future (the
/// socket's set-up and removal, the accept loop) is polled on the main
/// thread, not on an async worker, so its few file-system calls at start
/// and exit block no session.
pub async fn serve(config: ServerConfig, _lock: InstanceLock) -> Result<(), ServerError> {
    let socket = git_s3_proto::paths::socket_path();
    // We hold the instance lock: any socket file left is stale.
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(io_err(&socket))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).map_err(io_err(&socket))?;
    let cache_root = git_s3_proto::paths::cache_dir();
    // Opening the cache walks it once (its index): on a blocking thread.
    let max = config.cache_max_bytes;
    let cache = tokio::task::spawn_blocking(move || match Cache::new(cache_root.clone(), max) {
        Ok(c) => Ok(c),
        Err(e) => {
            // An unusable cache directory does not stop git: a fresh one in
            // the (private) runtime dir serves this daemon's life.
            let fallback = git_s3_proto::paths::runtime_dir().join("cache");
            tracing::warn!(cache = %cache_root.display(), error = %e, fallback = %fallback.display(), "the cache directory is unusable; using a temporary one");
            let _ = std::fs::remove_dir_all(&fallback);
            Cache::new(fallback.clone(), max).map_err(io_err(&fallback))
        }
    })
    .await
    .map_err(|e| io_err(&git_s3_proto::paths::cache_dir())(std::io::Error::other(e)))??;
    let state = Arc::new(DaemonState::new(cache, socket.clone(), git_s3_proto::paths::log_file()));
    tracing::info!(socket = %socket.display(), pid = std::process::id(), version = git_s3_proto::VERSION, "git-s3 daemon listening");

    // SAFETY: getuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    let my_uid = unsafe { libc::getuid() };
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener).filter(move |conn| match conn {
        Ok(stream) => match stream.peer_cred() {
            Ok(cred) if cred.uid() == my_uid => true,
            Ok(cred) => {
                tracing::warn!(peer_uid = cred.uid(), "refused connection from another user");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "refused connection: cannot read peer credentials");
                false
            }
        },
        Err(_) => true,
    });

    let idle_state = state.clone();
    let idle_timeout = config.idle_timeout;
    let shutdown = async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = idle_state.idle(idle_timeout) => tracing::info!(idle = ?idle_timeout, "idle; exiting"),
            _ = idle_state.shutdown.notified() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {
                tracing::info!("SIGTERM; exiting");
            }
        }
    };
    let result = tonic::transport::Server::builder()
        .add_service(GitS3Server::new(Service { state: state.clone() }).max_decoding_message_size(64 << 20))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    let _ = std::fs::remove_file(&socket);
    let left = state.background.drain(Duration::from_secs(60)).await;
    if left > 0 {
        tracing::warn!(left, "background work cancelled unfinished");
    }
    tracing::info!("git-s3 daemon stopped");
    result.map_err(ServerError::from)
}
