//! The local mirror of a remote: a bare repository in the daemon's cache
//! (`mirrors/<id>.git`) that holds what was downloaded of the remote, so that
//! fetches git narrows or that fill a partial clone are served by git itself.
//!
//! A shallow fetch (`--depth`, `--shallow-since`, `--shallow-exclude`,
//! `--deepen`, `--unshallow`), a filtered one (`--filter=…`), a fetch into a
//! shallow repository and a partial clone's lazy fetch of missing objects
//! all go the same way:
//!
//! 1. the mirror is brought up to date through the remote's storage format,
//!    with the same downloads, checks and cache as a plain fetch (each pack
//!    or bundle is downloaded once per machine, not once per request);
//! 2. `git fetch-pack` runs in the caller's repository against the mirror
//!    (`file://`), with git's own options: `.git/shallow`, promisor packs
//!    and the objects sent are exactly what git's own servers would give.
//!
//! A lazy fetch of many objects is one helper session and one `fetch-pack`.

use crate::local::oid::ObjectFormat;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;

use crate::local::cache::Pinned;
use crate::local::files::blocking;
use crate::local::git::{Git, GitError};
use crate::s3::store::S3Store;
use crate::s3::url::RemoteUrl;
use crate::storage::fetch_options::FetchOptions;
use crate::storage::open::{Storage, ViewKind};
use crate::storage::{OpContext, RefListing, RemoteRef, StorageError};

/// Variables that point git at the caller's repository: a mirror's git runs
/// without them.
const REPOSITORY_VARS: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_SHALLOW_FILE",
    "GIT_QUARANTINE_PATH",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_REPLACE_REF_BASE",
    "GIT_NO_REPLACE_OBJECTS",
];

pub(crate) struct Mirror {
    path: PathBuf,
    git: Git,
    /// The mirror is in use: the cache does not evict it under this session.
    _pin: Pinned,
}

impl Mirror {
    /// The mirror `kind` of `url` as `store` reaches it, created on first
    /// use: `Kind::Whole` holds what was downloaded of the whole remote,
    /// `Kind::Views` only the packs format's views and the packs they do
    /// not cover.
    pub(crate) async fn open(ctx: &OpContext, store: &S3Store, url: &RemoteUrl, kind: Kind, format: ObjectFormat) -> Result<Mirror, StorageError> {
        Self::open_or_create(ctx, store, url, kind, format, true).await?.ok_or_else(|| StorageError::Format("the mirror was not created".into()))
    }

    /// The mirror `kind` of `url` if it exists (None: never made).
    pub(crate) async fn existing(
        ctx: &OpContext,
        store: &S3Store,
        url: &RemoteUrl,
        kind: Kind,
        format: ObjectFormat,
    ) -> Result<Option<Mirror>, StorageError> {
        Self::open_or_create(ctx, store, url, kind, format, false).await
    }

