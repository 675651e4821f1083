//! The module tree is the architecture (docs/architecture.md), and this test
//! keeps it honest: no file of `daemon/src` imports another in a cycle, the
//! top-level folders form layers, the test hooks stay out of the
//! release binary, and the module map lists every source file.
//!
//! The dependency rule, at the granularity of files:
//! - Every `.rs` file under `daemon/src` is one module; a folder's `mod.rs`
//!   is the folder's own module, a file like any other. `main.rs` (the
//!   binary, not part of the library) is left out.
//! - File A depends on file B when A's code names a path that leads into B:
//!   `crate::x::y::Item` (B is the deepest file module on the path),
//!   `super::…` and `self::…` (resolved from where they are written,
//!   through inline `mod name { … }` blocks), and, in a file that declares
//!   a child module (`mod x;`), a path starting with `x::`. Grouped imports
//!   (`use crate::{a::X, b::{self, Y}}`) count path by path.
//! - Declaring a child (`mod x;`) is structure, not a dependency. So a child
//!   naming an item of its parent's `mod.rs` depends on the parent, and a
//!   `mod.rs` naming an item of a child depends on the child: a folder's
//!   `mod.rs` is either what its children share (they use it; it never uses
//!   them) or the folder's front door (it uses them; they never use it).
//! - Comments and string literals are not code. Method calls and trait
//!   impls name no path and are not seen; every `use` is.
//!
//! The graph of files must be acyclic, and so must the graph of the
//! top-level folders (each file's dependencies lifted to the folder it is
//! in; a file directly in `src` is its own node): the folders are layers.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A file's module path (`storage/packs/mod.rs` → `["storage", "packs"]`),
/// None for the binary's root.
fn module_path(rel: &str) -> Option<Vec<String>> {
    let stem = rel.strip_suffix(".rs")?;
    if stem == "main" {
        return None;
    }
    if stem == "lib" {
        return Some(Vec::new());
    }
    let stem = stem.strip_suffix("/mod").unwrap_or(stem);
    Some(stem.split('/').map(str::to_string).collect())
}

/// `src` with comments, string and char literals blanked (newlines kept).
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, s: &[char]| {
        for ch in s {
            out.push(if *ch == '\n' { '\n' } else { ' ' });
        }
    };
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let prev_ident = i > 0 && ident(c[i - 1]);
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            let end = (i..c.len()).find(|&j| c[j] == '\n').unwrap_or(c.len());
            blank(&mut out, &c[i..end]);
            i = end;
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let (mut depth, mut j) = (0usize, i);
            while j < c.len() {
                if c[j] == '/' && c.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if c[j] == '*' && c.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &c[i..j.min(c.len())]);
            i = j;
        } else if c[i] == 'r' && !prev_ident && matches!(c.get(i + 1), Some('"') | Some('#')) {
            // A raw string r"…" / r#"…"#; `r#ident` is a raw identifier.
            let hashes = c[i + 1..].iter().take_while(|&&ch| ch == '#').count();
            if c.get(i + 1 + hashes) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            let mut j = i + 2 + hashes;
            while j < c.len() && !(c[j] == '"' && c[j + 1..].iter().take(hashes).filter(|&&ch| ch == '#').count() == hashes) {
                j += 1;
            }
            let end = (j + 1 + hashes).min(c.len());
            blank(&mut out, &c[i..end]);
            i = end;
        } else if c[i] == '"' {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(c.len());
            blank(&mut out, &c[i..end]);
            i = end;
        } else if c[i] == '\'' && c.get(i + 1) == Some(&'\\') {
            let end = (i + 2..c.len()).find(|&j| c[j] == '\'').map_or(c.len(), |j| j + 1);
            blank(&mut out, &c[i..end]);
            i = end;
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            blank(&mut out, &c[i..i + 3]);
            i += 3;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Colons,
    Punct(char),
}

/// Tokens with their line numbers.
fn tokens(code: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = code.chars().collect();
    let (mut out, mut i, mut line) = (Vec::new(), 0, 1);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(c[start..i].iter().collect()), line));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::Colons, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// Parses the path (or use tree) starting at `toks[i]` under `prefix`;
