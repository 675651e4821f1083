//! The caller's shared AWS config file, read for what selects a client
//! before the SDK loads it: the profile's settings, its `services` section,
//! and the settings of the AWS shared-config standard that the daemon must
//! resolve itself because they come from the caller (endpoint, attempts).
//! The file is parsed by aws-runtime's parser, the SDK's own.

use crate::s3::config_files::ConfigFiles;
use std::collections::HashMap;

use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use aws_runtime::env_config::property::PropertiesKey;
use aws_runtime::env_config::section::EnvConfigSections;
use aws_types::os_shim_internal::{Env, Fs};

/// A profile of the caller's config file: its settings and, when it names a
/// `services` section, that section's settings of the `s3` service.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Profile {
    settings: Option<aws_runtime::env_config::section::Profile>,
    pub(crate) s3_service: HashMap<String, String>,
    /// The profile's own nested `s3 =` settings (`addressing_style`,
    /// `use_accelerate_endpoint`, `use_dualstack_endpoint`, …), as boto3
    /// reads them.
    pub(crate) s3: HashMap<String, String>,
}

/// The config file the caller's environment names: `AWS_CONFIG_FILE`, else
/// `$HOME/.aws/config`.
fn config_file_path(env: &HashMap<String, String>) -> Option<String> {
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
    get("AWS_CONFIG_FILE").or_else(|| get("HOME").map(|h| format!("{h}/.aws/config")))
}

impl Profile {
    /// The profile `name` (or `AWS_PROFILE`, or `default`) of the config file
    /// the caller's environment names (`AWS_CONFIG_FILE`, else
    /// `$HOME/.aws/config`); empty when there is none.
    pub(crate) fn load(files: &ConfigFiles, env: &HashMap<String, String>, name: Option<&str>) -> Profile {
        let Some(text) = config_file_path(env).and_then(|file| files.read(std::path::Path::new(&file))) else {
            return Profile::default();
        };
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let name = name.map(str::to_string).or_else(|| get("AWS_PROFILE")).unwrap_or_else(|| "default".to_string());
        Profile::parse(&text, &name)
    }

    /// `name` from the text of a config file (`[default]`, `[profile x]`,
    /// `[services y]` with indented sub-settings under `s3 =`), as
    /// aws-runtime parses it.
    pub(crate) fn parse(text: &str, name: &str) -> Profile {
        let Some(sections) = parse_sections(text) else { return Profile::default() };
        let Some(profile) = sections.get_profile(name) else { return Profile::default() };
        let s3 = profile.get("s3").map(sub_properties).unwrap_or_default();
        let s3_service = profile
            .get("services")
            .map(|svc| {
                let endpoint = PropertiesKey::builder()
                    .section_key("services")
                    .section_name(svc.trim())
                    .property_name("s3")
                    .sub_property_name("endpoint_url")
                    .build()
                    .ok()
                    .and_then(|key| sections.other_sections().get(&key).map(|v| v.to_string()));
                endpoint.into_iter().map(|v| ("endpoint_url".to_string(), v)).collect()
            })
            .unwrap_or_default();
        Profile { settings: Some(profile.clone()), s3_service, s3 }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.settings.as_ref()?.get(key).filter(|v| !v.is_empty())
    }

    /// A setting of the profile's nested `s3 =` section.
    pub(crate) fn s3_setting(&self, key: &str) -> Option<&str> {
        self.s3.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
    }
}

/// The sections of a config file's text, by aws-runtime's parser (given the
/// text as an in-memory file: the read is `ConfigFiles::read`, cached by mtime). None when
/// the file does not parse.
fn parse_sections(text: &str) -> Option<EnvConfigSections> {
    const PATH: &str = "/config";
    let files = EnvConfigFiles::builder().include_default_config_file(false).with_file(EnvConfigFileKind::Config, PATH).build();
    let fs = Fs::from_map(HashMap::from([(PATH.to_string(), text.as_bytes().to_vec())]));
    // An in-memory file system: the future is ready at once, nothing blocks.
    let source = futures::executor::block_on(aws_runtime::env_config::source::load(&Env::from_slice(&[]), &fs, &files));
    match source.map(EnvConfigSections::parse) {
        Ok(Ok(sections)) => Some(sections),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "the caller's AWS config file did not parse");
            None
        }
        Err(e) => {
            tracing::debug!(error = %e, "the caller's AWS config file was not read");
            None
        }
    }
}

