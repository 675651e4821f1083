//! A push to a packs remote: one pack of the objects the remote lacks (new
//! tips `--not` the manifest's tips that exist locally) is uploaded, then
//! the manifest is replaced with a conditional write on its ETag
//! (`If-Match`, or `If-None-Match: *` to create it). A lost race re-reads
//! the manifest, re-checks every ref and retries a bounded number of times;
//! a crash at any point leaves at worst an unreferenced pack. After the
//! manifest write and before the answer: `s3+zip://`'s `repo.zip` (a
//! failure is reported on its ref, which is pushed). In the background,
//! after the answer: the `.idx` upload and, when packs pile up, a geometric
//! gc.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tracing::Instrument;

use crate::local::oid::ObjectFormat;
use crate::s3::store::{PutOptions, WriteCondition};
use crate::session::progress::Progress;
use crate::storage::detect::{last_markers, mixed_formats_error, RefsDir};
use crate::storage::packs::git_ops::{pack_object_count, SCRATCH_PACK_CONFIG};
use crate::storage::packs::manifest::{self, backoff, read_manifest, unix_now, Manifest, PackEntry, MAX_ATTEMPTS};
use crate::storage::packs::object_map;
use crate::storage::packs::storage::{put_encrypted, put_object, PackStorage};
use crate::storage::ref_update::{local_history, Decision, RefUpdate};
use crate::storage::zip::{self, ZIP_SERIAL_META};
use crate::storage::{format_mismatch, OpContext, PushResult, PushUpdate, StorageError};

/// Manifest writes a push tries. Each lost race means another writer's
/// manifest landed (a push, an edit, a compaction), so N pushers of
/// distinct refs all land within N attempts each; the bound stops only a
/// push that loses without end. (It was the 12 of other manifest edits:
/// the 13th of 32 concurrent pushers to distinct branches got git's
/// `fetch first`, wrongly.)
const PUSH_ATTEMPTS: u32 = 100;

/// A pack built for a push.
struct BuiltPack {
    _dir: tempfile::TempDir,
    name: String,
    pack: PathBuf,
    idx: PathBuf,
    size: u64,
    idx_size: u64,
    /// Bytes of its object map (`pack-<name>.map` beside it); 0: none.
    map_size: u64,
    objects: u64,
    /// The tips it was built for.
    tips: Vec<String>,
    /// Packs of the manifest the pack was built against.
    based_on: BTreeSet<String>,
    uploaded: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Unchanged,
    Set(String),
    Delete,
}

/// Where a push's `git pack-objects` writes its pack. git writes a pack as
/// a temp file in the repository's object directory, then renames it to
/// the name it was given: the directory must be on that filesystem. The
/// cache's `tmp` when it is; else (a repository on another disk than the
/// cache) a `tmp_git-s3-*` directory beside git's own temp files, which
/// `git gc` / `git prune` remove should a killed daemon leave one.
async fn pack_build_dir(ctx: &OpContext) -> Result<tempfile::TempDir, StorageError> {
    use std::os::unix::fs::MetadataExt;
    let cache_tmp = ctx.cache.root().join("tmp");
    let pack_dir = ctx.git.pack_dir().await?;
    let objects = pack_dir.parent().map(Path::to_path_buf).unwrap_or_else(|| pack_dir.clone());
    // Two stats and a directory created: off the async workers.
    let dir = crate::local::files::blocking(move || {
        let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        match (dev(&cache_tmp), dev(&objects)) {
            (Some(c), Some(o)) if c != o => tempfile::Builder::new().prefix("tmp_git-s3-push-").tempdir_in(&objects),
            _ => tempfile::Builder::new().prefix("packs-").tempdir_in(&cache_tmp),
        }
    })
    .await;
    dir.map_err(|e| ctx.cache.explain_io(e).into())
}

/// The updates that change the remote, with their change.
fn changes_of<'a>(updates: &'a [PushUpdate], verdicts: &'a [Result<Change, String>]) -> Vec<(&'a str, &'a Change)> {
    updates
        .iter()
        .zip(verdicts)
        .filter_map(|(u, v)| match v {
            Ok(c) if *c != Change::Unchanged => Some((u.dst.as_str(), c)),
            _ => None,
        })
        .collect()
}

/// The new tips of `changes`, sorted and distinct (what the pack is for).
fn tips_of(changes: &[(&str, &Change)]) -> Vec<String> {
    changes.iter().filter_map(|(_, c)| if let Change::Set(s) = c { Some(s.clone()) } else { None }).collect::<BTreeSet<_>>().into_iter().collect()
}

/// The answer to git: each update's verdict.
fn results(updates: &[PushUpdate], verdicts: &[Result<Change, String>]) -> Vec<(String, PushResult)> {
    updates.iter().zip(verdicts).map(|(u, v)| (u.dst.clone(), v.as_ref().map(|_| ()).map_err(Clone::clone))).collect()
}

