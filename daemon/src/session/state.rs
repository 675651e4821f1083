//! What the daemon keeps between sessions: warm clients, the cache, counters.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::local::cache::Cache;
use crate::s3::clients::{redact_userinfo, BucketRegions, ClientSpec, S3Clients};
use crate::s3::conditional::{endpoint_of, unsafe_allowed, ConditionalWrites, Gate};
use crate::s3::config_files::ConfigFiles;
use crate::s3::memory::Memory;
use crate::s3::store::S3Store;
use crate::s3::url::RemoteUrl;
use crate::session::background::Background;

/// The LFS agents' bucket probes: by a hash of the URL and the caller's
/// configuration, when and what the last one found (`lfs/agent.rs`).
pub(crate) type LfsProbes = HashMap<u64, (std::time::Instant, Result<(), String>)>;

pub(crate) struct DaemonState {
    pub(crate) clients: Arc<S3Clients>,
    /// Whether each (endpoint, bucket) enforces conditional writes (probed
    /// before the first write, again after a day).
    pub(crate) conditional: Arc<ConditionalWrites>,
    pub(crate) cache: Arc<Cache>,
    /// The callers' AWS config and credentials files, read again only when changed.
    pub(crate) config_files: Arc<ConfigFiles>,
    /// What the storage formats remember of locations (held manifests, `refs/` scans).
    pub(crate) memory: Arc<Memory>,
    pub(crate) started: Instant,
    pub(crate) socket_path: PathBuf,
    pub(crate) log_file: PathBuf,
    /// Sessions running now (a `SessionGuard` each): the idle wait watches it.
    sessions: tokio::sync::watch::Sender<u64>,
    pub(crate) total_sessions: AtomicU64,
    /// Work finished after a session has answered (`session/background.rs`).
    pub(crate) background: Arc<Background>,
    /// Held by the agent that probes: probes take turns.
    pub(crate) lfs_probes: tokio::sync::Mutex<LfsProbes>,
    /// Tokio's clock (a paused test clock moves it).
    pub(crate) last_activity: Mutex<tokio::time::Instant>,
    pub(crate) shutdown: tokio::sync::Notify,
    /// Our executable and its mtime at start (shims restart us when it changes).
    pub(crate) exe: (PathBuf, u64),
}

impl DaemonState {
    pub(crate) fn new(cache: Cache, socket_path: PathBuf, log_file: PathBuf) -> DaemonState {
        DaemonState {
            clients: Arc::new(S3Clients::default()),
            conditional: Arc::new(ConditionalWrites::remembering_in(git_s3_proto::paths::state_dir().join("conditional-writes"))),
            cache: Arc::new(cache),
            config_files: Arc::new(ConfigFiles::default()),
            memory: Arc::new(Memory::default()),
            started: Instant::now(),
            socket_path,
            log_file,
            sessions: tokio::sync::watch::Sender::new(0),
            total_sessions: AtomicU64::new(0),
            background: Arc::new(Background::default()),
            lfs_probes: Default::default(),
            last_activity: Mutex::new(tokio::time::Instant::now()),
            shutdown: tokio::sync::Notify::new(),
            exe: std::env::current_exe().ok().and_then(|p| git_s3_proto::client::exe_mtime_ns(&p).map(|m| (p, m))).unwrap_or_default(),
        }
    }

