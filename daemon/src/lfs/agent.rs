//! git-lfs's standalone custom transfer agent (`git-lfs-s3`), served by the
//! daemon: line-delimited JSON on the shim's stdin/stdout (`init`, `upload`,
//! `download`, `terminate`). Objects live at `<prefix>/lfs/<oid>` in the
//! bucket of the remote's S3 URL, as git-remote-s3 0.4.2 stores them.
//!
//! Downloads stream to a temp file in the local cache (ranged parallel GETs
//! for large objects), are checked against the oid (SHA-256) and size, then
//! enter the cache's `lfs/` area and are linked (or copied) into
//! `<gitdir>/lfs/tmp` for git-lfs to move into place. A bad object never
//! leaves a file behind. Objects are never held in memory.
//!
//! On an encrypted packs remote (it has a keyring, opened at `init` with the
//! caller's identities) objects are age files at keyed names instead: see
//! `agent/encrypted.rs`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use git_s3_proto::pb::SessionStart;
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::lfs::config::{parse_synthetic_lfs_url, LFS_ALIAS_HOST};
use crate::lfs::endpoint::{lfs_url_of, Operation};
use crate::local::files::{blocking, link_or_copy_into_async};
use crate::local::git::{Git, GitError};
use crate::s3::store::{PutOptions, S3Store, StoreError, WriteCondition};
use crate::s3::url::{s3_url_of_remote, RemoteNameError, RemoteUrl, UrlError};
use crate::s3::write_options::{s3_config, BucketPolicy, PolicyError};
use crate::session::state::{DaemonState, LfsProbes};
use crate::session::{Input, Out};
use crate::storage::crypt::trust::Trust;
use crate::storage::crypt::{CryptError, RemoteKey};

/// Objects larger than this are downloaded as parallel ranges.
pub(crate) const RANGED_THRESHOLD: u64 = 32 << 20;
/// Size of one ranged GET.
pub(crate) const RANGE_SIZE: u64 = 16 << 20;
/// Ranged GETs in flight for one object.
const RANGE_CONCURRENCY: usize = 4;
/// Objects up to this size are uploaded with one create-only PUT (no HEAD first).
const SMALL_OBJECT: u64 = 1 << 20;
/// Progress events at most this often (and at the end).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// Per-object error code (as 0.4.2 answers).
const OBJECT_ERROR_CODE: i64 = 2;
/// `init` error code for an unusable remote URL (as 0.4.2 answers).
const INIT_URL_ERROR_CODE: i64 = 32;

mod encrypted;

#[derive(Debug, thiserror::Error)]
pub(crate) enum AgentError {
    #[error("cannot resolve remote \"{remote}\": {reason}")]
    Remote { remote: String, reason: String },
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("the LFS store {url} cannot be used: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("local file error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid LFS oid {0:?}: expected 64 lowercase hex digits")]
    BadOid(String),
    #[error("the {0} request has no \"{1}\"")]
    MissingField(&'static str, &'static str),
    #[error(
        "LFS object {oid} is missing from the remote (s3://{bucket}/{key} does not exist); push it from a clone that has it (git lfs push --all)"
    )]
    Missing { oid: String, bucket: String, key: String },
    #[error("LFS object {oid} in s3://{bucket}/{key} is corrupt: its SHA-256 is {actual}; not checked out")]
    HashMismatch { oid: String, bucket: String, key: String, actual: String },
    #[error("LFS object {oid} in s3://{bucket}/{key} has {actual} bytes, expected {expected}; not checked out")]
    SizeMismatch { oid: String, bucket: String, key: String, actual: u64, expected: u64 },
    /// An encrypted remote's object that does not decrypt, or whose keyring does not open.
    #[error(transparent)]
    Crypt(#[from] CryptError),
    #[error(
        "s3://{bucket}/{key} should be LFS object {oid} but it holds {actual}: objects were swapped or replaced in the bucket; refusing it (not checked out)"
    )]
    Swapped { oid: String, bucket: String, key: String, actual: String },
}

