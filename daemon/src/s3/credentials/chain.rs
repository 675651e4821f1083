//! The AWS credential chain evaluated with the CALLER's environment: static
//! keys, profiles (roles through `source_profile`, SSO with the token cache
//! under the caller's HOME, web identity, `credential_process`), web
//! identity from the environment, container credentials and IMDS — in the
//! order of aws-config's default chain, which does all of it once given the
//! caller's environment (`ConfigLoader::env`). A `credential_process` at
//! the base of the selected profile's chain runs here instead
//! ([`super::process`]), with the caller's environment and directory; the
//! role hops above it are aws-config's `AssumeRoleProvider`s. Every error
//! comes out as one [`IdentityError`] line.

use std::collections::HashMap;
use std::sync::Arc;

use aws_config::profile::ProfileSet;
use aws_config::sts::AssumeRoleProvider;
use aws_credential_types::provider::{self, error::CredentialsError, future, ProvideCredentials, SharedCredentialsProvider};
use aws_runtime::env_config::file::EnvConfigFiles;
use aws_types::os_shim_internal::{Env, Fs};
use aws_types::service_config::ServiceConfigKey;
use aws_types::SdkConfig;

use super::messages::{one_line, tried_sources, IdentityError};
use super::process::{ProcessCredentials, ProcessError};
use crate::s3::config_files::ConfigFiles;

/// Static keys: used from the environment unless the URL names a profile.
const KEY_VARS: [&str; 3] = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"];

/// One caller's identity inputs.
#[derive(Clone)]
pub(crate) struct CallerChain {
    env: Arc<HashMap<String, String>>,
    /// The profile to use (the URL's `profile@`, else AWS_PROFILE).
    profile: Option<String>,
    /// The URL named a profile other than AWS_PROFILE: it wins over keys
    /// in the environment (as with 0.4.2's `boto3.Session(profile_name=…)`).
    url_profile_wins: bool,
}

/// Where the selected profile's credentials start.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Base {
    /// `credential_process`, with the roles to assume on top (innermost first).
    Process { command: String, profile: String, hops: Vec<RoleHop> },
    /// An SSO session (`sso_session` or `sso_start_url`).
    Sso,
    /// Anything aws-config handles by itself, or no profile at all.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct RoleHop {
    role_arn: String,
    external_id: Option<String>,
    session_name: Option<String>,
}

impl CallerChain {
    pub(crate) fn new(env: Arc<HashMap<String, String>>, profile: Option<String>, url_profile_wins: bool) -> CallerChain {
        CallerChain { env, profile, url_profile_wins }
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.env.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// Static keys from the environment are what the chain will use.
    pub(crate) fn env_keys_used(&self) -> bool {
        !self.url_profile_wins && self.get("AWS_ACCESS_KEY_ID").is_some() && self.get("AWS_SECRET_ACCESS_KEY").is_some()
    }

    fn profile_name(&self) -> String {
        self.profile.clone().unwrap_or_else(|| "default".to_string())
    }

    /// The environment aws-config reads: the caller's (without its static
    /// keys when the URL's profile wins over them).
    pub(crate) fn loader_env(&self) -> Env {
        let mut env: HashMap<String, String> = (*self.env).clone();
        if self.url_profile_wins {
            for k in KEY_VARS {
                env.remove(k);
            }
        }
        Env::from(env)
    }

    /// The credentials provider of this caller, given the config aws-config
    /// loaded with [`CallerChain::loader_env`] (its default chain already
    /// reads the caller's environment; a `credential_process` base is
    /// replaced here).
    pub(crate) async fn provider(&self, sdk: &SdkConfig, files: Option<EnvConfigFiles>) -> SharedCredentialsProvider {
        let profile_files_exist = files.is_some();
        let base = if self.env_keys_used() { Base::Other } else { self.profile_base(files).await };
        let inner = match (&base, sdk.credentials_provider()) {
            (Base::Process { command, profile, hops }, _) => self.process_chain(sdk, command, profile, hops).await,
            (_, Some(default)) => default,
            (_, None) => SharedCredentialsProvider::new(NoProvider),
        };
        let tried = tried_sources(&self.env, &self.profile_name(), profile_files_exist);
        let context = Arc::new(Context { profile: self.profile_name(), base, tried, env_keys: self.env_keys_used() });
        SharedCredentialsProvider::new(CallerCredentials { inner, context })
    }

    async fn process_chain(&self, sdk: &SdkConfig, command: &str, profile: &str, hops: &[RoleHop]) -> SharedCredentialsProvider {
        let mut provider = SharedCredentialsProvider::new(ProcessCredentials::new(command, profile, self.env.clone()));
        // STS at the caller's STS endpoint (AWS_ENDPOINT_URL_STS,
        // AWS_ENDPOINT_URL, the profile's), never at an S3-only endpoint.
        let mut b = sdk.to_builder();
        b.set_endpoint_url(self.configured_endpoint(sdk, "STS"));
        let sts = b.build();
        for hop in hops {
            let mut r = AssumeRoleProvider::builder(hop.role_arn.clone()).configure(&sts);
            if let Some(x) = &hop.external_id {
                r = r.external_id(x.clone());
            }
            if let Some(s) = &hop.session_name {
                r = r.session_name(s.clone());
            }
            provider = SharedCredentialsProvider::new(r.build_from_provider(provider).await);
        }
        provider
    }

    /// The endpoint the caller configured for another service than S3
    /// (`AWS_ENDPOINT_URL_<ID>`, `AWS_ENDPOINT_URL`, the profile's).
    fn configured_endpoint(&self, sdk: &SdkConfig, service_id: &str) -> Option<String> {
        if self.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").map(|v| v.eq_ignore_ascii_case("true")).unwrap_or(false) {
            return None;
        }
        let key = ServiceConfigKey::builder().service_id(service_id).env("AWS_ENDPOINT_URL").profile("endpoint_url").build().ok()?;
        sdk.service_config()?.load_config(key)
    }

