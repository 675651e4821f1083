//! Does the store enforce conditional writes? Both formats stand on them
//! (`If-None-Match: *` takes a ref's lock or creates a manifest, `If-Match`
//! replaces the manifest only if nobody else did): a store that accepts the
//! headers and ignores them lets two concurrent pushes both report success
//! while one of them is lost. So before the first write to a bucket the
//! daemon probes it (once per endpoint and bucket, remembered in its state
//! for a day) and refuses every write to a store that does not enforce them.
//! A store found to enforce them is also remembered on disk
//! (`<state>/conditional-writes/`, for the same day), so a daemon that
//! exited when idle, or was restarted, does not probe again at its first
//! push; a refusal is not, so a restart probes a fixed store again.
//!
//! The probe: a key under the remote's prefix (`<prefix>/.git-s3/…`),
//! created with `If-None-Match: *`, created again (must be refused: 412, or
//! 409 ConditionalRequestConflict), written with a stale `If-Match` (must be
//! refused too), then deleted: four requests, once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;

use super::clients::redact_userinfo;
use super::store::{Conditional, S3Store, StoreError, WriteCondition, WriteGate, CONFLICT_ATTEMPTS};

/// A verdict is probed again after this long.
pub(crate) const RECHECK_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Where the documentation explains the refusal.
pub(crate) const DOC_ANCHOR: &str = "docs/configuration.md#conditional-writes";

/// The caller's override: writes go ahead on a store that does not enforce
/// conditional writes (a single writer), with a warning on every session
/// that writes.
pub(crate) const UNSAFE_ENV: &str = "GIT_S3_UNSAFE_NO_CONDITIONAL_WRITES";

/// The tracing target of warnings that reach the caller's terminal whatever
/// the verbosity (`server/logging.rs`).
pub(crate) const USER_WARNING_TARGET: &str = "git_s3_daemon::user_warning";

/// What the probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Both conditions are enforced: writes go ahead.
    Enforced,
    /// The store accepted a write whose `header` condition was false.
    Ignored { header: &'static str },
    /// The store answered `501 NotImplemented` to `header`.
    NotImplemented { header: &'static str },
}

impl Verdict {
    pub(crate) fn enforced(&self) -> bool {
        *self == Verdict::Enforced
    }

    /// `enforced`, `ignored`, `not-implemented` (for `--json`).
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Verdict::Enforced => "enforced",
            Verdict::Ignored { .. } => "ignored",
            Verdict::NotImplemented { .. } => "not-implemented",
        }
    }

    /// The header the store fails on.
    pub(crate) fn header(&self) -> Option<&'static str> {
        match self {
            Verdict::Enforced => None,
            Verdict::Ignored { header } | Verdict::NotImplemented { header } => Some(header),
        }
    }

    /// A line for `git s3 status` / `doctor`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Verdict::Enforced => "enforced (If-None-Match and If-Match)".to_string(),
            Verdict::Ignored { header } => format!("NOT enforced: {header} is accepted and ignored; writes are refused"),
            Verdict::NotImplemented { header } => format!("not supported: {header} is answered 501 NotImplemented; writes are refused"),
        }
    }
}

/// A remembered probe.
#[derive(Debug, Clone)]
pub(crate) struct Probed {
    pub(crate) verdict: Verdict,
    /// When it was probed (wall clock, for display).
    pub(crate) at: SystemTime,
    checked: Instant,
}

impl Probed {
    fn fresh(&self) -> bool {
        self.checked.elapsed() < RECHECK_AFTER
    }
}

/// One (endpoint, bucket): what is known, and one probe at a time.
#[derive(Default)]
struct Slot {
    known: Mutex<Option<Probed>>,
    probing: tokio::sync::Mutex<()>,
}

impl Slot {
    fn fresh(&self) -> Option<Probed> {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).clone().filter(Probed::fresh)
    }
}

/// The daemon's probes, by (endpoint, bucket). Lives in `DaemonState`.
#[derive(Default)]
pub(crate) struct ConditionalWrites {
    slots: DashMap<(String, String), Arc<Slot>>,
    /// Where enforcing stores are remembered across restarts (None: memory only).
    dir: Option<PathBuf>,
}