#[derive(Debug, serde::Deserialize)]
struct Request {
    event: String,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    remote: Option<String>,
    #[serde(default)]
    oid: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    path: Option<String>,
}

/// `<gitdir>/lfs/tmp/git-lfs-s3.log`: errors always, everything with `debug`.
/// Lines are kept until `flush` appends them, off the async workers (after
/// each request, and when the agent ends).
struct AgentLog {
    file: Option<PathBuf>,
    debug: bool,
    pending: std::sync::Mutex<String>,
}

impl AgentLog {
    fn new(file: Option<PathBuf>, debug: bool) -> AgentLog {
        AgentLog { file, debug, pending: Default::default() }
    }

    fn write(&self, level: &str, msg: &str) {
        if self.file.is_none() {
            return;
        }
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let line = format!("{}.{:03} - {level} - {} - {msg}\n", now.as_secs(), now.subsec_millis(), std::process::id());
        if let Ok(mut p) = self.pending.lock() {
            p.push_str(&line);
        }
    }

    /// Appends the lines written since the last flush to the file.
    async fn flush(&self) {
        let Some(path) = self.file.clone() else { return };
        let lines = match self.pending.lock() {
            Ok(mut p) if !p.is_empty() => std::mem::take(&mut *p),
            _ => return,
        };
        let r = blocking(move || {
            use std::io::Write;
            std::fs::OpenOptions::new().create(true).append(true).open(&path)?.write_all(lines.as_bytes())
        })
        .await;
        if let Err(e) = r {
            tracing::debug!(log = ?self.file, error = %e, "cannot write the agent log");
        }
    }
    fn debug(&self, msg: &str) {
        tracing::debug!("{msg}");
        if self.debug {
            self.write("DEBUG", msg);
        }
    }
    fn error(&self, msg: &str) {
        tracing::warn!("{msg}");
        self.write("ERROR", msg);
    }
}

struct Agent {
    state: Arc<DaemonState>,
    git: Git,
    env: std::collections::HashMap<String, String>,
    out: Out,
    log: AgentLog,
    gitdir: Option<PathBuf>,
    remote: Option<(RemoteUrl, S3Store)>,
    /// The remote key when the remote is encrypted (its keyring opened at `init`).
    key: Option<Arc<RemoteKey>>,
}

pub(crate) async fn run(state: Arc<DaemonState>, start: SessionStart, mut input: Input, out: Out) -> i32 {
    let debug = match start.args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => false,
        ["debug"] => true,
        [other, ..] => {
            out.stdout(format!("unknown command {other}\n"));
            return 1;
        }
    };
    let git = Git::new(&start.cwd, start.env.clone());
    let gitdir = git.run(&["rev-parse", "--absolute-git-dir"]).await.ok().map(PathBuf::from);
    let log_file = match gitdir.as_ref().map(|g| g.join("lfs").join("tmp")) {
        Some(dir) => blocking(move || std::fs::create_dir_all(&dir).map(|_| dir.join("git-lfs-s3.log"))).await.ok(),
        None => None,
    };
    let mut agent = Agent { state, git, env: start.env, out, log: AgentLog::new(log_file, debug), gitdir, remote: None, key: None };
    agent.log.debug("git-lfs-s3 starting");
    let code = serve_requests(&mut agent, &mut input).await;
    agent.log.flush().await;
    code
}

