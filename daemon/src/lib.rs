//! The git-s3 daemon: serves the shims' sessions over gRPC on a Unix socket.
//!
//! The module tree is the architecture (docs/architecture.md): `server`
//! (the process: socket, gRPC service, logging) runs sessions of three
//! kinds, `helper` (git's remote-helper protocol), `lfs` (the Git LFS
//! agent and `git s3 lfs`) and `cli` (`git s3 …`), on what `session`
//! provides (a session's stdio, the daemon's shared state, background work,
//! progress lines). They reach a remote through `storage` (the format
//! interface; `storage::bundles` is the git-remote-s3 0.4.2 layout,
//! `storage::packs` the incremental one), which stands on `s3` (clients,
//! store, URLs) and `local` (git subprocesses, the cache). No module
//! imports another in a cycle (daemon/tests/architecture.rs checks it).
//!
//! The daemon never prints: what a caller sees goes through its session's
//! `Out`, everything else to the log (`server::logging`).
#![warn(clippy::print_stdout, clippy::print_stderr)]
// Functions a reader can hold: at most 80 lines (clippy.toml).
#![warn(clippy::too_many_lines)]
#![cfg_attr(test, allow(clippy::print_stdout, clippy::print_stderr))]

pub mod cli;
pub mod helper;
pub mod lfs;
pub mod local;
pub mod s3;
pub mod server;
pub mod session;
pub mod storage;
#[cfg(feature = "test-hooks")]
pub(crate) mod test_hooks;

/// `git-s3-daemon age-plugin-bridge …`: age plugins run in the caller's
/// environment, for the daemon (`storage::crypt::plugins`); the exit code.
pub fn age_plugin_bridge(args: &[String]) -> i32 {
    storage::crypt::plugin_bridge::run(args)
}

/// The optional features this daemon was built with (`git s3 status --json`
/// shows them: the end-to-end tests that use test hooks check for them).
pub(crate) fn features() -> Vec<&'static str> {
    let mut f = Vec::new();
    if cfg!(feature = "test-hooks") {
        f.push("test-hooks");
    }
    f
}
