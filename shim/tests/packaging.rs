//! packaging/: the systemd user unit (verified with systemd-analyze, and run
//! the way systemd runs it), the launchd agent (parsed as a plist), and
//! install.sh (dry run).
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)] // libc calls on test processes

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::TestEnv;

fn packaging() -> PathBuf {
    testkit::workspace_root().join("packaging")
}

/// `[Section]` → `Key=Value` lines of a unit file (comments skipped).
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.to_string(), v.to_string()));
        } else {
            panic!("bad unit line: {line}");
        }
    }
    out
}

fn get<'a>(e: &'a [(String, String, String)], section: &str, key: &str) -> &'a str {
    e.iter().find(|(s, k, _)| s == section && k == key).map(|(_, _, v)| v.as_str()).unwrap_or_else(|| panic!("[{section}] {key} missing"))
}

/// A HOME whose ~/.cargo/bin holds the built binaries (what install.sh makes).
fn fake_home(dir: &Path) -> PathBuf {
    let home = dir.join("svc-home");
    let bin = home.join(".cargo/bin");
    std::fs::create_dir_all(&bin).unwrap();
    for b in ["git-s3", "git-s3-daemon", "git-remote-s3", "git-lfs-s3"] {
        std::os::unix::fs::symlink(testkit::target_bin_dir().join(b), bin.join(b)).unwrap();
    }
    home
}

