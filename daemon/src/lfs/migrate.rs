//! `git s3 lfs migrate --to s3://bucket/prefix [--remote <name>] [--from <lfs-url>]`:
//! moves a repository's LFS objects from the code host's LFS server to S3.
//!
//! 1. git-lfs itself fetches every object the refs reach from the current
//!    LFS server (`git lfs fetch --all`, with the user's credential helpers;
//!    git-lfs checks each download's SHA-256). Objects already local are
//!    not fetched again.
//! 2. Each object is hashed again (SHA-256 and size) and uploaded to
//!    `<prefix>/lfs/<oid>` unless the bucket already has it at that size, so
//!    a rerun after an interruption copies only what is left.
//!    On an encrypted prefix (`git s3 init --encrypt-to`: it has a keyring,
//!    which the caller's identities must open) each object is encrypted to
//!    the remote key at its keyed name instead (`storage::crypt::lfs`).
//! 3. Only when every object is in the bucket does the configuration
//!    switch (the same keys as `install --remote <name> --url`, replacing
//!    the old LFS URL). Nothing is deleted from the old server.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::stream::StreamExt;
use git_s3_proto::pb::SessionStart;

use crate::lfs::agent::sha256_file;
use crate::lfs::config::{install_other_host, parse_synthetic_lfs_url};
use crate::lfs::endpoint::{lfs_url_of, Operation};
use crate::local::git::{Git, GitError};
use crate::s3::store::{PutOptions, S3Store, StoreError};
use crate::s3::url::RemoteUrl;
use crate::s3::write_options::BucketPolicy;
use crate::session::state::DaemonState;
use crate::session::{Input, Out};
use crate::storage::crypt::lfs as crypt_lfs;
use crate::storage::crypt::{codec, keyring, CryptError, RemoteKey};

/// Uploads in flight.
const UPLOAD_CONCURRENCY: usize = 4;

const HELP: &str = "\
usage: git s3 lfs migrate --to s3://<bucket>/<prefix> [--remote <name>] [--from <lfs-url>] [--no-lfsconfig]

Copies every LFS object that the refs reach from the remote's current LFS
server (default: the LFS URL git-lfs uses for <name>, default origin) to
s3://<bucket>/<prefix>/lfs/<oid>, each verified by SHA-256, then switches the
configuration as `git s3 lfs install --remote <name> --url` does (and
lfs.url in .lfsconfig: commit it). Nothing is deleted from the old server.
A rerun copies only what is not in the bucket yet.
";

#[derive(Debug, thiserror::Error)]
enum MigrateError {
    #[error("`git lfs fetch --all` from {from} failed: {stderr}")]
    Fetch { from: String, stderr: String },
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("LFS object {oid} is not in the local LFS store after the fetch ({path}); is it on the server?")]
    NotLocal { oid: String, path: String },
    #[error("local LFS object {oid} is corrupt (its SHA-256 is {actual}); not copied")]
    Corrupt { oid: String, actual: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("local file error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Crypt(#[from] CryptError),
}

struct Args {
    to: RemoteUrl,
    remote: String,
    from: Option<String>,
    lfsconfig: bool,
}

/// `git s3 lfs migrate`'s command line (clap; the help is [`HELP`]).
#[derive(clap::Parser, Debug)]
#[command(name = "git s3 lfs migrate", disable_help_flag = true, disable_version_flag = true, args_override_self = true)]
struct MigrateCli {
    #[arg(long, allow_hyphen_values = true)]
    to: Option<String>,
    #[arg(long, default_value = "origin", allow_hyphen_values = true)]
    remote: String,
    #[arg(long, allow_hyphen_values = true)]
    from: Option<String>,
    #[arg(long = "no-lfsconfig")]
    no_lfsconfig: bool,
    #[arg(short = 'h', long = "help")]
    help: bool,
}

fn parse_args(args: &[String]) -> Result<Option<Args>, String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let argv = std::iter::once("migrate".to_string()).chain(args.iter().cloned());
    let cli = <MigrateCli as clap::Parser>::try_parse_from(argv).map_err(|e| {
        let arg = match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(s)) => s.split_whitespace().next().unwrap_or("").to_string(),
            _ => String::new(),
        };
        match e.kind() {
            ErrorKind::InvalidValue if !arg.is_empty() => format!("{arg} requires a value"),
            _ if !arg.is_empty() => format!("unknown argument to migrate: {arg}"),
            kind => format!("{kind}"),
        }
    })?;
    if cli.help {
        return Ok(None);
    }
    let to = RemoteUrl::parse(cli.to.as_deref().ok_or("--to s3://<bucket>/<prefix> is required")?).map_err(|e| format!("--to: {e}"))?;
    if to.profile.is_some() {
        return Err("--to cannot carry a profile; set AWS_PROFILE in the environment instead".into());
    }
    Ok(Some(Args { to, remote: cli.remote, from: cli.from, lfsconfig: !cli.no_lfsconfig }))
}