    /// Follows the selected profile through `role_arn` + `source_profile`
    /// to where its credentials start, as aws-config does.
    async fn profile_base(&self, files: Option<EnvConfigFiles>) -> Base {
        let Some(files) = files else {
            return Base::Other;
        };
        let selected = self.profile.clone().map(std::borrow::Cow::Owned);
        match aws_config::profile::load(&Fs::real(), &self.loader_env(), &files, selected).await {
            Ok(set) => base_of(&set),
            Err(e) => {
                tracing::debug!(error = %e, "the caller's AWS config files did not parse; aws-config will say why");
                Base::Other
            }
        }
    }
}

fn base_of(set: &ProfileSet) -> Base {
    let mut name = set.selected_profile().to_string();
    let mut visited: Vec<String> = Vec::new();
    let mut hops = Vec::new();
    loop {
        let Some(p) = set.get_profile(&name) else {
            return Base::Other;
        };
        if visited.contains(&name) {
            return Base::Other;
        }
        visited.push(name.clone());
        // After the first profile, static keys end the chain.
        if visited.len() > 1 && p.get("aws_access_key_id").is_some() {
            return Base::Other;
        }
        let role = p.get("role_arn").filter(|_| p.get("web_identity_token_file").is_none());
        if let Some(role_arn) = role {
            let hop = RoleHop {
                role_arn: role_arn.to_string(),
                external_id: p.get("external_id").map(str::to_string),
                session_name: p.get("role_session_name").map(str::to_string),
            };
            match (p.get("source_profile"), p.get("credential_source")) {
                (Some(source), None) if source != name => {
                    hops.push(hop);
                    name = source.to_string();
                    continue;
                }
                (Some(_), None) => hops.push(hop),
                _ => return Base::Other,
            }
        }
        if p.get("credential_source").is_some() || p.get("web_identity_token_file").is_some() || p.get("login_session").is_some() {
            return Base::Other;
        }
        if p.get("sso_session").is_some() || p.get("sso_start_url").is_some() {
            return Base::Sso;
        }
        return match p.get("credential_process") {
            Some(command) => {
                hops.reverse();
                Base::Process { command: command.to_string(), profile: name, hops }
            }
            None => Base::Other,
        };
    }
}

/// Whether the caller's config files may run a `credential_process` (then
/// its PATH and working directory select the client too).
pub(crate) fn may_run_process(files: &ConfigFiles, env: &HashMap<String, String>) -> bool {
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
    let home = get("HOME");
    let paths = [
        get("AWS_CONFIG_FILE").or_else(|| home.as_ref().map(|h| format!("{h}/.aws/config"))),
        get("AWS_SHARED_CREDENTIALS_FILE").or_else(|| home.as_ref().map(|h| format!("{h}/.aws/credentials"))),
    ];
    paths.into_iter().flatten().any(|f| files.read(std::path::Path::new(&f)).is_some_and(|t| t.contains("credential_process")))
}

struct Context {
    profile: String,
    base: Base,
    tried: String,
    env_keys: bool,
}

