//! A `<remote-or-url>` argument, and what a prefix holds, read for the CLI.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::local::git::Git;
use crate::s3::store::{ObjectInfo, S3Store};
use crate::s3::url::{s3_url_of_remote, RemoteNameError, RemoteUrl};
use crate::s3::write_options::{s3_config, BucketPolicy};
use crate::storage::bundles::layout::{self, PrefixScan, PROTECTED_MARKER};
use crate::storage::crypt::trust::Trust;
use crate::storage::crypt::{self, keyring, CryptError, RemoteKey};
use crate::storage::packs::manifest::{self, read_manifest};
use crate::storage::StorageError;

use super::{CliError, Ctx};

/// A resolved remote: its URL and the store for its bucket.
pub(crate) struct Remote {
    /// The git remote name when one was given.
    pub(crate) name: Option<String>,
    pub(crate) url: RemoteUrl,
    pub(crate) store: S3Store,
    /// What the repository remembers of the remote (nothing for a URL):
    /// what a keyring edit checks again on every keyring it reads.
    pub(crate) trust: Trust,
    /// The key opened by the check of what the repository remembers
    /// (`resolve`), if it opened one.
    checked: Option<Arc<RemoteKey>>,
}

impl Remote {
    /// `s3://…` / `s3+zip://…` are parsed as URLs; anything else is a git
    /// remote of the caller's repository.
    pub(crate) async fn resolve(ctx: &Ctx, arg: &str) -> Result<Remote, CliError> {
        let (name, url) = if arg.contains("://") {
            (None, RemoteUrl::parse(arg)?)
        } else {
            let git = Git::new(&ctx.cwd, ctx.env.clone());
            let url = s3_url_of_remote(&git, arg).await.map_err(|e| match e {
                RemoteNameError::InvalidName(n) => CliError::Usage(format!("invalid remote name '{n}'")),
                RemoteNameError::NotConfigured { name, detail } => CliError::UnknownRemote { name, cwd: ctx.cwd.display().to_string(), detail },
                RemoteNameError::NotS3 { name, url } => CliError::NotS3Remote { name, url },
                RemoteNameError::BadUrl { source, .. } => source.into(),
            })?;
            (Some(arg.to_string()), url)
        };
        let git = Git::new(&ctx.cwd, ctx.env.clone());
        // One config read: the bucket policy and what the repository
        // remembers of the remote (`crypt::trust`; nothing for a URL).
        let listing = s3_config(&git).await;
        let policy = BucketPolicy::from_listing(&listing, name.as_deref()).map_err(|e| CliError::Usage(e.to_string()))?;
        let store = ctx.state.store_for(&ctx.env, &url).await.with_policy(policy);
        // Before the command reads or writes anything else: another keyring,
        // or a plaintext remote where an encrypted one is remembered, is
        // refused as a fetch would refuse it.
        let trust = Trust::from_config(&listing, name.as_deref());
        let checked = trust.check(&store, &url, &ctx.env).await.map_err(StorageError::from)?;
        Ok(Remote { name, url, store, trust, checked })
    }

    /// On an encrypted packs remote (issue 22), opens its keyring with the
    /// caller's identities, as every git command does, so that its
    /// manifest reads (a caller none of whose identities opens it gets the
    /// one-line refusal); someone else's access, earlier in this daemon,
    /// never counts. None (and nothing opened) on any other prefix: one
    /// manifest read, which the command's own read then finds held.
    pub(crate) async fn open_key(&self, ctx: &Ctx) -> Result<Option<Arc<RemoteKey>>, CliError> {
        if let Some(key) = &self.checked {
            return Ok(Some(key.clone()));
        }
        let (store, url) = (&self.store, &self.url);
        if crypt::opened(store, url).is_none() {
            match read_manifest(store, url).await {
                Err(StorageError::Crypt(CryptError::NotOpened(_))) => {}
                _ => return Ok(None),
            }
        }
        let key = keyring::open(store, url, &ctx.env).await.map_err(StorageError::from)?;
        if key.is_none() {
            // The keyring is gone: what this daemon holds of the remote is stale.
            manifest::forget_held(store, url);
        }
        Ok(key)
    }

