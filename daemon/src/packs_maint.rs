//! Maintenance of a packs-format remote: manifest edits (protect,
//! unprotect, delete a ref) and compaction (`git s3 gc`).
//!
//! Compaction downloads every pack into a scratch bare repository, packs
//! what the manifest's refs reach into one pack, uploads it, and swaps the
//! pack list in one conditional manifest write against the manifest it
//! started from (a remote that changed meanwhile is left alone: run gc
//! again). Replaced packs are listed as `retired` and deleted by a later gc
//! once their grace period is over; packs no manifest names (a push that
//! died before its manifest write) are deleted once older than the grace
//! period.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use futures::stream::{StreamExt, TryStreamExt};

use crate::git::Git;
use crate::manifest::{self, Manifest, PackEntry, RetiredPack};
use crate::packs_format::{backoff, index_pack, pack_object_count, read_manifest, run_with_stdin, unix_now, MAX_ATTEMPTS};
use crate::remote_url::RemoteUrl;
use crate::s3_store::{PutOptions, S3Store, WriteCondition};
use crate::storage::StorageError;

/// Applies `edit` to the manifest with a conditional write, re-reading and
/// re-applying on a lost race. `edit` returns whether it changed anything.
/// Returns the manifest as written (or as found, when unchanged).
pub async fn update_manifest<F>(store: &S3Store, url: &RemoteUrl, mut edit: F) -> Result<Manifest, StorageError>
where
    F: FnMut(&mut Manifest) -> Result<bool, StorageError>,
{
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(backoff(attempt)).await;
        }
        let Some((mut m, etag)) = read_manifest(store, url).await? else {
            return Err(StorageError::Format(format!("{url} has no packs manifest")));
        };
        if !edit(&mut m)? {
            return Ok(m);
        }
        m.serial += 1;
        let opts = PutOptions { condition: WriteCondition::IfMatch(etag), ..Default::default() };
        match store.put_bytes(&manifest::manifest_key(url), m.to_bytes(), opts).await {
            Ok(_) => return Ok(m),
            Err(e) if e.is_precondition_failed() || e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StorageError::Format(format!("{url}: the manifest kept changing; try again")))
}

/// What a gc did.
#[derive(Debug, Default)]
pub struct GcReport {
    pub packs_before: usize,
    pub bytes_before: u64,
    /// The combined pack (None: nothing to combine).
    pub combined: Option<PackEntry>,
    /// Keys deleted (retired packs past their grace, unreferenced old packs).
    pub deleted: Vec<String>,
    /// Packs kept for now (retired or unreferenced, within their grace period).
    pub waiting: Vec<String>,
    /// The remote changed while combining: nothing was replaced.
    pub raced: bool,
}

/// A git environment for a scratch bare repository at `dir`.
fn scratch_git(dir: &Path, env: &HashMap<String, String>) -> Git {
    let mut env: HashMap<String, String> = env.iter().filter(|(k, _)| !k.starts_with("GIT_")).map(|(k, v)| (k.clone(), v.clone())).collect();
    env.insert("GIT_DIR".into(), dir.to_string_lossy().to_string());
    Git::new(dir, env)
}

