//! A body that passes through the field server: counted, held to a
//! bandwidth, and (for a fault) cut off halfway, after a stall or not.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::counters::Counters;
use super::BoxError;

/// Where a body is cut: after `after` bytes, once it stalled for `stall`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cut {
    pub after: u64,
    pub stall: Option<Duration>,
}

/// Which way a body flows (for the byte counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Client to store (request bodies).
    Up,
    /// Store to client (response bodies).
    Down,
}

pub(crate) struct Shaped<B> {
    inner: B,
    counters: Arc<Counters>,
    direction: Direction,
    /// Bytes per second, if capped.
    bandwidth: Option<u64>,
    cut: Option<Cut>,
    sent: u64,
    delay: Option<Pin<Box<tokio::time::Sleep>>>,
    held: Option<Frame<Bytes>>,
    failing: bool,
    stall_pending: Option<Duration>,
}

impl<B> Shaped<B> {
    pub fn new(inner: B, counters: Arc<Counters>, direction: Direction, bandwidth: Option<u64>, cut: Option<Cut>) -> Shaped<B> {
        Shaped { inner, counters, direction, bandwidth, cut, sent: 0, delay: None, held: None, failing: false, stall_pending: None }
    }
}

impl<B> Body for Shaped<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(d) = this.delay.as_mut() {
                ready!(d.as_mut().poll(cx));
                this.delay = None;
            }
            if let Some(frame) = this.held.take() {
                return Poll::Ready(Some(Ok(frame)));
            }
            if this.failing {
                if let Some(stall) = this.stall_pending.take() {
                    this.delay = Some(Box::pin(tokio::time::sleep(stall)));
                    continue;
                }
                return Poll::Ready(Some(Err("field server: connection reset mid-body".into())));
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None if this.cut.is_some() => {
                    // Shorter than the cut: reset at the end all the same.
                    this.failing = true;
                    this.stall_pending = this.cut.and_then(|c| c.stall);
                    continue;
                }
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                Some(Ok(frame)) => frame,
            };
            let mut data = match frame.into_data() {
                Ok(d) => d,
                Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
            };
            if let Some(cut) = this.cut {
                let room = cut.after.saturating_sub(this.sent);
                if data.len() as u64 >= room {
                    data.truncate(room as usize);
                    this.failing = true;
                    this.stall_pending = cut.stall;
                }
            }
            this.sent += data.len() as u64;
            this.counters.add_bytes(this.direction, data.len() as u64);
            if data.is_empty() {
                continue;
            }
            if let Some(bw) = this.bandwidth.filter(|b| *b > 0) {
                let wait = Duration::from_secs_f64(data.len() as f64 / bw as f64);
                this.delay = Some(Box::pin(tokio::time::sleep(wait)));
                this.held = Some(Frame::data(data));
                continue;
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.delay.is_none() && !self.failing && self.cut.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
