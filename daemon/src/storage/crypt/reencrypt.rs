//! `git s3 access revoke --reencrypt`, after the revoke's rotation: every
//! pack and `.idx` (the views' too) the manifest marks with an older key generation is
//! decrypted and encrypted again to the current key, under its new name
//! (the current key's HMAC); the manifest is then swapped by one
//! conditional write that marks those packs with the current generation;
//! then the old objects are deleted, the LFS objects of older keys
//! re-encrypted (`lfs::rewrite_all`: they are not in the manifest), and the
//! older keys dropped from the keyring.
//!
//! Crash-safe by its order: a reader of the manifest only ever sees names
//! that exist (the new objects are uploaded before the swap, the old ones
//! deleted after it), and a rerun finishes: objects already re-encrypted
//! are not uploaded again, the old names are computed from the older keys
//! (still in the keyring until the very last step) for every pack of the
//! manifest, and deleting what is already gone is no error.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use super::rewrap::{self, Form, Upload};
use super::{access, CryptError, RemoteKey};
use crate::s3::store::S3Store;
use crate::s3::url::RemoteUrl;
use crate::storage::packs::manifest::{self, read_manifest, update_manifest, PackEntry};
use crate::storage::packs::storage::{check_binding, entry_object_key, object_key};
use crate::storage::zip::{encrypted_zip_key, older_encrypted_zip_keys, ZIP_SERIAL_META};
use crate::storage::StorageError;

/// Rounds of (re-encrypt, swap): more than one only when pushes with an
/// older key (begun before the revoke) land meanwhile.
const ROUNDS: u32 = 8;

/// What a re-encryption did.
#[derive(Debug, Default)]
pub(crate) struct Reencrypted {
    /// Objects (packs and `.idx`) encrypted again to the current key.
    pub(crate) objects: usize,
    /// Objects of older keys deleted.
    pub(crate) deleted: usize,
    /// Older keys dropped from the keyring.
    pub(crate) dropped: usize,
}

/// Re-encrypts `url`'s remote to its current key (see the file's comment);
/// `tmp` holds each object's plaintext while it is re-encrypted.
pub(crate) async fn reencrypt(store: &S3Store, url: &RemoteUrl, env: &HashMap<String, String>, tmp: &Path) -> Result<Reencrypted, StorageError> {
    let key = access::current_key(store, url, env).await?;
    let mut done = Reencrypted::default();
    tokio::fs::create_dir_all(tmp).await.map_err(CryptError::Io)?;
    let mut swapped = false;
    for _ in 0..ROUNDS {
        let Some((m, _)) = read_manifest(store, url).await? else {
            return Err(StorageError::Format(format!("{url} has no packs manifest")));
        };
        // The packs and the views' packs (written encrypted by gc and after pushes).
        let old: Vec<&PackEntry> = m.live_packs().filter(|p| p.key.unwrap_or(1) != key.generation()).collect();
        if old.is_empty() {
            swapped = true;
            break;
        }
        let mut moved = BTreeSet::new();
        for p in old {
            done.objects += reencrypt_pack(store, url, &key, p, tmp).await?;
            moved.insert(p.name.clone());
        }
        let generation = key.generation();
        update_manifest(store, url, |m| {
            let mut changed = false;
            for p in m.live_packs_mut().filter(|p| p.key.unwrap_or(1) != generation && moved.contains(&p.name)) {
                p.key = Some(generation);
                // Its object map (of the older key) is not moved: a lazy fetch reads the .idx.
                p.map_size = 0;
                changed = true;
            }
            Ok(changed)
        })
        .await?;
    }
    if !swapped {
        return Err(StorageError::Format(format!("{url}: pushes with an older key kept landing; run `git s3 access revoke --reencrypt` again")));
    }
    done.objects += reencrypt_zips(store, url, &key, tmp).await?;
    #[cfg(feature = "test-hooks")]
    crate::test_hooks::crash_during_reencrypt(env);
    done.deleted = delete_old_objects(store, url, &key).await?;
    // LFS objects (not in the manifest) of older keys, before those keys go.
    let lfs = super::lfs::rewrite_all(store, url, &key, super::lfs::Target::Current, tmp).await?;
    (done.objects, done.deleted) = (done.objects + lfs.written, done.deleted + lfs.deleted);
    done.dropped = access::drop_older_keys(store, url, env).await?;
    Ok(done)
}

