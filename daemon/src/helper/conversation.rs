//! git's remote-helper protocol, driven over a session: capabilities,
//! options, list, fetch and push batches.

use std::collections::HashMap;
use std::sync::Arc;

use crate::helper::protocol::{self as helper_protocol, Command};
use crate::local::git::Git;
use crate::local::oid::ObjectFormat;
use crate::s3::store::S3Store;
use crate::s3::url::RemoteUrl;
use crate::s3::write_options::BucketPolicy;
use crate::session::state::DaemonState;
use crate::session::{Input, Out};
use crate::storage::crypt::trust::Trust;
use crate::storage::detect::Purpose;
use crate::storage::fetch_options::{FetchOptions, OptionReply};
use crate::storage::open::Storage;
use crate::storage::{format_mismatch, OpContext, PushUpdate, RefListing, RemoteRef, StorageError};

pub(crate) struct HelperArgs {
    pub(crate) args: Vec<String>,
    pub(crate) env: HashMap<String, String>,
    pub(crate) cwd: String,
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
pub(crate) async fn run(state: Arc<DaemonState>, a: HelperArgs, mut input: Input, out: Out) -> i32 {
    let mut c = match Conversation::start(&state, a, out).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    while let Some(line) = input.read_line().await {
        state.touch();
        tracing::debug!(command = %line, "helper command");
        let cmd = match helper_protocol::parse(&line) {
            Ok(cmd) => cmd,
            Err(e) => {
                c.out.stderr(format!("fatal: {e}\n"));
                return 1;
            }
        };
        let step = match cmd {
            Command::Capabilities => {
                c.out.stdout("*push\n*fetch\noption\ncheck-connectivity\nobject-format\n\n");
                Ok(())
            }
            Command::Option { name, value } => c.option(&name, &value).await,
            Command::List { for_push } => c.list(for_push).await,
            Command::Fetch { sha, name } => c.fetch_batch(RemoteRef { name, sha }, &mut input).await,
            Command::Push { src, dst, force } => c.push_batch(PushUpdate { src, dst, force }, &mut input).await,
            Command::Blank => return 0,
            Command::Unknown(l) => {
                c.out.stderr(format!("fatal: git-remote-s3 does not support the command {l:?}\n"));
                return 1;
            }
        };
        if let Err(code) = step {
            return code;
        }
    }
    0
}

/// What one helper conversation holds between git's commands. A step that
/// ends the conversation returns `Err` with the helper's exit code (the
/// message is on git's stderr already).
struct Conversation {
    /// git's arguments (`<remote> [<url>]`).
    args: Vec<String>,
    url: RemoteUrl,
    store: S3Store,
    /// Opened (format detected) at the first command that needs the remote,
    /// so `capabilities` is answered before any S3 request can fail.
    opened: Option<Storage>,
    ctx: OpContext,
    out: Out,
    /// What `list` answered, for the fetch or push batch after it.
    listing: Option<RefListing>,
    /// `option cloning true`: configure LFS after the first fetch.
    cloning: bool,
    fetch_opts: FetchOptions,
    object_format_asked: bool,
    /// The repository's object format, read with the bucket policy at the
    /// start (`read_config`); None when it may change before a fetch (a
    /// clone: git makes the repository again in the remote's format after
    /// `list`), then asked of git when needed.
    local_format: Option<ObjectFormat>,
    /// What the repository remembers of an encrypted remote (`crypt::trust`).
    trust: Trust,
}

/// The opened remote, or the end of the conversation.
macro_rules! storage {
    ($c:ident, $purpose:expr) => {
        match open_storage(&mut $c.opened, &$c.store, &$c.url, &$c.ctx.git, $purpose, &$c.trust).await {
            Ok(s) => s,
            Err(e) => return Err(fatal(&$c.out, &$c.url, e)),
        }
    };
}

impl Conversation {
    /// The conversation set up from git's arguments (`<remote> [<url>]`),
    /// the URL's bucket policy and the caller's S3 client; nothing is
    /// requested from S3 yet.
    async fn start(state: &DaemonState, a: HelperArgs, out: Out) -> Result<Conversation, i32> {
        if env_verbose(&a.env) {
            out.set_verbosity(2);
        }
        // git calls us as `git-remote-s3 <remote> [<url>]`.
        let url_arg = match a.args.as_slice() {
            [_, url, ..] => url.clone(),
            [one] => one.clone(),
            [] => {
                out.stderr("fatal: git-remote-s3 is a git remote helper: use it through git with an s3:// URL (git clone s3://bucket/prefix)\n");
                return Err(1);
            }
        };
        let url = match RemoteUrl::parse(&url_arg) {
            Ok(u) => u,
            Err(e) => {
                out.stderr(format!("fatal: {e}\n"));
                return Err(1);
            }
        };
        let git = Git::new(&a.cwd, a.env.clone());
        // The remote's name, unless git was given a URL (`git push s3://…`).
        let remote_name = a.args.first().filter(|_| a.args.len() > 1).filter(|n| !n.contains("://"));
        let (listing, local_format) = read_config(&git).await;
        let policy = match BucketPolicy::from_listing(&listing, remote_name.map(String::as_str)) {
            Ok(p) => p,
            Err(e) => {
                out.stderr(format!("fatal: {e}\n"));
                return Err(1);
            }
        };
        let trust = Trust::from_config(&listing, remote_name.map(String::as_str));
        let store = state.store_for(&a.env, &url).await.with_policy(policy);
        let ctx = OpContext {
            git,
            out: out.clone(),
            env: a.env,
            progress: false,
            cache: state.cache.clone(),
            background: state.background.clone(),
            cas: HashMap::new(),
            atomic: false,
        };
        Ok(Conversation {
            args: a.args,
            url,
            store,
            opened: None,
            ctx,
            out,
            listing: None,
            cloning: false,
            fetch_opts: FetchOptions::default(),
            object_format_asked: false,
            local_format,
            trust,
        })
    }

