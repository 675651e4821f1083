//! File-system work the async code hands to a blocking thread: one
//! `link_or_copy` (hard link, else a synced copy renamed into place), one
//! `write_atomic` (a small record that survives a crash whole or not at
//! all), and `blocking` to run any other file-system closure off the async
//! workers.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Runs blocking file-system work on tokio's blocking pool. A panic in
/// `f` comes back as an error.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

/// Puts `src` at `dest`: a hard link when both are on one filesystem,
/// else a copy through a temporary file beside `dest`, synced, then
/// renamed into place (a reader never sees a partial `dest`). Blocking.
pub(crate) fn link_or_copy(src: &Path, dest: &Path) -> io::Result<()> {
    if std::fs::hard_link(src, dest).is_ok() {
        return Ok(());
    }
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-copy-").tempfile_in(dir)?;
    let mut from = std::fs::File::open(src)?;
    std::io::copy(&mut from, tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

/// `link_or_copy` to a fresh name in `dir` (created if missing), made of
/// `stem`, the daemon's pid and the time: for a file handed to another
/// program (git-lfs) that it may move or delete. Returns that path. Blocking.
pub(crate) fn link_or_copy_into(src: &Path, dir: &Path, stem: &str) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let dest = dir.join(format!("{stem}.git-lfs-s3-{}-{nanos}", std::process::id()));
    link_or_copy(src, &dest)?;
    Ok(dest)
}

/// Writes `body` to `dir/name` (creating `dir`) so that a crash leaves the
/// old file or the new one, never a part: a synced temp file beside it,
/// renamed over it, then the directory synced. Blocking.
pub(crate) fn write_atomic(dir: &Path, name: &str, body: &[u8]) -> io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-record-").tempfile_in(dir)?;
    tmp.write_all(body)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join(name)).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// `link_or_copy_into` on a blocking thread.
pub(crate) async fn link_or_copy_into_async(src: PathBuf, dir: PathBuf, stem: String) -> io::Result<PathBuf> {
    blocking(move || link_or_copy_into(&src, &dir, &stem)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_or_copies_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::write(&src, b"hello").unwrap();
        let dest = dir.path().join("dest");
        link_or_copy(&src, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        // An existing destination: the link fails, the copy replaces it.
        std::fs::write(&src, b"again").unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, b"old").unwrap();
        link_or_copy(&src, &other).unwrap();
        assert_eq!(std::fs::read(&other).unwrap(), b"again");
        let leftovers: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-copy-")).collect();
        assert!(leftovers.is_empty(), "no temporary file left behind");
    }

    #[tokio::test]
    async fn into_a_fresh_name_off_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("obj");
        std::fs::write(&src, b"data").unwrap();
        let a = link_or_copy_into_async(src.clone(), dir.path().join("tmp"), "oid".into()).await.unwrap();
        assert!(a.file_name().unwrap().to_string_lossy().starts_with("oid.git-lfs-s3-"));
        assert_eq!(std::fs::read(&a).unwrap(), b"data");
    }
}
