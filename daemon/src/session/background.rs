//! Work the daemon finishes after a session has answered, through one
//! tracker held in `DaemonState`: a daemon asked to stop (idle, `git s3
//! daemon stop`, SIGTERM) waits for it (bounded), then cancels what is
//! left instead of dropping it half-way unannounced. A task of a kind for
//! a remote (a background gc) runs once at a time: a second one asked for
//! while the first runs is not started.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

#[derive(Default)]
pub(crate) struct Background {
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// (kind, key) of the de-duplicated tasks running now.
    running: Arc<Mutex<HashSet<(&'static str, String)>>>,
    /// Tasks started, by kind; and tasks not started because one of the
    /// same kind and key was running (shown by `git s3 status --json`).
    counts: Mutex<Counts>,
}

#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) started: BTreeMap<&'static str, u64>,
    pub(crate) deduplicated: u64,
}

/// Removes a de-duplicated task's key when it ends (also when it panics or
/// is cancelled).
struct Running {
    set: Arc<Mutex<HashSet<(&'static str, String)>>>,
    key: (&'static str, String),
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.lock() {
            s.remove(&self.key);
        }
    }
}

impl Background {
    /// Spawns `work`, which the daemon waits for before exiting.
    pub(crate) fn spawn(&self, kind: &'static str, work: impl Future<Output = ()> + Send + 'static) {
        self.count(kind);
        self.launch(kind, work, None);
    }

    /// Spawns `work` unless a task of this `kind` for this `key` (a remote)
    /// is running. Returns whether it was started.
    pub(crate) fn spawn_once(&self, kind: &'static str, key: &str, work: impl Future<Output = ()> + Send + 'static) -> bool {
        let entry = (kind, key.to_string());
        {
            let Ok(mut running) = self.running.lock() else { return false };
            if !running.insert(entry.clone()) {
                drop(running);
                if let Ok(mut c) = self.counts.lock() {
                    c.deduplicated += 1;
                }
                tracing::info!(task = kind, key, "already running; not started again");
                return false;
            }
        }
        self.count(kind);
        self.launch(kind, work, Some(Running { set: self.running.clone(), key: entry }));
        true
    }

    fn count(&self, kind: &'static str) {
        if let Ok(mut c) = self.counts.lock() {
            *c.started.entry(kind).or_default() += 1;
        }
    }

    fn launch(&self, kind: &'static str, work: impl Future<Output = ()> + Send + 'static, running: Option<Running>) {
        let cancel = self.cancel.clone();
        self.tracker.spawn(
            async move {
                let _running = running;
                tokio::select! {
                    _ = work => {}
                    _ = cancel.cancelled() => tracing::warn!(task = kind, "cancelled: the daemon is exiting"),
                }
            }
            .instrument(tracing::info_span!("background", task = kind)),
        );
    }

    /// Tasks spawned and not finished.
    pub(crate) fn in_flight(&self) -> usize {
        self.tracker.len()
    }

    pub(crate) fn counts(&self) -> Counts {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Waits until no task is running, or `limit` has passed; then cancels
    /// what is left (and waits a moment for it to stop). Returns how many
    /// tasks were still running at `limit`.
    pub(crate) async fn drain(&self, limit: Duration) -> usize {
        self.tracker.close();
        if tokio::time::timeout(limit, self.tracker.wait()).await.is_ok() {
            return 0;
        }
        let left = self.tracker.len();
        self.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_spawned_work() {
        let bg = Background::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        bg.spawn("test", async move {
            let _ = rx.await;
        });
        assert_eq!(bg.in_flight(), 1);
        let _ = tx.send(());
        assert_eq!(bg.drain(Duration::from_secs(5)).await, 0);
        assert_eq!(bg.in_flight(), 0);
    }

    #[tokio::test]
    async fn drain_cancels_what_outlives_its_limit() {
        let bg = Background::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        bg.spawn("forever", async move {
            // Dropped (cancelled) rather than run to the end: tx sees it.
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        assert_eq!(bg.drain(Duration::from_millis(10)).await, 1, "one task was still running");
        assert_eq!(bg.in_flight(), 0, "cancelled");
        assert!(rx.await.is_err(), "the task's future was dropped");
    }

    #[tokio::test]
    async fn one_task_per_kind_and_key_at_a_time() {
        let bg = Background::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        assert!(bg.spawn_once("gc", "s3://b/r", async move {
            let _ = rx.await;
        }));
        assert!(!bg.spawn_once("gc", "s3://b/r", async {}), "the same remote: not started");
        assert!(bg.spawn_once("gc", "s3://b/other", async {}), "another remote: started");
        assert!(bg.spawn_once("upload_idx", "s3://b/r", async {}), "another kind: started");
        let _ = tx.send(());
        assert_eq!(bg.drain(Duration::from_secs(5)).await, 0);
        assert!(bg.spawn_once("gc", "s3://b/r", async {}), "started again once the first ended");
        let c = bg.counts();
        assert_eq!((c.started.get("gc").copied(), c.deduplicated), (Some(3), 1));
    }

    #[tokio::test]
    async fn a_panicking_task_frees_its_key() {
        let bg = Background::default();
        assert!(bg.spawn_once("gc", "r", async { panic!("boom") }));
        assert_eq!(bg.drain(Duration::from_secs(5)).await, 0);
        assert!(bg.spawn_once("gc", "r", async {}), "the panic released the key");
    }
}
