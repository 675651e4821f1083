//! A fetch from a packs remote: the packs whose tips the repository lacks
//! are downloaded in parallel (those made for a wanted tip start while the
//! object lookup runs) and indexed by `git index-pack --stdin` as they
//! arrive; a pack another working copy fetched is linked from the cache.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::future::FutureExt;
use futures::stream::{StreamExt, TryStreamExt};

use crate::session::progress::Progress;
use crate::storage::crypt::codec;
use crate::storage::packs::binding;
use crate::storage::packs::manifest::{read_manifest, PackEntry};
use crate::storage::packs::storage::{get_object, swapped, PackStorage};
use crate::storage::{OpContext, RemoteRef, StorageError};

/// Packs downloaded at once.
const DOWNLOAD_CONCURRENCY: usize = 4;

impl PackStorage {
    /// Brings the objects of `wants` into the repository (the protocol's
    /// `fetch` batch).
    pub(super) async fn fetch_wants(&self, ctx: &OpContext, wants: &[RemoteRef]) -> Result<(), StorageError> {
        let want_shas: Vec<String> = wants.iter().map(|w| w.sha.clone()).collect();
        let listed = self.listed.lock().ok().and_then(|l| l.as_ref().map(|l| l.0.clone()));
        let m = match listed {
            Some(m) => m,
            None => read_manifest(&self.store, &self.url).await?.map(|(m, _)| m).unwrap_or_default(),
        };
        let pack_dir = ctx.git.pack_dir().await?;
        // Packs not in objects/pack yet; the repository may still hold their
        // objects (its own pushes, another pack): one object lookup of their
        // tips and the wanted tips says which it lacks.
        let indexed = indexed_packs(&pack_dir, m.packs.iter().map(|p| p.name.clone()).collect()).await?;
        let candidates: Vec<&PackEntry> = m.packs.iter().filter(|p| !indexed.contains(&p.name)).collect();
        let names: Vec<String> =
            candidates.iter().flat_map(|p| p.tips.iter().cloned()).chain(want_shas.iter().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
        // The packs made for a wanted tip (what a fetch of new commits
        // needs) start downloading while the lookup runs.
        let early: Vec<PackEntry> = candidates.iter().filter(|p| p.tips.iter().any(|t| want_shas.contains(t))).map(|p| (*p).clone()).collect();
        let started = std::time::SystemTime::now();
        let present = self.fetch_early_while_looking_up(ctx, &early, &names, &pack_dir, started).await?;
        if want_shas.iter().all(|s| present.contains(s)) {
            self.remove_broken_index_files(&pack_dir, started).await;
            return Ok(());
        }
        let early_names: HashSet<&str> = early.iter().map(|p| p.name.as_str()).collect();
        let rest: Vec<PackEntry> =
            candidates.iter().filter(|p| !early_names.contains(p.name.as_str()) && pack_lacking(&present, &p.tips)).map(|p| (*p).clone()).collect();
        tracing::debug!(early = early.len(), rest = rest.len(), total = m.packs.len(), "packs to download");
        let dir = &pack_dir;
        let fetches: Vec<_> =
            rest.iter().cloned().map(|p| async move { self.fetch_pack(ctx, &p, dir, std::future::ready(true)).await.map(|_| ()) }).collect();
        let fetched = futures::stream::iter(fetches).buffer_unordered(DOWNLOAD_CONCURRENCY).try_collect::<Vec<()>>().await;
        if fetched.is_err() {
            crate::local::git::remove_temp_packs_since(&pack_dir, started).await;
        }
        fetched?;
        self.remove_broken_index_files(&pack_dir, started).await;
        self.check_wanted_tips(ctx, wants, &present, &[&early, &rest]).await
    }

    /// Downloads the packs `early` (made for wanted tips) while one object
    /// lookup of `names` says what the repository has; each download goes
    /// on once the lookup says its pack is lacking, and is dropped if not.
    /// Returns what the lookup found present.
    async fn fetch_early_while_looking_up(
        &self,
        ctx: &OpContext,
        early: &[PackEntry],
        names: &[String],
        pack_dir: &Path,
        started: std::time::SystemTime,
    ) -> Result<Arc<HashSet<String>>, StorageError> {
        let (decided_tx, decided_rx) = tokio::sync::watch::channel::<Option<Arc<HashSet<String>>>>(None);
        let early_fetches: Vec<_> = early
            .iter()
            .cloned()
            .map(|p| {
                let mut rx = decided_rx.clone();
                async move {
                    let tips = p.tips.clone();
                    let needed = async move {
                        match rx.wait_for(Option::is_some).await {
                            Ok(present) => present.as_ref().is_some_and(|present| pack_lacking(present, &tips)),
                            Err(_) => false,
                        }
                    };
                    self.fetch_pack(ctx, &p, pack_dir, needed).await.map(|_| ())
                }
            })
            .collect();
        let lookup = async {
            let found = ctx.git.present_objects(names).await;
            // On a failed lookup the early downloads stop (decided: none needed).
            let present = Arc::new(found.as_ref().cloned().unwrap_or_default());
            let _ = decided_tx.send(Some(if found.is_ok() { present.clone() } else { Arc::new(all_of(names)) }));
            found.map(|_| present)
        };
        let (present, early_done) =
            tokio::join!(lookup, futures::stream::iter(early_fetches).buffer_unordered(DOWNLOAD_CONCURRENCY).try_collect::<Vec<()>>());
        match (present, early_done) {
            (Ok(p), Ok(_)) => Ok(p),
            (Err(e), _) => {
                crate::local::git::remove_temp_packs_since(pack_dir, started).await;
                Err(e.into())
            }
            (Ok(_), Err(e)) => {
                // index-pack leaves its temp file behind when its input breaks off.
                crate::local::git::remove_temp_packs_since(pack_dir, started).await;
                Err(e)
            }
        }
    }

    /// Every wanted tip the repository lacked (not in `present`) is looked
    /// up once the packs are in, those of the packs made for them too
    /// (`fetched`): a pack whose objects do not hold the tips the manifest
    /// names for it (a damaged or hostile bucket) is an error naming its
    /// key, never a fetch that git then finds incomplete.
    async fn check_wanted_tips(
        &self,
        ctx: &OpContext,
        wants: &[RemoteRef],
        present: &HashSet<String>,
        fetched: &[&[PackEntry]],
    ) -> Result<(), StorageError> {
        let unsure: Vec<String> = wants.iter().map(|w| &w.sha).filter(|s| !present.contains(*s)).cloned().collect();
        if unsure.is_empty() {
            return Ok(());
        }
        let have = ctx.git.present_objects(&unsure).await?;
        if let Some(w) = wants.iter().find(|w| unsure.contains(&w.sha) && !have.contains(&w.sha)) {
            let made_for = fetched.iter().flat_map(|ps| ps.iter()).find(|p| p.tips.contains(&w.sha));
            if let Some(p) = made_for {
                return Err(StorageError::Corrupt(format!(
                    "pack {} from s3://{}/{} does not hold {}, the tip of {} the manifest names for it: the remote is damaged",
                    p.name,
                    self.store.bucket(),
                    self.entry_object_key(p, "pack")?,
                    w.sha,
                    w.name
                )));
            }
            return Err(StorageError::MissingRef(w.name.clone()));
        }
        Ok(())
    }

    /// Once every download of a fetch is indexed: the temp files that the
    /// index-packs of downloads that broke off left behind.
    async fn remove_broken_index_files(&self, pack_dir: &Path, started: std::time::SystemTime) {
        if self.broken_streams.swap(0, std::sync::atomic::Ordering::Relaxed) > 0 {
            crate::local::git::remove_temp_packs_since(pack_dir, started).await;
        }
    }

    /// Brings pack `p` into the repository: linked from the local cache when
    /// another working copy fetched it already (packs are content-addressed
    /// by name), else downloaded and indexed as it arrives, then cached.
    ///
    /// `needed` decides whether the repository wants the pack; the download
    /// starts before it answers and is dropped (cancelled) if it says no, so
    /// a fetch's object lookup and its download overlap. Returns whether the
    /// pack was brought in.
    pub(crate) async fn fetch_pack(
        &self,
        ctx: &OpContext,
        p: &PackEntry,
        pack_dir: &Path,
        needed: impl std::future::Future<Output = bool>,
    ) -> Result<bool, StorageError> {
        // Asked first for a cached pack, then again for a download should
        // it not link: shared, so a second ask gets the first answer (an
        // answered future is never polled again).
        let needed = needed.shared();
        if let Some(done) = self.link_cached(ctx, p, pack_dir, needed.clone()).await? {
            return Ok(done);
        }
        let tmp = ctx.cache.blocking(|c| c.temp_file()).await??;
        let key = self.entry_object_key(p, "pack")?;
        let progress = Mutex::new(
            Progress::new(ctx.out.clone(), ctx.progress, format!("Downloading pack {}", &p.name[..12.min(p.name.len())]), Some(p.size))
                .delayed_as(&ctx.env),
        );
        let on = |n: u64| {
            if let Ok(mut pr) = progress.lock() {
                pr.add(n)
            }
        };
        if let Some(k) = &self.key {
            // Encrypted (issue 22): the whole age file, decrypted into the
            // temp file, then indexed from there.
            if !needed.clone().await {
                return Ok(false);
            }
            let indexed = match self.fetch_encrypted(ctx, k, p, &key, tmp.path(), on).await {
                Ok(indexed) => indexed,
                Err(StorageError::Store(e)) if e.is_not_found() => return Err(self.missing_pack(p, &key)),
                Err(e) => return Err(e),
            };
            if let Ok(mut pr) = progress.lock() {
                pr.finish();
            }
            return self.indexed(ctx, p, pack_dir, &key, indexed).await;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let download = self.store.get_to_file_tee(&key, tmp.path(), Some(tx), on);
        tokio::pin!(download);
        // The download runs (into the file, and up to 16 chunks ahead of
        // index-pack) while the decision is pending.
        let mut finished_early = None;
        let wanted = tokio::select! {
            biased;
            n = needed.clone() => n,
            r = &mut download => {
                finished_early = Some(r);
                needed.await
            }
        };
        if !wanted {
            tracing::debug!(pack = p.name, "not needed after all; download dropped");
            return Ok(false);
        }
        let index = ctx.git.index_pack_stream(rx);
        let (downloaded, mut indexed) = match finished_early {
            Some(r) => (r, index.await),
            None => tokio::join!(download, index),
        };
        let downloaded = match downloaded {
            Err(e) if e.is_interrupted() => {
                // The stream broke off: index-pack had half a pack. The whole
                // pack again into the file (itself retried when it breaks
                // off), then indexed from there.
                tracing::warn!(pack = p.name, error = %e, "pack download broke off; downloading it again");
                self.broken_streams.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let again = self.store.get_to_file(&key, tmp.path(), on).await;
                if again.is_ok() {
                    indexed = index_file(ctx, tmp.path()).await;
                }
                again.map(|_| ())
            }
            other => other.map(|_| ()),
        };
        match downloaded {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Err(self.missing_pack(p, &key)),
            Err(e) => return Err(e.into()),
        }
        if let Ok(mut pr) = progress.lock() {
            pr.finish();
        }
        self.indexed(ctx, p, pack_dir, &key, indexed).await
    }

    /// An encrypted remote's pack (issue 22): downloaded (into `tmp`, as
    /// ciphertext), decrypted as it arrives and indexed as it is decrypted;
    /// its last bytes reach index-pack only once the whole object has
    /// authenticated and is the pack it was fetched as (`binding`), so a
    /// tampered, truncated or swapped object indexes nothing. A download
    /// that broke off: the whole object again, then decrypted and indexed.
    async fn fetch_encrypted(
        &self,
        ctx: &OpContext,
        k: &Arc<crate::storage::crypt::RemoteKey>,
        p: &PackEntry,
        key: &str,
        tmp: &Path,
        mut on: impl FnMut(u64) + Send,
    ) -> Result<Result<String, crate::local::git::GitError>, StorageError> {
        let what = format!("s3://{}/{key}", self.store.bucket());
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let (ptx, prx) = tokio::sync::mpsc::channel(16);
        let name = p.name.clone();
        let check = move |head: &[u8], tail: &[u8]| binding::mismatch_of(head, tail, &name, "pack");
        let (downloaded, verdict, indexed) = tokio::join!(
            self.store.get_to_file_tee(key, tmp, Some(tx), &mut on),
            codec::decrypt_chunks(k.clone(), rx, ptx, what.clone(), binding::tail_len(&p.name), check),
            ctx.git.index_pack_stream(prx)
        );
        match downloaded {
            Err(e) if e.is_interrupted() => {
                tracing::warn!(pack = p.name, error = %e, "pack download broke off; downloading it again");
                self.broken_streams.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let plain = codec::temp_beside(tmp)?;
                get_object(&self.store, k, (key, &p.name, "pack"), plain.path(), on).await?;
                return Ok(index_file(ctx, plain.path()).await);
            }
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        if let Some(instead) = verdict? {
            return Err(swapped(&what, &p.name, "pack", &instead));
        }
        Ok(indexed)
    }

    /// Pack `p` linked in from the cache, where another working copy left
    /// it, if the repository needs it (`needed`): Some(whether it was
    /// brought in), or None when it is not cached, or did not link (then
    /// evicted).
    async fn link_cached(
        &self,
        ctx: &OpContext,
        p: &PackEntry,
        pack_dir: &Path,
        needed: impl std::future::Future<Output = bool>,
    ) -> Result<Option<bool>, StorageError> {
        let name = p.name.clone();
        let Some(cached) = ctx.cache.blocking(move |c| c.lookup_pack(&name)).await? else { return Ok(None) };
        if !needed.await {
            return Ok(Some(false));
        }
        let (dir, idx) = (pack_dir.to_path_buf(), pack_dir.join(format!("pack-{}.idx", p.name)));
        if crate::local::files::blocking(move || Ok(cached.link_into(&dir).is_ok() && idx.exists())).await? {
            tracing::debug!(pack = p.name, "linked a cached pack");
            return Ok(Some(true));
        }
        let name = p.name.clone();
        ctx.cache.blocking(move |c| c.evict_pack(&name)).await?;
        Ok(None)
    }

    fn missing_pack(&self, p: &PackEntry, key: &str) -> StorageError {
        StorageError::Corrupt(format!(
            "the manifest names pack {} but s3://{}/{key} is missing (the remote changed while fetching? fetch again)",
            p.name,
            self.store.bucket()
        ))
    }

    /// A pack indexed (`indexed`: index-pack's answer): checked against its
    /// name, then cached.
    async fn indexed(
        &self,
        ctx: &OpContext,
        p: &PackEntry,
        pack_dir: &Path,
        key: &str,
        indexed: Result<String, crate::local::git::GitError>,
    ) -> Result<bool, StorageError> {
        let hash =
            indexed.map_err(|e| StorageError::Corrupt(format!("pack {} from s3://{}/{key} does not index: {e}", p.name, self.store.bucket())))?;
        // The cache keeps a pack under its name for every remote: only a
        // pack that is the one named (git names a pack after its checksum,
        // which index-pack prints) goes in.
        if hash != p.name {
            tracing::warn!(pack = p.name, indexed = hash, key, "the object holds another pack than its name says; not cached");
        } else if let Err(e) = {
            let (name, dir) = (p.name.clone(), pack_dir.to_path_buf());
            ctx.cache.blocking(move |c| c.insert_pack(&name, &dir, &hash)).await.and_then(|r| r)
        } {
            tracing::debug!(error = %e, "pack not cached");
        }
        Ok(true)
    }
}

/// Indexes the pack in the file at `path` into the repository.
async fn index_file(ctx: &OpContext, path: &Path) -> Result<String, crate::local::git::GitError> {
    use tokio::io::AsyncReadExt;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let path = path.to_path_buf();
    let feed = async move {
        let mut file = tokio::fs::File::open(&path).await?;
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            buf.truncate(n);
            if tx.send(bytes::Bytes::from(buf)).await.is_err() {
                return Ok(());
            }
        }
    };
    let (fed, indexed) = tokio::join!(feed, ctx.git.index_pack_stream(rx));
    if let Err(e) = fed {
        tracing::warn!(error = %e, "reading a downloaded pack back failed");
    }
    indexed
}

/// Whether a repository holding `present` lacks the objects of a pack made
/// for `tips` (a pack made for no tips in particular: always).
fn pack_lacking(present: &HashSet<String>, tips: &[String]) -> bool {
    tips.is_empty() || !tips.iter().all(|t| present.contains(t))
}

/// Every name in `names`, as a set ("present": what makes a gated early
/// download stop).
fn all_of(names: &[String]) -> HashSet<String> {
    names.iter().cloned().collect()
}

/// Which of `names` have an `.idx` in `pack_dir`, looked at on a blocking thread.
pub(crate) async fn indexed_packs(pack_dir: &Path, names: Vec<String>) -> std::io::Result<HashSet<String>> {
    let dir = pack_dir.to_path_buf();
    crate::local::files::blocking(move || Ok(names.into_iter().filter(|n| dir.join(format!("pack-{n}.idx")).exists()).collect())).await
}
