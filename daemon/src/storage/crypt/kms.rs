//! The keyring wrapped with AWS KMS keys (`--encrypt-to kms:<key id or
//! ARN>`), so IAM decides who reads an encrypted remote. For each KMS key
//! the keyring object is also age-encrypted to a **wrapping identity** of
//! its own (a fresh age X25519 identity; its recipient is the keyring's
//! `# kms:` line), and that identity's secret is encrypted with KMS
//! `Encrypt` (no encryption context) into `<prefix>/.git-s3/keyring.kms`,
//! a plaintext JSON document:
//!
//! ```text
//! {"version":1,"keys":[{"key_id":"<as given>","recipient":"age1…","ciphertext":"<base64 CiphertextBlob>"}]}
//! ```
//!
//! Opening: `Decrypt` of an entry's ciphertext gives `AGE-SECRET-KEY-1…`,
//! which opens the keyring like any identity (the `aws` and `age` CLIs do
//! the same: see docs/encryption.md). Only tried when the caller's age
//! identities do not open the keyring. The KMS client is built from the
//! caller's AWS environment (`s3/clients.rs`) and kept warm in the daemon's
//! memory, one per caller configuration (`Encrypt`, when a KMS key is
//! granted, goes through the same one); what `Decrypt` answered is kept
//! for [`UNWRAPPED_FOR`], per caller configuration, KMS key and ciphertext
//! (the keyring itself is read and opened again by every command, so a
//! rotated or revoked keyring is seen at once).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use age::secrecy::ExposeSecret;
use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::primitives::Blob;
use serde::{Deserialize, Serialize};

use super::{decrypt_keyring, CryptError};
use crate::s3::clients::ClientSpec;
use crate::s3::store::{Conditional, PutOptions, S3Store, WriteCondition};
use crate::s3::url::RemoteUrl;

/// The KMS-wrapped identities, under the packs format's directory.
pub(crate) const KMS_NAME: &str = ".git-s3/keyring.kms";
/// How `--encrypt-to` names a KMS key.
pub(crate) const PREFIX: &str = "kms:";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct KmsFile {
    pub(crate) version: u32,
    pub(crate) keys: Vec<KmsEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KmsEntry {
    pub(crate) key_id: String,
    pub(crate) recipient: String,
    pub(crate) ciphertext: String,
}

/// A KMS key the keyring is also wrapped with: the age recipient whose
/// identity the KMS key wraps (in `.git-s3/keyring.kms`), and the key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KmsGrant {
    pub(crate) recipient: String,
    pub(crate) key_id: String,
}

pub(crate) fn kms_key(url: &RemoteUrl) -> String {
    url.key(KMS_NAME)
}

/// The KMS key id of an `--encrypt-to kms:<id>` argument, if it is one.
pub(crate) fn key_id(arg: &str) -> Option<&str> {
    arg.trim().strip_prefix(PREFIX).map(str::trim).filter(|k| !k.is_empty())
}

/// How long a `Decrypt` answer is used again by the same caller: within
/// it, a caller's lost `kms:Decrypt` permission is not noticed (a rotated
/// or revoked keyring is: see [`open_keyring`]).
pub(crate) const UNWRAPPED_FOR: Duration = Duration::from_secs(300);

/// A warm KMS client in the daemon's memory, by [`ClientSpec::kms_cache_key`].
struct WarmKms(aws_sdk_kms::Client);

/// A wrapping identity's secret as KMS `Decrypt` gave it, and when, in the
/// daemon's memory by caller, KMS key and ciphertext ([`unwrapped_key`]).
struct Unwrapped {
    secret: age::secrecy::SecretString,
    at: Instant,
}

/// The caller's configuration, as [`ClientSpec`] (blocking: it reads the config files).
async fn caller_spec(url: &RemoteUrl, env: &HashMap<String, String>) -> Result<ClientSpec, CryptError> {
    let (e, profile) = (env.clone(), url.profile.clone());
    super::codec::blocking(move || Ok(ClientSpec::from_env(&e, profile.as_deref()))).await
}

