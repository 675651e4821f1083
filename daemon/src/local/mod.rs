//! The local machine: git subprocesses (`git`), git's ref-name rules
//! (`refname`), object ids and formats (`oid`) the daemon's cache of bundles and packs (`cache`)
//! and file-system work done off the async workers (`files`).

pub(crate) mod cache;
pub(crate) mod files;
pub mod git;
pub mod oid;
pub mod refname;
