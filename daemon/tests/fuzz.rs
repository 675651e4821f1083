//! Property-based fuzzing (proptest, stable toolchain) of every parser of
//! outside input: git's remote-helper commands, the packs manifest, remote
//! URLs, the LFS alias URL, bundle headers, the bundles layout's keys, the
//! fetch options, a session's stdin lines, the gRPC session messages and the
//! `git s3` command line. (git-lfs's JSON requests are fuzzed next to their
//! private parser, in src/lfs/agent.rs.)
//!
//! Properties: no panic; bounded work on adversarial input (huge numbers,
//! long strings, long lines without a newline); round trips (manifest
//! to_bytes/parse, URL display/parse); invariants (a parsed ref name is one
//! git accepts: no control character, space or `..`; a URL's prefix is never
//! empty; a fetch option's value never starts with `-`).
//!
//! Each property is a target (`target::<name>`). 256 cases per target by
//! default (the whole file runs in seconds);
//! `GIT_S3_FUZZ_CASES=100000 cargo test -p git-s3-daemon --test fuzz --release`
//! for a longer run; `GIT_S3_FUZZ_SECONDS=<s>` runs each target for that
//! long instead (batches of `GIT_S3_FUZZ_CASES`, fresh random cases each),
//! which is what CI does (scripts/test.sh: 4 s each). Each target prints
//! `fuzz <name>: <cases> cases in <s> s` (`--nocapture` shows it). A
//! failing case is saved under tests/fuzz.proptest-regressions and replayed
//! first by every batch of every target (checked by
//! `the_committed_regressions_are_replayed`). Every allocation of this test
//! binary is counted: no target may hold more than `MAX_LIVE_BYTES` at once.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)] // the counting allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use git_s3_daemon::helper::protocol::{self, Command};
use git_s3_daemon::local::git::{bundle_pack_offset, BundleHeader, MAX_BUNDLE_HEADER};
use git_s3_daemon::local::refname::valid_ref_name;
use git_s3_daemon::s3::store::ObjectInfo;
use git_s3_daemon::s3::url::RemoteUrl;
use git_s3_daemon::session::{Input, MAX_LINE, TOO_LONG_LINE};
use git_s3_daemon::storage::bundles::layout;
use git_s3_daemon::storage::fetch_options::{FetchOptions, OptionReply};
use git_s3_daemon::storage::packs::manifest::{Manifest, PackEntry, RetiredPack, Views, ViewsIncrement};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("GIT_S3_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    // The committed seeds sit beside this file (proptest's default looks for
    // a lib.rs or main.rs above it first, and says so on every failure).
    let persistence = proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions");
    ProptestConfig { cases, failure_persistence: Some(Box::new(persistence)), ..ProptestConfig::default() }
}

/// Bytes allocated and not yet freed by this test binary (every thread), and
/// the most ever live at once.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counted.
struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// What the whole binary may hold at once: the bounded-input tests hold up
/// to ~65 MiB on purpose, and targets run on several threads at once; a
/// parser that allocates what its input claims (a 2^64 size, a header that
/// never ends) goes far past it.
const MAX_LIVE_BYTES: usize = 512 << 20;

/// Runs one target: once (`GIT_S3_FUZZ_CASES` cases), or in batches until
/// `GIT_S3_FUZZ_SECONDS` have passed. A batch is a fresh proptest run (new
/// random seed, the committed regressions replayed first); a failing case
/// panics with its shrunk input, as proptest reports it.
fn run_target(name: &str, target: fn()) {
    let seconds: Option<u64> = std::env::var("GIT_S3_FUZZ_SECONDS").ok().and_then(|v| v.parse().ok());
    let per_batch = u64::from(config().cases);
    let start = Instant::now();
    let mut batches = 0u64;
    loop {
        target();
        batches += 1;
        match seconds {
            Some(s) if start.elapsed() < Duration::from_secs(s) => continue,
            _ => break,
        }
    }
    let peak = PEAK.load(Ordering::Relaxed);
    eprintln!(
        "fuzz {name}: {} cases in {:.1} s ({batches} batches; peak live heap of the binary so far {} MiB)",
        batches * per_batch,
        start.elapsed().as_secs_f64(),
        peak >> 20
    );
    assert!(peak <= MAX_LIVE_BYTES, "fuzz {name}: the test binary held {peak} bytes at once (bound {MAX_LIVE_BYTES})");
}

