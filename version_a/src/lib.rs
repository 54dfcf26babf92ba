//! mini_hypervisor, version A: the FFI room, where every `unsafe` of the version is (`kvm/`,
//! `signals.rs`; docs/UNSAFE.md). The program (`main.rs` and its modules) forbids `unsafe` and
//! reaches the kernel only through the safe types declared here, which make what they rule out not
//! compile. RAM never leaves its machine, so nothing can free or replace it while KVM maps it:
//! ```compile_fail,E0616
//! fn steal(machine: version_a::kvm::Machine) -> version_a::kvm::GuestRam {
//!     machine.slot.ram
//! }
//! ```
//! ```compile_fail,E0507
//! fn take(mut machine: version_a::kvm::Machine) -> version_a::kvm::GuestRam {
//!     let (_, ram) = machine.parts();
//!     *ram
//! }
//! ```
//! A request takes only its own argument type (`KVM_SET_REGS` takes a `KvmRegs`):
//! ```compile_fail,E0308
//! fn wrong(vcpu: &version_a::kvm::Vcpu, s: &version_a::kvm::KvmSregs) {
//!     vcpu.set(version_a::kvm::KVM_SET_REGS, s).unwrap();
//! }
//! ```
//! A memory region carries a host address the kernel keeps using: not `Pod`, no safe call takes it:
//! ```compile_fail,E0277
//! fn leak(vcpu: &version_a::kvm::Vcpu, r: &version_a::kvm::KvmUserspaceMemoryRegion) {
//!     vcpu.set(version_a::kvm::KVM_SET_USER_MEMORY_REGION, r).unwrap();
//! }
//! ```
//! A machine, its vCPU and its RAM stay on the thread that made them (neither `Send` nor `Sync`):
//! ```compile_fail,E0277
//! fn send(machine: version_a::kvm::Machine) {
//!     std::thread::spawn(move || drop(machine));
//! }
//! ```
//! ```compile_fail,E0277
//! fn share(ram: &version_a::kvm::GuestRam) {
//!     std::thread::scope(|s| { s.spawn(|| ram.read(0, &mut [0u8; 1])); });
//! }
//! ```
#![deny(unsafe_code, unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod kvm;
pub mod signals;