/// Answers git-lfs's requests until `terminate` or the end of its input;
/// the exit code.
async fn serve_requests(agent: &mut Agent, input: &mut Input) -> i32 {
    loop {
        // What the last request logged, written before waiting for the next.
        agent.log.flush().await;
        let Some(line) = input.read_line().await else { break };
        agent.state.touch();
        if line.trim().is_empty() {
            continue;
        }
        agent.log.debug(&line);
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                agent.log.error(&format!("invalid request {line:?}: {e}"));
                agent.out.stderr(format!("git-lfs-s3: invalid request from git-lfs: {e}\n"));
                return 1;
            }
        };
        match req.event.as_str() {
            "init" => {
                if let Err(code) = agent.init(&req).await {
                    return code;
                }
            }
            "upload" | "download" => agent.transfer(&req).await,
            "terminate" => {
                agent.log.debug("terminate");
                return 0;
            }
            other => {
                agent.log.error(&format!("unknown event {other:?}"));
                agent.out.stderr(format!("git-lfs-s3: unknown event {other:?} from git-lfs\n"));
                return 1;
            }
        }
    }
    0
}

fn error_line(code: i64, message: &str) -> String {
    format!("{}\n", json!({"error": {"code": code, "message": message}}))
}

fn valid_oid(oid: &str) -> bool {
    crate::local::oid::ObjectFormat::Sha256.accepts(oid)
}

/// The S3 URL for `init`'s `remote`: an `s3://`/`s3+zip://` URL, a
/// synthetic `https://lfs-alias.git-remote-s3.test/…` URL (mapped back to the
/// remote that carries it, else decoded), or a remote name. A remote whose
/// git URL is not S3 (code on another host) is served when the LFS URL
/// git-lfs uses for it (git config or `.lfsconfig`) is git-lfs-s3's alias.
/// The flag is true when the URL came from such an LFS URL.
pub(crate) async fn resolve_remote(git: &Git, remote: &str, op: Operation) -> Result<(RemoteUrl, bool), AgentError> {
    let fail = |reason: String| AgentError::Remote { remote: remote.to_string(), reason };
    if remote.starts_with("s3://") || remote.starts_with("s3+zip://") {
        return Ok((RemoteUrl::parse(remote)?, false));
    }
    if let Some(decoded) = parse_synthetic_lfs_url(remote) {
        // Prefer the remote that carries this alias: its URL keeps the profile.
        if let Ok(lines) = git.run(&["config", "--get-regexp", r"^remote\..*\.lfsurl$"]).await {
            for l in lines.lines() {
                if let Some((key, value)) = l.split_once(' ') {
                    if value == remote {
                        if let Some(name) = key.strip_prefix("remote.").and_then(|k| k.strip_suffix(".lfsurl")) {
                            if let Ok(u) = git.remote_url(name).await {
                                if let Ok(parsed) = RemoteUrl::parse(&u) {
                                    return Ok((parsed, false));
                                }
                            }
                        }
                    }
                }
            }
        }
        return Ok((decoded, true));
    }
    let not_s3 = match s3_url_of_remote(git, remote).await {
        Ok(u) => return Ok((u, false)),
        Err(RemoteNameError::NotConfigured { detail, .. }) if !remote.contains("://") => {
            // git-lfs may still use an lfs.url for a remote it cannot find.
            detail
        }
        Err(RemoteNameError::InvalidName(_)) | Err(RemoteNameError::NotConfigured { .. }) => "not a remote name or an s3:// URL".to_string(),
        Err(RemoteNameError::NotS3 { url, .. } | RemoteNameError::BadUrl { url, .. }) => {
            format!("its URL '{url}' is not an s3:// or s3+zip:// URL")
        }
    };
    // Code on another host: the LFS URL git-lfs chose must be our alias.
    match lfs_url_of(git, remote, op).await {
        Some(found) => match parse_synthetic_lfs_url(&found.url) {
            Some(u) => Ok((u, true)),
            None => Err(fail(format!(
                "its LFS URL '{}' ({}) is not a git-lfs-s3 URL (https://{LFS_ALIAS_HOST}/<bucket>/<prefix>)",
                found.url, found.source
            ))),
        },
        None => {
            Err(fail(format!("{not_s3}, and no LFS URL names an S3 bucket; run: git s3 lfs install --remote {remote} --url s3://<bucket>/<prefix>")))
        }
    }
}

