//! `BundleStorage`: the git-remote-s3 0.4.2 layout (see `layout`) as the
//! storage interface: a ref is one full bundle, pushed under the ref's lock
//! (`locks`) and fetched by `git index-pack` as it downloads.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tracing::Instrument;

use crate::local::oid::ObjectFormat;
use crate::local::refname::valid_ref_name;
use crate::s3::store::{ObjectInfo, PutOptions, S3Store, StoreError, WriteCondition};
use crate::s3::url::{RemoteUrl, Scheme};
use crate::session::progress::Progress;
use crate::storage::bundles::layout::{scan, PrefixScan};
use crate::storage::bundles::locks::{self, lock_wait};
use crate::storage::ref_update::{local_history, Decision, RefUpdate};
use crate::storage::zip::{build_zip, upload_zip};
use crate::storage::{format_mismatch, OpContext, PushResult, PushUpdate, RefListing, RemoteRef, RepoStorage, StorageError};

pub(crate) struct BundleStorage {
    store: S3Store,
    url: RemoteUrl,
    /// The `<prefix>/refs/` listing made at detection, for the first scan.
    seed: std::sync::Mutex<Option<Vec<ObjectInfo>>>,
    /// `<prefix>/HEAD` as read at detection, for the first `list`.
    head_seed: std::sync::Mutex<Option<Option<String>>>,
    /// The last `list`'s answer, for the push that follows it (git decided
    /// its updates from it; each ref is read again under its lock).
    last_listing: std::sync::Mutex<Option<RefListing>>,
    /// The clean-ups of this session's pushes (the replaced bundles'
    /// deletion, the locks' release), running after git has its answer:
    /// `settle` waits for them.
    cleanups: std::sync::Mutex<Vec<tokio::sync::oneshot::Receiver<()>>>,
}

/// The content of `<prefix>/HEAD` (trimmed; None when absent or empty).
pub(crate) async fn read_head(store: &S3Store, url: &RemoteUrl) -> Result<Option<String>, StoreError> {
    Ok(store.get_small(&url.key("HEAD")).await?.map(|b| String::from_utf8_lossy(&b).trim().to_string()).filter(|s| !s.is_empty()))
}

