//! Maintenance of a packs-format remote: manifest edits (protect,
//! unprotect, delete a ref), compaction (`git s3 gc`) and migration between
//! the bundles and packs formats (`git s3 migrate`).
//!
//! Compaction downloads every pack into a scratch bare repository, packs
//! what the manifest's refs reach into one pack, uploads it, and swaps the
//! pack list in one conditional manifest write against the manifest it
//! started from (a remote that changed meanwhile is left alone: run gc
//! again). Replaced packs are listed as `retired` and deleted by a later gc
//! once their grace period is over; packs no manifest names (a push that
//! died before its manifest write) are deleted once older than the grace
//! period.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use futures::stream::{StreamExt, TryStreamExt};

use crate::bundle_format;
use crate::git::Git;
use crate::manifest::{self, Manifest, PackEntry, RetiredPack};
use crate::packs_format::{backoff, index_pack, pack_object_count, read_manifest, run_with_stdin, unix_now, MAX_ATTEMPTS};
use crate::remote_url::RemoteUrl;
use crate::s3_store::{PutOptions, S3Store, WriteCondition};
use crate::storage::StorageError;

/// Applies `edit` to the manifest with a conditional write, re-reading and
/// re-applying on a lost race. `edit` returns whether it changed anything.
/// Returns the manifest as written (or as found, when unchanged).
pub async fn update_manifest<F>(store: &S3Store, url: &RemoteUrl, mut edit: F) -> Result<Manifest, StorageError>
where
    F: FnMut(&mut Manifest) -> Result<bool, StorageError>,
{
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        let Some((mut m, etag)) = read_manifest(store, url).await? else {
            return Err(StorageError::Format(format!("{url} has no packs manifest")));
        };
        if let Some(msg) = m.frozen_error(url) {
            return Err(StorageError::Format(msg));
        }
        if !edit(&mut m)? {
            return Ok(m);
        }
        m.serial += 1;
        let opts = PutOptions { condition: WriteCondition::IfMatch(etag), ..Default::default() };
        match store.put_bytes(&manifest::manifest_key(url), m.to_bytes(), opts).await {
            Ok(_) => return Ok(m),
            Err(e) if e.is_precondition_failed() || e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StorageError::Format(format!("{url}: the manifest kept changing; try again")))
}

/// What a gc did.
#[derive(Debug, Default)]
pub struct GcReport {
    pub packs_before: usize,
    pub bytes_before: u64,
    /// The combined pack (None: nothing to combine).
    pub combined: Option<PackEntry>,
    /// Keys deleted (retired packs past their grace, unreferenced old packs).
    pub deleted: Vec<String>,
    /// Packs kept for now (retired or unreferenced, within their grace period).
    pub waiting: Vec<String>,
    /// The remote changed while combining: nothing was replaced.
    pub raced: bool,
}

/// A git environment for a scratch bare repository at `dir`.
fn scratch_git(dir: &Path, env: &HashMap<String, String>) -> Git {
    let mut env: HashMap<String, String> = env.iter().filter(|(k, _)| !k.starts_with("GIT_")).map(|(k, v)| (k.clone(), v.clone())).collect();
    env.insert("GIT_DIR".into(), dir.to_string_lossy().to_string());
    Git::new(dir, env)
}

/// A scratch bare repository at `<dir>/repo.git` holding every pack of `m`
/// (downloaded in parallel, streamed through files, checked by index-pack).
async fn scratch_from_packs(
    store: &S3Store,
    url: &RemoteUrl,
    m: &Manifest,
    dir: &Path,
    env: &HashMap<String, String>,
) -> Result<Git, StorageError> {
    let git = scratch_repo(dir, env).await?;
    let downloads: Vec<_> = m
        .packs
        .iter()
        .map(|p| {
            let git = git.clone();
            async move {
                let file = tempfile::Builder::new().prefix("dl-").tempfile_in(dir)?;
                let key = manifest::pack_key(url, &p.name);
                store.get_to_file(&key, file.path(), |_| {}).await?;
                index_pack(&git, file.path()).await?;
                Ok::<_, StorageError>(())
            }
        })
        .collect();
    futures::stream::iter(downloads).buffer_unordered(4).try_collect::<Vec<()>>().await?;
    Ok(git)
}

async fn scratch_repo(dir: &Path, env: &HashMap<String, String>) -> Result<Git, StorageError> {
    let repo = dir.join("repo.git");
    std::fs::create_dir_all(&repo)?;
    let git = scratch_git(&repo, env);
    git.run(&["init", "-q", "--bare"]).await?;
    Ok(git)
}

