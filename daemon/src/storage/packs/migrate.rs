//! Migration between the bundles and packs formats (`git s3 migrate`),
//! safe against concurrent pushers of either tool (the 0.4.2 lock of every
//! ref is held throughout) and finished by a rerun after a crash.

use crate::local::oid::ObjectFormat;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use crate::s3::store::{PutOptions, S3Store, WriteCondition};
use crate::s3::url::RemoteUrl;
use crate::storage::bundles::layout;
use crate::storage::packs::manifest::{self, edit_manifest, read_manifest, unix_now, Manifest, PackEntry};
use crate::storage::packs::scratch::{pack_of, scratch_from_packs, scratch_repo, upload_pack_of};
use crate::storage::StorageError;

/// What a migration did.
#[derive(Debug, Default)]
pub(crate) struct MigrateReport {
    pub(crate) refs: usize,
    pub(crate) bytes: u64,
    /// Keys of the old format deleted.
    pub(crate) deleted: usize,
}
/// The test hook of `point` (only with the `test-hooks` feature).
#[cfg_attr(not(feature = "test-hooks"), allow(unused_variables))]
fn crash_hook(env: &HashMap<String, String>, point: &str) {
    #[cfg(feature = "test-hooks")]
    crate::test_hooks::crash_during_migrate(env, point);
}

fn lock_error(url: &RemoteUrl, e: crate::storage::bundles::locks::LockError) -> StorageError {
    match e {
        crate::storage::bundles::locks::LockError::Store(s) => s.into(),
        e => StorageError::Format(format!("{url}: cannot migrate while a push holds a ref: {e}")),
    }
}

/// Bundles (0.4.2 layout) → packs, safe against concurrent pushers: the
/// 0.4.2 lock of every ref is held (and refreshed) throughout, so neither
/// tool can update a bundle meanwhile; one pack of every ref and one
/// manifest are written, then the bundles and the HEAD object are deleted.
/// A ref created by a 0.4.2 push during the run is left in place and
/// reported (the prefix then holds both formats until the migration is run
/// again). Rerunning after a crash finishes the job: the refs of an
/// existing manifest are kept and the bundles' refs laid over them.
pub(crate) async fn migrate_to_packs(
    store: &S3Store,
    url: &RemoteUrl,
    tmp_root: &Path,
    env: &HashMap<String, String>,
) -> Result<MigrateReport, StorageError> {
    let scan = layout::scan(&url.prefix, &store.list(&format!("{}/", url.prefix)).await?);
    if scan.bundles.is_empty() {
        return match read_manifest(store, url).await? {
            // A run killed after deleting the bundles, before the HEAD
            // object (the manifest already holds HEAD): finish it, taking
            // over and releasing the locks the killed run left.
            Some((m, _)) if scan.head_object && m.frozen.is_none() => {
                let names: Vec<String> = scan.locks.iter().map(|l| l.0.clone()).collect::<BTreeSet<_>>().into_iter().collect();
                let finish = async {
                    store.delete(&url.key("HEAD")).await?;
                    Ok(MigrateReport { refs: m.refs.len(), bytes: 0, deleted: 1 })
                };
                under_ref_locks(store, url, &names, env, finish).await
            }
            Some(_) => Err(StorageError::Format(format!("{url} is already in the packs format"))),
            None => Err(StorageError::Format(format!("{url} holds no bundles to migrate (for an empty prefix use `git s3 init --format packs`)"))),
        };
    }
    // Every ref with a bundle, and every ref with a lock (a push creating
    // it, or the stale lock of an interrupted migration: taken over, released).
    let names: Vec<String> = scan.bundles.keys().chain(scan.locks.iter().map(|l| &l.0)).cloned().collect::<BTreeSet<_>>().into_iter().collect();
    under_ref_locks(store, url, &names, env, migrate_to_packs_locked(store, url, tmp_root, env, &names)).await
}

/// Runs `work` holding git-remote-s3 0.4.2's lock of every ref in `names`
/// (refreshed while it runs; released after).
async fn under_ref_locks<T>(
    store: &S3Store,
    url: &RemoteUrl,
    names: &[String],
    env: &HashMap<String, String>,
    work: impl std::future::Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    let ttl = crate::storage::bundles::locks::ttl_from_env(env);
    let mut locks = crate::storage::bundles::locks::acquire_all(store, &url.prefix, names, ttl, crate::storage::bundles::locks::lock_wait(env))
        .await
        .map_err(|e| lock_error(url, e))?;
    let result = crate::storage::bundles::locks::hold_all_while(store, &mut locks, ttl, work).await;
    crate::storage::bundles::locks::release_all(store, locks).await;
    result.map_err(|e| lock_error(url, e))?
}

