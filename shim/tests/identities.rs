//! Where credentials come from, end to end: each test pushes and clones with
//! the real git through the shim, with NO keys in the environment, and the
//! field server in front of the S3 server records the access key id that
//! signed each request (so a test proves WHICH credentials were used). The
//! daemon is started first from an environment without the identity
//! settings, as when another shell started it: every source must be read
//! from the calling shell's environment, never the daemon's.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use testkit::error_lines;
use testkit::field::{Fault, FaultAction, ALL_KINDS};
use testkit::identity::{write_sso_token, IdentityServer};
use testkit::{FieldServer, TestEnv};

/// A shell whose S3 requests go through a field server, its daemon already
/// running, and no AWS keys in its environment from now on.
fn keyless() -> (TestEnv, FieldServer) {
    let env = TestEnv::new();
    let field = FieldServer::start();
    env.set_env("AWS_ENDPOINT_URL", &field.url);
    // The daemon starts from this environment: none of what follows.
    env.git_s3(&env.work(), &["daemon", "status"]);
    env.unset_env("AWS_ACCESS_KEY_ID");
    env.unset_env("AWS_SECRET_ACCESS_KEY");
    (env, field)
}

/// Pushes a new repository `name` to `prefix` and clones it back.
fn push_and_clone(env: &TestEnv, name: &str, prefix: &str) {
    let url = env.url(prefix);
    let repo = env.new_repo(name);
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let clone = format!("{name}-clone");
    env.git(&env.work(), &["clone", "-q", &url, &clone]);
    assert_eq!(std::fs::read_to_string(env.path(&clone).join("README.md")).unwrap(), "hello\n");
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// An executable script, written by a child process: a file this process
/// wrote could still be open in a child another test forks at that moment,
/// and running it would fail with "Text file busy".
fn executable(path: &Path, text: &str) {
    use std::io::Write;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut child = std::process::Command::new("sh")
        .args(["-c", "cat > \"$1.tmp\" && chmod 755 \"$1.tmp\" && mv \"$1.tmp\" \"$1\"", "sh"])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// Container credentials (`AWS_CONTAINER_CREDENTIALS_FULL_URI`, as on
/// CodeBuild, ECS and EKS Pod Identity) with `AWS_CONTAINER_AUTHORIZATION_TOKEN`,
/// then `…_TOKEN_FILE`; a second shell with other keys gets its own client.
#[test]
fn container_credentials_from_the_callers_full_uri_and_token() {
    let (env, field) = keyless();
    env.set_env("AWS_EC2_METADATA_DISABLED", "true");
    let endpoint = IdentityServer::container("Bearer token-one");
    env.set_env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &format!("{}/v2/credentials/abc", endpoint.url));
    env.set_env("AWS_CONTAINER_AUTHORIZATION_TOKEN", "Bearer token-one");
    push_and_clone(&env, "container", "container");
    assert_eq!(endpoint.issued(), 1, "one fetch, kept by the warm client: {:?}", endpoint.requests());
    for r in endpoint.requests() {
        assert_eq!(r.header("authorization"), Some("Bearer token-one"), "{r:?}");
        assert!(r.path.starts_with("/v2/credentials/abc"), "{r:?}");
    }
    assert_eq!(field.counts().access_keys("s3"), [endpoint.access_key(1)]);

    // The token from a file (EKS Pod Identity), in another shell.
    let other = IdentityServer::container("token-from-file");
    let token_file = env.dir.path().join("pod-identity-token");
    write(&token_file, "token-from-file");
    env.unset_env("AWS_CONTAINER_AUTHORIZATION_TOKEN");
    env.set_env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token_file.display().to_string());
    env.set_env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &other.url);
    field.reset_counts();
    let refs = env.git(&env.work(), &["ls-remote", &env.url("container")]);
    assert!(refs.contains("refs/heads/main"), "{refs}");
    assert_eq!(other.issued(), 1);
    assert_eq!(other.requests()[0].header("authorization"), Some("token-from-file"));
    assert_eq!(field.counts().access_keys("s3"), [other.access_key(1)]);

    // Keys in a third shell's environment come first, in a client of their own.
    env.set_env("AWS_ACCESS_KEY_ID", "AKIDTHIRDSHELL");
    env.set_env("AWS_SECRET_ACCESS_KEY", "secret");
    field.reset_counts();
    env.git(&env.work(), &["ls-remote", &env.url("container")]);
    assert_eq!(field.counts().access_keys("s3"), ["AKIDTHIRDSHELL"]);
    assert_eq!((endpoint.issued(), other.issued()), (1, 1), "no other fetch");
}

