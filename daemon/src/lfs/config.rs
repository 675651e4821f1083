//! `git-lfs-s3 install|enable-debug|disable-debug|uninstall` (also
//! `git s3 lfs …`): the git config that makes git-lfs use our agent, with
//! the same keys and messages as git-remote-s3 0.4.2. Also
//! [`configure_for_clone`], which the remote helper calls so that
//! `git clone s3://…` of an LFS repository checks out real contents.

use std::sync::Arc;

use git_s3_proto::pb::SessionStart;

use crate::local::git::{Git, GitError};
use crate::s3::url::{s3_url_of_remote, RemoteNameError, RemoteUrl};
use crate::session::state::DaemonState;
use crate::session::{Input, Out};

/// Host of the synthetic LFS URL (RFC 6761 `.test`: never contacted).
pub(crate) const LFS_ALIAS_HOST: &str = "lfs-alias.git-remote-s3.test";
pub(crate) const AGENT: &str = "git-lfs-s3";
const PATH_KEY: &str = "lfs.customtransfer.git-lfs-s3.path";
const ARGS_KEY: &str = "lfs.customtransfer.git-lfs-s3.args";
const STANDALONE_KEY: &str = "lfs.standalonetransferagent";

pub(crate) const HELP: &str = "\
usage: git-lfs-s3 install [--remote <name>] [--global]
       git-lfs-s3 install --remote <name> --url s3://<bucket>/<prefix> [--no-lfsconfig]
       git-lfs-s3 install --global --scoped
       git-lfs-s3 enable-debug [--global]
       git-lfs-s3 disable-debug [--global]
       git-lfs-s3 uninstall [--remote <name>] [--global]

git-lfs-s3 is a git-lfs standalone custom transfer agent that keeps LFS
objects in an S3 bucket, at <prefix>/lfs/<oid>.

  install                 use git-lfs-s3 for every remote of this repository
                          (lfs.standalonetransferagent)
  install --remote <name> use it only for that S3 remote (remote.<name>.lfsurl
                          set to https://lfs-alias.git-remote-s3.test/<bucket>/<prefix>)
  install --remote <name> --url s3://<bucket>/<prefix>
                          code on another git server (GitHub, GitLab, ...),
                          LFS objects in S3: `git push`, `git lfs push/pull` of
                          <name> move LFS objects to and from s3://<bucket>/<prefix>/lfs/.
                          Also writes lfs.url into .lfsconfig (unless
                          --no-lfsconfig): commit it, and every clone finds the
                          bucket on a machine set up with `install --global --scoped`
  install --global        use it for every repository of this user (all remotes)
  install --global --scoped
                          once per machine: use it for every repository whose LFS
                          URL (e.g. lfs.url in a committed .lfsconfig) is
                          https://lfs-alias.git-remote-s3.test/...; other
                          repositories keep their LFS server. Runs
                          `git lfs install --skip-repo` if git-lfs is not set up
  enable-debug            log to <gitdir>/lfs/tmp/git-lfs-s3.log
  disable-debug           stop debug logging
  uninstall               remove the configuration written by install (with
                          --remote: also lfs.url from .lfsconfig if it is ours)

`git s3 lfs migrate --to s3://<bucket>/<prefix> [--remote <name>]` copies the
objects from the code host's LFS server to the bucket, then switches (see
`git s3 lfs migrate --help`).

`git clone s3://…` configures LFS in the new clone by itself (once
`git lfs install` has been run). Credentials, profile and region come from
the environment of the git command (AWS_PROFILE, AWS_REGION, ...).

Documentation: docs/lfs.md and docs/lfs-other-hosts.md in the git-s3 repository; man git-s3-lfs
";

/// `https://lfs-alias.git-remote-s3.test/<bucket>/<percent-encoded prefix>`,
/// exactly as git-remote-s3 0.4.2 builds it (each prefix segment quoted
/// with Python's `urllib.parse.quote(segment, safe="")`).
pub(crate) fn synthetic_lfs_url(bucket: &str, prefix: &str) -> String {
    let quoted: Vec<String> = prefix.split('/').map(quote_segment).collect();
    format!("https://{LFS_ALIAS_HOST}/{bucket}/{}", quoted.join("/"))
}

