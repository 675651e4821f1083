//! `age-plugin-gits3test`: an age plugin for the tests of plugin recipients
//! and identities (shim/tests/encryption_plugins.rs), in the role of
//! `age-plugin-yubikey`: it speaks age's plugin protocol through rage's
//! `age-plugin` crate, so git-s3, Debian's `age` and rage all run it.
//!
//! Its recipient (`age1gits3test1…`) carries an X25519 recipient's text and
//! its identity (`AGE-PLUGIN-GITS3TEST-1…`) the matching X25519 secret: a
//! file key is wrapped by age-encrypting it to that recipient, so only the
//! matching identity unwraps it (another plugin identity does not).
//! Run without arguments, it prints a new identity as `age-plugin-yubikey`
//! does (`# recipient: …` then the identity).
//!
//! What the caller's environment tells it (the tests check that git-s3 runs
//! it with the caller's environment, not the daemon's):
//! - `GITS3TEST_PLUGIN_LOG`: a file it appends `wrap` or `unwrap` to;
//! - `GITS3TEST_PLUGIN_PIN`: a PIN it asks for (request-secret) before it
//!   unwraps, refusing another answer, as a PIN-protected hardware key does.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::io::{self, Write};

use age::secrecy::ExposeSecret;
use age_core::format::{FileKey, Stanza};
use age_plugin::identity::{self, IdentityPluginV1};
use age_plugin::recipient::{self, RecipientPluginV1};
use age_plugin::{print_new_identity, run_state_machine, Callbacks, PluginHandler};

const NAME: &str = "gits3test";

fn log(what: &str) {
    if let Some(path) = std::env::var_os("GITS3TEST_PLUGIN_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{what}");
        }
    }
}

/// The X25519 key a gits3test recipient or identity carries (its text), if it is one.
fn inner<T: std::str::FromStr>(plugin_name: &str, bytes: &[u8]) -> Option<T> {
    (plugin_name == NAME).then(|| std::str::from_utf8(bytes).ok()?.parse().ok()).flatten()
}

struct Handler;

impl PluginHandler for Handler {
    type RecipientV1 = Wrap;
    type IdentityV1 = Unwrap;

    fn recipient_v1(self) -> io::Result<Wrap> {
        Ok(Wrap(Vec::new()))
    }

    fn identity_v1(self) -> io::Result<Unwrap> {
        Ok(Unwrap(Vec::new()))
    }
}

/// The X25519 recipients of the plugin recipients added.
struct Wrap(Vec<age::x25519::Recipient>);

impl RecipientPluginV1 for Wrap {
    fn add_recipient(&mut self, index: usize, plugin_name: &str, bytes: &[u8]) -> Result<(), recipient::Error> {
        match inner(plugin_name, bytes) {
            Some(r) => {
                self.0.push(r);
                Ok(())
            }
            None => Err(recipient::Error::Recipient { index, message: "not a gits3test recipient".into() }),
        }
    }

    fn add_identity(&mut self, index: usize, _: &str, _: &[u8]) -> Result<(), recipient::Error> {
        Err(recipient::Error::Identity { index, message: "gits3test wraps to recipients only".into() })
    }

    fn labels(&mut self) -> HashSet<String> {
        HashSet::new()
    }

    fn wrap_file_keys(
        &mut self,
        file_keys: Vec<FileKey>,
        _callbacks: impl Callbacks<recipient::Error>,
    ) -> io::Result<Result<Vec<Vec<Stanza>>, Vec<recipient::Error>>> {
        log("wrap");
        let mut out = Vec::new();
        for key in file_keys {
            let mut stanzas = Vec::new();
            for r in &self.0 {
                let body = age::encrypt(r, key.expose_secret()).map_err(io::Error::other)?;
                stanzas.push(Stanza { tag: NAME.into(), args: vec![], body });
            }
            out.push(stanzas);
        }
        Ok(Ok(out))
    }
}

/// The X25519 identities of the plugin identities added.
struct Unwrap(Vec<age::x25519::Identity>);

impl IdentityPluginV1 for Unwrap {
    fn add_identity(&mut self, index: usize, plugin_name: &str, bytes: &[u8]) -> Result<(), identity::Error> {
        match inner(plugin_name, bytes) {
            Some(i) => {
                self.0.push(i);
                Ok(())
            }
            None => Err(identity::Error::Identity { index, message: "not a gits3test identity".into() }),
        }
    }

    fn unwrap_file_keys(
        &mut self,
        files: Vec<Vec<Stanza>>,
        mut callbacks: impl Callbacks<identity::Error>,
    ) -> io::Result<HashMap<usize, Result<FileKey, Vec<identity::Error>>>> {
        log("unwrap");
        let _ = callbacks.message("gits3test: touch your test key")?;
        if let Ok(pin) = std::env::var("GITS3TEST_PLUGIN_PIN") {
            let answer = callbacks.request_secret("Enter the PIN of your gits3test key")?;
            let refused = |message: &str| identity::Error::Identity { index: 0, message: message.into() };
            match answer {
                Ok(given) if given.expose_secret() == pin => log("pin accepted"),
                Ok(_) => return Ok(files.iter().enumerate().map(|(i, _)| (i, Err(vec![refused("wrong PIN")]))).collect()),
                Err(_) => return Ok(files.iter().enumerate().map(|(i, _)| (i, Err(vec![refused("no PIN given")]))).collect()),
            }
        }
        let mut keys = HashMap::new();
        for (index, stanzas) in files.into_iter().enumerate() {
            let found = stanzas
                .iter()
                .filter(|s| s.tag == NAME)
                .find_map(|s| self.0.iter().find_map(|id| age::decrypt(id, &s.body).ok()).filter(|k| k.len() == 16));
            if let Some(bytes) = found {
                let key: Result<FileKey, Infallible> = FileKey::try_init_with_mut(|k| {
                    k.copy_from_slice(&bytes);
                    Ok(())
                });
                let Ok(key) = key;
                keys.insert(index, Ok(key));
            }
        }
        Ok(keys)
    }
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let machine = args.iter().find_map(|a| a.strip_prefix("--age-plugin=").map(str::to_string)).or_else(|| {
        let at = args.iter().position(|a| a == "--age-plugin")?;
        args.get(at + 1).cloned()
    });
    if let Some(machine) = machine {
        return run_state_machine(&machine, Handler);
    }
    let identity = age::x25519::Identity::generate();
    let secret = identity.to_string();
    print_new_identity(NAME, secret.expose_secret().as_bytes(), identity.to_public().to_string().as_bytes());
    Ok(())
}
