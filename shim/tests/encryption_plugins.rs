//! End to end, age plugin recipients and identities (issue 22, point 1):
//! testkit's `age-plugin-gits3test` (in the role of age-plugin-yubikey) is
//! on the CALLER's `PATH` only, never on the daemon's, and git-s3 runs it
//! there: `git s3 init --encrypt-to age1gits3test1…`, push, clone, grant;
//! Debian's `age` opens the keyring with the same plugin identity; a caller
//! without the plugin, or with another plugin identity, is refused in one
//! line; a plugin that asks for a PIN asks on the caller's terminal.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{error_lines, keygen, wait_for_objects, TestEnv};

const PLUGIN: &str = "age-plugin-gits3test";

/// A directory holding only the test plugin (put on the caller's PATH).
fn plugin_dir(env: &TestEnv) -> PathBuf {
    let dir = env.dir.path().join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let real = testkit::target_bin_dir().join(PLUGIN);
    assert!(real.exists(), "{} is missing: cargo build --workspace builds it (testkit/src/bin)", real.display());
    std::os::unix::fs::symlink(real, dir.join(PLUGIN)).unwrap();
    dir
}

/// A new plugin identity in its own file (as `age-plugin-yubikey` prints
/// one); its recipient.
fn plugin_identity(plugins: &Path, file: &Path) -> String {
    let out = Command::new(plugins.join(PLUGIN)).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    std::fs::write(file, &text).unwrap();
    text.lines().find_map(|l| l.strip_prefix("# recipient: ")).unwrap().trim().to_string()
}

/// The PATH of `env`'s commands, with `plugins` after git-s3's binaries.
fn path_with(env: &TestEnv, plugins: &Path) -> String {
    format!("{}:{}:/usr/local/bin:/usr/bin:/bin", env.dir.path().join("bin").display(), plugins.display())
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_plugin_recipient_and_identity_work_from_the_callers_path_only() {
    let env = TestEnv::new();
    // The daemon starts now, with the test's PATH: the plugin is not on it.
    env.git_s3(&env.work(), &["status"]);
    let plugins = plugin_dir(&env);
    let identities = env.dir.path().join("plugin-identities");
    let recipient = plugin_identity(&plugins, &identities);
    assert!(recipient.starts_with("age1gits3test1"), "{recipient}");
    let log = env.dir.path().join("plugin.log");
    env.set_env("GIT_S3_IDENTITIES", &identities.display().to_string());
    env.set_env("GITS3TEST_PLUGIN_LOG", &log.display().to_string());
    env.set_env("PATH", &path_with(&env, &plugins));

    let url = env.url("yk");
    let out = env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &recipient, &url]);
    assert!(out.contains("encrypted to 1 recipient"), "{out}");
    assert_eq!(log_of(&log), "wrap\n", "the plugin wrapped the keyring, run with the caller's environment");
    let repo = env.new_repo("r");
    env.commit(&repo, "secret.txt", "opened by a plugin identity\n", "second");
    env.git(&repo, &["push", "-q", &url, "main"]);
    assert!(log_of(&log).contains("unwrap"), "the push opened the keyring through the plugin: {}", log_of(&log));
    wait_for_objects(&env, "yk", 4);
    env.git(&env.work(), &["clone", "-q", &url, "c1"]);
    assert_eq!(std::fs::read_to_string(env.path("c1").join("secret.txt")).unwrap(), "opened by a plugin identity\n");

    // Debian's age opens the keyring with the same identity and plugin.
    let keyring = env.dir.path().join("keyring.age");
    std::fs::write(&keyring, env.get_object("yk/.git-s3/keyring")).unwrap();
    let o = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&identities)
        .arg(&keyring)
        .env("PATH", format!("{}:/usr/bin:/bin", plugins.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "age -d: {}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("# git-s3 keyring v2\n"));

    // A caller without the plugin on PATH: one line that names it; nothing written.
    let mut c = env.command("git", &env.work());
    c.args(["clone", &url, "c2"]).env("PATH", path_with(&env, Path::new("/nonexistent")));
    let stderr = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("age-plugin-gits3test is not on your PATH"), "{stderr}");
    assert!(!env.path("c2").exists(), "a refused clone leaves nothing");

    // Another identity of the same plugin: refused in one line, with the keyring's recipients.
    let other = env.dir.path().join("other-plugin-identities");
    plugin_identity(&plugins, &other);
    let mut c = env.command("git", &env.work());
    c.args(["clone", &url, "c3"]).env("GIT_S3_IDENTITIES", &other);
    let stderr = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("is encrypted to 1 recipient (fingerprints ") && errors[0].contains("none of your identities"), "{stderr}");
    assert!(!env.path("c3").exists());

    // Grant an X25519 recipient: the keyring is wrapped to both (the plugin runs again); it clones.
    let teammate = env.dir.path().join("teammate");
    let their = keygen(&env, Some(&teammate));
    let wraps = log_of(&log).matches("wrap\n").count() - log_of(&log).matches("unwrap\n").count();
    env.git_s3(&env.work(), &["access", "grant", &url, &their]);
    let now = log_of(&log).matches("wrap\n").count() - log_of(&log).matches("unwrap\n").count();
    assert_eq!(now, wraps + 1, "{}", log_of(&log));
    let mut c = env.command("git", &env.work());
    c.args(["clone", "-q", &url, "c4"]).env("GIT_S3_IDENTITIES", &teammate);
    env.run(c);
    assert!(env.path("c4").join("secret.txt").exists());
    // The list shows both recipients.
    let listed = env.git_s3(&env.work(), &["access", "list", &url]);
    assert!(listed.contains(&recipient) && listed.contains(&their), "{listed}");
}

