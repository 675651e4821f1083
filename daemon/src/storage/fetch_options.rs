//! What git asks of a fetch beyond its wanted tips: shallow history
//! (`option depth`, `deepen-since`, `deepen-not`, `deepen-relative`), a
//! partial clone's object filter (`option filter`), and the flags that come
//! with them. These fetches are served by `git fetch-pack` from the local
//! mirror (`mirror.rs`), which computes exactly what git's own servers would
//! send; this file only records the options and turns them into arguments.

/// The narrowing options of one helper conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchOptions {
    pub(crate) depth: Option<u32>,
    pub deepen_since: Option<String>,
    pub deepen_not: Vec<String>,
    pub(crate) deepen_relative: bool,
    pub filter: Option<String>,
    pub(crate) from_promisor: bool,
    pub(crate) update_shallow: bool,
    pub(crate) refetch: bool,
    pub(crate) cloning: bool,
    pub(crate) check_connectivity: bool,
    pub(crate) follow_tags: bool,
}

/// The answer to an `option` line this file knows, or None for other options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionReply {
    Ok,
    Error(String),
}

/// A value that can follow `--name=` in git's arguments: not empty, not
/// `-…`, no control character or whitespace.
fn plain_value(value: &str) -> bool {
    !value.is_empty() && !value.starts_with('-') && !value.chars().any(|c| c.is_control() || c.is_whitespace())
}

impl FetchOptions {
    /// Records `option <name> <value>`; None when the option is not a fetch option.
    pub fn set(&mut self, name: &str, value: &str) -> Option<OptionReply> {
        // git sends `true`/`false`, and `1` for some (`from-promisor 1`).
        let flag = matches!(value, "true" | "1");
        match name {
            "depth" => match value.parse::<u32>() {
                Ok(d) if d > 0 => self.depth = Some(d),
                // `git fetch --unshallow` asks for the largest depth git knows.
                Ok(_) => return Some(OptionReply::Error(format!("invalid depth {value:?}"))),
                Err(_) => return Some(OptionReply::Error(format!("invalid depth {value:?}"))),
            },
            // Unix seconds: digits only (no sign, so never `-…`).
            "deepen-since" => match value.parse::<u64>() {
                Ok(_) if value.bytes().all(|b| b.is_ascii_digit()) => self.deepen_since = Some(value.to_string()),
                _ => return Some(OptionReply::Error(format!("invalid deepen-since {value:?}"))),
            },
            "deepen-not" => {
                if !plain_value(value) {
                    return Some(OptionReply::Error(format!("invalid deepen-not {value:?}")));
                }
                self.deepen_not.push(value.to_string())
            }
            "deepen-relative" => self.deepen_relative = flag,
            "filter" => {
                if !plain_value(value) {
                    return Some(OptionReply::Error(format!("invalid filter {value:?}")));
                }
                self.filter = Some(value.to_string())
            }
            "from-promisor" => self.from_promisor = flag,
            "update-shallow" => self.update_shallow = flag,
            "refetch" => self.refetch = flag,
            "cloning" => self.cloning = flag,
            "check-connectivity" => self.check_connectivity = flag,
            "followtags" => self.follow_tags = flag,
            _ => return None,
        }
        Some(OptionReply::Ok)
    }

    /// Whether the fetch must be narrowed (shallow or filtered) or refetched:
    /// then the plain transfer of whole packs or bundles is not what git asked.
    pub(crate) fn narrows(&self) -> bool {
        self.depth.is_some() || self.deepen_since.is_some() || !self.deepen_not.is_empty() || self.filter.is_some() || self.refetch
    }

    /// `git fetch-pack` arguments that carry these options (before the URL).
    pub fn fetch_pack_args(&self, progress: bool) -> Vec<String> {
        let mut a = vec!["--lock-pack".to_string()];
        if self.check_connectivity {
            a.push("--check-self-contained-and-connected".into());
        }
        if self.cloning {
            a.push("--cloning".into());
        }
        if self.update_shallow {
            a.push("--update-shallow".into());
        }
        if self.follow_tags {
            a.push("--include-tag".into());
        }
        if !progress {
            a.push("--no-progress".into());
        }
        if let Some(d) = self.depth {
            a.push(format!("--depth={d}"));
        }
        if let Some(s) = &self.deepen_since {
            a.push(format!("--shallow-since={s}"));
        }
        for n in &self.deepen_not {
            a.push(format!("--shallow-exclude={n}"));
        }
        if self.deepen_relative && self.depth.is_some() {
            a.push("--deepen-relative".into());
        }
        if self.from_promisor {
            a.push("--from-promisor".into());
        }
        if self.refetch {
            a.push("--refetch".into());
        }
        if let Some(f) = &self.filter {
            a.push(format!("--filter={f}"));
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_options_and_builds_arguments() {
        let mut o = FetchOptions::default();
        assert!(!o.narrows());
        assert_eq!(o.set("depth", "1"), Some(OptionReply::Ok));
        assert_eq!(o.set("deepen-not", "v1"), Some(OptionReply::Ok));
        assert_eq!(o.set("deepen-not", "v2"), Some(OptionReply::Ok));
        assert_eq!(o.set("deepen-relative", "true"), Some(OptionReply::Ok));
        assert_eq!(o.set("filter", "blob:none"), Some(OptionReply::Ok));
        assert_eq!(o.set("deepen-since", "1700000000"), Some(OptionReply::Ok));
        assert_eq!(o.set("verbosity", "1"), None);
        assert!(o.narrows());
        let a = o.fetch_pack_args(false);
        for want in [
            "--lock-pack",
            "--no-progress",
            "--depth=1",
            "--shallow-exclude=v1",
            "--shallow-exclude=v2",
            "--deepen-relative",
            "--filter=blob:none",
            "--shallow-since=1700000000",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} in {a:?}");
        }
        assert!(!o.fetch_pack_args(true).iter().any(|x| x == "--no-progress"));
    }

    #[test]
    fn refuses_values_that_could_become_options() {
        let mut o = FetchOptions::default();
        assert!(matches!(o.set("depth", "abc"), Some(OptionReply::Error(_))));
        assert!(matches!(o.set("depth", "0"), Some(OptionReply::Error(_))));
        assert!(matches!(o.set("deepen-not", "--upload-pack=x"), Some(OptionReply::Error(_))));
        assert!(matches!(o.set("filter", "--upload-pack=x"), Some(OptionReply::Error(_))));
        assert!(matches!(o.set("deepen-since", "yesterday; rm"), Some(OptionReply::Error(_))));
        assert!(matches!(o.set("deepen-since", "-5"), Some(OptionReply::Error(_))));
        assert!(matches!(o.set("deepen-since", "+5"), Some(OptionReply::Error(_))));
        assert!(matches!(o.set("filter", "blob:none\r"), Some(OptionReply::Error(_))));
        assert!(matches!(o.set("deepen-not", "a b"), Some(OptionReply::Error(_))));
        assert_eq!(o, FetchOptions::default());
    }
}
