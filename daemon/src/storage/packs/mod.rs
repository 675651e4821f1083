//! The packs format: incremental, lock-free storage for large repositories.
//!
//! Layout under the remote's prefix (beside, never inside, the 0.4.2 bundle
//! layout's `HEAD` and `refs/`):
//! `.git-s3/manifest.json` (refs, HEAD, protected refs, packs; see
//! `manifest`) and `.git-s3/packs/pack-<hash>.pack` + `.idx` (self-contained
//! packs made by `git pack-objects`).
//!
//! A push builds one pack of the objects the remote lacks (new tips `--not`
//! the manifest's tips that exist locally), uploads it, then replaces the
//! manifest with a conditional write on its ETag (`If-Match`, or
//! `If-None-Match: *` to create it). A lost race re-reads the manifest,
//! re-checks every ref and retries a bounded number of times. A crash at any
//! point leaves at worst an unreferenced pack. A fetch downloads, in
//! parallel, the packs whose tips the local repository lacks and indexes
//! them with `git index-pack --stdin`.
//!
//! Files: `manifest` (the manifest: its JSON, reading and conditional
//! edits), `storage` (a packs remote as a session sees it), `fetch`,
//! `push`, `git_ops` (the git commands they run), `gc` (compaction),
//! `migrate` (to and from the bundles format), `scratch` (scratch
//! repositories gc, migrate and `git s3 doctor` fill from the bucket),
//! `views` (the packs that serve shallow and partial clones), `ranged`
//! (objects read from packs by range, for lazy fetches) and `pack_index`
//! (the bytes of `.idx` files and pack entries it reads).

pub(crate) mod binding;
pub(crate) mod crypt_migrate;
pub(crate) mod fetch;
pub(crate) mod gc;
pub(crate) mod git_ops;
pub mod manifest;
pub(crate) mod migrate;
pub(crate) mod object_map;
pub(crate) mod pack_index;
pub(crate) mod push;
pub(crate) mod ranged;
pub(crate) mod scratch;
pub(crate) mod storage;
pub(crate) mod views;

use crate::storage::packs::manifest::Manifest;
use crate::storage::packs::storage::PackStorage;
use crate::storage::{OpContext, PushResult, PushUpdate, RefListing, RemoteRef, RepoStorage, StorageError};

impl RepoStorage for PackStorage {
    async fn list(&self) -> Result<RefListing, StorageError> {
        let (m, etag) = match self.current_manifest().await? {
            Some((m, e)) => (m, Some(e)),
            None => (Manifest::default(), None),
        };
        let mut listing = RefListing::default();
        for (name, sha) in &m.refs {
            listing.refs.push(RemoteRef { name: name.clone(), sha: sha.clone() });
        }
        // Absent from a manifest of SHA-1 refs written before SHA-256 support.
        listing.object_format = m.known_format();
        listing.head = m.live_head().cloned();
        listing.head_raw = m.head.clone();
        listing.protected = m.protected.iter().cloned().chain(self.markers()).collect();
        if let Ok(mut l) = self.listed.lock() {
            *l = Some((m, etag));
        }
        Ok(listing)
    }

    async fn fetch(&self, ctx: &OpContext, _listing: &RefListing, wants: &[RemoteRef]) -> Result<(), StorageError> {
        self.fetch_wants(ctx, wants).await
    }

    async fn push(&self, ctx: &OpContext, updates: &[PushUpdate]) -> Result<Vec<(String, PushResult)>, StorageError> {
        self.push_all(ctx, updates).await
    }
}
