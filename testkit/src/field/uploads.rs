//! Multipart uploads as S3 lists them: moto answers every
//! ListMultipartUploads with `<Initiated>2010-11-10T20:48:33.000Z`, S3 with
//! the time the upload was created. The field server notes when each
//! CreateMultipartUpload was answered and puts that time in the listing, so
//! tests of what an upload's age decides (doctor's `--upload-age`) meet
//! S3's answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Full};

use super::forward::Body;
use super::BoxError;

/// When each upload (by id) was created.
#[derive(Default)]
pub(crate) struct UploadTimes(Mutex<HashMap<String, SystemTime>>);

impl UploadTimes {
    /// Notes the upload a CreateMultipartUpload answer names.
    pub(crate) async fn record(&self, resp: Response<Body>) -> Result<Response<Body>, BoxError> {
        let (parts, body) = buffer(resp).await?;
        if let Some(id) = element(&String::from_utf8_lossy(&body), "UploadId") {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(id, SystemTime::now());
        }
        Ok(rebuild(parts, body))
    }

    /// A ListMultipartUploads answer with each noted upload's real time.
    pub(crate) async fn fix_listing(&self, resp: Response<Body>) -> Result<Response<Body>, BoxError> {
        let (parts, body) = buffer(resp).await?;
        let xml = String::from_utf8_lossy(&body).into_owned();
        let times = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(rebuild(parts, Bytes::from(with_times(&xml, &times))))
    }
}

async fn buffer(resp: Response<Body>) -> Result<(http::response::Parts, Bytes), BoxError> {
    let (parts, body) = resp.into_parts();
    Ok((parts, body.collect().await?.to_bytes()))
}

fn rebuild(mut parts: http::response::Parts, body: Bytes) -> Response<Body> {
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    parts.headers.insert(http::header::CONTENT_LENGTH, body.len().into());
    Response::from_parts(parts, Full::new(body).map_err(|e| match e {}).boxed_unsync())
}

/// The text of the first `<name>…</name>` in `xml`.
fn element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..end].to_string())
}

/// `xml` with the `<Initiated>` of every `<Upload>` whose id is in `times`
/// replaced by that time.
fn with_times(xml: &str, times: &HashMap<String, SystemTime>) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(start) = rest.find("<Upload>") {
        let Some(len) = rest[start..].find("</Upload>") else { break };
        let end = start + len + "</Upload>".len();
        out.push_str(&rest[..start]);
        let upload = &rest[start..end];
        match (element(upload, "UploadId").and_then(|id| times.get(&id).copied()), element(upload, "Initiated")) {
            (Some(t), Some(old)) => {
                out.push_str(&upload.replace(&format!("<Initiated>{old}</Initiated>"), &format!("<Initiated>{}</Initiated>", iso8601(t))))
            }
            _ => out.push_str(upload),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `2026-12-02T14:05:06Z` (RFC 3339, as S3's XML dates are read).
fn iso8601(t: SystemTime) -> String {
    aws_smithy_types::DateTime::from(t).fmt(aws_smithy_types::date_time::Format::DateTime).unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn listing_gets_the_noted_times() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_220_306); // 2026-12-02T14:05:06Z
        assert_eq!(iso8601(t), "2026-12-02T14:05:06Z");
        assert_eq!(iso8601(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00Z");
        let xml = "<L><Upload><Key>a</Key><UploadId>u1</UploadId><Initiated>2010-11-10T20:48:33.000Z</Initiated></Upload>\
<Upload><Key>b</Key><UploadId>u2</UploadId><Initiated>2010-11-10T20:48:33.000Z</Initiated></Upload></L>";
        let times = HashMap::from([("u2".to_string(), t)]);
        let fixed = with_times(xml, &times);
        assert!(fixed.contains("<UploadId>u1</UploadId><Initiated>2010-11-10T20:48:33.000Z</Initiated>"), "{fixed}");
        assert!(fixed.contains("<UploadId>u2</UploadId><Initiated>2026-12-02T14:05:06Z</Initiated>"), "{fixed}");
        assert_eq!(element(&fixed, "Key").as_deref(), Some("a"));
    }
}
