//! [`StoreError`]: what went wrong with an S3 call, told by the SDK's
//! error types (service error codes, HTTP status, the connector error and
//! the types in its source chain), in one line that says what to do.

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("bucket '{0}' does not exist (or is in another region); create it or fix the remote URL")]
    NoSuchBucket(String),
    #[error("access denied to s3://{bucket}/{key}: {message}. Check the credentials/profile and the bucket policy")]
    AccessDenied { bucket: String, key: String, message: String },
    #[error("the AWS credentials were rejected ({0}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile")]
    InvalidCredentials(String),
    #[error("no AWS credentials found ({0}); configure a profile (`aws configure`), set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or use s3://profile@bucket/prefix")]
    NoCredentials(String),
    /// The caller's credential chain failed (s3/credentials: one line that
    /// says what to do).
    #[error("{0}")]
    Credentials(crate::s3::credentials::messages::IdentityError),
    /// S3 answered `ExpiredToken`: what to renew.
    #[error("S3 refused the request (ExpiredToken): {0}")]
    ExpiredToken(String),
    #[error("cannot connect to the S3 endpoint: {0}")]
    Connect(String),
    #[error("the S3 endpoint's TLS certificate did not verify against {trust}: {reason}")]
    Certificate { trust: String, reason: String },
    #[error("cannot resolve {host}, the host name of bucket '{bucket}' with virtual-hosted addressing; if the endpoint serves path-style requests (MinIO, Ceph RGW…), set `addressing_style = path` under `s3 =` in the AWS profile, or GIT_REMOTE_S3_PATH_STYLE=1")]
    VirtualHostDns { bucket: String, host: String },
    #[error("the proxy {proxy} did not let the connection to S3 through ({reason}); check HTTPS_PROXY/HTTP_PROXY and NO_PROXY")]
    Proxy { proxy: String, reason: String },
    #[error(
        "bucket '{bucket}' is in region {region}, not in the region the request was signed for; set AWS_REGION={region} (or the profile's region)"
    )]
    WrongRegion { bucket: String, region: String },
    #[error("S3 keeps answering 307 TemporaryRedirect for bucket '{bucket}' (region {region}): a bucket created minutes ago is not reachable everywhere yet; try again in a few minutes, or set AWS_REGION={region}")]
    TemporaryRedirect { bucket: String, region: String },
    #[error(
        "S3 did not answer a request for s3://{bucket}/{key} in time ({reason}); check the network and proxy, or raise GIT_S3_READ_TIMEOUT_SECONDS"
    )]
    Timeout { bucket: String, key: String, reason: String },
    #[error("another write to s3://{bucket}/{key} was in progress each time this one was tried (409 ConditionalRequestConflict); try again")]
    Conflict { bucket: String, key: String },
    #[error("S3 kept throttling requests to s3://{bucket}/{key} ({code}, every attempt); check the request rate on this bucket's prefix, try again later, or with fewer parallel transfers (lfs.concurrenttransfers)")]
    Throttled { bucket: String, key: String, code: String },
    #[error("s3://{bucket}/{key} not found")]
    NotFound { bucket: String, key: String },
    #[error("precondition failed on s3://{bucket}/{key}")]
    PreconditionFailed { bucket: String, key: String },
    /// `501 NotImplemented`: the store does not implement a header or
    /// operation of the request.
    #[error("the S3 endpoint does not implement a request on s3://{bucket}/{key}: {message}")]
    NotImplemented { bucket: String, key: String, message: String },
    /// Writes refused before anything was written (the store does not
    /// enforce conditional writes: `s3/conditional.rs`). One line, final.
    #[error("{0}")]
    WritesRefused(String),
    #[error("S3 error on s3://{bucket}/{key}: {message}")]
    Other { bucket: String, key: String, message: String },
    /// A download that broke off (connection cut, short body, a stall): worth retrying.
    #[error("the download of s3://{bucket}/{key} broke off: {message}; check the network and proxy (a stalled answer ends after GIT_S3_READ_TIMEOUT_SECONDS, at most 20 s)")]
    Interrupted { bucket: String, key: String, message: String },
    #[error("local file error: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }
    pub(crate) fn is_interrupted(&self) -> bool {
        matches!(self, StoreError::Interrupted { .. })
    }
    pub fn is_precondition_failed(&self) -> bool {
        matches!(self, StoreError::PreconditionFailed { .. })
    }
    /// A conditional write that met another operation on the same key (409):
    /// not a lost race; worth trying again.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
    /// Errors that no retry or other ref will fix (the whole session fails).
    pub(crate) fn is_fatal(&self) -> bool {
        matches!(
            self,
            StoreError::NoSuchBucket(_)
                | StoreError::InvalidCredentials(_)
                | StoreError::NoCredentials(_)
                | StoreError::Credentials(_)
                | StoreError::ExpiredToken(_)
                | StoreError::Connect(_)
                | StoreError::Certificate { .. }
                | StoreError::Proxy { .. }
                | StoreError::VirtualHostDns { .. }
                | StoreError::WrongRegion { .. }
                | StoreError::AccessDenied { .. }
                | StoreError::WritesRefused(_)
        )
    }
}

