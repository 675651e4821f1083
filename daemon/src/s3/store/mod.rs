//! The S3 store: every S3 call the daemon makes, with typed errors, a tracing
//! span each, streaming to and from files, and multipart for large objects.
//! This file holds [`S3Store`] (construction, the region switch, small
//! calls) and the types its callers use; one concern per file beside it:
//! `errors` (StoreError and the SDK-error classification), `download`,
//! `upload` (PUT, multipart), `list`, `versions`. Retries and backoff:
//! `s3/retry.rs`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use tracing::Instrument;

use self::errors::{classify, connect_failure, is_region_name, wrong_region, NetworkHint};
use super::memory::Memory;
use super::retry::Backoff;
use super::write_options::BucketPolicy;

pub(crate) use self::errors::StoreError;

/// Objects above this size are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 64 << 20;
/// Size of one part of a multipart upload (of a stream; a file's parts
/// grow with it: [`part_size`]).
pub(crate) const PART_SIZE: u64 = 16 << 20;
/// S3's limits on a multipart upload: parts, and the size of one (all
/// but the last part at least the minimum).
pub(crate) const MAX_PARTS: u64 = 10_000;
pub(crate) const MIN_PART_SIZE: u64 = 5 << 20;
pub(crate) const MAX_PART_SIZE: u64 = 5 << 30;
/// S3's largest object (5 TiB).
pub(crate) const MAX_OBJECT_SIZE: u64 = 5 << 40;

/// The part size for an object of `len` bytes: [`PART_SIZE`], or more for
/// an object that would need more than [`MAX_PARTS`] of them (rounded up to
/// a whole MiB; every part the same size but the last, as R2 wants), never
/// more than S3's 5 GiB. `None` above S3's largest object (5 TiB).
pub(crate) fn part_size(len: u64) -> Option<u64> {
    const MIB: u64 = 1 << 20;
    let needed = len.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    let size = needed.max(PART_SIZE).max(MIN_PART_SIZE);
    (len <= MAX_OBJECT_SIZE && size <= MAX_PART_SIZE && len.div_ceil(size) <= MAX_PARTS).then_some(size)
}
/// Parts uploaded at once.
const PART_CONCURRENCY: usize = 4;
/// The largest small object (HEAD, `manifest.json`, a lock) read into memory.
pub(crate) const MAX_SMALL_OBJECT: u64 = 64 << 20;

/// How many times a request that S3 answers `307 TemporaryRedirect` in the
/// bucket's own region is sent in all.
pub const TEMPORARY_REDIRECT_ATTEMPTS: u32 = 5;

/// How many times a conditional write that meets a `409
/// ConditionalRequestConflict` is tried in all (a multipart upload: uploaded).
pub const CONFLICT_ATTEMPTS: u32 = 8;

/// Gives a store the client for another region when S3 says its bucket
/// lives there (and remembers that for the bucket).
pub trait RegionSwitch: Send + Sync {
    fn client_for_region<'a>(&'a self, region: &'a str) -> futures::future::BoxFuture<'a, aws_sdk_s3::Client>;
}

