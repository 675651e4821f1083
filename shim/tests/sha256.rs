//! End to end, SHA-256 repositories (`git init --object-format=sha256`) in
//! both storage formats: push, clone (into a SHA-256 repository), fetch,
//! one-commit updates, delete, force, tags; mixing SHA-1 and SHA-256
//! refused both ways with nothing written; a SHA-1 round trip unchanged.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::path::{Path, PathBuf};

use testkit::{Held, TestEnv};

const MIX: &str = "git cannot mix object formats";

fn env_for(format: &str) -> TestEnv {
    let env = TestEnv::new();
    env.git(&env.work(), &["config", "--global", "s3.format", format]);
    env
}

/// A repository at `work/<name>` in `object_format` with one commit on main.
fn repo(env: &TestEnv, name: &str, object_format: &str) -> PathBuf {
    let p = env.path(name);
    std::fs::create_dir_all(&p).unwrap();
    env.git(&p, &["init", "-q", "-b", "main", &format!("--object-format={object_format}")]);
    env.commit(&p, "README.md", "hello\n", "initial commit");
    p
}

fn rev(env: &TestEnv, repo: &Path, r: &str) -> String {
    env.git(repo, &["rev-parse", r]).trim().to_string()
}

fn object_format(env: &TestEnv, repo: &Path) -> String {
    env.git(repo, &["rev-parse", "--show-object-format"]).trim().to_string()
}

/// Everything under a prefix, with contents: what "nothing written" compares.
fn snapshot(env: &TestEnv, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut keys = env.keys(prefix);
    keys.sort();
    keys.into_iter().map(|k| (k.clone(), env.get_object(&k))).collect()
}

