//! Compaction of a packs-format remote (`git s3 gc`, and the background gc
//! after a push when packs pile up).
//!
//! Compaction has two modes. `Full` downloads every pack into a scratch
//! bare repository and packs what the manifest's refs reach into one pack
//! (dropping unreachable objects). `Geometric` picks the small packs that
//! break a geometric progression of factor 2 (`geometric_rollup`, like
//! `git repack --geometric=2`), downloads only those and combines exactly
//! their objects with `git pack-objects --stdin-packs`; the big packs stay
//! untouched, so its cost grows with what was pushed since, not with the
//! repository. Both upload the new pack and swap the pack list in one
//! conditional manifest write against the manifest they started from (a
//! remote that changed meanwhile is left alone: run gc again). Replaced
//! packs are listed as `retired` and deleted by a later gc once their grace
//! period is over; packs no manifest names (a push that died before its
//! manifest write) are deleted once older than the grace period.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::local::git::Git;
use crate::s3::store::{PutOptions, S3Store, WriteCondition};
use crate::s3::url::RemoteUrl;
use crate::storage::crypt::RemoteKey;
use crate::storage::packs::git_ops::SCRATCH_PACK_CONFIG;
use crate::storage::packs::manifest::{self, read_manifest, unix_now, update_manifest, Manifest, PackEntry, RetiredPack};
use crate::storage::packs::scratch::{keyed, pack_of, scratch_from_packs, upload_pack_of, written_pack};
use crate::storage::packs::views;
use crate::storage::StorageError;

/// How `gc` compacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum GcMode {
    /// Every pack into one pack of what the refs reach (unreachable objects
    /// are dropped). Downloads and uploads the whole repository.
    #[default]
    Full,
    /// Only the packs `geometric_rollup` picks, into one pack of exactly
    /// their objects; the others stay as they are.
    Geometric,
}

impl GcMode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            GcMode::Full => "full",
            GcMode::Geometric => "geometric",
        }
    }
}

/// The factor of the geometric progression packs are kept in.
pub(crate) const GEOMETRIC_FACTOR: u64 = 2;

/// A pack list split by `geometric_rollup`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Rollup<'a> {
    /// The packs to combine into one (smallest first); empty when fewer
    /// than two would be rolled up.
    pub(crate) combine: Vec<&'a PackEntry>,
    /// The packs that stay (smallest first).
    pub(crate) keep: Vec<&'a PackEntry>,
}

/// Picks the packs to combine so that the packs form a geometric
/// progression of factor 2 (like `git repack --geometric=2`), by `size`.
///
/// Sorted by size ascending, the smallest packs are rolled up while the
/// next pack is smaller than 2× the rolled-up total; the split is the
/// smallest one above which every pack weighs at least 2× the sum of all
/// smaller packs (so a later pack that breaks the progression pulls the
/// packs below it into the rollup too, and after combining the list is a
/// progression again). Those packs stay; the rest is combined, but only
/// when that is at least two packs.
pub(crate) fn geometric_rollup(packs: &[PackEntry]) -> Rollup<'_> {
    let mut sorted: Vec<&PackEntry> = packs.iter().collect();
    sorted.sort_by(|a, b| a.size.cmp(&b.size).then_with(|| a.name.cmp(&b.name)));
    // `split`: how many of the smallest packs are rolled up; `below`: the
    // sum of the sizes of the packs before the current one.
    let (mut split, mut below) = (0usize, 0u64);
    for (i, p) in sorted.iter().enumerate() {
        if p.size < below.saturating_mul(GEOMETRIC_FACTOR) {
            split = i + 1;
        }
        below = below.saturating_add(p.size);
    }
    if split < 2 {
        return Rollup { combine: Vec::new(), keep: sorted };
    }
    let keep = sorted.split_off(split);
    Rollup { combine: sorted, keep }
}

