//! Doctor's look at a versioned bucket: the noncurrent versions under the
//! prefix (replaced bundles, manifests, HEADs, locks of 0.4.2 or of pushes
//! before git-s3 deleted its own) and the delete markers left over, which
//! S3 keeps and bills until a lifecycle rule removes them. Reported; with
//! `--prune-versions`, deleted by version id (a current version is never
//! touched).

use std::collections::{BTreeMap, HashSet};

use serde_json::json;

use super::common::{DoctorArgs, Report};
use crate::cli::remote::Remote;
use crate::cli::Ctx;
use crate::s3::store::versions::ObjectVersion;
use crate::storage::bundles::locks::LOCK_NAME;

/// What the listing holds that pruning would delete: noncurrent versions
/// and markers, and current delete markers with nothing else left under
/// their key (they hide nothing).
fn prunable(versions: &[ObjectVersion]) -> (Vec<&ObjectVersion>, Vec<&ObjectVersion>) {
    let noncurrent: Vec<_> = versions.iter().filter(|v| !v.is_latest).collect();
    let expired_markers = versions
        .iter()
        .filter(|v| v.is_latest && v.delete_marker)
        .filter(|m| versions.iter().all(|v| v.key != m.key || v.version_id == m.version_id || !v.is_latest))
        .collect();
    (noncurrent, expired_markers)
}

fn kind_of(key: &str) -> &'static str {
    if key.ends_with(LOCK_NAME) {
        "locks"
    } else if key.ends_with(".bundle") {
        "bundles"
    } else if key.ends_with(".pack") || key.ends_with(".idx") {
        "packs"
    } else {
        "other objects"
    }
}

pub(super) async fn noncurrent_versions(ctx: &Ctx, remote: &Remote, args: &DoctorArgs, rep: &mut Report) {
    rep.line(ctx, "");
    rep.line(ctx, "Scanning for noncurrent object versions (versioned buckets)...");
    let versions = match remote.store.list_versions(&remote.url.key("")).await {
        Ok(v) => v,
        Err(e) => {
            rep.line(ctx, format!("Could not list object versions: {e}"));
            rep.advice.push(json!({"kind": "versions_unchecked", "error": e.to_string()}));
            return;
        }
    };
    let (noncurrent, markers) = prunable(&versions);
    if noncurrent.is_empty() && markers.is_empty() {
        rep.line(ctx, "No noncurrent versions found.");
        return;
    }
    let bytes: u64 = noncurrent.iter().map(|v| v.size).sum();
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &noncurrent {
        *by_kind.entry(kind_of(&v.key)).or_default() += 1;
    }
    let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{n} of {k}")).collect();
    rep.line(
        ctx,
        format!(
            "Found {} noncurrent versions ({bytes} bytes: {}) and {} delete markers that hide nothing",
            noncurrent.len(),
            if kinds.is_empty() { "none".to_string() } else { kinds.join(", ") },
            markers.len()
        ),
    );
    rep.advice.push(json!({"kind": "noncurrent_versions", "versions": noncurrent.len(), "bytes": bytes,
        "delete_markers": markers.len(), "by_kind": by_kind}));
    if !args.prune_versions {
        rep.line(ctx, "Run with --prune-versions to delete them (current versions are kept), or add a lifecycle rule (NoncurrentVersionExpiration).");
        return;
    }
    if args.dry_run {
        rep.line(ctx, "(dry run: not deleting them)");
        return;
    }
    let (mut deleted, mut failed_keys) = (0usize, HashSet::new());
    for v in &noncurrent {
        match remote.store.delete_version(&v.key, &v.version_id).await {
            Ok(()) => deleted += 1,
            Err(e) => {
                failed_keys.insert(v.key.clone());
                rep.errors.push(format!("{} (version {}): {e}", v.key, v.version_id));
                rep.line(ctx, format!("Failed to delete {} version {}: {e}", v.key, v.version_id));
            }
        }
    }
    // A marker goes only once nothing it could uncover is left.
    let mut markers_deleted = 0usize;
    for m in markers.iter().filter(|m| !failed_keys.contains(&m.key)) {
        match remote.store.delete_version(&m.key, &m.version_id).await {
            Ok(()) => markers_deleted += 1,
            Err(e) => {
                rep.errors.push(format!("{} (delete marker {}): {e}", m.key, m.version_id));
                rep.line(ctx, format!("Failed to delete the delete marker of {}: {e}", m.key));
            }
        }
    }
    rep.line(ctx, format!("Deleted {deleted} noncurrent versions and {markers_deleted} delete markers"));
    rep.actions.push(json!({"action": "pruned_versions", "versions": deleted, "delete_markers": markers_deleted}));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(key: &str, id: &str, is_latest: bool, delete_marker: bool) -> ObjectVersion {
        ObjectVersion { key: key.into(), version_id: id.into(), is_latest, delete_marker, size: 1 }
    }

    #[test]
    fn current_versions_are_never_prunable() {
        let versions = vec![
            v("p/HEAD", "1", true, false),
            v("p/HEAD", "0", false, false),
            v("p/refs/heads/main/LOCK#.lock", "2", true, true),
            v("p/refs/heads/main/LOCK#.lock", "1", false, false),
            v("p/refs/heads/x/a.bundle", "3", true, true),
            v("p/refs/heads/x/a.bundle", "4", false, true),
        ];
        let (noncurrent, markers) = prunable(&versions);
        let ids: Vec<_> = noncurrent.iter().map(|v| (v.key.as_str(), v.version_id.as_str())).collect();
        assert_eq!(ids, [("p/HEAD", "0"), ("p/refs/heads/main/LOCK#.lock", "1"), ("p/refs/heads/x/a.bundle", "4")]);
        assert_eq!(markers.len(), 2);
        assert!(noncurrent.iter().chain(&markers).all(|v| !v.is_latest || v.delete_marker));
        assert_eq!(kind_of("p/refs/heads/main/LOCK#.lock"), "locks");
    }
}
