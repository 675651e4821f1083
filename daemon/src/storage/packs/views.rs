//! The packs format's views (`manifest::Views`): a skeleton pack (every
//! commit, tree and annotated tag, no blobs) and a tips pack (each branch
//! tip's full tree), written by `git s3 gc` from the repository it has
//! gathered, or after a push from the pusher's repository (whole, or
//! extended by an increment of about the push's size), and read by shallow
//! and partial clones instead of every pack.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use futures::stream::{StreamExt, TryStreamExt};

use crate::local::git::Git;
use crate::s3::store::S3Store;
use crate::s3::url::RemoteUrl;
use crate::storage::crypt::RemoteKey;
use crate::storage::packs::git_ops::SCRATCH_PACK_CONFIG;
use crate::storage::packs::manifest::{unix_now, update_manifest, Manifest, RetiredPack};
use crate::storage::packs::manifest::{PackEntry, Views, ViewsIncrement};
use crate::storage::packs::scratch::{keyed, upload_pack_of, written_pack};
use crate::storage::packs::storage::PackStorage;
use crate::storage::{OpContext, StorageError};

/// A push that leaves at least this many bytes of packs outside the views
/// (`GIT_S3_VIEWS_AUTO_BYTES`, in the caller's environment; 0 turns it off)
/// has the daemon bring the views up to date in the background (see
/// [`PackStorage::maybe_refresh_views_in_background`]).
pub(crate) const DEFAULT_VIEWS_AUTO_BYTES: u64 = 1 << 20;

/// Increments the views take (each the size of what was pushed) before the
/// next refresh writes them whole again, as one skeleton and one tips pack.
pub(crate) const MAX_INCREMENTS: usize = 8;

/// Whether the views of `m` (a manifest a push has just written) are worth
/// bringing up to date: enough bytes pushed since (`GIT_S3_VIEWS_AUTO_BYTES`)
/// that a shallow or partial clone would read them on top of the views.
/// An increment costs about what was pushed; so does a first write of the
/// views (the whole repository was pushed). Once the views have
/// `MAX_INCREMENTS` increments, the next refresh rewrites them whole, which
/// costs their size: it waits until the packs outside them come to an
/// eighth of that (readers read those beside the views meanwhile).
pub(crate) fn refresh_due(m: &Manifest, env: &HashMap<String, String>) -> bool {
    let limit = env.get("GIT_S3_VIEWS_AUTO_BYTES").and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(DEFAULT_VIEWS_AUTO_BYTES);
    if limit == 0 || m.refs.is_empty() || m.frozen.is_some() {
        return false;
    }
    let uncovered = m.uncovered().fold(0u64, |t, p| t.saturating_add(p.size));
    if uncovered == 0 || uncovered < limit {
        return false;
    }
    match &m.views {
        Some(v) if v.increments.len() >= MAX_INCREMENTS => uncovered >= v.packs().fold(0u64, |t, p| t.saturating_add(p.size)) / 8,
        _ => true,
    }
}

/// The packs of `base` that views made from `git` (the pusher's repository)
/// would cover: those whose tips the refs all reach (a pack of a ref
/// deleted or moved back since holds objects they lack). None when `git`
/// cannot make views: shallow, partial, or lacking a ref's tip.
async fn coverable_packs(git: &Git, base: &Manifest) -> Result<Option<BTreeSet<String>>, StorageError> {
    if git.is_shallow().await || git.config_get("extensions.partialclone").await.is_some() {
        tracing::debug!("the repository is shallow or partial: no views from it");
        return Ok(None);
    }
    let tips: BTreeSet<String> = base.refs.values().cloned().collect();
    let pack_tips: BTreeSet<String> = base.packs.iter().flat_map(|p| p.tips.iter().cloned()).collect();
    let wanted: Vec<String> = tips.iter().chain(pack_tips.iter()).cloned().collect::<BTreeSet<_>>().into_iter().collect();
    let present = git.present_objects(&wanted).await?;
    if let Some(missing) = tips.iter().find(|t| !present.contains(*t)) {
        tracing::debug!(missing, "the repository lacks a ref's tip: no views from it");
        return Ok(None);
    }
    let present_pack_tips: Vec<&String> = pack_tips.iter().filter(|t| present.contains(*t)).collect();
    let unreachable: BTreeSet<String> = if present_pack_tips.is_empty() {
        BTreeSet::new()
    } else {
        let mut args: Vec<&str> = vec!["rev-list", "--objects"];
        args.extend(present_pack_tips.iter().map(|t| t.as_str()));
        args.push("--not");
        args.extend(tips.iter().map(String::as_str));
        git.run(&args).await?.lines().filter_map(|l| l.split_whitespace().next()).filter(|o| pack_tips.contains(*o)).map(str::to_string).collect()
    };
    Ok(Some(
        base.packs
            .iter()
            .filter(|p| !p.tips.is_empty() && p.tips.iter().all(|t| present.contains(t) && !unreachable.contains(t)))
            .map(|p| p.name.clone())
            .collect(),
    ))
}

