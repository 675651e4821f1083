//! The git-remote-s3 0.4.2 bundle layout: its keys, parsed (`layout`), its
//! per-ref locks (`locks`), and the storage interface over them (`storage`).

pub mod layout;
pub mod locks;
pub(crate) mod storage;
