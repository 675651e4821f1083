//! The cache's disk: a cache directory that cannot be created, and a full
//! cache filesystem (a 1 MiB tmpfs, mounted by the test: it needs root and
//! fails saying so otherwise). Clone and fetch still succeed without caching,
//! or fail with one clear line; nothing corrupt is left in the cache.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)] // libc calls on test processes

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::TestEnv;

/// A repository whose history is ~3 MiB of incompressible data (in 3 commits).
fn big_repo(env: &TestEnv) -> PathBuf {
    let repo = env.new_repo("big");
    let mut stream = testkit::xorshift(0x9e3779b97f4a7c15);
    for i in 0..3 {
        let data: Vec<u8> = (&mut stream).take(1 << 17).flat_map(u64::to_le_bytes).collect();
        std::fs::File::create(repo.join(format!("blob{i}.bin"))).unwrap().write_all(&data).unwrap();
        env.git(&repo, &["add", "."]);
        env.git(&repo, &["commit", "-q", "-m", &format!("blob {i}")]);
    }
    repo
}

fn git_in(env: &TestEnv, cache: &Path, cwd: &Path, args: &[&str]) -> (bool, String) {
    let mut c = env.command("git", cwd);
    c.env("GIT_S3_CACHE_DIR", cache).args(args);
    let out = c.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn assert_one_clear_line(what: &str, ok: bool, stderr: &str) {
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    if !ok {
        let fatals: Vec<&str> = stderr.lines().filter(|l| l.starts_with("fatal:")).collect();
        assert_eq!(fatals.len(), 1, "{what}: one fatal line:\n{stderr}");
        assert!(fatals[0].contains("cache"), "{what}: the line names the cache:\n{stderr}");
    }
}

/// Every pack in the cache verifies; no temp file is left.
fn assert_cache_sound(cache: &Path) {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    let mut files = Vec::new();
    walk(cache, &mut files);
    for f in &files {
        let name = f.to_string_lossy();
        let inside = f.strip_prefix(cache).unwrap_or(f);
        assert!(!inside.starts_with("tmp"), "a temp file is left in the cache: {name}");
        if name.ends_with(".idx") {
            let out = Command::new("git").args(["verify-pack"]).arg(f).output().unwrap();
            assert!(out.status.success(), "corrupt cached pack {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        if name.ends_with(".bundle") {
            let data = std::fs::read(f).unwrap();
            assert!(data.starts_with(b"# v2 git bundle\n") || data.starts_with(b"# v3 git bundle\n"), "corrupt cached bundle {name}");
            assert!(data.windows(4).any(|w| w == b"PACK"), "cached bundle without its pack: {name}");
        }
    }
}

#[test]
fn a_cache_dir_that_cannot_be_created() {
    let env = TestEnv::new();
    let repo = env.new_repo("r");
    env.git(&repo, &["push", "-q", &env.url("p"), "main"]);
    env.git(&env.work(), &["s3", "daemon", "stop"]);
    // A file where the cache directory should be: no user, root included, can create it.
    let cache = env.dir.path().join("cache-is-a-file");
    std::fs::write(&cache, "not a directory").unwrap();
    let (ok, err) = git_in(&env, &cache, &env.work(), &["clone", "-q", &env.url("p"), "c"]);
    eprintln!("clone with an uncreatable cache: ok={ok}\n{err}");
    assert_one_clear_line("clone", ok, &err);
    if ok {
        let (ok, err) = git_in(&env, &cache, &env.path("c"), &["fetch", "-q", "origin"]);
        assert_one_clear_line("fetch", ok, &err);
        assert!(ok);
        env.git(&env.path("c"), &["fsck", "--strict"]);
    }
    assert_eq!(std::fs::read_to_string(&cache).unwrap(), "not a directory");
    let log = std::fs::read_to_string(env.dir.path().join("state/daemon.log")).unwrap();
    assert!(log.contains("the cache directory is unusable; using a temporary one"), "{log}");
}

#[test]
fn a_full_cache_filesystem() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test mounts a small tmpfs as the cache: run it as root (as CI does)");
    let env = TestEnv::new();
    let repo = big_repo(&env);
    // main one commit behind `next`: a clone of main, then a fetch of next.
    env.git_s3(&env.work(), &["init", "--format", "packs", &env.url("packs")]);
    for prefix in ["bundles", "packs"] {
        env.git(&repo, &["push", "-q", &env.url(prefix), "HEAD~1:refs/heads/main", "HEAD:refs/heads/next"]);
    }
    env.git(&env.work(), &["s3", "daemon", "stop"]);

    let cache = env.dir.path().join("small-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let m = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&cache).output().unwrap();
    assert!(m.status.success(), "mount a 1 MiB tmpfs: {}", String::from_utf8_lossy(&m.stderr));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(cache.clone());

    for prefix in ["bundles", "packs"] {
        let dest = format!("c-{prefix}");
        let (ok, err) = git_in(&env, &cache, &env.work(), &["clone", "-q", "--single-branch", "-b", "main", &env.url(prefix), &dest]);
        eprintln!("clone of {prefix} with a full cache: ok={ok}\n{err}");
        assert_one_clear_line(&format!("clone {prefix}"), ok, &err);
        if ok {
            env.git(&env.path(&dest), &["fsck", "--strict"]);
            // More history (1 MiB more), fetched while the cache is still full.
            let (ok, err) = git_in(&env, &cache, &env.path(&dest), &["fetch", "-q", "origin", "next"]);
            eprintln!("fetch of {prefix} with a full cache: ok={ok}\n{err}");
            assert_one_clear_line(&format!("fetch {prefix}"), ok, &err);
            if ok {
                env.git(&env.path(&dest), &["fsck", "--strict"]);
            }
        }
        assert_cache_sound(&cache);
    }
    // The full disk was met (and the downloads streamed past it).
    let log = std::fs::read_to_string(env.dir.path().join("state/daemon.log")).unwrap();
    let streamed = log.lines().filter(|l| l.contains("download not kept on disk")).count();
    eprintln!("downloads streamed past the full cache: {streamed}");
    assert!(streamed >= 2, "the cache filesystem never filled up:\n{log}");
    env.git(&env.work(), &["s3", "daemon", "stop"]);
}

/// A push with the cache filesystem full (a 1 MiB tmpfs, root required):
/// it succeeds without caching, or fails with one line that names the cache
/// and says what to do; the remote keeps its refs either way.
#[test]
fn a_push_with_a_full_cache_filesystem() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test mounts a small tmpfs as the cache: run it as root (as CI does)");
    let env = TestEnv::new();
    let repo = big_repo(&env);
    env.git_s3(&env.work(), &["init", "--format", "packs", &env.url("packs")]);
    // main two commits behind; the push adds ~2 MiB of incompressible data,
    // more than the cache holds.
    for prefix in ["bundles", "packs"] {
        env.git(&repo, &["push", "-q", &env.url(prefix), "HEAD~2:refs/heads/main"]);
    }
    let old = env.git(&repo, &["rev-parse", "HEAD~2"]).trim().to_string();
    let new = env.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    env.git(&env.work(), &["s3", "daemon", "stop"]);

    let cache = env.dir.path().join("small-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let m = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&cache).output().unwrap();
    assert!(m.status.success(), "mount a 1 MiB tmpfs: {}", String::from_utf8_lossy(&m.stderr));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(cache.clone());

    for prefix in ["bundles", "packs"] {
        let url = env.url(prefix);
        let (ok, err) = git_in(&env, &cache, &repo, &["push", "-q", &url, "main"]);
        eprintln!("push to {prefix} with a full cache: ok={ok}\n{err}");
        assert!(!err.contains("panicked"), "{prefix}: {err}");
        let ls = env.ls_remote(testkit::Tool::Ours, &url);
        let at = |sha: &str| ls.contains(&format!("{sha}\trefs/heads/main"));
        if ok {
            assert!(at(&new), "{prefix}: the push succeeded: {ls:?}");
            env.git(&env.work(), &["clone", "-q", &url, &format!("c-{prefix}")]);
            env.git(&env.path(&format!("c-{prefix}")), &["fsck", "--strict"]);
        } else {
            let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("To ")).collect();
            assert!(
                lines.iter().any(|l| l.contains("cache") && (l.contains("GIT_S3_CACHE_DIR") || l.contains("free"))),
                "{prefix}: the error names the cache and what to do:\n{err}"
            );
            assert!(at(&old), "{prefix}: the remote keeps main: {ls:?}");
        }
        assert!(!env.keys(&format!("{prefix}/")).iter().any(|k| k.contains("LOCK#")), "{prefix}: no lock left");
    }
    assert_cache_sound(&cache);
    env.git(&env.work(), &["s3", "daemon", "stop"]);
}

/// The cache on another filesystem than the repository (a tmpfs with room
/// to spare; root required), as when the repository is on a data disk and
/// the cache in the home directory: pushes and clones work in both formats.
#[test]
fn a_cache_on_another_filesystem_than_the_repository() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test mounts a tmpfs as the cache: run it as root (as CI does)");
    let env = TestEnv::new();
    let repo = big_repo(&env);
    env.git_s3(&env.work(), &["init", "--format", "packs", &env.url("packs")]);
    let cache = env.dir.path().join("other-fs-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let m = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"]).arg(&cache).output().unwrap();
    assert!(m.status.success(), "mount a tmpfs: {}", String::from_utf8_lossy(&m.stderr));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(cache.clone());
    env.git(&env.work(), &["s3", "daemon", "stop"]);
    let head = env.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    for prefix in ["bundles", "packs"] {
        let url = env.url(prefix);
        // Two pushes: the second one incremental.
        for rev in ["HEAD~2", "HEAD"] {
            let (ok, err) = git_in(&env, &cache, &repo, &["push", "-q", &url, &format!("{rev}:refs/heads/main")]);
            assert!(ok, "push {rev} to {prefix} with the cache on another filesystem:\n{err}");
        }
        let dest = format!("c-{prefix}");
        let (ok, err) = git_in(&env, &cache, &env.work(), &["clone", "-q", &url, &dest]);
        assert!(ok, "clone of {prefix}: {err}");
        assert_eq!(env.git(&env.path(&dest), &["rev-parse", "HEAD"]).trim(), head);
        env.git(&env.path(&dest), &["fsck", "--strict"]);
    }
    assert_cache_sound(&cache);
    env.git(&env.work(), &["s3", "daemon", "stop"]);
    // The packs were built beside git's temp files, and removed after their upload.
    let left: Vec<_> = std::fs::read_dir(repo.join(".git/objects"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("tmp_"))
        .collect();
    assert!(left.is_empty(), "temp directories left in the repository: {left:?}");
}