pub(super) fn classify<E>(err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>, bucket: &str, key: &str) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if let Some(identity) = identity_error(&err) {
        return StoreError::Credentials(identity);
    }
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_string);
    let text = format!("{}", DisplayErrorContext(&err));
    let b = bucket.to_string();
    let k = key.to_string();
    if status == Some(307) {
        let region = wrong_region(&err).flatten().unwrap_or_else(|| "unknown".to_string());
        return StoreError::TemporaryRedirect { bucket: b, region };
    }
    if let Some(region) = wrong_region(&err) {
        return StoreError::WrongRegion { bucket: b, region: region.unwrap_or_else(|| "another region".to_string()) };
    }
    match (&err, code.as_deref(), status) {
        (SdkError::ServiceError(_), Some("NoSuchBucket"), _) => StoreError::NoSuchBucket(b),
        (SdkError::ServiceError(_), Some("NoSuchKey" | "NotFound"), _) | (SdkError::ServiceError(_), _, Some(404)) => {
            if code.as_deref() == Some("NoSuchBucket") {
                StoreError::NoSuchBucket(b)
            } else {
                StoreError::NotFound { bucket: b, key: k }
            }
        }
        (_, Some("NotImplemented"), _) | (_, _, Some(501)) => {
            StoreError::NotImplemented { bucket: b, key: k, message: first_line(err.message().unwrap_or("501 Not Implemented")) }
        }
        (_, Some("PreconditionFailed"), _) | (_, _, Some(412)) => StoreError::PreconditionFailed { bucket: b, key: k },
        (_, Some("ConditionalRequestConflict"), _) | (_, _, Some(409)) => StoreError::Conflict { bucket: b, key: k },
        (_, Some(c @ ("SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded" | "TooManyRequests")), _) => {
            StoreError::Throttled { bucket: b, key: k, code: c.to_string() }
        }
        (_, Some("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken"), _) => {
            StoreError::InvalidCredentials(code.unwrap_or_default())
        }
        (_, Some("AccessDenied" | "AllAccessDisabled"), _) | (SdkError::ServiceError(_), _, Some(403)) => {
            StoreError::AccessDenied { bucket: b, key: k, message: err.message().unwrap_or("403 Forbidden").to_string() }
        }
        (SdkError::DispatchFailure(d), _, _) if d.is_timeout() && !is_connect_timeout(&text) => {
            StoreError::Timeout { bucket: b, key: k, reason: short_reason(&text) }
        }
        (SdkError::TimeoutError(_), _, _) => StoreError::Timeout { bucket: b, key: k, reason: short_reason(&text) },
        // The answer broke off or stalled before the SDK had read it all.
        (SdkError::ResponseError(_), _, _) => StoreError::Interrupted { bucket: b, key: k, message: short_reason(&text) },
        (SdkError::DispatchFailure(d), _, _) if d.is_io() || d.is_timeout() => StoreError::Connect(short_reason(&text)),
        (SdkError::DispatchFailure(_), _, _) if find_in_chain::<CredentialsError>(&err).is_some() => StoreError::NoCredentials(short_reason(&text)),
        (SdkError::DispatchFailure(_), _, _) => StoreError::Connect(short_reason(&text)),
        (SdkError::ServiceError(_), Some(c), _) => {
            let message = err.message().map(|m| format!("{c}: {m}")).unwrap_or_else(|| c.to_string());
            StoreError::Other { bucket: b, key: k, message: first_line(&message) }
        }
        (SdkError::ServiceError(_), None, Some(s)) => StoreError::Other { bucket: b, key: k, message: format!("HTTP {s}") },
        _ => StoreError::Other { bucket: b, key: k, message: first_line(&text) },
    }
}

