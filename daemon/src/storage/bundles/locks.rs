//! Per-ref push locks at `<prefix>/<ref>/LOCK#.lock`, compatible with
//! git-remote-s3 0.4.2: created with `If-None-Match: *`; a lock older than
//! the TTL is stale. Unlike 0.4.2, a stale lock is taken over atomically with
//! a conditional write on the stale lock's ETag (never delete-then-create),
//! and each lock body is unique so two takeovers cannot both match.
//!
//! In a versioned bucket every write of a lock is a version: a refresh
//! deletes the version it replaced, and a release deletes the lock's
//! version itself, so a push leaves no versions (nor a delete marker)
//! behind.

use std::time::{Duration, Instant};

use crate::s3::store::{PutOptions, S3Store, StoreError, WriteCondition};
use crate::storage::StorageError;

pub(crate) const LOCK_NAME: &str = "LOCK#.lock";
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "failed to acquire ref lock at {key}. Another client may be pushing. If this persists beyond {ttl}s, run `git s3 doctor <remote> --lock-ttl {ttl}` to inspect and optionally clear stale locks"
    )]
    Held { key: String, ttl: u64 },
    #[error("lost the ref lock at {key}: another client took it over as stale while this push ran, and the push was stopped; check the remote (git s3 status) and push again")]
    Lost { key: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A lock's S3 error is a storage error like any other; the others are
/// refusals, in the lock's own words.
impl From<LockError> for StorageError {
    fn from(e: LockError) -> StorageError {
        match e {
            LockError::Store(e) => StorageError::Store(e),
            other => StorageError::Lock(other.to_string()),
        }
    }
}

pub(crate) fn lock_key(prefix: &str, refname: &str) -> String {
    format!("{prefix}/{refname}/{LOCK_NAME}")
}

/// The TTL from the caller's environment (`GIT_REMOTE_S3_LOCK_TTL_SECONDS`,
/// or `GIT_REMOTE_S3_LOCK_TTL` as 0.4.2 documents it), default 60 s.
pub(crate) fn ttl_from_env(env: &std::collections::HashMap<String, String>) -> Duration {
    ["GIT_REMOTE_S3_LOCK_TTL_SECONDS", "GIT_REMOTE_S3_LOCK_TTL"]
        .iter()
        .find_map(|k| env.get(*k).and_then(|v| v.trim().parse::<u64>().ok()))
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TTL)
}

/// How long a push waits for a ref's lock (`GIT_REMOTE_S3_LOCK_WAIT_SECONDS`,
/// default 10 s).
pub(crate) fn lock_wait(env: &std::collections::HashMap<String, String>) -> Duration {
    env.get("GIT_REMOTE_S3_LOCK_WAIT_SECONDS").and_then(|v| v.parse().ok()).map(Duration::from_secs).unwrap_or(Duration::from_secs(10))
}

#[derive(Debug)]
pub struct RefLock {
    pub(crate) key: String,
    pub etag: String,
    /// Its version id, in a versioned bucket.
    pub(crate) version: Option<String>,
}

fn lock_body() -> Vec<u8> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let nonce: u64 = fastrand::u64(..);
    format!(
        "{{\"tool\":\"git-s3\",\"host\":\"{}\",\"pid\":{},\"time\":{},\"nonce\":\"{nonce:016x}\"}}",
        host.trim(),
        std::process::id(),
        now.as_millis()
    )
    .into_bytes()
}

/// Takes the lock, waiting up to `wait` for a live holder to finish.
pub async fn acquire(store: &S3Store, prefix: &str, refname: &str, ttl: Duration, wait: Duration) -> Result<RefLock, LockError> {
    let key = lock_key(prefix, refname);
    let deadline = Instant::now() + wait;
    let mut delay = Duration::from_millis(50);
    loop {
        match store.put_bytes_versioned(&key, lock_body(), PutOptions { condition: WriteCondition::IfAbsent, ..Default::default() }).await {
            Ok((etag, version)) => return Ok(RefLock { key, etag, version }),
            Err(e) if e.is_precondition_failed() => {}
            Err(e) => return Err(e.into()),
        }
        // Someone holds it. Stale? Take it over only if it is still that same lock.
        match store.head(&key).await? {
            None => continue, // released meanwhile: try to create again
            Some(info) if info.age() > ttl => {
                tracing::info!(key, age = ?info.age(), "taking over stale lock");
                let opts = PutOptions { condition: WriteCondition::IfMatch(info.etag.clone()), ..Default::default() };
                match store.put_bytes_versioned(&key, lock_body(), opts).await {
                    Ok((etag, version)) => return Ok(RefLock { key, etag, version }),
                    Err(e) if e.is_precondition_failed() || e.is_not_found() => {} // lost the takeover race
                    Err(e) => return Err(e.into()),
                }
            }
            Some(_) => {}
        }
        if Instant::now() >= deadline {
            return Err(LockError::Held { key, ttl: ttl.as_secs() });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(1000));
    }
}