/// An enforcing store remembered on disk.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    endpoint: String,
    bucket: String,
    /// Seconds since the epoch.
    probed_at: u64,
}

impl ConditionalWrites {
    /// Remembers enforcing stores in `dir` too (the daemon's state).
    pub(crate) fn remembering_in(dir: PathBuf) -> ConditionalWrites {
        ConditionalWrites { slots: DashMap::new(), dir: Some(dir) }
    }

    fn slot(&self, endpoint: &str, bucket: &str) -> Arc<Slot> {
        self.slots.entry((endpoint.to_string(), bucket.to_string())).or_default().clone()
    }

    /// What the last probe of (endpoint, bucket) found, if it is fresh: in
    /// memory, else on disk.
    pub(crate) async fn remembered(&self, endpoint: &str, bucket: &str) -> Option<Probed> {
        let slot = self.slot(endpoint, bucket);
        match slot.fresh() {
            Some(p) => Some(p),
            None => self.load(&slot, endpoint, bucket).await,
        }
    }

    /// The record of (endpoint, bucket) on disk, if fresh, into `slot`.
    async fn load(&self, slot: &Slot, endpoint: &str, bucket: &str) -> Option<Probed> {
        let path = self.dir.as_ref()?.join(record_name(endpoint, bucket));
        let data = match crate::local::files::blocking(move || std::fs::read(path)).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::debug!(error = %e, "the conditional-write record is unreadable; probing");
                return None;
            }
        };
        let r: Record = serde_json::from_slice(&data).ok().filter(|r: &Record| r.endpoint == endpoint && r.bucket == bucket)?;
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(r.probed_at);
        let age = SystemTime::now().duration_since(at).ok().filter(|a| *a < RECHECK_AFTER)?;
        let probed = Probed { verdict: Verdict::Enforced, at, checked: Instant::now().checked_sub(age)? };
        *slot.known.lock().unwrap_or_else(|p| p.into_inner()) = Some(probed.clone());
        tracing::debug!(endpoint, bucket, seconds_ago = age.as_secs(), "conditional writes enforced (remembered from an earlier daemon)");
        Some(probed)
    }

    /// Remembers an enforcing store on disk (a failure only costs a probe).
    async fn save(&self, endpoint: &str, bucket: &str, at: SystemTime) {
        let Some(dir) = self.dir.clone() else { return };
        let probed_at = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        let record = Record { endpoint: endpoint.to_string(), bucket: bucket.to_string(), probed_at };
        let name = record_name(endpoint, bucket);
        let saved = match serde_json::to_vec(&record) {
            Ok(body) => crate::local::files::blocking(move || crate::local::files::write_atomic(&dir, &name, &body)).await,
            Err(e) => Err(std::io::Error::other(e)),
        };
        if let Err(e) = saved {
            tracing::debug!(error = %e, "the conditional-write verdict is not remembered on disk");
        }
    }

    /// The verdict for the store's bucket at `endpoint`: remembered, or
    /// probed now under `prefix` (concurrent callers wait for one probe).
    /// A probe that fails (network, access) is not remembered.
    pub(crate) async fn verdict(&self, store: &S3Store, endpoint: &str, prefix: &str) -> Result<Probed, StoreError> {
        let slot = self.slot(endpoint, store.bucket());
        if let Some(p) = slot.fresh() {
            return Ok(p);
        }
        let _one = slot.probing.lock().await;
        if let Some(p) = slot.fresh() {
            return Ok(p);
        }
        if let Some(p) = self.load(&slot, endpoint, store.bucket()).await {
            return Ok(p);
        }
        let verdict = probe(store, prefix).await?;
        match verdict {
            Verdict::Enforced => tracing::info!(endpoint, bucket = store.bucket(), "the store enforces conditional writes"),
            v => tracing::warn!(
                endpoint,
                bucket = store.bucket(),
                verdict = v.code(),
                header = v.header(),
                "the store does not enforce conditional writes; writes are refused"
            ),
        }
        let probed = Probed { verdict, at: SystemTime::now(), checked: Instant::now() };
        *slot.known.lock().unwrap_or_else(|p| p.into_inner()) = Some(probed.clone());
        if verdict.enforced() {
            self.save(endpoint, store.bucket(), probed.at).await;
        }
        Ok(probed)
    }
}

