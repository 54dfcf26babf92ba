//! The tests of `tests/layout.rs` at the workspace root, which every version shares, on this
//! version's binary and crate (`common`).

mod common;

#[path = "../../tests/layout.rs"]
mod layout;
