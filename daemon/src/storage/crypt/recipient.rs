//! A recipient the keyring is encrypted to: an age X25519 recipient
//! (`age1…`, what `git s3 keygen`, `age-keygen` and `rage-keygen` print)
//! or an age plugin's (`age1<plugin>1…`, e.g. `age1yubikey1…`), whose
//! wrapping runs the plugin `age-plugin-<plugin>` found on the caller's
//! `PATH` (`plugins`). Only the keyring is encrypted to recipients: every
//! other object is encrypted to the remote key.

use super::CryptError;

#[derive(Clone)]
pub(crate) enum Recipient {
    Native(age::x25519::Recipient),
    Plugin(age::plugin::Recipient),
}

impl Recipient {
    /// Parses `age1…` (X25519) or `age1<plugin>1…` (an age plugin's).
    pub(crate) fn parse(s: &str) -> Result<Recipient, CryptError> {
        let s = s.trim();
        if let Ok(r) = s.parse::<age::x25519::Recipient>() {
            return Ok(Recipient::Native(r));
        }
        s.parse::<age::plugin::Recipient>().map(Recipient::Plugin).map_err(|_| CryptError::Recipient(s.to_string()))
    }

    /// The plugin's name (`yubikey` for `age1yubikey1…`), None for X25519.
    pub(crate) fn plugin(&self) -> Option<&str> {
        match self {
            Recipient::Native(_) => None,
            Recipient::Plugin(p) => Some(p.plugin()),
        }
    }
}

impl std::fmt::Display for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recipient::Native(r) => write!(f, "{r}"),
            Recipient::Plugin(p) => write!(f, "{p}"),
        }
    }
}

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recipient({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x25519_and_plugin_recipients_parse_and_print_back() {
        let x = age::x25519::Identity::generate().to_public().to_string();
        let r = Recipient::parse(&format!(" {x}\n")).unwrap();
        assert!(matches!(r, Recipient::Native(_)) && r.plugin().is_none() && r.to_string() == x);
        // what testkit's `age-plugin-gits3test` printed
        let p = "age1gits3test1v9nk2vt8wekrwut3x3enymn5xv68zvndx3nh2ar2v5ehqdnsv4ury7rtxpn85urvwau8zepk09ckkumrxfnksatsw9mkcmpjwy6qh5eur6";
        let r = Recipient::parse(p);
        assert!(matches!(r, Ok(Recipient::Plugin(_))), "{r:?}");
        let r = r.unwrap();
        assert_eq!((r.plugin(), r.to_string().as_str()), (Some("gits3test"), p));
        for bad in ["age1nope", "age1yubikey1", "kms:alias/x", "", "AGE-SECRET-KEY-1"] {
            assert!(matches!(Recipient::parse(bad), Err(CryptError::Recipient(_))), "{bad}");
        }
    }
}
