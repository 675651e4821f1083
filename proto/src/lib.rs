//! The gRPC contract between git-s3's shims and its daemon, and the small
//! client side every shim shares: where the daemon's socket lives, how to
//! reach (or start) the daemon, and how a shim pumps its stdio through a
//! session.

pub mod paths;
pub mod client;

#[allow(clippy::all)]
pub mod pb {
    tonic::include_proto!("gits3.v1");
}

/// Version of the daemon/shim pair. A shim that meets a daemon of another
/// version restarts it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Environment variables a shim forwards to the daemon with each session.
/// The daemon never reads its own environment for a request.
pub fn is_forwarded_env(name: &str) -> bool {
    const PREFIXES: &[&str] = &["AWS_", "GIT_", "S3_", "LC_", "XDG_"];
    const EXACT: &[&str] = &[
        "PATH", "HOME", "LANG", "TMPDIR", "TERM", "NO_COLOR", "USER",
        // The caller's proxies: S3 is reached through them, not the daemon's.
        "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || EXACT.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_aws_git_and_path_but_not_others() {
        assert!(is_forwarded_env("AWS_PROFILE"));
        assert!(is_forwarded_env("GIT_DIR"));
        assert!(is_forwarded_env("GIT_REMOTE_S3_VERBOSE"));
        assert!(is_forwarded_env("PATH"));
        assert!(is_forwarded_env("HTTPS_PROXY") && is_forwarded_env("no_proxy"));
        assert!(!is_forwarded_env("SSH_AUTH_SOCK"));
        assert!(!is_forwarded_env("OLDPWD"));
    }
}
