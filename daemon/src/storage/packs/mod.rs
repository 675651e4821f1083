//! The packs format: its manifest (`manifest`), its storage (`push`) and
//! its maintenance (`gc`), and the views that serve shallow and partial
//! clones (`views`).

pub mod gc;
pub mod manifest;
pub mod push;
pub mod views;
