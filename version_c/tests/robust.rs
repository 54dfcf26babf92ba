//! The tests of `tests/robust.rs` at the workspace root, which every version shares, on this
//! version's binary and crate (`common`).

mod common;

#[path = "../../tests/robust.rs"]
mod robust;
