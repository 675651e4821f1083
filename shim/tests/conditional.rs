//! A store that does not enforce conditional writes (`If-None-Match: *`,
//! `If-Match`) must never lose a push that reported success: the daemon
//! probes the store before its first write to a bucket and refuses every
//! write to one that ignores the headers or answers them `501
//! NotImplemented`; reads keep working. The field server plays such a store
//! (`ConditionalWrites::Ignored` drops the headers in front of moto;
//! `NotImplemented` answers 501).
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use testkit::field::ConditionalWrites;
use testkit::{FieldServer, TestEnv, Tool};

const PREFIX: &str = "cond";

/// A remote at `prefix` with `main` pushed straight to the test server (not
/// through the field server), cloned twice (`<prefix>-a`, `<prefix>-b`);
/// from then on every command goes through a field server in `mode`.
fn remote(env: &TestEnv, prefix: &str, packs: bool) -> (String, [PathBuf; 2]) {
    let url = env.url(prefix);
    let repo = env.new_repo(&format!("{prefix}-origin"));
    env.git(&repo, &["remote", "add", "origin", &url]);
    if packs {
        env.git(&repo, &["config", "s3.format", "packs"]);
    }
    env.git(&repo, &["push", "-q", "origin", "main"]);
    let clones = ["a", "b"].map(|c| {
        let name = format!("{prefix}-{c}");
        env.git(&env.work(), &["clone", "-q", &url, &name]);
        env.path(&name)
    });
    (url, clones)
}

fn through_field(env: &TestEnv, mode: ConditionalWrites) -> FieldServer {
    let field = FieldServer::start();
    field.set_conditional_writes(mode);
    env.set_env("AWS_ENDPOINT_URL", &field.url);
    field
}

struct Push {
    sha: String,
    ok: bool,
    stderr: String,
}

