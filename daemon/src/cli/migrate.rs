//! `git s3 migrate --to packs|bundles <remote-or-url>`: converts a remote
//! between the storage formats (`storage::packs::migrate`).

use clap::Args;

use super::remote::Remote;
use super::{human_bytes, CliResult, Ctx, FormatArg};
use crate::storage::packs::migrate::{migrate_to_bundles, migrate_to_packs};

#[derive(Args, Debug)]
pub(crate) struct MigrateArgs {
    /// The format to convert the remote to
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub(crate) to: FormatArg,
    /// A git remote name or an s3:// URL
    #[arg(value_name = "REMOTE")]
    pub(crate) remote: String,
}

pub(crate) async fn run(ctx: &mut Ctx, args: MigrateArgs) -> CliResult {
    let remote = Remote::resolve(ctx, &args.remote).await?;
    crate::storage::crypt::refuse_if_encrypted(&remote.store, &remote.url, "`git s3 migrate`").await.map_err(crate::storage::StorageError::from)?;
    let tmp = ctx.state.cache.root().join("tmp");
    let (r, to) = match args.to {
        FormatArg::Packs => (migrate_to_packs(&remote.store, &remote.url, &tmp, &ctx.env).await?, "packs"),
        FormatArg::Bundles => (migrate_to_bundles(&remote.store, &remote.url, &tmp, &ctx.env).await?, "bundles"),
    };
    ctx.println(format!(
        "Migrated {} to the {to} format: {} refs, {} written, {} old objects deleted",
        remote.url,
        r.refs,
        human_bytes(r.bytes),
        r.deleted
    ));
    Ok(0)
}
