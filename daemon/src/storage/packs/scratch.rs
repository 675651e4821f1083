//! Scratch bare repositories in the cache's temporary directory, filled
//! from the bucket's packs (downloaded in parallel, checked by
//! `git index-pack`), and the packs written from them: what gc, migrate and
//! `git s3 doctor`'s `.idx` restore work on.

use crate::local::oid::ObjectFormat;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use futures::stream::{StreamExt, TryStreamExt};

use crate::local::git::{Git, GitError};
use crate::s3::store::S3Store;
use crate::s3::url::RemoteUrl;
use crate::storage::crypt::{codec, RemoteKey};
use crate::storage::packs::git_ops::{pack_object_count, SCRATCH_PACK_CONFIG};
use crate::storage::packs::manifest::{self, unix_now, PackEntry};
use crate::storage::packs::object_map;
use crate::storage::packs::storage::{entry_object_key, object_key, put_object};
use crate::storage::StorageError;

/// A git environment for a scratch bare repository at `dir`.
fn scratch_git(dir: &Path, env: &HashMap<String, String>) -> Git {
    let mut env: HashMap<String, String> = env.iter().filter(|(k, _)| !k.starts_with("GIT_")).map(|(k, v)| (k.clone(), v.clone())).collect();
    env.insert("GIT_DIR".into(), dir.to_string_lossy().to_string());
    Git::new(dir, env)
}

/// A scratch bare repository at `<dir>/repo.git` holding `packs` (downloaded
/// in parallel, streamed through files, checked by index-pack). Returns it
/// with the names the packs got in its `objects/pack`.
pub(super) async fn scratch_from_packs(
    store: &S3Store,
    url: &RemoteUrl,
    key: Option<&Arc<RemoteKey>>,
    packs: &[&PackEntry],
    dir: &Path,
    env: &HashMap<String, String>,
) -> Result<(Git, Vec<String>), StorageError> {
    // A pack's name is a hash of its repository's format.
    let format = packs.first().and_then(|p| ObjectFormat::of(&p.name)).unwrap_or_default();
    let git = scratch_repo(dir, env, format).await?;
    let downloads: Vec<_> = packs
        .iter()
        .map(|p| {
            let git = git.clone();
            async move {
                let file = tempfile::Builder::new().prefix("dl-").tempfile_in(dir)?;
                let object = entry_object_key(url, key.map(|k| &**k), p, "pack")?;
                match store.get_to_file(&object, file.path(), |_| {}).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {
                        return Err(StorageError::Corrupt(format!(
                            "the manifest names pack {} but s3://{}/{object} is missing",
                            p.name,
                            store.bucket()
                        )))
                    }
                    Err(e) => return Err(e.into()),
                }
                // An encrypted remote's pack: decrypted into a second file first.
                let plain = match key {
                    Some(k) => {
                        let plain = tempfile::Builder::new().prefix("dl-").tempfile_in(dir)?;
                        let what = format!("s3://{}/{object}", store.bucket());
                        codec::decrypt_file(k.clone(), file.path().to_path_buf(), plain.path().to_path_buf(), what).await?;
                        Some(plain)
                    }
                    None => None,
                };
                let key = object;
                let local = git.index_pack_file(plain.as_ref().map_or(file.path(), |f| f.path())).await.map_err(|e| match e {
                    GitError::Failed { .. } => {
                        StorageError::Corrupt(format!("pack {} from s3://{}/{key} does not index: {e}", p.name, store.bucket()))
                    }
                    e => e.into(),
                })?;
                tracing::debug!(pack = %p.name, size = p.size, "pack downloaded for gc");
                Ok::<_, StorageError>(local)
            }
        })
        .collect();
    let names = futures::stream::iter(downloads).buffered(4).try_collect::<Vec<String>>().await?;
    Ok((git, names))
}

pub(super) async fn scratch_repo(dir: &Path, env: &HashMap<String, String>, format: ObjectFormat) -> Result<Git, StorageError> {
    let repo = dir.join("repo.git");
    tokio::fs::create_dir_all(&repo).await?;
    let git = scratch_git(&repo, env);
    git.run(&["init", "-q", "--bare", &format.arg()]).await?;
    Ok(git)
}

