//! Object ids: git's two object formats (SHA-1, SHA-256) and the one
//! check of an id's text. Nothing else in the daemon knows the lengths.
//! LFS oids are SHA-256 by definition and use `ObjectFormat::Sha256`.

use std::fmt;
use std::str::FromStr;

/// A repository's object format (`extensions.objectFormat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectFormat {
    #[default]
    Sha1,
    Sha256,
}

impl ObjectFormat {
    /// Hex digits of an id in this format.
    pub(crate) const fn hex_len(self) -> usize {
        match self {
            ObjectFormat::Sha1 => 40,
            ObjectFormat::Sha256 => 64,
        }
    }

    /// Bytes of an id in this format (and of a pack's or index's checksum).
    pub(crate) const fn raw_len(self) -> usize {
        self.hex_len() / 2
    }

    /// git's name of the format (`--object-format=<name>`).
    pub(crate) const fn name(self) -> &'static str {
        match self {
            ObjectFormat::Sha1 => "sha1",
            ObjectFormat::Sha256 => "sha256",
        }
    }

    /// The format whose ids have `len` hex digits.
    pub(crate) fn from_hex_len(len: usize) -> Option<ObjectFormat> {
        [ObjectFormat::Sha1, ObjectFormat::Sha256].into_iter().find(|f| f.hex_len() == len)
    }

    /// The format of an id's text, when it is a valid id of either format.
    pub(crate) fn of(s: &str) -> Option<ObjectFormat> {
        ObjectFormat::from_hex_len(s.len()).filter(|f| f.accepts(s))
    }

    /// Whether `s` is an id of this format: its length in lowercase hex digits.
    pub(crate) fn accepts(self, s: &str) -> bool {
        s.len() == self.hex_len() && is_lower_hex(s)
    }

    /// `--object-format=<name>`, for git commands outside a repository.
    pub(crate) fn arg(self) -> String {
        format!("--object-format={}", self.name())
    }
}

impl fmt::Display for ObjectFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown object format {0:?} (git knows sha1 and sha256)")]
pub struct UnknownFormat(pub String);

impl FromStr for ObjectFormat {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sha1" => Ok(ObjectFormat::Sha1),
            "sha256" => Ok(ObjectFormat::Sha256),
            other => Err(UnknownFormat(other.to_string())),
        }
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `s` is an object id of either format (lowercase hex).
pub fn is_object_id(s: &str) -> bool {
    ObjectFormat::of(s).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_names() {
        assert_eq!(ObjectFormat::Sha1.hex_len(), 40);
        assert_eq!(ObjectFormat::Sha256.hex_len(), 64);
        assert_eq!("sha256".parse::<ObjectFormat>(), Ok(ObjectFormat::Sha256));
        assert!("md5".parse::<ObjectFormat>().is_err());
        assert_eq!(ObjectFormat::Sha256.arg(), "--object-format=sha256");
        assert_eq!(ObjectFormat::of(&"a".repeat(40)), Some(ObjectFormat::Sha1));
        assert_eq!(ObjectFormat::of(&"a".repeat(64)), Some(ObjectFormat::Sha256));
        for bad in ["", "A".repeat(40).as_str(), &"a".repeat(41), &"a".repeat(63), &"g".repeat(40), &format!("{}/", "a".repeat(39))] {
            assert!(ObjectFormat::of(bad).is_none(), "{bad:?}");
            assert!(!is_object_id(bad));
        }
        assert!(!ObjectFormat::Sha256.accepts(&"a".repeat(40)));
        assert!(ObjectFormat::Sha256.accepts(&"a".repeat(64)));
    }

    proptest::proptest! {
        #[test]
        fn every_accepted_id_round_trips(s in proptest::prop_oneof!["[0-9a-f]{40}", "[0-9a-f]{64}", "[0-9a-fA-F]{38,66}", ".{0,70}"]) {
            if let Some(format) = ObjectFormat::of(&s) {
                proptest::prop_assert_eq!(s.len(), format.hex_len());
                proptest::prop_assert!(format.accepts(&s));
                proptest::prop_assert!(!s.contains('/') && !s.contains('.'));
            } else {
                proptest::prop_assert!(!is_object_id(&s));
            }
        }
    }
}
