//! The daemon's socket, runtime dir and cache belong to one user, and no
//! credential is ever written to the log, verbose output or `git s3 status`.
//!
//! The other-user test needs root (to create a throwaway user and run as
//! it): as any other user it fails with a message saying so.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)] // libc calls on test processes

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::TestEnv;

const OTHER_USER: &str = "gits3-other";
const SECRET: &str = "gits3SecretKEY0123456789abcdefXYZ";
const TOKEN: &str = "gits3SessionTOKENqwertyuiop0987654321";

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

fn other_uid() -> u32 {
    // Once per test process: the tests run in parallel threads, and two
    // `useradd`s racing on a fresh machine gave the user a second uid
    // after one test had read the first (CI, 2026-12-05).
    static UID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UID.get_or_init(create_other_user)
}

fn create_other_user() -> u32 {
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test creates a second user ({OTHER_USER}) and connects as it: run it as root (as CI does)");
    let id = Command::new("id").args(["-u", OTHER_USER]).output().expect("run id");
    if !id.status.success() {
        let out =
            Command::new("useradd").args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER]).output().expect("run useradd");
        assert!(out.status.success(), "useradd {OTHER_USER}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let id = Command::new("id").args(["-u", OTHER_USER]).output().expect("run id");
    String::from_utf8_lossy(&id.stdout).trim().parse().expect("uid")
}

fn bin(name: &str) -> PathBuf {
    testkit::target_bin_dir().join(name)
}