/// What a gc did.
#[derive(Debug, Default)]
pub(crate) struct GcReport {
    pub(crate) packs_before: usize,
    pub(crate) bytes_before: u64,
    /// Packs combined (or, in a dry run, that would be) and their bytes.
    pub(crate) combined_packs: usize,
    pub(crate) combined_bytes: u64,
    /// Packs left as they were (all of them when nothing is combined).
    pub(crate) kept: usize,
    /// The combined pack (None: nothing combined).
    pub(crate) combined: Option<PackEntry>,
    /// Keys deleted (retired packs past their grace, unreferenced old packs).
    pub(crate) deleted: Vec<String>,
    /// Packs kept for now (retired or unreferenced, within their grace period).
    pub(crate) waiting: Vec<String>,
    /// The remote changed while combining: nothing was replaced.
    pub(crate) raced: bool,
    /// The views after this gc (Full writes new ones).
    pub(crate) views: Option<manifest::Views>,
}

/// Whether a remote's views are missing or were not made from its packs.
pub(crate) fn views_stale(m: &Manifest) -> bool {
    !m.packs.is_empty() && m.views.as_ref().is_none_or(|v| m.packs.iter().any(|p| !v.covers_pack(&p.name)))
}
/// `git pack-objects --stdin-packs` of the scratch repository's packs
/// `local_names`: one self-contained pack of exactly their objects, into
/// `<dir>/out-<name>.pack`, made for `tips`.
async fn pack_of_packs(git: &Git, dir: &Path, local_names: &[String], tips: Vec<String>) -> Result<PackEntry, StorageError> {
    let input: String = local_names.iter().map(|n| format!("pack-{n}.pack\n")).collect();
    let base = dir.join("out");
    let base = base.to_string_lossy();
    let args = [&SCRATCH_PACK_CONFIG[..], &["pack-objects", "--stdin-packs", "--quiet", "--delta-base-offset", &base]].concat();
    let out = git.run_with_stdin(&args, input.into_bytes()).await?;
    written_pack(dir, &out, tips).await
}
/// The tips of a pack combining `packs`: the union of theirs. A pack
/// without tips is downloaded by every fetch that needs anything (nothing
/// says when its objects are present), and so is one combining it.
fn combined_tips(packs: &[&PackEntry]) -> Vec<String> {
    if packs.iter().any(|p| p.tips.is_empty()) {
        return Vec::new();
    }
    packs.iter().flat_map(|p| p.tips.iter().cloned()).collect::<BTreeSet<_>>().into_iter().collect()
}
/// How long replaced and unreferenced packs are kept before gc deletes them.
pub(crate) const DEFAULT_GRACE_SECONDS: u64 = 3600;

/// Compacts `url`'s packs (`mode`); deletes retired/unreferenced packs
/// older than `grace`. A dry run combines and deletes nothing, but reports
/// what would be combined and deleted.
#[tracing::instrument(name = "gc", skip_all, fields(remote = %url, mode = mode.name(), dry_run))]
pub(crate) async fn gc(
    store: &S3Store,
    url: &RemoteUrl,
    tmp_root: &Path,
    env: &HashMap<String, String>,
    grace: Duration,
    mode: GcMode,
    dry_run: bool,
) -> Result<GcReport, StorageError> {
    let Some((m0, etag0)) = read_manifest(store, url).await? else {
        return Err(StorageError::Format(format!("{url} has no packs manifest (not a packs remote)")));
    };
    // An encrypted remote's manifest reads only with its key opened (issue
    // 22): its packs are age files under HMAC'd names, read and written so.
    let key = crate::storage::crypt::opened(store, url);
    if let Some(msg) = m0.frozen_error(url) {
        return Err(StorageError::Format(msg));
    }
    let mut report = GcReport { packs_before: m0.packs.len(), bytes_before: m0.pack_bytes(), ..Default::default() };
    let combine = packs_to_combine(&m0, mode);
    report.combined_packs = combine.len();
    report.combined_bytes = combine.iter().fold(0u64, |t, p| t.saturating_add(p.size).saturating_add(p.idx_size));
    report.kept = m0.packs.len() - combine.len();
    tracing::info!(packs = m0.packs.len(), combine = combine.len(), bytes = report.combined_bytes, "gc plan");
    let mut current = m0.clone();
    if !combine.is_empty() && !dry_run {
        let scratch = Scratch { store, url, key: key.as_ref(), tmp_root, env };
        match scratch.compact(mode, &m0, etag0, &combine, &mut report).await? {
            Some(next) => current = next,
            None => return Ok(report),
        }
    }
    delete_old_packs(store, url, key.as_deref(), current, grace, dry_run, &mut report).await?;
    Ok(report)
}

