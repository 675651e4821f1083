//! The packs format: incremental, lock-free storage for large repositories.
//!
//! Layout under the remote's prefix (beside, never inside, the 0.4.2 bundle
//! layout's `HEAD` and `refs/`):
//! `.git-s3/manifest.json` (refs, HEAD, protected refs, packs; see
//! `manifest`) and `.git-s3/packs/pack-<hash>.pack` + `.idx` (self-contained
//! packs made by `git pack-objects`).
//!
//! A push builds one pack of the objects the remote lacks (new tips `--not`
//! the manifest's tips that exist locally), uploads it, then replaces the
//! manifest with a conditional write on its ETag (`If-Match`, or
//! `If-None-Match: *` to create it). A lost race re-reads the manifest,
//! re-checks every ref and retries a bounded number of times. A crash at any
//! point leaves at worst an unreferenced pack. A fetch downloads, in
//! parallel, the packs whose tips the local repository lacks and indexes
//! them with `git index-pack --stdin`.

use tracing::Instrument;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::storage::bundles::storage as bundle_format;
use crate::local::git::{Git, GitError};
use crate::storage::packs::manifest::{self, Manifest, PackEntry};
use crate::s3::url::RemoteUrl;
use crate::s3::store::{Conditional, ObjectInfo, PutOptions, S3Store, WriteCondition};
use crate::storage::{OpContext, PushResult, PushUpdate, RefListing, RemoteRef, RepoStorage, StorageError};
use crate::session::progress::Progress;

/// Manifest writes tried before a push gives up with `fetch first`.
pub(crate) const MAX_ATTEMPTS: u32 = 12;
/// Packs downloaded at once.
const DOWNLOAD_CONCURRENCY: usize = 4;
/// Test hook: exit the daemon after uploading a pack, before the manifest write.
pub const CRASH_HOOK_ENV: &str = "GIT_S3_TEST_CRASH_BEFORE_MANIFEST";
/// `git -c` settings for packs written to a temporary directory only to be
/// uploaded: no fsync (nothing to keep on this disk) and no `.rev` file.
pub(crate) const SCRATCH_PACK_CONFIG: [&str; 4] = ["-c", "core.fsync=none", "-c", "pack.writeReverseIndex=false"];
/// `repo.zip` metadata: the manifest serial that made the zip's commit current.
pub const ZIP_SERIAL_META: &str = "git-s3-serial";
/// Test hook: milliseconds the background `.idx` upload waits first.
pub const IDX_DELAY_HOOK_ENV: &str = "GIT_S3_TEST_IDX_UPLOAD_DELAY_MS";

/// A storage format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Bundles,
    Packs,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bundles" | "bundle" => Some(Format::Bundles),
            "packs" | "pack" => Some(Format::Packs),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Bundles => "bundles",
            Format::Packs => "packs",
        }
    }
}

/// `git config s3.format` in the caller's repository (default: bundles).
pub async fn configured_format(git: &Git) -> Result<Format, StorageError> {
    match git.config_get("s3.format").await {
        None => Ok(Format::Bundles),
        Some(v) => Format::parse(&v)
            .ok_or_else(|| StorageError::Format(format!("git config s3.format is '{v}'; it must be 'packs' or 'bundles'"))),
    }
}

/// Manifests this daemon has read, by location: a later read is a
/// conditional GET against the ETag (`If-None-Match`), which S3 answers with
/// a bodiless 304 when nothing changed.
static MANIFESTS: std::sync::OnceLock<dashmap::DashMap<String, (String, std::sync::Arc<Manifest>)>> = std::sync::OnceLock::new();

/// Manifests kept for conditional reads (beyond it the map starts over).
const MANIFEST_CACHE_ENTRIES: usize = 256;

/// The manifest and its ETag, or None when the prefix has none.
pub async fn read_manifest(store: &S3Store, url: &RemoteUrl) -> Result<Option<(Manifest, String)>, StorageError> {
    let key = manifest::manifest_key(url);
    let cache = MANIFESTS.get_or_init(dashmap::DashMap::new);
    let location = store.location(&key);
    let cached = cache.get(&location).map(|c| c.value().clone());
    match store.get_small_if_changed(&key, cached.as_ref().map(|c| c.0.as_str())).await? {
        Conditional::Missing => {
            cache.remove(&location);
            Ok(None)
        }
        Conditional::NotModified => match cached {
            Some((etag, m)) => Ok(Some((Manifest::clone(&m), etag))),
            None => Err(StorageError::Corrupt(format!("s3://{}/{key}: 304 Not Modified to an unconditional read", store.bucket()))),
        },
        Conditional::Found { data, etag } => {
            let m = Manifest::parse(&data).map_err(|e| StorageError::Corrupt(format!("s3://{}/{key}: {e}", store.bucket())))?;
            if cache.len() >= MANIFEST_CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(location, (etag.clone(), std::sync::Arc::new(m.clone())));
            Ok(Some((m, etag)))
        }
    }
}

/// What `<prefix>/refs/` holds: whether 0.4.2 bundles are there, and the
/// refs with a `PROTECTED#` marker.
#[derive(Debug, Default, Clone)]
pub struct RefsDir {
    pub bundle_refs: Vec<String>,
    pub markers: BTreeSet<String>,
}

pub async fn scan_refs_dir(store: &S3Store, url: &RemoteUrl) -> Result<RefsDir, StorageError> {
    let refs = RefsDir::from_objects(url, &list_refs_dir(store, url).await?);
    note_refs_scan(store, url, &refs);
    Ok(refs)
}

/// When this daemon last found a prefix's `refs/` free of bundles.
static CLEAN_REFS_SCANS: std::sync::OnceLock<dashmap::DashMap<String, std::time::Instant>> = std::sync::OnceLock::new();

