//! The caller's age identities: the file `git s3 keygen` writes and an
//! encrypted remote's keyring is opened with. `GIT_S3_IDENTITIES` names
//! it; else `$XDG_CONFIG_HOME/git-s3/identities`, else
//! `~/.config/git-s3/identities`, all from the CALLER's environment. The
//! file is an age identity file (as `age-keygen` writes: `#` comments, one
//! `AGE-SECRET-KEY-1…` per line, several allowed).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use age::secrecy::ExposeSecret;

use super::CryptError;

/// Where the caller's identities are.
pub(crate) fn identities_path(env: &HashMap<String, String>) -> Result<PathBuf, CryptError> {
    let set = |k: &str| env.get(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = set("GIT_S3_IDENTITIES") {
        return Ok(p);
    }
    if let Some(x) = set("XDG_CONFIG_HOME").filter(|p| p.is_absolute()) {
        return Ok(x.join("git-s3").join("identities"));
    }
    match set("HOME") {
        Some(h) => Ok(h.join(".config").join("git-s3").join("identities")),
        None => Err(CryptError::Identities("neither GIT_S3_IDENTITIES nor HOME is set: set GIT_S3_IDENTITIES to your age identity file".into())),
    }
}

/// The caller's identities file, read: its X25519 identities (used in
/// this process) and its plugin identities (`AGE-PLUGIN-…`), which only a
/// plugin run in the caller's environment can use (`plugins`).
pub(crate) struct Identities {
    pub(crate) native: Vec<age::x25519::Identity>,
    pub(crate) plugins: PluginIdentities,
    pub(crate) path: PathBuf,
}

/// Plugin identities by plugin name (`yubikey`).
pub(crate) type PluginIdentities = BTreeMap<String, Vec<age::plugin::Identity>>;

/// The caller's identities (read on a blocking thread).
pub(crate) async fn load(env: &HashMap<String, String>) -> Result<Identities, CryptError> {
    let path = identities_path(env)?;
    let p = path.clone();
    let read = super::codec::blocking(move || Ok(std::fs::read_to_string(&p))).await?;
    let text = match read {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CryptError::Identities(format!(
                "no age identities at {}: run `git s3 keygen` (or set GIT_S3_IDENTITIES to an identity file of `age-keygen`)",
                path.display()
            )))
        }
        Err(e) => return Err(CryptError::Identities(format!("cannot read {}: {e}", path.display()))),
    };
    let (native, plugins) = parse(&text).map_err(|why| CryptError::Identities(format!("{} is not an age identity file: {why}", path.display())))?;
    Ok(Identities { native, plugins, path })
}

/// An identity file's text (as `age -i` reads it: `#` comments and empty
/// lines skipped): its X25519 identities and its plugin identities (what
/// the daemon reads, and `plugin_bridge` for the plugins).
pub(crate) fn parse(text: &str) -> Result<(Vec<age::x25519::Identity>, PluginIdentities), String> {
    let (mut native, mut plugins) = (Vec::new(), PluginIdentities::new());
    for (n, line) in text.lines().enumerate().map(|(n, l)| (n + 1, l.trim())).filter(|(_, l)| !l.is_empty() && !l.starts_with('#')) {
        if let Ok(id) = line.parse::<age::x25519::Identity>() {
            native.push(id);
        } else if let Ok(id) = line.parse::<age::plugin::Identity>() {
            plugins.entry(id.plugin().to_string()).or_default().push(id);
        } else {
            // Never quote the line: it may be a secret.
            return Err(format!("line {n} is neither an age identity (AGE-SECRET-KEY-1…) nor a plugin's (AGE-PLUGIN-…)"));
        }
    }
    if native.is_empty() && plugins.is_empty() {
        return Err("it lists no identity".into());
    }
    Ok((native, plugins))
}

/// A new identity appended to the caller's file (created 0600, its
/// directory 0700); returns its recipient and the file.
pub(crate) async fn keygen(env: &HashMap<String, String>) -> Result<(String, PathBuf), CryptError> {
    let path = identities_path(env)?;
    let p = path.clone();
    super::codec::blocking(move || {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().to_string();
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let mut f = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&p)?;
        // An existing file keeps its identities; it is made private too.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        let lead = if f.metadata()?.len() > 0 { "\n" } else { "" };
        let text = format!("{lead}# created: {}\n# public key: {recipient}\n{}\n", rfc3339_now(), identity.to_string().expose_secret());
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        Ok((recipient, p))
    })
    .await
}

/// Now as `2026-01-02T03:04:05Z` (what age-keygen writes).
fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rest) = (secs / 86400, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest % 3600 / 60, rest % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_comes_from_the_callers_environment() {
        let env = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>();
        assert_eq!(identities_path(&env(&[("HOME", "/h")])).unwrap(), PathBuf::from("/h/.config/git-s3/identities"));
        assert_eq!(identities_path(&env(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "/x")])).unwrap(), PathBuf::from("/x/git-s3/identities"));
        assert_eq!(identities_path(&env(&[("HOME", "/h"), ("XDG_CONFIG_HOME", "rel")])).unwrap(), PathBuf::from("/h/.config/git-s3/identities"));
        assert_eq!(identities_path(&env(&[("HOME", "/h"), ("GIT_S3_IDENTITIES", "/k")])).unwrap(), PathBuf::from("/k"));
        assert!(identities_path(&env(&[])).is_err());
    }

    #[test]
    fn plugin_identities_are_counted_not_run() {
        let x = age::x25519::Identity::generate();
        let secret = x.to_string();
        // what testkit's age-plugin-gits3test printed
        let plugin = "AGE-PLUGIN-GITS3TEST-1G9R52T2NG4P4Y32594952KFDX9DRY36WTF25ZKPCXEVY2NZXG924XK2PT9T9YVPSXA99X469GYENSD6W2PGRX5JD24P5G4PC2VCY636XXFG4ZJJRG3V4YSGE3WZ2A";
        let text = format!("# created: 2026\n{}\n\n{plugin}\n{plugin}\n", secret.expose_secret());
        let (native, plugins) = parse(&text).unwrap();
        assert_eq!((native.len(), plugins.keys().map(String::as_str).collect::<Vec<_>>(), plugins["gits3test"].len()), (1, vec!["gits3test"], 2));
        let (native, plugins) = parse(&format!("{plugin}\n")).unwrap();
        assert!(native.is_empty() && plugins.len() == 1);
        let bad = parse(&format!("{}\nAGE-SECRET-KEY-1NOPE\n", secret.expose_secret())).err().unwrap();
        assert!(bad.contains("line 2") && !bad.contains("NOPE"), "{bad}");
        assert_eq!(parse("# nothing\n").err().unwrap(), "it lists no identity");
    }

    #[tokio::test]
    async fn keygen_appends_private_identities_that_load() {
        let dir = tempfile::tempdir().unwrap();
        let env: HashMap<String, String> = [("XDG_CONFIG_HOME".to_string(), dir.path().display().to_string())].into();
        assert!(matches!(load(&env).await, Err(CryptError::Identities(m)) if m.contains("git s3 keygen")));
        let (r1, path) = keygen(&env).await.unwrap();
        let (r2, _) = keygen(&env).await.unwrap();
        assert!(r1.starts_with("age1") && r1 != r2);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("# public key: {r1}")) && text.contains("# created: 20"));
        assert_eq!(load(&env).await.unwrap().native.len(), 2);
    }
}
