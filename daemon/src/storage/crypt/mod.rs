//! Client-side encryption of a packs remote with age (issue 22, first
//! slice): what the files below share. An encrypted remote has its own
//! **remote key**, an age X25519 identity, kept in the bucket in the
//! keyring object (`<prefix>/.git-s3/keyring`, see `keyring`) encrypted to
//! every granted recipient. Every other object of the remote (the manifest,
//! packs, `.idx`) is a standard age file encrypted to the remote key, and
//! pack objects are named by an HMAC of their plaintext name keyed from the
//! remote key (see `docs/encryption.md`).
//!
//! Files: `identities` (the caller's age identities: `git s3 keygen`'s
//! file), `keyring` (the keyring object: its format, writing it, opening it
//! with the caller's identities), `codec` (age encryption of bytes and
//! files, streaming), `seekable` (plaintext ranges of an age file read
//! chunk by chunk: ranged reads of encrypted packs), `rollback` (the highest manifest serial this
//! machine has seen: an older manifest refused). This file: the errors, the remote key, and the keys a
//! daemon has opened (by location), which the packs format's manifest reads
//! use.

pub(crate) mod access;
pub(crate) mod codec;
pub(crate) mod identities;
pub(crate) mod keyring;
pub(crate) mod kms;
pub(crate) mod lfs;
pub(crate) mod plugin_bridge;
pub(crate) mod plugins;
pub(crate) mod recipient;
pub(crate) mod reencrypt;
pub(crate) mod rewrap;
pub(crate) mod rollback;
pub(crate) mod seekable;
pub(crate) mod trust;

use std::sync::Arc;

use age::secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::s3::store::{S3Store, StoreError};
use crate::s3::url::RemoteUrl;

/// The keyring object, under the packs format's directory.
pub(crate) const KEYRING_NAME: &str = ".git-s3/keyring";

/// The first bytes of every age file (binary format).
pub(crate) const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

#[derive(Debug, thiserror::Error)]
pub(crate) enum CryptError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("local file error: {0}")]
    Io(#[from] std::io::Error),
    /// The caller's identities do not open the keyring (the message is whole).
    #[error("{0}")]
    NoAccess(String),
    /// An identities file that cannot be used (the message is whole).
    #[error("{0}")]
    Identities(String),
    /// An object that does not decrypt with the remote key: tampered,
    /// truncated, or written with another key.
    #[error("{what} does not decrypt with the remote's key (tampered, truncated or of another key): {detail}")]
    Decrypt { what: String, detail: String },
    #[error("the keyring {0} is not a git-s3 keyring: {1}")]
    Keyring(String, String),
    /// An encrypted remote whose key this session has not opened.
    #[error("{0} is encrypted: this command does not open encrypted remotes yet (git fetch, pull and push do)")]
    NotOpened(String),
    /// What this slice of encryption does not do yet (the message is whole).
    #[error("{0}")]
    NotYet(String),
    /// A KMS call refused or failed (the message is whole).
    #[error("{0}")]
    Kms(String),
    /// `git s3 access` refused (the message is whole).
    #[error("{0}")]
    Access(String),
    /// A remote that is not the one the repository remembers (`trust`; the message is whole).
    #[error("{0}")]
    Untrusted(String),
    /// A manifest older than one this machine has seen (`rollback`).
    #[error(
        "the manifest of {remote} is older than one this machine has seen (serial {serial} < {highest}): someone put an old manifest back, \
or restored the bucket from a backup; nothing was fetched or changed here. Ask whoever can write the bucket to put the newest manifest back \
(a versioned bucket keeps it); if the remote was deleted and created again on purpose, delete {record} to accept it"
    )]
    Rollback { remote: String, serial: u64, highest: u64, record: String },
    #[error(
        "invalid age recipient '{0}': expected an age recipient (age1…, as `git s3 keygen` or `age-keygen` prints), an age plugin's (age1yubikey1…), or kms:<KMS key id or ARN>"
    )]
    Recipient(String),
    /// An age plugin that is missing or failed (`plugins`; the message is whole).
    #[error("{0}")]
    Plugin(String),
}

/// A remote's key: the age identity every object is encrypted to, and the
/// key of the HMAC that names its packs. Each `git s3 access revoke`
/// rotates it: the new key has the next generation (the first is 1) and
/// the keyring keeps the older ones (`older`), with which the packs a
/// manifest entry marks as theirs are named and decrypted.
pub(crate) struct RemoteKey {
    identity: age::x25519::Identity,
    recipient: age::x25519::Recipient,
    names: [u8; 32],
    generation: u32,
    older: Vec<RemoteKey>,
    /// The fingerprint of the remote's first key, once the keyring no
    /// longer holds it (dropped by `revoke --reencrypt`): see [`RemoteKey::origin`].
    first: Option<String>,
}

impl std::fmt::Debug for RemoteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteKey({})", fingerprint(&self.recipient.to_string()))
    }
}

