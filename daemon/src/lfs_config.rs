//! `git-lfs-s3 install|enable-debug|disable-debug` (also `git s3 lfs …`):
//! the git config that makes git-lfs use our agent.
//! (Filled in by the LFS work; the CLI dispatches `lfs …` here.)

use std::sync::Arc;

use git_s3_proto::pb::SessionStart;

use crate::session::{Input, Out};
use crate::state::DaemonState;

/// `start.args` are the words after `lfs` (e.g. `["install", "--remote", "origin"]`).
pub async fn run(_state: Arc<DaemonState>, _start: SessionStart, _input: Input, out: Out) -> i32 {
    out.stderr("git s3 lfs: not available yet\n");
    2
}
