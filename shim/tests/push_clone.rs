//! End to end: push, clone, fetch, pull, branches, tags, delete, force,
//! s3+zip and empty prefixes, through the real git and the test S3 server.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use testkit::{TestEnv, Tool};

#[test]
fn push_clone_fetch_pull_roundtrip() {
    let env = TestEnv::new();
    let repo = env.new_repo("origin");
    let url = env.url("team/repo");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    assert!(env.keys("team/repo/").iter().any(|k| k.starts_with("team/repo/refs/heads/main/") && k.ends_with(".bundle")));
    assert_eq!(String::from_utf8(env.get_object("team/repo/HEAD")).unwrap(), "refs/heads/main");

    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    let clone = env.path("clone");
    assert_eq!(std::fs::read_to_string(clone.join("README.md")).unwrap(), "hello\n");
    assert_eq!(env.git(&clone, &["rev-parse", "--abbrev-ref", "HEAD"]).trim(), "main");

    let new = env.commit(&repo, "src/lib.rs", "fn main() {}\n", "second");
    env.git(&repo, &["push", "-q", "origin", "main"]);
    env.git(&clone, &["pull", "-q", "--ff-only"]);
    assert_eq!(env.git(&clone, &["rev-parse", "HEAD"]).trim(), new);
    // exactly one bundle for the ref after the update
    let bundles: Vec<_> = env.keys("team/repo/refs/heads/main/").into_iter().filter(|k| k.ends_with(".bundle")).collect();
    assert_eq!(bundles, vec![format!("team/repo/refs/heads/main/{new}.bundle")]);
    // no lock left behind
    assert!(!env.keys("team/repo/").iter().any(|k| k.contains("LOCK#")));
}

#[test]
fn branches_tags_delete_and_ls_remote() {
    let env = TestEnv::new();
    let url = env.url("multi");
    let (repo, fx) = env.repo_with_branch_and_tags("origin", &url);
    env.git(&repo, &["push", "-q", "origin", "main", "feature/x", "v1", "v1-annotated"]);

    let ls = env.ls_remote(Tool::Ours, &url);
    let main = env.git(&repo, &["rev-parse", "main"]).trim().to_string();
    let annotated = env.git(&repo, &["rev-parse", "v1-annotated"]).trim().to_string();
    assert!(ls.contains(&format!("{main}\tHEAD")), "{ls:?}");
    assert!(ls.contains(&format!("{main}\trefs/heads/main")));
    assert!(ls.contains(&format!("{fx}\trefs/heads/feature/x")));
    assert!(ls.contains(&format!("{main}\trefs/tags/v1")));
    assert!(ls.contains(&format!("{annotated}\trefs/tags/v1-annotated")));

    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    let clone = env.path("clone");
    assert_eq!(env.git(&clone, &["rev-parse", "origin/feature/x"]).trim(), fx);
    assert_eq!(env.git(&clone, &["rev-parse", "v1-annotated"]).trim(), annotated);

    env.git(&repo, &["push", "-q", "origin", ":feature/x"]);
    assert!(!env.keys("multi/refs/heads/feature/").iter().any(|k| k.ends_with(".bundle")));
    env.git(&clone, &["fetch", "-q", "--prune"]);
    assert!(env.git(&clone, &["branch", "-r"]).lines().all(|l| !l.contains("feature/x")));
    // main is untouched
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{main}\trefs/heads/main")));
}

#[test]
fn non_fast_forward_refused_force_allowed_and_lease_checked() {
    let env = TestEnv::new();
    let repo = env.new_repo("a");
    let url = env.url("nff");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["push", "-q", "origin", "main"]);
    env.git(&env.work(), &["clone", "-q", &url, "b"]);
    let b = env.path("b");
    let theirs = env.commit(&b, "b.txt", "b\n", "from b");
    env.git(&b, &["push", "-q", "origin", "main"]);

    // a is behind: plain push is refused and the remote keeps b's commit
    env.commit(&repo, "a.txt", "a\n", "from a");
    let err = env.git_fail(&repo, &["push", "origin", "main"]);
    assert!(err.contains("rejected"), "{err}");
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{theirs}\trefs/heads/main")));

    // --force-with-lease with a stale expectation is refused
    let err = env.git_fail(&repo, &["push", "--force-with-lease=main:HEAD~1", "origin", "main"]);
    assert!(err.contains("stale info") || err.contains("rejected"), "{err}");
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{theirs}\trefs/heads/main")));

    // force wins
    env.git(&repo, &["push", "-q", "--force", "origin", "main"]);
    let mine = env.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{mine}\trefs/heads/main")));
    let bundles: Vec<_> = env.keys("nff/refs/heads/main/").into_iter().filter(|k| k.ends_with(".bundle")).collect();
    assert_eq!(bundles.len(), 1);
}

#[test]
fn protected_branch_blocks_force_push() {
    let env = TestEnv::new();
    let repo = env.new_repo("a");
    let url = env.url("prot");
    env.git(&repo, &["remote", "add", "origin", &url]);
    let first = env.commit(&repo, "x", "1\n", "one");
    env.git(&repo, &["push", "-q", "origin", "main"]);
    env.put_object("prot/refs/heads/main/PROTECTED#", b"");
    env.git(&repo, &["reset", "-q", "--hard", "HEAD~1"]);
    env.commit(&repo, "y", "2\n", "rewritten");
    let err = env.git_fail(&repo, &["push", "--force", "origin", "main"]);
    assert!(err.contains("protected"), "{err}");
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{first}\trefs/heads/main")));
    let err = env.git_fail(&repo, &["push", "origin", ":main"]);
    assert!(err.contains("protected"), "{err}");
}

