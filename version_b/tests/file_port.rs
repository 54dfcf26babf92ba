//! The tests of `tests/file_port.rs` at the workspace root, which versions A and B share, on this
//! version's binary and crate (`common`).

mod common;

#[path = "../../tests/file_port.rs"]
mod file_port;
