//! The local machine: git subprocesses (`git`), git's ref-name rules
//! (`refname`) and the daemon's cache of bundles and packs (`cache`).

pub mod cache;
pub mod git;
pub mod refname;
