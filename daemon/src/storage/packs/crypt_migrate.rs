//! `git s3 migrate --encrypt-to …` and `git s3 migrate --decrypt` (issue
//! 22): a plaintext packs remote re-encrypted to a new remote key, or an
//! encrypted one written back in plaintext.
//!
//! Both go the same way, safe against concurrent pushers and finished by a
//! rerun after a crash:
//! 1. (encrypt) the keyring is written first; it changes nothing for
//!    readers, who go by the manifest (a plaintext manifest is read as
//!    plaintext). A rerun opens the keyring an earlier run wrote.
//! 2. Every pack and `.idx` the manifest names (views too) is copied to its
//!    name in the new form (an HMAC'd name and an age file, or
//!    `pack-<hash>.<ext>` in plaintext), skipped when it is there already.
//! 3. The switch: the manifest in the new form, by one conditional write on
//!    the ETag of the manifest that was copied. A push that landed meanwhile
//!    makes it fail: the packs are copied again (only the new ones) and the
//!    switch tried again, so no push is lost. A push that loses its race
//!    against the switch is refused in one line (push again).
//! 4. The old form's objects are deleted (packs, `.idx`, and for encrypt
//!    the plaintext `repo.zip`s; for decrypt the keyring, then the age files).
//!    Before that, the LFS objects (not in the manifest) are moved to the
//!    new form one by one (`storage::crypt::lfs::rewrite_all`); the agent
//!    reads either form meanwhile.
//!
//! Until the switch the remote reads as it was; after it, as it became.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use futures::stream::{StreamExt, TryStreamExt};

use crate::s3::store::{PutOptions, S3Store, WriteCondition};
use crate::s3::url::RemoteUrl;
use crate::storage::bundles::layout;
use crate::storage::crypt::kms::{self, EncryptTo};
use crate::storage::crypt::lfs::{Rewritten, Target};
use crate::storage::crypt::rewrap::{self, Form, Upload};
use crate::storage::crypt::{self, codec, keyring, CryptError, RemoteKey};
use crate::storage::detect::scan_refs_dir;
use crate::storage::packs::manifest::{self, read_manifest, Manifest, PackEntry, MAX_ATTEMPTS};
use crate::storage::packs::storage::{entry_object_key, object_key};
use crate::storage::StorageError;

/// What an encryption or decryption did.
#[derive(Debug, Default)]
pub(crate) struct CryptReport {
    pub(crate) refs: usize,
    /// Packs and `.idx` written in the new form, and their plaintext bytes.
    pub(crate) copied: usize,
    pub(crate) bytes: u64,
    /// Objects of the old form deleted.
    pub(crate) deleted: usize,
    /// The switch had been made by an earlier, interrupted run.
    pub(crate) finished_earlier_run: bool,
    /// Switches tried again because a push changed the manifest meanwhile.
    pub(crate) retried: u32,
}

/// Which way a migration goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Encrypt,
    Decrypt,
}

/// The test hook of `point` (only with the `test-hooks` feature).
#[cfg_attr(not(feature = "test-hooks"), allow(unused_variables))]
fn crash_hook(env: &HashMap<String, String>, point: &str) {
    #[cfg(feature = "test-hooks")]
    crate::test_hooks::crash_during_migrate(env, point);
}

