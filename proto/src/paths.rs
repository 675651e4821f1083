//! Where the daemon's socket, logs and cache live. Shared by the daemon and
//! the shims so both always agree.

use std::path::PathBuf;

const APP: &str = "git-s3";

fn base_dirs() -> Option<directories::BaseDirs> {
    directories::BaseDirs::new()
}

/// Directory holding the daemon's socket and lock file (mode 0700).
/// `GIT_S3_RUNTIME_DIR` overrides; else the user's runtime dir
/// (`$XDG_RUNTIME_DIR/git-s3`); else a private dir under the cache dir.
pub fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GIT_S3_RUNTIME_DIR") {
        return PathBuf::from(dir);
    }
    match base_dirs() {
        Some(b) => match b.runtime_dir() {
            Some(rt) => rt.join(APP),
            None => b.cache_dir().join(APP).join("run"),
        },
        None => {
            // SAFETY: getuid has no preconditions and cannot fail.
            #[allow(unsafe_code)]
            let uid = unsafe { libc::getuid() };
            std::env::temp_dir().join(format!("{APP}-{uid}"))
        }
    }
}

pub fn socket_path() -> PathBuf {
    runtime_dir().join("daemon.sock")
}

pub fn lock_path() -> PathBuf {
    runtime_dir().join("daemon.lock")
}

/// Directory for the daemon's log file (`GIT_S3_STATE_DIR` overrides).
pub fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GIT_S3_STATE_DIR") {
        return PathBuf::from(dir);
    }
    match directories::ProjectDirs::from("", "", APP) {
        Some(p) => p.state_dir().map(|d| d.to_path_buf()).unwrap_or_else(|| p.data_local_dir().to_path_buf()),
        None => std::env::temp_dir().join(APP).join("state"),
    }
}

pub fn log_file() -> PathBuf {
    state_dir().join("daemon.log")
}

/// The local bundle/pack/LFS-object cache (`GIT_S3_CACHE_DIR` overrides).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GIT_S3_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    match base_dirs() {
        Some(b) => b.cache_dir().join(APP),
        None => std::env::temp_dir().join(APP).join("cache"),
    }
}