/// What Python's `quote(…, safe="")` keeps: RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

fn quote_segment(seg: &str) -> String {
    percent_encoding::utf8_percent_encode(seg, UNRESERVED).to_string()
}

/// The `s3://bucket/prefix` a synthetic LFS URL stands for (no profile:
/// prefer the URL of the remote that carries this alias when there is one).
pub fn parse_synthetic_lfs_url(url: &str) -> Option<RemoteUrl> {
    let rest = url.strip_prefix("https://")?.strip_prefix(LFS_ALIAS_HOST)?.strip_prefix('/')?;
    let (bucket, prefix) = rest.split_once('/')?;
    let prefix = percent_decode(prefix)?;
    RemoteUrl::parse(&format!("s3://{bucket}/{prefix}")).ok()
}

/// `s` decoded; None when a `%` is not followed by two hex digits (the
/// crate would keep it as it is) or the bytes are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let well_formed = s.split('%').skip(1).all(|rest| rest.get(..2).is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit())));
    well_formed.then(|| percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|d| d.into_owned())).flatten()
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error(transparent)]
    Git(#[from] GitError),
}

/// `git config [--global] --replace-all key value`.
async fn config_set(git: &Git, global: bool, key: &str, value: &str) -> Result<(), GitError> {
    let mut args = vec!["config"];
    if global {
        args.push("--global");
    }
    args.extend(["--replace-all", key, value]);
    git.run(&args).await.map(|_| ())
}

/// `git config [--global] --unset-all key`; an absent key is fine.
async fn config_unset(git: &Git, global: bool, key: &str) {
    let mut args = vec!["config"];
    if global {
        args.push("--global");
    }
    args.extend(["--unset-all", key]);
    let _ = git.status(&args).await;
}

async fn config_get(git: &Git, global: bool, key: &str) -> Option<String> {
    if global {
        git.run(&["config", "--global", "--get", key]).await.ok().filter(|s| !s.is_empty())
    } else {
        git.config_get(key).await
    }
}

/// Writes the per-remote (scoped) LFS configuration for an S3 remote into
/// the repository `git` runs in: the agent path, `remote.<name>.lfsurl` set
/// to the synthetic URL, and `lfs.<url>.standalonetransferagent`. Leaves an
/// `lfsurl` that someone else set alone (returns Ok(false)).
pub(crate) async fn configure_for_clone(git: &Git, remote_name: &str, url: &RemoteUrl) -> Result<bool, ConfigError> {
    let lfs_url = synthetic_lfs_url(&url.bucket, &url.prefix);
    let lfsurl_key = format!("remote.{remote_name}.lfsurl");
    if let Some(existing) = git.config_get(&lfsurl_key).await {
        if existing != lfs_url {
            return Ok(false);
        }
    }
    config_set(git, false, PATH_KEY, AGENT).await?;
    config_set(git, false, &lfsurl_key, &lfs_url).await?;
    config_set(git, false, &format!("lfs.{lfs_url}.standalonetransferagent"), AGENT).await?;
    Ok(true)
}

/// The remote helper's hook: during `git clone` (after the first fetch),
/// writes the scoped LFS configuration into the new repository so that the
/// checkout's smudge fetches LFS objects through `git-lfs-s3`. `helper_args`
/// are the helper's arguments (`<remote> <url>`). Failures only warn.
pub(crate) async fn on_clone_fetched(git: &Git, helper_args: &[String], url: &RemoteUrl, out: &Out) {
    let remote = match helper_args {
        [name, _, ..] if !name.contains("://") && !name.starts_with('-') => name.as_str(),
        _ => return,
    };
    match configure_for_clone(git, remote, url).await {
        Ok(true) => tracing::debug!(remote, "LFS configured for the clone"),
        Ok(false) => tracing::debug!(remote, "remote already has an lfsurl; LFS configuration left alone"),
        Err(e) => out.stderr(format!("warning: could not configure git-lfs-s3 for the clone: {e}\n")),
    }
}