/// `git pack-objects` of everything `tips` reach, into `<dir>/out-<name>.pack`.
async fn pack_of(git: &Git, dir: &Path, tips: &BTreeSet<String>) -> Result<PackEntry, StorageError> {
    let input: String = tips.iter().map(|t| format!("{t}\n")).collect();
    let base = dir.join("out");
    let name = run_with_stdin(git, &["pack-objects", "--revs", "--quiet", "--delta-base-offset", &base.to_string_lossy()], input.into_bytes())
        .await?
        .trim()
        .to_string();
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
        tips: tips.iter().cloned().collect(),
        created: unix_now(),
    })
}

async fn upload_pack_of(store: &S3Store, url: &RemoteUrl, dir: &Path, p: &PackEntry) -> Result<(), StorageError> {
    let (pack_key, idx_key) = (manifest::pack_key(url, &p.name), manifest::idx_key(url, &p.name));
    let pack = dir.join(format!("out-{}.pack", p.name));
    let idx = dir.join(format!("out-{}.idx", p.name));
    tokio::try_join!(
        store.put_file(&pack_key, &pack, PutOptions::default(), |_| {}),
        store.put_file(&idx_key, &idx, PutOptions::default(), |_| {}),
    )?;
    Ok(())
}

/// How long replaced and unreferenced packs are kept before gc deletes them.
pub const DEFAULT_GRACE_SECONDS: u64 = 3600;

