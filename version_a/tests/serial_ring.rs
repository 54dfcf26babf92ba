//! The tests of `tests/serial_ring.rs` at the workspace root, which every version shares, on this
//! version's binary and crate (`common`).

mod common;

#[path = "../../tests/serial_ring.rs"]
mod serial_ring;