    /// `option <name> <value>`: answered `ok`, `error …` or `unsupported`.
    async fn option(&mut self, name: &str, value: &str) -> Result<(), i32> {
        self.cloning |= name == "cloning" && value == "true";
        if self.cloning {
            self.local_format = None;
        }
        // All-or-nothing pushes: one manifest write in the packs format.
        let atomic_supported = name == "atomic" && storage!(self, Purpose::Read).supports_atomic();
        let reply = match name {
            // git asks for `:object-format` in `list` (gitremote-helpers(7)).
            "object-format" => {
                self.object_format_asked = value == "true";
                "ok".to_string()
            }
            "atomic" if atomic_supported => {
                self.ctx.atomic = value == "true";
                "ok".to_string()
            }
            _ => match self.fetch_opts.set(name, value) {
                Some(OptionReply::Ok) => "ok".to_string(),
                Some(OptionReply::Error(e)) => format!("error {e}"),
                None => handle_option(&mut self.ctx, name, value).to_string(),
            },
        };
        self.out.stdout(format!("{reply}\n"));
        Ok(())
    }

    /// `list` / `list for-push`: the remote's refs and HEAD.
    async fn list(&mut self, for_push: bool) -> Result<(), i32> {
        match storage!(self, if for_push { Purpose::Push } else { Purpose::Read }).list().await {
            Ok(l) => {
                for w in &l.warnings {
                    self.out.stderr(format!("warning: {w}\n"));
                }
                self.out.stdout(render_list(&l, for_push, self.object_format_asked));
                self.listing = Some(l);
                Ok(())
            }
            Err(e) => Err(fatal(&self.out, &self.url, e)),
        }
    }

    /// A batch of `fetch` lines (`first` and the rest up to a blank line):
    /// from the local mirror when git narrows the fetch, else through the
    /// format; LFS set up after a clone's fetch.
    async fn fetch_batch(&mut self, first: RemoteRef, input: &mut Input) -> Result<(), i32> {
        let wants = read_batch(input, &self.out, first, "fetch", |cmd| match cmd {
            Command::Fetch { sha, name } => Ok(RemoteRef { name, sha }),
            other => Err(other),
        })
        .await?;
        let l = match listing_of_same_format(storage!(self, Purpose::Read), &self.listing, &self.ctx.git, self.local_format, &self.url).await {
            Ok(l) => l,
            Err(e) => return Err(fatal(&self.out, &self.url, e)),
        };
        let storage = storage!(self, Purpose::Read);
        if crate::storage::mirror::needed(&self.fetch_opts, &l, &wants, &self.ctx.git).await {
            // Shallow, filtered, lazy or by-object fetches: git's
            // fetch-pack from the local mirror of the remote.
            match crate::storage::mirror::narrow_fetch(storage, &self.ctx, &self.store, &self.url, &l, &wants, &self.fetch_opts).await {
                Ok(lines) => lines.iter().for_each(|line| self.out.stdout(format!("{line}\n"))),
                Err(e) => return Err(fatal(&self.out, &self.url, e)),
            }
        } else if let Err(e) = storage.fetch(&self.ctx, &l, &wants).await {
            return Err(fatal(&self.out, &self.url, e));
        }
        if std::mem::take(&mut self.cloning) {
            crate::lfs::config::on_clone_fetched(&self.ctx.git, &self.args, &self.url, &self.out).await;
        }
        self.out.stdout("\n");
        Ok(())
    }

