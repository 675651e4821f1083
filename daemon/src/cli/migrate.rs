//! `git s3 migrate --to packs|bundles <remote-or-url>`: converts a remote
//! between the storage formats (`storage::packs::migrate`);
//! `git s3 migrate --encrypt-to age1…|kms:… | --decrypt <remote-or-url>`:
//! encrypts a plaintext packs remote, or writes an encrypted one back in
//! plaintext (`storage::packs::crypt_migrate`).

use clap::Args;

use super::remote::Remote;
use super::{human_bytes, CliError, CliResult, Ctx, FormatArg};
use crate::storage::crypt;
use crate::storage::packs::crypt_migrate::{decrypt, encrypt, CryptReport};
use crate::storage::packs::migrate::{migrate_to_bundles, migrate_to_packs};

#[derive(Args, Debug)]
pub(crate) struct MigrateArgs {
    /// The format to convert the remote to
    #[arg(long, value_enum, value_name = "FORMAT", required_unless_present_any = ["encrypt_to", "decrypt"], conflicts_with_all = ["encrypt_to", "decrypt"])]
    pub(crate) to: Option<FormatArg>,
    /// Encrypt a packs remote to this age recipient (age1…, from `git s3 keygen`; include your own) or KMS key (kms:<key id or ARN>); repeat for each
    #[arg(long = "encrypt-to", value_name = "RECIPIENT", conflicts_with = "decrypt")]
    pub(crate) encrypt_to: Vec<String>,
    /// Write an encrypted remote back in plaintext
    #[arg(long)]
    pub(crate) decrypt: bool,
    /// A git remote name or an s3:// URL
    #[arg(value_name = "REMOTE")]
    pub(crate) remote: String,
}

pub(crate) async fn run(ctx: &mut Ctx, args: MigrateArgs) -> CliResult {
    let to = crypt::kms::EncryptTo::parse(&args.encrypt_to).map_err(|e| CliError::Usage(e.to_string()))?;
    let remote = Remote::resolve(ctx, &args.remote).await?;
    let tmp = ctx.state.cache.root().join("tmp");
    let url = &remote.url;
    if !args.encrypt_to.is_empty() {
        let r = encrypt(&remote.store, url, &tmp, &ctx.env, &to).await?;
        let (n, k) = (to.ages.len(), to.kms.len());
        let kms = if k == 0 { String::new() } else { format!(" and {k} KMS key{}", plural(k)) };
        let to =
            if r.finished_earlier_run { "finished its encryption".to_string() } else { format!("encrypted it to {n} recipient{}{kms}", plural(n)) };
        ctx.println(format!(
            "Migrated {url}: {to} ({} refs, {} objects re-encrypted, {}; {} plaintext objects deleted{})",
            r.refs,
            r.copied,
            human_bytes(r.bytes),
            r.deleted,
            pushes_kept(&r)
        ));
        remember(ctx, &remote, crypt::opened(&remote.store, url).as_deref()).await;
        return Ok(0);
    }
    if args.decrypt {
        // Forgotten first: a decrypt interrupted after its switch leaves
        // the remote plaintext (one interrupted before it is remembered
        // again by the next fetch).
        remember(ctx, &remote, None).await;
        let r = decrypt(&remote.store, url, &tmp, &ctx.env).await?;
        let what = if r.finished_earlier_run { "finished its decryption" } else { "decrypted it" };
        ctx.println(format!(
            "Migrated {url}: {what} ({} refs, {} objects written in plaintext, {}; {} encrypted objects and keyring deleted{})",
            r.refs,
            r.copied,
            human_bytes(r.bytes),
            r.deleted,
            pushes_kept(&r)
        ));
        return Ok(0);
    }
    let Some(to) = args.to else { return Err(CliError::Usage("give --to packs|bundles, --encrypt-to age1… or --decrypt".into())) };
    match crypt::refuse_if_encrypted(&remote.store, url, "`git s3 migrate --to`").await {
        Ok(()) => {}
        Err(crypt::CryptError::NotYet(_)) => {
            return Err(CliError::Refused(format!(
                "{url} is an encrypted packs remote: `git s3 migrate --to` converts plaintext remotes; run `git s3 migrate --decrypt {url}` first"
            )))
        }
        Err(e) => return Err(crate::storage::StorageError::from(e).into()),
    }
    let (r, to) = match to {
        FormatArg::Packs => (migrate_to_packs(&remote.store, url, &tmp, &ctx.env).await?, "packs"),
        FormatArg::Bundles => (migrate_to_bundles(&remote.store, url, &tmp, &ctx.env).await?, "bundles"),
    };
    ctx.println(format!("Migrated {url} to the {to} format: {} refs, {} written, {} old objects deleted", r.refs, human_bytes(r.bytes), r.deleted));
    Ok(0)
}

/// Run from a repository whose remote `remote` names (`git s3 migrate
/// --encrypt-to|--decrypt origin`): what the repository remembers of it
/// (`crypt::trust`) follows the migration, its new key's or none.
async fn remember(ctx: &Ctx, remote: &Remote, key: Option<&crypt::RemoteKey>) {
    let Some(name) = &remote.name else { return };
    let git = crate::local::git::Git::new(&ctx.cwd, ctx.env.clone());
    if let Err(e) = crypt::trust::pin(&git, name, key).await {
        ctx.eprintln(format!("warning: could not update git config remote.{name}.{} in this repository: {e}", crypt::trust::VARIABLE));
    }
}

/// What the report says of pushes that landed during the copy.
fn pushes_kept(r: &CryptReport) -> String {
    match r.retried {
        0 => String::new(),
        n => format!("; the manifest changed {n} time(s) meanwhile (pushes): their packs were copied too"),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