/// The file of (endpoint, bucket)'s record: a hash (no endpoint or bucket
/// name in a file name).
fn record_name(endpoint: &str, bucket: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(format!("{endpoint}\n{bucket}").as_bytes())[..16])
}

/// The endpoint a store's probe is remembered under (no credentials in it).
pub(crate) fn endpoint_of(store: &S3Store) -> String {
    redact_userinfo(store.origin())
}

/// The one-line refusal of a write.
pub(crate) fn refusal(endpoint: &str, bucket: &str, verdict: Verdict) -> String {
    let store = if endpoint == "aws" { format!("s3://{bucket}") } else { format!("{endpoint} (bucket {bucket})") };
    match verdict {
        Verdict::Enforced => String::new(),
        Verdict::Ignored { header } => format!(
            "refusing to write: {store} does not enforce {header} (conditional writes); concurrent pushes could be lost. See {DOC_ANCHOR}"
        ),
        Verdict::NotImplemented { header } => format!(
            "refusing to write: {store} does not support {header} (conditional writes; it answers 501 NotImplemented); concurrent pushes could be lost. See {DOC_ANCHOR}"
        ),
    }
}

/// The warning of a write made anyway ([`UNSAFE_ENV`]).
pub(crate) fn unsafe_warning(endpoint: &str, bucket: &str, verdict: Verdict) -> String {
    let store = if endpoint == "aws" { format!("s3://{bucket}") } else { format!("{endpoint} (bucket {bucket})") };
    format!(
        "git-s3: writing although {store} does not enforce {} (conditional writes), because {UNSAFE_ENV} is set: a push made while another one runs can be lost without an error. See {DOC_ANCHOR}",
        verdict.header().unwrap_or("them")
    )
}

/// True when the caller's environment sets [`UNSAFE_ENV`].
pub(crate) fn unsafe_allowed(env: &std::collections::HashMap<String, String>) -> bool {
    matches!(env.get(UNSAFE_ENV).map(|v| v.trim().to_ascii_lowercase()).as_deref(), Some("1" | "true" | "yes"))
}

/// The write gate of a remote's store (one per session): probes before the
/// first write.
pub(crate) struct Gate {
    pub(crate) writes: Arc<ConditionalWrites>,
    /// The endpoint as the caller configured it (`aws`: AWS S3).
    pub(crate) endpoint: String,
    /// The remote's prefix: the probe's key goes under it.
    pub(crate) prefix: String,
    /// The caller set [`UNSAFE_ENV`]: write anyway, with a warning.
    pub(crate) allow_unsafe: bool,
    /// The warning was given (once per session).
    pub(crate) warned: std::sync::atomic::AtomicBool,
}

impl WriteGate for Gate {
    fn check<'a>(&'a self, store: &'a S3Store) -> futures::future::BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let probed = self.writes.verdict(store, &self.endpoint, &self.prefix).await?;
            if probed.verdict.enforced() {
                Ok(())
            } else if self.allow_unsafe {
                if !self.warned.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    tracing::warn!(target: USER_WARNING_TARGET, "{}", unsafe_warning(&self.endpoint, store.bucket(), probed.verdict));
                }
                Ok(())
            } else {
                Err(StoreError::WritesRefused(refusal(&self.endpoint, store.bucket(), probed.verdict)))
            }
        })
    }
}

fn nonce() -> u64 {
    fastrand::u64(..)
}

/// The probe's key under `prefix`.
pub(crate) fn probe_key(prefix: &str, nonce: u64) -> String {
    format!("{prefix}/.git-s3/conditional-write-probe-{nonce:016x}")
}

