//! The git-remote-s3 0.4.2 bucket layout, parsed:
//! `<prefix>/<ref>/<sha>.bundle` (full bundle of the ref's history),
//! `<prefix>/HEAD`, `<prefix>/<ref>/LOCK#.lock`, `<prefix>/<ref>/PROTECTED#`,
//! and for `s3+zip://` a `<prefix>/<ref>/repo.zip`.

use std::collections::BTreeMap;

use crate::local::oid::ObjectFormat;
use crate::local::refname::valid_ref_name;
use crate::s3::store::ObjectInfo;
use crate::storage::bundles::locks;
use crate::storage::zip::ZIP_NAME;

pub(crate) const PROTECTED_MARKER: &str = "PROTECTED#";

/// Everything found under a prefix, parsed.
#[derive(Debug, Default, Clone)]
pub struct PrefixScan {
    /// ref → its bundles, newest first.
    pub bundles: BTreeMap<String, Vec<(String, ObjectInfo)>>,
    pub locks: Vec<(String, ObjectInfo)>,
    pub protected: Vec<String>,
    pub zips: Vec<(String, ObjectInfo)>,
    pub(crate) head_object: bool,
    /// Keys under `<prefix>/refs/` whose ref part git would refuse (control
    /// characters, spaces, `..`, …): never listed, never given to git.
    pub(crate) ignored: Vec<String>,
}

impl PrefixScan {
    /// The object formats of the refs' bundles (their newest), each with
    /// the first ref in that format, SHA-1 first: empty for an empty
    /// prefix, two entries for one that mixes formats (0.4.2 checks none).
    pub(crate) fn object_formats(&self) -> Vec<(ObjectFormat, &str)> {
        let mut found: Vec<(ObjectFormat, &str)> = Vec::new();
        for (name, bundles) in &self.bundles {
            let Some(f) = bundles.first().and_then(|b| ObjectFormat::of(&b.0)) else { continue };
            if !found.iter().any(|(g, _)| *g == f) {
                found.push((f, name));
            }
        }
        found.sort_by_key(|(f, _)| f.hex_len());
        found
    }
}

fn is_sha(s: &str) -> bool {
    crate::local::oid::is_object_id(s)
}

/// Parses the keys under `<prefix>/`.
pub fn scan(prefix: &str, objects: &[ObjectInfo]) -> PrefixScan {
    let mut scan = PrefixScan::default();
    let head_key = format!("{prefix}/HEAD");
    let root = format!("{prefix}/");
    for o in objects {
        if o.key == head_key {
            scan.head_object = true;
            continue;
        }
        let Some(rest) = o.key.strip_prefix(&root) else { continue };
        if !rest.starts_with("refs/") {
            continue;
        }
        let Some((refname, leaf)) = rest.rsplit_once('/') else { continue };
        if !valid_ref_name(refname) {
            scan.ignored.push(o.key.clone());
            continue;
        }
        if let Some(sha) = leaf.strip_suffix(".bundle") {
            if is_sha(sha) && refname.matches('/').count() >= 1 {
                scan.bundles.entry(refname.to_string()).or_default().push((sha.to_string(), o.clone()));
            }
        } else if leaf == locks::LOCK_NAME {
            scan.locks.push((refname.to_string(), o.clone()));
        } else if leaf == PROTECTED_MARKER {
            scan.protected.push(refname.to_string());
        } else if leaf == ZIP_NAME {
            scan.zips.push((refname.to_string(), o.clone()));
        }
    }
    for list in scan.bundles.values_mut() {
        list.sort_by_key(|b| std::cmp::Reverse(b.1.last_modified));
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn obj(key: &str, secs: u64) -> ObjectInfo {
        ObjectInfo { key: key.into(), size: 1, etag: "e".into(), last_modified: SystemTime::UNIX_EPOCH + Duration::from_secs(secs) }
    }

    #[test]
    fn object_formats_of_the_refs() {
        let (a, b) = ("a".repeat(40), "b".repeat(64));
        assert!(scan("p", &[]).object_formats().is_empty());
        let one = scan("p", &[obj(&format!("p/refs/heads/main/{b}.bundle"), 1), obj(&format!("p/refs/tags/v1/{b}.bundle"), 1)]);
        assert_eq!(one.object_formats(), vec![(ObjectFormat::Sha256, "refs/heads/main")]);
        let two = scan("p", &[obj(&format!("p/refs/heads/main/{b}.bundle"), 1), obj(&format!("p/refs/heads/old/{a}.bundle"), 1)]);
        assert_eq!(two.object_formats(), vec![(ObjectFormat::Sha1, "refs/heads/old"), (ObjectFormat::Sha256, "refs/heads/main")]);
    }

    #[test]
    fn scan_parses_layout() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let objects = vec![
            obj("p/HEAD", 1),
            obj(&format!("p/refs/heads/main/{a}.bundle"), 1),
            obj(&format!("p/refs/heads/main/{b}.bundle"), 2),
            obj("p/refs/heads/main/LOCK#.lock", 1),
            obj("p/refs/heads/main/PROTECTED#", 1),
            obj("p/refs/heads/feature/x/repo.zip", 1),
            obj(&format!("p/refs/tags/v1/{a}.bundle"), 1),
            obj("p/lfs/0123", 1),
            obj("p/refs/heads/main/notasha.bundle", 1),
            obj(&format!("p/refs/heads/a b/{a}.bundle"), 1),
            obj(&format!("p/refs/heads/x\nfetch {a} y/{a}.bundle"), 1),
            obj(&format!("p/refs/heads/../../etc/{a}.bundle"), 1),
            obj("p/refs/heads/x.lock/LOCK#.lock", 1),
        ];
        let s = scan("p", &objects);
        assert!(s.head_object);
        assert_eq!(s.bundles["refs/heads/main"].len(), 2);
        assert_eq!(s.bundles["refs/heads/main"][0].0, b, "newest first");
        assert_eq!(s.bundles["refs/tags/v1"][0].0, a);
        assert_eq!(s.locks.len(), 1);
        assert_eq!(s.protected, vec!["refs/heads/main".to_string()]);
        assert_eq!(s.zips[0].0, "refs/heads/feature/x");
        assert_eq!(s.bundles.len(), 2);
        assert_eq!(s.ignored.len(), 4, "{:?}", s.ignored);
    }
}
