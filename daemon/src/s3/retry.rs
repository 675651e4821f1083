//! The one retry loop and the one backoff of the daemon: a request tried
//! again while its error says so (a download that broke off, a conditional
//! write that met another, a lost race for the manifest), a bounded number
//! of times, with a random pause between tries so racing writers spread out.

use std::future::Future;
use std::time::Duration;

/// A growing, random pause between tries: exponential from `first`, at
/// most `max`, the upper half of it random ("equal jitter").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
}

impl Backoff {
    /// Between conditional writes that met another write (409), and
    /// requests S3 redirected in the bucket's own region (307): 100 ms, at
    /// most 2 s.
    pub(crate) const CONFLICT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

    pub(crate) const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max }
    }

    /// The pause after try `attempt` (counted from 1) failed.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(16);
        let base = self.first.saturating_mul(1 << doublings).min(self.max);
        let half = base / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(fastrand::u64(0..=nanos))
    }

    pub(crate) async fn sleep(&self, attempt: u32) {
        tokio::time::sleep(self.delay(attempt)).await;
    }
}

/// Runs `op` (given the attempt, from 1) until it succeeds, fails with an
/// error `again` does not want tried again, or has been tried `attempts`
/// times; between tries, the `backoff` pause if any. `again` sees the error
/// and the attempt that failed (the place to log the retry).
pub(crate) async fn retry<T, E, Fut>(
    attempts: u32,
    backoff: Option<Backoff>,
    mut op: impl FnMut(u32) -> Fut,
    mut again: impl FnMut(&E, u32) -> bool,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op(attempt).await {
            Err(e) if attempt < attempts && again(&e, attempt) => {
                if let Some(b) = backoff {
                    b.sleep(attempt).await;
                }
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        let b = Backoff::CONFLICT;
        for attempt in 1..20 {
            let d = b.delay(attempt);
            assert!(d <= Duration::from_secs(2), "{attempt}: {d:?}");
        }
        assert!(b.delay(1) <= Duration::from_millis(100));
        assert!(b.delay(1) >= Duration::from_millis(50));
        assert!(b.delay(6) >= Duration::from_secs(1));
        assert!(b.delay(u32::MAX) <= Duration::from_secs(2));
    }

    #[tokio::test]
    async fn tries_again_while_asked_and_at_most_attempts_times() {
        let mut calls = 0;
        let r: Result<(), u32> = retry(
            3,
            None,
            |a| {
                calls += 1;
                async move { Err(a) }
            },
            |_, _| true,
        )
        .await;
        assert_eq!((r, calls), (Err(3), 3));

        let mut calls = 0;
        let r: Result<(), u32> = retry(
            5,
            None,
            |a| {
                calls += 1;
                async move { Err(a) }
            },
            |e, _| *e < 2,
        )
        .await;
        assert_eq!((r, calls), (Err(2), 2), "an error not to retry ends it");

        let r: Result<u32, u32> = retry(
            5,
            Some(Backoff::new(Duration::ZERO, Duration::ZERO)),
            |a| async move {
                if a < 3 {
                    Err(a)
                } else {
                    Ok(a)
                }
            },
            |_, _| true,
        )
        .await;
        assert_eq!(r, Ok(3));
    }
}
