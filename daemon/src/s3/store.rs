//! The S3 store: every S3 call the daemon makes, with typed errors, a tracing
//! span each, streaming to and from files, and multipart for large objects.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::io::AsyncWriteExt;
use tracing::Instrument;

/// Objects above this size are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 64 << 20;
/// Size of one part of a multipart upload.
pub const PART_SIZE: u64 = 16 << 20;
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
    #[error("cannot connect to the S3 endpoint: {0}")]
    Connect(String),
    #[error("s3://{bucket}/{key} not found")]
    NotFound { bucket: String, key: String },
    #[error("precondition failed on s3://{bucket}/{key}")]
    PreconditionFailed { bucket: String, key: String },
    #[error("S3 error on s3://{bucket}/{key}: {message}")]
    Other { bucket: String, key: String, message: String },
    /// A download that broke off (connection cut, short body): worth retrying.
    #[error("the download of s3://{bucket}/{key} broke off: {message}")]
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
    /// Errors that no retry or other ref will fix (the whole session fails).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            StoreError::NoSuchBucket(_)
                | StoreError::InvalidCredentials(_)
                | StoreError::NoCredentials(_)
                | StoreError::Connect(_)
                | StoreError::AccessDenied { .. }
        )
    }
}

fn classify<E>(err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>, bucket: &str, key: &str) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    let text = format!("{}", DisplayErrorContext(&err));
    let b = bucket.to_string();
    let k = key.to_string();
    match (&err, code.as_deref(), status) {
        (SdkError::ServiceError(_), Some("NoSuchBucket"), _) => StoreError::NoSuchBucket(b),
        (SdkError::ServiceError(_), Some("NoSuchKey" | "NotFound"), _) | (SdkError::ServiceError(_), _, Some(404)) => {
            if code.as_deref() == Some("NoSuchBucket") {
                StoreError::NoSuchBucket(b)
            } else {
                StoreError::NotFound { bucket: b, key: k }
            }
        }
        (_, Some("PreconditionFailed"), _) | (_, _, Some(412)) => StoreError::PreconditionFailed { bucket: b, key: k },
        (_, Some("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken"), _) => {
            StoreError::InvalidCredentials(code.unwrap_or_default())
        }
        (_, Some("AccessDenied" | "AllAccessDisabled"), _) | (SdkError::ServiceError(_), _, Some(403)) => {
            StoreError::AccessDenied { bucket: b, key: k, message: err.message().unwrap_or("403 Forbidden").to_string() }
        }
        (SdkError::DispatchFailure(d), _, _) if d.is_io() || d.is_timeout() => StoreError::Connect(short_reason(&text)),
        (SdkError::DispatchFailure(_), _, _) if text.contains("credential") => StoreError::NoCredentials(short_reason(&text)),
        (SdkError::DispatchFailure(_), _, _) | (SdkError::TimeoutError(_), _, _) => StoreError::Connect(short_reason(&text)),
        _ => StoreError::Other { bucket: b, key: k, message: first_line(&text) },
    }
}

/// The SDK's error text without its debug dump of the error structure.
fn short_reason(text: &str) -> String {
    let cut = text.find(" (DispatchFailure").or_else(|| text.find(" (TimeoutError")).unwrap_or(text.len());
    first_line(text[..cut].trim_start_matches("dispatch failure: ").trim_start_matches("other: "))
}

fn first_line(s: &str) -> String {
    let s = s.lines().next().unwrap_or(s);
    if s.len() > 400 { format!("{}…", &s[..s.char_indices().nth(400).map(|(i, _)| i).unwrap_or(s.len())]) } else { s.to_string() }
}

#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: SystemTime,
}

impl ObjectInfo {
    pub fn age(&self) -> std::time::Duration {
        SystemTime::now().duration_since(self.last_modified).unwrap_or_default()
    }
}

/// How many times a download that breaks off is tried in all.
pub const DOWNLOAD_ATTEMPTS: u32 = 3;

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

/// One bucket, through one warm client.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: Arc<str>,
    /// The service the client talks to (endpoint, region), for cache keys.
    origin: Arc<str>,
}