/// Encrypts the plaintext packs remote `url` to `to`'s age recipients and
/// KMS keys (see the module's comment). A rerun after a crash finishes it,
/// with the keyring the first run wrote.
pub(crate) async fn encrypt(
    store: &S3Store,
    url: &RemoteUrl,
    tmp_root: &Path,
    env: &HashMap<String, String>,
    to: &EncryptTo,
) -> Result<CryptReport, StorageError> {
    // The manifest as the bucket has it, whatever this daemon opened before.
    crypt::forget(store, url);
    manifest::forget_held(store, url);
    let (m, etag) = match read_manifest(store, url).await {
        Ok(Some(found)) => found,
        Ok(None) => return Err(not_packs(store, url, "encrypt it").await),
        // Encrypted already: a run killed after its switch left plaintext objects.
        Err(StorageError::Crypt(CryptError::NotOpened(_))) => {
            let key = open_keyring(store, url, env).await?;
            let refs = read_manifest(store, url).await?.map(|(m, _)| m.refs.len()).unwrap_or(0);
            crypt::remember(store, url, key);
            let (copied, deleted) = finish(store, url, env, Way::Encrypt, tmp_root).await?;
            if deleted == 0 {
                return Err(StorageError::Format(format!("{url} is encrypted already")));
            }
            return Ok(CryptReport { refs, copied, deleted, finished_earlier_run: true, ..Default::default() });
        }
        Err(e) => return Err(e),
    };
    if let Some(msg) = m.frozen_error(url) {
        return Err(StorageError::Format(msg));
    }
    let key = keyring_for(store, url, env, to).await?;
    // Until the switch the manifest is plaintext: read it as such.
    crypt::forget(store, url);
    let mut report = CryptReport::default();
    let migration = Migration { store, url, tmp_root, env, key: &key, way: Way::Encrypt };
    let next = migration.switch((m, etag), &mut report).await?;
    crypt::remember(store, url, key);
    report.refs = next.refs.len();
    crash_hook(env, "encrypt-switched");
    let (copied, deleted) = finish(store, url, env, Way::Encrypt, tmp_root).await?;
    (report.copied, report.deleted) = (report.copied + copied, deleted);
    Ok(report)
}

/// Writes the encrypted packs remote `url` back in plaintext (see the
/// module's comment); the caller's identities must open its keyring. A
/// rerun after a crash finishes it.
pub(crate) async fn decrypt(store: &S3Store, url: &RemoteUrl, tmp_root: &Path, env: &HashMap<String, String>) -> Result<CryptReport, StorageError> {
    crypt::forget(store, url);
    manifest::forget_held(store, url);
    match read_manifest(store, url).await {
        Ok(None) => Err(not_packs(store, url, "decrypt it").await),
        // Plaintext: a run killed after its switch left the keyring or age files.
        Ok(Some((m, _))) => {
            let (copied, deleted) = finish(store, url, env, Way::Decrypt, tmp_root).await?;
            if deleted == 0 {
                return Err(StorageError::Format(format!("{url} is not encrypted")));
            }
            Ok(CryptReport { refs: m.refs.len(), copied, deleted, finished_earlier_run: true, ..Default::default() })
        }
        Err(StorageError::Crypt(CryptError::NotOpened(_))) => {
            let key = open_keyring(store, url, env).await?;
            let Some((m, etag)) = read_manifest(store, url).await? else {
                return Err(StorageError::Format(format!("{url}'s manifest was deleted meanwhile")));
            };
            if let Some(msg) = m.frozen_error(url) {
                return Err(StorageError::Format(msg));
            }
            let mut report = CryptReport::default();
            let migration = Migration { store, url, tmp_root, env, key: &key, way: Way::Decrypt };
            let next = migration.switch((m, etag), &mut report).await?;
            crypt::forget(store, url);
            manifest::forget_held(store, url);
            report.refs = next.refs.len();
            crash_hook(env, "decrypt-switched");
            let (copied, deleted) = finish(store, url, env, Way::Decrypt, tmp_root).await?;
            (report.copied, report.deleted) = (report.copied + copied, deleted);
            Ok(report)
        }
        Err(e) => Err(e),
    }
}

/// The refusal for a prefix without a packs manifest.
async fn not_packs(store: &S3Store, url: &RemoteUrl, what: &str) -> StorageError {
    match scan_refs_dir(store, url).await {
        Ok(refs) if !refs.bundle_refs.is_empty() => StorageError::Format(format!(
            "{url} is in the bundles format (git-remote-s3 0.4.2's layout), which stays plaintext: \
migrate it to packs first (`git s3 migrate --to packs {url}`), then {what}"
        )),
        Ok(_) => StorageError::Format(format!(
            "{url} has no packs manifest (an empty prefix): `git s3 init --format packs --encrypt-to age1… {url}` makes a new encrypted remote"
        )),
        Err(e) => e,
    }
}