/// Credentials that expire soon are fetched again before they expire: the
/// second operation signs with new ones. (The SDK refreshes credentials
/// that expire within its buffer before using them; these expire within
/// it, so every use needs a new fetch: no timing involved.)
#[test]
fn credentials_expiring_soon_are_refreshed_before_use() {
    let (env, field) = keyless();
    env.set_env("AWS_EC2_METADATA_DISABLED", "true");
    let endpoint = IdentityServer::container("t");
    endpoint.set_lifetime(Duration::from_secs(5));
    env.set_env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &endpoint.url);
    env.set_env("AWS_CONTAINER_AUTHORIZATION_TOKEN", "t");
    push_and_clone(&env, "expiring", "expiring");
    let keys = field.counts().access_keys("s3");
    assert!(endpoint.issued() >= 2 && keys.len() >= 2, "refetched: {} fetches, keys {keys:?}", endpoint.issued());
    // Credentials that last an hour are fetched once more, then kept.
    endpoint.set_lifetime(Duration::from_secs(3600));
    let before = endpoint.issued();
    env.git(&env.work(), &["ls-remote", &env.url("expiring")]);
    env.git(&env.work(), &["ls-remote", &env.url("expiring")]);
    assert_eq!(endpoint.issued(), before + 1);
}

/// A profile's `credential_process` found only on the CALLER's PATH, seeing
/// the caller's environment; then a role assumed on top of it through
/// `source_profile` (STS at the caller's AWS_ENDPOINT_URL, the test server).
#[test]
fn credential_process_on_the_callers_path_and_a_role_chain_on_top() {
    let (env, field) = keyless();
    env.set_env("AWS_EC2_METADATA_DISABLED", "true");
    let helpers = env.dir.path().join("helpers");
    executable(
        &helpers.join("my-cred-helper"),
        "#!/bin/sh\npwd >> \"$HOME/helper-runs\"\n\
         printf '{\"Version\": 1, \"AccessKeyId\": \"AKIDPROC%s\", \"SecretAccessKey\": \"s\", \"SessionToken\": \"t\", \"Expiration\": \"2099-01-01T00:00:00Z\"}\\n' \"$HELPER_MARK\"\n",
    );
    write(
        &env.home().join(".aws/config"),
        "[profile helper]\ncredential_process = my-cred-helper --quiet\n\
         [profile broken]\ncredential_process = broken-helper\n\
         [profile slow]\ncredential_process = slow-helper\n\
         [profile chained]\nrole_arn = arn:aws:iam::123456789012:role/git-s3-test\nsource_profile = helper\nrole_session_name = git-s3-test\n",
    );
    // Only this shell has the helper on its PATH (the daemon does not).
    env.set_env("PATH", &format!("{}:{}/bin:/usr/local/bin:/usr/bin:/bin", helpers.display(), env.dir.path().display()));
    env.set_env("HELPER_MARK", "CALLER");
    env.set_env("AWS_PROFILE", "helper");
    push_and_clone(&env, "process", "process");
    assert_eq!(field.counts().access_keys("s3"), ["AKIDPROCCALLER"]);
    let runs = std::fs::read_to_string(env.home().join("helper-runs")).unwrap_or_default();
    let repo = env.path("process").canonicalize().unwrap();
    assert!(runs.lines().any(|l| Path::new(l) == repo), "the push ran it in the repository: {runs}");

    // The role chain: the helper's credentials sign AssumeRole, the role's sign S3.
    env.set_env("AWS_PROFILE", "chained");
    field.reset_counts();
    let refs = env.git(&env.work(), &["ls-remote", &env.url("process")]);
    assert!(refs.contains("refs/heads/main"), "{refs}");
    let counts = field.counts();
    assert_eq!(counts.access_keys("sts"), ["AKIDPROCCALLER"], "{counts:?}");
    let s3_keys = counts.access_keys("s3");
    assert_eq!(s3_keys.len(), 1, "{s3_keys:?}");
    assert_ne!(s3_keys[0], "AKIDPROCCALLER", "the role's credentials sign S3");

    // A helper that fails: one line, with the helper's own last words.
    executable(&helpers.join("broken-helper"), "#!/bin/sh\necho 'debug noise' >&2\necho 'session expired: run corp-login' >&2\nexit 2\n");
    env.set_env("AWS_PROFILE", "broken");
    let stderr = env.git_fail(&env.work(), &["ls-remote", &env.url("process")]);
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("credential_process `broken-helper` of profile 'broken' failed (exit code 2): session expired: run corp-login"),
        "{stderr}"
    );

    // A helper that takes several seconds to answer (a vault, an SSO
    // broker) still gives the credentials: the SDK's credential cache
    // waits for it (older SDKs gave up after 5 s).
    executable(
        &helpers.join("slow-helper"),
        "#!/bin/sh\nsleep 6\nprintf '{\"Version\": 1, \"AccessKeyId\": \"AKIDSLOW\", \"SecretAccessKey\": \"s\"}'\n",
    );
    env.set_env("AWS_PROFILE", "slow");
    field.reset_counts();
    env.git(&env.work(), &["ls-remote", &env.url("process")]);
    assert_eq!(field.counts().access_keys("s3"), ["AKIDSLOW"]);
}