    async fn open_or_create(
        ctx: &OpContext,
        store: &S3Store,
        url: &RemoteUrl,
        kind: Kind,
        format: ObjectFormat,
        create_it: bool,
    ) -> Result<Option<Mirror>, StorageError> {
        let mut seed = format!("{}\n{kind:?}", store.location(&url.prefix));
        if format != ObjectFormat::Sha1 {
            seed.push_str(&format!("\n{format}"));
        }
        let id = hex::encode(&Sha256::digest(seed.as_bytes())[..16]);
        let mirror_id = id.clone();
        let pin =
            ctx.cache.blocking(move |c| c.mirror_path(&mirror_id)).await?.ok_or_else(|| StorageError::Format(format!("invalid mirror id {id}")))?;
        let path = pin.to_path_buf();
        let mut env: HashMap<String, String> =
            ctx.env.iter().filter(|(k, _)| !REPOSITORY_VARS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
        env.insert("GIT_DIR".into(), path.to_string_lossy().into_owned());
        let objects = path.join("objects");
        if !blocking(move || Ok(objects.is_dir())).await? {
            if !create_it {
                return Ok(None);
            }
            let tmp = ctx.cache.blocking(|c| c.temp_dir()).await??;
            if let Err(e) = create(&tmp, &path, &env, format).await {
                remove_dir_all(tmp).await;
                return Err(e);
            }
        }
        Ok(Some(Mirror { git: Git::new(&path, env), path, _pin: pin }))
    }

    /// Makes the mirror hold `wants` (ref tips or any objects): downloads
    /// through `storage` what it lacks. An object that no ref tip names
    /// (a lazy fetch) brings in every ref, as does `all_refs`. Then the
    /// mirror's refs are set to the listing's, for git's ref-based options
    /// (`--shallow-exclude=<ref>`).
    pub(crate) async fn fill(
        &self,
        storage: &Storage,
        ctx: &OpContext,
        listing: &RefListing,
        wants: &[RemoteRef],
        all_refs: bool,
    ) -> Result<(), StorageError> {
        let shas: Vec<String> = wants.iter().map(|w| w.sha.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        let present = self.git.present_objects(&shas).await?;
        let tips: Vec<RemoteRef> = wants.iter().filter(|w| listing.is_tip(w)).cloned().collect();
        let missing_non_tip = wants.iter().any(|w| !present.contains(&w.sha) && !listing.is_tip(w));
        let fill: Vec<RemoteRef> = if all_refs || missing_non_tip { listing.refs.clone() } else { tips };
        if fill.iter().any(|r| !present.contains(&r.sha)) {
            storage.fetch(&self.context(ctx), listing, &fill).await?;
        }
        // One lookup after the fill: the wants, and the listed tips for the refs.
        let all: Vec<String> = shas.iter().chain(listing.refs.iter().map(|r| &r.sha)).cloned().collect::<BTreeSet<_>>().into_iter().collect();
        let have = self.git.present_objects(&all).await?;
        if let Some(w) = wants.iter().find(|w| !have.contains(&w.sha)) {
            return Err(if listing.sha_of(&w.name).is_some() {
                StorageError::MissingRef(w.name.clone())
            } else {
                StorageError::Corrupt(format!(
                    "object {} is not in the remote (no ref of it reaches that object; was the history rewritten? fetch again, or clone anew)",
                    w.sha
                ))
            });
        }
        self.set_refs(listing, &have).await
    }

    /// Makes the mirror hold `wants` (objects, not ref tips) by ranged reads
    /// of the packs that hold them (`packs/ranged.rs`). False when that way
    /// does not suit them (then nothing was written).
    async fn fill_ranged(&self, storage: &Storage, ctx: &OpContext, wants: &[RemoteRef]) -> Result<bool, StorageError> {
        let shas: Vec<String> = wants.iter().map(|w| w.sha.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        let present = self.git.present_objects(&shas).await?;
        let missing: Vec<String> = shas.into_iter().filter(|s| !present.contains(s)).collect();
        if missing.is_empty() {
            return Ok(true);
        }
        storage.fetch_objects_by_ranges(&self.context(ctx), &missing, &self.path.join("git-s3-idx")).await
    }

    /// An operation context like `ctx`, working in the mirror.
    fn context(&self, ctx: &OpContext) -> OpContext {
        OpContext {
            git: self.git.clone(),
            out: ctx.out.clone(),
            env: ctx.env.clone(),
            progress: ctx.progress,
            cache: ctx.cache.clone(),
            background: ctx.background.clone(),
            cas: HashMap::new(),
            atomic: false,
        }
    }

    /// The mirror's refs become the listing's refs whose objects it holds
    /// (`have`: objects known to be in the mirror).
    async fn set_refs(&self, listing: &RefListing, have: &HashSet<String>) -> Result<(), StorageError> {
        let current = self.git.run(&["for-each-ref", "--format=%(objectname) %(refname)"]).await?;
        let current: HashMap<&str, &str> = current.lines().filter_map(|l| l.split_once(' ')).map(|(s, n)| (n, s)).collect();
        let wanted: HashMap<&str, &str> =
            listing.refs.iter().filter(|r| have.contains(&r.sha) && valid_ref_name(&r.name)).map(|r| (r.name.as_str(), r.sha.as_str())).collect();
        let mut script = String::new();
        for (name, sha) in &wanted {
            if current.get(name) != Some(sha) {
                script.push_str(&format!("update {name} {sha}\n"));
            }
        }
        for name in current.keys().filter(|n| !wanted.contains_key(*n)) {
            script.push_str(&format!("delete {name}\n"));
        }
        if script.is_empty() {
            return Ok(());
        }
        // Another session may be setting the same refs: what matters is that
        // the objects are there, so a lost race is not an error.
        if let Err(e) = self.git.run_with_stdin(&["update-ref", "--stdin"], script.into_bytes()).await {
            tracing::debug!(error = %e, "mirror refs not updated");
        }
        Ok(())
    }

    /// Runs `git fetch-pack` in the caller's repository against the mirror.
    /// Returns the lines git's transport expects back (`lock <file>`,
    /// `connectivity-ok`).
    /// `relay` shows git's progress and messages as they come.
    /// Serves the fetch from this mirror (`what` it holds, for the log);
    /// None when it cannot, after removing the temporary packs git left in
    /// the caller's repository: the caller then serves it from the whole
    /// remote.
    async fn try_serve(&self, ctx: &OpContext, opts: &FetchOptions, wants: &[RemoteRef], what: &str) -> Option<Vec<String>> {
        let started = std::time::SystemTime::now();
        match self.serve(ctx, opts, wants, false).await {
            Ok(lines) => Some(lines),
            Err(e) => {
                tracing::info!(error = %e, "{what} cannot serve this fetch; serving it from the whole remote");
                if let Ok(dir) = ctx.git.pack_dir().await {
                    crate::local::git::remove_temp_packs_since(&dir, started).await;
                }
                None
            }
        }
    }

    pub(crate) async fn serve(&self, ctx: &OpContext, opts: &FetchOptions, wants: &[RemoteRef], relay: bool) -> Result<Vec<String>, StorageError> {
        let mut args: Vec<String> = vec!["-c".into(), "protocol.file.allow=always".into(), "fetch-pack".into(), "--stdin".into()];
        args.extend(opts.fetch_pack_args(ctx.progress && relay));
        args.push(format!("file://{}", self.path.display()));
        let input: String = wants.iter().map(|w| w.sha.clone()).collect::<BTreeSet<_>>().into_iter().map(|s| format!("{s}\n")).collect();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let span = tracing::debug_span!("git", args = %argv.join(" "), wants = wants.len());
        let (stdout, stderr, ok) = async {
            let mut child =
                ctx.git.command(&argv).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(GitError::Spawn)?;
            let mut stdin = child.stdin.take();
            let mut out_pipe = child.stdout.take();
            let mut err_pipe = child.stderr.take();
            let feed = async {
                if let Some(s) = stdin.as_mut() {
                    let _ = s.write_all(input.as_bytes()).await;
                    let _ = s.shutdown().await;
                }
                drop(stdin.take());
            };
            let read_out = async {
                let mut buf = Vec::new();
                if let Some(p) = out_pipe.as_mut() {
                    let _ = p.read_to_end(&mut buf).await;
                }
                buf
            };
            // Progress goes to the user as it comes; the tail is kept for errors.
            let relay_err = async {
                let mut tail: Vec<u8> = Vec::new();
                let mut chunk = vec![0u8; 8192];
                if let Some(p) = err_pipe.as_mut() {
                    while let Ok(n) = p.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                        if relay {
                            ctx.out.stderr(chunk[..n].to_vec());
                        }
                        tail.extend_from_slice(&chunk[..n]);
                        if tail.len() > 64 << 10 {
                            tail.drain(..tail.len() - (16 << 10));
                        }
                    }
                }
                tail
            };
            let ((), stdout, stderr) = tokio::join!(feed, read_out, relay_err);
            let status = child.wait().await.map_err(GitError::Spawn)?;
            Ok::<_, GitError>((stdout, stderr, status.success()))
        }
        .instrument(span)
        .await?;
        if !ok {
            let stderr = String::from_utf8_lossy(&stderr);
            let last = stderr.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("no message");
            return Err(StorageError::Git(GitError::Failed { args: "fetch-pack (from the local mirror)".into(), stderr: last.to_string() }));
        }
        Ok(String::from_utf8_lossy(&stdout).lines().filter(|l| l.starts_with("lock ") || *l == "connectivity-ok").map(str::to_string).collect())
    }
}

/// Which of a remote's mirrors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Whole,
    Views,
}

/// Serves a fetch that `needed` says goes through a mirror. For a packs
/// remote with views that suit the request (`Storage::views_for`), the views
/// mirror is tried first: it downloads about what the request needs. When
/// it lacks an object, or git cannot serve the request from it, the whole
/// mirror serves it. Returns the lines for git (`lock …`, `connectivity-ok`).
pub(crate) async fn narrow_fetch(
    storage: &Storage,
    ctx: &OpContext,
    store: &S3Store,
    url: &RemoteUrl,
    listing: &RefListing,
    wants: &[RemoteRef],
    opts: &FetchOptions,
) -> Result<Vec<String>, StorageError> {
    let r = Request { storage, ctx, store, url, listing, wants, opts };
    let lazy = wants.iter().any(|w| !listing.is_tip(w));
    // A lazy fetch of a few files (a sparse checkout, one old file) reads
    // them by ranges before the tips view, which holds every file of every
    // branch tip: downloading it whole is for checkouts of whole trees.
    let ranges_first = lazy && storage.reads_by_ranges() && storage.few_for_the_tips_view(wants.len()).await;
    if ranges_first {
        if let Some(lines) = try_ranged(&r).await? {
            return Ok(lines);
        }
    }
    if let Some(kinds) = storage.views_for(opts, lazy) {
        if let Some(lines) = try_views(&r, &kinds).await? {
            return Ok(lines);
        }
    }
    // A lazy fetch of objects the views lack (the files of an old commit):
    // read by ranges from the packs that hold them, into the views mirror.
    if !ranges_first {
        if let Some(lines) = try_ranged(&r).await? {
            return Ok(lines);
        }
    }
    let m = Mirror::open(ctx, store, url, Kind::Whole, listing.format().unwrap_or_default()).await?;
    m.fill(storage, ctx, listing, wants, !opts.deepen_not.is_empty()).await?;
    m.serve(ctx, opts, wants, true).await
}

/// One fetch `narrow_fetch` serves.
#[derive(Clone, Copy)]
struct Request<'a> {
    storage: &'a Storage,
    ctx: &'a OpContext,
    store: &'a S3Store,
    url: &'a RemoteUrl,
    listing: &'a RefListing,
    wants: &'a [RemoteRef],
    opts: &'a FetchOptions,
}

