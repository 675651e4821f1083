//! `git s3 …` parsed (clap's `try_parse_from` on the session's args; help
//! and errors go to the session's stdout/stderr with clap's exit code) and
//! run: each command is one file beside this one. `lfs …` is dispatched to
//! `lfs::config::run` with the words after `lfs`; `daemon …` is handled by
//! the `git-s3` binary itself and only appears here in the help.
//!
//! The same sessions serve git-remote-s3 0.4.2's spelling
//! (`git-remote-s3 doctor|delete-branch|protect|unprotect <remote> [<branch>]`).

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use git_s3_proto::pb::SessionStart;

use super::{access, branch, cache, doctor, gc, init, keygen, migrate, status};
use super::{CliError, Ctx};
use crate::session::state::DaemonState;
use crate::session::{Input, Out};

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
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
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
    /// Choose the storage format of an empty remote: --format packs|bundles [--encrypt-to age1…]
    Init(init::InitArgs),
    /// Make an age identity for encrypted remotes (in ~/.config/git-s3/identities) and print its recipient
    Keygen(keygen::KeygenArgs),
    /// Who can read an encrypted remote: list | grant <remote> <age1…|kms:KEY> | revoke [--reencrypt] <remote> <recipient>
    Access(access::AccessArgs),
    /// Compact a packs-format remote: combine its packs into one (or, with --geometric, only the small ones), delete replaced packs after a grace period
    Gc(gc::GcArgs),
    /// Convert a remote between the bundles and packs formats: --to packs|bundles
    Migrate(migrate::MigrateArgs),
    /// Show, prune or clear the local bundle cache
    Cache(cache::CacheArgs),
    /// Control the daemon: start | stop | restart | run | status [--json] (see `git s3 daemon --help`)
    Daemon(Passthrough),
    /// Configure Git LFS to use git-s3: install [--remote <name> [--url s3://…]] [--global [--scoped]] | uninstall | migrate --to s3://… | enable-debug | disable-debug (see `git s3 lfs --help`)
    Lfs(Passthrough),
}

#[derive(Args, Debug)]
pub(crate) struct Passthrough {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
    pub(crate) args: Vec<String>,
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

pub(crate) async fn run(state: Arc<DaemonState>, mut start: SessionStart, input: Input, out: Out) -> i32 {
    if start.args.first().map(String::as_str) == Some("lfs") {
        start.args.remove(0);
        if start.args.first().map(String::as_str) == Some("migrate") {
            let args = start.args[1..].to_vec();
            return crate::lfs::migrate::run(state, start, &args, input, out).await;
        }
        return crate::lfs::config::run(state, start, input, out).await;
    }
    let name = program_name(&start.argv0);
    let argv = std::iter::once(name.to_string()).chain(start.args.iter().cloned());
    let cli = match command().bin_name(name).try_get_matches_from(argv) {
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
        Cmd::Cache(a) => cache::run(&mut ctx, a).await,
        Cmd::Init(a) => init::run(&mut ctx, a).await,
        Cmd::Keygen(a) => keygen::run(&mut ctx, a).await,
        Cmd::Access(a) => access::run(&mut ctx, a).await,
        Cmd::Gc(a) => gc::run(&mut ctx, a).await,
        Cmd::Migrate(a) => migrate::run(&mut ctx, a).await,
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

/// `git s3`'s clap command, each command's `--help` ending with its documentation pointer.
pub fn command() -> clap::Command {
    super::help_docs::with_doc_pointers(<Cli as clap::CommandFactory>::command())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_has_a_doc_pointer_and_nothing_else_is_named() {
        let cmd = command();
        for sub in cmd.get_subcommands() {
            let name = sub.get_name();
            let help = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.contains("Documentation: docs/") && help.contains(&format!("man git-s3-{name}")), "{name}: {help:?}");
        }
        for (sub, _) in super::super::help_docs::DOCS {
            assert!(cmd.find_subcommand(sub).is_some(), "{sub} is not a command");
        }
    }

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
    fn program_names() {
        assert_eq!(program_name("/usr/bin/git-remote-s3"), "git-remote-s3");
        assert_eq!(program_name("git-s3"), "git s3");
    }
}
