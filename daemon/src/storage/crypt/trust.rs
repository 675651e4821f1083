//! A repository remembers that its remote is encrypted, and by which key
//! (trust on first use, issue 22). After the first clone, fetch or push of
//! an encrypted remote through a named git remote, the repository's config
//! holds `remote.<name>.s3-keyring <fingerprint>`: the fingerprint of the
//! remote's first key ([`RemoteKey::origin`]), which stays the same through
//! grants, revokes and `revoke --reencrypt` (the keyring keeps it). Only
//! holders of the remote key know it: no object in the bucket names it.
//!
//! From then on, a remote found plaintext (or empty), or a keyring whose
//! first key is another (someone who can write the bucket made their own,
//! to the recipients' public keys), is refused in one line before anything
//! is fetched or written; `git config --unset` accepts it deliberately.
//! The `git s3` commands given the remote's name check it the same way
//! ([`Trust::check`]; `access grant|revoke` also each keyring they edit);
//! given a URL, nothing is remembered or checked. Grants and revokes leave
//! what is remembered as it is (the first key's fingerprint survives them);
//! `git s3 migrate --decrypt|--encrypt-to` run from the repository updates it.

use std::collections::HashMap;
use std::sync::Arc;

use super::{keyring, CryptError, RemoteKey};
use crate::local::git::{Git, GitError};
use crate::s3::store::S3Store;
use crate::s3::url::RemoteUrl;

/// The per-remote git config variable (`remote.<name>.s3-keyring`).
pub(crate) const VARIABLE: &str = "s3-keyring";

/// The variable of a remote whose LFS objects live in another S3 prefix
/// than its code (code on another host, `git s3 lfs install`): that
/// prefix's keyring, remembered by the LFS agent.
pub(crate) const LFS_VARIABLE: &str = "s3-lfs-keyring";

/// What a repository remembers of the remote a session talks to.
#[derive(Debug, Clone)]
pub(crate) struct Trust {
    /// The git remote's name (None: git was given a URL; nothing is remembered).
    remote: Option<String>,
    /// The fingerprint remembered, if any.
    pinned: Option<String>,
    /// [`VARIABLE`], or [`LFS_VARIABLE`].
    variable: &'static str,
}

impl Default for Trust {
    fn default() -> Trust {
        Trust { remote: None, pinned: None, variable: VARIABLE }
    }
}

impl Trust {
    /// From `git config --get-regexp`'s lines (`key value`; the last one
    /// wins) of the repository whose remote `remote` (if named) is used.
    pub(crate) fn from_config(listing: &str, remote: Option<&str>) -> Trust {
        Trust::of_variable(listing, remote, VARIABLE)
    }

    /// [`Trust::from_config`] for the LFS agent: `lfs_elsewhere` when the
    /// remote's LFS objects are in another prefix than its code
    /// ([`LFS_VARIABLE`]).
    pub(crate) fn for_lfs(listing: &str, remote: Option<&str>, lfs_elsewhere: bool) -> Trust {
        Trust::of_variable(listing, remote, if lfs_elsewhere { LFS_VARIABLE } else { VARIABLE })
    }

    fn of_variable(listing: &str, remote: Option<&str>, variable: &'static str) -> Trust {
        let Some(remote) = remote else { return Trust { variable, ..Trust::default() } };
        let key = config_key(remote, variable);
        let pinned = listing
            .lines()
            .rev()
            .filter_map(|l| l.split_once(' '))
            .filter(|(k, _)| k.eq_ignore_ascii_case(&key))
            .map(|(_, v)| v.trim().to_string())
            .find(|v| !v.is_empty());
        Trust { remote: Some(remote.to_string()), pinned, variable }
    }

    /// `remote.<name>.<variable>`.
    fn key(&self, remote: &str) -> String {
        config_key(remote, self.variable)
    }