/// Brings the views of `base` (the manifest a push has just written) up to
/// date from `git`, the pusher's repository, when it holds every object the
/// refs reach (otherwise nothing is done, None), and uploads what it wrote
/// (`record` names it in the manifest). Views with room for an increment
/// (`MAX_INCREMENTS`) get one, of about the size of what was pushed since;
/// otherwise (none yet, or as many increments as they take) they are
/// written whole. None also when no pack is left to cover. On an encrypted
/// remote (`key`), the view packs are encrypted to the current remote key
/// under their keyed names, as gc writes them.
pub(crate) async fn build_and_upload(
    store: &S3Store,
    url: &RemoteUrl,
    key: Option<&Arc<RemoteKey>>,
    git: &Git,
    tmp_root: &Path,
    base: &Manifest,
) -> Result<Option<Views>, StorageError> {
    let Some(covers) = coverable_packs(git, base).await? else { return Ok(None) };
    let dir = tempfile::Builder::new().prefix("views-").tempdir_in(tmp_root)?;
    let written = |out: String, tips: Vec<String>| {
        let (d, key) = (dir.path().to_path_buf(), key.cloned());
        async move { written_pack(&d, &out, tips).await.map(|p| keyed(p, key.as_ref())) }
    };
    let made = match base.views.as_ref().filter(|v| v.increments.len() < MAX_INCREMENTS) {
        Some(v) => {
            let covers: BTreeSet<String> = covers.into_iter().filter(|c| !v.covers_pack(c)).collect();
            if covers.is_empty() {
                return Ok(None);
            }
            let inc = build_increment(git, dir.path(), v, &base.refs, base.live_head(), covers, written).await?;
            let mut next = v.clone();
            next.increments.push(inc);
            next
        }
        None => build(git, dir.path(), &base.refs, base.live_head(), covers, written).await?,
    };
    let old: BTreeSet<&str> = base.views.iter().flat_map(|v| v.packs()).map(|p| p.name.as_str()).collect();
    for p in made.packs().filter(|p| !old.contains(p.name.as_str())) {
        upload_pack_of(store, url, key, dir.path(), p).await?;
    }
    Ok(Some(made))
}

/// Records `made` as the views in the manifest with a conditional write
/// (a 412 reads it again and applies this again, keeping what was pushed
/// meanwhile), only if the manifest's views are still `replaced` (those
/// the push saw): another writer's newer views win, and the packs of
/// `made` stay unreferenced until gc deletes them after the grace period,
/// as it does a lost gc's. The views replaced retire like packs. Returns
/// whether `made` was recorded.
pub(crate) async fn record(store: &S3Store, url: &RemoteUrl, replaced: Option<Views>, made: Views) -> Result<bool, StorageError> {
    let mut recorded = false;
    update_manifest(store, url, |m| {
        recorded = false;
        if m.views != replaced {
            return Ok(false);
        }
        let now = unix_now();
        let new_names: BTreeSet<&str> = made.packs().map(|p| p.name.as_str()).collect();
        for p in replaced.iter().flat_map(|v| v.packs()) {
            if !new_names.contains(p.name.as_str()) && !m.retired.iter().any(|r| r.name == p.name) {
                m.retired.push(RetiredPack { name: p.name.clone(), since: now });
            }
        }
        m.retired.retain(|r| !new_names.contains(r.name.as_str()));
        m.views = Some(made.clone());
        recorded = true;
        Ok(true)
    })
    .await?;
    if !recorded {
        tracing::info!("the manifest's views changed meanwhile; the new ones are left to gc");
    }
    Ok(recorded)
}

