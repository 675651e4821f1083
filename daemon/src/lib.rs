//! The git-s3 daemon: serves the shims' sessions over gRPC on a Unix socket.
//!
//! Map: `server` (socket, single instance, idle exit) → `service` (gRPC) →
//! `remote_helper` (git's protocol, parsed by `helper_protocol`) /
//! `lfs_agent` / `cli` → `storage` (format interface; `bundle_format` is the
//! git-remote-s3 0.4.2 layout, `packs_format` + `manifest` the incremental
//! one) → `s3_store` (S3 calls) with `s3_clients`
//! (warm clients), `locks`, `cache`, and `git` (subprocesses); `background`
//! tracks work finished after a session answered (the daemon waits for it).

pub mod background;
pub mod bundle_format;
pub mod cache;
pub mod cli;
pub mod fetch_options;
pub mod git;
pub mod helper_protocol;
pub mod lfs_agent;
pub mod lfs_config;
pub mod locks;
pub mod logging;
pub mod manifest;
pub mod mirror;
pub mod packs_format;
pub mod packs_maint;
pub mod remote_helper;
pub mod remote_url;
pub mod s3_clients;
pub mod s3_store;
pub mod server;
pub mod service;
pub mod session;
pub mod state;
pub mod storage;
pub mod transfer_progress;