/// git-lfs's default LFS URL for a git URL (server discovery): HTTP(S)
/// URLs get `.git/info/lfs` (or `/info/lfs` after `.git`).
fn default_lfs_url(git_url: &str) -> Option<String> {
    if !(git_url.starts_with("https://") || git_url.starts_with("http://")) {
        return None;
    }
    let u = git_url.trim_end_matches('/');
    Some(if u.ends_with(".git") { format!("{u}/info/lfs") } else { format!("{u}.git/info/lfs") })
}

/// `args` are the words after `migrate`.
pub(crate) async fn run(state: Arc<DaemonState>, start: SessionStart, args: &[String], _input: Input, out: Out) -> i32 {
    let a = match parse_args(args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            out.stdout(HELP);
            return 0;
        }
        Err(e) => {
            out.stderr(format!("error: {e}\n"));
            return 2;
        }
    };
    let git = Git::new(&start.cwd, start.env.clone());
    let target_alias = crate::lfs::config::synthetic_lfs_url(&a.to.bucket, &a.to.prefix);
    let from = match &a.from {
        Some(f) => f.clone(),
        None => match lfs_url_of(&git, &a.remote, Operation::Download).await {
            Some(found) => found.url,
            None => match git.remote_url(&a.remote).await.ok().as_deref().and_then(default_lfs_url) {
                Some(u) => u,
                None => {
                    out.stderr(format!("error: cannot tell the LFS server of remote '{}'; pass --from <lfs-url>\n", a.remote));
                    return 1;
                }
            },
        },
    };
    if from == target_alias {
        out.stderr(format!(
            "remote '{}' already uses {} for LFS; nothing to copy (pass --from <lfs-url> to copy from a server again)\n",
            a.remote, a.to
        ));
        return 0;
    }
    let policy = match BucketPolicy::from_git(&git, Some(&a.remote)).await {
        Ok(p) => p,
        Err(e) => {
            out.stderr(format!("error: {e}\n"));
            return 1;
        }
    };
    let store = state.store_for(&start.env, &a.to).await.with_policy(policy);
    // An encrypted prefix: objects go there encrypted, at keyed names.
    let key = match keyring::open(&store, &a.to, &start.env).await {
        Ok(k) => k,
        Err(e) => {
            out.stderr(format!("error: {e}\n"));
            return 1;
        }
    };
    let (copied, present) = match copy_all(&git, &store, &a, key.as_ref(), &from, &out).await {
        Ok(n) => n,
        Err(e) => {
            out.stderr(format!("error: {e}\nnothing was switched; run the same command again to go on\n"));
            return 1;
        }
    };
    out.stdout(format!("{} LFS objects in {}/lfs/: {copied} copied from {from}, {present} already there\n", copied + present, a.to));
    // Switch: the old LFS URL goes where install would refuse to overwrite it.
    if let Err(e) = forget_old_url(&git, &a.remote, &from).await {
        out.stderr(format!("error: cannot switch the configuration: {e}\n"));
        return 1;
    }
    let code = install_other_host(&git, &a.remote, &a.to.to_string(), a.lfsconfig, &out).await;
    if code == 0 {
        out.stdout(format!("nothing was deleted from {from}\n"));
    }
    code
}