/// Which views a fetch can be served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ViewKind {
    Skeleton,
    Tips,
}

/// The commits a tips pack is made for: the branch tips, and what HEAD names.
pub(crate) fn tip_commits(refs: &BTreeMap<String, String>, head: Option<&String>) -> BTreeSet<String> {
    refs.iter().filter(|(name, _)| name.starts_with("refs/heads/") || Some(*name) == head).map(|(_, sha)| sha.clone()).collect()
}

/// Writes the views of `refs` from the complete repository `git` into
/// `<dir>/out-<name>.{pack,idx}` (see `scratch::written_pack`). `written` turns
/// what pack-objects printed into the pack's entry.
pub(crate) async fn build<F, Fut>(
    git: &Git,
    dir: &Path,
    refs: &BTreeMap<String, String>,
    head: Option<&String>,
    covers: BTreeSet<String>,
    written: F,
) -> Result<Views, StorageError>
where
    F: Fn(String, Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<PackEntry, StorageError>>,
{
    let base = dir.join("out");
    let base = base.to_string_lossy().into_owned();
    let all: BTreeSet<String> = refs.values().cloned().collect();
    let skeleton = if all.is_empty() {
        None
    } else {
        let input: String = all.iter().map(|t| format!("{t}\n")).collect();
        let args = [&SCRATCH_PACK_CONFIG[..], &["pack-objects", "--revs", "--filter=blob:none", "--quiet", "--delta-base-offset", &base]].concat();
        let out = git.run_with_stdin(&args, input.into_bytes()).await?;
        Some(written(out, all.iter().cloned().collect()).await?)
    };
    let tips = tip_commits(refs, head);
    let tips_pack = if tips.is_empty() {
        None
    } else {
        // Each tip's commit and everything its tree holds (not its history).
        let mut args: Vec<&str> = vec!["rev-list", "--objects", "--no-walk"];
        args.extend(tips.iter().map(String::as_str));
        let objects = git.run(&args).await?;
        let args = [&SCRATCH_PACK_CONFIG[..], &["pack-objects", "--quiet", "--delta-base-offset", &base]].concat();
        let out = git.run_with_stdin(&args, format!("{objects}\n").into_bytes()).await?;
        Some(written(out, tips.iter().cloned().collect()).await?)
    };
    Ok(Views { covers, skeleton, tips: tips_pack, created: unix_now(), increments: vec![] })
}

/// The commits the view packs `packs` were made for.
fn made_for<'a>(packs: impl Iterator<Item = &'a PackEntry>) -> BTreeSet<String> {
    packs.flat_map(|p| p.tips.iter().cloned()).collect()
}

