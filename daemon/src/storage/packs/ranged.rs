//! Ranged reads of objects from the packs in the bucket: what a partial
//! clone's lazy fetch (`git checkout <old commit>` after a blob:none clone)
//! needs, without downloading every pack.
//!
//! 1. Each pack's object map (`object_map.rs`: its blobs only, by prefix),
//!    else its `.idx` (downloaded once per mirror and kept beside it), says
//!    where a wanted object's entry starts and ends.
//! 2. The entries are read with range requests (nearby ones merged, in
//!    parallel: `S3Store::get_ranges`), then their delta bases, round after
//!    round, until every chain reaches a whole object.
//! 3. A pack of those entries is built (OFS_DELTA rewritten as REF_DELTA)
//!    and fed to `git index-pack`, which verifies every object: a range
//!    that does not verify is never written.
//!
//! On an encrypted remote (issue 22) the maps and `.idx` are decrypted
//! whole, and each pack's entries are read as whole 64 KiB age chunks,
//! decrypted by age's seekable reader (`crypt/seekable.rs`): each chunk is
//! authenticated before anything is made of it.
//!
//! A pack whose ranges would come to more than half of it is downloaded
//! whole instead (through the cache, as a plain fetch does). A fetch guided
//! by maps that fails or leaves a wanted object missing is made again with
//! the `.idx` files (a map is advisory); what it wrote is valid objects
//! (`index-pack` checked them), at worst unneeded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{StreamExt, TryStreamExt};

use crate::local::oid::ObjectFormat;
use crate::s3::store::ranged::RangeRead;
use crate::s3::store::ranged::{merge_ranges, MAX_RANGED_BYTES, MERGE_GAP};
use crate::session::progress::Progress;
use crate::storage::crypt::codec;
use crate::storage::crypt::seekable::{Sealed, HEAD_READ};
use crate::storage::packs::manifest::{self, PackEntry};
use crate::storage::packs::object_map::{Locator, ObjectMap};
use crate::storage::packs::pack_index::{
    build_pack, entry_header, resolved_kind, rewrite_entry, Base, NewBase, PackIndex, OBJ_BLOB, OBJ_COMMIT, OBJ_TAG, OBJ_TREE,
};
use crate::storage::packs::storage::PackStorage;
use crate::storage::{OpContext, StorageError};

/// Rounds of delta bases followed before a pack is read whole instead
/// (git's default delta depth is 50).
const MAX_ROUNDS: usize = 64;
/// Indexes (or packs) read at once.
const CONCURRENCY: usize = 4;

/// The gap between two entries of a pack of `size` bytes under which they
/// are read in one request: [`MERGE_GAP`] in a big pack, less in a smaller
/// one, where many entries asked for would merge into most of the pack
/// (tokio's 16 MB pack: 4 KiB).
fn merge_gap(size: u64) -> u64 {
    (size / 4096).clamp(1 << 10, MERGE_GAP)
}

/// Bytes read before each of `entries` entries asked for in a pack of
/// `size` bytes (where a delta's base often is): a round trip saved for a
/// few KiB, 32 KiB a round at most, so none when many entries are asked for.
fn read_ahead(size: u64, entries: usize) -> u64 {
    let ahead = ((32 << 10) / entries.max(1) as u64).min(size / 32).min(16 << 10);
    if ahead < 1 << 10 {
        0
    } else {
        ahead
    }
}

/// A pack's header (`PACK`, version, count): no entry starts before.
const PACK_HEADER: u64 = 12;

/// For each of `names` (ids or prefixes of ids, in hex), the object of the
/// repository it names: its full id and its type as a pack entry type code
/// (one `git cat-file --batch-check`); None when missing or ambiguous.
async fn objects_named(git: &crate::local::git::Git, names: &[String]) -> Result<Vec<Option<(Vec<u8>, u8)>>, StorageError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let input: String = names.iter().map(|o| format!("{o}\n")).collect();
    let out = git.run_with_stdin(&["cat-file", "--batch-check=%(objectname) %(objecttype)"], input.into_bytes()).await?;
    // One line per name, in order: "<id> <type>", or "<name> missing|ambiguous".
    let mut found: Vec<Option<(Vec<u8>, u8)>> = out
        .lines()
        .map(|l| {
            let (oid, t) = l.split_once(' ')?;
            let kind = match t {
                "commit" => OBJ_COMMIT,
                "tree" => OBJ_TREE,
                "blob" => OBJ_BLOB,
                "tag" => OBJ_TAG,
                _ => return None,
            };
            Some((hex::decode(oid).ok()?, kind))
        })
        .collect();
    found.resize(names.len(), None);
    Ok(found)
}