fn round_trip(format: &str) {
    let env = env_for(format);
    let url = env.url("r256");
    let src = repo(&env, "src", "sha256");
    env.git(&src, &["remote", "add", "origin", &url]);
    env.git(&src, &["checkout", "-q", "-b", "feature/x"]);
    let fx = env.commit(&src, "f.txt", "feature\n", "feature work");
    env.git(&src, &["checkout", "-q", "main"]);
    env.git(&src, &["tag", "v1"]);
    env.git(&src, &["tag", "-a", "v1-annotated", "-m", "annotated"]);
    let main = rev(&env, &src, "main");
    assert_eq!(main.len(), 64);
    env.git(&src, &["push", "-q", "origin", "main", "feature/x", "v1", "v1-annotated"]);

    // The format is stored.
    match format {
        "bundles" => {
            let key = format!("r256/refs/heads/main/{main}.bundle");
            assert!(env.keys("r256/refs/heads/main/").contains(&key), "{:?}", env.keys("r256/"));
            let bundle = env.get_object(&key);
            assert!(
                bundle.starts_with(b"# v3 git bundle\n@object-format=sha256\n"),
                "{:?}",
                String::from_utf8_lossy(&bundle[..80.min(bundle.len())])
            );
        }
        _ => {
            let m: serde_json::Value = serde_json::from_slice(&env.get_object("r256/.git-s3/manifest.json")).unwrap();
            assert_eq!(m["object_format"], "sha256", "{m}");
            assert_eq!(m["refs"]["refs/heads/main"], main.as_str());
        }
    }

    // status and doctor (text and JSON) show the remote's object format.
    object_format_shown(&env, &src, "origin", "sha256");

    // A clone into a fresh directory is a SHA-256 repository with everything.
    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    let clone = env.path("clone");
    assert_eq!(object_format(&env, &clone), "sha256");
    assert_eq!(rev(&env, &clone, "HEAD"), main);
    assert_eq!(rev(&env, &clone, "origin/feature/x"), fx);
    assert_eq!(rev(&env, &clone, "v1-annotated"), rev(&env, &src, "v1-annotated"));
    assert_eq!(std::fs::read_to_string(clone.join("README.md")).unwrap(), "hello\n");
    let ls = env.git(&env.work(), &["ls-remote", &url]);
    assert!(ls.contains(&format!("{main}\tHEAD")), "{ls}");

    // One commit pushed, then fetched.
    let second = env.commit(&src, "src/lib.rs", "fn main() {}\n", "second");
    env.git(&src, &["push", "-q", "origin", "main"]);
    env.git(&clone, &["pull", "-q", "--ff-only"]);
    assert_eq!(rev(&env, &clone, "HEAD"), second);

    // Delete a branch; the clone prunes it.
    env.git(&src, &["push", "-q", "origin", ":feature/x"]);
    env.git(&clone, &["fetch", "-q", "--prune"]);
    assert!(env.git(&clone, &["branch", "-r"]).lines().all(|l| !l.contains("feature/x")));

    // A force push replaces main; the clone follows.
    env.git(&src, &["reset", "-q", "--hard", "HEAD~1"]);
    let forced = env.commit(&src, "other.txt", "other\n", "rewritten");
    let refused = env.git_fail(&src, &["push", "origin", "main"]);
    assert!(refused.contains("rejected"), "{refused}");
    env.git(&src, &["push", "-q", "-f", "origin", "main"]);
    env.git(&clone, &["fetch", "-q", "origin"]);
    assert_eq!(rev(&env, &clone, "origin/main"), forced);

    // Mixing refused both ways, nothing written: a SHA-1 repository pushing
    // to this SHA-256 remote, and fetching from it.
    let before = snapshot(&env, "r256/");
    let sha1 = repo(&env, "sha1", "sha1");
    env.git(&sha1, &["remote", "add", "origin", &url]);
    let err = env.git_fail(&sha1, &["push", "origin", "main:refs/heads/other"]);
    assert!(err.contains(MIX) && err.contains("sha1") && err.contains("sha256"), "{err}");
    let err = env.git_fail(&sha1, &["fetch", "origin"]);
    assert!(err.contains(MIX), "{err}");
    assert_eq!(snapshot(&env, "r256/"), before);

    // ... and a SHA-256 repository pushing to a SHA-1 remote.
    let url1 = env.url("r1");
    env.git(&sha1, &["push", "-q", &url1, "main"]);
    let before = snapshot(&env, "r1/");
    let err = env.git_fail(&src, &["push", &url1, "main:refs/heads/other"]);
    assert!(err.contains(MIX), "{err}");
    let err = env.git_fail(&src, &["fetch", &url1, "main"]);
    assert!(err.contains(MIX), "{err}");
    assert_eq!(snapshot(&env, "r1/"), before);

    object_format_shown(&env, &sha1, &url1, "sha1");
    // An empty prefix has none yet.
    let empty = env.url("empty");
    let st: serde_json::Value = serde_json::from_str(&env.git_s3(&env.work(), &["status", "--json", &empty])).unwrap();
    assert!(st["remote"]["object_format"].is_null(), "{st}");
    assert!(env.git_s3(&env.work(), &["status", &empty]).contains("object format: none yet"));

    // The SHA-1 remote still round-trips as before.
    env.git(&env.work(), &["clone", "-q", &url1, "clone1"]);
    let clone1 = env.path("clone1");
    assert_eq!(object_format(&env, &clone1), "sha1");
    // The remote's format wins over the cloner's default.
    env.git(&env.work(), &["-c", "init.defaultObjectFormat=sha256", "clone", "-q", &url1, "clone1b"]);
    assert_eq!(object_format(&env, &env.path("clone1b")), "sha1");
    assert_eq!(rev(&env, &clone1, "HEAD"), rev(&env, &sha1, "main"));
    env.fsck_all();
}

/// `git s3 status` and `git s3 doctor`, text and `--json`, name `expected`
/// as the object format of `remote`.
fn object_format_shown(env: &TestEnv, cwd: &Path, remote: &str, expected: &str) {
    let st: serde_json::Value = serde_json::from_str(&env.git_s3(cwd, &["status", "--json", remote])).unwrap();
    assert_eq!(st["remote"]["object_format"], expected, "{st}");
    let text = env.git_s3(cwd, &["status", remote]);
    assert!(text.contains(&format!("  object format: {expected}\n")), "{text}");
    let doc: serde_json::Value = serde_json::from_str(&env.git_s3(cwd, &["doctor", "--json", "--dry-run", remote])).unwrap();
    assert_eq!(doc["object_format"], expected, "{doc}");
    let text = env.git_s3(cwd, &["doctor", "--dry-run", remote]);
    assert!(text.contains(&format!("  object format: {expected}\n")), "{text}");
}

#[test]
fn sha256_bundles_round_trip_and_mixing_refused() {
    round_trip("bundles");
}

