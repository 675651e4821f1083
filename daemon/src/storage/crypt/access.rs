//! `git s3 access grant|revoke`'s edits of the keyring: each one read with
//! the caller's identities (only someone who opens the keyring can change
//! it) and written back by one conditional write on the ETag read; a lost
//! race reads again and re-applies the edit.
//!
//! - grant: one more recipient (an age recipient, or a KMS key: see
//!   `kms`); the remote key is unchanged.
//! - revoke: the recipient removed and the remote key **rotated**: a new
//!   key (the next generation) becomes current, the older ones stay in the
//!   keyring so every granted person still reads the packs written before;
//!   manifests, packs and `.idx` written from then on are encrypted to the
//!   new key, which the revoked identity never received. `reencrypt`
//!   re-encrypts what exists and drops the older keys.

use std::collections::HashMap;
use std::sync::Arc;

use super::keyring::{self, Keyring, Opened};
use super::recipient::Recipient;
use super::trust::Trust;
use super::{fingerprint, keyring_key, kms, remember, CryptError, RemoteKey};
use crate::s3::store::{S3Store, WriteCondition};
use crate::s3::url::RemoteUrl;

/// How many times an edit reads and writes the keyring before giving up.
const ATTEMPTS: u32 = 5;

/// Who is granted or revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Who {
    /// An age recipient (`age1…`: X25519 or an age plugin's).
    Age(String),
    /// A KMS key (`kms:<key id or ARN>`).
    Kms(String),
}

impl Who {
    /// `age1…` or `kms:<key id>`.
    pub(crate) fn parse(arg: &str) -> Result<Who, CryptError> {
        if let Some(id) = kms::key_id(arg) {
            return Ok(Who::Kms(id.to_string()));
        }
        Ok(Who::Age(Recipient::parse(arg)?.to_string()))
    }

    fn is_in(&self, ring: &Keyring) -> bool {
        match self {
            Who::Age(r) => ring.recipients.iter().any(|x| x == r),
            Who::Kms(id) => ring.kms.iter().any(|k| &k.key_id == id),
        }
    }

    /// How the output names it: the recipient and its fingerprint, or the KMS key.
    pub(crate) fn describe(&self) -> String {
        match self {
            Who::Age(r) => format!("{r} (fingerprint {})", fingerprint(r)),
            Who::Kms(id) => format!("KMS key {id}"),
        }
    }
}

/// The keyring of an encrypted remote, opened with the caller's identities.
pub(crate) async fn open(store: &S3Store, url: &RemoteUrl, env: &HashMap<String, String>) -> Result<Opened, CryptError> {
    keyring::read(store, url, env).await?.ok_or_else(|| {
        CryptError::Access(format!(
            "{url} is not encrypted (it has no keyring {}): `git s3 init --format packs --encrypt-to …` makes an encrypted remote",
            keyring_key(url)
        ))
    })
}

/// What a grant or revoke did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Written; the generation of the remote key now current.
    Done(u32),
    /// Nothing to do (already granted, or not granted).
    Unchanged(u32),
}

/// Grants `who` access to `url`'s remote: the keyring re-wrapped to one more recipient.
/// Every keyring read is checked against what the repository remembers
/// (`trust`: one swapped in meanwhile is refused, nothing written).
pub(crate) async fn grant(store: &S3Store, url: &RemoteUrl, env: &HashMap<String, String>, who: &Who, trust: &Trust) -> Result<Outcome, CryptError> {
    let mut wrapped = None;
    for _ in 0..ATTEMPTS {
        let Opened { mut ring, etag } = open(store, url, env).await?;
        trust.check_key(url, &ring.key)?;
        if who.is_in(&ring) {
            return Ok(Outcome::Unchanged(ring.key.generation()));
        }
        match who {
            Who::Age(r) => ring.recipients.push(r.clone()),
            Who::Kms(id) => {
                if wrapped.is_none() {
                    // keyring.kms first: an entry the keyring does not list opens nothing.
                    let (grant, entry) = kms::wrap(store, url, env, id).await?;
                    kms::edit_file(store, url, |f| {
                        f.keys.retain(|k| k.key_id != entry.key_id);
                        f.keys.push(entry.clone());
                    })
                    .await?;
                    wrapped = Some(grant);
                }
                ring.kms.extend(wrapped.clone());
            }
        }
        held_before_write(env).await;
        if written(keyring::write(store, url, &ring, WriteCondition::IfMatch(etag), env).await)? {
            return Ok(Outcome::Done(ring.key.generation()));
        }
    }
    Err(changing(url, "grant"))
}