/// The caller's warm KMS client (built on first use), and the key of the
/// caller's configuration: `Decrypt` (opening) and `Encrypt` (`wrap`, at
/// init, migrate and grant) share it.
async fn warm_client(store: &S3Store, spec: &ClientSpec) -> (aws_sdk_kms::Client, String) {
    let caller = spec.kms_cache_key();
    let clients = store.memory().map::<WarmKms>();
    if let Some(c) = clients.get(&caller) {
        return (c.0.clone(), caller);
    }
    tracing::debug!("building a KMS client");
    // Boxed: the SDK's configuration loading is a large future (a debug
    // build's worker stack overflowed under `git s3 migrate`).
    let client = Box::pin(spec.kms_client()).await;
    clients.insert(caller.clone(), WarmKms(client.clone()));
    (client, caller)
}

/// Where a `Decrypt` answer is remembered: the caller's configuration,
/// the KMS key and the ciphertext (another caller, key or ciphertext asks KMS).
fn unwrapped_key(caller: &str, entry: &KmsEntry) -> String {
    format!("{caller}\0{}\0{}", entry.key_id, entry.ciphertext)
}

/// `entry`'s wrapping identity's secret: remembered from a `Decrypt` of
/// less than [`UNWRAPPED_FOR`] ago, else from KMS. Err: KMS's refusal, in one line.
async fn unwrap_entry(
    store: &S3Store,
    kms: &aws_sdk_kms::Client,
    caller: &str,
    entry: &KmsEntry,
    url: &RemoteUrl,
) -> Result<Result<String, String>, CryptError> {
    let remembered = store.memory().map::<Unwrapped>();
    let at = unwrapped_key(caller, entry);
    if let Some(u) = remembered.get(&at).filter(|u| u.at.elapsed() < UNWRAPPED_FOR) {
        tracing::debug!(key_id = entry.key_id, "KMS Decrypt answered less than {UNWRAPPED_FOR:?} ago: used again");
        return Ok(Ok(u.secret.expose_secret().to_string()));
    }
    remembered.remove(&at);
    let blob = aws_smithy_types::base64::decode(&entry.ciphertext).map_err(|e| CryptError::Keyring(kms_key(url), e.to_string()))?;
    match Box::pin(kms.decrypt().key_id(&entry.key_id).ciphertext_blob(Blob::new(blob)).send()).await {
        Ok(out) => {
            let secret = out.plaintext().map(|p| String::from_utf8_lossy(p.as_ref()).to_string()).unwrap_or_default();
            remembered.insert(at, Unwrapped { secret: secret.clone().into(), at: Instant::now() });
            Ok(Ok(secret))
        }
        Err(e) => Ok(Err(kms_error(&entry.key_id, "Decrypt", &e))),
    }
}

/// One line for a KMS error: the key, the service's code and message, and what to ask for.
fn kms_error<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    key_id: &str,
    action: &str,
    e: &aws_sdk_kms::error::SdkError<E>,
) -> String {
    let detail = match (e.code(), e.message()) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => aws_sdk_kms::error::DisplayErrorContext(e).to_string(),
    };
    format!("KMS key {key_id} refused {action} ({detail}): ask its owner for kms:{action} on {key_id} (and check the key id and region)")
}

/// A new wrapping identity for `key_id`, its secret encrypted with KMS: the
/// keyring's grant and `keyring.kms`'s entry.
/// The caller's warm KMS client (`store`'s memory) sends the `Encrypt`.
pub(crate) async fn wrap(store: &S3Store, url: &RemoteUrl, env: &HashMap<String, String>, key_id: &str) -> Result<(KmsGrant, KmsEntry), CryptError> {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let secret = identity.to_string().expose_secret().to_string();
    let (kms, _) = Box::pin(warm_client(store, &caller_spec(url, env).await?)).await;
    let out = Box::pin(kms.encrypt().key_id(key_id).plaintext(Blob::new(secret.into_bytes())).send())
        .await
        .map_err(|e| CryptError::Kms(kms_error(key_id, "Encrypt", &e)))?;
    let blob = out.ciphertext_blob().ok_or_else(|| CryptError::Kms(format!("KMS key {key_id}: Encrypt answered without a ciphertext")))?;
    let entry = KmsEntry { key_id: key_id.to_string(), recipient: recipient.clone(), ciphertext: aws_smithy_types::base64::encode(blob.as_ref()) };
    Ok((KmsGrant { recipient, key_id: key_id.to_string() }, entry))
}

