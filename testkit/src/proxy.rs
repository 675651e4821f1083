//! A proxy in front of the test S3 server that cuts downloads short: the
//! field server (see [`crate::field`]) with one fault, for transfers that
//! break off mid-stream, which a real server never does on demand.

use crate::field::{Fault, FaultAction, FieldServer, RequestKind};

pub struct CuttingProxy {
    /// `http://127.0.0.1:<port>`: use as `AWS_ENDPOINT_URL`.
    pub url: String,
    field: FieldServer,
}

impl CuttingProxy {
    /// Forwards every request to `upstream` (`http://host:port`). The
    /// response to a GET whose path contains `path_part` is cut after
    /// `after` bytes of its body (the connection reset), for the first
    /// `times` such requests (`usize::MAX`: all); later ones pass untouched.
    pub fn start(upstream: &str, path_part: &str, after: usize, times: usize) -> CuttingProxy {
        let field = FieldServer::start_at(upstream, false);
        let mut cut =
            Fault::new(FaultAction::ResetAfter(after as u64), &[RequestKind::Get, RequestKind::RangedGet], 1.0).on_paths_containing(path_part);
        if times != usize::MAX {
            cut = cut.times(times as u64);
        }
        field.set_faults(0, vec![cut]);
        CuttingProxy { url: field.url.clone(), field }
    }

    /// Responses cut so far.
    pub fn cuts(&self) -> usize {
        self.field.counts().faults as usize
    }
}
