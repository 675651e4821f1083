//! `PackStorage`: a packs remote as one session sees it: the manifest read
//! at detection (served to the first `list`), the manifest the last `list`
//! showed (what `fetch` downloads from and a push starts from), and the
//! `refs/` scan made at detection.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tracing::Instrument;

use crate::s3::store::{part_size, PutOptions, S3Store, MULTIPART_THRESHOLD};
use crate::s3::url::RemoteUrl;
use crate::storage::crypt::{codec, RemoteKey};
use crate::storage::detect::{scan_refs_dir, RefsDir};
use crate::storage::packs::binding;
use crate::storage::packs::manifest::{read_manifest, Manifest, PackEntry};
use crate::storage::StorageError;

pub(crate) struct PackStorage {
    pub(super) store: S3Store,
    pub(super) url: RemoteUrl,
    /// The manifest (and ETag) read at detection, served to the first `list`.
    pub(super) seed: Mutex<Option<Option<(Manifest, String)>>>,
    /// The manifest the last `list` showed and its ETag (None: no manifest
    /// yet): what `fetch` downloads from and a push's first attempt starts from.
    pub(super) listed: Mutex<Option<(Manifest, Option<String>)>>,
    /// The `refs/` scan made at detection, if one was: a push's first
    /// attempt uses it instead of listing again.
    pub(super) refs: Mutex<Option<RefsDir>>,
    /// Pack downloads that broke off and were made again (their
    /// index-pack's temp file is removed once the fetch is done).
    pub(super) broken_streams: std::sync::atomic::AtomicU32,
    /// An encrypted remote's key (issue 22): its packs and `.idx` are age
    /// files under HMAC'd names (see `object_key`, `put_object`, `get_object`).
    pub(super) key: Option<Arc<RemoteKey>>,
}

impl PackStorage {
    pub(crate) fn new(store: S3Store, url: RemoteUrl, seed: Option<(Manifest, String)>, refs: Option<RefsDir>) -> PackStorage {
        PackStorage {
            store,
            url,
            seed: Mutex::new(Some(seed)),
            listed: Mutex::new(None),
            refs: Mutex::new(refs),
            broken_streams: std::sync::atomic::AtomicU32::new(0),
            key: None,
        }
    }

    /// An encrypted remote, opened with `key`.
    pub(crate) fn with_key(mut self, key: Option<Arc<RemoteKey>>) -> PackStorage {
        self.key = key;
        self
    }

    pub(crate) fn is_encrypted(&self) -> bool {
        self.key.is_some()
    }

    /// The object of pack `name`'s `.pack` (`ext` "pack") or `.idx` ("idx"),
    /// as this session writes it (an encrypted remote: the current key).
    pub(super) fn object_key(&self, name: &str, ext: &str) -> String {
        object_key(&self.url, self.key.as_deref(), name, ext)
    }

    /// The object of the manifest entry `p`'s `.pack` or `.idx`: in an
    /// encrypted remote, named with the key generation the entry records.
    pub(super) fn entry_object_key(&self, p: &PackEntry, ext: &str) -> Result<String, StorageError> {
        entry_object_key(&self.url, self.key.as_deref(), p, ext)
    }

    /// The `PROTECTED#` markers, when `refs/` has been scanned.
    pub(super) fn markers(&self) -> BTreeSet<String> {
        self.refs.lock().ok().and_then(|r| r.as_ref().map(|r| r.markers.clone())).unwrap_or_default()
    }

    /// The `refs/` scan detection made, if it made one (taken: a retry lists again).
    pub(super) fn take_refs(&self) -> Option<RefsDir> {
        self.refs.lock().ok().and_then(|mut r| r.take())
    }

    /// A fresh `refs/` scan (one LIST).
    pub(super) async fn scan_refs(&self) -> Result<RefsDir, StorageError> {
        scan_refs_dir(&self.store, &self.url).await
    }

    /// The manifest and its ETag: the one read at detection the first time,
    /// then a fresh read.
    pub(super) async fn current_manifest(&self) -> Result<Option<(Manifest, String)>, StorageError> {
        let seeded = self.seed.lock().ok().and_then(|mut s| s.take());
        match seeded {
            Some(m) => Ok(m),
            None => read_manifest(&self.store, &self.url).await,
        }
    }

    /// The manifest the last `list` showed (kept), else a fresh read.
    pub(crate) async fn listed_manifest(&self) -> Result<Manifest, StorageError> {
        let listed = self.listed.lock().ok().and_then(|l| l.as_ref().map(|l| l.0.clone()));
        match listed {
            Some(m) => Ok(m),
            None => Ok(read_manifest(&self.store, &self.url).await?.map(|(m, _)| m).unwrap_or_default()),
        }
    }

    /// What the last `list` showed (taken: a retry re-reads the manifest).
    pub(super) fn take_listed(&self) -> Option<(Manifest, Option<String>)> {
        self.listed.lock().ok().and_then(|mut l| l.take())
    }
}

/// The key of pack `name`'s `.pack` / `.idx` (`ext`): `pack-<name>.<ext>`,
/// or in an encrypted remote an HMAC of that name keyed from the remote
/// key, so keys reveal no hash.
pub(crate) fn object_key(url: &RemoteUrl, key: Option<&RemoteKey>, name: &str, ext: &str) -> String {
    match key {
        Some(k) => url.key(&format!("{}/packs/{}", crate::storage::packs::manifest::META_DIR, k.object_name(&format!("pack-{name}.{ext}")))),
        None => url.key(&format!("{}/packs/pack-{name}.{ext}", crate::storage::packs::manifest::META_DIR)),
    }
}

