//! The local machine: git subprocesses (`git`), git's ref-name rules
//! (`refname`), object ids and formats (`oid`) and the daemon's cache of bundles and packs (`cache`).

pub mod cache;
pub mod git;
pub mod oid;
pub mod refname;
