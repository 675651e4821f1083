//! The local machine: git subprocesses (`git`) and the daemon's cache of
//! bundles and packs (`cache`).

pub mod cache;
pub mod git;