fn daemon_pid(env: &TestEnv) -> Option<u64> {
    let out = env.git_s3(&env.work(), &["daemon", "status", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    v["pid"].as_u64()
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn systemd_unit_verifies_and_runs_the_daemon_like_systemd() {
    let text = std::fs::read_to_string(packaging().join("git-s3.service")).unwrap();
    let e = unit_entries(&text);
    assert_eq!(get(&e, "Service", "Restart"), "on-failure");
    assert_eq!(get(&e, "Install", "WantedBy"), "default.target");
    let exec = get(&e, "Service", "ExecStart");
    assert!(exec.starts_with("%h/.cargo/bin/git-s3-daemon run --foreground"), "{exec}");
    let pre = get(&e, "Service", "ExecStartPre");

    let env = TestEnv::new();
    let home = fake_home(env.dir.path());
    // systemd's own check of the unit (system mode: the container has no user manager).
    let out = Command::new("systemd-analyze").args(["verify", &packaging().join("git-s3.service").display().to_string()]).env("HOME", &home).output();
    match out {
        Ok(out) => assert!(out.status.success() && out.stderr.is_empty(), "systemd-analyze verify: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => eprintln!("systemd-analyze not runnable here ({e}); unit parsed only"),
    }

    let words = |line: &str| -> Vec<String> {
        line.trim_start_matches('-').split_whitespace().map(|w| w.replace("%h", &home.display().to_string())).collect()
    };
    // A daemon a shim started is running...
    env.git_s3(&env.work(), &["daemon", "start"]);
    let shim_started = daemon_pid(&env).expect("running");
    // ...ExecStartPre stops it, ExecStart then owns the (single) daemon.
    let pre = words(pre);
    let mut c = env.command(&pre[0], &env.work());
    c.args(&pre[1..]);
    env.run(c);
    let exec = words(exec);
    let mut c = env.command(&exec[0], &env.work());
    c.args(&exec[1..]).stdout(Stdio::null()).stderr(Stdio::null());
    let mut managed = c.spawn().expect("start daemon as systemd would");
    let deadline = Instant::now() + Duration::from_secs(15);
    while daemon_pid(&env) != Some(managed.id() as u64) {
        assert!(Instant::now() < deadline, "the managed daemon did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(shim_started, managed.id() as u64);

    // Shims use it (no second daemon), and a second service instance refuses.
    let repo = env.new_repo("r");
    env.git(&repo, &["push", "-q", &env.url("svc"), "main"]);
    assert_eq!(daemon_pid(&env), Some(managed.id() as u64));
    let mut c = env.command(&exec[0], &env.work());
    c.args(&exec[1..]);
    let out = env.run_fail(c);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));

    // systemctl stop: SIGTERM → clean exit (no restart under on-failure), socket removed.
    unsafe { kill(managed.id() as i32, 15) };
    let st = managed.wait().unwrap();
    assert!(st.success(), "{st:?}");
    assert!(!env.daemon_socket().exists(), "stale socket after SIGTERM");
}

#[test]
fn launchd_plist_parses_with_the_needed_keys() {
    let path = packaging().join("com.git-s3.daemon.plist");
    // What install.sh does: fill in the placeholders, then plistlib must accept it.
    let script = r#"
import json, plistlib, sys
text = open(sys.argv[1]).read().replace("@BIN_DIR@", "/Users/u/.cargo/bin").replace("@HOME@", "/Users/u")
print(json.dumps(plistlib.loads(text.encode())))
"#;
    let out = Command::new("python3").args(["-c", script, &path.display().to_string()]).output().expect("python3");
    assert!(out.status.success(), "plistlib: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Label"], "com.git-s3.daemon");
    let args: Vec<&str> = v["ProgramArguments"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args[0], "/Users/u/.cargo/bin/git-s3-daemon");
    // Same daemon arguments as the systemd unit.
    let unit = std::fs::read_to_string(packaging().join("git-s3.service")).unwrap();
    let exec = unit_entries(&unit).into_iter().find(|(_, k, _)| k == "ExecStart").unwrap().2;
    assert_eq!(args[1..].join(" "), exec.split_whitespace().skip(1).collect::<Vec<_>>().join(" "));
    assert_eq!(v["RunAtLoad"], true);
    assert_eq!(v["KeepAlive"]["SuccessfulExit"], false);
    assert_eq!(v["StandardOutPath"], "/Users/u/Library/Logs/git-s3/daemon.out.log");
    assert_eq!(v["StandardErrorPath"], "/Users/u/Library/Logs/git-s3/daemon.err.log");
}

#[test]
fn install_script_installs_four_binaries_link_and_service() {
    let script = packaging().join("install.sh");
    let st = Command::new("bash").arg("-n").arg(&script).status().unwrap();
    assert!(st.success());
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(&script)
        .args(["--dry-run", "--service", "--root", "/opt/gits3"])
        .env("HOME", dir.path())
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let root = testkit::workspace_root();
    for krate in ["daemon", "shim", "lfs-shim"] {
        let want = format!("cargo install --locked --force --root /opt/gits3 --path {}", root.join(krate).display());
        assert!(text.lines().any(|l| l == format!("+ {want}")), "{want} missing:\n{text}");
    }
    assert!(text.contains("+ ln -sf git-remote-s3 /opt/gits3/bin/git-remote-s3+zip"), "{text}");
    assert!(text.contains(&format!("{}/.config/systemd/user/git-s3.service", dir.path().display())), "{text}");
    assert!(text.contains("+ systemctl --user enable git-s3.service"), "{text}");
    // Dry run: nothing written.
    assert!(!dir.path().join(".config").exists());
    // The three crates give the four binaries.
    let bins: Vec<String> = ["daemon", "shim", "lfs-shim"]
        .iter()
        .flat_map(|k| {
            let toml = std::fs::read_to_string(root.join(k).join("Cargo.toml")).unwrap();
            toml.split("[[bin]]")
                .skip(1)
                .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("name = ").map(|n| n.trim_matches('"').to_string())))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(bins, ["git-s3-daemon", "git-remote-s3", "git-s3", "git-lfs-s3"]);
    let out = Command::new("bash").arg(&script).arg("--nope").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A cargo target directory elsewhere (as with `CARGO_TARGET_DIR`) holding
/// the built binaries under `<profile>/`: links to this build's, so no
/// second build of the workspace is needed.
fn other_target_dir(dir: &Path, profile: &str) -> PathBuf {
    let target = dir.join("elsewhere-target");
    std::fs::create_dir_all(target.join(profile)).unwrap();
    for b in ["git-s3", "git-s3-daemon", "git-remote-s3", "git-lfs-s3"] {
        std::os::unix::fs::symlink(testkit::target_bin_dir().join(b), target.join(profile).join(b)).unwrap();
    }
    target
}

#[test]
fn install_script_installs_built_binaries_man_pages_and_completions_from_cargo_target_dir() {
    let dir = tempfile::tempdir().unwrap();
    let target = other_target_dir(dir.path(), "debug");
    let prefix = dir.path().join("prefix");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let out = Command::new("bash")
        .arg(packaging().join("install.sh"))
        .args(["--no-build", "--debug", "--root"])
        .arg(&prefix)
        .env("CARGO_TARGET_DIR", &target)
        .env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    let bin = prefix.join("bin");
    for b in ["git-s3", "git-s3-daemon", "git-remote-s3", "git-lfs-s3"] {
        let installed = std::fs::read(bin.join(b)).unwrap_or_else(|e| panic!("{b}: {e}"));
        assert!(installed == std::fs::read(testkit::target_bin_dir().join(b)).unwrap(), "{b} is not the built binary");
    }
    assert_eq!(std::fs::read_link(bin.join("git-remote-s3+zip")).unwrap(), Path::new("git-remote-s3"));
    let man = prefix.join("share/man/man1");
    for page in ["git-s3.1", "git-s3-status.1", "git-s3-doctor.1", "git-s3-gc.1", "git-s3-migrate.1", "git-s3-lfs.1"] {
        assert!(man.join(page).is_file(), "{page} not installed");
    }
    for f in ["share/bash-completion/completions/git-s3", "share/zsh/site-functions/_git-s3", "share/fish/vendor_completions.d/git-s3.fish"] {
        assert!(prefix.join(f).is_file(), "{f} not installed");
    }
    // With --root nothing goes to the user's directories.
    assert!(!home.join(".local").exists() && !home.join(".config").exists() && !home.join(".cargo").exists());

    // `git s3 --help` is git's `git help s3`: man finds git-s3.1 beside the bin dir on PATH.
    let out = Command::new("git")
        .args(["s3", "--help"])
        .env("PATH", format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display()))
        .env("HOME", &home)
        .env_remove("MANPATH")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && page.contains("git-s3-doctor(1)"), "git s3 --help:\n{page}\n{}", String::from_utf8_lossy(&out.stderr));

    // Nothing built there: a clear message.
    let out = Command::new("bash")
        .arg(packaging().join("install.sh"))
        .args(["--no-build", "--root"])
        .arg(&prefix)
        .env("CARGO_TARGET_DIR", &target)
        .env("HOME", &home)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}/release/git-s3-daemon not found: run cargo build --release", target.display())), "{err}");
}

#[test]
fn install_script_puts_completions_in_the_user_directories_without_root() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(packaging().join("install.sh"))
        .args(["--dry-run", "--no-build"])
        .env("HOME", dir.path())
        .env_remove("CARGO_INSTALL_ROOT")
        .env_remove("CARGO_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_DATA_HOME")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let home = dir.path().display();
    for want in [
        format!("/.cargo/bin/git-s3-daemon generate-docs --man {home}/.cargo/share/man/man1 --completions "),
        format!(" {home}/.local/share/bash-completion/completions/git-s3"),
        format!(" {home}/.local/share/zsh/site-functions/_git-s3"),
        format!(" {home}/.config/fish/completions/git-s3.fish"),
    ] {
        assert!(text.contains(&want), "{want} missing:\n{text}");
    }
    assert!(!text.contains("cargo install"), "--no-build builds nothing:\n{text}");
    assert!(!dir.path().join(".cargo").exists() && !dir.path().join(".local").exists(), "dry run wrote files");
}

