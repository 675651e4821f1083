//! The keyring object, `<prefix>/.git-s3/keyring`: the remote key,
//! age-encrypted to every granted recipient. Its plaintext is an age
//! identity file, so `age -d -i my-identities keyring > remote.key` then
//! `age -d -i remote.key <object>` reads any object of the remote:
//!
//! ```text
//! # git-s3 keyring v1
//! # recipient: age1…            (one line per granted recipient)
//! AGE-SECRET-KEY-1…             (the remote key)
//! ```
//!
//! The object's metadata `git-s3-keyring` (the version) and
//! `git-s3-recipients` (the recipients' fingerprints, see `fingerprint`)
//! is plaintext: what a refused clone names.

use std::collections::HashMap;
use std::sync::Arc;

use super::{fingerprint, identities, keyring_key, remember, CryptError, RemoteKey};
use crate::s3::store::{PutOptions, S3Store, WriteCondition};
use crate::s3::url::RemoteUrl;

pub(crate) const HEADER: &str = "# git-s3 keyring v1";
const META_VERSION: &str = "git-s3-keyring";
const META_RECIPIENTS: &str = "git-s3-recipients";

/// The keyring's plaintext.
pub(crate) fn plaintext(key: &RemoteKey, recipients: &[age::x25519::Recipient]) -> String {
    let mut s = format!("{HEADER}\n");
    for r in recipients {
        s.push_str(&format!("# recipient: {r}\n"));
    }
    s.push_str(&key.secret());
    s.push('\n');
    s
}

/// The remote key and recipients from a keyring's plaintext.
pub(crate) fn parse(text: &str, what: &str) -> Result<(RemoteKey, Vec<String>), CryptError> {
    let bad = |why: &str| CryptError::Keyring(what.to_string(), why.to_string());
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(HEADER) {
        return Err(bad("it does not start with the version line"));
    }
    let mut recipients = Vec::new();
    let mut key = None;
    for line in lines.map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(r) = line.strip_prefix("# recipient: ") {
            recipients.push(r.trim().to_string());
        } else if line.starts_with('#') {
            continue;
        } else if key.is_some() {
            return Err(bad("it holds more than one key"));
        } else {
            key = Some(RemoteKey::from_secret(line).ok_or_else(|| bad("its key is not an age X25519 identity"))?);
        }
    }
    Ok((key.ok_or_else(|| bad("it holds no key"))?, recipients))
}

/// Writes the keyring of a new remote (only if none exists).
pub(crate) async fn create(store: &S3Store, url: &RemoteUrl, key: &RemoteKey, recipients: &[age::x25519::Recipient]) -> Result<(), CryptError> {
    let text = plaintext(key, recipients);
    let rs: Vec<&dyn age::Recipient> = recipients.iter().map(|r| r as &dyn age::Recipient).collect();
    let encryptor = age::Encryptor::with_recipients(rs.into_iter()).map_err(|e| CryptError::Keyring(keyring_key(url), e.to_string()))?;
    let mut data = Vec::new();
    let mut w = encryptor.wrap_output(&mut data)?;
    std::io::Write::write_all(&mut w, text.as_bytes())?;
    w.finish()?;
    let fps: Vec<String> = recipients.iter().map(|r| fingerprint(&r.to_string())).collect();
    let opts = PutOptions {
        condition: WriteCondition::IfAbsent,
        metadata: vec![(META_VERSION.into(), "1".into()), (META_RECIPIENTS.into(), fps.join(" "))],
        ..Default::default()
    };
    store.put_bytes(&keyring_key(url), data, opts).await?;
    Ok(())
}

/// The fingerprints of the recipients `url`'s keyring was encrypted to
/// (its plaintext metadata; what `git s3 status` shows), None without a keyring.
pub(crate) async fn fingerprints(store: &S3Store, url: &RemoteUrl) -> Result<Option<Vec<String>>, CryptError> {
    Ok(store
        .head_with_metadata(&keyring_key(url))
        .await?
        .map(|(_, meta)| meta.get(META_RECIPIENTS).map(|f| f.split_whitespace().map(str::to_string).collect()).unwrap_or_default()))
}

/// Opens `url`'s keyring with the caller's identities: None when the
/// remote has no keyring (not encrypted). The key is remembered for the
/// manifest's reads and writes. No identity of the caller's: one line that
/// names the keyring's recipients and what to ask for.
pub(crate) async fn open(store: &S3Store, url: &RemoteUrl, env: &HashMap<String, String>) -> Result<Option<Arc<RemoteKey>>, CryptError> {
    let object = keyring_key(url);
    let k = object.as_str();
    let what = format!("s3://{}/{k}", store.bucket());
    let Some(data) = store.get_small(k).await? else {
        super::forget(store, url);
        return Ok(None);
    };
    let refused = |why: String| async move {
        let fps = match store.head_with_metadata(k).await {
            Ok(Some((_, meta))) => meta.get(META_RECIPIENTS).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        let fps: Vec<&str> = fps.split_whitespace().collect();
        CryptError::NoAccess(format!(
            "{url} is encrypted to {} recipient{} (fingerprints {}) and {why}: ask someone with access to add your recipient (the age1… that `git s3 keygen` prints)",
            fps.len(),
            if fps.len() == 1 { "" } else { "s" },
            if fps.is_empty() { "unknown".to_string() } else { fps.join(", ") },
        ))
    };
    let (ids, path) = match identities::load(env).await {
        Ok(x) => x,
        Err(CryptError::Identities(m)) => return Err(refused(m.replace(": run `git s3 keygen`", " (`git s3 keygen` makes one)")).await),
        Err(e) => return Err(e),
    };
    let decryptor = age::Decryptor::new(&data[..]).map_err(|e| CryptError::Keyring(what.clone(), e.to_string()))?;
    let mut reader = match decryptor.decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity)) {
        Ok(r) => r,
        Err(age::DecryptError::NoMatchingKeys) => return Err(refused(format!("none of your identities in {} opens it", path.display())).await),
        Err(e) => return Err(CryptError::Keyring(what, e.to_string())),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut reader, &mut text).map_err(|e| CryptError::Keyring(what.clone(), e.to_string()))?;
    let (key, _) = parse(&text, &what)?;
    let key = Arc::new(key);
    remember(store, url, key.clone());
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plaintext_is_an_age_identity_file_and_parses_back() {
        let key = RemoteKey::generate();
        let r = age::x25519::Identity::generate().to_public();
        let text = plaintext(&key, std::slice::from_ref(&r));
        let (back, rs) = parse(&text, "k").unwrap();
        assert_eq!(back.secret(), key.secret());
        assert_eq!(rs, vec![r.to_string()]);
        // what `age -d -i` reads: comments skipped, one identity
        let ids = age::IdentityFile::from_buffer(text.as_bytes()).unwrap().into_identities().unwrap();
        assert_eq!(ids.len(), 1);
        assert!(parse("AGE-SECRET-KEY-1", "k").is_err());
        assert!(parse(&format!("{HEADER}\n# nothing\n"), "k").is_err());
    }
}
