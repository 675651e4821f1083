//! Faults injected on a chosen share of chosen kinds of requests, drawn from
//! a seeded generator so a test sees the same faults run after run (for the
//! same order of requests).

use std::time::Duration;

use http::StatusCode;

use super::kinds::{Classified, RequestKind};

/// What happens to a request that draws a fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// `503 SlowDown`, without reaching the store.
    SlowDown,
    /// `500 InternalError`, without reaching the store.
    InternalError,
    /// `409 ConditionalRequestConflict`, without reaching the store; only
    /// conditional writes draw it.
    Conflict,
    /// The store answers, and the connection is reset halfway through the
    /// response body (before the headers when there is no body).
    ResetMidBody,
    /// Like `ResetMidBody`, but the response stops flowing for this long
    /// first.
    Stall(Duration),
    /// The store answers, and the connection is reset after this many
    /// bytes of the response body.
    ResetAfter(u64),
    /// No answer at all: the request is read, nothing is sent back for this
    /// long (the store never sees it), then the connection is reset.
    NoResponse(Duration),
    /// `307 TemporaryRedirect` to the bucket's regional endpoint (what S3
    /// answers for a bucket created moments ago), without reaching the store.
    TemporaryRedirect,
    /// `200 OK` whose body is an `<Error>` (`InternalError`), after the
    /// whitespace S3 sends while it works: how `CompleteMultipartUpload` (and
    /// `CopyObject`) fail once the status line is out. The store never sees
    /// the request, so the upload is still open.
    ErrorIn200,
    /// `400 ExpiredToken`, without reaching the store: what S3 answers to
    /// a request signed with an expired session token.
    ExpiredToken,
    /// The store answers, and the body arrives altered, its length kept:
    /// one bit flipped in every 4 KiB (the first at byte 0), as a bad
    /// middlebox or a damaged disk would. Only successful answers with a body.
    FlipBytes,
}

/// Bytes between two bits flipped by [`FaultAction::FlipBytes`].
pub const FLIP_EVERY: usize = 4096;

/// `body` as [`FaultAction::FlipBytes`] alters it.
pub fn flip_bytes(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    for b in out.iter_mut().step_by(FLIP_EVERY) {
        *b ^= 0x10;
    }
    out
}

impl FaultAction {
    /// The error answer of the faults that replace the store's answer.
    pub(crate) fn error_answer(&self) -> Option<(StatusCode, &'static str, &'static str)> {
        match self {
            FaultAction::SlowDown => Some((StatusCode::SERVICE_UNAVAILABLE, "SlowDown", "Please reduce your request rate.")),
            FaultAction::InternalError => {
                Some((StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "We encountered an internal error. Please try again."))
            }
            FaultAction::Conflict => Some((
                StatusCode::CONFLICT,
                "ConditionalRequestConflict",
                "A conflicting conditional operation is currently in progress against this resource. Please try again.",
            )),
            FaultAction::ExpiredToken => Some((StatusCode::BAD_REQUEST, "ExpiredToken", "The provided token has expired.")),
            FaultAction::ResetMidBody
            | FaultAction::Stall(_)
            | FaultAction::ResetAfter(_)
            | FaultAction::NoResponse(_)
            | FaultAction::TemporaryRedirect
            | FaultAction::ErrorIn200
            | FaultAction::FlipBytes => None,
        }
    }
}

/// One fault rule: `action` on a `share` (0.0–1.0) of the requests of
/// `kinds`, optionally only for paths containing a string, and at most so
/// many times.
#[derive(Debug, Clone)]
pub struct Fault {
    pub action: FaultAction,
    pub kinds: Vec<RequestKind>,
    pub share: f64,
    pub path_contains: Option<String>,
    pub times: Option<u64>,
}

impl Fault {
    pub fn new(action: FaultAction, kinds: &[RequestKind], share: f64) -> Fault {
        Fault { action, kinds: kinds.to_vec(), share, path_contains: None, times: None }
    }

