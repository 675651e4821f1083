//! Parsing of `s3://[profile@]bucket/prefix` and `s3+zip://…` remote URLs,
//! and the S3 URL of a git remote given by name.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Scheme {
    /// `s3://`.
    S3,
    /// `s3+zip://`: also a `repo.zip` (`git archive`) per pushed ref.
    S3Zip,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteUrl {
    pub(crate) scheme: Scheme,
    pub profile: Option<String>,
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; never empty.
    pub prefix: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("invalid remote URL '{0}': expected s3://[profile@]bucket/prefix or s3+zip://[profile@]bucket/prefix")]
    Scheme(String),
    #[error("invalid remote URL '{url}': bucket name '{bucket}' is not a valid S3 bucket name (3-63 characters: a-z, 0-9, '.', '-')")]
    Bucket { url: String, bucket: String },
    #[error("invalid remote URL '{0}': a prefix is required after the bucket (s3://bucket/prefix)")]
    MissingPrefix(String),
    #[error("invalid remote URL '{0}': empty profile name before '@'")]
    EmptyProfile(String),
    #[error("invalid remote URL '{0}': the prefix must not contain '..', '//' or control characters")]
    BadPrefix(String),
}

/// Why a git remote name does not lead to an S3 URL.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RemoteNameError {
    #[error("invalid remote name '{0}'")]
    InvalidName(String),
    /// `git remote get-url` failed (`detail`: its first stderr line).
    #[error("no remote '{name}' ({detail})")]
    NotConfigured { name: String, detail: String },
    #[error("remote '{name}' has URL '{url}', which is not an s3:// or s3+zip:// URL")]
    NotS3 { name: String, url: String },
    #[error("remote '{name}': {source}")]
    BadUrl { name: String, url: String, source: UrlError },
}

/// A name git could take as a remote (never an option, never blank).
pub(crate) fn valid_remote_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('-') && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The S3 URL of git remote `name` in `git`'s repository.
pub(crate) async fn s3_url_of_remote(git: &crate::local::git::Git, name: &str) -> Result<RemoteUrl, RemoteNameError> {
    if !valid_remote_name(name) {
        return Err(RemoteNameError::InvalidName(name.to_string()));
    }
    let url = git.remote_url(name).await.map_err(|e| RemoteNameError::NotConfigured {
        name: name.to_string(),
        detail: match e {
            crate::local::git::GitError::Failed { stderr, .. } => stderr.lines().next().unwrap_or("").to_string(),
            other => other.to_string(),
        },
    })?;
    if !url.starts_with("s3://") && !url.starts_with("s3+zip://") {
        return Err(RemoteNameError::NotS3 { name: name.to_string(), url });
    }
    RemoteUrl::parse(&url).map_err(|source| RemoteNameError::BadUrl { name: name.to_string(), url, source })
}

impl RemoteUrl {
    pub fn parse(url: &str) -> Result<RemoteUrl, UrlError> {
        let (scheme, rest) = if let Some(r) = url.strip_prefix("s3://") {
            (Scheme::S3, r)
        } else if let Some(r) = url.strip_prefix("s3+zip://") {
            (Scheme::S3Zip, r)
        } else {
            return Err(UrlError::Scheme(url.to_string()));
        };
        let (profile, rest) = match rest.split_once('@') {
            Some((p, r)) if !p.contains('/') => {
                if p.is_empty() {
                    return Err(UrlError::EmptyProfile(url.to_string()));
                }
                (Some(p.to_string()), r)
            }
            _ => (None, rest),
        };
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (rest, ""),
        };
        if !valid_bucket(bucket) {
            return Err(UrlError::Bucket { url: url.to_string(), bucket: bucket.to_string() });
        }
        if prefix.is_empty() {
            return Err(UrlError::MissingPrefix(url.to_string()));
        }
        if prefix.split('/').any(|seg| seg.is_empty() || seg == "..") || prefix.chars().any(|c| c.is_control()) {
            return Err(UrlError::BadPrefix(url.to_string()));
        }
        Ok(RemoteUrl { scheme, profile, bucket: bucket.to_string(), prefix: prefix.to_string() })
    }

    /// `<prefix>/<rest>`
    pub(crate) fn key(&self, rest: &str) -> String {
        format!("{}/{}", self.prefix, rest)
    }
}

impl fmt::Display for RemoteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::S3 => "s3",
            Scheme::S3Zip => "s3+zip",
        };
        match &self.profile {
            Some(p) => write!(f, "{scheme}://{p}@{}/{}", self.bucket, self.prefix),
            None => write!(f, "{scheme}://{}/{}", self.bucket, self.prefix),
        }
    }
}

/// `[a-z0-9][a-z0-9.-]{2,62}`, as S3 (and git-remote-s3 0.4.2) require.
fn valid_bucket(b: &str) -> bool {
    let bytes = b.as_bytes();
    (3..=63).contains(&bytes.len())
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_profile_and_zip() {
        let u = RemoteUrl::parse("s3://my-bucket/some/prefix/").unwrap();
        assert_eq!(u.scheme, Scheme::S3);
        assert_eq!(u.profile, None);
        assert_eq!(u.bucket, "my-bucket");
        assert_eq!(u.prefix, "some/prefix");
        let u = RemoteUrl::parse("s3+zip://dev@my.bucket/repo").unwrap();
        assert_eq!(u.scheme, Scheme::S3Zip);
        assert_eq!(u.profile.as_deref(), Some("dev"));
        assert_eq!(u.bucket, "my.bucket");
        assert_eq!(u.to_string(), "s3+zip://dev@my.bucket/repo");
        assert_eq!(u.key("HEAD"), "repo/HEAD");
    }

    #[test]
    fn rejects_bad_urls() {
        assert!(matches!(RemoteUrl::parse("http://b/p"), Err(UrlError::Scheme(_))));
        assert!(matches!(RemoteUrl::parse("s3://Bad_Bucket/p"), Err(UrlError::Bucket { .. })));
        assert!(matches!(RemoteUrl::parse("s3://ab/p"), Err(UrlError::Bucket { .. })));
        assert!(matches!(RemoteUrl::parse("s3://bucket"), Err(UrlError::MissingPrefix(_))));
        assert!(matches!(RemoteUrl::parse("s3://bucket//"), Err(UrlError::MissingPrefix(_))));
        assert!(matches!(RemoteUrl::parse("s3://@bucket/p"), Err(UrlError::EmptyProfile(_))));
        assert!(matches!(RemoteUrl::parse("s3://bucket/a/../b"), Err(UrlError::BadPrefix(_))));
        assert!(matches!(RemoteUrl::parse("s3://bucket/a//b"), Err(UrlError::BadPrefix(_))));
    }
}