/// Compacts `url`'s packs; deletes retired/unreferenced packs older than `grace`.
pub async fn gc(
    store: &S3Store,
    url: &RemoteUrl,
    tmp_root: &Path,
    env: &HashMap<String, String>,
    grace: Duration,
    dry_run: bool,
) -> Result<GcReport, StorageError> {
    let Some((m0, etag0)) = read_manifest(store, url).await? else {
        return Err(StorageError::Format(format!("{url} has no packs manifest (not a packs remote)")));
    };
    let mut report = GcReport { packs_before: m0.packs.len(), bytes_before: m0.pack_bytes(), ..Default::default() };
    let mut current = m0.clone();
    if m0.packs.len() > 1 && !dry_run {
        let dir = tempfile::Builder::new().prefix("gc-").tempdir_in(tmp_root)?;
        let repo = dir.path().join("repo.git");
        std::fs::create_dir_all(&repo)?;
        let git = scratch_git(&repo, env);
        git.run(&["init", "-q", "--bare"]).await?;
        // Download and index every pack (streamed through files).
        let downloads: Vec<_> = m0
            .packs
            .iter()
            .map(|p| {
                let git = git.clone();
                let dir = dir.path().to_path_buf();
                async move {
                    let file = tempfile::Builder::new().prefix("dl-").tempfile_in(&dir)?;
                    let key = manifest::pack_key(url, &p.name);
                    store.get_to_file(&key, file.path(), |_| {}).await?;
                    index_pack(&git, file.path()).await?;
                    Ok::<_, StorageError>(())
                }
            })
            .collect();
        futures::stream::iter(downloads).buffer_unordered(4).try_collect::<Vec<()>>().await?;
        // One pack of what the refs reach.
        let tips: BTreeSet<&String> = m0.refs.values().collect();
        let input: String = tips.iter().map(|t| format!("{t}\n")).collect();
        let base = dir.path().join("out");
        let name = run_with_stdin(&git, &["pack-objects", "--revs", "--quiet", "--delta-base-offset", &base.to_string_lossy()], input.into_bytes())
            .await?
            .trim()
            .to_string();
        if !manifest::is_pack_name(&name) {
            return Err(StorageError::Corrupt(format!("git pack-objects printed an unexpected pack name {name:?}")));
        }
        let pack = dir.path().join(format!("out-{name}.pack"));
        let idx = dir.path().join(format!("out-{name}.idx"));
        let entry = PackEntry {
            name: name.clone(),
            size: tokio::fs::metadata(&pack).await?.len(),
            idx_size: tokio::fs::metadata(&idx).await?.len(),
            objects: pack_object_count(&pack).await?,
            tips: tips.iter().map(|t| t.to_string()).collect(),
            created: unix_now(),
        };
        let (pack_key, idx_key) = (manifest::pack_key(url, &name), manifest::idx_key(url, &name));
        tokio::try_join!(
            store.put_file(&pack_key, &pack, PutOptions::default(), |_| {}),
            store.put_file(&idx_key, &idx, PutOptions::default(), |_| {}),
        )?;
        let now = unix_now();
        let mut next = m0.clone();
        next.serial += 1;
        for p in &m0.packs {
            if p.name != name && !next.retired.iter().any(|r| r.name == p.name) {
                next.retired.push(RetiredPack { name: p.name.clone(), since: now });
            }
        }
        next.retired.retain(|r| r.name != name);
        next.packs = vec![entry.clone()];
        let opts = PutOptions { condition: WriteCondition::IfMatch(etag0), ..Default::default() };
        match store.put_bytes(&manifest::manifest_key(url), next.to_bytes(), opts).await {
            Ok(_) => {
                report.combined = Some(entry);
                current = next;
            }
            Err(e) if e.is_precondition_failed() || e.is_not_found() => {
                // Someone pushed meanwhile: the combined pack stays unreferenced
                // (a later gc deletes it after the grace period).
                report.raced = true;
                return Ok(report);
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Deletions: retired packs past their grace (dropped from the manifest
    // first), then packs no manifest names that are older than the grace.
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
    let listed: BTreeSet<&str> = current.packs.iter().map(|p| p.name.as_str()).chain(current.retired.iter().map(|r| r.name.as_str())).collect();
    let dir = manifest::packs_dir(url);
    for o in store.list(&dir).await? {
        let Some(leaf) = o.key.strip_prefix(&dir) else { continue };
        let Some(name) = leaf.strip_prefix("pack-").and_then(|n| n.strip_suffix(".pack").or_else(|| n.strip_suffix(".idx"))) else {
            continue;
        };
        if listed.contains(name) {
            if !current.packs.iter().any(|p| p.name == name) {
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
    Ok(report)
}
