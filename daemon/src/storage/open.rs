//! `Storage`: a remote opened in the format its prefix holds (`detect`),
//! the one type the remote helper talks to.

use crate::local::git::Git;
use crate::s3::store::S3Store;
use crate::s3::url::RemoteUrl;
use crate::storage::bundles::storage::BundleStorage;
use crate::storage::detect::{configured_format, detect, Detected, Purpose};
use crate::storage::packs::storage::PackStorage;
use crate::storage::{OpContext, PushResult, PushUpdate, RefListing, RemoteRef, RepoStorage, StorageError};

/// The formats a remote can be in: the 0.4.2 bundle layout, or packs
/// (`packs`).
pub enum Storage {
    Bundles(Box<BundleStorage>),
    Packs(Box<PackStorage>),
}

impl Storage {
    /// Opens a remote in the format its prefix holds; an empty prefix gets
    /// `git config s3.format` of the caller's repository (default bundles).
    pub async fn open(store: S3Store, url: RemoteUrl, git: &Git, purpose: Purpose) -> Result<Storage, StorageError> {
        Ok(match detect(&store, &url, configured_format(git), purpose).await? {
            Detected::Bundles(refs, head) => Storage::Bundles(Box::new(BundleStorage::new(store, url, Some(refs)).with_head(head))),
            Detected::Packs(m, refs) => Storage::Packs(Box::new(PackStorage::new(store, url, m, refs))),
        })
    }

    /// Whether `option atomic` can be honoured.
    pub fn supports_atomic(&self) -> bool {
        matches!(self, Storage::Packs(_))
    }

    pub async fn list(&self) -> Result<RefListing, StorageError> {
        match self {
            Storage::Bundles(b) => b.list().await,
            Storage::Packs(p) => p.list().await,
        }
    }

    pub async fn fetch(&self, ctx: &OpContext, listing: &RefListing, wants: &[RemoteRef]) -> Result<(), StorageError> {
        match self {
            Storage::Bundles(b) => b.fetch(ctx, listing, wants).await,
            Storage::Packs(p) => p.fetch(ctx, listing, wants).await,
        }
    }

    pub async fn push(&self, ctx: &OpContext, updates: &[PushUpdate]) -> Result<Vec<(String, PushResult)>, StorageError> {
        match self {
            Storage::Bundles(b) => b.push(ctx, updates).await,
            Storage::Packs(p) => p.push(ctx, updates).await,
        }
    }

    /// Waits for what a push left to finish after its answer and before
    /// the session ends (a bundles push's lock release).
    pub async fn settle(&self) {
        if let Storage::Bundles(b) = self {
            b.settle().await;
        }
    }
}