impl RemoteKey {
    /// A fresh remote key.
    pub(crate) fn generate() -> RemoteKey {
        RemoteKey::of(age::x25519::Identity::generate())
    }

    /// The key from its secret (`AGE-SECRET-KEY-1…`).
    pub(crate) fn from_secret(secret: &str) -> Option<RemoteKey> {
        secret.trim().parse::<age::x25519::Identity>().ok().map(RemoteKey::of)
    }

    fn of(identity: age::x25519::Identity) -> RemoteKey {
        let secret = identity.to_string();
        // The HMAC key of object names: derived from the secret, never the secret itself.
        let names = hmac_sha256(secret.expose_secret().as_bytes(), b"git-s3 object names v1");
        let recipient = identity.to_public();
        RemoteKey { identity, recipient, names, generation: 1, older: Vec::new(), first: None }
    }

    /// This key as generation `generation`, with the keyring's `older` keys.
    pub(crate) fn with_generations(mut self, generation: u32, older: Vec<RemoteKey>) -> RemoteKey {
        self.generation = generation;
        self.older = older;
        self
    }

    /// A fresh key of the next generation; this one and its older keys
    /// become the older keys (a revoke's rotation).
    pub(crate) fn rotated(&self) -> RemoteKey {
        let mut older = vec![self.alone()];
        older.extend(self.older.iter().map(RemoteKey::alone));
        let next = self.generations().map(|k| k.generation).max().unwrap_or(0) + 1;
        RemoteKey::generate().with_generations(next, older)
    }

    /// This key without its older keys (what `--reencrypt` keeps); it
    /// still knows the remote's [origin](RemoteKey::origin).
    pub(crate) fn alone(&self) -> RemoteKey {
        let mut k = RemoteKey::of(self.identity.clone());
        k.generation = self.generation;
        k.first = (self.generation != 1).then(|| self.origin());
        k
    }

    /// The key recording `first` as the fingerprint of the remote's first
    /// key (the keyring's `# first key:` line).
    pub(crate) fn with_first(mut self, first: Option<String>) -> RemoteKey {
        self.first = first;
        self
    }

    /// The fingerprint of the remote's first key (generation 1): what
    /// stays the same through every rotation, and what a repository
    /// remembers of its remote (`trust`). Only holders of the remote key
    /// know it: no object in the bucket names the remote key's recipient.
    pub(crate) fn origin(&self) -> String {
        if let Some(k) = self.of_generation(Some(1)) {
            return fingerprint(&k.recipient.to_string());
        }
        match self.generations().find_map(|k| k.first.clone()) {
            Some(f) => f,
            // A keyring whose first key was dropped before it was recorded: its oldest key.
            None => self.generations().min_by_key(|k| k.generation).map_or_else(String::new, |k| fingerprint(&k.recipient.to_string())),
        }
    }

    /// The generation of the current key (1: never rotated).
    pub(crate) fn generation(&self) -> u32 {
        self.generation
    }

    /// The current key, then the older ones (newest first as the keyring lists them).
    pub(crate) fn generations(&self) -> impl Iterator<Item = &RemoteKey> {
        std::iter::once(self).chain(self.older.iter())
    }

    /// The key of generation `generation` (None: the first), if the keyring holds it.
    pub(crate) fn of_generation(&self, generation: Option<u32>) -> Option<&RemoteKey> {
        let g = generation.unwrap_or(1);
        self.generations().find(|k| k.generation == g)
    }

    /// Every generation's identity: what decrypts any object of the remote.
    pub(crate) fn identities(&self) -> impl Iterator<Item = &age::x25519::Identity> {
        self.generations().map(|k| &k.identity)
    }

    /// `AGE-SECRET-KEY-1…`: what the keyring holds.
    pub(crate) fn secret(&self) -> String {
        self.identity.to_string().expose_secret().to_string()
    }

    pub(crate) fn recipient(&self) -> &age::x25519::Recipient {
        &self.recipient
    }

    /// The name an object of plaintext name `plain` (e.g. `pack-<hash>.pack`)
    /// has in the bucket: 64 hex digits that reveal no hash.
    pub(crate) fn object_name(&self, plain: &str) -> String {
        hex::encode(hmac_sha256(&self.names, plain.as_bytes()))
    }
}

/// HMAC-SHA256 (RFC 2104).
pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// A recipient's fingerprint: the first 16 hex digits of the SHA-256 of
/// its `age1…` string (what a failed clone names; see the keyring).
pub(crate) fn fingerprint(recipient: &str) -> String {
    hex::encode(&Sha256::digest(recipient.trim().as_bytes())[..8])
}

pub(crate) fn keyring_key(url: &RemoteUrl) -> String {
    url.key(KEYRING_NAME)
}

