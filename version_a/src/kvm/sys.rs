//! `<linux/kvm.h>`, the part this hypervisor uses, declared by hand: ioctl numbers built from
//! their argument *type* by `const fn` encoders (`_IO`, `_IOR`, `_IOW`), and the `#[repr(C)]`
//! structs with the C field names (`type_` for `type`) and their padding spelled out.
//!
//! C counterpart: the `#include <linux/kvm.h>` at the top of `mini_hypervisor.c`.
//! `tests/layout.rs` compares every number, size and offset here with what the C compiler
//! computes from the kernel's own header.
#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::mem::size_of;

// asm-generic/ioctl.h (x86-64): nr 8 bits @0, type 8 bits @8, size 14 bits @16, dir 2 bits @30.
const IOC_NONE: u32 = 0;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;
const KVMIO: u32 = 0xAE;

/// An ioctl request whose type says what it takes: its kind ([`Read`], [`Write`], [`Value`],
/// [`NewFd`]) and its argument `T`, from which its number is built, so that it can be called
/// only with its own argument type (`kvm/mod.rs` has the calls).
#[derive(Debug)]
pub struct Ioctl<K, T> {
    pub(super) number: u64,
    pub(super) name: &'static str,
    pub(super) kind: PhantomData<fn() -> (K, T)>,
}

/// The kernel writes a `T` (`_IOR`).
#[derive(Debug)]
pub enum Read {}
/// The kernel reads a `T` (`_IOW`).
#[derive(Debug)]
pub enum Write {}
/// No pointer: an integer argument and an integer result (`_IO`).
#[derive(Debug)]
pub enum Value {}
/// No pointer: an integer argument, and the result is a new file descriptor (`_IO`).
#[derive(Debug)]
pub enum NewFd {}

const fn ioc(dir: u32, nr: u32, size: usize) -> u64 {
    assert!(size < (1 << 14), "argument too large for _IOC_SIZEBITS");
    ((dir << 30) | ((size as u32) << 16) | (KVMIO << 8) | nr) as u64
}

/// `_IO(KVMIO, nr)`.
const fn io<K>(nr: u32, name: &'static str) -> Ioctl<K, ()> {
    Ioctl { number: ioc(IOC_NONE, nr, 0), name, kind: PhantomData }
}

/// `_IOR(KVMIO, nr, T)`.
const fn ior<T>(nr: u32, name: &'static str) -> Ioctl<Read, T> {
    Ioctl { number: ioc(IOC_READ, nr, size_of::<T>()), name, kind: PhantomData }
}

/// `_IOW(KVMIO, nr, T)`.
const fn iow<T>(nr: u32, name: &'static str) -> Ioctl<Write, T> {
    Ioctl { number: ioc(IOC_WRITE, nr, size_of::<T>()), name, kind: PhantomData }
}

impl<K, T> Ioctl<K, T> {
    /// The request number, as `<linux/kvm.h>` computes it (`tests/layout.rs` compares them).
    pub const fn number(&self) -> u64 {
        self.number
    }
}

pub const KVM_GET_API_VERSION: Ioctl<Value, ()> = io(0x00, "KVM_GET_API_VERSION");
pub const KVM_CREATE_VM: Ioctl<NewFd, ()> = io(0x01, "KVM_CREATE_VM");
pub const KVM_CHECK_EXTENSION: Ioctl<Value, ()> = io(0x03, "KVM_CHECK_EXTENSION");
pub const KVM_GET_VCPU_MMAP_SIZE: Ioctl<Value, ()> = io(0x04, "KVM_GET_VCPU_MMAP_SIZE");
pub const KVM_CREATE_VCPU: Ioctl<NewFd, ()> = io(0x41, "KVM_CREATE_VCPU");
/// Not [`Pod`]: the region carries a host address that the kernel keeps using, so no safe
/// call takes it; only `Machine::new` registers guest RAM (an `unsafe` block in `kvm/mod.rs`).
pub const KVM_SET_USER_MEMORY_REGION: Ioctl<Write, KvmUserspaceMemoryRegion> = iow(0x46, "KVM_SET_USER_MEMORY_REGION");
pub const KVM_REGISTER_COALESCED_MMIO: Ioctl<Write, KvmCoalescedMmioZone> = iow(0x67, "KVM_REGISTER_COALESCED_MMIO");
pub const KVM_RUN: Ioctl<Value, ()> = io(0x80, "KVM_RUN");
pub const KVM_GET_REGS: Ioctl<Read, KvmRegs> = ior(0x81, "KVM_GET_REGS");
pub const KVM_SET_REGS: Ioctl<Write, KvmRegs> = iow(0x82, "KVM_SET_REGS");
pub const KVM_GET_SREGS: Ioctl<Read, KvmSregs> = ior(0x83, "KVM_GET_SREGS");
pub const KVM_SET_SREGS: Ioctl<Write, KvmSregs> = iow(0x84, "KVM_SET_SREGS");
/// `_IOW(KVMIO, 0x8b, struct kvm_signal_mask)`: the size encoded is that of the 4-byte header
/// (`len`), not of the [`KvmSignalMask`] (header and mask) that the kernel reads.
pub const KVM_SET_SIGNAL_MASK: Ioctl<Write, KvmSignalMask> =
    Ioctl { number: ioc(IOC_WRITE, 0x8b, 4), name: "KVM_SET_SIGNAL_MASK", kind: PhantomData };