/// An increment of the views `v` for `refs`, from the complete repository
/// `git` (see `ViewsIncrement`): a skeleton pack of the commits and trees
/// (and annotated tags) the refs reach that the commits the skeleton and
/// earlier increments were made for do not, and a tips pack of the objects
/// of the branch tips' trees that no tips pack holds. Commits of the views
/// the repository lacks are left out of the subtraction: the increment is
/// then larger, never short.
async fn build_increment<F, Fut>(
    git: &Git,
    dir: &Path,
    v: &Views,
    refs: &BTreeMap<String, String>,
    head: Option<&String>,
    covers: BTreeSet<String>,
    written: F,
) -> Result<ViewsIncrement, StorageError>
where
    F: Fn(String, Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<PackEntry, StorageError>>,
{
    let old_skeleton = made_for(v.skeleton.iter().chain(v.increments.iter().filter_map(|i| i.skeleton.as_ref())));
    let old_tips = made_for(v.tips.iter().chain(v.increments.iter().filter_map(|i| i.tips.as_ref())));
    let asked: Vec<String> = old_skeleton.union(&old_tips).cloned().collect();
    let present = git.present_objects(&asked).await?;
    let all: BTreeSet<String> = refs.values().cloned().collect();
    let mut args: Vec<&str> = vec!["rev-list", "--objects", "--filter=blob:none"];
    args.extend(all.iter().map(String::as_str));
    args.push("--not");
    args.extend(old_skeleton.iter().filter(|c| present.contains(*c)).map(String::as_str));
    let listed = git.run(&args).await?;
    let skeleton = pack_listed(git, dir, &listed, all.into_iter().collect(), &written).await?;
    let new_tips: Vec<String> = tip_commits(refs, head).into_iter().filter(|t| !old_tips.contains(t)).collect();
    let tips = if new_tips.is_empty() {
        None
    } else {
        let mut args: Vec<&str> = vec!["rev-list", "--objects", "--no-walk"];
        args.extend(new_tips.iter().map(String::as_str));
        let wanted = git.run(&args).await?;
        let had_tips: Vec<&str> = old_tips.iter().filter(|c| present.contains(*c)).map(String::as_str).collect();
        let had =
            if had_tips.is_empty() { String::new() } else { git.run(&[&["rev-list", "--objects", "--no-walk"][..], &had_tips[..]].concat()).await? };
        let had: HashSet<&str> = had.lines().filter_map(|l| l.split_whitespace().next()).collect();
        let listed: String =
            wanted.lines().filter(|l| l.split_whitespace().next().is_some_and(|o| !had.contains(o))).map(|l| format!("{l}\n")).collect();
        pack_listed(git, dir, &listed, new_tips, &written).await?
    };
    Ok(ViewsIncrement { covers, skeleton, tips, created: unix_now() })
}

/// A pack of the objects `listed` (`git rev-list --objects` lines), made
/// for `tips`; None when the list is empty.
async fn pack_listed<F, Fut>(git: &Git, dir: &Path, listed: &str, tips: Vec<String>, written: &F) -> Result<Option<PackEntry>, StorageError>
where
    F: Fn(String, Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<PackEntry, StorageError>>,
{
    if listed.trim().is_empty() {
        return Ok(None);
    }
    let base = dir.join("out");
    let base = base.to_string_lossy().into_owned();
    let args = [&SCRATCH_PACK_CONFIG[..], &["pack-objects", "--quiet", "--delta-base-offset", &base]].concat();
    let out = git.run_with_stdin(&args, format!("{}\n", listed.trim_end()).into_bytes()).await?;
    Ok(Some(written(out, tips).await?))
}

impl PackStorage {
    /// After a push has answered (`next`: the manifest it wrote), writes new
    /// views in the background when they are due (`refresh_due`): never on
    /// the push's critical path.
    pub(super) fn maybe_refresh_views_in_background(&self, ctx: &OpContext, next: &Manifest) {
        if !refresh_due(next, &ctx.env) {
            return;
        }
        let (store, url, base, key) = (self.store.clone(), self.url.clone(), next.clone(), self.key.clone());
        let tmp = ctx.cache.root().join("tmp");
        // Objects only from the repository itself: no lazy fetch, no replacements.
        let mut env = ctx.env.clone();
        env.insert("GIT_NO_LAZY_FETCH".into(), "1".into());
        env.insert("GIT_NO_REPLACE_OBJECTS".into(), "1".into());
        let git = Git::new(ctx.git.cwd(), env);
        #[cfg(feature = "test-hooks")]
        let gate = crate::test_hooks::views_write_gate(&ctx.env);
        // One views refresh per remote at a time: a push meanwhile leaves its
        // pack outside the views, for the next refresh or gc.
        let remote = store.location(&crate::storage::packs::manifest::manifest_key(&url));
        ctx.background.spawn_once("refresh_views", &remote, async move {
            let written = async {
                let Some(made) = build_and_upload(&store, &url, key.as_ref(), &git, &tmp, &base).await? else { return Ok(false) };
                #[cfg(feature = "test-hooks")]
                if let Some(g) = gate {
                    crate::test_hooks::wait_for_gate(&g).await;
                }
                record(&store, &url, base.views.clone(), made).await
            };
            match written.await {
                Ok(true) => tracing::info!(remote = %url, "views written after the push"),
                Ok(false) => tracing::debug!(remote = %url, "no new views"),
                Err(e) => tracing::warn!(remote = %url, error = %e, "views not written (`git s3 gc` writes them)"),
            }
        });
    }

    /// Brings into `ctx`'s repository the views of `kinds` and every pack
    /// they do not cover (those a push added since), skipping what is
    /// there. Returns false, downloading nothing, when the remote has no
    /// such views.
    pub(crate) async fn fetch_views(&self, ctx: &OpContext, kinds: &[ViewKind]) -> Result<bool, StorageError> {
        let m = self.listed_manifest().await?;
        let Some(v) = &m.views else { return Ok(false) };
        let mut wanted: Vec<PackEntry> = Vec::new();
        for k in kinds {
            let of_kind = |skeleton: &Option<PackEntry>, tips: &Option<PackEntry>| match k {
                ViewKind::Skeleton => skeleton.clone(),
                ViewKind::Tips => tips.clone(),
            };
            let Some(p) = of_kind(&v.skeleton, &v.tips) else { return Ok(false) };
            wanted.push(p);
            wanted.extend(v.increments.iter().filter_map(|i| of_kind(&i.skeleton, &i.tips)));
        }
        wanted.extend(m.uncovered().cloned());
        let pack_dir = ctx.git.pack_dir().await?;
        let dir = &pack_dir;
        let indexed = crate::storage::packs::fetch::indexed_packs(dir, wanted.iter().map(|p| p.name.clone()).collect()).await?;
        let missing: Vec<PackEntry> = wanted.into_iter().filter(|p| !indexed.contains(&p.name)).collect();
        tracing::debug!(packs = missing.len(), ?kinds, "views to download");
        let jobs: Vec<_> = missing.iter().map(|p| async move { self.fetch_pack(ctx, p, dir, std::future::ready(true)).await.map(|_| ()) }).collect();
        futures::stream::iter(jobs).buffer_unordered(4).try_collect::<Vec<()>>().await?;
        Ok(true)
    }
}

/// A lazy fetch of this many objects or fewer for each `FEW_FOR_TIPS` objects
/// of the tips view reads them by ranges first (`few_for_the_tips_view`).
const FEW_FOR_TIPS: u64 = 8;

impl PackStorage {
    /// Whether `wants` objects are few beside the tips view (which holds
    /// every file of every branch tip): a sparse checkout's or one old
    /// file's lazy fetch reads them by ranges rather than download the view
    /// whole. A checkout of a whole tree asks for about as many objects as
    /// the view holds, and takes the view.
    pub(crate) async fn few_for_the_tips_view(&self, wants: usize) -> bool {
        let Ok(m) = self.listed_manifest().await else { return false };
        let Some(tips) = m.views.as_ref().and_then(|v| v.tips.as_ref()) else { return false };
        few_for(wants as u64, tips.objects)
    }
}

fn few_for(wants: u64, view_objects: u64) -> bool {
    wants.saturating_mul(FEW_FOR_TIPS) < view_objects
}

/// The views a fetch with these options can be served from, if any: a
/// depth-1 fetch needs the tips (their trees); a blob:none or tree filter
/// the skeleton (the history without blobs); a lazy fetch of objects (what
/// a checkout after a blob:none clone asks) the tips. Anything else (more
/// depth, other filters, history by date or ref) needs the whole remote.
pub(crate) fn kinds_for(opts: &crate::storage::fetch_options::FetchOptions, lazy: bool) -> Option<Vec<ViewKind>> {
    if opts.deepen_since.is_some() || !opts.deepen_not.is_empty() || opts.deepen_relative || opts.refetch {
        return None;
    }
    let filter = opts.filter.as_deref();
    let skeleton_filter = matches!(filter, Some(f) if f == "blob:none" || f.starts_with("tree:"));
    match opts.depth {
        Some(1) if filter.is_none() || skeleton_filter => Some(vec![ViewKind::Tips]),
        Some(_) => None,
        None if lazy => Some(vec![ViewKind::Tips]),
        None if skeleton_filter => Some(vec![ViewKind::Skeleton]),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fetch_options::FetchOptions;

    #[test]
    fn a_few_objects_beside_the_tips_view_are_read_by_ranges_first() {
        assert!(few_for(2, 12_679), "a sparse checkout's two files");
        assert!(!few_for(12_000, 12_679), "a whole tree's checkout");
        assert!(!few_for(1, 8), "a tiny view is cheaper whole");
        assert!(!few_for(u64::MAX, 1));
    }

    #[test]
    fn which_views_serve_which_fetch() {
        let mut o = FetchOptions::default();
        assert_eq!(kinds_for(&o, false), None, "a plain fetch takes the packs");
        assert_eq!(kinds_for(&o, true), Some(vec![ViewKind::Tips]));
        o.depth = Some(1);
        assert_eq!(kinds_for(&o, false), Some(vec![ViewKind::Tips]));
        o.depth = Some(2);
        assert_eq!(kinds_for(&o, false), None);
        o.depth = None;
        o.filter = Some("blob:none".into());
        assert_eq!(kinds_for(&o, false), Some(vec![ViewKind::Skeleton]));
        o.filter = Some("blob:limit=1024".into());
        assert_eq!(kinds_for(&o, false), None);
        o.filter = Some("blob:none".into());
        o.deepen_not.push("v1".into());
        assert_eq!(kinds_for(&o, false), None);
    }

    #[test]
    fn views_are_refreshed_past_the_threshold() {
        let pack = |c: char, size: u64| PackEntry {
            name: c.to_string().repeat(40),
            size,
            idx_size: 1,
            objects: 1,
            tips: vec![],
            created: 1,
            key: None,
            map_size: 0,
        };
        let mut m = Manifest::default();
        m.refs.insert("refs/heads/main".into(), "f".repeat(40));
        m.packs.push(pack('a', 600 << 10));
        let mut env = HashMap::new();
        assert!(!refresh_due(&m, &env), "600 KiB without views: below the default 1 MiB");
        m.packs.push(pack('b', 600 << 10));
        assert!(refresh_due(&m, &env), "1.2 MiB without views");
        env.insert("GIT_S3_VIEWS_AUTO_BYTES".to_string(), "0".to_string());
        assert!(!refresh_due(&m, &env), "0 turns it off");
        env.clear();
        // Views covering `a`, 16 MiB of them: `b` alone is below an eighth of them.
        m.views =
            Some(Views { covers: [m.packs[0].name.clone()].into(), skeleton: Some(pack('c', 16 << 20)), tips: None, created: 1, increments: vec![] });
        assert!(!refresh_due(&m, &env));
        m.packs.push(pack('d', 2 << 20));
        assert!(refresh_due(&m, &env), "2.6 MiB uncovered: over an eighth of 16 MiB");
        // As many increments as the views take: the next refresh writes them
        // whole, once the packs outside them come to an eighth of them.
        let inc = ViewsIncrement { covers: BTreeSet::new(), skeleton: None, tips: None, created: 1 };
        if let Some(v) = m.views.as_mut() {
            v.increments = vec![inc; MAX_INCREMENTS];
        }
        assert!(refresh_due(&m, &env), "2.6 MiB uncovered: over an eighth of 16 MiB");
        m.packs.pop();
        m.packs.push(pack('d', 1 << 20));
        assert!(!refresh_due(&m, &env), "1.6 MiB: an increment would do, but there is no room for one");
        m.frozen = Some("migration".into());
        assert!(!refresh_due(&m, &env), "never while a migration holds the manifest");
    }

    #[test]
    fn tips_are_branches_and_head() {
        let refs: BTreeMap<String, String> = [
            ("refs/heads/main".to_string(), "a".repeat(40)),
            ("refs/heads/dev".to_string(), "b".repeat(40)),
            ("refs/tags/v1".to_string(), "c".repeat(40)),
        ]
        .into();
        assert_eq!(tip_commits(&refs, None).len(), 2);
        assert_eq!(tip_commits(&refs, Some(&"refs/tags/v1".to_string())).len(), 3);
    }
}
