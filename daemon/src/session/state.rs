//! What the daemon keeps between sessions: warm clients, the cache, counters.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::local::cache::Cache;
use crate::s3::clients::{redact_userinfo, BucketRegions, ClientSpec, S3Clients};
use crate::s3::conditional::{endpoint_of, unsafe_allowed, ConditionalWrites, Gate};
use crate::s3::store::S3Store;
use crate::s3::url::RemoteUrl;

pub struct DaemonState {
    pub clients: Arc<S3Clients>,
    /// Whether each (endpoint, bucket) enforces conditional writes (probed
    /// before the first write, again after a day).
    pub conditional: Arc<ConditionalWrites>,
    pub cache: Arc<Cache>,
    pub started: Instant,
    pub socket_path: PathBuf,
    pub log_file: PathBuf,
    pub active_sessions: AtomicU64,
    pub total_sessions: AtomicU64,
    pub last_activity: Mutex<Instant>,
    pub shutdown: tokio::sync::Notify,
    /// Our executable and its mtime at start (shims restart us when it changes).
    pub exe: (PathBuf, u64),
}

impl DaemonState {
    pub fn new(cache: Cache, socket_path: PathBuf, log_file: PathBuf) -> DaemonState {
        DaemonState {
            clients: Arc::new(S3Clients::default()),
            conditional: Arc::new(ConditionalWrites::default()),
            cache: Arc::new(cache),
            started: Instant::now(),
            socket_path,
            log_file,
            active_sessions: AtomicU64::new(0),
            total_sessions: AtomicU64::new(0),
            last_activity: Mutex::new(Instant::now()),
            shutdown: tokio::sync::Notify::new(),
            exe: std::env::current_exe().ok().and_then(|p| git_s3_proto::client::exe_mtime_ns(&p).map(|m| (p, m))).unwrap_or_default(),
        }
    }

    /// The store for a remote, through the warm client the caller's
    /// environment selects, in the bucket's region once S3 told it. Its
    /// writes wait for the bucket's conditional-writes probe (`s3/conditional.rs`).
    pub async fn store_for(&self, env: &HashMap<String, String>, url: &RemoteUrl) -> S3Store {
        let spec = ClientSpec::from_env(env, url.profile.as_deref());
        let spec = self.clients.spec_for_bucket(spec, &url.bucket);
        let warm = self.clients.get(spec.clone()).await;
        // A bucket is the same wherever the request was signed: no region here.
        let origin = warm.spec.endpoint.as_deref().unwrap_or("aws").to_string();
        let (trust, proxy) = (spec.network.trust_description(), spec.network.proxy_for(spec.endpoint.as_deref()).map(redact_userinfo));
        let virtual_host = spec.virtual_host_for(&url.bucket);
        let advice = spec.expired_token_advice();
        let regions = BucketRegions { clients: self.clients.clone(), spec, bucket: url.bucket.clone() };
        let store = S3Store::new(warm.client.clone(), &url.bucket, &origin)
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

    pub fn touch(&self) {
        if let Ok(mut t) = self.last_activity.lock() {
            *t = Instant::now();
        }
    }

    pub fn session_started(&self) {
        self.active_sessions.fetch_add(1, Ordering::SeqCst);
        self.total_sessions.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    pub fn session_ended(&self) {
        self.active_sessions.fetch_sub(1, Ordering::SeqCst);
        self.touch();
    }

    pub fn idle_for(&self) -> std::time::Duration {
        if self.active_sessions.load(Ordering::SeqCst) > 0 {
            return std::time::Duration::ZERO;
        }
        self.last_activity.lock().map(|t| t.elapsed()).unwrap_or_default()
    }
}