/// `git s3 lfs` / `git-lfs-s3`'s command line (clap). Help is [`HELP`], and
/// errors keep git-remote-s3 0.4.2's words (see [`usage_error`]).
#[derive(clap::Parser, Debug)]
#[command(name = "git-lfs-s3", disable_help_flag = true, disable_help_subcommand = true, disable_version_flag = true)]
struct LfsCli {
    #[arg(short = 'h', long = "help")]
    help: bool,
    #[command(subcommand)]
    cmd: Option<LfsCmd>,
}

#[derive(clap::Subcommand, Debug)]
enum LfsCmd {
    #[command(disable_help_flag = true)]
    Install(InstallArgs),
    #[command(disable_help_flag = true)]
    Uninstall(InstallArgs),
    #[command(disable_help_flag = true)]
    EnableDebug(DebugArgs),
    #[command(disable_help_flag = true)]
    DisableDebug(DebugArgs),
    Help,
}

#[derive(clap::Args, Debug)]
struct InstallArgs {
    #[arg(long, allow_hyphen_values = true)]
    remote: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    url: Option<String>,
    #[arg(long)]
    global: bool,
    #[arg(long)]
    scoped: bool,
    #[arg(long = "no-lfsconfig")]
    no_lfsconfig: bool,
    #[arg(short = 'h', long = "help")]
    help: bool,
}

#[derive(clap::Args, Debug)]
struct DebugArgs {
    #[arg(long)]
    global: bool,
}

/// A clap error in 0.4.2's words: an unknown command on stdout (exit 1), a
/// flag without its value or an unknown argument on stderr (exit 2).
fn usage_error(e: &clap::Error, words: &[String], out: &Out) -> i32 {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    let cmd = words.first().map(String::as_str).unwrap_or("");
    let known = ["install", "uninstall", "enable-debug", "disable-debug", "help"];
    if matches!(e.kind(), ErrorKind::InvalidSubcommand) || !known.contains(&cmd) {
        out.stdout(format!("unknown command {cmd}\n"));
        return 1;
    }
    let arg = context(ContextKind::InvalidArg);
    let flag = arg.split_whitespace().next().unwrap_or("");
    match e.kind() {
        ErrorKind::InvalidValue if !flag.is_empty() => out.stderr(format!("error: {flag} requires a value\n")),
        _ if !flag.is_empty() => out.stderr(format!("error: unknown argument to {cmd}: {flag}\n")),
        _ => out.stderr(format!("error: {}\n", e.kind())),
    }
    2
}