/// One `#[test]` per target, named `target::<property>`.
macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        mod target {
            $(
                #[test]
                fn $name() {
                    super::run_target(stringify!($name), super::$name)
                }
            )*
        }
    };
}

targets!(
    helper_commands_never_panic_and_ref_names_are_clean,
    push_status_is_always_one_line,
    manifest_bytes_never_panic,
    manifest_json_shaped_input_is_checked,
    manifest_round_trips,
    urls_never_panic_and_keep_their_invariants,
    urls_round_trip,
    lfs_alias_urls_never_panic,
    fetch_option_values_never_become_options,
    bundle_headers_agree_however_the_stream_is_cut,
    bucket_keys_never_list_a_ref_git_refuses,
    stdin_lines_are_the_same_however_cut,
    session_messages_decode_without_panic,
    session_start_round_trips,
    git_s3_arguments_never_panic,
);

/// The committed seeds (tests/fuzz.proptest-regressions) are found where the
/// targets' configuration looks for them, so every run replays them.
#[test]
fn the_committed_regressions_are_replayed() {
    let cfg = config();
    let persistence = cfg.failure_persistence.as_ref().expect("failure persistence configured");
    let seeds = persistence.load_persisted_failures2(Some(file!()));
    let committed = include_str!("fuzz.proptest-regressions").lines().filter(|l| l.starts_with("cc ")).count();
    assert!(committed >= 4, "the committed regressions file lost its seeds");
    assert_eq!(seeds.len(), committed, "proptest does not find the committed regressions from {}", file!());
}

/// Strings that stress parsers: any unicode, control characters, the
/// separators each format uses, long runs.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        ".*",
        "[ -~]{0,80}",
        "[a-z/.@: \\-+\\n\\r\\t\\x00\\x7f]{0,60}",
        (".{0,8}", 0usize..5000).prop_map(|(s, n)| s.repeat(n.min(200))),
        Just(String::new()),
    ]
}

fn hex(min: usize, max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(prop_oneof![Just('a'), Just('f'), Just('0'), Just('9'), Just('A')], min..=max).prop_map(|v| v.into_iter().collect())
}

fn sha() -> impl Strategy<Value = String> {
    "[0-9a-f]{40}"
}

fn ref_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "refs/heads/[a-z0-9._/-]{1,20}",
        "refs/(heads|tags)/[ -~]{1,20}",
        Just("HEAD".to_string()),
        Just("--upload-pack=x".to_string()),
        Just("-x".to_string()),
        nasty(),
    ]
}

/// What makes a name safe as a protocol line and a git argument: no ASCII
/// control character (git's own rule: a ref name may hold any other UTF-8,
/// U+0080–U+009F included, which git accepts and never reads as a line
/// break), no space, no `..`, never `-…`.
fn no_control_space_dotdot(name: &str) -> bool {
    !name.contains("..") && !name.chars().any(|c| c.is_ascii_control() || c == ' ') && !name.starts_with('-')
}

