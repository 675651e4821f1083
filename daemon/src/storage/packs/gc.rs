//! Maintenance of a packs-format remote: manifest edits (protect,
//! unprotect, delete a ref), compaction (`git s3 gc`) and migration between
//! the bundles and packs formats (`git s3 migrate`).
//!
//! Compaction has two modes. `Full` downloads every pack into a scratch
//! bare repository and packs what the manifest's refs reach into one pack
//! (dropping unreachable objects). `Geometric` picks the small packs that
//! break a geometric progression of factor 2 (`geometric_rollup`, like
//! `git repack --geometric=2`), downloads only those and combines exactly
//! their objects with `git pack-objects --stdin-packs`; the big packs stay
//! untouched, so its cost grows with what was pushed since, not with the
//! repository. Both upload the new pack and swap the pack list in one
//! conditional manifest write against the manifest they started from (a
//! remote that changed meanwhile is left alone: run gc again). Replaced
//! packs are listed as `retired` and deleted by a later gc once their grace
//! period is over; packs no manifest names (a push that died before its
//! manifest write) are deleted once older than the grace period.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use futures::stream::{StreamExt, TryStreamExt};

use crate::storage::bundles::storage as bundle_format;
use crate::local::git::{Git, GitError};
use crate::storage::packs::manifest::{self, Manifest, PackEntry, RetiredPack};
use crate::storage::packs::views;
use crate::storage::packs::push::{SCRATCH_PACK_CONFIG, backoff, index_pack, pack_object_count, read_manifest, run_with_stdin, unix_now, MAX_ATTEMPTS};
use crate::s3::url::RemoteUrl;
use crate::s3::store::{PutOptions, S3Store, WriteCondition};
use crate::storage::StorageError;

/// Applies `edit` to the manifest with a conditional write, re-reading and
/// re-applying on a lost race. `edit` returns whether it changed anything.
/// Returns the manifest as written (or as found, when unchanged).
pub async fn update_manifest<F>(store: &S3Store, url: &RemoteUrl, edit: F) -> Result<Manifest, StorageError>
where
    F: FnMut(&mut Manifest) -> Result<bool, StorageError>,
{
    edit_manifest(store, url, false, edit).await
}

/// [`update_manifest`]; `frozen_ok` lets a migration edit a frozen manifest.
async fn edit_manifest<F>(store: &S3Store, url: &RemoteUrl, frozen_ok: bool, mut edit: F) -> Result<Manifest, StorageError>
where
    F: FnMut(&mut Manifest) -> Result<bool, StorageError>,
{
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        let Some((mut m, etag)) = read_manifest(store, url).await? else {
            return Err(StorageError::Format(format!("{url} has no packs manifest (it is in the bundles format, or empty)")));
        };
        if let Some(msg) = m.frozen_error(url).filter(|_| !frozen_ok) {
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

/// How `gc` compacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GcMode {
    /// Every pack into one pack of what the refs reach (unreachable objects
    /// are dropped). Downloads and uploads the whole repository.
    #[default]
    Full,
    /// Only the packs `geometric_rollup` picks, into one pack of exactly
    /// their objects; the others stay as they are.
    Geometric,
}

impl GcMode {
    pub fn name(self) -> &'static str {
        match self {
            GcMode::Full => "full",
            GcMode::Geometric => "geometric",
        }
    }
}

/// The factor of the geometric progression packs are kept in.
pub const GEOMETRIC_FACTOR: u64 = 2;

/// A pack list split by `geometric_rollup`.
#[derive(Debug, PartialEq, Eq)]
pub struct Rollup<'a> {
    /// The packs to combine into one (smallest first); empty when fewer
    /// than two would be rolled up.
    pub combine: Vec<&'a PackEntry>,
    /// The packs that stay (smallest first).
    pub keep: Vec<&'a PackEntry>,
}

