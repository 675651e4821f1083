//! The field server: a proxy in front of the test S3 server (moto) that
//! behaves like Amazon S3 reached over a real network. On demand, and with a
//! fixed seed, it adds latency and caps bandwidth, terminates TLS with a CA
//! made for the test run, enforces bucket regions as S3 does, injects faults
//! on a share of chosen requests, serves as an HTTP forward proxy
//! (`CONNECT`), and counts requests and bytes so tests can assert how many
//! round trips an operation made (requests, connections, TLS handshakes, and
//! the critical path: how many of them were waited for one after the
//! other). Loopback only; started by the tests.
//!
//! One port serves everything: plain HTTP, TLS (when enabled; told apart by
//! the first byte of a connection) and proxy requests. As a proxy it also
//! answers as Amazon S3 itself (`s3.<region>.amazonaws.com`,
//! `<bucket>.s3.<region>.amazonaws.com`; TLS through `CONNECT` when enabled),
//! so a client with no endpoint override runs its real AWS code path.

mod aws;
mod conditions;
mod counters;
mod faults;
mod forward;
mod kinds;
mod policy;
mod regions;
mod server;
mod shaping;
mod timeline;
mod tls;
mod uploads;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use aws::{AwsHost, AwsRequest};
pub use conditions::{FieldConditions, ALL_KINDS};
pub use counters::Counts;
pub use faults::{Fault, FaultAction};
pub use kinds::RequestKind;
pub use policy::BucketPolicyMode;
pub use regions::RegionAnswer;
pub use timeline::{critical_path, RequestRecord};
pub use tls::TestCa;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What can change while the server runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    latency_up: Duration,
    latency_down: Duration,
    bandwidth: Option<u64>,
    regions: HashMap<String, String>,
    region_answer: RegionAnswer,
    refuse_connect: bool,
    /// Listings ignore `encoding-type=url` (raw keys, no `EncodingType`),
    /// as some S3-compatible servers do.
    list_ignores_encoding: bool,
    conditional_writes: ConditionalWrites,
    policy: BucketPolicyMode,
}

/// What the store does with the conditions of a conditional write
/// (`If-None-Match` / `If-Match` on a PUT or a CompleteMultipartUpload).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConditionalWrites {
    /// Enforced, as S3 does (the default).
    #[default]
    Enforced,
    /// Accepted and ignored: the headers are dropped before the store sees
    /// them (a store that does not implement them and does not say so).
    Ignored,
    /// Answered `501 NotImplemented` (an S3-style XML error), nothing written.
    NotImplemented,
}

pub(crate) struct Shared {
    settings: Mutex<Settings>,
    faults: Mutex<faults::FaultPlan>,
    counters: Arc<counters::Counters>,
    /// The store behind us, `host:port`.
    upstream: String,
    /// Our own `host:port`.
    self_authority: String,
    upstream_client: forward::Upstream,
    /// One lock per `bucket/key` under a conditional write: S3 checks the
    /// condition and writes atomically, moto does not (it checks, then
    /// writes, on concurrent threads), so the field server serializes them.
    conditional_writes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Upload ids of the multipart uploads the store completed: S3 answers
    /// `404 NoSuchUpload` to a second `CompleteMultipartUpload` of one (a
    /// client retrying after the answer was lost), moto answers 200 again.
    completed_uploads: Mutex<std::collections::HashSet<String>>,
    /// When each multipart upload was created (moto lists a fixed date).
    upload_times: uploads::UploadTimes,
    /// TLS for `CONNECT` tunnels to S3's host names (with TLS enabled).
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The requests made to S3's host names.
    aws_requests: Mutex<Vec<AwsRequest>>,
}

impl Shared {
    fn settings(&self) -> Settings {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn draw(&self, request: &kinds::Classified) -> Option<FaultAction> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner()).draw(request)
    }

    fn conditional_write_lock(&self, bucket: &str, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.conditional_writes.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(format!("{bucket}/{key}")).or_default().clone()
    }

    fn record_aws(&self, request: AwsRequest) {
        let mut r = self.aws_requests.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() < 100_000 {
            r.push(request);
        }
    }

    fn upload_completed(&self, upload_id: &str) -> bool {
        self.completed_uploads.lock().unwrap_or_else(|p| p.into_inner()).contains(upload_id)
    }

    fn mark_upload_completed(&self, upload_id: String) {
        self.completed_uploads.lock().unwrap_or_else(|p| p.into_inner()).insert(upload_id);
    }

    async fn round_trip(&self) {
        let s = self.settings();
        let rtt = s.latency_up + s.latency_down;
        if !rtt.is_zero() {
            tokio::time::sleep(rtt).await;
        }
    }
}

