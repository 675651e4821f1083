//! The packs-format part of `git s3 status`: the manifest's refs, HEAD,
//! protection and packs.

use serde_json::{json, Value};

use crate::cli::remote::Remote;
use crate::cli::{CliError, Ctx};
use crate::storage::crypt::keyring;
use crate::storage::detect::{mixed_formats_error, scan_refs_dir};
use crate::storage::packs::manifest::read_manifest;
use crate::storage::StorageError;

/// The status document of a packs remote, or None when the prefix has no manifest.
pub(crate) async fn remote_status(ctx: &Ctx, remote: &Remote) -> Result<Option<Value>, CliError> {
    // An encrypted remote (issue 22): opened with the caller's identities.
    let encrypted = remote.open_key(ctx).await?.is_some();
    let Some((m, etag)) = read_manifest(&remote.store, &remote.url).await? else {
        return Ok(None);
    };
    let encryption = if encrypted {
        let fps = keyring::fingerprints(&remote.store, &remote.url).await.map_err(StorageError::from)?.unwrap_or_default();
        json!({"recipients": fps.len(), "fingerprints": fps})
    } else {
        Value::Null
    };
    let refs_dir = scan_refs_dir(&remote.store, &remote.url).await?;
    let mut warnings = Vec::new();
    if !refs_dir.bundle_refs.is_empty() {
        warnings.push(mixed_formats_error(&remote.url, &refs_dir).to_string());
    }
    let protected: Vec<String> =
        m.protected.iter().chain(refs_dir.markers.iter()).cloned().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let refs: Vec<Value> = m.refs.iter().map(|(name, sha)| json!({"name": name, "sha": sha, "protected": protected.contains(name)})).collect();
    let head = match (&m.head, m.live_head()) {
        (Some(h), Some(_)) => json!({"ref": h, "sha": m.refs.get(h), "state": "ok"}),
        (Some(h), None) => {
            warnings.push(format!("HEAD names {h}, which the manifest does not list (dangling)"));
            json!({"ref": h, "sha": null, "state": "dangling"})
        }
        (None, _) => json!({"ref": null, "sha": null, "state": "missing"}),
    };
    Ok(Some(json!({
        "name": remote.name,
        "url": remote.url.to_string(),
        "bucket": remote.url.bucket,
        "prefix": remote.url.prefix,
        "format": "packs",
        "encryption": encryption,
        "object_format": m.known_format().map(|f| f.name()),
        "head": head,
        "refs": refs,
        "protected": protected,
        "packs": {
            "count": m.packs.len(),
            "bytes": m.pack_bytes(),
            "objects": m.packs.iter().map(|p| p.objects).sum::<u64>(),
            "list": m.packs.iter().map(|p| json!({"name": p.name, "size": p.size, "idx_size": p.idx_size, "objects": p.objects, "created": p.created})).collect::<Vec<_>>(),
        },
        "manifest": {"serial": m.serial, "etag": etag},
        "locks": [],
        "warnings": warnings,
    })))
}
