//! The caller's shared AWS config file, read for what selects a client
//! before the SDK loads it: the profile's settings, its `services` section,
//! and the settings of the AWS shared-config standard that the daemon must
//! resolve itself because they come from the caller (endpoint, attempts).

use crate::s3::config_files::ConfigFiles;
use std::collections::HashMap;

/// A profile of the caller's config file: its settings and, when it names a
/// `services` section, that section's settings of the `s3` service.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Profile {
    pub settings: HashMap<String, String>,
    pub s3_service: HashMap<String, String>,
    /// The profile's own nested `s3 =` settings (`addressing_style`,
    /// `use_accelerate_endpoint`, `use_dualstack_endpoint`, …), as boto3
    /// reads them.
    pub s3: HashMap<String, String>,
}

impl Profile {
    /// The profile `name` (or `AWS_PROFILE`, or `default`) of the config file
    /// the caller's environment names (`AWS_CONFIG_FILE`, else
    /// `$HOME/.aws/config`); empty when there is none.
    pub fn load(files: &ConfigFiles, env: &HashMap<String, String>, name: Option<&str>) -> Profile {
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let Some(file) = get("AWS_CONFIG_FILE").or_else(|| get("HOME").map(|h| format!("{h}/.aws/config"))) else {
            return Profile::default();
        };
        let Some(text) = files.read(std::path::Path::new(&file)) else { return Profile::default() };
        let name = name.map(str::to_string).or_else(|| get("AWS_PROFILE")).unwrap_or_else(|| "default".to_string());
        Profile::parse(&text, &name)
    }

    /// `name` from the text of a config file (`[default]`, `[profile x]`,
    /// `[services y]` with indented sub-settings under `s3 =`).
    pub fn parse(text: &str, name: &str) -> Profile {
        let sections = parse_sections(text);
        let profile_key =
            |n: &str| if n == "default" { vec!["default".to_string(), "profile default".to_string()] } else { vec![format!("profile {n}")] };
        let section = profile_key(name).into_iter().find_map(|k| sections.get(&k).cloned()).unwrap_or_default();
        let s3 = section.nested.get("s3").cloned().unwrap_or_default();
        let settings = section.settings;
        let s3_service = settings
            .get("services")
            .and_then(|svc| sections.get(&format!("services {svc}")))
            .and_then(|s| s.nested.get("s3").cloned())
            .unwrap_or_default();
        Profile { settings, s3_service, s3 }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// A setting of the profile's nested `s3 =` section.
    pub fn s3_setting(&self, key: &str) -> Option<&str> {
        self.s3.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
    }
}

/// How bucket names go into S3 requests (the profile's `s3 =
/// addressing_style`, as in boto3 and the AWS CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AddressingStyle {
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
    pub fn addressing_style(&self) -> AddressingStyle {
        match self.s3_setting("addressing_style").map(str::to_ascii_lowercase).as_deref() {
            Some("path") => AddressingStyle::Path,
            Some("virtual") => AddressingStyle::Virtual,
            _ => AddressingStyle::Auto,
        }
    }

    /// A true/false setting of the profile's `s3 =` section.
    pub fn s3_flag(&self, key: &str) -> bool {
        is_true(self.s3_setting(key))
    }
}

#[derive(Debug, Default, Clone)]
struct Section {
    settings: HashMap<String, String>,
    /// `key =` followed by indented `sub = value` lines.
    nested: HashMap<String, HashMap<String, String>>,
}

/// Sections by their normalized header (`default`, `profile x`,
/// `services y`). Keys are lower case, as the SDKs treat them.
fn parse_sections(text: &str) -> HashMap<String, Section> {
    let mut sections: HashMap<String, Section> = HashMap::new();
    let mut current: Option<String> = None;
    let mut parent: Option<String> = None;
    for raw in text.lines() {
        let line = raw.split(['#', ';']).next().unwrap_or("");
        if line.trim().is_empty() {
            continue;
        }
        let indented = raw.starts_with([' ', '\t']);
        let trimmed = line.trim();
        if let Some(header) = trimmed.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let header = header.split_whitespace().collect::<Vec<_>>().join(" ");
            sections.entry(header.clone()).or_default();
            current = Some(header);
            parent = None;
            continue;
        }
        let Some(section) = current.as_ref().and_then(|c| sections.get_mut(c)) else { continue };
        let Some((k, v)) = trimmed.split_once('=') else { continue };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        match (&parent, indented) {
            (Some(p), true) => {
                section.nested.entry(p.clone()).or_default().insert(k, v);
            }
            _ if v.is_empty() => {
                section.nested.entry(k.clone()).or_default();
                parent = Some(k);
            }
            _ => {
                section.settings.insert(k, v);
                parent = None;
            }
        }
    }
    sections
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
pub fn configured_endpoint(env: &HashMap<String, String>, profile: &Profile) -> Option<String> {
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
pub fn max_attempts(env: &HashMap<String, String>, profile: &Profile, default: u32) -> u32 {
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