/// EC2 instance metadata (IMDSv2: a session token first) at the caller's
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
#[test]
fn imds_v2_at_the_callers_metadata_endpoint() {
    let (env, field) = keyless();
    let imds = IdentityServer::imds();
    env.set_env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url);
    push_and_clone(&env, "imds", "imds");
    assert_eq!(field.counts().access_keys("s3"), [imds.access_key(1)]);
    let requests = imds.requests();
    assert_eq!((requests[0].method.as_str(), requests[0].path.as_str()), ("PUT", "/latest/api/token"), "{requests:?}");
}

/// Web identity (GitHub Actions OIDC, EKS IRSA) against the test server's
/// STS: from the environment, then from a profile.
#[test]
fn web_identity_from_the_environment_and_from_a_profile() {
    let (env, field) = keyless();
    env.set_env("AWS_EC2_METADATA_DISABLED", "true");
    let token = env.dir.path().join("oidc-token");
    write(&token, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOngifQ.c2ln");
    env.set_env("AWS_WEB_IDENTITY_TOKEN_FILE", &token.display().to_string());
    env.set_env("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/ci");
    push_and_clone(&env, "oidc", "oidc");
    let from_env = field.counts().access_keys("s3");
    assert_eq!(from_env.len(), 1, "{from_env:?}");
    assert_ne!(from_env[0], "test");
    assert!(field.requests().iter().any(|r| r.method == "POST" && r.bucket.is_none()), "AssumeRoleWithWebIdentity went to the caller's endpoint");

    env.unset_env("AWS_WEB_IDENTITY_TOKEN_FILE");
    env.unset_env("AWS_ROLE_ARN");
    write(
        &env.home().join(".aws/config"),
        &format!("[profile irsa]\nweb_identity_token_file = {}\nrole_arn = arn:aws:iam::123456789012:role/irsa\n", token.display()),
    );
    field.reset_counts();
    let url = format!("s3://irsa@{}/oidc", env.bucket);
    let refs = env.git(&env.work(), &["ls-remote", &url]);
    assert!(refs.contains("refs/heads/main"), "{refs}");
    let from_profile = field.counts().access_keys("s3");
    assert_eq!(from_profile.len(), 1, "{from_profile:?}");
    assert_ne!(from_profile, from_env, "new credentials for the profile's role");
}

/// An SSO profile (`sso_session`): the token from the CALLER's cache under
/// their HOME, role credentials from the portal (GetRoleCredentials); an
/// expired login says which command to run, in one line.
#[test]
fn sso_session_from_the_callers_token_cache_and_an_expired_login() {
    let (env, field) = keyless();
    env.set_env("AWS_EC2_METADATA_DISABLED", "true");
    let portal = IdentityServer::sso_portal("sso-access-token");
    env.set_env("AWS_ENDPOINT_URL_SSO", &portal.url);
    write(
        &env.home().join(".aws/config"),
        "[profile dev]\nsso_session = corp\nsso_account_id = 123456789012\nsso_role_name = Developer\nregion = us-east-1\n\
         [sso-session corp]\nsso_start_url = https://example.awsapps.com/start\nsso_region = us-east-1\n",
    );
    write_sso_token(&env.home(), "corp", "sso-access-token", SystemTime::now() + Duration::from_secs(3600));
    env.set_env("AWS_PROFILE", "dev");
    push_and_clone(&env, "sso", "sso");
    assert_eq!(portal.issued(), 1);
    let r = &portal.requests()[0];
    assert!(
        r.path.starts_with("/federation/credentials") && r.path.contains("account_id=123456789012") && r.path.contains("role_name=Developer"),
        "{r:?}"
    );
    assert_eq!(field.counts().access_keys("s3"), [portal.access_key(1)]);

    // The login expired (another shell: a HOME of its own, same config).
    let other_home: PathBuf = env.dir.path().join("other-home");
    write(&other_home.join(".aws/config"), &std::fs::read_to_string(env.home().join(".aws/config")).unwrap());
    std::fs::copy(env.home().join(".gitconfig"), other_home.join(".gitconfig")).unwrap();
    write_sso_token(&other_home, "corp", "sso-access-token", SystemTime::now() - Duration::from_secs(60));
    env.set_env("HOME", &other_home.display().to_string());
    let stderr = env.git_fail(&env.work(), &["ls-remote", &env.url("sso")]);
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("SSO session of profile 'dev' has expired") && errors[0].ends_with("run `aws sso login --profile dev`"), "{stderr}");
    assert_eq!(portal.issued(), 1, "no call with an expired token");
}