/// `--encrypt-to` arguments (`git s3 init`, `git s3 migrate`): age
/// recipients (`age1…`) and KMS keys (`kms:<key id or ARN>`).
#[derive(Debug, Default)]
pub(crate) struct EncryptTo {
    pub(crate) ages: Vec<super::recipient::Recipient>,
    pub(crate) kms: Vec<String>,
}

impl EncryptTo {
    pub(crate) fn parse(args: &[String]) -> Result<EncryptTo, CryptError> {
        let mut to = EncryptTo::default();
        for a in args {
            match key_id(a) {
                Some(id) => to.kms.push(id.to_string()),
                None => to.ages.push(super::recipient::Recipient::parse(a)?),
            }
        }
        Ok(to)
    }

    /// The KMS key ids.
    pub(crate) fn kms_ids(&self) -> Vec<&str> {
        self.kms.iter().map(String::as_str).collect()
    }
}

/// A wrapping identity per KMS key of `key_ids`, its secret encrypted with
/// the key and recorded in `keyring.kms` (before the keyring that lists
/// it: `git s3 init` and `migrate --encrypt-to` then write that keyring):
/// the grants for the keyring.
pub(crate) async fn wrap_keys(
    store: &S3Store,
    url: &RemoteUrl,
    env: &HashMap<String, String>,
    key_ids: &[&str],
) -> Result<Vec<KmsGrant>, CryptError> {
    let mut grants = Vec::new();
    for id in key_ids {
        let (grant, entry) = wrap(store, url, env, id).await?;
        edit_file(store, url, |f| {
            f.keys.retain(|k| k.key_id != entry.key_id);
            f.keys.push(entry.clone());
        })
        .await?;
        grants.push(grant);
    }
    Ok(grants)
}

/// `keyring.kms` and its ETag (None: no such object).
pub(crate) async fn read_file(store: &S3Store, url: &RemoteUrl) -> Result<Option<(KmsFile, String)>, CryptError> {
    match store.get_small_if_changed(&kms_key(url), None).await? {
        Conditional::Found { data, etag } => {
            let file: KmsFile = serde_json::from_slice(&data).map_err(|e| CryptError::Keyring(kms_key(url), e.to_string()))?;
            Ok(Some((file, etag)))
        }
        _ => Ok(None),
    }
}

/// Rewrites `keyring.kms` with `edit` applied, conditional on what was read (retried when it changed).
pub(crate) async fn edit_file(store: &S3Store, url: &RemoteUrl, edit: impl Fn(&mut KmsFile)) -> Result<(), CryptError> {
    for _ in 0..5 {
        let (mut file, condition) = match read_file(store, url).await? {
            Some((f, etag)) => (f, WriteCondition::IfMatch(etag)),
            None => (KmsFile { version: 1, keys: vec![] }, WriteCondition::IfAbsent),
        };
        edit(&mut file);
        let data = serde_json::to_vec(&file).map_err(|e| CryptError::Keyring(kms_key(url), e.to_string()))?;
        match store.put_bytes(&kms_key(url), data, PutOptions { condition, ..Default::default() }).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_precondition_failed() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CryptError::Kms(format!("{} kept changing while this command edited it: run the command again", kms_key(url))))
}

/// What opening the keyring through KMS gave.
pub(crate) enum KmsOpen {
    /// The remote has no KMS-wrapped keyring.
    NotWrapped,
    /// The keyring's plaintext.
    Opened(String),
    /// Every KMS key refused: the one line why.
    Refused(String),
}

