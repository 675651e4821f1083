//! The child side of `plugins`: `git-s3-daemon age-plugin-bridge encrypt
//! --filler=N <recipient>…` (a keyring's plaintext on stdin, its age file
//! on stdout) and `git-s3-daemon age-plugin-bridge decrypt <identities
//! file>` (a keyring on stdin, its plaintext on stdout; exit 3 when no
//! plugin identity of the file opens it, 4 when a plugin is not on `PATH`).
//!
//! It runs in the caller's environment (`plugins` starts it so): `age`
//! finds `age-plugin-<name>` on the caller's `PATH`. A plugin's messages
//! ("touch your key") go to the caller's terminal, `GIT_S3_TTY` (the shims
//! set it when their stderr is a terminal), and to stderr for the daemon's
//! log; its questions (a PIN) are asked on that terminal, the answer not
//! echoed. Without a terminal a question gets no answer, and the plugin
//! says why it cannot go on.
#![allow(clippy::print_stderr)] // a child process: its stderr is the daemon's pipe

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use age::secrecy::SecretString;

use super::plugins::{EXIT_MISSING_PLUGIN, EXIT_NO_MATCH, MESSAGE_PREFIX};
use super::recipient::Recipient;

/// Runs the bridge with its arguments (after the subcommand); the exit code.
pub(crate) fn run(args: &[String]) -> i32 {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().take(16 << 20).read_to_end(&mut input) {
        eprintln!("cannot read the keyring from the daemon: {e}");
        return 1;
    }
    let terminal = Terminal { tty: std::env::var_os("GIT_S3_TTY").map(PathBuf::from).filter(|p| p.is_absolute()), unasked: Default::default() };
    let terminal_question = terminal.unasked.clone();
    let done = match args.split_first() {
        Some((op, rest)) if op == "encrypt" => encrypt(rest, &input, terminal),
        Some((op, rest)) if op == "decrypt" => decrypt(rest, &input, terminal),
        _ => Err(Failure::Other("usage: git-s3-daemon age-plugin-bridge encrypt|decrypt …".into())),
    };
    match done.and_then(|out| std::io::stdout().write_all(&out).map_err(|e| Failure::Other(e.to_string()))) {
        Ok(()) => 0,
        Err(Failure::NoMatch) => EXIT_NO_MATCH,
        Err(Failure::Missing(binary)) => {
            eprintln!("{binary}");
            EXIT_MISSING_PLUGIN
        }
        Err(Failure::Other(why)) => {
            match terminal_question.lock().ok().and_then(|q| q.clone()) {
                Some(q) => eprintln!("{why} (it asked \"{q}\", and git-s3 had no terminal to ask on: run git from a terminal)"),
                None => eprintln!("{why}"),
            }
            1
        }
    }
}

enum Failure {
    NoMatch,
    /// A plugin's binary (`age-plugin-<name>`) not on `PATH`.
    Missing(String),
    Other(String),
}

fn missing(name: &str) -> Failure {
    Failure::Missing(format!("age-plugin-{name}"))
}

/// `input` encrypted to the recipients of `args` (after `--filler=N`).
fn encrypt(args: &[String], input: &[u8], terminal: Terminal) -> Result<Vec<u8>, Failure> {
    let (filler, recipients) = match args.split_first() {
        Some((f, rest)) => (f.strip_prefix("--filler=").and_then(|n| n.parse::<u8>().ok()).unwrap_or(b'\n'), rest),
        None => return Err(Failure::Other("no recipients".into())),
    };
    let mut natives = Vec::new();
    let mut by_plugin: BTreeMap<String, Vec<age::plugin::Recipient>> = BTreeMap::new();
    for r in recipients {
        match Recipient::parse(r).map_err(|e| Failure::Other(e.to_string()))? {
            Recipient::Native(x) => natives.push(x),
            Recipient::Plugin(p) => by_plugin.entry(p.plugin().to_string()).or_default().push(p),
        }
    }
    let mut plugins = Vec::new();
    for (name, rs) in &by_plugin {
        plugins.push(age::plugin::RecipientPluginV1::new(name, rs, &[], terminal.clone()).map_err(|_| missing(name))?);
    }
    let all: Vec<&dyn age::Recipient> =
        natives.iter().map(|x| x as &dyn age::Recipient).chain(plugins.iter().map(|p| p as &dyn age::Recipient)).collect();
    super::codec::encrypt_padded(&all, input, filler).map_err(|e| Failure::Other(format!("cannot encrypt the keyring: {e}")))
}

