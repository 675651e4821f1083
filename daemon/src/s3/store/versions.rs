//! Object versions in a versioned bucket: every overwrite or delete keeps
//! the previous object as a noncurrent version (locks, replaced bundles,
//! manifests) until it is deleted by its version id. Listed and pruned by
//! `git s3 doctor --prune-versions`; a lock deletes its own versions.

use tracing::Instrument;

use super::list::{all_pages, listed_key, next_page};
use super::{S3Store, StoreError};

/// One version of an object (or a delete marker).
#[derive(Debug, Clone)]
pub(crate) struct ObjectVersion {
    pub(crate) key: String,
    pub(crate) version_id: String,
    /// The current version of its key (what a GET returns, or the delete
    /// marker that hides it).
    pub(crate) is_latest: bool,
    pub(crate) delete_marker: bool,
    pub(crate) size: u64,
}

impl S3Store {
    /// Every version and delete marker under `prefix` (all pages).
    pub(crate) async fn list_versions(&self, prefix: &str) -> Result<Vec<ObjectVersion>, StoreError> {
        let span = tracing::debug_span!("s3.list_versions", bucket = %self.bucket, prefix);
        all_pages(|(key_marker, id_marker)| async move {
            let resp = self
                .call(|c| {
                    c.list_object_versions()
                        .bucket(&*self.bucket)
                        .prefix(prefix)
                        .encoding_type(aws_sdk_s3::types::EncodingType::Url)
                        .set_key_marker(key_marker.clone())
                        .set_version_id_marker(id_marker.clone())
                        .send()
                })
                .await
                .map_err(|e| self.classify(e, prefix))?;
            let encoding = resp.encoding_type();
            let versions = resp.versions().iter().filter_map(|v| {
                Some(ObjectVersion {
                    key: listed_key(v.key()?, encoding),
                    version_id: v.version_id()?.to_string(),
                    is_latest: v.is_latest() == Some(true),
                    delete_marker: false,
                    size: v.size().unwrap_or(0).max(0) as u64,
                })
            });
            let markers = resp.delete_markers().iter().filter_map(|m| {
                Some(ObjectVersion {
                    key: listed_key(m.key()?, encoding),
                    version_id: m.version_id()?.to_string(),
                    is_latest: m.is_latest() == Some(true),
                    delete_marker: true,
                    size: 0,
                })
            });
            let page = versions.chain(markers).collect();
            Ok((page, next_page(resp.is_truncated(), resp.next_key_marker(), resp.next_version_id_marker())))
        })
        .instrument(span)
        .await
    }

    /// Deletes one version of `key` for good (no delete marker). Never
    /// touches another version, whatever was written since.
    pub(crate) async fn delete_version(&self, key: &str, version_id: &str) -> Result<(), StoreError> {
        let span = tracing::debug_span!("s3.delete_version", bucket = %self.bucket, key, version_id);
        async {
            self.call(|c| c.delete_object().bucket(&*self.bucket).key(key).version_id(version_id).send()).await.map_err(|e| self.classify(e, key))?;
            Ok(())
        }
        .instrument(span)
        .await
    }
}