/// The caller's credential chain's error, if that is why a request failed.
pub(super) fn identity_error(err: &(dyn std::error::Error + 'static)) -> Option<crate::s3::credentials::messages::IdentityError> {
    find_in_chain::<crate::s3::credentials::messages::IdentityError>(err).cloned()
}

/// `err` and every error under it: `source()`, and for an `io::Error` its
/// payload (`get_ref`), which `io::Error::source` skips (rustls's error
/// reaches us as the payload of the `io::Error` of the TLS handshake).
pub(super) fn error_chain<'a>(err: &'a (dyn std::error::Error + 'static)) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |&e| match e.downcast_ref::<std::io::Error>() {
        Some(io) => io.get_ref().map(|p| p as &(dyn std::error::Error + 'static)),
        None => e.source(),
    })
}

/// The first error of type `T` in `err`'s chain.
pub(super) fn find_in_chain<'a, T: std::error::Error + 'static>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    error_chain(err).find_map(|e| e.downcast_ref::<T>())
}

/// Whether a timed-out dispatch timed out connecting (no connection, so
/// "cannot connect"), not waiting for the answer. aws-smithy-http-client
/// reports both as `ConnectorError::timeout` with its crate-private
/// `HttpTimeoutError` ("HTTP connect timeout occurred after …" / "HTTP read
/// timeout …"), and attaches no connection metadata to either: its text is
/// the only thing that tells them apart.
pub(super) fn is_connect_timeout(text: &str) -> bool {
    text.contains("connect timeout")
}

/// Why a connection could not be made, by the error types in its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnectFailure {
    /// rustls refused the server's certificate.
    Certificate,
    /// The host name did not resolve (the SDK's `ResolveDnsError`).
    Dns,
    /// Another TLS failure (a server that does not speak TLS, …).
    Tls,
    /// Not a network failure the SDK could classify (`ConnectorError::is_other`)
    /// nor TLS: through a proxy, the proxy's refusal of the CONNECT tunnel.
    Refused,
    /// Anything else (refused, reset, unreachable, timed out).
    Network,
}

pub(super) fn connect_failure<E: std::error::Error + 'static>(err: &SdkError<E, HttpResponse>) -> Option<ConnectFailure> {
    let SdkError::DispatchFailure(d) = err else { return None };
    let connector = d.as_connector_error()?;
    let is_certificate = |e: &rustls::Error| {
        matches!(e, rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertRevocationList(_))
    };
    let tls = find_in_chain::<rustls::Error>(connector);
    Some(if tls.is_some_and(is_certificate) {
        ConnectFailure::Certificate
    } else if tls.is_some() {
        ConnectFailure::Tls
    } else if find_in_chain::<aws_smithy_runtime_api::client::dns::ResolveDnsError>(connector).is_some() {
        ConnectFailure::Dns
    } else if connector.is_other() {
        ConnectFailure::Refused
    } else {
        ConnectFailure::Network
    })
}