/// Revokes `who`'s access: removed from the keyring, and the remote key
/// rotated (see the file's comment). The new key is remembered for what
/// this daemon writes next. Each keyring read is checked as [`grant`]'s.
pub(crate) async fn revoke(store: &S3Store, url: &RemoteUrl, env: &HashMap<String, String>, who: &Who, trust: &Trust) -> Result<Outcome, CryptError> {
    for _ in 0..ATTEMPTS {
        let Opened { mut ring, etag } = open(store, url, env).await?;
        trust.check_key(url, &ring.key)?;
        if !who.is_in(&ring) {
            return Ok(Outcome::Unchanged(ring.key.generation()));
        }
        ring.recipients.retain(|r| !matches!(who, Who::Age(x) if x == r));
        ring.kms.retain(|k| !matches!(who, Who::Kms(id) if id == &k.key_id));
        if ring.recipients.is_empty() && ring.kms.is_empty() {
            return Err(CryptError::Access(format!(
                "{} is the last recipient of {url}: grant someone else first (`git s3 access grant {url} age1…`), or nobody could read it",
                who.describe()
            )));
        }
        ring.key = ring.key.rotated();
        held_before_write(env).await;
        if written(keyring::write(store, url, &ring, WriteCondition::IfMatch(etag), env).await)? {
            let generation = ring.key.generation();
            remember(store, url, Arc::new(ring.key));
            if let Who::Kms(id) = who {
                kms::edit_file(store, url, |f| f.keys.retain(|k| &k.key_id != id)).await?;
            }
            return Ok(Outcome::Done(generation));
        }
    }
    Err(changing(url, "revoke"))
}

/// Drops every older key from the keyring (after `reencrypt` moved every
/// object to the current key); how many were dropped.
pub(crate) async fn drop_older_keys(store: &S3Store, url: &RemoteUrl, env: &HashMap<String, String>) -> Result<usize, CryptError> {
    for _ in 0..ATTEMPTS {
        let Opened { mut ring, etag } = open(store, url, env).await?;
        let older = ring.key.generations().count() - 1;
        if older == 0 {
            return Ok(0);
        }
        ring.key = ring.key.alone();
        if written(keyring::write(store, url, &ring, WriteCondition::IfMatch(etag), env).await)? {
            remember(store, url, Arc::new(ring.key));
            return Ok(older);
        }
    }
    Err(changing(url, "revoke --reencrypt"))
}

/// The current key of `url`'s remote with every older one, opened and remembered.
pub(crate) async fn current_key(store: &S3Store, url: &RemoteUrl, env: &HashMap<String, String>) -> Result<Arc<RemoteKey>, CryptError> {
    let key = Arc::new(open(store, url, env).await?.ring.key);
    remember(store, url, key.clone());
    Ok(key)
}

/// The test gate between an edit's keyring read and its write (only with
/// the `test-hooks` feature): how the tests make an edit lose its race.
#[cfg_attr(not(feature = "test-hooks"), allow(unused_variables, clippy::unused_async))]
async fn held_before_write(env: &HashMap<String, String>) {
    #[cfg(feature = "test-hooks")]
    if let Some(gate) = crate::test_hooks::keyring_write_gate(env) {
        crate::test_hooks::wait_for_gate(&gate).await;
    }
}

/// Whether a conditional keyring write landed (false: the keyring changed meanwhile).
fn written(r: Result<String, CryptError>) -> Result<bool, CryptError> {
    match r {
        Ok(_) => Ok(true),
        Err(CryptError::Store(e)) if e.is_precondition_failed() => Ok(false),
        Err(e) => Err(e),
    }
}

fn changing(url: &RemoteUrl, what: &str) -> CryptError {
    CryptError::Access(format!(
        "the keyring of {url} changed {ATTEMPTS} times while this `git s3 access {what}` edited it (others are editing it): run it again"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_is_an_age_recipient_or_a_kms_key() {
        let r = age::x25519::Identity::generate().to_public().to_string();
        assert_eq!(Who::parse(&r).unwrap(), Who::Age(r.clone()));
        assert_eq!(Who::parse("kms:alias/team").unwrap(), Who::Kms("alias/team".into()));
        assert!(matches!(Who::parse("age1nope"), Err(CryptError::Recipient(_))));
        let ring = Keyring { key: RemoteKey::generate(), recipients: vec![r.clone()], kms: vec![], version: 2 };
        assert!(Who::Age(r).is_in(&ring) && !Who::Kms("alias/team".into()).is_in(&ring));
    }
}