/// Picks the packs to combine so that the packs form a geometric
/// progression of factor 2 (like `git repack --geometric=2`), by `size`.
///
/// Sorted by size ascending, the smallest packs are rolled up while the
/// next pack is smaller than 2× the rolled-up total; the split is the
/// smallest one above which every pack weighs at least 2× the sum of all
/// smaller packs (so a later pack that breaks the progression pulls the
/// packs below it into the rollup too, and after combining the list is a
/// progression again). Those packs stay; the rest is combined, but only
/// when that is at least two packs.
pub fn geometric_rollup(packs: &[PackEntry]) -> Rollup<'_> {
    let mut sorted: Vec<&PackEntry> = packs.iter().collect();
    sorted.sort_by(|a, b| a.size.cmp(&b.size).then_with(|| a.name.cmp(&b.name)));
    // `split`: how many of the smallest packs are rolled up; `below`: the
    // sum of the sizes of the packs before the current one.
    let (mut split, mut below) = (0usize, 0u64);
    for (i, p) in sorted.iter().enumerate() {
        if p.size < below.saturating_mul(GEOMETRIC_FACTOR) {
            split = i + 1;
        }
        below = below.saturating_add(p.size);
    }
    if split < 2 {
        return Rollup { combine: Vec::new(), keep: sorted };
    }
    let keep = sorted.split_off(split);
    Rollup { combine: sorted, keep }
}

/// What a gc did.
#[derive(Debug, Default)]
pub struct GcReport {
    pub mode: GcMode,
    pub packs_before: usize,
    pub bytes_before: u64,
    /// Packs combined (or, in a dry run, that would be) and their bytes.
    pub combined_packs: usize,
    pub combined_bytes: u64,
    /// Packs left as they were (all of them when nothing is combined).
    pub kept: usize,
    /// The combined pack (None: nothing combined).
    pub combined: Option<PackEntry>,
    /// Keys deleted (retired packs past their grace, unreferenced old packs).
    pub deleted: Vec<String>,
    /// Packs kept for now (retired or unreferenced, within their grace period).
    pub waiting: Vec<String>,
    /// The remote changed while combining: nothing was replaced.
    pub raced: bool,
    /// The views after this gc (Full writes new ones).
    pub views: Option<manifest::Views>,
}

/// Whether a remote's views are missing or were not made from its packs.
pub fn views_stale(m: &Manifest) -> bool {
    !m.packs.is_empty() && m.views.as_ref().is_none_or(|v| m.packs.iter().any(|p| !v.covers.contains(&p.name)))
}

/// A git environment for a scratch bare repository at `dir`.
fn scratch_git(dir: &Path, env: &HashMap<String, String>) -> Git {
    let mut env: HashMap<String, String> = env.iter().filter(|(k, _)| !k.starts_with("GIT_")).map(|(k, v)| (k.clone(), v.clone())).collect();
    env.insert("GIT_DIR".into(), dir.to_string_lossy().to_string());
    Git::new(dir, env)
}

