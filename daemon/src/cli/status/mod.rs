//! `git s3 status [<remote-or-url>] [--json] [--lock-ttl N]`.

mod packs;

use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use super::remote::{age_secs, is_stale, unix_secs, HeadState, Remote, View};
use super::{human_bytes, human_duration, CliResult, Ctx};
use crate::storage::bundles::locks;

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// A git remote name or an s3:// / s3+zip:// URL to inspect
    #[arg(value_name = "REMOTE")]
    pub(crate) remote: Option<String>,
    /// Seconds after which a lock counts as stale (default: GIT_REMOTE_S3_LOCK_TTL_SECONDS, else 60)
    #[arg(long, value_name = "SECONDS")]
    pub(crate) lock_ttl: Option<u64>,
    /// Print one JSON document instead of text
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) async fn run(ctx: &mut Ctx, args: StatusArgs) -> CliResult {
    let st = &ctx.state;
    let usage = st.cache.usage();
    let background = st.background.counts();
    let daemon = json!({
        "running": true,
        "pid": std::process::id(),
        "version": git_s3_proto::VERSION,
        // Optional features of this build (`test-hooks` only in test builds).
        "features": crate::features(),
        "uptime_seconds": st.started.elapsed().as_secs(),
        "socket": st.socket_path.display().to_string(),
        "log_file": st.log_file.display().to_string(),
        "active_sessions": st.active_sessions(),
        "total_sessions": st.total_sessions.load(Ordering::Relaxed),
        // Work finished after sessions answered: running now, started by
        // kind, and not started because the same was running (a gc).
        "background": {
            "running": st.background.in_flight(),
            "started": background.started,
            "deduplicated": background.deduplicated,
        },
        "clients": st.clients.snapshot().into_iter()
            .map(|(key, uses, age)| json!({"key": key, "uses": uses, "age_seconds": age}))
            .collect::<Vec<_>>(),
    });
    let cache = json!({
        "dir": st.cache.root().display().to_string(),
        "entries": usage.entries,
        "bytes": usage.bytes,
        "hits": st.cache.hits.load(Ordering::Relaxed),
        "misses": st.cache.misses.load(Ordering::Relaxed),
    });
    let remote = match &args.remote {
        Some(r) => {
            let ttl = args.lock_ttl.map(Duration::from_secs).unwrap_or_else(|| locks::ttl_from_env(&ctx.env));
            Some(remote_status(ctx, r, ttl).await?)
        }
        None => None,
    };
    let doc = json!({"daemon": daemon, "cache": cache, "remote": remote});
    if args.json {
        ctx.println(serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print_text(ctx, &doc);
    }
    Ok(0)
}

async fn remote_status(ctx: &Ctx, arg: &str, ttl: Duration) -> Result<Value, super::CliError> {
    let remote = Remote::resolve(ctx, arg).await?;
    let mut status = match packs::remote_status(ctx, &remote).await? {
        Some(packs) => packs,
        None => bundles_status(&remote, ttl).await?,
    };
    // What this daemon knows (status writes nothing: no probe).
    status["conditional_writes"] = remote.conditional_writes(ctx, false).await;
    Ok(status)
}

async fn bundles_status(remote: &Remote, ttl: Duration) -> Result<Value, super::CliError> {
    let view = remote.inspect().await?;
    let mut warnings = Vec::new();
    let refs = bundle_refs(&view, &mut warnings);
    let head = head_status(&view, &mut warnings);
    let formats = view.scan.object_formats();
    let object_format = match formats.as_slice() {
        [] => Value::Null,
        [(f, _)] => json!(f.name()),
        [(f, r), (g, s), ..] => {
            warnings.push(format!(
                "the prefix holds refs of two object formats ({r} is {f}, {s} is {g}); git cannot mix them: delete the refs of the wrong format (`git s3 delete-branch`)"
            ));
            json!("mixed")
        }
    };
    let locks = lock_status(&view, ttl, &mut warnings);
    for p in &view.scan.protected {
        if !view.scan.bundles.contains_key(p) {
            warnings.push(format!("{p} is protected but has no bundle"));
        }
    }
    Ok(json!({
        "name": remote.name,
        "url": remote.url.to_string(),
        "bucket": remote.url.bucket,
        "prefix": remote.url.prefix,
        "format": "bundles",
        "object_format": object_format,
        "head": head,
        "refs": refs,
        "protected": view.scan.protected,
        "lock_ttl_seconds": ttl.as_secs(),
        "locks": locks,
        "warnings": warnings,
    }))
}

/// A bundles remote's refs, each with its bundles; a ref with several is a warning.
fn bundle_refs(view: &View, warnings: &mut Vec<String>) -> Vec<Value> {
    view.scan
        .bundles
        .iter()
        .map(|(name, bundles)| {
            if bundles.len() > 1 {
                warnings.push(format!(
                    "{name} has {} bundles ({}); `git s3 doctor` keeps one",
                    bundles.len(),
                    bundles.iter().map(|b| &b.0[..12]).collect::<Vec<_>>().join(", ")
                ));
            }
            json!({
                "name": name,
                "sha": bundles[0].0,
                "bundles": bundles.iter().map(|(sha, info)| json!({
                    "sha": sha, "size": info.size, "last_modified": unix_secs(info.last_modified),
                })).collect::<Vec<_>>(),
                "protected": view.is_protected(name),
                "zip": view.scan.zips.iter().any(|z| &z.0 == name),
            })
        })
        .collect()
}

/// A bundles remote's HEAD; a missing (with branches) or dangling one is a warning.
fn head_status(view: &View, warnings: &mut Vec<String>) -> Value {
    match view.head() {
        HeadState::Ok(r) => {
            let sha = view.scan.bundles.get(&r).and_then(|b| b.first()).map(|b| b.0.clone());
            json!({"ref": r, "sha": sha, "state": "ok"})
        }
        HeadState::Missing => {
            if !view.branches().is_empty() {
                warnings.push("HEAD is missing; `git s3 doctor` sets it".to_string());
            }
            json!({"ref": null, "sha": null, "state": "missing"})
        }
        HeadState::Dangling(r) => {
            warnings.push(format!("HEAD names {r}, which has no bundle (dangling); `git s3 doctor` fixes it"));
            json!({"ref": r, "sha": null, "state": "dangling"})
        }
    }
}

/// A bundles remote's ref locks; a stale one is a warning.
fn lock_status(view: &View, ttl: Duration, warnings: &mut Vec<String>) -> Vec<Value> {
    view.scan
        .locks
        .iter()
        .map(|(r, info)| {
            let stale = is_stale(info, ttl);
            if stale {
                warnings.push(format!(
                    "stale lock on {r} (age {}s > TTL {}s); `git s3 doctor --delete-stale-locks` removes it",
                    age_secs(info),
                    ttl.as_secs()
                ));
            }
            json!({"ref": r, "key": info.key, "age_seconds": age_secs(info), "stale": stale})
        })
        .collect()
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn print_text(ctx: &Ctx, doc: &Value) {
    let d = &doc["daemon"];
    ctx.println(format!("daemon: running (pid {}, version {}, up {})", s(&d["pid"]), s(&d["version"]), human_duration(u(&d["uptime_seconds"]))));
    ctx.println(format!("  socket:   {}", s(&d["socket"])));
    ctx.println(format!("  log file: {}", s(&d["log_file"])));
    ctx.println(format!("  sessions: {} active, {} total", u(&d["active_sessions"]), u(&d["total_sessions"])));
    let clients = d["clients"].as_array().cloned().unwrap_or_default();
    ctx.println(format!("  warm S3 clients: {}", clients.len()));
    for c in &clients {
        ctx.println(format!("    - {} ({} uses, age {})", s(&c["key"]), u(&c["uses"]), human_duration(u(&c["age_seconds"]))));
    }
    let c = &doc["cache"];
    ctx.println(format!("cache: {}", s(&c["dir"])));
    ctx.println(format!(
        "  {} entries, {}; {} hits, {} misses since the daemon started",
        u(&c["entries"]),
        human_bytes(u(&c["bytes"])),
        u(&c["hits"]),
        u(&c["misses"])
    ));
    let r = &doc["remote"];
    if !r.is_null() {
        print_remote(ctx, r);
    }
}

/// The remote part of `git s3 status`'s text.
fn print_remote(ctx: &Ctx, r: &Value) {
    match r["name"].as_str() {
        Some(n) => ctx.println(format!("remote: {n} ({})", s(&r["url"]))),
        None => ctx.println(format!("remote: {}", s(&r["url"]))),
    }
    match r["format"].as_str() {
        Some("packs") => ctx.println(format!(
            "  format: packs ({} packs, {}, manifest serial {})",
            u(&r["packs"]["count"]),
            human_bytes(u(&r["packs"]["bytes"])),
            u(&r["manifest"]["serial"])
        )),
        f => ctx.println(format!("  format: {}", f.unwrap_or("bundles"))),
    }
    if let Some(n) = r["encryption"]["recipients"].as_u64() {
        let fps: Vec<String> = r["encryption"]["fingerprints"].as_array().map(|a| a.iter().map(s).collect()).unwrap_or_default();
        ctx.println(format!("  encrypted to {n} recipient{} (fingerprints {})", if n == 1 { "" } else { "s" }, fps.join(", ")));
    }
    match r["object_format"].as_str() {
        Some(f) => ctx.println(format!("  object format: {f}")),
        None => ctx.println("  object format: none yet (the first push sets it)"),
    }
    let h = &r["head"];
    match h["state"].as_str() {
        Some("ok") => ctx.println(format!("  HEAD -> {} ({})", s(&h["ref"]), s(&h["sha"]))),
        Some("dangling") => ctx.println(format!("  HEAD -> {} (dangling: no such ref)", s(&h["ref"]))),
        _ => ctx.println("  HEAD: missing"),
    }
    print_refs(ctx, r);
    let locks = r["locks"].as_array().cloned().unwrap_or_default();
    if locks.is_empty() {
        ctx.println("  locks: none");
    } else {
        ctx.println(format!("  locks (TTL {}s):", u(&r["lock_ttl_seconds"])));
        for l in &locks {
            let state = if l["stale"].as_bool() == Some(true) { "STALE" } else { "held" };
            ctx.println(format!("    {} age {} ({state})  {}", s(&l["ref"]), human_duration(u(&l["age_seconds"])), s(&l["key"])));
        }
    }
    let cw = &r["conditional_writes"];
    if !cw.is_null() {
        ctx.println(format!("  conditional writes: {} ({})", s(&cw["summary"]), s(&cw["endpoint"])));
    }
    let warnings = r["warnings"].as_array().cloned().unwrap_or_default();
    if !warnings.is_empty() {
        ctx.println("  warnings:");
        for w in &warnings {
            ctx.println(format!("    - {}", s(w)));
        }
    }
}

/// The refs of a remote (with their flags) and the protected ones.
fn print_refs(ctx: &Ctx, r: &Value) {
    let refs = r["refs"].as_array().cloned().unwrap_or_default();
    if refs.is_empty() {
        ctx.println("  refs: none (empty repository)");
    } else {
        ctx.println("  refs:");
    }
    for rf in &refs {
        let mut flags = Vec::new();
        if rf["protected"].as_bool() == Some(true) {
            flags.push("protected".to_string());
        }
        if rf["zip"].as_bool() == Some(true) {
            flags.push("repo.zip".to_string());
        }
        let n = rf["bundles"].as_array().map(Vec::len).unwrap_or(0);
        if n > 1 {
            flags.push(format!("{n} bundles!"));
        }
        let flags = if flags.is_empty() { String::new() } else { format!("  [{}]", flags.join(", ")) };
        ctx.println(format!("    {} {}{flags}", s(&rf["sha"]), s(&rf["name"])));
    }
    let protected = r["protected"].as_array().cloned().unwrap_or_default();
    if !protected.is_empty() {
        ctx.println(format!("  protected: {}", protected.iter().map(s).collect::<Vec<_>>().join(", ")));
    }
}