/// appends every full path to `paths`; returns the index after it.
fn parse_tree(toks: &[(Tok, usize)], mut i: usize, prefix: Vec<String>, in_group: bool, paths: &mut Vec<Vec<String>>) -> usize {
    match toks.get(i).map(|t| &t.0) {
        Some(Tok::Punct('{')) => {
            i += 1;
            loop {
                match toks.get(i).map(|t| &t.0) {
                    None => return i,
                    Some(Tok::Punct('}')) => return i + 1,
                    Some(Tok::Punct(',')) => i += 1,
                    Some(_) => {
                        let next = parse_tree(toks, i, prefix.clone(), true, paths);
                        i = if next == i { i + 1 } else { next };
                    }
                }
            }
        }
        Some(Tok::Punct('*')) => {
            paths.push(prefix);
            i + 1
        }
        Some(Tok::Ident(seg)) => {
            let mut path = prefix;
            if !(in_group && seg == "self") {
                path.push(seg.clone());
            }
            i += 1;
            if toks.get(i).map(|t| &t.0) == Some(&Tok::Colons) {
                return parse_tree(toks, i + 1, path, false, paths);
            }
            if toks.get(i).map(|t| &t.0) == Some(&Tok::Ident("as".into())) {
                i += 2;
            }
            paths.push(path);
            i
        }
        _ => {
            paths.push(prefix);
            i
        }
    }
}