/// The remote key of `url`, opened with the caller's identities (and
/// remembered by this daemon).
async fn open_keyring(store: &S3Store, url: &RemoteUrl, env: &HashMap<String, String>) -> Result<Arc<RemoteKey>, StorageError> {
    keyring::open(store, url, env).await?.ok_or_else(|| {
        StorageError::Corrupt(format!(
            "{url}'s manifest is encrypted but its keyring (s3://{}/{}) is missing: restore it from a backup or a versioned bucket",
            store.bucket(),
            crypt::keyring_key(url)
        ))
    })
}

/// The key to encrypt `url` to: a new one, its keyring written to `to`'s
/// recipients and wrapped with its KMS keys (refused, and removed again,
/// when neither the caller's identities nor KMS open it: a rerun and every
/// read need that), or the key of the keyring an interrupted run wrote.
async fn keyring_for(store: &S3Store, url: &RemoteUrl, env: &HashMap<String, String>, to: &EncryptTo) -> Result<Arc<RemoteKey>, StorageError> {
    if store.head(&crypt::keyring_key(url)).await?.is_some() {
        // An interrupted run's: its KMS entries stay as they are.
        tracing::info!(remote = %url, "a keyring exists (an interrupted migration's): continuing with its key");
        return open_keyring(store, url, env).await;
    }
    let key = Arc::new(RemoteKey::generate());
    // keyring.kms first: an entry the keyring does not list opens nothing.
    let grants = kms::wrap_keys(store, url, env, &to.kms_ids()).await?;
    match keyring::create(store, url, &key, &to.ages, grants, env).await {
        Ok(()) => match keyring::open(store, url, env).await {
            Ok(Some(_)) => Ok(key),
            Ok(None) => Err(StorageError::Format(format!("{url}'s keyring was deleted meanwhile; run the migration again"))),
            Err(CryptError::NoAccess(_)) => {
                store.delete(&crypt::keyring_key(url)).await?;
                if !to.kms.is_empty() {
                    kms::edit_file(store, url, |f| f.keys.retain(|k| !to.kms.contains(&k.key_id))).await?;
                }
                Err(StorageError::Format(
                    "none of your age identities is among the --encrypt-to recipients, and no KMS key of them decrypts for you: include your own \
(the age1… that `git s3 keygen` prints); nothing was changed"
                        .into(),
                ))
            }
            Err(e) => Err(e.into()),
        },
        Err(CryptError::Store(e)) if e.is_precondition_failed() => {
            tracing::info!(remote = %url, "a keyring exists (an interrupted migration's): continuing with its key");
            open_keyring(store, url, env).await
        }
        Err(e) => Err(e.into()),
    }
}

/// What the steps of one migration share: the remote, the caller's
/// environment, the remote key (new when encrypting, opened when
/// decrypting) and the way it goes.
struct Migration<'a> {
    store: &'a S3Store,
    url: &'a RemoteUrl,
    /// Where the objects' temp files go.
    tmp_root: &'a Path,
    env: &'a HashMap<String, String>,
    key: &'a Arc<RemoteKey>,
    way: Way,
}

