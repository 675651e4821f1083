//! `git s3 doctor <remote-or-url>`: what git-remote-s3 0.4.2's doctor does —
//! a ref with several bundles (keep one; move the others to new branches
//! `<ref>_<8 hex>` by copy+delete, or delete them), a missing or dangling
//! HEAD (choose a branch), stale locks (list; delete on request) — and
//! unattended with flags (defaults: keep the newest bundle; HEAD → main,
//! master, else the first branch). A packs remote gets its own checks
//! (`packs`); what both share (arguments, report, HEAD choice) is `common`;
//! the noncurrent versions of a versioned bucket are `versions`.

mod common;
mod packs;
mod versions;

pub(crate) use common::DoctorArgs;

use std::time::Duration;

use serde_json::json;

use super::remote::{age_secs, branch_ref, is_stale, HeadState, Remote, View};
use super::{CliError, CliResult, Ctx};
use crate::s3::store::PutOptions;
use crate::storage::bundles::locks;
use common::{choose_head, Report};

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

pub(crate) async fn run(ctx: &mut Ctx, args: DoctorArgs) -> CliResult {
    let remote = Remote::resolve(ctx, &args.remote).await?;
    let ttl = args.lock_ttl.map(Duration::from_secs).unwrap_or_else(|| locks::ttl_from_env(&ctx.env));
    let interactive = ctx.stdin_is_tty && !args.yes && !args.json;
    let head_choice = args.head.as_deref().map(branch_ref).transpose()?;
    let view = remote.inspect().await?;
    let mut rep = Report { json: args.json, issues: Vec::new(), advice: Vec::new(), actions: Vec::new(), errors: Vec::new() };

    // A packs remote (or one holding both formats) has its own checks.
    let packs = packs::check(ctx, &remote, &view, &args, &mut rep, interactive).await?;
    if packs.is_none() {
        describe_bundles(ctx, &remote, &view, &mut rep);
        repair_bundles(ctx, &remote, &view, &args, &mut rep, ttl, head_choice, interactive).await?;
    }
    stale_locks(ctx, &remote, &args, &mut rep, ttl).await?;
    incomplete_uploads(ctx, &remote, &args, &mut rep).await;
    versions::noncurrent_versions(ctx, &remote, &args, &mut rep).await;
    let conditional = conditional_writes(ctx, &remote, &args, &mut rep).await;

    let code = if rep.errors.is_empty() { 0 } else { 1 };
    if args.json {
        let doc = json_report(&remote, &args, ttl, &view, packs.as_ref(), conditional, rep);
        ctx.println(serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else if rep.issues.is_empty() {
        ctx.println("No problems found.");
    }
    Ok(code)
}

/// What a bundles remote holds: its object format, each ref (`*` when
/// protected) with its number of bundles, and HEAD.
fn describe_bundles(ctx: &Ctx, remote: &Remote, view: &View, rep: &mut Report) {
    rep.line(ctx, format!("{}:", remote.url));
    if view.scan.bundles.is_empty() {
        rep.line(ctx, "  no refs (empty repository)");
    }
    match view.scan.object_formats().as_slice() {
        [] => rep.line(ctx, "  object format: none yet (the first push sets it)"),
        [(f, _)] => rep.line(ctx, format!("  object format: {f}")),
        [(f, r), (g, s), ..] => {
            rep.line(ctx, format!("  object format: mixed ({r} is {f}, {s} is {g}); git cannot mix them: delete the refs of the wrong format (`git s3 delete-branch`)"));
            rep.issues.push(json!({"kind": "mixed_object_formats", "refs": [r, s], "formats": [f.name(), g.name()]}));
        }
    }
    for (name, bundles) in &view.scan.bundles {
        let mark = if view.is_protected(name) { "*" } else { " " };
        let state = if bundles.len() == 1 { "ok".to_string() } else { format!("{} bundles", bundles.len()) };
        rep.line(ctx, format!(" {mark} {name}: {state}"));
    }
    match view.head() {
        HeadState::Ok(h) => rep.line(ctx, format!("  HEAD: {h}")),
        HeadState::Missing => rep.line(ctx, "  HEAD: missing"),
        HeadState::Dangling(h) => rep.line(ctx, format!("  HEAD: {h} (dangling)")),
    }
}

/// A bundles remote's repairs: a ref with several bundles, then a missing
/// or dangling HEAD. A failed repair is reported and the next one tried;
/// an abort (or a usage error choosing HEAD) ends the doctor.
#[allow(clippy::too_many_arguments)]
async fn repair_bundles(
    ctx: &mut Ctx,
    remote: &Remote,
    view: &View,
    args: &DoctorArgs,
    rep: &mut Report,
    ttl: Duration,
    head_choice: Option<String>,
    interactive: bool,
) -> Result<(), CliError> {
    // Several bundles for a ref.
    for (name, bundles) in view.scan.bundles.iter().filter(|(_, b)| b.len() > 1) {
        rep.issues.push(json!({"kind": "several_bundles", "ref": name,
            "bundles": bundles.iter().map(|b| b.0.clone()).collect::<Vec<_>>()}));
        if let Err(e) = fix_bundles(ctx, remote, view, args, rep, name, ttl, interactive).await {
            if matches!(e, CliError::Aborted) {
                return Err(e);
            }
            rep.errors.push(format!("{name}: {e}"));
            rep.line(ctx, format!("  failed: {e}"));
        }
    }

    // HEAD.
    if view.head_problem() {
        let kind = match view.head() {
            HeadState::Dangling(h) => json!({"kind": "dangling_head", "head": h}),
            _ => json!({"kind": "missing_head"}),
        };
        rep.issues.push(kind);
        if let Err(e) = fix_head(ctx, remote, view, args, rep, head_choice, interactive).await {
            if matches!(e, CliError::Aborted) {
                return Err(e);
            }
            if matches!(e, CliError::Usage(_)) {
                return Err(e);
            }
            rep.errors.push(format!("HEAD: {e}"));
            rep.line(ctx, format!("  failed: {e}"));
        }
    }
    Ok(())
}

/// Stale locks, listed afresh (fixing bundles takes and releases locks):
/// reported, and deleted with `--delete-stale-locks` (only the lock seen:
/// a pusher may have taken it over since).
async fn stale_locks(ctx: &Ctx, remote: &Remote, args: &DoctorArgs, rep: &mut Report, ttl: Duration) -> Result<(), CliError> {
    rep.line(ctx, "");
    rep.line(ctx, format!("Scanning for stale locks (older than {}s)...", ttl.as_secs()));
    let fresh = remote.inspect().await?;
    let stale: Vec<_> = fresh.scan.locks.iter().filter(|(_, info)| is_stale(info, ttl)).collect();
    if stale.is_empty() {
        rep.line(ctx, "No stale locks found.");
        return Ok(());
    }
    rep.line(ctx, "Found stale locks:");
    for (r, info) in &stale {
        rep.line(ctx, format!(" - {} (age: {}s)", info.key, age_secs(info)));
        rep.issues.push(json!({"kind": "stale_lock", "ref": r, "key": info.key, "age_seconds": age_secs(info)}));
    }
    if args.delete_stale_locks && !args.dry_run {
        for (_, info) in &stale {
            // Delete only the lock we saw (a pusher may have taken it over since).
            match remote.store.head(&info.key).await {
                Ok(Some(now)) if now.etag == info.etag => match remote.store.delete(&info.key).await {
                    Ok(()) => {
                        rep.line(ctx, format!("Deleted {}", info.key));
                        rep.actions.push(json!({"action": "deleted_lock", "key": info.key}));
                    }
                    Err(e) => {
                        rep.line(ctx, format!("Failed to delete {}: {e}", info.key));
                        rep.errors.push(format!("{}: {e}", info.key));
                    }
                },
                Ok(Some(_)) => rep.line(ctx, format!("{} was taken by another client meanwhile; left alone", info.key)),
                Ok(None) => rep.line(ctx, format!("{} is already gone", info.key)),
                Err(e) => rep.errors.push(format!("{}: {e}", info.key)),
            }
        }
    } else if args.dry_run && args.delete_stale_locks {
        rep.line(ctx, "(dry run: not deleting them)");
    } else {
        rep.line(ctx, "Run with --delete-stale-locks to remove them.");
    }
    Ok(())
}

/// Whether the store enforces conditional writes: probed (unless
/// --dry-run) when this daemon does not know yet; an issue when not.
async fn conditional_writes(ctx: &Ctx, remote: &Remote, args: &DoctorArgs, rep: &mut Report) -> serde_json::Value {
    let conditional = remote.conditional_writes(ctx, !args.dry_run).await;
    rep.line(ctx, "");
    rep.line(
        ctx,
        format!("Conditional writes: {} ({})", conditional["summary"].as_str().unwrap_or("unknown"), conditional["endpoint"].as_str().unwrap_or("")),
    );
    if matches!(conditional["state"].as_str(), Some("ignored" | "not-implemented")) {
        rep.line(ctx, format!("  {}", conditional["refusal"].as_str().unwrap_or("")));
        rep.issues.push(json!({"kind": "conditional_writes_not_enforced", "state": conditional["state"], "header": conditional["header"]}));
    }
    conditional
}

/// `git s3 doctor --json`'s document.
fn json_report(
    remote: &Remote,
    args: &DoctorArgs,
    ttl: Duration,
    view: &View,
    packs: Option<&packs::PacksFindings>,
    conditional: serde_json::Value,
    rep: Report,
) -> serde_json::Value {
    json!({
        "remote": remote.url.to_string(),
        "dry_run": args.dry_run,
        "lock_ttl_seconds": ttl.as_secs(),
        "format": if packs.is_some() { "packs" } else { "bundles" },
        "object_format": match packs {
            Some(p) => p.object_format.clone(),
            None => match view.scan.object_formats().as_slice() {
                [] => serde_json::Value::Null,
                [(f, _)] => json!(f.name()),
                _ => json!("mixed"),
            },
        },
        "refs": match packs {
            Some(p) => p.refs.clone(),
            None => view.scan.bundles.iter().map(|(n, b)| json!({
                "name": n, "protected": view.is_protected(n),
                "bundles": b.iter().map(|x| x.0.clone()).collect::<Vec<_>>()})).collect::<Vec<_>>(),
        },
        "head": match packs { Some(p) => p.head.clone(), None => view.head_raw.clone() },
        "manifest": packs.map(|p| p.manifest.clone()),
        "conditional_writes": conditional,
        "issues": rep.issues,
        "advice": rep.advice,
        "actions": rep.actions,
        "errors": rep.errors,
    })
}

/// Multipart uploads under the prefix started over `--upload-age` ago and
/// never completed: reported, and aborted with `--abort-uploads`. A store
/// or a policy that does not allow listing them gets a line, not an error.
async fn incomplete_uploads(ctx: &Ctx, remote: &Remote, args: &DoctorArgs, rep: &mut Report) {
    let age = Duration::from_secs(args.upload_age);
    rep.line(ctx, "");
    rep.line(ctx, format!("Scanning for incomplete uploads (started over {}s ago)...", age.as_secs()));
    let uploads = match remote.store.list_uploads(&remote.url.key("")).await {
        Ok(u) => u,
        Err(e) => {
            rep.line(ctx, format!("Could not list incomplete uploads: {e}"));
            rep.advice.push(json!({"kind": "incomplete_uploads_unchecked", "error": e.to_string()}));
            return;
        }
    };
    let old: Vec<_> = uploads.iter().filter(|u| u.initiated.elapsed().unwrap_or_default() >= age).collect();
    if old.is_empty() {
        rep.line(ctx, "No incomplete uploads found.");
        return;
    }
    rep.line(ctx, "Found incomplete uploads:");
    for u in &old {
        let secs = u.initiated.elapsed().unwrap_or_default().as_secs();
        rep.line(ctx, format!(" - {} (started {secs}s ago)", u.key));
        rep.issues.push(json!({"kind": "incomplete_upload", "key": u.key, "upload_id": u.upload_id, "age_seconds": secs}));
    }
    if args.abort_uploads && !args.dry_run {
        for u in &old {
            match remote.store.abort_upload(&u.key, &u.upload_id).await {
                Ok(()) => {
                    rep.line(ctx, format!("Aborted the upload of {}", u.key));
                    rep.actions.push(json!({"action": "aborted_upload", "key": u.key, "upload_id": u.upload_id}));
                }
                Err(e) => {
                    rep.line(ctx, format!("Failed to abort the upload of {}: {e}", u.key));
                    rep.errors.push(format!("{}: {e}", u.key));
                }
            }
        }
    } else if args.dry_run && args.abort_uploads {
        rep.line(ctx, "(dry run: not aborting them)");
    } else {
        rep.line(ctx, "Run with --abort-uploads to abort them (their parts are deleted).");
    }
}

/// Picks the bundle to keep for `name`, then moves or deletes the others
/// under the ref's lock (so no push interleaves).
#[allow(clippy::too_many_arguments)]
async fn fix_bundles(
    ctx: &mut Ctx,
    remote: &Remote,
    view: &View,
    args: &DoctorArgs,
    rep: &mut Report,
    name: &str,
    ttl: Duration,
    interactive: bool,
) -> Result<(), CliError> {
    let bundles = view.scan.bundles.get(name).cloned().unwrap_or_default();
    rep.line(ctx, "");
    rep.line(ctx, format!("{name} has {} bundles (newest first):", bundles.len()));
    for (i, (sha, info)) in bundles.iter().enumerate() {
        rep.line(ctx, format!("  {}. {sha}  {}  {} bytes", i + 1, fmt_time(info.last_modified), info.size));
    }
    let by_flag = bundles.iter().position(|(sha, _)| args.keep.iter().any(|k| k.len() >= 4 && sha.starts_with(k.as_str())));
    let keep = match by_flag {
        Some(i) => i,
        None if interactive => ctx.choose("Number of the bundle to keep", bundles.len(), 0).await?,
        None => 0,
    };
    let kept = bundles[keep].0.clone();
    let others: Vec<String> = bundles.iter().filter(|(s, _)| *s != kept).map(|(s, _)| s.clone()).collect();
    let what = if args.delete_bundle { "deleted" } else { "moved to new branches" };
    let will = if args.dry_run { "would be" } else { "will be" };
    rep.line(ctx, format!("Keeping {kept}; the other {} {will} {what}", others.len()));
    if interactive && !ctx.confirm("Proceed?", true).await {
        rep.line(ctx, "Skipped.");
        return Ok(());
    }
    if args.dry_run {
        for s in &others {
            rep.actions.push(json!({"action": if args.delete_bundle {"would_delete_bundle"} else {"would_move_bundle"}, "ref": name, "sha": s}));
        }
        return Ok(());
    }
    let lock = locks::acquire(&remote.store, &remote.url.prefix, name, ttl, Duration::from_secs(5)).await?;
    let result = async {
        for sha in &others {
            let from = remote.bundle_key(name, sha);
            if args.delete_bundle {
                remote.store.delete(&from).await?;
                rep.line(ctx, format!("Removed {name} bundle {}", short(sha)));
                rep.actions.push(json!({"action": "deleted_bundle", "ref": name, "sha": sha}));
            } else {
                let target = new_branch_name(view, name, sha);
                remote.store.copy(&from, &remote.bundle_key(&target, sha)).await?;
                remote.store.delete(&from).await?;
                rep.line(ctx, format!("Moved {name} bundle {} to new ref {target}", short(sha)));
                rep.actions.push(json!({"action": "moved_bundle", "ref": name, "sha": sha, "to": target}));
            }
        }
        Ok::<(), CliError>(())
    }
    .await;
    let released = locks::release(&remote.store, lock).await;
    result?;
    released?;
    Ok(())
}

/// `<ref>_<first 8 hex of the sha>`, or random hex if that ref exists.
fn new_branch_name(view: &View, refname: &str, sha: &str) -> String {
    let candidate = format!("{refname}_{}", sha.get(..8).unwrap_or(sha));
    if !view.scan.bundles.contains_key(&candidate) {
        return candidate;
    }
    format!("{refname}_{:08x}", fastrand::u32(..))
}

async fn fix_head(
    ctx: &mut Ctx,
    remote: &Remote,
    view: &View,
    args: &DoctorArgs,
    rep: &mut Report,
    choice: Option<String>,
    interactive: bool,
) -> Result<(), CliError> {
    let branches = view.branches();
    rep.line(ctx, "");
    match view.head() {
        HeadState::Dangling(h) => rep.line(ctx, format!("HEAD names {h}, which does not exist")),
        _ => rep.line(ctx, "HEAD is missing"),
    }
    if branches.is_empty() {
        rep.line(ctx, "No branch to point HEAD at; push a branch first.");
        return Ok(());
    }
    let target = choose_head(ctx, &branches, choice, interactive).await?;
    if args.dry_run {
        rep.line(ctx, format!("Would set HEAD to {target}"));
        rep.actions.push(json!({"action": "would_set_head", "ref": target}));
        return Ok(());
    }
    remote.store.put_bytes(&remote.url.key("HEAD"), target.clone().into_bytes(), PutOptions::default()).await?;
    rep.line(ctx, format!("Set HEAD to {target}"));
    rep.actions.push(json!({"action": "set_head", "ref": target}));
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
fn fmt_time(t: std::time::SystemTime) -> String {
    let secs = super::remote::unix_secs(t) as i64;
    // RFC 3339 (`2023-11-14T22:13:20Z`: whole seconds, so no fraction) as
    // `2023-11-14 22:13:20 UTC`.
    match aws_smithy_types::DateTime::from_secs(secs).fmt(aws_smithy_types::date_time::Format::DateTime) {
        Ok(text) => format!("{} UTC", text.trim_end_matches('Z').replacen('T', " ", 1)),
        Err(_) => format!("{secs} s after 1970 UTC"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(fmt_time(t), "2023-11-14 22:13:20 UTC");
        assert_eq!(fmt_time(std::time::UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
    }
}
