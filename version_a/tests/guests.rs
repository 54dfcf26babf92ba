//! The tests of `tests/guests.rs` at the workspace root, which every version shares, on this
//! version's binary and crate (`common`).

mod common;

#[path = "../../tests/guests.rs"]
mod guests;
