//! The packs format: its manifest (`manifest`), its storage (`push`) and
//! its maintenance (`gc`).

pub mod gc;
pub mod manifest;
pub mod push;
