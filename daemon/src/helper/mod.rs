//! `git-remote-s3`: git's remote-helper protocol, parsed (`protocol`), and
//! the conversation with git that serves it from storage (`conversation`).

pub(crate) mod conversation;
pub mod protocol;