pub const KVM_SET_GUEST_DEBUG: Ioctl<Write, KvmGuestDebug> = iow(0x9b, "KVM_SET_GUEST_DEBUG");

/// The only API version there has ever been (`KVM_API_VERSION`).
pub const KVM_API_VERSION: i32 = 12;
/// `KVM_CAP_COALESCED_MMIO`: the page offset of the coalesced ring in the vCPU mapping (0: none).
pub const KVM_CAP_COALESCED_MMIO: u64 = 15;
/// `KVM_CAP_COALESCED_PIO`: a coalesced zone may cover I/O ports (Linux 4.19+).
pub const KVM_CAP_COALESCED_PIO: u64 = 162;

// Exit reasons (`kvm_run.exit_reason`).
pub const KVM_EXIT_IO: u32 = 2;
pub const KVM_EXIT_DEBUG: u32 = 4;
pub const KVM_EXIT_HLT: u32 = 5;
pub const KVM_EXIT_MMIO: u32 = 6;
pub const KVM_EXIT_SHUTDOWN: u32 = 8;
pub const KVM_EXIT_FAIL_ENTRY: u32 = 9;
pub const KVM_EXIT_INTR: u32 = 10;
pub const KVM_EXIT_INTERNAL_ERROR: u32 = 17;
pub const KVM_EXIT_IO_IN: u8 = 0;
pub const KVM_EXIT_IO_OUT: u8 = 1;

// `kvm_guest_debug.control` bits.
pub const KVM_GUESTDBG_ENABLE: u32 = 0x1;
pub const KVM_GUESTDBG_SINGLESTEP: u32 = 0x2;
pub const KVM_GUESTDBG_USE_HW_BP: u32 = 0x2_0000;

/// `struct kvm_regs`: the general-purpose registers.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// `struct kvm_segment`: a segment register with its hidden descriptor part.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmSegment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    pub type_: u8,
    pub present: u8,
    pub dpl: u8,
    pub db: u8,
    pub s: u8,
    pub l: u8,
    pub g: u8,
    pub avl: u8,
    pub unusable: u8,
    pub padding: u8,
}

/// `struct kvm_dtable`: GDTR / IDTR.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmDtable {
    pub base: u64,
    pub limit: u16,
    pub padding: [u16; 3],
}

/// `struct kvm_sregs`: segments, descriptor tables, control registers, EFER.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmSregs {
    pub cs: KvmSegment,
    pub ds: KvmSegment,
    pub es: KvmSegment,
    pub fs: KvmSegment,
    pub gs: KvmSegment,
    pub ss: KvmSegment,
    pub tr: KvmSegment,
    pub ldt: KvmSegment,
    pub gdt: KvmDtable,
    pub idt: KvmDtable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
    /// `(KVM_NR_INTERRUPTS + 63) / 64` words.
    pub interrupt_bitmap: [u64; 4],
}

/// `struct kvm_userspace_memory_region`: one slot of guest-physical memory.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmUserspaceMemoryRegion {
    pub slot: u32,
    pub flags: u32,
    pub guest_phys_addr: u64,
    pub memory_size: u64,
    pub userspace_addr: u64,
}

/// `struct kvm_guest_debug` (x86: `arch` is `struct kvm_guest_debug_arch { __u64 debugreg[8]; }`):
/// which debug features KVM turns on for the vCPU, and the debug registers DR0–DR7 it loads.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmGuestDebug {
    pub control: u32,
    pub pad: u32,
    pub debugreg: [u64; 8],
}

/// `struct kvm_coalesced_mmio_zone`: a range of guest-physical addresses (or, with `pio = 1`,
/// of I/O ports) whose writes KVM queues in the coalesced ring instead of exiting.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmCoalescedMmioZone {
    pub addr: u64,
    pub size: u32,
    /// A union in C: `pad` before Linux 4.19, `pio` since.
    pub pio: u32,
}

/// `struct kvm_coalesced_mmio`: one queued write in the ring.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmCoalescedMmio {
    pub phys_addr: u64,
    pub len: u32,
    /// A union in C: `pad` before Linux 4.19, `pio` since.
    pub pio: u32,
    pub data: [u8; 8],
}

/// `struct kvm_signal_mask` followed by the mask it announces: `len` is the size of the
/// kernel's `sigset_t` (8 on x86-64), then the mask, bit `n - 1` for signal `n`: the thread's
/// mask while its vCPU is inside `KVM_RUN`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmSignalMask {
    pub len: u32,
    pub sigset: [u32; 2],
}