/// The `key = value` lines of a property with sub-properties (`s3 =` then
/// indented lines), as aws-runtime keeps its value.
fn sub_properties(value: &str) -> HashMap<String, String> {
    value
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// How bucket names go into S3 requests (the profile's `s3 =
/// addressing_style`, as in boto3 and the AWS CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) enum AddressingStyle {
    /// Virtual-hosted on AWS endpoints, path style on custom ones.
    #[default]
    Auto,
    /// `https://host/bucket/key`.
    Path,
    /// `https://bucket.host/key`.
    Virtual,
}

impl Profile {
    /// The profile's `addressing_style` (`auto` when absent or unknown).
    pub(crate) fn addressing_style(&self) -> AddressingStyle {
        match self.s3_setting("addressing_style").map(str::to_ascii_lowercase).as_deref() {
            Some("path") => AddressingStyle::Path,
            Some("virtual") => AddressingStyle::Virtual,
            _ => AddressingStyle::Auto,
        }
    }

    /// A true/false setting of the profile's `s3 =` section.
    pub(crate) fn s3_flag(&self, key: &str) -> bool {
        is_true(self.s3_setting(key))
    }
}

fn is_true(v: Option<&str>) -> bool {
    v.map(|v| v.trim().eq_ignore_ascii_case("true")).unwrap_or(false)
}