/// One GET of `<prefix>/lfs/` (normally absent): fails when the bucket
/// does not exist, the credentials are missing or rejected, or access is
/// denied, with the store's one-line message naming the bucket.
///
/// git-lfs starts one agent per concurrent transfer (8 by default), all at
/// once: probes take turns, and an outcome stands for the next agents of
/// the same URL and caller configuration (a success for [`PROBE_OK_TTL`], a
/// failure for [`PROBE_FAIL_TTL`]), so one git-lfs command costs one probe.
/// Ok(true) when this call sent the GET.
async fn probe(
    probes: &tokio::sync::Mutex<LfsProbes>,
    store: &S3Store,
    url: &RemoteUrl,
    env: &std::collections::HashMap<String, String>,
) -> Result<bool, AgentError> {
    let unreachable = |reason: String| AgentError::Unreachable { url: format!("s3://{}/{}", url.bucket, url.prefix), reason };
    let who = probe_key(url, env);
    // Held until the outcome is recorded: the probes take turns.
    let mut probed = probes.lock().await;
    let known = probed.get(&who).cloned();
    if let Some((at, outcome)) = known {
        let ttl = if outcome.is_ok() { PROBE_OK_TTL } else { PROBE_FAIL_TTL };
        if at.elapsed() < ttl {
            return outcome.map(|()| false).map_err(unreachable);
        }
    }
    let outcome = match store.get_small(&url.key("lfs/")).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    probed.retain(|_, (t, _)| t.elapsed() < PROBE_OK_TTL);
    probed.insert(who, (Instant::now(), outcome.clone()));
    outcome.map(|()| true).map_err(unreachable)
}

/// How long a probe's outcome stands for the next agents.
const PROBE_OK_TTL: Duration = Duration::from_secs(30);
const PROBE_FAIL_TTL: Duration = Duration::from_secs(10);

/// The URL and everything in the caller's environment that picks the
/// credentials and the endpoint (never stored: only a hash).
fn probe_key(url: &RemoteUrl, env: &std::collections::HashMap<String, String>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    url.to_string().hash(&mut h);
    let mut vars: Vec<(&String, &String)> = env.iter().filter(|(k, _)| k.starts_with("AWS_") || k.as_str() == "HOME").collect();
    vars.sort();
    vars.hash(&mut h);
    h.finish()
}

/// Sends throttled `progress` events for one object.
struct Progress {
    out: Out,
    oid: String,
    so_far: AtomicU64,
    sent: Mutex<(u64, Instant)>,
    /// The most reported: an encrypted object's transfer counts its age
    /// file's bytes, a little more than the object's size git-lfs knows.
    cap: u64,
}

impl Progress {
    fn new(out: &Out, oid: &str) -> Arc<Progress> {
        Progress::capped(out, oid, u64::MAX)
    }

    fn capped(out: &Out, oid: &str, cap: u64) -> Arc<Progress> {
        Arc::new(Progress { out: out.clone(), oid: oid.to_string(), so_far: AtomicU64::new(0), sent: Mutex::new((0, Instant::now())), cap })
    }

    fn add(&self, n: u64) {
        let total = self.so_far.fetch_add(n, Ordering::SeqCst) + n;
        self.emit(total, false);
    }

    fn finish(&self) {
        self.emit(self.so_far.load(Ordering::SeqCst), true);
    }

    fn emit(&self, total: u64, force: bool) {
        let total = total.min(self.cap);
        let Ok(mut sent) = self.sent.lock() else { return };
        if total <= sent.0 || !(force || sent.1.elapsed() >= PROGRESS_INTERVAL) {
            return;
        }
        let since = total - sent.0;
        *sent = (total, Instant::now());
        self.out.stdout(format!("{}\n", json!({"event": "progress", "oid": self.oid, "bytesSoFar": total, "bytesSinceLast": since})));
    }
}

/// SHA-256 (hex) and length of a file, read in a blocking thread.
pub(crate) async fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            len += n as u64;
        }
        Ok((hex::encode(h.finalize()), len))
    })
    .await
    .map_err(std::io::Error::other)?
}

