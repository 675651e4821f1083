//! Downloads: small objects into memory (conditional GETs too), objects
//! streamed to files (a broken-off download resumed or tried again), and
//! byte ranges written in place for parallel ranged downloads.

use std::future::Future;
use std::path::Path;

use aws_sdk_s3::primitives::ByteStream;
use tokio::io::AsyncWriteExt;
use tracing::Instrument;

use super::{Conditional, S3Store, StoreError, DOWNLOAD_ATTEMPTS};
use crate::s3::retry::retry;

/// The retry rule of every download: tried again when it broke off (said
/// in the log), not on any other error.
fn broke_off<'a>(what: &'a str, key: &'a str) -> impl FnMut(&StoreError, u32) -> bool + 'a {
    move |e, attempt| {
        let again = e.is_interrupted();
        if again {
            tracing::warn!(key, attempt, error = %e, "{what} broke off; trying again");
        }
        again
    }
}

impl S3Store {
    /// A small object's content (HEAD, markers), or None when absent; a
    /// response that breaks off is read again (up to [`DOWNLOAD_ATTEMPTS`]).
    pub async fn get_small(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.again_if_interrupted(key, || self.get_small_once(key)).await
    }

    /// Runs a read until it does not break off, [`DOWNLOAD_ATTEMPTS`] times at most.
    pub(super) async fn again_if_interrupted<T, Fut: Future<Output = Result<T, StoreError>>>(
        &self,
        key: &str,
        read: impl Fn() -> Fut,
    ) -> Result<T, StoreError> {
        retry(DOWNLOAD_ATTEMPTS, None, |_| read(), broke_off("read", key)).await
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
    pub(crate) async fn get_small_if_changed(&self, key: &str, etag: Option<&str>) -> Result<Conditional, StoreError> {
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

    /// Streams an object into `dest` (created/truncated). Returns its ETag and
    /// size. `on_bytes` is called as data arrives. Fails when fewer bytes
    /// arrive than the object's length (truncated transfer).
    /// A download that breaks off is tried again from the start, up to
    /// [`DOWNLOAD_ATTEMPTS`] times in all.
    pub async fn get_to_file(&self, key: &str, dest: &Path, on_bytes: impl FnMut(u64) + Send) -> Result<(String, u64), StoreError> {
        // Each try borrows the callback: shared through a lock, as the
        // future of one try cannot hold a `&mut` of the retry loop's closure.
        let on_bytes = std::sync::Mutex::new(on_bytes);
        let get = |_| {
            let on_bytes = &on_bytes;
            async move { self.get_to_file_tee(key, dest, None, &mut |n| bytes_arrived(on_bytes, n)).await }
        };
        let got = retry(DOWNLOAD_ATTEMPTS, None, get, broke_off("download", key)).await;
        got.map(|(etag, n, _)| (etag, n))
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
    pub(crate) async fn get_to_file_tee(
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

    /// Streams bytes `[offset, offset + len)` of an object into `dest` at the
    /// same offset (the file must exist; it is not truncated), so several
    /// ranges can fill one file in parallel. `if_match` pins the object
    /// version (an ETag from a HEAD). A range that breaks off is tried again
    /// (up to [`DOWNLOAD_ATTEMPTS`] times in all); then the error is
    /// returned. Returns the bytes written; `on_bytes` is called as data
    /// arrives.
    pub(crate) async fn get_range_to_file(
        &self,
        key: &str,
        dest: &Path,
        offset: u64,
        len: u64,
        if_match: Option<&str>,
        on_bytes: impl FnMut(u64) + Send,
    ) -> Result<u64, StoreError> {
        let on_bytes = std::sync::Mutex::new(on_bytes);
        let get = |_| {
            let on_bytes = &on_bytes;
            async move { self.get_range_once(key, dest, offset, len, if_match, &mut |n| bytes_arrived(on_bytes, n)).await }
        };
        let what = format!("ranged download at {offset}");
        retry(DOWNLOAD_ATTEMPTS, None, get, broke_off(&what, key)).await
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

/// `on_bytes` of a download, shared by its tries.
fn bytes_arrived(on_bytes: &std::sync::Mutex<impl FnMut(u64)>, n: u64) {
    if let Ok(mut on_bytes) = on_bytes.lock() {
        on_bytes(n);
    }
}