impl S3Store {
    pub fn new(client: aws_sdk_s3::Client, bucket: &str, origin: &str) -> S3Store {
        S3Store { client, bucket: bucket.into(), origin: origin.into() }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
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
                format!("the object is {n} bytes, more than the {} MiB this object may have; it is not a git-s3 object (remove or fix it)", MAX_SMALL_OBJECT >> 20),
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

    /// Every object under `prefix` (all pages).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let span = tracing::debug_span!("s3.list", bucket = %self.bucket, prefix);
        async {
            let mut out = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let resp = self
                    .client
                    .list_objects_v2()
                    .bucket(&*self.bucket)
                    .prefix(prefix)
                    // Keys come URL-encoded: a key holding a character XML 1.0
                    // cannot carry (\u{1}, …) would otherwise make the whole
                    // listing unreadable.
                    .encoding_type(aws_sdk_s3::types::EncodingType::Url)
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|e| classify(e, &self.bucket, prefix))?;
                for o in resp.contents() {
                    if let Some(key) = o.key() {
                        out.push(ObjectInfo {
                            key: url_decode_key(key),
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

    /// An object's info and user metadata (`x-amz-meta-*`, keys without the
    /// prefix), or None when absent.
    pub async fn head_with_metadata(&self, key: &str) -> Result<Option<(ObjectInfo, HashMap<String, String>)>, StoreError> {
        let span = tracing::debug_span!("s3.head", bucket = %self.bucket, key);
        async {
            match self.client.head_object().bucket(&*self.bucket).key(key).send().await {
                Ok(r) => Ok(Some((
                    ObjectInfo {
                        key: key.to_string(),
                        size: r.content_length().unwrap_or(0).max(0) as u64,
                        etag: r.e_tag().unwrap_or_default().to_string(),
                        last_modified: to_system_time(r.last_modified()),
                    },
                    r.metadata().cloned().unwrap_or_default(),
                ))),
                Err(e) => match classify(e, &self.bucket, key) {
                    StoreError::NotFound { .. } => Ok(None),
                    other => Err(other),
                },
            }
        }
        .instrument(span)
        .await
    }

    /// A small object's content (HEAD, markers), or None when absent.
    pub async fn get_small(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let span = tracing::debug_span!("s3.get", bucket = %self.bucket, key);
        async {
            match self.client.get_object().bucket(&*self.bucket).key(key).send().await {
                Ok(r) => {
                    self.small_enough(key, r.content_length())?;
                    let data = r.body.collect().await.map_err(|e| self.other(key, e.to_string()))?;
                    Ok(Some(data.into_bytes().to_vec()))
                }
                Err(e) => match classify(e, &self.bucket, key) {
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
        let span = tracing::debug_span!("s3.get", bucket = %self.bucket, key, if_none_match = etag.unwrap_or(""));
        async {
            let mut req = self.client.get_object().bucket(&*self.bucket).key(key);
            if let Some(e) = etag {
                req = req.if_none_match(e);
            }
            match req.send().await {
                Ok(r) => {
                    let etag = r.e_tag().unwrap_or_default().to_string();
                    self.small_enough(key, r.content_length())?;
                    let data = r.body.collect().await.map_err(|e| self.other(key, e.to_string()))?;
                    Ok(Conditional::Found { data: data.into_bytes().to_vec(), etag })
                }
                Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(304) => {
                    tracing::debug!("not modified");
                    Ok(Conditional::NotModified)
                }
                Err(e) => match classify(e, &self.bucket, key) {
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
    pub async fn get_to_file(
        &self,
        key: &str,
        dest: &Path,
        mut on_bytes: impl FnMut(u64) + Send,
    ) -> Result<(String, u64), StoreError> {
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
            let resp = self
                .client
                .get_object()
                .bucket(&*self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| classify(e, &self.bucket, key))?;
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
            while let Some(chunk) = body.try_next().await.map_err(|e| self.interrupted(key, e.to_string()))? {
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
            if let Some(mut f) = file.take() {
                if let Err(e) = async { f.flush().await?; f.sync_all().await }.await {
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
        let span = tracing::debug_span!("s3.put", bucket = %self.bucket, key, bytes = data.len());
        async { self.put_body(key, ByteStream::from(data), opts).await }.instrument(span).await
    }

    async fn put_body(&self, key: &str, body: ByteStream, opts: PutOptions) -> Result<String, StoreError> {
        let mut req = self.client.put_object().bucket(&*self.bucket).key(key).body(body);
        req = apply_condition!(req, &opts.condition);
        req = apply_headers!(req, &opts);
        let resp = req.send().await.map_err(|e| classify(e, &self.bucket, key))?;
        Ok(resp.e_tag().unwrap_or_default().to_string())
    }

    /// Uploads a file, streaming it from disk; multipart (parallel parts) above
    /// [`MULTIPART_THRESHOLD`]. `on_bytes` is called as parts complete.
    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        opts: PutOptions,
        on_bytes: impl Fn(u64) + Send + Sync,
    ) -> Result<String, StoreError> {
        let len = tokio::fs::metadata(path).await?.len();
        let span = tracing::debug_span!("s3.put", bucket = %self.bucket, key, bytes = len);
        async {
            if len <= MULTIPART_THRESHOLD {
                let body = ByteStream::from_path(path).await.map_err(|e| self.other(key, e.to_string()))?;
                let etag = self.put_body(key, body, opts).await?;
                on_bytes(len);
                return Ok(etag);
            }
            self.put_multipart(key, path, len, opts, &on_bytes).await
        }
        .instrument(span)
        .await
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
        let create = apply_headers!(self.client.create_multipart_upload().bucket(&*self.bucket).key(key), &opts);
        let created = create.send().await.map_err(|e| classify(e, &self.bucket, key))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let parts = len.div_ceil(PART_SIZE);
        let result: Result<Vec<CompletedPart>, StoreError> = futures::stream::iter(0..parts)
            .map(|i| {
                let upload_id = upload_id.clone();
                async move {
                    let offset = i * PART_SIZE;
                    let size = PART_SIZE.min(len - offset);
                    let body = self.file_part(key, path, offset, size).await?;
                    let part = self.upload_part(key, &upload_id, (i + 1) as i32, body, size).await?;
                    on_bytes(size);
                    Ok(part)
                }
            })
            .buffered(PART_CONCURRENCY)
            .try_collect()
            .await;
        self.finish_multipart(key, &upload_id, result, &opts.condition).await
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
        let mut complete = self
            .client
            .complete_multipart_upload()
            .bucket(&*self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
        complete = apply_condition!(complete, condition);
        match complete.send().await {
            Ok(r) => Ok(r.e_tag().unwrap_or_default().to_string()),
            Err(e) => {
                self.abort_multipart(key, upload_id).await;
                Err(classify(e, &self.bucket, key))
            }
        }
    }

    /// Uploads one part of a multipart upload.
    async fn upload_part(&self, key: &str, upload_id: &str, number: i32, body: ByteStream, size: u64) -> Result<CompletedPart, StoreError> {
        let r = self
            .client
            .upload_part()
            .bucket(&*self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(body)
            .send()
            .instrument(tracing::debug_span!("s3.upload_part", part_number = number, bytes = size))
            .await
            .map_err(|e| classify(e, &self.bucket, key))?;
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
                let body = ByteStream::from_path(tee_path).await.map_err(|e| other(e.to_string()))?;
                let etag = self.put_body(key, body, opts).await?;
                on_bytes(staged);
                return Ok(etag);
            };
            let create = apply_headers!(self.client.create_multipart_upload().bucket(&*self.bucket).key(key), &opts);
            let created = create.send().await.map_err(|e| classify(e, &self.bucket, key))?;
            let upload_id = created.upload_id().unwrap_or_default().to_string();
            let upload = |number: i32, body: ByteStream, size: u64| {
                let upload_id = upload_id.clone();
                let on_bytes = &on_bytes;
                async move {
                    let part = self.upload_part(key, &upload_id, number, body, size).await?;
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
                    let body = self.file_part(key, tee_path, i * PART_SIZE, PART_SIZE).await?;
                    in_flight.push(upload(number, body, PART_SIZE));
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
                    let size = data.len() as u64;
                    in_flight.push(upload(number, ByteStream::from(data), size));
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
            self.finish_multipart(key, &upload_id, result, &opts.condition).await
        }
        .instrument(span)
        .await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) {
        let r = self.client.abort_multipart_upload().bucket(&*self.bucket).key(key).upload_id(upload_id).send().await;
        if let Err(e) = r {
            tracing::warn!(key, error = %DisplayErrorContext(&e), "could not abort multipart upload");
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let span = tracing::debug_span!("s3.delete", bucket = %self.bucket, key);
        async {
            self.client
                .delete_object()
                .bucket(&*self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| classify(e, &self.bucket, key))?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    pub async fn copy(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let span = tracing::debug_span!("s3.copy", bucket = %self.bucket, from, to);
        async {
            let source = format!("{}/{}", self.bucket, percent_encode_key(from));
            self.client
                .copy_object()
                .bucket(&*self.bucket)
                .key(to)
                .copy_source(source)
                .send()
                .await
                .map_err(|e| classify(e, &self.bucket, from))?;
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
            let mut req = self
                .client
                .get_object()
                .bucket(&*self.bucket)
                .key(key)
                .range(format!("bytes={}-{}", offset, offset + len - 1));
            if let Some(etag) = if_match {
                req = req.if_match(etag);
            }
            let resp = req.send().await.map_err(|e| classify(e, &self.bucket, key))?;
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

#[cfg(test)]
mod tests {
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
