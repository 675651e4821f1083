//! Work the daemon finishes after a session has answered: tracked, so that
//! a daemon asked to stop (idle, `git s3 daemon stop`, SIGTERM) waits for
//! it (bounded) instead of dropping it half-way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tracing::Instrument;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Counts a task from spawn to end (also when it panics).
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Spawns `work`, which the daemon waits for before exiting.
pub fn spawn(name: &'static str, work: impl std::future::Future<Output = ()> + Send + 'static) {
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    let guard = Guard;
    tokio::spawn(
        async move {
            let _guard = guard;
            work.await;
        }
        .instrument(tracing::info_span!("background", task = name)),
    );
}

/// Tasks spawned and not finished.
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::SeqCst)
}

/// Waits until no task is running, or `limit` has passed. Returns how many
/// are left.
pub async fn drain(limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    while in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    in_flight()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_spawned_work() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        spawn("test", async move {
            let _ = rx.await;
        });
        assert!(in_flight() >= 1);
        assert!(drain(Duration::from_millis(50)).await >= 1, "still running");
        let _ = tx.send(());
        assert_eq!(drain(Duration::from_secs(5)).await, 0);
    }
}