/// `start.args` are the words after `lfs` (e.g. `["install", "--remote", "origin"]`).
pub(crate) async fn run(_state: Arc<DaemonState>, start: SessionStart, _input: Input, out: Out) -> i32 {
    let git = Git::new(&start.cwd, start.env.clone());
    let argv = std::iter::once("git-lfs-s3".to_string()).chain(start.args.iter().cloned());
    let cli = match <LfsCli as clap::Parser>::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => return usage_error(&e, &start.args, &out),
    };
    tracing::debug!(cmd = ?cli.cmd, "lfs config command");
    let (install, a) = match cli.cmd {
        None | Some(LfsCmd::Help) => {
            out.stdout(HELP);
            return 0;
        }
        Some(LfsCmd::EnableDebug(d)) => {
            if let Err(e) = config_set(&git, d.global, ARGS_KEY, "debug").await {
                out.stderr(format!("error: {e}\n"));
                return 1;
            }
            out.stdout("debug enabled\n");
            return 0;
        }
        Some(LfsCmd::DisableDebug(d)) => {
            config_unset(&git, d.global, ARGS_KEY).await;
            out.stdout("debug disabled\n");
            return 0;
        }
        Some(LfsCmd::Install(a)) => (true, a),
        Some(LfsCmd::Uninstall(a)) => (false, a),
    };
    if a.help || cli.help {
        out.stdout(HELP);
        return 0;
    }
    let (remote, s3_url) = (a.remote.as_deref(), a.url.as_deref());
    if a.global && remote.is_some() {
        out.stderr("error: --remote and --global cannot be combined: a remote belongs to one repository\n");
        return 2;
    }
    if a.scoped && !a.global {
        out.stderr("error: --scoped goes with --global (once per machine)\n");
        return 2;
    }
    if s3_url.is_some() && (remote.is_none() || !install) {
        out.stderr("error: --url goes with install --remote <name>\n");
        return 2;
    }
    if a.no_lfsconfig && s3_url.is_none() {
        out.stderr("error: --no-lfsconfig goes with install --remote <name> --url s3://<bucket>/<prefix>\n");
        return 2;
    }
    match (install, remote, s3_url) {
        (true, None, _) if a.scoped => install_global_scoped(&git, &out).await,
        (true, None, _) => install_unscoped(&git, a.global, &out).await,
        (true, Some(r), Some(u)) => install_other_host(&git, r, u, !a.no_lfsconfig, &out).await,
        (true, Some(r), None) => install_scoped(&git, r, &out).await,
        (false, r, _) => uninstall(&git, a.global, r, &out).await,
    }
}

async fn list_remotes(git: &Git) -> Vec<String> {
    git.run(&["remote"]).await.map(|s| s.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()).unwrap_or_default()
}

async fn install_unscoped(git: &Git, global: bool, out: &Out) -> i32 {
    if !global {
        let remotes = list_remotes(git).await;
        if remotes.len() > 1 {
            out.stderr(format!(
                "warning: multiple remotes configured ({}); 'git-lfs-s3 install' writes unscoped configuration that \
                 applies to ALL remotes. If any non-S3 remote uses LFS, push/pull may fail. Use 'git-lfs-s3 install \
                 --remote <name>' to scope to a single S3 remote.\n",
                remotes.join(", ")
            ));
        }
    }
    for (k, v) in [(PATH_KEY, AGENT), (STANDALONE_KEY, AGENT)] {
        if let Err(e) = config_set(git, global, k, v).await {
            out.stderr(format!("{}\n", git_stderr(&e)));
            return 1;
        }
    }
    out.stdout("git-lfs-s3 installed\n");
    0
}

fn git_stderr(e: &GitError) -> String {
    match e {
        GitError::Failed { stderr, .. } => stderr.clone(),
        other => other.to_string(),
    }
}

async fn install_scoped(git: &Git, remote_name: &str, out: &Out) -> i32 {
    let parsed = match s3_url_of_remote(git, remote_name).await {
        Ok(u) => u,
        Err(RemoteNameError::InvalidName(_) | RemoteNameError::NotConfigured { .. }) => {
            out.stderr(format!(
                "error: remote '{remote_name}' is not configured. Add it first with: git remote add {remote_name} \
                 s3://<bucket>/<prefix>\n"
            ));
            return 1;
        }
        Err(RemoteNameError::NotS3 { url, .. } | RemoteNameError::BadUrl { url, .. }) => {
            out.stderr(format!(
                "error: remote '{remote_name}' has URL '{url}', which is not an s3:// or s3+zip:// URL. --remote can only \
                 scope LFS configuration for S3 remotes.\n"
            ));
            return 1;
        }
    };
    let lfs_url = synthetic_lfs_url(&parsed.bucket, &parsed.prefix);
    let lfsurl_key = format!("remote.{remote_name}.lfsurl");
    if let Some(existing) = git.config_get(&lfsurl_key).await {
        if existing != lfs_url {
            out.stderr(format!(
                "error: {lfsurl_key} is already set to '{existing}'. git-lfs-s3 will not overwrite an existing LFS \
                 URL. If this was set in error, unset it with:\n  git config --unset {lfsurl_key}\n"
            ));
            return 1;
        }
    }
    if git.config_get(STANDALONE_KEY).await.is_some() {
        out.stderr(
            "warning: lfs.standalonetransferagent is set unscoped; this applies git-lfs-s3 to ALL remotes and will \
             defeat per-remote scoping. Unset it with:\n  git config --unset lfs.standalonetransferagent\n",
        );
    }
    let agent_key = format!("lfs.{lfs_url}.standalonetransferagent");
    for (k, v) in [(PATH_KEY, AGENT), (lfsurl_key.as_str(), lfs_url.as_str()), (agent_key.as_str(), AGENT)] {
        if let Err(e) = config_set(git, false, k, v).await {
            out.stderr(format!("{}\n", git_stderr(&e)));
            return 1;
        }
    }
    out.stdout(format!("git-lfs-s3 installed for remote '{remote_name}' (LFS alias: {lfs_url})\n"));
    0
}

