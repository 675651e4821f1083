//! git's remote-helper protocol, driven over a session: capabilities,
//! options, list, fetch and push batches.

use std::collections::HashMap;
use std::sync::Arc;

use crate::helper::protocol::{self as helper_protocol, Command};
use crate::local::git::Git;
use crate::s3::url::RemoteUrl;
use crate::s3::write_options::BucketPolicy;
use crate::session::state::DaemonState;
use crate::session::{Input, Out};
use crate::storage::detect::Purpose;
use crate::storage::fetch_options::{FetchOptions, OptionReply};
use crate::storage::open::Storage;
use crate::storage::{format_mismatch, OpContext, PushUpdate, RefListing, RemoteRef, StorageError};

pub struct HelperArgs {
    pub args: Vec<String>,
    pub env: HashMap<String, String>,
    pub cwd: String,
}

/// `GIT_REMOTE_S3_VERBOSE=1`, or `git -c transfer.verbosity=N` (N ≥ 2),
/// which git passes on in `GIT_CONFIG_PARAMETERS`.
fn env_verbose(env: &HashMap<String, String>) -> bool {
    matches!(env.get("GIT_REMOTE_S3_VERBOSE").map(String::as_str), Some("1" | "true" | "yes"))
        || env
            .get("GIT_CONFIG_PARAMETERS")
            .and_then(|p| config_parameter(p, "transfer.verbosity"))
            .and_then(|v| v.parse::<u8>().ok())
            .map(|v| v >= 2)
            .unwrap_or(false)
}

/// A value from git's `GIT_CONFIG_PARAMETERS` (`'key'='value' 'k2'='v2'`).
fn config_parameter(params: &str, key: &str) -> Option<String> {
    params.split_whitespace().rev().find_map(|item| {
        let (k, v) = item.split_once('=')?;
        (k.trim_matches('\'').eq_ignore_ascii_case(key)).then(|| v.trim_matches('\'').to_string())
    })
}