impl Agent {
    /// Answers `init`; Err(exit code) when the agent must stop.
    async fn init(&mut self, req: &Request) -> Result<(), i32> {
        let remote = req.remote.clone().unwrap_or_default();
        self.log.debug(&format!("init operation={:?} remote={remote:?}", req.operation));
        let op = if req.operation.as_deref() == Some("upload") { Operation::Upload } else { Operation::Download };
        let name = Some(remote.as_str()).filter(|r| !r.is_empty() && !r.contains("://"));
        // One config read: the bucket policy and what the repository
        // remembers of an encrypted remote (`crypt::trust`).
        let listing = s3_config(&self.git).await;
        let policy = BucketPolicy::from_listing(&listing, name);
        let mut trust = Trust::default();
        let resolved = match resolve_remote(&self.git, &remote, op).await.and_then(|r| Ok((r, policy?))) {
            // Code on another host: its git push goes on without S3, so
            // check the bucket now (git-lfs's pre-push runs first; a failed
            // init stops the push before any git object is sent).
            Ok(((url, true), policy)) => {
                trust = Trust::for_lfs(&listing, name, true);
                let store = self.state.store_for(&self.env, &url).await.with_policy(policy);
                match probe(&self.state.lfs_probes, &store, &url, &self.env).await {
                    Ok(sent) => {
                        let how = if sent { "checked" } else { "checked by another agent" };
                        self.log.debug(&format!("bucket {how}: {url}"));
                        Ok((url, store))
                    }
                    Err(e) => Err(e),
                }
            }
            Ok(((url, false), policy)) => {
                trust = Trust::for_lfs(&listing, name, false);
                let store = self.state.store_for(&self.env, &url).await.with_policy(policy);
                Ok((url, store))
            }
            Err(e) => Err(e),
        };
        // An encrypted remote (it has a keyring): opened with the caller's
        // identities, else refused in one line before any transfer.
        // A repository that remembers the remote encrypted refuses a
        // plaintext one, or another keyring, as its fetches and pushes do.
        let resolved = match resolved {
            Ok((url, store)) => self.open_trusted(&store, &url, &trust).await.map(|key| (url, store, key)),
            Err(e) => Err(e),
        };
        match resolved {
            Ok((url, store, key)) => {
                let how = if key.is_some() { " (encrypted)" } else { "" };
                self.log.debug(&format!("remote {remote:?} is {url}{how}"));
                self.remote = Some((url, store));
                self.key = key;
                self.out.stdout("{}\n");
                Ok(())
            }
            Err(e) => {
                let code = if matches!(e, AgentError::Url(_)) { INIT_URL_ERROR_CODE } else { OBJECT_ERROR_CODE };
                let msg = e.to_string();
                self.log.error(&msg);
                self.out.stdout(error_line(code, &msg));
                Err(1)
            }
        }
    }

    /// The remote's key (None: a plaintext remote), judged against what
    /// the repository remembers, and remembered on first use.
    async fn open_trusted(&self, store: &S3Store, url: &RemoteUrl, trust: &Trust) -> Result<Option<Arc<RemoteKey>>, AgentError> {
        let key = trust.open_key(store, url, &self.env).await?;
        trust.settle(&self.git, url, key.as_deref()).await?;
        Ok(key)
    }

