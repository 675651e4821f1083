//! Git plumbing: every git subprocess the daemon runs, in the caller's
//! repository and environment, each inside a tracing span.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;
use tracing::Instrument;

use crate::local::files::blocking;

#[derive(Debug, thiserror::Error)]
pub(crate) enum GitError {
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    #[error("`git {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
}

/// A git invocation context: the caller's working directory and environment
/// (which carries GIT_DIR when git started us as a remote helper).
#[derive(Debug, Clone)]
pub(crate) struct Git {
    cwd: PathBuf,
    env: HashMap<String, String>,
}

impl Git {
    pub(crate) fn new(cwd: impl Into<PathBuf>, env: HashMap<String, String>) -> Git {
        Git { cwd: cwd.into(), env }
    }

    pub(crate) fn cwd(&self) -> &Path {
        &self.cwd
    }

    /// The caller's environment git runs with.
    pub(crate) fn env(&self) -> &HashMap<String, String> {
        &self.env
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.args(args).env_clear().envs(&self.env).current_dir(&self.cwd).stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    /// Runs git and returns its stdout (trimmed of the final newline).
    pub(crate) async fn run(&self, args: &[&str]) -> Result<String, GitError> {
        let span = tracing::debug_span!("git", args = %args.join(" "));
        async {
            let out = self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).output().await.map_err(GitError::Spawn)?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
                tracing::debug!(status = ?out.status, %stderr, "git failed");
                return Err(GitError::Failed { args: args.join(" "), stderr });
            }
            let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
            while s.ends_with('\n') {
                s.pop();
            }
            Ok(s)
        }
        .instrument(span)
        .await
    }

    /// Runs git, only caring about its exit status.
    pub(crate) async fn status(&self, args: &[&str]) -> Result<bool, GitError> {
        let span = tracing::debug_span!("git", args = %args.join(" "));
        async {
            let st = self.command(args).stdout(Stdio::null()).stderr(Stdio::null()).status().await.map_err(GitError::Spawn)?;
            Ok(st.success())
        }
        .instrument(span)
        .await
    }

    /// The repository's object format (`git rev-parse --show-object-format`);
    /// None outside a repository or with a format this build does not know.
    pub(crate) async fn object_format(&self) -> Option<crate::local::oid::ObjectFormat> {
        self.run(&["rev-parse", "--show-object-format"]).await.ok()?.trim().parse().ok()
    }

    pub(crate) async fn rev_parse(&self, rev: &str) -> Result<String, GitError> {
        self.run(&["rev-parse", "--verify", "--end-of-options", rev]).await
    }

    /// The full ref name `rev` stands for, if it is a ref (`main` → `refs/heads/main`).
    pub(crate) async fn symbolic_full_name(&self, rev: &str) -> Option<String> {
        match self.run(&["rev-parse", "--symbolic-full-name", "--end-of-options", rev]).await {
            Ok(s) if s.starts_with("refs/") => Some(s),
            _ => None,
        }
    }

    pub(crate) async fn has_object(&self, sha: &str) -> bool {
        self.status(&["cat-file", "-e", &format!("{sha}^{{object}}")]).await.unwrap_or(false)
    }

    pub(crate) async fn is_ancestor(&self, ancestor: &str, descendant: &str) -> bool {
        self.status(&["merge-base", "--is-ancestor", ancestor, descendant]).await.unwrap_or(false)
    }

    /// `git bundle create <file> <ref>`: the whole history of `refname`.
    pub(crate) async fn bundle_create(&self, file: &Path, refname: &str) -> Result<(), GitError> {
        let f = file.to_string_lossy();
        self.run(&["bundle", "create", "--quiet", &f, refname]).await.map(|_| ())
    }

    /// `git bundle unbundle <file>`: stores the bundle's objects in the repository.
    pub(crate) async fn bundle_unbundle(&self, file: &Path) -> Result<(), GitError> {
        let f = file.to_string_lossy();
        self.run(&["bundle", "unbundle", &f]).await.map(|_| ())
    }

    /// The repository's pack directory (`objects/pack`, honouring GIT_DIR
    /// and GIT_OBJECT_DIRECTORY).
    pub(crate) async fn pack_dir(&self) -> Result<PathBuf, GitError> {
        if let Some(p) = self.pack_dir_from_env().await {
            return Ok(p);
        }
        let p = PathBuf::from(self.run(&["rev-parse", "--git-path", "objects/pack"]).await?);
        Ok(if p.is_absolute() { p } else { self.cwd.join(p) })
    }

    /// The pack directory without running git, when the environment git
    /// gives a remote helper says it plainly: `GIT_OBJECT_DIRECTORY`, or a
    /// `GIT_DIR` that has its own `objects/` (not a linked worktree's).
    async fn pack_dir_from_env(&self) -> Option<PathBuf> {
        let abs = |p: &str| {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                self.cwd.join(p)
            }
        };
        if let Some(o) = self.env.get("GIT_OBJECT_DIRECTORY").filter(|o| !o.is_empty()) {
            return Some(abs(o).join("pack"));
        }
        let dir = abs(self.env.get("GIT_DIR").filter(|d| !d.is_empty())?);
        // Two stats: off the async workers.
        blocking(move || Ok((!dir.join("commondir").exists() && dir.join("objects").is_dir()).then(|| dir.join("objects").join("pack"))))
            .await
            .ok()
            .flatten()
    }

    /// Whether the repository is shallow (has `shallow` in its git dir):
    /// read from `GIT_DIR` when git gave it, else asked of git.
    pub(crate) async fn is_shallow(&self) -> bool {
        if let Some(dir) = self.env.get("GIT_DIR").filter(|d| !d.is_empty()) {
            let dir = if Path::new(dir).is_absolute() { PathBuf::from(dir) } else { self.cwd.join(dir) };
            // Stats: off the async workers.
            let own = blocking(move || Ok((!dir.join("commondir").exists()).then(|| dir.join("shallow").exists()))).await;
            if let Ok(Some(shallow)) = own {
                return shallow;
            }
        }
        self.run(&["rev-parse", "--is-shallow-repository"]).await.map(|s| s == "true").unwrap_or(false)
    }

    /// The shallow-boundary commits of a shallow repository that `tips`
    /// reach and `exclude` does not: history the repository lacks, which an
    /// upload of `tips --not exclude` would need (empty when not shallow).
    pub(crate) async fn shallow_boundary_between(&self, tips: &[String], exclude: &[String]) -> Result<Vec<String>, GitError> {
        if !self.is_shallow().await {
            return Ok(Vec::new());
        }
        let path = self.run(&["rev-parse", "--git-path", "shallow"]).await?;
        let path = if Path::new(&path).is_absolute() { PathBuf::from(path) } else { self.cwd.join(path) };
        let text = blocking(move || Ok(std::fs::read_to_string(&path).unwrap_or_default())).await.unwrap_or_default();
        let boundary: std::collections::HashSet<String> = text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
        let mut args: Vec<&str> = vec!["rev-list"];
        args.extend(tips.iter().map(String::as_str));
        args.push("--not");
        args.extend(exclude.iter().map(String::as_str));
        let listed = self.run(&args).await?;
        Ok(listed.lines().filter(|l| boundary.contains(*l)).map(str::to_string).collect())
    }

    /// Indexes a bundle's pack into the repository, as `git bundle unbundle`
    /// does, and returns the new pack's hash (its files are
    /// `objects/pack/pack-<hash>.*`).
    pub(crate) async fn index_bundle(&self, bundle: &Path) -> Result<String, GitError> {
        let path = bundle.to_path_buf();
        // Its header read off the async workers.
        let offset = blocking(move || bundle_pack_offset(&path))
            .await
            .map_err(|e| GitError::Failed { args: "index-pack --stdin --fix-thin".into(), stderr: format!("not a git bundle: {e}") })?;
        self.index_file(bundle, offset, &["index-pack", "--stdin", "--fix-thin"]).await
    }

    /// `git index-pack --stdin` of a pack file (streamed; verifies every
    /// object). Returns the name the pack got in `objects/pack`.
    pub(crate) async fn index_pack_file(&self, pack: &Path) -> Result<String, GitError> {
        self.index_file(pack, 0, &["index-pack", "--stdin"]).await
    }

    /// `git index-pack` (`args`) fed `file` from `offset`; the new pack's hash.
    async fn index_file(&self, file: &Path, offset: u64, args: &[&str]) -> Result<String, GitError> {
        let span = tracing::debug_span!("git", args = %args.join(" "), file = %file.display());
        async {
            // Opened and positioned off the async workers.
            let mut f = tokio::fs::File::open(file).await.map_err(GitError::Spawn)?;
            tokio::io::AsyncSeekExt::seek(&mut f, std::io::SeekFrom::Start(offset)).await.map_err(GitError::Spawn)?;
            let f = f.into_std().await;
            let out =
                self.command(args).stdin(Stdio::from(f)).stdout(Stdio::piped()).stderr(Stdio::piped()).output().await.map_err(GitError::Spawn)?;
            index_pack_result(args, &out)
        }
        .instrument(span)
        .await
    }

    /// Indexes a bundle into the repository while it arrives: `chunks` is the
    /// bundle's bytes in order; its header is checked and skipped, the pack
    /// after it goes to `git index-pack --stdin --fix-thin`. Returns the new
    /// pack's hash. Fails (leaving no pack) when the stream ends early.
    pub(crate) async fn index_bundle_stream(&self, chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> Result<String, GitError> {
        self.index_stream(chunks, true).await
    }

    /// Indexes a pack into the repository while it arrives (`chunks`: the
    /// pack's bytes in order). Returns the pack's hash.
    pub(crate) async fn index_pack_stream(&self, chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>) -> Result<String, GitError> {
        self.index_stream(chunks, false).await
    }

    async fn index_stream(&self, mut chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>, bundle: bool) -> Result<String, GitError> {
        use tokio::io::AsyncWriteExt;
        let span = tracing::debug_span!("git", args = "index-pack --stdin --fix-thin (streamed)", bundle);
        async {
            let failed = |stderr: String| GitError::Failed { args: "index-pack --stdin --fix-thin".into(), stderr };
            // A bundle's header, up to its blank line, is checked and skipped.
            let mut header = BundleHeader::default();
            let body_start = if !bundle {
                0
            } else {
                loop {
                    let Some(c) = chunks.recv().await else {
                        return Err(failed("the bundle ended inside its header".into()));
                    };
                    if let Some(start) = header.push(&c).map_err(|e| failed(e.into()))? {
                        break start;
                    }
                }
            };
            let head = header.head;
            let mut child = self
                .command(&["index-pack", "--stdin", "--fix-thin"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(GitError::Spawn)?;
            let mut stdin = child.stdin.take().ok_or_else(|| failed("no stdin".into()))?;
            let feed = async {
                stdin.write_all(&head[body_start..]).await?;
                while let Some(c) = chunks.recv().await {
                    stdin.write_all(&c).await?;
                }
                stdin.shutdown().await?;
                drop(stdin);
                Ok::<(), std::io::Error>(())
            };
            // A write error means index-pack stopped early; its own error says why.
            let _ = feed.await;
            let out = child.wait_with_output().await.map_err(GitError::Spawn)?;
            index_pack_result(&["index-pack", "--stdin", "--fix-thin"], &out)
        }
        .instrument(span)
        .await
    }

    /// Runs git with `input` on stdin; returns its stdout.
    pub(crate) async fn run_with_stdin(&self, args: &[&str], input: Vec<u8>) -> Result<String, GitError> {
        let span = tracing::debug_span!("git", args = %args.join(" "), stdin_bytes = input.len());
        async {
            use tokio::io::AsyncWriteExt;
            let mut cmd = self.command(args);
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = cmd.spawn().map_err(GitError::Spawn)?;
            let stdin = child.stdin.take();
            // Fed while its output is read, in this task (no task left
            // behind should this future be dropped).
            let writer = async move {
                if let Some(mut s) = stdin {
                    let _ = s.write_all(&input).await;
                    let _ = s.shutdown().await;
                }
            };
            let ((), out) = tokio::join!(writer, child.wait_with_output());
            let out = out.map_err(GitError::Spawn)?;
            if !out.status.success() {
                return Err(GitError::Failed { args: args.join(" "), stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        .instrument(span)
        .await
    }

    /// What each of `names` (object names or refs) names in the repository,
    /// in order; None for a missing or ambiguous one (one `git cat-file --batch-check`).
    pub(crate) async fn resolve_objects(&self, names: &[&str]) -> Result<Vec<Option<String>>, GitError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let input = names.iter().map(|s| format!("{s}\n")).collect::<String>().into_bytes();
        let out = self.run_with_stdin(&["cat-file", "--batch-check=%(objectname)"], input).await?;
        let lines: Vec<&str> = out.lines().collect();
        if lines.len() != names.len() {
            return Err(GitError::Failed {
                args: "cat-file --batch-check".into(),
                stderr: format!("{} answers for {} names", lines.len(), names.len()),
            });
        }
        Ok(lines.into_iter().map(|l| Some(l.trim().to_string()).filter(|l| crate::local::oid::is_object_id(l))).collect())
    }

    /// Which of `shas` the repository has (one `git cat-file --batch-check`).
    pub(crate) async fn present_objects(&self, shas: &[String]) -> Result<std::collections::HashSet<String>, GitError> {
        let names: Vec<&str> = shas.iter().map(String::as_str).collect();
        Ok(self.resolve_objects(&names).await?.into_iter().flatten().collect())
    }

    /// `git archive --format zip` of `rev` into `file`.
    pub(crate) async fn archive_zip(&self, file: &Path, rev: &str) -> Result<(), GitError> {
        let out = format!("--output={}", file.to_string_lossy());
        self.run(&["archive", "--format=zip", &out, rev]).await.map(|_| ())
    }

    /// `<short sha> <subject>` of a commit, as CodePipeline shows it.
    pub(crate) async fn commit_summary(&self, rev: &str) -> Result<String, GitError> {
        self.run(&["log", "-1", "--format=%h %s", rev, "--"]).await
    }

    pub(crate) async fn update_ref(&self, refname: &str, sha: &str) -> Result<(), GitError> {
        self.run(&["update-ref", refname, sha]).await.map(|_| ())
    }

    pub(crate) async fn delete_ref(&self, refname: &str) -> Result<(), GitError> {
        self.run(&["update-ref", "-d", refname]).await.map(|_| ())
    }

    pub(crate) async fn remote_url(&self, remote: &str) -> Result<String, GitError> {
        self.run(&["remote", "get-url", remote]).await
    }

    pub(crate) async fn config_get(&self, key: &str) -> Option<String> {
        self.run(&["config", "--get", key]).await.ok().filter(|s| !s.is_empty())
    }
}

/// Removes `tmp_pack_*` files that git index-pack left in `dir` since `since`.
pub(crate) async fn remove_temp_packs_since(dir: &std::path::Path, since: std::time::SystemTime) {
    let dir = dir.to_path_buf();
    // A directory walk: off the async workers.
    let _ = crate::local::files::blocking(move || {
        let Ok(rd) = std::fs::read_dir(&dir) else { return Ok(()) };
        for e in rd.flatten() {
            let fresh = e.metadata().and_then(|m| m.modified()).map(|t| t >= since).unwrap_or(false);
            if fresh && e.file_name().to_string_lossy().starts_with("tmp_pack_") {
                tracing::debug!(file = %e.path().display(), "removing an interrupted index-pack's temp file");
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    })
    .await;
}

/// The new pack's hash from `git index-pack --stdin`'s output
/// (`pack\t<hash>`, or `keep\t<hash>`), or its error.
/// What `git index-pack` (`args`) answered: the new pack's hash, which it
/// prints after `pack` (or `keep`) and a tab.
fn index_pack_result(args: &[&str], out: &std::process::Output) -> Result<String, GitError> {
    let failed = |stderr: String| GitError::Failed { args: args.join(" "), stderr };
    if !out.status.success() {
        return Err(failed(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .split_whitespace()
        .nth(1)
        .filter(|h| crate::local::oid::is_object_id(h))
        .map(str::to_string)
        .ok_or_else(|| failed(format!("unexpected index-pack output {stdout:?}")))
}

/// A bundle header (its refs and prerequisites) larger than this is refused.
pub const MAX_BUNDLE_HEADER: u64 = 64 << 20;

/// A bundle's header found in its first chunks as they arrive: the
/// signature checked, the blank line that ends the header searched for in
/// each byte once (linear however the chunks are cut), bounded.
#[derive(Debug, Default)]
pub struct BundleHeader {
    /// The bytes so far.
    pub head: Vec<u8>,
    searched: usize,
}

impl BundleHeader {
    /// Adds the next chunk: `Some(offset of the pack)` once the header is complete.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Option<usize>, &'static str> {
        const SIGS: [&[u8]; 2] = [b"# v2 git bundle\n", b"# v3 git bundle\n"];
        self.head.extend_from_slice(chunk);
        let n = self.head.len().min(SIGS[0].len());
        if !SIGS.iter().any(|s| s[..n] == self.head[..n]) {
            return Err("not a git bundle (bad signature)");
        }
        let from = self.searched.saturating_sub(1);
        if let Some(pos) = self.head[from..].windows(2).position(|w| w == b"\n\n") {
            return Ok(Some(from + pos + 2));
        }
        self.searched = self.head.len();
        if self.head.len() as u64 > MAX_BUNDLE_HEADER {
            return Err("bundle header too large");
        }
        Ok(None)
    }
}

/// Byte offset of the pack data in a v2/v3 git bundle (after the header's
/// blank line).
pub fn bundle_pack_offset(path: &Path) -> std::io::Result<u64> {
    use std::io::BufRead;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    use std::io::Read;
    // Every read is bounded: a header line without its newline stops at the limit.
    let mut r = std::io::BufReader::new(std::fs::File::open(path)?).take(MAX_BUNDLE_HEADER + 1);
    let mut line = Vec::new();
    let mut offset = 0u64;
    r.read_until(b'\n', &mut line)?;
    if line != b"# v2 git bundle\n" && line != b"# v3 git bundle\n" {
        return Err(bad("missing bundle signature"));
    }
    offset += line.len() as u64;
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        offset += n as u64;
        if offset > MAX_BUNDLE_HEADER {
            return Err(bad("bundle header too large"));
        }
        if n == 0 || line.last() != Some(&b'\n') {
            return Err(bad("truncated bundle header"));
        }
        if line == b"\n" {
            return Ok(offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pack_dir_from_the_environment_git_gives_helpers() {
        let tmp = tempfile::tempdir().unwrap();
        let gd = tmp.path().join("repo.git");
        std::fs::create_dir_all(gd.join("objects/pack")).unwrap();
        let env = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let git = Git::new(tmp.path(), env(&[("GIT_DIR", "repo.git")]));
        assert_eq!(git.pack_dir_from_env().await, Some(gd.join("objects/pack")));
        let git = Git::new(tmp.path(), env(&[("GIT_DIR", "repo.git"), ("GIT_OBJECT_DIRECTORY", "/elsewhere/objects")]));
        assert_eq!(git.pack_dir_from_env().await, Some(PathBuf::from("/elsewhere/objects/pack")));
        // a linked worktree's GIT_DIR: git must answer
        std::fs::write(gd.join("commondir"), "../..\n").unwrap();
        let git = Git::new(tmp.path(), env(&[("GIT_DIR", "repo.git")]));
        assert_eq!(git.pack_dir_from_env().await, None);
        assert_eq!(Git::new(tmp.path(), env(&[])).pack_dir_from_env().await, None);
    }

    #[test]
    fn finds_the_pack_after_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        let sha = "a".repeat(40);
        let header = format!("# v2 git bundle\n{sha} refs/heads/main\n\n");
        std::fs::write(&p, format!("{header}PACK....")).unwrap();
        assert_eq!(bundle_pack_offset(&p).unwrap(), header.len() as u64);
        std::fs::write(&p, format!("# v3 git bundle\n@object-format=sha1\n-{sha} x\n{sha} refs/tags/v\n\nPACK")).unwrap();
        assert!(bundle_pack_offset(&p).is_ok());
        std::fs::write(&p, "PACK").unwrap();
        assert!(bundle_pack_offset(&p).is_err());
        std::fs::write(&p, format!("# v2 git bundle\n{sha} refs/heads/main\n")).unwrap();
        assert!(bundle_pack_offset(&p).is_err());
    }
}