#[test]
fn a_plugin_that_asks_for_a_pin_asks_on_the_callers_terminal() {
    let env = TestEnv::new();
    let plugins = plugin_dir(&env);
    let identities = env.dir.path().join("plugin-identities");
    let recipient = plugin_identity(&plugins, &identities);
    let log = env.dir.path().join("plugin.log");
    env.set_env("GIT_S3_IDENTITIES", &identities.display().to_string());
    env.set_env("GITS3TEST_PLUGIN_LOG", &log.display().to_string());
    env.set_env("PATH", &path_with(&env, &plugins));
    let url = env.url("pin");
    env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &recipient, &url]);
    let repo = env.new_repo("r");
    env.git(&repo, &["push", "-q", &url, "main"]);
    env.set_env("GITS3TEST_PLUGIN_PIN", "4321");

    // No terminal (the test's stderr is a pipe): one line that says what the plugin asked and why it got no answer.
    let mut c = env.command("git", &env.work());
    c.args(["clone", &url, "c1"]);
    let stderr = String::from_utf8_lossy(&env.run_fail(c).stderr).into_owned();
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("Enter the PIN of your gits3test key") && errors[0].contains("no terminal"), "{stderr}");
    assert!(!env.path("c1").exists());

    // On a terminal (script(1) gives git one): the plugin's message shows, the PIN is asked, typed, not echoed.
    let mut c = env.command("script", &env.work());
    c.args(["-qec", &format!("git clone -q {url} c2"), "/dev/null"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !String::from_utf8_lossy(&seen).contains("Enter the PIN of your gits3test key: ") {
        assert!(Instant::now() < deadline, "no PIN prompt on the terminal: {}", String::from_utf8_lossy(&seen));
        if let Ok(b) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.extend(b);
        }
    }
    let before = seen.len();
    child.stdin.as_mut().unwrap().write_all(b"4321\n").unwrap();
    let status = child.wait().unwrap();
    while let Ok(b) = rx.recv_timeout(Duration::from_millis(500)) {
        seen.extend(b);
    }
    let shown = String::from_utf8_lossy(&seen).into_owned();
    assert!(status.success(), "the clone on a terminal failed: {shown}");
    assert!(shown.contains("git-s3: gits3test: touch your test key"), "the plugin's message reaches the terminal: {shown}");
    assert!(!String::from_utf8_lossy(&seen[before..]).contains("4321"), "the PIN was echoed: {shown}");
    assert!(log_of(&log).contains("pin accepted"), "{}", log_of(&log));
    assert!(env.path("c2").join("README.md").exists() || std::fs::read_dir(env.path("c2")).unwrap().count() > 1);
}
