//! The git-remote-s3 0.4.2 bundle layout: its storage (`storage`) and its
//! per-ref locks (`locks`).

pub mod locks;
pub mod storage;
