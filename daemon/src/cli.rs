//! `git s3 …`: the user's command, served by the daemon.
//! (Filled in by the CLI work.) `lfs …` is dispatched to `lfs_config::run`
//! with the words after `lfs`.

use std::sync::Arc;

use git_s3_proto::pb::SessionStart;

use crate::session::{Input, Out};
use crate::state::DaemonState;

pub async fn run(state: Arc<DaemonState>, mut start: SessionStart, input: Input, out: Out) -> i32 {
    if start.args.first().map(String::as_str) == Some("lfs") {
        start.args.remove(0);
        return crate::lfs_config::run(state, start, input, out).await;
    }
    out.stderr("git s3: command not available yet\n");
    2
}
