//! The local content-addressed cache: bundles by the sha of the tip they
//! hold (with the S3 ETag they came with), shared by every working copy of
//! the user. Entries are written to a temp file and renamed into place, so a
//! reader never sees a partial entry; an entry that git rejects is evicted
//! and fetched again. Least-recently-used entries are evicted above a size
//! cap (`GIT_S3_CACHE_MAX_BYTES`, default 4 GiB).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;

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

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl Cache {
    pub fn new(root: PathBuf, max_bytes: u64) -> std::io::Result<Cache> {
        std::fs::create_dir_all(root.join("bundles"))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(Cache { root, max_bytes, hits: AtomicU64::new(0), misses: AtomicU64::new(0) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn bundle_path(&self, sha: &str) -> Option<PathBuf> {
        valid_name(sha).then(|| self.root.join("bundles").join(format!("{sha}.bundle")))
    }

    /// A temp file on the cache's filesystem, for a download or a build that
    /// may be moved into the cache.
    pub fn temp_file(&self) -> std::io::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new().prefix("tmp-").tempfile_in(self.root.join("tmp"))
    }

    /// The cached bundle for a tip, if any; a hit refreshes its LRU time.
    pub fn lookup_bundle(&self, sha: &str) -> Option<PathBuf> {
        let path = self.bundle_path(sha)?;
        match std::fs::metadata(&path) {
            Ok(m) if m.len() > 0 => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                let _ = filetime_touch(&path);
                Some(path)
            }
            _ => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Moves a finished temp file into the cache (atomic rename).
    pub fn insert_bundle(&self, sha: &str, file: tempfile::NamedTempFile) -> std::io::Result<PathBuf> {
        let Some(path) = self.bundle_path(sha) else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad cache key"));
        };
        file.persist(&path).map_err(|e| e.error)?;
        self.evict_to(self.max_bytes);
        Ok(path)
    }

    /// Drops an entry that turned out to be corrupt.
    pub fn evict_bundle(&self, sha: &str) {
        if let Some(p) = self.bundle_path(sha) {
            let _ = std::fs::remove_file(p);
        }
    }

    fn entries(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.root.join("bundles")) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    if m.is_file() {
                        out.push((e.path(), m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
                    }
                }
            }
        }
        out
    }

    pub fn usage(&self) -> CacheUsage {
        let e = self.entries();
        CacheUsage { entries: e.len() as u64, bytes: e.iter().map(|x| x.1).sum() }
    }

    /// Evicts least-recently-used entries until the cache holds at most `max` bytes.
    pub fn evict_to(&self, max: u64) -> CacheUsage {
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort_by_key(|e| e.2);
        let mut removed = CacheUsage::default();
        for (path, len, _) in entries {
            if total <= max {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                removed.entries += 1;
                removed.bytes += len;
            }
        }
        removed
    }
}

/// Git LFS objects by oid (`lfs/<oid>`), so a second download on this
/// machine is local. Entries are renamed into place from a temp file of the
/// same filesystem; callers verify the SHA-256 of an entry before using it
/// (and evict it when it does not match). Kept under the same size cap as
/// the bundles, counted separately.
impl Cache {
    fn lfs_path(&self, oid: &str) -> Option<PathBuf> {
        let ok = oid.len() == 64 && oid.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| self.root.join("lfs").join(oid))
    }

    /// The cached LFS object for `oid`, if any (not yet verified); a hit
    /// refreshes its LRU time.
    pub fn lookup_lfs(&self, oid: &str) -> Option<PathBuf> {
        let path = self.lfs_path(oid)?;
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                let _ = filetime_touch(&path);
                Some(path)
            }
            _ => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Moves a verified temp file (from [`Cache::temp_file`]) into the LFS area.
    pub fn insert_lfs(&self, oid: &str, file: tempfile::NamedTempFile) -> std::io::Result<PathBuf> {
        let Some(path) = self.lfs_path(oid) else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad LFS oid"));
        };
        std::fs::create_dir_all(self.root.join("lfs"))?;
        file.persist(&path).map_err(|e| e.error)?;
        self.evict_lfs_to(self.max_bytes);
        Ok(path)
    }

    /// Drops an LFS entry that turned out to be corrupt.
    pub fn evict_lfs(&self, oid: &str) {
        if let Some(p) = self.lfs_path(oid) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Evicts least-recently-used LFS objects until that area holds at most `max` bytes.
    pub fn evict_lfs_to(&self, max: u64) -> CacheUsage {
        let mut entries = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.root.join("lfs")) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    if m.is_file() {
                        entries.push((e.path(), m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
                    }
                }
            }
        }
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        entries.sort_by_key(|e| e.2);
        let mut removed = CacheUsage::default();
        for (path, len, _) in entries {
            if total <= max {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                removed.entries += 1;
                removed.bytes += len;
            }
        }
        removed
    }
}

fn filetime_touch(path: &Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.set_modified(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn insert_lookup_and_lru_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf(), 25).unwrap();
        for (i, sha) in ["aaaa", "bbbb", "cccc"].iter().enumerate() {
            let mut t = cache.temp_file().unwrap();
            t.write_all(&[b'x'; 10]).unwrap();
            cache.insert_bundle(sha, t).unwrap();
            // distinct mtimes for a deterministic LRU order
            let p = cache.bundle_path(sha).unwrap();
            let f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
            f.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64)).unwrap();
        }
        // 30 bytes > 25: the oldest went when the third was inserted... or now
        cache.evict_to(25);
        assert!(cache.lookup_bundle("aaaa").is_none());
        assert!(cache.lookup_bundle("cccc").is_some());
        assert!(cache.usage().bytes <= 25);
        assert!(cache.lookup_bundle("../x").is_none());
    }

    #[test]
    fn lfs_insert_lookup_evict() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf(), 1 << 20).unwrap();
        let oid = "a".repeat(64);
        assert!(cache.lookup_lfs(&oid).is_none());
        let mut t = cache.temp_file().unwrap();
        t.write_all(b"data").unwrap();
        let p = cache.insert_lfs(&oid, t).unwrap();
        assert_eq!(cache.lookup_lfs(&oid), Some(p.clone()));
        assert_eq!(std::fs::read(&p).unwrap(), b"data");
        cache.evict_lfs(&oid);
        assert!(cache.lookup_lfs(&oid).is_none());
        assert!(cache.lookup_lfs("../etc/passwd").is_none());
        assert!(cache.lookup_lfs(&"A".repeat(64)).is_none());
    }
}
