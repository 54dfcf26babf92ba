//! The tests of `tests/rust_guests.rs` at the workspace root (the Rust guests of `guest/`),
//! which every version shares, and of `tests/rust_guests_at_once.rs` (several Rust and C guests
//! at once), which versions B and C share, on this version's binary and crate (`common`).

mod common;

#[path = "../../tests/rust_guests.rs"]
mod rust_guests;
#[path = "../../tests/rust_guests_at_once.rs"]
mod rust_guests_at_once;