/// One file's dependencies: the module paths it names (absolute, from the
/// crate root), each with the line it is named on.
fn named_paths(module: &[String], src: &str) -> Vec<(Vec<String>, usize)> {
    let toks = tokens(&strip(src));
    let ident = |i: usize| match toks.get(i).map(|t| &t.0) {
        Some(Tok::Ident(s)) => Some(s.as_str()),
        _ => None,
    };
    let punct = |i: usize, p: char| toks.get(i).map(|t| &t.0) == Some(&Tok::Punct(p));
    // Child modules declared in the file (`mod x;`, at the top level).
    let mut children = BTreeSet::new();
    let mut depth = 0usize;
    for (i, (tok, _)) in toks.iter().enumerate() {
        match tok {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => depth = depth.saturating_sub(1),
            Tok::Ident(m) if m == "mod" && depth == 0 && punct(i + 2, ';') => {
                if let Some(name) = ident(i + 1) {
                    children.insert(name.to_string());
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    // Inline modules: (name, the brace depth inside them).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Punct('{') => {
                depth += 1;
                i += 1;
                continue;
            }
            Tok::Punct('}') => {
                if inline.last().is_some_and(|m| m.1 == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
                continue;
            }
            Tok::Ident(m) if m == "mod" && punct(i + 2, '{') => {
                if let Some(name) = ident(i + 1) {
                    inline.push((name.to_string(), depth + 1));
                }
                i += 1;
                continue;
            }
            _ => {}
        }
        let starts_path = i == 0 || toks[i - 1].0 != Tok::Colons;
        let first = ident(i).filter(|_| starts_path && toks.get(i + 1).map(|t| &t.0) == Some(&Tok::Colons));
        if first.is_none() {
            i += 1;
            continue;
        }
        let mut here: Vec<String> = module.to_vec();
        here.extend(inline.iter().map(|m| m.0.clone()));
        let line = toks[i].1;
        let mut paths = Vec::new();
        let next = parse_tree(&toks, i, Vec::new(), false, &mut paths);
        for p in paths {
            let mut segs = p.into_iter().peekable();
            let base = match segs.peek().map(String::as_str) {
                Some("crate") => {
                    segs.next();
                    Vec::new()
                }
                Some("super") | Some("self") => {
                    let mut b = here.clone();
                    while let Some(s) = segs.peek().map(String::as_str) {
                        match s {
                            "super" => {
                                b.pop();
                            }
                            "self" => {}
                            _ => break,
                        }
                        segs.next();
                    }
                    b
                }
                Some(c) if inline.is_empty() && children.contains(c) => module.to_vec(),
                _ => break,
            };
            let mut abs = base;
            abs.extend(segs);
            out.push((abs, line));
        }
        i = next.max(i + 1);
    }
    out
}

/// A file-module graph: file → (file it depends on → first place it says so).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// The graph of `files` (path relative to `src` → source).
fn graph(files: &BTreeMap<String, String>) -> Graph {
    let modules: BTreeMap<Vec<String>, String> = files.keys().filter_map(|f| module_path(f).map(|m| (m, f.clone()))).collect();
    let mut g = Graph::new();
    for (file, src) in files {
        let Some(module) = module_path(file) else { continue };
        let deps = g.entry(file.clone()).or_default();
        for (path, line) in named_paths(&module, src) {
            // The deepest file module on the path.
            let target = (0..=path.len()).rev().find_map(|n| modules.get(&path[..n]));
            if let Some(t) = target.filter(|t| *t != file) {
                deps.entry(t.clone()).or_insert_with(|| format!("{file}:{line} names {}", path.join("::")));
            }
        }
    }
    g
}

/// A cycle of `g` (its nodes in order, the first repeated at the end), if any.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(n: &str, g: &Graph, state: &mut BTreeMap<String, u8>, stack: &mut Vec<String>) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for d in g.get(n).into_iter().flat_map(|d| d.keys()) {
            match state.get(d.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == d).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(d, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// `g` lifted to top-level folders (a file directly in `src` is its own node).
fn folders(g: &Graph) -> Graph {
    let top = |f: &str| f.split_once('/').map_or(f.to_string(), |(d, _)| format!("{d}/"));
    let mut out = Graph::new();
    for (from, deps) in g {
        let entry = out.entry(top(from)).or_default();
        for (to, why) in deps {
            if top(to) != top(from) {
                entry.entry(top(to)).or_insert_with(|| why.clone());
            }
        }
    }
    out
}

/// The cycle, one step a line, each with the place that makes it.
fn explain(g: &Graph, cycle: &[String]) -> String {
    cycle.windows(2).map(|w| format!("  {} → {}   ({})", w[0], w[1], g[&w[0]][&w[1]])).collect::<Vec<_>>().join("\n")
}

fn read_src() -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).expect("read daemon/src") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(&p, root, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(root).expect("under src").to_string_lossy().replace('\\', "/");
                out.insert(rel, std::fs::read_to_string(&p).expect("read source"));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

#[test]
fn no_module_imports_another_in_a_cycle() {
    let g = graph(&read_src());
    assert!(g.len() > 20, "daemon/src read ({} files)", g.len());
    assert!(g.values().map(BTreeMap::len).sum::<usize>() > 50, "dependencies found: {g:#?}");
    if let Some(c) = find_cycle(&g) {
        panic!("daemon/src has an import cycle:\n{}", explain(&g, &c));
    }
}

#[test]
fn top_level_folders_are_layers() {
    let f = folders(&graph(&read_src()));
    if let Some(c) = find_cycle(&f) {
        panic!("the top-level folders of daemon/src depend on each other in a cycle:\n{}", explain(&f, &c));
    }
}

/// The test hooks (`GIT_S3_TEST_…` variables that crash or slow the daemon
/// at chosen points) are compiled only with the `test-hooks` feature: their
/// names appear nowhere but in `test_hooks.rs`, which lib.rs declares under
/// that feature, so a default build (`cargo build --release`, install.sh,
/// the benchmark) has none. scripts/test.sh also checks the built binary.
#[test]
fn test_hooks_only_with_the_feature() {
    let files = read_src();
    let outside: Vec<&String> = files.iter().filter(|(f, s)| *f != "test_hooks.rs" && s.contains("GIT_S3_TEST_")).map(|(f, _)| f).collect();
    assert!(outside.is_empty(), "GIT_S3_TEST_ named outside src/test_hooks.rs: {outside:?}");
    assert!(files["test_hooks.rs"].contains("GIT_S3_TEST_"));
    let lines: Vec<&str> = files["lib.rs"].lines().map(str::trim).collect();
    let decl = lines.iter().position(|l| l.ends_with("mod test_hooks;")).expect("lib.rs declares test_hooks");
    assert!(
        decl > 0 && lines[decl - 1] == "#[cfg(feature = \"test-hooks\")]",
        "lib.rs must declare test_hooks under the feature:\n{}",
        lines.join("\n")
    );
}

/// Every task the daemon starts is one it awaits or cancels at exit: the
/// shipping code spawns only through `session/background.rs` (the
/// trackers), never with a bare `tokio::spawn` that would outlive the
/// daemon's drain unseen. (Unit tests, after `#[cfg(test)] mod tests`, may.)
#[test]
fn every_task_goes_through_the_tracker() {
    let files = read_src();
    let mut bare = Vec::new();
    for (file, src) in &files {
        if file == "session/background.rs" {
            continue;
        }
        let shipping = src.split("\n#[cfg(test)]\nmod tests").next().unwrap_or(src);
        let code = strip(shipping);
        for (n, line) in code.lines().enumerate() {
            let squeezed: String = line.split_whitespace().collect();
            if ["tokio::spawn(", "task::spawn(", "tokio::task::spawn("].iter().any(|p| squeezed.contains(p)) {
                bare.push(format!("{file}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(bare.is_empty(), "tasks spawned outside session/background.rs (use state.background.spawn / spawn_session):\n{}", bare.join("\n"));
    assert!(files["session/background.rs"].contains("TaskTracker"));
}

/// The crates whose every source file the module map lists, by path from
/// the repository's root. The daemon's rows are written from `daemon/src`;
/// the others' rows start with the crate's folder.
const MAPPED_SOURCES: [&str; 4] = ["daemon/src", "shim/src", "lfs-shim/src", "proto/src"];

/// The paths in the first column of the tables under docs/architecture.md's
/// "## Module map" heading, from the repository's root.
fn module_map(doc: &str) -> BTreeSet<String> {
    let mut in_map = false;
    let mut paths = BTreeSet::new();
    for line in doc.lines() {
        if line.starts_with("## ") {
            in_map = line.trim() == "## Module map";
        } else if let (true, Some(rest)) = (in_map, line.strip_prefix("| `")) {
            let Some((path, _)) = rest.split_once('`') else { continue };
            let outside = MAPPED_SOURCES[1..].iter().any(|c| path.starts_with(&format!("{c}/")));
            paths.insert(if outside { path.to_string() } else { format!("daemon/src/{path}") });
        }
    }
    paths
}

/// Every `.rs` file of the mapped crates, by path from the repository's root.
fn mapped_sources(root: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(&p, root, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.insert(p.strip_prefix(root).expect("under the root").to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = BTreeSet::new();
    for c in MAPPED_SOURCES {
        walk(&root.join(c), root, &mut out);
    }
    out
}

/// docs/architecture.md's module map lists every source file of the daemon,
/// the shims and proto, and nothing that does not exist: a new file gets
/// its line there (what it is, in one line).
#[test]
fn the_module_map_lists_every_source_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository");
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).expect("read docs/architecture.md");
    let map = module_map(&doc);
    let sources = mapped_sources(root);
    assert!(sources.len() > 40 && map.len() > 40, "{} sources, {} map rows", sources.len(), map.len());
    let unlisted: Vec<&String> = sources.difference(&map).collect();
    let missing: Vec<&String> = map.difference(&sources).collect();
    assert!(
        unlisted.is_empty() && missing.is_empty(),
        "docs/architecture.md's module map is out of date:\n  source files it does not list (add a line each): {unlisted:?}\n  \
         files it lists that do not exist (remove or rename them): {missing:?}"
    );
}

#[cfg(test)]
mod checker {
    use super::*;

    fn crate_of(files: &[(&str, &str)]) -> Graph {
        graph(&files.iter().map(|(f, s)| (f.to_string(), s.to_string())).collect())
    }

    fn edges(g: &Graph) -> Vec<(String, String)> {
        g.iter().flat_map(|(a, d)| d.keys().map(move |b| (a.clone(), b.clone()))).collect()
    }

    fn e(a: &str, b: &str) -> (String, String) {
        (a.to_string(), b.to_string())
    }

    #[test]
    fn finds_a_cycle_through_crate_paths() {
        let g = crate_of(&[
            ("lib.rs", "pub mod a;\npub mod b;\npub mod c;"),
            ("a.rs", "use crate::b::X;\nfn f() {}"),
            ("b.rs", "pub struct X;\nfn g() { crate::c::h(); }"),
            ("c.rs", "pub fn h() { let _ = crate::a::f; }"),
        ]);
        assert_eq!(edges(&g), vec![e("a.rs", "b.rs"), e("b.rs", "c.rs"), e("c.rs", "a.rs")]);
        let c = find_cycle(&g).expect("a → b → c → a");
        assert_eq!(c, ["a.rs", "b.rs", "c.rs", "a.rs"]);
        let text = explain(&g, &c);
        assert!(text.contains("c.rs:1 names a::f"), "{text}");
    }

    #[test]
    fn a_chain_has_no_cycle() {
        let g = crate_of(&[
            ("lib.rs", "pub mod a;\npub mod b;\npub mod c;"),
            ("a.rs", "use crate::b::X;"),
            ("b.rs", "use crate::c::Y;"),
            ("c.rs", "pub struct Y;"),
        ]);
        assert_eq!(find_cycle(&g), None);
    }

    #[test]
    fn a_mod_rs_and_its_children() {
        // The child uses its parent's item, the parent its child's: a cycle.
        let both = crate_of(&[
            ("lib.rs", "pub mod f;"),
            ("f/mod.rs", "mod kid;\npub struct Shared;\npub fn run() { kid::go() }"),
            ("f/kid.rs", "use super::Shared;\npub fn go() {}"),
        ]);
        assert_eq!(edges(&both), vec![e("f/kid.rs", "f/mod.rs"), e("f/mod.rs", "f/kid.rs")]);
        assert!(find_cycle(&both).is_some());
        // Only one direction: fine. `mod kid;` alone is no dependency.
        let one = crate_of(&[
            ("lib.rs", "pub mod f;"),
            ("f/mod.rs", "mod kid;\npub struct Shared;"),
            ("f/kid.rs", "use super::Shared;\nuse super::super::g::Z;"),
            ("g.rs", "pub struct Z;"),
        ]);
        assert_eq!(edges(&one), vec![e("f/kid.rs", "f/mod.rs"), e("f/kid.rs", "g.rs")]);
        assert_eq!(find_cycle(&one), None);
    }

    #[test]
    fn grouped_imports_count_path_by_path() {
        let g = crate_of(&[
            ("lib.rs", "pub mod a;\npub mod s;"),
            ("a.rs", "use crate::{s::{self as store, t::{T, U}}, s::u::*};"),
            ("s/mod.rs", "pub mod t;\npub mod u;"),
            ("s/t.rs", "pub struct T; pub struct U;"),
            ("s/u.rs", ""),
        ]);
        assert_eq!(edges(&g), vec![e("a.rs", "s/mod.rs"), e("a.rs", "s/t.rs"), e("a.rs", "s/u.rs")]);
    }

    #[test]
    fn comments_strings_and_inline_tests_are_not_dependencies() {
        let g = crate_of(&[
            ("lib.rs", "pub mod a;\npub mod b;"),
            (
                "a.rs",
                "//! see `crate::b::X`\n/* crate::b::Y /* nested */ crate::b::Z */\nfn f() { let s = \"crate::b::X\"; let r = r#\"crate::b\"#; let c = '{'; }\n\
#[cfg(test)]\nmod tests {\n    use super::*;\n    fn t<'a>(x: &'a str) {}\n}\nfn after() { crate::b::real(); }",
            ),
            ("b.rs", "pub fn real() {}"),
        ]);
        assert_eq!(edges(&g), vec![e("a.rs", "b.rs")]);
        assert!(g["a.rs"]["b.rs"].contains("a.rs:9 names b::real"), "{g:?}");
    }

    #[test]
    fn the_module_map_is_read_from_its_section_only() {
        let doc = "# A\n| `x.rs` | not the map |\n## Module map\n| File | What |\n|---|---|\n| `lib.rs` | root |\n| **cli/** | **heading** |\n\
| `cli/mod.rs` | shared |\n| `shim/src/bin/git-s3.rs` | a shim |\n| `proto/src/lib.rs` | proto |\n## Next\n| `y.rs` | not either |\n";
        let want = ["daemon/src/cli/mod.rs", "daemon/src/lib.rs", "proto/src/lib.rs", "shim/src/bin/git-s3.rs"];
        assert_eq!(module_map(doc), want.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
    }

    #[test]
    fn folders_are_layers() {
        let g = crate_of(&[
            ("lib.rs", "pub mod low;\npub mod high;"),
            ("low/mod.rs", "pub mod a;\npub mod b;"),
            ("low/a.rs", "use crate::high::x::X;"),
            ("low/b.rs", ""),
            ("high/mod.rs", "pub mod x;"),
            ("high/x.rs", "use crate::low::b::B;"),
        ]);
        // Files: low/a → high/x → low/b, no cycle; folders: low ↔ high.
        assert_eq!(find_cycle(&g), None);
        let f = folders(&g);
        assert_eq!(find_cycle(&f), Some(vec!["high/".to_string(), "low/".to_string(), "high/".to_string()]));
    }
}
