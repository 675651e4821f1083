//! What an S3 request is, from its method, path-style path, query and
//! headers: the unit that faults target and counters count.

use http::{HeaderMap, Method};

/// The S3 operations the field server tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestKind {
    /// ListObjectsV2 (a GET on the bucket).
    List,
    /// GetObject of a whole object.
    Get,
    /// GetObject with a `Range`.
    RangedGet,
    /// HeadObject.
    Head,
    /// HeadBucket.
    HeadBucket,
    /// PutObject without a condition.
    Put,
    /// PutObject with `If-None-Match` or `If-Match`.
    ConditionalPut,
    /// CopyObject.
    Copy,
    /// CreateMultipartUpload.
    CreateMultipart,
    /// UploadPart.
    Part,
    /// CompleteMultipartUpload (with or without a condition).
    Complete,
    /// AbortMultipartUpload.
    Abort,
    /// DeleteObject, DeleteObjects.
    Delete,
    /// Any other request on a bucket (CreateBucket, GetBucketLocation…).
    OtherBucket,
    /// Anything else (ListBuckets…).
    Other,
}

/// A request, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub kind: RequestKind,
    /// A conditional write (`If-None-Match`/`If-Match` on a PUT or a
    /// CompleteMultipartUpload): what `409 ConditionalRequestConflict` answers.
    pub conditional: bool,
    pub bucket: Option<String>,
    pub key: Option<String>,
}

impl Classified {
    /// `/bucket/key` (path style).
    pub fn path(&self) -> String {
        format!("/{}/{}", self.bucket.as_deref().unwrap_or(""), self.key.as_deref().unwrap_or(""))
    }
}

/// Whether a query string (`a=1&b`) holds parameter `name`.
pub(crate) fn has_param(query: &str, name: &str) -> bool {
    query.split('&').any(|p| p.split('=').next() == Some(name))
}

/// The value of `name` in a query string (`uploadId=…&…`), as sent (still
/// percent-encoded: a retry encodes it the same way).
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
}

/// Classifies a path-style request (`/bucket/key?query`).
pub fn classify(method: &Method, path: &str, query: &str, headers: &HeaderMap) -> Classified {
    let trimmed = path.trim_start_matches('/');
    let (bucket, key) = match trimmed.split_once('/') {
        Some((b, k)) => (b, k),
        None => (trimmed, ""),
    };
    let bucket = (!bucket.is_empty()).then(|| bucket.to_string());
    let key = (!key.is_empty()).then(|| key.to_string());
    let conditional_headers = headers.contains_key(http::header::IF_NONE_MATCH) || headers.contains_key(http::header::IF_MATCH);
    let on_key = key.is_some();
    let q = |n: &str| has_param(query, n);
    let kind = if bucket.is_none() {
        RequestKind::Other
    } else {
        match *method {
            Method::GET if !on_key => {
                let listing = query.is_empty() || q("list-type") || q("prefix") || q("delimiter") || q("continuation-token");
                if listing {
                    RequestKind::List
                } else {
                    RequestKind::OtherBucket
                }
            }
            Method::GET if q("uploadId") => RequestKind::Other,
            Method::GET if headers.contains_key(http::header::RANGE) => RequestKind::RangedGet,
            Method::GET => RequestKind::Get,
            Method::HEAD if on_key => RequestKind::Head,
            Method::HEAD => RequestKind::HeadBucket,
            Method::PUT if !on_key => RequestKind::OtherBucket,
            Method::PUT if q("partNumber") && q("uploadId") => RequestKind::Part,
            Method::PUT if headers.contains_key("x-amz-copy-source") => RequestKind::Copy,
            Method::PUT if conditional_headers => RequestKind::ConditionalPut,
            Method::PUT => RequestKind::Put,
            Method::POST if on_key && q("uploads") => RequestKind::CreateMultipart,
            Method::POST if on_key && q("uploadId") => RequestKind::Complete,
            Method::POST if q("delete") => RequestKind::Delete,
            Method::DELETE if q("uploadId") => RequestKind::Abort,
            Method::DELETE if on_key => RequestKind::Delete,
            _ => RequestKind::OtherBucket,
        }
    };
    let conditional = conditional_headers && matches!(kind, RequestKind::ConditionalPut | RequestKind::Complete);
    Classified { kind, conditional, bucket, key }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(method: Method, path: &str, query: &str, headers: &[(&'static str, &str)]) -> Classified {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, v.parse().unwrap());
        }
        classify(&method, path, query, &h)
    }

    #[test]
    fn kinds_of_s3_requests() {
        use RequestKind::*;
        assert_eq!(c(Method::GET, "/b", "list-type=2&prefix=p%2F", &[]).kind, List);
        assert_eq!(c(Method::GET, "/b/", "", &[]).kind, List);
        assert_eq!(c(Method::GET, "/b", "location", &[]).kind, OtherBucket);
        assert_eq!(c(Method::GET, "/b/p/HEAD", "", &[]).kind, Get);
        assert_eq!(c(Method::GET, "/b/p/x.pack", "", &[("range", "bytes=0-9")]).kind, RangedGet);
        assert_eq!(c(Method::HEAD, "/b/p/x", "", &[]).kind, Head);
        assert_eq!(c(Method::HEAD, "/b", "", &[]).kind, HeadBucket);
        assert_eq!(c(Method::PUT, "/b/p/x", "x-id=PutObject", &[]).kind, Put);
        let cp = c(Method::PUT, "/b/p/LOCK#.lock", "", &[("if-none-match", "*")]);
        assert_eq!((cp.kind, cp.conditional), (ConditionalPut, true));
        assert_eq!(c(Method::PUT, "/b/p/x", "partNumber=1&uploadId=u", &[]).kind, Part);
        assert_eq!(c(Method::PUT, "/b/p/y", "", &[("x-amz-copy-source", "b/p/x")]).kind, Copy);
        assert_eq!(c(Method::POST, "/b/p/x", "uploads", &[]).kind, CreateMultipart);
        let done = c(Method::POST, "/b/p/x", "uploadId=u", &[]);
        assert_eq!((done.kind, done.conditional), (Complete, false));
        let done = c(Method::POST, "/b/p/x", "uploadId=u", &[("if-match", "\"e\"")]);
        assert_eq!((done.kind, done.conditional), (Complete, true));
        assert_eq!(c(Method::DELETE, "/b/p/x", "", &[]).kind, Delete);
        assert_eq!(c(Method::DELETE, "/b/p/x", "uploadId=u", &[]).kind, Abort);
        assert_eq!(c(Method::POST, "/b", "delete", &[]).kind, Delete);
        assert_eq!(c(Method::GET, "/", "", &[]).kind, Other);
        let x = c(Method::GET, "/bkt/a/b/c", "", &[]);
        assert_eq!((x.bucket.as_deref(), x.key.as_deref()), (Some("bkt"), Some("a/b/c")));
    }
}