    async fn transfer(&mut self, req: &Request) {
        let oid = req.oid.clone().unwrap_or_default();
        let span = tracing::info_span!("lfs.transfer", event = %req.event, oid = %oid, size = req.size);
        let result = async {
            if !valid_oid(&oid) {
                return Err(AgentError::BadOid(oid.clone()));
            }
            if req.event == "upload" {
                self.upload(req, &oid).await.map(|_| None)
            } else {
                self.download(req, &oid).await.map(Some)
            }
        }
        .instrument(span)
        .await;
        match result {
            Ok(path) => {
                let mut ev = json!({"event": "complete", "oid": oid});
                if let Some(p) = path {
                    ev["path"] = json!(p.to_string_lossy());
                }
                self.log.debug(&format!("{} {oid} complete", req.event));
                self.out.stdout(format!("{ev}\n"));
            }
            Err(e) => {
                let msg = e.to_string();
                self.log.error(&format!("{} {oid}: {msg}", req.event));
                self.out.stdout(format!("{}\n", json!({"event": "complete", "oid": oid, "error": {"code": OBJECT_ERROR_CODE, "message": msg}})));
            }
        }
    }

    fn remote(&self) -> Result<&(RemoteUrl, S3Store), AgentError> {
        self.remote.as_ref().ok_or_else(|| AgentError::Remote { remote: String::new(), reason: "no init before the transfer request".into() })
    }

