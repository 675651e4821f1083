//! The gRPC service: version handshake, sessions (dispatched to the remote
//! helper, the LFS agent or the CLI), daemon status and shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use git_s3_proto::pb::git_s3_server::GitS3;
use git_s3_proto::pb::{
    session_input, DaemonStatusReply, DaemonStatusRequest, HelloReply, HelloRequest, Program, SessionInput, SessionOutput, SessionStart,
    ShutdownReply, ShutdownRequest, WarmClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::server::logging::{SessionSink, CURRENT_SINK};
use crate::session::state::DaemonState;
use crate::session::{Input, Out, OutputSender};

pub(crate) struct Service {
    pub(crate) state: Arc<DaemonState>,
}

#[tonic::async_trait]
impl GitS3 for Service {
    async fn hello(&self, _req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        self.state.touch();
        Ok(Response::new(HelloReply {
            version: git_s3_proto::VERSION.into(),
            pid: std::process::id(),
            uptime_seconds: self.state.started.elapsed().as_secs(),
            socket_path: self.state.socket_path.display().to_string(),
            exe_path: self.state.exe.0.display().to_string(),
            exe_mtime_ns: self.state.exe.1,
        }))
    }

    type SessionStream = UnboundedReceiverStream<Result<SessionOutput, Status>>;

    async fn session(&self, req: Request<Streaming<SessionInput>>) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = req.into_inner();
        let start = match inbound.message().await? {
            Some(SessionInput { msg: Some(session_input::Msg::Start(s)) }) => s,
            _ => return Err(Status::invalid_argument("a session must begin with SessionStart")),
        };
        let stale_binary = start.daemon_exe_mtime_ns != 0 && self.state.exe.1 != 0 && start.daemon_exe_mtime_ns != self.state.exe.1;
        if start.client_version != git_s3_proto::VERSION || stale_binary {
            tracing::info!(client = start.client_version, stale_binary, "session from another version; asking for a restart");
            return Err(Status::failed_precondition(format!(
                "daemon {} must be restarted for client {}",
                git_s3_proto::VERSION,
                start.client_version
            )));
        }
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        start_session(self.state.clone(), inbound, start, out_tx);
        Ok(Response::new(UnboundedReceiverStream::new(out_rx)))
    }

    async fn daemon_status(&self, _req: Request<DaemonStatusRequest>) -> Result<Response<DaemonStatusReply>, Status> {
        let s = &self.state;
        let usage = s.cache.usage();
        Ok(Response::new(DaemonStatusReply {
            version: git_s3_proto::VERSION.into(),
            pid: std::process::id(),
            uptime_seconds: s.started.elapsed().as_secs(),
            socket_path: s.socket_path.display().to_string(),
            active_sessions: s.active_sessions(),
            total_sessions: s.total_sessions.load(Ordering::Relaxed),
            clients: s.clients.snapshot().into_iter().map(|(key, uses, age_seconds)| WarmClient { key, uses, age_seconds }).collect(),
            cache_dir: s.cache.root().display().to_string(),
            cache_bytes: usage.bytes,
            cache_entries: usage.entries,
            cache_hits: s.cache.hits.load(Ordering::Relaxed),
            cache_misses: s.cache.misses.load(Ordering::Relaxed),
            log_file: s.log_file.display().to_string(),
        }))
    }

    async fn shutdown(&self, _req: Request<ShutdownRequest>) -> Result<Response<ShutdownReply>, Status> {
        tracing::info!("shutdown requested");
        self.state.shutdown.notify_one();
        Ok(Response::new(ShutdownReply {}))
    }
}

/// Starts a session on the daemon's tracker (`session/background.rs`): the
/// pump of the shim's stdin into the session's `Input`, and the program,
/// whose output goes to `out_tx`. The daemon awaits both at exit (bounded),
/// then cancels them.
fn start_session<S>(state: Arc<DaemonState>, inbound: S, start: SessionStart, out_tx: OutputSender)
where
    S: Stream<Item = Result<SessionInput, Status>> + Send + 'static,
{
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(64);
    state.background.spawn_session(async move {
        let mut inbound = std::pin::pin!(inbound);
        while let Some(Ok(m)) = inbound.next().await {
            let stop = match m.msg {
                Some(session_input::Msg::Stdin(b)) => in_tx.send(b).await.is_err(),
                Some(session_input::Msg::StdinEof(_)) => true,
                _ => false,
            };
            if stop {
                break;
            }
        }
    });
    let out = Out::new(out_tx, 1);
    let sink = SessionSink { tx: out.sender(), verbosity: out.verbosity_handle() };
    let program = Program::try_from(start.program).unwrap_or(Program::Unspecified);
    let span = CURRENT_SINK.sync_scope(sink, || tracing::info_span!("session", program = ?program, args = ?start.args, cwd = %start.cwd));
    let counted = state.session_started();
    let tracker = state.background.clone();
    tracker.spawn_session(
        async move {
            // Counted down when the task ends, also by a panic or a cancel.
            let _counted = counted;
            let input = Input::new(in_rx);
            let code = run_program(state, program, start, input, out.clone()).await;
            tracing::debug!(code, "session ended");
            out.exit(code);
        }
        .instrument(span),
    );
}

async fn run_program(state: Arc<DaemonState>, program: Program, start: SessionStart, input: Input, out: Out) -> i32 {
    match program {
        Program::RemoteHelper => {
            let a = crate::helper::conversation::HelperArgs { args: start.args, env: start.env, cwd: start.cwd };
            crate::helper::conversation::run(state, a, input, out).await
        }
        Program::Cli => crate::cli::dispatch::run(state, start, input, out).await,
        Program::LfsAgent => crate::lfs::agent::run(state, start, input, out).await,
        Program::Unspecified => {
            out.stderr("git-s3 daemon: unknown program in session\n");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use git_s3_proto::pb::session_output;
    use std::time::Duration;

    #[tokio::test]
    async fn a_session_and_its_stdin_pump_are_awaited_at_exit() {
        let dir = tempfile::tempdir().unwrap();
        let cache = crate::local::cache::Cache::new(dir.path().join("cache"), 1 << 20).unwrap();
        let state = Arc::new(DaemonState::new(cache, dir.path().join("sock"), dir.path().join("log")));
        // A shim that stays connected and sends nothing more.
        let (_shim, inbound) = mpsc::channel::<Result<SessionInput, Status>>(1);
        let (out_tx, mut out_rx) = mpsc::unbounded_channel();
        let start = SessionStart { program: Program::Unspecified as i32, ..Default::default() };
        start_session(state.clone(), tokio_stream::wrappers::ReceiverStream::new(inbound), start, out_tx);
        let mut code = None;
        while let Some(Ok(m)) = out_rx.recv().await {
            if let Some(session_output::Msg::ExitCode(c)) = m.msg {
                code = Some(c);
            }
        }
        assert_eq!(code, Some(2), "the program ran and answered");
        assert_eq!(state.active_sessions(), 0);
        // The pump still waits on the shim's stream: the daemon's exit
        // waits for it, then cancels it (it was not left running unseen).
        assert_eq!(state.background.drain(Duration::from_millis(20)).await, 1, "the stdin pump was tracked");
    }
}
