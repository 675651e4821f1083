//! Which format a prefix is in, decided by what it holds: a packs manifest,
//! git-remote-s3 0.4.2 bundles under `refs/` (both: refused), or for an
//! empty prefix the caller's `git config s3.format`. Also what `refs/`
//! holds for the packs format (`PROTECTED#` markers, bundles of another tool).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::local::git::Git;
use crate::s3::store::{ObjectInfo, S3Store};
use crate::s3::url::RemoteUrl;
use crate::storage::bundles::layout;
use crate::storage::bundles::storage::read_head;
use crate::storage::packs::manifest::{self, held_fresh, read_manifest, Manifest, MANIFEST_CACHE_ENTRIES, PUSH_LIST_FRESH};
use crate::storage::StorageError;

/// A storage format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Bundles,
    Packs,
}

impl Format {
    pub(crate) fn parse(s: &str) -> Option<Format> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bundles" | "bundle" => Some(Format::Bundles),
            "packs" | "pack" => Some(Format::Packs),
            _ => None,
        }
    }
}

/// `git config s3.format` in the caller's repository (default: bundles).
pub(crate) async fn configured_format(git: &Git) -> Result<Format, StorageError> {
    match git.config_get("s3.format").await {
        None => Ok(Format::Bundles),
        Some(v) => Format::parse(&v).ok_or_else(|| StorageError::Format(format!("git config s3.format is '{v}'; it must be 'packs' or 'bundles'"))),
    }
}

/// What `<prefix>/refs/` holds: whether 0.4.2 bundles are there, and the
/// refs with a `PROTECTED#` marker.
#[derive(Debug, Default, Clone)]
pub(crate) struct RefsDir {
    pub(crate) bundle_refs: Vec<String>,
    pub(crate) markers: BTreeSet<String>,
    /// Every bundle as `(ref, sha)`.
    pub(crate) bundles: Vec<(String, String)>,
}

impl RefsDir {
    /// Whether these bundles beside `m` are what an interrupted `git s3
    /// migrate` leaves, so that reads can use the manifest: `m` frozen by a
    /// migration to bundles (its refs stay current until the migration ends,
    /// and win when it is run again), or every bundle at its ref's value in
    /// `m` (a migration to packs stopped while deleting the bundles: both
    /// formats say the same). Bundles that disagree with the manifest (0.4.2
    /// pushed into a packs prefix) are refused as before.
    pub(crate) fn left_by_migration(&self, m: &Manifest) -> bool {
        m.frozen.is_some() || self.bundles.iter().all(|(r, sha)| m.refs.get(r) == Some(sha))
    }
}

pub(crate) async fn scan_refs_dir(store: &S3Store, url: &RemoteUrl) -> Result<RefsDir, StorageError> {
    let refs = RefsDir::from_objects(url, &list_refs_dir(store, url).await?);
    note_refs_scan(store, url, &refs);
    Ok(refs)
}

/// When this daemon last found a prefix's `refs/` free of bundles, and the
/// `PROTECTED#` markers it held then.
/// Kept in the daemon's memory (`S3Store::memory`), by location.
#[derive(Clone)]
struct CleanRefsScan(std::time::Instant, BTreeSet<String>);

/// How long a clean `refs/` scan lets reads skip the listing.
const REFS_RESCAN: Duration = Duration::from_secs(60);

fn note_refs_scan(store: &S3Store, url: &RemoteUrl, refs: &RefsDir) {
    let scans = store.memory().map::<CleanRefsScan>();
    let location = store.location(&manifest::manifest_key(url));
    if refs.bundle_refs.is_empty() {
        if scans.len() >= MANIFEST_CACHE_ENTRIES {
            scans.clear();
        }
        scans.insert(location, CleanRefsScan(std::time::Instant::now(), refs.markers.clone()));
    } else {
        scans.remove(&location);
    }
}

/// Whether reads of this prefix may skip the `refs/` listing: the daemon
/// holds its manifest and listed `refs/` (clean) less than a minute ago.
fn recently_scanned_packs(store: &S3Store, url: &RemoteUrl) -> bool {
    let location = store.location(&manifest::manifest_key(url));
    manifest::is_held(store, &location) && store.memory().map::<CleanRefsScan>().get(&location).is_some_and(|t| t.0.elapsed() < REFS_RESCAN)
}

/// The `PROTECTED#` markers of this daemon's last clean `refs/` scan of the
/// prefix (none known: empty): a push's guess until its own scan answers.
pub(crate) fn last_markers(store: &S3Store, url: &RemoteUrl) -> BTreeSet<String> {
    let location = store.location(&manifest::manifest_key(url));
    store.memory().map::<CleanRefsScan>().get(&location).map(|t| t.1.clone()).unwrap_or_default()
}

/// Every object under `<prefix>/refs/`.
pub(crate) async fn list_refs_dir(store: &S3Store, url: &RemoteUrl) -> Result<Vec<ObjectInfo>, StorageError> {
    Ok(store.list(&url.key("refs/")).await?)
}

impl RefsDir {
    pub(crate) fn from_objects(url: &RemoteUrl, objects: &[ObjectInfo]) -> RefsDir {
        let scan = layout::scan(&url.prefix, objects);
        let bundles = scan.bundles.iter().flat_map(|(r, b)| b.iter().map(move |(sha, _)| (r.clone(), sha.clone()))).collect();
        RefsDir { bundle_refs: scan.bundles.keys().cloned().collect(), markers: scan.protected.into_iter().collect(), bundles }
    }
}