    /// Reads the whole prefix: bundles, locks, markers, HEAD.
    pub(crate) async fn inspect(&self) -> Result<View, CliError> {
        let objects = self.store.list(&format!("{}/", self.url.prefix)).await?;
        let scan = layout::scan(&self.url.prefix, &objects);
        let head_raw = if scan.head_object {
            self.store.get_small(&self.url.key("HEAD")).await?.map(|b| String::from_utf8_lossy(&b).trim().to_string())
        } else {
            None
        };
        Ok(View { scan, head_raw })
    }

    /// Objects directly under `<prefix>/<refname>/` (not those of refs below it).
    pub(crate) async fn ref_objects(&self, refname: &str) -> Result<Vec<ObjectInfo>, CliError> {
        let dir = format!("{}/{refname}/", self.url.prefix);
        let objects = self.store.list(&dir).await?;
        Ok(objects.into_iter().filter(|o| o.key.strip_prefix(&dir).is_some_and(|leaf| !leaf.contains('/'))).collect())
    }

    pub(crate) fn marker_key(&self, refname: &str) -> String {
        self.url.key(&format!("{refname}/{PROTECTED_MARKER}"))
    }

    pub(crate) fn bundle_key(&self, refname: &str, sha: &str) -> String {
        self.url.key(&format!("{refname}/{sha}.bundle"))
    }
}

/// The state of a prefix's HEAD object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeadState {
    /// Names a ref that has a bundle.
    Ok(String),
    /// No HEAD object (a problem only when refs exist).
    Missing,
    /// Names a ref that has no bundle (or is empty).
    Dangling(String),
}

pub(crate) struct View {
    pub(crate) scan: PrefixScan,
    pub(crate) head_raw: Option<String>,
}

impl View {
    pub(crate) fn head(&self) -> HeadState {
        match &self.head_raw {
            None => HeadState::Missing,
            Some(h) if self.scan.bundles.contains_key(h) => HeadState::Ok(h.clone()),
            Some(h) => HeadState::Dangling(h.clone()),
        }
    }

    /// Whether HEAD needs fixing: missing while branches exist, or dangling.
    pub(crate) fn head_problem(&self) -> bool {
        match self.head() {
            HeadState::Ok(_) => false,
            HeadState::Missing => !self.branches().is_empty(),
            HeadState::Dangling(_) => true,
        }
    }

    /// Branch refs (`refs/heads/…`) that have a bundle, sorted.
    pub(crate) fn branches(&self) -> Vec<String> {
        self.scan.bundles.keys().filter(|r| r.starts_with("refs/heads/")).cloned().collect()
    }

    pub(crate) fn is_protected(&self, refname: &str) -> bool {
        self.scan.protected.iter().any(|p| p == refname)
    }
}

/// Age of an object in whole seconds.
pub(crate) fn age_secs(info: &ObjectInfo) -> u64 {
    info.age().as_secs()
}

pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Stale as `locks::acquire` sees it: older than the TTL.
pub(crate) fn is_stale(info: &ObjectInfo, ttl: Duration) -> bool {
    info.age() > ttl
}

/// The branch a missing HEAD defaults to: main, master, else the first of
/// `branches` (full ref names).
pub(crate) fn default_head(branches: &[String]) -> Option<&String> {
    ["refs/heads/main", "refs/heads/master"].iter().find_map(|c| branches.iter().find(|b| b == c)).or_else(|| branches.first())
}