/// Runs the helper until git closes the conversation. Returns the exit code.
pub async fn run(state: Arc<DaemonState>, a: HelperArgs, mut input: Input, out: Out) -> i32 {
    if env_verbose(&a.env) {
        out.set_verbosity(2);
    }
    // git calls us as `git-remote-s3 <remote> [<url>]`.
    let url_arg = match a.args.as_slice() {
        [_, url, ..] => url.clone(),
        [one] => one.clone(),
        [] => {
            out.stderr("fatal: git-remote-s3 is a git remote helper: use it through git with an s3:// URL (git clone s3://bucket/prefix)\n");
            return 1;
        }
    };
    let url = match RemoteUrl::parse(&url_arg) {
        Ok(u) => u,
        Err(e) => {
            out.stderr(format!("fatal: {e}\n"));
            return 1;
        }
    };
    let git = Git::new(&a.cwd, a.env.clone());
    // The remote's name, unless git was given a URL (`git push s3://…`).
    let remote_name = a.args.first().filter(|_| a.args.len() > 1).filter(|n| !n.contains("://"));
    let policy = match BucketPolicy::from_git(&git, remote_name.map(String::as_str)).await {
        Ok(p) => p,
        Err(e) => {
            out.stderr(format!("fatal: {e}\n"));
            return 1;
        }
    };
    let store = state.store_for(&a.env, &url).await.with_policy(policy);
    // Opened (format detected) at the first command that needs the remote,
    // so `capabilities` is answered before any S3 request can fail.
    let mut opened: Option<Storage> = None;
    let mut ctx = OpContext {
        git,
        out: out.clone(),
        env: a.env.clone(),
        progress: false,
        cache: state.cache.clone(),
        background: state.background.clone(),
        cas: HashMap::new(),
        atomic: false,
    };
    macro_rules! storage {
        () => {
            storage!(Purpose::Read)
        };
        ($purpose:expr) => {
            match open_storage(&mut opened, &store, &url, &ctx.git, $purpose).await {
                Ok(s) => s,
                Err(e) => return fatal(&out, &url, e),
            }
        };
    }
    let mut listing: Option<RefListing> = None;
    let mut cloning = false; // `option cloning true`: configure LFS after the first fetch
    let mut fetch_opts = FetchOptions::default();
    let mut object_format_asked = false;

    while let Some(line) = input.read_line().await {
        state.touch();
        tracing::debug!(command = %line, "helper command");
        let cmd = match helper_protocol::parse(&line) {
            Ok(c) => c,
            Err(e) => {
                out.stderr(format!("fatal: {e}\n"));
                return 1;
            }
        };
        match cmd {
            Command::Capabilities => {
                out.stdout("*push\n*fetch\noption\ncheck-connectivity\nobject-format\n\n");
            }
            Command::Option { name, value } => {
                cloning |= name == "cloning" && value == "true";
                let reply = match name.as_str() {
                    // git asks for `:object-format` in `list` (gitremote-helpers(7)).
                    "object-format" => {
                        object_format_asked = value == "true";
                        "ok".to_string()
                    }
                    // All-or-nothing pushes: one manifest write in the packs format.
                    "atomic" if storage!().supports_atomic() => {
                        ctx.atomic = value == "true";
                        "ok".to_string()
                    }
                    _ => match fetch_opts.set(&name, &value) {
                        Some(OptionReply::Ok) => "ok".to_string(),
                        Some(OptionReply::Error(e)) => format!("error {e}"),
                        None => handle_option(&mut ctx, &name, &value).to_string(),
                    },
                };
                out.stdout(format!("{reply}\n"));
            }
            Command::List { for_push } => match storage!(if for_push { Purpose::Push } else { Purpose::Read }).list().await {
                Ok(l) => {
                    for w in &l.warnings {
                        out.stderr(format!("warning: {w}\n"));
                    }
                    out.stdout(render_list(&l, for_push, object_format_asked));
                    listing = Some(l);
                }
                Err(e) => return fatal(&out, &url, e),
            },
            Command::Fetch { sha, name } => {
                let mut wants = vec![RemoteRef { name, sha }];
                loop {
                    match input.read_line().await.map(|l| helper_protocol::parse(&l)) {
                        Some(Ok(Command::Fetch { sha, name })) => wants.push(RemoteRef { name, sha }),
                        Some(Ok(Command::Blank)) | None => break,
                        Some(other) => {
                            out.stderr(format!("fatal: unexpected command in a fetch batch: {other:?}\n"));
                            return 1;
                        }
                    }
                }
                let l = match listing_of_same_format(storage!(), &listing, &ctx.git, &url).await {
                    Ok(l) => l,
                    Err(e) => return fatal(&out, &url, e),
                };
                let storage = storage!();
                if crate::storage::mirror::needed(&fetch_opts, &l, &wants, &ctx.git).await {
                    // Shallow, filtered, lazy or by-object fetches: git's
                    // fetch-pack from the local mirror of the remote.
                    match crate::storage::mirror::narrow_fetch(storage, &ctx, &store, &url, &l, &wants, &fetch_opts).await {
                        Ok(lines) => lines.iter().for_each(|line| out.stdout(format!("{line}\n"))),
                        Err(e) => return fatal(&out, &url, e),
                    }
                } else if let Err(e) = storage.fetch(&ctx, &l, &wants).await {
                    return fatal(&out, &url, e);
                }
                if std::mem::take(&mut cloning) {
                    crate::lfs::config::on_clone_fetched(&ctx.git, &a.args, &url, &out).await;
                }
                out.stdout("\n");
            }
            Command::Push { src, dst, force } => {
                let mut updates = vec![PushUpdate { src, dst, force }];
                loop {
                    match input.read_line().await.map(|l| helper_protocol::parse(&l)) {
                        Some(Ok(Command::Push { src, dst, force })) => updates.push(PushUpdate { src, dst, force }),
                        Some(Ok(Command::Blank)) | None => break,
                        Some(other) => {
                            out.stderr(format!("fatal: unexpected command in a push batch: {other:?}\n"));
                            return 1;
                        }
                    }
                }
                // Nothing is written when the formats differ.
                if let Err(e) = listing_of_same_format(storage!(), &listing, &ctx.git, &url).await {
                    return fatal(&out, &url, e);
                }
                match storage!().push(&ctx, &updates).await {
                    Ok(results) => {
                        let mut reply = String::new();
                        for (dst, r) in &results {
                            reply.push_str(&helper_protocol::push_status(dst, r));
                        }
                        reply.push('\n');
                        out.stdout(reply);
                    }
                    Err(e) => return fatal(&out, &url, e),
                }
                listing = None;
            }
            Command::Blank => return 0,
            Command::Unknown(l) => {
                out.stderr(format!("fatal: git-remote-s3 does not support the command {l:?}\n"));
                return 1;
            }
        }
    }
    0
}