    /// Only requests whose path (`/bucket/key`) contains `part`.
    pub fn on_paths_containing(mut self, part: &str) -> Fault {
        self.path_contains = Some(part.to_string());
        self
    }

    /// At most `n` times in all.
    pub fn times(mut self, n: u64) -> Fault {
        self.times = Some(n);
        self
    }
}

/// The rules and the seeded generator they draw from.
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    faults: Vec<Fault>,
    state: u64,
}

impl FaultPlan {
    pub fn new(seed: u64, faults: Vec<Fault>) -> FaultPlan {
        FaultPlan { faults, state: seed }
    }

    /// splitmix64: small, seeded, good enough for shares.
    fn next_f64(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The fault this request meets, if any: the first rule that applies
    /// and whose draw falls within its share.
    pub fn draw(&mut self, request: &Classified) -> Option<FaultAction> {
        for i in 0..self.faults.len() {
            let f = &self.faults[i];
            let applies = f.kinds.contains(&request.kind)
                && (f.action != FaultAction::Conflict || request.conditional)
                && f.times != Some(0)
                && f.path_contains.as_deref().map(|p| request.path().contains(p)).unwrap_or(true);
            if !applies {
                continue;
            }
            let share = f.share;
            let action = f.action.clone();
            if self.next_f64() < share {
                if let Some(t) = self.faults[i].times.as_mut() {
                    *t -= 1;
                }
                return Some(action);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(kind: RequestKind, conditional: bool) -> Classified {
        Classified { kind, conditional, bucket: Some("b".into()), key: Some("k".into()) }
    }

    #[test]
    fn shares_are_seeded_and_roughly_kept() {
        let rules = vec![Fault::new(FaultAction::Conflict, &[RequestKind::ConditionalPut, RequestKind::Complete], 0.3)];
        let draws = |seed| {
            let mut p = FaultPlan::new(seed, rules.clone());
            (0..1000).map(|_| p.draw(&req(RequestKind::ConditionalPut, true)).is_some()).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7), "same seed, same faults");
        assert_ne!(draws(7), draws(8));
        let hits = draws(7).iter().filter(|h| **h).count();
        assert!((250..350).contains(&hits), "{hits} of 1000 at 30 %");
        // A conflict needs a conditional write; other kinds never draw.
        let mut p = FaultPlan::new(1, rules.clone());
        assert!((0..100).all(|_| p.draw(&req(RequestKind::Complete, false)).is_none()));
        assert!((0..100).all(|_| p.draw(&req(RequestKind::Get, false)).is_none()));
        let mut all = FaultPlan::new(1, vec![Fault::new(FaultAction::SlowDown, &[RequestKind::List], 1.0)]);
        assert_eq!(all.draw(&req(RequestKind::List, false)), Some(FaultAction::SlowDown));
        // Limited to some keys, and to a number of times.
        let rule = Fault::new(FaultAction::ResetMidBody, &[RequestKind::Get], 1.0).on_paths_containing("/lfs/").times(2);
        let mut p = FaultPlan::new(1, vec![rule]);
        assert!(p.draw(&req(RequestKind::Get, false)).is_none(), "key k has no lfs/");
        let mut lfs = req(RequestKind::Get, false);
        lfs.key = Some("p/lfs/ab".into());
        let hits: Vec<_> = (0..4).map(|_| p.draw(&lfs).is_some()).collect();
        assert_eq!(hits, [true, true, false, false]);
    }

    #[test]
    fn flipped_bodies_keep_their_length_and_differ_in_every_block() {
        let body = vec![0u8; 3 * FLIP_EVERY + 10];
        let flipped = flip_bytes(&body);
        assert_eq!(flipped.len(), body.len());
        for block in flipped.chunks(FLIP_EVERY) {
            assert!(block.iter().any(|b| *b != 0));
        }
        assert_eq!(flip_bytes(&flipped), body);
    }
}
