//! `git s3 …`: the user's command, served by the daemon.
//!
//! Parsing is clap's (`try_parse_from` on the session's args; help and
//! errors go to the session's stdout/stderr with clap's exit code). One file
//! per command: `status` (`packs_status` for the packs format), `doctor` (`doctor_packs` for the packs format),
//! `branch` (delete-branch, protect, unprotect), `cache_cmd`, `init`, `packs_cmd` (gc, migrate; the packs side of the branch commands); `remote` resolves a `<remote-or-url>` argument
//! and reads a prefix. `lfs …` is dispatched to `lfs_config::run` with the
//! words after `lfs`. `daemon …` is handled by the `git-s3` binary itself and
//! only appears here in the help.
//!
//! The same sessions serve git-remote-s3 0.4.2's spelling
//! (`git-remote-s3 doctor|delete-branch|protect|unprotect <remote> [<branch>]`).

mod branch;
mod cache_cmd;
mod doctor;
mod doctor_packs;
pub mod help_docs;
mod init;
mod packs_cmd;
mod packs_status;
mod remote;
mod status;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use git_s3_proto::pb::SessionStart;

use crate::git::GitError;
use crate::locks::LockError;
use crate::remote_url::UrlError;
use crate::s3_store::StoreError;
use crate::session::{Input, Out};
use crate::state::DaemonState;

/// A command's failure: one line for the user, and an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
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
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }
}

pub type CliResult = Result<i32, CliError>;

#[derive(Parser, Debug)]
#[command(
    name = "git s3",
    about = "git-s3: S3 as a git remote (s3:// and s3+zip:// URLs) and a Git LFS server",
    long_about = None,
    disable_version_flag = true,
    arg_required_else_help = true,
    after_help = "A <REMOTE> is a git remote name of the current repository (resolved with `git remote get-url`) \
or a URL: s3://[profile@]bucket/prefix or s3+zip://[profile@]bucket/prefix.\n\
Exit codes: 0 ok, 1 failure, 2 usage error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Show the daemon, its warm S3 clients, the local cache and, for a remote: refs, HEAD, protected branches, locks, warnings
    Status(status::StatusArgs),
    /// Find and fix problems in a remote: several bundles for a ref, a missing or dangling HEAD, stale locks
    Doctor(doctor::DoctorArgs),
    /// Delete a branch from a remote (its bundle(s) and repo.zip)
    DeleteBranch(branch::BranchArgs),
    /// Protect a branch: force pushes and deletions are refused
    Protect(branch::BranchArgs),
    /// Remove a branch's protection
    Unprotect(branch::BranchArgs),
    /// Choose the storage format of an empty remote: --format packs|bundles
    Init(init::InitArgs),
    /// Compact a packs-format remote: combine its packs into one (or, with --geometric, only the small ones), delete replaced packs after a grace period
    Gc(packs_cmd::GcArgs),
    /// Convert a remote between the bundles and packs formats: --to packs|bundles
    Migrate(packs_cmd::MigrateArgs),
    /// Show, prune or clear the local bundle cache
    Cache(cache_cmd::CacheArgs),
    /// Control the daemon: start | stop | restart | run | status [--json] (see `git s3 daemon --help`)
    Daemon(Passthrough),
    /// Configure Git LFS to use git-s3: install [--remote <name>] | enable-debug | disable-debug (see `git s3 lfs --help`)
    Lfs(Passthrough),
}

#[derive(Args, Debug)]
pub struct Passthrough {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

/// What every command gets: the caller's context and the session's stdio.
pub struct Ctx {
    pub state: Arc<DaemonState>,
    pub env: HashMap<String, String>,
    pub cwd: PathBuf,
    pub stdin_is_tty: bool,
    pub input: Input,
    pub out: Out,
}

impl Ctx {
    /// A line on stdout.
    pub fn println(&self, s: impl AsRef<str>) {
        self.out.stdout(format!("{}\n", s.as_ref()));
    }

    /// A line on stderr.
    pub fn eprintln(&self, s: impl AsRef<str>) {
        self.out.stderr(format!("{}\n", s.as_ref()));
    }

    /// Asks a question on stderr and reads the answer (None at end of input).
    pub async fn ask(&mut self, question: &str) -> Option<String> {
        self.out.stderr(question.to_string());
        self.input.read_line().await.map(|s| s.trim().to_string())
    }