async fn open_storage<'a>(
    slot: &'a mut Option<Storage>,
    store: &crate::s3::store::S3Store,
    url: &RemoteUrl,
    git: &Git,
    purpose: Purpose,
) -> Result<&'a Storage, StorageError> {
    if slot.is_none() {
        *slot = Some(Storage::open(store.clone(), url.clone(), git, purpose).await?);
    }
    slot.as_ref().ok_or_else(|| StorageError::Format("remote not opened".into()))
}

fn handle_option(ctx: &mut OpContext, name: &str, value: &str) -> &'static str {
    match name {
        "verbosity" => {
            let v: u8 = value.parse().unwrap_or(1);
            if !env_verbose(&ctx.env) {
                ctx.out.set_verbosity(v);
            }
            "ok"
        }
        "progress" => {
            ctx.progress = value == "true";
            "ok"
        }
        "cas" => match value.split_once(':') {
            Some((r, sha)) => {
                ctx.cas.insert(r.to_string(), sha.to_string());
                "ok"
            }
            None => "error invalid cas value",
        },
        _ => "unsupported",
    }
}

/// Refuses a fetch or push between a repository and a remote of different
/// object formats (an empty remote has none yet: it takes the pusher's).
/// The listing `list` answered with (else a fresh one), checked to be of
/// this repository's object format: nothing is fetched or written across
/// formats.
async fn listing_of_same_format(storage: &Storage, listed: &Option<RefListing>, git: &Git, url: &RemoteUrl) -> Result<RefListing, StorageError> {
    let l = match listed {
        Some(l) => l.clone(),
        None => storage.list().await?,
    };
    same_format(git, &l, url).await?;
    Ok(l)
}

async fn same_format(git: &Git, l: &RefListing, url: &RemoteUrl) -> Result<(), StorageError> {
    let Some(remote) = l.format() else { return Ok(()) };
    match git.object_format().await {
        Some(local) if local != remote => Err(StorageError::Format(format_mismatch(local, remote, &url.to_string()))),
        _ => Ok(()),
    }
}

/// `list`'s answer; `:object-format <name>` first when git asked for it
/// (`option object-format true`) and the remote has a format.
pub fn render_list(l: &RefListing, for_push: bool, object_format: bool) -> String {
    let mut s = String::new();
    if let Some(f) = l.format().filter(|_| object_format) {
        s.push_str(&format!(":object-format {f}\n"));
    }
    if !for_push {
        if let Some(h) = &l.head {
            s.push_str(&format!("@{h} HEAD\n"));
        }
    }
    for r in &l.refs {
        s.push_str(&format!("{} {}\n", r.sha, r.name));
    }
    s.push('\n');
    s
}

fn fatal(out: &Out, url: &RemoteUrl, e: StorageError) -> i32 {
    tracing::error!(remote = %url, error = %e, "remote helper failed");
    out.stderr(format!("fatal: {e}\n"));
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_verbosity_from_config_parameters() {
        let mut env = HashMap::new();
        assert!(!env_verbose(&env));
        env.insert("GIT_CONFIG_PARAMETERS".to_string(), "'core.x'='1' 'transfer.verbosity'='2'".to_string());
        assert!(env_verbose(&env));
        env.insert("GIT_CONFIG_PARAMETERS".to_string(), "'transfer.verbosity'='1'".to_string());
        assert!(!env_verbose(&env));
        env.insert("GIT_REMOTE_S3_VERBOSE".to_string(), "1".to_string());
        assert!(env_verbose(&env));
    }

    #[test]
    fn list_output_with_head() {
        let l = RefListing {
            refs: vec![
                RemoteRef { name: "refs/heads/main".into(), sha: "a".repeat(40) },
                RemoteRef { name: "refs/tags/v1".into(), sha: "b".repeat(40) },
            ],
            head: Some("refs/heads/main".into()),
            ..Default::default()
        };
        let full = render_list(&l, false, false);
        assert!(full.starts_with("@refs/heads/main HEAD\n"));
        assert!(full.ends_with("refs/tags/v1\n\n"));
        assert!(!render_list(&l, true, false).contains("HEAD"));
        assert_eq!(render_list(&RefListing::default(), false, true), "\n");
        let sha256 = RefListing { refs: vec![RemoteRef { name: "refs/heads/main".into(), sha: "c".repeat(64) }], ..Default::default() };
        assert_eq!(render_list(&sha256, true, true), format!(":object-format sha256\n{} refs/heads/main\n\n", "c".repeat(64)));
        assert!(render_list(&l, false, true).starts_with(":object-format sha1\n@refs/heads/main HEAD\n"));
    }
}