/// Pack `p`'s `.pack` and `.idx` encrypted again to the current key under
/// their new names (skipped when already there: a rerun); how many were written.
async fn reencrypt_pack(store: &S3Store, url: &RemoteUrl, key: &Arc<RemoteKey>, p: &PackEntry, tmp: &Path) -> Result<usize, StorageError> {
    let mut written = 0;
    for ext in ["pack", "idx"] {
        let to = object_key(url, Some(&**key), &p.name, ext);
        if store.head(&to).await?.is_some() {
            continue;
        }
        let from = entry_object_key(url, Some(&**key), p, ext)?;
        let fetched = match rewrap::fetch(store, &from, Form::Encrypted(key), tmp, false).await {
            Ok(fetched) => fetched,
            // A `.idx` is uploaded after the push answered, and restored when missing: none to move.
            Err(e) if rewrap::is_missing(&e) && ext == "idx" => continue,
            Err(e) => return Err(e),
        };
        check_binding(&fetched.what, fetched.plaintext(), &p.name, ext).await?;
        rewrap::put(store, fetched.plaintext(), &to, Form::Encrypted(key), Upload::New, tmp).await?;
        written += 1;
    }
    Ok(written)
}

/// Deletes, for every pack of the manifest, the objects its older key
/// generations would name (one listing says which exist); how many.
async fn delete_old_objects(store: &S3Store, url: &RemoteUrl, key: &Arc<RemoteKey>) -> Result<usize, StorageError> {
    let Some((m, _)) = read_manifest(store, url).await? else {
        return Ok(0);
    };
    let existing: BTreeSet<String> = store.list(&manifest::packs_dir(url)).await?.into_iter().map(|o| o.key).collect();
    let mut deleted = 0;
    for dst in m.refs.keys() {
        for old in older_encrypted_zip_keys(url, key, dst) {
            if store.head(&old).await?.is_some() {
                store.delete(&old).await?;
                deleted += 1;
            }
        }
    }
    for p in m.live_packs() {
        for older in key.generations().skip(1) {
            for ext in ["pack", "idx", "map"] {
                let name = object_key(url, Some(older), &p.name, ext);
                if existing.contains(&name) {
                    store.delete(&name).await?;
                    deleted += 1;
                }
            }
        }
    }
    Ok(deleted)
}

/// The refs' zips (`s3+zip://`) written with an older key: each copied,
/// re-encrypted to `key`, under its name with `key` (unless a push wrote
/// that already), keeping its serial; the old ones are deleted with the
/// packs. How many written.
async fn reencrypt_zips(store: &S3Store, url: &RemoteUrl, key: &Arc<RemoteKey>, tmp: &Path) -> Result<usize, StorageError> {
    let Some((m, _)) = read_manifest(store, url).await? else { return Ok(0) };
    let mut written = 0;
    for dst in m.refs.keys() {
        let to = encrypted_zip_key(url, key, dst);
        if store.head(&to).await?.is_some() {
            continue;
        }
        // The newest older generation's zip, if any.
        for from in older_encrypted_zip_keys(url, key, dst) {
            if let Some((_, meta)) = store.head_with_metadata(&from).await? {
                let fetched = rewrap::fetch(store, &from, Form::Encrypted(key), tmp, false).await?;
                let serial = meta.get(ZIP_SERIAL_META).map(|s| vec![(ZIP_SERIAL_META.to_string(), s.clone())]).unwrap_or_default();
                // Create-only: not written when a push wrote `to` meanwhile (its zip is newer).
                let put = rewrap::put(store, fetched.plaintext(), &to, Form::Encrypted(key), Upload::CreateOnly(serial), tmp);
                written += usize::from(put.await?);
                break;
            }
        }
    }
    Ok(written)
}