    /// Yes/no question; `default` on an empty answer; false at end of input.
    pub async fn confirm(&mut self, question: &str, default: bool) -> bool {
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
    pub async fn choose(&mut self, question: &str, n: usize, default: usize) -> Result<usize, CliError> {
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

/// The program name for help and errors: 0.4.2's spelling when called as
/// `git-remote-s3 doctor …`.
fn program_name(argv0: &str) -> &'static str {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    if base.starts_with("git-remote-s3") {
        "git-remote-s3"
    } else {
        "git s3"
    }
}

pub async fn run(state: Arc<DaemonState>, mut start: SessionStart, input: Input, out: Out) -> i32 {
    if start.args.first().map(String::as_str) == Some("lfs") {
        start.args.remove(0);
        return crate::lfs_config::run(state, start, input, out).await;
    }
    let name = program_name(&start.argv0);
    let argv = std::iter::once(name.to_string()).chain(start.args.iter().cloned());
    let cli = match help_docs::command().bin_name(name).try_get_matches_from(argv) {
        Ok(m) => match <Cli as clap::FromArgMatches>::from_arg_matches(&m) {
            Ok(c) => c,
            Err(e) => return clap_error(&out, e),
        },
        Err(e) => return clap_error(&out, e),
    };
    let mut ctx = Ctx {
        state,
        env: start.env,
        cwd: PathBuf::from(if start.cwd.is_empty() { "/".to_string() } else { start.cwd }),
        stdin_is_tty: start.stdin_is_tty,
        input,
        out,
    };
    let result = match cli.cmd {
        Cmd::Status(a) => status::run(&mut ctx, a).await,
        Cmd::Doctor(a) => doctor::run(&mut ctx, a).await,
        Cmd::DeleteBranch(a) => branch::delete_branch(&mut ctx, a).await,
        Cmd::Protect(a) => branch::protect(&mut ctx, a).await,
        Cmd::Unprotect(a) => branch::unprotect(&mut ctx, a).await,
        Cmd::Cache(a) => cache_cmd::run(&mut ctx, a).await,
        Cmd::Init(a) => init::run(&mut ctx, a).await,
        Cmd::Gc(a) => packs_cmd::run_gc(&mut ctx, a).await,
        Cmd::Migrate(a) => packs_cmd::run_migrate(&mut ctx, a).await,
        Cmd::Daemon(_) => Err(CliError::Usage("`daemon` is handled by the git-s3 command: run `git s3 daemon …`".into())),
        // Unreachable through `git s3 lfs` (dispatched above), but
        // `git-remote-s3` never forwards it either: keep a clear answer.
        Cmd::Lfs(_) => Err(CliError::Usage("run `git s3 lfs …`".into())),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            ctx.eprintln(format!("fatal: {e}"));
            e.exit_code()
        }
    }
}

fn clap_error(out: &Out, e: clap::Error) -> i32 {
    let text = e.render().to_string();
    if e.use_stderr() {
        out.stderr(text);
    } else {
        out.stdout(text);
    }
    e.exit_code()
}

/// Formats seconds as `42s`, `3m 05s`, `2h 10m`, `4d 3h`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Formats a byte count with binary units.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("git s3").chain(args.iter().copied()))
    }

    #[test]
    fn parses_commands_and_compat_spellings() {
        let c = parse(&["delete-branch", "origin", "-b", "feature"]).unwrap();
        assert!(matches!(c.cmd, Cmd::DeleteBranch(ref a) if a.branch().unwrap() == "feature"));
        let c = parse(&["protect", "origin", "main"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Protect(ref a) if a.branch().unwrap() == "main"));
        let c = parse(&["doctor", "s3://b-1/p", "main", "--lock-ttl", "0", "-d", "--keep", "abc", "--keep", "def"]).unwrap();
        match c.cmd {
            Cmd::Doctor(a) => {
                assert_eq!(a.lock_ttl, Some(0));
                assert!(a.delete_bundle);
                assert_eq!(a.keep, vec!["abc".to_string(), "def".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["cache", "prune", "--max-bytes", "10"]).unwrap().cmd, Cmd::Cache(_)));
        assert!(matches!(parse(&["daemon", "stop"]).unwrap().cmd, Cmd::Daemon(_)));
    }

    #[test]
    fn usage_errors_exit_2_and_help_lists_everything() {
        let e = parse(&["nope"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = parse(&["doctor", "o", "--lock-ttl", "x"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = parse(&["--help"]).unwrap_err();
        assert_eq!(e.exit_code(), 0);
        let help = e.render().to_string();
        for cmd in ["status", "doctor", "delete-branch", "protect", "unprotect", "cache", "daemon", "lfs"] {
            assert!(help.contains(cmd), "{cmd} missing from help:\n{help}");
        }
        // both branch spellings given and different
        let c = parse(&["protect", "origin", "a", "-b", "b"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Protect(ref a) if a.branch().is_err()));
    }

    #[test]
    fn formats() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(65), "1m 05s");
        assert_eq!(human_duration(3 * 3600 + 120), "3h 02m");
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(program_name("/usr/bin/git-remote-s3"), "git-remote-s3");
        assert_eq!(program_name("git-s3"), "git s3");
    }
}
