//! What a bucket's policy demands of our requests, decided in one place:
//! server-side encryption on every write, the expected bucket owner and the
//! requester-pays header on every request (from the caller's git config,
//! per remote), and an integrity header on every upload.
//!
//! The headers are added by one SDK interceptor on the store's client
//! ([`BucketPolicy::client`]), so no call site has to remember them.

use std::path::Path;

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_s3::config::{ConfigBag, Intercept, RequestChecksumCalculation, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;

use crate::local::git::Git;

/// The git config variables of the bucket policy (and, per remote, what a
/// repository remembers of an encrypted remote: `remote.<name>.s3-keyring`).
const CONFIG_PATTERN: &str = r"^(s3\.|remote\..*\.s3)";

/// The caller's git-s3 settings (`CONFIG_PATTERN`), as `git config
/// --get-regexp` lists them: what [`BucketPolicy::from_listing`] and what a
/// repository remembers of an encrypted remote (`crypt::trust`) read, from
/// one `git config` run. Exit status 1 means none is set; any other failure
/// (no repository is fine: global config is read) leaves none.
pub(crate) async fn s3_config(git: &Git) -> String {
    git.run(&["config", "--get-regexp", CONFIG_PATTERN]).await.unwrap_or_default()
}

/// `x-amz-server-side-encryption`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encryption {
    /// SSE-S3.
    Aes256,
    /// SSE-KMS.
    Kms,
    /// Dual-layer SSE-KMS.
    KmsDsse,
}

impl Encryption {
    pub(crate) fn header_value(self) -> &'static str {
        match self {
            Encryption::Aes256 => "AES256",
            Encryption::Kms => "aws:kms",
            Encryption::KmsDsse => "aws:kms:dsse",
        }
    }

    fn parse(v: &str) -> Option<Encryption> {
        match v.trim() {
            v if v.eq_ignore_ascii_case("AES256") => Some(Encryption::Aes256),
            v if v.eq_ignore_ascii_case("aws:kms") => Some(Encryption::Kms),
            v if v.eq_ignore_ascii_case("aws:kms:dsse") => Some(Encryption::KmsDsse),
            _ => None,
        }
    }
}

/// The settings a remote's bucket policy asks for (all off by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BucketPolicy {
    pub(crate) encryption: Option<Encryption>,
    pub(crate) kms_key_id: Option<String>,
    pub(crate) bucket_key_enabled: Option<bool>,
    pub(crate) expected_bucket_owner: Option<String>,
    pub(crate) requester_pays: bool,
}

/// A setting with a value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("git config {key} is '{value}'; {expected}")]
pub(crate) struct PolicyError {
    pub(crate) key: String,
    pub(crate) value: String,
    pub(crate) expected: &'static str,
}

/// The settings: (global key, per-remote key), both lower case as `git
/// config --get-regexp` prints them.
const SETTINGS: &[(&str, &str)] = &[
    ("s3.serversideencryption", "s3serversideencryption"),
    ("s3.ssekmskeyid", "s3ssekmskeyid"),
    ("s3.bucketkeyenabled", "s3bucketkeyenabled"),
    ("s3.expectedbucketowner", "s3expectedbucketowner"),
    ("s3.requestpayer", "s3requestpayer"),
];

/// The spelling in the docs, for messages.
fn spelled(global: &str, remote: Option<&str>) -> String {
    let name = match global {
        "s3.serversideencryption" => "serverSideEncryption",
        "s3.ssekmskeyid" => "sseKmsKeyId",
        "s3.bucketkeyenabled" => "bucketKeyEnabled",
        "s3.expectedbucketowner" => "expectedBucketOwner",
        _ => "requestPayer",
    };
    match remote {
        Some(r) => format!("remote.{r}.s3{}{}", name[..1].to_ascii_uppercase(), &name[1..]),
        None => format!("s3.{name}"),
    }
}

