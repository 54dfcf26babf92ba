//! The tests of `tests/explain.rs` at the workspace root, which every version shares, on this
//! version's binary and crate (`common`).

mod common;

#[path = "../../tests/explain.rs"]
mod explain;
