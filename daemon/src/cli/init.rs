//! `git s3 init --format packs|bundles <remote-or-url>`: choose the storage
//! format of an empty prefix. `packs` writes an empty manifest (so every
//! later push, whatever its `s3.format`, uses packs); `bundles` checks the
//! prefix is not a packs remote (an empty prefix holds bundles unless
//! `git config s3.format packs` says otherwise).

use std::sync::Arc;

use clap::Args;

use super::remote::Remote;
use super::{CliError, CliResult, Ctx, FormatArg};
use crate::s3::store::{PutOptions, WriteCondition};
use crate::s3::url::RemoteUrl;
use crate::storage::crypt::kms::KmsGrant;
use crate::storage::crypt::{self, keyring, kms, CryptError, RemoteKey};
use crate::storage::detect::scan_refs_dir;
use crate::storage::packs::manifest::{self, read_manifest, Manifest};

#[derive(Args, Debug)]
pub(crate) struct InitArgs {
    /// The storage format of the new remote
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub(crate) format: FormatArg,
    /// Encrypt the remote (packs only) to this age recipient (age1…, from `git s3 keygen`) or KMS key (kms:<key id or ARN>); repeat for each
    #[arg(long = "encrypt-to", value_name = "RECIPIENT")]
    pub(crate) encrypt_to: Vec<String>,
    /// A git remote name or an s3:// URL (an empty prefix)
    #[arg(value_name = "REMOTE")]
    pub(crate) remote: String,
}

pub(crate) async fn run(ctx: &mut Ctx, args: InitArgs) -> CliResult {
    if !args.encrypt_to.is_empty() && args.format == FormatArg::Bundles {
        return Err(CliError::Refused(
            "the bundles format (git-remote-s3 0.4.2's layout) stays plaintext: use `git s3 init --format packs --encrypt-to …` to encrypt".into(),
        ));
    }
    // age recipients, and KMS keys (`kms:<key id or ARN>`).
    let to = kms::EncryptTo::parse(&args.encrypt_to).map_err(|e| CliError::Usage(e.to_string()))?;
    let (recipients, kms_ids) = (&to.ages, to.kms_ids());
    let encrypt = !args.encrypt_to.is_empty();
    let remote = Remote::resolve(ctx, &args.remote).await?;
    let (existing, refs) = tokio::try_join!(read_manifest(&remote.store, &remote.url), scan_refs_dir(&remote.store, &remote.url))?;
    let url = &remote.url;
    refuse_existing(url, existing.as_ref().map(|(m, _)| m), refs.bundle_refs.len(), &args, encrypt)?;
    match args.format {
        FormatArg::Packs => {
            let m = Manifest::default();
            let opts = PutOptions { condition: WriteCondition::IfAbsent, ..Default::default() };
            manifest::forget_held(&remote.store, url);
            if encrypt {
                // The keyring first: a manifest without it would be a plaintext remote.
                let key = Arc::new(RemoteKey::generate());
                let grants = wrap_with_kms(ctx, &remote, &kms_ids).await?;
                match keyring::create(&remote.store, url, &key, recipients, grants, &ctx.env).await {
                    Ok(()) => {}
                    Err(CryptError::Store(e)) if e.is_precondition_failed() => {
                        return Err(CliError::Refused(format!("{url} already has a keyring ({}): it is encrypted already", crypt::keyring_key(url))))
                    }
                    Err(e) => return Err(CliError::Storage(e.into())),
                }
                crypt::remember(&remote.store, url, key);
            } else {
                crypt::forget(&remote.store, url);
            }
            match remote.store.put_bytes(&manifest::manifest_key(url), manifest::encode(&remote.store, url, &m)?, opts).await {
                // A remote created afresh: its serials start again (a machine
                // that saw a deleted one's refuses it until told: see crypt::rollback).
                Ok(_) if encrypt => {
                    let location = remote.store.location(&manifest::manifest_key(url));
                    crypt::rollback::reset(&remote.store, &location).await.map_err(|e| CliError::Storage(e.into()))?
                }
                Ok(_) => {}
                Err(e) if e.is_precondition_failed() => return Err(CliError::Refused(format!("{url} was initialized by someone else meanwhile"))),
                Err(e) => return Err(e.into()),
            }
            if !encrypt {
                ctx.println(format!("Initialized {url} in the packs format ({})", manifest::manifest_key(url)));
            } else {
                ctx.println(format!(
                    "Initialized {url} in the packs format, encrypted to {} recipient{}{} (keyring {})",
                    recipients.len(),
                    if recipients.len() == 1 { "" } else { "s" },
                    if kms_ids.is_empty() {
                        String::new()
                    } else {
                        format!(" and {} KMS key{}", kms_ids.len(), if kms_ids.len() == 1 { "" } else { "s" })
                    },
                    crypt::keyring_key(url)
                ));
            }
        }
        FormatArg::Bundles => {
            ctx.println(format!(
                "{url} is empty: it will hold bundles (the git-remote-s3 0.4.2 layout) unless the pushing repository sets `git config s3.format packs`"
            ));
        }
    }
    Ok(0)
}

/// Refuses a prefix that is already a remote: a packs manifest, or
/// bundles (`bundle_refs` of them), in one line that says what to do.
fn refuse_existing(url: &RemoteUrl, existing: Option<&Manifest>, bundle_refs: usize, args: &InitArgs, encrypt: bool) -> Result<(), CliError> {
    if let Some(m) = existing {
        return Err(CliError::Refused(format!(
            "{url} is already a packs remote ({} refs, {} packs){}",
            m.refs.len(),
            m.packs.len(),
            if args.format == FormatArg::Bundles { format!("; convert it with `git s3 migrate --to bundles {url}`") } else { String::new() }
        )));
    }
    if bundle_refs > 0 {
        return Err(CliError::Refused(format!(
            "{url} already holds bundles ({} refs){}",
            bundle_refs,
            if encrypt {
                "; the bundles format stays plaintext: encryption needs a packs remote (`git s3 migrate --to packs`, then a new encrypted remote)"
                    .to_string()
            } else if args.format == FormatArg::Packs {
                format!("; convert it with `git s3 migrate --to packs {url}`")
            } else {
                String::new()
            }
        )));
    }
    Ok(())
}

/// A wrapping identity per KMS key, its secret encrypted with the key and
/// recorded in `keyring.kms` (before the keyring that lists it).
async fn wrap_with_kms(ctx: &Ctx, remote: &Remote, kms_ids: &[&str]) -> Result<Vec<KmsGrant>, CliError> {
    kms::wrap_keys(&remote.store, &remote.url, &ctx.env, kms_ids).await.map_err(|e| CliError::Storage(e.into()))
}