/// When S3 says the bucket lives in another region (`301 PermanentRedirect`,
/// a bare 301 to a HEAD, `307`, `400 AuthorizationHeaderMalformed`): that
/// region if the answer names it (`x-amz-bucket-region`, `<Region>`, or the
/// `<Endpoint>` of a redirect), else `Some(None)`.
pub(super) fn wrong_region<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<Option<String>> {
    let raw = err.raw_response()?;
    let status = raw.status().as_u16();
    let redirect =
        matches!(status, 301 | 307) || matches!(err.code(), Some("PermanentRedirect" | "TemporaryRedirect" | "AuthorizationHeaderMalformed"));
    if !redirect {
        return None;
    }
    let header = raw.headers().get("x-amz-bucket-region").map(str::to_string);
    let body = raw.body().bytes().map(String::from_utf8_lossy).unwrap_or_default();
    let in_body = xml_element(&body, "Region").or_else(|| xml_element(&body, "Endpoint").and_then(|e| region_of_endpoint(&e)));
    // A 307's Location: `https://bucket.s3-eu-west-1.amazonaws.com/key`.
    let location = raw.headers().get("location").and_then(|l| {
        let host = l.split("://").nth(1).unwrap_or(l).split(['/', '?']).next().unwrap_or("");
        region_of_endpoint(host)
    });
    let region = header.or(in_body).or(location).filter(|r| is_region_name(r));
    // An AuthorizationHeaderMalformed that names no region is about something else.
    if region.is_none() && !matches!(status, 301 | 307) && err.code() != Some("PermanentRedirect") {
        return None;
    }
    Some(region)
}

pub(super) fn xml_element(body: &str, name: &str) -> Option<String> {
    let start = body.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + body[start..].find(&format!("</{name}>"))?;
    Some(body[start..end].trim().to_string())
}

/// `bucket.s3.eu-west-1.amazonaws.com`, `s3-eu-west-1.amazonaws.com` → `eu-west-1`.
pub(super) fn region_of_endpoint(endpoint: &str) -> Option<String> {
    let host = endpoint.split("://").last().unwrap_or(endpoint);
    let labels: Vec<&str> = host.split('.').collect();
    let at = labels.iter().position(|l| *l == "s3" || l.starts_with("s3-"))?;
    let label = labels[at];
    let region = match label.strip_prefix("s3-") {
        Some(r) => r,
        None => labels.get(at + 1)?,
    };
    (region != "amazonaws" && is_region_name(region)).then(|| region.to_string())
}

/// Plausible region names only (what a redirect says is untrusted input).
pub(super) fn is_region_name(r: &str) -> bool {
    !r.is_empty() && r.len() <= 32 && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub(super) fn is_conflict<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    err.code() == Some("ConditionalRequestConflict") || err.raw_response().map(|r| r.status().as_u16()) == Some(409)
}

/// The SDK's error text without its debug dump of the error structure.
pub(super) fn short_reason(text: &str) -> String {
    let cut = [" (DispatchFailure", " (TimeoutError", " (ResponseError"].iter().filter_map(|m| text.find(m)).min().unwrap_or(text.len());
    first_line(text[..cut].trim_start_matches("dispatch failure: ").trim_start_matches("response error: ").trim_start_matches("other: "))
}

pub(super) fn first_line(s: &str) -> String {
    let s = s.lines().next().unwrap_or(s);
    if s.len() > 400 {
        format!("{}…", &s[..s.char_indices().nth(400).map(|(i, _)| i).unwrap_or(s.len())])
    } else {
        s.to_string()
    }
}

/// What a connection error names.
#[derive(Debug, Default, Clone)]
pub(super) struct NetworkHint {
    pub(super) trust: String,
    pub(super) proxy: Option<String>,
    /// The bucket's virtual-hosted host name on a custom endpoint.
    pub(super) virtual_host: Option<String>,
    /// What to renew when S3 answers `ExpiredToken`.
    pub(super) expired_token: Option<String>,
}