#[test]
fn sha256_packs_round_trip_and_mixing_refused() {
    round_trip("packs");
}

/// Shallow and partial clones (served from a SHA-256 mirror), `git s3 gc`
/// (scratch repositories of the remote's format) and `git s3 migrate` both
/// ways, for a SHA-256 remote.
#[test]
fn sha256_shallow_partial_gc_and_migrate() {
    let env = env_for("packs");
    let url = env.url("deep");
    let src = repo(&env, "src", "sha256");
    env.git(&src, &["remote", "add", "origin", &url]);
    env.git(&src, &["push", "-q", "origin", "main"]);
    for i in 0..3 {
        env.commit(&src, &format!("f{i}.txt"), &format!("{i}\n"), &format!("commit {i}"));
        env.git(&src, &["push", "-q", "origin", "main"]);
    }
    let tip = rev(&env, &src, "main");

    let shallow_and_partial = |tag: &str| {
        let d = format!("d-{tag}");
        env.git(&env.work(), &["clone", "-q", "--depth", "1", &url, &d]);
        let d = env.path(&d);
        assert_eq!(object_format(&env, &d), "sha256", "{tag}");
        assert_eq!(rev(&env, &d, "HEAD"), tip, "{tag}");
        assert_eq!(env.git(&d, &["rev-list", "--count", "HEAD"]).trim(), "1", "{tag}");
        let p = format!("p-{tag}");
        env.git(&env.work(), &["clone", "-q", "--filter=blob:none", &url, &p]);
        let p = env.path(&p);
        assert_eq!(object_format(&env, &p), "sha256", "{tag}");
        assert_eq!(env.git(&p, &["rev-list", "--count", "HEAD"]).trim(), "4", "{tag}");
        // a lazy fetch of an old blob
        assert_eq!(env.git(&p, &["show", "HEAD~1:f1.txt"]), "1\n", "{tag}");
    };
    shallow_and_partial("before-gc");

    // geometric gc (the background one): packs of the remote's format
    env.git_s3(&env.work(), &["gc", "--geometric", &url]);
    let m: serde_json::Value = serde_json::from_slice(&env.get_object("deep/.git-s3/manifest.json")).unwrap();
    assert_eq!(m["object_format"], "sha256", "{m}");
    let packs = m["packs"].as_array().cloned().unwrap_or_default();
    assert!(packs.len() < 4, "four pushes' packs rolled up: {m}");
    assert!(packs.iter().all(|p| p["name"].as_str().map(str::len) == Some(64)), "{m}");
    env.git(&env.work(), &["clone", "-q", &url, "geo"]);
    assert_eq!(rev(&env, &env.path("geo"), "HEAD"), tip);
    env.git(&env.path("geo"), &["fsck", "--full", "--no-progress"]);

    env.git_s3(&env.work(), &["gc", &url]);
    let m: serde_json::Value = serde_json::from_slice(&env.get_object("deep/.git-s3/manifest.json")).unwrap();
    assert_eq!(m["object_format"], "sha256", "{m}");
    assert_eq!(m["packs"].as_array().map(Vec::len), Some(1), "{m}");
    assert_eq!(m["packs"][0]["name"].as_str().map(str::len), Some(64), "{m}");
    shallow_and_partial("after-gc");

    // migrate to bundles (v3 SHA-256 bundles) and back
    env.git_s3(&src, &["migrate", "--to", "bundles", "origin"]);
    let bundle = env.get_object(&format!("deep/refs/heads/main/{tip}.bundle"));
    assert!(bundle.starts_with(b"# v3 git bundle\n@object-format=sha256\n"));
    env.git(&env.work(), &["clone", "-q", &url, "b"]);
    assert_eq!(rev(&env, &env.path("b"), "HEAD"), tip);
    assert_eq!(object_format(&env, &env.path("b")), "sha256");
    env.git_s3(&src, &["migrate", "--to", "packs", "origin"]);
    let m: serde_json::Value = serde_json::from_slice(&env.get_object("deep/.git-s3/manifest.json")).unwrap();
    assert_eq!(m["object_format"], "sha256", "{m}");
    env.git(&env.work(), &["clone", "-q", &url, "back"]);
    assert_eq!(rev(&env, &env.path("back"), "HEAD"), tip);
    env.fsck_all();
}