    async fn upload(&self, req: &Request, oid: &str) -> Result<(), AgentError> {
        let (url, store) = self.remote()?;
        let path = req.path.as_deref().ok_or(AgentError::MissingField("upload", "path"))?;
        let local_len = tokio::fs::metadata(path).await?.len();
        if let Some(k) = &self.key {
            return self.upload_encrypted(url, store, k, Path::new(path), oid, local_len).await;
        }
        let key = url.key(&format!("lfs/{oid}"));
        let progress = Progress::new(&self.out, oid);
        if local_len <= SMALL_OBJECT {
            // One request for a new small object: a create-only PUT; a 412
            // means it exists (then check its size below, as for large ones).
            let p = progress.clone();
            let create_only = PutOptions { condition: WriteCondition::IfAbsent, ..Default::default() };
            match store.put_file(&key, Path::new(path), create_only, move |n| p.add(n)).await {
                Ok(_) => {
                    progress.finish();
                    self.log.debug(&format!("upload {oid}: {local_len} bytes uploaded"));
                    return Ok(());
                }
                Err(e) if e.is_precondition_failed() => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(info) = store.head(&key).await? {
            if info.size == local_len {
                self.log.debug(&format!("upload {oid}: already in the bucket, skipped"));
                return Ok(());
            }
            self.log.error(&format!("upload {oid}: s3://{}/{key} has {} bytes, expected {local_len}; uploading it again", url.bucket, info.size));
        }
        let p = progress.clone();
        store.put_file(&key, Path::new(path), PutOptions::default(), move |n| p.add(n)).await?;
        progress.finish();
        self.log.debug(&format!("upload {oid}: {local_len} bytes uploaded"));
        Ok(())
    }

    fn tmp_dir(&self) -> PathBuf {
        match &self.gitdir {
            Some(g) => g.join("lfs").join("tmp"),
            None => self.state.cache.root().join("tmp"),
        }
    }

    async fn download(&self, req: &Request, oid: &str) -> Result<PathBuf, AgentError> {
        let (url, store) = self.remote()?;
        let key = url.key(&format!("lfs/{oid}"));
        let tmp_dir = self.tmp_dir();
        let progress = Progress::new(&self.out, oid);

        // The local cache first, verified.
        if let Some(dest) = self.cached_copy(req, oid, &tmp_dir, &progress).await? {
            return Ok(dest);
        }
        if let Some(k) = &self.key {
            return self.download_encrypted(req, oid, url, store, k, tmp_dir).await;
        }
        let cache = self.state.cache.clone();
        let mismatch_size = |actual: u64, expected: u64| AgentError::SizeMismatch {
            oid: oid.to_string(),
            bucket: url.bucket.clone(),
            key: key.clone(),
            actual,
            expected,
        };
        // A temp file on the cache's filesystem; deleted unless it is verified.
        let c = cache.clone();
        let temp = blocking(move || c.temp_file()).await?;
        let missing = || AgentError::Missing { oid: oid.to_string(), bucket: url.bucket.clone(), key: key.clone() };
        let expected = match req.size {
            // Small, of known size: one GET (its length is checked after).
            Some(size) if size <= RANGED_THRESHOLD => {
                let p = progress.clone();
                match store.get_to_file(&key, temp.path(), move |n| p.add(n)).await {
                    Ok(_) => size,
                    Err(e) if e.is_not_found() => return Err(missing()),
                    Err(e) => return Err(e.into()),
                }
            }
            // Large (or of unknown size): its size and ETag first, then
            // ranged GETs pinned to that ETag.
            _ => {
                let Some(info) = store.head(&key).await? else {
                    return Err(missing());
                };
                if let Some(expected) = req.size {
                    if info.size != expected {
                        return Err(mismatch_size(info.size, expected));
                    }
                }
                if info.size > RANGED_THRESHOLD {
                    let f = temp.as_file().try_clone()?;
                    blocking(move || f.set_len(info.size)).await?;
                    self.get_ranges(store, &key, temp.path(), info.size, &info.etag, &progress).await?;
                } else {
                    let p = progress.clone();
                    store.get_to_file(&key, temp.path(), move |n| p.add(n)).await?;
                }
                info.size
            }
        };
        progress.finish();
        let (sha, len) = sha256_file(temp.path()).await?;
        if len != expected {
            return Err(mismatch_size(len, expected));
        }
        if sha != oid {
            return Err(AgentError::HashMismatch { oid: oid.to_string(), bucket: url.bucket.clone(), key, actual: sha });
        }
        self.log.debug(&format!("download {oid}: {len} bytes, SHA-256 verified"));
        self.deliver(temp, tmp_dir, oid).await
    }

    /// Hands git-lfs the verified object `file` (linked or copied into
    /// `tmp_dir`; first, so a failing cache cannot fail the transfer), then
    /// keeps it in the local cache. The path git-lfs gets.
    async fn deliver(&self, file: tempfile::NamedTempFile, tmp_dir: PathBuf, oid: &str) -> Result<PathBuf, AgentError> {
        let dest = link_or_copy_into_async(file.path().to_path_buf(), tmp_dir, oid.to_string()).await?;
        let (cache, o) = (self.state.cache.clone(), oid.to_string());
        if let Err(e) = blocking(move || cache.insert_lfs(&o, file)).await {
            self.log.error(&format!("download {oid}: not cached: {e}"));
        }
        Ok(dest)
    }

    /// The object from the local cache, verified, linked or copied into
    /// `tmp_dir` for git-lfs; None when not cached, or when the cached copy
    /// does not verify (then evicted).
    async fn cached_copy(&self, req: &Request, oid: &str, tmp_dir: &Path, progress: &Arc<Progress>) -> Result<Option<PathBuf>, AgentError> {
        let cache = self.state.cache.clone();
        let (c, o) = (cache.clone(), oid.to_string());
        let Some(cached) = blocking(move || Ok(c.lookup_lfs(&o))).await? else { return Ok(None) };
        match sha256_file(&cached).await {
            Ok((sha, len)) if sha == oid && req.size.is_none_or(|s| s == len) => {
                let dest = link_or_copy_into_async(cached.to_path_buf(), tmp_dir.to_path_buf(), oid.to_string()).await?;
                progress.add(len);
                progress.finish();
                self.log.debug(&format!("download {oid}: from the local cache"));
                Ok(Some(dest))
            }
            _ => {
                self.log.error(&format!("download {oid}: cached copy is corrupt; evicted"));
                let o = oid.to_string();
                blocking(move || {
                    cache.evict_lfs(&o);
                    Ok(())
                })
                .await?;
                Ok(None)
            }
        }
    }

    /// Fills `dest` (already `len` bytes long) with parallel ranged GETs
    /// pinned to `etag`.
    async fn get_ranges(&self, store: &S3Store, key: &str, dest: &Path, len: u64, etag: &str, progress: &Arc<Progress>) -> Result<(), AgentError> {
        use futures::stream::{StreamExt, TryStreamExt};
        let etag = (!etag.is_empty()).then_some(etag);
        futures::stream::iter(0..len.div_ceil(RANGE_SIZE))
            .map(|i| {
                let p = progress.clone();
                async move {
                    let offset = i * RANGE_SIZE;
                    let size = RANGE_SIZE.min(len - offset);
                    store.get_range_to_file(key, dest, offset, size, etag, move |n| p.add(n)).await
                }
            })
            .buffer_unordered(RANGE_CONCURRENCY)
            .try_collect::<Vec<u64>>()
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oid_validation() {
        assert!(valid_oid(&"0123456789abcdef".repeat(4)));
        assert!(!valid_oid(&"0123456789ABCDEF".repeat(4)));
        assert!(!valid_oid("../../etc/passwd"));
        assert!(!valid_oid(""));
    }

    // git-lfs's requests (one JSON object a line), fuzzed: never a panic;
    // huge or negative sizes and wrong types are refused by the parser; an
    // oid the agent uses is 64 lowercase hex digits, so never a path.
    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: std::env::var("GIT_S3_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
            ..Default::default()
        })]

        fn requests_never_panic(
            line in ".*",
            event in proptest::prop_oneof![proptest::strategy::Just("\"init\"".to_string()), proptest::strategy::Just("\"upload\"".to_string()), proptest::strategy::Just("1".to_string()), "\"[ -~]{0,12}\""],
            oid in proptest::prop_oneof!["[0-9a-f]{64}", "[0-9a-fA-F./]{0,70}", ".{0,10}"],
            size in proptest::prop_oneof![proptest::strategy::Just("-1".to_string()), proptest::strategy::Just("1e400".to_string()), proptest::strategy::Just("18446744073709551616".to_string()), "[0-9]{1,20}", proptest::strategy::Just("null".to_string())],
            path in ".{0,40}",
        ) {
            let _ = serde_json::from_str::<Request>(&line);
            let json = format!(r#"{{"event":{event},"operation":"download","oid":{},"size":{size},"path":{},"remote":"origin"}}"#,
                serde_json::to_string(&oid).unwrap(), serde_json::to_string(&path).unwrap());
            if let Ok(r) = serde_json::from_str::<Request>(&json) {
                proptest::prop_assert!(r.size.is_none() || size.bytes().all(|b| b.is_ascii_digit()));
                if let Some(o) = r.oid.as_deref().filter(|o| valid_oid(o)) {
                    proptest::prop_assert!(!o.contains('/') && !o.contains('.') && o.len() == 64);
                }
            }
        }
    }

