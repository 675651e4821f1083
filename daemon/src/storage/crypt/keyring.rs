//! The keyring object, `<prefix>/.git-s3/keyring`: the remote key (every
//! generation of it), age-encrypted to every granted recipient. Its
//! plaintext is an age identity file, so `age -d -i my-identities -o
//! remote.key keyring` then `age -d -i remote.key <object>` reads any
//! object of the remote, whichever generation wrote it:
//!
//! ```text
//! # git-s3 keyring v2
//! # recipient: age1…            (one line per granted recipient)
//! # kms: age1… <KMS key id>     (one line per KMS key: see `kms`)
//! # key 2 (current)
//! AGE-SECRET-KEY-1…             (the key new objects are encrypted to)
//! # key 1
//! AGE-SECRET-KEY-1…             (older keys, kept after a revoke)
//! ```
//!
//! Version 1 (written before rotation existed) has one key line and no
//! `# key` comments; it opens as generation 1. The object's metadata
//! `git-s3-keyring` (the version) and `git-s3-recipients` (the recipients'
//! fingerprints, see `fingerprint`) is plaintext: what a refused clone
//! names. Every rewrite is conditional on the ETag read (`write`).

use std::collections::HashMap;
use std::sync::Arc;

use super::kms::{KmsGrant, KmsOpen};
use super::recipient::Recipient;
use super::{fingerprint, identities, keyring_key, remember, CryptError, RemoteKey};
use crate::s3::store::{Conditional, PutOptions, S3Store, WriteCondition};
use crate::s3::url::RemoteUrl;

pub(crate) const HEADER_V1: &str = "# git-s3 keyring v1";
pub(crate) const HEADER: &str = "# git-s3 keyring v2";
const META_VERSION: &str = "git-s3-keyring";
const META_RECIPIENTS: &str = "git-s3-recipients";
pub(crate) const META_KMS: &str = "git-s3-kms";

/// A keyring's plaintext, parsed.
#[derive(Debug)]
pub(crate) struct Keyring {
    /// The current key, with the older generations.
    pub(crate) key: RemoteKey,
    /// The granted recipients (`age1…`).
    pub(crate) recipients: Vec<String>,
    pub(crate) kms: Vec<KmsGrant>,
    /// The format version read (1 or 2).
    pub(crate) version: u32,
}

impl Keyring {
    /// The keyring's plaintext (always version 2).
    pub(crate) fn plaintext(&self) -> String {
        let mut s = format!("{HEADER}\n");
        for r in &self.recipients {
            s.push_str(&format!("# recipient: {r}\n"));
        }
        for k in &self.kms {
            s.push_str(&format!("# kms: {} {}\n", k.recipient, k.key_id));
        }
        if self.key.of_generation(Some(1)).is_none() {
            // The first key was dropped (`revoke --reencrypt`): its fingerprint stays, what repositories remember.
            s.push_str(&format!("# first key: {}\n", self.key.origin()));
        }
        for (i, k) in self.key.generations().enumerate() {
            s.push_str(&format!("# key {}{}\n{}\n", k.generation(), if i == 0 { " (current)" } else { "" }, k.secret()));
        }
        s
    }

    /// Every recipient the keyring object is encrypted to: the people, then the KMS keys' wrapping recipients.
    fn all_recipients(&self) -> Result<Vec<Recipient>, CryptError> {
        self.recipients.iter().chain(self.kms.iter().map(|k| &k.recipient)).map(|r| Recipient::parse(r)).collect()
    }
}

