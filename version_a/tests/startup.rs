//! The tests of `tests/startup.rs` at the workspace root, which every version shares, on this
//! version's binary and crate (`common`).

mod common;

#[path = "../../tests/startup.rs"]
mod startup;
