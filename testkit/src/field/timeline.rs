//! When each S3 request started and finished, and the critical path they
//! form: the longest chain of requests each of which started only after the
//! one before it had finished. Requests that overlap are one step of it, so
//! its length is the number of round trips an operation waited for one
//! after the other, whatever the number of requests.
//!
//! A request starts when its head arrives, except the first request on a new
//! connection that was waiting when the connection's (simulated) handshake
//! ended: it started when the client connected, since the handshake was made
//! for it. It finishes when its answer's body has been sent (or broke off).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::kinds::RequestKind;
use super::BoxError;

/// Records kept at most (beyond them requests are counted, not timed).
const MAX_RECORDS: usize = 100_000;

/// How soon after its connection's handshake a request must arrive to count
/// as the one the connection was opened for.
const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(10);

/// One S3 request as the field server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub kind: RequestKind,
    pub method: String,
    pub bucket: Option<String>,
    pub key: Option<String>,
    /// Since the field server started.
    pub start: Duration,
    /// Since the field server started; None while the answer is under way.
    pub end: Option<Duration>,
}

/// The length of the longest chain of `records` in which each request
/// started at or after the end of the one before it (0 for none). A request
/// still under way ends nowhere: nothing follows it.
pub fn critical_path(records: &[RequestRecord]) -> u64 {
    let mut order: Vec<&RequestRecord> = records.iter().collect();
    order.sort_by_key(|r| r.start);
    // A request that ended before another started also started before it:
    // in order of starts, every possible predecessor is already scored.
    let mut ended: BinaryHeap<Reverse<(Duration, u64)>> = BinaryHeap::new();
    let (mut best_before, mut longest) = (0u64, 0u64);
    for r in order {
        while let Some(Reverse((end, chain))) = ended.peek().copied() {
            if end > r.start {
                break;
            }
            ended.pop();
            best_before = best_before.max(chain);
        }
        let chain = best_before + 1;
        longest = longest.max(chain);
        if let Some(end) = r.end {
            ended.push(Reverse((end, chain)));
        }
    }
    longest
}

#[derive(Debug)]
pub(crate) struct Timeline {
    origin: Instant,
    state: Mutex<(u64, Vec<RequestRecord>)>,
}

impl Default for Timeline {
    fn default() -> Timeline {
        Timeline { origin: Instant::now(), state: Mutex::new((0, Vec::new())) }
    }
}

impl Timeline {
    fn state(&self) -> std::sync::MutexGuard<'_, (u64, Vec<RequestRecord>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a request that started at `start`; the guard records its end
    /// when dropped.
    pub fn begin(self: &Arc<Self>, kind: RequestKind, method: &str, bucket: Option<String>, key: Option<String>, start: Instant) -> Option<Finish> {
        let mut s = self.state();
        if s.1.len() >= MAX_RECORDS {
            return None;
        }
        let start = start.saturating_duration_since(self.origin);
        s.1.push(RequestRecord { kind, method: method.to_string(), bucket, key, start, end: None });
        Some(Finish { timeline: self.clone(), epoch: s.0, index: s.1.len() - 1 })
    }

    fn finish(&self, epoch: u64, index: usize) {
        let end = self.origin.elapsed();
        let mut s = self.state();
        if s.0 == epoch {
            if let Some(r) = s.1.get_mut(index) {
                r.end.get_or_insert(end);
            }
        }
    }

    pub fn records(&self) -> Vec<RequestRecord> {
        self.state().1.clone()
    }

    /// Forgets every record (a request under way is not recorded later).
    pub fn reset(&self) {
        let mut s = self.state();
        s.0 += 1;
        s.1.clear();
    }
}

/// Marks the end of a request when dropped.
#[derive(Debug)]
pub(crate) struct Finish {
    timeline: Arc<Timeline>,
    epoch: u64,
    index: usize,
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.timeline.finish(self.epoch, self.index);
    }
}

/// When a connection was opened and when its handshakes were done: the
/// start of the request it was opened for.
#[derive(Debug)]
pub(crate) struct ConnectionStart {
    opened: Instant,
    ready: Mutex<Option<Instant>>,
    first_taken: AtomicBool,
}

