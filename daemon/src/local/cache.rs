//! The local content-addressed cache, shared by every working copy of the
//! user and by concurrent sessions:
//! - `bundles/<sha>.bundle`: bundles by the tip they hold;
//! - `packs/<sha>/pack-<hash>.{pack,idx,rev}`: the same bundle's objects,
//!   already indexed by git, so a repeat clone links them in instead of
//!   indexing again;
//! - `lfs/<oid>`: Git LFS objects (callers verify the SHA-256 before use);
//! - `mirrors/<id>.git`: bare mirrors of remotes (see `storage::mirror`), for
//!   shallow, filtered and lazy fetches.
//!
//! Entries are built in `tmp/` and renamed into place, so a reader never
//! sees a partial entry; an entry that fails verification is evicted and
//! fetched again. One size cap (`GIT_S3_CACHE_MAX_BYTES`, default 4 GiB)
//! covers all areas, evicting least-recently-used entries first.
//!
//! Sizes come from an index in memory, built by one walk when the daemon
//! starts and kept as entries come and go (an insert measures only its own
//! entry). A file is counted once however many entries hold it: a mirror's
//! packs and the `packs/` entries are hard links to the same inodes, so the
//! total is what `du` says. A session holds a [`Pinned`] while it reads an
//! entry or works in a mirror; eviction never removes a pinned entry. When
//! an insert takes the total past the cap, eviction runs on a blocking
//! thread, off the async workers; an evicted entry is first renamed into
//! `tmp/`, so no reader sees half of it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use super::files::link_or_copy;

pub(crate) const DEFAULT_MAX_BYTES: u64 = 4 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Area {
    Bundles,
    Packs,
    Lfs,
    Mirrors,
}

impl Area {
    const ALL: [Area; 4] = [Area::Bundles, Area::Packs, Area::Lfs, Area::Mirrors];

    fn dir(self) -> &'static str {
        match self {
            Area::Bundles => "bundles",
            Area::Packs => "packs",
            Area::Lfs => "lfs",
            Area::Mirrors => "mirrors",
        }
    }
}

pub(crate) struct Cache {
    inner: Arc<Inner>,
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
}

struct Inner {
    root: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    /// A [`Inner::settle`] is queued (one waiting is enough).
    queued: AtomicBool,
    /// One settle at a time: a caller that waits for it sees the result.
    settling: Mutex<()>,
}

/// A file, by (device, inode): hard links are one file.
type FileId = (u64, u64);

#[derive(Default)]
struct Index {
    entries: HashMap<PathBuf, Entry>,
    /// Every file some entry holds: its bytes and how many entries hold it.
    files: HashMap<FileId, (u64, u32)>,
    /// The bytes of `files`, each counted once.
    total: u64,
}

struct Entry {
    files: Vec<FileId>,
    used: SystemTime,
    pins: usize,
    /// Changed since it was measured (a mirror a session worked in).
    dirty: bool,
}

impl Index {
    /// Sets what entry `path` holds (measured by [`measure`]), keeping the
    /// total; its pins and last use stay.
    fn set(&mut self, path: &Path, measured: Vec<(FileId, u64)>, used: Option<SystemTime>) {
        let entry = self.entries.entry(path.to_path_buf()).or_insert_with(|| Entry {
            files: Vec::new(),
            used: SystemTime::UNIX_EPOCH,
            pins: 0,
            dirty: false,
        });
        if let Some(u) = used {
            entry.used = u;
        }
        let old = std::mem::take(&mut entry.files);
        entry.files = measured.iter().map(|(id, _)| *id).collect();
        for (id, len) in measured {
            let f = self.files.entry(id).or_insert((len, 0));
            if f.1 == 0 {
                self.total += len;
            } else if f.0 != len {
                // a file that grew or shrank since another entry measured it
                self.total = self.total - f.0 + len;
                f.0 = len;
            }
            f.1 += 1;
        }
        for id in old {
            self.release(id);
        }
    }

    fn release(&mut self, id: FileId) {
        if let Some(f) = self.files.get_mut(&id) {
            f.1 -= 1;
            if f.1 == 0 {
                self.total -= f.0;
                self.files.remove(&id);
            }
        }
    }

