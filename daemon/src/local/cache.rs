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

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;

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

pub struct Cache {
    root: PathBuf,
    max_bytes: u64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CacheUsage {
    pub entries: u64,
    pub bytes: u64,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A cached, pre-indexed pack: `.pack` first, then `.idx` (and `.rev`).
#[derive(Debug, Clone)]
pub struct CachedPack {
    pub files: Vec<PathBuf>,
}

impl CachedPack {
    /// Links (or copies) the pack's files into a repository's `objects/pack`,
    /// `.pack` before `.idx` so git never sees an index without its pack.
    pub fn link_into(&self, pack_dir: &Path) -> std::io::Result<()> {
        self.files.iter().try_for_each(|f| match f.file_name() {
            Some(name) if !pack_dir.join(name).exists() => link_or_copy(f, &pack_dir.join(name)),
            _ => Ok(()),
        })
    }
}

impl Cache {
    pub fn new(root: PathBuf, max_bytes: u64) -> std::io::Result<Cache> {
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
        Ok(Cache { root, max_bytes, hits: AtomicU64::new(0), misses: AtomicU64::new(0) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `e`, from a write on the cache's filesystem, in words that say what
    /// to do when that filesystem is full (other errors are returned as
    /// they are).
    pub fn explain_io(&self, e: std::io::Error) -> std::io::Error {
        if matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded) {
            return std::io::Error::new(
                e.kind(),
                format!(
                    "the git-s3 cache's disk is full ({}): free space there (`git s3 cache prune`), or set GIT_S3_CACHE_DIR to a directory on a bigger disk",
                    self.root.display()
                ),
            );
        }
        e
    }

    /// A temp file on the cache's filesystem, for a download or a build that
    /// may be moved into the cache.
    pub fn temp_file(&self) -> std::io::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new().prefix("tmp-").tempfile_in(self.root.join("tmp"))
    }

    /// A new empty directory on the cache's filesystem, for something built
    /// and then renamed into place (the caller removes it if it is not).
    pub fn temp_dir(&self) -> std::io::Result<PathBuf> {
        Ok(tempfile::Builder::new().prefix("tmp-").tempdir_in(self.root.join("tmp"))?.keep())
    }

    /// Where the mirror `id` (32 hex digits) lives, marked used now. The caller creates
    /// it when it does not exist yet.
    pub fn mirror_path(&self, id: &str) -> Option<PathBuf> {
        let path = self.entry_path(Area::Mirrors, id)?;
        let _ = touch(&path);
        Some(path)
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
        ok.then(|| self.root.join(area.dir()).join(name))
    }

    /// Counts a hit (refreshing the entry's LRU time) or a miss.
    fn lookup(&self, area: Area, key: &str) -> Option<PathBuf> {
        let path = self.entry_path(area, key)?;
        let present = match area {
            Area::Packs => path.is_dir(),
            _ => std::fs::metadata(&path).map(|m| m.is_file() && m.len() > 0).unwrap_or(false),
        };
        if present {
            self.hits.fetch_add(1, Ordering::Relaxed);
            let _ = touch(&path);
            Some(path)
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    fn insert_file(&self, area: Area, key: &str, file: tempfile::NamedTempFile) -> std::io::Result<PathBuf> {
        let Some(path) = self.entry_path(area, key) else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad cache key {key:?}")));
        };
        file.persist(&path).map_err(|e| e.error)?;
        self.evict_to(self.max_bytes);
        Ok(path)
    }

    fn evict(&self, area: Area, key: &str) {
        if let Some(p) = self.entry_path(area, key) {
            let _ = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
        }
    }

    /// The cached bundle for a tip, if any.
    pub fn lookup_bundle(&self, sha: &str) -> Option<PathBuf> {
        self.lookup(Area::Bundles, sha)
    }

    /// Moves a finished temp file into the cache (atomic rename).
    pub fn insert_bundle(&self, sha: &str, file: tempfile::NamedTempFile) -> std::io::Result<PathBuf> {
        self.insert_file(Area::Bundles, sha, file)
    }

    /// Drops an entry that turned out to be corrupt.
    pub fn evict_bundle(&self, sha: &str) {
        self.evict(Area::Bundles, sha)
    }

    /// The pre-indexed pack holding a tip's history, if cached and whole.
    pub fn lookup_pack(&self, sha: &str) -> Option<CachedPack> {
        let dir = self.lookup(Area::Packs, sha)?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).ok()?.flatten().map(|e| e.path()).collect();
        // .pack before .idx before .rev: git looks packs up by their .idx.
        files.sort_by_key(|p| match p.extension().and_then(|e| e.to_str()) {
            Some("pack") => 0,
            Some("idx") => 1,
            _ => 2,
        });
        let has = |ext: &str| files.iter().any(|p| p.extension().and_then(|e| e.to_str()) == Some(ext));
        if has("pack") && has("idx") {
            Some(CachedPack { files })
        } else {
            self.evict(Area::Packs, sha);
            None
        }
    }

    /// Stores a repository's freshly indexed pack (`pack-<hash>.*` files in
    /// `pack_dir`) as the pack of tip `sha`: hard links where possible.
    pub fn insert_pack(&self, sha: &str, pack_dir: &Path, pack_hash: &str) -> std::io::Result<()> {
        let Some(dest) = self.entry_path(Area::Packs, sha) else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad cache key {sha:?}")));
        };
        if dest.is_dir() {
            return Ok(());
        }
        let tmp = tempfile::Builder::new().prefix("pack-").tempdir_in(self.root.join("tmp"))?;
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
        self.evict_to(self.max_bytes);
        Ok(())
    }

    pub fn evict_pack(&self, sha: &str) {
        self.evict(Area::Packs, sha)
    }

    /// The cached LFS object for `oid`, if any (not yet verified).
    pub fn lookup_lfs(&self, oid: &str) -> Option<PathBuf> {
        self.lookup(Area::Lfs, oid)
    }

    /// Moves a verified temp file (from [`Cache::temp_file`]) into the LFS area.
    pub fn insert_lfs(&self, oid: &str, file: tempfile::NamedTempFile) -> std::io::Result<PathBuf> {
        self.insert_file(Area::Lfs, oid, file)
    }

    /// Drops an LFS entry that turned out to be corrupt.
    pub fn evict_lfs(&self, oid: &str) {
        self.evict(Area::Lfs, oid)
    }

    /// Every entry of every area: (path, bytes, last use).
    fn entries(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let mut out = Vec::new();
        for area in Area::ALL {
            let Ok(rd) = std::fs::read_dir(self.root.join(area.dir())) else { continue };
            for e in rd.flatten() {
                let Ok(m) = e.metadata() else { continue };
                let used = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                if m.is_file() {
                    out.push((e.path(), m.len(), used));
                } else if m.is_dir() {
                    out.push((e.path(), dir_size(&e.path()), used));
                }
            }
        }
        out
    }

    pub fn usage(&self) -> CacheUsage {
        let e = self.entries();
        CacheUsage { entries: e.len() as u64, bytes: e.iter().map(|x| x.1).sum() }
    }

    /// Evicts least-recently-used entries until the cache holds at most
    /// `max` bytes. Returns what was removed.
    pub fn evict_to(&self, max: u64) -> CacheUsage {
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort_by_key(|e| e.2);
        let mut removed = CacheUsage::default();
        for (path, len, _) in entries {
            if total <= max {
                break;
            }
            let gone = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            if gone.is_ok() {
                total -= len;
                removed.entries += 1;
                removed.bytes += len;
            }
        }
        removed
    }
}

/// Hard link (same filesystem, no copy); else copy through a temp name.
pub fn link_or_copy(src: &Path, dest: &Path) -> std::io::Result<()> {
    if std::fs::hard_link(src, dest).is_ok() {
        return Ok(());
    }
    let tmp = dest.with_extension("tmp-copy");
    std::fs::copy(src, &tmp)?;
    std::fs::rename(&tmp, dest)
}

/// The bytes of the files below `dir` (a mirror's are a few levels deep).
fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .filter_map(|e| {
            let m = std::fs::symlink_metadata(e.path()).ok()?;
            Some(if m.is_dir() { dir_size(&e.path()) } else { m.len() })
        })
        .sum()
}

/// Marks an entry used now (LRU order).
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
}
