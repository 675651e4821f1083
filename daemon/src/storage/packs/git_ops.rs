//! The git commands of the packs format: object lookups in the caller's
//! repository (one `git cat-file --batch-check`), `git index-pack` of a
//! downloaded pack, git fed on stdin, and what a written pack holds.

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;

use crate::local::git::{Git, GitError};
use crate::storage::packs::manifest;
use crate::storage::StorageError;

/// `git -c` settings for packs written to a temporary directory only to be
/// uploaded: no fsync (nothing to keep on this disk) and no `.rev` file.
pub(crate) const SCRATCH_PACK_CONFIG: [&str; 4] = ["-c", "core.fsync=none", "-c", "pack.writeReverseIndex=false"];

/// The object count in a pack's header (`PACK`, version, count).
pub(crate) async fn pack_object_count(path: &Path) -> Result<u64, StorageError> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut hdr = [0u8; 12];
    f.read_exact(&mut hdr).await?;
    if &hdr[..4] != b"PACK" {
        return Err(StorageError::Corrupt(format!("{} is not a git pack", path.display())));
    }
    Ok(u64::from(u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]])))
}

/// Runs git with `input` on stdin; returns its stdout.
pub(crate) async fn run_with_stdin(git: &Git, args: &[&str], input: Vec<u8>) -> Result<String, GitError> {
    let span = tracing::debug_span!("git", args = %args.join(" "), stdin_bytes = input.len());
    run_with_stdin_inner(git, args, input).instrument(span).await
}

async fn run_with_stdin_inner(git: &Git, args: &[&str], input: Vec<u8>) -> Result<String, GitError> {
    let mut cmd = git.command(args);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(GitError::Spawn)?;
    let stdin = child.stdin.take();
    let writer = tokio::spawn(async move {
        if let Some(mut s) = stdin {
            let _ = s.write_all(&input).await;
            let _ = s.shutdown().await;
        }
    });
    let out = child.wait_with_output().await.map_err(GitError::Spawn)?;
    let _ = writer.await;
    if !out.status.success() {
        return Err(GitError::Failed { args: args.join(" "), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What each of `names` (object names or refs) names in the repository, in
/// order; None for a missing or ambiguous one (one `git cat-file --batch-check`).
pub async fn resolve_objects(git: &Git, names: &[&str]) -> Result<Vec<Option<String>>, GitError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let input = names.iter().map(|s| format!("{s}\n")).collect::<String>().into_bytes();
    let out = run_with_stdin(git, &["cat-file", "--batch-check=%(objectname)"], input).await?;
    let lines: Vec<&str> = out.lines().collect();
    if lines.len() != names.len() {
        return Err(GitError::Failed { args: "cat-file --batch-check".into(), stderr: format!("{} answers for {} names", lines.len(), names.len()) });
    }
    Ok(lines.into_iter().map(|l| Some(l.trim().to_string()).filter(|l| crate::storage::packs::manifest::is_pack_name(l))).collect())
}

/// Which of `shas` the repository has (one `git cat-file --batch-check`).
pub async fn present_objects(git: &Git, shas: &[String]) -> Result<HashSet<String>, GitError> {
    let names: Vec<&str> = shas.iter().map(String::as_str).collect();
    Ok(resolve_objects(git, &names).await?.into_iter().flatten().collect())
}

/// `git index-pack --stdin` from a file (streamed; verifies every object).
/// Returns the name the pack got in `objects/pack` (what index-pack prints
/// after `pack\t`).
pub(crate) async fn index_pack(git: &Git, pack: &Path) -> Result<String, GitError> {
    let file = tokio::fs::File::open(pack).await.map_err(GitError::Spawn)?.into_std().await;
    let mut cmd = git.command(&["index-pack", "--stdin"]);
    cmd.stdin(Stdio::from(file)).stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = cmd.output().await.map_err(GitError::Spawn)?;
    if !out.status.success() {
        return Err(GitError::Failed { args: "index-pack --stdin".into(), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let name = stdout.trim().rsplit('\t').next().unwrap_or_default().to_string();
    if !manifest::is_pack_name(&name) {
        return Err(GitError::Failed { args: "index-pack --stdin".into(), stderr: format!("unexpected output {:?}", stdout.trim()) });
    }
    Ok(name)
}
