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
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::server::logging::{SessionSink, CURRENT_SINK};
use crate::session::state::DaemonState;
use crate::session::{Input, Out};

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
        let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(64);
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
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
        let state = self.state.clone();
        let out = Out::new(out_tx, 1);
        let sink = SessionSink { tx: out.sender(), verbosity: out.verbosity_handle() };
        let program = Program::try_from(start.program).unwrap_or(Program::Unspecified);
        let span = CURRENT_SINK.sync_scope(sink, || tracing::info_span!("session", program = ?program, args = ?start.args, cwd = %start.cwd));
        let counted = state.session_started();
        tokio::spawn(
            async move {
                // Counted down when the task ends, also by a panic.
                let _counted = counted;
                let input = Input::new(in_rx);
                let code = run_program(state, program, start, input, out.clone()).await;
                tracing::debug!(code, "session ended");
                out.exit(code);
            }
            .instrument(span),
        );
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
