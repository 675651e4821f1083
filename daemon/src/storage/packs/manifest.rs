//! The packs format's manifest: `<prefix>/.git-s3/manifest.json`, the one
//! object that names the remote's refs, HEAD, protected refs and packs. It
//! is only ever replaced by a conditional write on its ETag, so a push of
//! several refs is one atomic step and concurrent pushers cannot lose each
//! other's updates. Also: reading it (a conditional GET against the ETag
//! this daemon holds) and editing it (a conditional write, retried).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::local::oid::ObjectFormat;
use crate::local::refname::valid_ref_name;
use crate::s3::retry::Backoff;
use crate::s3::store::{Conditional, PutOptions, S3Store, WriteCondition};
use crate::s3::url::RemoteUrl;
use crate::storage::crypt;
use crate::storage::StorageError;

/// Everything of the packs format lives below `<prefix>/.git-s3/`, which the
/// 0.4.2 bundle layout (`<prefix>/HEAD`, `<prefix>/refs/…`) never uses.
pub(crate) const META_DIR: &str = ".git-s3";
pub(crate) const MANIFEST_NAME: &str = "manifest.json";
pub(crate) const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the manifest has version {0}; this git-s3 understands version {VERSION} (upgrade git-s3)")]
    Version(u32),
    #[error("the manifest is invalid: {0}")]
    Invalid(String),
}

/// One pack in the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    /// The pack's hash (`pack-<name>.pack` / `.idx`).
    pub name: String,
    /// Bytes of the `.pack`.
    pub size: u64,
    /// Bytes of the `.idx`.
    #[serde(default)]
    pub idx_size: u64,
    /// Objects in the pack.
    #[serde(default)]
    pub objects: u64,
    /// The commits/tags the pack was made for: when all are present locally,
    /// the pack's objects are too (it holds what they reach minus what the
    /// remote had before).
    #[serde(default)]
    pub tips: Vec<String>,
    /// Unix seconds when the pack was added.
    #[serde(default)]
    pub created: u64,
    /// In an encrypted remote: the generation of the remote key that named
    /// and encrypted the pack and its `.idx` (`storage/crypt/keyring.rs`);
    /// absent: the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<u32>,
    /// Bytes of the pack's object map (`pack-<name>.map`: where its blobs
    /// lie, for lazy fetches, `object_map.rs`); 0 (absent) when it has none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub map_size: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// Incremented by every write: how many updates the manifest has seen.
    #[serde(default)]
    pub serial: u64,
    /// ref name → sha.
    #[serde(default)]
    pub refs: BTreeMap<String, String>,
    /// The ref the remote HEAD names.
    #[serde(default)]
    pub head: Option<String>,
    #[serde(default)]
    pub packs: Vec<PackEntry>,
    /// Refs for which force pushes and deletions are refused.
    #[serde(default)]
    pub protected: BTreeSet<String>,
    /// Packs replaced by a compaction (`git s3 gc`), kept in the bucket
    /// until their grace period ends: readers of an older manifest may still
    /// be downloading them.
    #[serde(default)]
    pub retired: Vec<RetiredPack>,
    /// Set by `git s3 migrate --to bundles` before it starts writing
    /// bundles: pushes and manifest edits are refused from then on, so no
    /// update can land in a manifest that is about to be deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen: Option<String>,
    /// Extra packs for shallow and partial clones (see `Views`), written by
    /// `git s3 gc`. Optional: a remote without them is served whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<Views>,
    /// The repository's object format; absent means SHA-1 (every manifest
    /// written before SHA-256 support). Set by the first push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_format: Option<ObjectFormat>,
}

/// Packs that hold parts of the repository, so that a shallow or partial
/// clone downloads about what it asked for rather than every pack:
/// - `skeleton`: every commit, tree and annotated tag the refs reached
///   (no blobs): the history of a `--filter=blob:none` clone;
/// - `tips`: each branch tip's commit and full tree, blobs included: a
///   `--depth 1` clone, or the checkout after a blob:none clone.
///
/// They were made from the packs named in `covers`; a pack added later (by
/// a push) is not in them, so a reader of the views also downloads every
/// pack of `packs` that `covers` does not name. Views packs are stored like
/// packs (`packs/pack-<name>.pack`/`.idx`) and never thin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Views {
    pub covers: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skeleton: Option<PackEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tips: Option<PackEntry>,
    /// Unix seconds when the views were made.
    #[serde(default)]
    pub created: u64,
    /// What the views were extended by since, oldest first (see
    /// `ViewsIncrement`). Optional: a reader that does not know this field
    /// reads `skeleton`, `tips` and every pack `covers` does not name, which
    /// is still the whole of what it needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub increments: Vec<ViewsIncrement>,
}

