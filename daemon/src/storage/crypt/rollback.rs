//! Rollback detection for encrypted remotes (issue 22): the highest
//! manifest serial this machine has seen, per remote (its manifest's
//! location: endpoint, bucket, prefix), kept in the daemon's state
//! directory (`<state>/manifests-seen/<hash of the location>`, written
//! atomically, so it survives a daemon restart) and in the daemon's memory.
//! A manifest with a lower serial (someone put an old one back) is refused
//! before anything is fetched or written locally.
//!
//! Only encrypted remotes: their manifest is authenticated (age's AEAD
//! with the remote key), so its serial is too. A plaintext manifest can be
//! rewritten with any serial by whoever can write the bucket: a check would
//! catch only honest restores from a backup, which it would then refuse.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::CryptError;
use crate::s3::store::S3Store;

/// The folder of the records, in the daemon's state directory.
const DIR: &str = "manifests-seen";

/// The highest serial known for a location (None: not loaded from disk yet).
/// Kept in the daemon's memory (`S3Store::memory`), by location; the mutex
/// orders the record's read-modify-write on the blocking pool.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Option<u64>>>);

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    location: String,
    serial: u64,
}

fn seen_dir() -> PathBuf {
    git_s3_proto::paths::state_dir().join(DIR)
}

/// The record of `location` in `dir`.
pub(crate) fn record_path(dir: &Path, location: &str) -> PathBuf {
    dir.join(hex::encode(&Sha256::digest(location.as_bytes())[..16]))
}

/// Checks the serial of the manifest of `remote` (at `location`) that this
/// daemon has just read or written against the highest this machine has
/// seen, and records it when higher. Lower: refused in one line.
pub(crate) async fn witness(store: &S3Store, location: &str, remote: &str, serial: u64) -> Result<(), CryptError> {
    let cell = store.memory().map::<Seen>().entry(location.to_string()).or_default().clone();
    let (dir, loc) = (seen_dir(), location.to_string());
    let found = crate::local::files::blocking(move || note(&dir, &loc, &cell, serial)).await?;
    match found {
        Some(highest) => Err(CryptError::Rollback {
            remote: remote.to_string(),
            serial,
            highest,
            record: record_path(&seen_dir(), location).display().to_string(),
        }),
        None => Ok(()),
    }
}

/// Forgets what this machine has seen of `location` (a remote created
/// there afresh by `git s3 init`, whose serials start again).
pub(crate) async fn reset(store: &S3Store, location: &str) -> Result<(), CryptError> {
    let cell = store.memory().map::<Seen>().entry(location.to_string()).or_default().clone();
    let (dir, loc) = (seen_dir(), location.to_string());
    crate::local::files::blocking(move || {
        let mut held = cell.0.lock().unwrap_or_else(|p| p.into_inner());
        *held = Some(0);
        match std::fs::remove_file(record_path(&dir, &loc)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    })
    .await?;
    Ok(())
}

/// The check and the record, blocking: Some(highest) when `serial` is
/// lower than the highest seen. A record that cannot be written is logged
/// (the daemon's memory still refuses a rollback until it exits).
fn note(dir: &Path, location: &str, cell: &Seen, serial: u64) -> std::io::Result<Option<u64>> {
    let mut held = cell.0.lock().unwrap_or_else(|p| p.into_inner());
    let highest = match *held {
        Some(h) => h,
        None => load(dir, location)?,
    };
    *held = Some(highest);
    if serial < highest {
        return Ok(Some(highest));
    }
    if serial > highest {
        *held = Some(serial);
        if let Err(e) = save(dir, location, serial) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not record the manifest serial seen (rollback detection lasts until the daemon exits)");
        }
    }
    Ok(None)
}

/// The serial recorded for `location` (none: 0). A damaged record is
/// logged and read as none.
fn load(dir: &Path, location: &str) -> std::io::Result<u64> {
    let path = record_path(dir, location);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    match serde_json::from_slice::<Record>(&data) {
        Ok(r) if r.location == location => Ok(r.serial),
        Ok(_) => Ok(0),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "a damaged record of the manifest serial seen; ignored");
            Ok(0)
        }
    }
}

/// Writes the record atomically (`local::files::write_atomic`).
fn save(dir: &Path, location: &str, serial: u64) -> std::io::Result<()> {
    let body = serde_json::to_vec(&Record { location: location.to_string(), serial }).map_err(std::io::Error::other)?;
    let path = record_path(dir, location);
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| std::io::Error::other("record name"))?;
    crate::local::files::write_atomic(dir, name, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_serial_is_refused_and_the_highest_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join(DIR);
        let cell = Seen::default();
        assert_eq!(note(&d, "loc", &cell, 3).unwrap(), None);
        assert_eq!(note(&d, "loc", &cell, 5).unwrap(), None);
        assert_eq!(note(&d, "loc", &cell, 5).unwrap(), None, "the same manifest again");
        assert_eq!(note(&d, "loc", &cell, 4).unwrap(), Some(5));
        // A new daemon: its memory is empty, the record is read.
        let fresh = Seen::default();
        assert_eq!(note(&d, "loc", &fresh, 2).unwrap(), Some(5));
        assert_eq!(note(&d, "other", &Seen::default(), 1).unwrap(), None, "per location");
        assert_eq!(load(&d, "other").unwrap(), 1);
        // A damaged record reads as none.
        std::fs::write(record_path(&d, "loc"), b"{").unwrap();
        assert_eq!(load(&d, "loc").unwrap(), 0);
    }
}
