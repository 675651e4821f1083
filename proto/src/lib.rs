//! The gRPC contract between git-s3's shims and its daemon, and the small
//! client side every shim shares: where the daemon's socket lives, how to
//! reach (or start) the daemon, and how a shim pumps its stdio through a
//! session.

pub mod client;
pub mod paths;

#[allow(clippy::all)]
pub mod pb {
    tonic::include_proto!("gits3.v1");
}

/// Version of the daemon/shim pair. A shim that meets a daemon of another
/// version restarts it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Environment variables a shim forwards to the daemon with each session:
/// all of them. The daemon never reads its own environment for a request,
/// and what it runs for the caller (git, a profile's `credential_process`)
/// sees the caller's whole environment, as under git-remote-s3 0.4.2 (a
/// credential helper may need `SSH_AUTH_SOCK`, a vault token, …). Warm S3
/// clients are keyed only on the credential-relevant part
/// (daemon/src/s3/clients.rs).
pub fn is_forwarded_env(name: &str) -> bool {
    !name.is_empty() && !name.contains('=')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_the_whole_environment() {
        assert!(is_forwarded_env("AWS_PROFILE"));
        assert!(is_forwarded_env("GIT_DIR"));
        assert!(is_forwarded_env("GIT_REMOTE_S3_VERBOSE"));
        assert!(is_forwarded_env("PATH"));
        assert!(is_forwarded_env("HTTPS_PROXY") && is_forwarded_env("no_proxy"));
        assert!(is_forwarded_env("SSH_AUTH_SOCK"), "a credential helper may need it");
        assert!(is_forwarded_env("VAULT_TOKEN"));
        assert!(!is_forwarded_env(""));
    }
}
