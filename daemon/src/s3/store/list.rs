//! Listings: objects under a prefix (every page), open multipart uploads,
//! and a listed key as the answer encoded it ([`listed_key`]).

use tracing::Instrument;

use super::{to_system_time, ObjectInfo, OpenUpload, S3Store, StoreError};

impl S3Store {
    /// Every object under `prefix` (all pages).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let span = tracing::debug_span!("s3.list", bucket = %self.bucket, prefix);
        async {
            let mut out = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let resp = self
                    .call(|c| {
                        c.list_objects_v2()
                            .bucket(&*self.bucket)
                            .prefix(prefix)
                            // Keys come URL-encoded: a key holding a character XML 1.0
                            // cannot carry (\u{1}, …) would otherwise make the whole
                            // listing unreadable.
                            .encoding_type(aws_sdk_s3::types::EncodingType::Url)
                            .set_continuation_token(token.clone())
                            .send()
                    })
                    .await
                    .map_err(|e| self.classify(e, prefix))?;
                let encoding = resp.encoding_type();
                for o in resp.contents() {
                    if let Some(key) = o.key() {
                        out.push(ObjectInfo {
                            key: listed_key(key, encoding),
                            size: o.size().unwrap_or(0).max(0) as u64,
                            etag: o.e_tag().unwrap_or_default().to_string(),
                            last_modified: to_system_time(o.last_modified()),
                        });
                    }
                }
                match resp.next_continuation_token() {
                    Some(t) if resp.is_truncated() == Some(true) => token = Some(t.to_string()),
                    _ => break,
                }
            }
            tracing::debug!(objects = out.len(), "listed");
            Ok(out)
        }
        .instrument(span)
        .await
    }

    /// The multipart uploads started under `prefix` and neither completed
    /// nor aborted (a push killed half-way leaves one; S3 bills its parts).
    pub(crate) async fn list_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, StoreError> {
        let span = tracing::debug_span!("s3.list_uploads", bucket = %self.bucket, prefix);
        async {
            let mut out = Vec::new();
            let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
            loop {
                let resp = self
                    .call(|c| {
                        c.list_multipart_uploads()
                            .bucket(&*self.bucket)
                            .prefix(prefix)
                            .set_key_marker(key_marker.clone())
                            .set_upload_id_marker(id_marker.clone())
                            .send()
                    })
                    .await
                    .map_err(|e| self.classify(e, prefix))?;
                for u in resp.uploads() {
                    if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                        out.push(OpenUpload { key: key.to_string(), upload_id: id.to_string(), initiated: to_system_time(u.initiated()) });
                    }
                }
                match (resp.is_truncated(), resp.next_key_marker(), resp.next_upload_id_marker()) {
                    (Some(true), Some(k), id) if !k.is_empty() => {
                        key_marker = Some(k.to_string());
                        id_marker = id.map(str::to_string);
                    }
                    _ => break,
                }
            }
            Ok(out)
        }
        .instrument(span)
        .await
    }

    /// Aborts a multipart upload (its parts are deleted).
    pub(crate) async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.call(|c| c.abort_multipart_upload().bucket(&*self.bucket).key(key).upload_id(upload_id).send())
            .instrument(tracing::debug_span!("s3.abort_upload", bucket = %self.bucket, key))
            .await
            .map_err(|e| self.classify(e, key))?;
        Ok(())
    }
}

/// A key as a listing answered it: decoded only when the answer says it is
/// URL-encoded (some servers ignore `encoding-type` and send keys as they are).
pub(super) fn listed_key(key: &str, encoding: Option<&aws_sdk_s3::types::EncodingType>) -> String {
    match encoding {
        Some(aws_sdk_s3::types::EncodingType::Url) => url_decode_key(key),
        _ => key.to_string(),
    }
}

/// A key of a listing made with `encoding-type=url` decoded (`%XX`, and
/// `+` for a space as S3 writes it; a literal `+` comes as `%2B`). A key that
/// does not decode to UTF-8 is kept as it came.
fn url_decode_key(key: &str) -> String {
    let spaced = key.replace('+', " ");
    match percent_encoding::percent_decode_str(&spaced).decode_utf8() {
        Ok(decoded) => decoded.into_owned(),
        Err(_) => key.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn listing_keys_decode() {
        assert_eq!(super::url_decode_key("p/refs/heads/a%01b%20c+d%2Be"), "p/refs/heads/a\u{1}b c d+e");
        assert_eq!(super::url_decode_key("p/%C3%BC/%zz%"), "p/ü/%zz%");
        assert_eq!(super::url_decode_key("p/%FF"), "p/%FF");
    }
}
