//! Git LFS: the standalone transfer agent (`agent`) and `git s3 lfs …`,
//! which configures repositories to use it (`config`); `endpoint` finds the
//! LFS URL git-lfs uses for a remote whose code lives on another host;
//! `migrate` moves objects from such a host's LFS server to S3.

pub(crate) mod agent;
pub mod config;
pub(crate) mod endpoint;
pub(crate) mod migrate;
