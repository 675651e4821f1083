//! Bucket policies companies set, enforced as S3 enforces them (moto has no
//! bucket policies): encryption demanded on every write, an integrity
//! header demanded on every upload (what Object Lock buckets do), and a
//! requester-pays bucket of a known owner.

use http::{HeaderMap, StatusCode};

use super::kinds::RequestKind;

/// What the bucket behind the field server demands (nothing by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketPolicyMode {
    /// PutObject, CreateMultipartUpload and CopyObject without
    /// `x-amz-server-side-encryption: aws:kms` are denied (403
    /// AccessDenied, an explicit deny in the bucket policy).
    pub require_kms: bool,
    /// PutObject and UploadPart without `Content-MD5` or an
    /// `x-amz-checksum-*` header (or trailer) are refused (400
    /// InvalidRequest, as in an Object Lock bucket).
    pub require_integrity: bool,
    /// Every request without `x-amz-request-payer: requester` is denied (403).
    pub requester_pays: bool,
    /// Every request whose `x-amz-expected-bucket-owner` is absent or not
    /// this account is denied (403).
    pub owner: Option<String>,
}

/// S3's answer when `mode` refuses a request of `kind` with `headers`:
/// status, error code and message.
pub(crate) fn refusal(mode: &BucketPolicyMode, kind: RequestKind, headers: &HeaderMap) -> Option<(StatusCode, &'static str, String)> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if kind == RequestKind::Other {
        return None;
    }
    if let Some(owner) = &mode.owner {
        if header("x-amz-expected-bucket-owner") != Some(owner.as_str()) {
            return Some((StatusCode::FORBIDDEN, "AccessDenied", "Access Denied".into()));
        }
    }
    if mode.requester_pays && header("x-amz-request-payer") != Some("requester") {
        return Some((StatusCode::FORBIDDEN, "AccessDenied", "Access Denied".into()));
    }
    let creates = matches!(kind, RequestKind::Put | RequestKind::ConditionalPut | RequestKind::CreateMultipart | RequestKind::Copy);
    if mode.require_kms && creates && header("x-amz-server-side-encryption") != Some("aws:kms") {
        let action = if kind == RequestKind::CreateMultipart { "s3:PutObject (CreateMultipartUpload)" } else { "s3:PutObject" };
        return Some((
            StatusCode::FORBIDDEN,
            "AccessDenied",
            format!(
                "User: arn:aws:iam::123456789012:user/test is not authorized to perform: {action} with an explicit deny in a resource-based policy"
            ),
        ));
    }
    let uploads = matches!(kind, RequestKind::Put | RequestKind::ConditionalPut | RequestKind::Part);
    if mode.require_integrity && uploads && !has_integrity_header(headers) {
        return Some((
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Content-MD5 OR x-amz-checksum- HTTP header is required for Put Object requests with Object Lock parameters".into(),
        ));
    }
    None
}

/// `Content-MD5`, an `x-amz-checksum-*` header, or one announced as a
/// trailer of an `aws-chunked` body.
fn has_integrity_header(headers: &HeaderMap) -> bool {
    headers.contains_key("content-md5")
        || headers.keys().any(|k| k.as_str().starts_with("x-amz-checksum-"))
        || headers.get("x-amz-trailer").and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("x-amz-checksum-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn refusals() {
        let kms = BucketPolicyMode { require_kms: true, ..Default::default() };
        assert_eq!(refusal(&kms, RequestKind::Put, &h(&[])).map(|r| r.0), Some(StatusCode::FORBIDDEN));
        assert_eq!(refusal(&kms, RequestKind::Put, &h(&[("x-amz-server-side-encryption", "AES256")])).map(|r| r.1), Some("AccessDenied"));
        assert_eq!(refusal(&kms, RequestKind::CreateMultipart, &h(&[("x-amz-server-side-encryption", "aws:kms")])), None);
        assert_eq!(refusal(&kms, RequestKind::Part, &h(&[])), None);
        assert_eq!(refusal(&kms, RequestKind::Get, &h(&[])), None);
        let lock = BucketPolicyMode { require_integrity: true, ..Default::default() };
        assert_eq!(refusal(&lock, RequestKind::Part, &h(&[])).map(|r| r.1), Some("InvalidRequest"));
        assert_eq!(refusal(&lock, RequestKind::Part, &h(&[("content-md5", "XUFAKrxLKna5cZ2REBfFkg==")])), None);
        assert_eq!(refusal(&lock, RequestKind::Put, &h(&[("x-amz-trailer", "x-amz-checksum-crc32")])), None);
        assert_eq!(refusal(&lock, RequestKind::Copy, &h(&[])), None);
        let payer = BucketPolicyMode { requester_pays: true, owner: Some("111122223333".into()), ..Default::default() };
        assert!(refusal(&payer, RequestKind::List, &h(&[("x-amz-request-payer", "requester")])).is_some());
        assert!(refusal(&payer, RequestKind::Get, &h(&[("x-amz-expected-bucket-owner", "111122223333")])).is_some());
        let both = h(&[("x-amz-request-payer", "requester"), ("x-amz-expected-bucket-owner", "111122223333")]);
        assert_eq!(refusal(&payer, RequestKind::Head, &both), None);
        let wrong = h(&[("x-amz-request-payer", "requester"), ("x-amz-expected-bucket-owner", "999999999999")]);
        assert!(refusal(&payer, RequestKind::Head, &wrong).is_some());
    }
}