/// Probes the store (writes through `store` as it is: give it no gate).
/// Errors other than the answers the probe looks for are returned.
pub(crate) async fn probe(store: &S3Store, prefix: &str) -> Result<Verdict, StoreError> {
    let n = nonce();
    let key = probe_key(prefix, n);
    let body = |step: &str| format!("git-s3 conditional-write probe {n:016x}: {step}\n").into_bytes();
    // 1. Create. A 409 is another operation on the key: try again. A 412
    //    is our own create landing twice (a retry after a lost answer).
    let mut attempt = 1;
    loop {
        match store.put_once(&key, body("create"), &WriteCondition::IfAbsent).await {
            Ok(_) => break,
            Err(StoreError::NotImplemented { .. }) => return Ok(Verdict::NotImplemented { header: "If-None-Match" }),
            Err(e) if e.is_conflict() && attempt < CONFLICT_ATTEMPTS => attempt += 1,
            Err(e) if e.is_precondition_failed() => match store.get_small_if_changed(&key, None).await {
                Ok(Conditional::Found { data, .. }) if data == body("create") => break,
                _ => return Err(e),
            },
            Err(e) => return Err(e),
        }
    }
    let verdict = refusals(store, &key, &body).await;
    if let Err(e) = store.delete(&key).await {
        tracing::warn!(key, error = %e, "could not delete the conditional-write probe");
    }
    verdict
}

/// Steps 2 and 3: the second create and the stale `If-Match` must be refused.
async fn refusals(store: &S3Store, key: &str, body: &(dyn Fn(&str) -> Vec<u8> + Sync)) -> Result<Verdict, StoreError> {
    let steps: [(&'static str, &str, WriteCondition); 2] = [
        ("If-None-Match", "create again", WriteCondition::IfAbsent),
        // No object has this ETag (an MD5 is 32 hex digits).
        ("If-Match", "stale If-Match", WriteCondition::IfMatch("\"00000000000000000000000000000000\"".to_string())),
    ];
    for (header, step, condition) in steps {
        match store.put_once(key, body(step), &condition).await {
            Ok(_) => return Ok(Verdict::Ignored { header }),
            Err(e) if e.is_precondition_failed() || e.is_conflict() => {}
            Err(StoreError::NotImplemented { .. }) => return Ok(Verdict::NotImplemented { header }),
            Err(e) => return Err(e),
        }
    }
    Ok(Verdict::Enforced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_is_one_line_naming_the_store_and_the_header() {
        let line = refusal("http://minio.internal:9000", "b", Verdict::Ignored { header: "If-None-Match" });
        assert_eq!(
            line,
            "refusing to write: http://minio.internal:9000 (bucket b) does not enforce If-None-Match (conditional writes); concurrent pushes could be lost. See docs/configuration.md#conditional-writes"
        );
        let line = refusal("aws", "b", Verdict::NotImplemented { header: "If-Match" });
        assert!(line.starts_with("refusing to write: s3://b does not support If-Match") && !line.contains('\n'), "{line}");
    }

    #[test]
    fn a_verdict_is_fresh_for_a_day() {
        let now = Probed { verdict: Verdict::Enforced, at: SystemTime::now(), checked: Instant::now() };
        assert!(now.fresh());
        if let Some(old) = Instant::now().checked_sub(RECHECK_AFTER + Duration::from_secs(1)) {
            assert!(!Probed { checked: old, ..now }.fresh());
        }
    }

    #[tokio::test]
    async fn an_enforcing_store_is_remembered_by_the_next_daemon_for_a_day() {
        let dir = tempfile::tempdir().unwrap();
        let first = ConditionalWrites::remembering_in(dir.path().to_path_buf());
        first.save("http://e", "b", SystemTime::now()).await;
        let next = ConditionalWrites::remembering_in(dir.path().to_path_buf());
        let p = next.remembered("http://e", "b").await.expect("remembered");
        assert!(p.verdict.enforced() && p.fresh());
        assert!(next.remembered("http://e", "other").await.is_none(), "another bucket");
        assert!(next.remembered("http://f", "b").await.is_none(), "another endpoint");
        assert!(ConditionalWrites::default().remembered("http://e", "b").await.is_none(), "memory only");
        let stale = SystemTime::now() - RECHECK_AFTER - Duration::from_secs(60);
        first.save("http://e", "old", stale).await;
        assert!(ConditionalWrites::remembering_in(dir.path().to_path_buf()).remembered("http://e", "old").await.is_none(), "older than a day");
        std::fs::write(dir.path().join(record_name("http://e", "bad")), b"{not json").unwrap();
        assert!(next.remembered("http://e", "bad").await.is_none(), "a damaged record is a probe");
    }

    #[test]
    fn probe_keys_stay_out_of_refs() {
        assert_eq!(probe_key("p/q", 0xab), "p/q/.git-s3/conditional-write-probe-00000000000000ab");
    }
}
