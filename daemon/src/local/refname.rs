//! git's rules for ref names (git-check-ref-format(1)), applied to every ref
//! name that comes from outside: git's remote-helper commands, a bucket's
//! keys and its manifest. A name that passes can be written on git's
//! protocol stream and given to git as an argument: it holds no control
//! character, space or newline and never starts with `-`.

/// Whether `name` is a ref name git accepts: `HEAD`, or `refs/…` (at least
/// two components; a component may start with `-`, the name never does) under check-ref-format's rules.
pub fn valid_ref_name(name: &str) -> bool {
    if name == "HEAD" {
        return true;
    }
    if !name.starts_with("refs/") || name.len() > 4096 {
        return false;
    }
    if name.contains("..") || name.contains("@{") || name.ends_with('/') || name.ends_with('.') {
        return false;
    }
    if name.bytes().any(|b| b < 0x20 || b == 0x7f || b" ~^:?*[\\".contains(&b)) {
        return false;
    }
    let mut components = 0;
    for c in name.split('/') {
        if c.is_empty() || c.starts_with('.') || c.ends_with(".lock") {
            return false;
        }
        components += 1;
    }
    components >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_git_accepts() {
        for ok in
            ["HEAD", "refs/heads/main", "refs/heads/feature/x-1", "refs/tags/v1.0", "refs/heads/ünï", "refs/remotes/o/a@b", "refs/heads/-x", "refs/x"]
        {
            assert!(valid_ref_name(ok), "{ok}");
        }
    }

    #[test]
    fn refuses_what_git_refuses() {
        for bad in [
            "",
            "main",
            "refs/",
            "refs/heads/",
            "refs/heads/a b",
            "refs/heads/a\nfetch x",
            "refs/heads/a\tb",
            "refs/heads/a\u{7f}",
            "refs/heads/../x",
            "refs/heads/a..b",
            "refs/heads/.hidden",
            "refs/heads/a.lock",
            "refs/heads/a~1",
            "refs/heads/a^",
            "refs/heads/a:b",
            "refs/heads/a?",
            "refs/heads/a*",
            "refs/heads/a[",
            "refs/heads/a\\b",
            "refs/heads/a@{1}",
            "refs/heads//a",
            "refs/heads/a.",
            "--upload-pack=x",
            "-x",
            "HEAD\n",
            "refs",
        ] {
            assert!(!valid_ref_name(bad), "{bad:?}");
        }
    }
}
