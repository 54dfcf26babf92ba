//! mini_hypervisor, version C: the FFI room, where every `unsafe` of the version is (`kvm/`,
//! `signals.rs`, `hostfs.rs`; docs/UNSAFE.md). The program (`main.rs` and its modules) forbids
//! `unsafe` and reaches the kernel only through the safe types declared here, which make what they
//! rule out not compile. RAM never leaves its machine, so nothing can free or replace it while KVM
//! maps it:
//! ```compile_fail,E0616
//! fn steal(machine: version_c::kvm::Machine) -> version_c::kvm::GuestRam {
//!     machine.slot.ram
//! }
//! ```
//! ```compile_fail,E0507
//! fn take(mut machine: version_c::kvm::Machine) -> version_c::kvm::GuestRam {
//!     let (_, ram) = machine.parts();
//!     *ram
//! }
//! ```
//! A request takes only its own argument type (`KVM_SET_REGS` takes a `KvmRegs`):
//! ```compile_fail,E0308
//! fn wrong(vcpu: &version_c::kvm::Vcpu, s: &version_c::kvm::KvmSregs) {
//!     vcpu.set(version_c::kvm::KVM_SET_REGS, s).unwrap();
//! }
//! ```
//! A memory region carries a host address the kernel keeps using: not `Pod`, no safe call takes it:
//! ```compile_fail,E0277
//! fn leak(vcpu: &version_c::kvm::Vcpu, r: &version_c::kvm::KvmUserspaceMemoryRegion) {
//!     vcpu.set(version_c::kvm::KVM_SET_USER_MEMORY_REGION, r).unwrap();
//! }
//! ```
//! A machine, its vCPU and its RAM stay on the thread that made them (neither `Send` nor `Sync`):
//! ```compile_fail,E0277
//! fn send(machine: version_c::kvm::Machine) {
//!     std::thread::spawn(move || drop(machine));
//! }
//! ```
//! ```compile_fail,E0277
//! fn share(ram: &version_c::kvm::GuestRam) {
//!     std::thread::scope(|s| { s.spawn(|| ram.read(0, &mut [0u8; 1])); });
//! }
//! ```
//! A name reaches `openat` only as a checked [`hostfs::FileName`] (no `/`, not `..`): a path
//! does not compile...
//! ```compile_fail,E0308
//! fn escape(dir: &std::fs::File) -> std::io::Result<std::fs::File> {
//!     version_c::hostfs::openat(dir, c"../../etc/passwd", 0, 0)
//! }
//! ```
//! ...and no `FileName` can be made but by [`hostfs::FileName::new`], which checks it:
//! ```compile_fail,E0451
//! fn forge() -> version_c::hostfs::FileName {
//!     version_c::hostfs::FileName { bytes: [b'.'; 255], len: 2 }
//! }
//! ```
#![deny(unsafe_code, unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod hostfs;
pub mod kvm;
pub mod signals;