#[test]
fn the_socket_refuses_another_user() {
    let uid = other_uid();
    assert_ne!(uid, 0);
    let env = TestEnv::new();
    let repo = env.new_repo("r");
    env.git(&repo, &["push", "-q", &env.url("p"), "main"]);
    let socket = env.daemon_socket();
    let run_dir = socket.parent().unwrap().to_path_buf();
    assert_eq!(mode(&run_dir), 0o700, "the runtime dir is private");
    assert_eq!(mode(&socket), 0o600, "the socket is private");

    // Through the runtime dir another user cannot even reach the socket.
    let out = Command::new("runuser")
        .args(["-u", OTHER_USER, "--", "env", "-i", "PATH=/usr/bin:/bin", "HOME=/"])
        .arg(format!("GIT_S3_RUNTIME_DIR={}", run_dir.display()))
        .args(["GIT_S3_DAEMON=/nonexistent/git-s3-daemon"])
        .arg(bin("git-s3"))
        .args(["daemon", "status", "--json"])
        .output()
        .expect("runuser");
    // (`daemon status` answers `running: false` when it cannot reach a daemon.)
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(seen.contains("\"running\":false") && !seen.contains("\"pid\""), "another user reached the daemon: {seen}");

    // Even with the socket's own permission bits opened and a path the
    // other user can reach (a hard link in a 0755 dir), the daemon checks
    // the peer's uid and drops the connection.
    let open_dir = tempfile::Builder::new().prefix("gits3-sock-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::hard_link(&socket, open_dir.path().join("daemon.sock")).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let as_other = Command::new("runuser")
        .args(["-u", OTHER_USER, "--", "env", "-i", "PATH=/usr/bin:/bin", "HOME=/"])
        .arg(format!("GIT_S3_RUNTIME_DIR={}", open_dir.path().display()))
        .args(["GIT_S3_DAEMON=/nonexistent/git-s3-daemon"])
        .arg(bin("git-s3"))
        .args(["daemon", "status", "--json"])
        .output()
        .expect("runuser");
    // The owner, by the same path, is served (so the refusal above is the uid check).
    let as_owner = env
        .command("git-s3", &env.work())
        .env("GIT_S3_RUNTIME_DIR", open_dir.path())
        .env("GIT_S3_DAEMON", "/nonexistent/git-s3-daemon")
        .args(["daemon", "status", "--json"])
        .output()
        .unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(as_owner.status.success(), "the owner through the link: {}", String::from_utf8_lossy(&as_owner.stderr));
    assert!(String::from_utf8_lossy(&as_owner.stdout).contains("\"pid\""), "{}", String::from_utf8_lossy(&as_owner.stdout));
    // (The connection is dropped: `git s3 daemon status: transport error`,
    // or `"running":false` when the drop comes before the first exchange.)
    let seen = String::from_utf8_lossy(&as_other.stdout);
    assert!(
        (!as_other.status.success() || seen.contains("\"running\":false")) && !seen.contains("\"pid\""),
        "another user was served:\n{seen}\n{}",
        String::from_utf8_lossy(&as_other.stderr)
    );
    let log = std::fs::read_to_string(env.dir.path().join("state/daemon.log")).expect("daemon log");
    assert!(
        log.lines().any(|l| l.contains("refused connection from another user") && l.contains(&uid.to_string())),
        "the daemon log does not show the refusal of uid {uid}:\n{log}"
    );
    // The daemon still serves its owner.
    env.git(&env.work(), &["ls-remote", &env.url("p")]);
}

#[test]
fn cache_and_temp_files_are_private() {
    let uid = other_uid();
    let env = TestEnv::new();
    let repo = env.new_repo("r");
    env.git(&repo, &["push", "-q", &env.url("p"), "main"]);
    env.git(&env.work(), &["clone", "-q", &env.url("p"), "c"]);
    let cache = env.dir.path().join("cache");
    assert_eq!(mode(&cache), 0o700, "the cache root is private");
    let mut files = Vec::new();
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    walk(&cache, &mut files);
    assert!(!files.is_empty(), "the clone cached nothing");
    for f in &files {
        assert_eq!(std::fs::metadata(f).unwrap().uid(), 0, "{}", f.display());
    }
    // As the other user: neither the cache nor one of its files can be read.
    // (The test's own temp dir is 0700 too; open it so only the cache's own
    // permissions stand in the way.)
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for target in [cache.clone(), files[0].clone(), cache.join("tmp")] {
        let out = Command::new("runuser").args(["-u", OTHER_USER, "--", "cat"]).arg(&target).output().unwrap();
        let ls = Command::new("runuser").args(["-u", OTHER_USER, "--", "ls"]).arg(&target).output().unwrap();
        assert!(!out.status.success() && !ls.status.success(), "uid {uid} can read {}", target.display());
        assert!(String::from_utf8_lossy(&ls.stderr).contains("Permission denied"), "{}", String::from_utf8_lossy(&ls.stderr));
    }
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn credentials_never_reach_logs_verbose_output_or_status() {
    let env = TestEnv::new();
    let secret_env = |c: &mut Command| {
        c.env("AWS_SECRET_ACCESS_KEY", SECRET).env("AWS_SESSION_TOKEN", TOKEN).env("GIT_S3_LOG", "trace");
    };
    let repo = env.new_repo("r");
    let mut outputs = Vec::new();
    let mut run = |args: &[&str], program: &str, cwd: &Path, verbose: bool| {
        let mut c = env.command(program, cwd);
        secret_env(&mut c);
        if verbose {
            c.env("GIT_REMOTE_S3_VERBOSE", "1");
        }
        c.args(args);
        let out = c.output().unwrap();
        outputs.push((
            format!("{program} {args:?}"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
        out.status.success()
    };
    // The daemon starts with the secrets in the environment of its first caller.
    assert!(run(&["push", "-v", &env.url("p"), "main"], "git", &repo, true));
    assert!(run(&["clone", "-v", &env.url("p"), "c"], "git", &env.work(), true));
    assert!(run(&["fetch", "-v", &env.url("p")], "git", &env.path("c"), true));
    let _ = run(&["ls-remote", &env.url("nothing-here")], "git", &env.work(), true);
    // A failure (rejected credentials) in verbose mode.
    let _ = run(&["ls-remote", "s3://no-such-bucket-for-git-s3/p"], "git", &env.work(), true);
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["status", &env.url("p")],
        vec!["status", "--json", &env.url("p")],
        vec!["daemon", "status"],
        vec!["daemon", "status", "--json"],
        vec!["doctor", &env.url("p")],
    ] {
        assert!(run(&args, "git-s3", &env.path("c"), false), "git s3 {args:?}");
    }
    let mut seen = 0;
    for (what, stdout, stderr) in &outputs {
        for s in [SECRET, TOKEN] {
            assert!(!stdout.contains(s) && !stderr.contains(s), "{what} printed a credential:\n{stdout}\n{stderr}");
        }
        seen += stdout.len() + stderr.len();
    }
    assert!(seen > 0);
    // Every file the daemon wrote (log, state, runtime dir, cache).
    let mut checked = 0;
    fn walk(d: &Path, f: &mut dyn FnMut(&Path)) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&p, f);
            } else if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                f(&p);
            }
        }
    }
    let log = std::fs::read_to_string(env.dir.path().join("state/daemon.log")).expect("daemon log");
    assert!(log.lines().count() > 10, "the trace log is nearly empty:\n{log}");
    for d in ["state", "run", "cache"] {
        walk(&env.dir.path().join(d), &mut |p| {
            let data = std::fs::read(p).unwrap_or_default();
            let text = String::from_utf8_lossy(&data);
            for s in [SECRET, TOKEN] {
                assert!(!text.contains(s), "{} holds a credential", p.display());
            }
            checked += 1;
        });
    }
    assert!(checked > 0);
    eprintln!("checked {} outputs and {checked} files ({} log lines at trace level)", outputs.len(), log.lines().count());
}