/// A running field server (stopped when dropped).
pub struct FieldServer {
    /// The S3 endpoint: `http://127.0.0.1:<port>`, or `https://…` with TLS.
    pub url: String,
    /// The same port as an HTTP forward proxy: `http://127.0.0.1:<port>`.
    pub proxy_url: String,
    ca: Option<TestCa>,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FieldServer {
    /// A field server in front of the test S3 server ([`crate::endpoint`]),
    /// plain HTTP, with nothing added until asked.
    pub fn start() -> FieldServer {
        FieldServer::start_at(crate::endpoint(), false)
    }

    /// Like [`FieldServer::start`], serving TLS (and plain HTTP, for the proxy).
    pub fn start_tls() -> FieldServer {
        FieldServer::start_at(crate::endpoint(), true)
    }

    /// In front of `upstream` (`http://host:port`).
    pub fn start_at(upstream: &str, tls: bool) -> FieldServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the field server");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("field server address");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("field-server")
            .enable_all()
            .build()
            .expect("field server runtime");
        let ca = tls.then(TestCa::generate);
        let acceptor = ca.as_ref().map(|c| c.acceptor());
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        let shared = {
            let _enter = runtime.enter();
            Arc::new(Shared {
                settings: Mutex::new(Settings::default()),
                faults: Mutex::new(faults::FaultPlan::default()),
                counters: Arc::new(counters::Counters::default()),
                upstream,
                self_authority: addr.to_string(),
                upstream_client: forward::upstream_client(),
                conditional_writes: Mutex::new(HashMap::new()),
                completed_uploads: Mutex::new(std::collections::HashSet::new()),
                upload_times: uploads::UploadTimes::default(),
                tls: acceptor.clone(),
                aws_requests: Mutex::new(Vec::new()),
            })
        };
        let s = shared.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            server::serve(listener, s, acceptor).await;
        });
        let scheme = if tls { "https" } else { "http" };
        FieldServer { url: format!("{scheme}://{addr}"), proxy_url: format!("http://{addr}"), ca, shared, runtime: Some(runtime) }
    }

    fn settings(&self, f: impl FnOnce(&mut Settings)) {
        f(&mut self.shared.settings.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// One-way delays: client to store (`up`) and back (`down`). Every
    /// request pays both; a new connection pays another round trip, and a
    /// TLS handshake one more.
    pub fn set_latency(&self, up: Duration, down: Duration) {
        self.settings(|s| {
            s.latency_up = up;
            s.latency_down = down;
        });
    }

    /// Caps every body (each direction, each request) at `bytes_per_second`;
    /// `None` removes the cap.
    pub fn set_bandwidth(&self, bytes_per_second: Option<u64>) {
        self.settings(|s| s.bandwidth = bytes_per_second);
    }

    /// `bucket` lives in `region`: requests signed for another region get
    /// the wrong-region answer (see [`FieldServer::set_region_answer`]).
    pub fn set_bucket_region(&self, bucket: &str, region: &str) {
        self.settings(|s| {
            s.regions.insert(bucket.to_string(), region.to_string());
        });
    }

    pub fn set_region_answer(&self, answer: RegionAnswer) {
        self.settings(|s| s.region_answer = answer);
    }

    /// Refuse `CONNECT` and proxy requests (403), as a proxy that does not
    /// allow the destination.
    pub fn set_refuse_proxy(&self, refuse: bool) {
        self.settings(|s| s.refuse_connect = refuse);
    }

    /// Listings ignore `encoding-type=url`: keys come as they are, without
    /// `<EncodingType>` (as some S3-compatible servers answer).
    pub fn set_list_ignores_encoding(&self, ignore: bool) {
        self.settings(|s| s.list_ignores_encoding = ignore);
    }

    /// The requests made to Amazon S3's host names through this server as a
    /// proxy, in order of their answers.
    pub fn aws_requests(&self) -> Vec<AwsRequest> {
        self.shared.aws_requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What the store does with conditional writes from now on.
    pub fn set_conditional_writes(&self, mode: ConditionalWrites) {
        self.settings(|s| s.conditional_writes = mode);
    }

    /// What the bucket's policy demands of every request (see
    /// [`BucketPolicyMode`]); refused requests get S3's answer.
    pub fn set_bucket_policy(&self, mode: BucketPolicyMode) {
        self.settings(|s| s.policy = mode);
    }

    /// Replaces the fault rules; draws restart from `seed`.
    pub fn set_faults(&self, seed: u64, faults: Vec<Fault>) {
        *self.shared.faults.lock().unwrap_or_else(|p| p.into_inner()) = faults::FaultPlan::new(seed, faults);
    }

    pub fn clear_faults(&self) {
        self.set_faults(0, Vec::new());
    }

    pub fn counts(&self) -> Counts {
        self.shared.counters.snapshot()
    }

    pub fn reset_counts(&self) {
        self.shared.counters.reset();
        self.shared.aws_requests.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The S3 requests since the last [`FieldServer::reset_counts`], with
    /// when each started and finished (for [`critical_path`] over a part
    /// of them).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.counters.timeline.records()
    }

    /// The CA (with TLS).
    pub fn ca(&self) -> Option<&TestCa> {
        self.ca.as_ref()
    }

    /// The CA's PEM file (with TLS): for `AWS_CA_BUNDLE` or `ca_bundle`.
    pub fn ca_bundle(&self) -> Option<&Path> {
        self.ca.as_ref().map(|c| c.bundle_path())
    }

    /// `host:port`.
    pub fn authority(&self) -> &str {
        &self.shared.self_authority
    }
}

impl Drop for FieldServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests;
