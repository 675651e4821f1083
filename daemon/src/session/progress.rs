//! Progress lines for long transfers, written to the caller's stderr the way
//! git writes its own (`\r`-updated, at most a few times a second).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::session::Out;

pub(crate) struct Progress {
    out: Out,
    enabled: bool,
    label: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last: Option<Instant>,
    /// Quiet for transfers shorter than this.
    delay: Duration,
}

/// How long a transfer runs before its progress shows when the caller's
/// environment does not say.
const DEFAULT_DELAY: Duration = Duration::from_millis(500);

const MIB: f64 = 1024.0 * 1024.0;

impl Progress {
    pub(crate) fn new(out: Out, enabled: bool, label: String, total: Option<u64>) -> Progress {
        Progress { out, enabled, label, total, done: 0, started: Instant::now(), last: None, delay: DEFAULT_DELAY }
    }

    /// Shows progress only after git's `GIT_PROGRESS_DELAY` (whole seconds,
    /// in the caller's `env`) as git's own progress does, when it is set.
    pub(crate) fn delayed_as(mut self, env: &HashMap<String, String>) -> Progress {
        if let Some(secs) = env.get("GIT_PROGRESS_DELAY").and_then(|v| v.trim().parse::<u64>().ok()) {
            self.delay = Duration::from_secs(secs);
        }
        self
    }

    pub(crate) fn add(&mut self, n: u64) {
        self.done += n;
        if !self.enabled {
            return;
        }
        // Quiet for quick transfers; then at most every 250 ms.
        if self.started.elapsed() < self.delay {
            return;
        }
        if self.last.map(|l| l.elapsed() < Duration::from_millis(250)).unwrap_or(false) {
            return;
        }
        self.last = Some(Instant::now());
        self.out.stderr(format!("\r{}", self.line()));
    }

    fn line(&self) -> String {
        let rate = self.done as f64 / MIB / self.started.elapsed().as_secs_f64().max(0.001);
        match self.total {
            Some(t) if t > 0 => {
                format!("{}: {:3}% ({:.1}/{:.1} MiB) {:.1} MiB/s", self.label, self.done * 100 / t, self.done as f64 / MIB, t as f64 / MIB, rate)
            }
            _ => format!("{}: {:.1} MiB {:.1} MiB/s", self.label, self.done as f64 / MIB, rate),
        }
    }

    /// Prints the final line if anything was shown.
    pub(crate) fn finish(&mut self) {
        if self.enabled && self.last.is_some() {
            self.out.stderr(format!("\r{}, done.\n", self.line()));
        }
    }
}