/// Compacts `url`'s packs; deletes retired/unreferenced packs older than `grace`.
pub async fn gc(
    store: &S3Store,
    url: &RemoteUrl,
    tmp_root: &Path,
    env: &HashMap<String, String>,
    grace: Duration,
    dry_run: bool,
) -> Result<GcReport, StorageError> {
    let Some((m0, etag0)) = read_manifest(store, url).await? else {
        return Err(StorageError::Format(format!("{url} has no packs manifest (not a packs remote)")));
    };
    if let Some(msg) = m0.frozen_error(url) {
        return Err(StorageError::Format(msg));
    }
    let mut report = GcReport { packs_before: m0.packs.len(), bytes_before: m0.pack_bytes(), ..Default::default() };
    let mut current = m0.clone();
    if m0.packs.len() > 1 && !dry_run {
        let dir = tempfile::Builder::new().prefix("gc-").tempdir_in(tmp_root)?;
        let git = scratch_from_packs(store, url, &m0, dir.path(), env).await?;
        // One pack of what the refs reach.
        let tips: BTreeSet<String> = m0.refs.values().cloned().collect();
        let entry = pack_of(&git, dir.path(), &tips).await?;
        let name = entry.name.clone();
        upload_pack_of(store, url, dir.path(), &entry).await?;
        let now = unix_now();
        let mut next = m0.clone();
        next.serial += 1;
        for p in &m0.packs {
            if p.name != name && !next.retired.iter().any(|r| r.name == p.name) {
                next.retired.push(RetiredPack { name: p.name.clone(), since: now });
            }
        }
        next.retired.retain(|r| r.name != name);
        next.packs = vec![entry.clone()];
        let opts = PutOptions { condition: WriteCondition::IfMatch(etag0), ..Default::default() };
        match store.put_bytes(&manifest::manifest_key(url), next.to_bytes(), opts).await {
            Ok(_) => {
                report.combined = Some(entry);
                current = next;
            }
            Err(e) if e.is_precondition_failed() || e.is_not_found() => {
                // Someone pushed meanwhile: the combined pack stays unreferenced
                // (a later gc deletes it after the grace period).
                report.raced = true;
                return Ok(report);
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Deletions: retired packs past their grace (dropped from the manifest
    // first), then packs no manifest names that are older than the grace.
    let now = unix_now();
    let expired: BTreeSet<String> =
        current.retired.iter().filter(|r| now.saturating_sub(r.since) >= grace.as_secs()).map(|r| r.name.clone()).collect();
    if !expired.is_empty() && !dry_run {
        current = update_manifest(store, url, |m| {
            let before = m.retired.len();
            m.retired.retain(|r| !expired.contains(&r.name));
            Ok(m.retired.len() != before)
        })
        .await?;
    }
    let listed: BTreeSet<&str> = current.packs.iter().map(|p| p.name.as_str()).chain(current.retired.iter().map(|r| r.name.as_str())).collect();
    let dir = manifest::packs_dir(url);
    for o in store.list(&dir).await? {
        let Some(leaf) = o.key.strip_prefix(&dir) else { continue };
        let Some(name) = leaf.strip_prefix("pack-").and_then(|n| n.strip_suffix(".pack").or_else(|| n.strip_suffix(".idx"))) else {
            continue;
        };
        if listed.contains(name) {
            if !current.packs.iter().any(|p| p.name == name) {
                report.waiting.push(o.key.clone());
            }
            continue;
        }
        let old_enough = expired.contains(name) || o.age() >= grace;
        if !old_enough {
            report.waiting.push(o.key.clone());
            continue;
        }
        if !dry_run {
            store.delete(&o.key).await?;
        }
        report.deleted.push(o.key.clone());
    }
    Ok(report)
}

/// What a migration did.
#[derive(Debug, Default)]
pub struct MigrateReport {
    pub refs: usize,
    pub bytes: u64,
    /// Keys of the old format deleted.
    pub deleted: usize,
}

/// Test hook: the migration exits the daemon half-way (`to-packs`: after
/// the manifest write and the first bundle deletion; `to-bundles`: after the
/// freeze and the first bundle write), to test that a rerun finishes it.
pub const MIGRATE_CRASH_HOOK_ENV: &str = "GIT_S3_TEST_CRASH_DURING_MIGRATE";

fn crash_hook(env: &HashMap<String, String>, point: &str) {
    if env.get(MIGRATE_CRASH_HOOK_ENV).map(String::as_str) == Some(point) {
        tracing::error!("{MIGRATE_CRASH_HOOK_ENV}={point}: exiting half-way through the migration");
        std::process::exit(70);
    }
}

fn lock_error(url: &RemoteUrl, e: crate::locks::LockError) -> StorageError {
    match e {
        crate::locks::LockError::Store(s) => s.into(),
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
pub async fn migrate_to_packs(
    store: &S3Store,
    url: &RemoteUrl,
    tmp_root: &Path,
    env: &HashMap<String, String>,
) -> Result<MigrateReport, StorageError> {
    let scan = bundle_format::scan(&url.prefix, &store.list(&format!("{}/", url.prefix)).await?);
    if scan.bundles.is_empty() {
        return Err(StorageError::Format(match read_manifest(store, url).await? {
            Some(_) => format!("{url} is already in the packs format"),
            None => format!("{url} holds no bundles to migrate (for an empty prefix use `git s3 init --format packs`)"),
        }));
    }
    // Every ref with a bundle, and every ref with a lock (a push creating
    // it, or the stale lock of an interrupted migration: taken over, released).
    let names: Vec<String> =
        scan.bundles.keys().chain(scan.locks.iter().map(|l| &l.0)).cloned().collect::<BTreeSet<_>>().into_iter().collect();
    let ttl = crate::locks::ttl_from_env(env);
    let mut locks = crate::locks::acquire_all(store, &url.prefix, &names, ttl, bundle_format::lock_wait(env))
        .await
        .map_err(|e| lock_error(url, e))?;
    let work = migrate_to_packs_locked(store, url, tmp_root, env, &names);
    let result = crate::locks::hold_all_while(store, &mut locks, ttl, work).await;
    crate::locks::release_all(store, locks).await;
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
    let scan = bundle_format::scan(&url.prefix, &store.list(&format!("{}/", url.prefix)).await?);
    let mine: BTreeMap<&String, &Vec<(String, crate::s3_store::ObjectInfo)>> =
        scan.bundles.iter().filter(|(r, _)| locked.contains(r)).collect();
    if let Some((r, b)) = mine.iter().find(|(_, b)| b.len() > 1) {
        return Err(StorageError::Format(format!("{r} has {} bundles; run `git s3 doctor` first", b.len())));
    }
    let from_bundles: BTreeMap<String, String> = mine.iter().map(|(r, b)| ((*r).clone(), b[0].0.clone())).collect();
    let existing = read_manifest(store, url).await?;
    let dir = tempfile::Builder::new().prefix("migrate-").tempdir_in(tmp_root)?;
    let git = scratch_repo(dir.path(), env).await?;
    for (r, b) in &mine {
        let file = tempfile::Builder::new().prefix("dl-").tempfile_in(dir.path())?;
        store.get_to_file(&b[0].1.key, file.path(), |_| {}).await?;
        git.bundle_unbundle(file.path())
            .await
            .map_err(|e| StorageError::Corrupt(format!("the bundle of {r} ({}) does not unbundle: {e}", b[0].1.key)))?;
    }
    let tips: BTreeSet<String> = from_bundles.values().cloned().collect();
    let entry = pack_of(&git, dir.path(), &tips).await?;
    upload_pack_of(store, url, dir.path(), &entry).await?;
    let head = match store.get_small(&url.key("HEAD")).await? {
        Some(h) => Some(String::from_utf8_lossy(&h).trim().to_string()),
        None => None,
    };
    // A rerun keeps what an interrupted run (or a frozen manifest) holds.
    let (mut m, condition) = match &existing {
        Some((old, etag)) => (old.clone(), WriteCondition::IfMatch(etag.clone())),
        None => (Manifest::default(), WriteCondition::IfAbsent),
    };
    m.serial += 1;
    m.frozen = None;
    m.refs.extend(from_bundles.iter().map(|(r, s)| (r.clone(), s.clone())));
    m.head = head.filter(|h| m.refs.contains_key(h)).or(m.head.take());
    m.protected.extend(scan.protected.iter().filter(|p| locked.contains(p)).cloned());
    if !m.packs.iter().any(|p| p.name == entry.name) {
        m.packs.push(entry.clone());
    }
    match store.put_bytes(&manifest::manifest_key(url), m.to_bytes(), PutOptions { condition, ..Default::default() }).await {
        Ok(_) => {}
        Err(e) if e.is_precondition_failed() || e.is_not_found() => {
            return Err(StorageError::Format(format!("{url}: the manifest changed during the migration; run it again")))
        }
        Err(e) => return Err(e.into()),
    }
    let mut report = MigrateReport { refs: m.refs.len(), bytes: entry.size + entry.idx_size, deleted: 0 };
    for (i, b) in mine.values().flat_map(|b| b.iter()).enumerate() {
        store.delete(&b.1.key).await?;
        report.deleted += 1;
        if i == 0 {
            crash_hook(env, "to-packs");
        }
    }
    if scan.head_object {
        store.delete(&url.key("HEAD")).await?;
        report.deleted += 1;
    }
    // Refs a 0.4.2 push created meanwhile (their locks were not ours).
    let again = bundle_format::scan(&url.prefix, &store.list(&url.key("refs/")).await?);
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
/// deleted. Rerunning after a crash finishes the job.
pub async fn migrate_to_bundles(
    store: &S3Store,
    url: &RemoteUrl,
    tmp_root: &Path,
    env: &HashMap<String, String>,
) -> Result<MigrateReport, StorageError> {
    let m = freeze(store, url, "migrating to bundles").await?;
    let names: Vec<String> = m.refs.keys().cloned().collect();
    let ttl = crate::locks::ttl_from_env(env);
    let mut locks = crate::locks::acquire_all(store, &url.prefix, &names, ttl, bundle_format::lock_wait(env))
        .await
        .map_err(|e| lock_error(url, e))?;
    let work = migrate_to_bundles_locked(store, url, tmp_root, env, &m);
    let result = crate::locks::hold_all_while(store, &mut locks, ttl, work).await;
    crate::locks::release_all(store, locks).await;
    result.map_err(|e| lock_error(url, e))?
}

/// Marks the manifest frozen (a conditional write); returns it as frozen.
async fn freeze(store: &S3Store, url: &RemoteUrl, why: &str) -> Result<Manifest, StorageError> {
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        let Some((mut m, etag)) = read_manifest(store, url).await? else {
            return Err(StorageError::Format(format!("{url} has no packs manifest: it is already in the bundles format (or empty)")));
        };
        if m.frozen.is_some() {
            return Ok(m); // an interrupted migration: carry on
        }
        m.serial += 1;
        m.frozen = Some(format!("{why}, since unix time {}", unix_now()));
        let opts = PutOptions { condition: WriteCondition::IfMatch(etag), ..Default::default() };
        match store.put_bytes(&manifest::manifest_key(url), m.to_bytes(), opts).await {
            Ok(_) => return Ok(m),
            Err(e) if e.is_precondition_failed() || e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StorageError::Format(format!("{url}: the manifest kept changing; try again")))
}

async fn migrate_to_bundles_locked(
    store: &S3Store,
    url: &RemoteUrl,
    tmp_root: &Path,
    env: &HashMap<String, String>,
    m: &Manifest,
) -> Result<MigrateReport, StorageError> {
    let dir = tempfile::Builder::new().prefix("migrate-").tempdir_in(tmp_root)?;
    let git = scratch_from_packs(store, url, m, dir.path(), env).await?;
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
    let scan = bundle_format::scan(&url.prefix, &store.list(&url.key("refs/")).await?);
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
        store.put_bytes(&url.key(&format!("{p}/{}", bundle_format::PROTECTED_MARKER)), Vec::new(), PutOptions::default()).await?;
    }
    // The manifest is frozen: no push or edit can have landed since.
    store.delete(&manifest::manifest_key(url)).await?;
    report.deleted += 1;
    for o in store.list(&manifest::packs_dir(url)).await? {
        store.delete(&o.key).await?;
        report.deleted += 1;
    }
    Ok(report)
}
