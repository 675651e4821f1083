//! S3: warm clients built from each caller's environment (`clients`, with
//! what the caller's AWS config file says in `profile`, its files read again
//! only when they change: `config_files`), the calls git-s3
//! makes (`store`), what a bucket's policy demands of them (`write_options`),
//! `s3://` URLs (`url`), what the daemon remembers of locations (`memory`),
//! each caller's AWS credentials (`credentials`), and the one retry loop and
//! backoff (`retry`).

pub mod clients;
pub(crate) mod conditional;
pub(crate) mod config_files;
pub(crate) mod credentials;
pub(crate) mod memory;
pub(crate) mod profile;
pub(crate) mod retry;
pub mod store;
pub mod url;
pub(crate) mod write_options;
