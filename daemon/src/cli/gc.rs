//! Commands for packs-format remotes: `git s3 gc [--geometric]`, and the packs side of
//! `delete-branch`, `protect` and `unprotect` (edits of the manifest).

use std::time::Duration;

use clap::Args;

use super::remote::Remote;
use super::{human_bytes, CliError, CliResult, Ctx};
use crate::storage::packs::push::read_manifest;
use crate::storage::packs::gc::{gc, update_manifest, GcMode};

#[derive(Args, Debug)]
pub struct GcArgs {
    /// A git remote name or an s3:// URL of a packs-format remote
    #[arg(value_name = "REMOTE")]
    pub remote: String,
    /// Keep replaced and unreferenced packs this long before deleting them (readers of an
    /// older manifest, and pushes in progress, may still need them)
    #[arg(long, value_name = "SECONDS", default_value_t = crate::storage::packs::gc::DEFAULT_GRACE_SECONDS)]
    pub grace_seconds: u64,
    /// Only show what would be combined and deleted; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Combine only the small packs that break a geometric progression (factor 2), keeping
    /// the big ones untouched: costs grow with what was pushed since the last gc, not with
    /// the repository (the default combines every pack into one pack of what the refs reach)
    #[arg(long)]
    pub geometric: bool,
}

pub async fn run_gc(ctx: &mut Ctx, args: GcArgs) -> CliResult {
    let remote = Remote::resolve(ctx, &args.remote).await?;
    let tmp = ctx.state.cache.root().join("tmp");
    let mode = if args.geometric { GcMode::Geometric } else { GcMode::Full };
    let grace = Duration::from_secs(args.grace_seconds);
    let r = gc(&remote.store, &remote.url, &tmp, &ctx.env, grace, mode, args.dry_run).await?;
    if r.raced {
        ctx.eprintln("the remote changed while combining packs: nothing was replaced; run `git s3 gc` again");
        return Ok(1);
    }
    // For geometric: how many packs were left as they were.
    let kept = match mode {
        GcMode::Geometric => format!(
            "; {} {} pack(s) ({})",
            if args.dry_run { "would keep" } else { "kept" },
            r.kept,
            human_bytes(r.bytes_before.saturating_sub(r.combined_bytes))
        ),
        GcMode::Full => String::new(),
    };
    match &r.combined {
        Some(p) => ctx.println(format!(
            "Combined {} packs ({}) into pack-{} ({} objects, {}){kept}",
            r.combined_packs,
            human_bytes(r.combined_bytes),
            p.name,
            p.objects,
            human_bytes(p.size + p.idx_size)
        )),
        None if r.combined_packs > 0 => {
            ctx.println(format!("Would combine {} packs ({}){kept}", r.combined_packs, human_bytes(r.combined_bytes)))
        }
        None if mode == GcMode::Geometric && r.packs_before > 1 => {
            ctx.println(format!("{} pack(s) already form a geometric progression: nothing to combine", r.packs_before))
        }
        None => ctx.println(format!("{} pack(s): nothing to combine", r.packs_before)),
    }
    if let (GcMode::Full, Some(v), Some(_)) = (mode, &r.views, &r.combined) {
        let size = |p: &Option<crate::storage::packs::manifest::PackEntry>| p.as_ref().map(|p| human_bytes(p.size + p.idx_size)).unwrap_or_else(|| "none".into());
        ctx.println(format!(
            "Wrote the views for shallow and partial clones: skeleton (commits and trees) {}, branch tips {}",
            size(&v.skeleton),
            size(&v.tips)
        ));
    }
    let verb = if args.dry_run { "Would delete" } else { "Deleted" };
    for k in &r.deleted {
        ctx.println(format!("{verb} {k}"));
    }
    if !r.waiting.is_empty() {
        ctx.println(format!("{} object(s) kept until their grace period ({}s) ends", r.waiting.len(), args.grace_seconds));
    }
    Ok(0)
}

pub enum BranchOp {
    Delete,
    Protect,
    Unprotect,
}

/// The packs side of delete-branch/protect/unprotect; None when `remote` is
/// not a packs remote.
pub async fn branch_op(ctx: &mut Ctx, remote: &Remote, refname: &str, op: BranchOp, yes: bool) -> Result<Option<i32>, CliError> {
    let Some((m, _)) = read_manifest(&remote.store, &remote.url).await? else {
        return Ok(None);
    };
    let name = refname.trim_start_matches("refs/heads/").to_string();
    if !m.refs.contains_key(refname) && !matches!(op, BranchOp::Unprotect) {
        return Err(CliError::NotFound(format!("branch {refname} does not exist in {}", remote.url)));
    }
    let marker = remote.marker_key(refname);
    match op {
        BranchOp::Delete => {
            if m.protected.contains(refname) || remote.store.head(&marker).await?.is_some() {
                return Err(CliError::Refused(format!("{refname} is protected; run `git s3 unprotect` first")));
            }
            if !super::branch::confirm_delete(ctx, refname, yes).await? {
                return Ok(Some(1));
            }
            let r = refname.to_string();
            update_manifest(&remote.store, &remote.url, |m| {
                if m.protected.contains(&r) {
                    return Err(crate::storage::StorageError::Format(format!("{r} is protected")));
                }
                Ok(m.refs.remove(&r).is_some())
            })
            .await?;
            // A repo.zip left by an s3+zip push goes with its ref.
            remote.store.delete(&crate::storage::bundles::storage::zip_key(&remote.url, refname)).await?;
            ctx.println(format!("Branch {name} has been deleted"));
        }
        BranchOp::Protect => {
            let r = refname.to_string();
            let before = m.protected.contains(refname);
            update_manifest(&remote.store, &remote.url, |m| Ok(m.protected.insert(r.clone()))).await?;
            ctx.println(if before { format!("Branch {name} is already protected") } else { format!("Branch {name} is now protected") });
        }
        BranchOp::Unprotect => {
            let r = refname.to_string();
            let had_marker = remote.store.head(&marker).await?.is_some();
            update_manifest(&remote.store, &remote.url, |m| Ok(m.protected.remove(&r))).await?;
            if had_marker {
                remote.store.delete(&marker).await?;
            }
            if had_marker || m.protected.contains(refname) {
                ctx.println(format!("Branch {name} is now unprotected"));
            } else {
                ctx.println(format!("Branch {name} is not protected"));
            }
        }
    }
    Ok(Some(0))
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The format to convert the remote to
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub to: super::init::FormatArg,
    /// A git remote name or an s3:// URL
    #[arg(value_name = "REMOTE")]
    pub remote: String,
}

pub async fn run_migrate(ctx: &mut Ctx, args: MigrateArgs) -> CliResult {
    let remote = Remote::resolve(ctx, &args.remote).await?;
    let tmp = ctx.state.cache.root().join("tmp");
    let (r, to) = match args.to {
        super::init::FormatArg::Packs => (crate::storage::packs::gc::migrate_to_packs(&remote.store, &remote.url, &tmp, &ctx.env).await?, "packs"),
        super::init::FormatArg::Bundles => {
            (crate::storage::packs::gc::migrate_to_bundles(&remote.store, &remote.url, &tmp, &ctx.env).await?, "bundles")
        }
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
