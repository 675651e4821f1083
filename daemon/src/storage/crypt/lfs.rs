//! LFS objects of an encrypted remote (issue 22): each is a standard age
//! file encrypted to the remote key, at `<prefix>/.git-s3/lfs/<name>`, where
//! `<name>` is the HMAC of `lfs/<oid>` under the key generation that wrote
//! it (`RemoteKey::object_name`): no oid in the bucket. LFS objects are not
//! in the manifest, so a reader tries every generation the keyring holds,
//! the current one first; a writer always uses the current one. The
//! decrypted content's SHA-256 must be the oid (a swapped object decrypts,
//! but holds another oid). Files are encrypted and decrypted file to file
//! on a blocking thread (age's 64 KiB STREAM chunks): memory stays bounded
//! whatever the object's size.

use std::path::Path;
use std::sync::Arc;

use super::rewrap::{self, Form, Upload};
use super::{RemoteKey, AGE_MAGIC};
use crate::s3::store::S3Store;
use crate::s3::url::RemoteUrl;
use crate::storage::StorageError;

/// Where an encrypted remote keeps its LFS objects, under its prefix.
pub(crate) const LFS_DIR: &str = ".git-s3/lfs/";

/// The largest age header of one X25519 recipient (its stanza, age's random
/// "grease" stanza and the MAC are a few hundred bytes).
const MAX_HEADER: u64 = 4096;

/// The object key of LFS object `oid` under `key`'s generation.
pub(crate) fn object_key(url: &RemoteUrl, key: &RemoteKey, oid: &str) -> String {
    url.key(&format!("{LFS_DIR}{}", key.object_name(&format!("lfs/{oid}"))))
}

/// The keys `oid` may be at: under each generation the keyring holds, the current one first.
pub(crate) fn candidate_keys(url: &RemoteUrl, key: &RemoteKey, oid: &str) -> Vec<String> {
    key.generations().map(|k| object_key(url, k, oid)).collect()
}

/// Whether an age file of `cipher` bytes can hold `plain` bytes (age adds a
/// header of varying size and 16 bytes per 64 KiB chunk): what an existence
/// check accepts as the object already uploaded.
pub(crate) fn plausible_size(plain: u64, cipher: u64) -> bool {
    let payload = plain + 16 * plain.div_ceil(64 * 1024).max(1);
    cipher > payload + AGE_MAGIC.len() as u64 && cipher <= payload + MAX_HEADER
}

/// The form [`rewrite_all`] brings a remote's LFS objects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// Encrypted, the plaintext ones to the current key at their keyed names
    /// (`migrate --encrypt-to`: age files of any generation are left as they are).
    Encrypted,
    /// Encrypted to the current key, at its keyed name (`revoke --reencrypt`).
    Current,
    /// Plaintext at `lfs/<oid>` (`migrate --decrypt`).
    Plaintext,
}

/// What [`rewrite_all`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rewritten {
    /// Objects written in the target form.
    pub(crate) written: usize,
    /// Objects of another form deleted (each after its copy was there).
    pub(crate) deleted: usize,
}

/// Brings every LFS object of `url` to `target`: each plaintext `lfs/<oid>`
/// (unless decrypting) and each age file under `.git-s3/lfs/` (unless
/// [`Target::Encrypted`]) not in the target form is downloaded into `tmp`, checked (a plaintext one against
/// its oid; an age file decrypts with one of `key`'s generations, and its
/// SHA-256 is its oid), written in the target form unless it is there
/// already, then deleted. One object at a time, file to file. A reader meanwhile finds
/// each object in one form or the other (the agent reads both on an
/// encrypted remote); a rerun after a crash goes on where it stopped.
pub(crate) async fn rewrite_all(
    store: &S3Store,
    url: &RemoteUrl,
    key: &Arc<RemoteKey>,
    target: Target,
    tmp: &Path,
) -> Result<Rewritten, StorageError> {
    tokio::fs::create_dir_all(tmp).await?;
    let dir = tempfile::Builder::new().prefix("lfs-").tempdir_in(tmp)?;
    let mut sources = Vec::new();
    if target != Target::Plaintext {
        let plain = url.key("lfs/");
        for o in store.list(&plain).await? {
            if let Some(oid) = o.key.strip_prefix(&plain).filter(|o| crate::local::oid::ObjectFormat::Sha256.accepts(o)) {
                sources.push((o.key.clone(), Some(oid.to_string())));
            }
        }
    }
    if target != Target::Encrypted {
        sources.extend(store.list(&url.key(LFS_DIR)).await?.into_iter().map(|o| (o.key, None)));
    }
    let mut done = Rewritten::default();
    for (from, oid) in sources {
        let (written, deleted) = rewrite_one(store, url, key, &from, oid, target, dir.path()).await?;
        done.written += usize::from(written);
        done.deleted += usize::from(deleted);
    }
    Ok(done)
}

