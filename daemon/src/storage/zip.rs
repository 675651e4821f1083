//! `s3+zip://`'s `<prefix>/<ref>/repo.zip` (a `git archive` of the ref's
//! commit, for AWS CodePipeline), written by both formats' pushes with
//! git-remote-s3 0.4.2's key, metadata and headers.

use std::path::Path;

use crate::s3::store::{PutOptions, S3Store};
use crate::s3::url::RemoteUrl;
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
