//! `git s3 delete-branch|protect|unprotect <remote-or-url> [-b] <branch>`,
//! in either format: a packs remote's refs and protection are manifest
//! edits (`branch_op`), a bundles remote's are objects under the ref.

use std::time::Duration;

use clap::Args;

use super::remote::{branch_ref, Remote};
use super::{CliError, CliResult, Ctx};
use crate::s3::store::PutOptions;
use crate::storage::bundles::layout::PROTECTED_MARKER;
use crate::storage::bundles::storage::{BundleStorage, DeleteRefused};
use crate::storage::packs::manifest::{read_manifest, update_manifest};
use crate::storage::zip::{zip_key, ZIP_NAME};

#[derive(Args, Debug)]
pub(crate) struct BranchArgs {
    /// A git remote name or an s3:// / s3+zip:// URL
    #[arg(value_name = "REMOTE")]
    pub(crate) remote: String,
    /// The branch (as git-remote-s3 0.4.2 takes it)
    #[arg(value_name = "BRANCH")]
    pub(crate) branch_pos: Option<String>,
    /// The branch
    #[arg(short = 'b', long = "branch", value_name = "BRANCH")]
    pub(crate) branch_flag: Option<String>,
    /// Do not ask for confirmation (delete-branch)
    #[arg(short = 'y', long)]
    pub(crate) yes: bool,
}

impl BranchArgs {
    /// The branch, from `-b` or the positional argument.
    pub(crate) fn branch(&self) -> Result<&str, CliError> {
        match (&self.branch_pos, &self.branch_flag) {
            (Some(a), Some(b)) if a != b => Err(CliError::Usage(format!("two different branches given ('{a}' and '{b}'); give one"))),
            (Some(a), _) | (None, Some(a)) => Ok(a),
            (None, None) => Err(CliError::Usage("a branch is required: <REMOTE> -b <BRANCH>".into())),
        }
    }
}

pub(crate) async fn delete_branch(ctx: &mut Ctx, args: BranchArgs) -> CliResult {
    let refname = branch_ref(args.branch()?)?;
    let remote = Remote::resolve(ctx, &args.remote).await?;
    if let Some(code) = branch_op(ctx, &remote, &refname, BranchOp::Delete, args.yes).await? {
        return Ok(code);
    }
    let objects = remote.ref_objects(&refname).await?;
    let leaf = |k: &str| k.rsplit('/').next().unwrap_or("").to_string();
    if objects.iter().any(|o| leaf(&o.key) == PROTECTED_MARKER) {
        return Err(CliError::Refused(format!(
            "{refname} is protected; run `git s3 unprotect {} {}` first",
            args.remote,
            refname.trim_start_matches("refs/heads/")
        )));
    }
    let doomed: Vec<_> = objects
        .iter()
        .filter(|o| {
            let l = leaf(&o.key);
            l == ZIP_NAME || l.ends_with(".bundle")
        })
        .collect();
    if !doomed.iter().any(|o| o.key.ends_with(".bundle")) {
        return Err(CliError::NotFound(format!("branch {refname} does not exist in {}", remote.url)));
    }
    ctx.println(format!("{refname} in {}:", remote.url));
    for o in &doomed {
        ctx.println(format!("  {} ({} bytes)", o.key, o.size));
    }
    if !confirm_delete(ctx, &refname, args.yes).await? {
        return Ok(1);
    }
    // Under the ref's lock, as a push deleting the ref.
    let bundles = BundleStorage::new(remote.store.clone(), remote.url.clone(), None);
    match bundles.delete_ref(&ctx.env, &refname, Duration::from_secs(5)).await? {
        Ok(()) => {}
        Err(DeleteRefused::Locked { key }) => {
            return Err(CliError::Refused(format!("{refname} is locked ({key}): a push is in progress; try again")))
        }
        Err(DeleteRefused::NotFound) => return Err(CliError::NotFound(format!("branch {refname} does not exist in {}", remote.url))),
        Err(DeleteRefused::Several) => {
            return Err(CliError::Refused(format!("several bundles exist for {refname} in the bucket; run `git s3 doctor` to fix")))
        }
    }
    ctx.println(format!("Branch {} has been deleted", refname.trim_start_matches("refs/heads/")));
    if let Ok(Some(head)) = remote.store.get_small(&remote.url.key("HEAD")).await {
        if String::from_utf8_lossy(&head).trim() == refname {
            ctx.eprintln(format!("warning: the remote's HEAD names {refname}; set another with `git s3 doctor {} --head <branch>`", args.remote));
        }
    }
    Ok(0)
}