async fn uninstall(git: &Git, global: bool, remote: Option<&str>, out: &Out) -> i32 {
    let remotes: Vec<String> = match remote {
        Some(r) => vec![r.to_string()],
        None if global => Vec::new(),
        None => list_remotes(git).await,
    };
    for r in &remotes {
        let key = format!("remote.{r}.lfsurl");
        if let Some(u) = git.config_get(&key).await {
            if parse_synthetic_lfs_url(&u).is_some() {
                config_unset(git, false, &format!("lfs.{u}.standalonetransferagent")).await;
                config_unset(git, false, &key).await;
                // The LFS prefix's remembered keyring goes with it: another
                // install may name another prefix.
                config_unset(git, false, &format!("remote.{r}.{}", crate::storage::crypt::trust::LFS_VARIABLE)).await;
            }
        }
    }
    if remote.is_some() {
        match remove_lfsconfig_alias(git).await {
            Ok(true) => out.stdout("removed lfs.url from .lfsconfig; commit that change\n"),
            Ok(false) => {}
            Err(e) => {
                out.stderr(format!("error: cannot edit .lfsconfig: {}\n", git_stderr(&e)));
                return 1;
            }
        }
        // The agent's path stays while anything still names the agent.
        let still_used =
            git.run(&["config", "--get-regexp", r"^lfs\..*standalonetransferagent$"]).await.map(|s| !s.trim().is_empty()).unwrap_or(false);
        if !still_used {
            config_unset(git, false, PATH_KEY).await;
        }
    }
    if remote.is_none() {
        if config_get(git, global, STANDALONE_KEY).await.as_deref() == Some(AGENT) {
            config_unset(git, global, STANDALONE_KEY).await;
        }
        if global {
            config_unset(git, true, &alias_agent_key()).await;
        }
        config_unset(git, global, PATH_KEY).await;
        config_unset(git, global, ARGS_KEY).await;
    }
    match remote {
        Some(r) => out.stdout(format!("git-lfs-s3 uninstalled for remote '{r}'\n")),
        None => out.stdout("git-lfs-s3 uninstalled\n"),
    }
    0
}

/// `lfs.https://lfs-alias.git-remote-s3.test/.standalonetransferagent`:
/// git-lfs matches `lfs.<url>.*` keys by URL prefix, so this one key routes
/// every alias URL (and nothing else) to the agent.
fn alias_agent_key() -> String {
    format!("lfs.https://{LFS_ALIAS_HOST}/.standalonetransferagent")
}

