//! End to end: git-lfs with the `git-lfs-s3` agent through the real git,
//! git-lfs and the test S3 server — push (incl. a multipart object), clone
//! in one step, skip of existing objects, the local cache, corrupt and
//! missing objects, install variants, and interop with git-remote-s3 0.4.2.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use testkit::{TestEnv, Tool};

/// 64 MiB + a bit: above the multipart threshold.
const BIG: u64 = (64 << 20) + 4097;

/// A TestEnv whose user has run `git lfs install` once.
fn lfs_env() -> TestEnv {
    let env = TestEnv::new();
    env.git(&env.home(), &["lfs", "install", "--skip-repo"]);
    env
}

/// Writes `len` deterministic pseudo-random bytes (seeded), streaming.
fn write_pseudo_random(path: &Path, len: u64, seed: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// Byte-for-byte comparison, streaming.
fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(fa), Ok(fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else { return false };
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ra, mut rb) = (std::io::BufReader::new(fa), std::io::BufReader::new(fb));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut ra, &mut ba);
        let nb = read_full(&mut rb, &mut bb);
        if na != nb || ba[..na] != bb[..nb] {
            return false;
        }
        if na == 0 {
            return true;
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// `path → oid` from `git lfs ls-files -l`.
fn lfs_oids(env: &TestEnv, repo: &Path) -> Vec<(String, String)> {
    env.git(repo, &["lfs", "ls-files", "-l"])
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let oid = it.next()?.to_string();
            let _marker = it.next()?;
            Some((it.collect::<Vec<_>>().join(" "), oid))
        })
        .collect()
}

fn oid_of(env: &TestEnv, repo: &Path, file: &str) -> String {
    lfs_oids(env, repo).into_iter().find(|(p, _)| p == file).map(|(_, o)| o).unwrap_or_else(|| panic!("{file} is not an LFS file"))
}

/// A repo at `work/<name>` tracking `*.bin` with LFS, with the given files
/// committed, and `origin` set to `url`.
fn lfs_repo(env: &TestEnv, tool: Tool, name: &str, url: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let repo = env.path(name);
    std::fs::create_dir_all(&repo).unwrap();
    env.git_with(tool, &repo, &["init", "-q", "-b", "main"]);
    env.git_with(tool, &repo, &["lfs", "track", "*.bin"]);
    for (f, data) in files {
        std::fs::write(repo.join(f), data).unwrap();
    }
    env.git_with(tool, &repo, &["add", "-A"]);
    env.git_with(tool, &repo, &["commit", "-q", "-m", "lfs files"]);
    env.git_with(tool, &repo, &["remote", "add", "origin", url]);
    repo
}

fn agent(env: &TestEnv, tool: Tool, cwd: &Path, args: &[&str]) -> std::process::Output {
    let mut c = env.command_with(tool, "git-lfs-s3", cwd);
    c.args(args);
    c.output().expect("run git-lfs-s3")
}

