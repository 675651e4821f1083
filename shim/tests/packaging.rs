//! packaging/: the systemd user unit (verified with systemd-analyze, and run
//! the way systemd runs it), the launchd agent (parsed as a plist), and
//! install.sh (dry run).

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
    let out = Command::new("systemd-analyze")
        .args(["verify", &packaging().join("git-s3.service").display().to_string()])
        .env("HOME", &home)
        .output();
    match out {
        Ok(out) => assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
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
            toml.split("[[bin]]").skip(1).filter_map(|b| b.lines().find_map(|l| l.strip_prefix("name = ").map(|n| n.trim_matches('"').to_string()))).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(bins, ["git-s3-daemon", "git-remote-s3", "git-s3", "git-lfs-s3"]);
    let out = Command::new("bash").arg(&script).arg("--nope").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