/// Removes `from` where it is set as the remote's LFS URL (git config and
/// `.lfsconfig`), so that the alias replaces it.
async fn forget_old_url(git: &Git, remote: &str, from: &str) -> Result<(), GitError> {
    for key in ["lfs.url".to_string(), format!("remote.{remote}.lfsurl")] {
        if git.config_get(&key).await.as_deref() == Some(from) {
            git.run(&["config", "--unset-all", &key]).await?;
        }
    }
    if let Ok(top) = git.run(&["rev-parse", "--show-toplevel"]).await {
        let file = Path::new(top.trim()).join(".lfsconfig");
        if tokio::fs::metadata(&file).await.is_ok_and(|m| m.is_file()) {
            let f = file.to_string_lossy().into_owned();
            for key in ["lfs.url".to_string(), format!("remote.{remote}.lfsurl")] {
                if let Ok(v) = git.run(&["config", "--file", &f, "--get", &key]).await {
                    if v.trim() == from && parse_synthetic_lfs_url(from).is_none() {
                        git.run(&["config", "--file", &f, "--unset-all", &key]).await?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Fetches everything from `from`, then uploads what the bucket lacks.
/// Returns (copied, already present).
async fn copy_all(git: &Git, store: &S3Store, a: &Args, key: Option<&Arc<RemoteKey>>, from: &str, out: &Out) -> Result<(usize, usize), MigrateError> {
    out.stderr(format!("fetching every LFS object the refs reach from {from}\n"));
    let lfs_url = format!("lfs.url={from}");
    if let Err(e) = git.run(&["-c", &lfs_url, "lfs", "fetch", "--all", &a.remote]).await {
        let stderr = match e {
            GitError::Failed { stderr, .. } => stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string(),
            other => other.to_string(),
        };
        return Err(MigrateError::Fetch { from: from.to_string(), stderr });
    }
    let listing = git.run(&["lfs", "ls-files", "--all", "--long"]).await?;
    let mut oids: Vec<String> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|o| crate::local::oid::ObjectFormat::Sha256.accepts(o))
        .map(str::to_string)
        .collect();
    oids.sort();
    oids.dedup();
    let common = git.run(&["rev-parse", "--git-common-dir"]).await?;
    let common = Path::new(common.trim());
    let common = if common.is_absolute() { common.to_path_buf() } else { git.cwd().join(common) };
    let objects = common.join("lfs").join("objects");
    out.stderr(format!("copying {} LFS objects to {}/lfs/\n", oids.len(), a.to));
    let (to, objects) = (&a.to, &objects);
    let uploads: Vec<_> = oids.into_iter().map(|oid| Box::pin(async move { copy_one(store, to, key, objects, &oid).await })).collect();
    let results: Vec<Result<bool, MigrateError>> = futures::stream::iter(uploads).buffer_unordered(UPLOAD_CONCURRENCY).collect().await;
    let (mut copied, mut present) = (0, 0);
    for r in results {
        if r? {
            copied += 1;
        } else {
            present += 1;
        }
    }
    Ok((copied, present))
}

/// Ok(true) when uploaded, Ok(false) when the bucket already had it.
async fn copy_one(store: &S3Store, to: &RemoteUrl, key: Option<&Arc<RemoteKey>>, objects: &Path, oid: &str) -> Result<bool, MigrateError> {
    let path: PathBuf = objects.join(&oid[0..2]).join(&oid[2..4]).join(oid);
    if !tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file()) {
        return Err(MigrateError::NotLocal { oid: oid.to_string(), path: path.display().to_string() });
    }
    let (sha, len) = sha256_file(&path).await?;
    if sha != oid {
        return Err(MigrateError::Corrupt { oid: oid.to_string(), actual: sha });
    }
    if let Some(k) = key {
        return copy_encrypted(store, to, k, &path, oid, len).await;
    }
    let key = to.key(&format!("lfs/{oid}"));
    if let Some(info) = store.head(&key).await? {
        if info.size == len {
            return Ok(false);
        }
    }
    store.put_file(&key, &path, PutOptions::default(), |_| {}).await?;
    tracing::debug!(oid, bytes = len, "LFS object copied");
    Ok(true)
}

/// [`copy_one`] into an encrypted prefix: an age file at the keyed name.
async fn copy_encrypted(store: &S3Store, to: &RemoteUrl, key: &Arc<RemoteKey>, path: &Path, oid: &str, len: u64) -> Result<bool, MigrateError> {
    let name = crypt_lfs::object_key(to, key, oid);
    if store.head(&name).await?.is_some_and(|info| crypt_lfs::plausible_size(len, info.size)) {
        return Ok(false);
    }
    let temp = codec::temp_beside(path)?;
    codec::encrypt_file(key.clone(), path.to_path_buf(), temp.path().to_path_buf()).await?;
    store.put_file(&name, temp.path(), PutOptions::default(), |_| {}).await?;
    tracing::debug!(oid, bytes = len, "LFS object copied, encrypted");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lfs_urls_as_git_lfs_derives_them() {
        assert_eq!(default_lfs_url("https://github.com/o/r").as_deref(), Some("https://github.com/o/r.git/info/lfs"));
        assert_eq!(default_lfs_url("https://github.com/o/r.git/").as_deref(), Some("https://github.com/o/r.git/info/lfs"));
        assert_eq!(default_lfs_url("/srv/git/r.git"), None);
    }

    #[test]
    fn arguments() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let a = parse_args(&s(&["--to", "s3://bkt/p", "--remote", "up"])).unwrap().unwrap();
        assert_eq!((a.to.bucket.as_str(), a.remote.as_str(), a.lfsconfig), ("bkt", "up", true));
        assert!(parse_args(&s(&["--remote", "up"])).is_err());
        assert!(parse_args(&s(&["--to", "s3://prof@bkt/p"])).is_err());
        assert!(parse_args(&s(&["--help"])).unwrap().is_none());
        assert_eq!(parse_args(&s(&["--to"])).err().unwrap_or_default(), "--to requires a value");
        assert_eq!(parse_args(&s(&["--to", "s3://bkt/p", "--frob"])).err().unwrap_or_default(), "unknown argument to migrate: --frob");
        assert_eq!(parse_args(&s(&["--to", "s3://bkt/p", "extra"])).err().unwrap_or_default(), "unknown argument to migrate: extra");
        let a = parse_args(&s(&["--to", "s3://bkt/p", "--no-lfsconfig", "--from", "https://h/lfs"])).unwrap().unwrap();
        assert_eq!((a.remote.as_str(), a.from.as_deref(), a.lfsconfig), ("origin", Some("https://h/lfs"), false));
    }
}