    /// The property as a fuzz target: once, or in batches for
    /// `GIT_S3_FUZZ_SECONDS` (as daemon/tests/fuzz.rs runs its targets).
    #[test]
    fn fuzz_requests_never_panic() {
        let seconds: Option<u64> = std::env::var("GIT_S3_FUZZ_SECONDS").ok().and_then(|v| v.parse().ok());
        let per_batch: u64 = std::env::var("GIT_S3_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
        let start = std::time::Instant::now();
        let mut batches = 0u64;
        loop {
            requests_never_panic();
            batches += 1;
            match seconds {
                Some(s) if start.elapsed() < std::time::Duration::from_secs(s) => continue,
                _ => break,
            }
        }
        eprintln!("fuzz lfs agent requests_never_panic: {} cases in {:.1} s", batches * per_batch, start.elapsed().as_secs_f64());
    }

    #[test]
    fn remote_names() {
        use crate::s3::url::valid_remote_name;
        assert!(valid_remote_name("origin"));
        assert!(!valid_remote_name("--upload-pack=x"));
        assert!(!valid_remote_name("a b"));
    }

    #[tokio::test]
    async fn hashes_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello\n").unwrap();
        let (sha, len) = sha256_file(&p).await.unwrap();
        assert_eq!(sha, "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");
        assert_eq!(len, 6);
    }
}
