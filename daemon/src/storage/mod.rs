//! The storage-format interface: what the remote-helper protocol needs from
//! a repository in S3 (list refs, fetch objects for wanted refs, apply ref
//! updates). The git-remote-s3 0.4.2 bundle layout implements it
//! (`bundles`), and so does the incremental packs format (`packs`);
//! `open::Storage::open` picks one by what the prefix holds (`detect`).
//! This file is what the formats share; it uses neither format.

pub mod bundles;
pub(crate) mod crypt;
pub(crate) mod detect;
pub mod fetch_options;
pub(crate) mod mirror;
pub(crate) mod open;
pub mod packs;
pub(crate) mod ref_update;
pub(crate) mod zip;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::local::cache::Cache;
use crate::local::git::{Git, GitError};
use crate::local::oid::ObjectFormat;
use crate::s3::store::StoreError;
use crate::session::background::Background;
use crate::session::Out;

#[derive(Debug, thiserror::Error)]
pub(crate) enum StorageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Git(#[from] GitError),
    /// A ref's lock could not be taken or was lost (the lock's own line).
    #[error("{0}")]
    Lock(String),
    #[error("local file error: {0}")]
    Io(#[from] std::io::Error),
    #[error("remote ref {0} not found (the remote changed since it was listed; fetch again)")]
    MissingRef(String),
    #[error("{0}")]
    Corrupt(String),
    /// The prefix's format is ambiguous or misconfigured.
    #[error("{0}")]
    Format(String),
    /// An encrypted remote (issue 22): no access, or an object that does not decrypt.
    #[error(transparent)]
    Crypt(#[from] crate::storage::crypt::CryptError),
}

impl StorageError {
    pub(crate) fn is_fatal(&self) -> bool {
        match self {
            StorageError::Store(e) => e.is_fatal(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteRef {
    pub(crate) name: String,
    pub(crate) sha: String,
}

/// What a remote holds, as the protocol's `list` shows it.
#[derive(Debug, Clone, Default)]
pub(crate) struct RefListing {
    /// Sorted by ref name.
    pub(crate) refs: Vec<RemoteRef>,
    /// The ref the remote HEAD names, when that ref exists.
    pub(crate) head: Option<String>,
    /// The raw content of HEAD (may name a missing ref).
    pub(crate) head_raw: Option<String>,
    pub(crate) protected: BTreeSet<String>,
    /// Problems a user should know about (e.g. several bundles for one ref).
    pub(crate) warnings: Vec<String>,
    /// The object format the remote records (packs: the manifest's), when
    /// it records one; else `format()` judges by the refs.
    pub(crate) object_format: Option<ObjectFormat>,
}

impl RefListing {
    /// The remote's object format: recorded, else that of its refs' ids;
    /// None for an empty remote that records none (it takes the format of
    /// its first push).
    pub(crate) fn format(&self) -> Option<ObjectFormat> {
        self.object_format.or_else(|| self.refs.iter().find_map(|r| ObjectFormat::of(&r.sha)))
    }

    pub(crate) fn sha_of(&self, name: &str) -> Option<&str> {
        self.refs.iter().find(|r| r.name == name).map(|r| r.sha.as_str())
    }

    /// Whether `w` is one of the listed refs at its listed tip (not an
    /// object asked for by name, as a partial clone's lazy fetch does).
    pub(crate) fn is_tip(&self, w: &RemoteRef) -> bool {
        self.sha_of(&w.name) == Some(w.sha.as_str())
    }
}

/// The one line that refuses to mix object formats: `local` is the
/// repository's, `remote` that of the remote at `url`.
pub(crate) fn format_mismatch(local: ObjectFormat, remote: ObjectFormat, url: &str) -> String {
    format!(
        "this repository uses {local} object ids but {url} holds a {remote} repository; git cannot mix object formats: use a {remote} repository with this remote, or another prefix for this one"
    )
}

/// One `push` line of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PushUpdate {
    /// None: delete `dst`.
    pub(crate) src: Option<String>,
    pub(crate) dst: String,
    pub(crate) force: bool,
}

/// A refused update, with the reason in the words git understands
/// (`fetch first`, `non-fast-forward`, `stale info`, `already exists`) or a
/// message of our own.
pub(crate) type PushResult = Result<(), String>;

/// Everything an operation needs from the session.
pub(crate) struct OpContext {
    pub(crate) git: Git,
    pub(crate) out: Out,
    pub(crate) env: HashMap<String, String>,
    pub(crate) progress: bool,
    pub(crate) cache: Arc<Cache>,
    /// The daemon's tracker of work finished after the answer.
    pub(crate) background: Arc<Background>,
    /// `option cas <ref>:<sha>` expectations (empty string: must not exist).
    pub(crate) cas: HashMap<String, String>,
    /// `option atomic true`: all updates of a push land, or none.
    pub(crate) atomic: bool,
}

pub(crate) trait RepoStorage {
    fn list(&self) -> impl std::future::Future<Output = Result<RefListing, StorageError>> + Send;
    fn fetch(&self, ctx: &OpContext, listing: &RefListing, wants: &[RemoteRef])
        -> impl std::future::Future<Output = Result<(), StorageError>> + Send;
    fn push(
        &self,
        ctx: &OpContext,
        updates: &[PushUpdate],
    ) -> impl std::future::Future<Output = Result<Vec<(String, PushResult)>, StorageError>> + Send;
}