/// A command of machine `i`: 0 is this machine, 1 another one (its own
/// daemon, cache and state), as two people pushing at once are.
fn on_machine(env: &TestEnv, i: usize, program: &str, cwd: &Path) -> Command {
    let mut c = env.command(program, cwd);
    if i == 1 {
        let elsewhere = env.dir.path().join("elsewhere");
        let run_dir = elsewhere.join("run");
        std::fs::create_dir_all(&run_dir).unwrap();
        std::fs::set_permissions(&run_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        c.env("XDG_RUNTIME_DIR", &run_dir).env("GIT_S3_CACHE_DIR", elsewhere.join("cache")).env("GIT_S3_STATE_DIR", elsewhere.join("state"));
    }
    c
}

/// Stops the other machine's daemon.
fn stop_other_daemon(env: &TestEnv) {
    let mut c = on_machine(env, 1, "git-s3", &env.work());
    c.args(["daemon", "stop"]);
    let _ = c.output();
}

/// `rounds` races: each clone (on its own machine) catches up with the
/// remote's main, commits one file, and both push main at once.
fn race(env: &TestEnv, clones: &[PathBuf; 2], rounds: usize) -> Vec<Push> {
    let mut pushes = Vec::new();
    for round in 0..rounds {
        let mut children = Vec::new();
        for (i, clone) in clones.iter().enumerate() {
            let mut fetch = on_machine(env, i, "git", clone);
            fetch.args(["fetch", "-q", "origin"]);
            env.run(fetch);
            env.git(clone, &["reset", "-q", "--hard", "origin/main"]);
            let sha = env.commit(clone, &format!("r{round}-{i}.txt"), &format!("{round} {i}\n"), &format!("round {round} clone {i}"));
            let mut c = on_machine(env, i, "git", clone);
            c.args(["push", "origin", "main"]).stdout(Stdio::piped()).stderr(Stdio::piped());
            children.push((sha, c.spawn().expect("spawn git push")));
        }
        for (sha, child) in children {
            let out = child.wait_with_output().expect("git push");
            pushes.push(Push { sha, ok: out.status.success(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() });
        }
    }
    pushes
}

/// Every push that exited 0 has its commit in the remote's main.
fn assert_no_success_lost(env: &TestEnv, url: &str, checker: &Path, pushes: &[Push]) {
    env.git(checker, &["fetch", "-q", "origin"]);
    let main = env.git(checker, &["rev-parse", "origin/main"]).trim().to_string();
    let listed: Vec<String> = env.ls_remote(Tool::Ours, url);
    assert!(listed.iter().any(|l| l.starts_with(&main) && l.ends_with("refs/heads/main")), "{listed:?} vs {main}");
    for p in pushes.iter().filter(|p| p.ok) {
        let mut c = env.command("git", checker);
        c.args(["merge-base", "--is-ancestor", &p.sha, &main]);
        let reachable = c.status().expect("git merge-base").success();
        assert!(reachable, "a push of {} reported success, but the remote's main ({main}) does not have it:\n{}", p.sha, p.stderr);
    }
}

/// Refused, with the one line that says why.
fn assert_refused(pushes: &[Push], wording: &str) {
    for p in pushes {
        assert!(!p.ok, "a push to a store without conditional writes went through:\n{}", p.stderr);
        let lines: Vec<&str> = p.stderr.lines().filter(|l| l.contains("refusing to write")).collect();
        assert_eq!(lines.len(), 1, "{}", p.stderr);
        assert!(lines[0].contains(wording) && lines[0].contains("docs/configuration.md#conditional-writes"), "{}", p.stderr);
        assert!(!p.stderr.contains("DispatchFailure") && !p.stderr.contains("ServiceError"), "{}", p.stderr);
    }
}

fn status_json(env: &TestEnv, clone: &Path) -> Value {
    serde_json::from_str(&env.git_s3(clone, &["status", "origin", "--json"])).expect("status --json")
}

fn doctor_json(env: &TestEnv, clone: &Path) -> Value {
    let mut c = env.command("git-s3", clone);
    c.args(["doctor", "origin", "--json", "--yes"]);
    let out = c.output().expect("git s3 doctor");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("doctor --json: {e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// Pushes refused with `wording`, nothing written, nothing lost; reads
/// work; status and doctor say why.
fn refused_store(mode: ConditionalWrites, packs: bool, wording: &str, state: &str) {
    let env = TestEnv::new();
    let (url, clones) = remote(&env, PREFIX, packs);
    let before = env.keys(&format!("{PREFIX}/"));
    let field = through_field(&env, mode);

    let pushes = race(&env, &clones, 3);
    assert_no_success_lost(&env, &url, &clones[0], &pushes);
    assert_refused(&pushes, wording);
    assert_eq!(env.keys(&format!("{PREFIX}/")), before, "a refused push wrote something (or left the probe)");

    // Reads keep working: ls-remote, clone, fetch.
    env.git(&env.work(), &["clone", "-q", &url, "fresh"]);
    env.git(&env.path("fresh"), &["fetch", "-q", "origin"]);
    assert_eq!(env.ls_remote(Tool::Ours, &url).len(), 2, "HEAD and main");

    // Other writes are refused too, with the same line.
    let err = env.git_fail(&clones[0], &["push", "origin", "main:refs/heads/other"]);
    assert!(err.contains("refusing to write") && err.contains(wording), "{err}");

    let st = status_json(&env, &clones[0]);
    let cw = &st["remote"]["conditional_writes"];
    assert_eq!(cw["state"], state, "{cw}");
    assert_eq!(cw["header"], "If-None-Match", "{cw}");
    assert!(cw["endpoint"].as_str().is_some_and(|e| e == field.url), "{cw}");
    let text = env.git_s3(&clones[0], &["status", "origin"]);
    assert!(text.contains("conditional writes: ") && text.contains("writes are refused"), "{text}");
    let doc = doctor_json(&env, &clones[0]);
    assert_eq!(doc["conditional_writes"]["state"], state, "{doc}");
    assert!(doc["issues"].as_array().is_some_and(|i| i.iter().any(|i| i["kind"] == "conditional_writes_not_enforced")), "{doc}");
    stop_other_daemon(&env);
    drop(field);
}

#[test]
fn a_store_that_ignores_conditional_writes_gets_no_push_packs() {
    refused_store(ConditionalWrites::Ignored, true, "does not enforce If-None-Match", "ignored");
}

#[test]
fn a_store_that_ignores_conditional_writes_gets_no_push_bundles() {
    refused_store(ConditionalWrites::Ignored, false, "does not enforce If-None-Match", "ignored");
}

#[test]
fn a_store_that_answers_501_to_conditional_writes_gets_no_push() {
    refused_store(ConditionalWrites::NotImplemented, true, "does not support If-None-Match", "not-implemented");
}

/// An enforcing store: racing pushes go through (one wins each race, none
/// is lost), and the bucket is probed once, whatever the number of pushes
/// and prefixes; a read probes nothing.
#[test]
fn an_enforcing_store_is_probed_once_per_bucket() {
    let env = TestEnv::new();
    let (url_p, packs) = remote(&env, "p", true);
    let (url_b, bundles) = remote(&env, "b", false);
    let field = through_field(&env, ConditionalWrites::Enforced);
    let probes = || field.requests().iter().filter(|r| r.key.as_deref().is_some_and(|k| k.contains("conditional-write-probe"))).count();

    env.ls_remote(Tool::Ours, &url_p);
    env.git(&packs[0], &["fetch", "-q", "origin"]);
    assert_eq!(probes(), 0, "reads probe nothing");
    assert_eq!(status_json(&env, &packs[0])["remote"]["conditional_writes"]["state"], "unknown");

    for (url, clones) in [(&url_p, &packs), (&url_b, &bundles)] {
        let pushes = race(&env, clones, 3);
        assert_no_success_lost(&env, url, &clones[0], &pushes);
        for round in pushes.chunks(2) {
            assert!(round.iter().any(|p| p.ok), "no push of a race went through:\n{}\n{}", round[0].stderr, round[1].stderr);
        }
        assert!(pushes.iter().all(|p| !p.stderr.contains("refusing to write")));
    }
    // Create, create again (refused), a stale If-Match (refused), delete:
    // once per daemon (two machines), for both prefixes of the bucket.
    assert_eq!(probes(), 8, "one probe for the bucket per daemon");
    let cw = &status_json(&env, &packs[0])["remote"]["conditional_writes"];
    assert_eq!(cw["state"], "enforced", "{cw}");
    stop_other_daemon(&env);
    assert!(!env.keys("p/").iter().chain(env.keys("b/").iter()).any(|k| k.contains("conditional-write-probe")), "the probe is cleaned up");
    // A daemon that exited (idle, or restarted) remembers the enforcing
    // store from its state directory: the next push probes nothing.
    env.git_s3(&env.work(), &["daemon", "stop"]);
    assert_eq!(status_json(&env, &packs[0])["remote"]["conditional_writes"]["state"], "enforced", "remembered by the new daemon");
    env.git(&packs[0], &["pull", "-q", "--rebase", "origin", "main"]);
    env.commit(&packs[0], "after-restart.txt", "x\n", "after a restart");
    env.git(&packs[0], &["push", "-q", "origin", "HEAD:main"]);
    assert_eq!(probes(), 8, "a restarted daemon probed again");
}

/// `GIT_S3_UNSAFE_NO_CONDITIONAL_WRITES=1` (one writer, by choice): the push
/// goes through, with one warning line that stays on whatever the verbosity.
#[test]
fn the_override_writes_with_a_warning() {
    let env = TestEnv::new();
    let (url, clones) = remote(&env, PREFIX, true);
    let field = through_field(&env, ConditionalWrites::Ignored);
    let sha = env.commit(&clones[0], "one.txt", "1\n", "one writer");
    let mut c = env.command("git", &clones[0]);
    c.env("GIT_S3_UNSAFE_NO_CONDITIONAL_WRITES", "1").args(["push", "-q", "origin", "main"]);
    let out = env.run(c);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("warning: git-s3: writing although")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("does not enforce If-None-Match") && warnings[0].contains("#conditional-writes"), "{stderr}");
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{sha}\trefs/heads/main")));
    // Without it, the same daemon still refuses.
    env.commit(&clones[0], "two.txt", "2\n", "two");
    let err = env.git_fail(&clones[0], &["push", "origin", "main"]);
    assert!(err.contains("refusing to write"), "{err}");
    drop(field);
}
