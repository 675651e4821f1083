//! `git s3 gc [--geometric] [--dry-run] <remote-or-url>`: compacts a
//! packs-format remote (`storage::packs::gc`).

use std::time::Duration;

use clap::Args;

use super::remote::Remote;
use super::{human_bytes, CliResult, Ctx};
use crate::storage::packs::gc::{gc, GcMode, DEFAULT_GRACE_SECONDS};

#[derive(Args, Debug)]
pub(crate) struct GcArgs {
    /// A git remote name or an s3:// URL of a packs-format remote
    #[arg(value_name = "REMOTE")]
    pub(crate) remote: String,
    /// Keep replaced and unreferenced packs this long before deleting them (readers of an
    /// older manifest, and pushes in progress, may still need them)
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_GRACE_SECONDS)]
    pub(crate) grace_seconds: u64,
    /// Only show what would be combined and deleted; change nothing
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Combine only the small packs that break a geometric progression (factor 2), keeping
    /// the big ones untouched: costs grow with what was pushed since the last gc, not with
    /// the repository (the default combines every pack into one pack of what the refs reach)
    #[arg(long)]
    pub(crate) geometric: bool,
}

pub(crate) async fn run(ctx: &mut Ctx, args: GcArgs) -> CliResult {
    let remote = Remote::resolve(ctx, &args.remote).await?;
    // An encrypted remote: its key, so that gc reads and writes its packs.
    remote.open_key(ctx).await?;
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
        None if r.combined_packs > 0 => ctx.println(format!("Would combine {} packs ({}){kept}", r.combined_packs, human_bytes(r.combined_bytes))),
        None if mode == GcMode::Geometric && r.packs_before > 1 => {
            ctx.println(format!("{} pack(s) already form a geometric progression: nothing to combine", r.packs_before))
        }
        None => ctx.println(format!("{} pack(s): nothing to combine", r.packs_before)),
    }
    if let (GcMode::Full, Some(v), Some(_)) = (mode, &r.views, &r.combined) {
        let size = |p: &Option<crate::storage::packs::manifest::PackEntry>| {
            p.as_ref().map(|p| human_bytes(p.size + p.idx_size)).unwrap_or_else(|| "none".into())
        };
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
