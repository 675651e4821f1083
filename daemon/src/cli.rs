use std::sync::Arc;
use git_s3_proto::pb::SessionStart;
use crate::{session::{Input, Out}, state::DaemonState};
pub async fn run(_state: Arc<DaemonState>, _start: SessionStart, _input: Input, out: Out) -> i32 {
    out.stderr("git s3: command not available yet\n");
    2
}