impl ConnectionStart {
    pub fn new() -> ConnectionStart {
        ConnectionStart { opened: Instant::now(), ready: Mutex::new(None), first_taken: AtomicBool::new(false) }
    }

    /// The (simulated) handshakes are over.
    pub fn ready(&self) {
        *self.ready.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// When the request arriving now started.
    pub fn request_start(&self) -> Instant {
        let now = Instant::now();
        if self.first_taken.swap(true, Ordering::SeqCst) {
            return now;
        }
        match *self.ready.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(ready) if now.saturating_duration_since(ready) <= FIRST_REQUEST_GRACE => self.opened,
            _ => now,
        }
    }
}

/// A response body that records its request's end when it is done (sent to
/// its end, broken off, or dropped).
pub(crate) struct Timed<B> {
    inner: B,
    finish: Option<Finish>,
}

impl<B> Timed<B> {
    pub fn new(inner: B, finish: Option<Finish>) -> Timed<B> {
        Timed { inner, finish }
    }
}

impl<B> Body for Timed<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.finish = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start_ms: u64, end_ms: Option<u64>) -> RequestRecord {
        RequestRecord {
            kind: RequestKind::Get,
            method: "GET".into(),
            bucket: None,
            key: None,
            start: Duration::from_millis(start_ms),
            end: end_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn overlapping_requests_are_one_step_sequential_ones_are_not() {
        assert_eq!(critical_path(&[]), 0);
        // Three at once: one round trip.
        assert_eq!(critical_path(&[r(0, Some(50)), r(1, Some(52)), r(2, Some(49))]), 1);
        // One after the other.
        assert_eq!(critical_path(&[r(0, Some(50)), r(50, Some(100)), r(101, Some(150))]), 3);
        // Two in parallel, then one that waited for both, then two more in parallel.
        let waves = [r(0, Some(50)), r(1, Some(51)), r(60, Some(110)), r(120, Some(170)), r(121, Some(171))];
        assert_eq!(critical_path(&waves), 3);
        // Order of records does not matter.
        let mut shuffled = waves.to_vec();
        shuffled.reverse();
        assert_eq!(critical_path(&shuffled), 3);
        // A long request beside a chain of short ones: the chain is longer.
        assert_eq!(critical_path(&[r(0, Some(300)), r(10, Some(60)), r(70, Some(120)), r(130, Some(180))]), 3);
        // A request that started while another was still running extends
        // nothing; one that is still under way ends nowhere.
        assert_eq!(critical_path(&[r(0, Some(100)), r(99, None), r(200, Some(250))]), 2);
        assert_eq!(critical_path(&[r(0, None), r(10, Some(20)), r(30, Some(40))]), 2);
    }

    #[test]
    fn a_reset_forgets_requests_under_way() {
        let t = Arc::new(Timeline::default());
        let before = t.begin(RequestKind::Put, "PUT", None, Some("k".into()), Instant::now());
        t.reset();
        drop(before);
        assert!(t.records().is_empty());
        let after = t.begin(RequestKind::Get, "GET", Some("b".into()), Some("k".into()), Instant::now());
        assert_eq!(t.records()[0].end, None);
        drop(after);
        let rec = t.records();
        assert_eq!(rec.len(), 1);
        assert!(rec[0].end.is_some_and(|e| e >= rec[0].start));
    }

    #[test]
    fn the_first_request_of_a_connection_started_when_it_connected() {
        let c = ConnectionStart::new();
        std::thread::sleep(Duration::from_millis(20));
        c.ready();
        let first = c.request_start();
        assert_eq!(first, c.opened);
        assert!(c.request_start() > c.opened + Duration::from_millis(20));
        // A connection that sat idle after its handshake: its first request
        // started when it arrived.
        let idle = ConnectionStart::new();
        idle.ready();
        std::thread::sleep(FIRST_REQUEST_GRACE * 2);
        assert!(idle.request_start() > idle.opened + FIRST_REQUEST_GRACE);
    }
}