/// Git LFS in a SHA-256 repository: the object goes to `<prefix>/lfs/`, a
/// clone (a SHA-256 repository) checks it out.
#[test]
fn sha256_lfs_round_trip() {
    let env = env_for("packs");
    env.git(&env.home(), &["lfs", "install", "--skip-repo"]);
    let url = env.url("lfs256");
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    env.git(&src, &["init", "-q", "-b", "main", "--object-format=sha256"]);
    env.git(&src, &["lfs", "track", "*.bin"]);
    let big = testkit::noise(300_000, 7);
    std::fs::write(src.join("a.bin"), &big).unwrap();
    env.commit_all_with_lfs_remote(&src, "lfs files", &url);
    env.git(&src, &["push", "-q", "origin", "main"]);
    let lfs_keys = env.keys("lfs256/lfs/");
    assert_eq!(lfs_keys.len(), 1, "{lfs_keys:?}");
    assert_eq!(env.get_object(&lfs_keys[0]), big);

    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    let clone = env.path("clone");
    assert_eq!(object_format(&env, &clone), "sha256");
    assert_eq!(std::fs::read(clone.join("a.bin")).unwrap(), big);
}

/// git-remote-s3 0.4.2 does not read a SHA-256 bundles remote (its keys
/// are 40 hex digits): what it shows, pinned so the docs stay true; and
/// the SHA-1 bundle it may push there is warned about.
#[test]
fn sha256_bundles_are_not_read_by_0_4_2() {
    let env = env_for("bundles");
    let url = env.url("old");
    let src = repo(&env, "src", "sha256");
    env.git(&src, &["push", "-q", &url, "main"]);
    let mut c = env.command_with(testkit::Tool::Python, "git", &env.work());
    c.args(["clone", &url, "py"]);
    let out = env.run(c);
    // It sees HEAD but no ref: an empty clone, no error.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("remote HEAD refers to nonexistent ref"), "{stderr}");
    assert!(!env.path("py").join("README.md").exists());
    // ours reads it
    env.git(&env.work(), &["clone", "-q", &url, "ours"]);
    assert_eq!(rev(&env, &env.path("ours"), "HEAD"), rev(&env, &src, "main"));

    // 0.4.2 checks no format: its SHA-1 branch lands beside the SHA-256
    // one, and ours says so in one line, naming both.
    let sha1 = repo(&env, "sha1", "sha1");
    let mut c = env.command_with(testkit::Tool::Python, "git", &sha1);
    c.args(["push", "-q", &url, "main:refs/heads/old"]);
    env.run(c);
    let mut c = env.command("git", &env.work());
    c.args(["ls-remote", &url]);
    let stderr = String::from_utf8_lossy(&env.run(c).stderr).into_owned();
    let warning: Vec<&str> = stderr.lines().filter(|l| l.contains("two object formats")).collect();
    assert_eq!(warning.len(), 1, "{stderr}");
    assert!(warning[0].contains("refs/heads/main is sha256") && warning[0].contains("refs/heads/old is sha1"), "{stderr}");
    // status and doctor say "mixed", and doctor reports it as an issue.
    let st: serde_json::Value = serde_json::from_str(&env.git_s3(&env.work(), &["status", "--json", &url])).unwrap();
    assert_eq!(st["remote"]["object_format"], "mixed", "{st}");
    assert!(st["remote"]["warnings"].to_string().contains("two object formats"), "{st}");
    let mut c = env.command("git-s3", &env.work());
    c.args(["doctor", "--json", "--dry-run", &url]);
    let doc: serde_json::Value = serde_json::from_slice(&c.output().unwrap().stdout).unwrap();
    assert_eq!(doc["object_format"], "mixed", "{doc}");
    assert!(doc["issues"].as_array().unwrap().iter().any(|i| i["kind"] == "mixed_object_formats"), "{doc}");
}

/// Bundles: a first push into an empty prefix checks the object format
/// again under its ref's lock. A SHA-256 push that listed the empty
/// prefix waits before its lock while a SHA-1 repository pushes another
/// ref; it is then refused, and the prefix holds one format (the SHA-1 one).
#[test]
fn sha256_bundles_first_pushes_of_two_formats_cannot_mix() {
    first_pushes_of_two_formats("GIT_S3_TEST_PUSH_LOCK_GATE");
}