    /// Forgets an entry; returns the bytes that freed.
    fn remove(&mut self, path: &Path) -> u64 {
        let before = self.total;
        if let Some(e) = self.entries.remove(path) {
            for id in e.files {
                self.release(id);
            }
        }
        before - self.total
    }
}

/// The files below `path` (itself, when a file): id and bytes, each once.
fn measure(path: &Path) -> Vec<(FileId, u64)> {
    use std::os::unix::fs::MetadataExt;
    fn walk(path: &Path, out: &mut Vec<(FileId, u64)>) {
        let Ok(m) = std::fs::symlink_metadata(path) else { return };
        if m.is_dir() {
            for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
                walk(&e.path(), out);
            }
        } else {
            out.push(((m.dev(), m.ino()), m.len()));
        }
    }
    let mut out = Vec::new();
    walk(path, &mut out);
    out.sort_unstable();
    out.dedup_by_key(|f| f.0);
    out
}

/// An entry in use: eviction leaves it alone until this is dropped. Reads
/// as the entry's path.
pub(crate) struct Pinned {
    inner: Arc<Inner>,
    path: PathBuf,
    /// Measure the entry again when the last pin goes (a mirror grows
    /// while it is used).
    remeasure: bool,
}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Pinned").field(&self.path).finish()
    }
}

impl std::ops::Deref for Pinned {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for Pinned {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let over = {
            let mut index = self.inner.lock();
            if let Some(e) = index.entries.get_mut(&self.path) {
                e.pins = e.pins.saturating_sub(1);
                // Marked before the session answers: a `git s3 cache` after
                // it sees the entry measured again.
                e.dirty |= self.remeasure;
            }
            index.total > self.inner.max_bytes
        };
        if over || self.remeasure {
            self.inner.settle_in_background();
        }
    }
}