// `struct kvm_run` is 2352 bytes, most of which we never touch. We declare the offsets we read
// and the small exit structs that live in its union at offset 32, and read them by value.

/// Offset of `kvm_run.exit_reason` (u32).
pub const RUN_EXIT_REASON: usize = 8;
/// Offset of the exit union in `kvm_run`.
pub const RUN_EXIT_UNION: usize = 32;
/// Offset of `kvm_run.kvm_valid_regs` (u64): the register sets KVM stores into `kvm_run.s` at
/// every exit (`KVM_CAP_SYNC_REGS`, Linux 4.16).
pub const RUN_VALID_REGS: usize = 288;
/// Offset of `kvm_run.s.regs`: the stored `kvm_regs`, followed by the stored `kvm_sregs`.
pub const RUN_SYNC_REGS: usize = 304;
/// `kvm_valid_regs` bits: the general registers, the system registers.
pub const KVM_SYNC_X86_REGS: u64 = 1;
pub const KVM_SYNC_X86_SREGS: u64 = 2;
/// RFLAGS bit 1: reserved, always 1.
pub const RFLAGS_FIXED: u64 = 0x2;
/// Offsets in `struct kvm_coalesced_mmio_ring` (at its page of the vCPU mapping): the indices
/// `first` (we consume from it) and `last` (KVM adds at it), then the entries.
pub const RING_FIRST: usize = 0;
pub const RING_LAST: usize = 4;
pub const RING_ENTRIES: usize = 8;

/// `kvm_run.io`, valid when `exit_reason == KVM_EXIT_IO`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmRunIo {
    pub direction: u8,
    pub size: u8,
    pub port: u16,
    pub count: u32,
    /// From the start of the run area (not of the struct), usually one page in.
    pub data_offset: u64,
}

/// `kvm_run.mmio`, valid when `exit_reason == KVM_EXIT_MMIO`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmRunMmio {
    pub phys_addr: u64,
    pub data: [u8; 8],
    pub len: u32,
    pub is_write: u8,
    pub padding: [u8; 3],
}

/// `kvm_run.fail_entry`, valid when `exit_reason == KVM_EXIT_FAIL_ENTRY`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmRunFailEntry {
    pub hardware_entry_failure_reason: u64,
    pub cpu: u32,
    pub padding: u32,
}

/// The first fields of `kvm_run.internal`, valid when `exit_reason == KVM_EXIT_INTERNAL_ERROR`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmRunInternal {
    pub suberror: u32,
    pub ndata: u32,
}

/// `kvm_run.debug.arch` (`struct kvm_debug_exit_arch`), valid when `exit_reason == KVM_EXIT_DEBUG`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvmDebugExitArch {
    pub exception: u32,
    pub pad: u32,
    pub pc: u64,
    pub dr6: u64,
    pub dr7: u64,
}

/// Plain-old-data: the only types the safe calls of `kvm/mod.rs` copy out of a mapping or hand
/// to an ioctl (not [`KvmUserspaceMemoryRegion`], see [`KVM_SET_USER_MEMORY_REGION`]).
///
/// # Safety
/// Implementors must be `#[repr(C)]`, contain only integer fields, arrays of them and other `Pod`
/// structs, have no padding bytes that are not spelled out as fields (so every bit pattern is a
/// valid value and every byte initialised), and hold no field the kernel takes for an address.
pub unsafe trait Pod: Copy + Default {}
// SAFETY: each of these is a #[repr(C)] struct of integers (or of other such structs) with
// explicit padding fields (tests/layout.rs checks their sizes and offsets against the C header:
// no hidden gaps), and none has a field the kernel takes for an address (KvmRunIo's
// `data_offset` is an offset into the run area, read by us, never passed back).
unsafe impl Pod for KvmRegs {}
// SAFETY: as above.
unsafe impl Pod for KvmSregs {}
// SAFETY: as above.
unsafe impl Pod for KvmGuestDebug {}
// SAFETY: as above.
unsafe impl Pod for KvmCoalescedMmioZone {}
// SAFETY: as above.
unsafe impl Pod for KvmCoalescedMmio {}
// SAFETY: as above.
unsafe impl Pod for KvmRunIo {}
// SAFETY: as above.
unsafe impl Pod for KvmRunMmio {}
// SAFETY: as above.
unsafe impl Pod for KvmRunFailEntry {}
// SAFETY: as above.
unsafe impl Pod for KvmRunInternal {}
// SAFETY: as above.
unsafe impl Pod for KvmDebugExitArch {}
// SAFETY: as above; the kernel reads the 4-byte header (`len` = 8), then the 8 bytes of mask
// that follow it, all inside this 12-byte value.
unsafe impl Pod for KvmSignalMask {}
// SAFETY: u32 is an integer.
unsafe impl Pod for u32 {}
