//! The S3 store: every S3 call the daemon makes, with typed errors, a tracing
//! span each, streaming to and from files, and multipart for large objects.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::io::AsyncWriteExt;
use tracing::Instrument;

use super::memory::Memory;
use super::write_options::{self, BucketPolicy};

pub mod versions;

/// Objects above this size are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 64 << 20;
/// Size of one part of a multipart upload (of a stream; a file's parts
/// grow with it: [`part_size`]).
pub const PART_SIZE: u64 = 16 << 20;
/// S3's limits on a multipart upload: parts, and the size of one (all
/// but the last part at least the minimum).
pub const MAX_PARTS: u64 = 10_000;
pub const MIN_PART_SIZE: u64 = 5 << 20;
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// S3's largest object (5 TiB).
pub const MAX_OBJECT_SIZE: u64 = 5 << 40;

/// The part size for an object of `len` bytes: [`PART_SIZE`], or more for
/// an object that would need more than [`MAX_PARTS`] of them (rounded up to
/// a whole MiB; every part the same size but the last, as R2 wants), never
/// more than S3's 5 GiB. `None` above S3's largest object (5 TiB).
pub fn part_size(len: u64) -> Option<u64> {
    const MIB: u64 = 1 << 20;
    let needed = len.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    let size = needed.max(PART_SIZE).max(MIN_PART_SIZE);
    (len <= MAX_OBJECT_SIZE && size <= MAX_PART_SIZE && len.div_ceil(size) <= MAX_PARTS).then_some(size)
}
/// Parts uploaded at once.
const PART_CONCURRENCY: usize = 4;
/// The largest small object (HEAD, `manifest.json`, a lock) read into memory.
pub const MAX_SMALL_OBJECT: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("bucket '{0}' does not exist (or is in another region); create it or fix the remote URL")]
    NoSuchBucket(String),
    #[error("access denied to s3://{bucket}/{key}: {message}. Check the credentials/profile and the bucket policy")]
    AccessDenied { bucket: String, key: String, message: String },
    #[error("the AWS credentials were rejected ({0}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile")]
    InvalidCredentials(String),
    #[error("no AWS credentials found ({0}); configure a profile (`aws configure`), set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or use s3://profile@bucket/prefix")]
    NoCredentials(String),
    /// The caller's credential chain failed (s3/credentials: one line that
    /// says what to do).
    #[error("{0}")]
    Credentials(crate::s3::credentials::messages::IdentityError),
    /// S3 answered `ExpiredToken`: what to renew.
    #[error("S3 refused the request (ExpiredToken): {0}")]
    ExpiredToken(String),
    #[error("cannot connect to the S3 endpoint: {0}")]
    Connect(String),
    #[error("the S3 endpoint's TLS certificate did not verify against {trust}: {reason}")]
    Certificate { trust: String, reason: String },
    #[error("cannot resolve {host}, the host name of bucket '{bucket}' with virtual-hosted addressing; if the endpoint serves path-style requests (MinIO, Ceph RGW…), set `addressing_style = path` under `s3 =` in the AWS profile, or GIT_REMOTE_S3_PATH_STYLE=1")]
    VirtualHostDns { bucket: String, host: String },
    #[error("the proxy {proxy} did not let the connection to S3 through ({reason}); check HTTPS_PROXY/HTTP_PROXY and NO_PROXY")]
    Proxy { proxy: String, reason: String },
    #[error(
        "bucket '{bucket}' is in region {region}, not in the region the request was signed for; set AWS_REGION={region} (or the profile's region)"
    )]
    WrongRegion { bucket: String, region: String },
    #[error("S3 keeps answering 307 TemporaryRedirect for bucket '{bucket}' (region {region}): a bucket created minutes ago is not reachable everywhere yet; try again in a few minutes, or set AWS_REGION={region}")]
    TemporaryRedirect { bucket: String, region: String },
    #[error(
        "S3 did not answer a request for s3://{bucket}/{key} in time ({reason}); check the network and proxy, or raise GIT_S3_READ_TIMEOUT_SECONDS"
    )]
    Timeout { bucket: String, key: String, reason: String },
    #[error("another write to s3://{bucket}/{key} was in progress each time this one was tried (409 ConditionalRequestConflict); try again")]
    Conflict { bucket: String, key: String },
    #[error("S3 kept throttling requests to s3://{bucket}/{key} ({code}, every attempt); check the request rate on this bucket's prefix, try again later, or with fewer parallel transfers (lfs.concurrenttransfers)")]
    Throttled { bucket: String, key: String, code: String },
    #[error("s3://{bucket}/{key} not found")]
    NotFound { bucket: String, key: String },
    #[error("precondition failed on s3://{bucket}/{key}")]
    PreconditionFailed { bucket: String, key: String },
    /// `501 NotImplemented`: the store does not implement a header or
    /// operation of the request.
    #[error("the S3 endpoint does not implement a request on s3://{bucket}/{key}: {message}")]
    NotImplemented { bucket: String, key: String, message: String },
    /// Writes refused before anything was written (the store does not
    /// enforce conditional writes: `s3/conditional.rs`). One line, final.
    #[error("{0}")]
    WritesRefused(String),
    #[error("S3 error on s3://{bucket}/{key}: {message}")]
    Other { bucket: String, key: String, message: String },
    /// A download that broke off (connection cut, short body, a stall): worth retrying.
    #[error("the download of s3://{bucket}/{key} broke off: {message}; check the network and proxy (a stalled answer ends after GIT_S3_READ_TIMEOUT_SECONDS, at most 20 s)")]
    Interrupted { bucket: String, key: String, message: String },
    #[error("local file error: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
    pub fn is_interrupted(&self) -> bool {
        matches!(self, StoreError::Interrupted { .. })
    }
    pub fn is_precondition_failed(&self) -> bool {
        matches!(self, StoreError::PreconditionFailed { .. })
    }
    /// A conditional write that met another operation on the same key (409):
    /// not a lost race; worth trying again.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
    /// Errors that no retry or other ref will fix (the whole session fails).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            StoreError::NoSuchBucket(_)
                | StoreError::InvalidCredentials(_)
                | StoreError::NoCredentials(_)
                | StoreError::Credentials(_)
                | StoreError::ExpiredToken(_)
                | StoreError::Connect(_)
                | StoreError::Certificate { .. }
                | StoreError::Proxy { .. }
                | StoreError::VirtualHostDns { .. }
                | StoreError::WrongRegion { .. }
                | StoreError::AccessDenied { .. }
                | StoreError::WritesRefused(_)
        )
    }
}

fn classify<E>(err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>, bucket: &str, key: &str) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let Some(identity) = identity_error(&err) {
        return StoreError::Credentials(identity);
    }
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    let text = format!("{}", DisplayErrorContext(&err));
    let b = bucket.to_string();
    let k = key.to_string();
    if status == Some(307) {
        let region = wrong_region(&err).flatten().unwrap_or_else(|| "unknown".to_string());
        return StoreError::TemporaryRedirect { bucket: b, region };
    }
    if let Some(region) = wrong_region(&err) {
        return StoreError::WrongRegion { bucket: b, region: region.unwrap_or_else(|| "another region".to_string()) };
    }
    match (&err, code.as_deref(), status) {
        (SdkError::ServiceError(_), Some("NoSuchBucket"), _) => StoreError::NoSuchBucket(b),
        (SdkError::ServiceError(_), Some("NoSuchKey" | "NotFound"), _) | (SdkError::ServiceError(_), _, Some(404)) => {
            if code.as_deref() == Some("NoSuchBucket") {
                StoreError::NoSuchBucket(b)
            } else {
                StoreError::NotFound { bucket: b, key: k }
            }
        }
        (_, Some("NotImplemented"), _) | (_, _, Some(501)) => {
            StoreError::NotImplemented { bucket: b, key: k, message: first_line(err.message().unwrap_or("501 Not Implemented")) }
        }
        (_, Some("PreconditionFailed"), _) | (_, _, Some(412)) => StoreError::PreconditionFailed { bucket: b, key: k },
        (_, Some("ConditionalRequestConflict"), _) | (_, _, Some(409)) => StoreError::Conflict { bucket: b, key: k },
        (_, Some(c @ ("SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded" | "TooManyRequests")), _) => {
            StoreError::Throttled { bucket: b, key: k, code: c.to_string() }
        }
        (_, Some("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken"), _) => {
            StoreError::InvalidCredentials(code.unwrap_or_default())
        }
        (_, Some("AccessDenied" | "AllAccessDisabled"), _) | (SdkError::ServiceError(_), _, Some(403)) => {
            StoreError::AccessDenied { bucket: b, key: k, message: err.message().unwrap_or("403 Forbidden").to_string() }
        }
        (SdkError::DispatchFailure(d), _, _) if d.is_timeout() && !text.contains("connect timeout") => {
            StoreError::Timeout { bucket: b, key: k, reason: short_reason(&text) }
        }
        (SdkError::TimeoutError(_), _, _) => StoreError::Timeout { bucket: b, key: k, reason: short_reason(&text) },
        // The answer broke off or stalled before the SDK had read it all.
        (SdkError::ResponseError(_), _, _) => StoreError::Interrupted { bucket: b, key: k, message: short_reason(&text) },
        (SdkError::DispatchFailure(d), _, _) if d.is_io() || d.is_timeout() => StoreError::Connect(short_reason(&text)),
        (SdkError::DispatchFailure(_), _, _) if text.contains("credential") => StoreError::NoCredentials(short_reason(&text)),
        (SdkError::DispatchFailure(_), _, _) => StoreError::Connect(short_reason(&text)),
        (SdkError::ServiceError(_), Some(c), _) => {
            let message = err.message().map(|m| format!("{c}: {m}")).unwrap_or_else(|| c.to_string());
            StoreError::Other { bucket: b, key: k, message: first_line(&message) }
        }
        (SdkError::ServiceError(_), None, Some(s)) => StoreError::Other { bucket: b, key: k, message: format!("HTTP {s}") },
        _ => StoreError::Other { bucket: b, key: k, message: first_line(&text) },
    }
}

