//! `git s3 cache [show | prune --max-bytes N | clear] [--json]`: the local
//! bundle cache shared by every working copy of the user.

use std::sync::atomic::Ordering;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{human_bytes, CliResult, Ctx};

#[derive(Args, Debug)]
pub(crate) struct CacheArgs {
    #[command(subcommand)]
    pub(crate) action: Option<CacheAction>,
    /// Print one JSON document instead of text
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum CacheAction {
    /// Location, size, entries, hit/miss counts (the default)
    Show,
    /// Evict least-recently-used entries until the cache holds at most N bytes (entries in use stay)
    Prune {
        #[arg(long, value_name = "N")]
        max_bytes: u64,
    },
    /// Remove every cached bundle, pack, LFS object and mirror (except those in use)
    Clear,
}

pub(crate) async fn run(ctx: &mut Ctx, args: CacheArgs) -> CliResult {
    let cache = ctx.state.cache.clone();
    // Eviction walks no directory but deletes files: on a blocking thread.
    // `show` first finishes the background work (mirrors measured after
    // use, eviction down to the cap), so what it reports holds the cap
    // (entries in use by a session excepted).
    let action = args.action.unwrap_or(CacheAction::Show);
    let evicting = cache.clone();
    let removed = tokio::task::spawn_blocking(move || match action {
        CacheAction::Show => {
            evicting.settle();
            None
        }
        CacheAction::Prune { max_bytes } => Some(evicting.evict_to(max_bytes)),
        CacheAction::Clear => Some(evicting.evict_to(0)),
    })
    .await
    .unwrap_or_default();
    let usage = cache.usage();
    let hits = cache.hits.load(Ordering::Relaxed);
    let misses = cache.misses.load(Ordering::Relaxed);
    if args.json {
        let doc = json!({
            "dir": cache.root().display().to_string(),
            "entries": usage.entries,
            "bytes": usage.bytes,
            "hits": hits,
            "misses": misses,
            "removed": removed.as_ref().map(|r| json!({"entries": r.entries, "bytes": r.bytes})),
        });
        ctx.println(serde_json::to_string_pretty(&doc).unwrap_or_default());
        return Ok(0);
    }
    if let Some(r) = removed {
        ctx.println(format!("removed {} entries ({})", r.entries, human_bytes(r.bytes)));
    }
    ctx.println(format!("cache: {}", cache.root().display()));
    ctx.println(format!("  {} entries, {}", usage.entries, human_bytes(usage.bytes)));
    ctx.println(format!("  {hits} hits, {misses} misses since the daemon started"));
    Ok(0)
}