proptest! {
    #![proptest_config(config())]

    // ---- remote-helper commands -------------------------------------------------

    fn helper_commands_never_panic_and_ref_names_are_clean(
        verb in prop_oneof![Just("fetch"), Just("push"), Just("push +"), Just("option"), Just("list"), Just("capabilities"), nasty().prop_map(|s| Box::leak(s.into_boxed_str()) as &str)],
        a in prop_oneof![hex(0, 80), nasty()],
        b in ref_like(),
        sep in prop_oneof![Just(" "), Just(":"), Just("  "), Just("")],
    ) {
        let line = format!("{verb} {a}{sep}{b}");
        match protocol::parse(&line) {
            Ok(Command::Fetch { sha, name }) => {
                prop_assert!(sha.len() >= 40 && sha.len() <= 64 && sha.bytes().all(|c| c.is_ascii_hexdigit()));
                let oid = (name.len() == 40 || name.len() == 64) && name.bytes().all(|c| c.is_ascii_hexdigit());
                prop_assert!((valid_ref_name(&name) || oid) && no_control_space_dotdot(&name), "{name:?}");
            }
            Ok(Command::Push { src, dst, .. }) => {
                prop_assert!(valid_ref_name(&dst) && no_control_space_dotdot(&dst), "{dst:?}");
                if let Some(s) = src {
                    prop_assert!(!s.starts_with('-') && !s.chars().any(|c| c.is_ascii_control() || c == ' '), "{s:?}");
                }
            }
            Ok(Command::Option { name, .. }) => prop_assert!(!name.is_empty()),
            Ok(_) | Err(_) => {}
        }
        // Any line at all (a line never holds '\n': Input splits on it).
        let _ = protocol::parse(&a);
        let _ = protocol::parse(&b.replace('\n', ""));
    }

    fn push_status_is_always_one_line(dst in ref_like(), msg in nasty()) {
        let ok = protocol::push_status(&dst.replace('\n', ""), &Ok(()));
        let err = protocol::push_status(&dst.replace('\n', ""), &Err(msg));
        prop_assert_eq!(ok.matches('\n').count(), 1);
        prop_assert_eq!(err.matches('\n').count(), 1);
    }

    // ---- the manifest -----------------------------------------------------------

    fn manifest_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = Manifest::parse(&data);
    }

    fn manifest_json_shaped_input_is_checked(
        version in prop_oneof![Just("1".to_string()), Just("2".to_string()), Just("-1".to_string()), Just("1e400".to_string()), Just("18446744073709551616".to_string()), "[0-9]{1,30}"],
        size in prop_oneof![Just("-5".to_string()), Just("1e30".to_string()), Just("18446744073709551615".to_string()), Just("null".to_string()), "[0-9]{1,25}", Just("\"12\"".to_string())],
        name in prop_oneof![hex(40, 40), hex(64, 64), Just("../../x".to_string()), Just("a/b".to_string()), nasty()],
        refname in ref_like(),
        refsha in prop_oneof![sha(), nasty()],
        head in ref_like(),
        copies in 0usize..3000,
    ) {
        let pack = format!(r#"{{"name":{},"size":{size},"idx_size":{size},"objects":{size},"tips":[],"created":{size}}}"#, serde_json::to_string(&name).unwrap());
        let packs = vec![pack; copies.min(3000)].join(",");
        let json = format!(
            r#"{{"version":{version},"serial":{size},"refs":{{{}:{}}},"head":{},"packs":[{packs}],"protected":[],"retired":[]}}"#,
            serde_json::to_string(&refname).unwrap(), serde_json::to_string(&refsha).unwrap(), serde_json::to_string(&head).unwrap()
        );
        if let Ok(m) = Manifest::parse(json.as_bytes()) {
            prop_assert_eq!(m.version, 1);
            for (r, s) in &m.refs {
                prop_assert!(r.starts_with("refs/") && valid_ref_name(r) && no_control_space_dotdot(r), "{r:?}");
                prop_assert!(s.len() == 40);
            }
            for p in &m.packs {
                prop_assert!(!p.name.contains('/') && !p.name.contains(".."));
                prop_assert!(p.name.len() == 40 || p.name.len() == 64);
            }
            if let Some(h) = &m.head {
                prop_assert!(valid_ref_name(h) && no_control_space_dotdot(h));
            }
            // Sums of bucket-given sizes saturate (a debug build would panic on overflow).
            let _ = m.pack_bytes();
            let again = Manifest::parse(&m.to_bytes()).expect("a parsed manifest re-parses");
            prop_assert_eq!(again, m);
        }
    }

    fn manifest_round_trips(
        serial in any::<u64>(),
        refs in proptest::collection::btree_map("refs/(heads|tags)/[a-z0-9_-]{1,12}(/[a-z0-9]{1,5})?", sha(), 0..6),
        packs in proptest::collection::btree_map("[0-9a-f]{40}", (any::<u64>(), any::<u64>(), any::<u64>(), proptest::collection::vec(sha(), 0..3), any::<u64>()), 0..5),
        retired in proptest::collection::vec(("[0-9a-f]{40}", any::<u64>()), 0..3),
        frozen in proptest::option::of("[ -~]{0,20}"),
        views in any::<bool>(),
        protected_n in 0usize..3,
    ) {
        let packs: Vec<PackEntry> = packs
            .into_iter()
            .map(|(name, (size, idx_size, objects, tips, created))| PackEntry { name, size, idx_size, objects, tips, created, key: None, map_size: created % 3 })
            .collect();
        let protected: BTreeSet<String> = refs.keys().take(protected_n).cloned().collect();
        let head = refs.keys().next().cloned();
        let views = views.then(|| Views {
            covers: packs.iter().map(|p| p.name.clone()).collect(),
            skeleton: packs.first().cloned(),
            tips: packs.last().cloned(),
            created: serial,
            increments: packs
                .get(1)
                .map(|p| ViewsIncrement { covers: [p.name.clone()].into(), skeleton: Some(p.clone()), tips: None, created: serial })
                .into_iter()
                .collect(),
        });
        let m = Manifest {
            version: 1,
            serial,
            refs: refs.into_iter().collect::<BTreeMap<_, _>>(),
            head,
            packs,
            protected,
            retired: retired.into_iter().map(|(name, since)| RetiredPack { name, since }).collect(),
            frozen,
            views,
            object_format: None,
        };
        let back = Manifest::parse(&m.to_bytes()).expect("a manifest we write parses");
        prop_assert_eq!(back, m);
    }

    // ---- remote URLs ------------------------------------------------------------

    fn urls_never_panic_and_keep_their_invariants(
        scheme in prop_oneof![Just("s3://"), Just("s3+zip://"), Just("S3://"), Just("http://"), Just("")],
        profile in prop_oneof![Just(String::new()), "[a-z@/]{0,6}@", nasty().prop_map(|s| format!("{s}@"))],
        bucket in prop_oneof!["[a-z0-9][a-z0-9.-]{2,62}", "[A-Za-z_.-]{0,70}", nasty()],
        prefix in prop_oneof![Just(String::new()), "(/?[a-z0-9._@-]{0,6}){0,6}/?", nasty()],
    ) {
        let url = format!("{scheme}{profile}{bucket}/{prefix}");
        for candidate in [url.as_str(), prefix.as_str(), bucket.as_str()] {
            if let Ok(u) = RemoteUrl::parse(candidate) {
                prop_assert!(!u.prefix.is_empty());
                prop_assert!(!u.prefix.starts_with('/') && !u.prefix.ends_with('/'));
                prop_assert!(!u.prefix.split('/').any(|s| s.is_empty() || s == ".."), "{:?}", u.prefix);
                prop_assert!(!u.prefix.chars().any(char::is_control));
                prop_assert!((3..=63).contains(&u.bucket.len()));
                let shown = u.to_string();
                let again = RemoteUrl::parse(&shown);
                prop_assert_eq!(again.as_ref(), Ok(&u), "{}", shown);
            }
        }
    }

    fn urls_round_trip(
        zip in any::<bool>(),
        profile in proptest::option::of("[A-Za-z0-9_.-]{1,12}"),
        bucket in "[a-z0-9][a-z0-9.-]{2,62}",
        prefix in "[a-zA-Z0-9_.@ -]{1,10}(/[a-zA-Z0-9_.@-]{1,10}){0,4}",
    ) {
        prop_assume!(!prefix.split('/').any(|s| s == ".." ));
        let scheme = if zip { "s3+zip" } else { "s3" };
        let text = match &profile {
            Some(p) => format!("{scheme}://{p}@{bucket}/{prefix}"),
            None => format!("{scheme}://{bucket}/{prefix}"),
        };
        let u = RemoteUrl::parse(&text).expect("a well-formed URL parses");
        prop_assert_eq!(u.to_string(), text);
        prop_assert_eq!(u.profile, profile);
        prop_assert_eq!(u.bucket, bucket);
        prop_assert_eq!(u.prefix, prefix);
    }

    fn lfs_alias_urls_never_panic(tail in nasty(), pct in "(%[0-9A-Fa-f]{0,2}|[a-z/.]){0,30}") {
        use git_s3_daemon::lfs::config::parse_synthetic_lfs_url;
        for s in [format!("https://lfs-alias.git-remote-s3.test/{tail}"), format!("https://lfs-alias.git-remote-s3.test/bucket/{pct}"), tail.clone()] {
            if let Some(u) = parse_synthetic_lfs_url(&s) {
                prop_assert!(!u.prefix.is_empty());
                prop_assert!(!u.prefix.split('/').any(|s| s.is_empty() || s == ".."), "{:?}", u.prefix);
                prop_assert!(!u.prefix.chars().any(char::is_control));
            }
        }
    }

    // ---- fetch options ----------------------------------------------------------

    fn fetch_option_values_never_become_options(
        name in prop_oneof![Just("depth"), Just("deepen-since"), Just("deepen-not"), Just("filter"), Just("deepen-relative"), Just("from-promisor"), Just("cloning"), Just("verbosity")],
        value in prop_oneof![nasty(), Just("-1".to_string()), Just("--upload-pack=x".to_string()), Just("99999999999999999999999".to_string()), "[+-]?[0-9]{1,25}", Just("blob:none".to_string())],
    ) {
        let mut o = FetchOptions::default();
        let before = o.clone();
        match o.set(name, &value) {
            Some(OptionReply::Error(e)) => {
                prop_assert_eq!(&o, &before, "a refused value is not recorded");
                prop_assert!(!e.contains('\n'));
            }
            Some(OptionReply::Ok) | None => {}
        }
        for v in o.deepen_since.iter().chain(o.deepen_not.iter()).chain(o.filter.iter()) {
            prop_assert!(!v.is_empty() && !v.starts_with('-') && !v.chars().any(|c| c.is_control() || c.is_whitespace()), "{v:?}");
        }
        for a in o.fetch_pack_args(false) {
            prop_assert!(a.starts_with("--"));
            if let Some((_, v)) = a.split_once('=') {
                prop_assert!(!v.starts_with('-'), "{a:?}");
            }
        }
    }

    // ---- bundle headers ---------------------------------------------------------

    fn bundle_headers_agree_however_the_stream_is_cut(
        sig in prop_oneof![Just("# v2 git bundle\n"), Just("# v3 git bundle\n"), Just("# v4 git bundle\n"), Just("PACK"), Just("# v2 git bund")],
        lines in proptest::collection::vec(prop_oneof![
            sha().prop_map(|s| format!("{s} refs/heads/main\n")),
            sha().prop_map(|s| format!("-{s} x\n")),
            Just("@object-format=sha1\n".to_string()),
            nasty(),
            Just("\n".to_string()),
        ], 0..8),
        body in proptest::collection::vec(any::<u8>(), 0..64),
        cuts in proptest::collection::vec(1usize..50, 1..20),
    ) {
        let mut bytes = sig.as_bytes().to_vec();
        for l in &lines {
            bytes.extend_from_slice(l.as_bytes());
        }
        bytes.extend_from_slice(&body);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.bundle");
        std::fs::write(&path, &bytes).unwrap();
        let from_file = bundle_pack_offset(&path).ok();
        if let Some(off) = from_file {
            prop_assert!(off as usize <= bytes.len() && off >= 17);
            prop_assert_eq!(&bytes[off as usize - 2..off as usize], b"\n\n");
            prop_assert!(bytes.starts_with(b"# v2 git bundle\n") || bytes.starts_with(b"# v3 git bundle\n"));
        }
        // The streaming check, fed in arbitrary chunks, finds the same offset.
        let mut h = BundleHeader::default();
        let mut at = 0;
        let mut streamed = None;
        for c in cuts.iter().cycle() {
            if at >= bytes.len() {
                break;
            }
            let end = (at + c).min(bytes.len());
            match h.push(&bytes[at..end]) {
                Ok(Some(off)) => { streamed = Some(off as u64); break; }
                Ok(None) => {}
                Err(_) => break,
            }
            at = end;
        }
        prop_assert_eq!(streamed, from_file);
    }

    // ---- the bundles layout's keys ----------------------------------------------

    fn bucket_keys_never_list_a_ref_git_refuses(
        keys in proptest::collection::vec((ref_like(), prop_oneof![sha().prop_map(|s| format!("{s}.bundle")), Just("LOCK#.lock".to_string()), Just("PROTECTED#".to_string()), Just("repo.zip".to_string()), nasty()]), 0..20),
    ) {
        let objects: Vec<ObjectInfo> = keys
            .iter()
            .map(|(r, leaf)| ObjectInfo { key: format!("p/{r}/{leaf}"), size: 1, etag: "e".into(), last_modified: SystemTime::UNIX_EPOCH + Duration::from_secs(1) })
            .collect();
        let s = layout::scan("p", &objects);
        let names = s.bundles.keys().chain(s.locks.iter().map(|l| &l.0)).chain(s.protected.iter()).chain(s.zips.iter().map(|z| &z.0));
        for n in names {
            prop_assert!(n.starts_with("refs/") && valid_ref_name(n) && no_control_space_dotdot(n), "{n:?}");
        }
        for list in s.bundles.values() {
            for (sha, _) in list {
                prop_assert!(git_s3_daemon::local::oid::is_object_id(sha));
            }
        }
    }

    // ---- a session's stdin ------------------------------------------------------

    fn stdin_lines_are_the_same_however_cut(text in "[a-z \\r\\n]{0,300}", cuts in proptest::collection::vec(1usize..40, 1..10)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let lines = rt.block_on(async {
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            let bytes = text.as_bytes();
            let mut at = 0;
            for c in cuts.iter().cycle() {
                if at >= bytes.len() { break; }
                let end = (at + c).min(bytes.len());
                tx.send(bytes[at..end].to_vec()).await.unwrap();
                at = end;
            }
            drop(tx);
            let mut input = Input::new(rx);
            let mut lines = Vec::new();
            while let Some(l) = input.read_line().await {
                lines.push(l);
            }
            lines
        });
        // A line's "\r\n" ends it like "\n"; the last line may lack its newline (kept as is).
        let mut expected: Vec<String> = text.split_inclusive('\n').map(|l| match l.strip_suffix('\n') {
            Some(l) => l.strip_suffix('\r').unwrap_or(l).to_string(),
            None => l.to_string(),
        }).collect();
        if text.is_empty() { expected.clear(); }
        prop_assert_eq!(lines, expected);
    }

    // ---- gRPC session messages --------------------------------------------------

    fn session_messages_decode_without_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        use git_s3_proto::pb::{SessionInput, SessionStart, SessionOutput, HelloRequest};
        use prost::Message;
        let _ = SessionInput::decode(&data[..]);
        let _ = SessionStart::decode(&data[..]);
        let _ = SessionOutput::decode(&data[..]);
        let _ = HelloRequest::decode(&data[..]);
    }

    fn session_start_round_trips(args in proptest::collection::vec(nasty(), 0..5), env in proptest::collection::btree_map("[A-Z_]{1,10}", nasty(), 0..5), cwd in nasty()) {
        use git_s3_proto::pb::SessionStart;
        use prost::Message;
        let s = SessionStart { program: 1, args, env: env.into_iter().collect(), cwd, argv0: "git-remote-s3".into(), ..Default::default() };
        let back = SessionStart::decode(&s.encode_to_vec()[..]).unwrap();
        prop_assert_eq!(back, s);
    }

    // ---- `git s3` arguments -----------------------------------------------------

    fn git_s3_arguments_never_panic(args in proptest::collection::vec(prop_oneof![
        Just("status"), Just("doctor"), Just("delete-branch"), Just("protect"), Just("unprotect"), Just("init"), Just("gc"),
        Just("migrate"), Just("cache"), Just("daemon"), Just("lfs"), Just("--json"), Just("--format"), Just("packs"), Just("-b"),
        Just("--lock-ttl"), Just("--max-bytes"), Just("--keep"), Just("-d"), Just("--to"), Just("--geometric"), Just("--help"),
        Just("prune"), Just("clear"), Just("show"), Just("--"), Just("-"), Just("18446744073709551616"), Just("-1"),
    ].prop_map(str::to_string).boxed().prop_union(nasty().boxed()), 0..8)) {
        use clap::Parser;
        use git_s3_daemon::cli::dispatch::Cli;
        let argv = std::iter::once("git s3".to_string()).chain(args);
        match Cli::try_parse_from(argv) {
            Ok(_) => {}
            Err(e) => {
                let code = e.exit_code();
                prop_assert!(code == 0 || code == 2, "exit code {code}");
                let _ = e.render().to_string();
            }
        }
    }
}