/// The same race one step later: the SHA-256 push has checked the empty
/// prefix under its lock and waits before its upload while the SHA-1 push
/// lands. Its check after the upload finds the SHA-1 ref: it deletes its
/// own bundle and is refused.
#[test]
fn sha256_bundles_first_push_takes_its_bundle_back_when_another_format_landed() {
    first_pushes_of_two_formats("GIT_S3_TEST_PUSH_UPLOAD_GATE");
}

fn first_pushes_of_two_formats(gate_var: &str) {
    let env = env_for("bundles");
    let url = env.url("race");
    let src = repo(&env, "src", "sha256");
    let mut c = env.command("git", &src);
    c.args(["push", &url, "main"]);
    let held = Held::start(c, gate_var, env.dir.path().join("gate"), "the push");
    let sha1 = repo(&env, "sha1", "sha1");
    env.git(&sha1, &["push", "-q", &url, "main:refs/heads/other"]);
    let out = held.release();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(MIX) && stderr.contains("sha256") && stderr.contains("sha1"), "{stderr}");
    let keys = env.keys("race/");
    let bundles: Vec<_> = keys.iter().filter(|k| k.ends_with(".bundle")).collect();
    assert_eq!(bundles, vec![&format!("race/refs/heads/other/{}.bundle", rev(&env, &sha1, "main"))], "{keys:?}");
    assert!(!keys.iter().any(|k| k.contains("LOCK#")), "{keys:?}");
    let mut c = env.command("git", &env.work());
    c.args(["ls-remote", &url]);
    let stderr = String::from_utf8_lossy(&env.run(c).stderr).into_owned();
    assert!(!stderr.contains("two object formats"), "{stderr}");
}

/// `s3+zip://` remotes and the local cache with a SHA-256 repository, in
/// both formats: `repo.zip` is the commit's archive with 0.4.2's metadata,
/// a clone through the zip URL is SHA-256, and a second clone on the
/// machine is served from the cache.
fn zip_and_cache(format: &str) {
    let env = env_for(format);
    let url = env.zip_url("z256");
    let src = repo(&env, "src", "sha256");
    let sha = env.commit(&src, "app.txt", "app\n", "ship it");
    env.git(&src, &["push", "-q", &url, "main"]);
    let zip = env.get_object("z256/refs/heads/main/repo.zip");
    assert_eq!(&zip[..2], b"PK");
    assert!(zip.windows(7).any(|w| w == b"app.txt") && zip.windows(9).any(|w| w == b"README.md"));
    let meta = testkit::s3tool(&["head-meta", &env.bucket, "z256/refs/heads/main/repo.zip"], None);
    let meta = String::from_utf8_lossy(&meta.stdout);
    assert!(meta.contains(&format!("attachment; filename=repo-{}.zip", &sha[..8])), "{meta}");
    assert!(meta.contains(&format!("codepipeline-artifact-revision-summary={} ship it", &sha[..7])), "{meta}");

    let downloads =
        |log: &str| log.lines().filter(|l| l.contains("s3.get") && (l.contains(".bundle") || l.contains(".pack")) && l.contains(" ms)")).count();
    let clone = |dest: &str| {
        let mut c = env.command("git", &env.work());
        c.env("GIT_REMOTE_S3_VERBOSE", "1").args(["clone", "-q", &url, dest]);
        let log = String::from_utf8_lossy(&env.run(c).stderr).into_owned();
        let d = env.path(dest);
        assert_eq!(object_format(&env, &d), "sha256");
        assert_eq!(rev(&env, &d, "HEAD"), sha);
        log
    };
    clone("c1");
    let log = clone("c2");
    assert_eq!(downloads(&log), 0, "the second clone is served from the cache: {log}");
    assert!(log.contains("linked a cached"), "{log}");
    let doc: serde_json::Value = serde_json::from_str(&env.git_s3(&env.work(), &["cache", "--json"])).unwrap();
    assert!(doc["entries"].as_u64().unwrap_or(0) > 0, "{doc}");
    env.fsck_all();
}

#[test]
fn sha256_zip_and_cache_bundles() {
    zip_and_cache("bundles");
}

#[test]
fn sha256_zip_and_cache_packs() {
    zip_and_cache("packs");
}
