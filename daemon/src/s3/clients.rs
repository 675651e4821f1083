//! Warm S3 clients, one per distinct caller configuration (profile, region,
//! endpoint, addressing style, credentials). A second `git fetch` from the
//! same shell reuses the client, its connection pool and its cached
//! credentials. Clients are built only from the environment the shim
//! forwarded, never from the daemon's own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::retry::RetryConfig;
use aws_config::stalled_stream_protection::StalledStreamProtectionConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_runtime::env_config::file::{EnvConfigFileKind as ProfileFileKind, EnvConfigFiles as ProfileFiles};
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use dashmap::DashMap;
use sha2::{Digest, Sha256};

use crate::local::files::blocking;
use crate::s3::config_files::ConfigFiles;
use crate::s3::credentials::chain::{may_run_process, CallerChain};
use crate::s3::credentials::messages::expired_token_advice;
use crate::s3::profile::{configured_endpoint, max_attempts, AddressingStyle, Profile};

/// The caller's network settings: proxies (`HTTPS_PROXY`, `HTTP_PROXY`,
/// `ALL_PROXY`, `NO_PROXY`, or their lower-case forms) and the CA bundle
/// (`AWS_CA_BUNDLE`, else the profile's `ca_bundle`). Never the daemon's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct NetworkSettings {
    pub(crate) https_proxy: Option<String>,
    pub(crate) http_proxy: Option<String>,
    pub(crate) no_proxy: Option<String>,
    pub(crate) ca_bundle: Option<String>,
}

impl NetworkSettings {
    fn from_env(env: &HashMap<String, String>, profile: &Profile) -> NetworkSettings {
        let get = |names: &[&str]| names.iter().find_map(|k| env.get(*k).filter(|v| !v.trim().is_empty()).map(|v| v.trim().to_string()));
        let all = get(&["ALL_PROXY", "all_proxy"]);
        let ca_bundle = get(&["AWS_CA_BUNDLE"]).or_else(|| profile.get("ca_bundle").map(str::to_string));
        NetworkSettings {
            https_proxy: get(&["HTTPS_PROXY", "https_proxy"]).or_else(|| all.clone()),
            http_proxy: get(&["HTTP_PROXY", "http_proxy"]).or(all),
            no_proxy: get(&["NO_PROXY", "no_proxy"]),
            ca_bundle,
        }
    }

    /// The proxy for `endpoint` (https unless it says http://), if any.
    pub(crate) fn proxy_for(&self, endpoint: Option<&str>) -> Option<&str> {
        let plain = endpoint.map(|e| e.starts_with("http://")).unwrap_or(false);
        if plain {
            self.http_proxy.as_deref()
        } else {
            self.https_proxy.as_deref()
        }
    }

    /// Which CAs a TLS certificate is checked against, for messages.
    pub(crate) fn trust_description(&self) -> String {
        match &self.ca_bundle {
            Some(b) => format!("the CA bundle {b} (AWS_CA_BUNDLE or the profile's ca_bundle)"),
            None => "the system's trusted CAs (set AWS_CA_BUNDLE or the profile's ca_bundle for a private CA)".to_string(),
        }
    }

    /// An HTTP client with exactly these settings (so the daemon's own
    /// proxy variables never apply).
    /// `ca_pem`: the CA bundle's bytes, read by the caller (`read_ca_bundle`).
    fn http_client(&self, endpoint: Option<&str>, ca_pem: Option<Vec<u8>>) -> aws_sdk_s3::config::SharedHttpClient {
        use aws_smithy_http_client::proxy::ProxyConfig;
        use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
        let proxy = match self.proxy_for(endpoint) {
            Some(url) => {
                let plain = endpoint.map(|e| e.starts_with("http://")).unwrap_or(false);
                let config = if plain { ProxyConfig::http(url) } else { ProxyConfig::https(url) };
                match config {
                    Ok(c) => match &self.no_proxy {
                        Some(rules) => c.no_proxy(rules),
                        None => c,
                    },
                    Err(e) => {
                        tracing::warn!(proxy = url, error = %e, "ignoring an invalid proxy URL");
                        ProxyConfig::disabled()
                    }
                }
            }
            None => ProxyConfig::disabled(),
        };
        let trust = match ca_pem {
            Some(pem) => TrustStore::empty().with_native_roots(false).with_pem_certificate(pem),
            None => TrustStore::default(),
        };
        let context = TlsContext::builder().with_trust_store(trust).build().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "invalid TLS settings; using the defaults");
            TlsContext::default()
        });
        aws_smithy_http_client::Builder::new().build_with_connector_fn(move |settings, components| {
            let mut b = aws_smithy_http_client::Connector::builder()
                .proxy_config(proxy.clone())
                .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
                .tls_context(context.clone());
            b.set_connector_settings(settings.cloned());
            if let Some(c) = components {
                b.set_sleep_impl(c.sleep_impl());
            }
            b.build()
        })
    }
}

