//! Hostile and corrupt buckets: keys git would refuse, a HEAD holding junk
//! (a protocol-line injection attempt among them), manifests with wrong,
//! negative or huge numbers, huge arrays, unknown versions, pack names with
//! `/` or `..`, refs spelled like options, a `.bundle` that is not a bundle,
//! an `.idx` that does not match its pack. Each is planted with put_object.
//!
//! After each: `git ls-remote` / `git clone` succeed, or fail with one
//! `fatal:` line naming the key; what reaches git's stdout is only well-formed
//! `<sha>\t<ref>` lines; nothing is written outside the cache and the
//! repository (every planted path traversal names `pwned`, which must appear
//! nowhere on disk); and a healthy remote is still served by the same daemon.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use testkit::TestEnv;

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run_git(env: &TestEnv, cwd: &Path, args: &[&str]) -> Run {
    let mut c = env.command("git", cwd);
    c.args(args);
    let out: Output = c.output().expect("spawn git");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn daemon_pid(env: &TestEnv) -> u64 {
    let v: Value = serde_json::from_str(env.git_s3(&env.work(), &["daemon", "status", "--json"]).trim()).expect("status json");
    v["pid"].as_u64().or_else(|| v["daemon"]["pid"].as_u64()).unwrap_or_else(|| panic!("no pid in {v}"))
}

fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What git prints of a listing: `<sha>\t<ref>` lines (and `@<ref> HEAD`
/// never: ls-remote shows the symref only with --symref), each ref one git
/// accepts.
fn assert_clean_listing(case: &str, stdout: &str) {
    for line in stdout.lines() {
        let (sha, name) = line.split_once('\t').unwrap_or_else(|| panic!("{case}: malformed line {line:?} in\n{stdout}"));
        assert!(is_sha(sha), "{case}: {line:?}");
        assert!(name == "HEAD" || name.starts_with("refs/"), "{case}: {line:?}");
        assert!(!name.contains(' ') && !name.contains("..") && !name.chars().any(char::is_control), "{case}: {line:?}");
        assert!(!name.contains("evil"), "{case}: an injected ref reached git: {line:?}");
    }
}

/// A failure is one `fatal:` line that names `needle` (the key, or its
/// distinctive part); a success prints no `fatal:` line.
fn assert_clear(case: &str, r: &Run, needle: &str) {
    let fatals: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("fatal:")).collect();
    if r.ok {
        assert!(fatals.is_empty(), "{case}: succeeded but said {:?}", r.stderr);
    } else {
        assert_eq!(fatals.len(), 1, "{case}: expected one fatal line naming {needle:?}, got:\n{}", r.stderr);
        assert!(fatals[0].contains(needle), "{case}: the fatal line does not name {needle:?}:\n{}", r.stderr);
    }
    assert!(!r.stderr.contains("panicked"), "{case}: {}", r.stderr);
}

/// Nothing named `pwned` anywhere under the test's directory or /tmp.
fn assert_nothing_escaped(env: &TestEnv) {
    fn walk(dir: &Path, found: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.file_name().map(|n| n.to_string_lossy().contains("pwned")).unwrap_or(false) {
                found.push(p.display().to_string());
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&p, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(env.dir.path(), &mut found);
    for p in ["/tmp/pwned", "/pwned"] {
        if Path::new(p).exists() {
            found.push(p.to_string());
        }
    }
    assert!(found.is_empty(), "files written outside the cache/repository: {found:?}");
}

/// The daemon still serves an ordinary session (same pid as before).
fn assert_still_serving(env: &TestEnv, pid: u64, healthy_main: &str) {
    let r = run_git(env, &env.work(), &["ls-remote", &env.url("healthy")]);
    assert!(r.ok, "the healthy remote is no longer served: {}", r.stderr);
    assert!(r.stdout.contains(&format!("{healthy_main}\trefs/heads/main")), "{}", r.stdout);
    assert_eq!(daemon_pid(env), pid, "the daemon was restarted (crashed?)");
}

/// One hostile case: ls-remote and clone of `url`, each clean; then the healthy remote.
fn check(env: &TestEnv, pid: u64, healthy_main: &str, case: &str, url: &str, needle: &str) -> (Run, Run) {
    let ls = run_git(env, &env.work(), &["ls-remote", url]);
    eprintln!("--- {case}: ls-remote ok={} \n{}{}", ls.ok, ls.stdout, ls.stderr);
    assert_clear(case, &ls, needle);
    if ls.ok {
        assert_clean_listing(case, &ls.stdout);
    }
    let dest = env.path(&format!("clone-{}", case.replace(|c: char| !c.is_ascii_alphanumeric(), "-")));
    let cl = run_git(env, &env.work(), &["clone", "-q", url, dest.to_str().unwrap()]);
    eprintln!("--- {case}: clone ok={}\n{}", cl.ok, cl.stderr);
    assert_clear(case, &cl, needle);
    if cl.ok {
        let fsck = run_git(env, &dest, &["fsck", "--strict"]);
        assert!(fsck.ok, "{case}: a clone that succeeded is not sound: {}", fsck.stderr);
    }
    assert_nothing_escaped(env);
    assert_still_serving(env, pid, healthy_main);
    (ls, cl)
}

/// An environment with a healthy bundles remote at `healthy`, plus a repo to
/// push hostile remotes from. Returns (env, repo, main sha, daemon pid).
fn setup() -> (TestEnv, std::path::PathBuf, String, u64) {
    let env = TestEnv::new();
    let repo = env.new_repo("src");
    let main = env.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    env.git(&repo, &["push", "-q", &env.url("healthy"), "main"]);
    let pid = daemon_pid(&env);
    (env, repo, main, pid)
}

#[test]
fn hostile_bundle_keys_and_heads() {
    let (env, repo, main, pid) = setup();
    let bundle = env.get_object(&format!("healthy/refs/heads/main/{main}.bundle"));
    assert!(bundle.starts_with(b"# v2 git bundle\n") || bundle.starts_with(b"# v3 git bundle\n"));

    // Keys whose ref part git refuses: each ignored with a warning naming it.
    let weird = [
        "refs/heads/a b".to_string(),
        // (The test server refuses keys with a newline, so the injection
        // attempt uses a tab and a carriage return; layout::scan refuses all
        // three, tests/fuzz.rs in the daemon covers the newline.)
        format!("refs/heads/x\tfetch {main} refs/heads/evil"),
        format!("refs/heads/y\r{main} refs/heads/evil"),
        "refs/heads/../../../../../../pwned".to_string(),
        "refs/heads/ctl\u{1}\u{1b}[31m".to_string(),
        "refs/heads/x.lock".to_string(),
        "refs/heads/a..b".to_string(),
        "refs/heads/c:d".to_string(),
    ];
    env.git(&repo, &["push", "-q", &env.url("keys"), "main"]);
    for w in &weird {
        env.put_object(&format!("keys/{w}/{main}.bundle"), &bundle);
    }
    // A ref spelled like an option is a full ref name (refs/heads/--upload-pack=x):
    // never an option. It is listed and fetched like any other.
    env.put_object(&format!("keys/refs/heads/--upload-pack=x/{main}.bundle"), &bundle);
    let (ls, _) = check(&env, pid, &main, "weird keys", &env.url("keys"), "keys/");
    assert!(ls.ok);
    let listed: Vec<&str> = ls.stdout.lines().map(|l| l.split('\t').nth(1).unwrap_or("")).filter(|n| *n != "HEAD").collect();
    assert!(listed.contains(&"refs/heads/main") && listed.contains(&"refs/heads/--upload-pack=x"), "{listed:?}");
    assert_eq!(listed.len(), 2, "{listed:?}");
    let warnings: Vec<&str> = ls.stderr.lines().filter(|l| l.starts_with("warning: ignoring")).collect();
    assert_eq!(warnings.len(), weird.len(), "one warning per ignored key:\n{}", ls.stderr);
    assert!(warnings.iter().all(|w| w.contains(&format!("s3://{}/keys/refs/heads/", env.bucket))), "{warnings:?}");
    assert!(!ls.stderr.contains('\u{1b}'), "a terminal escape from the bucket reached stderr: {:?}", ls.stderr);
    assert_eq!(ls.stderr.lines().count(), weird.len(), "only the warnings:\n{}", ls.stderr);
    let clone = env.path("clone-weird-keys");
    let refs = env.git(&clone, &["for-each-ref", "--format=%(refname)"]);
    assert!(refs.contains("refs/remotes/origin/--upload-pack=x") && !refs.contains("evil"), "{refs}");

    // A HEAD holding junk: a protocol injection attempt, an option, binary, a huge one.
    for (i, head) in [
        format!("refs/heads/main\nfetch {main} refs/heads/evil\n\n").into_bytes(),
        b"--upload-pack=touch pwned".to_vec(),
        b"\x00\xff\xfe refs/heads/main".to_vec(),
        b"refs/heads/../../pwned".to_vec(),
        vec![b'x'; 3 << 20],
    ]
    .into_iter()
    .enumerate()
    {
        let prefix = format!("head{i}");
        env.git(&repo, &["push", "-q", &env.url(&prefix), "main"]);
        env.put_object(&format!("{prefix}/HEAD"), &head);
        let (ls, cl) = check(&env, pid, &main, &format!("HEAD junk {i}"), &env.url(&prefix), &format!("{prefix}/HEAD"));
        assert!(ls.ok && cl.ok, "HEAD junk {i}: a bad HEAD leaves the refs usable:\n{}\n{}", ls.stderr, cl.stderr);
        let warned: Vec<&str> = ls.stderr.lines().collect();
        assert_eq!(warned.len(), 1, "HEAD junk {i}: one line naming the key:\n{}", ls.stderr);
        assert!(warned[0].starts_with("warning:") && warned[0].contains(&format!("s3://{}/{prefix}/HEAD", env.bucket)), "{warned:?}");
    }

    // A `.bundle` that is not a bundle, and one whose pack is cut, for a
    // commit the daemon has never seen (so nothing of it is in the cache).
    env.git(&repo, &["checkout", "-q", "-b", "unseen"]);
    let unseen = env.commit(&repo, "u.txt", "unseen\n", "unseen");
    let real = env.path("unseen.bundle");
    env.git(&repo, &["bundle", "create", "-q", real.to_str().unwrap(), "unseen"]);
    let real = std::fs::read(&real).unwrap();
    let plant = |prefix: &str, data: &[u8]| {
        let key = format!("{prefix}/refs/heads/main/{unseen}.bundle");
        env.put_object(&key, data);
        key
    };
    let key = plant("notbundle", b"this is not a bundle\n\nPACK");
    let (_, cl) = check(&env, pid, &main, "not a bundle", &env.url("notbundle"), &key);
    assert!(!cl.ok);
    let key = plant("cutbundle", &real[..real.len() - 30]);
    let (_, cl) = check(&env, pid, &main, "cut bundle", &env.url("cutbundle"), &key);
    assert!(!cl.ok);
    // A bundle of another commit than its key names.
    let key = plant("wrongbundle", &bundle);
    let (_, cl) = check(&env, pid, &main, "bundle of another commit", &env.url("wrongbundle"), &key);
    assert!(!cl.ok);
    // A bundle header that never ends.
    let mut endless = b"# v2 git bundle\n".to_vec();
    endless.extend(std::iter::repeat_n(b'a', 1 << 20));
    let key = plant("endless", &endless);
    let (_, cl) = check(&env, pid, &main, "endless header", &env.url("endless"), &key);
    assert!(!cl.ok);
}

/// The manifest of a healthy packs remote at `packs`, as JSON.
fn packs_remote(env: &TestEnv, repo: &Path) -> Value {
    env.git_s3(&env.work(), &["init", "--format", "packs", &env.url("packs")]);
    env.git(repo, &["push", "-q", &env.url("packs"), "main"]);
    serde_json::from_slice(&env.get_object("packs/.git-s3/manifest.json")).expect("manifest json")
}

/// Plants `manifest` at `<prefix>`, with copies of the healthy remote's packs.
fn plant_packs(env: &TestEnv, prefix: &str, manifest: &[u8], copy_packs: bool) {
    if copy_packs {
        for k in env.keys("packs/.git-s3/packs/") {
            let rest = k.strip_prefix("packs/").unwrap();
            env.copy_object(&k, &format!("{prefix}/{rest}"));
        }
    }
    env.put_object(&format!("{prefix}/.git-s3/manifest.json"), manifest);
}

#[test]
fn hostile_manifests() {
    let (env, repo, main, pid) = setup();
    let good = packs_remote(&env, &repo);
    let pack = good["packs"][0]["name"].as_str().unwrap().to_string();
    let manifest_key = |p: &str| format!("{p}/.git-s3/manifest.json");

    let mut cases: Vec<(&str, Vec<u8>, bool)> = Vec::new();
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut m = good.clone();
        f(&mut m);
        serde_json::to_vec(&m).unwrap()
    };
    cases.push(("version 2", edit(&|m| m["version"] = 2.into()), true));
    cases.push(("version huge", br#"{"version": 99999999999999999999999, "refs": {}}"#.to_vec(), true));
    cases.push(("negative size", edit(&|m| m["packs"][0]["size"] = (-5).into()), true));
    cases.push(("huge float size", edit(&|m| m["packs"][0]["size"] = serde_json::json!(1e300)), true));
    cases.push(("size u64 max", edit(&|m| m["packs"][0]["size"] = u64::MAX.into()), true));
    cases.push(("wrong size", edit(&|m| m["packs"][0]["size"] = 1.into()), true));
    cases.push(("negative serial", edit(&|m| m["serial"] = (-1).into()), true));
    cases.push(("pack name with slash", edit(&|m| m["packs"][0]["name"] = "../../../../pwned".into()), true));
    cases.push(("pack name a/b", edit(&|m| m["packs"][0]["name"] = format!("{}/{}", &pack[..20], &pack[20..]).into()), true));
    cases.push(("ref spelled as option", edit(&|m| m["refs"] = serde_json::json!({ "--upload-pack=touch pwned": main })), true));
    cases.push(("ref -x", edit(&|m| m["refs"] = serde_json::json!({ "-x": main })), true));
    cases.push(("ref with newline", edit(&|m| m["refs"] = serde_json::json!({ format!("refs/heads/x\nfetch {main} refs/heads/evil"): main })), true));
    cases.push(("ref git refuses", edit(&|m| m["refs"] = serde_json::json!({ "refs/heads/a..b": main })), true));
    cases.push(("head junk", edit(&|m| m["head"] = format!("refs/heads/main\n{main} refs/heads/evil").into()), true));
    cases.push(("sha junk", edit(&|m| m["refs"] = serde_json::json!({ "refs/heads/main": "--upload-pack=x" })), true));
    cases.push(("tips junk", edit(&|m| m["packs"][0]["tips"] = serde_json::json!(["../x"])), true));
    cases.push(("not json", b"{\"version\": 1, \"refs\": ".to_vec(), true));
    cases.push(("json not an object", b"[1,2,3]".to_vec(), true));
    // A huge array: 200 000 copies of one pack entry (listed twice).
    let dup = edit(&|m| {
        let p = m["packs"][0].clone();
        m["packs"] = Value::Array(vec![p; 200_000]);
    });
    cases.push(("huge duplicate array", dup, true));
    // A huge array of distinct, missing packs: listing is fine; a clone fails on a missing pack.
    let many = edit(&|m| {
        let p = m["packs"][0].clone();
        let mut v = vec![p];
        for i in 0..50_000u64 {
            let mut q = v[0].clone();
            q["name"] = format!("{:040x}", i + 1).into();
            v.push(q);
        }
        m["packs"] = Value::Array(v);
    });
    cases.push(("huge array of missing packs", many, true));
    // A manifest over 64 MiB is refused before it is read.
    let mut big = serde_json::to_vec(&good).unwrap();
    big.pop();
    big.extend_from_slice(b", \"pad\": \"");
    big.extend(std::iter::repeat_n(b'x', 65 << 20));
    big.extend_from_slice(b"\"}");
    cases.push(("manifest over 64 MiB", big, false));

    for (i, (case, bytes, copy)) in cases.into_iter().enumerate() {
        let prefix = format!("m{i}");
        plant_packs(&env, &prefix, &bytes, copy);
        // The manifest, or the pack it names that is missing: a key of this prefix.
        let _ = manifest_key;
        let (ls, cl) = check(&env, pid, &main, case, &env.url(&prefix), &format!("{prefix}/.git-s3/"));
        eprintln!("=== {case}: ls-remote {} clone {}", ls.ok, cl.ok);
    }

    // An `.idx` that does not match its pack: the index of another pack.
    let repo2 = env.new_repo("other");
    env.commit(&repo2, "b.txt", "other content\n", "other");
    env.git_s3(&env.work(), &["init", "--format", "packs", &env.url("other")]);
    env.git(&repo2, &["push", "-q", &env.url("other"), "main"]);
    plant_packs(&env, "badidx", &serde_json::to_vec(&good).unwrap(), true);
    let other: Value = serde_json::from_slice(&env.get_object("other/.git-s3/manifest.json")).unwrap();
    let other_pack = other["packs"][0]["name"].as_str().unwrap();
    env.copy_object(&format!("other/.git-s3/packs/pack-{other_pack}.idx"), &format!("badidx/.git-s3/packs/pack-{pack}.idx"));
    // (The cache holds the healthy pack under its name, which would serve
    // the clone: empty it so the planted objects are downloaded.)
    env.git_s3(&env.work(), &["cache", "clear"]);
    let (_, cl) = check(&env, pid, &main, "idx of another pack", &env.url("badidx"), &format!("badidx/.git-s3/packs/pack-{pack}"));
    eprintln!("=== idx of another pack: clone {}", cl.ok);
    // A pack that is not a pack.
    plant_packs(&env, "badpack", &serde_json::to_vec(&good).unwrap(), true);
    env.put_object(&format!("badpack/.git-s3/packs/pack-{pack}.pack"), b"PACK\x00\x00\x00\x02garbage");
    env.git_s3(&env.work(), &["cache", "clear"]);
    let (_, cl) = check(&env, pid, &main, "pack that is not a pack", &env.url("badpack"), &format!("badpack/.git-s3/packs/pack-{pack}.pack"));
    assert!(!cl.ok);
}

/// The pack-related files in the cache entry of pack `name` (none when it is
/// not cached).
fn cached_pack_files(env: &TestEnv, name: &str) -> Vec<String> {
    let dir = env.dir.path().join("cache/packs").join(name);
    let mut files: Vec<String> =
        std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    files
}

/// Packs whose objects do not hold the tips the manifest names for them:
/// a tip the pack lacks (clone), a pack added for a tip it lacks (fetch into
/// an existing clone, which stays as it was), and the object of one pack
/// holding another pack's bytes (which must not be cached under the name).
#[test]
fn packs_that_lack_their_tips() {
    let (env, repo, main, pid) = setup();
    let good = packs_remote(&env, &repo);
    let pack = good["packs"][0]["name"].as_str().unwrap().to_string();
    // Another history, in its own pack, sharing no object with main (a
    // second `new_repo` made in the same second would share its first
    // commit, main's tip, and case 3's clone would rightly succeed); and a
    // commit no remote has.
    let repo2 = env.path("other");
    std::fs::create_dir_all(&repo2).unwrap();
    env.git(&repo2, &["init", "-q", "-b", "main"]);
    env.commit(&repo2, "b.txt", "other content\n", "other");
    assert!(!run_git(&env, &repo2, &["cat-file", "-e", &format!("{main}^{{commit}}")]).ok, "the other history holds main's tip");
    env.git_s3(&env.work(), &["init", "--format", "packs", &env.url("other")]);
    env.git(&repo2, &["push", "-q", &env.url("other"), "main"]);
    let other: Value = serde_json::from_slice(&env.get_object("other/.git-s3/manifest.json")).unwrap();
    let other_entry = other["packs"][0].clone();
    let other_pack = other_entry["name"].as_str().unwrap().to_string();
    env.git(&repo, &["checkout", "-q", "-b", "unseen"]);
    let unseen = env.commit(&repo, "u.txt", "unseen\n", "unseen");
    env.git(&repo, &["checkout", "-q", "main"]);

    // 1. The manifest names a tip the pack lacks: the clone fails naming the pack's key.
    let mut m = good.clone();
    m["refs"]["refs/heads/main"] = unseen.clone().into();
    m["packs"][0]["tips"] = serde_json::json!([unseen]);
    plant_packs(&env, "notip", &serde_json::to_vec(&m).unwrap(), true);
    let key = format!("notip/.git-s3/packs/pack-{pack}.pack");
    let (ls, cl) = check(&env, pid, &main, "tip not in its pack", &env.url("notip"), &key);
    assert!(ls.ok && !cl.ok, "{}\n{}", ls.stderr, cl.stderr);
    assert!(cl.stderr.contains(&unseen), "the line names the missing tip: {}", cl.stderr);

    // 2. A fetch into a clone: the manifest adds a pack for a new tip, but
    // the pack holds another history. One line naming the key; the clone's
    // refs, objects and soundness are as before.
    plant_packs(&env, "added", &serde_json::to_vec(&good).unwrap(), true);
    let c = env.path("clone-added");
    env.git(&env.work(), &["clone", "-q", &env.url("added"), c.to_str().unwrap()]);
    let refs_before = env.git(&c, &["for-each-ref"]);
    let mut m = good.clone();
    m["serial"] = (good["serial"].as_u64().unwrap() + 1).into();
    m["refs"]["refs/heads/main"] = unseen.clone().into();
    let mut entry = other_entry.clone();
    entry["tips"] = serde_json::json!([unseen]);
    m["packs"].as_array_mut().unwrap().push(entry);
    env.copy_object(&format!("other/.git-s3/packs/pack-{other_pack}.pack"), &format!("added/.git-s3/packs/pack-{other_pack}.pack"));
    env.put_object("added/.git-s3/manifest.json", &serde_json::to_vec(&m).unwrap());
    let f = run_git(&env, &c, &["fetch", "origin"]);
    eprintln!("--- pack added for a tip it lacks: fetch ok={}\n{}", f.ok, f.stderr);
    assert!(!f.ok);
    assert_clear("pack added for a tip it lacks", &f, &format!("added/.git-s3/packs/pack-{other_pack}.pack"));
    assert_eq!(env.git(&c, &["for-each-ref"]), refs_before, "the clone's refs changed");
    let fsck = run_git(&env, &c, &["fsck", "--strict"]);
    assert!(fsck.ok, "the clone is no longer sound: {}", fsck.stderr);
    assert_eq!(env.git(&c, &["rev-parse", "origin/main"]).trim(), main);
    assert_nothing_escaped(&env);
    assert_still_serving(&env, pid, &main);

    // 3. The object named for the healthy pack holds the other pack's
    // bytes. The clone fails naming the key, and the cache does not keep
    // those bytes under the healthy pack's name: a clone of the healthy
    // remote that follows is served the real pack.
    plant_packs(&env, "swapped", &serde_json::to_vec(&good).unwrap(), true);
    env.copy_object(&format!("other/.git-s3/packs/pack-{other_pack}.pack"), &format!("swapped/.git-s3/packs/pack-{pack}.pack"));
    env.git_s3(&env.work(), &["cache", "clear"]);
    let key = format!("swapped/.git-s3/packs/pack-{pack}.pack");
    let (_, cl) = check(&env, pid, &main, "another pack's bytes", &env.url("swapped"), &key);
    assert!(!cl.ok);
    let cached = cached_pack_files(&env, &pack);
    assert!(cached.iter().all(|f| f.starts_with(&format!("pack-{pack}."))), "the cache holds other bytes under pack {pack}: {cached:?}");
    let healthy = env.path("clone-after-swap");
    env.git(&env.work(), &["clone", "-q", &env.url("packs"), healthy.to_str().unwrap()]);
    env.git(&healthy, &["fsck", "--strict"]);
    assert_eq!(env.git(&healthy, &["rev-parse", "HEAD"]).trim(), main);
    let cached = cached_pack_files(&env, &pack);
    assert!(cached.contains(&format!("pack-{pack}.pack")) && cached.iter().all(|f| f.starts_with(&format!("pack-{pack}."))), "{cached:?}");
}