/// The S3 endpoint the caller configured, in the order of the AWS SDKs'
/// shared-config standard ("Service-specific endpoints"):
/// `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, the profile's `services`
/// section (`s3 = endpoint_url = …`), the profile's `endpoint_url`. None when
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` or the profile's
/// `ignore_configured_endpoint_urls` is true.
pub(crate) fn configured_endpoint(env: &HashMap<String, String>, profile: &Profile) -> Option<String> {
    let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty()).map(str::to_string);
    let ignore = match get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS") {
        Some(v) => is_true(Some(&v)),
        None => is_true(profile.get("ignore_configured_endpoint_urls")),
    };
    if ignore {
        return None;
    }
    get("AWS_ENDPOINT_URL_S3")
        .or_else(|| get("AWS_ENDPOINT_URL"))
        .or_else(|| profile.s3_service.get("endpoint_url").filter(|v| !v.is_empty()).cloned())
        .or_else(|| profile.get("endpoint_url").map(str::to_string))
}

/// Attempts per request: `AWS_MAX_ATTEMPTS`, else the profile's
/// `max_attempts`, else `default` (at least 1, at most 20).
pub(crate) fn max_attempts(env: &HashMap<String, String>, profile: &Profile, default: u32) -> u32 {
    env.get("AWS_MAX_ATTEMPTS")
        .and_then(|v| v.trim().parse::<u32>().ok())
        .or_else(|| profile.get("max_attempts").and_then(|v| v.trim().parse().ok()))
        .unwrap_or(default)
        .clamp(1, 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
[default]
region = us-east-1
endpoint_url = http://default:1

[profile minio]
endpoint_url = http://minio:9000   # a comment
services = local-s3
max_attempts = 3

[services local-s3]
s3 =
  endpoint_url = http://minio-s3:9000
dynamodb =
  endpoint_url = http://dynamo:8000

[profile aws]
region = eu-west-1

[profile ignored]
endpoint_url = http://ignored:1
ignore_configured_endpoint_urls = true

[profile styled]
region = eu-west-1
s3 =
  addressing_style = path
  use_accelerate_endpoint = true
  use_dualstack_endpoint = TRUE
output = json

[profile virtual]
s3 =
	addressing_style = Virtual
";

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn sections_and_services() {
        let p = Profile::parse(CONFIG, "minio");
        assert_eq!(p.get("endpoint_url"), Some("http://minio:9000"));
        assert_eq!(p.s3_service.get("endpoint_url").map(String::as_str), Some("http://minio-s3:9000"));
        assert_eq!(Profile::parse(CONFIG, "default").get("endpoint_url"), Some("http://default:1"));
        assert_eq!(Profile::parse(CONFIG, "missing"), Profile::default());
    }

    #[test]
    fn a_hash_inside_a_value_is_no_comment() {
        let p = Profile::parse("[profile h]\nca_bundle = /certs/team#2/ca.pem ; the team's\nregion = eu-west-1 # Ireland\n", "h");
        assert_eq!(p.get("ca_bundle"), Some("/certs/team#2/ca.pem"));
        assert_eq!(p.get("region"), Some("eu-west-1"));
    }

    #[test]
    fn endpoint_precedence_follows_the_shared_config_standard() {
        let minio = Profile::parse(CONFIG, "minio");
        assert_eq!(configured_endpoint(&env(&[]), &minio).as_deref(), Some("http://minio-s3:9000"), "services beats endpoint_url");
        let mut no_services = minio.clone();
        no_services.s3_service.clear();
        assert_eq!(configured_endpoint(&env(&[]), &no_services).as_deref(), Some("http://minio:9000"));
        let e = env(&[("AWS_ENDPOINT_URL", "http://env:1")]);
        assert_eq!(configured_endpoint(&e, &minio).as_deref(), Some("http://env:1"), "the environment beats the file");
        let e = env(&[("AWS_ENDPOINT_URL", "http://env:1"), ("AWS_ENDPOINT_URL_S3", "http://env-s3:1")]);
        assert_eq!(configured_endpoint(&e, &minio).as_deref(), Some("http://env-s3:1"));
        assert_eq!(configured_endpoint(&env(&[]), &Profile::parse(CONFIG, "aws")), None);
        assert_eq!(configured_endpoint(&env(&[]), &Profile::parse(CONFIG, "ignored")), None);
        let e = env(&[("AWS_ENDPOINT_URL", "http://env:1"), ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")]);
        assert_eq!(configured_endpoint(&e, &minio), None);
    }

    #[test]
    fn the_profiles_own_s3_section() {
        let p = Profile::parse(CONFIG, "styled");
        assert_eq!(p.addressing_style(), AddressingStyle::Path);
        assert!(p.s3_flag("use_accelerate_endpoint") && p.s3_flag("use_dualstack_endpoint"));
        assert_eq!(p.get("output"), Some("json"), "a setting after the nested section is the profile's");
        assert!(p.s3_service.is_empty());
        assert_eq!(Profile::parse(CONFIG, "virtual").addressing_style(), AddressingStyle::Virtual);
        let minio = Profile::parse(CONFIG, "minio");
        assert_eq!(minio.addressing_style(), AddressingStyle::Auto, "the services section's s3 is not the profile's");
        assert!(!minio.s3_flag("use_accelerate_endpoint"));
        assert_eq!(Profile::parse("[default]\ns3 =\n  addressing_style = sideways\n", "default").addressing_style(), AddressingStyle::Auto);
    }

    #[test]
    fn attempts() {
        let minio = Profile::parse(CONFIG, "minio");
        assert_eq!(max_attempts(&env(&[]), &minio, 6), 3);
        assert_eq!(max_attempts(&env(&[("AWS_MAX_ATTEMPTS", "2")]), &minio, 6), 2);
        assert_eq!(max_attempts(&env(&[]), &Profile::default(), 6), 6);
        assert_eq!(max_attempts(&env(&[("AWS_MAX_ATTEMPTS", "0")]), &minio, 6), 1);
    }
}
