//! Documentation: the README stays short and its links resolve; every
//! `git s3` command's help names its page of docs/; the man pages and shell
//! completions generated from the clap definitions cover every command, and
//! the bash completion works for `git-s3 …` and, through git's own
//! completion, for `git s3 …`.
#![allow(clippy::unwrap_used)] // a test's unwrap is an assertion (Cargo.toml, [workspace.lints])

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::TestEnv;

fn root() -> PathBuf {
    testkit::workspace_root()
}

/// Relative Markdown link targets `](target)` of a text (no URLs, no pure anchors).
fn relative_links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter(|t| !t.contains("://") && !t.starts_with('#') && !t.starts_with("mailto:"))
        .map(str::to_string)
        .collect()
}

/// GitHub's anchors of a Markdown file's headings.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    text.lines()
        .filter(|l| {
            if l.starts_with("```") {
                in_code = !in_code;
            }
            !in_code && l.starts_with('#')
        })
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

/// Checks that every relative link of `file` names an existing file (and,
/// for a `#anchor` into a Markdown file, one of its headings).
fn check_links(file: &Path, problems: &mut Vec<String>) {
    let text = std::fs::read_to_string(file).unwrap();
    let dir = file.parent().unwrap();
    for link in relative_links(&text) {
        let (path, anchor) = link.split_once('#').unwrap_or((&link, ""));
        let target = dir.join(path);
        if !target.exists() {
            problems.push(format!("{}: {link}: no such file", file.display()));
        } else if !anchor.is_empty() && !anchors(&std::fs::read_to_string(&target).unwrap()).contains(anchor) {
            problems.push(format!("{}: {link}: no such heading", file.display()));
        }
    }
}

#[test]
fn readme_is_short_and_every_docs_link_resolves() {
    let readme = root().join("README.md");
    let text = std::fs::read_to_string(&readme).unwrap();
    let lines = text.lines().count();
    assert!(lines <= 250, "README.md has {lines} lines; keep it at 250 or fewer and move reference material to docs/");
    // The two commands of the quick start, exactly.
    assert!(text.contains("scripts/demo.sh     # builds, pushes a repository to S3 and clones it back"));
    assert!(text.contains("scripts/test.sh     # the whole test suite (what CI runs: .ci/run)"));

    let links = relative_links(&text);
    for page in ["configuration", "storage-formats", "lfs", "operations", "performance", "reliability", "architecture", "contributing"] {
        assert!(links.iter().any(|l| l.starts_with(&format!("docs/{page}.md"))), "README does not link docs/{page}.md");
    }
    let mut problems = Vec::new();
    check_links(&readme, &mut problems);
    for entry in std::fs::read_dir(root().join("docs")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "md") {
            check_links(&entry.path(), &mut problems);
        }
    }
    assert!(problems.is_empty(), "broken links:\n{}", problems.join("\n"));
}

