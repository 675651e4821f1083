//! age plugins (`age-plugin-<name>`, e.g. age-plugin-yubikey) for the
//! keyring: a plugin recipient (`age1yubikey1…`) wraps it, a plugin
//! identity (`AGE-PLUGIN-YUBIKEY-1…`) in the caller's identities file opens
//! it. Only the keyring needs them: every other object is encrypted to the
//! remote key.
//!
//! The `age` crate finds a plugin on its own process's `PATH` and runs it
//! with its own environment; this daemon serves every shell of its user, so
//! a plugin must not run in it. It runs in a child, `git-s3-daemon
//! age-plugin-bridge` (`plugin_bridge`), started with the CALLER's whole
//! environment: the plugin is found on the caller's `PATH` and sees the
//! caller's variables (PC/SC, `DISPLAY`, `GIT_S3_TTY`, the terminal the shim
//! runs on, where a plugin's messages and PIN prompts go). X25519
//! recipients and identities never start a child.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tracing::Instrument;

use super::recipient::Recipient;
use super::CryptError;

/// The hidden subcommand of `git-s3-daemon` that runs plugins (`main.rs`).
pub(crate) const BRIDGE_COMMAND: &str = "age-plugin-bridge";

/// The bridge's exit codes besides 0 (done) and 1 (failed: its last stderr line says why).
pub(crate) const EXIT_NO_MATCH: i32 = 3;
pub(crate) const EXIT_MISSING_PLUGIN: i32 = 4;

/// What the bridge writes on stderr before a plugin's message (the rest are its errors).
pub(crate) const MESSAGE_PREFIX: &str = "message: ";

/// How long a plugin may take: a person may have to touch a key or type a PIN.
const TIMEOUT: Duration = Duration::from_secs(300);

/// `plaintext` age-encrypted to `recipients`, padded with `filler` as
/// `codec::encrypt_padded` pads (the keyring): in this process when every
/// recipient is X25519, else by the bridge with the caller's `env`.
pub(crate) async fn encrypt_padded(
    recipients: &[Recipient],
    plaintext: &[u8],
    filler: u8,
    env: &HashMap<String, String>,
) -> Result<Vec<u8>, CryptError> {
    if let Some(natives) = natives(recipients) {
        return super::codec::encrypt_padded(&natives, plaintext, filler);
    }
    let mut args = vec!["encrypt".to_string(), format!("--filler={filler}")];
    args.extend(recipients.iter().map(ToString::to_string));
    let plugins: Vec<&str> = recipients.iter().filter_map(Recipient::plugin).collect();
    run(&args, plaintext, env, &plugins.join(", ")).await?.ok_or_else(|| CryptError::Plugin("the age plugin bridge wrapped nothing".into()))
}

/// Every recipient as an X25519 one; None when one is a plugin's.
fn natives(recipients: &[Recipient]) -> Option<Vec<&dyn age::Recipient>> {
    recipients
        .iter()
        .map(|r| match r {
            Recipient::Native(x) => Some(x as &dyn age::Recipient),
            Recipient::Plugin(_) => None,
        })
        .collect()
}

/// The plaintext of the keyring `data` opened with the plugin identities
/// of the identities file `path` (the bridge reads it); None when none of
/// them opens it.
pub(crate) async fn decrypt(path: &Path, data: &[u8], env: &HashMap<String, String>, plugins: &str) -> Result<Option<String>, CryptError> {
    let args = vec!["decrypt".to_string(), path.display().to_string()];
    match run(&args, data, env, plugins).await? {
        Some(text) => String::from_utf8(text).map(Some).map_err(|_| CryptError::Plugin("the keyring a plugin opened is not text".into())),
        None => Ok(None),
    }
}

/// Runs the bridge with `args`, `input` on its stdin, in the caller's
/// environment: its stdout, or None when no identity matched.
async fn run(args: &[String], input: &[u8], env: &HashMap<String, String>, plugins: &str) -> Result<Option<Vec<u8>>, CryptError> {
    let exe = std::env::current_exe().map_err(|e| CryptError::Plugin(format!("cannot find git-s3-daemon to run age plugins: {e}")))?;
    let env2 = env.clone();
    let cwd = crate::local::files::blocking(move || Ok(crate::s3::credentials::process::caller_cwd(&env2))).await?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg(BRIDGE_COMMAND)
        .args(args)
        .env_clear()
        .envs(env.iter())
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let span = tracing::info_span!("age plugin", plugins, op = args.first().map(String::as_str).unwrap_or(""));
    let out = async {
        let mut child = cmd.spawn().map_err(|e| CryptError::Plugin(format!("cannot run age plugins through git-s3-daemon: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin that died early closes the pipe: its exit says why.
            let _ = stdin.write_all(input).await;
        }
        match tokio::time::timeout(TIMEOUT, child.wait_with_output()).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(CryptError::Plugin(format!("the age plugin {plugins} failed: {e}"))),
            Err(_) => Err(CryptError::Plugin(format!(
                "the age plugin {plugins} did not answer in {} s (a key waiting for a touch or a PIN?)",
                TIMEOUT.as_secs()
            ))),
        }
    }
    .instrument(span)
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut why = None;
    for line in stderr.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.strip_prefix(MESSAGE_PREFIX) {
            Some(m) => tracing::info!(plugins, "age plugin says: {m}"),
            None => why = Some(line.chars().filter(|c| !c.is_control()).take(300).collect::<String>()),
        }
    }
    let why = why.unwrap_or_else(|| "no reason given".into());
    match out.status.code() {
        Some(0) => Ok(Some(out.stdout)),
        Some(EXIT_NO_MATCH) => Ok(None),
        Some(EXIT_MISSING_PLUGIN) => Err(CryptError::Plugin(format!(
            "{why} is not on your PATH: install it (or put its directory on PATH) in the shell you run git from, then try again"
        ))),
        _ => Err(CryptError::Plugin(format!("the age plugin {plugins} failed: {why}"))),
    }
}