/// Runs `f` on a blocking thread (inline outside a runtime).
fn background(f: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn_blocking(f);
        }
        Err(_) => f(),
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct CacheUsage {
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A cached, pre-indexed pack: `.pack` first, then `.idx` (and `.rev`),
/// pinned while it is held.
#[derive(Debug)]
pub(crate) struct CachedPack {
    pub(crate) files: Vec<PathBuf>,
    _pin: Pinned,
}

impl CachedPack {
    /// Links (or copies) the pack's files into a repository's `objects/pack`,
    /// `.pack` before `.idx` so git never sees an index without its pack.
    pub(crate) fn link_into(&self, pack_dir: &Path) -> std::io::Result<()> {
        self.files.iter().try_for_each(|f| match f.file_name() {
            Some(name) if !pack_dir.join(name).exists() => link_or_copy(f, &pack_dir.join(name)),
            _ => Ok(()),
        })
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Measures the entries that changed, then evicts down to the cap.
    /// Blocking.
    fn settle(&self) {
        let _one = self.settling.lock().unwrap_or_else(|e| e.into_inner());
        let dirty: Vec<PathBuf> = {
            let mut index = self.lock();
            index
                .entries
                .iter_mut()
                .filter(|(_, e)| e.dirty)
                .map(|(p, e)| {
                    e.dirty = false;
                    p.clone()
                })
                .collect()
        };
        for path in dirty {
            let measured = measure(&path);
            let mut index = self.lock();
            if index.entries.contains_key(&path) {
                index.set(&path, measured, None);
            }
        }
        self.evict_to(self.max_bytes);
    }

    /// Queues a [`Inner::settle`] on a blocking thread.
    fn settle_in_background(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.clone();
        background(move || {
            inner.queued.store(false, Ordering::Release);
            inner.settle();
        });
    }

    /// Evicts least-recently-used unpinned entries until the cache holds at
    /// most `max` bytes (or only pinned entries are left). Blocking.
    fn evict_to(&self, max: u64) -> CacheUsage {
        let mut removed = CacheUsage::default();
        let Ok(trash) = tempfile::Builder::new().prefix("evict-").tempdir_in(self.root.join("tmp")) else {
            return removed;
        };
        {
            let mut index = self.lock();
            let mut order: Vec<(SystemTime, PathBuf)> = index.entries.iter().filter(|(_, e)| e.pins == 0).map(|(p, e)| (e.used, p.clone())).collect();
            order.sort();
            for (_, path) in order {
                if index.total <= max {
                    break;
                }
                // Out of the way first (a rename: readers see all or nothing),
                // deleted after the lock is released.
                match std::fs::rename(&path, trash.path().join(removed.entries.to_string())) {
                    Ok(()) => removed.entries += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // never created, or gone
                    Err(e) => {
                        tracing::debug!(path = %path.display(), error = %e, "cache entry not evicted");
                        continue;
                    }
                }
                removed.bytes += index.remove(&path);
            }
        }
        drop(trash); // removes what was evicted
        removed
    }
}

impl Cache {
    /// Opens (creating) the cache at `root` and indexes what it holds: one
    /// walk, blocking (call it off the async workers).
    pub(crate) fn new(root: PathBuf, max_bytes: u64) -> std::io::Result<Cache> {
        for area in Area::ALL {
            std::fs::create_dir_all(root.join(area.dir()))?;
        }
        std::fs::create_dir_all(root.join("tmp"))?;
        // The cache holds the user's code: only its owner may enter it
        // (entries made by git are 0444, temp files 0600, under a 0700 root).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))?;
        }
        let mut index = Index::default();
        for area in Area::ALL {
            for e in std::fs::read_dir(root.join(area.dir()))?.flatten() {
                let used = e.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
                index.set(&e.path(), measure(&e.path()), Some(used));
            }
        }
        let inner = Arc::new(Inner { root, max_bytes, index: Mutex::new(index), queued: AtomicBool::new(false), settling: Mutex::new(()) });
        Ok(Cache { inner, hits: AtomicU64::new(0), misses: AtomicU64::new(0) })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.inner.root
    }

    /// `e`, from a write on the cache's filesystem, in words that say what
    /// to do when that filesystem is full (other errors are returned as
    /// they are).
    pub(crate) fn explain_io(&self, e: std::io::Error) -> std::io::Error {
        if matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded) {
            return std::io::Error::new(
                e.kind(),
                format!(
                    "the git-s3 cache's disk is full ({}): free space there (`git s3 cache prune`), or set GIT_S3_CACHE_DIR to a directory on a bigger disk",
                    self.root().display()
                ),
            );
        }
        e
    }

    /// A temp file on the cache's filesystem, for a download or a build that
    /// may be moved into the cache.
    pub(crate) fn temp_file(&self) -> std::io::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new().prefix("tmp-").tempfile_in(self.root().join("tmp"))
    }

    /// A new empty directory on the cache's filesystem, for something built
    /// and then renamed into place (the caller removes it if it is not).
    pub(crate) fn temp_dir(&self) -> std::io::Result<PathBuf> {
        Ok(tempfile::Builder::new().prefix("tmp-").tempdir_in(self.root().join("tmp"))?.keep())
    }

    /// The mirror `id` (32 hex digits), marked used now and pinned while
    /// the result lives; measured again when its last pin goes. The caller
    /// creates it when it does not exist yet.
    pub(crate) fn mirror_path(&self, id: &str) -> Option<Pinned> {
        let path = self.entry_path(Area::Mirrors, id)?;
        let _ = touch(&path);
        Some(self.pin(path, true))
    }

    /// Pins entry `path` (indexed if it is not yet) and marks it used now.
    fn pin(&self, path: PathBuf, remeasure: bool) -> Pinned {
        let mut index = self.inner.lock();
        if !index.entries.contains_key(&path) {
            // A cheap measure (the entry's own files); a mirror measured
            // now is new or empty, and is measured again after use.
            index.set(&path, measure(&path), None);
        }
        if let Some(e) = index.entries.get_mut(&path) {
            e.pins += 1;
            e.used = SystemTime::now();
        }
        Pinned { inner: self.inner.clone(), path, remeasure }
    }

    fn entry_path(&self, area: Area, key: &str) -> Option<PathBuf> {
        let ok = match area {
            Area::Bundles | Area::Packs => crate::local::oid::is_object_id(key),
            Area::Lfs => crate::local::oid::ObjectFormat::Sha256.accepts(key),
            Area::Mirrors => is_hex(key, 32),
        };
        let name = match area {
            Area::Bundles => format!("{key}.bundle"),
            Area::Mirrors => format!("{key}.git"),
            _ => key.to_string(),
        };
        ok.then(|| self.root().join(area.dir()).join(name))
    }

    /// Counts a hit (refreshing the entry's LRU time, and pinning it) or a miss.
    fn lookup(&self, area: Area, key: &str) -> Option<Pinned> {
        let path = self.entry_path(area, key)?;
        let present = match area {
            Area::Packs => path.is_dir(),
            _ => std::fs::metadata(&path).map(|m| m.is_file() && m.len() > 0).unwrap_or(false),
        };
        if present {
            let pin = self.pin(path, false);
            // Evicted between the check and the pin: a miss.
            if std::fs::symlink_metadata(&*pin).is_ok() {
                self.hits.fetch_add(1, Ordering::Relaxed);
                let _ = touch(&pin);
                return Some(pin);
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Indexes entry `path` as it is now, used now; evicts in the
    /// background if that takes the cache past its cap.
    fn added(&self, path: &Path) {
        let measured = measure(path);
        let over = {
            let mut index = self.inner.lock();
            index.set(path, measured, Some(SystemTime::now()));
            index.total > self.inner.max_bytes
        };
        if over {
            self.inner.settle_in_background();
        }
    }

    fn insert_file(&self, area: Area, key: &str, file: tempfile::NamedTempFile) -> std::io::Result<PathBuf> {
        let Some(path) = self.entry_path(area, key) else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad cache key {key:?}")));
        };
        file.persist(&path).map_err(|e| e.error)?;
        self.added(&path);
        Ok(path)
    }

    fn evict(&self, area: Area, key: &str) {
        if let Some(p) = self.entry_path(area, key) {
            let mut index = self.inner.lock();
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            index.remove(&p);
        }
    }

    /// The cached bundle for a tip, if any, pinned while the result lives.
    pub(crate) fn lookup_bundle(&self, sha: &str) -> Option<Pinned> {
        self.lookup(Area::Bundles, sha)
    }

    /// Moves a finished temp file into the cache (atomic rename).
    pub(crate) fn insert_bundle(&self, sha: &str, file: tempfile::NamedTempFile) -> std::io::Result<PathBuf> {
        self.insert_file(Area::Bundles, sha, file)
    }

    /// Drops an entry that turned out to be corrupt.
    pub(crate) fn evict_bundle(&self, sha: &str) {
        self.evict(Area::Bundles, sha)
    }

    /// The pre-indexed pack holding a tip's history, if cached and whole.
    pub(crate) fn lookup_pack(&self, sha: &str) -> Option<CachedPack> {
        let dir = self.lookup(Area::Packs, sha)?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&*dir).ok()?.flatten().map(|e| e.path()).collect();
        // .pack before .idx before .rev: git looks packs up by their .idx.
        files.sort_by_key(|p| match p.extension().and_then(|e| e.to_str()) {
            Some("pack") => 0,
            Some("idx") => 1,
            _ => 2,
        });
        let has = |ext: &str| files.iter().any(|p| p.extension().and_then(|e| e.to_str()) == Some(ext));
        if has("pack") && has("idx") {
            Some(CachedPack { files, _pin: dir })
        } else {
            drop(dir);
            self.evict(Area::Packs, sha);
            None
        }
    }

    /// Stores a repository's freshly indexed pack (`pack-<hash>.*` files in
    /// `pack_dir`) as the pack of tip `sha`: hard links where possible.
    pub(crate) fn insert_pack(&self, sha: &str, pack_dir: &Path, pack_hash: &str) -> std::io::Result<()> {
        let Some(dest) = self.entry_path(Area::Packs, sha) else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad cache key {sha:?}")));
        };
        if dest.is_dir() {
            return Ok(());
        }
        let tmp = tempfile::Builder::new().prefix("pack-").tempdir_in(self.root().join("tmp"))?;
        for ext in ["pack", "idx", "rev"] {
            let name = format!("pack-{pack_hash}.{ext}");
            let src = pack_dir.join(&name);
            if src.exists() {
                link_or_copy(&src, &tmp.path().join(&name))?;
            } else if ext != "rev" {
                return Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} missing", src.display())));
            }
        }
        match std::fs::rename(tmp.path(), &dest) {
            Ok(()) => {
                // The directory now lives at `dest`; do not let TempDir delete it.
                let _ = tmp.keep();
            }
            Err(_) if dest.is_dir() => {} // another session stored it first
            Err(e) => return Err(e),
        }
        self.added(&dest);
        Ok(())
    }

    pub(crate) fn evict_pack(&self, sha: &str) {
        self.evict(Area::Packs, sha)
    }

    /// The cached LFS object for `oid`, if any (not yet verified), pinned
    /// while the result lives.
    pub(crate) fn lookup_lfs(&self, oid: &str) -> Option<Pinned> {
        self.lookup(Area::Lfs, oid)
    }

    /// Moves a verified temp file (from [`Cache::temp_file`]) into the LFS area.
    pub(crate) fn insert_lfs(&self, oid: &str, file: tempfile::NamedTempFile) -> std::io::Result<PathBuf> {
        self.insert_file(Area::Lfs, oid, file)
    }

    /// Drops an LFS entry that turned out to be corrupt.
    pub(crate) fn evict_lfs(&self, oid: &str) {
        self.evict(Area::Lfs, oid)
    }

    /// Entries and bytes (each file once), from the index: no walk. (A
    /// mirror being created has no files yet and is not counted.)
    pub(crate) fn usage(&self) -> CacheUsage {
        let index = self.inner.lock();
        CacheUsage { entries: index.entries.values().filter(|e| !e.files.is_empty()).count() as u64, bytes: index.total }
    }

    /// Evicts least-recently-used entries until the cache holds at most
    /// `max` bytes; pinned entries (in use by a session) stay. Returns what
    /// was removed. Blocking: call it on a blocking thread.
    pub(crate) fn evict_to(&self, max: u64) -> CacheUsage {
        self.inner.evict_to(max)
    }

    /// Runs `f` (lookups, inserts, evictions, links: file-system work) on a
    /// blocking thread, for async code.
    pub(crate) async fn blocking<T: Send + 'static>(self: &Arc<Self>, f: impl FnOnce(&Cache) -> T + Send + 'static) -> std::io::Result<T> {
        let me = self.clone();
        super::files::blocking(move || Ok(f(&me))).await
    }

    /// Waits for the background work (mirrors measured again after use,
    /// eviction down to the cap) and does what is left of it. Blocking.
    pub(crate) fn settle(&self) {
        self.inner.settle()
    }
}