/// The caller's credential chain's error, if that is why a request failed.
fn identity_error(err: &(dyn std::error::Error + 'static)) -> Option<crate::s3::credentials::messages::IdentityError> {
    let mut source = err.source();
    while let Some(e) = source {
        if let Some(i) = e.downcast_ref::<crate::s3::credentials::messages::IdentityError>() {
            return Some(i.clone());
        }
        source = e.source();
    }
    None
}

/// When S3 says the bucket lives in another region (`301 PermanentRedirect`,
/// a bare 301 to a HEAD, `307`, `400 AuthorizationHeaderMalformed`): that
/// region if the answer names it (`x-amz-bucket-region`, `<Region>`, or the
/// `<Endpoint>` of a redirect), else `Some(None)`.
fn wrong_region<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<Option<String>> {
    let raw = err.raw_response()?;
    let status = raw.status().as_u16();
    let redirect =
        matches!(status, 301 | 307) || matches!(err.code(), Some("PermanentRedirect" | "TemporaryRedirect" | "AuthorizationHeaderMalformed"));
    if !redirect {
        return None;
    }
    let header = raw.headers().get("x-amz-bucket-region").map(str::to_string);
    let body = raw.body().bytes().map(String::from_utf8_lossy).unwrap_or_default();
    let in_body = xml_element(&body, "Region").or_else(|| xml_element(&body, "Endpoint").and_then(|e| region_of_endpoint(&e)));
    // A 307's Location: `https://bucket.s3-eu-west-1.amazonaws.com/key`.
    let location = raw.headers().get("location").and_then(|l| {
        let host = l.split("://").nth(1).unwrap_or(l).split(['/', '?']).next().unwrap_or("");
        region_of_endpoint(host)
    });
    let region = header.or(in_body).or(location).filter(|r| is_region_name(r));
    // An AuthorizationHeaderMalformed that names no region is about something else.
    if region.is_none() && !matches!(status, 301 | 307) && err.code() != Some("PermanentRedirect") {
        return None;
    }
    Some(region)
}

fn xml_element(body: &str, name: &str) -> Option<String> {
    let start = body.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + body[start..].find(&format!("</{name}>"))?;
    Some(body[start..end].trim().to_string())
}

/// `bucket.s3.eu-west-1.amazonaws.com`, `s3-eu-west-1.amazonaws.com` → `eu-west-1`.
fn region_of_endpoint(endpoint: &str) -> Option<String> {
    let host = endpoint.split("://").last().unwrap_or(endpoint);
    let labels: Vec<&str> = host.split('.').collect();
    let at = labels.iter().position(|l| *l == "s3" || l.starts_with("s3-"))?;
    let label = labels[at];
    let region = match label.strip_prefix("s3-") {
        Some(r) => r,
        None => labels.get(at + 1)?,
    };
    (region != "amazonaws" && is_region_name(region)).then(|| region.to_string())
}

/// Plausible region names only (what a redirect says is untrusted input).
fn is_region_name(r: &str) -> bool {
    !r.is_empty() && r.len() <= 32 && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// How many times a request that S3 answers `307 TemporaryRedirect` in the
/// bucket's own region is sent in all.
pub const TEMPORARY_REDIRECT_ATTEMPTS: u32 = 5;

/// How many times a conditional write that meets a `409
/// ConditionalRequestConflict` is tried in all (a multipart upload: uploaded).
pub const CONFLICT_ATTEMPTS: u32 = 8;

/// The wait before try `attempt + 1` after a conflict: exponential from
/// 100 ms, at most 2 s, with jitter so racing writers spread out.
fn conflict_backoff(attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let base = Duration::from_millis(100).saturating_mul(1 << (attempt.saturating_sub(1)).min(5)).min(Duration::from_secs(2));
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let jitter = h.finish() % (base.as_millis() as u64 / 2 + 1);
    base / 2 + Duration::from_millis(jitter)
}

fn is_conflict<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    err.code() == Some("ConditionalRequestConflict") || err.raw_response().map(|r| r.status().as_u16()) == Some(409)
}

/// Gives a store the client for another region when S3 says its bucket
/// lives there (and remembers that for the bucket).
pub trait RegionSwitch: Send + Sync {
    fn client_for_region<'a>(&'a self, region: &'a str) -> futures::future::BoxFuture<'a, aws_sdk_s3::Client>;
}

/// Decides, before a store's first write, whether it may write at all (the
/// conditional-writes probe, `s3/conditional.rs`): every write of an
/// [`S3Store`] that has one asks it first.
pub trait WriteGate: Send + Sync {
    /// Ok when writes may go ahead; else the error that refuses them.
    /// `store` is the store asking (with no gate: the probe writes through it).
    fn check<'a>(&'a self, store: &'a S3Store) -> futures::future::BoxFuture<'a, Result<(), StoreError>>;
}

/// A request body that can be sent again (a retry after a conflict or a
/// region switch): bytes in memory, or a file.
enum Source<'a> {
    Bytes(bytes::Bytes),
    File(&'a Path),
}

impl Source<'_> {
    async fn stream(&self) -> Result<ByteStream, String> {
        match self {
            Source::Bytes(b) => Ok(ByteStream::from(b.clone())),
            Source::File(p) => ByteStream::from_path(p).await.map_err(|e| e.to_string()),
        }
    }
}

/// The SDK's error text without its debug dump of the error structure.
fn short_reason(text: &str) -> String {
    let cut = [" (DispatchFailure", " (TimeoutError", " (ResponseError"].iter().filter_map(|m| text.find(m)).min().unwrap_or(text.len());
    first_line(text[..cut].trim_start_matches("dispatch failure: ").trim_start_matches("response error: ").trim_start_matches("other: "))
}

fn first_line(s: &str) -> String {
    let s = s.lines().next().unwrap_or(s);
    if s.len() > 400 {
        format!("{}…", &s[..s.char_indices().nth(400).map(|(i, _)| i).unwrap_or(s.len())])
    } else {
        s.to_string()
    }
}

#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: SystemTime,
}

/// A multipart upload neither completed nor aborted.
#[derive(Debug, Clone)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: SystemTime,
}

impl ObjectInfo {
    pub fn age(&self) -> std::time::Duration {
        SystemTime::now().duration_since(self.last_modified).unwrap_or_default()
    }
}

/// How many times a download that breaks off is tried in all.
pub const DOWNLOAD_ATTEMPTS: u32 = 5;

/// The answer to a conditional GET.
#[derive(Debug)]
pub enum Conditional {
    Missing,
    NotModified,
    Found { data: Vec<u8>, etag: String },
}

