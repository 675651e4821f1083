//! Parsing of git's remote-helper protocol commands (gitremote-helpers(7)).
//! Ref names in `fetch` and `push` pass git's ref-name rules
//! (`local::refname`), and a push source never starts with `-`: neither can
//! reach git as an option or break a line of the protocol.

use crate::local::oid::is_object_id;
use crate::local::refname::valid_ref_name;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Capabilities,
    Option {
        name: String,
        value: String,
    },
    List {
        for_push: bool,
    },
    Fetch {
        sha: String,
        name: String,
    },
    Push {
        src: Option<String>,
        dst: String,
        force: bool,
    },
    /// A blank line: ends a batch, or the session when no batch is open.
    Blank,
    Unknown(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed remote-helper command: {0:?}")]
pub struct ParseError(pub String);

pub fn parse(line: &str) -> Result<Command, ParseError> {
    if line.is_empty() {
        return Ok(Command::Blank);
    }
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    let bad = || ParseError(line.to_string());
    Ok(match verb {
        "capabilities" => Command::Capabilities,
        "option" => {
            let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
            if name.is_empty() {
                return Err(bad());
            }
            Command::Option { name: name.to_string(), value: value.to_string() }
        }
        "list" => match rest {
            "" => Command::List { for_push: false },
            "for-push" => Command::List { for_push: true },
            _ => return Err(bad()),
        },
        "fetch" => {
            let (sha, name) = rest.split_once(' ').ok_or_else(bad)?;
            // The name is a ref, or (a partial clone's lazy fetch) the object id itself.
            if !is_object_id(sha) || !(valid_ref_name(name) || is_object_id(name)) {
                return Err(bad());
            }
            Command::Fetch { sha: sha.to_string(), name: name.to_string() }
        }
        "push" => {
            let (force, spec) = match rest.strip_prefix('+') {
                Some(s) => (true, s),
                None => (false, rest),
            };
            let (src, dst) = spec.rsplit_once(':').ok_or_else(bad)?;
            if !valid_ref_name(dst) || src.starts_with('-') || src.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(bad());
            }
            Command::Push { src: (!src.is_empty()).then(|| src.to_string()), dst: dst.to_string(), force }
        }
        _ => Command::Unknown(line.to_string()),
    })
}

/// Quotes a push error message when it needs it, as git expects.
pub fn push_status(dst: &str, result: &Result<(), String>) -> String {
    match result {
        Ok(()) => format!("ok {dst}\n"),
        Err(msg) => {
            let one_line = msg.replace('\n', " ");
            format!("error {dst} {one_line}\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        assert_eq!(parse("capabilities"), Ok(Command::Capabilities));
        assert_eq!(parse(""), Ok(Command::Blank));
        assert_eq!(parse("list"), Ok(Command::List { for_push: false }));
        assert_eq!(parse("list for-push"), Ok(Command::List { for_push: true }));
        assert_eq!(parse("option verbosity 2"), Ok(Command::Option { name: "verbosity".into(), value: "2".into() }));
        assert_eq!(parse("option cas refs/heads/main:abc"), Ok(Command::Option { name: "cas".into(), value: "refs/heads/main:abc".into() }));
        let sha = "a".repeat(40);
        assert_eq!(parse(&format!("fetch {sha} refs/heads/main")), Ok(Command::Fetch { sha: sha.clone(), name: "refs/heads/main".into() }));
        assert_eq!(
            parse("push refs/heads/a:refs/heads/b"),
            Ok(Command::Push { src: Some("refs/heads/a".into()), dst: "refs/heads/b".into(), force: false })
        );
        assert_eq!(parse("push +HEAD:refs/heads/b"), Ok(Command::Push { src: Some("HEAD".into()), dst: "refs/heads/b".into(), force: true }));
        assert_eq!(parse(&format!("fetch {sha} {sha}")), Ok(Command::Fetch { sha: sha.clone(), name: sha.clone() }));
        assert_eq!(parse("push :refs/heads/b"), Ok(Command::Push { src: None, dst: "refs/heads/b".into(), force: false }));
        assert_eq!(parse("stateless-connect x"), Ok(Command::Unknown("stateless-connect x".into())));
    }

    #[test]
    fn rejects_malformed() {
        assert!(parse("fetch nothex refs/heads/x").is_err());
        assert!(parse("fetch").is_err());
        assert!(parse("push refs/heads/a").is_err());
        assert!(parse("push refs/heads/a:").is_err());
        assert!(parse("list everything").is_err());
        assert!(parse("option").is_err());
        let sha = "a".repeat(40);
        assert!(parse(&format!("fetch {sha} refs/heads/a b")).is_err());
        assert!(parse(&format!("fetch {sha} --upload-pack=x")).is_err());
        assert!(parse(&format!("fetch {} refs/heads/a", "a".repeat(65))).is_err());
        assert!(parse("push refs/heads/a:refs/heads/../x").is_err());
        assert!(parse("push --upload-pack=x:refs/heads/a").is_err());
        assert!(parse("push refs/heads/a:-x").is_err());
    }

    #[test]
    fn push_status_lines() {
        assert_eq!(push_status("refs/heads/a", &Ok(())), "ok refs/heads/a\n");
        assert_eq!(push_status("refs/heads/a", &Err("fetch first".into())), "error refs/heads/a fetch first\n");
    }
}
