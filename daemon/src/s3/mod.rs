//! S3: warm clients built from each caller's environment (`clients`), the
//! calls git-s3 makes (`store`), and `s3://` URLs (`url`).

pub mod clients;
pub mod store;
pub mod url;