/// `install --global --scoped`: once per machine, every repository whose
/// LFS URL is an alias (from `.lfsconfig` or the git config) uses the agent.
async fn install_global_scoped(git: &Git, out: &Out) -> i32 {
    for (k, v) in [(PATH_KEY, AGENT.to_string()), (alias_agent_key().as_str(), AGENT.to_string())] {
        if let Err(e) = config_set(git, true, k, &v).await {
            out.stderr(format!("{}\n", git_stderr(&e)));
            return 1;
        }
    }
    // git-lfs's own filters, once per user, so this is the only command.
    if config_get(git, true, "filter.lfs.process").await.is_none() {
        if let Err(e) = git.run(&["lfs", "install", "--skip-repo"]).await {
            out.stderr(format!("warning: `git lfs install --skip-repo` failed ({}); run it yourself\n", git_stderr(&e).lines().next().unwrap_or("")));
        }
    }
    out.stdout(format!("git-lfs-s3 installed for every repository whose LFS URL is https://{LFS_ALIAS_HOST}/... (e.g. from .lfsconfig)\n"));
    0
}

/// The repository's working tree `.lfsconfig` path, if it has a working tree.
async fn lfsconfig_path(git: &Git) -> Option<std::path::PathBuf> {
    let top = git.run(&["rev-parse", "--show-toplevel"]).await.ok()?;
    Some(std::path::Path::new(top.trim()).join(".lfsconfig"))
}

/// Removes `lfs.url` from `.lfsconfig` when it is an alias (and the file
/// when nothing else is left in it). Ok(true) when it changed the file.
async fn remove_lfsconfig_alias(git: &Git) -> Result<bool, GitError> {
    let Some(path) = lfsconfig_path(git).await else { return Ok(false) };
    if !tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file()) {
        return Ok(false);
    }
    let file = path.to_string_lossy().into_owned();
    let Ok(url) = git.run(&["config", "--file", &file, "--get", "lfs.url"]).await else { return Ok(false) };
    if parse_synthetic_lfs_url(url.trim()).is_none() {
        return Ok(false);
    }
    git.run(&["config", "--file", &file, "--unset-all", "lfs.url"]).await?;
    let left = git.run(&["config", "--file", &file, "--list"]).await.unwrap_or_default();
    if left.trim().is_empty() {
        let _ = tokio::fs::remove_file(&path).await;
    }
    Ok(true)
}

/// `install --remote <name> --url <s3_url>`'s URL, parsed, when it has no
/// profile and the remote exists and is not itself an S3 remote; else the
/// exit code (the error said).
async fn other_host_url(git: &Git, remote_name: &str, s3_url: &str, out: &Out) -> Result<RemoteUrl, i32> {
    let parsed = match RemoteUrl::parse(s3_url) {
        Ok(u) => u,
        Err(e) => {
            out.stderr(format!("error: --url: {e}\n"));
            return Err(1);
        }
    };
    if parsed.profile.is_some() {
        out.stderr(
            "error: --url cannot carry a profile (the LFS URL git-lfs uses has none); use s3://<bucket>/<prefix> \
             and set AWS_PROFILE in the environment instead\n",
        );
        return Err(1);
    }
    match s3_url_of_remote(git, remote_name).await {
        Ok(_) => {
            out.stderr(format!(
                "error: remote '{remote_name}' is an S3 remote: its LFS objects already live in its bucket. Use: \
                 git-lfs-s3 install --remote {remote_name}\n"
            ));
            return Err(1);
        }
        Err(RemoteNameError::InvalidName(_) | RemoteNameError::NotConfigured { .. }) => {
            out.stderr(format!("error: remote '{remote_name}' is not configured. Add it first with: git remote add {remote_name} <url>\n"));
            return Err(1);
        }
        Err(RemoteNameError::NotS3 { .. } | RemoteNameError::BadUrl { .. }) => {}
    }
    Ok(parsed)
}

