//! S3: warm clients built from each caller's environment (`clients`, with
//! what the caller's AWS config file says in `profile`, its files read again
//! only when they change: `config_files`), the calls git-s3
//! makes (`store`), what a bucket's policy demands of them (`write_options`),
//! `s3://` URLs (`url`), what the daemon remembers of locations (`memory`),
//! each caller's AWS credentials (`credentials`), and the one retry loop and
//! backoff (`retry`).

pub mod clients;
pub mod conditional;
pub mod config_files;
pub mod credentials;
pub mod memory;
pub mod profile;
pub mod retry;
pub mod store;
pub mod url;
pub mod write_options;
