//! End to end: code on another git server (a local bare repository plays
//! GitHub), LFS objects in S3 — `install --remote origin --url s3://…`,
//! push, a teammate's clone after the one set-up command per machine
//! (`install --global --scoped`, then the committed `.lfsconfig` names the
//! bucket), `git lfs pull` after a clone without smudge, uninstall, and the
//! error cases (bucket missing, no credentials, object missing, a bucket
//! the user cannot read).
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::path::{Path, PathBuf};
use std::process::Output;

use testkit::TestEnv;

const PREFIX: &str = "team/repo";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `git-lfs-s3 <args>` in `cwd`; must succeed; returns stdout.
fn lfs_s3(env: &TestEnv, cwd: &Path, args: &[&str]) -> String {
    let mut c = env.command("git-lfs-s3", cwd);
    c.args(args);
    stdout(&env.run(c))
}

/// A bare repository at `work/<name>`: the "code host".
fn code_host(env: &TestEnv, name: &str) -> PathBuf {
    let host = env.path(name);
    env.git(&env.work(), &["init", "-q", "--bare", "-b", "main", host.to_str().unwrap()]);
    host
}

/// A working copy tracking `*.bin` with LFS, two LFS files committed (one
/// above the single-PUT size), `origin` = `host`.
fn lfs_work(env: &TestEnv, name: &str, host: &Path) -> PathBuf {
    env.git(&env.home(), &["lfs", "install", "--skip-repo"]);
    let repo = env.path(name);
    std::fs::create_dir_all(&repo).unwrap();
    env.git(&repo, &["init", "-q", "-b", "main"]);
    env.git(&repo, &["lfs", "track", "*.bin"]);
    std::fs::write(repo.join("small.bin"), b"a small LFS object\n").unwrap();
    let big: Vec<u8> = (0..(3u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(repo.join("big.bin"), &big).unwrap();
    env.git(&repo, &["add", "-A"]);
    env.git(&repo, &["commit", "-q", "-m", "LFS files"]);
    env.git(&repo, &["remote", "add", "origin", host.to_str().unwrap()]);
    repo
}

fn oid_of(env: &TestEnv, repo: &Path, file: &str) -> String {
    testkit::lfs_oid(env, repo, file)
}

fn alias(bucket: &str) -> String {
    format!("https://lfs-alias.git-remote-s3.test/{bucket}/{PREFIX}")
}

fn host_refs(env: &TestEnv, host: &Path) -> String {
    env.git(host, &["for-each-ref", "--format=%(refname)"])
}

#[test]
fn code_elsewhere_lfs_in_s3_install_push_clone_pull_uninstall() {
    let a = TestEnv::new();
    let host = code_host(&a, "host.git");
    let repo = lfs_work(&a, "w", &host);
    let s3 = a.url(PREFIX);

    let out = a.git_s3(&repo, &["lfs", "install", "--remote", "origin", "--url", &s3]);
    assert!(out.contains("git-lfs-s3 installed for remote 'origin'"), "{out}");
    assert!(out.contains("commit it"), "{out}");
    assert_eq!(a.git(&repo, &["config", "--get", "remote.origin.lfsurl"]).trim(), alias(&a.bucket));
    assert_eq!(a.git(&repo, &["config", "--file", ".lfsconfig", "--get", "lfs.url"]).trim(), alias(&a.bucket));
    a.git(&repo, &["add", ".lfsconfig"]);
    a.git(&repo, &["commit", "-q", "-m", "LFS objects in S3"]);

    a.git_s3(&repo, &["lfs", "enable-debug"]);
    a.git(&repo, &["push", "-q", "origin", "main"]);
    // git-lfs started several agents; one of them checked the bucket.
    let log = std::fs::read_to_string(repo.join(".git/lfs/tmp/git-lfs-s3.log")).unwrap();
    let checked = log.matches(&format!("bucket checked: {s3}")).count();
    let inits = log.matches("init operation=").count();
    assert_eq!(checked, 1, "{log}");
    assert!(inits > 1, "{log}");
    a.git_s3(&repo, &["lfs", "disable-debug"]);
    let (small, big) = (oid_of(&a, &repo, "small.bin"), oid_of(&a, &repo, "big.bin"));
    let keys = a.keys(&format!("{PREFIX}/lfs/"));
    for oid in [&small, &big] {
        assert!(keys.contains(&format!("{PREFIX}/lfs/{oid}")), "{oid} not in {keys:?}");
    }
    assert_eq!(a.get_object(&format!("{PREFIX}/lfs/{small}")), b"a small LFS object\n");
    assert!(host_refs(&a, &host).contains("refs/heads/main"));
    // The code host got git objects only: pointers, no LFS store of its own.
    assert!(!host.join("lfs").exists());
    let blob = a.git(&host, &["cat-file", "-p", "main:big.bin"]);
    assert!(blob.starts_with("version https://git-lfs.github.com/spec/v1"), "{blob}");

    // A teammate: own HOME, daemon and cache; one command on this machine.
    let b = TestEnv::new();
    let out = lfs_s3(&b, &b.home(), &["install", "--global", "--scoped"]);
    assert!(out.contains("git-lfs-s3 installed for every repository"), "{out}");
    assert!(!b.git(&b.home(), &["config", "--global", "--get", "filter.lfs.process"]).trim().is_empty());
    let clone = b.path("clone");
    b.git(&b.work(), &["clone", "-q", host.to_str().unwrap(), clone.to_str().unwrap()]);
    assert_eq!(std::fs::read(clone.join("small.bin")).unwrap(), b"a small LFS object\n");
    assert_eq!(std::fs::read(clone.join("big.bin")).unwrap(), std::fs::read(repo.join("big.bin")).unwrap());

    // `git lfs pull` after a clone that skipped the smudge.
    let plain = b.path("plain");
    let mut c = b.command("git", &b.work());
    c.env("GIT_LFS_SKIP_SMUDGE", "1").args(["clone", "-q", host.to_str().unwrap(), plain.to_str().unwrap()]);
    b.run(c);
    assert!(std::fs::read_to_string(plain.join("small.bin")).unwrap().starts_with("version https://git-lfs"));
    b.git(&plain, &["lfs", "pull"]);
    assert_eq!(std::fs::read(plain.join("small.bin")).unwrap(), b"a small LFS object\n");
    assert_eq!(std::fs::read(plain.join("big.bin")).unwrap(), std::fs::read(repo.join("big.bin")).unwrap());

    // The teammate pushes a new object (through .lfsconfig alone); the first user pulls it.
    std::fs::write(clone.join("new.bin"), b"from the teammate\n").unwrap();
    b.git(&clone, &["add", "new.bin"]);
    b.git(&clone, &["commit", "-q", "-m", "new"]);
    b.git(&clone, &["push", "-q", "origin", "main"]);
    let new = oid_of(&b, &clone, "new.bin");
    assert_eq!(a.get_object(&format!("{PREFIX}/lfs/{new}")), b"from the teammate\n");
    a.git(&repo, &["pull", "-q", "origin", "main"]);
    assert_eq!(std::fs::read(repo.join("new.bin")).unwrap(), b"from the teammate\n");

    // `git lfs push --all` skips what the bucket has.
    a.git(&repo, &["lfs", "push", "--all", "origin"]);

    // Uninstall removes what install wrote.
    let out = a.git_s3(&repo, &["lfs", "uninstall", "--remote", "origin"]);
    assert!(out.contains("removed lfs.url from .lfsconfig"), "{out}");
    let left = a.git(&repo, &["config", "--local", "--list"]);
    assert!(!left.contains("lfs-alias") && !left.contains("git-lfs-s3"), "{left}");
    assert!(!repo.join(".lfsconfig").exists());
    let out = lfs_s3(&b, &b.home(), &["uninstall", "--global"]);
    assert!(out.contains("uninstalled"), "{out}");
    let global = b.git(&b.home(), &["config", "--global", "--list"]);
    assert!(!global.contains("lfs-alias") && !global.contains("git-lfs-s3"), "{global}");
}

#[test]
fn install_refusals() {
    let a = TestEnv::new();
    let host = code_host(&a, "host.git");
    let repo = lfs_work(&a, "w", &host);
    let mut c = a.command("git-s3", &repo);
    c.args(["lfs", "install", "--remote", "nope", "--url", &a.url(PREFIX)]);
    assert!(stderr(&a.run_fail(c)).contains("remote 'nope' is not configured"));
    let mut c = a.command("git-s3", &repo);
    c.args(["lfs", "install", "--remote", "origin", "--url", "https://example.com/x"]);
    assert!(stderr(&a.run_fail(c)).contains("--url: invalid remote URL"));
    a.git(&repo, &["config", "--file", ".lfsconfig", "lfs.url", "https://lfs.example.com/repo"]);
    let mut c = a.command("git-s3", &repo);
    c.args(["lfs", "install", "--remote", "origin", "--url", &a.url(PREFIX)]);
    let err = stderr(&a.run_fail(c));
    assert!(err.contains(".lfsconfig already sets lfs.url to 'https://lfs.example.com/repo'"), "{err}");
}

/// Runs `git push origin main` in `repo` with `env` changes; must fail.
fn failing_push(env: &TestEnv, repo: &Path, vars: &[(&str, Option<&str>)]) -> String {
    let mut c = env.command("git", repo);
    for (k, v) in vars {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.args(["push", "origin", "main"]);
    stderr(&env.run_fail(c))
}

#[test]
fn a_push_fails_before_any_git_object_when_the_bucket_cannot_be_used() {
    let a = TestEnv::new();
    let host = code_host(&a, "host.git");
    let repo = lfs_work(&a, "w", &host);
    a.git_s3(&repo, &["lfs", "install", "--remote", "origin", "--url", "s3://no-such-bucket-for-git-s3/p", "--no-lfsconfig"]);
    let err = failing_push(&a, &repo, &[]);
    assert!(err.contains("bucket 'no-such-bucket-for-git-s3' does not exist"), "{err}");
    assert_eq!(host_refs(&a, &host), "", "git objects were pushed: {err}");
    assert_eq!(a.git(&host, &["count-objects"]).trim(), "0 objects, 0 kilobytes");

    a.git_s3(&repo, &["lfs", "uninstall", "--remote", "origin"]);
    a.git_s3(&repo, &["lfs", "install", "--remote", "origin", "--url", &a.url(PREFIX), "--no-lfsconfig"]);
    let err = failing_push(&a, &repo, &[("AWS_ACCESS_KEY_ID", None), ("AWS_SECRET_ACCESS_KEY", None), ("AWS_EC2_METADATA_DISABLED", Some("true"))]);
    assert!(err.contains("no AWS credentials"), "{err}");
    assert_eq!(host_refs(&a, &host), "", "git objects were pushed: {err}");
    assert!(a.keys(&format!("{PREFIX}/lfs/")).is_empty());
}

#[test]
fn a_missing_object_or_an_unreadable_bucket_is_one_clear_line() {
    let a = TestEnv::new();
    let host = code_host(&a, "host.git");
    let repo = lfs_work(&a, "w", &host);
    a.git_s3(&repo, &["lfs", "install", "--remote", "origin", "--url", &a.url(PREFIX)]);
    a.git(&repo, &["add", ".lfsconfig"]);
    a.git(&repo, &["commit", "-q", "-m", "LFS objects in S3"]);
    a.git(&repo, &["push", "-q", "origin", "main"]);
    let small = oid_of(&a, &repo, "small.bin");
    let key = format!("{PREFIX}/lfs/{small}");
    a.delete_object(&key);

    let b = TestEnv::new();
    lfs_s3(&b, &b.home(), &["install", "--global", "--scoped"]);
    let clone = b.path("clone");
    let mut c = b.command("git", &b.work());
    c.env("GIT_LFS_SKIP_SMUDGE", "1").args(["clone", "-q", host.to_str().unwrap(), clone.to_str().unwrap()]);
    b.run(c);
    let mut c = b.command("git", &clone);
    c.args(["lfs", "pull"]);
    let err = stderr(&b.run_fail(c));
    let naming: Vec<&str> = err.lines().filter(|l| l.contains(&format!("s3://{}/{key}", a.bucket))).collect();
    assert!(!naming.is_empty() && naming.iter().all(|l| l.contains("is missing")), "{err}");
    // The other object arrived all the same.
    assert_eq!(std::fs::read(clone.join("big.bin")).unwrap(), std::fs::read(repo.join("big.bin")).unwrap());

    // A user whose credentials the server rejects: one clear line.
    let c2 = b.path("clone2");
    let mut c = b.command("git", &b.work());
    c.env("GIT_LFS_SKIP_SMUDGE", "1").args(["clone", "-q", host.to_str().unwrap(), c2.to_str().unwrap()]);
    b.run(c);
    let mut c = b.command("git", &c2);
    c.env("AWS_ENDPOINT_URL", testkit::auth_endpoint()).args(["lfs", "pull"]);
    let err = stderr(&b.run_fail(c));
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("credentials were rejected")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(&format!("s3://{}/{PREFIX}", a.bucket)), "{err}");

    // A machine that skipped the set-up command: git-lfs's own error names the alias host.
    let c = TestEnv::new();
    c.git(&c.home(), &["lfs", "install", "--skip-repo"]);
    let c3 = c.path("clone3");
    let mut cmd = c.command("git", &c.work());
    cmd.env("GIT_LFS_SKIP_SMUDGE", "1").args(["clone", "-q", host.to_str().unwrap(), c3.to_str().unwrap()]);
    c.run(cmd);
    let mut cmd = c.command("git", &c3);
    cmd.args(["lfs", "pull"]);
    let err = stderr(&c.run_fail(cmd));
    assert!(err.contains("lfs-alias.git-remote-s3.test"), "{err}");
}

/// Content of the LFS file `file` at `rev`, straight from the bucket.
fn bucket_object(env: &TestEnv, bucket_env: &TestEnv, repo: &Path, rev: &str) -> Vec<u8> {
    let pointer = env.git(repo, &["cat-file", "-p", rev]);
    let oid = pointer.lines().find_map(|l| l.strip_prefix("oid sha256:")).expect("a pointer").to_string();
    bucket_env.get_object(&format!("{PREFIX}/lfs/{oid}"))
}

#[test]
fn migrate_from_the_code_hosts_lfs_server_then_clone_without_it() {
    let a = TestEnv::new();
    let server = testkit::LfsServer::start(&a.dir.path().join("lfs-server"));
    let host = code_host(&a, "host.git");
    a.git(&a.home(), &["lfs", "install", "--skip-repo"]);

    // A repository whose LFS objects live on the code host's LFS server:
    // two versions of one file, and one more on another branch.
    let repo = a.path("w");
    std::fs::create_dir_all(&repo).unwrap();
    a.git(&repo, &["init", "-q", "-b", "main"]);
    a.git(&repo, &["config", "lfs.locksverify", "false"]);
    a.git(&repo, &["config", "--file", ".lfsconfig", "lfs.url", &server.url("repo")]);
    a.git(&repo, &["lfs", "track", "*.bin"]);
    std::fs::write(repo.join("data.bin"), b"version one\n").unwrap();
    std::fs::write(repo.join("keep.bin"), b"unchanged\n").unwrap();
    a.git(&repo, &["add", "-A"]);
    a.git(&repo, &["commit", "-q", "-m", "v1"]);
    std::fs::write(repo.join("data.bin"), b"version two\n").unwrap();
    a.git(&repo, &["commit", "-q", "-am", "v2"]);
    a.git(&repo, &["checkout", "-q", "-b", "other"]);
    std::fs::write(repo.join("side.bin"), b"on a branch\n").unwrap();
    a.git(&repo, &["add", "side.bin"]);
    a.git(&repo, &["commit", "-q", "-m", "side"]);
    a.git(&repo, &["checkout", "-q", "main"]);
    a.git(&repo, &["remote", "add", "origin", host.to_str().unwrap()]);
    a.git(&repo, &["push", "-q", "origin", "main", "other"]);
    let on_server = server.oids();
    assert_eq!(on_server.len(), 4, "{on_server:?}");

    // Someone migrates from a fresh clone (it has only main's current objects).
    let m = a.path("m");
    a.git(&a.work(), &["clone", "-q", host.to_str().unwrap(), m.to_str().unwrap()]);
    let before = server.downloads();
    // An earlier, interrupted run left one object in the bucket.
    let keep = std::fs::read(m.join("keep.bin")).unwrap();
    let keep_oid = oid_of(&a, &m, "keep.bin");
    a.put_object(&format!("{PREFIX}/lfs/{keep_oid}"), &keep);

    let s3 = a.url(PREFIX);
    let out = a.git_s3(&m, &["lfs", "migrate", "--to", &s3]);
    assert!(out.contains(&format!("4 LFS objects in {s3}/lfs/: 3 copied from {}, 1 already there", server.url("repo"))), "{out}");
    assert!(out.contains("nothing was deleted"), "{out}");
    // Only the objects the clone lacked came from the server (v1 and the branch's).
    assert_eq!(server.downloads() - before, 2);
    assert_eq!(server.oids(), on_server, "the server lost objects");
    for (rev, want) in [
        ("main:data.bin", &b"version two\n"[..]),
        ("main~1:data.bin", b"version one\n"),
        ("main:keep.bin", b"unchanged\n"),
        ("origin/other:side.bin", b"on a branch\n"),
    ] {
        assert_eq!(bucket_object(&a, &a, &m, rev), want, "{rev}");
    }
    assert_eq!(a.git(&m, &["config", "--file", ".lfsconfig", "--get", "lfs.url"]).trim(), alias(&a.bucket));
    a.git(&m, &["commit", "-q", "-am", "LFS objects now in S3"]);
    a.git(&m, &["push", "-q", "origin", "main"]);

    // A rerun has nothing left to do.
    let mut c = a.command("git-s3", &m);
    c.args(["lfs", "migrate", "--to", &s3]);
    let err = stderr(&a.run(c));
    assert!(err.contains("already uses"), "{err}");

    // The old server is gone; a teammate's clone reads everything from S3.
    drop(server);
    let b = TestEnv::new();
    lfs_s3(&b, &b.home(), &["install", "--global", "--scoped"]);
    let clone = b.path("clone");
    b.git(&b.work(), &["clone", "-q", host.to_str().unwrap(), clone.to_str().unwrap()]);
    assert_eq!(std::fs::read(clone.join("data.bin")).unwrap(), b"version two\n");
    // Every object of every ref, from main's .lfsconfig (S3).
    b.git(&clone, &["lfs", "fetch", "--all", "origin"]);
    let side = b.git(&clone, &["cat-file", "-p", "origin/other:side.bin"]);
    let side_oid = side.lines().find_map(|l| l.strip_prefix("oid sha256:")).unwrap();
    let local = clone.join(".git/lfs/objects").join(&side_oid[0..2]).join(&side_oid[2..4]).join(side_oid);
    assert_eq!(std::fs::read(local).unwrap(), b"on a branch\n");
}
