//! Git LFS: the standalone transfer agent (`agent`) and `git s3 lfs …`,
//! which configures repositories to use it (`config`).

pub mod agent;
pub mod config;