/// A producer's output staged in a local file by [`S3Store::stage`]:
/// complete (`overflow` None), or past the single-PUT threshold, with the
/// part that crossed it in memory and the rest still to be read.
pub struct Staged<R> {
    reader: R,
    staged: u64,
    overflow: Option<Vec<u8>>,
}

impl<R> Staged<R> {
    /// Bytes read so far.
    pub fn len(&self) -> u64 {
        self.staged
    }
    pub fn is_empty(&self) -> bool {
        self.staged == 0
    }
    /// True when the producer's output ended within the threshold.
    pub fn is_complete(&self) -> bool {
        self.overflow.is_none()
    }
}

/// Reads one part (up to PART_SIZE bytes) and tees it; empty at the end.
async fn read_part<R: tokio::io::AsyncRead + Unpin>(reader: &mut R, tee: &mut tokio::fs::File) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(PART_SIZE as usize);
    reader.take(PART_SIZE).read_to_end(&mut buf).await?;
    tee.write_all(&buf).await?;
    Ok(buf)
}

/// Condition for a write.
#[derive(Debug, Clone, Default)]
pub enum WriteCondition {
    #[default]
    None,
    /// `If-None-Match: *`: create only.
    IfAbsent,
    /// `If-Match: <etag>`: replace only that version.
    IfMatch(String),
}

#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub condition: WriteCondition,
    pub metadata: Vec<(String, String)>,
    pub content_disposition: Option<String>,
    pub content_type: Option<String>,
}

/// Applies a [`WriteCondition`] to any request builder with
/// `if_none_match`/`if_match` (PutObject, CompleteMultipartUpload).
macro_rules! apply_condition {
    ($req:expr, $cond:expr) => {
        match $cond {
            WriteCondition::None => $req,
            WriteCondition::IfAbsent => $req.if_none_match("*"),
            WriteCondition::IfMatch(etag) => $req.if_match(etag),
        }
    };
}

/// Applies metadata and content headers of [`PutOptions`] to any builder
/// that has them (PutObject, CreateMultipartUpload).
macro_rules! apply_headers {
    ($req:expr, $opts:expr) => {{
        let opts: &PutOptions = $opts;
        let mut req = $req;
        for (k, v) in &opts.metadata {
            req = req.metadata(k, v);
        }
        if let Some(cd) = &opts.content_disposition {
            req = req.content_disposition(cd);
        }
        if let Some(ct) = &opts.content_type {
            req = req.content_type(ct);
        }
        req
    }};
}

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    t.and_then(|d| SystemTime::try_from(*d).ok()).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// What a connection error names.
#[derive(Debug, Default, Clone)]
struct NetworkHint {
    trust: String,
    proxy: Option<String>,
    /// The bucket's virtual-hosted host name on a custom endpoint.
    virtual_host: Option<String>,
    /// What to renew when S3 answers `ExpiredToken`.
    expired_token: Option<String>,
}

/// One bucket, through one warm client (the one for the bucket's region,
/// once S3 said where the bucket lives).
#[derive(Clone)]
pub struct S3Store {
    client: Arc<RwLock<aws_sdk_s3::Client>>,
    regions: Option<Arc<dyn RegionSwitch>>,
    network: Arc<NetworkHint>,
    bucket: Arc<str>,
    /// The service the client talks to (endpoint, region), for cache keys.
    origin: Arc<str>,
    /// Asked before every write (none: writes go ahead).
    gate: Option<Arc<dyn WriteGate>>,
    /// What the bucket's policy demands (encryption, owner, requester pays).
    policy: Arc<BucketPolicy>,
    /// What the daemon remembers of locations (`s3/memory.rs`).
    memory: Arc<Memory>,
}

impl S3Store {
    pub fn new(client: aws_sdk_s3::Client, bucket: &str, origin: &str) -> S3Store {
        S3Store {
            client: Arc::new(RwLock::new(client)),
            regions: None,
            network: Arc::new(NetworkHint::default()),
            bucket: bucket.into(),
            origin: origin.into(),
            gate: None,
            policy: Arc::default(),
            memory: Arc::default(),
        }
    }

    /// This store (and its clones) remembers through `memory` (the daemon's).
    pub fn with_memory(mut self, memory: Arc<Memory>) -> S3Store {
        self.memory = memory;
        self
    }

    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// Every write of this store (and its clones) asks `gate` first.
    pub fn with_write_gate(mut self, gate: Arc<dyn WriteGate>) -> S3Store {
        self.gate = Some(gate);
        self
    }

    /// This store without its write gate (the gate's own probe writes).
    pub fn without_write_gate(&self) -> S3Store {
        S3Store { gate: None, ..self.clone() }
    }

    /// Asks the write gate, if any, whether this store may write.
    async fn may_write(&self) -> Result<(), StoreError> {
        match &self.gate {
            Some(gate) => gate.check(&self.without_write_gate()).await,
            None => Ok(()),
        }
    }

    /// Every request with the headers `policy` asks for (the remote's git
    /// config: see `write_options`).
    pub fn with_policy(mut self, policy: BucketPolicy) -> S3Store {
        self.policy = Arc::new(policy);
        self
    }

    /// What to name when a connection fails: the CAs a certificate was
    /// checked against, and the proxy in use.
    pub fn with_network_hint(mut self, trust: String, proxy: Option<String>) -> S3Store {
        self.network = Arc::new(NetworkHint { trust, proxy, ..NetworkHint::clone(&self.network) });
        self
    }

    /// The host name requests for the bucket go to when the client
    /// addresses it virtual-hosted on a custom endpoint: a name that does
    /// not resolve is then told as such, with what to do.
    pub fn with_virtual_host(mut self, host: Option<String>) -> S3Store {
        self.network = Arc::new(NetworkHint { virtual_host: host, ..NetworkHint::clone(&self.network) });
        self
    }

    /// What an `ExpiredToken` answer tells the user to renew.
    pub fn with_expired_token_advice(mut self, advice: String) -> S3Store {
        self.network = Arc::new(NetworkHint { expired_token: Some(advice), ..NetworkHint::clone(&self.network) });
        self
    }

