//! Listings: objects under a prefix (every page), open multipart uploads,
//! and a listed key as the answer encoded it ([`listed_key`]).

use tracing::Instrument;

use super::{to_system_time, ObjectInfo, OpenUpload, S3Store, StoreError};

impl S3Store {
    /// Every object under `prefix` (all pages).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let span = tracing::debug_span!("s3.list", bucket = %self.bucket, prefix);
        async {
            let out = all_pages(|(token, _)| async move {
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
                let page = resp
                    .contents()
                    .iter()
                    .filter_map(|o| {
                        Some(ObjectInfo {
                            key: listed_key(o.key()?, encoding),
                            size: o.size().unwrap_or(0).max(0) as u64,
                            etag: o.e_tag().unwrap_or_default().to_string(),
                            last_modified: to_system_time(o.last_modified()),
                        })
                    })
                    .collect();
                Ok((page, next_page(resp.is_truncated(), resp.next_continuation_token(), None)))
            })
            .await?;
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
        all_pages(|(key_marker, id_marker)| async move {
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
            let page = resp
                .uploads()
                .iter()
                .filter_map(|u| {
                    Some(OpenUpload { key: u.key()?.to_string(), upload_id: u.upload_id()?.to_string(), initiated: to_system_time(u.initiated()) })
                })
                .collect();
            Ok((page, next_page(resp.is_truncated(), resp.next_key_marker(), resp.next_upload_id_marker())))
        })
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

/// Where the next page of a listing starts: a continuation token, or a
/// key marker and an upload or version id marker.
pub(super) type Cursor = (Option<String>, Option<String>);

/// Every page of a listing, in order: `page` asks for the one at a cursor
/// (the first at none) and returns its items and the next page's cursor,
/// None after the last page.
pub(super) async fn all_pages<T, F, Fut>(mut page: F) -> Result<Vec<T>, StoreError>
where
    F: FnMut(Cursor) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<Cursor>), StoreError>>,
{
    let mut out = Vec::new();
    let mut at = Cursor::default();
    loop {
        let (items, next) = page(at).await?;
        out.extend(items);
        match next {
            Some(next) => at = next,
            None => return Ok(out),
        }
    }
}

/// The next page's cursor from an answer: none unless it says it was
/// truncated and names where to go on (a server that says truncated and
/// names nothing would otherwise be asked for the same page forever).
pub(super) fn next_page(truncated: Option<bool>, marker: Option<&str>, id_marker: Option<&str>) -> Option<Cursor> {
    match (truncated, marker) {
        (Some(true), Some(m)) if !m.is_empty() => Some((Some(m.to_string()), id_marker.map(str::to_string))),
        _ => None,
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

    #[tokio::test]
    async fn every_page_in_order_until_the_last() {
        use super::{all_pages, next_page, Cursor};
        let pages: Vec<(Vec<u32>, Option<Cursor>)> = vec![
            (vec![1, 2], next_page(Some(true), Some("k2"), Some("v2"))),
            (vec![3], next_page(Some(true), Some("k3"), None)),
            (vec![4], next_page(Some(false), Some("k4"), None)),
        ];
        let mut asked = Vec::new();
        let got = all_pages(|at| {
            asked.push(at);
            let page = pages[asked.len() - 1].clone();
            async move { Ok(page) }
        })
        .await
        .unwrap();
        assert_eq!(got, vec![1, 2, 3, 4]);
        let k = |s: &str| Some(s.to_string());
        assert_eq!(asked, vec![(None, None), (k("k2"), k("v2")), (k("k3"), None)]);
        assert_eq!(next_page(Some(true), Some(""), None), None, "truncated but nowhere to go on: the last page");
        assert_eq!(next_page(None, Some("k"), None), None);
    }
}
