//! Every task the daemon starts, through the trackers held in
//! `DaemonState`: the sessions (a shim's stdin pump and the program it
//! runs) and the work finished after a session has answered. A daemon
//! asked to stop (idle, `git s3 daemon stop`, SIGTERM) waits for both
//! (bounded), then cancels what is left instead of dropping it half-way
//! unannounced. A task of a kind for a remote (a background gc) runs once
//! at a time: a second one asked for while the first runs is not started.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

#[derive(Default)]
pub(crate) struct Background {
    /// Work after the answer (`spawn`, `spawn_once`).
    tracker: TaskTracker,
    /// Sessions and their stdin pumps (`spawn_session`).
    sessions: TaskTracker,
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

    /// Spawns a session's task (the program it runs, or the pump of the
    /// shim's stdin), which the daemon waits for (bounded) before exiting,
    /// then cancels. Not counted as background work.
    pub(crate) fn spawn_session(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.sessions.spawn(cancellable("session", self.cancel.clone(), work, None));
    }

    fn count(&self, kind: &'static str) {
        if let Ok(mut c) = self.counts.lock() {
            *c.started.entry(kind).or_default() += 1;
        }
    }

    fn launch(&self, kind: &'static str, work: impl Future<Output = ()> + Send + 'static, running: Option<Running>) {
        let task = cancellable(kind, self.cancel.clone(), work, running);
        self.tracker.spawn(task.instrument(tracing::info_span!("background", task = kind)));
    }

    /// Tasks spawned and not finished.
    pub(crate) fn in_flight(&self) -> usize {
        self.tracker.len()
    }

    pub(crate) fn counts(&self) -> Counts {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Waits until no session and no background task is running (sessions
    /// first: they may start background work), or `limit` has passed; then
    /// cancels what is left (and waits a moment for it to stop). Returns
    /// how many tasks were still running at `limit`.
    pub(crate) async fn drain(&self, limit: Duration) -> usize {
        self.sessions.close();
        self.tracker.close();
        let all = async {
            self.sessions.wait().await;
            self.tracker.wait().await;
        };
        if tokio::time::timeout(limit, all).await.is_ok() {
            return 0;
        }
        let left = self.sessions.len() + self.tracker.len();
        self.cancel.cancel();
        let all = async {
            self.sessions.wait().await;
            self.tracker.wait().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
        left
    }
}

/// `work`, ended early (dropped) when `cancel` fires; `running` (a
/// de-duplicated task's key) is released when it ends either way.
async fn cancellable(kind: &'static str, cancel: CancellationToken, work: impl Future<Output = ()>, running: Option<Running>) {
    let _running = running;
    tokio::select! {
        _ = work => {}
        _ = cancel.cancelled() => tracing::warn!(task = kind, "cancelled: the daemon is exiting"),
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
    async fn drain_waits_for_sessions_and_the_work_they_start() {
        let bg = Arc::new(Background::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let inner = bg.clone();
        bg.spawn_session(async move {
            let _ = rx.await;
            // Started by the session while the daemon drains: waited for too.
            inner.spawn("after", async move {
                let _ = done_tx.send(());
            });
        });
        assert_eq!(bg.in_flight(), 0, "a session is not background work");
        let _ = tx.send(());
        assert_eq!(bg.drain(Duration::from_secs(5)).await, 0);
        assert!(done_rx.await.is_ok(), "the session's background work ran to the end");
    }

    #[tokio::test]
    async fn drain_cancels_a_session_that_outlives_its_limit() {
        let bg = Background::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        bg.spawn_session(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        assert_eq!(bg.drain(Duration::from_millis(10)).await, 1, "the session was still running");
        assert!(rx.await.is_err(), "the session's future was dropped");
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
