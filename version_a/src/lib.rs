//! mini_hypervisor, version A: the FFI room. Every `unsafe` of version A is in this library:
//! `kvm/` (the KVM ioctls, guest RAM and the vCPU's run area) and `signals.rs` (signal masks,
//! the signalfd, `poll`, the timer). The program itself (`main.rs` and its modules) forbids
//! `unsafe` and reaches the kernel only through the safe types declared here, whose
//! `compile_fail` examples show what they rule out.
#![deny(unsafe_code, unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod kvm;
pub mod signals;
