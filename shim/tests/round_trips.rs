//! Round trips: how many S3 requests each git command makes, and how many of
//! them it waits for one after the other (the critical path), measured by
//! the field server (testkit::field) over TLS with 50 ms of round-trip time,
//! with the real git and a warm daemon. Counts only, never timings: the
//! latency is there so that requests that overlap do overlap.
//!
//! - `git ls-remote` and a no-op `git fetch`: one round trip, both formats;
//! - a one-commit push to a packs remote: two (the pack, then the manifest);
//! - a one-commit fetch from a packs remote: two (the manifest, then the pack);
//! - a one-commit push to a bundles remote: four up to git's answer (the
//!   listing, the lock, the ref's listing under it, the bundle), two more after;
//! - TLS handshakes: once per daemon, not per git command.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::field::{critical_path, Counts, Fault, FaultAction, RequestKind, RequestRecord};
use testkit::{FieldServer, TestEnv, Tool};

/// A test environment whose S3 endpoint is a TLS field server 50 ms away.
fn far_env() -> (TestEnv, FieldServer) {
    let env = TestEnv::new();
    let field = FieldServer::start_tls();
    env.set_env("AWS_ENDPOINT_URL", &field.url);
    env.set_env("AWS_CA_BUNDLE", &field.ca_bundle().expect("TLS").display().to_string());
    field.set_latency(Duration::from_millis(25), Duration::from_millis(25));
    (env, field)
}

/// A repository with `origin` at `url` (in the packs format if asked), its
/// `main` pushed, and a clone of it at `work/clone`.
fn pushed_and_cloned(env: &TestEnv, url: &str, packs: bool) -> (PathBuf, PathBuf) {
    let repo = env.new_repo("origin");
    env.git(&repo, &["remote", "add", "origin", url]);
    if packs {
        env.git(&repo, &["config", "s3.format", "packs"]);
    }
    env.git(&repo, &["push", "-q", "origin", "main"]);
    env.git(&env.work(), &["clone", "-q", url, "clone"]);
    (repo, env.path("clone"))
}

