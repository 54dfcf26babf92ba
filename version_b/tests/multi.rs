//! The tests of `tests/multi.rs` at the workspace root, which versions B and C share, on this
//! version's binary and crate (`common`).

mod common;

#[path = "../../tests/multi.rs"]
mod multi;
