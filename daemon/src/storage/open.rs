//! `Storage`: a remote opened in the format its prefix holds (`detect`),
//! the one type the remote helper talks to.

use crate::local::git::Git;
use crate::s3::store::S3Store;
use crate::s3::url::RemoteUrl;
use crate::storage::bundles::storage::BundleStorage;
use crate::storage::crypt::trust::Trust;
use crate::storage::crypt::{self, CryptError};
use crate::storage::detect::{configured_format, detect, Detected, Purpose};
use crate::storage::fetch_options::FetchOptions;
use crate::storage::packs::storage::PackStorage;
use crate::storage::packs::views;
pub(crate) use crate::storage::packs::views::ViewKind;
use crate::storage::{OpContext, PushResult, PushUpdate, RefListing, RemoteRef, RepoStorage, StorageError};

/// The formats a remote can be in: the 0.4.2 bundle layout, or packs
/// (`packs`).
pub(crate) enum Storage {
    Bundles(Box<BundleStorage>),
    Packs(Box<PackStorage>),
}

impl Storage {
    /// Opens a remote in the format its prefix holds; an empty prefix gets
    /// `git config s3.format` of the caller's repository (default bundles).
    ///
    /// An encrypted packs remote (issue 22: its manifest is an age file) is
    /// opened with the caller's identities every time (one small GET of its
    /// keyring): a caller none of whose identities opens it gets one line
    /// naming the keyring's recipients, before anything is fetched. A
    /// plaintext remote costs no request more.
    ///
    /// `trust`: what the repository remembers of the remote (`crypt::trust`):
    /// another keyring, or a plaintext remote where an encrypted one is
    /// remembered, is refused before the manifest is read; an encrypted
    /// remote seen for the first time is remembered.
    pub(crate) async fn open(store: S3Store, url: RemoteUrl, git: &Git, purpose: Purpose, trust: &Trust) -> Result<Storage, StorageError> {
        // A remote this daemon knows is encrypted: the caller's access is
        // judged (its keyring read) while the manifest is read, in parallel
        // (no round trip more than a plaintext remote); what detection read
        // is used only once the caller's access is settled (it may answer
        // from the manifest this daemon holds).
        let mut key = None;
        let mut early = None;
        if crypt::opened(&store, &url).is_some() {
            let (k, d) = tokio::join!(trust.open_key(&store, &url, git.env()), detect(&store, &url, configured_format(git), purpose));
            key = k?;
            match (&key, d) {
                // The keyring is gone: what this daemon holds of the remote is stale.
                (None, _) => crate::storage::packs::manifest::forget_held(&store, &url),
                // Read with the key this daemon held: the keyring may have
                // changed meanwhile (a rotation); read again below if so.
                (Some(_), Ok(d)) => early = Some(d),
                (Some(_), Err(e)) => tracing::debug!(error = %e, "the manifest read beside the keyring failed; reading it again"),
            }
        }
        let detected = match early {
            Some(d) => Ok(d),
            None => detect(&store, &url, configured_format(git), purpose).await,
        };
        let detected = match detected {
            Err(StorageError::Crypt(CryptError::NotOpened(_))) if key.is_none() => {
                key = trust.open_key(&store, &url, git.env()).await?;
                if key.is_none() {
                    return Err(StorageError::Corrupt(format!(
                        "{url}'s manifest is encrypted but its keyring (s3://{}/{}) is missing: restore it from a backup or a versioned bucket",
                        store.bucket(),
                        crypt::keyring_key(&url)
                    )));
                }
                detect(&store, &url, configured_format(git), purpose).await?
            }
            other => other?,
        };
        trust.settle(git, &url, key.as_deref()).await?;
        Ok(match detected {
            Detected::Bundles(refs, head) => Storage::Bundles(Box::new(BundleStorage::new(store, url, Some(refs)).with_head(head))),
            Detected::Packs(m, refs) => Storage::Packs(Box::new(PackStorage::new(store, url, m, refs).with_key(key))),
        })
    }

    /// Whether `option atomic` can be honoured.
    pub(crate) fn supports_atomic(&self) -> bool {
        matches!(self, Storage::Packs(_))
    }

    /// The views (packs made for shallow and partial clones) a fetch with
    /// `opts` could be served from, when the format has views and some suit
    /// (`lazy`: a fetch of objects no ref tip names).
    pub(crate) fn views_for(&self, opts: &FetchOptions, lazy: bool) -> Option<Vec<ViewKind>> {
        match self {
            Storage::Bundles(_) => None,
            Storage::Packs(_) => views::kinds_for(opts, lazy),
        }
    }

    /// Brings the views of `kinds` into `ctx`'s repository; false,
    /// downloading nothing, when the remote has no such views.
    pub(crate) async fn fetch_views(&self, ctx: &OpContext, kinds: &[ViewKind]) -> Result<bool, StorageError> {
        match self {
            Storage::Bundles(_) => Ok(false),
            Storage::Packs(p) => p.fetch_views(ctx, kinds).await,
        }
    }

    /// Whether the format can read single objects by ranges (packs: the
    /// `.idx` of each pack says where an object lies; an encrypted pack is
    /// read in whole age chunks).
    pub(crate) fn reads_by_ranges(&self) -> bool {
        matches!(self, Storage::Packs(_))
    }

    /// Whether a lazy fetch of `wants` objects is few for the tips view, so
    /// that reading them by ranges comes before downloading that view.
    pub(crate) async fn few_for_the_tips_view(&self, wants: usize) -> bool {
        match self {
            Storage::Bundles(_) => false,
            Storage::Packs(p) => p.few_for_the_tips_view(wants).await,
        }
    }

    /// Brings the objects `wants` into `ctx`'s repository by ranged reads,
    /// keeping the packs' `.idx` files in `idx_dir`; false (nothing
    /// written) when that way does not suit them.
    pub(crate) async fn fetch_objects_by_ranges(&self, ctx: &OpContext, wants: &[String], idx_dir: &std::path::Path) -> Result<bool, StorageError> {
        match self {
            Storage::Bundles(_) => Ok(false),
            Storage::Packs(p) => Ok(p.fetch_ranged(ctx, wants, idx_dir).await?.done),
        }
    }

    pub(crate) async fn list(&self) -> Result<RefListing, StorageError> {
        match self {
            Storage::Bundles(b) => b.list().await,
            Storage::Packs(p) => p.list().await,
        }
    }

    pub(crate) async fn fetch(&self, ctx: &OpContext, listing: &RefListing, wants: &[RemoteRef]) -> Result<(), StorageError> {
        match self {
            Storage::Bundles(b) => b.fetch(ctx, listing, wants).await,
            Storage::Packs(p) => p.fetch(ctx, listing, wants).await,
        }
    }

    pub(crate) async fn push(&self, ctx: &OpContext, updates: &[PushUpdate]) -> Result<Vec<(String, PushResult)>, StorageError> {
        match self {
            Storage::Bundles(b) => b.push(ctx, updates).await,
            Storage::Packs(p) => p.push(ctx, updates).await,
        }
    }

    /// Waits for what a push left to finish after its answer and before
    /// the session ends (a bundles push's lock release).
    pub(crate) async fn settle(&self) {
        if let Storage::Bundles(b) = self {
            b.settle().await;
        }
    }
}
