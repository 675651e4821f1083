//! The `git s3` documentation derived from its clap definitions: the line
//! each command's `--help` ends with (which page of `docs/` describes it),
//! and the man pages and shell completions that
//! `git-s3-daemon generate-docs` writes for `packaging/install.sh`.
//!
//! Man pages: `git-s3.1` (what `git s3 --help`, `git help s3` and
//! `man git-s3` open) and `git-s3-<command>.1`. Completions: bash
//! (`git-s3.bash`, also serving `git s3 …` through git's own completion),
//! zsh (`_git-s3`) and fish (`git-s3.fish`).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::Command;
use clap_complete::Shell;

/// Where each command is described, in the git-s3 sources.
pub(crate) const DOCS: &[(&str, &str)] = &[
    ("status", "docs/operations.md#git-s3-status"),
    ("doctor", "docs/operations.md#git-s3-doctor"),
    ("delete-branch", "docs/operations.md#git-s3-delete-branch"),
    ("protect", "docs/operations.md#git-s3-protect-and-unprotect"),
    ("unprotect", "docs/operations.md#git-s3-protect-and-unprotect"),
    ("init", "docs/storage-formats.md#choosing-the-format"),
    ("keygen", "docs/encryption.md#keys"),
    ("access", "docs/encryption.md#access"),
    ("gc", "docs/operations.md#git-s3-gc"),
    ("migrate", "docs/operations.md#git-s3-migrate"),
    ("cache", "docs/operations.md#git-s3-cache"),
    ("daemon", "docs/operations.md#git-s3-daemon"),
    ("lfs", "docs/lfs.md"),
];

/// `git s3 daemon …` is run by the `git-s3` binary itself; its man page
/// carries the actions.
const DAEMON_ACTIONS: &str = "\
Actions (handled by the git-s3 command itself, not by the daemon):
  start     start the daemon in the background (no-op when it runs)
  stop      stop the running daemon (it first finishes background uploads)
  restart   stop, then start
  run       run the daemon in the foreground (for systemd/launchd)
  status    is it running? pid, version, uptime, socket (--json: one JSON document)";

/// The page and man page of a subcommand, as its `--help` ends.
fn doc_line(sub: &str, page: &str) -> String {
    format!("Documentation: {page} in the git-s3 repository; man git-s3-{sub}")
}

/// `cmd` (`git s3`'s clap command) with each command's documentation pointer.
pub(crate) fn with_doc_pointers(mut cmd: Command) -> Command {
    let top = cmd.get_after_help().map(|h| h.to_string()).unwrap_or_default();
    cmd = cmd.after_help(format!("{top}\nDocumentation: README.md and docs/ in the git-s3 repository; man git-s3, man git-s3-<command>"));
    for (sub, page) in DOCS {
        cmd = cmd.mut_subcommand(*sub, |c| c.after_help(doc_line(sub, page)));
    }
    cmd
}

/// The command as the man pages and completions name it: `git-s3` (file
/// names, completion functions), used as `git s3` (synopsis).
fn named(cmd: Command, bin_name: &str) -> Command {
    cmd.name("git-s3")
        .display_name("git-s3")
        .bin_name(bin_name)
        .disable_help_subcommand(true)
        .mut_subcommand("daemon", |c| c.after_long_help(format!("{DAEMON_ACTIONS}\n\n{}", doc_line("daemon", "docs/operations.md#git-s3-daemon"))))
        // HELP ends with its documentation line.
        .mut_subcommand("lfs", |c| c.after_long_help(crate::lfs::config::HELP))
}

/// Writes `git-s3.1` and one `git-s3-<command>.1` per command into `dir`.
pub fn write_man_pages(cmd: Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut cmd = named(cmd, "git s3");
    cmd.build();
    let source = format!("git-s3 {}", git_s3_proto::VERSION);
    let mut pages = Vec::new();
    let subs: Vec<Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    for c in std::iter::once(cmd).chain(subs) {
        let man = clap_mangen::Man::new(c).source(source.clone()).manual("Git Manual");
        let path = dir.join(man.get_filename());
        let mut buf = Vec::new();
        man.render(&mut buf)?;
        write_file(&path, &buf)?;
        pages.push(path);
    }
    Ok(pages)
}

/// Lets git's bash completion complete `git s3 …`: git calls `_git_s3`
/// (after loading this file as `git-s3`); it hands the words after `s3`
/// to the generated `git-s3` completion.
const BASH_GIT_ADAPTER: &str = r#"
# `git s3 …`: git's completion calls _git_s3 with its own words/cword/cur.
_git_s3() {
    local idx="${__git_cmd_idx:-1}"
    local COMP_WORDS=(git-s3 "${words[@]:idx+1}")
    local COMP_CWORD=$((cword - idx))
    local prev_word="${COMP_WORDS[COMP_CWORD-1]}"
    _git__s3 git-s3 "$cur" "$prev_word"
}
"#;

/// Writes the bash, zsh and fish completions of `git-s3` into `dir`.
pub fn write_completions(base: Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = named(base.clone(), "git-s3");
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, "git-s3", &mut buf);
        if shell == Shell::Bash {
            // clap_complete 4.6 names the per-command cases of a hyphenated
            // binary `git__subcmd__s3__subcmd__<cmd>` but selects them as
            // `git__s3__subcmd__<cmd>`: without this, nothing after the
            // command name would complete (a no-op once that is fixed).
            buf = String::from_utf8_lossy(&buf).replace("git__subcmd__s3__subcmd__", "git__s3__subcmd__").into_bytes();
            buf.extend_from_slice(BASH_GIT_ADAPTER.as_bytes());
        }
        let path = dir.join(clap_complete::Generator::file_name(&shell, "git-s3"));
        write_file(&path, &buf)?;
        files.push(path);
    }
    Ok(files)
}

fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(data)?;
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_pages_exist_in_the_sources() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (_, page) in DOCS {
            let (file, anchor) = page.split_once('#').unwrap_or((page, ""));
            let text = fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            if !anchor.is_empty() {
                // GitHub's anchor of a heading: lower case, spaces to '-', other punctuation dropped.
                let anchors: Vec<String> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix('#').map(|h| h.trim_start_matches('#').trim()))
                    .map(|h| {
                        h.to_lowercase()
                            .chars()
                            .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ')
                            .map(|c| if c == ' ' { '-' } else { c })
                            .collect()
                    })
                    .collect();
                assert!(anchors.iter().any(|a| a == anchor), "{page}: no such heading in {anchors:?}");
            }
        }
    }
}