/// Serves the fetch from the views mirror, with the views of `kinds`:
/// None when they lack a wanted object or cannot serve it.
async fn try_views(r: &Request<'_>, kinds: &[ViewKind]) -> Result<Option<Vec<String>>, StorageError> {
    let Request { storage, ctx, store, url, listing, wants, opts } = *r;
    let v = Mirror::open(ctx, store, url, Kind::Views, listing.format().unwrap_or_default()).await?;
    // Views that cannot be read (a view pack gone from the bucket) are
    // not an error: the whole remote serves the fetch.
    let fetched = storage.fetch_views(&v.context(ctx), kinds).await.unwrap_or_else(|e| {
        tracing::info!(error = %e, "the views cannot be read; serving the fetch from the whole remote");
        false
    });
    if !fetched {
        return Ok(None);
    }
    let shas: Vec<String> = wants.iter().map(|w| w.sha.clone()).collect();
    let have = v.git.present_objects(&shas).await?;
    if !shas.iter().all(|s| have.contains(s)) {
        tracing::debug!("the views lack a wanted object; serving the fetch from the whole remote");
        return Ok(None);
    }
    Ok(v.try_serve(ctx, opts, wants, "the views").await)
}

/// Serves a fetch of objects (no ref tips) by ranged reads of the packs
/// that hold them, into the views mirror: None when that way does not suit.
async fn try_ranged(r: &Request<'_>) -> Result<Option<Vec<String>>, StorageError> {
    let Request { storage, ctx, store, url, listing, wants, opts } = *r;
    // Not when the whole mirror has them already (an earlier fetch of the whole remote).
    if !storage.reads_by_ranges() || !ranged_suits(opts, listing, wants) || whole_mirror_has(ctx, store, url, listing, wants).await? {
        return Ok(None);
    }
    let v = Mirror::open(ctx, store, url, Kind::Views, listing.format().unwrap_or_default()).await?;
    if !v.fill_ranged(storage, ctx, wants).await? {
        return Ok(None);
    }
    Ok(v.try_serve(ctx, opts, wants, "the objects read by ranges").await)
}

