//! The LFS URL git-lfs uses for a remote whose git URL is not S3 (code on
//! GitHub, GitLab or any git server, LFS objects in S3), found the way
//! git-lfs finds it: `lfs.pushurl` / `remote.<name>.lfspushurl` for
//! uploads, then `lfs.url`, then `remote.<name>.lfsurl`; each key from the
//! git config first, then from the repository's `.lfsconfig` (the working
//! tree's file, else the index's, else HEAD's, as git-lfs reads it).

use crate::local::git::Git;

/// Which transfer the URL is for (uploads look at the push URLs first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Upload,
    Download,
}

/// Where an LFS URL was configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FoundUrl {
    pub(crate) url: String,
    /// The key and the file, for messages (e.g. "lfs.url in .lfsconfig").
    pub(crate) source: String,
}

/// The keys git-lfs consults for `remote`'s LFS URL, in its order.
pub(crate) fn candidate_keys(remote: &str, op: Operation) -> Vec<String> {
    let mut keys = Vec::new();
    if op == Operation::Upload {
        keys.push("lfs.pushurl".to_string());
        if !remote.is_empty() {
            keys.push(format!("remote.{remote}.lfspushurl"));
        }
    }
    keys.push("lfs.url".to_string());
    if !remote.is_empty() {
        keys.push(format!("remote.{remote}.lfsurl"));
    }
    keys
}

/// The LFS URL git-lfs would use for `remote` (a name, or a URL), or None
/// when no key sets one (git-lfs then derives it from the git URL).
pub(crate) async fn lfs_url_of(git: &Git, remote: &str, op: Operation) -> Option<FoundUrl> {
    let remote = if remote.contains("://") || remote.contains('/') { "" } else { remote };
    let lfsconfig = LfsConfig::locate(git).await;
    for key in candidate_keys(remote, op) {
        if let Some(url) = git.config_get(&key).await {
            return Some(FoundUrl { url, source: format!("{key} in the git config") });
        }
        if let Some(url) = lfsconfig.get(git, &key).await {
            return Some(FoundUrl { url, source: format!("{key} in .lfsconfig") });
        }
    }
    None
}

/// The `.lfsconfig` git-lfs reads: the working tree's file, else the
/// index's blob, else HEAD's.
enum LfsConfig {
    File(String),
    Blob(&'static str),
    None,
}

impl LfsConfig {
    async fn locate(git: &Git) -> LfsConfig {
        if let Ok(top) = git.run(&["rev-parse", "--show-toplevel"]).await {
            let file = std::path::Path::new(top.trim()).join(".lfsconfig");
            if tokio::fs::metadata(&file).await.is_ok_and(|m| m.is_file()) {
                return LfsConfig::File(file.to_string_lossy().into_owned());
            }
        }
        for blob in [":.lfsconfig", "HEAD:.lfsconfig"] {
            if git.status(&["cat-file", "-e", blob]).await.unwrap_or(false) {
                return LfsConfig::Blob(blob);
            }
        }
        LfsConfig::None
    }

    async fn get(&self, git: &Git, key: &str) -> Option<String> {
        let out = match self {
            LfsConfig::File(f) => git.run(&["config", "--file", f, "--get", key]).await,
            LfsConfig::Blob(b) => git.run(&["config", "--blob", b, "--get", key]).await,
            LfsConfig::None => return None,
        };
        out.ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_git_lfs_order() {
        assert_eq!(candidate_keys("origin", Operation::Download), ["lfs.url", "remote.origin.lfsurl"]);
        assert_eq!(candidate_keys("origin", Operation::Upload), ["lfs.pushurl", "remote.origin.lfspushurl", "lfs.url", "remote.origin.lfsurl"]);
        assert_eq!(candidate_keys("", Operation::Download), ["lfs.url"]);
    }

    #[tokio::test]
    async fn git_config_wins_over_lfsconfig_and_lfs_url_over_remote_lfsurl() {
        let dir = tempfile::tempdir().unwrap();
        let env: std::collections::HashMap<String, String> = [
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            ("HOME", dir.path().to_string_lossy().into_owned()),
            ("GIT_CONFIG_NOSYSTEM", "1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let git = Git::new(dir.path(), env);
        git.run(&["init", "-q"]).await.unwrap();
        assert_eq!(lfs_url_of(&git, "origin", Operation::Download).await, None);
        git.run(&["config", "remote.origin.lfsurl", "https://a/x"]).await.unwrap();
        let found = lfs_url_of(&git, "origin", Operation::Download).await.unwrap();
        assert_eq!(found.url, "https://a/x");
        std::fs::write(dir.path().join(".lfsconfig"), "[lfs]\n\turl = https://b/y\n").unwrap();
        let found = lfs_url_of(&git, "origin", Operation::Download).await.unwrap();
        assert_eq!((found.url.as_str(), found.source.as_str()), ("https://b/y", "lfs.url in .lfsconfig"));
        git.run(&["config", "lfs.url", "https://c/z"]).await.unwrap();
        assert_eq!(lfs_url_of(&git, "origin", Operation::Upload).await.unwrap().url, "https://c/z");
        // From the index when the working tree has no .lfsconfig.
        git.run(&["config", "--unset", "lfs.url"]).await.unwrap();
        git.run(&["add", ".lfsconfig"]).await.unwrap();
        std::fs::remove_file(dir.path().join(".lfsconfig")).unwrap();
        assert_eq!(lfs_url_of(&git, "origin", Operation::Download).await.unwrap().url, "https://b/y");
    }
}