/// The CA bundle's bytes when one is set (empty when unreadable: then no
/// certificate verifies). Blocking.
fn read_ca_bundle(ca_bundle: Option<&str>) -> Option<Vec<u8>> {
    let path = ca_bundle?;
    Some(std::fs::read(path).unwrap_or_else(|e| {
        tracing::warn!(path, error = %e, "cannot read the CA bundle; no certificate will verify");
        Vec::new()
    }))
}

/// A URL without its `user:password@`.
pub(crate) fn redact_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, String::new()));
            let host = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => url.rsplit_once('@').map(|(_, h)| h.to_string()).unwrap_or_else(|| url.to_string()),
    }
}

/// How long the daemon waits on S3, from the caller's environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Timeouts {
    /// From sending a request to its answer's headers
    /// (`GIT_S3_READ_TIMEOUT_SECONDS`); a body that delivers nothing for
    /// this long (at most [`BODY_STALL_LIMIT`]) is a stalled download.
    pub(crate) read: Duration,
    /// One whole request, all its attempts (`GIT_S3_OPERATION_TIMEOUT_SECONDS`).
    pub(crate) operation: Option<Duration>,
}

/// The read timeout unless the caller sets one.
pub(crate) const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Attempts per request unless `AWS_MAX_ATTEMPTS` or the profile's
/// `max_attempts` says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 6;
/// A response body that delivers nothing for this long breaks off (the
/// SDK's stalled-stream protection; shorter when the read timeout is).
pub(crate) const BODY_STALL_LIMIT: Duration = Duration::from_secs(20);

impl Timeouts {
    fn from_env(env: &HashMap<String, String>) -> Timeouts {
        let secs = |k: &str| {
            env.get(k)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
        };
        Timeouts { read: secs("GIT_S3_READ_TIMEOUT_SECONDS").unwrap_or(DEFAULT_READ_TIMEOUT), operation: secs("GIT_S3_OPERATION_TIMEOUT_SECONDS") }
    }

    /// The stall limit of a response body.
    pub(crate) fn body_stall(&self) -> Duration {
        self.read.min(BODY_STALL_LIMIT)
    }
}

/// Everything that selects a client, derived from the caller's environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientSpec {
    pub(crate) profile: Option<String>,
    pub(crate) region: Option<String>,
    pub(crate) endpoint: Option<String>,
    /// Path-style addressing (`host/bucket/key`), else virtual-hosted
    /// (`bucket.host/key`): see [`path_style`].
    pub(crate) path_style: bool,
    /// The profile's `s3 = use_accelerate_endpoint` (AWS endpoints only).
    pub(crate) accelerate: bool,
    /// The profile's `s3 = use_dualstack_endpoint` (AWS endpoints only).
    pub(crate) dualstack: bool,
    pub(crate) network: NetworkSettings,
    /// Attempts per request (the SDK's standard retry).
    pub(crate) max_attempts: u32,
    pub(crate) timeouts: Timeouts,
    /// Hash of every credential-bearing input (never the secrets themselves).
    credentials_fingerprint: String,
    /// The caller's whole environment, for the credential chain. Not part
    /// of the key (the fingerprint stands for what selects credentials).
    caller: CallerEnv,
}

/// The caller's environment inside a [`ClientSpec`]: equal for every
/// caller, so it never keys a client (and no secret sits in a key).
#[derive(Clone, Default)]
pub(crate) struct CallerEnv(Arc<HashMap<String, String>>);

impl PartialEq for CallerEnv {
    fn eq(&self, _: &CallerEnv) -> bool {
        true
    }
}

impl Eq for CallerEnv {}

impl std::hash::Hash for CallerEnv {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl std::fmt::Debug for CallerEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CallerEnv({} variables)", self.0.len())
    }
}

impl ClientSpec {
    /// `url_profile` is the `profile@` of the remote URL; it wins over AWS_PROFILE.
    pub fn from_env(env: &HashMap<String, String>, url_profile: Option<&str>) -> ClientSpec {
        ClientSpec::from_env_with(&ConfigFiles::default(), env, url_profile)
    }

