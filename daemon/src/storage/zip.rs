//! `s3+zip://`'s `<prefix>/<ref>/repo.zip` (a `git archive` of the ref's
//! commit, for AWS CodePipeline), written by both formats' pushes with
//! git-remote-s3 0.4.2's key, metadata and headers. An encrypted packs
//! remote (issue 22) writes it as an age file under a keyed name instead
//! (`encrypted_zip_key`), with no metadata that names the ref or commit.

use std::path::Path;
use std::sync::Arc;

use crate::s3::store::{PutOptions, S3Store};
use crate::s3::url::RemoteUrl;
use crate::storage::crypt::{codec, RemoteKey};
use crate::storage::{OpContext, StorageError};

pub(crate) const ZIP_NAME: &str = "repo.zip";
/// `repo.zip` metadata: the manifest serial that made the zip's commit current.
pub(crate) const ZIP_SERIAL_META: &str = "git-s3-serial";

/// `git archive --format zip` of `sha` (for `s3+zip://`'s `repo.zip`) and
/// the summary CodePipeline shows (`<short sha> <subject>`).
pub(crate) async fn build_zip(ctx: &OpContext, sha: &str) -> Result<(tempfile::NamedTempFile, String), StorageError> {
    let zip = ctx.cache.blocking(|c| c.temp_file()).await??;
    ctx.git.archive_zip(zip.path(), sha).await?;
    let summary = ctx.git.commit_summary(sha).await.unwrap_or_default();
    Ok((zip, summary))
}

/// The `PutOptions` of `<prefix>/<dst>/repo.zip`: 0.4.2's metadata and
/// headers, plus `extra` metadata.
pub(crate) fn zip_put_options(sha: &str, summary: String, extra: Vec<(String, String)>) -> PutOptions {
    let mut metadata = vec![("codepipeline-artifact-revision-summary".into(), summary)];
    metadata.extend(extra);
    PutOptions {
        metadata,
        content_disposition: Some(format!("attachment; filename=repo-{}.zip", &sha[..8.min(sha.len())])),
        content_type: Some("application/zip".into()),
        ..Default::default()
    }
}

/// Uploads `<prefix>/<dst>/repo.zip` with 0.4.2's metadata and headers.
pub(crate) async fn upload_zip(store: &S3Store, url: &RemoteUrl, dst: &str, sha: &str, zip: &Path, summary: String) -> Result<(), StorageError> {
    store.put_file(&zip_key(url, dst), zip, zip_put_options(sha, summary, Vec::new()), |_| {}).await?;
    Ok(())
}

pub(crate) fn zip_key(url: &RemoteUrl, dst: &str) -> String {
    url.key(&format!("{dst}/{ZIP_NAME}"))
}

/// The folder of an encrypted remote's zips, under the prefix.
pub(crate) const ENCRYPTED_ZIPS_DIR: &str = ".git-s3/zips/";

/// The key of `dst`'s zip on an encrypted remote, named with `key` (a
/// generation of the remote key): `<prefix>/.git-s3/zips/<HMAC of
/// "<dst>/repo.zip">`, which names no ref.
pub(crate) fn encrypted_zip_key(url: &RemoteUrl, key: &RemoteKey, dst: &str) -> String {
    url.key(&format!("{ENCRYPTED_ZIPS_DIR}{}", key.object_name(&format!("{dst}/{ZIP_NAME}"))))
}

/// The keys `dst`'s zip had under the older generations of `key` (before a
/// revoke's rotation): removed when the zip is written again or its ref deleted.
pub(crate) fn older_encrypted_zip_keys(url: &RemoteUrl, key: &RemoteKey, dst: &str) -> Vec<String> {
    key.generations().skip(1).map(|g| encrypted_zip_key(url, g, dst)).collect()
}

/// `zip` encrypted to the remote key (a standard age file: `age -d -i
/// remote.key` gives the zip), in a new temp file of the cache.
pub(crate) async fn encrypt_zip(ctx: &OpContext, key: &Arc<RemoteKey>, zip: &Path) -> Result<tempfile::NamedTempFile, StorageError> {
    let out = ctx.cache.blocking(|c| c.temp_file()).await??;
    codec::encrypt_file(key.clone(), zip.to_path_buf(), out.path().to_path_buf()).await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encrypted_zip_key_names_no_ref_and_changes_with_the_key() {
        let url = RemoteUrl::parse("s3+zip://bucket/repo").unwrap();
        let key = RemoteKey::generate();
        let k = encrypted_zip_key(&url, &key, "refs/heads/feature/secret");
        assert!(k.starts_with("repo/.git-s3/zips/") && !k.contains("secret") && !k.contains(ZIP_NAME), "{k}");
        assert_eq!(k, encrypted_zip_key(&url, &key, "refs/heads/feature/secret"), "stable");
        assert_ne!(k, encrypted_zip_key(&url, &key, "refs/heads/main"));
        assert!(older_encrypted_zip_keys(&url, &key, "refs/heads/main").is_empty());
        let rotated = key.rotated();
        assert_eq!(older_encrypted_zip_keys(&url, &rotated, "refs/heads/feature/secret"), vec![k.clone()]);
        assert_ne!(encrypted_zip_key(&url, &rotated, "refs/heads/feature/secret"), k);
    }
}