/// Re-creates and uploads the `.idx` of pack `name` (missing when a daemon
/// stopped between a push's manifest write and the `.idx` upload): the
/// `.pack` is downloaded and indexed by `git index-pack`, which checks
/// every object and that the pack is the one named. Returns the `.idx` size.
pub(crate) async fn restore_idx(
    store: &S3Store,
    url: &RemoteUrl,
    key: Option<&Arc<RemoteKey>>,
    pack: &PackEntry,
    tmp_root: &Path,
    env: &HashMap<String, String>,
) -> Result<u64, StorageError> {
    let dir = tempfile::Builder::new().prefix("idx-").tempdir_in(tmp_root)?;
    let (_, indexed) = scratch_from_packs(store, url, key, &[pack], dir.path(), env).await?;
    let name = &pack.name;
    if indexed.first() != Some(name) {
        let object = object_key(url, key.map(|k| &**k), name, "pack");
        return Err(StorageError::Corrupt(format!("s3://{}/{object} holds pack {indexed:?}, not {name}", store.bucket())));
    }
    let idx = dir.path().join("repo.git/objects/pack").join(format!("pack-{name}.idx"));
    put_object(store, key, &object_key(url, key.map(|k| &**k), name, "idx"), &idx, |_| {}).await?;
    Ok(tokio::fs::metadata(&idx).await?.len())
}

/// `git pack-objects` of everything `tips` reach, into `<dir>/out-<name>.pack`.
pub(super) async fn pack_of(git: &Git, dir: &Path, tips: &BTreeSet<String>) -> Result<PackEntry, StorageError> {
    let input: String = tips.iter().map(|t| format!("{t}\n")).collect();
    let base = dir.join("out");
    let base = base.to_string_lossy();
    let args = [&SCRATCH_PACK_CONFIG[..], &["pack-objects", "--revs", "--quiet", "--delta-base-offset", &base]].concat();
    let out = git.run_with_stdin(&args, input.into_bytes()).await?;
    written_pack(dir, &out, tips.iter().cloned().collect()).await
}
/// The entry of the pack `git pack-objects` wrote to `<dir>/out-<name>`,
/// `out` being what it printed.
pub(super) async fn written_pack(dir: &Path, out: &str, tips: Vec<String>) -> Result<PackEntry, StorageError> {
    let name = out.trim().to_string();
    if !manifest::is_pack_name(&name) {
        return Err(StorageError::Corrupt(format!("git pack-objects printed an unexpected pack name {name:?}")));
    }
    let pack = dir.join(format!("out-{name}.pack"));
    let idx = dir.join(format!("out-{name}.idx"));
    Ok(PackEntry {
        name: name.clone(),
        size: tokio::fs::metadata(&pack).await?.len(),
        idx_size: tokio::fs::metadata(&idx).await?.len(),
        objects: pack_object_count(&pack).await?,
        tips,
        created: unix_now(),
        key: None,
        map_size: object_map::write_beside(&dir.join(format!("out-{name}")), &name).await,
    })
}
/// `p` as the remote of `key` records it: on an encrypted remote, named and
/// encrypted (its object map too) with the current generation of the key.
pub(super) fn keyed(mut p: PackEntry, key: Option<&Arc<RemoteKey>>) -> PackEntry {
    if let Some(k) = key {
        p.key = Some(k.generation());
    }
    p
}

/// Uploads the pack `p` written in `dir`, its `.idx` and its object map
/// (encrypted to `key` under their HMAC'd names on an encrypted remote).
pub(super) async fn upload_pack_of(
    store: &S3Store,
    url: &RemoteUrl,
    key: Option<&Arc<RemoteKey>>,
    dir: &Path,
    p: &PackEntry,
) -> Result<(), StorageError> {
    let k = key.map(|k| &**k);
    let (pack_key, idx_key) = (object_key(url, k, &p.name, "pack"), object_key(url, k, &p.name, "idx"));
    let pack = dir.join(format!("out-{}.pack", p.name));
    let idx = dir.join(format!("out-{}.idx", p.name));
    let map = async {
        if p.map_size == 0 {
            return Ok(());
        }
        // An object map holds blob id prefixes: encrypted and keyed like the .idx.
        let file = dir.join(format!("out-{}.map", p.name));
        put_object(store, key, &object_key(url, k, &p.name, "map"), &file, |_| {}).await
    };
    tokio::try_join!(put_object(store, key, &pack_key, &pack, |_| {}), put_object(store, key, &idx_key, &idx, |_| {}), map)?;
    Ok(())
}