    /// A batch of `push` lines (`first` and the rest up to a blank line),
    /// answered with one status line per ref.
    async fn push_batch(&mut self, first: PushUpdate, input: &mut Input) -> Result<(), i32> {
        let updates = read_batch(input, &self.out, first, "push", |cmd| match cmd {
            Command::Push { src, dst, force } => Ok(PushUpdate { src, dst, force }),
            other => Err(other),
        })
        .await?;
        // Nothing is written when the formats differ.
        if let Err(e) = listing_of_same_format(storage!(self, Purpose::Read), &self.listing, &self.ctx.git, self.local_format, &self.url).await {
            return Err(fatal(&self.out, &self.url, e));
        }
        match storage!(self, Purpose::Read).push(&self.ctx, &updates).await {
            Ok(results) => {
                let mut reply = String::new();
                for (dst, r) in &results {
                    reply.push_str(&helper_protocol::push_status(dst, r));
                }
                reply.push('\n');
                self.out.stdout(reply);
            }
            Err(e) => return Err(fatal(&self.out, &self.url, e)),
        }
        // Git has its answer; the push's clean-up ends before the session.
        storage!(self, Purpose::Read).settle().await;
        self.listing = None;
        Ok(())
    }
}

/// `first` and the rest of its batch: the lines `item` accepts, up to the
/// blank line that ends the batch (or the end of git's input). Any other
/// command ends the conversation.
async fn read_batch<T>(input: &mut Input, out: &Out, first: T, kind: &str, item: impl Fn(Command) -> Result<T, Command>) -> Result<Vec<T>, i32> {
    let mut batch = vec![first];
    loop {
        let unexpected = match input.read_line().await.map(|l| helper_protocol::parse(&l)) {
            Some(Ok(Command::Blank)) | None => return Ok(batch),
            Some(Ok(cmd)) => match item(cmd) {
                Ok(t) => {
                    batch.push(t);
                    continue;
                }
                Err(other) => format!("{:?}", Ok::<Command, helper_protocol::ParseError>(other)),
            },
            Some(Err(e)) => format!("{:?}", Err::<Command, _>(e)),
        };
        out.stderr(format!("fatal: unexpected command in a {kind} batch: {unexpected}\n"));
        return Err(1);
    }
}

async fn open_storage<'a>(
    slot: &'a mut Option<Storage>,
    store: &S3Store,
    url: &RemoteUrl,
    git: &Git,
    purpose: Purpose,
    trust: &Trust,
) -> Result<&'a Storage, StorageError> {
    if slot.is_none() {
        *slot = Some(Storage::open(store.clone(), url.clone(), git, purpose, trust).await?);
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
async fn listing_of_same_format(
    storage: &Storage,
    listed: &Option<RefListing>,
    git: &Git,
    local: Option<ObjectFormat>,
    url: &RemoteUrl,
) -> Result<RefListing, StorageError> {
    let l = match listed {
        Some(l) => l.clone(),
        None => storage.list().await?,
    };
    same_format(git, local, &l, url).await?;
    Ok(l)
}

/// `local`: the repository's format when known, else asked of git.
async fn same_format(git: &Git, local: Option<ObjectFormat>, l: &RefListing, url: &RemoteUrl) -> Result<(), StorageError> {
    let Some(remote) = l.format() else { return Ok(()) };
    let local = match local {
        Some(f) => Some(f),
        None => git.object_format().await,
    };
    match local {
        Some(local) if local != remote => Err(StorageError::Format(format_mismatch(local, remote, &url.to_string()))),
        _ => Ok(()),
    }
}

/// `list`'s answer; `:object-format <name>` first when git asked for it
/// (`option object-format true`) and the remote has a format.
pub(crate) fn render_list(l: &RefListing, for_push: bool, object_format: bool) -> String {
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

/// What a conversation reads of git's config, in one `git config` run: the
/// bucket policy's settings (`s3/write_options.rs`) and the remote's
/// remembered key (`remote.<name>.s3-keyring`, `crypt::trust`), returned as
/// `git config --get-regexp` prints them, and the repository's object format
/// (`extensions.objectformat` of the repository's own config; absent:
/// SHA-1; None for a name this build does not know).
async fn read_config(git: &Git) -> (String, Option<ObjectFormat>) {
    // Exit status 1 means nothing is set: no policy, a SHA-1 repository.
    let listing = git.run(&["config", "--show-scope", "--get-regexp", r"^(s3\.|remote\..*\.s3|extensions\.objectformat$)"]).await.unwrap_or_default();
    split_config(&listing)
}

fn split_config(listing: &str) -> (String, Option<ObjectFormat>) {
    let mut policy = String::new();
    let mut format = Some(ObjectFormat::Sha1);
    for line in listing.lines() {
        let (scope, setting) = line.split_once('\t').unwrap_or(("", line));
        match setting.strip_prefix("extensions.objectformat ") {
            Some(name) if scope == "local" || scope == "worktree" => format = name.trim().parse().ok(),
            Some(_) => {}
            None => {
                policy.push_str(setting);
                policy.push('\n');
            }
        }
    }
    (policy, format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_config_read_gives_the_policy_lines_and_the_local_object_format() {
        let listing =
            "global\ts3.serversideencryption AES256\nlocal\tremote.origin.s3requestpayer requester\nlocal\textensions.objectformat sha256\n";
        let (policy, format) = split_config(listing);
        assert_eq!(policy, "s3.serversideencryption AES256\nremote.origin.s3requestpayer requester\n");
        assert_eq!(format, Some(ObjectFormat::Sha256));
        assert_eq!(split_config("").1, Some(ObjectFormat::Sha1), "absent: SHA-1");
        assert_eq!(split_config("global\textensions.objectformat sha256\n").1, Some(ObjectFormat::Sha1), "only the repository's own config counts");
        assert_eq!(split_config("local\textensions.objectformat sha3\n").1, None);
    }

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