/// [`rewrite_all`] of the object `from` (`oid`: a plaintext one's name):
/// (written, deleted).
async fn rewrite_one(
    store: &S3Store,
    url: &RemoteUrl,
    key: &Arc<RemoteKey>,
    from: &str,
    oid: Option<String>,
    target: Target,
    dir: &Path,
) -> Result<(bool, bool), StorageError> {
    let read = if oid.is_some() { Form::Plaintext } else { Form::Encrypted(key) };
    let fetched = match rewrap::fetch(store, from, read, dir, true).await {
        Ok(fetched) => fetched,
        // Moved meanwhile (a concurrent run).
        Err(e) if rewrap::is_missing(&e) => return Ok((false, false)),
        Err(e) => return Err(e),
    };
    // Asked for: `fetch` hashed it.
    let sha = fetched.sha256.clone().unwrap_or_default();
    if oid.as_ref().is_some_and(|o| *o != sha) {
        return Err(StorageError::Corrupt(format!(
            "{} is not LFS object {} (its SHA-256 is {sha}): delete it, or push it again",
            fetched.what,
            oid.unwrap_or_default()
        )));
    }
    let (to, form) = match target {
        Target::Encrypted | Target::Current => (object_key(url, key, &sha), Form::Encrypted(key)),
        Target::Plaintext => (url.key(&format!("lfs/{sha}")), Form::Plaintext),
    };
    if to == from {
        return Ok((false, false));
    }
    let written = store.head(&to).await?.is_none();
    if written {
        // Create-only: an object there meanwhile is the same content.
        rewrap::put(store, fetched.plaintext(), &to, form, Upload::CreateOnly(Vec::new()), dir).await?;
    }
    store.delete(from).await?;
    Ok((written, true))
}

#[cfg(test)]
mod tests {
    use super::super::codec::decrypt_hashing;
    use super::super::CryptError;
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn names_are_keyed_per_generation_and_reveal_no_oid() {
        let url = RemoteUrl::parse("s3://bkt/p").unwrap();
        let k = RemoteKey::generate().rotated();
        let oid = "ab".repeat(32);
        let keys = candidate_keys(&url, &k, &oid);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0], object_key(&url, &k, &oid));
        assert!(keys.iter().all(|x| x.starts_with("p/.git-s3/lfs/") && !x.contains(&oid)));
        assert_ne!(keys[0], keys[1]);
        // not a pack's name under the same key
        assert_ne!(k.object_name(&format!("lfs/{oid}")), k.object_name(&format!("pack-{oid}.pack")));
    }

    #[tokio::test]
    async fn round_trip_hashes_and_sizes_are_plausible() {
        let k = Arc::new(RemoteKey::generate());
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
        for data in [Vec::new(), b"hello\n".to_vec(), (0..200_000u32).map(|i| (i % 251) as u8).collect()] {
            std::fs::write(&a, &data).unwrap();
            super::super::codec::encrypt_file(k.clone(), a.clone(), b.clone()).await.unwrap();
            let cipher = std::fs::metadata(&b).unwrap().len();
            assert!(plausible_size(data.len() as u64, cipher), "{} -> {cipher}", data.len());
            assert!(!plausible_size(data.len() as u64 + 70_000, cipher));
            let (sha, len) = decrypt_hashing(k.clone(), b.clone(), c.clone(), "o".into()).await.unwrap();
            assert_eq!((sha, len), (hex::encode(Sha256::digest(&data)), data.len() as u64));
            assert_eq!(std::fs::read(&c).unwrap(), data);
        }
        // a flipped byte: refused
        let mut bad = std::fs::read(&b).unwrap();
        let n = bad.len() - 5;
        bad[n] ^= 1;
        std::fs::write(&b, bad).unwrap();
        let r = decrypt_hashing(k, b, c, "o".into()).await;
        assert!(matches!(r, Err(CryptError::Decrypt { .. })), "{r:?}");
    }
}