/// Marks an entry used now (LRU order across restarts).
fn touch(path: &Path) -> std::io::Result<()> {
    let f = if path.is_dir() { std::fs::File::open(path)? } else { std::fs::OpenOptions::new().append(true).open(path)? };
    f.set_modified(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn age(path: &Path, secs: u64) {
        let f = if path.is_dir() { std::fs::File::open(path).unwrap() } else { std::fs::OpenOptions::new().append(true).open(path).unwrap() };
        f.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)).unwrap();
    }

    #[test]
    fn lru_eviction_across_areas() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf(), 25).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777, 0o700, "the cache root is private");
        }
        let (a, b, c) = ("a".repeat(40), "b".repeat(40), "c".repeat(64));
        for (i, sha) in [&a, &b].iter().enumerate() {
            let mut t = cache.temp_file().unwrap();
            t.write_all(&[b'x'; 10]).unwrap();
            cache.insert_bundle(sha, t).unwrap();
            age(&cache.entry_path(Area::Bundles, sha).unwrap(), 1000 + i as u64);
        }
        let mut t = cache.temp_file().unwrap();
        t.write_all(&[b'y'; 10]).unwrap();
        cache.insert_lfs(&c, t).unwrap();
        // 30 bytes > 25: the least recently used (a) went
        assert!(cache.lookup_bundle(&a).is_none());
        assert!(cache.lookup_bundle(&b).is_some());
        assert!(cache.lookup_lfs(&c).is_some());
        assert_eq!(cache.usage().bytes, 20);
        assert_eq!(cache.evict_to(0).entries, 2);
        assert!(cache.lookup_bundle("../x").is_none());
        assert!(cache.lookup_bundle("abcd").is_none());
    }

    #[test]
    fn packs_are_stored_whole_and_linked() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("c"), 1 << 20).unwrap();
        let repo_pack = dir.path().join("objects/pack");
        std::fs::create_dir_all(&repo_pack).unwrap();
        let hash = "1".repeat(40);
        std::fs::write(repo_pack.join(format!("pack-{hash}.pack")), b"PACK").unwrap();
        std::fs::write(repo_pack.join(format!("pack-{hash}.idx")), b"IDX").unwrap();
        let sha = "d".repeat(40);
        cache.insert_pack(&sha, &repo_pack, &hash).unwrap();
        let p = cache.lookup_pack(&sha).unwrap();
        assert_eq!(p.files.len(), 2);
        assert!(p.files[0].to_string_lossy().ends_with(".pack"));
        // a partial entry (idx lost) is dropped, not used
        std::fs::remove_file(&p.files[1]).unwrap();
        assert!(cache.lookup_pack(&sha).is_none());
        assert!(cache.lookup_pack(&sha).is_none());
        // missing .idx in the repository: refused
        std::fs::remove_file(repo_pack.join(format!("pack-{hash}.idx"))).unwrap();
        assert!(cache.insert_pack(&sha, &repo_pack, &hash).is_err());
    }

    fn bundle(cache: &Cache, sha: &str, len: usize) -> PathBuf {
        let mut t = cache.temp_file().unwrap();
        t.write_all(&vec![b'x'; len]).unwrap();
        cache.insert_bundle(sha, t).unwrap()
    }

    #[test]
    fn hard_links_count_once_and_totals_follow_inserts_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("c"), 1 << 20).unwrap();
        // a mirror holding a pack, and the same pack (hard links) as a packs/ entry
        let mirror = cache.mirror_path(&"e".repeat(32)).unwrap();
        let pack_dir = mirror.join("objects/pack");
        std::fs::create_dir_all(&pack_dir).unwrap();
        let hash = "2".repeat(40);
        std::fs::write(pack_dir.join(format!("pack-{hash}.pack")), vec![b'p'; 1000]).unwrap();
        std::fs::write(pack_dir.join(format!("pack-{hash}.idx")), vec![b'i'; 100]).unwrap();
        std::fs::write(mirror.join("HEAD"), b"ref: refs/heads/main\n").unwrap();
        drop(mirror); // measured again when its last pin goes
        assert_eq!(cache.usage().bytes, 1121);
        cache.insert_pack(&"d".repeat(40), &pack_dir, &hash).unwrap();
        assert_eq!(cache.usage().bytes, 1121, "the packs/ entry is the mirror's files: counted once");
        bundle(&cache, &"a".repeat(40), 10);
        assert_eq!(cache.usage().bytes, 1131);
        assert_eq!(cache.usage().entries, 3);
        // a restart's walk counts the same
        let again = Cache::new(dir.path().join("c"), 1 << 20).unwrap();
        assert_eq!(again.usage().bytes, 1131);
        cache.evict_bundle(&"a".repeat(40));
        assert_eq!(cache.usage().bytes, 1121);
        // the mirror gone, the pack entry still holds its files
        std::fs::remove_dir_all(dir.path().join("c/mirrors")).unwrap();
        std::fs::create_dir_all(dir.path().join("c/mirrors")).unwrap();
        let mirror = cache.mirror_path(&"e".repeat(32)).unwrap();
        drop(mirror);
        assert_eq!(cache.usage().bytes, 1100);
        assert_eq!(cache.evict_to(0).bytes, 1100);
        assert_eq!(cache.usage().bytes, 0);
        assert!(std::fs::read_dir(dir.path().join("c/tmp")).unwrap().next().is_none(), "evicted entries are deleted");
    }

    #[test]
    fn pinned_entries_survive_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf(), 15).unwrap();
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        bundle(&cache, &a, 10);
        let pinned = cache.lookup_bundle(&a).unwrap();
        // b takes the cache past its cap: a is older but in use, so b goes
        bundle(&cache, &b, 10);
        assert!(pinned.exists());
        assert!(cache.lookup_bundle(&b).is_none());
        assert_eq!(cache.evict_to(0).entries, 0, "nothing unpinned to evict");
        assert_eq!(std::fs::read(&*pinned).unwrap().len(), 10);
        assert_eq!(cache.usage().bytes, 10);
        drop(pinned);
        assert_eq!(cache.evict_to(0).entries, 1);
        assert!(cache.lookup_bundle(&a).is_none());
    }
}