impl BucketPolicy {
    pub(crate) fn is_empty(&self) -> bool {
        *self == BucketPolicy::default()
    }

    /// The caller's settings for `remote` (a git remote name; None for a
    /// URL): `remote.<name>.s3ServerSideEncryption` wins over
    /// `s3.serverSideEncryption`, and so on. One `git config` run.
    pub(crate) async fn from_git(git: &Git, remote: Option<&str>) -> Result<BucketPolicy, PolicyError> {
        BucketPolicy::from_listing(&s3_config(git).await, remote)
    }

    /// From `git config --get-regexp`'s lines (`key value`; the last one
    /// of a key wins, as in `git config --get`).
    pub(crate) fn from_listing(listing: &str, remote: Option<&str>) -> Result<BucketPolicy, PolicyError> {
        let mut values: [Option<(String, String)>; 5] = Default::default();
        let remote_prefix = remote.map(|r| format!("remote.{r}."));
        for line in listing.lines() {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            for (i, (global, per_remote)) in SETTINGS.iter().enumerate() {
                let is_remote = remote_prefix.as_deref().and_then(|p| key.strip_prefix(p)).is_some_and(|k| k.eq_ignore_ascii_case(per_remote));
                let remote_set = values[i].as_ref().is_some_and(|(k, _)| k != &spelled(global, None));
                if is_remote {
                    values[i] = Some((spelled(global, remote), value.to_string()));
                } else if key.eq_ignore_ascii_case(global) && !remote_set {
                    values[i] = Some((spelled(global, None), value.to_string()));
                }
            }
        }
        let bad = |(key, value): &(String, String), expected| PolicyError { key: key.clone(), value: value.clone(), expected };
        let mut p = BucketPolicy::default();
        let [sse, kms, bucket_key, owner, payer] = values;
        if let Some(kv) = sse.as_ref().filter(|(_, v)| !v.is_empty()) {
            p.encryption = Some(Encryption::parse(&kv.1).ok_or_else(|| bad(kv, "it must be AES256, aws:kms or aws:kms:dsse"))?);
        }
        if let Some((_, v)) = kms.filter(|(_, v)| !v.is_empty()) {
            p.kms_key_id = Some(v);
        }
        if let Some(kv) = bucket_key.as_ref().filter(|(_, v)| !v.is_empty()) {
            p.bucket_key_enabled = Some(match kv.1.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => true,
                "false" | "no" | "off" | "0" => false,
                _ => return Err(bad(kv, "it must be true or false")),
            });
        }
        if let Some(kv) = owner.as_ref().filter(|(_, v)| !v.is_empty()) {
            if kv.1.len() != 12 || !kv.1.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(kv, "it must be the bucket owner's 12-digit AWS account ID"));
            }
            p.expected_bucket_owner = Some(kv.1.clone());
        }
        if let Some(kv) = payer.as_ref().filter(|(_, v)| !v.is_empty()) {
            if !kv.1.eq_ignore_ascii_case("requester") {
                return Err(bad(kv, "it must be 'requester' (or unset)"));
            }
            p.requester_pays = true;
        }
        if p.kms_key_id.is_some() && !matches!(p.encryption, Some(Encryption::Kms | Encryption::KmsDsse)) {
            let (key, value) = kms_key_of(listing, remote);
            return Err(PolicyError { key, value, expected: "a KMS key needs s3.serverSideEncryption aws:kms (or aws:kms:dsse)" });
        }
        Ok(p)
    }

    /// The headers every request carries.
    pub(crate) fn request_headers(&self) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        if let Some(owner) = &self.expected_bucket_owner {
            h.push(("x-amz-expected-bucket-owner", owner.clone()));
        }
        if self.requester_pays {
            h.push(("x-amz-request-payer", "requester".to_string()));
        }
        h
    }

    /// The headers of a request that creates an object (PutObject,
    /// CreateMultipartUpload, CopyObject; never a part).
    pub(crate) fn write_headers(&self) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        if let Some(e) = self.encryption {
            h.push(("x-amz-server-side-encryption", e.header_value().to_string()));
            if let Some(k) = &self.kms_key_id {
                h.push(("x-amz-server-side-encryption-aws-kms-key-id", k.clone()));
            }
            if let Some(b) = self.bucket_key_enabled {
                h.push(("x-amz-server-side-encryption-bucket-key-enabled", b.to_string()));
            }
        }
        h
    }

    /// For an `AccessDenied`: the settings a bucket policy may demand that
    /// are not set (S3 does not say which condition failed).
    pub(crate) fn unset_settings_hint(&self) -> Option<String> {
        let mut unset = Vec::new();
        if self.encryption.is_none() {
            unset.push("s3.serverSideEncryption aws:kms (or AES256)");
        }
        if !self.requester_pays {
            unset.push("s3.requestPayer requester");
        }
        if self.expected_bucket_owner.is_none() {
            unset.push("s3.expectedBucketOwner <account-id>");
        }
        (!unset.is_empty()).then(|| {
            format!("if the bucket policy demands it, set git config {} (see the Bucket policies section of docs/configuration.md)", unset.join(", "))
        })
    }

    /// `client` with these headers on its requests (the same client when
    /// there are none). Shares the client's connections and credentials.
    pub(crate) fn client(&self, client: aws_sdk_s3::Client) -> aws_sdk_s3::Client {
        if self.is_empty() {
            return client;
        }
        let conf = client.config().to_builder().interceptor(PolicyHeaders(self.clone())).build();
        aws_sdk_s3::Client::from_conf(conf)
    }
}