/// Views extended after a push without rewriting them: the commits and
/// trees the refs reach that the skeleton (and earlier increments) lack,
/// and the objects of the moved branch tips' trees that the tips pack (and
/// earlier increments) lack. `covers` names the packs it was made from;
/// each view pack's `tips` are the commits it was made for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewsIncrement {
    pub covers: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skeleton: Option<PackEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tips: Option<PackEntry>,
    /// Unix seconds when the increment was made.
    #[serde(default)]
    pub created: u64,
}

impl Views {
    /// The views' own packs, increments included.
    pub(crate) fn packs(&self) -> impl Iterator<Item = &PackEntry> {
        self.skeleton.iter().chain(self.tips.iter()).chain(self.increments.iter().flat_map(|i| i.skeleton.iter().chain(i.tips.iter())))
    }

    /// Whether the views (or an increment) were made from pack `name`.
    pub(crate) fn covers_pack(&self, name: &str) -> bool {
        self.covers.contains(name) || self.increments.iter().any(|i| i.covers.contains(name))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredPack {
    pub name: String,
    /// Unix seconds when the pack left `packs`.
    pub since: u64,
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            version: VERSION,
            serial: 0,
            refs: BTreeMap::new(),
            head: None,
            packs: Vec::new(),
            protected: BTreeSet::new(),
            retired: Vec::new(),
            frozen: None,
            views: None,
            object_format: None,
        }
    }
}

/// Pack names are what `git pack-objects` prints: a hash of the repository's format.
pub(crate) fn is_pack_name(s: &str) -> bool {
    crate::local::oid::is_object_id(s)
}

impl Manifest {
    pub fn parse(data: &[u8]) -> Result<Manifest, ManifestError> {
        let m: Manifest = serde_json::from_slice(data)?;
        if m.version != VERSION {
            return Err(ManifestError::Version(m.version));
        }
        let format = m.format();
        let is_sha = |s: &str| format.accepts(s);
        let is_pack_name = |s: &str| format.accepts(s);
        for (name, sha) in &m.refs {
            if !name.starts_with("refs/") || !valid_ref_name(name) {
                return Err(ManifestError::Invalid(format!("bad ref name {name:?}")));
            }
            if !is_sha(sha) {
                return Err(ManifestError::Invalid(format!("bad sha {sha:?} for {name}")));
            }
        }
        if let Some(p) = m.protected.iter().find(|p| !p.starts_with("refs/") || !valid_ref_name(p)) {
            return Err(ManifestError::Invalid(format!("bad protected ref name {p:?}")));
        }
        if let Some(h) = m.head.as_ref().filter(|h| !h.starts_with("refs/") || !valid_ref_name(h)) {
            return Err(ManifestError::Invalid(format!("bad HEAD {h:?}")));
        }
        let mut seen = BTreeSet::new();
        for p in &m.packs {
            if !is_pack_name(&p.name) {
                return Err(ManifestError::Invalid(format!("bad pack name {:?}", p.name)));
            }
            if !seen.insert(p.name.as_str()) {
                return Err(ManifestError::Invalid(format!("pack {} listed twice", p.name)));
            }
            if let Some(t) = p.tips.iter().find(|t| !is_sha(t)) {
                return Err(ManifestError::Invalid(format!("bad tip {t:?} for pack {}", p.name)));
            }
        }
        if let Some(r) = m.retired.iter().find(|r| !is_pack_name(&r.name)) {
            return Err(ManifestError::Invalid(format!("bad retired pack name {:?}", r.name)));
        }
        if let Some(v) = &m.views {
            if let Some(p) = v.packs().find(|p| !is_pack_name(&p.name)) {
                return Err(ManifestError::Invalid(format!("bad views pack name {:?}", p.name)));
            }
            if let Some(c) = v.covers.iter().chain(v.increments.iter().flat_map(|i| i.covers.iter())).find(|c| !is_pack_name(c)) {
                return Err(ManifestError::Invalid(format!("bad covered pack name {c:?}")));
            }
        }
        Ok(m)
    }