/// `install --remote <name> --url s3://bucket/prefix`: the remote's code
/// lives on another git server; its LFS objects go to the bucket.
pub(crate) async fn install_other_host(git: &Git, remote_name: &str, s3_url: &str, lfsconfig: bool, out: &Out) -> i32 {
    let parsed = match other_host_url(git, remote_name, s3_url, out).await {
        Ok(u) => u,
        Err(code) => return code,
    };
    let lfs_url = synthetic_lfs_url(&parsed.bucket, &parsed.prefix);
    // An LFS URL that wins over remote.<name>.lfsurl (lfs.url) or that
    // someone else set is left alone.
    for key in ["lfs.url".to_string(), format!("remote.{remote_name}.lfsurl")] {
        if let Some(existing) = git.config_get(&key).await {
            if existing != lfs_url {
                out.stderr(format!(
                    "error: {key} is already set to '{existing}' in the git config. git-lfs-s3 will not overwrite an \
                     existing LFS URL (to move the objects from that server, see `git s3 lfs migrate`); unset it with:\n  \
                     git config --unset {key}\n"
                ));
                return 1;
            }
        }
    }
    let lfsconfig_file = if lfsconfig { lfsconfig_path(git).await } else { None };
    if lfsconfig && lfsconfig_file.is_none() {
        out.stderr("warning: this repository has no working tree; .lfsconfig not written (clones will not find the bucket)\n");
    }
    if let Some(path) = &lfsconfig_file {
        let file = path.to_string_lossy().into_owned();
        if let Ok(existing) = git.run(&["config", "--file", &file, "--get", "lfs.url"]).await {
            if existing.trim() != lfs_url {
                out.stderr(format!(
                    "error: .lfsconfig already sets lfs.url to '{}'. git-lfs-s3 will not overwrite it; remove it with \
                     `git config -f .lfsconfig --unset lfs.url`, or use --no-lfsconfig\n",
                    existing.trim()
                ));
                return 1;
            }
        }
    }
    let lfsurl_key = format!("remote.{remote_name}.lfsurl");
    let agent_key = format!("lfs.{lfs_url}.standalonetransferagent");
    for (k, v) in [(PATH_KEY, AGENT), (lfsurl_key.as_str(), lfs_url.as_str()), (agent_key.as_str(), AGENT)] {
        if let Err(e) = config_set(git, false, k, v).await {
            out.stderr(format!("{}\n", git_stderr(&e)));
            return 1;
        }
    }
    out.stdout(format!("git-lfs-s3 installed for remote '{remote_name}': LFS objects go to {}/lfs/ (LFS URL {lfs_url})\n", parsed));
    if let Some(path) = lfsconfig_file {
        let file = path.to_string_lossy().into_owned();
        if let Err(e) = git.run(&["config", "--file", &file, "lfs.url", &lfs_url]).await {
            out.stderr(format!("error: cannot write .lfsconfig: {}\n", git_stderr(&e)));
            return 1;
        }
        out.stdout(
            "wrote lfs.url to .lfsconfig: commit it (git add .lfsconfig && git commit), and clones on machines set up \
             with `git s3 lfs install --global --scoped` fetch LFS objects from the bucket\n",
        );
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_url_matches_0_4_2() {
        // urllib.parse.quote(seg, safe="") per segment
        assert_eq!(synthetic_lfs_url("bkt", "team/repo"), "https://lfs-alias.git-remote-s3.test/bkt/team/repo");
        assert_eq!(synthetic_lfs_url("bkt", "a b/repo%zz/x~y_z.-+"), "https://lfs-alias.git-remote-s3.test/bkt/a%20b/repo%25zz/x~y_z.-%2B");
        assert_eq!(synthetic_lfs_url("bkt", "é"), "https://lfs-alias.git-remote-s3.test/bkt/%C3%A9");
    }

    #[test]
    fn synthetic_url_roundtrip() {
        let u = parse_synthetic_lfs_url("https://lfs-alias.git-remote-s3.test/bkt/a%20b/repo%25zz").unwrap();
        assert_eq!(u.bucket, "bkt");
        assert_eq!(u.prefix, "a b/repo%zz");
        assert!(parse_synthetic_lfs_url("https://example.com/bkt/p").is_none());
        assert!(parse_synthetic_lfs_url("https://lfs-alias.git-remote-s3.test/bkt").is_none());
        assert!(parse_synthetic_lfs_url("https://lfs-alias.git-remote-s3.test/bkt/%zz").is_none());
    }
}