/// The plaintext of the keyring `data` with `identities`; None when none matches.
pub(crate) fn decrypt_keyring<'a>(
    data: &[u8],
    identities: impl Iterator<Item = &'a dyn age::Identity>,
    what: &str,
) -> Result<Option<String>, CryptError> {
    let decryptor = age::Decryptor::new(data).map_err(|e| CryptError::Keyring(what.to_string(), e.to_string()))?;
    let mut reader = match decryptor.decrypt(identities) {
        Ok(r) => r,
        Err(age::DecryptError::NoMatchingKeys) => return Ok(None),
        Err(e) => return Err(CryptError::Keyring(what.to_string(), e.to_string())),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut reader, &mut text).map_err(|e| CryptError::Keyring(what.to_string(), e.to_string()))?;
    Ok(Some(text))
}

/// Whether `data` is an age file.
pub(crate) fn is_age(data: &[u8]) -> bool {
    data.starts_with(AGE_MAGIC)
}

/// A remote key this daemon opened, held in the daemon's memory of
/// locations (`s3/memory.rs`) by the keyring's location. Only a session
/// whose caller's identities opened the keyring puts one there (and every
/// session of an encrypted remote opens it again: see `keyring::open`);
/// the manifest's reads and writes find the key there.
struct Opened(Arc<RemoteKey>);

/// The key of `url`'s remote, when this daemon opened it.
pub(crate) fn opened(store: &S3Store, url: &RemoteUrl) -> Option<Arc<RemoteKey>> {
    store.memory().map::<Opened>().get(&store.location(&keyring_key(url))).map(|k| k.value().0.clone())
}

/// Remembers the key of `url`'s remote.
pub(crate) fn remember(store: &S3Store, url: &RemoteUrl, key: Arc<RemoteKey>) {
    // Never cleared wholesale (one entry per encrypted remote the user
    // reads): a manifest this daemon holds decrypted always has its key here.
    store.memory().map::<Opened>().insert(store.location(&keyring_key(url)), Opened(key));
}

/// Forgets the key of `url`'s remote (its keyring changed or is gone).
pub(crate) fn forget(store: &S3Store, url: &RemoteUrl) {
    store.memory().map::<Opened>().remove(&store.location(&keyring_key(url)));
}

/// Refuses `what` (a command not built for encrypted remotes yet) on an
/// encrypted remote: one whose key this daemon opened, or that has a keyring.
pub(crate) async fn refuse_if_encrypted(store: &S3Store, url: &RemoteUrl, what: &str) -> Result<(), CryptError> {
    refuse_if_opened(store, url, what)?;
    if store.head(&keyring_key(url)).await?.is_some() {
        return Err(not_yet(url, what));
    }
    Ok(())
}

/// [`refuse_if_encrypted`] after the manifest was read: an encrypted
/// manifest reads only with its key opened, so no request is needed.
pub(crate) fn refuse_if_opened(store: &S3Store, url: &RemoteUrl, what: &str) -> Result<(), CryptError> {
    match opened(store, url) {
        Some(_) => Err(not_yet(url, what)),
        None => Ok(()),
    }
}

fn not_yet(url: &RemoteUrl, what: &str) -> CryptError {
    CryptError::NotYet(format!("{url} is encrypted: {what} does not handle encrypted remotes yet (see docs/encryption.md)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex::encode(mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn object_names_are_keyed_and_stable() {
        let k = RemoteKey::generate();
        let again = RemoteKey::from_secret(&k.secret()).unwrap();
        let name = format!("pack-{}.pack", "a".repeat(40));
        assert_eq!(k.object_name(&name), again.object_name(&name));
        assert_ne!(k.object_name(&name), RemoteKey::generate().object_name(&name));
        assert_eq!(k.object_name(&name).len(), 64);
        assert!(!k.object_name(&name).contains(&"a".repeat(40)));
        assert!(RemoteKey::from_secret("AGE-SECRET-KEY-1NOPE").is_none());
    }

    #[test]
    fn rotation_keeps_the_older_keys_by_generation() {
        let k = RemoteKey::generate();
        assert_eq!(k.generation(), 1);
        let r = k.rotated().rotated();
        assert_eq!(r.generation(), 3);
        assert_eq!(r.generations().map(RemoteKey::generation).collect::<Vec<_>>(), vec![3, 2, 1]);
        assert_eq!(r.of_generation(None).unwrap().secret(), k.secret());
        assert_eq!(r.of_generation(Some(1)).unwrap().object_name("x"), k.object_name("x"));
        assert_ne!(r.object_name("x"), k.object_name("x"));
        assert!(r.of_generation(Some(4)).is_none());
        assert_eq!(r.alone().generations().count(), 1);
        // the origin survives rotations and dropped keys
        assert_eq!(r.origin(), fingerprint(&k.recipient().to_string()));
        assert_eq!(r.alone().origin(), k.origin());
        assert_eq!(r.alone().rotated().alone().origin(), k.origin());
        assert_ne!(RemoteKey::generate().origin(), k.origin());
    }
}
