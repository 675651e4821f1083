//! The agent's uploads and downloads on an encrypted remote (issue 22): an
//! LFS object is an age file encrypted to the remote key at a keyed name
//! (`storage::crypt::lfs`). An upload encrypts the file into a temp file of
//! the cache's filesystem, then uploads that; a download fetches the age
//! file into a temp file (ranged parallel GETs for large ones, as for
//! plaintext), then decrypts it into another, hashing as it goes. Only a
//! plaintext that authenticated and whose SHA-256 is the oid reaches
//! git-lfs's temp directory and the local cache (which hold plaintext, as
//! the repository does).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Agent, AgentError, Progress, Request, RANGED_THRESHOLD, SMALL_OBJECT};
use crate::local::files::blocking;
use crate::s3::store::{PutOptions, S3Store, WriteCondition};
use crate::s3::url::RemoteUrl;
use crate::storage::crypt::lfs::{candidate_keys, object_key, plausible_size};
use crate::storage::crypt::{codec, RemoteKey};

impl Agent {
    /// Uploads `path` (`len` bytes) encrypted to the current key, unless the
    /// bucket has it there already.
    pub(super) async fn upload_encrypted(
        &self,
        url: &RemoteUrl,
        store: &S3Store,
        key: &Arc<RemoteKey>,
        path: &Path,
        oid: &str,
        len: u64,
    ) -> Result<(), AgentError> {
        let name = object_key(url, key, oid);
        // A large object is encrypted only when the bucket lacks it.
        if len > SMALL_OBJECT && self.present(store, &name, len).await? {
            return Ok(());
        }
        let c = self.state.cache.clone();
        let temp = blocking(move || c.temp_file()).await?;
        codec::encrypt_file(key.clone(), path.to_path_buf(), temp.path().to_path_buf()).await?;
        let progress = Progress::capped(&self.out, oid, len);
        // A small one: one create-only PUT; a 412 means it exists (then check it).
        let condition = if len <= SMALL_OBJECT { WriteCondition::IfAbsent } else { WriteCondition::None };
        let p = progress.clone();
        match store.put_file(&name, temp.path(), PutOptions { condition, ..Default::default() }, move |n| p.add(n)).await {
            Ok(_) => {}
            Err(e) if e.is_precondition_failed() => {
                if self.present(store, &name, len).await? {
                    return Ok(());
                }
                let p = progress.clone();
                store.put_file(&name, temp.path(), PutOptions::default(), move |n| p.add(n)).await?;
            }
            Err(e) => return Err(e.into()),
        }
        progress.finish();
        self.log.debug(&format!("upload {oid}: {len} bytes uploaded encrypted"));
        Ok(())
    }

    /// Whether `name` holds an age file of the size an object of `len` bytes has.
    async fn present(&self, store: &S3Store, name: &str, len: u64) -> Result<bool, AgentError> {
        match store.head(name).await? {
            Some(info) if plausible_size(len, info.size) => {
                self.log.debug(&format!("upload: {name} already in the bucket, skipped"));
                Ok(true)
            }
            Some(info) => {
                self.log.error(&format!("upload: {name} has {} bytes, not an object of {len}; uploading it again", info.size));
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// Downloads LFS object `oid` (not in the cache) from an encrypted remote
    /// into `tmp_dir` and the cache.
    pub(super) async fn download_encrypted(
        &self,
        req: &Request,
        oid: &str,
        url: &RemoteUrl,
        store: &S3Store,
        key: &Arc<RemoteKey>,
        tmp_dir: PathBuf,
    ) -> Result<PathBuf, AgentError> {
        let progress = Progress::capped(&self.out, oid, req.size.unwrap_or(u64::MAX));
        let cache = self.state.cache.clone();
        let c = cache.clone();
        let fetched = blocking(move || c.temp_file()).await?;
        // Every key generation's name, then the plaintext one: an object
        // uploaded before the remote was encrypted (or during `git s3
        // migrate`, which moves them), checked against its oid all the same.
        let plaintext = url.key(&format!("lfs/{oid}"));
        let mut found = None;
        for name in candidate_keys(url, key, oid).into_iter().chain([plaintext.clone()]) {
            if self.fetch_cipher(store, &name, fetched.path(), req.size, &progress).await? {
                found = Some(name);
                break;
            }
        }
        let Some(name) = found else {
            return Err(AgentError::Missing { oid: oid.to_string(), bucket: url.bucket.clone(), key: object_key(url, key, oid) });
        };
        progress.finish();
        let (plain, sha, len) = if name == plaintext {
            let (sha, len) = super::sha256_file(fetched.path()).await?;
            (fetched, sha, len)
        } else {
            let c = cache.clone();
            let plain = blocking(move || c.temp_file()).await?;
            let what = format!("s3://{}/{name}", url.bucket);
            let (sha, len) = codec::decrypt_hashing(key.clone(), fetched.path().to_path_buf(), plain.path().to_path_buf(), what).await?;
            (plain, sha, len)
        };
        if let Some(expected) = req.size.filter(|&s| s != len) {
            return Err(AgentError::SizeMismatch { oid: oid.to_string(), bucket: url.bucket.clone(), key: name, actual: len, expected });
        }
        if sha != oid {
            return Err(AgentError::Swapped { oid: oid.to_string(), bucket: url.bucket.clone(), key: name, actual: sha });
        }
        self.log.debug(&format!("download {oid}: {len} bytes, decrypted, SHA-256 verified"));
        self.deliver(plain, tmp_dir, oid).await
    }

    /// Downloads the object `name` into `dest`; false when it does not exist.
    async fn fetch_cipher(&self, store: &S3Store, name: &str, dest: &Path, size: Option<u64>, progress: &Arc<Progress>) -> Result<bool, AgentError> {
        let p = progress.clone();
        if size.is_some_and(|s| s <= RANGED_THRESHOLD) {
            return match store.get_to_file(name, dest, move |n| p.add(n)).await {
                Ok(_) => Ok(true),
                Err(e) if e.is_not_found() => Ok(false),
                Err(e) => Err(e.into()),
            };
        }
        let Some(info) = store.head(name).await? else { return Ok(false) };
        if info.size > RANGED_THRESHOLD {
            let d = dest.to_path_buf();
            blocking(move || std::fs::OpenOptions::new().write(true).open(&d)?.set_len(info.size)).await?;
            self.get_ranges(store, name, dest, info.size, &info.etag, progress).await?;
        } else {
            store.get_to_file(name, dest, move |n| p.add(n)).await?;
        }
        Ok(true)
    }
}