    /// [`classify`], naming the CA bundle or the proxy when the connection
    /// failed on them.
    fn classify<E>(&self, err: SdkError<E, HttpResponse>, key: &str) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match classify(err, &self.bucket, key) {
            StoreError::Connect(reason) => {
                let lower = reason.to_ascii_lowercase();
                if lower.contains("certificate") || lower.contains("unknownissuer") || lower.contains("invalid peer") {
                    let trust = if self.network.trust.is_empty() { "the trusted CAs".to_string() } else { self.network.trust.clone() };
                    StoreError::Certificate { trust, reason }
                } else if let Some(proxy) = self.network.proxy.clone().filter(|_| lower.contains("proxy") || lower.contains("tunnel")) {
                    StoreError::Proxy { proxy, reason }
                } else if let Some(host) = self.network.virtual_host.clone().filter(|_| lower.contains("dns error")) {
                    StoreError::VirtualHostDns { bucket: self.bucket.to_string(), host }
                } else {
                    StoreError::Connect(reason)
                }
            }
            StoreError::InvalidCredentials(code) if code == "ExpiredToken" => match &self.network.expired_token {
                Some(advice) => StoreError::ExpiredToken(advice.clone()),
                None => StoreError::InvalidCredentials(code),
            },
            StoreError::AccessDenied { bucket, key, message } => {
                let message = match self.policy.unset_settings_hint() {
                    Some(hint) => format!("{message}; {hint}"),
                    None => message,
                };
                StoreError::AccessDenied { bucket, key, message }
            }
            other => other,
        }
    }

    /// Follows the bucket to its region through `switch` when S3 says it
    /// lives elsewhere.
    pub fn with_region_switch(mut self, switch: Arc<dyn RegionSwitch>) -> S3Store {
        self.regions = Some(switch);
        self
    }

    fn client(&self) -> aws_sdk_s3::Client {
        self.policy.client(self.client.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Runs `op` with the current client. When S3 answers that the bucket
    /// lives in another region, switches this store (and its clones) to a
    /// client for that region and runs `op` once more, like boto3 does.
    async fn call<T, E, Fut>(&self, op: impl Fn(aws_sdk_s3::Client) -> Fut) -> Result<T, SdkError<E, HttpResponse>>
    where
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata,
    {
        // The SDK's futures are large: each is boxed, so that callers'
        // futures (and the daemon's stack) stay small.
        let mut client = self.client();
        let mut switched = false;
        let mut redirects = 0;
        loop {
            let err = match Box::pin(op(client.clone())).await {
                Err(e) => e,
                ok => return ok,
            };
            let Some(named) = wrong_region(&err) else { return Err(err) };
            let temporary = err.raw_response().map(|r| r.status().as_u16()) == Some(307);
            let current = client.config().region().map(|r| r.as_ref().to_string());
            if let (Some(switch), false) = (&self.regions, switched) {
                let region = match named {
                    Some(r) => Some(r),
                    None => Box::pin(self.head_bucket_region(&client)).await,
                };
                if let Some(region) = region.filter(|r| current.as_deref() != Some(r.as_str())) {
                    tracing::info!(bucket = %self.bucket, from = current.as_deref().unwrap_or(""), to = %region, "the bucket lives in another region; switching clients");
                    let moved = switch.client_for_region(&region).await;
                    *self.client.write().unwrap_or_else(|p| p.into_inner()) = moved.clone();
                    client = self.policy.client(moved);
                    switched = true;
                    continue;
                }
            }
            // A 307 in the bucket's own region: S3's DNS has not caught up
            // with a new bucket yet. Sent again after a while, it goes through.
            if temporary && redirects + 1 < TEMPORARY_REDIRECT_ATTEMPTS {
                redirects += 1;
                let wait = conflict_backoff(redirects);
                tracing::info!(bucket = %self.bucket, attempt = redirects, ?wait, "307 TemporaryRedirect in the bucket's region; trying again");
                tokio::time::sleep(wait).await;
                continue;
            }
            return Err(err);
        }
    }

    /// The bucket's region as HeadBucket tells it (in its answer or in the
    /// `x-amz-bucket-region` of its error).
    async fn head_bucket_region(&self, client: &aws_sdk_s3::Client) -> Option<String> {
        let region = match client.head_bucket().bucket(&*self.bucket).send().await {
            Ok(r) => r.bucket_region().map(str::to_string),
            Err(e) => e.raw_response().and_then(|r| r.headers().get("x-amz-bucket-region")).map(str::to_string),
        };
        region.filter(|r| is_region_name(r))
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The endpoint the client talks to as configured (`aws`: AWS S3's own).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// A transfer failure on `key` that S3 did not classify (interrupted
    /// body, truncated download, unreadable local file).
    fn other(&self, key: &str, message: impl Into<String>) -> StoreError {
        StoreError::Other { bucket: self.bucket.to_string(), key: key.to_string(), message: message.into() }
    }

    /// A small object (HEAD, a manifest, a lock) is read into memory: one
    /// larger than `MAX_SMALL_OBJECT` is refused before its body is read.
    fn small_enough(&self, key: &str, length: Option<i64>) -> Result<(), StoreError> {
        match length {
            Some(n) if n > MAX_SMALL_OBJECT as i64 => Err(self.other(
                key,
                format!(
                    "the object is {n} bytes, more than the {} MiB this object may have; it is not a git-s3 object (remove or fix it)",
                    MAX_SMALL_OBJECT >> 20
                ),
            )),
            _ => Ok(()),
        }
    }

    fn interrupted(&self, key: &str, message: impl Into<String>) -> StoreError {
        StoreError::Interrupted { bucket: self.bucket.to_string(), key: key.to_string(), message: message.into() }
    }

    /// `size` bytes of the file at `path` from `offset`, as a request body
    /// (one multipart part, read from disk as it is sent).
    async fn file_part(&self, key: &str, path: &Path, offset: u64, size: u64) -> Result<ByteStream, StoreError> {
        ByteStream::read_from()
            .path(path)
            .offset(offset)
            .length(aws_smithy_types::byte_stream::Length::Exact(size))
            .build()
            .await
            .map_err(|e| self.other(key, e.to_string()))
    }

    /// The `Content-MD5` of a PutObject's body, when the client sends no
    /// checksum of its own (see [`write_options::needs_content_md5`]).
    async fn content_md5(&self, key: &str, source: &Source<'_>) -> Result<Option<String>, StoreError> {
        match source {
            Source::Bytes(b) => self.content_md5_of_part(key, &Source::Bytes(b.clone()), 0, b.len() as u64).await,
            Source::File(p) => {
                if !write_options::needs_content_md5(&self.client.read().unwrap_or_else(|p| p.into_inner())) {
                    return Ok(None);
                }
                let md5 = write_options::content_md5_of_file(p, 0, None).await;
                md5.map(Some).map_err(|e| self.other(key, format!("cannot read {}: {e}", p.display())))
            }
        }
    }

    /// The `Content-MD5` of one part: `size` bytes of a file from `offset`, or the bytes.
    async fn content_md5_of_part(&self, key: &str, part: &Source<'_>, offset: u64, size: u64) -> Result<Option<String>, StoreError> {
        if !write_options::needs_content_md5(&self.client.read().unwrap_or_else(|p| p.into_inner())) {
            return Ok(None);
        }
        let md5 = match part {
            Source::Bytes(b) => write_options::content_md5_of_bytes(b.clone()).await,
            Source::File(p) => write_options::content_md5_of_file(p, offset, Some(size)).await,
        };
        md5.map(Some).map_err(|e| self.other(key, format!("cannot read the data to upload: {e}")))
    }

    /// Every object under `prefix` (all pages).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let span = tracing::debug_span!("s3.list", bucket = %self.bucket, prefix);
        async {
            let mut out = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let resp = self
                    .call(|c| {
                        c.list_objects_v2()
                            .bucket(&*self.bucket)
                            .prefix(prefix)
                            // Keys come URL-encoded: a key holding a character XML 1.0
                            // cannot carry (\u{1}, …) would otherwise make the whole
                            // listing unreadable.
                            .encoding_type(aws_sdk_s3::types::EncodingType::Url)
                            .set_continuation_token(token.clone())
                            .send()
                    })
                    .await
                    .map_err(|e| self.classify(e, prefix))?;
                let encoding = resp.encoding_type();
                for o in resp.contents() {
                    if let Some(key) = o.key() {
                        out.push(ObjectInfo {
                            key: listed_key(key, encoding),
                            size: o.size().unwrap_or(0).max(0) as u64,
                            etag: o.e_tag().unwrap_or_default().to_string(),
                            last_modified: to_system_time(o.last_modified()),
                        });
                    }
                }
                match resp.next_continuation_token() {
                    Some(t) if resp.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            tracing::debug!(objects = out.len(), "listed");
            Ok(out)
        }
        .instrument(span)
        .await
    }

    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        Ok(self.head_with_metadata(key).await?.map(|(info, _)| info))
    }

    /// The multipart uploads started under `prefix` and neither completed
    /// nor aborted (a push killed half-way leaves one; S3 bills its parts).
    pub async fn list_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, StoreError> {
        let span = tracing::debug_span!("s3.list_uploads", bucket = %self.bucket, prefix);
        async {
            let mut out = Vec::new();
            let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
            loop {
                let resp = self
                    .call(|c| {
                        c.list_multipart_uploads()
                            .bucket(&*self.bucket)
                            .prefix(prefix)
                            .set_key_marker(key_marker.clone())
                            .set_upload_id_marker(id_marker.clone())
                            .send()
                    })
                    .await
                    .map_err(|e| self.classify(e, prefix))?;
                for u in resp.uploads() {
                    if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                        out.push(OpenUpload { key: key.to_string(), upload_id: id.to_string(), initiated: to_system_time(u.initiated()) });
                    }
                }
                match (resp.is_truncated(), resp.next_key_marker(), resp.next_upload_id_marker()) {
                    (Some(true), Some(k), id) if !k.is_empty() => {
                        key_marker = Some(k.to_string());
                        id_marker = id.map(str::to_string);
                    }
                    _ => break,
                }
            }
            Ok(out)
        }
        .instrument(span)
        .await
    }

    /// Aborts a multipart upload (its parts are deleted).
    pub async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.call(|c| c.abort_multipart_upload().bucket(&*self.bucket).key(key).upload_id(upload_id).send())
            .instrument(tracing::debug_span!("s3.abort_upload", bucket = %self.bucket, key))
            .await
            .map_err(|e| self.classify(e, key))?;
        Ok(())
    }

    /// An object's info and user metadata (`x-amz-meta-*`, keys without the
    /// prefix), or None when absent.
    pub async fn head_with_metadata(&self, key: &str) -> Result<Option<(ObjectInfo, HashMap<String, String>)>, StoreError> {
        let span = tracing::debug_span!("s3.head", bucket = %self.bucket, key);
        async {
            match self.call(|c| c.head_object().bucket(&*self.bucket).key(key).send()).await {
                Ok(r) => Ok(Some((
                    ObjectInfo {
                        key: key.to_string(),
                        size: r.content_length().unwrap_or(0).max(0) as u64,
                        etag: r.e_tag().unwrap_or_default().to_string(),
                        last_modified: to_system_time(r.last_modified()),
                    },
                    r.metadata().cloned().unwrap_or_default(),
                ))),
                Err(e) => match self.classify(e, key) {
                    StoreError::NotFound { .. } => Ok(None),
                    other => Err(other),
                },
            }
        }
        .instrument(span)
        .await
    }

    /// A small object's content (HEAD, markers), or None when absent; a
    /// response that breaks off is read again (up to [`DOWNLOAD_ATTEMPTS`]).
    pub async fn get_small(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.again_if_interrupted(key, || self.get_small_once(key)).await
    }

    /// Runs a read until it does not break off, [`DOWNLOAD_ATTEMPTS`] times at most.
    async fn again_if_interrupted<T, Fut: Future<Output = Result<T, StoreError>>>(&self, key: &str, read: impl Fn() -> Fut) -> Result<T, StoreError> {
        let mut attempt = 1;
        loop {
            match read().await {
                Err(e) if e.is_interrupted() && attempt < DOWNLOAD_ATTEMPTS => {
                    tracing::warn!(key, attempt, error = %e, "read broke off; trying again");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn get_small_once(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let span = tracing::debug_span!("s3.get", bucket = %self.bucket, key);
        async {
            match self.call(|c| c.get_object().bucket(&*self.bucket).key(key).send()).await {
                Ok(r) => {
                    self.small_enough(key, r.content_length())?;
                    let data = r.body.collect().await.map_err(|e| self.interrupted(key, e.to_string()))?;
                    Ok(Some(data.into_bytes().to_vec()))
                }
                Err(e) => match self.classify(e, key) {
                    StoreError::NotFound { .. } => Ok(None),
                    other => Err(other),
                },
            }
        }
        .instrument(span)
        .await
    }

    /// A small object, read only if it changed since `etag` (a conditional
    /// GET with `If-None-Match`; S3 answers 304 without a body when not).
    pub async fn get_small_if_changed(&self, key: &str, etag: Option<&str>) -> Result<Conditional, StoreError> {
        self.again_if_interrupted(key, || self.get_small_if_changed_once(key, etag)).await
    }

    async fn get_small_if_changed_once(&self, key: &str, etag: Option<&str>) -> Result<Conditional, StoreError> {
        let span = tracing::debug_span!("s3.get", bucket = %self.bucket, key, if_none_match = etag.unwrap_or(""));
        async {
            let send = |c: aws_sdk_s3::Client| c.get_object().bucket(&*self.bucket).key(key).set_if_none_match(etag.map(str::to_string)).send();
            match self.call(send).await {
                Ok(r) => {
                    let etag = r.e_tag().unwrap_or_default().to_string();
                    self.small_enough(key, r.content_length())?;
                    let data = r.body.collect().await.map_err(|e| self.interrupted(key, e.to_string()))?;
                    Ok(Conditional::Found { data: data.into_bytes().to_vec(), etag })
                }
                Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(304) => {
                    tracing::debug!("not modified");
                    Ok(Conditional::NotModified)
                }
                Err(e) => match self.classify(e, key) {
                    StoreError::NotFound { .. } => Ok(Conditional::Missing),
                    other => Err(other),
                },
            }
        }
        .instrument(span)
        .await
    }

    /// Where `key` lives, as a cache key: endpoint, bucket and key.
    pub fn location(&self, key: &str) -> String {
        format!("{}|{}|{key}", self.origin, self.bucket)
    }

    /// Streams an object into `dest` (created/truncated). Returns its ETag and
    /// size. `on_bytes` is called as data arrives. Fails when fewer bytes
    /// arrive than the object's length (truncated transfer).
    /// A download that breaks off is tried again from the start, up to
    /// [`DOWNLOAD_ATTEMPTS`] times in all.
    pub async fn get_to_file(&self, key: &str, dest: &Path, mut on_bytes: impl FnMut(u64) + Send) -> Result<(String, u64), StoreError> {
        let mut attempt = 1;
        loop {
            match self.get_to_file_tee(key, dest, None, &mut on_bytes).await {
                Err(e) if e.is_interrupted() && attempt < DOWNLOAD_ATTEMPTS => {
                    tracing::warn!(key, attempt, error = %e, "download broke off; trying again");
                    attempt += 1;
                }
                other => return other.map(|(etag, n, _)| (etag, n)),
            }
        }
    }

    /// The body of `key` from byte `offset` on, of the version `etag` (the
    /// rest of a download that broke off).
    async fn rest_of(&self, key: &str, offset: u64, etag: &str) -> Result<ByteStream, StoreError> {
        let range = format!("bytes={offset}-");
        let send = |c: aws_sdk_s3::Client| c.get_object().bucket(&*self.bucket).key(key).range(&range).if_match(etag).send();
        let resp = self
            .call(send)
            .instrument(tracing::debug_span!("s3.get_range", bucket = %self.bucket, key, offset))
            .await
            .map_err(|e| self.classify(e, key))?;
        Ok(resp.body)
    }

    /// [`S3Store::get_to_file`], also handing every chunk to `tee` as it
    /// arrives (e.g. to feed `git index-pack` while the download runs). The
    /// file is written completely even when the tee's reader stops early.
    /// With a tee, a file that cannot be written (a full or read-only cache)
    /// does not stop the download: the tee still gets every chunk, and the
    /// third value says the file is incomplete (not to be kept).
    pub async fn get_to_file_tee(
        &self,
        key: &str,
        dest: &Path,
        mut tee: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
        mut on_bytes: impl FnMut(u64) + Send,
    ) -> Result<(String, u64, bool), StoreError> {
        let span = tracing::debug_span!("s3.get", bucket = %self.bucket, key);
        async {
            let resp = self.call(|c| c.get_object().bucket(&*self.bucket).key(key).send()).await.map_err(|e| self.classify(e, key))?;
            let etag = resp.e_tag().unwrap_or_default().to_string();
            let expected = resp.content_length().map(|l| l.max(0) as u64);
            let mut body = resp.body;
            let mut file_error: Option<std::io::Error> = None;
            let mut file = match tokio::fs::File::create(dest).await {
                Ok(f) => Some(f),
                Err(e) => {
                    file_error = Some(e);
                    None
                }
            };
            let mut total = 0u64;
            let mut attempt = 1;
            loop {
                // A body that breaks off (or ends short) is picked up where
                // it stopped: a ranged GET of the rest of the same version,
                // so the file and the tee's reader see one unbroken stream.
                let broke = match body.try_next().await {
                    Ok(Some(chunk)) => Ok(chunk),
                    Ok(None) if expected.map(|exp| total < exp).unwrap_or(false) => Err(format!("got {total} of {} bytes", expected.unwrap_or(0))),
                    Ok(None) => break,
                    Err(e) => Err(e.to_string()),
                };
                let chunk = match broke {
                    Ok(chunk) => chunk,
                    Err(message) => {
                        let resumable = expected.map(|exp| total < exp).unwrap_or(false) && !etag.is_empty();
                        if !resumable || attempt >= DOWNLOAD_ATTEMPTS {
                            return Err(self.interrupted(key, message));
                        }
                        attempt += 1;
                        tracing::warn!(key, attempt, offset = total, error = %message, "download broke off; resuming where it stopped");
                        body = self.rest_of(key, total, &etag).await?;
                        continue;
                    }
                };
                if let Some(f) = file.as_mut() {
                    if let Err(e) = f.write_all(&chunk).await {
                        file_error = Some(e);
                        file = None;
                    }
                }
                if let Some(tx) = &tee {
                    if tx.send(chunk.clone()).await.is_err() {
                        tee = None;
                    }
                }
                if file.is_none() && tee.is_none() {
                    // Nobody is left to take the bytes.
                    return Err(file_error.take().map(StoreError::from).unwrap_or_else(|| self.other(key, "download abandoned")));
                }
                total += chunk.len() as u64;
                on_bytes(chunk.len() as u64);
            }
            // No fsync: what lands here is a cache entry or a scratch file,
            // and every reader checks it before use (`git index-pack` checks
            // a pack's or bundle's trailing checksum, LFS objects their
            // SHA-256), so a file torn by a power cut is evicted and fetched
            // again. An fsync of each download cost seconds per cold clone
            // on a busy disk.
            if let Some(mut f) = file.take() {
                if let Err(e) = f.flush().await {
                    file_error = Some(e);
                }
            }
            if let Some(exp) = expected {
                if exp != total {
                    return Err(self.interrupted(key, format!("got {total} of {exp} bytes")));
                }
            }
            if let Some(e) = &file_error {
                if tee.is_none() {
                    return Err(std::io::Error::new(e.kind(), e.to_string()).into());
                }
                tracing::warn!(error = %e, file = %dest.display(), "download not kept on disk (cache full or unwritable); streamed only");
            }
            tracing::debug!(bytes = total, "downloaded");
            Ok((etag, total, file_error.is_none()))
        }
        .instrument(span)
        .await
    }

    /// Writes a small object from memory. Returns the new ETag.
    pub async fn put_bytes(&self, key: &str, data: Vec<u8>, opts: PutOptions) -> Result<String, StoreError> {
        self.put_bytes_versioned(key, data, opts).await.map(|(etag, _)| etag)
    }

    /// [`S3Store::put_bytes`], with the version id S3 gave the object (in a
    /// versioned bucket).
    pub async fn put_bytes_versioned(&self, key: &str, data: Vec<u8>, opts: PutOptions) -> Result<(String, Option<String>), StoreError> {
        let span = tracing::debug_span!("s3.put", bucket = %self.bucket, key, bytes = data.len());
        async { self.put_body(key, Source::Bytes(data.into()), opts).await }.instrument(span).await
    }

    /// One PutObject of `data` under `condition` (with the bucket policy's
    /// headers) and nothing more: no
    /// retry after a 409, no look at who wrote the object after a 412, no
    /// write gate (the conditional-writes probe reads the store's answer
    /// as it is).
    pub async fn put_once(&self, key: &str, data: Vec<u8>, condition: &WriteCondition) -> Result<String, StoreError> {
        let body = bytes::Bytes::from(data);
        // The bucket's integrity demands hold for the probe too (Object Lock).
        let md5 = self.content_md5(key, &Source::Bytes(body.clone())).await?;
        let send = |c: aws_sdk_s3::Client| {
            let req = c.put_object().bucket(&*self.bucket).key(key).body(ByteStream::from(body.clone())).set_content_md5(md5.clone());
            apply_condition!(req, condition).send()
        };
        let resp =
            self.call(send).instrument(tracing::debug_span!("s3.put_once", bucket = %self.bucket, key)).await.map_err(|e| self.classify(e, key))?;
        Ok(resp.e_tag().unwrap_or_default().to_string())
    }

    /// One PutObject; a conditional write that meets a `409
    /// ConditionalRequestConflict` is tried again after a backoff (only a
    /// 412 means its condition failed).
    async fn put_body(&self, key: &str, source: Source<'_>, opts: PutOptions) -> Result<(String, Option<String>), StoreError> {
        self.may_write().await?;
        let md5 = self.content_md5(key, &source).await?;
        let mut attempt = 1;
        loop {
            let send = |c: aws_sdk_s3::Client| {
                let (source, opts, md5) = (&source, &opts, &md5);
                async move {
                    let body = source.stream().await.map_err(SdkError::construction_failure)?;
                    let mut req = c.put_object().bucket(&*self.bucket).key(key).body(body).set_content_md5(md5.clone());
                    req = apply_condition!(req, &opts.condition);
                    req = apply_headers!(req, opts);
                    req.send().await
                }
            };
            match self.call(send).await {
                Ok(resp) => return Ok((resp.e_tag().unwrap_or_default().to_string(), resp.version_id().map(str::to_string))),
                Err(e) if is_conflict(&e) && attempt < CONFLICT_ATTEMPTS => {
                    let wait = conflict_backoff(attempt);
                    tracing::info!(key, attempt, ?wait, "409 ConditionalRequestConflict on a conditional write; trying again");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => {
                    let err = self.classify(e, key);
                    if err.is_precondition_failed() {
                        if let Some(etag) = self.already_written(key, &source, &opts.condition).await {
                            return Ok((etag, None));
                        }
                    }
                    return Err(err);
                }
            }
        }
    }

    /// After a `412` on a conditional write of bytes: the ETag of the object
    /// when it holds exactly those bytes. A write whose answer was lost (the
    /// connection reset after S3 stored it) is sent again by the SDK, and
    /// that second try fails its condition against the first: it is ours,
    /// not a lost race. (Bodies written conditionally are unique: locks
    /// carry a nonce, manifests a serial.)
    async fn already_written(&self, key: &str, source: &Source<'_>, condition: &WriteCondition) -> Option<String> {
        let Source::Bytes(ours) = source else { return None };
        if matches!(condition, WriteCondition::None) {
            return None;
        }
        match self.get_small_if_changed(key, None).await {
            Ok(Conditional::Found { data, etag }) if data == ours.as_ref() => {
                tracing::info!(key, "412 on a conditional write that had already landed (its answer was lost); it is ours");
                Some(etag)
            }
            _ => None,
        }
    }

    /// Uploads a file, streaming it from disk; multipart (parallel parts) above
    /// [`MULTIPART_THRESHOLD`]. `on_bytes` is called as parts complete.
    pub async fn put_file(&self, key: &str, path: &Path, opts: PutOptions, on_bytes: impl Fn(u64) + Send + Sync) -> Result<String, StoreError> {
        let len = tokio::fs::metadata(path).await?.len();
        let span = tracing::debug_span!("s3.put", bucket = %self.bucket, key, bytes = len);
        async {
            if len <= MULTIPART_THRESHOLD {
                let (etag, _) = self.put_body(key, Source::File(path), opts).await?;
                on_bytes(len);
                return Ok(etag);
            }
            self.put_multipart_again_on_conflict(key, path, len, opts, &on_bytes).await
        }
        .instrument(span)
        .await
    }

    /// [`S3Store::put_multipart`]; when its completion meets a `409
    /// ConditionalRequestConflict`, the upload is started again (as S3's
    /// documentation says), up to [`CONFLICT_ATTEMPTS`] in all.
    async fn put_multipart_again_on_conflict(
        &self,
        key: &str,
        path: &Path,
        len: u64,
        opts: PutOptions,
        on_bytes: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<String, StoreError> {
        let mut attempt = 1;
        loop {
            // Progress is reported by the first upload only.
            let progress: &(dyn Fn(u64) + Send + Sync) = if attempt == 1 { on_bytes } else { &|_: u64| {} };
            match self.put_multipart(key, path, len, opts.clone(), progress).await {
                Err(e) if e.is_conflict() && attempt < CONFLICT_ATTEMPTS => {
                    let wait = conflict_backoff(attempt);
                    tracing::info!(key, attempt, ?wait, "409 ConditionalRequestConflict completing a multipart upload; uploading again");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn put_multipart(
        &self,
        key: &str,
        path: &Path,
        len: u64,
        opts: PutOptions,
        on_bytes: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<String, StoreError> {
        use futures::stream::{StreamExt, TryStreamExt};
        let Some(part) = part_size(len) else {
            return Err(self.other(key, format!("{len} bytes is more than S3 takes in one object (5 TiB)")));
        };
        let upload_id = self.create_multipart(key, &opts).await?;
        let parts = len.div_ceil(part);
        let result: Result<Vec<CompletedPart>, StoreError> = futures::stream::iter(0..parts)
            .map(|i| {
                let upload_id = upload_id.clone();
                async move {
                    let offset = i * part;
                    let size = part.min(len - offset);
                    let part = self.upload_part(key, &upload_id, (i + 1) as i32, Source::File(path), (offset, size)).await?;
                    on_bytes(size);
                    Ok(part)
                }
            })
            .buffered(PART_CONCURRENCY)
            .try_collect()
            .await;
        self.finish_multipart(key, &upload_id, result, &opts.condition).await
    }

    async fn create_multipart(&self, key: &str, opts: &PutOptions) -> Result<String, StoreError> {
        self.may_write().await?;
        let created = self
            .call(|c| apply_headers!(c.create_multipart_upload().bucket(&*self.bucket).key(key), opts).send())
            .await
            .map_err(|e| self.classify(e, key))?;
        Ok(created.upload_id().unwrap_or_default().to_string())
    }

    /// Completes a multipart upload with its parts (under `condition`), or
    /// aborts it when the parts failed or the completion is refused.
    async fn finish_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Result<Vec<CompletedPart>, StoreError>,
        condition: &WriteCondition,
    ) -> Result<String, StoreError> {
        let parts = match parts {
            Ok(p) => p,
            Err(e) => {
                self.abort_multipart(key, upload_id).await;
                return Err(e);
            }
        };
        let complete = |c: aws_sdk_s3::Client| {
            let req = c
                .complete_multipart_upload()
                .bucket(&*self.bucket)
                .key(key)
                .upload_id(upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts.clone())).build());
            apply_condition!(req, condition).send()
        };
        // S3 sends `200 OK` before it completes; when completing then fails,
        // the `<Error>` comes in that 200's body. The SDK makes it an error
        // and retries it like a 5xx (daemon/tests/field_store.rs checks): it
        // is never taken for success.
        match self.call(complete).await {
            Ok(r) => Ok(r.e_tag().unwrap_or_default().to_string()),
            Err(e) => {
                // `NoSuchUpload` on a completion the SDK sent again: the
                // first one's answer was lost, and S3 may have completed it.
                if e.code() == Some("NoSuchUpload") {
                    if let Some(etag) = self.completed_before(key, &parts).await {
                        tracing::info!(key, "the completion's answer was lost; the object is there with its parts' ETag");
                        return Ok(etag);
                    }
                }
                self.abort_multipart(key, upload_id).await;
                Err(self.classify(e, key))
            }
        }
    }

    /// The object's ETag if `key` holds exactly the upload of `parts`: S3's
    /// ETag of a multipart object is the MD5 of its parts' MD5s, `-<count>`.
    async fn completed_before(&self, key: &str, parts: &[CompletedPart]) -> Option<String> {
        let expected = multipart_etag(parts)?;
        let found = self.head(key).await.ok()??;
        (found.etag.trim_matches('"') == expected).then_some(found.etag)
    }

    /// Uploads one part of a multipart upload.
    async fn upload_part(&self, key: &str, upload_id: &str, number: i32, part: Source<'_>, range: (u64, u64)) -> Result<CompletedPart, StoreError> {
        let (offset, size) = range;
        let md5 = self.content_md5_of_part(key, &part, offset, size).await?;
        let body = match part {
            Source::Bytes(b) => ByteStream::from(b),
            Source::File(path) => self.file_part(key, path, offset, size).await?,
        };
        // The body is sent once: a part is never redirected, as the upload
        // was created in the bucket's region.
        let r = self
            .client()
            .upload_part()
            .bucket(&*self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(body)
            .set_content_md5(md5)
            .send()
            .instrument(tracing::debug_span!("s3.upload_part", part_number = number, bytes = size))
            .await
            .map_err(|e| self.classify(e, key))?;
        Ok(CompletedPart::builder().part_number(number).set_e_tag(r.e_tag().map(str::to_string)).build())
    }

    /// Reads what a producer writes (e.g. `git bundle create -`) into `tee`
    /// (the local copy) until it ends or passes [`MULTIPART_THRESHOLD`] —
    /// no network, so it can run before a lock is taken. Memory: one part.
    pub async fn stage<R: tokio::io::AsyncRead + Unpin>(mut reader: R, tee: &mut tokio::fs::File) -> std::io::Result<Staged<R>> {
        let mut staged = 0u64;
        loop {
            let part = read_part(&mut reader, tee).await?;
            let len = part.len() as u64;
            staged += len;
            if staged > MULTIPART_THRESHOLD {
                tee.flush().await?;
                return Ok(Staged { reader, staged, overflow: Some(part) });
            }
            if len < PART_SIZE {
                tee.flush().await?;
                return Ok(Staged { reader, staged, overflow: None });
            }
        }
    }

    /// Uploads a [`Staged`] stream: when it ended within the threshold, one
    /// PUT from `tee_path`; else a multipart upload of the staged parts (read
    /// back from `tee`) and then of every further part as soon as it is read,
    /// with up to [`PART_CONCURRENCY`] in flight (memory bounded by that many
    /// parts). `finish` is awaited after the end of the input and before the
    /// object becomes visible: if it fails (the producer failed), nothing is
    /// written and its error is returned.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_staged<R, F>(
        &self,
        key: &str,
        staged: Staged<R>,
        tee_path: &Path,
        tee: &mut tokio::fs::File,
        opts: PutOptions,
        finish: F,
        on_bytes: impl Fn(u64) + Send + Sync,
    ) -> Result<String, StoreError>
    where
        R: tokio::io::AsyncRead + Unpin + Send,
        F: std::future::Future<Output = Result<(), String>> + Send,
    {
        use futures::stream::{FuturesUnordered, StreamExt};
        let span = tracing::debug_span!("s3.put_stream", bucket = %self.bucket, key, staged = staged.staged);
        async {
            let other = |message: String| self.other(key, message);
            let Staged { mut reader, staged, overflow } = staged;
            let Some(overflow) = overflow else {
                finish.await.map_err(other)?;
                let (etag, _) = self.put_body(key, Source::File(tee_path), opts).await?;
                on_bytes(staged);
                return Ok(etag);
            };
            let upload_id = self.create_multipart(key, &opts).await?;
            let upload = |number: i32, body, offset: u64, size: u64| {
                let upload_id = upload_id.clone();
                let on_bytes = &on_bytes;
                async move {
                    let part = self.upload_part(key, &upload_id, number, body, (offset, size)).await?;
                    on_bytes(size);
                    Ok::<_, StoreError>(part)
                }
            };
            let result: Result<Vec<CompletedPart>, StoreError> = async {
                let mut in_flight = FuturesUnordered::new();
                let mut done = Vec::new();
                // The staged full parts, read back from the tee file...
                let staged_parts = (staged - overflow.len() as u64) / PART_SIZE;
                let mut number = 0;
                for i in 0..staged_parts {
                    number += 1;
                    in_flight.push(upload(number, Source::File(tee_path), i * PART_SIZE, PART_SIZE));
                }
                // ...then every part as it is read.
                let mut next = Some(overflow);
                loop {
                    let data = match next.take() {
                        Some(d) => d,
                        None => read_part(&mut reader, tee).await?,
                    };
                    if data.is_empty() {
                        break;
                    }
                    while in_flight.len() >= PART_CONCURRENCY {
                        if let Some(part) = in_flight.next().await {
                            done.push(part?);
                        }
                    }
                    number += 1;
                    if number as u64 > MAX_PARTS {
                        // Parts of a stream cannot grow (its length is unknown, and
                        // R2 wants them all the same size): 10,000 × 16 MiB at most.
                        return Err(self.other(key, format!("the stream is longer than S3's {MAX_PARTS} parts of {} MiB", PART_SIZE >> 20)));
                    }
                    let size = data.len() as u64;
                    in_flight.push(upload(number, Source::Bytes(data.into()), 0, size));
                }
                while let Some(part) = in_flight.next().await {
                    done.push(part?);
                }
                tee.flush().await?;
                finish.await.map_err(other)?;
                done.sort_by_key(|p| p.part_number());
                Ok(done)
            }
            .await;
            match self.finish_multipart(key, &upload_id, result, &opts.condition).await {
                Err(e) if e.is_conflict() => {
                    // The whole stream is in the tee file by now: upload it again from there.
                    tokio::time::sleep(conflict_backoff(1)).await;
                    tracing::info!(key, "409 ConditionalRequestConflict completing a multipart upload; uploading again");
                    let len = tokio::fs::metadata(tee_path).await?.len();
                    self.put_multipart_again_on_conflict(key, tee_path, len, opts, &|_: u64| {}).await
                }
                other => other,
            }
        }
        .instrument(span)
        .await
    }

    /// Aborts our own failed upload; a failure is only logged (the upload
    /// is left for `git s3 doctor --abort-uploads` or a lifecycle rule).
    async fn abort_multipart(&self, key: &str, upload_id: &str) {
        if let Err(e) = self.abort_upload(key, upload_id).await {
            tracing::warn!(key, error = %e, "could not abort multipart upload");
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let span = tracing::debug_span!("s3.delete", bucket = %self.bucket, key);
        async {
            self.may_write().await?;
            self.call(|c| c.delete_object().bucket(&*self.bucket).key(key).send()).await.map_err(|e| self.classify(e, key))?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    pub async fn copy(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let span = tracing::debug_span!("s3.copy", bucket = %self.bucket, from, to);
        async {
            self.may_write().await?;
            let source = format!("{}/{}", self.bucket, percent_encode_key(from));
            self.call(|c| c.copy_object().bucket(&*self.bucket).key(to).copy_source(&source).send()).await.map_err(|e| self.classify(e, from))?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Streams bytes `[offset, offset + len)` of an object into `dest` at the
    /// same offset (the file must exist; it is not truncated), so several
    /// ranges can fill one file in parallel. `if_match` pins the object
    /// version (an ETag from a HEAD). A range that breaks off is tried again
    /// (up to [`DOWNLOAD_ATTEMPTS`] times in all); then the error is
    /// returned. Returns the bytes written; `on_bytes` is called as data
    /// arrives.
    pub async fn get_range_to_file(
        &self,
        key: &str,
        dest: &Path,
        offset: u64,
        len: u64,
        if_match: Option<&str>,
        mut on_bytes: impl FnMut(u64) + Send,
    ) -> Result<u64, StoreError> {
        let mut attempt = 1;
        loop {
            match self.get_range_once(key, dest, offset, len, if_match, &mut on_bytes).await {
                Err(e) if e.is_interrupted() && attempt < DOWNLOAD_ATTEMPTS => {
                    tracing::warn!(key, offset, attempt, error = %e, "ranged download broke off; trying again");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn get_range_once(
        &self,
        key: &str,
        dest: &Path,
        offset: u64,
        len: u64,
        if_match: Option<&str>,
        mut on_bytes: impl FnMut(u64) + Send,
    ) -> Result<u64, StoreError> {
        use tokio::io::AsyncSeekExt;
        let span = tracing::debug_span!("s3.get_range", bucket = %self.bucket, key, offset, len);
        async {
            if len == 0 {
                return Ok(0);
            }
            let range = format!("bytes={}-{}", offset, offset + len - 1);
            let send =
                |c: aws_sdk_s3::Client| c.get_object().bucket(&*self.bucket).key(key).range(&range).set_if_match(if_match.map(str::to_string)).send();
            let resp = self.call(send).await.map_err(|e| self.classify(e, key))?;
            let mut body = resp.body;
            let mut file = tokio::fs::OpenOptions::new().write(true).open(dest).await?;
            file.seek(std::io::SeekFrom::Start(offset)).await?;
            let mut total = 0u64;
            while let Some(chunk) = body.try_next().await.map_err(|e| self.interrupted(key, e.to_string()))? {
                if total + chunk.len() as u64 > len {
                    return Err(self.other(key, format!("range {offset}+{len}: server sent more bytes than asked")));
                }
                file.write_all(&chunk).await?;
                total += chunk.len() as u64;
                on_bytes(chunk.len() as u64);
            }
            file.flush().await?;
            if total != len {
                return Err(self.interrupted(key, format!("got {total} of {len} bytes at offset {offset}")));
            }
            Ok(total)
        }
        .instrument(span)
        .await
    }
}

/// A key as a listing answered it: decoded only when the answer says it is
/// URL-encoded (some servers ignore `encoding-type` and send keys as they are).
fn listed_key(key: &str, encoding: Option<&aws_sdk_s3::types::EncodingType>) -> String {
    match encoding {
        Some(aws_sdk_s3::types::EncodingType::Url) => url_decode_key(key),
        _ => key.to_string(),
    }
}

/// A key of a listing made with `encoding-type=url` decoded (`%XX`, and
/// `+` for a space as S3 writes it; a literal `+` comes as `%2B`). A key that
/// does not decode to UTF-8 is kept as it came.
fn url_decode_key(key: &str) -> String {
    let b = key.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match key.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) => {
                    out.push(v);
                    i += 3;
                    continue;
                }
                None => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| key.to_string())
}

/// Percent-encodes a key for `x-amz-copy-source` (keeps `/`).
fn percent_encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// S3's ETag of a multipart object made of `parts` (without quotes), or
/// None when a part's ETag is not an MD5 (SSE-KMS, for instance).
fn multipart_etag(parts: &[CompletedPart]) -> Option<String> {
    use md5::Digest;
    let mut md5 = md5::Md5::new();
    for p in parts {
        let digest = hex::decode(p.e_tag()?.trim_matches('"')).ok().filter(|d| d.len() == 16)?;
        md5.update(&digest);
    }
    Some(format!("{}-{}", hex::encode(md5.finalize()), parts.len()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn multipart_etag_is_md5_of_part_md5s() {
        use aws_sdk_s3::types::CompletedPart;
        // One part of 100 × 'x', as moto and S3 name the object.
        let part = CompletedPart::builder().part_number(1).e_tag("\"aed563ecafb4bcc5654c597a421547b2\"").build();
        assert_eq!(super::multipart_etag(&[part]).as_deref(), Some("bccb8986cc6b395e4f045d410c776698-1"));
        let kms = CompletedPart::builder().part_number(1).e_tag("\"not-an-md5\"").build();
        assert_eq!(super::multipart_etag(&[kms]), None);
    }

    #[test]
    fn regions_named_in_s3_answers() {
        let malformed = "<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region 'us-east-1' is wrong; expecting 'eu-west-1'</Message><Region>eu-west-1</Region></Error>";
        assert_eq!(super::xml_element(malformed, "Region").as_deref(), Some("eu-west-1"));
        assert_eq!(super::xml_element(malformed, "Endpoint"), None);
        assert_eq!(super::region_of_endpoint("b.s3.eu-west-1.amazonaws.com").as_deref(), Some("eu-west-1"));
        assert_eq!(super::region_of_endpoint("s3-ap-southeast-2.amazonaws.com").as_deref(), Some("ap-southeast-2"));
        assert_eq!(super::region_of_endpoint("b.s3.amazonaws.com"), None);
        assert!(super::is_region_name("us-gov-west-1"));
        assert!(!super::is_region_name("eu-west-1\nx") && !super::is_region_name("") && !super::is_region_name("../x"));
    }

    #[test]
    fn conflict_backoff_grows_and_is_bounded() {
        for attempt in 1..20 {
            let d = super::conflict_backoff(attempt);
            assert!(d >= std::time::Duration::from_millis(50) && d <= std::time::Duration::from_secs(2), "{attempt}: {d:?}");
        }
        assert!(super::conflict_backoff(1) <= std::time::Duration::from_millis(100));
        assert!(super::conflict_backoff(6) >= std::time::Duration::from_secs(1));
    }

    #[test]
    fn parts_grow_with_the_object() {
        use super::{part_size, MAX_PARTS, MAX_PART_SIZE, MIN_PART_SIZE, PART_SIZE};
        const GIB: u64 = 1 << 30;
        assert_eq!(part_size(100 << 20), Some(PART_SIZE));
        assert_eq!(part_size(10_000 * PART_SIZE), Some(PART_SIZE), "exactly 10,000 parts");
        let just_over = 10_000 * PART_SIZE + 1;
        let size = part_size(just_over).unwrap();
        assert!(size > PART_SIZE && size.is_multiple_of(1 << 20), "{size}");
        for len in [just_over, 200 * GIB, 1 << 40, 4 * (1 << 40) + 12345, 5 * (1 << 40)] {
            let size = part_size(len).unwrap();
            assert!(len.div_ceil(size) <= MAX_PARTS, "{len}: {size}");
            assert!((MIN_PART_SIZE..=MAX_PART_SIZE).contains(&size), "{len}: {size}");
        }
        assert_eq!(part_size(5 * (1 << 40) + 1), None, "above 5 TiB");
        assert_eq!(part_size(u64::MAX), None);
    }

    #[test]
    fn listing_keys_decode() {
        assert_eq!(super::url_decode_key("p/refs/heads/a%01b%20c+d%2Be"), "p/refs/heads/a\u{1}b c d+e");
        assert_eq!(super::url_decode_key("p/%C3%BC/%zz%"), "p/ü/%zz%");
        assert_eq!(super::url_decode_key("p/%FF"), "p/%FF");
    }

    #[test]
    fn copy_source_encoding() {
        assert_eq!(super::percent_encode_key("p/refs/heads/a#b"), "p/refs/heads/a%23b");
        assert_eq!(super::percent_encode_key("p/LOCK#.lock"), "p/LOCK%23.lock");
    }
}