/// The commands `git s3 --help` lists (clap's "Commands:" section).
fn commands(env: &TestEnv) -> Vec<String> {
    let help = env.git_s3(&env.work(), &["--help"]);
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn every_command_help_names_its_doc_page() {
    let env = TestEnv::new();
    let cmds = commands(&env);
    assert!(cmds.len() >= 11, "{cmds:?}");
    for cmd in &cmds {
        // `daemon` is answered by git-s3 itself, `lfs` by the LFS configuration: both end with the line too.
        let mut c = env.command("git-s3", &env.work());
        c.args([cmd.as_str(), "--help"]);
        let out = env.run(c);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let line =
            text.lines().find(|l| l.starts_with("Documentation: docs/")).unwrap_or_else(|| panic!("git s3 {cmd} --help names no doc page:\n{text}"));
        assert!(line.ends_with(&format!("man git-s3-{cmd}")), "{line}");
        let page = line["Documentation: ".len()..].split([' ', '#']).next().unwrap();
        assert!(root().join(page).is_file(), "git s3 {cmd} --help names {page}, which does not exist");
    }
}

fn generate(dir: &Path) -> (PathBuf, PathBuf) {
    let (man, comp) = (dir.join("man"), dir.join("completions"));
    let out = Command::new(testkit::target_bin_dir().join("git-s3-daemon"))
        .args(["generate-docs", "--man"])
        .arg(&man)
        .arg("--completions")
        .arg(&comp)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (man, comp)
}

#[test]
fn man_pages_and_completions_cover_every_command() {
    let env = TestEnv::new();
    let cmds = commands(&env);
    let (man, comp) = generate(env.dir.path());

    let pages: BTreeSet<String> = std::fs::read_dir(&man).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let want: BTreeSet<String> = std::iter::once("git-s3.1".to_string()).chain(cmds.iter().map(|c| format!("git-s3-{c}.1"))).collect();
    assert_eq!(pages, want);
    let top = std::fs::read_to_string(man.join("git-s3.1")).unwrap();
    for c in &cmds {
        assert!(top.contains(&format!("git\\-s3\\-{}(1)", c.replace('-', "\\-"))), "git-s3.1 does not list {c}");
    }
    // A page holds its command's options and its doc pointer.
    let doctor = std::fs::read_to_string(man.join("git-s3-doctor.1")).unwrap();
    for opt in ["delete\\-stale\\-locks", "dry\\-run", "keep", "docs/operations.md#git\\-s3\\-doctor"] {
        assert!(doctor.contains(opt), "{opt} missing from git-s3-doctor.1:\n{doctor}");
    }
    // man renders them (what `git s3 --help` shows once installed).
    let out = Command::new("man").arg("-l").arg(man.join("git-s3-status.1")).env("MANPAGER", "cat").env("MANWIDTH", "100").output().expect("man");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("git s3 status"), "{}", String::from_utf8_lossy(&out.stderr));

    let files: BTreeSet<String> = std::fs::read_dir(&comp).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(files, BTreeSet::from(["git-s3.bash".to_string(), "_git-s3".to_string(), "git-s3.fish".to_string()]));
    let zsh = std::fs::read_to_string(comp.join("_git-s3")).unwrap();
    let fish = std::fs::read_to_string(comp.join("git-s3.fish")).unwrap();
    assert!(zsh.starts_with("#compdef git-s3"));
    for c in &cmds {
        assert!(zsh.contains(&format!("'{c}:")), "zsh: {c} missing");
        assert!(fish.contains(&format!("-a \"{c}\"")), "fish: {c} missing");
    }
}

#[test]
fn bash_completes_git_s3_and_git_space_s3() {
    let dir = tempfile::tempdir().unwrap();
    let (_, comp) = generate(dir.path());
    // git's own bash completion (shipped with git) calls _git_s3 for `git s3 …`.
    let git_completion = ["/usr/share/bash-completion/completions/git", "/etc/bash_completion.d/git"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("git's bash completion script (installed with git)");
    let script = format!(
        r#"
source {comp}
source {git_completion}
try() {{
  COMP_WORDS=("$@"); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMP_LINE="$*"; COMP_POINT=${{#COMP_LINE}}; COMPREPLY=()
  if [ "$1" = git ]; then __git_wrap__git_main; else _git__s3 "$1" "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"; fi
  echo "$*|${{COMPREPLY[*]}}"
}}
try git-s3 st
try git-s3 doctor --del
try git s3 mig
try git s3 doctor --del
try git -C /tmp s3 gc --geo
try git s3 cache ''
"#,
        comp = comp.join("git-s3.bash").display()
    );
    let out = Command::new("bash").arg("-c").arg(&script).env("HOME", dir.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let got: Vec<(&str, BTreeSet<&str>)> = text.lines().filter_map(|l| l.split_once('|')).map(|(k, v)| (k, v.split_whitespace().collect())).collect();
    let want: Vec<(&str, BTreeSet<&str>)> = vec![
        ("git-s3 st", BTreeSet::from(["status"])),
        ("git-s3 doctor --del", BTreeSet::from(["--delete-bundle", "--delete-stale-locks"])),
        ("git s3 mig", BTreeSet::from(["migrate"])),
        ("git s3 doctor --del", BTreeSet::from(["--delete-bundle", "--delete-stale-locks"])),
        ("git -C /tmp s3 gc --geo", BTreeSet::from(["--geometric"])),
        ("git s3 cache ", BTreeSet::from(["show", "prune", "clear", "--json", "-h", "--help"])),
    ];
    assert_eq!(got, want, "{text}");
}
