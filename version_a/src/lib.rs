//! mini_hypervisor, version A: the FFI room, where every `unsafe` of the version is (`kvm/`,
//! `signals.rs`; docs/UNSAFE.md). The program (`main.rs` and its modules) forbids `unsafe` and
//! reaches the kernel only through the safe types declared here, which make misuse fail to
//! compile (`tests/compile_fail.md`, this crate's `compile_fail` doc tests).
#![doc = ""]
#![doc = include_str!("../tests/compile_fail.md")]
#![deny(unsafe_code, unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod kvm;
pub mod signals;
