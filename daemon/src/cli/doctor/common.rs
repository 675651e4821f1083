//! What doctor's bundle and packs checks share: the arguments, the report
//! they fill, and the choice of a branch for HEAD.

use clap::Args;
use serde_json::Value;

use crate::cli::remote::default_head;
use crate::cli::{CliError, Ctx};

#[derive(Args, Debug)]
pub(crate) struct DoctorArgs {
    /// A git remote name or an s3:// / s3+zip:// URL
    #[arg(value_name = "REMOTE")]
    pub(crate) remote: String,
    /// Accepted for git-remote-s3 0.4.2 compatibility (doctor always checks the whole prefix)
    #[arg(value_name = "BRANCH", hide = true)]
    pub(crate) branch_pos: Option<String>,
    /// Accepted for compatibility (doctor always checks the whole prefix)
    #[arg(short = 'b', long = "branch", value_name = "BRANCH", hide = true)]
    pub(crate) branch: Option<String>,
    /// Seconds after which a lock counts as stale (default: GIT_REMOTE_S3_LOCK_TTL_SECONDS, else 60)
    #[arg(long, value_name = "SECONDS")]
    pub(crate) lock_ttl: Option<u64>,
    /// Delete the stale locks found
    #[arg(long)]
    pub(crate) delete_stale_locks: bool,
    /// Delete the extra bundles of a ref instead of moving them to new branches
    #[arg(short = 'd', long)]
    pub(crate) delete_bundle: bool,
    /// For a ref with several bundles, keep the one with this sha (or sha prefix); repeatable
    #[arg(long, value_name = "SHA")]
    pub(crate) keep: Vec<String>,
    /// Branch for a missing or dangling HEAD (default: main, master, else the first branch)
    #[arg(long, value_name = "BRANCH")]
    pub(crate) head: Option<String>,
    /// Abort the incomplete multipart uploads found (a push killed half-way
    /// leaves one, whose parts S3 keeps and bills)
    #[arg(long)]
    pub(crate) abort_uploads: bool,
    /// Seconds after which an incomplete upload counts as abandoned (default: a day)
    #[arg(long, value_name = "SECONDS", default_value_t = 86_400)]
    pub(crate) upload_age: u64,
    /// Delete the noncurrent object versions and leftover delete markers
    /// under the prefix (a versioned bucket keeps every overwritten or
    /// deleted object); current versions are never touched
    #[arg(long)]
    pub(crate) prune_versions: bool,
    /// Do not ask: use the flags and the defaults
    #[arg(short = 'y', long)]
    pub(crate) yes: bool,
    /// Only report what would be done
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Print one JSON document instead of text
    #[arg(long)]
    pub(crate) json: bool,
}

/// Collects what doctor found and did; prints text as it goes unless --json.
pub(super) struct Report {
    pub(super) json: bool,
    pub(crate) issues: Vec<Value>,
    /// What would make the remote better without anything being wrong.
    pub(crate) advice: Vec<Value>,
    pub(crate) actions: Vec<Value>,
    pub(crate) errors: Vec<String>,
}

impl Report {
    pub(crate) fn line(&self, ctx: &Ctx, s: impl AsRef<str>) {
        if !self.json {
            ctx.println(s);
        }
    }
}

/// The branch HEAD should name: `choice` (`--head`, which must be one of
/// `branches`), else the user's pick on a terminal, else main, master or the
/// first branch. `branches` is not empty.
pub(super) async fn choose_head(ctx: &mut Ctx, branches: &[String], choice: Option<String>, interactive: bool) -> Result<String, CliError> {
    if let Some(c) = choice {
        if !branches.contains(&c) {
            return Err(CliError::Usage(format!("--head {c}: no such branch in the remote (branches: {})", branches.join(", "))));
        }
        return Ok(c);
    }
    let default = default_head(branches).and_then(|d| branches.iter().position(|b| b == d)).unwrap_or(0);
    if !interactive {
        return Ok(branches[default].clone());
    }
    for (i, b) in branches.iter().enumerate() {
        ctx.eprintln(format!("  {}. {}", i + 1, b.trim_start_matches("refs/heads/")));
    }
    let i = ctx.choose("Number of the branch to use as HEAD", branches.len(), default).await?;
    Ok(branches[i].clone())
}
