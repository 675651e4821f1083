//! `git s3 init --format packs|bundles <remote-or-url>`: choose the storage
//! format of an empty prefix. `packs` writes an empty manifest (so every
//! later push, whatever its `s3.format`, uses packs); `bundles` checks the
//! prefix is not a packs remote (an empty prefix holds bundles unless
//! `git config s3.format packs` says otherwise).

use clap::Args;

use super::remote::Remote;
use super::{CliError, CliResult, Ctx, FormatArg};
use crate::s3::store::{PutOptions, WriteCondition};
use crate::storage::detect::scan_refs_dir;
use crate::storage::packs::manifest::{self, read_manifest, Manifest};

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The storage format of the new remote
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: FormatArg,
    /// A git remote name or an s3:// URL (an empty prefix)
    #[arg(value_name = "REMOTE")]
    pub remote: String,
}

pub async fn run(ctx: &mut Ctx, args: InitArgs) -> CliResult {
    let remote = Remote::resolve(ctx, &args.remote).await?;
    let (existing, refs) = tokio::try_join!(read_manifest(&remote.store, &remote.url), scan_refs_dir(&remote.store, &remote.url))?;
    let url = &remote.url;
    if let Some((m, _)) = &existing {
        return Err(CliError::Refused(format!(
            "{url} is already a packs remote ({} refs, {} packs){}",
            m.refs.len(),
            m.packs.len(),
            if args.format == FormatArg::Bundles { format!("; convert it with `git s3 migrate --to bundles {url}`") } else { String::new() }
        )));
    }
    if !refs.bundle_refs.is_empty() {
        return Err(CliError::Refused(format!(
            "{url} already holds bundles ({} refs){}",
            refs.bundle_refs.len(),
            if args.format == FormatArg::Packs { format!("; convert it with `git s3 migrate --to packs {url}`") } else { String::new() }
        )));
    }
    match args.format {
        FormatArg::Packs => {
            let m = Manifest::default();
            let opts = PutOptions { condition: WriteCondition::IfAbsent, ..Default::default() };
            manifest::forget_held(&remote.store, url);
            match remote.store.put_bytes(&manifest::manifest_key(url), m.to_bytes(), opts).await {
                Ok(_) => {}
                Err(e) if e.is_precondition_failed() => return Err(CliError::Refused(format!("{url} was initialized by someone else meanwhile"))),
                Err(e) => return Err(e.into()),
            }
            ctx.println(format!("Initialized {url} in the packs format ({})", manifest::manifest_key(url)));
        }
        FormatArg::Bundles => {
            ctx.println(format!(
                "{url} is empty: it will hold bundles (the git-remote-s3 0.4.2 layout) unless the pushing repository sets `git config s3.format packs`"
            ));
        }
    }
    Ok(0)
}