/// The keyring `data`'s plaintext through the KMS keys of `keyring.kms`,
/// with the caller's AWS environment.
pub(crate) async fn open_keyring(
    store: &S3Store,
    url: &RemoteUrl,
    env: &HashMap<String, String>,
    data: &[u8],
    what: &str,
) -> Result<KmsOpen, CryptError> {
    let Some((file, _)) = read_file(store, url).await? else {
        return Ok(KmsOpen::NotWrapped);
    };
    if file.keys.is_empty() {
        return Ok(KmsOpen::NotWrapped);
    }
    let (kms, caller) = Box::pin(warm_client(store, &caller_spec(url, env).await?)).await;
    let mut refusals = Vec::new();
    for entry in &file.keys {
        let secret = match Box::pin(unwrap_entry(store, &kms, &caller, entry, url)).await? {
            Ok(secret) => secret,
            Err(refusal) => {
                refusals.push(refusal);
                continue;
            }
        };
        let Ok(identity) = secret.trim().parse::<age::x25519::Identity>() else {
            refusals.push(format!("KMS key {} decrypted something that is not an age identity", entry.key_id));
            continue;
        };
        if let Some(text) = decrypt_keyring(data, std::iter::once(&identity as &dyn age::Identity), what)? {
            return Ok(KmsOpen::Opened(text));
        }
        refusals.push(format!("KMS key {} is no longer granted (its wrapping recipient does not open the keyring)", entry.key_id));
    }
    Ok(KmsOpen::Refused(refusals.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_arguments_and_the_file_format() {
        assert_eq!(key_id("kms:alias/team"), Some("alias/team"));
        assert_eq!(key_id("kms:arn:aws:kms:eu-west-1:1:key/abc"), Some("arn:aws:kms:eu-west-1:1:key/abc"));
        assert_eq!(key_id("kms:"), None);
        assert_eq!(key_id("age1xyz"), None);
        let f = KmsFile { version: 1, keys: vec![KmsEntry { key_id: "k".into(), recipient: "age1r".into(), ciphertext: "AAA=".into() }] };
        let text = serde_json::to_string(&f).unwrap();
        assert_eq!(text, r#"{"version":1,"keys":[{"key_id":"k","recipient":"age1r","ciphertext":"AAA="}]}"#);
    }

    /// Counts the requests a KMS client would send (stopped before they leave).
    #[derive(Debug, Clone, Default)]
    struct Sent(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl aws_sdk_kms::config::Intercept for Sent {
        fn name(&self) -> &'static str {
            "sent"
        }
        fn read_before_transmit(
            &self,
            _: &aws_sdk_kms::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
            _: &aws_sdk_kms::config::RuntimeComponents,
            _: &mut aws_sdk_kms::config::ConfigBag,
        ) -> Result<(), aws_sdk_kms::error::BoxError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err("stopped".into())
        }
    }

    /// `wrap`'s `Encrypt` goes through the caller's warm client (the one
    /// `Decrypt` uses), built once per caller configuration: none is built
    /// while the daemon holds one.
    #[tokio::test]
    async fn wrap_uses_the_warm_client() {
        let home = tempfile::tempdir().unwrap();
        let env: HashMap<String, String> = [
            ("HOME", home.path().display().to_string()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "k".into()),
            ("AWS_SECRET_ACCESS_KEY", "s".into()),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let url = RemoteUrl::parse("s3://bkt/p").unwrap();
        let s3 = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .build();
        let store = S3Store::new(aws_sdk_s3::Client::from_conf(s3), "bkt", "test");
        let spec = caller_spec(&url, &env).await.unwrap();
        let sent = Sent::default();
        let warm = spec.kms_client().await;
        let warm = aws_sdk_kms::Client::from_conf(warm.config().to_builder().interceptor(sent.clone()).build());
        store.memory().map::<WarmKms>().insert(spec.kms_cache_key(), WarmKms(warm));
        for _ in 0..2 {
            let e = wrap(&store, &url, &env, "alias/team").await.unwrap_err();
            assert!(matches!(e, CryptError::Kms(_)), "{e}");
        }
        assert_eq!(sent.0.load(std::sync::atomic::Ordering::SeqCst), 2, "both Encrypts went through the warm client");
        assert_eq!(store.memory().map::<WarmKms>().len(), 1);
    }
}
