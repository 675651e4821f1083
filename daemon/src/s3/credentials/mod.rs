//! AWS credentials for one caller: the whole chain evaluated with the
//! caller's environment (`chain`), a profile's `credential_process` run
//! with the caller's environment and directory (`process`), and the one-line
//! messages when credentials fail (`messages`).

pub(crate) mod chain;
pub(crate) mod messages;
pub(crate) mod process;
