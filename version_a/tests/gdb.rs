//! The tests of `tests/gdb.rs` at the workspace root, which every version shares, on this
//! version's binary and crate (`common`).

mod common;

#[path = "../../tests/gdb.rs"]
mod gdb;