/// Whether the whole mirror exists and holds every object of `wants`.
async fn whole_mirror_has(
    ctx: &OpContext,
    store: &S3Store,
    url: &RemoteUrl,
    listing: &RefListing,
    wants: &[RemoteRef],
) -> Result<bool, StorageError> {
    let Some(w) = Mirror::existing(ctx, store, url, Kind::Whole, listing.format().unwrap_or_default()).await? else { return Ok(false) };
    let shas: Vec<String> = wants.iter().map(|w| w.sha.clone()).collect();
    let have = w.git.present_objects(&shas).await?;
    Ok(shas.iter().all(|s| have.contains(s)))
}

/// Whether a fetch can be served by ranged reads: a lazy fetch (every want
/// an object no ref names) that git does not narrow by depth or history.
fn ranged_suits(opts: &FetchOptions, listing: &RefListing, wants: &[RemoteRef]) -> bool {
    !wants.is_empty()
        && wants.iter().all(|w| !listing.is_tip(w))
        && opts.depth.is_none()
        && opts.deepen_since.is_none()
        && opts.deepen_not.is_empty()
        && !opts.refetch
}

/// Whether a fetch must go through the mirror: git narrows it, a want is no
/// ref tip of the remote (a lazy fetch, or a fetch by object name), or the
/// repository is shallow (its next fetch must respect its boundary).
pub(crate) async fn needed(opts: &FetchOptions, listing: &RefListing, wants: &[RemoteRef], git: &Git) -> bool {
    opts.narrows() || wants.iter().any(|w| !listing.is_tip(w)) || git.is_shallow().await
}