/// [`object_key`] of the manifest entry `p`: with the key of the generation it records.
pub(crate) fn entry_object_key(url: &RemoteUrl, key: Option<&RemoteKey>, p: &PackEntry, ext: &str) -> Result<String, StorageError> {
    match key {
        None => Ok(object_key(url, None, &p.name, ext)),
        Some(k) => match k.of_generation(p.key) {
            Some(g) => Ok(object_key(url, Some(g), &p.name, ext)),
            None => Err(StorageError::Corrupt(format!(
                "the manifest says pack {} is encrypted with key generation {}, which the keyring of {url} does not hold (fetch again; else restore the keyring)",
                p.name,
                p.key.unwrap_or(1)
            ))),
        },
    }
}

/// Uploads the file at `path` to `object`: as it is, or encrypted to the
/// remote key as it is uploaded ([`put_encrypted`]).
pub(crate) async fn put_object(
    store: &S3Store,
    key: Option<&Arc<RemoteKey>>,
    object: &str,
    path: &Path,
    on_bytes: impl Fn(u64) + Send + Sync,
) -> Result<(), StorageError> {
    match key {
        None => {
            store.put_file(object, path, PutOptions::default(), on_bytes).await?;
        }
        Some(k) => put_encrypted(store, k, object, path, on_bytes, None).await?,
    }
    Ok(())
}

/// What runs in the encryption of a multipart upload once its first part
/// is handed to the upload (a test hook's gate).
pub(crate) type AfterFirstPart = Option<Box<dyn FnOnce() + Send>>;

/// Uploads the file at `path` encrypted to `key`, never written to disk
/// encrypted: within the single-PUT threshold, encrypted into memory then
/// PUT (the body's Content-MD5, when one is sent, needs the whole body
/// first: it is hashed as the encryption makes it); above it, a multipart upload whose parts are uploaded as the
/// encryption produces them, on a blocking thread, so the encryption
/// overlaps the upload (memory: the parts in flight and one more). A
/// pack's upload is unconditional (a new name): no `409` to meet.
pub(crate) async fn put_encrypted(
    store: &S3Store,
    key: &Arc<RemoteKey>,
    object: &str,
    path: &Path,
    on_bytes: impl Fn(u64) + Send + Sync,
    after_first: AfterFirstPart,
) -> Result<(), StorageError> {
    let len = tokio::fs::metadata(path).await?.len();
    let most = codec::ciphertext_len_max(len);
    if most <= MULTIPART_THRESHOLD {
        let span = tracing::debug_span!("crypt.encrypt", bytes = len);
        let hashed = codec::encrypt_file_to_memory(key.clone(), path.to_path_buf(), store.needs_content_md5());
        let (data, md5) = hashed.instrument(span).await?;
        let n = data.len() as u64;
        store.put_hashed(object, data, md5, PutOptions::default()).await?;
        on_bytes(n);
        return Ok(());
    }
    let part = part_size(most).ok_or_else(|| StorageError::Format(format!("{} is too large for one S3 object (5 TiB)", path.display())))?;
    // One piece waiting beside the parts in flight.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let producer = codec::encrypt_file_to_parts(key.clone(), path.to_path_buf(), part as usize, tx, after_first);
    let finish = async {
        match producer.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("encrypting {}: {e}", path.display())),
            Err(e) => Err(format!("encrypting {}: {e}", path.display())),
        }
    };
    // Unconditional: its completion meets no `409 ConditionalRequestConflict`.
    store.put_parts(object, rx, PutOptions::default(), finish, on_bytes).await?;
    Ok(())
}

/// Downloads `object` of an encrypted remote, pack `name`'s `.pack` (`ext`
/// "pack") or `.idx` ("idx"), and decrypts it into `dest` (the ciphertext
/// goes to a temp file beside it first). An object that decrypts but is
/// not that pack's (objects swapped in the bucket) is refused in one line.
pub(crate) async fn get_object(
    store: &S3Store,
    key: &Arc<RemoteKey>,
    (object, name, ext): (&str, &str, &'static str),
    dest: &Path,
    on_bytes: impl FnMut(u64) + Send,
) -> Result<(), StorageError> {
    let tmp = codec::temp_beside(dest)?;
    store.get_to_file(object, tmp.path(), on_bytes).await?;
    let what = format!("s3://{}/{object}", store.bucket());
    codec::decrypt_file(key.clone(), tmp.path().to_path_buf(), dest.to_path_buf(), what.clone()).await?;
    check_binding(&what, dest, name, ext).await
}

/// Refuses the plaintext `path` of the object `what`, fetched as pack
/// `name`'s `.ext`, when it holds something else (see `binding`).
pub(crate) async fn check_binding(what: &str, path: &Path, name: &str, ext: &'static str) -> Result<(), StorageError> {
    match binding::mismatch(path.to_path_buf(), name.to_string(), ext).await? {
        Some(instead) => Err(swapped(what, name, ext, &instead)),
        None => Ok(()),
    }
}

/// The refusal of object `what`, fetched as pack `name`'s `.ext`, which
/// holds something else (`instead`, see `binding`).
pub(super) fn swapped(what: &str, name: &str, ext: &str, instead: &str) -> StorageError {
    StorageError::Corrupt(format!(
        "{what} should be pack {name}'s .{ext} but {instead}: objects were swapped or replaced in the bucket; refusing it (nothing was indexed)"
    ))
}