    /// The store for a remote, through the warm client the caller's
    /// environment selects, in the bucket's region once S3 told it. Its
    /// writes wait for the bucket's conditional-writes probe (`s3/conditional.rs`).
    pub(crate) async fn store_for(&self, env: &HashMap<String, String>, url: &RemoteUrl) -> S3Store {
        // The caller's config files, looked at on a blocking thread (read
        // again only when they changed).
        let (files, e, profile) = (self.config_files.clone(), env.clone(), url.profile.clone());
        let spec = match tokio::task::spawn_blocking(move || ClientSpec::from_env_with(&files, &e, profile.as_deref())).await {
            Ok(spec) => spec,
            Err(_) => ClientSpec::from_env(env, url.profile.as_deref()),
        };
        let spec = self.clients.spec_for_bucket(spec, &url.bucket);
        let warm = self.clients.get(spec.clone()).await;
        // A bucket is the same wherever the request was signed: no region here.
        let origin = warm.spec.endpoint.as_deref().unwrap_or("aws").to_string();
        let (trust, proxy) = (spec.network.trust_description(), spec.network.proxy_for(spec.endpoint.as_deref()).map(redact_userinfo));
        let virtual_host = spec.virtual_host_for(&url.bucket);
        let advice = spec.expired_token_advice();
        let regions = BucketRegions { clients: self.clients.clone(), spec, bucket: url.bucket.clone() };
        let store = S3Store::new(warm.client.clone(), &url.bucket, &origin)
            .with_memory(self.memory.clone())
            .with_region_switch(Arc::new(regions))
            .with_network_hint(trust, proxy)
            .with_virtual_host(virtual_host)
            .with_expired_token_advice(advice);
        let gate = Gate {
            writes: self.conditional.clone(),
            endpoint: endpoint_of(&store),
            prefix: url.prefix.clone(),
            allow_unsafe: unsafe_allowed(env),
            warned: Default::default(),
        };
        store.with_write_gate(Arc::new(gate))
    }

    pub(crate) fn touch(&self) {
        if let Ok(mut t) = self.last_activity.lock() {
            *t = tokio::time::Instant::now();
        }
    }

    /// Counts a session until the guard is dropped (also when the session
    /// panics: its task unwinds and drops it).
    pub(crate) fn session_started(self: &Arc<Self>) -> SessionGuard {
        self.sessions.send_modify(|n| *n += 1);
        self.total_sessions.fetch_add(1, Ordering::Relaxed);
        self.touch();
        SessionGuard { state: self.clone() }
    }

    pub(crate) fn active_sessions(&self) -> u64 {
        *self.sessions.borrow()
    }

    pub(crate) fn idle_for(&self) -> Duration {
        if self.active_sessions() > 0 {
            return Duration::ZERO;
        }
        self.last_activity.lock().map(|t| t.elapsed()).unwrap_or_default()
    }

    /// Returns once no session has run for `timeout`: waits on the session
    /// count and a timer, no polling.
    pub(crate) async fn idle(&self, timeout: Duration) {
        let mut sessions = self.sessions.subscribe();
        loop {
            if *sessions.borrow_and_update() > 0 {
                if sessions.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                continue;
            }
            let idle = self.idle_for();
            if idle >= timeout {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(timeout - idle) => {}
                _ = sessions.changed() => {}
            }
        }
    }
}

/// One running session, counted from `session_started` until dropped.
pub(crate) struct SessionGuard {
    state: Arc<DaemonState>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.state.sessions.send_modify(|n| *n = n.saturating_sub(1));
        self.state.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (Arc<DaemonState>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"), 1 << 20).unwrap();
        (Arc::new(DaemonState::new(cache, dir.path().join("sock"), dir.path().join("log"))), dir)
    }

    #[tokio::test]
    async fn a_panicking_session_is_counted_down() {
        let (state, _dir) = state();
        let guard = state.session_started();
        assert_eq!(state.active_sessions(), 1);
        let task = tokio::spawn(async move {
            let _guard = guard;
            panic!("a session panics");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(state.active_sessions(), 0, "the guard counted the session down while unwinding");
        assert_eq!(state.total_sessions.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn idle_waits_for_the_last_session_to_end() {
        let (state, _dir) = state();
        let guard = state.session_started();
        let waiter = {
            let state = state.clone();
            tokio::spawn(async move { state.idle(Duration::ZERO).await })
        };
        // A session runs: not idle, however long it runs.
        assert!(tokio::time::timeout(Duration::from_millis(50), state.idle(Duration::ZERO)).await.is_err());
        assert!(!waiter.is_finished());
        drop(guard);
        // Woken by the count, not by a poll.
        tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("idle once the session ended").unwrap();
    }
}