/// A ref name safe to hand to `git update-ref --stdin`: a `refs/…` name
/// under git's rules (`local/refname.rs`, the one check of ref names).
fn valid_ref_name(name: &str) -> bool {
    name.starts_with("refs/") && crate::local::refname::valid_ref_name(name)
}

/// Creates a mirror: a bare repository built in `tmp` and renamed to `path`
/// (a concurrent creator's mirror wins).
async fn create(tmp: &Path, path: &Path, env: &HashMap<String, String>, format: ObjectFormat) -> Result<(), StorageError> {
    let p = tmp.to_string_lossy().into_owned();
    let mut env = env.clone();
    env.insert("GIT_DIR".into(), p.clone());
    let git = Git::new(tmp, env);
    git.run(&["init", "--bare", "--quiet", "--template=", &format.arg(), &p]).await?;
    for (k, v) in [
        ("uploadpack.allowFilter", "true"),
        ("uploadpack.allowAnySHA1InWant", "true"),
        ("gc.auto", "0"),
        ("core.logAllRefUpdates", "false"),
        ("receive.autogc", "false"),
    ] {
        git.run(&["config", k, v]).await?;
    }
    let (from, to) = (tmp.to_path_buf(), path.to_path_buf());
    let renamed = blocking(move || Ok(std::fs::rename(&from, &to).map_err(|e| (e, to.join("objects").is_dir())))).await?;
    match renamed {
        Ok(()) => Ok(()),
        Err((_, true)) => {
            remove_dir_all(tmp.to_path_buf()).await;
            Ok(())
        }
        Err((e, false)) => {
            remove_dir_all(tmp.to_path_buf()).await;
            Err(e.into())
        }
    }
}

/// Removes a directory tree on a blocking thread (errors ignored: a leftover
/// in the cache's `tmp` is cleaned with it).
async fn remove_dir_all(dir: std::path::PathBuf) {
    let _ = blocking(move || std::fs::remove_dir_all(dir)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names_for_update_ref() {
        assert!(valid_ref_name("refs/heads/main"));
        assert!(valid_ref_name("refs/tags/v1.0"));
        assert!(!valid_ref_name("HEAD"));
        assert!(!valid_ref_name("refs/heads/a b"));
        assert!(!valid_ref_name("refs/heads/../x"));
        assert!(!valid_ref_name("refs/heads/x\nupdate refs/heads/y 00"));
    }
}