fn ok_stdout(out: std::process::Output) -> String {
    assert!(out.status.success(), "failed: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn config(env: &TestEnv, repo: &Path, key: &str) -> String {
    env.git(repo, &["config", "--get", key]).trim().to_string()
}

#[test]
fn push_multipart_one_step_clone_skip_and_cache() {
    let env = lfs_env();
    let url = env.url("team/lfs");
    let repo = lfs_repo(&env, Tool::Ours, "origin", &url, &[("small.bin", b"small lfs object\n")]);
    write_pseudo_random(&repo.join("big.bin"), BIG, 42);
    env.git(&repo, &["add", "big.bin"]);
    env.git(&repo, &["commit", "-q", "-m", "big"]);
    assert!(ok_stdout(agent(&env, Tool::Ours, &repo, &["install"])).contains("git-lfs-s3 installed"));
    env.git(&repo, &["push", "-q", "origin", "main"]);

    let small = oid_of(&env, &repo, "small.bin");
    let big = oid_of(&env, &repo, "big.bin");
    let keys = env.keys("team/lfs/lfs/");
    assert!(keys.contains(&format!("team/lfs/lfs/{small}")), "{keys:?}");
    assert!(keys.contains(&format!("team/lfs/lfs/{big}")), "{keys:?}");
    assert_eq!(env.get_object(&format!("team/lfs/lfs/{small}")), b"small lfs object\n");

    // One step: the helper configures LFS in the new clone; smudge fetches
    // through our agent (the objects land in the daemon's LFS cache).
    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    let clone = env.path("clone");
    assert_eq!(std::fs::read(clone.join("small.bin")).unwrap(), b"small lfs object\n");
    assert!(same_file(&repo.join("big.bin"), &clone.join("big.bin")), "big.bin differs after clone");
    assert_eq!(config(&env, &clone, "remote.origin.lfsurl"), format!("https://lfs-alias.git-remote-s3.test/{}/team/lfs", env.bucket));
    let cache = env.dir.path().join("cache/lfs");
    assert!(cache.join(&big).is_file() && cache.join(&small).is_file(), "objects not in the daemon's LFS cache");
    let leftovers: Vec<_> = std::fs::read_dir(clone.join(".git/lfs/tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".log"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    // Re-push skips objects that exist: plant same-size different bytes and
    // push everything again; the planted object must stay (no re-upload).
    let planted: &[u8] = b"PLANTED lfs obj!\n";
    assert_eq!(planted.len(), b"small lfs object\n".len());
    env.put_object(&format!("team/lfs/lfs/{small}"), planted);
    assert_eq!(ok_stdout(agent(&env, Tool::Ours, &repo, &["enable-debug"])).trim(), "debug enabled");
    env.git(&repo, &["lfs", "push", "--all", "origin"]);
    assert_eq!(env.get_object(&format!("team/lfs/lfs/{small}")), planted, "existing object was uploaded again");
    let log = std::fs::read_to_string(repo.join(".git/lfs/tmp/git-lfs-s3.log")).unwrap();
    assert!(log.contains(&format!("upload {small}: already in the bucket, skipped")), "{log}");
    assert!(log.contains(&format!("upload {big}: already in the bucket, skipped")), "{log}");
    assert_eq!(ok_stdout(agent(&env, Tool::Ours, &repo, &["disable-debug"])).trim(), "debug disabled");
    assert!(env.command("git", &repo).args(["config", "--get", "lfs.customtransfer.git-lfs-s3.args"]).status().unwrap().code() == Some(1));

    // A second clone on this machine is served from the verified local cache
    // (the bucket's copy of small.bin is now wrong).
    env.git(&env.work(), &["clone", "-q", &url, "clone2"]);
    assert_eq!(std::fs::read(env.path("clone2").join("small.bin")).unwrap(), b"small lfs object\n");

    // A corrupted cache entry is detected and not used: fetched again, and
    // here the bucket copy is wrong too, so the checkout fails cleanly.
    std::fs::write(cache.join(&small), b"corrupt cache entry").unwrap();
    let mut c = env.command("git", &env.work());
    c.args(["clone", "-q", &url, "clone3"]);
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "clone3 should fail");
    assert!(err.contains("is corrupt"), "{err}");
    let bad = env.path("clone3/small.bin");
    assert!(!bad.exists() || std::fs::read(&bad).unwrap().starts_with(b"version https://git-lfs"), "corrupt content checked out");
    assert!(!cache.join(&small).exists(), "corrupt cache entry kept");
}

#[test]
fn corrupt_and_missing_objects_fail_clearly() {
    let env = lfs_env();
    let url = env.url("broken");
    let repo = lfs_repo(
        &env,
        Tool::Ours,
        "origin",
        &url,
        &[("a.bin", b"object a\n"), ("b.bin", b"object b\n"), ("c.bin", b"object c\n"), ("d.bin", b"object d, to be truncated\n")],
    );
    ok_stdout(agent(&env, Tool::Ours, &repo, &["install"]));
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let (a, b) = (oid_of(&env, &repo, "a.bin"), oid_of(&env, &repo, "b.bin"));
    env.put_object(&format!("broken/lfs/{a}"), b"object X\n"); // same size, wrong bytes
    env.delete_object(&format!("broken/lfs/{b}"));
    let d = oid_of(&env, &repo, "d.bin");
    env.put_object(&format!("broken/lfs/{d}"), b"object d");

    let mut c = env.command("git", &env.work());
    c.args(["clone", "-q", &url, "clone"]).env("GIT_LFS_SKIP_SMUDGE", "1");
    env.run(c);
    let clone = env.path("clone");
    let err = env.git_fail(&clone, &["lfs", "pull"]);
    eprintln!("git lfs pull stderr:\n{err}");
    assert!(err.contains(&format!("LFS object {a} in s3://{}/broken/lfs/{a} is corrupt", env.bucket)), "{err}");
    assert!(err.contains(&format!("LFS object {b} is missing from the remote")), "{err}");
    assert!(err.contains(&format!("LFS object {d} in s3://{}/broken/lfs/{d} has 8 bytes, expected 26", env.bucket)), "{err}");
    // no corrupted file: still pointers, nothing in the object store or tmp
    for f in ["a.bin", "b.bin", "d.bin"] {
        assert!(std::fs::read(clone.join(f)).unwrap().starts_with(b"version https://git-lfs"), "{f} was replaced");
    }
    assert_eq!(std::fs::read(clone.join("c.bin")).unwrap(), b"object c\n");
    let objects = clone.join(format!(".git/lfs/objects/{}/{}/{a}", &a[..2], &a[2..4]));
    assert!(!objects.exists(), "corrupt object stored");
    let tmp: Vec<_> = std::fs::read_dir(clone.join(".git/lfs/tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&a))
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
    assert!(!env.dir.path().join("cache/lfs").join(&a).exists());
}

#[test]
fn install_variants_and_messages() {
    let env = lfs_env();
    let url = env.url("my repo%zz/x");
    let repo = lfs_repo(&env, Tool::Ours, "origin", &url, &[("a.bin", b"scoped\n")]);

    // scoped
    let out = ok_stdout(agent(&env, Tool::Ours, &repo, &["install", "--remote", "origin"]));
    let alias = format!("https://lfs-alias.git-remote-s3.test/{}/my%20repo%25zz/x", env.bucket);
    assert_eq!(out, format!("git-lfs-s3 installed for remote 'origin' (LFS alias: {alias})\n"));
    assert_eq!(config(&env, &repo, "remote.origin.lfsurl"), alias);
    assert_eq!(config(&env, &repo, &format!("lfs.{alias}.standalonetransferagent")), "git-lfs-s3");
    assert_eq!(config(&env, &repo, "lfs.customtransfer.git-lfs-s3.path"), "git-lfs-s3");
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let a = oid_of(&env, &repo, "a.bin");
    assert_eq!(env.get_object(&format!("my repo%zz/x/lfs/{a}")), b"scoped\n");
    // git-lfs can also name the alias URL itself
    env.delete_object(&format!("my repo%zz/x/lfs/{a}"));
    env.git(&repo, &["lfs", "push", "--all", &alias]);
    assert_eq!(env.get_object(&format!("my repo%zz/x/lfs/{a}")), b"scoped\n");

    // errors, as 0.4.2 words them
    let out = agent(&env, Tool::Ours, &repo, &["install", "--remote", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: remote 'nope' is not configured."));
    env.git(&repo, &["remote", "add", "gh", "https://example.com/x.git"]);
    let out = agent(&env, Tool::Ours, &repo, &["install", "--remote", "gh"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("which is not an s3:// or s3+zip:// URL"));
    env.git(&repo, &["config", "remote.gh.lfsurl", "https://example.com/lfs"]);
    env.git(&repo, &["remote", "set-url", "gh", &env.url("other")]);
    let out = agent(&env, Tool::Ours, &repo, &["install", "--remote", "gh"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: remote.gh.lfsurl is already set to 'https://example.com/lfs'"));
    let out = agent(&env, Tool::Ours, &repo, &["install", "--remote"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "error: --remote requires a value\n");

    // unscoped, with a warning for several remotes
    let out = agent(&env, Tool::Ours, &repo, &["install"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "git-lfs-s3 installed\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: multiple remotes configured (gh, origin)"));
    assert_eq!(config(&env, &repo, "lfs.standalonetransferagent"), "git-lfs-s3");

    // a push to a bare s3:// URL (no remote name) works with unscoped install
    let bare = env.url("bare");
    env.git(&repo, &["push", "-q", &bare, "main"]);
    assert_eq!(env.get_object(&format!("bare/lfs/{a}")), b"scoped\n");

    // --global writes the user's config; --help; unknown command
    let out = ok_stdout(agent(&env, Tool::Ours, &env.work(), &["install", "--global"]));
    assert_eq!(out, "git-lfs-s3 installed\n");
    let global = std::fs::read_to_string(env.home().join(".gitconfig")).unwrap();
    assert!(global.contains("standalonetransferagent = git-lfs-s3"), "{global}");
    ok_stdout(agent(&env, Tool::Ours, &env.work(), &["enable-debug", "--global"]));
    assert!(std::fs::read_to_string(env.home().join(".gitconfig")).unwrap().contains("args = debug"));
    ok_stdout(agent(&env, Tool::Ours, &env.work(), &["uninstall", "--global"]));
    let global = std::fs::read_to_string(env.home().join(".gitconfig")).unwrap();
    assert!(!global.contains("git-lfs-s3"), "{global}");
    assert!(ok_stdout(agent(&env, Tool::Ours, &repo, &["--help"])).contains("install --remote <name>"));
    // the same commands through `git s3 lfs`
    assert_eq!(env.git_s3(&repo, &["lfs", "enable-debug"]), "debug enabled\n");
    assert_eq!(config(&env, &repo, "lfs.customtransfer.git-lfs-s3.args"), "debug");
    // uninstall in the repository: scoped keys of S3 remotes, then the rest
    assert_eq!(ok_stdout(agent(&env, Tool::Ours, &repo, &["uninstall", "--remote", "origin"])), "git-lfs-s3 uninstalled for remote 'origin'\n");
    let cfg = env.git(&repo, &["config", "--list", "--local"]);
    assert!(!cfg.contains("remote.origin.lfsurl") && !cfg.contains("lfs-alias"), "{cfg}");
    assert!(cfg.contains("lfs.standalonetransferagent=git-lfs-s3"), "{cfg}");
    ok_stdout(agent(&env, Tool::Ours, &repo, &["uninstall"]));
    let cfg = env.git(&repo, &["config", "--list", "--local"]);
    assert!(!cfg.contains("git-lfs-s3"), "{cfg}");
    assert!(cfg.contains("remote.gh.lfsurl=https://example.com/lfs"), "a foreign lfsurl was removed: {cfg}");

    let out = agent(&env, Tool::Ours, &repo, &["frobnicate"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "unknown command frobnicate\n");
}

#[test]
fn interop_with_0_4_2_both_ways() {
    let env = lfs_env();
    // theirs pushes, ours clones in one step
    let url = env.url("theirs");
    let repo = lfs_repo(&env, Tool::Python, "py", &url, &[("p.bin", b"pushed by 0.4.2\n")]);
    write_pseudo_random(&repo.join("q.bin"), 3 << 20, 7);
    env.git_with(Tool::Python, &repo, &["add", "q.bin"]);
    env.git_with(Tool::Python, &repo, &["commit", "-q", "-m", "q"]);
    ok_stdout(agent(&env, Tool::Python, &repo, &["install"]));
    env.git_with(Tool::Python, &repo, &["push", "-q", "origin", "main"]);
    env.git(&env.work(), &["clone", "-q", &url, "ours-clone"]);
    let ours = env.path("ours-clone");
    assert_eq!(std::fs::read(ours.join("p.bin")).unwrap(), b"pushed by 0.4.2\n");
    assert!(same_file(&repo.join("q.bin"), &ours.join("q.bin")));

    // ours pushes, theirs clones (their two manual steps)
    let url2 = env.url("ours");
    let repo2 = lfs_repo(&env, Tool::Ours, "rs", &url2, &[("r.bin", b"pushed by git-s3\n")]);
    ok_stdout(agent(&env, Tool::Ours, &repo2, &["install", "--remote", "origin"]));
    env.git(&repo2, &["push", "-q", "origin", "main"]);
    let mut c = env.command_with(Tool::Python, "git", &env.work());
    c.args(["clone", "-q", &url2, "py-clone"]).env("GIT_LFS_SKIP_SMUDGE", "1");
    env.run(c);
    let py = env.path("py-clone");
    ok_stdout(agent(&env, Tool::Python, &py, &["install"]));
    env.git_with(Tool::Python, &py, &["lfs", "pull"]);
    assert_eq!(std::fs::read(py.join("r.bin")).unwrap(), b"pushed by git-s3\n");
}

/// Runs the agent with `lines` on stdin; returns (exit code, stdout lines).
fn agent_session(env: &TestEnv, cwd: &Path, args: &[&str], lines: &[String]) -> (Option<i32>, Vec<String>) {
    let mut c = env.command("git-lfs-s3", cwd);
    c.args(args).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
}

#[test]
fn agent_protocol_messages() {
    let env = TestEnv::new();
    let repo = env.new_repo("proto");
    let url = env.url("proto");
    let file = repo.join("obj");
    write_pseudo_random(&file, (3 << 20) + 5, 9);
    // the oid of the file: `git lfs pointer --file`
    let pointer = env.git(&repo, &["lfs", "pointer", &format!("--file={}", file.display())]);
    let oid = pointer.lines().find_map(|l| l.strip_prefix("oid sha256:")).unwrap().to_string();
    let size = (3u64 << 20) + 5;

    // a bare s3:// URL as the remote; upload with progress, then download
    let lines = vec![
        format!(r#"{{"event":"init","operation":"upload","remote":"{url}","concurrent":true,"concurrenttransfers":8}}"#),
        format!(r#"{{"event":"upload","oid":"{oid}","size":{size},"path":"{}","action":null}}"#, file.display()),
        format!(r#"{{"event":"download","oid":"{oid}","size":{size},"action":null}}"#),
        format!(r#"{{"event":"download","oid":"{}","size":1,"action":null}}"#, "0".repeat(64)),
        r#"{"event":"download","oid":"../../x","size":1,"action":null}"#.to_string(),
        r#"{"event":"terminate"}"#.to_string(),
    ];
    let (code, out) = agent_session(&env, &repo, &[], &lines);
    assert_eq!(code, Some(0), "{out:?}");
    assert_eq!(out[0], "{}");
    let progress: Vec<&String> = out.iter().filter(|l| l.contains(r#""event":"progress""#)).collect();
    assert!(!progress.is_empty(), "{out:?}");
    assert!(progress.iter().any(|l| l.contains(&format!(r#""bytesSoFar":{size}"#))), "{out:?}");
    assert!(out.contains(&format!(r#"{{"event":"complete","oid":"{oid}"}}"#)), "{out:?}");
    assert_eq!(env.get_object(&format!("proto/lfs/{oid}")).len() as u64, size);
    let done = out.iter().find(|l| l.contains(r#""path""#)).expect("download complete with a path");
    let v = done.split(r#""path":""#).nth(1).unwrap().split('"').next().unwrap();
    assert!(v.starts_with(&repo.join(".git/lfs/tmp").display().to_string()), "{v}");
    assert!(same_file(Path::new(v), &file));
    assert!(
        out.iter().any(|l| l.contains(&format!(r#""oid":"{}""#, "0".repeat(64)))
            && l.contains(r#""error":{"code":2,"#)
            && l.contains("is missing from the remote")),
        "{out:?}"
    );
    assert!(out.iter().any(|l| l.contains("invalid LFS oid")), "{out:?}");

    // an unknown remote: an init error object, exit 1
    let (code, out) = agent_session(&env, &repo, &[], &[r#"{"event":"init","operation":"download","remote":"nowhere"}"#.to_string()]);
    assert_eq!(code, Some(1));
    assert!(out[0].starts_with(r#"{"error":{"code":2,"message":"cannot resolve remote \"nowhere\""#), "{out:?}");
    // an invalid URL: code 32 as 0.4.2
    let (code, out) = agent_session(&env, &repo, &[], &[r#"{"event":"init","operation":"download","remote":"s3://Bad_Bucket/x"}"#.to_string()]);
    assert_eq!(code, Some(1));
    assert!(out[0].starts_with(r#"{"error":{"code":32,"#), "{out:?}");
}

#[test]
fn lfs_works_the_same_with_a_packs_format_remote() {
    let env = lfs_env();
    env.git(&env.home(), &["config", "--global", "s3.format", "packs"]);
    let url = env.url("team/packs-lfs");
    let repo = lfs_repo(&env, Tool::Ours, "origin", &url, &[("a.bin", b"lfs object in a packs remote\n")]);
    assert!(ok_stdout(agent(&env, Tool::Ours, &repo, &["install"])).contains("git-lfs-s3 installed"));
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let oid = oid_of(&env, &repo, "a.bin");
    // the git objects are in the packs format, the LFS object at the usual key
    let keys = env.keys("team/packs-lfs/");
    assert!(keys.contains(&"team/packs-lfs/.git-s3/manifest.json".to_string()), "{keys:?}");
    assert!(!keys.iter().any(|k| k.ends_with(".bundle")), "{keys:?}");
    assert!(keys.contains(&format!("team/packs-lfs/lfs/{oid}")), "{keys:?}");
    // a one-step clone checks the LFS file out, by our tool and by 0.4.2's agent
    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    assert_eq!(std::fs::read(env.path("clone/a.bin")).unwrap(), b"lfs object in a packs remote\n");
    let py = env.path("py");
    env.git(&env.work(), &["-c", "lfs.fetchexclude=*", "clone", "-q", &url, "py"]);
    ok_stdout(agent(&env, Tool::Python, &py, &["install"]));
    env.git_with(Tool::Python, &py, &["-c", "lfs.fetchexclude=", "lfs", "pull"]);
    assert_eq!(std::fs::read(py.join("a.bin")).unwrap(), b"lfs object in a packs remote\n");
}

#[test]
fn a_download_cut_off_mid_stream_is_retried_and_never_leaves_a_partial_file() {
    let env = lfs_env();
    let url = env.url("cut");
    let repo = lfs_repo(&env, Tool::Ours, "origin", &url, &[("small.bin", b"small\n")]);
    write_pseudo_random(&repo.join("big.bin"), 1 << 20, 11);
    env.git(&repo, &["add", "big.bin"]);
    env.git(&repo, &["commit", "-q", "-m", "big"]);
    ok_stdout(agent(&env, Tool::Ours, &repo, &["install"]));
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let big = oid_of(&env, &repo, "big.bin");
    let cache = env.dir.path().join("cache/lfs");
    let skip_smudge = |name: &str| {
        let mut c = env.command("git", &env.work());
        c.args(["clone", "-q", &url, name]).env("GIT_LFS_SKIP_SMUDGE", "1");
        env.run(c);
        let repo = env.path(name);
        ok_stdout(agent(&env, Tool::Ours, &repo, &["install"]));
        repo
    };
    // Nothing partial left: no non-empty file in git-lfs's temp dir (git-lfs
    // itself may leave an empty temp file of a failed transfer) and nothing
    // in the daemon's temp dir.
    let no_temp_files = |repo: &Path| {
        let tmp: Vec<_> = std::fs::read_dir(repo.join(".git/lfs/tmp"))
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().ends_with(".log") && e.metadata().map(|m| m.len() > 0).unwrap_or(true))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(tmp.is_empty(), "temp files left: {tmp:?}");
        let daemon_tmp: Vec<_> =
            std::fs::read_dir(env.dir.path().join("cache/tmp")).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(daemon_tmp.is_empty(), "daemon temp files left: {daemon_tmp:?}");
    };

    // The connection breaks off once, 64 KiB into the object: the transfer
    // is retried and the file arrives whole.
    let once = testkit::CuttingProxy::start(testkit::endpoint(), "/lfs/", 64 << 10, 1);
    let a = skip_smudge("a");
    let mut c = env.command("git", &a);
    c.env("AWS_ENDPOINT_URL", &once.url).args(["lfs", "pull"]);
    env.run(c);
    assert!(once.cuts() >= 1, "the proxy cut nothing");
    assert!(same_file(&repo.join("big.bin"), &a.join("big.bin")), "big.bin differs");
    no_temp_files(&a);

    // It breaks off every time: the pull fails and says so, the pointer
    // stays, nothing partial is kept (worktree, LFS store, daemon cache).
    std::fs::remove_dir_all(&cache).unwrap();
    let always = testkit::CuttingProxy::start(testkit::endpoint(), "/lfs/", 64 << 10, usize::MAX);
    let b = skip_smudge("b");
    let mut c = env.command("git", &b);
    c.env("AWS_ENDPOINT_URL", &always.url).args(["lfs", "pull"]);
    let err = String::from_utf8_lossy(&env.run_fail(c).stderr).to_string();
    assert!(err.contains(&big), "{err}");
    assert!(std::fs::read(b.join("big.bin")).unwrap().starts_with(b"version https://git-lfs"), "big.bin was replaced");
    assert!(!b.join(format!(".git/lfs/objects/{}/{}/{big}", &big[..2], &big[2..4])).exists(), "partial object stored");
    assert!(!cache.join(&big).exists(), "partial object cached");
    no_temp_files(&b);
}