impl BundleStorage {
    pub(crate) fn new(store: S3Store, url: RemoteUrl, refs_listing: Option<Vec<ObjectInfo>>) -> BundleStorage {
        BundleStorage {
            store,
            url,
            seed: std::sync::Mutex::new(refs_listing),
            head_seed: std::sync::Mutex::new(None),
            last_listing: std::sync::Mutex::new(None),
            cleanups: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// `head`: `<prefix>/HEAD` as read beside the detection's listing, if it was.
    pub(crate) fn with_head(self, head: Option<Option<String>>) -> BundleStorage {
        BundleStorage { head_seed: std::sync::Mutex::new(head), ..self }
    }

    /// Waits for the clean-ups this session's pushes left running after
    /// their answer (the session ends once they are done, so the next
    /// command finds the ref's lock free and one bundle per ref).
    pub(crate) async fn settle(&self) {
        let pending: Vec<_> = self.cleanups.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default();
        futures::future::join_all(pending).await;
    }

    /// The bundles, locks, markers and zips under `<prefix>/refs/` (the
    /// HEAD object is read on its own; LFS objects are never listed).
    pub(crate) async fn scan(&self) -> Result<PrefixScan, StorageError> {
        let seeded = self.seed.lock().ok().and_then(|mut s| s.take());
        let objects = match seeded {
            Some(o) => o,
            None => self.store.list(&self.url.key("refs/")).await?,
        };
        Ok(scan(&self.url.prefix, &objects))
    }

    /// `<prefix>/HEAD`: the detection's read the first time, then a fresh one.
    pub(crate) async fn read_head(&self) -> Result<Option<String>, StorageError> {
        let seeded = self.head_seed.lock().ok().and_then(|mut s| s.take());
        match seeded {
            Some(head) => Ok(head),
            None => Ok(read_head(&self.store, &self.url).await?),
        }
    }

    fn bundle_key(&self, refname: &str, sha: &str) -> String {
        self.url.key(&format!("{refname}/{sha}.bundle"))
    }

    /// Downloads a bundle into the cache while `git index-pack` indexes it
    /// as it arrives. Returns the new pack's hash. A bundle git rejects is
    /// not cached.
    async fn download_and_index(&self, ctx: &OpContext, r: &RemoteRef) -> Result<String, StorageError> {
        let key = self.bundle_key(&r.name, &r.sha);
        let tmp = ctx.cache.blocking(|c| c.temp_file()).await??;
        let mut progress = Progress::new(ctx.out.clone(), ctx.progress, format!("Downloading {}", r.name), None).delayed_as(&ctx.env);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let download = self.store.get_to_file_tee(&key, tmp.path(), Some(tx), |n| progress.add(n));
        let (downloaded, indexed) = tokio::join!(download, ctx.git.index_bundle_stream(rx));
        let kept = match downloaded {
            Ok((_, _, kept)) => kept,
            Err(e) if e.is_not_found() => return Err(StorageError::MissingRef(r.name.clone())),
            Err(e) => return Err(e.into()),
        };
        progress.finish();
        match indexed {
            Ok(hash) => {
                // A bundle the cache could not hold (full, unwritable) was only streamed.
                if kept {
                    let sha = r.sha.clone();
                    if let Err(e) = ctx.cache.blocking(move |c| c.insert_bundle(&sha, tmp)).await.and_then(|r| r) {
                        tracing::warn!(error = %e, "bundle not cached");
                    }
                }
                Ok(hash)
            }
            Err(e) => Err(StorageError::Corrupt(format!(
                "the bundle for {} ({}) is corrupt or truncated in the bucket: {e}. Run `git s3 doctor` or push the ref again",
                r.name, key
            ))),
        }
    }

    /// Brings a ref's objects into the repository: a cached pre-indexed pack
    /// is linked in; else a cached bundle is indexed; else the bundle is
    /// downloaded and indexed as it arrives. The resulting pack is kept in
    /// the cache for the next clone.
    async fn unbundle(&self, ctx: &OpContext, r: &RemoteRef) -> Result<(), StorageError> {
        let pack_dir = ctx.git.pack_dir().await?;
        let (sha, dir) = (r.sha.clone(), pack_dir.clone());
        let linked = ctx.cache.blocking(move |c| c.lookup_pack(&sha).map(|pack| pack.link_into(&dir).is_ok())).await?;
        if let Some(linked) = linked {
            if linked && ctx.git.has_object(&r.sha).await {
                tracing::debug!(sha = r.sha, "linked a cached pre-indexed pack");
                return Ok(());
            }
            tracing::warn!(sha = r.sha, "cached pack unusable; indexing the bundle");
            let sha = r.sha.clone();
            ctx.cache.blocking(move |c| c.evict_pack(&sha)).await?;
        }
        let mut hash = None;
        let sha = r.sha.clone();
        if let Some(file) = ctx.cache.blocking(move |c| c.lookup_bundle(&sha)).await? {
            match ctx.git.index_bundle(&file).await {
                Ok(h) => {
                    tracing::debug!(sha = r.sha, "bundle served from cache");
                    hash = Some(h);
                }
                Err(e) => {
                    // A cached bundle git rejects is corrupt: drop it and download.
                    tracing::warn!(sha = r.sha, error = %e, "cached bundle rejected; downloading");
                    let sha = r.sha.clone();
                    ctx.cache.blocking(move |c| c.evict_bundle(&sha)).await?;
                }
            }
        }
        let hash = match hash {
            Some(h) => h,
            None => self.download_and_index(ctx, r).await?,
        };
        // A bundle is named after its tip: one without it is not that ref's
        // bundle (and is not cached under its name).
        if !ctx.git.has_object(&r.sha).await {
            let sha = r.sha.clone();
            ctx.cache.blocking(move |c| c.evict_bundle(&sha)).await?;
            return Err(StorageError::Corrupt(format!(
                "the bundle for {} ({}) does not contain the commit {} its name says. Run `git s3 doctor` or push the ref again",
                r.name,
                self.bundle_key(&r.name, &r.sha),
                r.sha
            )));
        }
        let sha = r.sha.clone();
        if let Err(e) = ctx.cache.blocking(move |c| c.insert_pack(&sha, &pack_dir, &hash)).await.and_then(|r| r) {
            tracing::debug!(error = %e, "pack not cached");
        }
        Ok(())
    }

    async fn fetch_one(&self, ctx: &OpContext, w: &RemoteRef) -> Result<(), StorageError> {
        if ctx.git.has_object(&w.sha).await {
            tracing::debug!(r = w.name, "tip already present locally; not downloading");
            return Ok(());
        }
        self.unbundle(ctx, w).await
    }

    async fn push_one(&self, ctx: &OpContext, listing: &RefListing, upd: &PushUpdate) -> Result<PushResult, StorageError> {
        let dst = upd.dst.as_str();
        let new = match &upd.src {
            Some(src) => ctx.git.rev_parse(src).await.ok(),
            None => None,
        };
        let mut rule = RefUpdate {
            dst,
            src: upd.src.as_deref(),
            old: listing.sha_of(dst),
            new: new.as_deref(),
            force: upd.force,
            protected: listing.protected.contains(dst),
            lease: ctx.cas.get(dst).map(String::as_str),
            history: None,
        };
        let mut decision = rule.decide();
        // A bundle holds the ref's whole history, which a shallow clone lacks.
        if matches!(decision, Decision::Set | Decision::NeedsHistory) && ctx.git.is_shallow().await {
            return Ok(Err("cannot push from a shallow clone to a bundles-format remote (each bundle holds the whole history): run `git fetch --unshallow`, then push again".into()));
        }
        if decision == Decision::NeedsHistory {
            if let (Some(old), Some(new)) = (rule.old, rule.new) {
                rule.history = Some(local_history(&ctx.git, old, new, None).await);
            }
            decision = rule.decide();
        }
        let (src, sha) = match decision {
            Decision::Refused(why) => return Ok(Err(why)),
            Decision::Unchanged => return Ok(Ok(())),
            Decision::Delete => return self.delete_for_push(ctx, dst).await,
            Decision::NeedsHistory => return Ok(Err("fetch first".into())),
            Decision::Set => match (&upd.src, &new) {
                (Some(src), Some(sha)) => (src, sha.clone()),
                _ => return Ok(Err(format!("invalid push of {dst}"))),
            },
        };
        let remote_sha = rule.old.map(str::to_string);

        // The ref to bundle: `src` itself, or a temporary ref for a bare sha.
        let (bundle_ref, tmp_ref) = match ctx.git.symbolic_full_name(src).await {
            Some(r) => (r, None),
            None => {
                let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
                let r = format!("refs/git-s3/tmp/{}-{nanos}", std::process::id());
                ctx.git.update_ref(&r, &sha).await?;
                (r.clone(), Some(r))
            }
        };
        // A first push into an empty prefix checks, under the lock, that no
        // ref of another object format landed since `list` (see write_under_lock).
        let first_push = if listing.refs.is_empty() { ObjectFormat::of(&sha) } else { None };
        // `HEAD` is only ever created (never replaced): not written again
        // when the listing found one.
        let write_head = listing.head_raw.is_none() && dst.starts_with("refs/heads/");
        let result = self.push_bundle(ctx, dst, remote_sha.as_deref(), &sha, &bundle_ref, first_push, write_head).await;
        if let Some(t) = tmp_ref {
            let _ = ctx.git.delete_ref(&t).await;
        }
        result
    }

    /// Takes the ref's lock, then streams `git bundle create` of `bundle_ref`
    /// into S3 (refreshing the lock while it runs) and finishes the update.
    /// The replaced bundle's deletion and the lock's release follow the
    /// answer (`clean_up_after_answer`).
    #[allow(clippy::too_many_arguments)]
    async fn push_bundle(
        &self,
        ctx: &OpContext,
        dst: &str,
        seen_sha: Option<&str>,
        sha: &str,
        bundle_ref: &str,
        first_push: Option<ObjectFormat>,
        write_head: bool,
    ) -> Result<PushResult, StorageError> {
        let zip = if self.url.scheme == Scheme::S3Zip { Some(build_zip(ctx, sha).await?) } else { None };
        // Local work before the lock: git writes the bundle into the cache's
        // copy; a bundle over 64 MiB stops there (git waits on its pipe) and
        // streams into S3 once the lock is ours.
        let stream = BundleStream::start(ctx, bundle_ref).await?;
        #[cfg(feature = "test-hooks")]
        if let Some(g) = crate::test_hooks::push_lock_gate(&ctx.env) {
            crate::test_hooks::wait_for_gate(&g).await;
        }
        let ttl = locks::ttl_from_env(&ctx.env);
        let mut lock = match locks::acquire(&self.store, &self.url.prefix, dst, ttl, lock_wait(&ctx.env)).await {
            Ok(l) => l,
            Err(locks::LockError::Held { key, ttl }) => {
                return Ok(Err(format!(
                    "failed to acquire ref lock at {key}. Another client may be pushing. If this persists beyond {ttl}s, run `git s3 doctor <remote> --lock-ttl {ttl}` to inspect and optionally clear stale locks"
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let mut replaced = Vec::new();
        let work = self.write_under_lock(ctx, dst, seen_sha, sha, stream, zip, first_push, write_head, &mut replaced);
        let result = match locks::hold_while(&self.store, &mut lock, ttl, work).await {
            Ok(r) => r,
            Err(locks::LockError::Lost { key }) => return Ok(Err(locks::LockError::Lost { key }.to_string())),
            Err(e) => Err(e.into()),
        };
        self.clean_up_after_answer(ctx, lock, replaced);
        result
    }

    /// After the push's answer, still under the ref's lock: deletes the
    /// bundles the new one replaced (beside the check that the lock is
    /// still ours), then deletes the lock (in that order: the next push of
    /// the ref finds one bundle). Runs in the daemon's
    /// background (a session cancelled meanwhile does not stop it); the
    /// session waits for it before it ends (`settle`). A daemon killed
    /// before it is done leaves an extra bundle (the next push of the ref
    /// removes it: the newest is the ref) and a lock that goes stale after
    /// its TTL (the next push takes it over; `git s3 doctor` lists it).
    fn clean_up_after_answer(&self, ctx: &OpContext, lock: locks::RefLock, replaced: Vec<String>) {
        let store = self.store.clone();
        let out = ctx.out.clone();
        let (done, waited) = tokio::sync::oneshot::channel();
        ctx.background.spawn("bundle_push_cleanup", async move {
            // The replaced bundles' DELETEs beside the lock's HEAD; the lock's
            // DELETE after both.
            let deletes = futures::future::join_all(replaced.iter().map(|key| {
                let store = &store;
                async move {
                    if let Err(e) = store.delete(key).await {
                        tracing::warn!(key, error = %e, "could not delete the replaced bundle (the next push of the ref removes it)");
                    }
                }
            }));
            let (_, ours) = tokio::join!(deletes, locks::still_ours(&store, &lock));
            let key = lock.key.clone();
            let released = match ours {
                Ok(true) => locks::remove(&store, lock).await,
                Ok(false) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = released {
                tracing::warn!(key, error = %e, "could not release lock");
                out.stderr(format!("warning: pushed, but the lock {key} could not be released ({e}); run `git s3 doctor --delete-stale-locks`\n"));
            }
            let _ = done.send(());
        });
        if let Ok(mut c) = self.cleanups.lock() {
            c.push(waited);
        }
    }

    /// The push under the ref's lock: the ref checked again, the bundle
    /// uploaded, the update finished.
    #[allow(clippy::too_many_arguments)]
    async fn write_under_lock(
        &self,
        ctx: &OpContext,
        dst: &str,
        seen_sha: Option<&str>,
        sha: &str,
        stream: BundleStream,
        zip: Option<(tempfile::NamedTempFile, String)>,
        first_push: Option<ObjectFormat>,
        write_head: bool,
        replaced: &mut Vec<String>,
    ) -> Result<PushResult, StorageError> {
        let current = match self.recheck_under_lock(dst, seen_sha, sha, first_push).await? {
            UnderLock::Go(current) => current,
            UnderLock::Answer(answer) => return Ok(answer),
        };
        #[cfg(feature = "test-hooks")]
        if let Some(g) = crate::test_hooks::push_upload_gate(&ctx.env) {
            crate::test_hooks::wait_for_gate(&g).await;
        }
        let bundle = self.upload_bundle(ctx, dst, sha, stream).await?;
        if let Some(ours) = first_push {
            // Two first pushes of different formats may both have found the
            // prefix empty: each looks again once its bundle is in, and one
            // that finds the other format takes its own bundle back. At
            // least one of them sees the other (S3 lists are strongly
            // consistent), so the prefix never keeps both.
            let after = scan(&self.url.prefix, &self.store.list(&self.url.key("refs/")).await?);
            if let Some(refused) = self.other_format(&after, ours) {
                self.store.delete(&self.bundle_key(dst, sha)).await?;
                return Ok(Err(refused));
            }
        }
        self.finish_update(dst, sha, current, zip, write_head, replaced).await?;
        // Keep what we pushed: another working copy's clone needs no download.
        let sha = sha.to_string();
        let _ = ctx.cache.blocking(move |c| c.insert_bundle(&sha, bundle)).await;
        Ok(Ok(()))
    }

    /// Under the lock: the ref must still be what we checked against. A
    /// first push (the prefix was empty at `list`) lists every ref
    /// instead, in the same one request: a push of another object format
    /// may have landed since (locks are per ref, so nothing else orders
    /// two first pushes of different refs). Go: the ref's bundles now.
    async fn recheck_under_lock(
        &self,
        dst: &str,
        seen_sha: Option<&str>,
        sha: &str,
        first_push: Option<ObjectFormat>,
    ) -> Result<UnderLock, StorageError> {
        let listed = if first_push.is_some() { self.url.key("refs/") } else { format!("{}/{dst}/", self.url.prefix) };
        let now = self.store.list(&listed).await?;
        let scan_now = scan(&self.url.prefix, &now);
        if let Some(refused) = first_push.and_then(|ours| self.other_format(&scan_now, ours)) {
            return Ok(UnderLock::Answer(Err(refused)));
        }
        let current: Vec<(String, ObjectInfo)> = scan_now.bundles.get(dst).cloned().unwrap_or_default();
        if current.len() > 1 {
            // A push killed between its upload and the old bundle's deletion
            // (we hold the lock: no writer is at work). The newest bundle is
            // the ref, as every listing says; this push removes the others.
            // Two of the same second cannot be ordered: doctor decides.
            if current[0].1.last_modified == current[1].1.last_modified {
                return Ok(UnderLock::Answer(Err(format!("several bundles exist for {dst} in the bucket; run `git s3 doctor` to fix"))));
            }
            tracing::warn!(dst, bundles = current.len(), "several bundles for the ref: taking the newest, removing the others after this push");
        }
        let current_sha = current.first().map(|c| c.0.as_str());
        if current_sha == Some(sha) {
            // Another push (an interrupted one of ours, still finishing in
            // the daemon, or another machine's) already put this commit there.
            return Ok(UnderLock::Answer(Ok(())));
        }
        if current_sha != seen_sha {
            return Ok(UnderLock::Answer(Err("fetch first".into())));
        }
        Ok(UnderLock::Go(current))
    }

    /// The rest of `git bundle create` streams into the upload; the object
    /// appears only once git has finished successfully. Returns the cache's
    /// copy of the bundle.
    async fn upload_bundle(&self, ctx: &OpContext, dst: &str, sha: &str, stream: BundleStream) -> Result<tempfile::NamedTempFile, StorageError> {
        let BundleStream { bundle, mut tee, staged, finish } = stream;
        let progress = std::sync::Mutex::new(Progress::new(ctx.out.clone(), ctx.progress, format!("Uploading {dst}"), None).delayed_as(&ctx.env));
        self.store
            .put_staged(&self.bundle_key(dst, sha), staged, bundle.path(), &mut tee, PutOptions::default(), finish, |n| {
                if let Ok(mut p) = progress.lock() {
                    p.add(n)
                }
            })
            .await?;
        // The cache copy is not fsynced: a cached bundle is checked by
        // `git index-pack` before use, and evicted if torn.
        tokio::io::AsyncWriteExt::flush(&mut tee).await?;
        drop(tee);
        if let Ok(mut p) = progress.lock() {
            p.finish();
        }
        Ok(bundle)
    }

    /// Once the new bundle is in: HEAD set if the remote has none, the
    /// ref's older bundles (`current`) put in `replaced` (deleted after
    /// the answer), `repo.zip` written.
    async fn finish_update(
        &self,
        dst: &str,
        sha: &str,
        current: Vec<(String, ObjectInfo)>,
        zip: Option<(tempfile::NamedTempFile, String)>,
        write_head: bool,
        replaced: &mut Vec<String>,
    ) -> Result<(), StorageError> {
        if write_head {
            let r = self
                .store
                .put_bytes(&self.url.key("HEAD"), dst.as_bytes().to_vec(), PutOptions { condition: WriteCondition::IfAbsent, ..Default::default() })
                .await;
            match r {
                Ok(_) => {}
                Err(e) if e.is_precondition_failed() => {}
                Err(e) => return Err(e.into()),
            }
        }
        // The replaced bundles go after the answer (`clean_up_after_answer`).
        replaced.extend(current.iter().filter(|(old_sha, _)| old_sha != sha).map(|(_, info)| info.key.clone()));
        if let Some((zip, summary)) = zip {
            upload_zip(&self.store, &self.url, dst, sha, zip.path(), summary).await?;
        }
        Ok(())
    }

    /// The refusal of a push of `ours` when `scan` holds a ref of another object format.
    fn other_format(&self, scan: &PrefixScan, ours: ObjectFormat) -> Option<String> {
        let (theirs, _) = scan.object_formats().into_iter().find(|(f, _)| *f != ours)?;
        Some(format_mismatch(ours, theirs, &self.url.to_string()))
    }

    /// A push's delete of `dst` (the rules said it may go), in git's words.
    async fn delete_for_push(&self, ctx: &OpContext, dst: &str) -> Result<PushResult, StorageError> {
        Ok(self.delete_ref(&ctx.env, dst, lock_wait(&ctx.env)).await?.map_err(|refused| match refused {
            DeleteRefused::Locked { key } => format!("failed to acquire ref lock at {key}; another client may be pushing"),
            DeleteRefused::NotFound => "not found".to_string(),
            DeleteRefused::Several => format!("several bundles exist for {dst} in the bucket; run `git s3 doctor` to fix"),
        }))
    }

    /// Deletes `dst`'s bundle and `repo.zip` under the ref's lock (waiting
    /// up to `wait` for it; `env`: the caller's, for the lock's TTL): a push
    /// deleting a ref, and `git s3 delete-branch`.
    pub(crate) async fn delete_ref(
        &self,
        env: &HashMap<String, String>,
        dst: &str,
        wait: Duration,
    ) -> Result<Result<(), DeleteRefused>, StorageError> {
        let ttl = locks::ttl_from_env(env);
        let lock = match locks::acquire(&self.store, &self.url.prefix, dst, ttl, wait).await {
            Ok(l) => l,
            Err(locks::LockError::Held { key, .. }) => return Ok(Err(DeleteRefused::Locked { key })),
            Err(e) => return Err(e.into()),
        };
        let result = async {
            let objects = self.store.list(&format!("{}/{dst}/", self.url.prefix)).await?;
            let s = scan(&self.url.prefix, &objects);
            let bundles = s.bundles.get(dst).cloned().unwrap_or_default();
            if bundles.is_empty() {
                return Ok(Err(DeleteRefused::NotFound));
            }
            if bundles.len() > 1 {
                return Ok(Err(DeleteRefused::Several));
            }
            for (_, info) in bundles.iter().chain(s.zips.iter().filter(|z| z.0 == dst)) {
                self.store.delete(&info.key).await?;
            }
            Ok::<_, StorageError>(Ok(()))
        }
        .await;
        // A lock left behind expires (its TTL); status and doctor show it.
        if let Err(e) = locks::release(&self.store, lock).await {
            tracing::warn!(dst, error = %e, "could not release the lock after a delete");
        }
        result
    }
}

/// Why a ref was not deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeleteRefused {
    /// Another client holds the ref's lock.
    Locked { key: String },
    /// The ref has no bundle.
    NotFound,
    /// The ref has several bundles (`git s3 doctor` decides).
    Several,
}

/// What the check under the lock says.
enum UnderLock {
    /// Upload: the ref is as the push saw it; its bundles now.
    Go(Vec<(String, ObjectInfo)>),
    /// Stop with this answer.
    Answer(PushResult),
}

/// `git bundle create -` running into the cache's copy of the bundle:
/// staged up to the single-PUT threshold, the rest still in git's pipe.
struct BundleStream {
    bundle: tempfile::NamedTempFile,
    tee: tokio::fs::File,
    staged: crate::s3::store::Staged<tokio::process::ChildStdout>,
    /// Resolves to git's verdict once its output has been read.
    finish: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>,
}

impl BundleStream {
    async fn start(ctx: &OpContext, bundle_ref: &str) -> Result<BundleStream, StorageError> {
        // The cache's temp file and a second handle on it: off the async workers.
        let opened = ctx.cache.blocking(|c| c.temp_file().and_then(|t| t.reopen().map(|f| (t, f)))).await.and_then(|r| r);
        let (bundle, tee) = opened.map_err(|e| ctx.cache.explain_io(e))?;
        let mut tee = tokio::fs::File::from_std(tee);
        let span = tracing::debug_span!("git", args = %format!("bundle create - {bundle_ref}"));
        let _entered = span.enter();
        let mut git = ctx
            .git
            .command(&["bundle", "create", "--quiet", "-", bundle_ref])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(crate::local::git::GitError::Spawn)?;
        drop(_entered);
        let stdout = git.stdout.take().ok_or_else(|| StorageError::Corrupt("git bundle create: no stdout".into()))?;
        let mut stderr = git.stderr.take();
        let finish = Box::pin(async move {
            use tokio::io::AsyncReadExt;
            let mut msg = String::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.read_to_string(&mut msg).await;
            }
            match git.wait().await {
                Ok(st) if st.success() => Ok(()),
                Ok(st) => Err(format!("git bundle create failed ({st}): {}", msg.trim())),
                Err(e) => Err(format!("git bundle create: {e}")),
            }
        });
        let staged = S3Store::stage(stdout, &mut tee).instrument(span).await.map_err(|e| ctx.cache.explain_io(e))?;
        Ok(BundleStream { bundle, tee, staged, finish })
    }
}
impl RepoStorage for BundleStorage {
    async fn list(&self) -> Result<RefListing, StorageError> {
        let (scan, head) = tokio::try_join!(self.scan(), self.read_head())?;
        let mut listing = RefListing::default();
        for key in &scan.ignored {
            listing.warnings.push(format!("ignoring s3://{}/{}: not a valid git ref name", self.url.bucket, key.escape_debug()));
        }
        for (name, bundles) in &scan.bundles {
            if bundles.len() > 1 {
                listing.warnings.push(format!("{name} has {} bundles in the bucket; using the newest. Run `git s3 doctor` to fix", bundles.len()));
            }
            listing.refs.push(RemoteRef { name: name.clone(), sha: bundles[0].0.clone() });
        }
        listing.protected = scan.protected.into_iter().collect();
        // git-remote-s3 0.4.2 checks no format: its SHA-1 bundles can land in a SHA-256 prefix.
        let format_of = |r: &RemoteRef| ObjectFormat::of(&r.sha).unwrap_or_default();
        if let Some(first) = listing.refs.first() {
            if let Some(other) = listing.refs.iter().find(|r| format_of(r) != format_of(first)) {
                listing.warnings.push(format!(
                    "s3://{}/{} holds refs of two object formats ({} is {}, {} is {}); git cannot mix them: delete the refs of the wrong format (`git s3 delete-branch`)",
                    self.url.bucket,
                    self.url.prefix,
                    first.name,
                    format_of(first),
                    other.name,
                    format_of(other)
                ));
            }
        }
        if let Some(h) = head.as_deref().filter(|h| !valid_ref_name(h)) {
            listing.warnings.push(format!(
                "ignoring s3://{}/{}: it holds {} bytes that are not a ref name (`git s3 doctor` sets HEAD)",
                self.url.bucket,
                self.url.key("HEAD"),
                h.len()
            ));
        }
        listing.head = head.clone().filter(|h| listing.refs.iter().any(|r| &r.name == h));
        listing.head_raw = head;
        if let Ok(mut l) = self.last_listing.lock() {
            *l = Some(listing.clone());
        }
        Ok(listing)
    }

    async fn fetch(&self, ctx: &OpContext, listing: &RefListing, wants: &[RemoteRef]) -> Result<(), StorageError> {
        use futures::stream::{StreamExt, TryStreamExt};
        // One bundle per distinct tip, default branch first: once it is in,
        // other refs' tips are often present already and need nothing.
        let mut seen: HashSet<&str> = HashSet::new();
        let mut order: Vec<&RemoteRef> = wants.iter().filter(|w| seen.insert(w.sha.as_str())).collect();
        order.sort_by_key(|w| (Some(&w.name) != listing.head.as_ref(), w.name.clone()));
        let Some((first, rest)) = order.split_first() else { return Ok(()) };
        let started = std::time::SystemTime::now();
        let result = async {
            self.fetch_one(ctx, first).await?;
            // The others in parallel (downloads overlap with git's indexing).
            let jobs: Vec<_> = rest.iter().map(|w| self.fetch_one(ctx, w)).collect();
            futures::stream::iter(jobs).buffer_unordered(3).try_collect::<Vec<()>>().await
        }
        .await;
        if result.is_err() {
            // index-pack leaves its temp file behind when its input breaks off.
            if let Ok(dir) = ctx.git.pack_dir().await {
                crate::local::git::remove_temp_packs_since(&dir, started).await;
            }
        }
        result.map(|_| ())
    }

    async fn push(&self, ctx: &OpContext, updates: &[PushUpdate]) -> Result<Vec<(String, PushResult)>, StorageError> {
        // The listing `list for-push` answered git with, else a fresh one.
        let held = self.last_listing.lock().ok().and_then(|mut l| l.take());
        let listing = match held {
            Some(l) => l,
            None => RepoStorage::list(self).await?,
        };
        let mut results = Vec::new();
        for upd in updates {
            let r = self.push_one(ctx, &listing, upd).await;
            match r {
                Ok(res) => results.push((upd.dst.clone(), res)),
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => results.push((upd.dst.clone(), Err(e.to_string()))),
            }
        }
        Ok(results)
    }
}