/// The packs a gc in `mode` combines: every pack in a full gc (also a
/// single one when the views are missing or older than the packs), the
/// geometric rollup's in a geometric one.
fn packs_to_combine(m0: &Manifest, mode: GcMode) -> Vec<&PackEntry> {
    match mode {
        GcMode::Full if m0.packs.len() > 1 || views_stale(m0) => m0.packs.iter().collect(),
        GcMode::Full => Vec::new(),
        GcMode::Geometric => geometric_rollup(&m0.packs).combine,
    }
}

/// Where a compaction works: the remote, and the caller's temporary
/// directory and environment for the scratch repository.
struct Scratch<'a> {
    store: &'a S3Store,
    url: &'a RemoteUrl,
    /// An encrypted remote's key.
    key: Option<&'a Arc<RemoteKey>>,
    tmp_root: &'a Path,
    env: &'a HashMap<String, String>,
}

impl Scratch<'_> {
    /// Combines `combine` into one pack (with new views in a full gc),
    /// uploads it and swaps the pack list with a conditional write on
    /// `etag0`. The manifest written, or None when the remote changed
    /// meanwhile (`report.raced`: the new pack stays unreferenced and a
    /// later gc deletes it after the grace period).
    async fn compact(
        &self,
        mode: GcMode,
        m0: &Manifest,
        etag0: String,
        combine: &[&PackEntry],
        report: &mut GcReport,
    ) -> Result<Option<Manifest>, StorageError> {
        let (store, url) = (self.store, self.url);
        let dir = tempfile::Builder::new().prefix("gc-").tempdir_in(self.tmp_root)?;
        let (git, local_names) = scratch_from_packs(store, url, self.key, combine, dir.path(), self.env).await?;
        let entry = keyed(combined_pack(&git, dir.path(), mode, m0, combine, &local_names).await?, self.key);
        let name = entry.name.clone();
        upload_pack_of(store, url, self.key, dir.path(), &entry).await?;
        let views = self.views_after(&git, dir.path(), mode, m0, combine, &name).await?;
        report.views = views.clone();
        let next = replaced_packs(m0, combine, &entry, views, unix_now());
        let opts = PutOptions { condition: WriteCondition::IfMatch(etag0), ..Default::default() };
        manifest::forget_held(store, url);
        match store.put_bytes(&manifest::manifest_key(url), manifest::encode(store, url, &next)?, opts).await {
            Ok(_) => {
                manifest::note_written(store, url, &store.location(&manifest::manifest_key(url)), next.serial).await;
                tracing::info!(
                    pack = %name,
                    objects = entry.objects,
                    bytes = entry.size.saturating_add(entry.idx_size),
                    combined = combine.len(),
                    kept = next.packs.len() - 1,
                    serial = next.serial,
                    "packs combined"
                );
                report.combined = Some(entry);
                Ok(Some(next))
            }
            Err(e) if e.is_precondition_failed() || e.is_not_found() => {
                // Someone pushed meanwhile: the combined pack stays unreferenced
                // (a later gc deletes it after the grace period).
                tracing::info!(pack = %name, "the manifest changed while combining; nothing replaced");
                report.raced = true;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The views after combining into the pack `name`. Full: new views of
    /// the new pack, built and uploaded (the scratch repository holds every
    /// object). Geometric: the old views, which also cover the combined pack
    /// when they covered all it combined.
    async fn views_after(
        &self,
        git: &Git,
        dir: &Path,
        mode: GcMode,
        m0: &Manifest,
        combine: &[&PackEntry],
        name: &str,
    ) -> Result<Option<manifest::Views>, StorageError> {
        match mode {
            GcMode::Full => {
                let v = views::build(git, dir, &m0.refs, m0.head.as_ref(), [name.to_string()].into(), |out, tips| {
                    let (d, key) = (dir.to_path_buf(), self.key.cloned());
                    async move { written_pack(&d, &out, tips).await.map(|p| keyed(p, key.as_ref())) }
                })
                .await?;
                for p in v.packs() {
                    upload_pack_of(self.store, self.url, self.key, dir, p).await?;
                }
                Ok(Some(v))
            }
            GcMode::Geometric => Ok(m0.views.clone().map(|v| covering_combined(v, combine, name))),
        }
    }
}

/// The views `v` after a geometric gc combined `combine` into pack `name`:
/// it is covered when all it combined was. By the views' own `covers` when
/// those covered all of them (what a reader that does not know increments
/// reads), else by the last increment's: a reader of the increments reads
/// them all.
fn covering_combined(mut v: manifest::Views, combine: &[&PackEntry], name: &str) -> manifest::Views {
    if combine.iter().all(|p| v.covers.contains(&p.name)) {
        v.covers.insert(name.to_string());
    } else if combine.iter().all(|p| v.covers_pack(&p.name)) {
        if let Some(last) = v.increments.last_mut() {
            last.covers.insert(name.to_string());
        }
    }
    v
}

/// The one pack a compaction writes in the scratch repository: full, one
/// pack of what the refs reach; geometric, one pack of exactly the rolled-up
/// packs' objects (checked to hold at least as many as the largest of them).
async fn combined_pack(
    git: &Git,
    dir: &Path,
    mode: GcMode,
    m0: &Manifest,
    combine: &[&PackEntry],
    local_names: &[String],
) -> Result<PackEntry, StorageError> {
    match mode {
        GcMode::Full => pack_of(git, dir, &m0.refs.values().cloned().collect()).await,
        GcMode::Geometric => {
            let entry = pack_of_packs(git, dir, local_names, combined_tips(combine)).await?;
            let largest = combine.iter().map(|p| p.objects).max().unwrap_or(0);
            if entry.objects < largest {
                return Err(StorageError::Corrupt(format!(
                    "git pack-objects --stdin-packs wrote {} objects, fewer than the {largest} of one of the packs it combined",
                    entry.objects
                )));
            }
            Ok(entry)
        }
    }
}

/// The manifest after a compaction: `m0` with the packs of `combine`
/// replaced by `entry`, the replaced packs and replaced views retired
/// (`since` = `now`), and `views`.
fn replaced_packs(m0: &Manifest, combine: &[&PackEntry], entry: &PackEntry, views: Option<manifest::Views>, now: u64) -> Manifest {
    let name = &entry.name;
    let replaced: BTreeSet<&str> = combine.iter().map(|p| p.name.as_str()).collect();
    let mut next = m0.clone();
    next.serial += 1;
    for p in combine {
        if p.name != *name && !next.retired.iter().any(|r| r.name == p.name) {
            next.retired.push(RetiredPack { name: p.name.clone(), since: now });
        }
    }
    // Views replaced by new ones retire like packs.
    let new_view_names: BTreeSet<String> = views.iter().flat_map(|v| v.packs()).map(|p| p.name.clone()).collect();
    for p in m0.views.iter().flat_map(|v| v.packs()) {
        if !new_view_names.contains(&p.name) && p.name != *name && !next.retired.iter().any(|r| r.name == p.name) {
            next.retired.push(RetiredPack { name: p.name.clone(), since: now });
        }
    }
    next.views = views;
    next.retired.retain(|r| r.name != *name && !new_view_names.contains(&r.name));
    next.packs =
        m0.packs.iter().filter(|p| !replaced.contains(p.name.as_str()) && p.name != *name).cloned().chain(std::iter::once(entry.clone())).collect();
    next
}

/// Deletions: retired packs past their grace (dropped from the manifest
/// first), then packs no manifest names that are older than the grace.
/// A dry run only reports them.
async fn delete_old_packs(
    store: &S3Store,
    url: &RemoteUrl,
    key: Option<&RemoteKey>,
    mut current: Manifest,
    grace: Duration,
    dry_run: bool,
    report: &mut GcReport,
) -> Result<(), StorageError> {
    let now = unix_now();
    let expired: BTreeSet<String> =
        current.retired.iter().filter(|r| now.saturating_sub(r.since) >= grace.as_secs()).map(|r| r.name.clone()).collect();
    if !expired.is_empty() && !dry_run {
        current = update_manifest(store, url, |m| {
            let before = m.retired.len();
            m.retired.retain(|r| !expired.contains(&r.name));
            Ok(m.retired.len() != before)
        })
        .await?;
    }
    let listed = current.referenced_pack_names();
    let names = object_names(key, &listed, &expired);
    let dir = manifest::packs_dir(url);
    for o in store.list(&dir).await? {
        let Some(leaf) = o.key.strip_prefix(&dir) else { continue };
        let name = match names.get(leaf) {
            Some(n) => n.as_str(),
            // An encrypted remote's object no manifest names (a name only
            // the key tells, or a plaintext one a push that raced
            // `git s3 migrate --encrypt-to` left): unreferenced.
            None if key.is_some() => "",
            None => match leaf
                .strip_prefix("pack-")
                .and_then(|n| n.strip_suffix(".pack").or_else(|| n.strip_suffix(".idx")).or_else(|| n.strip_suffix(".map")))
            {
                Some(n) => n,
                None => continue,
            },
        };
        if listed.contains(name) {
            if !current.live_packs().any(|p| p.name == name) {
                report.waiting.push(o.key.clone());
            }
            continue;
        }
        let old_enough = expired.contains(name) || o.age() >= grace;
        if !old_enough {
            report.waiting.push(o.key.clone());
            continue;
        }
        if !dry_run {
            store.delete(&o.key).await?;
        }
        report.deleted.push(o.key.clone());
    }
    if !report.deleted.is_empty() {
        tracing::info!(deleted = report.deleted.len(), waiting = report.waiting.len(), "old packs deleted");
    }
    Ok(())
}
/// The object names (leaves under `packs/`) of the packs in `listed` and
/// `expired`, with their pack names: `pack-<name>.pack` / `.idx` / `.map`, or on an
/// encrypted remote their HMAC'd names, which only the key can tell.
fn object_names(key: Option<&RemoteKey>, listed: &BTreeSet<&str>, expired: &BTreeSet<String>) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for name in listed.iter().copied().chain(expired.iter().map(String::as_str)) {
        for ext in ["pack", "idx", "map"] {
            let plain = format!("pack-{name}.{ext}");
            match key {
                // Under every generation of the key: a pack may predate a rotation.
                Some(k) => {
                    for g in k.generations() {
                        names.insert(g.object_name(&plain), name.to_string());
                    }
                }
                None => {
                    names.insert(plain, name.to_string());
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_the_plain_or_hmac_names_of_listed_and_expired_packs() {
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        let listed: BTreeSet<&str> = [a.as_str()].into();
        let expired: BTreeSet<String> = [b.clone()].into();
        let plain = object_names(None, &listed, &expired);
        assert_eq!(plain.len(), 6, "a .pack, an .idx and an object map each");
        assert_eq!(plain.get(&format!("pack-{a}.idx")), Some(&a));
        let k = RemoteKey::generate();
        let hidden = object_names(Some(&k), &listed, &expired);
        assert_eq!(hidden.len(), 6);
        assert_eq!(hidden.get(&k.object_name(&format!("pack-{b}.pack"))), Some(&b));
        assert_eq!(hidden.get(&k.object_name(&format!("pack-{a}.map"))), Some(&a), "an encrypted map is its pack's, not unreferenced");
        assert!(hidden.keys().all(|leaf| leaf.len() == 64 && !leaf.contains(&a) && !leaf.contains(&b)));
    }

    fn pack(n: u8, size: u64) -> PackEntry {
        PackEntry { name: format!("{:02x}", n).repeat(20), size, idx_size: 0, objects: 1, tips: vec![], created: 0, key: None, map_size: 0 }
    }

    #[test]
    fn a_geometric_gc_covers_its_pack_where_the_combined_ones_were_covered() {
        let (a, b, c, d) = (pack(1, 10), pack(2, 10), pack(3, 10), pack(4, 10));
        let inc = manifest::ViewsIncrement { covers: [c.name.clone()].into(), skeleton: Some(pack(6, 1)), tips: None, created: 0 };
        let v = manifest::Views {
            covers: [a.name.clone(), b.name.clone()].into(),
            skeleton: Some(pack(5, 1)),
            tips: None,
            created: 0,
            increments: vec![inc],
        };
        let new = pack(9, 20).name;
        let both_base = covering_combined(v.clone(), &[&a, &b], &new);
        assert!(both_base.covers.contains(&new) && !both_base.increments[0].covers.contains(&new), "older readers see it covered too");
        let with_increment = covering_combined(v.clone(), &[&a, &c], &new);
        assert!(!with_increment.covers.contains(&new) && with_increment.increments[0].covers.contains(&new));
        let with_uncovered = covering_combined(v.clone(), &[&a, &d], &new);
        assert!(!with_uncovered.covers_pack(&new), "a pack the views lack stays uncovered");
    }

    #[test]
    fn replaced_packs_swaps_the_combined_for_the_new_and_retires_them_and_old_views() {
        let (a, b, c, new) = (pack(1, 10), pack(2, 20), pack(3, 400), pack(9, 30));
        let (old_skeleton, new_skeleton) = (pack(4, 5), pack(5, 6));
        let mut m0 = Manifest { serial: 7, packs: vec![a.clone(), b.clone(), c.clone()], ..Default::default() };
        m0.views =
            Some(manifest::Views { covers: BTreeSet::new(), skeleton: Some(old_skeleton.clone()), tips: None, created: 0, increments: vec![] });
        m0.retired.push(RetiredPack { name: a.name.clone(), since: 1 });
        let views =
            Some(manifest::Views { covers: BTreeSet::new(), skeleton: Some(new_skeleton.clone()), tips: None, created: 0, increments: vec![] });
        let next = replaced_packs(&m0, &[&a, &b], &new, views.clone(), 100);
        assert_eq!(next.serial, 8);
        assert_eq!(next.packs, vec![c, new]);
        assert_eq!(next.views, views);
        // `a` was retired already (its `since` stays); `b` and the old skeleton retire now.
        let retired: Vec<(&str, u64)> = next.retired.iter().map(|r| (r.name.as_str(), r.since)).collect();
        assert_eq!(retired, vec![(a.name.as_str(), 1), (b.name.as_str(), 100), (old_skeleton.name.as_str(), 100)]);
    }

    #[test]
    fn replaced_packs_never_retires_the_pack_it_writes() {
        // A full gc of one pack with stale views writes the same pack again.
        let a = pack(1, 10);
        let m0 = Manifest { packs: vec![a.clone()], retired: vec![RetiredPack { name: a.name.clone(), since: 1 }], ..Default::default() };
        let next = replaced_packs(&m0, &[&a], &a, None, 100);
        assert_eq!(next.packs, vec![a]);
        assert!(next.retired.is_empty(), "{:?}", next.retired);
    }

    /// (sizes combined, sizes kept) for packs of `sizes`.
    fn split(sizes: &[u64]) -> (Vec<u64>, Vec<u64>) {
        let packs: Vec<PackEntry> = sizes.iter().enumerate().map(|(i, s)| pack(i as u8, *s)).collect();
        let r = geometric_rollup(&packs);
        assert_eq!(r.combine.len() + r.keep.len(), packs.len(), "every pack is combined or kept");
        (r.combine.iter().map(|p| p.size).collect(), r.keep.iter().map(|p| p.size).collect())
    }

    #[test]
    fn geometric_rollup_combines_small_packs_and_keeps_big_ones() {
        // a big base and small pushes: the small ones are rolled up, the base stays
        assert_eq!(split(&[2_000_000, 300, 200, 250, 400]), (vec![200, 250, 300, 400], vec![2_000_000]));
        // input order does not matter
        assert_eq!(split(&[400, 250, 2_000_000, 200, 300]), (vec![200, 250, 300, 400], vec![2_000_000]));
        // equal sizes: all combined
        assert_eq!(split(&[5, 5, 5]), (vec![5, 5, 5], vec![]));
        // rolling up continues while the next pack is below 2× the total
        assert_eq!(split(&[1, 1, 3, 9, 100]), (vec![1, 1, 3, 9], vec![100]));
    }

    #[test]
    fn geometric_rollup_leaves_a_progression_alone() {
        assert_eq!(split(&[]), (vec![], vec![]));
        assert_eq!(split(&[7]), (vec![], vec![7]));
        // each pack at least 2× the sum of all smaller ones
        assert_eq!(split(&[1, 2, 6, 18, 54]), (vec![], vec![1, 2, 6, 18, 54]));
        assert_eq!(split(&[10, 20]), (vec![], vec![10, 20]));
        // exactly 2× is a progression; just below is not
        assert_eq!(split(&[10, 19]), (vec![10, 19], vec![]));
    }

    #[test]
    fn geometric_rollup_needs_two_packs_to_combine() {
        // one small pack below big ones: nothing to combine it with
        assert_eq!(split(&[3, 100, 1000]), (vec![], vec![3, 100, 1000]));
        assert_eq!(split(&[3, 3]), (vec![3, 3], vec![]));
    }

    #[test]
    fn geometric_rollup_restores_the_progression_above_the_split() {
        // 100 ≥ 2×10, but 150 < 2×(10+100): the split moves above 150
        assert_eq!(split(&[10, 100, 150, 10_000]), (vec![10, 100, 150], vec![10_000]));
        // adjacent packs in progression but not against the cumulative sum
        // (40 ≥ 2×20, but 40 < 2×(5+10+20)): rolled up too
        assert_eq!(split(&[5, 10, 20, 40, 1000]), (vec![5, 10, 20, 40], vec![1000]));
        // after the split every kept pack is ≥ 2× the sum of all smaller ones
        let sizes = [3, 8, 8, 30, 31, 200, 500, 5000, 7000, 100_000];
        let (combined, kept) = split(&sizes);
        let mut below: u64 = combined.iter().sum();
        for k in kept {
            assert!(k >= 2 * below, "{k} kept above {below}");
            below += k;
        }
    }

    #[test]
    fn geometric_rollup_does_not_overflow() {
        let half = u64::MAX / 2;
        assert_eq!(split(&[half, half, u64::MAX]), (vec![half, half], vec![u64::MAX]));
        assert_eq!(split(&[1, 1, u64::MAX, u64::MAX]), (vec![1, 1], vec![u64::MAX, u64::MAX]));
    }

    #[test]
    fn combined_tips_are_the_union_unless_a_pack_has_none() {
        let mut a = pack(1, 1);
        a.tips = vec!["b".repeat(40), "a".repeat(40)];
        let mut b = pack(2, 1);
        b.tips = vec!["a".repeat(40), "c".repeat(40)];
        assert_eq!(combined_tips(&[&a, &b]), vec!["a".repeat(40), "b".repeat(40), "c".repeat(40)]);
        let c = pack(3, 1);
        assert!(combined_tips(&[&a, &c]).is_empty());
    }
}