/// The key and value of the KMS key setting in effect, for its error.
fn kms_key_of(listing: &str, remote: Option<&str>) -> (String, String) {
    let remote_key = remote.map(|r| format!("remote.{r}.s3ssekmskeyid"));
    let found =
        |want: &str| listing.lines().rev().find_map(|l| l.split_once(' ').filter(|(k, _)| k.eq_ignore_ascii_case(want)).map(|(_, v)| v.to_string()));
    match remote_key.as_deref().and_then(|k| found(k).map(|v| (spelled("s3.ssekmskeyid", remote), v))) {
        Some(kv) => kv,
        None => (spelled("s3.ssekmskeyid", None), found("s3.ssekmskeyid").unwrap_or_default()),
    }
}

/// Operations that create an object and take the encryption headers.
const WRITES: &[&str] = &["PutObject", "CreateMultipartUpload", "CopyObject"];

#[derive(Debug)]
struct PolicyHeaders(BucketPolicy);

impl Intercept for PolicyHeaders {
    fn name(&self) -> &'static str {
        "git-s3 bucket policy headers"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let write = cfg.load::<Metadata>().is_some_and(|m| WRITES.contains(&m.name()));
        let headers = context.request_mut().headers_mut();
        for (name, value) in self.0.request_headers() {
            headers.insert(name, value);
        }
        if write {
            for (name, value) in self.0.write_headers() {
                headers.insert(name, value);
            }
        }
        Ok(())
    }
}

/// True when uploads through `client` need our own `Content-MD5`: the SDK
/// sends a CRC32 checksum with every upload unless it was told to send them
/// only when required (S3-compatible endpoints); then nothing would prove
/// the body's integrity, and Object Lock buckets (or a policy demanding an
/// integrity header) refuse the write.
pub(crate) fn needs_content_md5(client: &aws_sdk_s3::Client) -> bool {
    matches!(client.config().request_checksum_calculation(), Some(RequestChecksumCalculation::WhenRequired))
}

/// `Content-MD5` of bytes (base64 of the MD5), off the async runtime.
pub(crate) async fn content_md5_of_bytes(data: bytes::Bytes) -> std::io::Result<String> {
    tokio::task::spawn_blocking(move || md5_base64(&[&data])).await.map_err(std::io::Error::other)
}

