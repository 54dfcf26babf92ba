//! What the integration tests need of this version: its binary and its crate, beside the helpers
//! every version shares (`tests/common.rs` at the workspace root). Each test file here says
//! `mod common;`.
#![allow(dead_code)]

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mini_hypervisor_b");

/// The crate under test (`tests/layout.rs` reads its KVM declarations).
#[allow(unused_imports)] // the other tests use the binary only
pub use version_b as ffi;

#[path = "../../../tests/common.rs"]
mod shared;
pub use shared::*;
