//! The minimum supported Rust version is real: `rust-version` in the root
//! Cargo.toml's `[workspace.package]` is at least the `rust-version` of every
//! package Cargo.lock holds, and every crate of the workspace inherits it (so
//! clippy's `incompatible_msrv` checks our own use of std against it).
//! A `cargo update` that brings a crate needing a newer Rust fails here,
//! naming it: raise `rust-version` (and say so in the release notes) or pin
//! the older crate.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::path::Path;
use std::process::Command;

/// `1.94.1` → `[1, 94, 1]` (a missing patch is 0).
fn version(s: &str) -> Vec<u64> {
    let mut v: Vec<u64> = s.split('.').map(|p| p.parse().unwrap_or_else(|_| panic!("not a Rust version: {s:?}"))).collect();
    v.resize(3, 0);
    v
}

/// `rust-version` of the root Cargo.toml's `[workspace.package]`.
fn workspace_rust_version(root: &Path) -> String {
    let toml = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let mut in_package = false;
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if let (true, Some(v)) = (in_package, line.strip_prefix("rust-version")) {
            return v.trim_start().trim_start_matches('=').trim().trim_matches('"').to_string();
        }
    }
    panic!("the root Cargo.toml's [workspace.package] has no rust-version");
}

#[test]
fn rust_version_covers_every_locked_package_and_every_crate_inherits_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let ours = workspace_rust_version(root);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo).args(["metadata", "--format-version", "1", "--locked"]).current_dir(root).output().unwrap();
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members: Vec<&str> = meta["workspace_members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();

    let mut not_inheriting = Vec::new();
    let mut too_new = Vec::new();
    for p in meta["packages"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let rv = p["rust_version"].as_str();
        if members.contains(&p["id"].as_str().unwrap()) {
            if rv != Some(ours.as_str()) {
                not_inheriting.push(format!("{name} ({rv:?})"));
            }
        } else if let Some(rv) = rv.filter(|rv| version(rv) > version(&ours)) {
            too_new.push(format!("{name} {} needs Rust {rv}", p["version"].as_str().unwrap()));
        }
    }
    assert!(not_inheriting.is_empty(), "crates without `rust-version.workspace = true` ({ours}): {}", not_inheriting.join(", "));
    assert!(
        too_new.is_empty(),
        "Cargo.lock holds packages that need a newer Rust than rust-version = {ours:?} (root Cargo.toml): {}",
        too_new.join("; ")
    );
}

#[test]
fn versions_compare_by_number() {
    assert!(version("1.94.1") > version("1.94"));
    assert!(version("1.100") > version("1.94.1"));
    assert_eq!(version("1.80"), vec![1, 80, 0]);
}