/// `option atomic`: one refused update refuses them all.
fn fail_all_if_one_fails(verdicts: &mut [Result<Change, String>]) {
    if verdicts.iter().any(|v| v.is_err()) {
        for v in verdicts.iter_mut() {
            if v.is_ok() {
                *v = Err("atomic push failed".into());
            }
        }
    }
}

/// One attempt of a push: the manifest its updates are checked against,
/// what the repository has, and the verdicts.
struct Attempt {
    m: Manifest,
    /// The manifest's ETag; None when there was none (the write creates it).
    etag: Option<String>,
    /// The manifest's packs.
    packs_now: BTreeSet<String>,
    /// The local id of each update's source (None: a delete, or not found).
    local: Vec<Option<String>>,
    /// The remote's tips the repository has.
    present: HashSet<String>,
    /// What the pack leaves out: the remote's tips the repository has.
    exclude: Vec<String>,
    verdicts: Vec<Result<Change, String>>,
}

impl Attempt {
    /// Whether `b` is the pack of `tips` against this manifest: a pack built
    /// against packs that are gone (compacted) may lack objects.
    fn reusable(&self, b: &BuiltPack, tips: &[String]) -> bool {
        b.based_on.is_subset(&self.packs_now) && b.tips == tips
    }
}

impl BuiltPack {
    /// Its entry in the manifest (`key`: the generation of the remote key it was encrypted with).
    fn entry(&self, key: Option<u32>) -> PackEntry {
        PackEntry {
            name: self.name.clone(),
            size: self.size,
            idx_size: self.idx_size,
            objects: self.objects,
            tips: self.tips.clone(),
            created: unix_now(),
            key,
            map_size: self.map_size,
        }
    }
}