/// No credentials anywhere: one line that lists what was tried.
#[test]
fn no_credentials_lists_what_was_tried() {
    let (env, _field) = keyless();
    env.set_env("AWS_EC2_METADATA_DISABLED", "true");
    let stderr = env.git_fail(&env.work(), &["ls-remote", &env.url("none")]);
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    for tried in [
        "no AWS credentials found (tried",
        "AWS_ACCESS_KEY_ID",
        "profile 'default'",
        "web identity",
        "container credentials",
        "EC2 instance metadata",
    ] {
        assert!(errors[0].contains(tried), "{tried}: {stderr}");
    }
}

/// S3 answers `ExpiredToken` to keys with an expired session token: the
/// line says to renew AWS_SESSION_TOKEN.
#[test]
fn an_expired_session_token_names_the_variable_to_renew() {
    let (env, field) = keyless();
    env.set_env("AWS_ACCESS_KEY_ID", "ASIAEXPIRED");
    env.set_env("AWS_SECRET_ACCESS_KEY", "secret");
    env.set_env("AWS_SESSION_TOKEN", "expired-token");
    field.set_faults(1, vec![Fault::new(FaultAction::ExpiredToken, ALL_KINDS, 1.0)]);
    let stderr = env.git_fail(&env.work(), &["ls-remote", &env.url("expired")]);
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("ExpiredToken") && errors[0].contains("AWS_SESSION_TOKEN"), "{stderr}");
}