/// Asks before deleting a branch (unless `yes`); refuses without a terminal.
/// False when the user said no ("Aborted" is printed).
pub(crate) async fn confirm_delete(ctx: &mut Ctx, refname: &str, yes: bool) -> Result<bool, CliError> {
    if yes {
        return Ok(true);
    }
    if !ctx.stdin_is_tty {
        return Err(CliError::Refused("not deleting without confirmation: stdin is not a terminal; pass --yes".into()));
    }
    match ctx.ask(&format!("Delete branch {refname} [yes/no]: ")).await {
        Some(a) if a.eq_ignore_ascii_case("yes") || a.eq_ignore_ascii_case("y") => Ok(true),
        _ => {
            ctx.println("Aborted");
            Ok(false)
        }
    }
}

pub(crate) async fn protect(ctx: &mut Ctx, args: BranchArgs) -> CliResult {
    let refname = branch_ref(args.branch()?)?;
    let remote = Remote::resolve(ctx, &args.remote).await?;
    if let Some(code) = branch_op(ctx, &remote, &refname, BranchOp::Protect, false).await? {
        return Ok(code);
    }
    let objects = remote.ref_objects(&refname).await?;
    let name = refname.trim_start_matches("refs/heads/");
    if !objects.iter().any(|o| o.key.ends_with(".bundle")) {
        return Err(CliError::NotFound(format!("branch {refname} does not exist in {}", remote.url)));
    }
    if objects.iter().any(|o| o.key.ends_with(&format!("/{PROTECTED_MARKER}"))) {
        ctx.println(format!("Branch {name} is already protected"));
        return Ok(0);
    }
    remote.store.put_bytes(&remote.marker_key(&refname), Vec::new(), PutOptions::default()).await?;
    ctx.println(format!("Branch {name} is now protected"));
    Ok(0)
}

pub(crate) async fn unprotect(ctx: &mut Ctx, args: BranchArgs) -> CliResult {
    let refname = branch_ref(args.branch()?)?;
    let remote = Remote::resolve(ctx, &args.remote).await?;
    if let Some(code) = branch_op(ctx, &remote, &refname, BranchOp::Unprotect, false).await? {
        return Ok(code);
    }
    let key = remote.marker_key(&refname);
    let name = refname.trim_start_matches("refs/heads/");
    if remote.store.head(&key).await?.is_none() {
        ctx.println(format!("Branch {name} is not protected"));
        return Ok(0);
    }
    remote.store.delete(&key).await?;
    ctx.println(format!("Branch {name} is now unprotected"));
    Ok(0)
}

pub(crate) enum BranchOp {
    Delete,
    Protect,
    Unprotect,
}

/// The packs side of delete-branch/protect/unprotect; None when `remote` is
/// not a packs remote.
pub(crate) async fn branch_op(ctx: &mut Ctx, remote: &Remote, refname: &str, op: BranchOp, yes: bool) -> Result<Option<i32>, CliError> {
    // An encrypted remote: opened with the caller's identities (issue 22).
    remote.open_key(ctx).await?;
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
            if !confirm_delete(ctx, refname, yes).await? {
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
            remote.store.delete(&zip_key(&remote.url, refname)).await?;
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