/// The requests of the idx upload a push leaves to the background, once it
/// is done (the daemon finishes it after git has its answer).
fn wait_for_background_idx(field: &FieldServer) {
    for _ in 0..200 {
        let idx: Vec<RequestRecord> = field.requests().into_iter().filter(is_idx).collect();
        if !idx.is_empty() && idx.iter().all(|r| r.end.is_some()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the .idx upload never finished: {:#?}", field.requests());
}

fn is_idx(r: &RequestRecord) -> bool {
    r.key.as_deref().is_some_and(|k| k.ends_with(".idx"))
}

/// Runs `what` with fresh counters and returns what it did.
fn measure(field: &FieldServer, what: impl FnOnce()) -> (Counts, Vec<RequestRecord>) {
    field.reset_counts();
    what();
    (field.counts(), field.requests())
}

fn shown(c: &Counts, requests: &[RequestRecord]) -> String {
    let lines: Vec<String> =
        requests.iter().map(|r| format!("  {:?} {} {} {:?}..{:?}", r.kind, r.method, r.key.as_deref().unwrap_or(""), r.start, r.end)).collect();
    format!("{c:?}\n{}", lines.join("\n"))
}

/// No new connection, no TLS handshake: the warm client's pool served it.
fn assert_warm_connections(c: &Counts, what: &str, requests: &[RequestRecord]) {
    assert_eq!((c.connections, c.tls_handshakes), (0, 0), "{what} opened connections: {}", shown(c, requests));
}

fn ls_remote_and_noop_fetch(packs: bool) {
    let (env, field) = far_env();
    let url = env.url("rt");
    let (repo, clone) = pushed_and_cloned(&env, &url, packs);
    let head = env.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();

    let (c, r) = measure(&field, || {
        assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{head}\trefs/heads/main")));
    });
    eprintln!("ls-remote ({}): {}", if packs { "packs" } else { "bundles" }, shown(&c, &r));
    assert_eq!(c.critical_path, 1, "ls-remote: {}", shown(&c, &r));
    if packs {
        // The manifest, read conditionally (a 304: the daemon holds it).
        assert_eq!((c.total(), c.of(RequestKind::Get)), (1, 1), "{}", shown(&c, &r));
    } else {
        // The refs/ listing, HEAD, and the manifest that is not there.
        assert_eq!((c.total(), c.of(RequestKind::List), c.of(RequestKind::Get)), (3, 1, 2), "{}", shown(&c, &r));
    }
    assert_warm_connections(&c, "ls-remote", &r);

    let (c, r) = measure(&field, || {
        env.git(&clone, &["fetch", "-q", "origin"]);
    });
    eprintln!("no-op fetch ({}): {}", if packs { "packs" } else { "bundles" }, shown(&c, &r));
    assert_eq!(c.critical_path, 1, "no-op fetch: {}", shown(&c, &r));
    assert_eq!(c.total(), if packs { 1 } else { 3 }, "{}", shown(&c, &r));
    assert_warm_connections(&c, "a no-op fetch", &r);
}

#[test]
fn ls_remote_and_a_noop_fetch_are_one_round_trip_bundles() {
    ls_remote_and_noop_fetch(false);
}

#[test]
fn ls_remote_and_a_noop_fetch_are_one_round_trip_packs() {
    ls_remote_and_noop_fetch(true);
}

/// A one-commit push to a packs remote: the pack, then the conditional
/// manifest write (the `refs/` scan beside the pack; the `.idx` after the
/// answer). Then a one-commit fetch of it in the clone: the manifest, then
/// the pack.
#[test]
fn a_one_commit_packs_push_and_fetch_are_two_round_trips_each() {
    let (env, field) = far_env();
    let url = env.url("rt");
    let (repo, clone) = pushed_and_cloned(&env, &url, true);
    // The daemon has seen the remote (the clone's fetch); the user commits.
    env.git(&clone, &["fetch", "-q", "origin"]);
    for round in 0..2 {
        let sha = env.commit(&repo, &format!("f{round}.txt"), &format!("{round}\n"), &format!("commit {round}"));
        let (c, r) = measure(&field, || {
            env.git(&repo, &["push", "-q", "origin", "main"]);
            wait_for_background_idx(&field);
        });
        eprintln!("one-commit packs push {round}: {}", shown(&c, &r));
        let foreground: Vec<RequestRecord> = r.iter().filter(|r| !is_idx(r)).cloned().collect();
        assert_eq!(critical_path(&foreground), 2, "push: {}", shown(&c, &r));
        // The pack and its .idx, the refs/ scan, the manifest.
        assert_eq!(
            (c.of(RequestKind::Put), c.of(RequestKind::List), c.of(RequestKind::ConditionalPut), c.total()),
            (2, 1, 1, 4),
            "push: {}",
            shown(&c, &r)
        );
        assert_warm_connections(&c, "a push", &r);

        let (c, r) = measure(&field, || {
            env.git(&clone, &["fetch", "-q", "origin"]);
        });
        eprintln!("one-commit packs fetch {round}: {}", shown(&c, &r));
        assert_eq!(env.git(&clone, &["rev-parse", "origin/main"]).trim(), sha);
        assert_eq!(c.critical_path, 2, "fetch: {}", shown(&c, &r));
        // The manifest (changed: read whole), the new pack.
        assert_eq!((c.of(RequestKind::Get), c.total()), (2, 2), "fetch: {}", shown(&c, &r));
        assert_warm_connections(&c, "a fetch", &r);
    }
}

/// An encrypted packs remote (issue 22): its keyring, read at every command
/// to judge the caller's access, is read beside the manifest, so
/// `ls-remote`, a no-op fetch and a one-commit fetch take the round trips
/// of a plaintext remote (1, 1, 2), with one request more each (the
/// keyring).
#[test]
fn an_encrypted_remote_reads_its_keyring_beside_the_manifest() {
    let (env, field) = far_env();
    let recipient = testkit::keygen(&env, None);
    let url = env.url("enc");
    env.git_s3(&env.work(), &["init", "--format", "packs", "--encrypt-to", &recipient, &url]);
    let (repo, clone) = pushed_and_cloned(&env, &url, true);
    env.git(&clone, &["fetch", "-q", "origin"]);
    let keyring = |r: &RequestRecord| r.key.as_deref().is_some_and(|k| k.ends_with(".git-s3/keyring"));

    let (c, r) = measure(&field, || {
        assert!(env.ls_remote(Tool::Ours, &url).iter().any(|l| l.ends_with("\trefs/heads/main")));
    });
    eprintln!("encrypted ls-remote: {}", shown(&c, &r));
    assert_eq!((c.critical_path, c.of(RequestKind::Get), c.total()), (1, 2, 2), "ls-remote: {}", shown(&c, &r));
    assert_eq!(r.iter().filter(|r| keyring(r)).count(), 1, "{}", shown(&c, &r));

    let (c, r) = measure(&field, || {
        env.git(&clone, &["fetch", "-q", "origin"]);
    });
    eprintln!("encrypted no-op fetch: {}", shown(&c, &r));
    assert_eq!((c.critical_path, c.total()), (1, 2), "no-op fetch: {}", shown(&c, &r));

    let sha = env.commit(&repo, "f.txt", "x\n", "one commit");
    field.reset_counts();
    env.git(&repo, &["push", "-q", "origin", "main"]);
    // Its pack and `.idx` (keyed names: no `.idx` to see), the latter after the answer.
    for _ in 0..200 {
        let puts: Vec<RequestRecord> = field.requests().into_iter().filter(|r| r.kind == RequestKind::Put).collect();
        if puts.len() >= 2 && puts.iter().all(|r| r.end.is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (c, r) = measure(&field, || {
        env.git(&clone, &["fetch", "-q", "origin"]);
    });
    eprintln!("encrypted one-commit fetch: {}", shown(&c, &r));
    assert_eq!(env.git(&clone, &["rev-parse", "origin/main"]).trim(), sha);
    // The keyring and the manifest, then the pack.
    assert_eq!((c.critical_path, c.of(RequestKind::Get), c.total()), (2, 3, 3), "fetch: {}", shown(&c, &r));
    assert_warm_connections(&c, "an encrypted fetch", &r);
}

/// A new daemon pays the TLS handshakes of its first command; the commands
/// after it, of any kind, reuse its connections.
#[test]
fn tls_handshakes_are_paid_once_per_daemon() {
    let (env, field) = far_env();
    let url = env.url("rt");
    let (repo, clone) = pushed_and_cloned(&env, &url, true);
    env.git_s3(&env.work(), &["daemon", "stop"]);

    let (c, r) = measure(&field, || {
        env.ls_remote(Tool::Ours, &url);
    });
    eprintln!("cold ls-remote: {}", shown(&c, &r));
    assert!(c.tls_handshakes >= 1 && c.tls_handshakes == c.connections, "{}", shown(&c, &r));
    let cold = c.tls_handshakes;

    let mut handshakes = 0;
    let mut run = |what: &str, cwd: &Path, args: &[&str]| {
        let (c, r) = measure(&field, || {
            env.git(cwd, args);
        });
        eprintln!("{what}: {}", shown(&c, &r));
        handshakes += c.tls_handshakes;
        assert_warm_connections(&c, what, &r);
    };
    run("ls-remote", &env.work(), &["ls-remote", &url]);
    run("fetch", &clone, &["fetch", "-q", "origin"]);
    env.commit(&repo, "g.txt", "g\n", "one more");
    run("push", &repo, &["push", "-q", "origin", "main"]);
    wait_for_background_idx(&field);
    run("pull", &clone, &["pull", "-q", "--ff-only"]);
    run("ls-remote", &env.work(), &["ls-remote", &url]);
    assert_eq!(handshakes, 0, "after the first command ({cold} handshakes)");
}

/// A push answered from the manifest this daemon holds still loses no race:
/// another machine (its own daemon) pushes meanwhile, and the conditional
/// manifest write catches it. Another branch: both land. The same branch:
/// refused (`fetch first`), the other machine's commit stays.
#[test]
fn a_push_from_a_held_manifest_loses_no_race() {
    let (env, field) = far_env();
    let url = env.url("race");
    let (repo, clone) = pushed_and_cloned(&env, &url, true);
    env.git(&repo, &["fetch", "-q", "origin"]);
    // The other machine: its own daemon (socket), cache and state.
    let elsewhere = env.dir.path().join("elsewhere");
    let run_dir = elsewhere.join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::set_permissions(&run_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let other = |args: &[&str]| {
        let mut c = env.command("git", &clone);
        c.env("XDG_RUNTIME_DIR", &run_dir)
            .env("GIT_S3_CACHE_DIR", elsewhere.join("cache"))
            .env("GIT_S3_STATE_DIR", elsewhere.join("state"))
            .args(args);
        env.run(c);
    };
    env.git(&clone, &["checkout", "-q", "-b", "other"]);
    let theirs = env.commit(&clone, "o.txt", "o\n", "theirs");
    other(&["push", "-q", "origin", "other"]);

    // This daemon still holds the manifest without `other`: its write is refused (412), read again, and made.
    let ours = env.commit(&repo, "m.txt", "m\n", "ours");
    let (c, r) = measure(&field, || {
        env.git(&repo, &["push", "-q", "origin", "main"]);
    });
    eprintln!("push after another machine's: {}", shown(&c, &r));
    assert_eq!(c.of(RequestKind::ConditionalPut), 2, "{}", shown(&c, &r));
    let ls = env.ls_remote(Tool::Ours, &url);
    assert!(ls.contains(&format!("{ours}\trefs/heads/main")) && ls.contains(&format!("{theirs}\trefs/heads/other")), "{ls:?}");

    // The other machine pushes main; this daemon's next push of main is refused.
    env.git(&clone, &["checkout", "-q", "main"]);
    env.git(&clone, &["pull", "-q", "--ff-only", "origin", "main"]);
    let theirs_main = env.commit(&clone, "o2.txt", "o2\n", "theirs on main");
    other(&["push", "-q", "origin", "main"]);
    env.commit(&repo, "m2.txt", "m2\n", "ours again");
    let err = env.git_fail(&repo, &["push", "origin", "main"]);
    assert!(err.contains("fetch first"), "{err}");
    assert!(env.ls_remote(Tool::Ours, &url).contains(&format!("{theirs_main}\trefs/heads/main")));
    let mut stop = env.command("git-s3", &env.work());
    stop.env("XDG_RUNTIME_DIR", &run_dir).args(["daemon", "stop"]);
    env.run(stop);
}

/// A pack download that breaks off mid-body costs one more GET of that
/// pack, not the fetch, and leaves no index-pack temp file behind.
#[test]
fn a_pack_download_that_breaks_off_is_made_again() {
    let (env, field) = far_env();
    let url = env.url("rt");
    let (repo, clone) = pushed_and_cloned(&env, &url, true);
    let sha = env.commit(&repo, "r.txt", "r\n", "r");
    field.reset_counts();
    env.git(&repo, &["push", "-q", "origin", "main"]);
    wait_for_background_idx(&field);
    field.set_faults(1, vec![Fault::new(FaultAction::ResetMidBody, &[RequestKind::Get], 1.0).on_paths_containing(".pack").times(1)]);
    let (c, r) = measure(&field, || {
        env.git(&clone, &["fetch", "-q", "origin"]);
    });
    eprintln!("fetch through a broken pack download: {}", shown(&c, &r));
    assert_eq!(env.git(&clone, &["rev-parse", "origin/main"]).trim(), sha);
    // The manifest, the pack that broke off, the pack again.
    assert_eq!((c.faults, c.of(RequestKind::Get), c.total()), (1, 3, 3), "{}", shown(&c, &r));
    env.git(&clone, &["fsck", "--no-progress"]);
    let leftovers: Vec<_> = std::fs::read_dir(clone.join(".git/objects/pack"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("tmp_"))
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The ref lock's key, and the bundles of `main`, in a bundles remote.
fn is_lock(r: &RequestRecord) -> bool {
    r.key.as_deref().is_some_and(|k| k.ends_with("/LOCK#.lock") || k.ends_with("/LOCK%23.lock"))
}

/// Waits until the push's clean-up after git's answer (the replaced
/// bundle's DELETE, then the lock's release) has been made.
fn wait_for_lock_release(field: &FieldServer) {
    for _ in 0..200 {
        if field.requests().iter().any(|r| r.kind == RequestKind::Delete && is_lock(r) && r.end.is_some()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the lock was never released: {:#?}", field.requests());
}

/// A one-commit push to a bundles remote (0.4.2's layout): `list for-push`
/// (the detection, the `refs/` listing and `HEAD`, one round trip), the
/// lock's conditional PUT, the ref's listing under the lock, the bundle's
/// PUT: 4 round trips up to git's answer. After it, the replaced bundle's
/// DELETE beside the lock's HEAD, then the lock's DELETE: 6 in all. (Before
/// 2026-12-04: 10, all before the answer: the push listed the remote again,
/// wrote `HEAD` each time and read it back after the 412, and deleted the
/// replaced bundle and released the lock before answering.)
#[test]
fn a_one_commit_bundles_push_is_four_round_trips() {
    let (env, field) = far_env();
    let url = env.url("rt");
    let (repo, clone) = pushed_and_cloned(&env, &url, false);
    env.git(&clone, &["fetch", "-q", "origin"]);
    for round in 0..2 {
        let sha = env.commit(&repo, &format!("f{round}.txt"), &format!("{round}\n"), &format!("commit {round}"));
        let (c, r) = measure(&field, || {
            env.git(&repo, &["push", "-q", "origin", "main"]);
            wait_for_lock_release(&field);
        });
        eprintln!("one-commit bundles push {round}: {}", shown(&c, &r));
        let answered: Vec<RequestRecord> =
            r.iter().filter(|r| r.kind != RequestKind::Delete && !(r.kind == RequestKind::Head && is_lock(r))).cloned().collect();
        assert_eq!(critical_path(&answered), 4, "push: {}", shown(&c, &r));
        assert_eq!(c.critical_path, 6, "push and clean-up: {}", shown(&c, &r));
        // The detection (manifest, refs/, HEAD); the lock, the ref's listing,
        // the bundle; after the answer the old bundle's DELETE, the lock's
        // HEAD and DELETE.
        assert_eq!(
            (c.of(RequestKind::Get), c.of(RequestKind::List), c.of(RequestKind::ConditionalPut), c.of(RequestKind::Put)),
            (2, 2, 1, 1),
            "push: {}",
            shown(&c, &r)
        );
        assert_eq!((c.of(RequestKind::Delete), c.of(RequestKind::Head), c.total()), (2, 1, 9), "push: {}", shown(&c, &r));
        assert_warm_connections(&c, "a push", &r);
        let ls = env.ls_remote(Tool::Ours, &url);
        assert!(ls.contains(&format!("{sha}\trefs/heads/main")), "{ls:?}");
        env.git(&clone, &["pull", "-q", "--ff-only"]);
        assert_eq!(env.git(&clone, &["rev-parse", "HEAD"]).trim(), sha);
    }
}