/// `main`, `refs/heads/main` → `refs/heads/main`; rejects names git would.
pub(crate) fn branch_ref(branch: &str) -> Result<String, CliError> {
    let b = branch.strip_prefix("refs/heads/").unwrap_or(branch);
    let bad = b.is_empty()
        || b.starts_with('/')
        || b.ends_with('/')
        || b.starts_with('-')
        || b.contains("//")
        || b.contains("..")
        || b.ends_with(".lock")
        || b.chars().any(|c| c.is_control() || " ~^:?*[\\".contains(c));
    if bad {
        return Err(CliError::Usage(format!("invalid branch name '{branch}'")));
    }
    Ok(format!("refs/heads/{b}"))
}

impl Remote {
    /// Whether the remote's store enforces conditional writes, for `status`
    /// and `doctor`: what this daemon remembers, or (with `probe`) probed now
    /// when it remembers nothing (a probe writes and deletes one object
    /// under the prefix). `state`: enforced, ignored, not-implemented, or
    /// unknown (not probed yet, or the probe failed: `error`).
    pub(crate) async fn conditional_writes(&self, ctx: &Ctx, probe: bool) -> serde_json::Value {
        use crate::s3::conditional::{endpoint_of, refusal};
        let writes = &ctx.state.conditional;
        let endpoint = endpoint_of(&self.store);
        let known = match writes.remembered(&endpoint, self.store.bucket()).await {
            Some(p) => Ok(Some(p)),
            None if probe => writes.verdict(&self.store.without_write_gate(), &endpoint, &self.url.prefix).await.map(Some),
            None => Ok(None),
        };
        match known {
            Ok(Some(p)) => serde_json::json!({
                "endpoint": endpoint,
                "state": p.verdict.code(),
                "header": p.verdict.header(),
                "summary": p.verdict.describe(),
                "probed_seconds_ago": p.at.elapsed().unwrap_or_default().as_secs(),
                "refusal": (!p.verdict.enforced()).then(|| refusal(&endpoint, self.store.bucket(), p.verdict)),
            }),
            Ok(None) => serde_json::json!({
                "endpoint": endpoint, "state": "unknown", "header": null,
                "summary": "not probed yet (probed before this daemon's first write to the bucket; `git s3 doctor` probes)",
                "probed_seconds_ago": null,
            }),
            Err(e) => serde_json::json!({
                "endpoint": endpoint, "state": "unknown", "header": null,
                "summary": format!("could not probe: {e}"), "error": e.to_string(), "probed_seconds_ago": null,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names() {
        assert_eq!(branch_ref("main").unwrap(), "refs/heads/main");
        assert_eq!(branch_ref("refs/heads/feature/x").unwrap(), "refs/heads/feature/x");
        for bad in ["", "a..b", "/a", "a/", "a b", "-x", "a//b", "x.lock"] {
            assert!(branch_ref(bad).is_err(), "{bad}");
        }
    }

    fn obj(key: &str) -> ObjectInfo {
        ObjectInfo { key: key.into(), size: 1, etag: "e".into(), last_modified: SystemTime::now() }
    }

    #[test]
    fn head_states_and_default() {
        let a = "a".repeat(40);
        let objects = vec![obj(&format!("p/refs/heads/dev/{a}.bundle")), obj(&format!("p/refs/heads/master/{a}.bundle"))];
        let scan = layout::scan("p", &objects);
        let v = View { scan: scan.clone(), head_raw: None };
        assert_eq!(v.head(), HeadState::Missing);
        assert!(v.head_problem());
        assert_eq!(default_head(&v.branches()).map(String::as_str), Some("refs/heads/master"));
        let v = View { scan: scan.clone(), head_raw: Some("refs/heads/gone".into()) };
        assert_eq!(v.head(), HeadState::Dangling("refs/heads/gone".into()));
        let v = View { scan, head_raw: Some("refs/heads/dev".into()) };
        assert!(!v.head_problem());
        let empty = View { scan: PrefixScan::default(), head_raw: None };
        assert!(!empty.head_problem());
        assert_eq!(default_head(&empty.branches()), None);
    }
}