/// `Content-MD5` of `len` bytes of a file from `offset` (`None`: to its end).
pub(crate) async fn content_md5_of_file(path: &Path, offset: u64, len: Option<u64>) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use md5::Digest;
        use std::io::{Read, Seek};
        let mut f = std::fs::File::open(&path)?;
        f.seek(std::io::SeekFrom::Start(offset))?;
        let mut reader: Box<dyn Read> = match len {
            Some(n) => Box::new(f.take(n)),
            None => Box::new(f),
        };
        let mut hasher = md5::Md5::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(aws_smithy_types::base64::encode(hasher.finalize()))
    })
    .await
    .map_err(std::io::Error::other)?
}

fn md5_base64(chunks: &[&[u8]]) -> String {
    use md5::Digest;
    let mut hasher = md5::Md5::new();
    for c in chunks {
        hasher.update(c);
    }
    aws_smithy_types::base64::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_remote_settings_win_over_global_ones() {
        let listing = "s3.serversideencryption AES256\nremote.origin.s3serversideencryption aws:kms\nremote.origin.s3ssekmskeyid arn:aws:kms:eu-west-1:111122223333:key/k\ns3.requestpayer requester\nremote.other.s3expectedbucketowner 999999999999";
        let p = BucketPolicy::from_listing(listing, Some("origin")).unwrap();
        assert_eq!(p.encryption, Some(Encryption::Kms));
        assert_eq!(p.kms_key_id.as_deref(), Some("arn:aws:kms:eu-west-1:111122223333:key/k"));
        assert!(p.requester_pays);
        assert_eq!(p.expected_bucket_owner, None);
        // A global line after the remote's does not win.
        let p = BucketPolicy::from_listing("remote.origin.s3serversideencryption aws:kms\ns3.serversideencryption AES256", Some("origin")).unwrap();
        assert_eq!(p.encryption, Some(Encryption::Kms));
        // Without a remote name (a URL), only the global settings count.
        let p = BucketPolicy::from_listing(listing, None).unwrap();
        assert_eq!((p.encryption, p.kms_key_id), (Some(Encryption::Aes256), None));
        assert!(BucketPolicy::from_listing("", Some("origin")).unwrap().is_empty());
    }

    #[test]
    fn bad_values_name_the_setting() {
        let e = BucketPolicy::from_listing("remote.origin.s3serversideencryption kms", Some("origin")).unwrap_err();
        assert_eq!(e.to_string(), "git config remote.origin.s3ServerSideEncryption is 'kms'; it must be AES256, aws:kms or aws:kms:dsse");
        let e = BucketPolicy::from_listing("s3.expectedbucketowner me", None).unwrap_err();
        assert!(e.to_string().starts_with("git config s3.expectedBucketOwner is 'me'"), "{e}");
        let e = BucketPolicy::from_listing("s3.ssekmskeyid k", None).unwrap_err();
        assert!(e.to_string().contains("needs s3.serverSideEncryption aws:kms"), "{e}");
        assert!(BucketPolicy::from_listing("s3.requestpayer owner", None).is_err());
        assert!(BucketPolicy::from_listing("s3.bucketkeyenabled maybe", None).is_err());
    }

    #[test]
    fn headers() {
        let p = BucketPolicy {
            encryption: Some(Encryption::Kms),
            kms_key_id: Some("k".into()),
            bucket_key_enabled: Some(true),
            expected_bucket_owner: Some("111122223333".into()),
            requester_pays: true,
        };
        assert_eq!(
            p.request_headers(),
            vec![("x-amz-expected-bucket-owner", "111122223333".to_string()), ("x-amz-request-payer", "requester".to_string())]
        );
        assert_eq!(p.write_headers().len(), 3);
        assert_eq!(md5_base64(&[b"hello"]), "XUFAKrxLKna5cZ2REBfFkg==");
    }
}