/// How long a clean `refs/` scan lets reads skip the listing.
const REFS_RESCAN: Duration = Duration::from_secs(60);

fn note_refs_scan(store: &S3Store, url: &RemoteUrl, refs: &RefsDir) {
    let scans = CLEAN_REFS_SCANS.get_or_init(dashmap::DashMap::new);
    let location = store.location(&manifest::manifest_key(url));
    if refs.bundle_refs.is_empty() {
        if scans.len() >= MANIFEST_CACHE_ENTRIES {
            scans.clear();
        }
        scans.insert(location, std::time::Instant::now());
    } else {
        scans.remove(&location);
    }
}

/// Whether reads of this prefix may skip the `refs/` listing: the daemon
/// holds its manifest and listed `refs/` (clean) less than a minute ago.
fn recently_scanned_packs(store: &S3Store, url: &RemoteUrl) -> bool {
    let location = store.location(&manifest::manifest_key(url));
    MANIFESTS.get().is_some_and(|c| c.contains_key(&location))
        && CLEAN_REFS_SCANS.get().and_then(|s| s.get(&location).map(|t| t.elapsed() < REFS_RESCAN)).unwrap_or(false)
}

/// Every object under `<prefix>/refs/`.
pub async fn list_refs_dir(store: &S3Store, url: &RemoteUrl) -> Result<Vec<ObjectInfo>, StorageError> {
    Ok(store.list(&url.key("refs/")).await?)
}

impl RefsDir {
    pub fn from_objects(url: &RemoteUrl, objects: &[ObjectInfo]) -> RefsDir {
        let scan = bundle_format::scan(&url.prefix, objects);
        RefsDir { bundle_refs: scan.bundles.keys().cloned().collect(), markers: scan.protected.into_iter().collect() }
    }
}

pub fn mixed_formats_error(url: &RemoteUrl, refs: &RefsDir) -> StorageError {
    let some: Vec<&str> = refs.bundle_refs.iter().take(3).map(String::as_str).collect();
    StorageError::Format(format!(
        "{url} holds both formats: a packs manifest ({}) and git-remote-s3 bundles (for {}); refusing to guess which is current. \
Keep one: delete the bundles under {}/refs/ or the {}/{}/ directory",
        manifest::manifest_key(url),
        some.join(", "),
        url.prefix,
        url.prefix,
        manifest::META_DIR
    ))
}

/// What a prefix is, decided by what is in it.
#[allow(clippy::large_enum_variant)] // made once per session
pub enum Detected {
    /// A manifest (with its ETag), and the `refs/` scan when one was made.
    Packs(Option<(Manifest, String)>, Option<RefsDir>),
    /// The `<prefix>/refs/` listing, for the first `list`.
    Bundles(Vec<ObjectInfo>),
}

/// Detects the format of `url`'s prefix: a manifest means packs, bundles
/// mean bundles (both: refused), an empty prefix gets `default` (the
/// caller's `s3.format`, only awaited for an empty prefix).
///
/// The manifest read and the `refs/` listing run together, so detection is
/// one round trip. When this daemon holds the prefix's manifest and found
/// `refs/` free of bundles less than a minute ago, only the manifest is read
/// (a conditional GET: a no-op fetch is one small request); the `refs/`
/// scan then waits for a push, which needs it before its manifest write
/// (bundles of another tool: refused; `PROTECTED#` markers).
pub async fn detect(
    store: &S3Store,
    url: &RemoteUrl,
    default: impl std::future::Future<Output = Result<Format, StorageError>>,
) -> Result<Detected, StorageError> {
    let (manifest, listing) = if recently_scanned_packs(store, url) {
        match read_manifest(store, url).await? {
            Some(m) => return Ok(Detected::Packs(Some(m), None)),
            None => (None, list_refs_dir(store, url).await?),
        }
    } else {
        let (m, l) = tokio::join!(read_manifest(store, url), list_refs_dir(store, url));
        (m?, l?)
    };
    let refs = RefsDir::from_objects(url, &listing);
    note_refs_scan(store, url, &refs);
    match manifest {
        Some(m) => {
            if !refs.bundle_refs.is_empty() {
                return Err(mixed_formats_error(url, &refs));
            }
            Ok(Detected::Packs(Some(m), Some(refs)))
        }
        None if !refs.bundle_refs.is_empty() => Ok(Detected::Bundles(listing)),
        None => match default.await? {
            Format::Bundles => Ok(Detected::Bundles(listing)),
            Format::Packs => Ok(Detected::Packs(None, Some(refs))),
        },
    }
}

pub struct PackStorage {
    store: S3Store,
    url: RemoteUrl,
    /// The manifest (and ETag) read at detection, served to the first `list`.
    seed: Mutex<Option<Option<(Manifest, String)>>>,
    /// The manifest the last `list` showed and its ETag (None: no manifest
    /// yet): what `fetch` downloads from and a push's first attempt starts from.
    listed: Mutex<Option<(Manifest, Option<String>)>>,
    /// The `refs/` scan made at detection, if one was: a push's first
    /// attempt uses it instead of listing again.
    refs: Mutex<Option<RefsDir>>,
}

/// A pack built for a push.
struct BuiltPack {
    _dir: tempfile::TempDir,
    name: String,
    pack: PathBuf,
    idx: PathBuf,
    size: u64,
    idx_size: u64,
    objects: u64,
    /// The tips it was built for.
    tips: Vec<String>,
    /// Packs of the manifest the pack was built against.
    based_on: BTreeSet<String>,
    uploaded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Unchanged,
    Set(String),
    Delete,
}