/// Decides, before a store's first write, whether it may write at all (the
/// conditional-writes probe, `s3/conditional.rs`): every write of an
/// [`S3Store`] that has one asks it first.
pub(crate) trait WriteGate: Send + Sync {
    /// Ok when writes may go ahead; else the error that refuses them.
    /// `store` is the store asking (with no gate: the probe writes through it).
    fn check<'a>(&'a self, store: &'a S3Store) -> futures::future::BoxFuture<'a, Result<(), StoreError>>;
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
pub(crate) struct OpenUpload {
    pub(crate) key: String,
    pub(crate) upload_id: String,
    pub(crate) initiated: SystemTime,
}

impl ObjectInfo {
    pub(crate) fn age(&self) -> std::time::Duration {
        SystemTime::now().duration_since(self.last_modified).unwrap_or_default()
    }
}

/// How many times a download that breaks off is tried in all.
pub(crate) const DOWNLOAD_ATTEMPTS: u32 = 5;

/// The answer to a conditional GET.
#[derive(Debug)]
pub(crate) enum Conditional {
    Missing,
    NotModified,
    Found { data: Vec<u8>, etag: String },
}

/// A producer's output staged in a local file by [`S3Store::stage`]:
/// complete (`overflow` None), or past the single-PUT threshold, with the
/// part that crossed it in memory and the rest still to be read.
pub(crate) struct Staged<R> {
    reader: R,
    staged: u64,
    overflow: Option<Vec<u8>>,
}

impl<R> Staged<R> {}

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

mod download;
mod errors;
mod list;
pub(crate) mod ranged;
mod upload;
pub(crate) mod versions;

fn to_system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> SystemTime {
    t.and_then(|d| SystemTime::try_from(*d).ok()).unwrap_or(SystemTime::UNIX_EPOCH)
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
    pub(crate) fn with_memory(mut self, memory: Arc<Memory>) -> S3Store {
        self.memory = memory;
        self
    }

    pub(crate) fn memory(&self) -> &Memory {
        &self.memory
    }

    /// Every write of this store (and its clones) asks `gate` first.
    pub(crate) fn with_write_gate(mut self, gate: Arc<dyn WriteGate>) -> S3Store {
        self.gate = Some(gate);
        self
    }

    /// This store without its write gate (the gate's own probe writes).
    pub(crate) fn without_write_gate(&self) -> S3Store {
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
    pub(crate) fn with_policy(mut self, policy: BucketPolicy) -> S3Store {
        self.policy = Arc::new(policy);
        self
    }

    /// What to name when a connection fails: the CAs a certificate was
    /// checked against, and the proxy in use.
    pub(crate) fn with_network_hint(mut self, trust: String, proxy: Option<String>) -> S3Store {
        self.network = Arc::new(NetworkHint { trust, proxy, ..NetworkHint::clone(&self.network) });
        self
    }

    /// The host name requests for the bucket go to when the client
    /// addresses it virtual-hosted on a custom endpoint: a name that does
    /// not resolve is then told as such, with what to do.
    pub(crate) fn with_virtual_host(mut self, host: Option<String>) -> S3Store {
        self.network = Arc::new(NetworkHint { virtual_host: host, ..NetworkHint::clone(&self.network) });
        self
    }

    /// What an `ExpiredToken` answer tells the user to renew.
    pub(crate) fn with_expired_token_advice(mut self, advice: String) -> S3Store {
        self.network = Arc::new(NetworkHint { expired_token: Some(advice), ..NetworkHint::clone(&self.network) });
        self
    }

    /// [`classify`], naming the CA bundle or the proxy when the connection
    /// failed on them.
    fn classify<E>(&self, err: SdkError<E, HttpResponse>, key: &str) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let failure = connect_failure(&err);
        match classify(err, &self.bucket, key) {
            StoreError::Connect(reason) => self.network.connect_error(&self.bucket, failure, reason),
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
                let wait = Backoff::CONFLICT.delay(redirects);
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

    pub(crate) fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The endpoint the client talks to as configured (`aws`: AWS S3's own).
    pub(crate) fn origin(&self) -> &str {
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

    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        Ok(self.head_with_metadata(key).await?.map(|(info, _)| info))
    }

    /// An object's info and user metadata (`x-amz-meta-*`, keys without the
    /// prefix), or None when absent.
    pub(crate) async fn head_with_metadata(&self, key: &str) -> Result<Option<(ObjectInfo, HashMap<String, String>)>, StoreError> {
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

    /// Where `key` lives, as a cache key: endpoint, bucket and key.
    pub(crate) fn location(&self, key: &str) -> String {
        format!("{}|{}|{key}", self.origin, self.bucket)
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
}

/// What `x-amz-copy-source` keeps of a key as it is: RFC 3986's unreserved
/// characters and `/`.
const COPY_SOURCE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~').remove(b'/');

/// Percent-encodes a key for `x-amz-copy-source` (keeps `/`).
fn percent_encode_key(key: &str) -> String {
    percent_encoding::utf8_percent_encode(key, COPY_SOURCE).to_string()
}

#[cfg(test)]
mod tests {
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
    fn copy_source_encoding() {
        assert_eq!(super::percent_encode_key("p/refs/heads/a#b"), "p/refs/heads/a%23b");
        assert_eq!(super::percent_encode_key("p/LOCK#.lock"), "p/LOCK%23.lock");
    }
}
