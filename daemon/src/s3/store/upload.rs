//! Uploads: PUTs of bytes and files (conditional, tried again on a 409
//! conflict), multipart uploads of large files and of streams staged
//! through a local file, their completion and abort.

use std::path::Path;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::io::AsyncWriteExt;
use tracing::Instrument;

use super::errors::is_conflict;
use super::{
    part_size, Conditional, PutOptions, S3Store, Staged, StoreError, WriteCondition, CONFLICT_ATTEMPTS, MAX_PARTS, MULTIPART_THRESHOLD,
    PART_CONCURRENCY, PART_SIZE,
};
use crate::s3::retry::{retry, Backoff};
use crate::s3::write_options;

/// A request body that can be sent again (a retry after a conflict or a
/// region switch): bytes in memory, or a file.
enum Source<'a> {
    Bytes(bytes::Bytes),
    /// Bytes and their `Content-MD5`, computed as they were made.
    Hashed(bytes::Bytes, String),
    File(&'a Path),
}

impl Source<'_> {
    async fn stream(&self) -> Result<ByteStream, String> {
        match self {
            Source::Bytes(b) | Source::Hashed(b, _) => Ok(ByteStream::from(b.clone())),
            Source::File(p) => ByteStream::from_path(p).await.map_err(|e| e.to_string()),
        }
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

impl S3Store {
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
            Source::Hashed(_, md5) => Ok(Some(md5.clone())),
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
            Source::Hashed(_, md5) => return Ok(Some(md5.clone())),
            Source::Bytes(b) => write_options::content_md5_of_bytes(b.clone()).await,
            Source::File(p) => write_options::content_md5_of_file(p, offset, Some(size)).await,
        };
        md5.map(Some).map_err(|e| self.other(key, format!("cannot read the data to upload: {e}")))
    }

    /// Writes a small object from memory. Returns the new ETag.
    pub async fn put_bytes(&self, key: &str, data: Vec<u8>, opts: PutOptions) -> Result<String, StoreError> {
        self.put_bytes_versioned(key, data, opts).await.map(|(etag, _)| etag)
    }

    /// [`S3Store::put_bytes`], with the version id S3 gave the object (in a
    /// versioned bucket).
    pub(crate) async fn put_bytes_versioned(&self, key: &str, data: Vec<u8>, opts: PutOptions) -> Result<(String, Option<String>), StoreError> {
        let span = tracing::debug_span!("s3.put", bucket = %self.bucket, key, bytes = data.len());
        async { self.put_body(key, Source::Bytes(data.into()), opts).await }.instrument(span).await
    }

    /// Whether this store's uploads send our own `Content-MD5` (see
    /// [`write_options::needs_content_md5`]): then [`S3Store::put_hashed`] wants it.
    pub(crate) fn needs_content_md5(&self) -> bool {
        write_options::needs_content_md5(&self.client.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// [`S3Store::put_bytes`] of a body whose `Content-MD5` the caller
    /// computed as it made it (None: [`S3Store::needs_content_md5`] is false).
    pub(crate) async fn put_hashed(&self, key: &str, data: Vec<u8>, md5: Option<String>, opts: PutOptions) -> Result<String, StoreError> {
        let span = tracing::debug_span!("s3.put", bucket = %self.bucket, key, bytes = data.len());
        let source = match md5 {
            Some(m) => Source::Hashed(data.into(), m),
            None => Source::Bytes(data.into()),
        };
        async { self.put_body(key, source, opts).await.map(|(etag, _)| etag) }.instrument(span).await
    }

    /// One PutObject of `data` under `condition` (with the bucket policy's
    /// headers) and nothing more: no
    /// retry after a 409, no look at who wrote the object after a 412, no
    /// write gate (the conditional-writes probe reads the store's answer
    /// as it is).
    pub(crate) async fn put_once(&self, key: &str, data: Vec<u8>, condition: &WriteCondition) -> Result<String, StoreError> {
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
        let sent = retry(
            CONFLICT_ATTEMPTS,
            Some(Backoff::CONFLICT),
            |_| self.call(&send),
            |e, attempt| {
                let again = is_conflict(e);
                if again {
                    tracing::info!(key, attempt, "409 ConditionalRequestConflict on a conditional write; trying again");
                }
                again
            },
        )
        .await;
        match sent {
            Ok(resp) => Ok((resp.e_tag().unwrap_or_default().to_string(), resp.version_id().map(str::to_string))),
            Err(e) => {
                let err = self.classify(e, key);
                if err.is_precondition_failed() {
                    if let Some(etag) = self.already_written(key, &source, &opts.condition).await {
                        return Ok((etag, None));
                    }
                }
                Err(err)
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
        let upload = |attempt| {
            // Progress is reported by the first upload only.
            let progress: &(dyn Fn(u64) + Send + Sync) = if attempt == 1 { on_bytes } else { &|_: u64| {} };
            self.put_multipart(key, path, len, opts.clone(), progress)
        };
        retry(CONFLICT_ATTEMPTS, Some(Backoff::CONFLICT), upload, |e: &StoreError, attempt| {
            let again = e.is_conflict();
            if again {
                tracing::info!(key, attempt, "409 ConditionalRequestConflict completing a multipart upload; uploading again");
            }
            again
        })
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
            Source::Bytes(b) | Source::Hashed(b, _) => ByteStream::from(b),
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
    pub(crate) async fn stage<R: tokio::io::AsyncRead + Unpin>(mut reader: R, tee: &mut tokio::fs::File) -> std::io::Result<Staged<R>> {
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
    pub(crate) async fn put_staged<R, F>(
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
                    Backoff::CONFLICT.sleep(1).await;
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

    /// Uploads the object whose bytes arrive on `parts` (each piece one part:
    /// at least [`super::MIN_PART_SIZE`] but the last) by a multipart upload,
    /// each part sent as soon as it arrives, up to [`PART_CONCURRENCY`] at
    /// once (memory: those, and what the channel holds). `finish` (the
    /// producer's answer) is awaited after the last piece and before the
    /// completion: if it fails, the upload is aborted, nothing is written,
    /// and its error is returned. A completion that meets a `409` is not
    /// tried again here (the parts are gone): the caller produces them again.
    pub(crate) async fn put_parts<F>(
        &self,
        key: &str,
        mut parts: tokio::sync::mpsc::Receiver<bytes::Bytes>,
        opts: PutOptions,
        finish: F,
        on_bytes: impl Fn(u64) + Send + Sync,
    ) -> Result<String, StoreError>
    where
        F: std::future::Future<Output = Result<(), String>> + Send,
    {
        use futures::stream::{FuturesUnordered, StreamExt};
        let span = tracing::debug_span!("s3.put_parts", bucket = %self.bucket, key);
        async {
            let upload_id = self.create_multipart(key, &opts).await?;
            let result: Result<Vec<CompletedPart>, StoreError> = async {
                let (mut in_flight, mut done, mut number) = (FuturesUnordered::new(), Vec::new(), 0i32);
                loop {
                    // The parts in flight are polled while the next piece is
                    // awaited: they upload as the producer makes the next.
                    let data = tokio::select! {
                        Some(part) = in_flight.next(), if !in_flight.is_empty() => {
                            done.push(part?);
                            continue;
                        }
                        piece = parts.recv(), if in_flight.len() < PART_CONCURRENCY => match piece {
                            Some(data) => data,
                            None => break,
                        },
                    };
                    number += 1;
                    if number as u64 > MAX_PARTS {
                        return Err(self.other(key, format!("more than S3's {MAX_PARTS} parts")));
                    }
                    let (upload_id, on_bytes, size) = (upload_id.clone(), &on_bytes, data.len() as u64);
                    in_flight.push(async move {
                        let part = self.upload_part(key, &upload_id, number, Source::Bytes(data), (0, size)).await?;
                        on_bytes(size);
                        Ok::<_, StoreError>(part)
                    });
                }
                while let Some(part) = in_flight.next().await {
                    done.push(part?);
                }
                finish.await.map_err(|m| self.other(key, m))?;
                done.sort_by_key(|p| p.part_number());
                Ok(done)
            }
            .await;
            self.finish_multipart(key, &upload_id, result, &opts.condition).await
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
}