#[test]
fn the_command_line_definition_is_consistent() {
    use clap::CommandFactory;
    git_s3_daemon::cli::dispatch::Cli::command().debug_assert();
}

/// A header line that never ends (an 8 GiB sparse file of zeros after the
/// signature) is refused after `MAX_BUNDLE_HEADER` bytes, not read into memory.
#[test]
fn a_bundle_header_without_end_is_refused_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.bundle");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(b"# v2 git bundle\n").unwrap();
    f.set_len(8 << 30).unwrap();
    drop(f);
    let e = bundle_pack_offset(&path).unwrap_err();
    assert!(e.to_string().contains("too large"), "{e}");

    let mut h = BundleHeader::default();
    h.push(b"# v2 git bundle\n").unwrap();
    let chunk = vec![b'x'; 1 << 20];
    let mut refused = false;
    for _ in 0..(MAX_BUNDLE_HEADER >> 20) + 2 {
        if h.push(&chunk).is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused);
    assert!(h.head.len() as u64 <= MAX_BUNDLE_HEADER + (1 << 20) + 16);
}

/// A stdin line without a newline, 40 MiB long in 64 KiB chunks: replaced
/// by `TOO_LONG_LINE`, the buffer stays bounded, the next line is read.
#[test]
fn a_line_without_end_is_bounded() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let feeder = tokio::spawn(async move {
            for _ in 0..640 {
                tx.send(vec![b'a'; 64 << 10]).await.unwrap();
            }
            tx.send(b"\ncapabilities\n".to_vec()).await.unwrap();
        });
        let mut input = Input::new(rx);
        assert_eq!(input.read_line().await.as_deref(), Some(TOO_LONG_LINE));
        assert_eq!(input.read_line().await.as_deref(), Some("capabilities"));
        assert_eq!(input.read_line().await, None);
        feeder.await.unwrap();
        assert!(protocol::parse(TOO_LONG_LINE).map(|c| matches!(c, Command::Unknown(_))).unwrap_or(true));
        let _ = MAX_LINE;
    });
}