    /// `from_env`, with the config files read through `files` (unchanged
    /// files are not read again). Blocking: it looks at the files.
    pub(crate) fn from_env_with(files: &ConfigFiles, env: &HashMap<String, String>, url_profile: Option<&str>) -> ClientSpec {
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let profile = url_profile.map(str::to_string).or_else(|| get("AWS_PROFILE"));
        let region = get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION"));
        let file_profile = Profile::load(files, env, profile.as_deref());
        let endpoint = configured_endpoint(env, &file_profile);
        let forced = matches!(get("GIT_REMOTE_S3_PATH_STYLE").as_deref(), Some("1" | "true" | "yes"));
        let path_style = forced || path_style(endpoint.as_deref(), file_profile.addressing_style());
        let on_aws = endpoint.as_deref().map(is_aws_endpoint).unwrap_or(true);
        let accelerate = on_aws && !path_style && file_profile.s3_flag("use_accelerate_endpoint");
        let dualstack = on_aws && file_profile.s3_flag("use_dualstack_endpoint");
        // What selects credentials: AWS_* and HOME; with a credential_process
        // in the caller's config, also the PATH it is found on and the
        // directory it runs in (the shim sets PWD to its own).
        let process = may_run_process(files, env);
        let mut aws_env: Vec<(&String, &String)> =
            env.iter().filter(|(k, _)| k.starts_with("AWS_") || k.as_str() == "HOME" || (process && matches!(k.as_str(), "PATH" | "PWD"))).collect();
        aws_env.sort();
        let mut h = Sha256::new();
        for (k, v) in aws_env {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        h.update(profile.as_deref().unwrap_or("").as_bytes());
        let credentials_fingerprint = hex::encode(&h.finalize()[..8]);
        let network = NetworkSettings::from_env(env, &file_profile);
        let max_attempts = max_attempts(env, &file_profile, DEFAULT_MAX_ATTEMPTS);
        let timeouts = Timeouts::from_env(env);
        let caller = CallerEnv(Arc::new(env.clone()));
        ClientSpec { profile, region, endpoint, path_style, accelerate, dualstack, network, max_attempts, timeouts, credentials_fingerprint, caller }
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.caller.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The caller's credential chain.
    fn credential_chain(&self) -> CallerChain {
        // The URL's profile wins over keys in the environment.
        let url_profile_wins = self.profile.is_some() && self.get("AWS_PROFILE") != self.profile.as_deref();
        CallerChain::new(self.caller.0.clone(), self.profile.clone(), url_profile_wins)
    }

    /// What to renew when S3 answers `ExpiredToken` (one line).
    pub(crate) fn expired_token_advice(&self) -> String {
        expired_token_advice(self.credential_chain().env_keys_used(), self.profile.as_deref())
    }

    /// A description safe to show (no secrets).
    pub(crate) fn describe(&self) -> String {
        format!(
            "profile={} region={} endpoint={} path-style={}{}{} proxy={} ca-bundle={} attempts={} read-timeout={:?} creds={}",
            self.profile.as_deref().unwrap_or("default"),
            self.region.as_deref().unwrap_or("auto"),
            self.endpoint.as_deref().unwrap_or("aws"),
            self.path_style,
            if self.accelerate { " accelerate" } else { "" },
            if self.dualstack { " dualstack" } else { "" },
            self.network.proxy_for(self.endpoint.as_deref()).map(redact_userinfo).unwrap_or_else(|| "none".to_string()),
            self.network.ca_bundle.as_deref().unwrap_or("system"),
            self.max_attempts,
            self.timeouts.read,
            self.credentials_fingerprint
        )
    }

    /// True for S3-compatible stores (MinIO, R2, moto...): they reject the
    /// SDK's newer default checksums, so send them only when required.
    fn is_third_party_endpoint(&self) -> bool {
        self.endpoint.as_deref().map(|e| !is_aws_endpoint(e)).unwrap_or(false)
    }

    /// The host name a virtual-hosted request for `bucket` goes to, when
    /// this client addresses buckets that way on a custom endpoint (for the
    /// message when that name does not resolve).
    /// What a client is built from on disk, looked at on a blocking thread:
    /// the CA bundle's bytes, and the caller's profile files as they see
    /// them (their HOME, their overrides), only those that exist (a named
    /// but missing file fails the whole chain).
    async fn local_files(&self) -> (Option<Vec<u8>>, Option<ProfileFiles>) {
        let home = self.get("HOME").map(std::path::PathBuf::from);
        let config_file = self.get("AWS_CONFIG_FILE").map(std::path::PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(".aws/config")));
        let creds_file =
            self.get("AWS_SHARED_CREDENTIALS_FILE").map(std::path::PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
        let ca = self.network.ca_bundle.clone();
        let looked = blocking(move || {
            let existing: Vec<_> = [(ProfileFileKind::Config, config_file), (ProfileFileKind::Credentials, creds_file)]
                .into_iter()
                .filter_map(|(kind, f)| f.filter(|p| p.is_file()).map(|p| (kind, p)))
                .collect();
            Ok((read_ca_bundle(ca.as_deref()), existing))
        })
        .await;
        // A blocking thread that failed: no profile files, and a set CA bundle trusts nothing.
        let (ca_pem, existing) = looked.unwrap_or_else(|_| (self.network.ca_bundle.as_ref().map(|_| Vec::new()), Vec::new()));
        let profile_files = (!existing.is_empty()).then(|| {
            let mut files = ProfileFiles::builder();
            for (kind, f) in existing {
                files = files.with_file(kind, f);
            }
            files.build()
        });
        (ca_pem, profile_files)
    }

    pub(crate) fn virtual_host_for(&self, bucket: &str) -> Option<String> {
        let endpoint = self.endpoint.as_deref()?;
        (!self.path_style).then(|| format!("{bucket}.{}", host_of(endpoint)))
    }

    async fn build(&self) -> aws_sdk_s3::Client {
        let (sdk, credentials) = self.load(self.endpoint.as_deref()).await;
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(self.path_style)
            .accelerate(self.accelerate)
            .use_dual_stack(self.dualstack)
            .credentials_provider(credentials);
        if sdk.region().is_none() {
            conf = conf.region(Region::new("us-east-1"));
        }
        if self.endpoint.is_none() {
            // Our resolution (s3/profile.rs, with the caller's environment)
            // is the one that counts: the SDK must not add a profile's
            // endpoint that the caller's AWS_IGNORE_CONFIGURED_ENDPOINT_URLS
            // turned off.
            conf.set_endpoint_url(None);
        }
        if self.is_third_party_endpoint() {
            conf = conf
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        aws_sdk_s3::Client::from_conf(conf.build())
    }

    /// A KMS client with the caller's configuration (credentials chain,
    /// profile, region, network), at `AWS_ENDPOINT_URL_KMS` or
    /// `AWS_ENDPOINT_URL` when the caller sets one (encrypted remotes'
    /// KMS-wrapped keyrings, `storage/crypt/kms.rs`, which keeps it warm
    /// by [`ClientSpec::kms_cache_key`]).
    pub(crate) async fn kms_client(&self) -> aws_sdk_kms::Client {
        let endpoint = self.kms_endpoint();
        let (sdk, credentials) = self.load(endpoint.as_deref()).await;
        let mut conf = aws_sdk_kms::config::Builder::from(&sdk).credentials_provider(credentials);
        if sdk.region().is_none() {
            conf = conf.region(aws_sdk_kms::config::Region::new("us-east-1"));
        }
        conf.set_endpoint_url(endpoint);
        aws_sdk_kms::Client::from_conf(conf.build())
    }

    /// The caller's KMS endpoint, if they set one.
    fn kms_endpoint(&self) -> Option<String> {
        self.get("AWS_ENDPOINT_URL_KMS").or_else(|| self.get("AWS_ENDPOINT_URL")).map(str::to_string)
    }

    /// What selects a KMS client, as a key of the daemon's memory: every
    /// field that makes two specs equal (as the S3 clients' map compares
    /// them: the credentials' fingerprint, never a secret), and the KMS
    /// endpoint. Two callers share a KMS client only where they would
    /// share an S3 client.
    pub(crate) fn kms_cache_key(&self) -> String {
        // Not the caller's whole environment (it keys nothing, as in `Eq`).
        let keyed = ClientSpec { caller: CallerEnv::default(), ..self.clone() };
        format!("{keyed:?} kms={:?}", self.kms_endpoint())
    }

    /// The SDK configuration and credentials of the caller (`endpoint`: the service's).
    async fn load(&self, endpoint: Option<&str>) -> (aws_types::SdkConfig, aws_credential_types::provider::SharedCredentialsProvider) {
        let (ca_pem, profile_files) = self.local_files().await;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(self.network.http_client(self.endpoint.as_deref(), ca_pem))
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(self.max_attempts)
                    .with_initial_backoff(Duration::from_millis(100))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .timeout_config({
                let mut t = TimeoutConfig::builder().connect_timeout(Duration::from_secs(10)).read_timeout(self.timeouts.read);
                t.set_operation_timeout(self.timeouts.operation);
                t.build()
            })
            .stalled_stream_protection(StalledStreamProtectionConfig::enabled().grace_period(self.timeouts.body_stall()).build());
        if let Some(files) = profile_files.clone() {
            loader = loader.profile_files(files);
        }
        if let Some(p) = &self.profile {
            loader = loader.profile_name(p);
        }
        let region = self.region.clone().or_else(|| {
            // S3-compatible stores do not care; skip the IMDS lookup.
            (endpoint.is_some() || self.get("AWS_EC2_METADATA_DISABLED") == Some("true")).then(|| "us-east-1".to_string())
        });
        if let Some(r) = region {
            loader = loader.region(Region::new(r));
        }
        if let Some(e) = endpoint {
            loader = loader.endpoint_url(e);
        }
        // The whole default chain (and region and profile resolution) reads
        // the caller's environment, never the daemon's.
        let chain = self.credential_chain();
        loader = loader.env(chain.loader_env());
        let sdk = loader.load().await;
        let credentials = chain.provider(&sdk, profile_files).await;
        (sdk, credentials)
    }
}

fn host_of(endpoint: &str) -> &str {
    let rest = endpoint.split_once("://").map(|(_, r)| r).unwrap_or(endpoint);
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// Amazon S3's own endpoints (`*.amazonaws.com`, `*.amazonaws.com.cn`).
fn is_aws_endpoint(endpoint: &str) -> bool {
    let host = host_of(endpoint).trim_end_matches('.').to_ascii_lowercase();
    host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn")
}

/// Path-style addressing as boto3 (and so git-remote-s3 0.4.2) chooses it:
/// the profile's `addressing_style` when it says `path` or `virtual`, else
/// virtual-hosted on Amazon S3 (no endpoint, or `*.amazonaws.com`) and path
/// style on any other endpoint (MinIO, Ceph RGW, … answer virtual-hosted
/// requests only when set up for them). An IP address or `localhost`
/// cannot carry a bucket name: always path style.
pub(crate) fn path_style(endpoint: Option<&str>, style: AddressingStyle) -> bool {
    if endpoint.map(endpoint_needs_path_style).unwrap_or(false) {
        return true;
    }
    match style {
        AddressingStyle::Path => true,
        AddressingStyle::Virtual => false,
        AddressingStyle::Auto => endpoint.map(|e| !is_aws_endpoint(e)).unwrap_or(false),
    }
}

/// Path-style addressing is needed when the endpoint host is an IP address or
/// `localhost` (no virtual-hosted bucket names possible).
pub(crate) fn endpoint_needs_path_style(endpoint: &str) -> bool {
    let host = host_of(endpoint);
    host == "localhost" || host.ends_with(".localhost") || host.parse::<std::net::IpAddr>().is_ok()
}

pub struct WarmClient {
    pub client: aws_sdk_s3::Client,
    pub(crate) spec: ClientSpec,
    pub(crate) created: Instant,
    pub(crate) uses: AtomicU64,
}

/// The daemon's pool of warm clients, and where each bucket lives.
#[derive(Default)]
pub struct S3Clients {
    map: DashMap<ClientSpec, Arc<WarmClient>>,
    build_lock: tokio::sync::Mutex<()>,
    /// (endpoint, bucket) → the region S3 said the bucket is in.
    bucket_regions: DashMap<(String, String), String>,
}

fn region_key(spec: &ClientSpec, bucket: &str) -> (String, String) {
    (spec.endpoint.clone().unwrap_or_default(), bucket.to_string())
}

impl S3Clients {
    /// The spec for `bucket`: `spec` in the bucket's region when S3 told us
    /// where the bucket lives (whatever AWS_REGION says).
    pub(crate) fn spec_for_bucket(&self, spec: ClientSpec, bucket: &str) -> ClientSpec {
        match self.bucket_regions.get(&region_key(&spec, bucket)) {
            Some(r) if spec.region.as_deref() != Some(r.as_str()) => ClientSpec { region: Some(r.clone()), ..spec },
            _ => spec,
        }
    }

    /// Remembers that `bucket` lives in `region` and returns the client for it.
    pub(crate) async fn client_in_region(&self, spec: &ClientSpec, bucket: &str, region: &str) -> aws_sdk_s3::Client {
        self.bucket_regions.insert(region_key(spec, bucket), region.to_string());
        let moved = ClientSpec { region: Some(region.to_string()), ..spec.clone() };
        self.get(moved).await.client.clone()
    }

    pub async fn get(&self, spec: ClientSpec) -> Arc<WarmClient> {
        if let Some(c) = self.map.get(&spec) {
            c.uses.fetch_add(1, Ordering::Relaxed);
            return c.clone();
        }
        // Serialize builds so concurrent sessions do not resolve twice.
        let _guard = self.build_lock.lock().await;
        if let Some(c) = self.map.get(&spec) {
            c.uses.fetch_add(1, Ordering::Relaxed);
            return c.clone();
        }
        tracing::debug!(client = %spec.describe(), "building S3 client");
        let client = spec.build().await;
        let warm = Arc::new(WarmClient { client, spec: spec.clone(), created: Instant::now(), uses: AtomicU64::new(1) });
        self.map.insert(spec, warm.clone());
        warm
    }

    pub(crate) fn snapshot(&self) -> Vec<(String, u64, u64)> {
        self.map.iter().map(|e| (e.spec.describe(), e.uses.load(Ordering::Relaxed), e.created.elapsed().as_secs())).collect()
    }
}

/// Moves one bucket's store to the client for the region S3 names.
pub struct BucketRegions {
    pub clients: Arc<S3Clients>,
    pub spec: ClientSpec,
    pub bucket: String,
}

impl crate::s3::store::RegionSwitch for BucketRegions {
    fn client_for_region<'a>(&'a self, region: &'a str) -> futures::future::BoxFuture<'a, aws_sdk_s3::Client> {
        Box::pin(self.clients.client_in_region(&self.spec, &self.bucket, region))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_style_for_ip_and_localhost() {
        assert!(endpoint_needs_path_style("http://127.0.0.1:9000"));
        assert!(endpoint_needs_path_style("http://localhost:9000/"));
        assert!(endpoint_needs_path_style("http://[::1]:9000"));
        assert!(!endpoint_needs_path_style("https://s3.eu-west-1.amazonaws.com"));
        assert!(!endpoint_needs_path_style("https://minio.example.com"));
    }

    #[test]
    fn addressing_as_boto3_chooses_it() {
        use AddressingStyle::*;
        assert!(path_style(Some("http://minio.internal:9000"), Auto), "a custom endpoint: path style");
        assert!(path_style(Some("https://storage.example.com"), Auto));
        assert!(!path_style(Some("https://minio.internal"), Virtual), "unless told otherwise");
        assert!(path_style(Some("http://127.0.0.1:9000"), Virtual), "an IP cannot carry a bucket name");
        assert!(!path_style(None, Auto), "Amazon S3: virtual-hosted");
        assert!(!path_style(Some("https://s3.eu-west-1.amazonaws.com"), Auto));
        assert!(!path_style(Some("https://s3.cn-north-1.amazonaws.com.cn"), Auto));
        assert!(path_style(Some("https://s3.eu-west-1.amazonaws.com"), Path));
        assert!(path_style(None, Path));
    }

    #[test]
    fn a_callers_unchanged_config_file_is_read_once_for_every_session() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".aws")).unwrap();
        let config = dir.path().join(".aws/config");
        std::fs::write(&config, "[profile a]\nendpoint_url = http://one.test:9000\n").unwrap();
        let mut e = HashMap::new();
        e.insert("HOME".to_string(), dir.path().display().to_string());
        let files = ConfigFiles::default();
        for _ in 0..3 {
            assert_eq!(ClientSpec::from_env_with(&files, &e, Some("a")).endpoint.as_deref(), Some("http://one.test:9000"));
        }
        assert_eq!(files.reads(), 1, "the profile and the credential_process check share one read, sessions none");
        // A changed file is read again (another length: no clock involved).
        std::fs::write(&config, "[profile a]\nendpoint_url = http://second.test:9000\n").unwrap();
        assert_eq!(ClientSpec::from_env_with(&files, &e, Some("a")).endpoint.as_deref(), Some("http://second.test:9000"));
        assert_eq!(files.reads(), 2);
    }

    #[test]
    fn the_profiles_s3_section_selects_addressing_and_endpoints() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".aws")).unwrap();
        std::fs::write(
            dir.path().join(".aws/config"),
            "[profile named]\nendpoint_url = http://s3.lab.test:9000\n\
             [profile virt]\nendpoint_url = http://s3.lab.test:9000\ns3 =\n  addressing_style = virtual\n\
             [profile fast]\nregion = eu-west-1\ns3 =\n  use_accelerate_endpoint = true\n  use_dualstack_endpoint = true\n\
             [profile aws-path]\ns3 =\n  addressing_style = path\n",
        )
        .unwrap();
        let mut e = HashMap::new();
        e.insert("HOME".to_string(), dir.path().display().to_string());
        let named = ClientSpec::from_env(&e, Some("named"));
        assert!(named.path_style, "a named host: path style (the regression against 0.4.2)");
        assert_eq!(named.virtual_host_for("b"), None);
        let virt = ClientSpec::from_env(&e, Some("virt"));
        assert!(!virt.path_style);
        assert_eq!(virt.virtual_host_for("b").as_deref(), Some("b.s3.lab.test"));
        let fast = ClientSpec::from_env(&e, Some("fast"));
        assert!(!fast.path_style && fast.accelerate && fast.dualstack, "{fast:?}");
        assert!(ClientSpec::from_env(&e, Some("aws-path")).path_style);
        e.insert("GIT_REMOTE_S3_PATH_STYLE".to_string(), "1".to_string());
        let forced = ClientSpec::from_env(&e, Some("virt"));
        assert!(forced.path_style, "GIT_REMOTE_S3_PATH_STYLE wins");
        e.insert("AWS_ENDPOINT_URL".to_string(), "http://minio:9000".to_string());
        let custom = ClientSpec::from_env(&e, Some("fast"));
        assert!(!custom.accelerate && !custom.dualstack, "accelerate and dual-stack are Amazon S3's");
    }

    #[tokio::test]
    async fn accelerate_and_dualstack_reach_the_sdk() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".aws")).unwrap();
        std::fs::write(
            dir.path().join(".aws/config"),
            "[default]\nregion = eu-west-1\ns3 =\n  use_accelerate_endpoint = true\n  use_dualstack_endpoint = true\n",
        )
        .unwrap();
        let mut e = HashMap::new();
        e.insert("HOME".to_string(), dir.path().display().to_string());
        e.insert("AWS_ACCESS_KEY_ID".to_string(), "k".to_string());
        e.insert("AWS_SECRET_ACCESS_KEY".to_string(), "s".to_string());
        let client = ClientSpec::from_env(&e, None).build().await;
        assert_eq!(first_request_uri(&client, "bkt").await, "https://bkt.s3-accelerate.dualstack.amazonaws.com/k");
        e.insert("AWS_ENDPOINT_URL".to_string(), "http://s3.lab.test:9000".to_string());
        let client = ClientSpec::from_env(&e, None).build().await;
        assert_eq!(first_request_uri(&client, "bkt").await, "http://s3.lab.test:9000/bkt/k", "a named host: path style");
    }

    /// The URI of the request `client` would send for a HeadObject of
    /// `bucket/k` (stopped before it leaves).
    async fn first_request_uri(client: &aws_sdk_s3::Client, bucket: &str) -> String {
        use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
        use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
        #[derive(Debug, Clone, Default)]
        struct Capture(Arc<std::sync::Mutex<String>>);
        impl Intercept for Capture {
            fn name(&self) -> &'static str {
                "capture"
            }
            fn read_before_transmit(
                &self,
                ctx: &BeforeTransmitInterceptorContextRef<'_>,
                _: &RuntimeComponents,
                _: &mut ConfigBag,
            ) -> Result<(), aws_sdk_s3::error::BoxError> {
                *self.0.lock().unwrap() = ctx.request().uri().to_string();
                Err("captured".into())
            }
        }
        let capture = Capture::default();
        let conf = client.config().to_builder().interceptor(capture.clone()).build();
        let _ = aws_sdk_s3::Client::from_conf(conf).head_object().bucket(bucket).key("k").send().await;
        let uri = capture.0.lock().unwrap().clone();
        uri
    }

    #[test]
    fn different_credentials_give_different_specs() {
        let mut a = HashMap::new();
        a.insert("AWS_ACCESS_KEY_ID".to_string(), "A".to_string());
        let mut b = a.clone();
        b.insert("AWS_ACCESS_KEY_ID".to_string(), "B".to_string());
        assert_ne!(ClientSpec::from_env(&a, None), ClientSpec::from_env(&b, None));
        assert_eq!(ClientSpec::from_env(&a, None), ClientSpec::from_env(&a.clone(), None));
        assert_eq!(ClientSpec::from_env(&a, Some("dev")).profile.as_deref(), Some("dev"));
        assert!(!ClientSpec::from_env(&a, None).describe().contains('B'));
    }

    #[tokio::test]
    async fn a_bucket_region_once_learned_selects_the_client() {
        let mut e = HashMap::new();
        e.insert("AWS_REGION".to_string(), "us-east-1".to_string());
        e.insert("AWS_ENDPOINT_URL".to_string(), "http://127.0.0.1:1".to_string());
        let clients = S3Clients::default();
        let spec = ClientSpec::from_env(&e, None);
        assert_eq!(clients.spec_for_bucket(spec.clone(), "b"), spec);
        let c = clients.client_in_region(&spec, "b", "eu-west-1").await;
        assert_eq!(c.config().region().map(|r| r.as_ref()), Some("eu-west-1"));
        assert_eq!(clients.spec_for_bucket(spec.clone(), "b").region.as_deref(), Some("eu-west-1"));
        assert_eq!(clients.spec_for_bucket(spec.clone(), "other"), spec, "per bucket");
        let mut elsewhere = e.clone();
        elsewhere.insert("AWS_ENDPOINT_URL".to_string(), "http://127.0.0.1:2".to_string());
        let spec2 = ClientSpec::from_env(&elsewhere, None);
        assert_eq!(clients.spec_for_bucket(spec2.clone(), "b"), spec2, "per endpoint");
    }

    #[test]
    fn network_settings_come_from_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".aws")).unwrap();
        std::fs::write(dir.path().join(".aws/config"), "[default]\nregion = us-east-1\n[profile corp]\nca_bundle = /etc/corp-ca.pem\n").unwrap();
        let mut e = HashMap::new();
        e.insert("HOME".to_string(), dir.path().display().to_string());
        let none = ClientSpec::from_env(&e, None);
        assert_eq!(none.network, NetworkSettings::default());
        assert_eq!(ClientSpec::from_env(&e, Some("corp")).network.ca_bundle.as_deref(), Some("/etc/corp-ca.pem"));
        e.insert("AWS_CA_BUNDLE".to_string(), "/tmp/ca.pem".to_string());
        assert_eq!(ClientSpec::from_env(&e, Some("corp")).network.ca_bundle.as_deref(), Some("/tmp/ca.pem"), "the variable wins");
        e.insert("https_proxy".to_string(), "http://u:secret@proxy:3128".to_string());
        e.insert("NO_PROXY".to_string(), "localhost".to_string());
        let with_proxy = ClientSpec::from_env(&e, None);
        assert_ne!(with_proxy, none, "part of the client key");
        assert_eq!(with_proxy.network.proxy_for(None), Some("http://u:secret@proxy:3128"));
        assert_eq!(with_proxy.network.proxy_for(Some("http://127.0.0.1:9000")), None);
        assert!(!with_proxy.describe().contains("secret"), "{}", with_proxy.describe());
        assert_eq!(redact_userinfo("http://u:p@h:1/x"), "http://h:1/x");
        e.insert("ALL_PROXY".to_string(), "http://all:1".to_string());
        assert_eq!(ClientSpec::from_env(&e, None).network.proxy_for(Some("http://x")), Some("http://all:1"));
    }

    #[test]
    fn timeouts_and_attempts_come_from_the_caller() {
        let mut e = HashMap::new();
        let spec = ClientSpec::from_env(&e, None);
        assert_eq!((spec.max_attempts, spec.timeouts.read, spec.timeouts.operation), (DEFAULT_MAX_ATTEMPTS, DEFAULT_READ_TIMEOUT, None));
        assert_eq!(spec.timeouts.body_stall(), BODY_STALL_LIMIT);
        e.insert("GIT_S3_READ_TIMEOUT_SECONDS".to_string(), "2.5".to_string());
        e.insert("GIT_S3_OPERATION_TIMEOUT_SECONDS".to_string(), "30".to_string());
        e.insert("AWS_MAX_ATTEMPTS".to_string(), "3".to_string());
        let spec2 = ClientSpec::from_env(&e, None);
        assert_eq!(spec2.timeouts.read, Duration::from_millis(2500));
        assert_eq!(spec2.timeouts.body_stall(), Duration::from_millis(2500));
        assert_eq!(spec2.timeouts.operation, Some(Duration::from_secs(30)));
        assert_eq!(spec2.max_attempts, 3);
        assert_ne!(spec, spec2, "part of the client key");
        e.insert("GIT_S3_READ_TIMEOUT_SECONDS".to_string(), "-1".to_string());
        assert_eq!(ClientSpec::from_env(&e, None).timeouts.read, DEFAULT_READ_TIMEOUT, "nonsense is ignored");
    }

    #[test]
    fn a_profile_endpoint_selects_path_style_and_the_client() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".aws")).unwrap();
        std::fs::write(
            dir.path().join(".aws/config"),
            "[profile lab]\nservices = lab\n[services lab]\ns3 =\n  endpoint_url = http://127.0.0.1:9000\n[profile prod]\nregion = eu-west-1\n",
        )
        .unwrap();
        let mut e = HashMap::new();
        e.insert("HOME".to_string(), dir.path().display().to_string());
        let lab = ClientSpec::from_env(&e, Some("lab"));
        assert_eq!(lab.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(lab.path_style);
        let prod = ClientSpec::from_env(&e, Some("prod"));
        assert_eq!(prod.endpoint, None);
        e.insert("AWS_ENDPOINT_URL".to_string(), "http://127.0.0.1:1".to_string());
        assert_eq!(ClientSpec::from_env(&e, Some("lab")).endpoint.as_deref(), Some("http://127.0.0.1:1"), "the environment wins");
    }

    #[test]
    fn forced_path_style() {
        let mut e = HashMap::new();
        e.insert("GIT_REMOTE_S3_PATH_STYLE".to_string(), "1".to_string());
        assert!(ClientSpec::from_env(&e, None).path_style);
        e.insert("AWS_ENDPOINT_URL".to_string(), "http://127.0.0.1:1".to_string());
        e.remove("GIT_REMOTE_S3_PATH_STYLE");
        assert!(ClientSpec::from_env(&e, None).path_style);
    }
}