/// A keyring's plaintext parsed (version 1 or 2).
pub(crate) fn parse(text: &str, what: &str) -> Result<Keyring, CryptError> {
    let bad = |why: &str| CryptError::Keyring(what.to_string(), why.to_string());
    let mut lines = text.lines();
    let version = match lines.next().map(str::trim) {
        Some(HEADER_V1) => 1,
        Some(HEADER) => 2,
        _ => return Err(bad("it does not start with a version line this git-s3 knows (upgrade git-s3?)")),
    };
    let (mut recipients, mut kms, mut keys, mut first) = (Vec::new(), Vec::new(), Vec::new(), None);
    // (generation, current) of the next key line (version 2).
    let mut pending: Option<(u32, bool)> = None;
    for line in lines.map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(r) = line.strip_prefix("# recipient: ") {
            recipients.push(r.trim().to_string());
        } else if let Some(k) = line.strip_prefix("# kms: ") {
            let (recipient, key_id) = k.trim().split_once(' ').ok_or_else(|| bad("a kms line lacks its key id"))?;
            kms.push(KmsGrant { recipient: recipient.to_string(), key_id: key_id.trim().to_string() });
        } else if let Some(f) = line.strip_prefix("# first key: ") {
            first = Some(f.trim().to_string());
        } else if let Some(k) = line.strip_prefix("# key ") {
            let (n, current) = match k.split_once(' ') {
                Some((n, rest)) => (n, rest.trim() == "(current)"),
                None => (k, false),
            };
            pending = Some((n.parse().map_err(|_| bad("a key line has no generation number"))?, current));
        } else if line.starts_with('#') {
            continue;
        } else {
            let key = RemoteKey::from_secret(line).ok_or_else(|| bad("a key is not an age X25519 identity"))?;
            let (generation, current) = match (version, pending.take()) {
                (1, _) if keys.is_empty() => (1, true),
                (1, _) => return Err(bad("it holds more than one key")),
                (_, Some(p)) => p,
                (_, None) => return Err(bad("a key has no `# key N` line")),
            };
            keys.push((generation, current, key));
        }
    }
    if keys.iter().filter(|k| k.1).count() != 1 {
        return Err(bad(if keys.is_empty() { "it holds no key" } else { "it does not mark exactly one key current" }));
    }
    let at = keys.iter().position(|k| k.1).unwrap_or(0);
    let (generation, _, current) = keys.remove(at);
    let older = keys.into_iter().map(|(g, _, k)| k.with_generations(g, vec![])).collect();
    Ok(Keyring { key: current.with_generations(generation, older).with_first(first), recipients, kms, version })
}

/// Writes `ring` as the keyring object (encrypted to its recipients and
/// KMS wrapping recipients) under `condition`; its ETag. Plugin recipients
/// run their plugins in the caller's environment `env` (`plugins`).
pub(crate) async fn write(
    store: &S3Store,
    url: &RemoteUrl,
    ring: &Keyring,
    condition: WriteCondition,
    env: &HashMap<String, String>,
) -> Result<String, CryptError> {
    let recipients = ring.all_recipients()?;
    // Padded with empty lines (an identity file skips them).
    let data = super::plugins::encrypt_padded(&recipients, ring.plaintext().as_bytes(), b'\n', env).await?;
    let fps: Vec<String> = ring.recipients.iter().map(|r| fingerprint(r)).collect();
    let mut metadata = vec![(META_VERSION.into(), "2".into()), (META_RECIPIENTS.into(), fps.join(" "))];
    if !ring.kms.is_empty() {
        metadata.push((META_KMS.into(), ring.kms.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>().join(" ")));
    }
    Ok(store.put_bytes(&keyring_key(url), data, PutOptions { condition, metadata, ..Default::default() }).await?)
}

/// Writes the keyring of a new remote (only if none exists), also wrapped
/// with KMS keys (their grants made by `kms::wrap`).
pub(crate) async fn create(
    store: &S3Store,
    url: &RemoteUrl,
    key: &RemoteKey,
    recipients: &[Recipient],
    kms: Vec<KmsGrant>,
    env: &HashMap<String, String>,
) -> Result<(), CryptError> {
    let ring = Keyring { key: key.alone(), recipients: recipients.iter().map(ToString::to_string).collect(), kms, version: 2 };
    write(store, url, &ring, WriteCondition::IfAbsent, env).await?;
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

/// A keyring opened: its plaintext parsed and the ETag it was read at.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) ring: Keyring,
    pub(crate) etag: String,
}

/// Opens `url`'s keyring with the caller's identities: None when the
/// remote has no keyring (not encrypted). The key is remembered for the
/// manifest's reads and writes. No identity of the caller's: one line that
/// names the keyring's recipients and what to ask for.
pub(crate) async fn open(store: &S3Store, url: &RemoteUrl, env: &HashMap<String, String>) -> Result<Option<Arc<RemoteKey>>, CryptError> {
    Ok(read(store, url, env).await?.map(|o| {
        let key = Arc::new(o.ring.key);
        remember(store, url, key.clone());
        key
    }))
}