#[test]
fn empty_prefix_is_an_empty_repository() {
    let env = TestEnv::new();
    let url = env.url("nothing/here");
    assert!(env.ls_remote(Tool::Ours, &url).is_empty());
    let mut c = env.command("git", &env.work());
    c.args(["clone", &url, "empty"]);
    let out = env.run(c);
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty repository"));
    let empty = env.path("empty");
    env.commit(&empty, "a", "a\n", "first");
    env.git(&empty, &["push", "-q", "origin", "main"]);
    assert_eq!(env.ls_remote(Tool::Ours, &url).len(), 2);
}

#[test]
fn s3_zip_writes_repo_zip_with_codepipeline_metadata() {
    let env = TestEnv::new();
    let repo = env.new_repo("a");
    let sha = env.commit(&repo, "app.txt", "app\n", "ship it");
    let url = env.zip_url("zipped");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let zip = env.get_object("zipped/refs/heads/main/repo.zip");
    assert_eq!(&zip[..2], b"PK");
    let meta = testkit::s3tool(&["head-meta", &env.bucket, "zipped/refs/heads/main/repo.zip"], None);
    let meta = String::from_utf8_lossy(&meta.stdout);
    assert!(meta.contains(&format!("attachment; filename=repo-{}.zip", &sha[..8])), "{meta}");
    assert!(meta.contains(&format!("codepipeline-artifact-revision-summary={} ship it", &sha[..7])), "{meta}");
    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    assert_eq!(std::fs::read_to_string(env.path("clone/app.txt")).unwrap(), "app\n");
    // deleting the branch removes the zip too
    env.git(&repo, &["push", "-q", &url, ":main"]);
    assert!(!env.keys("zipped/refs/").iter().any(|k| k.ends_with("repo.zip") || k.ends_with(".bundle")));
}

#[test]
fn verbose_logging_goes_to_stderr_only_when_asked() {
    let env = TestEnv::new();
    let repo = env.new_repo("a");
    let url = env.url("verbose");
    env.git(&repo, &["push", "-q", &url, "main"]);
    let quiet = env.command("git", &env.work()).args(["ls-remote", &url]).output().unwrap();
    assert!(quiet.status.success());
    assert!(quiet.stderr.is_empty(), "{}", String::from_utf8_lossy(&quiet.stderr));
    for (var, val, args) in [
        ("GIT_REMOTE_S3_VERBOSE", "1", vec!["ls-remote", url.as_str()]),
        ("GIT_S3_UNUSED", "", vec!["-c", "transfer.verbosity=2", "ls-remote", url.as_str()]),
    ] {
        let out = env.command("git", &env.work()).env(var, val).args(&args).output().unwrap();
        assert!(out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("git-s3: s3.list bucket="), "{args:?}: {err}");
        assert!(err.contains(" ms)"), "span timings: {err}");
        // stdout stays the protocol's answer only
        assert!(String::from_utf8_lossy(&out.stdout).lines().all(|l| l.contains("\trefs/") || l.ends_with("\tHEAD")));
    }
}

#[test]
fn large_bundle_streams_in_parts_and_raw_sha_pushes_work() {
    let env = TestEnv::new();
    let repo = env.new_repo("big");
    // 72 MiB that does not compress: past the 64 MiB single-PUT threshold,
    // so the bundle goes up as 16 MiB parts while git writes it
    let data: Vec<u8> = testkit::xorshift(0x2545_F491_4F6C_DD1D).take(72 << 20).map(|x| x as u8).collect();
    std::fs::write(repo.join("blob.bin"), &data).unwrap();
    env.git(&repo, &["add", "blob.bin"]);
    env.git(&repo, &["commit", "-q", "-m", "big"]);
    let url = env.url("large");
    let mut c = env.command("git", &repo);
    c.env("GIT_REMOTE_S3_VERBOSE", "1").args(["push", &url, "main"]);
    let log = String::from_utf8_lossy(&env.run(c).stderr).into_owned();
    assert_eq!(log.matches("git-s3: s3.upload_part").count(), 5, "multipart, streamed: {log}");
    // a bare sha as the source (bundled through a temporary local ref)
    let sha = env.git(&repo, &["rev-parse", "HEAD~1"]).trim().to_string();
    env.git(&repo, &["push", "-q", &url, &format!("{sha}:refs/heads/old")]);
    assert!(env.git(&repo, &["for-each-ref", "refs/git-s3/"]).is_empty(), "temporary ref removed");
    let ls = env.ls_remote(Tool::Ours, &url);
    assert!(ls.contains(&format!("{sha}\trefs/heads/old")), "{ls:?}");
    // with an empty cache the clone downloads it and gets the same bytes
    std::fs::remove_dir_all(env.dir.path().join("cache")).unwrap();
    env.git_s3(&env.work(), &["daemon", "stop"]);
    env.git(&env.work(), &["clone", "-q", &url, "clone"]);
    assert!(std::fs::read(env.path("clone/blob.bin")).unwrap() == data);
}