/// `input` (a keyring) decrypted with the plugin identities of the file `args[0]`.
fn decrypt(args: &[String], input: &[u8], terminal: Terminal) -> Result<Vec<u8>, Failure> {
    let path = args.first().ok_or_else(|| Failure::Other("no identities file".into()))?;
    let text = std::fs::read_to_string(path).map_err(|e| Failure::Other(format!("cannot read {path}: {e}")))?;
    let (_, by_plugin) = super::identities::parse(&text).map_err(|why| Failure::Other(format!("{path} is not an age identity file: {why}")))?;
    let mut plugins = Vec::new();
    for (name, ids) in &by_plugin {
        plugins.push(age::plugin::IdentityPluginV1::new(name, ids, terminal.clone()).map_err(|_| missing(name))?);
    }
    let ids = plugins.iter().map(|p| p as &dyn age::Identity);
    match super::decrypt_keyring(input, ids, "the keyring") {
        Ok(Some(text)) => Ok(text.into_bytes()),
        Ok(None) => Err(Failure::NoMatch),
        Err(e) => Err(Failure::Other(e.to_string())),
    }
}

/// The caller's terminal, if the shim named one: where a plugin's messages
/// and questions go.
#[derive(Clone)]
struct Terminal {
    tty: Option<PathBuf>,
    /// A question a plugin asked that no terminal could take (for the error).
    unasked: Arc<Mutex<Option<String>>>,
}

impl Terminal {
    /// The terminal, opened; None without one, or when `GIT_S3_TTY` names
    /// something that is not a terminal (never written to).
    fn open(&self) -> Option<std::fs::File> {
        let tty = std::fs::OpenOptions::new().read(true).write(true).open(self.tty.as_ref()?).ok()?;
        rustix::termios::isatty(&tty).then_some(tty)
    }

    /// One line typed at `prompt` (not echoed when `secret`), None without a terminal.
    fn ask(&self, prompt: &str, secret: bool) -> Option<String> {
        let Some(mut tty) = self.open() else {
            if let Ok(mut q) = self.unasked.lock() {
                *q = Some(prompt.to_string());
            }
            return None;
        };
        write!(tty, "git-s3: {prompt}: ").ok()?;
        tty.flush().ok()?;
        let saved = if secret { quiet(&tty) } else { None };
        let mut line = String::new();
        let read = std::io::BufReader::new(&tty).read_line(&mut line);
        if let Some(t) = saved {
            let _ = rustix::termios::tcsetattr(&tty, rustix::termios::OptionalActions::Now, &t);
            let _ = writeln!(tty);
        }
        match read {
            Ok(n) if n > 0 => Some(line.trim_end_matches(['\n', '\r']).to_string()),
            _ => None,
        }
    }
}

/// Turns the terminal's echo off; its settings before, to put back.
fn quiet(tty: &std::fs::File) -> Option<rustix::termios::Termios> {
    let saved = rustix::termios::tcgetattr(tty).ok()?;
    let mut off = saved.clone();
    off.local_modes.remove(rustix::termios::LocalModes::ECHO);
    rustix::termios::tcsetattr(tty, rustix::termios::OptionalActions::Now, &off).ok()?;
    Some(saved)
}

impl age::Callbacks for Terminal {
    fn display_message(&self, message: &str) {
        eprintln!("{MESSAGE_PREFIX}{message}");
        if let Some(mut tty) = self.open() {
            let _ = writeln!(tty, "git-s3: {message}");
        }
    }

    fn confirm(&self, message: &str, yes_string: &str, no_string: Option<&str>) -> Option<bool> {
        let choices = match no_string {
            Some(no) => format!("{yes_string}/{no}"),
            None => yes_string.to_string(),
        };
        let answer = self.ask(&format!("{message} [{choices}]"), false)?;
        Some(answer.trim().eq_ignore_ascii_case(yes_string) || (answer.trim().is_empty() && no_string.is_none()))
    }

    fn request_public_string(&self, description: &str) -> Option<String> {
        self.ask(description, false)
    }

    fn request_passphrase(&self, description: &str) -> Option<SecretString> {
        self.ask(description, true).map(SecretString::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tty_variable_that_names_a_file_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-tty");
        std::fs::write(&file, "keep me\n").unwrap();
        let terminal = Terminal { tty: Some(file.clone()), unasked: Default::default() };
        age::Callbacks::display_message(&terminal, "touch your key");
        assert_eq!(terminal.ask("PIN", true), None);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me\n");
        assert_eq!(terminal.unasked.lock().unwrap().as_deref(), Some("PIN"), "the question no terminal took is kept for the error");
    }
}