    /// The remote's object format: as recorded; else SHA-1, unless the
    /// manifest's ids are SHA-256 ones (written by a git-s3 from before
    /// `object_format`), which `parse` then checks are all of one format.
    pub(crate) fn format(&self) -> ObjectFormat {
        let first_id = self.refs.values().chain(self.packs.iter().map(|p| &p.name)).next();
        self.object_format.or_else(|| first_id.and_then(|id| ObjectFormat::of(id))).unwrap_or_default()
    }

    /// `format()`, or None for an empty remote that records no format (its
    /// first push sets it).
    pub(crate) fn known_format(&self) -> Option<ObjectFormat> {
        self.object_format.or_else(|| (!self.refs.is_empty() || !self.packs.is_empty()).then(|| self.format()))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain maps/strings/numbers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The HEAD ref, when it names an existing ref.
    pub(crate) fn live_head(&self) -> Option<&String> {
        self.head.as_ref().filter(|h| self.refs.contains_key(*h))
    }

    /// The refusal for an update while a migration holds the manifest frozen.
    pub(crate) fn frozen_error(&self, url: &RemoteUrl) -> Option<String> {
        self.frozen.as_ref().map(|why| {
            format!(
                "{url} is being migrated to the bundles format ({why}); try again once it has finished. \
If no migration is running (one was interrupted), finish it with `git s3 migrate --to bundles {url}`"
            )
        })
    }

    pub fn pack_bytes(&self) -> u64 {
        // Saturating: the numbers come from the bucket.
        self.packs.iter().fold(0u64, |t, p| t.saturating_add(p.size).saturating_add(p.idx_size))
    }

    /// The packs a reader may use now: `packs` and the views' packs.
    pub(crate) fn live_packs(&self) -> impl Iterator<Item = &PackEntry> {
        self.packs.iter().chain(self.views.iter().flat_map(|v| v.packs()))
    }

    /// [`Manifest::live_packs`], to edit.
    pub(crate) fn live_packs_mut(&mut self) -> impl Iterator<Item = &mut PackEntry> {
        self.packs.iter_mut().chain(self.views.iter_mut().flat_map(|v| {
            v.skeleton.iter_mut().chain(v.tips.iter_mut()).chain(v.increments.iter_mut().flat_map(|i| i.skeleton.iter_mut().chain(i.tips.iter_mut())))
        }))
    }

    /// The names of every pack the manifest references (live or retired):
    /// what gc must not delete as unreferenced.
    pub(crate) fn referenced_pack_names(&self) -> BTreeSet<&str> {
        self.live_packs().map(|p| p.name.as_str()).chain(self.retired.iter().map(|r| r.name.as_str())).collect()
    }

    /// The packs the views do not cover (all of them without views).
    pub(crate) fn uncovered(&self) -> impl Iterator<Item = &PackEntry> {
        self.packs.iter().filter(move |p| !self.views.as_ref().is_some_and(|v| v.covers_pack(&p.name)))
    }
}

pub(crate) fn manifest_key(url: &RemoteUrl) -> String {
    url.key(&format!("{META_DIR}/{MANIFEST_NAME}"))
}

pub(crate) fn packs_dir(url: &RemoteUrl) -> String {
    url.key(&format!("{META_DIR}/packs/"))
}

pub(crate) fn pack_key(url: &RemoteUrl, name: &str) -> String {
    url.key(&format!("{META_DIR}/packs/pack-{name}.pack"))
}

/// (The `.idx` and object map of a plaintext remote: `storage::object_key`.)
#[cfg(test)]
pub(crate) fn idx_key(url: &RemoteUrl, name: &str) -> String {
    url.key(&format!("{META_DIR}/packs/pack-{name}.idx"))
}

/// Conditional writes tried by a manifest edit (`edit_manifest`: branch
/// deletion, protection, gc, doctor's repairs, migration) before it gives up with "the
/// manifest kept changing; try again", and by a push's `repo.zip` write. A
/// push's own manifest write has its bound, `PUSH_ATTEMPTS` (push.rs), and
/// never answers `fetch first` for a lost race.
pub(crate) const MAX_ATTEMPTS: u32 = 12;

/// Manifests this daemon has read or written, by location, with their ETag
/// and when S3 last confirmed them: a later read is a conditional GET
/// against the ETag (`If-None-Match`), which S3 answers with a bodiless 304
/// when nothing changed.
/// Kept in the daemon's memory (`S3Store::memory`), by location.
#[derive(Clone)]
struct Held(String, std::sync::Arc<Manifest>, std::time::Instant);

type HeldManifests = std::sync::Arc<dashmap::DashMap<String, Held>>;

fn manifests(store: &S3Store) -> HeldManifests {
    store.memory().map::<Held>()
}

/// How long after S3 last confirmed a held manifest (a read, or this
/// daemon's own write) it answers a push's `list for-push` without a read.
/// The push's manifest write stays conditional on that ETag, so a manifest
/// changed since is never overwritten: the push re-reads it and decides
/// again. Only git's own view of the remote can be this old.
pub(crate) const PUSH_LIST_FRESH: Duration = Duration::from_secs(60);

/// Manifests kept for conditional reads (beyond it the map starts over).
pub(crate) const MANIFEST_CACHE_ENTRIES: usize = 256;

/// The manifest and its ETag, or None when the prefix has none.
pub(crate) async fn read_manifest(store: &S3Store, url: &RemoteUrl) -> Result<Option<(Manifest, String)>, StorageError> {
    let key = manifest_key(url);
    let cache = manifests(store);
    let location = store.location(&key);
    let cached = cache.get(&location).map(|c| c.value().clone());
    let asked = std::time::Instant::now();
    match store.get_small_if_changed(&key, cached.as_ref().map(|c| c.0.as_str())).await? {
        Conditional::Missing => {
            cache.remove(&location);
            Ok(None)
        }
        Conditional::NotModified => match cached {
            Some(Held(etag, m, _)) => {
                if let Some(mut held) = cache.get_mut(&location).filter(|h| h.0 == etag) {
                    held.2 = asked;
                }
                Ok(Some((Manifest::clone(&m), etag)))
            }
            None => Err(StorageError::Corrupt(format!("s3://{}/{key}: 304 Not Modified to an unconditional read", store.bucket()))),
        },
        Conditional::Found { data, etag } => {
            let data = plaintext_of(store, url, data)?;
            let m = Manifest::parse(&data).map_err(|e| StorageError::Corrupt(format!("s3://{}/{key}: {e}", store.bucket())))?;
            if crypt::opened(store, url).is_some() {
                // An encrypted manifest's serial is authenticated: one older
                // than this machine has seen is a rollback (issue 22).
                crypt::rollback::witness(store, &location, &url.to_string(), m.serial).await?;
            }
            hold_at(&cache, location, &etag, &m, asked);
            Ok(Some((m, etag)))
        }
    }
}

/// The manifest's JSON from the object's bytes: an encrypted remote's is
/// an age file, decrypted with the key this daemon opened (issue 22).
fn plaintext_of(store: &S3Store, url: &RemoteUrl, data: Vec<u8>) -> Result<Vec<u8>, StorageError> {
    match (crypt::is_age(&data), crypt::opened(store, url)) {
        (false, None) => Ok(data),
        (true, Some(k)) => Ok(crypt::codec::decrypt_bytes(&k, &data, &format!("s3://{}/{}", store.bucket(), manifest_key(url)))?),
        (true, None) => Err(crypt::CryptError::NotOpened(url.to_string()).into()),
        (false, Some(_)) => Err(StorageError::Corrupt(format!(
            "s3://{}/{}: the remote has a keyring but its manifest is plaintext; refusing it (replaced? or a `git s3 migrate --decrypt` is finishing: try again, and if it was interrupted run it again)",
            store.bucket(),
            manifest_key(url)
        ))),
    }
}

/// The bytes a manifest is written as: its JSON, padded and encrypted to
/// the remote key when the remote is encrypted (issue 22).
pub(crate) fn encode(store: &S3Store, url: &RemoteUrl, m: &Manifest) -> Result<Vec<u8>, StorageError> {
    match crypt::opened(store, url) {
        // Padded with JSON whitespace: its size tells only a bucket of sizes.
        Some(k) => Ok(crypt::codec::encrypt_padded(&[k.recipient()], &m.to_bytes(), b'\n')?),
        None => Ok(m.to_bytes()),
    }
}

fn hold_at(cache: &HeldManifests, location: String, etag: &str, m: &Manifest, confirmed: std::time::Instant) {
    if etag.is_empty() {
        cache.remove(&location);
        return;
    }
    if cache.len() >= MANIFEST_CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(location, Held(etag.to_string(), std::sync::Arc::new(m.clone()), confirmed));
}

/// Holds the manifest this daemon has just written (`etag`: what the write
/// answered), as a read would have: the next read is a 304. An encrypted
/// remote's serial is recorded as seen (`crypt::rollback`).
pub(crate) async fn hold_written(store: &S3Store, url: &RemoteUrl, etag: &str, m: &Manifest, written_since: std::time::Instant) {
    let location = store.location(&manifest_key(url));
    hold_at(&manifests(store), location.clone(), etag, m, written_since);
    note_written(store, url, &location, m.serial).await;
}

/// Records the serial of a manifest this daemon wrote as seen, for an
/// encrypted remote. It was written over the one it read (checked then),
/// so it is the highest: a failure is only logged.
pub(crate) async fn note_written(store: &S3Store, url: &RemoteUrl, location: &str, serial: u64) {
    if crypt::opened(store, url).is_some() {
        if let Err(e) = crypt::rollback::witness(store, location, &url.to_string(), serial).await {
            tracing::warn!(error = %e, "the manifest serial written was not recorded");
        }
    }
}

/// Forgets the held manifest of `url` (before writing or deleting it other
/// than through [`hold_written`]): the next read is unconditional.
pub(crate) fn forget_held(store: &S3Store, url: &RemoteUrl) {
    manifests(store).remove(&store.location(&manifest_key(url)));
}

/// The manifest held for `url` and its ETag, if S3 confirmed it less than
/// `fresh` ago (see [`PUSH_LIST_FRESH`]).
pub(crate) fn held_fresh(store: &S3Store, url: &RemoteUrl, fresh: Duration) -> Option<(Manifest, String)> {
    held_fresh_at(&manifests(store), &store.location(&manifest_key(url)), fresh)
}

fn held_fresh_at(cache: &HeldManifests, location: &str, fresh: Duration) -> Option<(Manifest, String)> {
    let held = cache.get(location)?.value().clone();
    (held.2.elapsed() < fresh).then(|| (Manifest::clone(&held.1), held.0))
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The pause between manifest attempts: 40–80 ms after the first, growing
/// to 300–600 ms.
const MANIFEST_BACKOFF: Backoff = Backoff::new(Duration::from_millis(80), Duration::from_millis(600));

/// Randomized, growing pause between manifest attempts.
pub(crate) fn backoff(attempt: u32) -> Duration {
    MANIFEST_BACKOFF.delay(attempt)
}

/// Whether this daemon holds the manifest at `location` (read before).
pub(crate) fn is_held(store: &S3Store, location: &str) -> bool {
    manifests(store).contains_key(location)
}

/// Applies `edit` to the manifest with a conditional write, re-reading and
/// re-applying on a lost race. `edit` returns whether it changed anything.
/// Returns the manifest as written (or as found, when unchanged).
pub(crate) async fn update_manifest<F>(store: &S3Store, url: &RemoteUrl, edit: F) -> Result<Manifest, StorageError>
where
    F: FnMut(&mut Manifest) -> Result<bool, StorageError>,
{
    edit_manifest(store, url, false, edit).await
}

/// [`update_manifest`]; `frozen_ok` lets a migration edit a frozen manifest.
pub(super) async fn edit_manifest<F>(store: &S3Store, url: &RemoteUrl, frozen_ok: bool, mut edit: F) -> Result<Manifest, StorageError>
where
    F: FnMut(&mut Manifest) -> Result<bool, StorageError>,
{
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        let Some((mut m, etag)) = read_manifest(store, url).await? else {
            return Err(StorageError::Format(format!("{url} has no packs manifest (it is in the bundles format, or empty)")));
        };
        if let Some(msg) = m.frozen_error(url).filter(|_| !frozen_ok) {
            return Err(StorageError::Format(msg));
        }
        if !edit(&mut m)? {
            return Ok(m);
        }
        m.serial += 1;
        let opts = PutOptions { condition: WriteCondition::IfMatch(etag), ..Default::default() };
        let sent = std::time::Instant::now();
        match store.put_bytes(&manifest_key(url), encode(store, url, &m)?, opts).await {
            Ok(new_etag) => {
                hold_written(store, url, &new_etag, &m, sent).await;
                return Ok(m);
            }
            Err(e) if e.is_precondition_failed() || e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StorageError::Format(format!("{url}: the manifest kept changing; try again")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_validation() {
        let mut m = Manifest::default();
        m.refs.insert("refs/heads/main".into(), "a".repeat(40));
        m.head = Some("refs/heads/main".into());
        m.packs.push(PackEntry {
            name: "b".repeat(40),
            size: 10,
            idx_size: 5,
            objects: 3,
            tips: vec!["a".repeat(40)],
            created: 1,
            key: None,
            map_size: 0,
        });
        let back = Manifest::parse(&m.to_bytes()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.live_head().map(String::as_str), Some("refs/heads/main"));
        assert_eq!(back.pack_bytes(), 15);

        assert!(matches!(Manifest::parse(b"{\"version\": 2}"), Err(ManifestError::Version(2))));
        assert!(matches!(Manifest::parse(b"not json"), Err(ManifestError::Json(_))));
        let bad = br#"{"version":1,"refs":{"refs/heads/x":"zz"}}"#;
        assert!(matches!(Manifest::parse(bad), Err(ManifestError::Invalid(_))));
        let bad = br#"{"version":1,"refs":{"HEAD":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}"#;
        assert!(matches!(Manifest::parse(bad), Err(ManifestError::Invalid(_))));
        let bad = br#"{"version":1,"packs":[{"name":"../x","size":1}]}"#;
        assert!(matches!(Manifest::parse(bad), Err(ManifestError::Invalid(_))));
        let bad = br#"{"version":1,"views":{"covers":[],"tips":{"name":"../x","size":1}}}"#;
        assert!(matches!(Manifest::parse(bad), Err(ManifestError::Invalid(_))));
        // minimal manifest: defaults
        let m = Manifest::parse(br#"{"version":1}"#).unwrap();
        assert!(m.refs.is_empty() && m.packs.is_empty() && m.live_head().is_none());
    }

    #[test]
    fn the_object_format_is_recorded_and_ids_agree_with_it() {
        // absent: SHA-1, and not written for SHA-1 (older readers see the same JSON)
        let m = Manifest::parse(br#"{"version":1}"#).unwrap();
        assert_eq!(m.format(), ObjectFormat::Sha1);
        assert!(!String::from_utf8(m.to_bytes()).unwrap().contains("object_format"));
        let mut m = Manifest { object_format: Some(ObjectFormat::Sha256), ..Manifest::default() };
        m.refs.insert("refs/heads/main".into(), "a".repeat(64));
        m.packs.push(PackEntry {
            name: "b".repeat(64),
            size: 10,
            idx_size: 5,
            objects: 3,
            tips: vec!["a".repeat(64)],
            created: 1,
            key: None,
            map_size: 0,
        });
        let bytes = m.to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["object_format"], "sha256");
        assert_eq!(Manifest::parse(&bytes).unwrap(), m);
        // no object_format but SHA-256 ids (an older git-s3's push): read as SHA-256, all ids alike
        let old = format!(r#"{{"version":1,"refs":{{"refs/heads/x":"{}"}}}}"#, "a".repeat(64));
        assert_eq!(Manifest::parse(old.as_bytes()).unwrap().format(), ObjectFormat::Sha256);
        // ids of the other format are refused, both ways
        let bad = format!(r#"{{"version":1,"refs":{{"refs/heads/x":"{}","refs/heads/y":"{}"}}}}"#, "a".repeat(64), "a".repeat(40));
        assert!(matches!(Manifest::parse(bad.as_bytes()), Err(ManifestError::Invalid(_))));
        let bad = format!(r#"{{"version":1,"object_format":"sha256","refs":{{"refs/heads/x":"{}"}}}}"#, "a".repeat(40));
        assert!(matches!(Manifest::parse(bad.as_bytes()), Err(ManifestError::Invalid(_))));
        let bad = format!(r#"{{"version":1,"object_format":"sha256","packs":[{{"name":"{}","size":1}}]}}"#, "b".repeat(40));
        assert!(matches!(Manifest::parse(bad.as_bytes()), Err(ManifestError::Invalid(_))));
        assert!(Manifest::parse(br#"{"version":1,"object_format":"md5"}"#).is_err());
    }

    #[test]
    fn views_cover_the_packs_they_were_made_from() {
        let pack = |c: char| PackEntry {
            name: c.to_string().repeat(40),
            size: 1,
            idx_size: 1,
            objects: 1,
            tips: vec![],
            created: 0,
            key: None,
            map_size: 0,
        };
        let mut m = Manifest { packs: vec![pack('a'), pack('b')], ..Default::default() };
        assert_eq!(m.uncovered().count(), 2);
        m.views = Some(Views { covers: ["a".repeat(40)].into(), skeleton: Some(pack('c')), tips: None, created: 1, increments: vec![] });
        let back = Manifest::parse(&m.to_bytes()).unwrap();
        assert_eq!(back.uncovered().map(|p| p.name.clone()).collect::<Vec<_>>(), vec!["b".repeat(40)]);
        // a manifest without views reads as before, and one with views is still a version-1 manifest
        assert!(Manifest::parse(br#"{"version":1}"#).unwrap().views.is_none());
        assert!(!String::from_utf8(m.to_bytes()).unwrap().contains("increments"), "written only when there are some");

        // An increment covers `b`: not uncovered any more, its packs are the views' packs.
        let mut v = m.views.clone().unwrap();
        v.increments.push(ViewsIncrement { covers: ["b".repeat(40)].into(), skeleton: Some(pack('d')), tips: Some(pack('e')), created: 2 });
        m.views = Some(v);
        let bytes = m.to_bytes();
        let back = Manifest::parse(&bytes).unwrap();
        assert_eq!(back.uncovered().count(), 0);
        let names: Vec<String> = back.live_packs().map(|p| p.name.clone()).collect();
        assert!(names.contains(&"d".repeat(40)) && names.contains(&"e".repeat(40)), "{names:?}");
        // The same entries, to edit.
        let mut edited = back.clone();
        edited.live_packs_mut().for_each(|p| p.key = Some(2));
        assert_eq!(edited.live_packs().map(|p| p.name.clone()).collect::<Vec<_>>(), names);
        assert!(edited.live_packs().all(|p| p.key == Some(2)));
        // A reader that does not know increments sees the views as they were:
        // `b` outside them (read beside them), which is still right.
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["views"]["covers"], serde_json::json!(["a".repeat(40)]));
        assert_eq!(json["views"]["skeleton"]["name"], "c".repeat(40));
        let bad = br#"{"version":1,"views":{"covers":[],"increments":[{"covers":["../x"]}]}}"#;
        assert!(matches!(Manifest::parse(bad), Err(ManifestError::Invalid(_))));
    }

    #[test]
    fn keys_do_not_collide_with_bundle_layout() {
        let url = RemoteUrl::parse("s3://bkt/p/q").unwrap();
        assert_eq!(manifest_key(&url), "p/q/.git-s3/manifest.json");
        assert_eq!(pack_key(&url, "ab"), "p/q/.git-s3/packs/pack-ab.pack");
        assert_eq!(idx_key(&url, "ab"), "p/q/.git-s3/packs/pack-ab.idx");
        assert!(!manifest_key(&url).starts_with("p/q/refs/"));
    }

    #[test]
    fn a_held_manifest_is_fresh_for_a_while_and_an_empty_etag_is_not_held() {
        let location = "test|bkt|held/.git-s3/manifest.json".to_string();
        let cache = HeldManifests::default();
        let is_held = |location: &str| cache.contains_key(location);
        let m = Manifest { serial: 7, ..Default::default() };
        let now = std::time::Instant::now();
        hold_at(&cache, location.clone(), "\"e1\"", &m, now);
        let held = held_fresh_at(&cache, &location, PUSH_LIST_FRESH).expect("held");
        assert_eq!((held.0.serial, held.1.as_str()), (7, "\"e1\""));
        assert!(held_fresh_at(&cache, &location, Duration::ZERO).is_none(), "older than no time at all");
        if let Some(long_ago) = now.checked_sub(PUSH_LIST_FRESH * 2) {
            hold_at(&cache, location.clone(), "\"e0\"", &m, long_ago);
            assert!(is_held(&location), "still read conditionally");
            assert!(held_fresh_at(&cache, &location, PUSH_LIST_FRESH).is_none(), "too old to answer a push's list");
        }
        // A write whose answer had no ETag: forgotten, the next read is unconditional.
        hold_at(&cache, location.clone(), "", &m, now);
        assert!(!is_held(&location));
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        for a in 1..MAX_ATTEMPTS {
            let d = backoff(a);
            assert!(d >= Duration::from_millis(40) && d <= Duration::from_millis(600), "{a}: {d:?}");
        }
        assert!(backoff(MAX_ATTEMPTS) >= Duration::from_millis(300));
    }
}