#[test]
fn demo_script_finds_the_binaries_in_cargo_target_dir() {
    // `scripts/demo.sh` with CARGO_TARGET_DIR set used to link target/release
    // and fail with "git: 'remote-s3' is not a git command". Its release build
    // is replaced by a `cargo` that answers `build` at once (the binaries are
    // already in the target dir) and runs the real cargo for anything else.
    let dir = tempfile::tempdir().unwrap();
    let target = other_target_dir(dir.path(), "release");
    let fake = dir.path().join("fake-cargo");
    std::fs::create_dir_all(&fake).unwrap();
    let real_cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    std::fs::write(
        fake.join("cargo"),
        format!("#!/bin/sh\n[ \"$1\" = build ] && {{ echo '    Finished (build already done)'; exit 0; }}\nexec '{real_cargo}' \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(fake.join("cargo"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let out = Command::new("bash")
        .arg(testkit::workspace_root().join("scripts/demo.sh"))
        .env("PATH", format!("{}:{}", fake.display(), std::env::var("PATH").unwrap_or_default()))
        .env("CARGO_TARGET_DIR", &target)
        .env("GIT_S3_TEST_VENV", testkit::venv())
        .env("HOME", &home)
        .env_remove("GIT_S3_DEMO_URL")
        .env_remove("GIT_S3_TEST_ENDPOINT")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "demo.sh failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("clone matches the source") && stdout.contains("== done: push and clone through S3 worked"), "{stdout}");
    assert!(!stderr.contains("is not a git command"), "{stderr}");
}