impl PackStorage {
    pub fn new(store: S3Store, url: RemoteUrl, seed: Option<(Manifest, String)>, refs: Option<RefsDir>) -> PackStorage {
        PackStorage {
            store,
            url,
            seed: Mutex::new(Some(seed)),
            listed: Mutex::new(None),
            refs: Mutex::new(refs),
        }
    }

    /// The `PROTECTED#` markers, when `refs/` has been scanned.
    fn markers(&self) -> BTreeSet<String> {
        self.refs.lock().ok().and_then(|r| r.as_ref().map(|r| r.markers.clone())).unwrap_or_default()
    }

    /// The `refs/` scan: detection's the first time, else a fresh LIST.
    async fn scan_refs(&self, fresh: bool) -> Result<RefsDir, StorageError> {
        let known = if fresh { None } else { self.refs.lock().ok().and_then(|mut r| r.take()) };
        match known {
            Some(r) => Ok(r),
            None => scan_refs_dir(&self.store, &self.url).await,
        }
    }

    /// The manifest and its ETag: the one read at detection the first time,
    /// then a fresh read.
    async fn current_manifest(&self) -> Result<Option<(Manifest, String)>, StorageError> {
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
    fn take_listed(&self) -> Option<(Manifest, Option<String>)> {
        self.listed.lock().ok().and_then(|mut l| l.take())
    }

    /// The verdict on each update against `m`.
    async fn plan(
        &self,
        ctx: &OpContext,
        m: &Manifest,
        markers: &BTreeSet<String>,
        updates: &[PushUpdate],
        local: &[Option<String>],
        present: &HashSet<String>,
    ) -> Vec<Result<Change, String>> {
        let checks = updates.iter().zip(local).map(|(upd, sha)| self.plan_one(ctx, m, markers, upd, sha.as_deref(), present));
        futures::future::join_all(checks).await
    }

    async fn plan_one(
        &self,
        ctx: &OpContext,
        m: &Manifest,
        markers: &BTreeSet<String>,
        upd: &PushUpdate,
        sha: Option<&str>,
        present: &HashSet<String>,
    ) -> Result<Change, String> {
        let dst = &upd.dst;
        if !dst.starts_with("refs/") {
            return Err(format!("invalid destination ref {dst}"));
        }
        let remote_sha = m.refs.get(dst).map(String::as_str);
        if let Some(expected) = ctx.cas.get(dst) {
            if remote_sha.unwrap_or("") != expected.as_str() {
                return Err("stale info".into());
            }
        }
        let protected = m.protected.contains(dst) || markers.contains(dst);
        let Some(src) = &upd.src else {
            if protected {
                return Err(format!("{dst} is protected: deletion refused (git s3 unprotect to allow it)"));
            }
            return Ok(if remote_sha.is_some() { Change::Delete } else { Change::Unchanged });
        };
        let Some(sha) = sha else {
            return Err(format!("{src} not found in the local repository"));
        };
        if remote_sha == Some(sha) {
            return Ok(Change::Unchanged);
        }
        if let Some(old) = remote_sha {
            if !upd.force || protected {
                if !present.contains(old) {
                    return Err("fetch first".into());
                }
                if dst.starts_with("refs/tags/") {
                    return Err("already exists".into());
                }
                if !ctx.git.is_ancestor(old, sha).await {
                    return Err(if upd.force && protected {
                        format!("{dst} is protected: force push refused (git s3 unprotect to allow it)")
                    } else {
                        "non-fast-forward".into()
                    });
                }
            }
        }
        Ok(Change::Set(sha.to_string()))
    }

    /// `git pack-objects` of `tips --not exclude` into a temp dir; None when
    /// the remote already has every object.
    async fn build_pack(
        &self,
        ctx: &OpContext,
        tips: &[String],
        exclude: &[String],
        based_on: BTreeSet<String>,
    ) -> Result<Option<BuiltPack>, StorageError> {
        // From a shallow clone, a pack is complete only when the remote has
        // the history behind the clone's boundary.
        if let Some(c) = ctx.git.shallow_boundary_between(tips, exclude).await?.first() {
            return Err(StorageError::Format(format!(
                "this shallow clone lacks the history behind commit {c}, which the remote does not have either: run `git fetch --unshallow`, then push again"
            )));
        }
        let dir = tempfile::Builder::new().prefix("packs-").tempdir_in(ctx.cache.root().join("tmp"))?;
        let base = dir.path().join("pack");
        let base_s = base.to_string_lossy().to_string();
        let mut input = String::new();
        for t in tips {
            input.push_str(t);
            input.push('\n');
        }
        for x in exclude {
            input.push('^');
            input.push_str(x);
            input.push('\n');
        }
        // Non-thin (no --thin): every delta base is in the pack, so it indexes
        // alone. A temporary file on its way to S3: no fsync, no .rev file.
        let args = [&SCRATCH_PACK_CONFIG[..], &["pack-objects", "--revs", "--quiet", "--delta-base-offset", base_s.as_str()]].concat();
        let out = run_with_stdin(&ctx.git, &args, input.into_bytes()).await?;
        let name = out.trim().to_string();
        if !manifest::is_pack_name(&name) {
            return Err(StorageError::Corrupt(format!("git pack-objects printed an unexpected pack name {name:?}")));
        }
        let pack = dir.path().join(format!("pack-{name}.pack"));
        let idx = dir.path().join(format!("pack-{name}.idx"));
        let objects = pack_object_count(&pack).await?;
        if objects == 0 {
            return Ok(None);
        }
        let size = tokio::fs::metadata(&pack).await?.len();
        let idx_size = tokio::fs::metadata(&idx).await?.len();
        Ok(Some(BuiltPack { _dir: dir, name, pack, idx, size, idx_size, objects, tips: tips.to_vec(), based_on, uploaded: false }))
    }

    /// Uploads the `.pack` (the `.idx` follows the manifest write: see
    /// `upload_idx_in_background`).
    async fn upload_pack(&self, ctx: &OpContext, p: &BuiltPack) -> Result<(), StorageError> {
        let progress = Mutex::new(Progress::new(ctx.out.clone(), ctx.progress, format!("Uploading pack ({} objects)", p.objects), Some(p.size)));
        let on = |n: u64| {
            if let Ok(mut pr) = progress.lock() {
                pr.add(n)
            }
        };
        let pack_key = manifest::pack_key(&self.url, &p.name);
        self.store.put_file(&pack_key, &p.pack, PutOptions::default(), on).await?;
        if let Ok(mut pr) = progress.lock() {
            pr.finish();
        }
        Ok(())
    }

    /// The `.idx` of a pack the manifest now names, uploaded after git has
    /// its answer. Nothing reads it on the way to git (fetch, gc and migrate
    /// index the `.pack` themselves), so it is off the push's critical path;
    /// the daemon finishes it before exiting, and `git s3 doctor` restores
    /// an `.idx` that a killed daemon never wrote.
    fn upload_idx_in_background(&self, ctx: &OpContext, b: BuiltPack) {
        let (store, key) = (self.store.clone(), manifest::idx_key(&self.url, &b.name));
        let delay = ctx.env.get(IDX_DELAY_HOOK_ENV).and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis);
        crate::session::background::spawn("upload_idx", async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            match store.put_file(&key, &b.idx, PutOptions::default(), |_| {}).await {
                Ok(_) => tracing::debug!(key, "idx uploaded"),
                Err(e) => tracing::warn!(key, error = %e, "idx not uploaded (`git s3 doctor` restores it)"),
            }
            drop(b);
        });
    }

    async fn push_all(&self, ctx: &OpContext, updates: &[PushUpdate]) -> Result<Vec<(String, PushResult)>, StorageError> {
        let srcs: Vec<&str> = updates.iter().filter_map(|u| u.src.as_deref()).collect();
        let mut built: Option<BuiltPack> = None;
        // PROTECTED# markers: those of detection's refs/ scan if it made one.
        let mut markers = self.markers();
        for attempt in 0..MAX_ATTEMPTS {
            let first = if attempt == 0 { self.take_listed() } else { None };
            let (m, etag) = match first {
                Some(listed) => listed,
                None => {
                    if attempt > 0 {
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                    match read_manifest(&self.store, &self.url).await? {
                        Some((m, e)) => (m, Some(e)),
                        None => (Manifest::default(), None),
                    }
                }
            };
            if let Some(msg) = m.frozen_error(&self.url) {
                return Ok(updates.iter().map(|u| (u.dst.clone(), Err(msg.clone()))).collect());
            }
            // One object lookup: the local side of each update, and which of
            // the remote's tips the repository has (what a pack can leave
            // out, and which old tips a fast-forward check can see).
            let remote_tips: Vec<String> = m.refs.values().cloned().collect::<BTreeSet<_>>().into_iter().collect();
            let lookups: Vec<&str> = srcs.iter().copied().chain(remote_tips.iter().map(String::as_str)).collect();
            let packs_now: BTreeSet<String> = m.packs.iter().map(|p| p.name.clone()).collect();
            // A pack built against packs that are gone (compacted) may lack
            // objects: rebuild it.
            let reusable = |b: &BuiltPack, tips: &[String]| b.based_on.is_subset(&packs_now) && b.tips == tips;
            let prior = built.take();
            let guess = markers.clone();
            // The local work: one object lookup (the local side of each
            // update, and which of the remote's tips the repository has: what
            // a pack can leave out, which old tips a fast-forward check can
            // see), then the checks of every update while the pack of every
            // tip that would change is built.
            let local_work = async {
                let mut found = resolve_objects(&ctx.git, &lookups).await?.into_iter();
                let local: Vec<Option<String>> = updates.iter().map(|u| if u.src.is_some() { found.next().flatten() } else { None }).collect();
                let present: HashSet<String> = found.flatten().collect();
                let exclude: Vec<String> = remote_tips.iter().filter(|t| present.contains(*t)).cloned().collect();
                let candidates: Vec<String> = updates
                    .iter()
                    .zip(&local)
                    .filter_map(|(u, sha)| sha.as_ref().filter(|s| m.refs.get(&u.dst) != Some(*s)).cloned())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let speculate = !candidates.is_empty() && !prior.as_ref().is_some_and(|b| reusable(b, &candidates));
                let (verdicts, speculative) = tokio::join!(self.plan(ctx, &m, &guess, updates, &local, &present), async {
                    if speculate {
                        self.build_pack(ctx, &candidates, &exclude, packs_now.clone()).await.map(Some)
                    } else {
                        Ok(None)
                    }
                });
                let built = match speculative? {
                    Some(b) => b,
                    None => prior,
                };
                Ok::<_, StorageError>((local, present, exclude, verdicts, built))
            };
            // Beside it, the refs/ scan: bundles of another tool in the
            // prefix are refused before anything is written, and PROTECTED#
            // markers count like the manifest's protection.
            let (refs, work) = tokio::join!(self.scan_refs(attempt > 0), local_work);
            let refs = refs?;
            if !refs.bundle_refs.is_empty() {
                return Err(mixed_formats_error(&self.url, &refs));
            }
            let (local, present, exclude, mut verdicts, b) = work?;
            built = b;
            if refs.markers != markers {
                // Markers the checks did not know: check again with them.
                markers = refs.markers;
                verdicts = self.plan(ctx, &m, &markers, updates, &local, &present).await;
            }
            if ctx.atomic && verdicts.iter().any(|v| v.is_err()) {
                for v in verdicts.iter_mut() {
                    if v.is_ok() {
                        *v = Err("atomic push failed".into());
                    }
                }
            }
            let results = |verdicts: &[Result<Change, String>]| -> Vec<(String, PushResult)> {
                updates.iter().zip(verdicts).map(|(u, v)| (u.dst.clone(), v.as_ref().map(|_| ()).map_err(Clone::clone))).collect()
            };
            let changes: Vec<(&str, &Change)> = updates
                .iter()
                .zip(&verdicts)
                .filter_map(|(u, v)| match v {
                    Ok(c) if *c != Change::Unchanged => Some((u.dst.as_str(), c)),
                    _ => None,
                })
                .collect();
            if changes.is_empty() {
                return Ok(results(&verdicts));
            }
            let new_tips: Vec<String> = changes
                .iter()
                .filter_map(|(_, c)| if let Change::Set(s) = c { Some(s.clone()) } else { None })
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            // Some updates were refused: the pack holds only the accepted tips.
            if !new_tips.is_empty() && !built.as_ref().is_some_and(|b| reusable(b, &new_tips)) {
                built = self.build_pack(ctx, &new_tips, &exclude, packs_now.clone()).await?;
            }
            let pack = built.as_mut().filter(|_| !new_tips.is_empty());
            if let Some(b) = pack {
                if !b.uploaded {
                    self.upload_pack(ctx, b).await?;
                    b.uploaded = true;
                }
            }
            if ctx.env.get(CRASH_HOOK_ENV).map(String::as_str) == Some("1") {
                tracing::error!("{CRASH_HOOK_ENV}=1: exiting before the manifest write");
                std::process::exit(70);
            }

            let mut next = m.clone();
            next.serial += 1;
            for (dst, c) in &changes {
                match c {
                    Change::Set(sha) => {
                        next.refs.insert(dst.to_string(), sha.clone());
                    }
                    Change::Delete => {
                        next.refs.remove(*dst);
                    }
                    Change::Unchanged => {}
                }
            }
            if next.head.is_none() {
                if let Some((dst, _)) = changes.iter().find(|(d, c)| d.starts_with("refs/heads/") && matches!(c, Change::Set(_))) {
                    next.head = Some(dst.to_string());
                }
            }
            if let Some(b) = built.as_ref().filter(|_| !new_tips.is_empty()) {
                if !packs_now.contains(&b.name) {
                    next.packs.push(PackEntry {
                        name: b.name.clone(),
                        size: b.size,
                        idx_size: b.idx_size,
                        objects: b.objects,
                        tips: b.tips.clone(),
                        created: unix_now(),
                    });
                }
            }
            let condition = match etag {
                Some(e) => WriteCondition::IfMatch(e),
                None => WriteCondition::IfAbsent,
            };
            let key = manifest::manifest_key(&self.url);
            match self.store.put_bytes(&key, next.to_bytes(), PutOptions { condition, ..Default::default() }).await {
                Ok(_) => {
                    tracing::info!(serial = next.serial, refs = changes.len(), attempt, "manifest updated");
                    if let Some(b) = built.take().filter(|b| b.uploaded && !new_tips.is_empty() && !packs_now.contains(&b.name)) {
                        self.upload_idx_in_background(ctx, b);
                    }
                    self.maybe_gc_in_background(ctx, &next.packs);
                    let mut results = results(&verdicts);
                    self.write_zips(ctx, next.serial, &changes, &mut results).await;
                    return Ok(results);
                }
                Err(e) if e.is_precondition_failed() || e.is_not_found() => {
                    tracing::info!(attempt, "manifest changed concurrently; re-reading");
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(updates.iter().map(|u| (u.dst.clone(), Err("fetch first".to_string()))).collect())
    }

    /// `s3+zip://`: after the manifest names the new tips, writes each
    /// updated ref's `<prefix>/<ref>/repo.zip` (0.4.2's key and metadata)
    /// and removes a deleted ref's (with any scheme: a zip left by an
    /// earlier s3+zip push must not outlive its ref). A failure is reported
    /// on that ref: the ref itself is pushed.
    ///
    /// Without a lock, two pushes of one branch could write their zips in
    /// the other order: each zip carries the serial of the manifest write
    /// that made its commit current (`git-s3-serial` metadata), and is
    /// written only over a zip with a lower serial, by a conditional write
    /// on that zip's ETag.
    async fn write_zips(&self, ctx: &OpContext, serial: u64, changes: &[(&str, &Change)], results: &mut [(String, PushResult)]) {
        let zip = self.url.scheme == crate::s3::url::Scheme::S3Zip;
        for (dst, c) in changes {
            let outcome = match c {
                Change::Set(sha) if zip => self.write_zip(ctx, serial, dst, sha).await,
                Change::Delete => self.delete_zip(serial, dst).await,
                _ => Ok(()),
            };
            if let Err(e) = outcome {
                tracing::warn!(dst, error = %e, "repo.zip not written");
                if let Some(r) = results.iter_mut().find(|r| r.0 == *dst) {
                    r.1 = Err(format!("pushed, but its repo.zip could not be written ({e}); push a new commit to write it"));
                }
            }
        }
    }

    /// The zip's ETag and the serial it was written for (0 for a zip of
    /// 0.4.2 or of the bundles format), or None when there is none.
    async fn zip_state(&self, key: &str) -> Result<Option<(String, u64)>, StorageError> {
        Ok(self.store.head_with_metadata(key).await?.map(|(info, meta)| {
            let serial = meta.get(ZIP_SERIAL_META).and_then(|v| v.parse().ok()).unwrap_or(0);
            (info.etag, serial)
        }))
    }

    async fn write_zip(&self, ctx: &OpContext, serial: u64, dst: &str, sha: &str) -> Result<(), StorageError> {
        let (file, summary) = bundle_format::build_zip(ctx, sha).await?;
        let key = bundle_format::zip_key(&self.url, dst);
        for _ in 0..MAX_ATTEMPTS {
            let condition = match self.zip_state(&key).await? {
                Some((_, theirs)) if theirs > serial => {
                    tracing::debug!(dst, serial, theirs, "a later push wrote repo.zip; leaving it");
                    return Ok(());
                }
                Some((etag, _)) => WriteCondition::IfMatch(etag),
                None => WriteCondition::IfAbsent,
            };
            let mut opts = bundle_format::zip_put_options(sha, summary.clone(), vec![(ZIP_SERIAL_META.into(), serial.to_string())]);
            opts.condition = condition;
            match self.store.put_file(&key, file.path(), opts, |_| {}).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_precondition_failed() || e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StorageError::Format(format!("{key} kept changing while it was written")))
    }

    async fn delete_zip(&self, serial: u64, dst: &str) -> Result<(), StorageError> {
        let key = bundle_format::zip_key(&self.url, dst);
        match self.zip_state(&key).await? {
            Some((_, theirs)) if theirs > serial => Ok(()), // the ref was pushed again since
            Some(_) => Ok(self.store.delete(&key).await?),
            None => Ok(()),
        }
    }

    /// When packs pile up (`GIT_S3_GC_AUTO_PACKS`, default 16; 0 disables)
    /// and the geometric rollup has at least two small packs to combine,
    /// runs a geometric gc in the background after the push has answered,
    /// with the default grace period, so concurrent readers never miss a
    /// pack. Only the rolled-up packs are downloaded: the cost grows with
    /// what was pushed since, not with the repository.
    fn maybe_gc_in_background(&self, ctx: &OpContext, packs: &[PackEntry]) {
        let limit = ctx.env.get("GIT_S3_GC_AUTO_PACKS").and_then(|v| v.parse::<usize>().ok()).unwrap_or(16);
        if limit == 0 || packs.len() < limit {
            return;
        }
        let rollup = crate::storage::packs::gc::geometric_rollup(packs);
        if rollup.combine.is_empty() {
            tracing::debug!(packs = packs.len(), limit, "packs form a geometric progression; no background gc");
            return;
        }
        let (store, url, env) = (self.store.clone(), self.url.clone(), ctx.env.clone());
        let tmp = ctx.cache.root().join("tmp");
        tracing::info!(packs = packs.len(), limit, combine = rollup.combine.len(), "packs piled up; compacting in the background");
        tokio::spawn(
            async move {
                let grace = Duration::from_secs(crate::storage::packs::gc::DEFAULT_GRACE_SECONDS);
                let mode = crate::storage::packs::gc::GcMode::Geometric;
                match crate::storage::packs::gc::gc(&store, &url, &tmp, &env, grace, mode, false).await {
                    Ok(r) => tracing::info!(
                        remote = %url,
                        before = r.packs_before,
                        combined = r.combined_packs,
                        kept = r.kept,
                        raced = r.raced,
                        "background gc done"
                    ),
                    Err(e) => tracing::warn!(remote = %url, error = %e, "background gc failed"),
                }
            }
            .instrument(tracing::info_span!("background_gc")),
        );
    }

    /// Brings pack `p` into the repository: linked from the local cache when
    /// another working copy fetched it already (packs are content-addressed
    /// by name), else downloaded and indexed as it arrives, then cached.
    ///
    /// `needed` decides whether the repository wants the pack; the download
    /// starts before it answers and is dropped (cancelled) if it says no, so
    /// a fetch's object lookup and its download overlap. Returns whether the
    /// pack was brought in.
    pub(crate) async fn fetch_pack(
        &self,
        ctx: &OpContext,
        p: &PackEntry,
        pack_dir: &Path,
        needed: impl std::future::Future<Output = bool>,
    ) -> Result<bool, StorageError> {
        tokio::pin!(needed);
        if let Some(cached) = ctx.cache.lookup_pack(&p.name) {
            if !(&mut needed).await {
                return Ok(false);
            }
            if cached.link_into(pack_dir).is_ok() && pack_dir.join(format!("pack-{}.idx", p.name)).exists() {
                tracing::debug!(pack = p.name, "linked a cached pack");
                return Ok(true);
            }
            ctx.cache.evict_pack(&p.name);
        }
        let tmp = ctx.cache.temp_file()?;
        let key = manifest::pack_key(&self.url, &p.name);
        let progress = Mutex::new(Progress::new(
            ctx.out.clone(),
            ctx.progress,
            format!("Downloading pack {}", &p.name[..12.min(p.name.len())]),
            Some(p.size),
        ));
        let on = |n: u64| {
            if let Ok(mut pr) = progress.lock() {
                pr.add(n)
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let download = self.store.get_to_file_tee(&key, tmp.path(), Some(tx), on);
        tokio::pin!(download);
        // The download runs (into the file, and up to 16 chunks ahead of
        // index-pack) while the decision is pending.
        let mut finished_early = None;
        let wanted = tokio::select! {
            biased;
            n = &mut needed => n,
            r = &mut download => {
                finished_early = Some(r);
                (&mut needed).await
            }
        };
        if !wanted {
            tracing::debug!(pack = p.name, "not needed after all; download dropped");
            return Ok(false);
        }
        let index = ctx.git.index_pack_stream(rx);
        let (downloaded, indexed) = match finished_early {
            Some(r) => (r, index.await),
            None => tokio::join!(download, index),
        };
        match downloaded {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                return Err(StorageError::Corrupt(format!(
                    "the manifest names pack {} but s3://{}/{key} is missing (the remote changed while fetching? fetch again)",
                    p.name,
                    self.store.bucket()
                )))
            }
            Err(e) => return Err(e.into()),
        }
        if let Ok(mut pr) = progress.lock() {
            pr.finish();
        }
        let hash = indexed.map_err(|e| {
            StorageError::Corrupt(format!("pack {} from s3://{}/{key} does not index: {e}", p.name, self.store.bucket()))
        })?;
        if let Err(e) = ctx.cache.insert_pack(&p.name, pack_dir, &hash) {
            tracing::debug!(error = %e, "pack not cached");
        }
        Ok(true)
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Randomized, growing pause between manifest attempts.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let seed = (nanos as u64 ^ (std::process::id() as u64).wrapping_mul(0x9E37_79B9)).wrapping_mul(6364136223846793005);
    let base = 40u64 * u64::from(attempt.min(6));
    Duration::from_millis(base + (seed >> 33) % (base + 60))
}

/// The object count in a pack's header (`PACK`, version, count).
pub(crate) async fn pack_object_count(path: &Path) -> Result<u64, StorageError> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut hdr = [0u8; 12];
    f.read_exact(&mut hdr).await?;
    if &hdr[..4] != b"PACK" {
        return Err(StorageError::Corrupt(format!("{} is not a git pack", path.display())));
    }
    Ok(u64::from(u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]])))
}

/// Runs git with `input` on stdin; returns its stdout.
pub(crate) async fn run_with_stdin(git: &Git, args: &[&str], input: Vec<u8>) -> Result<String, GitError> {
    let span = tracing::debug_span!("git", args = %args.join(" "), stdin_bytes = input.len());
    run_with_stdin_inner(git, args, input).instrument(span).await
}

async fn run_with_stdin_inner(git: &Git, args: &[&str], input: Vec<u8>) -> Result<String, GitError> {
    let mut cmd = git.command(args);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(GitError::Spawn)?;
    let stdin = child.stdin.take();
    let writer = tokio::spawn(async move {
        if let Some(mut s) = stdin {
            let _ = s.write_all(&input).await;
            let _ = s.shutdown().await;
        }
    });
    let out = child.wait_with_output().await.map_err(GitError::Spawn)?;
    let _ = writer.await;
    if !out.status.success() {
        return Err(GitError::Failed { args: args.join(" "), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What each of `names` (object names or refs) names in the repository, in
/// order; None for a missing or ambiguous one (one `git cat-file --batch-check`).
pub async fn resolve_objects(git: &Git, names: &[&str]) -> Result<Vec<Option<String>>, GitError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let input = names.iter().map(|s| format!("{s}\n")).collect::<String>().into_bytes();
    let out = run_with_stdin(git, &["cat-file", "--batch-check=%(objectname)"], input).await?;
    let lines: Vec<&str> = out.lines().collect();
    if lines.len() != names.len() {
        return Err(GitError::Failed {
            args: "cat-file --batch-check".into(),
            stderr: format!("{} answers for {} names", lines.len(), names.len()),
        });
    }
    Ok(lines
        .into_iter()
        .map(|l| Some(l.trim().to_string()).filter(|l| crate::storage::packs::manifest::is_pack_name(l)))
        .collect())
}

/// Whether a repository holding `present` lacks the objects of a pack made
/// for `tips` (a pack made for no tips in particular: always).
fn pack_lacking(present: &HashSet<String>, tips: &[String]) -> bool {
    tips.is_empty() || !tips.iter().all(|t| present.contains(t))
}

/// Every name in `names`, as a set ("present": what makes a gated early
/// download stop).
fn all_of(names: &[String]) -> HashSet<String> {
    names.iter().cloned().collect()
}

/// Which of `shas` the repository has (one `git cat-file --batch-check`).
pub async fn present_objects(git: &Git, shas: &[String]) -> Result<HashSet<String>, GitError> {
    let names: Vec<&str> = shas.iter().map(String::as_str).collect();
    Ok(resolve_objects(git, &names).await?.into_iter().flatten().collect())
}

/// `git index-pack --stdin` from a file (streamed; verifies every object).
/// Returns the name the pack got in `objects/pack` (what index-pack prints
/// after `pack\t`).
pub(crate) async fn index_pack(git: &Git, pack: &Path) -> Result<String, GitError> {
    let file = std::fs::File::open(pack).map_err(GitError::Spawn)?;
    let mut cmd = git.command(&["index-pack", "--stdin"]);
    cmd.stdin(Stdio::from(file)).stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = cmd.output().await.map_err(GitError::Spawn)?;
    if !out.status.success() {
        return Err(GitError::Failed { args: "index-pack --stdin".into(), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let name = stdout.trim().rsplit('\t').next().unwrap_or_default().to_string();
    if !manifest::is_pack_name(&name) {
        return Err(GitError::Failed { args: "index-pack --stdin".into(), stderr: format!("unexpected output {:?}", stdout.trim()) });
    }
    Ok(name)
}


impl RepoStorage for PackStorage {
    async fn list(&self) -> Result<RefListing, StorageError> {
        let (m, etag) = match self.current_manifest().await? {
            Some((m, e)) => (m, Some(e)),
            None => (Manifest::default(), None),
        };
        let mut listing = RefListing::default();
        for (name, sha) in &m.refs {
            listing.refs.push(RemoteRef { name: name.clone(), sha: sha.clone() });
        }
        listing.head = m.live_head().cloned();
        listing.head_raw = m.head.clone();
        listing.protected = m.protected.iter().cloned().chain(self.markers()).collect();
        if let Ok(mut l) = self.listed.lock() {
            *l = Some((m, etag));
        }
        Ok(listing)
    }

    async fn fetch(&self, ctx: &OpContext, _listing: &RefListing, wants: &[RemoteRef]) -> Result<(), StorageError> {
        let want_shas: Vec<String> = wants.iter().map(|w| w.sha.clone()).collect();
        let listed = self.listed.lock().ok().and_then(|l| l.as_ref().map(|l| l.0.clone()));
        let m = match listed {
            Some(m) => m,
            None => read_manifest(&self.store, &self.url).await?.map(|(m, _)| m).unwrap_or_default(),
        };
        let pack_dir = ctx.git.pack_dir().await?;
        // Packs not in objects/pack yet; the repository may still hold their
        // objects (its own pushes, another pack): one object lookup of their
        // tips and the wanted tips says which it lacks.
        let candidates: Vec<&PackEntry> = m.packs.iter().filter(|p| !pack_dir.join(format!("pack-{}.idx", p.name)).exists()).collect();
        let names: Vec<String> =
            candidates.iter().flat_map(|p| p.tips.iter().cloned()).chain(want_shas.iter().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
        // The packs made for a wanted tip (what a fetch of new commits
        // needs) start downloading while the lookup runs.
        let (decided_tx, decided_rx) = tokio::sync::watch::channel::<Option<Arc<HashSet<String>>>>(None);
        let early: Vec<PackEntry> = candidates.iter().filter(|p| p.tips.iter().any(|t| want_shas.contains(t))).map(|p| (*p).clone()).collect();
        let started = std::time::SystemTime::now();
        let dir = &pack_dir;
        let early_fetches: Vec<_> = early
            .iter()
            .cloned()
            .map(|p| {
                let mut rx = decided_rx.clone();
                async move {
                    let tips = p.tips.clone();
                    let needed = async move {
                        match rx.wait_for(Option::is_some).await {
                            Ok(present) => present.as_ref().is_some_and(|present| pack_lacking(present, &tips)),
                            Err(_) => false,
                        }
                    };
                    self.fetch_pack(ctx, &p, dir, needed).await.map(|_| ())
                }
            })
            .collect();
        let lookup = async {
            let found = present_objects(&ctx.git, &names).await;
            // On a failed lookup the early downloads stop (decided: none needed).
            let present = Arc::new(found.as_ref().cloned().unwrap_or_default());
            let _ = decided_tx.send(Some(if found.is_ok() { present.clone() } else { Arc::new(all_of(&names)) }));
            found.map(|_| present)
        };
        let (present, early_done) =
            tokio::join!(lookup, futures::stream::iter(early_fetches).buffer_unordered(DOWNLOAD_CONCURRENCY).try_collect::<Vec<()>>());
        let present = match (present, &early_done) {
            (Ok(p), Ok(_)) => p,
            (Err(e), _) => {
                crate::local::git::remove_temp_packs_since(&pack_dir, started);
                return Err(e.into());
            }
            (Ok(_), Err(_)) => {
                // index-pack leaves its temp file behind when its input breaks off.
                crate::local::git::remove_temp_packs_since(&pack_dir, started);
                return early_done.map(|_| ());
            }
        };
        if want_shas.iter().all(|s| present.contains(s)) {
            return Ok(());
        }
        let early_names: HashSet<&str> = early.iter().map(|p| p.name.as_str()).collect();
        let rest: Vec<PackEntry> =
            candidates.iter().filter(|p| !early_names.contains(p.name.as_str()) && pack_lacking(&present, &p.tips)).map(|p| (*p).clone()).collect();
        tracing::debug!(early = early.len(), rest = rest.len(), total = m.packs.len(), "packs to download");
        let fetches: Vec<_> =
            rest.iter().cloned().map(|p| async move { self.fetch_pack(ctx, &p, dir, std::future::ready(true)).await.map(|_| ()) }).collect();
        let fetched = futures::stream::iter(fetches).buffer_unordered(DOWNLOAD_CONCURRENCY).try_collect::<Vec<()>>().await;
        if fetched.is_err() {
            crate::local::git::remove_temp_packs_since(&pack_dir, started);
        }
        fetched?;
        // A wanted tip that a downloaded pack was made for is in it; only
        // other wants need a look.
        let downloaded_tips: HashSet<&String> =
            early.iter().chain(rest.iter()).filter(|p| pack_lacking(&present, &p.tips)).flat_map(|p| p.tips.iter()).collect();
        let unsure: Vec<String> = want_shas.iter().filter(|s| !present.contains(*s) && !downloaded_tips.contains(s)).cloned().collect();
        if unsure.is_empty() {
            return Ok(());
        }
        let have = present_objects(&ctx.git, &unsure).await?;
        if let Some(w) = wants.iter().find(|w| unsure.contains(&w.sha) && !have.contains(&w.sha)) {
            return Err(StorageError::MissingRef(w.name.clone()));
        }
        Ok(())
    }

    async fn push(&self, ctx: &OpContext, updates: &[PushUpdate]) -> Result<Vec<(String, PushResult)>, StorageError> {
        self.push_all(ctx, updates).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names() {
        assert_eq!(Format::parse("packs"), Some(Format::Packs));
        assert_eq!(Format::parse(" Bundles\n"), Some(Format::Bundles));
        assert_eq!(Format::parse("zip"), None);
        assert_eq!(Format::Packs.name(), "packs");
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        for a in 1..MAX_ATTEMPTS {
            let d = backoff(a);
            assert!(d >= Duration::from_millis(40 * u64::from(a.min(6))));
            assert!(d < Duration::from_millis(40 * 6 * 2 + 60 + 1));
        }
    }
}
