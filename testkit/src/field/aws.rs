//! Amazon S3's own host names, served by the field server when a client
//! uses it as its proxy with no endpoint override: `s3.<region>.amazonaws.com`
//! (path style) and `<bucket>.s3.<region>.amazonaws.com` (virtual-hosted),
//! plain through `GET http://…` or TLS through `CONNECT` (certificates from
//! the run's CA). Requests are translated to path style for the store
//! behind (moto), and what they carried is recorded, so a test can check
//! that the SDK's default code path for AWS ran: virtual-hosted names,
//! endpoints resolved from the region, default request checksums.

use http::HeaderMap;

/// Regions the TLS certificate names (wildcards cover one label: a bucket
/// name without dots).
pub const REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-northeast-1",
    "ap-south-1",
    "ca-central-1",
    "sa-east-1",
];

/// The DNS names of the certificate: every S3 endpoint form of
/// [`REGIONS`], with and without a bucket label.
pub(crate) fn certificate_names() -> Vec<String> {
    let mut names = Vec::new();
    let mut both = |host: String| {
        names.push(format!("*.{host}"));
        names.push(host);
    };
    both("s3.amazonaws.com".to_string());
    both("s3-accelerate.amazonaws.com".to_string());
    both("s3-accelerate.dualstack.amazonaws.com".to_string());
    for r in REGIONS {
        both(format!("s3.{r}.amazonaws.com"));
        both(format!("s3.dualstack.{r}.amazonaws.com"));
        both(format!("s3-{r}.amazonaws.com"));
    }
    names
}

/// An S3 host name of Amazon's, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsHost {
    /// The bucket of a virtual-hosted name.
    pub bucket: Option<String>,
    /// The region the name is in (`us-east-1` for the global names).
    pub region: String,
}

/// `host` (with or without `:port`) when it is one of S3's names.
pub fn parse_host(host: &str) -> Option<AwsHost> {
    let host = host.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).map(|(h, _)| h).unwrap_or(host);
    let rest = host.to_ascii_lowercase();
    let rest = rest.trim_end_matches('.').strip_suffix(".amazonaws.com")?.to_string();
    let labels: Vec<&str> = rest.split('.').collect();
    let at = labels.iter().position(|l| *l == "s3" || l.starts_with("s3-"))?;
    let bucket = (at > 0).then(|| labels[..at].join("."));
    let service = &labels[at..];
    let region = match service[0] {
        "s3" => service[1..].iter().find(|l| **l != "dualstack").map(|r| r.to_string()),
        l if l.starts_with("s3-accelerate") => None,
        l => l.strip_prefix("s3-").map(str::to_string),
    };
    Some(AwsHost { bucket, region: region.unwrap_or_else(|| "us-east-1".to_string()) })
}

/// One request that reached the field server under an S3 host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsRequest {
    /// The `Host` it was sent to.
    pub host: String,
    /// Virtual-hosted (the bucket in the host name), else path style.
    pub virtual_hosted: bool,
    /// Through a `CONNECT` tunnel (TLS), else plain HTTP.
    pub tls: bool,
    pub method: String,
    /// Path style, as passed on to the store: `/bucket/key?query`.
    pub path: String,
    /// `Content-Encoding` (`aws-chunked` for a streamed body with trailers).
    pub content_encoding: Option<String>,
    /// `x-amz-content-sha256` (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`, …).
    pub content_sha256: Option<String>,
    /// `x-amz-trailer` (`x-amz-checksum-crc32`, …).
    pub trailer: Option<String>,
    /// `x-amz-sdk-checksum-algorithm`.
    pub checksum_algorithm: Option<String>,
    /// The `x-amz-checksum-*` headers sent (names).
    pub checksum_headers: Vec<String>,
    /// The store's (or the field server's) answer.
    pub status: u16,
}

impl AwsRequest {
    pub(crate) fn new(host: &str, aws: &AwsHost, tls: bool, method: &str, path: &str, headers: &HeaderMap) -> AwsRequest {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let mut checksum_headers: Vec<String> =
            headers.keys().map(|k| k.as_str().to_string()).filter(|k| k.starts_with("x-amz-checksum-") && k != "x-amz-checksum-mode").collect();
        checksum_headers.sort();
        AwsRequest {
            host: host.to_string(),
            virtual_hosted: aws.bucket.is_some(),
            tls,
            method: method.to_string(),
            path: path.to_string(),
            content_encoding: get("content-encoding"),
            content_sha256: get("x-amz-content-sha256"),
            trailer: get("x-amz-trailer"),
            checksum_algorithm: get("x-amz-sdk-checksum-algorithm"),
            checksum_headers,
            status: 0,
        }
    }

    /// The body carried a checksum: a trailer of an `aws-chunked` body, or
    /// an `x-amz-checksum-*` header.
    pub fn has_checksum(&self) -> bool {
        self.trailer.as_deref().map(|t| t.starts_with("x-amz-checksum-")).unwrap_or(false) || !self.checksum_headers.is_empty()
    }

    /// An `aws-chunked` body.
    pub fn aws_chunked(&self) -> bool {
        self.content_encoding.as_deref().map(|e| e.split(',').any(|p| p.trim() == "aws-chunked")).unwrap_or(false)
    }
}

/// The path-style path (`/bucket/key`) of a request to `aws` for `path`.
pub(crate) fn path_style(aws: &AwsHost, path: &str) -> String {
    match &aws.bucket {
        Some(b) => format!("/{b}{}", if path.starts_with('/') { path.to_string() } else { format!("/{path}") }),
        None => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_host_names() {
        let h = |b: Option<&str>, r: &str| Some(AwsHost { bucket: b.map(str::to_string), region: r.to_string() });
        assert_eq!(parse_host("bkt.s3.eu-west-1.amazonaws.com:443"), h(Some("bkt"), "eu-west-1"));
        assert_eq!(parse_host("s3.eu-west-1.amazonaws.com"), h(None, "eu-west-1"));
        assert_eq!(parse_host("bkt.s3.amazonaws.com"), h(Some("bkt"), "us-east-1"));
        assert_eq!(parse_host("s3.amazonaws.com"), h(None, "us-east-1"));
        assert_eq!(parse_host("bkt.s3.dualstack.us-west-2.amazonaws.com"), h(Some("bkt"), "us-west-2"));
        assert_eq!(parse_host("bkt.s3-accelerate.amazonaws.com"), h(Some("bkt"), "us-east-1"));
        assert_eq!(parse_host("bkt.s3-eu-west-1.amazonaws.com"), h(Some("bkt"), "eu-west-1"));
        assert_eq!(parse_host("sts.amazonaws.com"), None);
        assert_eq!(parse_host("127.0.0.1:9000"), None);
        assert_eq!(parse_host("s3.example.com"), None);
        assert_eq!(path_style(&AwsHost { bucket: Some("b".into()), region: "x".into() }, "/k/x"), "/b/k/x");
        assert_eq!(path_style(&AwsHost { bucket: Some("b".into()), region: "x".into() }, "/"), "/b/");
        assert_eq!(path_style(&AwsHost { bucket: None, region: "x".into() }, "/b/k"), "/b/k");
        assert!(certificate_names().contains(&"*.s3.eu-west-1.amazonaws.com".to_string()));
    }
}
