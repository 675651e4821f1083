//! S3's answers to a request signed for another region than the bucket's:
//! what a local server never says, and what clients must recover from.

use http::{HeaderMap, Method, StatusCode};

/// How the server answers a request signed for the wrong region (a HEAD
/// always gets the status alone: no body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RegionAnswer {
    /// `301 PermanentRedirect` with `<Endpoint>` and `<Bucket>` (a regional
    /// endpoint of another region).
    #[default]
    PermanentRedirect,
    /// `400 AuthorizationHeaderMalformed` "the region 'x' is wrong; expecting
    /// 'y'" with `<Region>` (the global endpoint, newer regions).
    AuthorizationHeaderMalformed,
    /// `307 TemporaryRedirect` with a `Location` on the bucket's regional
    /// endpoint (a bucket created moments ago, before DNS caught up).
    TemporaryRedirect,
}

/// The region a SigV4 request was signed for: the credential scope
/// (`<key>/<date>/<region>/s3/aws4_request`) of the `Authorization` header or
/// of a presigned URL's `X-Amz-Credential`.
pub fn signing_region(headers: &HeaderMap, query: &str) -> Option<String> {
    if let Some(auth) = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let credential = auth.split("Credential=").nth(1)?.split(',').next()?.trim();
        return scope_region(credential);
    }
    let credential = query.split('&').find_map(|p| p.strip_prefix("X-Amz-Credential="))?;
    scope_region(&credential.replace("%2F", "/").replace("%2f", "/"))
}

fn scope_region(credential: &str) -> Option<String> {
    let parts: Vec<&str> = credential.split('/').collect();
    (parts.len() >= 5).then(|| parts[parts.len() - 3].to_string()).filter(|r| !r.is_empty())
}

/// Status, body and headers of the answer to a request for `bucket` (in
/// `bucket_region`) signed for `signed_region`.
pub fn wrong_region_answer(answer: RegionAnswer, method: &Method, bucket: &str, bucket_region: &str, signed_region: &str) -> (StatusCode, String) {
    let request_id = "FIELD0REGION0000";
    let (status, body) = match answer {
        RegionAnswer::PermanentRedirect => (
            StatusCode::MOVED_PERMANENTLY,
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>PermanentRedirect</Code><Message>The bucket you are attempting to access must be addressed using the specified endpoint. Please send all future requests to this endpoint.</Message><Endpoint>{bucket}.s3.{bucket_region}.amazonaws.com</Endpoint><Bucket>{bucket}</Bucket><RequestId>{request_id}</RequestId><HostId>field</HostId></Error>"
            ),
        ),
        RegionAnswer::AuthorizationHeaderMalformed => (
            StatusCode::BAD_REQUEST,
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AuthorizationHeaderMalformed</Code><Message>The authorization header is malformed; the region '{signed_region}' is wrong; expecting '{bucket_region}'</Message><Region>{bucket_region}</Region><RequestId>{request_id}</RequestId><HostId>field</HostId></Error>"
            ),
        ),
        RegionAnswer::TemporaryRedirect => (StatusCode::TEMPORARY_REDIRECT, temporary_redirect_body(bucket, bucket_region)),
    };
    if *method == Method::HEAD {
        (status, String::new())
    } else {
        (status, body)
    }
}

/// The body of S3's `307 TemporaryRedirect` for `bucket` in `region`.
pub fn temporary_redirect_body(bucket: &str, region: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>TemporaryRedirect</Code><Message>Please re-send this request to the specified temporary endpoint. Continue to use the original request endpoint for future requests.</Message><Endpoint>{bucket}.s3-{region}.amazonaws.com</Endpoint><Bucket>{bucket}</Bucket><RequestId>FIELD0REGION0000</RequestId><HostId>field</HostId></Error>"
    )
}

/// The `Location` of a `307` for `bucket` in `region`, for the request's
/// path and query.
pub fn temporary_location(bucket: &str, region: &str, path: &str, query: &str) -> String {
    let key = path.trim_start_matches('/').split_once('/').map(|(_, k)| k).unwrap_or("");
    let q = if query.is_empty() { String::new() } else { format!("?{query}") };
    format!("https://{bucket}.s3-{region}.amazonaws.com/{key}{q}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_from_the_credential_scope() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20261202/eu-west-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=ab".parse().unwrap(),
        );
        assert_eq!(signing_region(&h, "").as_deref(), Some("eu-west-1"));
        let q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=test%2F20261202%2Fap-southeast-2%2Fs3%2Faws4_request&X-Amz-Date=x";
        assert_eq!(signing_region(&HeaderMap::new(), q).as_deref(), Some("ap-southeast-2"));
        assert_eq!(signing_region(&HeaderMap::new(), "a=b"), None);
    }

    #[test]
    fn answers_name_the_region() {
        let (s, body) = wrong_region_answer(RegionAnswer::AuthorizationHeaderMalformed, &Method::GET, "b", "eu-west-1", "us-east-1");
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(body.contains("<Region>eu-west-1</Region>") && body.contains("'us-east-1' is wrong"));
        let (s, body) = wrong_region_answer(RegionAnswer::PermanentRedirect, &Method::GET, "b", "eu-west-1", "us-east-1");
        assert_eq!(s, StatusCode::MOVED_PERMANENTLY);
        assert!(body.contains("<Code>PermanentRedirect</Code>") && body.contains("<Endpoint>b.s3.eu-west-1.amazonaws.com</Endpoint>"));
        let (s, body) = wrong_region_answer(RegionAnswer::TemporaryRedirect, &Method::GET, "b", "eu-west-1", "us-east-1");
        assert_eq!(s, StatusCode::TEMPORARY_REDIRECT);
        assert!(body.contains("<Code>TemporaryRedirect</Code>") && body.contains("<Endpoint>b.s3-eu-west-1.amazonaws.com</Endpoint>"));
        assert_eq!(temporary_location("b", "eu-west-1", "/b/p/HEAD", "x=1"), "https://b.s3-eu-west-1.amazonaws.com/p/HEAD?x=1");
        let (s, body) = wrong_region_answer(RegionAnswer::PermanentRedirect, &Method::HEAD, "b", "eu-west-1", "us-east-1");
        assert_eq!((s, body.as_str()), (StatusCode::MOVED_PERMANENTLY, ""));
    }
}
