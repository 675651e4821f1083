//! One object of the bucket written again in another form: fetched into a
//! temp file, decrypted (with any generation of the remote key) when it is
//! an age file, and, once its caller has checked the plaintext and named
//! the new object, uploaded in plaintext or encrypted to the current key.
//! The piece shared by `access revoke --reencrypt` (packs, `.idx` and zips
//! of an older key generation, to the current one: `reencrypt`), the LFS
//! objects' rewrite (`lfs::rewrite_all`) and `migrate --encrypt-to` /
//! `--decrypt` (packs and `.idx`: `packs::crypt_migrate`). Everything goes
//! file to file on blocking threads: memory stays bounded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::{codec, CryptError, RemoteKey};
use crate::s3::store::{PutOptions, S3Store, WriteCondition};
use crate::storage::packs::storage::put_object;
use crate::storage::StorageError;

/// The form an object is in, or is written in.
#[derive(Clone, Copy)]
pub(crate) enum Form<'a> {
    Plaintext,
    /// An age file: read with any generation of the key, written to its current one.
    Encrypted(&'a Arc<RemoteKey>),
}

/// How [`put`] uploads.
pub(crate) enum Upload {
    /// Unconditionally (a new name), encrypted as it is uploaded: never
    /// on disk encrypted (`packs::storage::put_object`, as a push's packs).
    New,
    /// Create-only (`If-None-Match: *`) with this metadata, encrypted into
    /// a temp file first.
    CreateOnly(Vec<(String, String)>),
}

/// An object [`fetch`] downloaded, its plaintext in a temp file (removed when dropped).
pub(crate) struct Fetched {
    /// The object as it was downloaded.
    fetched: tempfile::NamedTempFile,
    /// Its plaintext, when it was an age file.
    decrypted: Option<tempfile::NamedTempFile>,
    /// The plaintext's SHA-256 (hex), when [`fetch`] was asked for it.
    pub(crate) sha256: Option<String>,
    /// `s3://<bucket>/<key>`, for messages.
    pub(crate) what: String,
}

impl Fetched {
    /// The file holding the plaintext.
    pub(crate) fn plaintext(&self) -> &Path {
        self.decrypted.as_ref().unwrap_or(&self.fetched).path()
    }

    /// The plaintext's size in bytes.
    pub(crate) async fn plaintext_len(&self) -> Result<u64, StorageError> {
        Ok(tokio::fs::metadata(self.plaintext()).await?.len())
    }
}

/// Downloads `from` into a temp file of `dir` and, when `form` says it is
/// an age file, decrypts it into another (a tampered or foreign one is a
/// [`CryptError::Decrypt`] naming it); with `hash`, the plaintext's
/// SHA-256 too, hashed as it is decrypted. A missing object is the store's
/// not-found error ([`is_missing`]).
pub(crate) async fn fetch(store: &S3Store, from: &str, form: Form<'_>, dir: &Path, hash: bool) -> Result<Fetched, StorageError> {
    let what = format!("s3://{}/{from}", store.bucket());
    let fetched = tempfile::Builder::new().prefix("src-").tempfile_in(dir)?;
    store.get_to_file(from, fetched.path(), |_| {}).await?;
    let (decrypted, sha256) = match form {
        Form::Plaintext if hash => (None, Some(sha256_of(fetched.path().to_path_buf()).await?)),
        Form::Plaintext => (None, None),
        Form::Encrypted(key) => {
            let plain = tempfile::Builder::new().prefix("plain-").tempfile_in(dir)?;
            let (src, dst) = (fetched.path().to_path_buf(), plain.path().to_path_buf());
            let sha256 = match hash {
                true => Some(codec::decrypt_hashing(key.clone(), src, dst, what.clone()).await?.0),
                false => {
                    codec::decrypt_file(key.clone(), src, dst, what.clone()).await?;
                    None
                }
            };
            (Some(plain), sha256)
        }
    };
    Ok(Fetched { fetched, decrypted, sha256, what })
}

/// Whether [`fetch`]'s error `e` says the object was not there.
pub(crate) fn is_missing(e: &StorageError) -> bool {
    matches!(e, StorageError::Store(e) if e.is_not_found())
}

/// Uploads the plaintext file `plain` to `to` in `form`, as `upload` says
/// (a temp file it needs goes in `dir`). Whether it was written: false when
/// a create-only upload found an object there already.
pub(crate) async fn put(store: &S3Store, plain: &Path, to: &str, form: Form<'_>, upload: Upload, dir: &Path) -> Result<bool, StorageError> {
    let metadata = match upload {
        Upload::New => {
            let key = match form {
                Form::Encrypted(key) => Some(key),
                Form::Plaintext => None,
            };
            put_object(store, key, to, plain, |_| {}).await?;
            return Ok(true);
        }
        Upload::CreateOnly(metadata) => metadata,
    };
    let encrypted;
    let body = match form {
        Form::Plaintext => plain,
        Form::Encrypted(key) => {
            encrypted = tempfile::Builder::new().prefix("enc-").tempfile_in(dir)?;
            codec::encrypt_file(key.clone(), plain.to_path_buf(), encrypted.path().to_path_buf()).await?;
            encrypted.path()
        }
    };
    let create_only = PutOptions { condition: WriteCondition::IfAbsent, metadata, ..Default::default() };
    match store.put_file(to, body, create_only, |_| {}).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_precondition_failed() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The SHA-256 (hex) of a file, read on a blocking thread.
async fn sha256_of(path: PathBuf) -> Result<String, CryptError> {
    codec::blocking(move || {
        let mut f = std::fs::File::open(&path)?;
        let mut hash = Sha256::new();
        std::io::copy(&mut f, &mut hash)?;
        Ok(hex::encode(hash.finalize()))
    })
    .await
}