/// A scratch bare repository at `<dir>/repo.git` holding `packs` (downloaded
/// in parallel, streamed through files, checked by index-pack). Returns it
/// with the names the packs got in its `objects/pack`.
async fn scratch_from_packs(
    store: &S3Store,
    url: &RemoteUrl,
    packs: &[&PackEntry],
    dir: &Path,
    env: &HashMap<String, String>,
) -> Result<(Git, Vec<String>), StorageError> {
    let git = scratch_repo(dir, env).await?;
    let downloads: Vec<_> = packs
        .iter()
        .map(|p| {
            let git = git.clone();
            async move {
                let file = tempfile::Builder::new().prefix("dl-").tempfile_in(dir)?;
                let key = manifest::pack_key(url, &p.name);
                match store.get_to_file(&key, file.path(), |_| {}).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {
                        return Err(StorageError::Corrupt(format!(
                            "the manifest names pack {} but s3://{}/{key} is missing",
                            p.name,
                            store.bucket()
                        )))
                    }
                    Err(e) => return Err(e.into()),
                }
                let local = index_pack(&git, file.path()).await.map_err(|e| match e {
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

async fn scratch_repo(dir: &Path, env: &HashMap<String, String>) -> Result<Git, StorageError> {
    let repo = dir.join("repo.git");
    std::fs::create_dir_all(&repo)?;
    let git = scratch_git(&repo, env);
    git.run(&["init", "-q", "--bare"]).await?;
    Ok(git)
}

/// Re-creates and uploads the `.idx` of pack `name` (missing when a daemon
/// stopped between a push's manifest write and the `.idx` upload): the
/// `.pack` is downloaded and indexed by `git index-pack`, which checks
/// every object and that the pack is the one named. Returns the `.idx` size.
pub async fn restore_idx(
    store: &S3Store,
    url: &RemoteUrl,
    pack: &PackEntry,
    tmp_root: &Path,
    env: &HashMap<String, String>,
) -> Result<u64, StorageError> {
    let dir = tempfile::Builder::new().prefix("idx-").tempdir_in(tmp_root)?;
    let (_, indexed) = scratch_from_packs(store, url, &[pack], dir.path(), env).await?;
    let name = &pack.name;
    if indexed.first() != Some(name) {
        let key = manifest::pack_key(url, name);
        return Err(StorageError::Corrupt(format!("s3://{}/{key} holds pack {indexed:?}, not {name}", store.bucket())));
    }
    let idx = dir.path().join("repo.git/objects/pack").join(format!("pack-{name}.idx"));
    store.put_file(&manifest::idx_key(url, name), &idx, PutOptions::default(), |_| {}).await?;
    Ok(tokio::fs::metadata(&idx).await?.len())
}

/// `git pack-objects` of everything `tips` reach, into `<dir>/out-<name>.pack`.
async fn pack_of(git: &Git, dir: &Path, tips: &BTreeSet<String>) -> Result<PackEntry, StorageError> {
    let input: String = tips.iter().map(|t| format!("{t}\n")).collect();
    let base = dir.join("out");
    let base = base.to_string_lossy();
    let args = [&SCRATCH_PACK_CONFIG[..], &["pack-objects", "--revs", "--quiet", "--delta-base-offset", &base]].concat();
    let out = run_with_stdin(git, &args, input.into_bytes()).await?;
    written_pack(dir, &out, tips.iter().cloned().collect()).await
}

/// `git pack-objects --stdin-packs` of the scratch repository's packs
/// `local_names`: one self-contained pack of exactly their objects, into
/// `<dir>/out-<name>.pack`, made for `tips`.
async fn pack_of_packs(git: &Git, dir: &Path, local_names: &[String], tips: Vec<String>) -> Result<PackEntry, StorageError> {
    let input: String = local_names.iter().map(|n| format!("pack-{n}.pack\n")).collect();
    let base = dir.join("out");
    let base = base.to_string_lossy();
    let args = [&SCRATCH_PACK_CONFIG[..], &["pack-objects", "--stdin-packs", "--quiet", "--delta-base-offset", &base]].concat();
    let out = run_with_stdin(git, &args, input.into_bytes()).await?;
    written_pack(dir, &out, tips).await
}

/// The entry of the pack `git pack-objects` wrote to `<dir>/out-<name>`,
/// `out` being what it printed.
async fn written_pack(dir: &Path, out: &str, tips: Vec<String>) -> Result<PackEntry, StorageError> {
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
    })
}

/// The tips of a pack combining `packs`: the union of theirs. A pack
/// without tips is downloaded by every fetch that needs anything (nothing
/// says when its objects are present), and so is one combining it.
fn combined_tips(packs: &[&PackEntry]) -> Vec<String> {
    if packs.iter().any(|p| p.tips.is_empty()) {
        return Vec::new();
    }
    packs.iter().flat_map(|p| p.tips.iter().cloned()).collect::<BTreeSet<_>>().into_iter().collect()
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

/// Compacts `url`'s packs (`mode`); deletes retired/unreferenced packs
/// older than `grace`. A dry run combines and deletes nothing, but reports
/// what would be combined and deleted.
#[tracing::instrument(name = "gc", skip_all, fields(remote = %url, mode = mode.name(), dry_run))]
pub async fn gc(
    store: &S3Store,
    url: &RemoteUrl,
    tmp_root: &Path,
    env: &HashMap<String, String>,
    grace: Duration,
    mode: GcMode,
    dry_run: bool,
) -> Result<GcReport, StorageError> {
    let Some((m0, etag0)) = read_manifest(store, url).await? else {
        return Err(StorageError::Format(format!("{url} has no packs manifest (not a packs remote)")));
    };
    if let Some(msg) = m0.frozen_error(url) {
        return Err(StorageError::Format(msg));
    }
    let mut report = GcReport { mode, packs_before: m0.packs.len(), bytes_before: m0.pack_bytes(), ..Default::default() };
    let combine: Vec<&PackEntry> = match mode {
        // Full: also when the views are missing or older than the packs.
        GcMode::Full if m0.packs.len() > 1 || views_stale(&m0) => m0.packs.iter().collect(),
        GcMode::Full => Vec::new(),
        GcMode::Geometric => geometric_rollup(&m0.packs).combine,
    };
    report.combined_packs = combine.len();
    report.combined_bytes = combine.iter().map(|p| p.size + p.idx_size).sum();
    report.kept = m0.packs.len() - combine.len();
    tracing::info!(packs = m0.packs.len(), combine = combine.len(), bytes = report.combined_bytes, "gc plan");
    let mut current = m0.clone();
    if !combine.is_empty() && !dry_run {
        let dir = tempfile::Builder::new().prefix("gc-").tempdir_in(tmp_root)?;
        let (git, local_names) = scratch_from_packs(store, url, &combine, dir.path(), env).await?;
        let entry = match mode {
            // One pack of what the refs reach.
            GcMode::Full => pack_of(&git, dir.path(), &m0.refs.values().cloned().collect()).await?,
            // One pack of exactly the rolled-up packs' objects.
            GcMode::Geometric => {
                let entry = pack_of_packs(&git, dir.path(), &local_names, combined_tips(&combine)).await?;
                let largest = combine.iter().map(|p| p.objects).max().unwrap_or(0);
                if entry.objects < largest {
                    return Err(StorageError::Corrupt(format!(
                        "git pack-objects --stdin-packs wrote {} objects, fewer than the {largest} of one of the packs it combined",
                        entry.objects
                    )));
                }
                entry
            }
        };
        let name = entry.name.clone();
        upload_pack_of(store, url, dir.path(), &entry).await?;
        // Full: new views of the new pack (the scratch repository holds every object).
        let views = match mode {
            GcMode::Full => {
                let v = views::build(&git, dir.path(), &m0.refs, m0.head.as_ref(), [name.clone()].into(), |out, tips| {
                    let d = dir.path().to_path_buf();
                    async move { written_pack(&d, &out, tips).await }
                })
                .await?;
                for p in v.packs() {
                    upload_pack_of(store, url, dir.path(), p).await?;
                }
                Some(v)
            }
            // Geometric: the combined pack is covered when all it combined were.
            GcMode::Geometric => m0.views.clone().map(|mut v| {
                if combine.iter().all(|p| v.covers.contains(&p.name)) {
                    v.covers.insert(name.clone());
                }
                v
            }),
        };
        report.views = views.clone();
        let replaced: BTreeSet<&str> = combine.iter().map(|p| p.name.as_str()).collect();
        let now = unix_now();
        let mut next = m0.clone();
        next.serial += 1;
        for p in &combine {
            if p.name != name && !next.retired.iter().any(|r| r.name == p.name) {
                next.retired.push(RetiredPack { name: p.name.clone(), since: now });
            }
        }
        // Views replaced by new ones retire like packs.
        let new_view_names: BTreeSet<String> = views.iter().flat_map(|v| v.packs()).map(|p| p.name.clone()).collect();
        for p in m0.views.iter().flat_map(|v| v.packs()) {
            if !new_view_names.contains(&p.name) && p.name != name && !next.retired.iter().any(|r| r.name == p.name) {
                next.retired.push(RetiredPack { name: p.name.clone(), since: now });
            }
        }
        next.views = views;
        next.retired.retain(|r| r.name != name && !new_view_names.contains(&r.name));
        next.packs = m0
            .packs
            .iter()
            .filter(|p| !replaced.contains(p.name.as_str()) && p.name != name)
            .cloned()
            .chain(std::iter::once(entry.clone()))
            .collect();
        let opts = PutOptions { condition: WriteCondition::IfMatch(etag0), ..Default::default() };
        match store.put_bytes(&manifest::manifest_key(url), next.to_bytes(), opts).await {
            Ok(_) => {
                tracing::info!(
                    pack = %name,
                    objects = entry.objects,
                    bytes = entry.size + entry.idx_size,
                    combined = combine.len(),
                    kept = next.packs.len() - 1,
                    serial = next.serial,
                    "packs combined"
                );
                report.combined = Some(entry);
                current = next;
            }
            Err(e) if e.is_precondition_failed() || e.is_not_found() => {
                // Someone pushed meanwhile: the combined pack stays unreferenced
                // (a later gc deletes it after the grace period).
                tracing::info!(pack = %name, "the manifest changed while combining; nothing replaced");
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
    let listed: BTreeSet<&str> = current
        .packs
        .iter()
        .chain(current.views.iter().flat_map(|v| v.packs()))
        .map(|p| p.name.as_str())
        .chain(current.retired.iter().map(|r| r.name.as_str()))
        .collect();
    let dir = manifest::packs_dir(url);
    for o in store.list(&dir).await? {
        let Some(leaf) = o.key.strip_prefix(&dir) else { continue };
        let Some(name) = leaf.strip_prefix("pack-").and_then(|n| n.strip_suffix(".pack").or_else(|| n.strip_suffix(".idx"))) else {
            continue;
        };
        if listed.contains(name) {
            if !current.packs.iter().chain(current.views.iter().flat_map(|v| v.packs())).any(|p| p.name == name) {
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
    if !report.deleted.is_empty() {
        tracing::info!(deleted = report.deleted.len(), waiting = report.waiting.len(), "old packs deleted");
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
    let mut locks = crate::storage::bundles::locks::acquire_all(store, &url.prefix, names, ttl, bundle_format::lock_wait(env))
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
    let scan = bundle_format::scan(&url.prefix, &store.list(&format!("{}/", url.prefix)).await?);
    let mine: BTreeMap<&String, &Vec<(String, crate::s3::store::ObjectInfo)>> =
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
    let head = store.get_small(&url.key("HEAD")).await?.map(|h| String::from_utf8_lossy(&h).trim().to_string());
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
    under_ref_locks(store, url, &names, env, migrate_to_bundles_locked(store, url, tmp_root, env, &m)).await
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
    let (git, _) = scratch_from_packs(store, url, &all, dir.path(), env).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(n: u8, size: u64) -> PackEntry {
        PackEntry { name: format!("{:02x}", n).repeat(20), size, idx_size: 0, objects: 1, tips: vec![], created: 0 }
    }

    /// (sizes combined, sizes kept) for packs of `sizes`.
    fn split(sizes: &[u64]) -> (Vec<u64>, Vec<u64>) {
        let packs: Vec<PackEntry> = sizes.iter().enumerate().map(|(i, s)| pack(i as u8, *s)).collect();
        let r = geometric_rollup(&packs);
        assert_eq!(r.combine.len() + r.keep.len(), packs.len(), "every pack is combined or kept");
        (r.combine.iter().map(|p| p.size).collect(), r.keep.iter().map(|p| p.size).collect())
    }

    #[test]
    fn geometric_rollup_combines_small_packs_and_keeps_big_ones() {
        // a big base and small pushes: the small ones are rolled up, the base stays
        assert_eq!(split(&[2_000_000, 300, 200, 250, 400]), (vec![200, 250, 300, 400], vec![2_000_000]));
        // input order does not matter
        assert_eq!(split(&[400, 250, 2_000_000, 200, 300]), (vec![200, 250, 300, 400], vec![2_000_000]));
        // equal sizes: all combined
        assert_eq!(split(&[5, 5, 5]), (vec![5, 5, 5], vec![]));
        // rolling up continues while the next pack is below 2× the total
        assert_eq!(split(&[1, 1, 3, 9, 100]), (vec![1, 1, 3, 9], vec![100]));
    }

    #[test]
    fn geometric_rollup_leaves_a_progression_alone() {
        assert_eq!(split(&[]), (vec![], vec![]));
        assert_eq!(split(&[7]), (vec![], vec![7]));
        // each pack at least 2× the sum of all smaller ones
        assert_eq!(split(&[1, 2, 6, 18, 54]), (vec![], vec![1, 2, 6, 18, 54]));
        assert_eq!(split(&[10, 20]), (vec![], vec![10, 20]));
        // exactly 2× is a progression; just below is not
        assert_eq!(split(&[10, 19]), (vec![10, 19], vec![]));
    }

    #[test]
    fn geometric_rollup_needs_two_packs_to_combine() {
        // one small pack below big ones: nothing to combine it with
        assert_eq!(split(&[3, 100, 1000]), (vec![], vec![3, 100, 1000]));
        assert_eq!(split(&[3, 3]), (vec![3, 3], vec![]));
    }

    #[test]
    fn geometric_rollup_restores_the_progression_above_the_split() {
        // 100 ≥ 2×10, but 150 < 2×(10+100): the split moves above 150
        assert_eq!(split(&[10, 100, 150, 10_000]), (vec![10, 100, 150], vec![10_000]));
        // adjacent packs in progression but not against the cumulative sum
        // (40 ≥ 2×20, but 40 < 2×(5+10+20)): rolled up too
        assert_eq!(split(&[5, 10, 20, 40, 1000]), (vec![5, 10, 20, 40], vec![1000]));
        // after the split every kept pack is ≥ 2× the sum of all smaller ones
        let sizes = [3, 8, 8, 30, 31, 200, 500, 5000, 7000, 100_000];
        let (combined, kept) = split(&sizes);
        let mut below: u64 = combined.iter().sum();
        for k in kept {
            assert!(k >= 2 * below, "{k} kept above {below}");
            below += k;
        }
    }

    #[test]
    fn geometric_rollup_does_not_overflow() {
        let half = u64::MAX / 2;
        assert_eq!(split(&[half, half, u64::MAX]), (vec![half, half], vec![u64::MAX]));
        assert_eq!(split(&[1, 1, u64::MAX, u64::MAX]), (vec![1, 1], vec![u64::MAX, u64::MAX]));
    }

    #[test]
    fn combined_tips_are_the_union_unless_a_pack_has_none() {
        let mut a = pack(1, 1);
        a.tips = vec!["b".repeat(40), "a".repeat(40)];
        let mut b = pack(2, 1);
        b.tips = vec!["a".repeat(40), "c".repeat(40)];
        assert_eq!(combined_tips(&[&a, &b]), vec!["a".repeat(40), "b".repeat(40), "c".repeat(40)]);
        let c = pack(3, 1);
        assert!(combined_tips(&[&a, &c]).is_empty());
    }
}
