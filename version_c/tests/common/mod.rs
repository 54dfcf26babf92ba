//! What the integration tests need of this version: its binary and its crate, beside the helpers
//! every version shares (`tests/common.rs` at the workspace root). Each test file here says
//! `mod common;`; those every version runs alike are thin roots, their tests in `tests/` too.
#![allow(dead_code, unused_imports)] // each test file uses a part of it

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mini_hypervisor_c");

/// The crate under test (`tests/layout.rs` reads its KVM declarations).
pub use version_c as ffi;

#[path = "../../../tests/common.rs"]
mod shared;
pub use shared::*;