/// Refreshes the lock (a conditional rewrite on its ETag), so its age stays
/// below the TTL while a long push holds it. Fails with `Lost` when someone
/// took it over.
pub(crate) async fn refresh(store: &S3Store, lock: &mut RefLock) -> Result<(), LockError> {
    let opts = PutOptions { condition: WriteCondition::IfMatch(lock.etag.clone()), ..Default::default() };
    match store.put_bytes_versioned(&lock.key, lock_body(), opts).await {
        Ok((etag, version)) => {
            lock.etag = etag;
            let replaced = std::mem::replace(&mut lock.version, version);
            // The version this refresh replaced (only ours: by its id).
            if let Some(old) = replaced.filter(|old| lock.version.as_ref() != Some(old)) {
                if let Err(e) = store.delete_version(&lock.key, &old).await {
                    tracing::info!(key = lock.key, error = %e, "could not delete the lock's previous version (git s3 doctor --prune-versions removes it)");
                }
            }
            Ok(())
        }
        Err(e) if e.is_precondition_failed() || e.is_not_found() => Err(LockError::Lost { key: lock.key.clone() }),
        Err(e) => Err(e.into()),
    }
}

/// Runs `work` while holding `lock`, refreshing it every third of the TTL
/// (at least every second). If the lock is lost, `work` is dropped
/// (cancelled) and `Lost` is returned.
pub async fn hold_while<T>(store: &S3Store, lock: &mut RefLock, ttl: Duration, work: impl std::future::Future<Output = T>) -> Result<T, LockError> {
    hold_all_while(store, std::slice::from_mut(lock), ttl, work).await
}

/// `hold_while` for several locks at once.
pub(crate) async fn hold_all_while<T>(
    store: &S3Store,
    locks: &mut [RefLock],
    ttl: Duration,
    work: impl std::future::Future<Output = T>,
) -> Result<T, LockError> {
    let period = (ttl / 3).max(Duration::from_secs(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return Ok(out),
            _ = tick.tick() => {
                for lock in locks.iter_mut() {
                    tracing::debug!(key = lock.key, "refreshing the ref lock");
                    refresh(store, lock).await?;
                }
            }
        }
    }
}

/// Takes the locks of all `refnames` (each waiting up to `wait`); on any
/// failure releases those already taken and returns the error.
pub(crate) async fn acquire_all(
    store: &S3Store,
    prefix: &str,
    refnames: &[String],
    ttl: Duration,
    wait: Duration,
) -> Result<Vec<RefLock>, LockError> {
    let mut taken = Vec::new();
    for r in refnames {
        match acquire(store, prefix, r, ttl, wait).await {
            Ok(l) => taken.push(l),
            Err(e) => {
                release_all(store, taken).await;
                return Err(e);
            }
        }
    }
    Ok(taken)
}

/// Releases every lock (best effort: a failure is logged).
pub(crate) async fn release_all(store: &S3Store, locks: Vec<RefLock>) {
    for l in locks {
        if let Err(e) = release(store, l).await {
            tracing::warn!(error = %e, "could not release a lock");
        }
    }
}

/// Releases the lock. Only deletes it when it is still ours (a lock taken
/// over after we went stale belongs to someone else).
pub async fn release(store: &S3Store, lock: RefLock) -> Result<(), StoreError> {
    if still_ours(store, &lock).await? {
        remove(store, lock).await?;
    }
    Ok(())
}

/// Whether the lock in the bucket is still this one (the first half of
/// `release`, which a caller may overlap with other work under the lock).
pub(crate) async fn still_ours(store: &S3Store, lock: &RefLock) -> Result<bool, StoreError> {
    match store.head(&lock.key).await? {
        Some(info) if info.etag == lock.etag => Ok(true),
        Some(_) => {
            tracing::warn!(key = lock.key, "lock was taken over by another client; leaving it");
            Ok(false)
        }
        None => Ok(false),
    }
}

/// Deletes the lock, found `still_ours` (the second half of `release`).
pub(crate) async fn remove(store: &S3Store, lock: RefLock) -> Result<(), StoreError> {
    match &lock.version {
        // Our version, for good: no noncurrent version, no delete marker.
        Some(v) => match store.delete_version(&lock.key, v).await {
            Err(StoreError::AccessDenied { .. }) => store.delete(&lock.key).await,
            other => other,
        },
        None => store.delete(&lock.key).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_env_names_and_default() {
        let mut env = std::collections::HashMap::new();
        assert_eq!(ttl_from_env(&env), DEFAULT_TTL);
        env.insert("GIT_REMOTE_S3_LOCK_TTL".into(), "5".into());
        assert_eq!(ttl_from_env(&env), Duration::from_secs(5));
        env.insert("GIT_REMOTE_S3_LOCK_TTL_SECONDS".into(), "7".into());
        assert_eq!(ttl_from_env(&env), Duration::from_secs(7));
    }

    #[test]
    fn lock_bodies_differ() {
        assert_ne!(lock_body(), lock_body());
        assert_eq!(lock_key("p", "refs/heads/main"), "p/refs/heads/main/LOCK#.lock");
    }
}
