//! `git s3 …`: the user's commands, served by the daemon. `dispatch` parses
//! the command line and runs the command's file: `status`, `doctor`,
//! `branch` (delete-branch, protect, unprotect), `init`, `gc`, `migrate`,
//! `cache`; `remote` resolves a `<remote-or-url>` argument and reads a
//! prefix for them. A command reaches each storage format through
//! `crate::storage`, never through another command's file.
//!
//! This file is what the commands share (their context, errors and
//! formatting); it uses none of them.

mod access;
mod branch;
mod cache;
pub mod dispatch;
mod doctor;
mod gc;
pub mod help_docs;
mod init;
mod keygen;
mod migrate;
mod remote;
mod status;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::ValueEnum;

use crate::local::git::GitError;
use crate::s3::store::StoreError;
use crate::s3::url::UrlError;
use crate::session::state::DaemonState;
use crate::session::{Input, Out};
use crate::storage::bundles::locks::LockError;

/// A command's failure: one line for the user, and an exit code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// Bad arguments (exit 2).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("'{name}' is neither an s3:// URL nor a git remote of the repository at {cwd} ({detail})")]
    UnknownRemote { name: String, cwd: String, detail: String },
    #[error("remote '{name}' has URL '{url}', which is not an s3:// or s3+zip:// URL")]
    NotS3Remote { name: String, url: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// The operation was refused (protected branch, no confirmation, …).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    NotFound(String),
    #[error("aborted")]
    Aborted,
}

impl CliError {
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

pub(crate) type CliResult = Result<i32, CliError>;
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FormatArg {
    /// Incremental packs and one manifest (`<prefix>/.git-s3/`)
    Packs,
    /// git-remote-s3 0.4.2's bundle per ref (`<prefix>/refs/…/<sha>.bundle`)
    Bundles,
}

/// What every command gets: the caller's context and the session's stdio.
pub(crate) struct Ctx {
    pub(crate) state: Arc<DaemonState>,
    pub(crate) env: HashMap<String, String>,
    pub(crate) cwd: PathBuf,
    pub(crate) stdin_is_tty: bool,
    pub(crate) input: Input,
    pub(crate) out: Out,
}

impl Ctx {
    /// A line on stdout.
    pub(crate) fn println(&self, s: impl AsRef<str>) {
        self.out.stdout(format!("{}\n", s.as_ref()));
    }

    /// A line on stderr.
    pub(crate) fn eprintln(&self, s: impl AsRef<str>) {
        self.out.stderr(format!("{}\n", s.as_ref()));
    }

    /// Asks a question on stderr and reads the answer (None at end of input).
    pub(crate) async fn ask(&mut self, question: &str) -> Option<String> {
        self.out.stderr(question.to_string());
        self.input.read_line().await.map(|s| s.trim().to_string())
    }

    /// Yes/no question; `default` on an empty answer; false at end of input.
    pub(crate) async fn confirm(&mut self, question: &str, default: bool) -> bool {
        let hint = if default { "[Y/n]" } else { "[y/N]" };
        for _ in 0..3 {
            match self.ask(&format!("{question} {hint} ")).await {
                None => return false,
                Some(a) if a.is_empty() => return default,
                Some(a) => match a.to_ascii_lowercase().as_str() {
                    "y" | "yes" => return true,
                    "n" | "no" => return false,
                    _ => self.eprintln("please answer yes or no"),
                },
            }
        }
        false
    }

    /// Picks one of `n` numbered choices (1-based on screen); `default` on an
    /// empty answer; Err(Aborted) at end of input or after repeated bad answers.
    pub(crate) async fn choose(&mut self, question: &str, n: usize, default: usize) -> Result<usize, CliError> {
        for _ in 0..3 {
            let Some(a) = self.ask(&format!("{question} [{}]: ", default + 1)).await else {
                return Err(CliError::Aborted);
            };
            if a.is_empty() {
                return Ok(default);
            }
            match a.parse::<usize>() {
                Ok(i) if i >= 1 && i <= n => return Ok(i - 1),
                _ => self.eprintln(format!("enter a number from 1 to {n}")),
            }
        }
        Err(CliError::Aborted)
    }
}
/// Formats seconds as `42s`, `3m 05s`, `2h 10m`, `4d 3h`.
pub(crate) fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Formats a byte count with binary units.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(65), "1m 05s");
        assert_eq!(human_duration(3 * 3600 + 120), "3h 02m");
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