/// The tips a push would set, before any check: the local ids that differ
/// from the remote's, sorted and distinct (the speculative pack's).
fn candidates(updates: &[PushUpdate], local: &[Option<String>], m: &Manifest) -> Vec<String> {
    updates
        .iter()
        .zip(local)
        .filter_map(|(u, sha)| sha.as_ref().filter(|s| m.refs.get(&u.dst) != Some(*s)).cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The manifest a push writes over `m`: the next serial, `changes`
/// applied, HEAD set to the first branch set when `m` names none, the new
/// pack's entry. An empty remote takes the object format of its first
/// push; Err((pushed, remote's)) when the pushed ids are of another format
/// than a remote's that has one.
fn next_manifest(m: &Manifest, changes: &[(&str, &Change)], pack: Option<PackEntry>) -> Result<Manifest, (ObjectFormat, ObjectFormat)> {
    let mut next = m.clone();
    next.serial += 1;
    let pushed = changes.iter().find_map(|(_, c)| match c {
        Change::Set(sha) => ObjectFormat::of(sha),
        _ => None,
    });
    if let Some(f) = pushed {
        let empty = m.refs.is_empty() && m.packs.is_empty() && m.object_format.is_none();
        if !empty && f != m.format() {
            return Err((f, m.format()));
        }
        if f != ObjectFormat::Sha1 {
            next.object_format = Some(f);
        }
    }
    for (dst, c) in changes {
        match c {
            Change::Set(sha) => {
                next.refs.insert(dst.to_string(), sha.clone());
            }
            Change::Delete => {
                next.refs.remove(*dst);
            }
            Change::Unchanged => {}
        }
    }
    if next.head.is_none() {
        if let Some((dst, _)) = changes.iter().find(|(d, c)| d.starts_with("refs/heads/") && matches!(c, Change::Set(_))) {
            next.head = Some(dst.to_string());
        }
    }
    next.packs.extend(pack);
    Ok(next)
}

/// Every update refused with `msg`.
fn refuse_all(updates: &[PushUpdate], msg: &str) -> Vec<(String, PushResult)> {
    updates.iter().map(|u| (u.dst.clone(), Err(msg.to_string()))).collect()
}

impl PackStorage {
    /// Bundles under `refs/` while the push started from a manifest: both
    /// formats, unless the manifest is gone meanwhile (the remote was
    /// migrated to bundles since this daemon read it).
    async fn mixed_or_migrated(&self, refs: &RefsDir) -> StorageError {
        manifest::forget_held(&self.store, &self.url);
        match read_manifest(&self.store, &self.url).await {
            Ok(None) => StorageError::Format(format!(
                "{} is in the bundles format now (it was migrated since this daemon last read it); push again",
                self.url
            )),
            Ok(Some(_)) => mixed_formats_error(&self.url, refs),
            Err(e) => e,
        }
    }

    /// The verdict on each update against the attempt's manifest.
    async fn plan(&self, ctx: &OpContext, a: &Attempt, markers: &BTreeSet<String>, updates: &[PushUpdate]) -> Vec<Result<Change, String>> {
        let checks = updates.iter().zip(&a.local).map(|(upd, sha)| self.plan_one(ctx, &a.m, markers, upd, sha.as_deref(), &a.present));
        futures::future::join_all(checks).await
    }

    async fn plan_one(
        &self,
        ctx: &OpContext,
        m: &Manifest,
        markers: &BTreeSet<String>,
        upd: &PushUpdate,
        sha: Option<&str>,
        present: &HashSet<String>,
    ) -> Result<Change, String> {
        let dst = upd.dst.as_str();
        let mut rule = RefUpdate {
            dst,
            src: upd.src.as_deref(),
            old: m.refs.get(dst).map(String::as_str),
            new: sha,
            force: upd.force,
            protected: m.protected.contains(dst) || markers.contains(dst),
            lease: ctx.cas.get(dst).map(String::as_str),
            history: None,
        };
        let mut decision = rule.decide();
        if decision == Decision::NeedsHistory {
            if let (Some(old), Some(new)) = (rule.old, rule.new) {
                rule.history = Some(local_history(&ctx.git, old, new, Some(present.contains(old))).await);
            }
            decision = rule.decide();
        }
        match decision {
            Decision::Refused(why) => Err(why),
            Decision::Unchanged => Ok(Change::Unchanged),
            // Deleting a ref the manifest does not hold changes nothing.
            Decision::Delete if rule.old.is_none() => Ok(Change::Unchanged),
            Decision::Delete => Ok(Change::Delete),
            Decision::Set => Ok(sha.map(|s| Change::Set(s.to_string())).unwrap_or(Change::Unchanged)),
            Decision::NeedsHistory => Err("fetch first".into()),
        }
    }

    /// `git pack-objects` of `tips --not exclude` into a temp dir; None when
    /// the remote already has every object.
    async fn build_pack(
        &self,
        ctx: &OpContext,
        tips: &[String],
        exclude: &[String],
        based_on: BTreeSet<String>,
    ) -> Result<Option<BuiltPack>, StorageError> {
        // From a shallow clone, a pack is complete only when the remote has
        // the history behind the clone's boundary.
        if let Some(c) = ctx.git.shallow_boundary_between(tips, exclude).await?.first() {
            return Err(StorageError::Format(format!(
                "this shallow clone lacks the history behind commit {c}, which the remote does not have either: run `git fetch --unshallow`, then push again"
            )));
        }
        let dir = pack_build_dir(ctx).await?;
        let base = dir.path().join("pack");
        let base_s = base.to_string_lossy().to_string();
        let mut input = String::new();
        for t in tips {
            input.push_str(t);
            input.push('\n');
        }
        for x in exclude {
            input.push('^');
            input.push_str(x);
            input.push('\n');
        }
        // Non-thin (no --thin): every delta base is in the pack, so it indexes
        // alone. A temporary file on its way to S3: no fsync, no .rev file.
        let args = [&SCRATCH_PACK_CONFIG[..], &["pack-objects", "--revs", "--quiet", "--delta-base-offset", base_s.as_str()]].concat();
        let out = ctx.git.run_with_stdin(&args, input.into_bytes()).await?;
        let name = out.trim().to_string();
        if !manifest::is_pack_name(&name) {
            return Err(StorageError::Corrupt(format!("git pack-objects printed an unexpected pack name {name:?}")));
        }
        let pack = dir.path().join(format!("pack-{name}.pack"));
        let idx = dir.path().join(format!("pack-{name}.idx"));
        let objects = pack_object_count(&pack).await?;
        if objects == 0 {
            return Ok(None);
        }
        let size = tokio::fs::metadata(&pack).await?.len();
        let idx_size = tokio::fs::metadata(&idx).await?.len();
        // A small pack's .idx costs a lazy fetch little. (On an encrypted
        // remote the map is encrypted and keyed like the .idx.)
        let map_size = if idx_size < object_map::PUSH_MAP_MIN_IDX_BYTES {
            0
        } else {
            object_map::write_beside(&dir.path().join(format!("pack-{name}")), &name).await
        };
        Ok(Some(BuiltPack { _dir: dir, name, pack, idx, size, idx_size, map_size, objects, tips: tips.to_vec(), based_on, uploaded: false }))
    }

    /// Uploads the `.pack` (the `.idx` follows the manifest write: see
    /// `upload_idx_in_background`).
    async fn upload_pack(&self, ctx: &OpContext, p: &BuiltPack) -> Result<(), StorageError> {
        let progress = Mutex::new(
            Progress::new(ctx.out.clone(), ctx.progress, format!("Uploading pack ({} objects)", p.objects), Some(p.size)).delayed_as(&ctx.env),
        );
        let on = |n: u64| {
            if let Ok(mut pr) = progress.lock() {
                pr.add(n)
            }
        };
        let object = self.object_key(&p.name, "pack");
        match self.key.as_ref() {
            None => put_object(&self.store, None, &object, &p.pack, on).await?,
            Some(k) => {
                #[cfg(feature = "test-hooks")]
                let after_first = crate::test_hooks::encrypt_part_gate(&ctx.env);
                #[cfg(not(feature = "test-hooks"))]
                let after_first = None;
                put_encrypted(&self.store, k, &object, &p.pack, on, after_first).await?
            }
        }
        if let Ok(mut pr) = progress.lock() {
            pr.finish();
        }
        Ok(())
    }

    /// The `.idx` of a pack the manifest now names, uploaded after git has
    /// its answer. Nothing reads it on the way to git (fetch, gc and migrate
    /// index the `.pack` themselves), so it is off the push's critical path;
    /// the daemon finishes it before exiting, and `git s3 doctor` restores
    /// an `.idx` that a killed daemon never wrote.
    #[cfg_attr(not(feature = "test-hooks"), allow(unused_variables))]
    fn upload_idx_in_background(&self, ctx: &OpContext, b: BuiltPack) {
        let (store, key, crypt) = (self.store.clone(), self.object_key(&b.name, "idx"), self.key.clone());
        let map_key = (b.map_size > 0).then(|| self.object_key(&b.name, "map"));
        #[cfg(feature = "test-hooks")]
        let gate = crate::test_hooks::idx_upload_gate(&ctx.env);
        ctx.background.spawn("upload_idx", async move {
            #[cfg(feature = "test-hooks")]
            if let Some(g) = gate {
                crate::test_hooks::wait_for_gate(&g).await;
            }
            match put_object(&store, crypt.as_ref(), &key, &b.idx, |_| {}).await {
                Ok(_) => tracing::debug!(key, "idx uploaded"),
                Err(e) => tracing::warn!(key, error = %e, "idx not uploaded (`git s3 doctor` restores it)"),
            }
            // Optional: a lazy fetch that finds no map reads the .idx.
            if let Some(map_key) = map_key {
                if let Err(e) = put_object(&store, crypt.as_ref(), &map_key, &b.pack.with_extension("map"), |_| {}).await {
                    tracing::warn!(key = map_key, error = %e, "object map not uploaded (lazy fetches read the .idx)");
                }
            }
            drop(b);
        });
    }

    /// A push of `updates`: each attempt plans against one manifest
    /// (`check_locally`), uploads the pack while `refs/` is scanned
    /// (`upload_and_check_refs`), writes the manifest conditionally
    /// (`write_manifest`) and, once it lands, answers (`answer`); a lost
    /// race starts the next attempt from the manifest that won.
    pub(super) async fn push_all(&self, ctx: &OpContext, updates: &[PushUpdate]) -> Result<Vec<(String, PushResult)>, StorageError> {
        let mut built: Option<BuiltPack> = None;
        // PROTECTED# markers: those of detection's refs/ scan if it made
        // one, else those of this daemon's last scan (a guess until the
        // push's own scan answers).
        let mut markers = self.markers();
        if markers.is_empty() {
            markers = last_markers(&self.store, &self.url);
        }
        for attempt in 0..PUSH_ATTEMPTS {
            let (m, etag) = self.manifest_for(attempt).await?;
            if let Some(msg) = m.frozen_error(&self.url) {
                return Ok(refuse_all(updates, &msg));
            }
            // Detection's refs/ scan, if it made one: bundles of another
            // tool in the prefix are refused before any local work.
            let known_refs = if attempt == 0 { self.take_refs() } else { None };
            if let Some(refs) = known_refs.as_ref().filter(|r| !r.bundle_refs.is_empty()) {
                return Err(mixed_formats_error(&self.url, refs));
            }
            let (mut a, b) = self.check_locally(ctx, updates, m, etag, &markers, built.take()).await?;
            built = b;
            let refs_checked = known_refs.is_some();
            if let Some(refs) = known_refs.filter(|r| r.markers != markers) {
                markers = refs.markers;
                a.verdicts = self.plan(ctx, &a, &markers, updates).await;
            }
            if let Some(answer) = self.upload_and_check_refs(ctx, updates, &mut a, &mut built, &mut markers, refs_checked).await? {
                return Ok(answer);
            }
            let changes = changes_of(updates, &a.verdicts);
            if changes.is_empty() {
                return Ok(results(updates, &a.verdicts));
            }
            let new_tips = tips_of(&changes);
            #[cfg(feature = "test-hooks")]
            crate::test_hooks::crash_before_manifest(&ctx.env);

            let entry = built
                .as_ref()
                .filter(|b| !new_tips.is_empty() && !a.packs_now.contains(&b.name))
                .map(|b| b.entry(self.key.as_ref().map(|k| k.generation())));
            let next = next_manifest(&a.m, &changes, entry)
                .map_err(|(ours, theirs)| StorageError::Format(format_mismatch(ours, theirs, &self.url.to_string())))?;
            if self.write_manifest(&next, a.etag.clone()).await? {
                tracing::info!(serial = next.serial, refs = changes.len(), attempt, "manifest updated");
                let pack = built.take().filter(|b| b.uploaded && !new_tips.is_empty() && !a.packs_now.contains(&b.name));
                return Ok(self.answer(ctx, updates, &a, &next, pack).await);
            }
            tracing::info!(attempt, "manifest changed concurrently; re-reading");
        }
        // Not `fetch first`: every check passed each time; only the
        // manifest kept changing.
        let msg = format!(
            "s3://{}/{} changed under each of {PUSH_ATTEMPTS} attempts to write it (many concurrent writers); nothing was pushed: push again",
            self.store.bucket(),
            manifest::manifest_key(&self.url)
        );
        Ok(refuse_all(updates, &msg))
    }

    /// The manifest an attempt checks against: the one `list` read for the
    /// first attempt, else a fresh read after a backoff.
    async fn manifest_for(&self, attempt: u32) -> Result<(Manifest, Option<String>), StorageError> {
        if attempt == 0 {
            if let Some(listed) = self.take_listed() {
                return Ok(listed);
            }
        } else {
            tokio::time::sleep(backoff(attempt)).await;
        }
        Ok(match read_manifest(&self.store, &self.url).await {
            Ok(Some((m, e))) => (m, Some(e)),
            Ok(None) => (Manifest::default(), None),
            // `git s3 migrate --encrypt-to` switched the manifest since this push listed it.
            Err(StorageError::Crypt(crate::storage::crypt::CryptError::NotOpened(_))) => {
                return Err(StorageError::Format(format!(
                    "{} was encrypted while this push ran (`git s3 migrate --encrypt-to`): nothing was pushed; push again",
                    self.url
                )))
            }
            Err(e) => return Err(e),
        })
    }

    /// The local work of an attempt against `m`: one object lookup (the
    /// local side of each update, and which of the remote's tips the
    /// repository has: what a pack can leave out, which old tips a
    /// fast-forward check can see), then the checks of every update while
    /// the pack of every tip that would change is built (unless `prior`,
    /// an earlier attempt's, still fits).
    async fn check_locally(
        &self,
        ctx: &OpContext,
        updates: &[PushUpdate],
        m: Manifest,
        etag: Option<String>,
        markers: &BTreeSet<String>,
        prior: Option<BuiltPack>,
    ) -> Result<(Attempt, Option<BuiltPack>), StorageError> {
        let remote_tips: Vec<String> = m.refs.values().cloned().collect::<BTreeSet<_>>().into_iter().collect();
        let srcs = updates.iter().filter_map(|u| u.src.as_deref());
        let lookups: Vec<&str> = srcs.chain(remote_tips.iter().map(String::as_str)).collect();
        let mut found = ctx.git.resolve_objects(&lookups).await?.into_iter();
        let local: Vec<Option<String>> = updates.iter().map(|u| if u.src.is_some() { found.next().flatten() } else { None }).collect();
        let present: HashSet<String> = found.flatten().collect();
        let exclude: Vec<String> = remote_tips.iter().filter(|t| present.contains(*t)).cloned().collect();
        let packs_now: BTreeSet<String> = m.packs.iter().map(|p| p.name.clone()).collect();
        let mut a = Attempt { m, etag, packs_now, local, present, exclude, verdicts: Vec::new() };
        let candidates = candidates(updates, &a.local, &a.m);
        let speculate = !candidates.is_empty() && !prior.as_ref().is_some_and(|b| a.reusable(b, &candidates));
        let (verdicts, speculative) = tokio::join!(self.plan(ctx, &a, markers, updates), async {
            if speculate {
                self.build_pack(ctx, &candidates, &a.exclude, a.packs_now.clone()).await.map(Some)
            } else {
                Ok(None)
            }
        });
        let built = match speculative? {
            Some(b) => b,
            None => prior,
        };
        a.verdicts = verdicts;
        Ok((a, built))
    }

    /// Uploads the pack of the accepted updates (rebuilt when fewer tips
    /// were accepted than it was built for) while `refs/` is scanned,
    /// unless `refs_checked`: bundles of another tool in the prefix refuse
    /// the push, and PROTECTED# markers the checks did not know check every
    /// update again. A pack uploaded beside a scan that refuses stays
    /// unreferenced, as after a crash (gc deletes it). Some(answer) when
    /// nothing is left to write.
    async fn upload_and_check_refs(
        &self,
        ctx: &OpContext,
        updates: &[PushUpdate],
        a: &mut Attempt,
        built: &mut Option<BuiltPack>,
        markers: &mut BTreeSet<String>,
        mut refs_checked: bool,
    ) -> Result<Option<Vec<(String, PushResult)>>, StorageError> {
        loop {
            if ctx.atomic {
                fail_all_if_one_fails(&mut a.verdicts);
            }
            let new_tips = {
                let changes = changes_of(updates, &a.verdicts);
                if changes.is_empty() && refs_checked {
                    return Ok(Some(results(updates, &a.verdicts)));
                }
                tips_of(&changes)
            };
            if !new_tips.is_empty() && !built.as_ref().is_some_and(|b| a.reusable(b, &new_tips)) {
                *built = self.build_pack(ctx, &new_tips, &a.exclude, a.packs_now.clone()).await?;
            }
            let pack = built.as_mut().filter(|_| !new_tips.is_empty());
            let upload = async {
                if let Some(b) = pack {
                    if !b.uploaded {
                        self.upload_pack(ctx, b).await?;
                        b.uploaded = true;
                    }
                }
                Ok::<_, StorageError>(())
            };
            if refs_checked {
                upload.await?;
                return Ok(None);
            }
            let (refs, uploaded) = tokio::join!(self.scan_refs(), upload);
            let refs = refs?;
            if !refs.bundle_refs.is_empty() {
                return Err(self.mixed_or_migrated(&refs).await);
            }
            uploaded?;
            refs_checked = true;
            if refs.markers == *markers {
                return Ok(None);
            }
            // Markers the checks did not know: check again with them.
            *markers = refs.markers;
            a.verdicts = self.plan(ctx, a, markers, updates).await;
        }
    }

    /// The conditional write of `next` over the manifest with `etag` (none:
    /// there was none). True when it landed (and is held for the next
    /// command); false when another writer's manifest landed first.
    async fn write_manifest(&self, next: &Manifest, etag: Option<String>) -> Result<bool, StorageError> {
        let condition = match etag {
            Some(e) => WriteCondition::IfMatch(e),
            None => WriteCondition::IfAbsent,
        };
        let key = manifest::manifest_key(&self.url);
        let sent = std::time::Instant::now();
        let body = manifest::encode(&self.store, &self.url, next)?;
        match self.store.put_bytes(&key, body, PutOptions { condition, ..Default::default() }).await {
            Ok(new_etag) => {
                // The next command reads it conditionally (a 304), and a push
                // right after this one starts from it.
                manifest::hold_written(&self.store, &self.url, &new_etag, next, sent).await;
                Ok(true)
            }
            Err(e) if e.is_precondition_failed() || e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Once the manifest `next` has landed: the new pack's `.idx` (`pack`)
    /// and a gc in the background, the zips, and the answer to git.
    async fn answer(
        &self,
        ctx: &OpContext,
        updates: &[PushUpdate],
        a: &Attempt,
        next: &Manifest,
        pack: Option<BuiltPack>,
    ) -> Vec<(String, PushResult)> {
        if let Some(b) = pack {
            self.upload_idx_in_background(ctx, b);
        }
        self.maybe_gc_in_background(ctx, &next.packs);
        let mut results = results(updates, &a.verdicts);
        // Views and zips: encrypted like the packs on an encrypted remote.
        self.maybe_refresh_views_in_background(ctx, next);
        self.write_zips(ctx, next.serial, &changes_of(updates, &a.verdicts), &mut results).await;
        results
    }

    /// `s3+zip://`: after the manifest names the new tips, writes each
    /// updated ref's `<prefix>/<ref>/repo.zip` (0.4.2's key and metadata)
    /// and removes a deleted ref's (with any scheme: a zip left by an
    /// earlier s3+zip push must not outlive its ref). A failure is reported
    /// on that ref: the ref itself is pushed.
    ///
    /// Without a lock, two pushes of one branch could write their zips in
    /// the other order: each zip carries the serial of the manifest write
    /// that made its commit current (`git-s3-serial` metadata), and is
    /// written only over a zip with a lower serial, by a conditional write
    /// on that zip's ETag.
    ///
    /// An encrypted remote's zip is an age file encrypted to the current
    /// remote key, under a keyed name (`zip::encrypted_zip_key`), with only
    /// the serial as metadata; writing or deleting it also removes the
    /// ref's zip named with an older key generation.
    async fn write_zips(&self, ctx: &OpContext, serial: u64, changes: &[(&str, &Change)], results: &mut [(String, PushResult)]) {
        let zip = self.url.scheme == crate::s3::url::Scheme::S3Zip;
        for (dst, c) in changes {
            let outcome = match c {
                Change::Set(sha) if zip => self.write_zip(ctx, serial, dst, sha).await,
                Change::Delete => self.delete_zip(serial, dst).await,
                _ => Ok(()),
            };
            if let Err(e) = outcome {
                tracing::warn!(dst, error = %e, "repo.zip not written");
                if let Some(r) = results.iter_mut().find(|r| r.0 == *dst) {
                    r.1 = Err(format!("pushed, but its repo.zip could not be written ({e}); push a new commit to write it"));
                }
            }
        }
    }

    /// The zip's ETag and the serial it was written for (0 for a zip of
    /// 0.4.2 or of the bundles format), or None when there is none.
    async fn zip_state(&self, key: &str) -> Result<Option<(String, u64)>, StorageError> {
        Ok(self.store.head_with_metadata(key).await?.map(|(info, meta)| {
            let serial = meta.get(ZIP_SERIAL_META).and_then(|v| v.parse().ok()).unwrap_or(0);
            (info.etag, serial)
        }))
    }

    async fn write_zip(&self, ctx: &OpContext, serial: u64, dst: &str, sha: &str) -> Result<(), StorageError> {
        let (file, summary) = zip::build_zip(ctx, sha).await?;
        let serial_meta = vec![(ZIP_SERIAL_META.into(), serial.to_string())];
        let (file, key, base) = match &self.key {
            None => (file, zip::zip_key(&self.url, dst), zip::zip_put_options(sha, summary, serial_meta)),
            // No CodePipeline metadata: it names the commit and its subject.
            Some(k) => (zip::encrypt_zip(ctx, k, file.path()).await?, self.zip_key(dst), PutOptions { metadata: serial_meta, ..Default::default() }),
        };
        for _ in 0..MAX_ATTEMPTS {
            let condition = match self.zip_state(&key).await? {
                Some((_, theirs)) if theirs > serial => {
                    tracing::debug!(dst, serial, theirs, "a later push wrote repo.zip; leaving it");
                    return Ok(());
                }
                Some((etag, _)) => WriteCondition::IfMatch(etag),
                None => WriteCondition::IfAbsent,
            };
            let opts = PutOptions { condition, ..base.clone() };
            match self.store.put_file(&key, file.path(), opts, |_| {}).await {
                Ok(_) => return self.delete_older_zips(dst).await,
                Err(e) if e.is_precondition_failed() || e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StorageError::Format(format!("{key} kept changing while it was written")))
    }

    async fn delete_zip(&self, serial: u64, dst: &str) -> Result<(), StorageError> {
        let key = self.zip_key(dst);
        match self.zip_state(&key).await? {
            Some((_, theirs)) if theirs > serial => Ok(()), // the ref was pushed again since
            Some(_) => {
                self.store.delete(&key).await?;
                self.delete_older_zips(dst).await
            }
            None => self.delete_older_zips(dst).await,
        }
    }

    /// `dst`'s zip key: 0.4.2's, or an encrypted remote's keyed name.
    fn zip_key(&self, dst: &str) -> String {
        match &self.key {
            None => zip::zip_key(&self.url, dst),
            Some(k) => zip::encrypted_zip_key(&self.url, k, dst),
        }
    }

    /// An encrypted remote: `dst`'s zips named with older key generations, removed.
    async fn delete_older_zips(&self, dst: &str) -> Result<(), StorageError> {
        let Some(k) = &self.key else { return Ok(()) };
        for key in zip::older_encrypted_zip_keys(&self.url, k, dst) {
            if self.store.head(&key).await?.is_some() {
                self.store.delete(&key).await?;
            }
        }
        Ok(())
    }

    /// When packs pile up (`GIT_S3_GC_AUTO_PACKS`, default 16; 0 disables)
    /// and the geometric rollup has at least two small packs to combine,
    /// runs a geometric gc in the background after the push has answered,
    /// with the default grace period, so concurrent readers never miss a
    /// pack. Only the rolled-up packs are downloaded: the cost grows with
    /// what was pushed since, not with the repository.
    fn maybe_gc_in_background(&self, ctx: &OpContext, packs: &[PackEntry]) {
        let limit = ctx.env.get("GIT_S3_GC_AUTO_PACKS").and_then(|v| v.parse::<usize>().ok()).unwrap_or(16);
        if limit == 0 || packs.len() < limit {
            return;
        }
        let rollup = crate::storage::packs::gc::geometric_rollup(packs);
        if rollup.combine.is_empty() {
            tracing::debug!(packs = packs.len(), limit, "packs form a geometric progression; no background gc");
            return;
        }
        let (store, url, env) = (self.store.clone(), self.url.clone(), ctx.env.clone());
        let tmp = ctx.cache.root().join("tmp");
        tracing::info!(packs = packs.len(), limit, combine = rollup.combine.len(), "packs piled up; compacting in the background");
        // One background gc per remote at a time: concurrent pushes start one.
        let remote = store.location(&manifest::manifest_key(&url));
        #[cfg(feature = "test-hooks")]
        let gate = crate::test_hooks::background_gc_gate(&env);
        ctx.background.spawn_once(
            "gc",
            &remote,
            async move {
                #[cfg(feature = "test-hooks")]
                if let Some(g) = gate {
                    crate::test_hooks::wait_for_gate(&g).await;
                }
                let grace = Duration::from_secs(crate::storage::packs::gc::DEFAULT_GRACE_SECONDS);
                let mode = crate::storage::packs::gc::GcMode::Geometric;
                match crate::storage::packs::gc::gc(&store, &url, &tmp, &env, grace, mode, false).await {
                    Ok(r) => tracing::info!(
                        remote = %url,
                        before = r.packs_before,
                        combined = r.combined_packs,
                        kept = r.kept,
                        raced = r.raced,
                        "background gc done"
                    ),
                    Err(e) => tracing::warn!(remote = %url, error = %e, "background gc failed"),
                }
            }
            .instrument(tracing::info_span!("background_gc")),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const C: &str = "3333333333333333333333333333333333333333";

    fn set(dst: &str, src: &str) -> PushUpdate {
        PushUpdate { src: Some(src.into()), dst: dst.into(), force: false }
    }

    fn delete(dst: &str) -> PushUpdate {
        PushUpdate { src: None, dst: dst.into(), force: false }
    }

    fn manifest(refs: &[(&str, &str)]) -> Manifest {
        let mut m = Manifest::default();
        for (r, sha) in refs {
            m.refs.insert(r.to_string(), sha.to_string());
        }
        m
    }

    fn entry(name: &str) -> PackEntry {
        PackEntry { name: name.into(), size: 10, idx_size: 5, objects: 2, tips: vec![B.into()], created: 1, key: None, map_size: 0 }
    }

    #[test]
    fn the_speculative_pack_is_for_the_tips_that_differ() {
        let m = manifest(&[("refs/heads/main", A), ("refs/heads/dev", B)]);
        let updates = [set("refs/heads/main", "main"), set("refs/heads/dev", "dev"), set("refs/heads/new", "x"), delete("refs/heads/old")];
        let local = [Some(C.to_string()), Some(B.to_string()), Some(C.to_string()), None];
        assert_eq!(candidates(&updates, &local, &m), vec![C.to_string()], "dev is unchanged, C counted once, a delete has no tip");
        let missing = [None, None, None, None];
        assert!(candidates(&updates, &missing, &m).is_empty());
    }

    #[test]
    fn changes_tips_and_answer_follow_the_verdicts() {
        let updates = [set("refs/heads/a", "a"), set("refs/heads/b", "b"), delete("refs/heads/c"), set("refs/heads/d", "d")];
        let verdicts = vec![Ok(Change::Set(B.into())), Ok(Change::Unchanged), Ok(Change::Delete), Err("non-fast-forward".to_string())];
        let changes = changes_of(&updates, &verdicts);
        assert_eq!(changes, vec![("refs/heads/a", &Change::Set(B.into())), ("refs/heads/c", &Change::Delete)]);
        assert_eq!(tips_of(&changes), vec![B.to_string()], "what the pack is for");
        let answer = results(&updates, &verdicts);
        assert_eq!(answer[0], ("refs/heads/a".to_string(), Ok(())));
        assert_eq!(answer[1], ("refs/heads/b".to_string(), Ok(())), "unchanged is a success");
        assert_eq!(answer[3], ("refs/heads/d".to_string(), Err("non-fast-forward".to_string())));
    }

    #[test]
    fn atomic_refuses_all_when_one_is_refused() {
        let mut verdicts = vec![Ok(Change::Set(B.into())), Err("stale info".to_string()), Ok(Change::Unchanged)];
        fail_all_if_one_fails(&mut verdicts);
        assert_eq!(verdicts, vec![Err("atomic push failed".to_string()), Err("stale info".to_string()), Err("atomic push failed".to_string())]);
        let mut fine = vec![Ok(Change::Set(B.into())), Ok(Change::Delete)];
        fail_all_if_one_fails(&mut fine);
        assert_eq!(fine, vec![Ok(Change::Set(B.into())), Ok(Change::Delete)]);
    }

    #[test]
    fn the_next_manifest_applies_the_changes() {
        let mut m = manifest(&[("refs/heads/main", A), ("refs/heads/old", A)]);
        m.serial = 7;
        m.head = Some("refs/heads/old".into());
        m.packs.push(entry("a".repeat(40).as_str()));
        let (set_b, del) = (Change::Set(B.into()), Change::Delete);
        let changes = [("refs/heads/main", &set_b), ("refs/heads/old", &del), ("refs/tags/v1", &set_b)];
        let next = next_manifest(&m, &changes, Some(entry(&"b".repeat(40)))).expect("same format");
        assert_eq!(next.serial, 8);
        assert_eq!(next.refs, manifest(&[("refs/heads/main", B), ("refs/tags/v1", B)]).refs);
        assert_eq!(next.packs.iter().map(|p| p.name.clone()).collect::<Vec<_>>(), vec!["a".repeat(40), "b".repeat(40)]);
        assert_eq!(next.head.as_deref(), Some("refs/heads/old"), "a HEAD the remote has is kept");
        assert_eq!(next.object_format, None, "SHA-1 is not written");
        let deletes_only = next_manifest(&m, &[("refs/heads/old", &del)], None).expect("no ids");
        assert_eq!(deletes_only.packs.len(), 1);
        let headless = Manifest { head: None, ..m };
        let next = next_manifest(&headless, &[("refs/tags/v2", &set_b), ("refs/heads/main", &set_b)], None).expect("same format");
        assert_eq!(next.head.as_deref(), Some("refs/heads/main"), "a remote without HEAD takes the first branch pushed");
    }

    #[test]
    fn a_first_push_sets_head_to_its_first_branch_and_its_format() {
        let empty = Manifest::default();
        let sha256 = Change::Set("4".repeat(64));
        let changes = [("refs/tags/v1", &sha256), ("refs/heads/dev", &sha256), ("refs/heads/main", &sha256)];
        let next = next_manifest(&empty, &changes, None).expect("an empty remote takes any format");
        assert_eq!(next.head.as_deref(), Some("refs/heads/dev"), "the first branch, not a tag");
        assert_eq!(next.object_format, Some(ObjectFormat::Sha256));
        let sha1 = manifest(&[("refs/heads/main", A)]);
        assert_eq!(next_manifest(&sha1, &[("refs/heads/x", &sha256)], None), Err((ObjectFormat::Sha256, ObjectFormat::Sha1)), "formats never mix");
    }
}