async fn migrate_to_packs_locked(
    store: &S3Store,
    url: &RemoteUrl,
    tmp_root: &Path,
    env: &HashMap<String, String>,
    locked: &[String],
) -> Result<MigrateReport, StorageError> {
    // Under the locks: what the refs are now.
    let scan = layout::scan(&url.prefix, &store.list(&format!("{}/", url.prefix)).await?);
    let mine: BTreeMap<&String, &Vec<(String, crate::s3::store::ObjectInfo)>> = scan.bundles.iter().filter(|(r, _)| locked.contains(r)).collect();
    if let Some((r, b)) = mine.iter().find(|(_, b)| b.len() > 1) {
        return Err(StorageError::Format(format!("{r} has {} bundles; run `git s3 doctor` first", b.len())));
    }
    let from_bundles: BTreeMap<String, String> = mine.iter().map(|(r, b)| ((*r).clone(), b[0].0.clone())).collect();
    let existing = read_manifest(store, url).await?;
    let dir = tempfile::Builder::new().prefix("migrate-").tempdir_in(tmp_root)?;
    let format = from_bundles.values().find_map(|sha| ObjectFormat::of(sha)).unwrap_or_default();
    let git = scratch_repo(dir.path(), env, format).await?;
    for (r, b) in &mine {
        let file = tempfile::Builder::new().prefix("dl-").tempfile_in(dir.path())?;
        store.get_to_file(&b[0].1.key, file.path(), |_| {}).await?;
        git.bundle_unbundle(file.path())
            .await
            .map_err(|e| StorageError::Corrupt(format!("the bundle of {r} ({}) does not unbundle: {e}", b[0].1.key)))?;
    }
    let tips: BTreeSet<String> = from_bundles.values().cloned().collect();
    let entry = pack_of(&git, dir.path(), &tips).await?;
    upload_pack_of(store, url, None, dir.path(), &entry).await?;
    let head = store.get_small(&url.key("HEAD")).await?.map(|h| String::from_utf8_lossy(&h).trim().to_string());
    // A rerun keeps what an interrupted run (or a frozen manifest) holds.
    let (mut m, condition) = match &existing {
        Some((old, etag)) => (old.clone(), WriteCondition::IfMatch(etag.clone())),
        None => (Manifest::default(), WriteCondition::IfAbsent),
    };
    m.serial += 1;
    m.frozen = None;
    m.refs.extend(from_bundles.iter().map(|(r, s)| (r.clone(), s.clone())));
    if format != ObjectFormat::Sha1 {
        m.object_format = Some(format);
    }
    m.head = head.filter(|h| m.refs.contains_key(h)).or(m.head.take());
    m.protected.extend(scan.protected.iter().filter(|p| locked.contains(p)).cloned());
    if !m.packs.iter().any(|p| p.name == entry.name) {
        m.packs.push(entry.clone());
    }
    manifest::forget_held(store, url);
    match store.put_bytes(&manifest::manifest_key(url), m.to_bytes(), PutOptions { condition, ..Default::default() }).await {
        Ok(_) => {}
        Err(e) if e.is_precondition_failed() || e.is_not_found() => {
            return Err(StorageError::Format(format!("{url}: the manifest changed during the migration; run it again")))
        }
        Err(e) => return Err(e.into()),
    }
    let mut report = MigrateReport { refs: m.refs.len(), bytes: entry.size.saturating_add(entry.idx_size), deleted: 0 };
    for (i, b) in mine.values().flat_map(|b| b.iter()).enumerate() {
        store.delete(&b.1.key).await?;
        report.deleted += 1;
        if i == 0 {
            crash_hook(env, "to-packs");
        }
    }
    if scan.head_object {
        crash_hook(env, "to-packs-before-head");
        store.delete(&url.key("HEAD")).await?;
        report.deleted += 1;
    }
    // Refs a 0.4.2 push created meanwhile (their locks were not ours).
    let again = layout::scan(&url.prefix, &store.list(&url.key("refs/")).await?);
    if !again.bundles.is_empty() {
        let late: Vec<&str> = again.bundles.keys().map(String::as_str).collect();
        return Err(StorageError::Format(format!(
            "{url}: {} ref(s) were pushed with git-remote-s3 0.4.2 during the migration ({}); they are still bundles and the prefix holds both formats. \
Run `git s3 migrate --to packs` again to bring them over",
            late.len(),
            late.join(", ")
        )));
    }
    Ok(report)
}