/// [`open`] without remembering the key: the whole keyring and its ETag
/// (what `git s3 access` edits).
pub(crate) async fn read(store: &S3Store, url: &RemoteUrl, env: &HashMap<String, String>) -> Result<Option<Opened>, CryptError> {
    let object = keyring_key(url);
    let k = object.as_str();
    let what = format!("s3://{}/{k}", store.bucket());
    let (data, etag) = match store.get_small_if_changed(k, None).await? {
        Conditional::Found { data, etag } => (data, etag),
        Conditional::Missing | Conditional::NotModified => {
            super::forget(store, url);
            return Ok(None);
        }
    };
    let text = match decrypt_with_identities(&data, env, &what).await? {
        Ok(text) => text,
        Err(why) => match super::kms::open_keyring(store, url, env, &data, &what).await? {
            KmsOpen::Opened(text) => text,
            KmsOpen::NotWrapped => return Err(refused(store, url, why).await),
            KmsOpen::Refused(kms) => return Err(refused(store, url, format!("{why}; {kms}")).await),
        },
    };
    Ok(Some(Opened { ring: parse(&text, &what)?, etag }))
}

/// The keyring's plaintext with the caller's identities, or why not (the
/// refusal's reason: no identities file, or none of its identities opens
/// it). X25519 identities first, in this process; then the file's plugin
/// identities, through their plugins run in the caller's environment.
async fn decrypt_with_identities(data: &[u8], env: &HashMap<String, String>, what: &str) -> Result<Result<String, String>, CryptError> {
    let ids = match identities::load(env).await {
        Ok(x) => x,
        Err(CryptError::Identities(m)) => return Ok(Err(m.replace(": run `git s3 keygen`", " (`git s3 keygen` makes one)"))),
        Err(e) => return Err(e),
    };
    if let Some(text) = super::decrypt_keyring(data, ids.native.iter().map(|i| i as &dyn age::Identity), what)? {
        return Ok(Ok(text));
    }
    if !ids.plugins.is_empty() && has_plugin_stanzas(data) {
        let names: Vec<String> = ids.plugins.keys().map(|p| format!("age-plugin-{p}")).collect();
        if let Some(text) = super::plugins::decrypt(&ids.path, data, env, &names.join(", ")).await? {
            return Ok(Ok(text));
        }
    }
    Ok(Err(format!("none of your identities in {} opens it", ids.path.display())))
}

/// Whether the age file `data` has a stanza no X25519 identity reads (a
/// plugin's; age's random "grease" stanza aside): else no plugin identity
/// can open it, and no plugin is run.
fn has_plugin_stanzas(data: &[u8]) -> bool {
    let header_end = data.windows(4).position(|w| w == b"\n---").unwrap_or(data.len());
    data[..header_end]
        .split(|b| *b == b'\n')
        .filter_map(|l| l.strip_prefix(b"-> "))
        .filter_map(|stanza| stanza.split(|b| *b == b' ').next())
        .any(|tag| tag != b"X25519" && !tag.ends_with(b"-grease"))
}

