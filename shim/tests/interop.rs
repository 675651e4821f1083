//! Interoperability with git-remote-s3 0.4.2 (from the test venv) on the
//! same bucket: either tool clones, fetches and pushes what the other wrote,
//! and `git ls-remote` prints the same lines through both.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use testkit::{TestEnv, Tool};

#[test]
fn python_pushes_ours_clones_fetches_and_pushes_back() {
    let env = TestEnv::new();
    let repo = env.new_repo("py");
    let url = env.url("interop/a");
    env.git_with(Tool::Python, &repo, &["remote", "add", "origin", &url]);
    env.git_with(Tool::Python, &repo, &["checkout", "-q", "-b", "dev"]);
    env.commit(&repo, "dev.txt", "dev\n", "dev work");
    env.git_with(Tool::Python, &repo, &["checkout", "-q", "main"]);
    env.git_with(Tool::Python, &repo, &["tag", "-a", "v1.0", "-m", "release"]);
    env.git_with(Tool::Python, &repo, &["push", "-q", "origin", "main", "dev", "v1.0"]);

    assert_eq!(env.ls_remote(Tool::Ours, &url), env.ls_remote(Tool::Python, &url));

    env.git(&env.work(), &["clone", "-q", &url, "ours"]);
    let ours = env.path("ours");
    assert_eq!(env.git(&ours, &["rev-parse", "HEAD"]), env.git(&repo, &["rev-parse", "main"]));
    assert_eq!(env.git(&ours, &["rev-parse", "origin/dev"]), env.git(&repo, &["rev-parse", "dev"]));
    assert_eq!(env.git(&ours, &["rev-parse", "v1.0"]), env.git(&repo, &["rev-parse", "v1.0"]));

    // ours pushes a new commit; Python fetches it
    let new = env.commit(&ours, "ours.txt", "ours\n", "from rust");
    env.git(&ours, &["push", "-q", "origin", "main"]);
    env.git_with(Tool::Python, &repo, &["pull", "-q", "--ff-only", "origin", "main"]);
    assert_eq!(env.git(&repo, &["rev-parse", "HEAD"]).trim(), new);

    // Python pushes again; ours fetches
    let py2 = env.commit(&repo, "py2.txt", "py2\n", "from python");
    env.git_with(Tool::Python, &repo, &["push", "-q", "origin", "main"]);
    env.git(&ours, &["pull", "-q", "--ff-only"]);
    assert_eq!(env.git(&ours, &["rev-parse", "HEAD"]).trim(), py2);
    assert_eq!(env.ls_remote(Tool::Ours, &url), env.ls_remote(Tool::Python, &url));
}

#[test]
fn ours_pushes_python_clones() {
    let env = TestEnv::new();
    let repo = env.new_repo("rs");
    let url = env.url("interop/b");
    env.git(&repo, &["remote", "add", "origin", &url]);
    env.git(&repo, &["checkout", "-q", "-b", "feature/y"]);
    env.commit(&repo, "y.txt", "y\n", "y");
    env.git(&repo, &["checkout", "-q", "main"]);
    env.git(&repo, &["tag", "light"]);
    env.git(&repo, &["push", "-q", "origin", "main", "feature/y", "light"]);
    assert_eq!(env.ls_remote(Tool::Ours, &url), env.ls_remote(Tool::Python, &url));

    env.git_with(Tool::Python, &env.work(), &["clone", "-q", &url, "py"]);
    let py = env.path("py");
    assert_eq!(env.git(&py, &["rev-parse", "HEAD"]), env.git(&repo, &["rev-parse", "main"]));
    assert_eq!(env.git(&py, &["rev-parse", "origin/feature/y"]), env.git(&repo, &["rev-parse", "feature/y"]));

    // Python deletes a branch we pushed
    env.git_with(Tool::Python, &py, &["push", "-q", "origin", ":feature/y"]);
    assert!(!env.ls_remote(Tool::Ours, &url).iter().any(|l| l.contains("feature/y")));
}

#[test]
fn s3_zip_interop() {
    let env = TestEnv::new();
    let repo = env.new_repo("z");
    let url = env.zip_url("interop/zip");
    env.git_with(Tool::Python, &repo, &["push", "-q", &url, "main"]);
    assert_eq!(&env.get_object("interop/zip/refs/heads/main/repo.zip")[..2], b"PK");
    env.git(&env.work(), &["clone", "-q", &url, "ours"]);
    let ours = env.path("ours");
    let sha = env.commit(&ours, "more.txt", "more\n", "more");
    env.git(&ours, &["push", "-q", "origin", "main"]);
    let keys = env.keys("interop/zip/refs/heads/main/");
    assert!(keys.contains(&format!("interop/zip/refs/heads/main/{sha}.bundle")), "{keys:?}");
    assert!(keys.contains(&"interop/zip/refs/heads/main/repo.zip".to_string()));
    assert_eq!(keys.iter().filter(|k| k.ends_with(".bundle")).count(), 1);
    env.git_with(Tool::Python, &env.work(), &["clone", "-q", &url, "py"]);
    assert_eq!(env.git(&env.path("py"), &["rev-parse", "HEAD"]).trim(), sha);
}

#[test]
fn python_and_ours_race_on_one_branch_exactly_one_wins() {
    let env = TestEnv::new();
    let repo = env.new_repo("base");
    let url = env.url("interop/race");
    env.git(&repo, &["push", "-q", &url, "main"]);
    env.git(&env.work(), &["clone", "-q", &url, "a"]);
    env.git(&env.work(), &["clone", "-q", &url, "b"]);
    let a = env.path("a");
    let b = env.path("b");
    let sha_a = env.commit(&a, "a.txt", "a\n", "a");
    let sha_b = env.commit(&b, "b.txt", "b\n", "b");
    let mut ca = env.command_with(Tool::Ours, "git", &a);
    ca.args(["push", "origin", "main"]);
    let mut cb = env.command_with(Tool::Python, "git", &b);
    cb.args(["push", "origin", "main"]);
    let ha = std::thread::spawn(move || ca.output().unwrap());
    let hb = std::thread::spawn(move || cb.output().unwrap());
    let (oa, ob) = (ha.join().unwrap(), hb.join().unwrap());
    let ls = env.ls_remote(Tool::Ours, &url);
    let winners = [oa.status.success(), ob.status.success()].iter().filter(|x| **x).count();
    assert_eq!(winners, 1, "a: {}\nb: {}", String::from_utf8_lossy(&oa.stderr), String::from_utf8_lossy(&ob.stderr));
    let expected = if oa.status.success() { &sha_a } else { &sha_b };
    assert!(ls.contains(&format!("{expected}\trefs/heads/main")), "{ls:?}");
    let bundles = env.keys("interop/race/refs/heads/main/").into_iter().filter(|k| k.ends_with(".bundle")).count();
    assert_eq!(bundles, 1);
    assert!(!env.keys("interop/race/").iter().any(|k| k.contains("LOCK#")));
}