/// Packs → bundles (0.4.2 layout), safe against concurrent pushers: the
/// manifest is frozen first (pushes and edits are refused from then on),
/// then a full bundle per ref, HEAD and `PROTECTED#` markers are written
/// under the refs' 0.4.2 locks, and finally the manifest and packs are
/// deleted. Rerunning after a crash finishes the job (also one killed after
/// its manifest deletion: `finish_to_bundles`).
pub(crate) async fn migrate_to_bundles(
    store: &S3Store,
    url: &RemoteUrl,
    tmp_root: &Path,
    env: &HashMap<String, String>,
) -> Result<MigrateReport, StorageError> {
    if read_manifest(store, url).await?.is_none() {
        if let Some(report) = finish_to_bundles(store, url, env).await? {
            return Ok(report);
        }
    }
    let m = freeze(store, url, "migrating to bundles").await?;
    let names: Vec<String> = m.refs.keys().cloned().collect();
    under_ref_locks(store, url, &names, env, migrate_to_bundles_locked(store, url, tmp_root, env, &m)).await
}

/// A migration to bundles killed after its manifest deletion left its
/// packs (the bundles, HEAD and markers are all written by then) and its
/// stale locks: the locks are taken over once their TTL has passed, the
/// packs deleted, the locks released. `None` when the prefix is not in that
/// state (no bundles, or no packs left).
async fn finish_to_bundles(store: &S3Store, url: &RemoteUrl, env: &HashMap<String, String>) -> Result<Option<MigrateReport>, StorageError> {
    let (dir, root) = (manifest::packs_dir(url), format!("{}/", url.prefix));
    let (left, all) = tokio::join!(store.list(&dir), store.list(&root));
    let (left, scan) = (left?, layout::scan(&url.prefix, &all?));
    if left.is_empty() || scan.bundles.is_empty() {
        return Ok(None);
    }
    let names: Vec<String> = scan.locks.iter().map(|l| l.0.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    let report = under_ref_locks(store, url, &names, env, async {
        let mut report = MigrateReport { refs: scan.bundles.len(), ..Default::default() };
        for o in &left {
            store.delete(&o.key).await?;
            report.deleted += 1;
        }
        Ok(report)
    })
    .await?;
    Ok(Some(report))
}

/// Marks the manifest frozen (a conditional write); returns it as frozen.
/// An already frozen manifest (an interrupted migration) is taken as is.
async fn freeze(store: &S3Store, url: &RemoteUrl, why: &str) -> Result<Manifest, StorageError> {
    let why = format!("{why}, since unix time {}", unix_now());
    edit_manifest(store, url, true, |m| {
        if m.frozen.is_some() {
            return Ok(false);
        }
        m.frozen = Some(why.clone());
        Ok(true)
    })
    .await
}

async fn migrate_to_bundles_locked(
    store: &S3Store,
    url: &RemoteUrl,
    tmp_root: &Path,
    env: &HashMap<String, String>,
    m: &Manifest,
) -> Result<MigrateReport, StorageError> {
    let dir = tempfile::Builder::new().prefix("migrate-").tempdir_in(tmp_root)?;
    let all: Vec<&PackEntry> = m.packs.iter().collect();
    let (git, _) = scratch_from_packs(store, url, None, &all, dir.path(), env).await?;
    let mut report = MigrateReport { refs: m.refs.len(), ..Default::default() };
    let mut written = BTreeSet::new();
    for (i, (r, sha)) in m.refs.iter().enumerate() {
        git.update_ref(r, sha).await?;
        let file = dir.path().join("out.bundle");
        git.bundle_create(&file, r).await?;
        let key = url.key(&format!("{r}/{sha}.bundle"));
        report.bytes += tokio::fs::metadata(&file).await?.len();
        store.put_file(&key, &file, PutOptions::default(), |_| {}).await?;
        written.insert(key);
        if i == 0 {
            crash_hook(env, "to-bundles");
        }
    }
    // Older bundles of the manifest's refs (an earlier, interrupted run, or
    // a prefix that held both formats) go; refs only bundles name stay.
    let scan = layout::scan(&url.prefix, &store.list(&url.key("refs/")).await?);
    for (r, bundles) in &scan.bundles {
        for (_, info) in bundles {
            if m.refs.contains_key(r) && !written.contains(&info.key) {
                store.delete(&info.key).await?;
            }
        }
    }
    if let Some(h) = m.live_head() {
        store.put_bytes(&url.key("HEAD"), h.as_bytes().to_vec(), PutOptions::default()).await?;
    }
    for p in m.protected.iter().filter(|p| m.refs.contains_key(*p)) {
        store.put_bytes(&url.key(&format!("{p}/{}", layout::PROTECTED_MARKER)), Vec::new(), PutOptions::default()).await?;
    }
    // The manifest is frozen: no push or edit can have landed since.
    manifest::forget_held(store, url);
    store.delete(&manifest::manifest_key(url)).await?;
    report.deleted += 1;
    crash_hook(env, "to-bundles-manifest-deleted");
    for o in store.list(&manifest::packs_dir(url)).await? {
        store.delete(&o.key).await?;
        report.deleted += 1;
    }
    Ok(report)
}
