//! What the user reads when credentials fail: one line that says what to
//! do. The chain (`chain.rs`) turns every credential error into an
//! [`IdentityError`]; the store finds it in an S3 error's sources and prints
//! it as it is. S3's own `ExpiredToken` answer gets [`expired_token_advice`].

use std::collections::HashMap;

/// A credential failure, as the user reads it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The profile's chain starts at an SSO session that needs a login.
    #[error("the AWS SSO session of profile '{profile}' has expired or was never started ({reason}); run `aws sso login --profile {profile}`")]
    SsoLogin { profile: String, reason: String },
    /// Nothing in the chain had credentials.
    #[error("no AWS credentials found (tried {tried}); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, configure a profile (`aws configure`, AWS_PROFILE), or use s3://profile@bucket/prefix")]
    NotFound { tried: String },
    /// A `credential_process` failed (its own message says how).
    #[error("{0}")]
    Process(String),
    /// A source was configured but failed.
    #[error("cannot get AWS credentials from {source_name}: {reason}")]
    Failed { source_name: String, reason: String },
}

/// Which sources the default chain consulted for a caller, in its order.
pub(crate) fn tried_sources(env: &HashMap<String, String>, profile: &str, profile_files_exist: bool) -> String {
    let set = |k: &str| env.get(k).map(|v| !v.is_empty()).unwrap_or(false);
    let mut tried = vec!["AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".to_string()];
    tried.push(if profile_files_exist {
        format!("profile '{profile}' in ~/.aws/config and ~/.aws/credentials")
    } else {
        format!("profile '{profile}' (no ~/.aws/config or ~/.aws/credentials)")
    });
    tried.push(if set("AWS_WEB_IDENTITY_TOKEN_FILE") { "web identity" } else { "web identity (AWS_WEB_IDENTITY_TOKEN_FILE unset)" }.to_string());
    let container = set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") || set("AWS_CONTAINER_CREDENTIALS_FULL_URI");
    tried.push(if container { "container credentials" } else { "container credentials (AWS_CONTAINER_CREDENTIALS_* unset)" }.to_string());
    let imds_off = env.get("AWS_EC2_METADATA_DISABLED").map(|v| v.eq_ignore_ascii_case("true")).unwrap_or(false);
    tried.push(if imds_off { "EC2 instance metadata (disabled by AWS_EC2_METADATA_DISABLED)" } else { "EC2 instance metadata" }.to_string());
    tried.join(", ")
}

/// What to renew when S3 answers `ExpiredToken`: the caller's
/// `AWS_SESSION_TOKEN` when the keys came from the environment, else the
/// profile's session.
pub(crate) fn expired_token_advice(env_keys_used: bool, profile: Option<&str>) -> String {
    if env_keys_used {
        return "the session token in AWS_SESSION_TOKEN has expired; renew AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN together (or unset them to use a profile)".to_string();
    }
    let p = profile.unwrap_or("default");
    format!(
        "the session credentials of profile '{p}' have expired; renew them (its aws_session_token in ~/.aws/credentials, or `aws sso login --profile {p}` for an SSO profile)"
    )
}

/// The first line of an error's text, at most 300 characters.
pub(crate) fn one_line(text: &str) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let mut s: String = line.chars().take(300).collect();
    if line.chars().count() > 300 {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_and_say_what_to_do() {
        let sso = IdentityError::SsoLogin { profile: "dev".into(), reason: "the SSO token has expired".into() };
        assert!(sso.to_string().ends_with("run `aws sso login --profile dev`"));
        let mut env = HashMap::new();
        env.insert("AWS_EC2_METADATA_DISABLED".to_string(), "true".to_string());
        let tried = tried_sources(&env, "default", false);
        assert!(tried.contains("AWS_ACCESS_KEY_ID") && tried.contains("container credentials") && tried.contains("disabled"), "{tried}");
        let none = IdentityError::NotFound { tried }.to_string();
        assert!(!none.contains('\n'));
        assert!(expired_token_advice(true, None).contains("AWS_SESSION_TOKEN"));
        assert!(expired_token_advice(false, Some("ci")).contains("profile 'ci'"));
        assert_eq!(one_line("\n first \nsecond"), "first");
    }
}