impl Context {
    fn explain(&self, err: CredentialsError) -> IdentityError {
        if let Some(p) = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<ProcessError>()) {
            return IdentityError::Process(p.to_string());
        }
        if let CredentialsError::CredentialsNotLoaded(_) = err {
            return IdentityError::NotFound { tried: self.tried.clone() };
        }
        let reason = one_line(&aws_smithy_types::error::display::DisplayErrorContext(&err).to_string());
        match &self.base {
            Base::Sso if !self.env_keys => IdentityError::SsoLogin { profile: self.profile.clone(), reason },
            Base::Process { profile, .. } => IdentityError::Failed { source_name: format!("the role chain of profile '{profile}'"), reason },
            _ => IdentityError::Failed { source_name: format!("the AWS credential chain (profile '{}')", self.profile), reason },
        }
    }
}

/// The caller's provider, its errors made into one line each.
struct CallerCredentials {
    inner: SharedCredentialsProvider,
    context: Arc<Context>,
}

impl std::fmt::Debug for CallerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerCredentials").field("profile", &self.context.profile).finish()
    }
}

impl ProvideCredentials for CallerCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(async move {
            let r: provider::Result = self.inner.provide_credentials().await;
            r.map_err(|e| {
                let explained = self.context.explain(e);
                tracing::debug!(error = %explained, "no credentials");
                CredentialsError::provider_error(explained)
            })
        })
    }
}

#[derive(Debug)]
struct NoProvider;

impl ProvideCredentials for NoProvider {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::ready(Err(CredentialsError::not_loaded("no credentials provider")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn base(config: &str, profile: Option<&str>) -> Base {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, config).unwrap();
        let files = EnvConfigFiles::builder().with_file(aws_runtime::env_config::file::EnvConfigFileKind::Config, &path).build();
        let chain = CallerChain::new(Arc::new(HashMap::new()), profile.map(str::to_string), false);
        chain.profile_base(Some(files)).await
    }

    #[tokio::test]
    async fn the_base_of_a_profile_chain() {
        let config = "[profile helper]\ncredential_process = my-helper --x\n\
                      [profile role]\nrole_arn = arn:aws:iam::123456789012:role/r\nsource_profile = helper\nexternal_id = e\n\
                      [profile outer]\nrole_arn = arn:aws:iam::123456789012:role/o\nsource_profile = role\n\
                      [profile keys]\naws_access_key_id = A\naws_secret_access_key = S\ncredential_process = never\n\
                      [profile viakeys]\nrole_arn = arn:aws:iam::123456789012:role/k\nsource_profile = keys\n\
                      [profile sso]\nsso_session = s\nsso_account_id = 1\nsso_role_name = r\n\
                      [profile loop]\nrole_arn = arn:aws:iam::123456789012:role/l\nsource_profile = loop2\n\
                      [profile loop2]\nrole_arn = arn:aws:iam::123456789012:role/l\nsource_profile = loop\n";
        assert_eq!(base(config, Some("helper")).await, Base::Process { command: "my-helper --x".into(), profile: "helper".into(), hops: vec![] });
        let Base::Process { hops, profile, .. } = base(config, Some("outer")).await else { panic!("a process base") };
        assert_eq!(profile, "helper");
        let arns: Vec<_> = hops.iter().map(|h| h.role_arn.rsplit('/').next().unwrap().to_string()).collect();
        assert_eq!(arns, ["r", "o"], "innermost role first");
        assert_eq!(hops[0].external_id.as_deref(), Some("e"));
        assert_eq!(base(config, Some("viakeys")).await, Base::Other, "static keys of a source profile win");
        assert_eq!(base(config, Some("sso")).await, Base::Sso);
        assert_eq!(base(config, Some("loop")).await, Base::Other);
        assert_eq!(base(config, Some("absent")).await, Base::Other);
        assert_eq!(base(config, None).await, Base::Other);
    }

    #[test]
    fn the_urls_profile_hides_static_keys() {
        let mut e = HashMap::new();
        e.insert("AWS_ACCESS_KEY_ID".to_string(), "A".to_string());
        e.insert("AWS_SECRET_ACCESS_KEY".to_string(), "S".to_string());
        let env = Arc::new(e);
        assert!(CallerChain::new(env.clone(), None, false).env_keys_used());
        let chain = CallerChain::new(env, Some("p".into()), true);
        assert!(!chain.env_keys_used());
        assert_eq!(chain.loader_env().get("AWS_ACCESS_KEY_ID").ok(), None);
    }
}