/// The one line of a caller who cannot open the keyring: its recipients' fingerprints and what to ask for.
async fn refused(store: &S3Store, url: &RemoteUrl, why: String) -> CryptError {
    let meta = match store.head_with_metadata(&keyring_key(url)).await {
        Ok(Some((_, meta))) => meta,
        _ => HashMap::new(),
    };
    let fps: Vec<&str> = meta.get(META_RECIPIENTS).map(|f| f.split_whitespace().collect()).unwrap_or_default();
    let kms = meta.get(META_KMS).map(|k| format!(", or for kms:Decrypt on the KMS key {k}")).unwrap_or_default();
    let to = match (fps.len(), meta.get(META_KMS)) {
        (0, Some(k)) => format!("the KMS key {k}"),
        (n, _) => {
            format!("{n} recipient{} (fingerprints {})", if n == 1 { "" } else { "s" }, if n == 0 { "unknown".to_string() } else { fps.join(", ") })
        }
    };
    CryptError::NoAccess(format!(
        "{url} is encrypted to {to} and {why}: ask someone with access to add your recipient (the age1… that `git s3 keygen` prints){kms}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plaintext_is_an_age_identity_file_and_parses_back() {
        let key = RemoteKey::generate();
        let r = age::x25519::Identity::generate().to_public();
        let text = Keyring { key: key.alone(), recipients: vec![r.to_string()], kms: vec![], version: 2 }.plaintext();
        let ring = parse(&text, "k").unwrap();
        assert_eq!(ring.key.secret(), key.secret());
        assert_eq!((ring.key.generation(), ring.version), (1, 2));
        assert_eq!(ring.recipients, vec![r.to_string()]);
        // what `age -d -i` reads: comments skipped, one identity
        let ids = age::IdentityFile::from_buffer(text.as_bytes()).unwrap().into_identities().unwrap();
        assert_eq!(ids.len(), 1);
        assert!(parse("AGE-SECRET-KEY-1", "k").is_err());
        assert!(parse(&format!("{HEADER}\n# nothing\n"), "k").is_err());
    }

    #[test]
    fn only_a_keyring_with_a_plugins_stanza_runs_plugins() {
        let r = age::x25519::Identity::generate().to_public();
        let x25519_only = age::encrypt(&r, b"k").unwrap();
        assert!(!has_plugin_stanzas(&x25519_only), "grease is no plugin's");
        let header = b"age-encryption.org/v1\n-> X25519 abc\nbody\n-> piv-p256 xyz abc\nbody\n--- mac\n";
        assert!(has_plugin_stanzas(header));
        assert!(!has_plugin_stanzas(b"age-encryption.org/v1\n-> X25519 abc\nbody\n--- mac\n-> piv-p256 in the payload"));
    }

    #[test]
    fn a_version_1_keyring_still_opens_as_generation_1() {
        let key = RemoteKey::generate();
        let r = age::x25519::Identity::generate().to_public();
        // exactly what the first slice wrote
        let v1 = format!("{HEADER_V1}\n# recipient: {r}\n{}\n", key.secret());
        let ring = parse(&v1, "k").unwrap();
        assert_eq!((ring.key.secret(), ring.key.generation(), ring.version), (key.secret(), 1, 1));
        assert_eq!(ring.recipients, vec![r.to_string()]);
        assert!(parse(&format!("{v1}{}\n", RemoteKey::generate().secret()), "k").is_err());
    }

    #[test]
    fn a_rotated_keyring_lists_every_generation_and_marks_the_current_one() {
        let first = RemoteKey::generate();
        let kms = vec![KmsGrant { recipient: age::x25519::Identity::generate().to_public().to_string(), key_id: "alias/x y".into() }];
        let ring = Keyring { key: first.rotated().rotated(), recipients: vec!["age1a".into()], kms: kms.clone(), version: 2 };
        let text = ring.plaintext();
        assert!(text.contains("# key 3 (current)\n") && text.contains("# key 1\n"), "{text}");
        let back = parse(&text, "k").unwrap();
        assert_eq!(back.key.generations().map(RemoteKey::generation).collect::<Vec<_>>(), vec![3, 2, 1]);
        assert_eq!(back.key.of_generation(Some(1)).unwrap().secret(), first.secret());
        assert_eq!(back.kms, kms);
        // the age CLI sees three identities
        let ids = age::IdentityFile::from_buffer(text.as_bytes()).unwrap().into_identities().unwrap();
        assert_eq!(ids.len(), 3);
        // no current key, or two
        assert!(parse(&text.replace(" (current)", ""), "k").is_err());
        assert!(parse(&text.replace("# key 1\n", "# key 1 (current)\n"), "k").is_err());
        // older keys dropped: the first key's fingerprint is kept, and read back
        let dropped = Keyring { key: back.key.alone(), recipients: vec!["age1a".into()], kms: vec![], version: 2 }.plaintext();
        assert!(dropped.contains(&format!("# first key: {}\n", first.origin())), "{dropped}");
        assert_eq!(parse(&dropped, "k").unwrap().key.origin(), first.origin());
        assert!(!text.contains("# first key"), "{text}");
    }
}