/// `git index-pack --stdin --fix-thin` of the pack in file `pack`: every
/// object verified, delta bases the pack lacks taken from the repository
/// (and appended), the pack moved into `objects/pack` only once whole.
async fn index_thin_pack(git: &crate::local::git::Git, pack: &Path) -> Result<(), crate::local::git::GitError> {
    use crate::local::git::GitError;
    let path = pack.to_path_buf();
    let file = crate::local::files::blocking(move || std::fs::File::open(path)).await.map_err(GitError::Spawn)?;
    let mut cmd = git.command(&["index-pack", "--stdin", "--fix-thin"]);
    cmd.stdin(std::process::Stdio::from(file)).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let out = cmd.output().await.map_err(GitError::Spawn)?;
    if !out.status.success() {
        return Err(GitError::Failed {
            args: "index-pack --stdin --fix-thin".into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// What one pack contributes to a ranged fetch.
struct PackPlan {
    entry: PackEntry,
    format: ObjectFormat,
    idx: Arc<Locator>,
    /// Offsets of the wanted objects' entries.
    wanted: Vec<u64>,
    /// Entries read: offset → raw bytes.
    raw: BTreeMap<u64, Bytes>,
    /// Entries read: offset → (type in the header, base entry's offset).
    chains: HashMap<u64, (u8, Option<u64>)>,
    /// Entries to read in the next round.
    frontier: BTreeSet<u64>,
    /// Delta bases the repository has already (not read): their ids.
    in_repository: HashMap<u64, Vec<u8>>,
    /// What the rounds read.
    pieces: Vec<RangeRead>,
    /// Bytes read so far.
    read: u64,
    /// Read whole instead.
    whole: bool,
    /// On an encrypted remote: the age file's header and the chunks read.
    sealed: Option<Sealed>,
    /// On an encrypted remote: the chunks this round reads.
    round_chunks: BTreeSet<u64>,
}

impl PackPlan {
    fn new(entry: PackEntry, format: ObjectFormat, idx: Arc<Locator>) -> PackPlan {
        PackPlan {
            entry,
            format,
            idx,
            wanted: Vec::new(),
            raw: BTreeMap::new(),
            chains: HashMap::new(),
            frontier: BTreeSet::new(),
            in_repository: HashMap::new(),
            pieces: Vec::new(),
            read: 0,
            whole: false,
            sealed: None,
            round_chunks: BTreeSet::new(),
        }
    }
}

/// What a ranged fetch did (for the log and the caller).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RangedOutcome {
    /// Every wanted object is now in the repository.
    pub(crate) done: bool,
    pub(crate) bytes: u64,
    pub(crate) requests: usize,
    pub(crate) rounds: usize,
    pub(crate) whole_packs: usize,
    /// A pack (or its `.idx`) the manifest named was gone from the bucket.
    pub(crate) gone: bool,
    /// Packs located by their object maps rather than their `.idx`.
    pub(crate) maps: usize,
}

impl PackStorage {
    /// Brings the objects `wants` (blobs a lazy fetch asks for) into `ctx`'s
    /// repository by ranged reads; `idx_dir` keeps the downloaded object
    /// maps and `.idx` files. `done` is false, with nothing written, when
    /// this way does not suit (an object no `.idx` names, a wanted object
    /// that is no blob, a pack gone from the bucket): the caller fetches the
    /// whole remote. An entry that does not verify is an error naming the
    /// pack. A pack gone from the bucket (a gc retired it and deleted it
    /// meanwhile): the manifest is read again and, when it changed, the
    /// objects are read from the packs it names now.
    pub(crate) async fn fetch_ranged(&self, ctx: &OpContext, wants: &[String], idx_dir: &Path) -> Result<RangedOutcome, StorageError> {
        let m = self.listed_manifest().await?;
        let first = self.fetch_ranged_from(ctx, wants, idx_dir, &m).await?;
        if first.done || !first.gone {
            return Ok(first);
        }
        let Some((now, _)) = manifest::read_manifest(&self.store, &self.url).await? else { return Ok(first) };
        if now.packs == m.packs {
            return Ok(first);
        }
        tracing::info!(serial = now.serial, "a pack was retired while it was read by ranges; reading from the packs the manifest names now");
        self.fetch_ranged_from(ctx, wants, idx_dir, &now).await
    }

    /// `fetch_ranged` from the packs of manifest `m`: led by the packs'
    /// object maps where they have them; when that fails in any way, made
    /// again with the `.idx` files.
    async fn fetch_ranged_from(
        &self,
        ctx: &OpContext,
        wants: &[String],
        idx_dir: &Path,
        m: &manifest::Manifest,
    ) -> Result<RangedOutcome, StorageError> {
        if !m.packs.iter().chain(m.views.iter().flat_map(|v| v.packs())).any(|p| p.map_size > 0) {
            return self.fetch_ranged_with(ctx, wants, idx_dir, m, false).await;
        }
        let first = self.fetch_ranged_with(ctx, wants, idx_dir, m, true).await;
        let read = match &first {
            Ok(o) if o.done || o.maps == 0 => return first,
            Ok(o) => o.bytes,
            Err(e) => {
                tracing::info!(error = %e, "ranged reads led by object maps failed; again with the .idx files");
                0
            }
        };
        let have = ctx.git.present_objects(wants).await?;
        let rest: Vec<String> = wants.iter().filter(|w| !have.contains(*w)).cloned().collect();
        let mut again = self.fetch_ranged_with(ctx, &rest, idx_dir, m, false).await?;
        again.bytes += read;
        Ok(again)
    }

    /// `fetch_ranged_from`, led by the packs' object maps (`use_maps`) or
    /// by their `.idx` files only.
    async fn fetch_ranged_with(
        &self,
        ctx: &OpContext,
        wants: &[String],
        idx_dir: &Path,
        m: &manifest::Manifest,
        use_maps: bool,
    ) -> Result<RangedOutcome, StorageError> {
        let mut outcome = RangedOutcome::default();
        let format = m.format();
        if wants.is_empty() {
            return Ok(outcome);
        }
        let mut oids = Vec::with_capacity(wants.len());
        for w in wants {
            match hex::decode(w) {
                Ok(o) if o.len() == format.raw_len() => oids.push(o),
                _ => return Ok(outcome),
            }
        }
        let pack_dir = ctx.git.pack_dir().await?;
        let Some(mut plans) = self.plan_packs(ctx, m, &oids, (idx_dir, &pack_dir), use_maps, &mut outcome).await? else { return Ok(outcome) };
        if self.is_encrypted() && self.read_heads(&mut plans, &mut outcome).await? {
            return Ok(RangedOutcome { done: false, gone: true, ..outcome });
        }

        #[cfg(feature = "test-hooks")]
        if let Some(g) = crate::test_hooks::ranged_read_gate(&ctx.env) {
            crate::test_hooks::wait_for_gate(&g).await;
        }
        if self.read_rounds(ctx, &mut plans, &mut outcome).await? {
            return Ok(RangedOutcome { done: false, gone: true, ..outcome });
        }
        // Only blobs: a commit or tree without what it links to would leave
        // the mirror holding objects whose history it lacks.
        for p in plans.iter().filter(|p| !p.whole) {
            if p.wanted.iter().any(|o| resolved_kind(&p.chains, *o) != Some(OBJ_BLOB)) {
                tracing::debug!(pack = p.entry.name, "a wanted object is not a blob; no ranged reads");
                return Ok(RangedOutcome { done: false, ..outcome });
            }
        }
        self.index_and_fetch_whole(ctx, &plans, &pack_dir, &mut outcome).await?;
        let have = ctx.git.present_objects(wants).await?;
        outcome.done = wants.iter().all(|w| have.contains(w));
        tracing::info!(
            wants = wants.len(),
            bytes = outcome.bytes,
            requests = outcome.requests,
            rounds = outcome.rounds,
            whole_packs = outcome.whole_packs,
            maps = outcome.maps,
            done = outcome.done,
            "ranged reads"
        );
        Ok(outcome)
    }

    /// Each wanted object (`oids`) in the first pack of `m` that holds it,
    /// by the packs' object maps or `.idx` (kept in `idx_dir`), leaving
    /// out the skeleton view and packs the repository (`pack_dir`) has.
    /// None when no pack names one of them.
    async fn plan_packs(
        &self,
        ctx: &OpContext,
        m: &manifest::Manifest,
        oids: &[Vec<u8>],
        (idx_dir, pack_dir): (&Path, &Path),
        use_maps: bool,
        outcome: &mut RangedOutcome,
    ) -> Result<Option<Vec<PackPlan>>, StorageError> {
        let format = m.format();
        // Packs that may hold blobs (not the skeleton view), not in the repository yet.
        let skeleton = m.views.as_ref().and_then(|v| v.skeleton.as_ref()).map(|p| p.name.clone());
        let mut seen = BTreeSet::new();
        let listed: Vec<&PackEntry> = m
            .packs
            .iter()
            .chain(m.views.iter().flat_map(|v| v.tips.iter()))
            .filter(|p| Some(&p.name) != skeleton.as_ref() && seen.insert(p.name.clone()))
            .collect();
        let indexed = super::fetch::indexed_packs(pack_dir, listed.iter().map(|p| p.name.clone()).collect()).await?;
        let candidates: Vec<PackEntry> = listed.into_iter().filter(|p| !indexed.contains(&p.name)).cloned().collect();
        tokio::fs::create_dir_all(idx_dir).await?;
        let loads: Vec<_> =
            candidates.iter().map(|p| async move { self.load_locator(ctx, p, idx_dir, format, use_maps).await.map(|i| (p.clone(), i)) }).collect();
        let indexes: Vec<(PackEntry, Option<Arc<Locator>>)> = futures::stream::iter(loads).buffered(CONCURRENCY).try_collect().await?;
        outcome.gone = indexes.iter().any(|(_, i)| i.is_none());
        outcome.maps = indexes.iter().filter(|(_, l)| l.as_ref().is_some_and(|l| l.is_map())).count();
        let mut plans: Vec<PackPlan> = Vec::new();
        for oid in oids {
            let found = indexes.iter().find_map(|(p, idx)| idx.as_ref().and_then(|i| i.offset_of(oid).map(|o| (p, i, o))));
            let Some((p, idx, offset)) = found else {
                tracing::debug!(oid = hex::encode(oid), "no pack index names a wanted object; no ranged reads");
                return Ok(None);
            };
            let i = match plans.iter().position(|pl| pl.entry.name == p.name) {
                Some(i) => i,
                None => {
                    plans.push(PackPlan::new(p.clone(), format, idx.clone()));
                    plans.len() - 1
                }
            };
            plans[i].wanted.push(offset);
            plans[i].frontier.insert(offset);
        }
        Ok(Some(plans))
    }

    /// Rounds: each reads every pack's frontier (one parallel batch of
    /// merged ranges per pack), then queues the delta bases not read yet.
    /// True when a pack is gone from the bucket (nothing more is read).
    async fn read_rounds(&self, ctx: &OpContext, plans: &mut [PackPlan], outcome: &mut RangedOutcome) -> Result<bool, StorageError> {
        let mut progress = Progress::new(ctx.out.clone(), ctx.progress, "Reading objects by ranges".to_string(), None).delayed_as(&ctx.env);
        while plans.iter().any(|p| !p.whole && !p.frontier.is_empty()) {
            if outcome.rounds == MAX_ROUNDS {
                plans.iter_mut().filter(|p| !p.frontier.is_empty()).for_each(|p| p.whole = true);
                break;
            }
            outcome.rounds += 1;
            let jobs = self.round_jobs(plans)?;
            let reads: Vec<_> =
                jobs.into_iter().map(|(i, key, ranges, gap)| async move { (i, self.store.get_ranges(&key, &ranges, gap).await) }).collect();
            let results: Vec<_> = futures::stream::iter(reads).buffer_unordered(CONCURRENCY).collect().await;
            for (i, read) in results {
                let read = match read {
                    Ok(r) => r,
                    Err(e) if e.is_not_found() => {
                        tracing::info!(pack = plans[i].entry.name, "a pack is gone from the bucket; no ranged reads");
                        progress.finish();
                        return Ok(true);
                    }
                    Err(e) => return Err(e.into()),
                };
                outcome.bytes += read.bytes();
                progress.add(read.bytes());
                outcome.requests += read.requests();
                plans[i].read += read.bytes();
                let read = if self.is_encrypted() { self.open_chunks(&mut plans[i], read).await? } else { read };
                self.absorb(ctx, &mut plans[i], read).await?;
            }
        }
        progress.finish();
        Ok(false)
    }

    /// One round's range reads: (plan, object key, ranges, merge gap) for
    /// each pack with a frontier; a pack whose ranges would cover half of
    /// it is marked to be read whole instead.
    #[allow(clippy::type_complexity)]
    fn round_jobs(&self, plans: &mut [PackPlan]) -> Result<Vec<(usize, String, Vec<Range<u64>>, u64)>, StorageError> {
        let mut jobs = Vec::new();
        for (i, p) in plans.iter_mut().enumerate().filter(|(_, p)| !p.whole && !p.frontier.is_empty()) {
            // Each entry with the bytes before it: a delta's base is
            // earlier in the pack, often close.
            let ahead = read_ahead(p.entry.size, p.frontier.len());
            let ranges: Option<Vec<Range<u64>>> =
                p.frontier.iter().map(|o| p.idx.end_of(*o, p.entry.size).map(|e| o.saturating_sub(ahead).max(PACK_HEADER)..e)).collect();
            let Some(ranges) = ranges else {
                return Err(self.damaged(&p.entry, "its .idx names an entry past the pack's end"));
            };
            // An encrypted pack: its whole chunks not read yet, neighbours in one request.
            let (ranges, gap) = match &p.sealed {
                Some(sealed) => {
                    p.round_chunks = sealed.chunks_of(&ranges);
                    (sealed.unread(&p.round_chunks), 0)
                }
                None => (ranges, merge_gap(p.entry.size)),
            };
            let cost: u64 = merge_ranges(&ranges, gap).iter().map(|r| r.end - r.start).sum();
            if p.read + cost > p.entry.size / 2 || p.read + cost > MAX_RANGED_BYTES {
                tracing::debug!(pack = p.entry.name, read = p.read, cost, size = p.entry.size, "ranges would cover half the pack; reading it whole");
                p.whole = true;
                continue;
            }
            jobs.push((i, self.entry_object_key(&p.entry, "pack")?, ranges, gap));
        }
        Ok(jobs)
    }

    /// Takes what a round read of pack `p`: its entries, and as the next
    /// frontier the delta bases neither read nor in the repository (those
    /// the repository has complete the pack built: `index-pack --fix-thin`).
    async fn absorb(&self, ctx: &OpContext, p: &mut PackPlan, read: RangeRead) -> Result<(), StorageError> {
        p.pieces.push(read);
        let asked: Vec<u64> = p.frontier.iter().copied().collect();
        p.frontier.clear();
        let unread = self.take_entries(p, asked)?;
        if unread.is_empty() {
            return Ok(());
        }
        let Some(names) = unread.iter().map(|b| p.idx.name_at(*b).map(hex::encode)).collect::<Option<Vec<String>>>() else {
            return Err(self.damaged(&p.entry, "a delta's base offset is no entry"));
        };
        let found = objects_named(&ctx.git, &names).await?;
        for (b, found) in unread.into_iter().zip(found) {
            match found {
                Some((oid, kind)) => {
                    p.chains.insert(b, (kind, None));
                    p.in_repository.insert(b, oid);
                }
                None => {
                    p.frontier.insert(b);
                }
            }
        }
        Ok(())
    }

    /// Indexes the packs built from what was read, and downloads whole the
    /// packs marked so; the temp packs of a failure are removed.
    async fn index_and_fetch_whole(
        &self,
        ctx: &OpContext,
        plans: &[PackPlan],
        pack_dir: &Path,
        outcome: &mut RangedOutcome,
    ) -> Result<(), StorageError> {
        let started = std::time::SystemTime::now();
        for p in plans.iter().filter(|p| !p.whole) {
            if let Err(e) = self.index_entries(ctx, p).await {
                crate::local::git::remove_temp_packs_since(pack_dir, started).await;
                return Err(e);
            }
        }
        let whole: Vec<PackEntry> = plans.iter().filter(|p| p.whole).map(|p| p.entry.clone()).collect();
        outcome.whole_packs = whole.len();
        let fetches: Vec<_> =
            whole.iter().map(|p| async move { self.fetch_pack(ctx, p, pack_dir, std::future::ready(true)).await.map(|_| ()) }).collect();
        let fetched = futures::stream::iter(fetches).buffer_unordered(CONCURRENCY).try_collect::<Vec<()>>().await;
        if fetched.is_err() {
            crate::local::git::remove_temp_packs_since(pack_dir, started).await;
        }
        fetched.map(|_| ())
    }

    /// Takes from what `p` has read the entries at `offsets` and, following
    /// their delta bases, every base already read (read-ahead often holds
    /// them): each checked against its CRC-32 in the `.idx`. Returns the
    /// bases still to read.
    fn take_entries(&self, p: &mut PackPlan, offsets: Vec<u64>) -> Result<BTreeSet<u64>, StorageError> {
        let mut queue = offsets;
        let mut unread = BTreeSet::new();
        while let Some(at) = queue.pop() {
            if p.raw.contains_key(&at) || p.in_repository.contains_key(&at) {
                continue;
            }
            let end = p.idx.end_of(at, p.entry.size).ok_or_else(|| self.damaged(&p.entry, "its .idx names an entry past the pack's end"))?;
            let Some(raw) = p.pieces.iter().find_map(|piece| piece.slice(at..end)) else {
                unread.insert(at);
                continue;
            };
            // Checked against the CRC-32 its .idx records before anything is made of it.
            if !p.idx.crc_matches(at, &raw) {
                return Err(self.altered(&p.entry, &format!("the entry at offset {at} does not match the CRC-32 of the pack's .idx")));
            }
            let h = entry_header(&raw, at, p.format.raw_len()).map_err(|e| self.damaged(&p.entry, &e.to_string()))?;
            let base = match &h.base {
                None => None,
                Some(Base::Offset(o)) => Some(*o),
                // Packs in the bucket are never thin: a REF_DELTA's base is in the same pack.
                Some(Base::Oid(oid)) => Some(p.idx.offset_of(oid).ok_or_else(|| self.damaged(&p.entry, "a delta's base is not in the pack"))?),
            };
            p.chains.insert(at, (h.kind, base));
            p.raw.insert(at, raw);
            if let Some(b) = base {
                queue.push(b);
            }
        }
        Ok(unread)
    }

    /// The entries read from one pack, as a pack of their own (in the same
    /// order: an OFS_DELTA's base read too is before it at a new distance, a
    /// base in the repository is named by its id), indexed by `git
    /// index-pack` (which verifies every object before the pack is moved
    /// into place).
    async fn index_entries(&self, ctx: &OpContext, p: &PackPlan) -> Result<(), StorageError> {
        let mut entries: Vec<Vec<u8>> = Vec::with_capacity(p.raw.len());
        let mut moved: HashMap<u64, u64> = HashMap::with_capacity(p.raw.len());
        let mut at_new = PACK_HEADER;
        for (offset, raw) in &p.raw {
            let h = entry_header(raw, *offset, p.format.raw_len()).map_err(|e| self.damaged(&p.entry, &e.to_string()))?;
            let base = match h.base {
                Some(Base::Offset(b)) => Some(match (moved.get(&b), p.in_repository.get(&b)) {
                    (Some(new), _) => NewBase::Distance(at_new - new),
                    (None, Some(oid)) => NewBase::Oid(oid),
                    (None, None) => return Err(self.damaged(&p.entry, "a delta's base offset is no entry")),
                }),
                _ => None,
            };
            let e = rewrite_entry(raw, &h, base).ok_or_else(|| self.damaged(&p.entry, "an entry cannot be rewritten"))?;
            moved.insert(*offset, at_new);
            at_new += e.len() as u64;
            entries.push(e);
        }
        let format = p.format;
        let pack = tokio::task::spawn_blocking(move || build_pack(&entries, format)).await.map_err(|e| StorageError::Io(std::io::Error::other(e)))?;
        let tmp = ctx.cache.blocking(|c| c.temp_file()).await??;
        tokio::fs::write(tmp.path(), &pack).await?;
        index_thin_pack(&ctx.git, tmp.path()).await.map_err(|e| {
            let why = match &e {
                crate::local::git::GitError::Failed { stderr, .. } => {
                    stderr.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("index-pack failed").to_string()
                }
                other => other.to_string(),
            };
            self.altered(&p.entry, &why)
        })?;
        Ok(())
    }

    /// An encrypted remote: the first bytes (the age header) of each pack
    /// to read by ranges, in parallel. A pack whose header does not end
    /// within them is read whole. True when a pack is gone from the bucket.
    async fn read_heads(&self, plans: &mut [PackPlan], outcome: &mut RangedOutcome) -> Result<bool, StorageError> {
        let reads: Vec<_> = plans
            .iter()
            .enumerate()
            .map(|(i, p)| async move {
                let key = self.entry_object_key(&p.entry, "pack")?;
                // The ciphertext is longer than the plaintext: within the object.
                let read = self.store.get_range(&key, 0..HEAD_READ.min(p.entry.size)).await;
                Ok::<_, StorageError>((i, read))
            })
            .collect();
        let heads: Vec<_> = futures::stream::iter(reads).buffer_unordered(CONCURRENCY).try_collect().await?;
        for (i, head) in heads {
            let head = match head {
                Ok(h) => h,
                Err(e) if e.is_not_found() => return Ok(true),
                Err(e) => return Err(e.into()),
            };
            outcome.bytes += head.len() as u64;
            outcome.requests += 1;
            let p = &mut plans[i];
            p.read += head.len() as u64;
            p.sealed = Sealed::from_head(head, p.entry.size);
            p.whole = p.sealed.is_none();
        }
        Ok(false)
    }

    /// An encrypted pack's chunks read this round (`read`: ciphertext),
    /// kept with those of earlier rounds, and the plaintext of the chunks
    /// the round asked for, decrypted on a blocking thread: a chunk that
    /// does not authenticate fails the fetch in one line.
    async fn open_chunks(&self, p: &mut PackPlan, read: RangeRead) -> Result<RangeRead, StorageError> {
        let (Some(sealed), Some(key)) = (p.sealed.as_mut(), self.key.clone()) else { return Ok(read) };
        let chunks = std::mem::take(&mut p.round_chunks);
        if !sealed.keep(&chunks, &read) {
            return Err(self.altered(&p.entry, "the object is shorter than its manifest entry says"));
        }
        let (sealed, what) = (sealed.clone(), format!("s3://{}/{}", self.store.bucket(), self.pack_object(&p.entry)));
        let pieces = tokio::task::spawn_blocking(move || sealed.open(&key, &chunks, &what))
            .await
            .map_err(|e| StorageError::Io(std::io::Error::other(e)))??;
        Ok(RangeRead::from_pieces(pieces))
    }

    /// Read bytes that do not verify: refused, nothing written.
    fn altered(&self, p: &PackEntry, why: &str) -> StorageError {
        StorageError::Corrupt(format!(
            "objects read from pack {} (s3://{}/{}) do not verify ({why}): nothing was written; the pack in the bucket is damaged or the transfer was altered (fetch again; `git s3 doctor` checks the packs)",
            p.name,
            self.store.bucket(),
            self.pack_object(p)
        ))
    }

    /// Where pack `p`'s `.pack` is in the bucket (HMAC'd on an encrypted remote).
    fn pack_object(&self, p: &PackEntry) -> String {
        self.entry_object_key(p, "pack").unwrap_or_else(|_| manifest::pack_key(&self.url, &p.name))
    }

    /// How entries of pack `p` are found: its object map (`use_maps`, when
    /// the manifest names one and it is sound), else its `.idx`. None when
    /// the bucket has neither.
    async fn load_locator(
        &self,
        ctx: &OpContext,
        p: &PackEntry,
        dir: &Path,
        format: ObjectFormat,
        use_maps: bool,
    ) -> Result<Option<Arc<Locator>>, StorageError> {
        let Ok(name) = hex::decode(&p.name) else { return Ok(None) };
        if use_maps && p.map_size > 0 {
            let n = name.clone();
            let parse = move |data: Vec<u8>| ObjectMap::parse(&data, &n, format).map(Locator::Map).map_err(|e| e.to_string());
            match self.load_kept(ctx, dir, &format!("pack-{}.map", p.name), &self.entry_object_key(p, "map")?, parse).await? {
                Some(Ok(map)) => return Ok(Some(Arc::new(map))),
                Some(Err(e)) => tracing::info!(pack = p.name, error = %e, "an object map is unusable; its .idx is read instead"),
                None => {}
            }
        }
        let parse = move |data: Vec<u8>| PackIndex::parse(&data, Some(&name), format).map(|i| Locator::Index(Box::new(i))).map_err(|e| e.to_string());
        let key = self.entry_object_key(p, "idx")?;
        match self.load_kept(ctx, dir, &format!("pack-{}.idx", p.name), &key, parse).await? {
            Some(Ok(idx)) => Ok(Some(Arc::new(idx))),
            Some(Err(e)) => Err(self.damaged(p, &format!("its .idx s3://{}/{key} is unusable: {e}", self.store.bucket()))),
            None => Ok(None),
        }
    }

    /// The file `file` parsed by `parse`: from `dir` when an earlier fetch
    /// kept it, else downloaded from `key` (and kept when sound). None when
    /// the bucket has none; the parser's error when what was downloaded is
    /// unusable.
    async fn load_kept<F>(
        &self,
        ctx: &OpContext,
        dir: &Path,
        file: &str,
        key: &str,
        parse: F,
    ) -> Result<Option<Result<Locator, String>>, StorageError>
    where
        F: Fn(Vec<u8>) -> Result<Locator, String> + Clone + Send + 'static,
    {
        let kept = dir.join(file);
        if let Ok(data) = tokio::fs::read(&kept).await {
            let again = parse.clone();
            if let Ok(Ok(found)) = tokio::task::spawn_blocking(move || again(data)).await {
                return Ok(Some(Ok(found)));
            }
            let _ = tokio::fs::remove_file(&kept).await;
        }
        let tmp = ctx.cache.blocking(|c| c.temp_file()).await??;
        match self.store.get_to_file(key, tmp.path(), |_| {}).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let mut data = tokio::fs::read(tmp.path()).await?;
        if let Some(k) = self.key.clone() {
            // Kept decrypted, as the cache keeps packs.
            let what = format!("s3://{}/{key}", self.store.bucket());
            let plain = tokio::task::spawn_blocking(move || codec::decrypt_bytes(&k, &data, &what))
                .await
                .map_err(|e| StorageError::Io(std::io::Error::other(e)))??;
            tokio::fs::write(tmp.path(), &plain).await?;
            data = plain;
        }
        let parsed = tokio::task::spawn_blocking(move || parse(data)).await.map_err(|e| StorageError::Io(std::io::Error::other(e)))?;
        if parsed.is_ok() {
            let path: PathBuf = tmp.path().to_path_buf();
            if let Err(e) = tmp.persist(&kept) {
                tracing::debug!(error = %e, file = %path.display(), "pack index not kept");
            }
        }
        Ok(Some(parsed))
    }

    fn damaged(&self, p: &PackEntry, why: &str) -> StorageError {
        StorageError::Corrupt(format!(
            "pack {} in s3://{}/{} cannot be read by ranges ({why}): the remote is damaged (`git s3 doctor` checks it)",
            p.name,
            self.store.bucket(),
            self.pack_object(p)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_and_read_ahead_grow_with_the_pack_within_bounds() {
        assert_eq!(merge_gap(10 << 10), 1 << 10, "a small pack: small gaps");
        assert_eq!(merge_gap(16 << 20), 4 << 10);
        assert_eq!(merge_gap(1 << 30), MERGE_GAP, "a big pack: the store's gap");
        assert_eq!(read_ahead(1 << 20, 1), 16 << 10);
        assert_eq!(read_ahead(1 << 30, 8), 4 << 10, "32 KiB a round");
        assert_eq!(read_ahead(64 << 10, 1), 2 << 10, "a small pack: a little");
        assert_eq!(read_ahead(16 << 20, 581), 0, "many entries: none");
    }
}
