//! `git s3 access list|grant|revoke <remote-or-url> [<recipient>]`: who
//! can read an encrypted remote (`storage::crypt::access`). `list` shows
//! the keyring's recipients, KMS keys and key generations; `grant` adds an
//! age recipient or `kms:<key>`; `revoke` removes one and rotates the
//! remote key, and with `--reencrypt` also re-encrypts every object to the
//! new key and drops the older keys.

use std::sync::Arc;

use clap::{Args, Subcommand};
use serde_json::json;

use super::remote::Remote;
use super::{CliError, CliResult, Ctx};
use crate::storage::crypt::access::{self, Outcome, Who};
use crate::storage::crypt::reencrypt::reencrypt;
use crate::storage::crypt::{fingerprint, CryptError};
use crate::storage::packs::manifest::read_manifest;
use crate::storage::StorageError;

#[derive(Args, Debug)]
pub(crate) struct AccessArgs {
    #[command(subcommand)]
    pub(crate) action: AccessAction,
}

#[derive(Subcommand, Debug)]
pub(crate) enum AccessAction {
    /// The recipients (age1… with fingerprints), KMS keys and key generations of an encrypted remote
    List {
        /// A git remote name or an s3:// URL
        #[arg(value_name = "REMOTE")]
        remote: String,
        /// Print one JSON document instead of text
        #[arg(long)]
        json: bool,
    },
    /// Let one more recipient read the remote: an age recipient (age1…) or kms:<KMS key id or ARN>
    Grant {
        #[arg(value_name = "REMOTE")]
        remote: String,
        #[arg(value_name = "RECIPIENT")]
        recipient: String,
    },
    /// Remove a recipient and rotate the remote key (new objects are unreadable to it); --reencrypt also re-encrypts what exists
    Revoke {
        #[arg(value_name = "REMOTE")]
        remote: String,
        #[arg(value_name = "RECIPIENT")]
        recipient: String,
        /// Also re-encrypt every existing pack to the new key, delete the old objects and drop the older keys
        #[arg(long)]
        reencrypt: bool,
    },
}

fn crypt(e: CryptError) -> CliError {
    CliError::Storage(StorageError::from(e))
}

fn who(arg: &str) -> Result<Who, CliError> {
    Who::parse(arg).map_err(|e| CliError::Usage(e.to_string()))
}

pub(crate) async fn run(ctx: &mut Ctx, args: AccessArgs) -> CliResult {
    match args.action {
        AccessAction::List { remote, json } => list(ctx, &remote, json).await,
        AccessAction::Grant { remote, recipient } => {
            let who = who(&recipient)?;
            let remote = Remote::resolve(ctx, &remote).await?;
            match access::grant(&remote.store, &remote.url, &ctx.env, &who, &remote.trust).await.map_err(crypt)? {
                Outcome::Done(_) => ctx.println(format!("Granted {} access to {}", who.describe(), remote.url)),
                Outcome::Unchanged(_) => ctx.println(format!("{} can already read {}", who.describe(), remote.url)),
            }
            Ok(0)
        }
        AccessAction::Revoke { remote, recipient, reencrypt: again } => revoke(ctx, &remote, &recipient, again).await,
    }
}

async fn revoke(ctx: &mut Ctx, remote: &str, recipient: &str, again: bool) -> CliResult {
    let who = who(recipient)?;
    let remote = Remote::resolve(ctx, remote).await?;
    let url = &remote.url;
    match access::revoke(&remote.store, url, &ctx.env, &who, &remote.trust).await.map_err(crypt)? {
        Outcome::Done(g) => ctx.println(format!(
            "Revoked {}'s access to {url}; new objects are encrypted to a new remote key (generation {g}). It may have kept copies of everything it could read before{}",
            who.describe(),
            if again { "" } else { "; `--reencrypt` re-encrypts the existing objects" }
        )),
        Outcome::Unchanged(_) if again => ctx.println(format!("{} is not a recipient of {url}; finishing the re-encryption", who.describe())),
        Outcome::Unchanged(_) => {
            return Err(CliError::NotFound(format!("{} is not a recipient of {url} (see `git s3 access list {url}`)", who.describe())))
        }
    }
    if again {
        let tmp = ctx.state.cache.root().join("tmp");
        let r = reencrypt(&remote.store, url, &ctx.env, &tmp).await?;
        ctx.println(format!(
            "Re-encrypted {} objects of {url} to the current key, deleted {} old objects, dropped {} older key{}",
            r.objects,
            r.deleted,
            r.dropped,
            if r.dropped == 1 { "" } else { "s" }
        ));
    }
    Ok(0)
}

async fn list(ctx: &mut Ctx, remote: &str, as_json: bool) -> CliResult {
    let remote = Remote::resolve(ctx, remote).await?;
    let ring = access::open(&remote.store, &remote.url, &ctx.env).await.map_err(crypt)?.ring;
    remote.trust.check_key(&remote.url, &ring.key).map_err(crypt)?;
    let (recipients, kms, version) = (ring.recipients, ring.kms, ring.version);
    let key = Arc::new(ring.key);
    // The key remembered: the manifest reads (how many packs each generation holds).
    crate::storage::crypt::remember(&remote.store, &remote.url, key.clone());
    let packs = read_manifest(&remote.store, &remote.url).await?.map(|(m, _)| m.packs).unwrap_or_default();
    let current = key.generation();
    let generations: Vec<(u32, usize)> =
        key.generations().map(|k| (k.generation(), packs.iter().filter(|p| p.key.unwrap_or(1) == k.generation()).count())).collect();
    if as_json {
        ctx.println(
            json!({
                "remote": remote.url.to_string(),
                "recipients": recipients.iter().map(|r| json!({"recipient": r, "fingerprint": fingerprint(r)})).collect::<Vec<_>>(),
                "kms": kms.iter().map(|k| json!({"key_id": k.key_id, "recipient": k.recipient})).collect::<Vec<_>>(),
                "generation": current,
                "generations": generations.iter().map(|(g, n)| json!({"generation": g, "current": *g == current, "packs": n})).collect::<Vec<_>>(),
                "keyring_version": version,
            })
            .to_string(),
        );
        return Ok(0);
    }
    ctx.println(format!("{} is encrypted (keyring v{version}):", remote.url));
    for r in &recipients {
        ctx.println(format!("  recipient {r}  fingerprint {}", fingerprint(r)));
    }
    for k in &kms {
        ctx.println(format!("  KMS key   {}", k.key_id));
    }
    for (g, n) in &generations {
        let mark = if *g == current { " (current)" } else { "" };
        ctx.println(format!("  key generation {g}{mark}: {n} pack{}", if *n == 1 { "" } else { "s" }));
    }
    if generations.len() > 1 {
        ctx.println(format!(
            "Older keys are kept for the packs written before a revoke: `git s3 access revoke --reencrypt {} <recipient>` re-encrypts them",
            remote.url
        ));
    }
    Ok(0)
}