impl NetworkHint {
    /// A connection that failed, told by what failed: the certificate, the
    /// name of a virtual-hosted bucket, the caller's proxy.
    pub(super) fn connect_error(&self, bucket: &str, failure: Option<ConnectFailure>, reason: String) -> StoreError {
        let network = self;
        if failure == Some(ConnectFailure::Certificate) {
            let trust = if network.trust.is_empty() { "the trusted CAs".to_string() } else { network.trust.clone() };
            return StoreError::Certificate { trust, reason };
        }
        let lower = reason.to_ascii_lowercase();
        // The SDK's `ResolveDnsError` wraps the failures of resolvers it
        // knows; the default connector's resolver fails inside hyper-util's
        // crate-private `ConnectError` ("dns error") around a std
        // `io::Error` of no dedicated kind: then its text is all there is.
        let dns = failure == Some(ConnectFailure::Dns) || lower.contains("dns error");
        if let (true, Some(host)) = (dns, &network.virtual_host) {
            return StoreError::VirtualHostDns { bucket: bucket.to_string(), host: host.clone() };
        }
        if let Some(proxy) = &network.proxy {
            // A refused CONNECT is no network error (`Refused`). An
            // unreachable proxy is one, and hyper-util's `TunnelError` that
            // says so is in a private module (connect/proxy/tunnel.rs): its
            // text ("error connecting to proxy") is all that tells it.
            if failure == Some(ConnectFailure::Refused) || lower.contains("proxy") || lower.contains("tunnel") {
                return StoreError::Proxy { proxy: proxy.clone(), reason };
            }
        }
        StoreError::Connect(reason)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn connection_failures_told_by_type_through_io_payloads() {
        use super::{connect_failure, find_in_chain, ConnectFailure};
        use aws_credential_types::provider::error::CredentialsError;
        use aws_sdk_s3::operation::get_object::GetObjectError;
        use aws_smithy_runtime_api::client::dns::ResolveDnsError;
        use aws_smithy_runtime_api::client::result::ConnectorError;
        type Err = aws_sdk_s3::error::SdkError<GetObjectError, aws_sdk_s3::config::http::HttpResponse>;
        let dispatch = |c: ConnectorError| -> Err { Err::dispatch_failure(c) };
        // rustls's error as the payload of the handshake's io::Error (which
        // io::Error::source skips).
        let unknown_ca = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let tls = std::io::Error::new(std::io::ErrorKind::InvalidData, unknown_ca);
        assert_eq!(connect_failure(&dispatch(ConnectorError::other(Box::new(tls), None))), Some(ConnectFailure::Certificate));
        let other_tls = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert_eq!(connect_failure(&dispatch(ConnectorError::other(Box::new(other_tls), None))), Some(ConnectFailure::Tls));
        let dns = ResolveDnsError::new(std::io::Error::other("failed to lookup address information"));
        assert_eq!(connect_failure(&dispatch(ConnectorError::io(Box::new(dns)))), Some(ConnectFailure::Dns));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(connect_failure(&dispatch(ConnectorError::io(Box::new(refused)))), Some(ConnectFailure::Network));
        assert_eq!(connect_failure(&dispatch(ConnectorError::other("tunnel unsuccessful".into(), None))), Some(ConnectFailure::Refused));
        let creds = dispatch(ConnectorError::other(Box::new(CredentialsError::not_loaded("no profile")), None));
        assert!(find_in_chain::<CredentialsError>(&creds).is_some());
        assert_eq!(connect_failure(&Err::timeout_error("late")), None, "not a dispatch failure");
    }

    #[test]
    fn regions_named_in_s3_answers() {
        let malformed = "<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region 'us-east-1' is wrong; expecting 'eu-west-1'</Message><Region>eu-west-1</Region></Error>";
        assert_eq!(super::xml_element(malformed, "Region").as_deref(), Some("eu-west-1"));
        assert_eq!(super::xml_element(malformed, "Endpoint"), None);
        assert_eq!(super::region_of_endpoint("b.s3.eu-west-1.amazonaws.com").as_deref(), Some("eu-west-1"));
        assert_eq!(super::region_of_endpoint("s3-ap-southeast-2.amazonaws.com").as_deref(), Some("ap-southeast-2"));
        assert_eq!(super::region_of_endpoint("b.s3.amazonaws.com"), None);
        assert!(super::is_region_name("us-gov-west-1"));
        assert!(!super::is_region_name("eu-west-1\nx") && !super::is_region_name("") && !super::is_region_name("../x"));
    }
}
