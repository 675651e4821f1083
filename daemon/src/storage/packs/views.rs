//! The packs format's views (`manifest::Views`): a skeleton pack (every
//! commit, tree and annotated tag, no blobs) and a tips pack (each branch
//! tip's full tree), written by `git s3 gc` from the repository it has
//! gathered, and read by shallow and partial clones instead of every pack.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use futures::stream::{StreamExt, TryStreamExt};

use crate::local::git::Git;
use crate::storage::packs::git_ops::{run_with_stdin, SCRATCH_PACK_CONFIG};
use crate::storage::packs::manifest::unix_now;
use crate::storage::packs::manifest::{PackEntry, Views};
use crate::storage::packs::storage::PackStorage;
use crate::storage::{OpContext, StorageError};

/// Which views a fetch can be served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewKind {
    Skeleton,
    Tips,
}

/// The commits a tips pack is made for: the branch tips, and what HEAD names.
pub fn tip_commits(refs: &BTreeMap<String, String>, head: Option<&String>) -> BTreeSet<String> {
    refs.iter().filter(|(name, _)| name.starts_with("refs/heads/") || Some(*name) == head).map(|(_, sha)| sha.clone()).collect()
}

/// Writes the views of `refs` from the complete repository `git` into
/// `<dir>/out-<name>.{pack,idx}` (see `scratch::written_pack`). `written` turns
/// what pack-objects printed into the pack's entry.
pub async fn build<F, Fut>(
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
        let out = run_with_stdin(git, &args, input.into_bytes()).await?;
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
        let out = run_with_stdin(git, &args, format!("{objects}\n").into_bytes()).await?;
        Some(written(out, tips.iter().cloned().collect()).await?)
    };
    Ok(Views { covers, skeleton, tips: tips_pack, created: unix_now() })
}

impl PackStorage {
    /// Brings into `ctx`'s repository the views of `kinds` and every pack
    /// they do not cover (those a push added since), skipping what is
    /// there. Returns false, downloading nothing, when the remote has no
    /// such views.
    pub async fn fetch_views(&self, ctx: &OpContext, kinds: &[ViewKind]) -> Result<bool, StorageError> {
        let m = self.listed_manifest().await?;
        let Some(v) = &m.views else { return Ok(false) };
        let mut wanted: Vec<PackEntry> = Vec::new();
        for k in kinds {
            match (k, &v.skeleton, &v.tips) {
                (ViewKind::Skeleton, Some(p), _) | (ViewKind::Tips, _, Some(p)) => wanted.push(p.clone()),
                _ => return Ok(false),
            }
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

/// The views a fetch with these options can be served from, if any: a
/// depth-1 fetch needs the tips (their trees); a blob:none or tree filter
/// the skeleton (the history without blobs); a lazy fetch of objects (what
/// a checkout after a blob:none clone asks) the tips. Anything else (more
/// depth, other filters, history by date or ref) needs the whole remote.
pub fn kinds_for(opts: &crate::storage::fetch_options::FetchOptions, lazy: bool) -> Option<Vec<ViewKind>> {
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
