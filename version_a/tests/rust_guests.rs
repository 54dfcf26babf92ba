//! The tests of `tests/rust_guests.rs` at the workspace root (the Rust guests of `guest/`),
//! which every version shares, on this version's binary and crate (`common`).

mod common;

#[path = "../../tests/rust_guests.rs"]
mod rust_guests;