impl Migration<'_> {
    /// Copies the packs of the manifest `found` into the new form and switches
    /// the manifest by a conditional write on its ETag; a push that landed
    /// meanwhile is copied too and the switch tried again. The manifest written.
    async fn switch(&self, found: (Manifest, String), report: &mut CryptReport) -> Result<Manifest, StorageError> {
        let Migration { store, url, key, way, .. } = *self;
        let (mut m, mut etag) = found;
        for attempt in 0..MAX_ATTEMPTS {
            let (copied, bytes) = self.copy_packs(&m).await?;
            report.copied += copied;
            report.bytes = report.bytes.saturating_add(bytes);
            #[cfg(feature = "test-hooks")]
            if let Some(gate) = crate::test_hooks::migrate_switch_gate(self.env).filter(|_| attempt == 0) {
                crate::test_hooks::wait_for_gate(&gate).await;
            }
            let mut next = m.clone();
            next.serial += 1;
            // Each entry as its new form names it: the current key's generation
            // (encrypted) or none; object maps are not copied either way (a
            // lazy fetch reads the .idx; gc writes maps again).
            let generation = (way == Way::Encrypt).then(|| key.generation());
            for p in next.live_packs_mut() {
                p.key = generation;
                p.map_size = 0;
            }
            // Retired packs are of the old form: deleted below, not carried over.
            next.retired.clear();
            let body = match way {
                Way::Encrypt => codec::encrypt_padded(&[key.recipient()], &next.to_bytes(), b'\n')?,
                Way::Decrypt => next.to_bytes(),
            };
            if way == Way::Encrypt && store.head(&crypt::keyring_key(url)).await?.is_none() {
                return Err(StorageError::Format(format!(
                    "{url}'s keyring was deleted during the migration (by `git s3 migrate --decrypt`?); nothing was switched"
                )));
            }
            manifest::forget_held(store, url);
            let opts = PutOptions { condition: WriteCondition::IfMatch(etag), ..Default::default() };
            match store.put_bytes(&manifest::manifest_key(url), body, opts).await {
                Ok(_) => {
                    tracing::info!(remote = %url, ?way, serial = next.serial, "manifest switched");
                    return Ok(next);
                }
                Err(e) if e.is_precondition_failed() || e.is_not_found() => {
                    tracing::info!(remote = %url, attempt, "the manifest changed during the migration (a push): copying its packs too");
                    report.retried += 1;
                    let Some(again) = read_manifest(store, url).await? else {
                        return Err(StorageError::Format(format!("{url}'s manifest was deleted during the migration")));
                    };
                    if let Some(msg) = again.0.frozen_error(url) {
                        return Err(StorageError::Format(msg));
                    }
                    (m, etag) = again;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StorageError::Format(format!("{url}: the manifest kept changing during the migration; run it again")))
    }

    /// Copies every pack and `.idx` `m` names (views too) into the new form,
    /// four at a time, skipping those already there. (copied, plaintext bytes).
    async fn copy_packs(&self, m: &Manifest) -> Result<(usize, u64), StorageError> {
        let (env, way) = (self.env, self.way);
        let dir = tempfile::Builder::new().prefix("crypt-").tempdir_in(self.tmp_root)?;
        let jobs: Vec<_> = m
            .live_packs()
            .flat_map(|p| ["pack", "idx"].map(|ext| (p.clone(), ext)))
            .map(|(p, ext)| {
                let dir = dir.path();
                async move {
                    let copied = self.copy_one(dir, &p, ext).await?;
                    if copied.is_some() {
                        crash_hook(env, if way == Way::Encrypt { "encrypt-copied" } else { "decrypt-copied" });
                    }
                    Ok::<_, StorageError>(copied)
                }
            })
            .collect();
        let done: Vec<Option<u64>> = futures::stream::iter(jobs).buffer_unordered(4).try_collect().await?;
        let copied: Vec<u64> = done.into_iter().flatten().collect();
        Ok((copied.len(), copied.iter().fold(0u64, |t, b| t.saturating_add(*b))))
    }

    /// Copies pack `name`'s `.<ext>` into the new form: Some(plaintext bytes),
    /// or None when the copy was there already (or an `.idx` is missing in
    /// the old form too: `git s3 doctor` re-creates it).
    async fn copy_one(&self, dir: &Path, p: &PackEntry, ext: &str) -> Result<Option<u64>, StorageError> {
        let Migration { store, url, key, way, .. } = *self;
        let name = p.name.as_str();
        // Encrypting: named with the current key. Decrypting: with the
        // generation that encrypted it (a pack may predate a rotation).
        let hidden = match way {
            Way::Encrypt => object_key(url, Some(&**key), name, ext),
            Way::Decrypt => entry_object_key(url, Some(&**key), p, ext)?,
        };
        let plain = object_key(url, None, name, ext);
        let (src, dst, read, write) = match way {
            Way::Encrypt => (plain, hidden, Form::Plaintext, Form::Encrypted(key)),
            Way::Decrypt => (hidden, plain, Form::Encrypted(key), Form::Plaintext),
        };
        if store.head(&dst).await?.is_some() {
            return Ok(None);
        }
        let fetched = match rewrap::fetch(store, &src, read, dir, false).await {
            Ok(fetched) => fetched,
            Err(e) if rewrap::is_missing(&e) && ext == "idx" => return Ok(None),
            Err(e) if rewrap::is_missing(&e) => {
                return Err(StorageError::Corrupt(format!("the manifest names pack {name} but s3://{}/{src} is missing", store.bucket())))
            }
            Err(e) => return Err(e),
        };
        let bytes = fetched.plaintext_len().await?;
        rewrap::put(store, fetched.plaintext(), &dst, write, Upload::New, dir).await?;
        Ok(Some(bytes))
    }
}

/// Step 4 (see the module's comment), after the switch or to finish an
/// earlier run's: the LFS objects brought to the new form, then the old
/// form's objects deleted. (LFS objects written, objects deleted.)
async fn finish(store: &S3Store, url: &RemoteUrl, env: &HashMap<String, String>, way: Way, tmp_root: &Path) -> Result<(usize, usize), StorageError> {
    let lfs = carry_lfs(store, url, env, way, tmp_root).await?;
    let deleted = delete_old_form(store, url, way).await? + lfs.deleted;
    Ok((lfs.written, deleted))
}

/// The LFS objects brought to the new form (`storage::crypt::lfs`), after
/// the switch and before the old form's deletion (which drops the keyring
/// when decrypting: a rerun after it finds no key, and nothing left to do).
async fn carry_lfs(store: &S3Store, url: &RemoteUrl, env: &HashMap<String, String>, way: Way, tmp_root: &Path) -> Result<Rewritten, StorageError> {
    let Some(opened) = keyring::read(store, url, env).await? else { return Ok(Rewritten::default()) };
    let target = if way == Way::Encrypt { Target::Encrypted } else { Target::Plaintext };
    crypt::lfs::rewrite_all(store, url, &Arc::new(opened.ring.key), target, tmp_root).await
}

/// Deletes what is left of the old form: encrypt, the plaintext packs and
/// `.idx` and the `repo.zip`s (0.4.2's zips name the ref in their key);
/// decrypt, the keyring, then the age files. How many objects.
async fn delete_old_form(store: &S3Store, url: &RemoteUrl, way: Way) -> Result<usize, StorageError> {
    let mut deleted = 0;
    if way == Way::Decrypt && store.head(&crypt::keyring_key(url)).await?.is_some() {
        store.delete(&crypt::keyring_key(url)).await?;
        deleted += 1;
    }
    let dir = manifest::packs_dir(url);
    for o in store.list(&dir).await? {
        let Some(leaf) = o.key.strip_prefix(&dir) else { continue };
        // Plaintext objects are `pack-<hash>.<ext>`; an encrypted remote's are 64 hex digits.
        if leaf.starts_with("pack-") == (way == Way::Encrypt) {
            store.delete(&o.key).await?;
            deleted += 1;
        }
    }
    if way == Way::Decrypt {
        // Encrypted zips (a push writes `repo.zip` in plaintext again).
        for o in store.list(&url.key(crate::storage::zip::ENCRYPTED_ZIPS_DIR)).await? {
            store.delete(&o.key).await?;
            deleted += 1;
        }
    }
    if way == Way::Encrypt {
        let scan = layout::scan(&url.prefix, &store.list(&url.key("refs/")).await?);
        for (_, zip) in &scan.zips {
            store.delete(&zip.key).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}