    /// Refuses a keyring whose first key is not the one remembered.
    pub(crate) fn check_key(&self, url: &RemoteUrl, key: &RemoteKey) -> Result<(), CryptError> {
        match (&self.remote, &self.pinned) {
            (Some(remote), Some(pin)) if !pin.eq_ignore_ascii_case(&key.origin()) => Err(CryptError::Untrusted(format!(
                "the keyring of {url} is not the one this repository remembers (git config {} is {pin}, this keyring's first key is {}): \
someone who can write the bucket may have replaced it with their own; nothing was fetched or written. If the remote was made again on purpose, \
accept it with `git config --unset {}`",
                self.key(remote),
                key.origin(),
                self.key(remote)
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses a plaintext (or empty) remote where an encrypted one is remembered.
    pub(crate) fn check_plaintext(&self, url: &RemoteUrl) -> Result<(), CryptError> {
        match (&self.remote, &self.pinned) {
            (Some(remote), Some(pin)) => Err(CryptError::Untrusted(format!(
                "{url} is not encrypted, but this repository remembers it encrypted (git config {} is {pin}): someone who can write the bucket \
may have replaced it; nothing was fetched or written. If it was decrypted on purpose (`git s3 migrate --decrypt`), accept it with \
`git config --unset {}`",
                self.key(remote),
                self.key(remote)
            ))),
            _ => Ok(()),
        }
    }

    /// The remote's key opened with the caller's identities (`env`; None:
    /// no keyring), refused when it is not the one remembered. (The daemon
    /// keeps the key it opened, with the manifest it may hold: every session
    /// opens the keyring again and judges it for itself.)
    pub(crate) async fn open_key(
        &self,
        store: &S3Store,
        url: &RemoteUrl,
        env: &HashMap<String, String>,
    ) -> Result<Option<Arc<RemoteKey>>, CryptError> {
        let key = keyring::open(store, url, env).await?;
        if let Some(k) = &key {
            self.check_key(url, k)?;
        }
        Ok(key)
    }

    /// What a `git s3` command given the remote's name (`access`, `gc`,
    /// `doctor`, `status`, …) checks before it reads or writes anything
    /// else: with nothing remembered (or a URL), nothing (no request);
    /// else the keyring opened with the caller's identities and refused
    /// when its first key is not the one remembered, or a remote without a
    /// keyring refused as plaintext. The key opened, if any. A command
    /// remembers nothing on first use: the first clone, fetch or push does.
    pub(crate) async fn check(&self, store: &S3Store, url: &RemoteUrl, env: &HashMap<String, String>) -> Result<Option<Arc<RemoteKey>>, CryptError> {
        if self.remote.is_none() || self.pinned.is_none() {
            return Ok(None);
        }
        let key = self.open_key(store, url, env).await?;
        if key.is_none() {
            self.check_plaintext(url)?;
        }
        Ok(key)
    }

    /// What the remote turned out to be (`key`: its key, None: plaintext),
    /// settled with what the repository remembers: an encrypted remote is
    /// remembered on first use, a plaintext one refused where an encrypted
    /// one is remembered.
    pub(crate) async fn settle(&self, git: &Git, url: &RemoteUrl, key: Option<&RemoteKey>) -> Result<(), CryptError> {
        match key {
            Some(k) => {
                self.remember(git, k).await;
                Ok(())
            }
            None => self.check_plaintext(url),
        }
    }

    /// Remembers `key`'s remote in the repository when nothing is
    /// remembered yet (the first clone, fetch or push). A failure to write
    /// the config is logged: the fetch or push goes on.
    pub(crate) async fn remember(&self, git: &Git, key: &RemoteKey) {
        let Some(remote) = self.remote.as_deref().filter(|_| self.pinned.is_none()) else { return };
        if let Err(e) = pin_variable(git, &self.key(remote), Some(key)).await {
            tracing::warn!(remote, error = %e, "could not remember the remote's key in the repository's config");
        }
    }
}

/// Sets `remote.<remote>.s3-keyring` in `git`'s repository to `key`'s
/// origin, or unsets it (None: the remote is plaintext now).
pub(crate) async fn pin(git: &Git, remote: &str, key: Option<&RemoteKey>) -> Result<(), GitError> {
    pin_variable(git, &config_key(remote, VARIABLE), key).await
}

/// Sets (or unsets) the git config variable `name` to `key`'s origin.
async fn pin_variable(git: &Git, name: &str, key: Option<&RemoteKey>) -> Result<(), GitError> {
    match key {
        Some(k) => git.run(&["config", name, &k.origin()]).await.map(drop),
        // Exit status 5: it was not set.
        None => git.status(&["config", "--unset-all", name]).await.map(drop),
    }
}

/// `remote.<remote>.<variable>`.
fn config_key(remote: &str, variable: &str) -> String {
    format!("remote.{remote}.{variable}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> RemoteUrl {
        RemoteUrl::parse("s3://bucket/p").unwrap()
    }

    #[test]
    fn the_pin_is_read_for_the_named_remote_only() {
        let listing = "remote.origin.s3-keyring 00aa\nremote.other.s3-keyring 11bb\nremote.origin.url s3://b/p\n";
        assert_eq!(Trust::from_config(listing, Some("origin")).pinned.as_deref(), Some("00aa"));
        assert_eq!(Trust::from_config(listing, Some("third")).pinned, None);
        assert_eq!(Trust::from_config(listing, None).pinned, None);
        assert_eq!(Trust::from_config("remote.origin.s3-keyring 1\nremote.origin.s3-keyring 2\n", Some("origin")).pinned.as_deref(), Some("2"));
    }

    #[test]
    fn a_pinned_remote_refuses_another_key_and_plaintext() {
        let key = RemoteKey::generate();
        let trust = Trust::from_config(&format!("remote.origin.s3-keyring {}\n", key.origin()), Some("origin"));
        assert!(trust.check_key(&url(), &key).is_ok());
        assert!(trust.check_key(&url(), &key.rotated().alone()).is_ok(), "a rotation keeps the origin");
        let e = trust.check_key(&url(), &RemoteKey::generate()).unwrap_err().to_string();
        assert!(e.contains("git config --unset remote.origin.s3-keyring"), "{e}");
        let e = trust.check_plaintext(&url()).unwrap_err().to_string();
        assert!(e.starts_with("s3://bucket/p is not encrypted"), "{e}");
        // nothing remembered: anything goes (the first use)
        let fresh = Trust::from_config("", Some("origin"));
        assert!(fresh.check_key(&url(), &key).is_ok() && fresh.check_plaintext(&url()).is_ok());
    }

    /// Nothing remembered, or a URL: a command's check sends no request
    /// (this store's endpoint answers nothing).
    #[tokio::test]
    async fn nothing_remembered_is_checked_without_a_request() {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:1")
            .build();
        let store = S3Store::new(aws_sdk_s3::Client::from_conf(conf), "bucket", "test");
        let env = HashMap::new();
        for trust in [Trust::from_config("", Some("origin")), Trust::from_config("remote.origin.s3-keyring 00aa\n", None)] {
            assert!(trust.check(&store, &url(), &env).await.unwrap().is_none());
        }
    }

    #[test]
    fn an_lfs_store_elsewhere_has_its_own_variable() {
        let listing = "remote.origin.s3-keyring 00aa\nremote.origin.s3-lfs-keyring 11bb\n";
        assert_eq!(Trust::for_lfs(listing, Some("origin"), false).pinned.as_deref(), Some("00aa"));
        let lfs = Trust::for_lfs(listing, Some("origin"), true);
        assert_eq!(lfs.pinned.as_deref(), Some("11bb"));
        let e = lfs.check_plaintext(&url()).unwrap_err().to_string();
        assert!(e.contains("git config --unset remote.origin.s3-lfs-keyring"), "{e}");
    }
}