pub(crate) fn mixed_formats_error(url: &RemoteUrl, refs: &RefsDir) -> StorageError {
    let some: Vec<&str> = refs.bundle_refs.iter().take(3).map(String::as_str).collect();
    StorageError::Format(format!(
        "{url} holds both formats: a packs manifest ({}) and git-remote-s3 bundles (for {}); refusing to guess which is current. \
If a `git s3 migrate` was interrupted, run it again to finish it; `git s3 doctor {url}` says which one",
        manifest::manifest_key(url),
        some.join(", "),
    ))
}

/// What a prefix is, decided by what is in it.
#[allow(clippy::large_enum_variant)] // made once per session
pub(crate) enum Detected {
    /// A manifest (with its ETag), and the `refs/` scan when one was made.
    Packs(Option<(Manifest, String)>, Option<RefsDir>),
    /// The `<prefix>/refs/` listing and, when it was read beside it, the
    /// content of `<prefix>/HEAD`: what the first `list` shows.
    Bundles(Vec<ObjectInfo>, Option<Option<String>>),
}

/// What a detection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Showing the refs to a reader (`list`, a fetch, `option atomic`).
    Read,
    /// Git's `list for-push`: a push follows, whose manifest write is
    /// conditional on the ETag the listing came from.
    Push,
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
/// (bundles of another tool: refused; `PROTECTED#` markers). For a push,
/// a manifest S3 confirmed less than [`PUSH_LIST_FRESH`] ago is not even
/// read again: the push's write is conditional on its ETag.
///
/// Unless this daemon holds the prefix's manifest (a packs remote), the
/// bundle layout's `HEAD` is read in the same round trip too, so that a
/// bundles remote's `list` is one round trip: a packs remote this daemon
/// meets for the first time pays one small request that it did not need.
pub(crate) async fn detect(
    store: &S3Store,
    url: &RemoteUrl,
    default: impl std::future::Future<Output = Result<Format, StorageError>>,
    purpose: Purpose,
) -> Result<Detected, StorageError> {
    if purpose == Purpose::Push {
        // The push lists refs/ itself, beside its pack upload.
        if let Some(m) = held_fresh(store, url, PUSH_LIST_FRESH) {
            return Ok(Detected::Packs(Some(m), None));
        }
    }
    let mut head = None;
    let (manifest, listing) = if recently_scanned_packs(store, url) {
        match read_manifest(store, url).await? {
            Some(m) => return Ok(Detected::Packs(Some(m), None)),
            None => (None, list_refs_dir(store, url).await?),
        }
    } else if manifest::is_held(store, &store.location(&manifest::manifest_key(url))) {
        let (m, l) = tokio::join!(read_manifest(store, url), list_refs_dir(store, url));
        (m?, l?)
    } else {
        let (m, l, h) = tokio::join!(read_manifest(store, url), list_refs_dir(store, url), read_head(store, url));
        // A HEAD that could not be read is read again by the listing (and its error shown there).
        head = h.ok();
        (m?, l?)
    };
    let refs = RefsDir::from_objects(url, &listing);
    note_refs_scan(store, url, &refs);
    match manifest {
        Some(m) => {
            // An interrupted migration's bundles: reads use the manifest
            // (pushes still refuse both formats: `packs::push`).
            if !refs.bundle_refs.is_empty() && !refs.left_by_migration(&m.0) {
                return Err(mixed_formats_error(url, &refs));
            }
            Ok(Detected::Packs(Some(m), Some(refs)))
        }
        None if !refs.bundle_refs.is_empty() => Ok(Detected::Bundles(listing, head)),
        None => match default.await? {
            Format::Bundles => Ok(Detected::Bundles(listing, head)),
            Format::Packs => Ok(Detected::Packs(None, Some(refs))),
        },
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
    }

    #[test]
    fn bundles_of_an_interrupted_migration_are_told_from_a_conflict() {
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        let mut m = Manifest::default();
        m.refs.insert("refs/heads/main".into(), a.clone());
        m.refs.insert("refs/heads/x".into(), b.clone());
        let dir = |bundles: &[(&str, &str)]| RefsDir {
            bundle_refs: bundles.iter().map(|(r, _)| r.to_string()).collect(),
            markers: BTreeSet::new(),
            bundles: bundles.iter().map(|(r, s)| (r.to_string(), s.to_string())).collect(),
        };
        // to packs, stopped while deleting bundles: they agree with the manifest
        assert!(dir(&[("refs/heads/main", &a)]).left_by_migration(&m));
        // 0.4.2 pushed a new value, or a ref the manifest lacks: a conflict
        assert!(!dir(&[("refs/heads/main", &b)]).left_by_migration(&m));
        assert!(!dir(&[("refs/heads/main", &a), ("refs/heads/new", &a)]).left_by_migration(&m));
        // to bundles, stopped after the freeze: the manifest is current
        m.frozen = Some("migrating to bundles".into());
        assert!(dir(&[("refs/heads/main", &b), ("refs/heads/new", &a)]).left_by_migration(&m));
    }
}
