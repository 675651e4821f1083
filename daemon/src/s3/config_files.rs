//! The caller's AWS config and credentials files, read again only when
//! they change: the daemon keeps each file's text by path with its
//! modification time and length, so that a session whose files did not
//! change reads none of them (a changed or replaced file is read again).
//! Blocking (a `stat` per file, a read when it changed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Files kept (beyond it the map starts over).
const MAX_FILES: usize = 256;

#[derive(Default)]
pub(crate) struct ConfigFiles {
    held: Mutex<HashMap<PathBuf, Held>>,
    /// Files read from disk (a count for tests and `status`).
    reads: AtomicU64,
}

struct Held {
    stamp: (SystemTime, u64),
    text: Arc<str>,
}

impl ConfigFiles {
    /// The text of `path`, or None when it cannot be read (missing, a
    /// directory, not UTF-8).
    pub(crate) fn read(&self, path: &Path) -> Option<Arc<str>> {
        let meta = std::fs::metadata(path).ok()?;
        let stamp = (meta.modified().ok()?, meta.len());
        if let Some(h) = self.held.lock().ok()?.get(path).filter(|h| h.stamp == stamp) {
            return Some(h.text.clone());
        }
        let text: Arc<str> = std::fs::read_to_string(path).ok()?.into();
        self.reads.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut held) = self.held.lock() {
            if held.len() >= MAX_FILES {
                held.clear();
            }
            held.insert(path.to_path_buf(), Held { stamp, text: text.clone() });
        }
        Some(text)
    }

    /// Files read from disk so far.
    #[cfg(test)]
    pub(crate) fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mtime(path: &Path, secs: u64) {
        let f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)).unwrap();
    }

    #[test]
    fn an_unchanged_file_is_read_once_a_changed_one_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, "[default]\nregion = a\n").unwrap();
        set_mtime(&path, 1_000);
        let files = ConfigFiles::default();
        assert_eq!(files.read(&path).as_deref(), Some("[default]\nregion = a\n"));
        assert_eq!(files.read(&path).as_deref(), Some("[default]\nregion = a\n"));
        assert_eq!(files.reads(), 1, "unchanged: served from memory");

        // Same length, new modification time: read again.
        std::fs::write(&path, "[default]\nregion = b\n").unwrap();
        set_mtime(&path, 2_000);
        assert_eq!(files.read(&path).as_deref(), Some("[default]\nregion = b\n"));
        assert_eq!(files.reads(), 2);

        // Same modification time, another length: read again.
        std::fs::write(&path, "[default]\nregion = bb\n").unwrap();
        set_mtime(&path, 2_000);
        assert_eq!(files.read(&path).as_deref(), Some("[default]\nregion = bb\n"));
        assert_eq!(files.reads(), 3);
        assert_eq!(files.read(&path).as_deref(), Some("[default]\nregion = bb\n"));
        assert_eq!(files.reads(), 3);

        // Removed: nothing, and nothing stale.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(files.read(&path), None);
    }
}
