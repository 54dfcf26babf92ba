//! The FFI room: every `unsafe` of this crate is in this file (version C has a second one,
//! `hostfs.rs`, for host files).
//!
//! C counterpart: `vm_init` and `vm_destroy` (open `/dev/kvm`, create the VM and its memory
//! slot, create the vCPU and map its `kvm_run` area; then unmap and close it all).
//!
//! What is here, top to bottom:
//! 1. ioctl numbers, built from the argument *type* by `const fn` encoders (`_IO`, `_IOR`, `_IOW`);
//! 2. the `#[repr(C)]` structs of `<linux/kvm.h>` that we use, with compile-time layout checks
//!    (and `tests/layout.rs` compares all of it with what gcc computes from the real header);
//! 3. the ioctl calls themselves, one typed wrapper per kind of argument;
//! 4. [`Mmap`]: an owned memory mapping (guest RAM, the vCPU's run area), reached only by
//!    bounds-checked copies;
//! 5. [`Kvm`], [`VmFd`], [`Vcpu`] and [`Vm`], which bundles them as the C's `vm_init` does;
//! 6. decoding of `kvm_run` into a typed [`VcpuExit`], and the coalesced serial ring;
//! 7. [`Kick`]: asking a vCPU, from another thread, to leave `KVM_RUN` (`immediate_exit` + a
//!    signal), to stop for good or only to pause; and the blocking and waiting of
//!    SIGINT/SIGTERM, which stop every VM.
//! 8. [`Kick::run_here`]: one VM on the main thread, with signal handlers doing what the
//!    watchdog's threads do for several VMs (a process that starts no thread starts faster).
//!
//! What two threads share, and how: a [`Vcpu`] and an [`Mmap`] are `Send` (a VM moves to its
//! thread) but not `Sync`, so nothing but their owner's thread can copy in or out of guest RAM
//! or the run area. The only bytes another thread touches are `kvm_run.immediate_exit` and the
//! two indices of the coalesced ring, through the [`Kick`] handle, which is `Sync` and exposes
//! them only as atomics.
//!
//! Everything outside the FFI rooms is safe Rust: the crate root denies `unsafe_code`, they
//! alone allow it, and every other module forbids it.
#![allow(unsafe_code)]
// One file for all three versions (and for tests/layout.rs): each uses a part of it (only
// version C's file port uses `Mmap::ptr_at`, for instance).
#![allow(dead_code)]

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// 1. ioctl numbers
// ---------------------------------------------------------------------------------------------

// asm-generic/ioctl.h (x86-64): nr 8 bits @0, type 8 bits @8, size 14 bits @16, dir 2 bits @30.
const IOC_NONE: u32 = 0;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;
const KVMIO: u32 = 0xAE;

const fn ioc(dir: u32, nr: u32, size: usize) -> u64 {
    assert!(size < (1 << 14), "argument too large for _IOC_SIZEBITS");
    ((dir << 30) | ((size as u32) << 16) | (KVMIO << 8) | nr) as u64
}
/// `_IO(KVMIO, nr)`: no argument, or an integer argument.
const fn io(nr: u32) -> u64 {
    ioc(IOC_NONE, nr, 0)
}
/// `_IOR(KVMIO, nr, T)`: the kernel writes a `T`.
const fn ior<T>(nr: u32) -> u64 {
    ioc(IOC_READ, nr, size_of::<T>())
}
/// `_IOW(KVMIO, nr, T)`: the kernel reads a `T`.
const fn iow<T>(nr: u32) -> u64 {
    ioc(IOC_WRITE, nr, size_of::<T>())
}

pub const KVM_GET_API_VERSION: u64 = io(0x00);
pub const KVM_CREATE_VM: u64 = io(0x01);
pub const KVM_CHECK_EXTENSION: u64 = io(0x03);
pub const KVM_GET_VCPU_MMAP_SIZE: u64 = io(0x04);
pub const KVM_CREATE_VCPU: u64 = io(0x41);
pub const KVM_SET_USER_MEMORY_REGION: u64 = iow::<KvmUserspaceMemoryRegion>(0x46);
pub const KVM_REGISTER_COALESCED_MMIO: u64 = iow::<KvmCoalescedMmioZone>(0x67);
pub const KVM_RUN: u64 = io(0x80);
pub const KVM_GET_REGS: u64 = ior::<KvmRegs>(0x81);
pub const KVM_SET_REGS: u64 = iow::<KvmRegs>(0x82);
pub const KVM_GET_SREGS: u64 = ior::<KvmSregs>(0x83);
pub const KVM_SET_SREGS: u64 = iow::<KvmSregs>(0x84);
pub const KVM_SET_GUEST_DEBUG: u64 = iow::<KvmGuestDebug>(0x9b);

// The literals, checked against gcc on this machine (see also tests/layout.rs).
const _: () = assert!(KVM_GET_API_VERSION == 0xAE00);
const _: () = assert!(KVM_CREATE_VM == 0xAE01);
const _: () = assert!(KVM_CHECK_EXTENSION == 0xAE03);
const _: () = assert!(KVM_GET_VCPU_MMAP_SIZE == 0xAE04);
const _: () = assert!(KVM_CREATE_VCPU == 0xAE41);
const _: () = assert!(KVM_SET_USER_MEMORY_REGION == 0x4020_AE46);
const _: () = assert!(KVM_REGISTER_COALESCED_MMIO == 0x4010_AE67);
const _: () = assert!(KVM_RUN == 0xAE80);
const _: () = assert!(KVM_GET_REGS == 0x8090_AE81);
const _: () = assert!(KVM_SET_REGS == 0x4090_AE82);
const _: () = assert!(KVM_GET_SREGS == 0x8138_AE83);
const _: () = assert!(KVM_SET_SREGS == 0x4138_AE84);
const _: () = assert!(KVM_SET_GUEST_DEBUG == 0x4048_AE9B);

/// The only API version there has ever been (`KVM_API_VERSION`).
pub const KVM_API_VERSION: i32 = 12;
/// `KVM_CAP_COALESCED_MMIO`: the page offset of the coalesced ring in the vCPU mapping (0: none).
pub const KVM_CAP_COALESCED_MMIO: u64 = 15;
/// `KVM_CAP_IMMEDIATE_EXIT`: `kvm_run.immediate_exit` is honoured (Linux 4.11+).
pub const KVM_CAP_IMMEDIATE_EXIT: u64 = 136;
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

// ---------------------------------------------------------------------------------------------
// 2. Structs of <linux/kvm.h>, field names as in C (`type_` for `type`), padding spelled out
// ---------------------------------------------------------------------------------------------

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

// `struct kvm_run` is 2352 bytes, most of which we never touch. We declare the offsets we read
// and the small exit structs that live in its union at offset 32, and read them by value.

/// Offset of `kvm_run.immediate_exit` (u8).
pub const RUN_IMMEDIATE_EXIT: usize = 1;
/// Offset of `kvm_run.exit_reason` (u32).
pub const RUN_EXIT_REASON: usize = 8;
/// Offset of the exit union in `kvm_run`.
pub const RUN_EXIT_UNION: usize = 32;
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

// A wrong layout does not build.
const _: () = {
    assert!(size_of::<KvmRegs>() == 144 && align_of::<KvmRegs>() == 8);
    assert!(offset_of!(KvmRegs, rip) == 128 && offset_of!(KvmRegs, rflags) == 136);
    assert!(size_of::<KvmSegment>() == 24);
    assert!(offset_of!(KvmSegment, limit) == 8 && offset_of!(KvmSegment, selector) == 12);
    assert!(offset_of!(KvmSegment, type_) == 14 && offset_of!(KvmSegment, unusable) == 22);
    assert!(size_of::<KvmDtable>() == 16 && offset_of!(KvmDtable, limit) == 8);
    assert!(size_of::<KvmSregs>() == 312 && align_of::<KvmSregs>() == 8);
    assert!(offset_of!(KvmSregs, gdt) == 192 && offset_of!(KvmSregs, idt) == 208);
    assert!(offset_of!(KvmSregs, cr0) == 224 && offset_of!(KvmSregs, cr3) == 240);
    assert!(offset_of!(KvmSregs, cr4) == 248 && offset_of!(KvmSregs, efer) == 264);
    assert!(offset_of!(KvmSregs, interrupt_bitmap) == 280);
    assert!(size_of::<KvmUserspaceMemoryRegion>() == 32);
    assert!(offset_of!(KvmUserspaceMemoryRegion, userspace_addr) == 24);
    assert!(size_of::<KvmGuestDebug>() == 72 && offset_of!(KvmGuestDebug, debugreg) == 8);
    assert!(size_of::<KvmCoalescedMmioZone>() == 16 && offset_of!(KvmCoalescedMmioZone, pio) == 12);
    assert!(size_of::<KvmCoalescedMmio>() == 24 && offset_of!(KvmCoalescedMmio, data) == 16);
    assert!(size_of::<KvmRunIo>() == 16 && offset_of!(KvmRunIo, count) == 4);
    assert!(offset_of!(KvmRunIo, data_offset) == 8);
    assert!(size_of::<KvmRunMmio>() == 24 && offset_of!(KvmRunMmio, len) == 16);
    assert!(offset_of!(KvmRunMmio, is_write) == 20);
    assert!(size_of::<KvmRunFailEntry>() == 16 && offset_of!(KvmRunFailEntry, cpu) == 8);
    assert!(size_of::<KvmRunInternal>() == 8 && offset_of!(KvmRunInternal, ndata) == 4);
    assert!(size_of::<KvmDebugExitArch>() == 32 && offset_of!(KvmDebugExitArch, pc) == 8);
};

/// Plain-old-data types that may be created from any bytes (all fields are integers).
///
/// # Safety
/// Implementors must be `#[repr(C)]`, contain only integer fields, arrays of them and other
/// `Pod` structs, and have no padding bytes that are not spelled out as fields: then every bit
/// pattern is a valid value, and every byte of a value is initialised.
pub unsafe trait Pod: Copy + Default {}
// SAFETY: all of these are #[repr(C)] structs of integers (and, for KvmSregs, of KvmSegment and
// KvmDtable, which are too) with explicit padding fields; the const block above checks that
// their sizes leave no hidden gaps.
unsafe impl Pod for KvmRegs {}
// SAFETY: as above.
unsafe impl Pod for KvmSregs {}
// SAFETY: as above.
unsafe impl Pod for KvmUserspaceMemoryRegion {}
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
// SAFETY: u32 and u64 are integers.
unsafe impl Pod for u32 {}
// SAFETY: as above.
unsafe impl Pod for u64 {}

// ---------------------------------------------------------------------------------------------
// 3. ioctl calls
// ---------------------------------------------------------------------------------------------

/// Issues `ioctl(fd, req, arg)` and turns a negative result into an `io::Error` that names the ioctl.
///
/// # Safety
/// `arg` must be what the kernel expects for `req`: an integer for `_IO` requests, or a pointer
/// to a live object of exactly the encoded size (writable if the kernel writes it, i.e. `_IOR`).
// SAFETY: unsafe because `arg` may be a pointer the kernel reads or writes through; the
// contract above says what the caller must guarantee. Callers: `ioctl_read`, `ioctl_write`,
// `ioctl_val`, each of which checks its part.
unsafe fn ioctl(fd: &File, req: u64, name: &str, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: forwarded from this function's contract; `fd` is an open descriptor we own.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if r < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{name}: {e}")))
    } else {
        Ok(r)
    }
}

/// The argument size encoded in an ioctl number (`_IOC_SIZE`).
const fn ioc_size(req: u64) -> usize {
    ((req >> 16) & 0x3fff) as usize
}

/// The direction encoded in an ioctl number (`_IOC_DIR`): `IOC_NONE`, `IOC_READ`, `IOC_WRITE`.
const fn ioc_dir(req: u64) -> u32 {
    ((req >> 30) & 3) as u32
}

/// An `_IOR` ioctl: the kernel fills a `T`. Refuses (panics on) a request that is not `_IOR`
/// or whose encoded size is not `T`'s: a programming error that would let the kernel write
/// past the value.
fn ioctl_read<T: Pod>(fd: &File, req: u64, name: &str) -> io::Result<T> {
    assert!(ioc_dir(req) == IOC_READ && ioc_size(req) == size_of::<T>(), "{name}: not an _IOR of this type");
    let mut value = T::default();
    let arg = &mut value as *mut T as libc::c_ulong;
    // SAFETY: `arg` points to a live, writable `T` whose size is the one encoded in `req`
    // (asserted above), so the kernel writes only inside it; `T: Pod` makes any bytes it
    // writes a valid `T`.
    unsafe { ioctl(fd, req, name, arg) }?;
    Ok(value)
}

/// An `_IOW` ioctl: the kernel reads a `T`. Same checks as [`ioctl_read`], for `_IOW`.
fn ioctl_write<T: Pod>(fd: &File, req: u64, name: &str, value: &T) -> io::Result<()> {
    assert!(ioc_dir(req) == IOC_WRITE && ioc_size(req) == size_of::<T>(), "{name}: not an _IOW of this type");
    let arg = value as *const T as libc::c_ulong;
    // SAFETY: `arg` points to a live `T` whose size is the one encoded in `req` (asserted
    // above), which the kernel only reads; `T: Pod` has no uninitialised padding to leak.
    unsafe { ioctl(fd, req, name, arg) }?;
    Ok(())
}

/// An `_IO` ioctl with an integer argument. Refuses (panics on) any other kind of request,
/// whose argument the kernel would take for an address.
fn ioctl_val(fd: &File, req: u64, name: &str, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    assert!(ioc_dir(req) == IOC_NONE && ioc_size(req) == 0, "{name}: not an _IO request");
    // SAFETY: `req` is an `_IO` request (asserted above): the kernel takes `arg` as a plain
    // integer and never dereferences it.
    unsafe { ioctl(fd, req, name, arg) }
}

/// Wraps a file descriptor that an ioctl returned, so that every path closes it.
///
/// # Safety
/// `raw` must be an open descriptor that nothing else owns or will close (e.g. just returned
/// by `KVM_CREATE_VM` / `KVM_CREATE_VCPU`).
// SAFETY: unsafe because adopting a descriptor someone else owns would close it twice; the
// contract above says what the caller must guarantee.
unsafe fn owned_fd(raw: libc::c_int) -> File {
    // SAFETY: forwarded from this function's contract.
    File::from(unsafe { OwnedFd::from_raw_fd(raw) })
}

// ---------------------------------------------------------------------------------------------
// 4. Memory mappings
// ---------------------------------------------------------------------------------------------

/// The owner of one mapping: it knows where the mapping is and unmaps it when dropped, and
/// offers no access to the memory at all ([`Mmap`] copies in and out; [`Kick`] reaches a few
/// bytes of the run area as atomics).
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `Mapping` itself never reads or writes the memory; it only holds its address and
// unmaps it in `drop`, which munmap allows from any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above: through `&Mapping` nothing touches the memory.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping we created (`Mmap::from_raw`) and own alone;
        // it is unmapped once, here, when the last owner goes, so no pointer into it outlives it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// An owned memory mapping (guest RAM, or a vCPU's `kvm_run` area), unmapped on drop.
///
/// Access goes only through bounds-checked copies: no `&[u8]` into the mapping is ever
/// handed out, because the guest and the kernel write to it behind Rust's back. `Send` (a VM
/// moves to its thread) but not `Sync`: two threads could otherwise copy in and out of the same
/// bytes at once, a data race.
#[derive(Debug)]
pub struct Mmap {
    map: Arc<Mapping>,
    /// Not `Sync` (a `Cell` is not), whatever `Arc<Mapping>` is.
    not_sync: PhantomData<Cell<()>>,
}

impl Mmap {
    /// Private anonymous memory, zero-filled, faulted in only where touched (guest RAM).
    pub fn anonymous(len: usize) -> io::Result<Mmap> {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choice cannot alias
        // anything; the result is checked before use.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, PROT_RW, flags, -1, 0) };
        // SAFETY: `p` is what mmap just returned for `len` bytes, and nothing else owns it.
        unsafe { Self::from_raw(p, len, "mmap guest RAM") }
    }

    /// A shared mapping of `len` bytes of `fd` from offset 0 (the vCPU's `kvm_run` area).
    fn shared(fd: &File, len: usize) -> io::Result<Mmap> {
        let raw = fd.as_raw_fd();
        // SAFETY: maps `len` bytes of an open vCPU fd at an address of the kernel's choice;
        // the result is checked before use.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, PROT_RW, libc::MAP_SHARED, raw, 0) };
        // SAFETY: `p` is what mmap just returned for `len` bytes, and nothing else owns it.
        unsafe { Self::from_raw(p, len, "mmap kvm_run") }
    }

    /// Takes ownership of what `mmap(2)` returned.
    ///
    /// # Safety
    /// `p` must be `MAP_FAILED` or the start of a readable and writable mapping of `len` bytes
    /// that nothing else owns or will unmap.
    // SAFETY: unsafe because the returned value unmaps `p` when dropped and copies into it;
    // the contract above says what the caller must guarantee.
    unsafe fn from_raw(p: *mut libc::c_void, len: usize, what: &str) -> io::Result<Mmap> {
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned 0"))?;
        Ok(Mmap { map: Arc::new(Mapping { ptr, len }), not_sync: PhantomData })
    }

    pub fn len(&self) -> usize {
        self.map.len
    }

    /// The host address of the mapping, for `KVM_SET_USER_MEMORY_REGION`.
    fn addr(&self) -> u64 {
        self.map.ptr.as_ptr() as u64
    }

    fn check(&self, off: usize, n: usize) -> io::Result<()> {
        match off.checked_add(n) {
            Some(end) if end <= self.map.len => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("access [{off:#x}, +{n:#x}) outside mapping of {:#x} bytes", self.map.len),
            )),
        }
    }

    /// The address of `[off, off + n)` inside the mapping, after checking that it is inside.
    fn at(&self, off: usize, n: usize) -> io::Result<*mut u8> {
        self.check(off, n)?;
        Ok(self.map.ptr.as_ptr().wrapping_add(off))
    }

    /// The host address of `[off, off + n)` after checking that it lies inside the mapping,
    /// for the FFI that moves file data straight into or out of guest RAM (version C's
    /// `hostfs.rs`). The pointer is valid while `self` is alive; use it for no reference.
    pub fn ptr_at(&self, off: usize, n: usize) -> io::Result<*mut u8> {
        self.at(off, n)
    }

    /// Copies `dst.len()` bytes at `off` out of the mapping.
    pub fn read(&self, off: usize, dst: &mut [u8]) -> io::Result<()> {
        let src = self.at(off, dst.len())?;
        // SAFETY: `src` is the start of `dst.len()` bytes inside the mapping (`at` checked);
        // `dst` is ordinary host memory, so it cannot overlap the mapping; no reference into
        // the mapping exists, and no other thread copies in or out (`Mmap` is not `Sync`).
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Copies `src` into the mapping at `off`.
    pub fn write(&self, off: usize, src: &[u8]) -> io::Result<()> {
        let dst = self.at(off, src.len())?;
        // SAFETY: as in `read`, with the roles swapped.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        Ok(())
    }

    /// Reads a plain-old-data value at `off` (any alignment).
    pub fn read_obj<T: Pod>(&self, off: usize) -> io::Result<T> {
        let src = self.at(off, size_of::<T>())?.cast::<T>();
        // SAFETY: the bytes are inside the mapping (`at` checked); `T: Pod` makes every bit
        // pattern a valid `T`; `read_unaligned` has no alignment requirement; no other thread
        // writes them (`Mmap` is not `Sync`).
        Ok(unsafe { src.read_unaligned() })
    }
}

const PROT_RW: libc::c_int = libc::PROT_READ | libc::PROT_WRITE;
/// The page size of x86-64, which KVM uses for the pages of the vCPU mapping.
const PAGE_SIZE: usize = 4096;

/// A vCPU's `kvm_run` area. Only the owning thread copies in and out of it, and never the
/// bytes that [`Kick`] reaches from other threads as atomics (`immediate_exit`, and the
/// indices of the coalesced ring): those ranges are refused here.
#[derive(Debug)]
struct RunArea {
    map: Mmap,
    /// Offset of the coalesced ring's page, when KVM has one inside this mapping.
    ring: Option<usize>,
}

impl RunArea {
    fn check_plain(&self, off: usize, n: usize) -> io::Result<()> {
        let overlaps = |start: usize, len: usize| off < start + len && off.saturating_add(n) > start;
        if n > 0 && (overlaps(0, RUN_EXIT_REASON) || self.ring.is_some_and(|r| overlaps(r, RING_ENTRIES))) {
            return Err(io::Error::other(format!("run area [{off:#x}, +{n:#x}) holds bytes shared as atomics")));
        }
        Ok(())
    }

    fn read(&self, off: usize, dst: &mut [u8]) -> io::Result<()> {
        self.check_plain(off, dst.len())?;
        self.map.read(off, dst)
    }

    fn write(&self, off: usize, src: &[u8]) -> io::Result<()> {
        self.check_plain(off, src.len())?;
        self.map.write(off, src)
    }

    fn read_obj<T: Pod>(&self, off: usize) -> io::Result<T> {
        self.check_plain(off, size_of::<T>())?;
        self.map.read_obj(off)
    }
}

// ---------------------------------------------------------------------------------------------
// 5. /dev/kvm, the VM, the vCPU
// ---------------------------------------------------------------------------------------------

/// `/dev/kvm`, the system fd.
#[derive(Debug)]
pub struct Kvm {
    fd: File,
}

impl Kvm {
    /// Opens `/dev/kvm` read-write (std sets `O_CLOEXEC`) and checks the API version.
    pub fn open() -> io::Result<Kvm> {
        let fd = File::options().read(true).write(true).open("/dev/kvm")?;
        let kvm = Kvm { fd };
        let version = ioctl_val(&kvm.fd, KVM_GET_API_VERSION, "KVM_GET_API_VERSION", 0)?;
        if version != KVM_API_VERSION {
            return Err(io::Error::other(format!("KVM_GET_API_VERSION: got {version}, need {KVM_API_VERSION}")));
        }
        Ok(kvm)
    }

    /// `KVM_CHECK_EXTENSION`: 0 when the capability is missing.
    pub fn check_extension(&self, cap: u64) -> io::Result<i32> {
        ioctl_val(&self.fd, KVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION", cap as libc::c_ulong)
    }

    /// `KVM_GET_VCPU_MMAP_SIZE`: how much of a vCPU fd to map (the `kvm_run` struct plus the
    /// PIO data page and the coalesced ring; 12288 bytes on current kernels).
    pub fn vcpu_mmap_size(&self) -> io::Result<usize> {
        let n = ioctl_val(&self.fd, KVM_GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE", 0)?;
        Ok(n as usize)
    }

    /// `KVM_CREATE_VM` with the default machine type.
    pub fn create_vm(&self) -> io::Result<VmFd> {
        let raw = ioctl_val(&self.fd, KVM_CREATE_VM, "KVM_CREATE_VM", 0)?;
        // SAFETY: KVM_CREATE_VM just returned `raw`, a new descriptor nothing else owns.
        Ok(VmFd { fd: unsafe { owned_fd(raw) } })
    }

    /// Where the coalesced ring is in a vCPU mapping of `mmap_size` bytes, if this KVM can
    /// coalesce port writes into it (`KVM_CAP_COALESCED_PIO`).
    fn coalesced_ring(&self, mmap_size: usize) -> Option<usize> {
        let page = usize::try_from(self.check_extension(KVM_CAP_COALESCED_MMIO).ok()?).ok()?;
        let pio = self.check_extension(KVM_CAP_COALESCED_PIO).ok()? > 0;
        let off = page.checked_mul(PAGE_SIZE)?;
        (pio && page > 0 && off.checked_add(PAGE_SIZE)? <= mmap_size).then_some(off)
    }
}

/// A VM fd.
#[derive(Debug)]
pub struct VmFd {
    fd: File,
}

impl VmFd {
    /// Registers `mem` as guest-physical memory `[gpa, gpa + mem.len())` in `slot`.
    ///
    /// # Safety
    /// `mem` must outlive this VM (the kernel keeps writing into it while the guest runs) and
    /// must not overlap the memory of another slot.
    // SAFETY: unsafe because the kernel keeps writing into `mem` after the call returns; the
    // one caller, `Vm::new`, keeps `mem` in the same `Vm` as the VM fd and drops it last.
    pub unsafe fn set_user_memory_region(&self, slot: u32, gpa: u64, mem: &Mmap) -> io::Result<()> {
        let region = KvmUserspaceMemoryRegion {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: mem.len() as u64,
            userspace_addr: mem.addr(),
        };
        // The kernel copies `region` and keeps using `mem` through `userspace_addr`: that is why
        // this function is unsafe (its caller keeps `mem` alive), not the call itself.
        ioctl_write(&self.fd, KVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION", &region)
    }

    /// `KVM_REGISTER_COALESCED_MMIO` with `pio = 1`: from now on KVM queues the guest's writes
    /// to ports `[port, port + size)` in the coalesced ring instead of exiting for each.
    pub fn register_coalesced_pio(&self, port: u16, size: u32) -> io::Result<()> {
        let zone = KvmCoalescedMmioZone { addr: u64::from(port), size, pio: 1 };
        ioctl_write(&self.fd, KVM_REGISTER_COALESCED_MMIO, "KVM_REGISTER_COALESCED_MMIO", &zone)
    }

    /// `KVM_CREATE_VCPU` and the mapping of its `kvm_run` area (`mmap_size` from
    /// [`Kvm::vcpu_mmap_size`]); `ring`: where the coalesced ring is in that mapping, if any.
    fn create_vcpu(&self, id: u32, mmap_size: usize, ring: Option<usize>) -> io::Result<Vcpu> {
        let raw = ioctl_val(&self.fd, KVM_CREATE_VCPU, "KVM_CREATE_VCPU", id as libc::c_ulong)?;
        // SAFETY: KVM_CREATE_VCPU just returned `raw`, a new descriptor nothing else owns.
        let fd = unsafe { owned_fd(raw) };
        let map = Mmap::shared(&fd, mmap_size)?;
        if map.len() < RUN_EXIT_UNION + 256 {
            return Err(io::Error::other("KVM_GET_VCPU_MMAP_SIZE is smaller than struct kvm_run"));
        }
        let shared = Arc::new(KickShared {
            run: Arc::clone(&map.map),
            ring,
            requests: AtomicU8::new(0),
            thread: Mutex::new(None),
        });
        Ok(Vcpu { fd, run: RunArea { map, ring }, shared })
    }
}

/// One virtual machine as the C's `vm_init` builds it: VM fd, guest RAM in slot 0 at
/// guest-physical 0, one vCPU with its run area.
///
/// Fields drop top to bottom (C: `vm_destroy`): the vCPU, then the VM fd, then the RAM. The
/// kernel's VM object can outlive both fds: a [`Kick`] held elsewhere keeps the run area
/// mapped, and that mapping keeps the vCPU (and through it the VM) alive until the `Kick` is
/// dropped. That is harmless: with the `Vcpu` gone nothing can enter `KVM_RUN` again, and the
/// kernel touches the memory slot's user memory only for a running vCPU.
#[derive(Debug)]
pub struct Vm {
    pub vcpu: Vcpu,
    pub fd: VmFd,
    /// Guest RAM, `[0, len)` guest-physical.
    pub mem: Mmap,
}

impl Vm {
    /// `KVM_CREATE_VM`, `mem_size` bytes of RAM at guest-physical 0, `KVM_CREATE_VCPU` 0.
    pub fn new(kvm: &Kvm, mem_size: usize) -> io::Result<Vm> {
        let fd = kvm.create_vm()?;
        let mem = Mmap::anonymous(mem_size)?;
        // SAFETY: `mem` is moved into the returned `Vm` next to `fd` and is declared after
        // it, so it is unmapped only after the VM fd is closed; slot 0 is the only slot.
        unsafe { fd.set_user_memory_region(0, 0, &mem) }?;
        let mmap_size = kvm.vcpu_mmap_size()?;
        let vcpu = fd.create_vcpu(0, mmap_size, kvm.coalesced_ring(mmap_size))?;
        Ok(Vm { vcpu, fd, mem })
    }
}

/// A vCPU: its fd and its mapped `kvm_run` area. `Send`, not `Sync`: one thread runs it.
#[derive(Debug)]
pub struct Vcpu {
    fd: File,
    run: RunArea,
    /// What other threads reach through a [`Kick`].
    shared: Arc<KickShared>,
}

// ---------------------------------------------------------------------------------------------
// 6. Exits, and the coalesced ring
// ---------------------------------------------------------------------------------------------

/// Why the vCPU left `KVM_RUN`, decoded from `kvm_run`. Data of I/O exits stays in the run
/// area; read it with [`Vcpu::io_data`] and answer IN with [`Vcpu::set_io_data`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuExit {
    /// `in`/`ins` (`out == false`) or `out`/`outs`: `count` accesses of `size` bytes to `port`;
    /// their `size * count` bytes are at `data_offset` in the run area (bounds already checked).
    Io { out: bool, port: u16, size: u8, count: u32, data_offset: usize },
    /// The guest executed `hlt`.
    Hlt,
    /// An access to guest-physical memory outside RAM.
    Mmio { phys_addr: u64, len: u32, is_write: bool },
    /// Triple fault (or INIT): the guest is gone.
    Shutdown,
    /// VM entry failed; the reason is hardware specific.
    FailEntry { reason: u64, cpu: u32 },
    /// KVM could not go on (suberror 1 = the instruction emulator failed).
    InternalError { suberror: u32 },
    /// A debug exception for the debugger (`KVM_SET_GUEST_DEBUG`): a single step (`exception`
    /// 1, `dr6` says which) or a debug-register breakpoint; `pc` is the guest's RIP.
    Debug { exception: u32, pc: u64, dr6: u64, dr7: u64 },
    /// `KVM_EXIT_INTR`: a signal arrived (only seen alongside EINTR).
    Intr,
    /// An I/O exit whose size or data location makes no sense (never seen from a sane kernel).
    BadIo { size: u8, count: u32, data_offset: u64 },
    /// Any exit reason this hypervisor does not handle.
    Unknown(u32),
}

/// What other threads asked of a vCPU, as [`Vcpu::take_requests`] finds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// The VM is to end (this stays set).
    pub stop: Option<StopReason>,
    /// The debugger wants the guest stopped (once).
    pub pause: bool,
    /// The coalesced ring should be drained (once).
    pub drain: bool,
}

/// Entries in the coalesced ring (`KVM_COALESCED_MMIO_MAX` for 4 KiB pages).
pub const RING_MAX: u32 = ((PAGE_SIZE - RING_ENTRIES) / size_of::<KvmCoalescedMmio>()) as u32;

impl Vcpu {
    /// `KVM_RUN`: enters the guest and returns why it left. `EINTR` comes back as an error
    /// of kind `Interrupted`: see [`Kick`] and [`Vcpu::take_requests`].
    pub fn run(&mut self) -> io::Result<VcpuExit> {
        // KVM_RUN is an _IO ioctl: the argument is ignored; the results land in `self.run`.
        ioctl_val(&self.fd, KVM_RUN, "KVM_RUN", 0)?;
        self.decode_exit()
    }

    fn decode_exit(&self) -> io::Result<VcpuExit> {
        let reason: u32 = self.run.read_obj(RUN_EXIT_REASON)?;
        Ok(match reason {
            KVM_EXIT_IO => {
                let io: KvmRunIo = self.run.read_obj(RUN_EXIT_UNION)?;
                let n = (io.size as u64) * (io.count as u64);
                let fits = io.data_offset.checked_add(n).is_some_and(|end| end <= self.run.map.len() as u64);
                let out = match io.direction {
                    KVM_EXIT_IO_IN => Some(false),
                    KVM_EXIT_IO_OUT => Some(true),
                    _ => None,
                };
                match out {
                    Some(out) if matches!(io.size, 1 | 2 | 4) && fits => VcpuExit::Io {
                        out,
                        port: io.port,
                        size: io.size,
                        count: io.count,
                        data_offset: io.data_offset as usize,
                    },
                    _ => VcpuExit::BadIo { size: io.size, count: io.count, data_offset: io.data_offset },
                }
            }
            KVM_EXIT_HLT => VcpuExit::Hlt,
            KVM_EXIT_MMIO => {
                let m: KvmRunMmio = self.run.read_obj(RUN_EXIT_UNION)?;
                VcpuExit::Mmio { phys_addr: m.phys_addr, len: m.len, is_write: m.is_write != 0 }
            }
            KVM_EXIT_SHUTDOWN => VcpuExit::Shutdown,
            KVM_EXIT_FAIL_ENTRY => {
                let f: KvmRunFailEntry = self.run.read_obj(RUN_EXIT_UNION)?;
                VcpuExit::FailEntry { reason: f.hardware_entry_failure_reason, cpu: f.cpu }
            }
            KVM_EXIT_INTERNAL_ERROR => {
                let i: KvmRunInternal = self.run.read_obj(RUN_EXIT_UNION)?;
                VcpuExit::InternalError { suberror: i.suberror }
            }
            KVM_EXIT_DEBUG => {
                let d: KvmDebugExitArch = self.run.read_obj(RUN_EXIT_UNION)?;
                VcpuExit::Debug { exception: d.exception, pc: d.pc, dr6: d.dr6, dr7: d.dr7 }
            }
            KVM_EXIT_INTR => VcpuExit::Intr,
            other => VcpuExit::Unknown(other),
        })
    }

    /// Copies I/O data out of the run area (`offset` is relative to the exit's `data_offset`).
    pub fn io_data(&self, data_offset: usize, offset: usize, dst: &mut [u8]) -> io::Result<()> {
        self.run.read(data_offset + offset, dst)
    }

    /// Copies the answer of an IN exit into the run area; KVM hands it to the guest at the next `run`.
    pub fn set_io_data(&self, data_offset: usize, offset: usize, src: &[u8]) -> io::Result<()> {
        self.run.write(data_offset + offset, src)
    }

    pub fn get_regs(&self) -> io::Result<KvmRegs> {
        ioctl_read(&self.fd, KVM_GET_REGS, "KVM_GET_REGS")
    }

    pub fn set_regs(&self, regs: &KvmRegs) -> io::Result<()> {
        ioctl_write(&self.fd, KVM_SET_REGS, "KVM_SET_REGS", regs)
    }

    pub fn get_sregs(&self) -> io::Result<KvmSregs> {
        ioctl_read(&self.fd, KVM_GET_SREGS, "KVM_GET_SREGS")
    }

    pub fn set_sregs(&self, sregs: &KvmSregs) -> io::Result<()> {
        ioctl_write(&self.fd, KVM_SET_SREGS, "KVM_SET_SREGS", sregs)
    }

    /// `KVM_SET_GUEST_DEBUG`: single-stepping and the debug registers, for the debugger.
    pub fn set_guest_debug(&self, dbg: &KvmGuestDebug) -> io::Result<()> {
        ioctl_write(&self.fd, KVM_SET_GUEST_DEBUG, "KVM_SET_GUEST_DEBUG", dbg)
    }

    /// Whether this vCPU's mapping holds a coalesced ring that port writes can go to.
    pub fn has_coalesced_ring(&self) -> bool {
        self.run.ring.is_some()
    }

    /// Takes the oldest write out of the coalesced ring: its slot number and the entry, or
    /// `None` when the ring is empty (or there is none). Call it between runs only (KVM adds
    /// entries while this vCPU is in `KVM_RUN`).
    pub fn pop_coalesced(&self) -> io::Result<Option<(u32, KvmCoalescedMmio)>> {
        let (Some(ring), Some(first), Some(last)) =
            (self.run.ring, self.shared.ring_index(RING_FIRST), self.shared.ring_index(RING_LAST))
        else {
            return Ok(None);
        };
        // Acquire: the entries KVM wrote before it advanced `last` are visible.
        let (slot, end) = (first.load(Ordering::Relaxed), last.load(Ordering::Acquire));
        if slot == end {
            return Ok(None);
        }
        if slot >= RING_MAX {
            return Err(io::Error::other(format!("coalesced ring index {slot} out of range")));
        }
        let entry = self.run.read_obj(ring + RING_ENTRIES + slot as usize * size_of::<KvmCoalescedMmio>())?;
        // Release: KVM may reuse the slot only after we have read it.
        first.store((slot + 1) % RING_MAX, Ordering::Release);
        Ok(Some((slot, entry)))
    }

    /// A handle other threads use to stop or pause this vCPU (installs the kick signal's
    /// handler the first time, so a kick can never kill the process).
    pub fn kick_handle(&self) -> io::Result<Kick> {
        static HANDLER: OnceLock<Result<(), i32>> = OnceLock::new();
        HANDLER
            .get_or_init(|| install_kick_handler().map_err(|e| e.raw_os_error().unwrap_or(0)))
            .map_err(io::Error::from_raw_os_error)?;
        Ok(Kick { shared: Arc::clone(&self.shared) })
    }

    /// Why a [`Kick`] asked this vCPU to stop, once one did.
    pub fn stop_requested(&self) -> Option<StopReason> {
        stop_reason(self.shared.requests.load(Ordering::Acquire))
    }

    /// After `KVM_RUN` returned `EINTR` (or `KVM_EXIT_INTR`): clears `immediate_exit` (else
    /// every later `KVM_RUN` fails at once) and takes the one-shot requests that came with
    /// the kick. A kick that lands after this is not lost: it sets `immediate_exit` again.
    pub fn take_requests(&self) -> Requests {
        // Acquire pairs with the kicker's Release store: a kick seen here has its request bit
        // visible below.
        self.shared.immediate_exit().swap(0, Ordering::Acquire);
        let bits = self.shared.requests.fetch_and(!(REQ_PAUSE | REQ_DRAIN), Ordering::AcqRel);
        Requests { stop: stop_reason(bits), pause: bits & REQ_PAUSE != 0, drain: bits & REQ_DRAIN != 0 }
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Kicking a vCPU from another thread
// ---------------------------------------------------------------------------------------------

/// Why a VM is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `--timeout` ran out.
    Timeout = 1,
    /// SIGINT or SIGTERM (Ctrl-C, `kill`).
    Interrupted = 2,
}

// Bits of `KickShared::requests`: the two stop reasons (sticky), then the one-shot requests.
const REQ_STOP_MASK: u8 = StopReason::Timeout as u8 | StopReason::Interrupted as u8;
const REQ_PAUSE: u8 = 4;
const REQ_DRAIN: u8 = 8;

fn stop_reason(bits: u8) -> Option<StopReason> {
    match bits & REQ_STOP_MASK {
        0 => None,
        b if b & StopReason::Interrupted as u8 != 0 => Some(StopReason::Interrupted),
        _ => Some(StopReason::Timeout),
    }
}

/// What a vCPU shares with the threads that kick it.
#[derive(Debug)]
struct KickShared {
    /// The vCPU's run area: only `immediate_exit` and the ring's indices are reached through it.
    run: Arc<Mapping>,
    /// Offset of the coalesced ring's page in `run`, if any.
    ring: Option<usize>,
    /// `REQ_*` bits.
    requests: AtomicU8,
    /// The thread inside [`Kick::deliver_here`] (the one that runs `KVM_RUN`), if any. A kick
    /// signals it under this lock, and the thread clears it under this lock before it can
    /// end, so a kick never signals a thread that is gone.
    thread: Mutex<Option<libc::pthread_t>>,
}

impl KickShared {
    /// `kvm_run.immediate_exit`, the one byte of the run area KVM reads at every entry and
    /// other threads write.
    fn immediate_exit(&self) -> &AtomicU8 {
        // SAFETY: offset 1 lies inside the mapping (it is at least `RUN_EXIT_UNION + 256` bytes,
        // checked in `create_vcpu`); `AtomicU8` has alignment 1; the reference borrows `self`,
        // which keeps the mapping alive (`Arc<Mapping>`); and this byte is only ever accessed
        // atomically by us (`RunArea` refuses plain copies of bytes 0..8).
        unsafe { AtomicU8::from_ptr(self.run.ptr.as_ptr().wrapping_add(RUN_IMMEDIATE_EXIT)) }
    }

    /// `first` or `last` of the coalesced ring (`RING_FIRST` / `RING_LAST`), if there is one.
    fn ring_index(&self, which: usize) -> Option<&AtomicU32> {
        let off = self.ring? + which;
        // SAFETY: `ring` was checked to be a page inside the mapping (`Kvm::coalesced_ring`),
        // and `which` is 0 or 4, so the 4 bytes are inside it and 4-aligned (the page is
        // page-aligned); the reference borrows `self`, which keeps the mapping alive; and these
        // bytes are only ever accessed atomically by us (`RunArea` refuses plain copies of them).
        Some(unsafe { AtomicU32::from_ptr(self.run.ptr.as_ptr().wrapping_add(off).cast::<u32>()) })
    }
}

/// Asks a vCPU, from another thread, to leave `KVM_RUN`: sets `kvm_run.immediate_exit` (so no
/// new `KVM_RUN` enters the guest) and sends the vCPU's thread a signal (so a `KVM_RUN` in
/// progress returns `EINTR`). Together they cannot race: whichever comes first, the vCPU ends
/// up out of the guest and finds the request with [`Vcpu::take_requests`]. A stop ends the VM;
/// a pause (the debugger's Ctrl-C) and a drain (the serial ring) do not.
#[derive(Debug, Clone)]
pub struct Kick {
    shared: Arc<KickShared>,
}

/// The signal used for kicks; its handler does nothing ([`install_kick_handler`]).
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int) {}

/// Installs a do-nothing handler for the kick signal (without it the signal would kill the
/// process); [`Vcpu::kick_handle`] calls it once. No `SA_RESTART`: a blocking read of stdin
/// or write to stdout returns `EINTR` too, so a VM waiting there can be stopped.
fn install_kick_handler() -> io::Result<()> {
    // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags).
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = kick_handler as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t;
    // SAFETY: `sa` is a valid, initialised sigaction whose handler is async-signal-safe (it
    // does nothing); a null old-action pointer is allowed.
    let r = unsafe { libc::sigaction(kick_signal(), &sa, std::ptr::null_mut()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A poisoned lock only means a thread panicked while holding it; the `Option` is still valid.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Kick {
    /// Ends the VM: it reports itself as timed out or interrupted.
    pub fn stop(&self, reason: StopReason) {
        self.request(reason as u8);
    }

    /// Stops the guest for the debugger, without ending the VM.
    pub fn pause(&self) {
        self.request(REQ_PAUSE);
    }

    /// Makes the vCPU drain the coalesced serial ring, without ending the VM.
    pub fn drain(&self) {
        self.request(REQ_DRAIN);
    }

    /// Whether the coalesced ring holds writes not yet drained.
    pub fn ring_pending(&self) -> bool {
        match (self.shared.ring_index(RING_FIRST), self.shared.ring_index(RING_LAST)) {
            (Some(first), Some(last)) => first.load(Ordering::Relaxed) != last.load(Ordering::Relaxed),
            _ => false,
        }
    }

    fn request(&self, bit: u8) {
        self.shared.requests.fetch_or(bit, Ordering::Release);
        self.shared.immediate_exit().store(1, Ordering::Release);
        let thread = lock(&self.shared.thread);
        if let Some(thread) = *thread {
            // SAFETY: `thread` was stored by `deliver_here` on that thread, which clears it
            // under this same lock before it returns, so while we hold the lock the thread is
            // still inside `deliver_here`: alive, and its pthread_t valid. The signal's handler
            // was installed before any `Kick` could exist (`Vcpu::kick_handle`).
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
    }

    /// Runs `body` on this thread with kicks delivered here: the thread that calls
    /// [`Vcpu::run`] runs its loop inside this, so a kick's signal interrupts its `KVM_RUN`
    /// (and a blocking read or write). Kicks sent when no thread is inside still set
    /// `immediate_exit`, so the next `KVM_RUN` returns at once.
    pub fn deliver_here<R>(&self, body: impl FnOnce() -> R) -> R {
        /// Clears the slot when `body` returns or unwinds.
        struct Unbind<'a>(&'a KickShared);
        impl Drop for Unbind<'_> {
            fn drop(&mut self) {
                *lock(&self.0.thread) = None;
            }
        }
        // SAFETY: pthread_self has no preconditions.
        *lock(&self.shared.thread) = Some(unsafe { libc::pthread_self() });
        let _unbind = Unbind(&self.shared);
        body()
    }
}

/// SIGINT and SIGTERM: the signals that stop every VM (Ctrl-C, `kill`).
fn stop_signals() -> libc::sigset_t {
    // SAFETY: an all-zero `sigset_t` is plain memory that `sigemptyset` then initialises.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t; sigemptyset/sigaddset only write to it.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: as above; SIGINT is a valid signal number.
    unsafe { libc::sigaddset(&mut set, libc::SIGINT) };
    // SAFETY: as above; SIGTERM is a valid signal number.
    unsafe { libc::sigaddset(&mut set, libc::SIGTERM) };
    set
}

/// Blocks SIGINT and SIGTERM in the calling thread and every thread it starts afterwards, so
/// that they wait for [`wait_stop_signal`] instead of killing the process (and losing the
/// output the VMs have not written yet). Call it before any thread starts, once nothing at
/// startup can block any more.
pub fn block_stop_signals() -> io::Result<()> {
    let set = stop_signals();
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 { Err(io::Error::from_raw_os_error(r)) } else { Ok(()) }
}

/// Waits until SIGINT or SIGTERM is pending (they must be blocked, see [`block_stop_signals`])
/// and returns its number.
pub fn wait_stop_signal() -> io::Result<libc::c_int> {
    let set = stop_signals();
    let mut signal: libc::c_int = 0;
    // SAFETY: `set` is an initialised sigset_t and `signal` a writable c_int; sigwait keeps neither.
    let r = unsafe { libc::sigwait(&set, &mut signal) };
    if r != 0 { Err(io::Error::from_raw_os_error(r)) } else { Ok(signal) }
}

// ---------------------------------------------------------------------------------------------
// 8. One VM on the main thread: signal handlers instead of the watchdog's threads
// ---------------------------------------------------------------------------------------------

/// The vCPU whose loop runs inside [`Kick::run_here`], for [`here_handler`]; null outside.
static HERE: AtomicPtr<KickShared> = AtomicPtr::new(std::ptr::null_mut());
/// Whether SIGALRM is to drain the ring (`run_here`'s `drain_every` was given).
static HERE_DRAINS: AtomicBool = AtomicBool::new(false);
/// How often a stop is repeated (`run_here`'s `retry`), in microseconds.
static HERE_RETRY_US: AtomicU64 = AtomicU64::new(0);

/// What the watchdog does for threaded VMs, done from a signal handler on the VM's own thread:
/// SIGINT / SIGTERM stop the VM (a second one exits at once) and start SIGALRM every retry
/// period, which repeats the stop until the VM ends (one whose signal landed just before a
/// blocking read must still end); before a stop, SIGALRM (every `drain_every`) drains the
/// ring if it holds output. Only atomics, `write`, `setitimer` and `_exit`: system calls and
/// lock-free memory, async-signal-safe.
extern "C" fn here_handler(signal: libc::c_int) {
    let p = HERE.load(Ordering::Acquire);
    if p.is_null() {
        return;
    }
    // SAFETY: `run_here` stored `p` from the `Arc<KickShared>` of the `Kick` it borrows, and
    // resets it to null (after blocking these signals and stopping the timer) before it returns,
    // so the `KickShared` is alive while `p` is non-null.
    let shared = unsafe { &*p };
    let bits = shared.requests.load(Ordering::Acquire);
    let request = if signal == libc::SIGALRM {
        let pending = match (shared.ring_index(RING_FIRST), shared.ring_index(RING_LAST)) {
            (Some(first), Some(last)) => first.load(Ordering::Relaxed) != last.load(Ordering::Relaxed),
            _ => false,
        };
        match stop_reason(bits) {
            Some(_) => 0,
            None if pending && HERE_DRAINS.load(Ordering::Relaxed) => REQ_DRAIN,
            None => return,
        }
    } else if stop_reason(bits) == Some(StopReason::Interrupted) {
        say(b"mini_hypervisor: interrupted again: exiting without waiting for the VMs\n");
        // SAFETY: _exit is async-signal-safe and ends the process at once.
        unsafe { libc::_exit(1) };
    } else {
        say(if signal == libc::SIGINT {
            b"mini_hypervisor: signal 2: stopping every VM (again to exit at once)\n"
        } else {
            b"mini_hypervisor: signal 15: stopping every VM (again to exit at once)\n"
        });
        let _ = set_tick(Duration::from_micros(HERE_RETRY_US.load(Ordering::Relaxed)));
        StopReason::Interrupted as u8
    };
    shared.requests.fetch_or(request, Ordering::Release);
    shared.immediate_exit().store(1, Ordering::Release);
}

/// `write(2, text)` from a signal handler (a failed or short write is ignored: it is a notice).
fn say(text: &[u8]) {
    // SAFETY: `text` is a live byte slice for the duration of the call; write is async-signal-safe.
    let _ = unsafe { libc::write(2, text.as_ptr().cast(), text.len()) };
}

/// Installs `here_handler` for `signal`, without `SA_RESTART` (see [`install_kick_handler`]).
fn install_here_handler(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags).
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = here_handler as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t;
    // SAFETY: `sa` is a valid, initialised sigaction whose handler is async-signal-safe (see
    // `here_handler`); a null old-action pointer is allowed.
    if unsafe { libc::sigaction(signal, &sa, std::ptr::null_mut()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `setitimer(ITIMER_REAL)`: SIGALRM every `tick` (zero: never). A bare system call.
fn set_tick(tick: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(tick.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(tick.subsec_micros()),
    };
    let it = libc::itimerval { it_interval: tv, it_value: tv };
    // SAFETY: `it` is an initialised itimerval; a null old-value pointer is allowed.
    if unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Blocks (`how` = SIG_BLOCK) or unblocks SIGINT and SIGTERM in the calling thread.
fn mask_stop_signals(how: libc::c_int) -> io::Result<()> {
    let set = stop_signals();
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed.
    let r = unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) };
    if r != 0 { Err(io::Error::from_raw_os_error(r)) } else { Ok(()) }
}

impl Kick {
    /// Runs `body` (the vCPU's loop) on the calling thread, the process's only one, with
    /// signal handlers doing what the watchdog's threads do ([`here_handler`]): SIGINT /
    /// SIGTERM stop the VM, repeated every `retry`; SIGALRM every `drain_every` drains the
    /// ring. The stop signals must be blocked on entry ([`block_stop_signals`]); on return
    /// (or unwind) they are blocked again and the timer is stopped.
    pub fn run_here<R>(
        &self,
        drain_every: Option<Duration>,
        retry: Duration,
        body: impl FnOnce() -> R,
    ) -> io::Result<R> {
        /// Undoes what `run_here` set up, also if `body` unwinds: from then on the handler
        /// finds no vCPU, and the timer and the stop signals are quiet.
        struct Disarm;
        impl Drop for Disarm {
            fn drop(&mut self) {
                let _ = mask_stop_signals(libc::SIG_BLOCK);
                let _ = set_tick(Duration::ZERO);
                HERE.store(std::ptr::null_mut(), Ordering::Release);
            }
        }
        HERE_DRAINS.store(drain_every.is_some(), Ordering::Relaxed);
        HERE_RETRY_US.store(u64::try_from(retry.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        HERE.store(Arc::as_ptr(&self.shared).cast_mut(), Ordering::Release);
        let _disarm = Disarm;
        [libc::SIGINT, libc::SIGTERM, libc::SIGALRM].into_iter().try_for_each(install_here_handler)?;
        set_tick(drain_every.unwrap_or(Duration::ZERO))?;
        mask_stop_signals(libc::SIG_UNBLOCK)?;
        Ok(body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmap_copies_in_and_out_and_refuses_anything_out_of_bounds() {
        let m = Mmap::anonymous(2 * 4096).unwrap();
        assert_eq!(m.len(), 8192);
        m.write(8190, b"hi").unwrap();
        let mut two = [0u8; 2];
        m.read(8190, &mut two).unwrap();
        assert_eq!(&two, b"hi");
        assert_eq!(m.read_obj::<u32>(8188).unwrap(), u32::from_le_bytes([0, 0, b'h', b'i']));
        for (off, n) in [(8191, 2), (8192, 1), (usize::MAX, 2), (0, 8193)] {
            let mut buf = vec![0u8; n];
            assert!(m.read(off, &mut buf).is_err(), "read {off:#x}+{n}");
            assert!(m.write(off, &buf).is_err(), "write {off:#x}+{n}");
            assert!(m.ptr_at(off, n).is_err(), "ptr_at {off:#x}+{n}");
        }
        assert!(m.read_obj::<u32>(8189).is_err());
        m.read(8192, &mut []).unwrap(); // an empty access at the very end is in bounds
    }

    #[test]
    fn the_run_area_refuses_plain_copies_of_the_bytes_shared_as_atomics() {
        let run = RunArea { map: Mmap::anonymous(3 * PAGE_SIZE).unwrap(), ring: Some(2 * PAGE_SIZE) };
        for (off, n) in
            [(0, 1), (1, 1), (7, 1), (0, 8), (2 * PAGE_SIZE, 4), (2 * PAGE_SIZE + 4, 4), (2 * PAGE_SIZE - 1, 2)]
        {
            assert!(run.read(off, &mut vec![0; n]).is_err(), "read {off:#x}+{n}");
            assert!(run.write(off, &vec![0; n]).is_err(), "write {off:#x}+{n}");
        }
        run.read_obj::<u32>(RUN_EXIT_REASON).unwrap();
        run.write(PAGE_SIZE, b"io data").unwrap();
        run.read_obj::<KvmCoalescedMmio>(2 * PAGE_SIZE + RING_ENTRIES).unwrap();
        assert_eq!(RING_MAX, 170, "KVM_COALESCED_MMIO_MAX with 4 KiB pages");
    }

    #[test]
    fn the_size_and_direction_encoded_in_each_ioctl_is_its_argument_type() {
        assert_eq!(ioc_size(KVM_GET_REGS), size_of::<KvmRegs>());
        assert_eq!(ioc_size(KVM_SET_REGS), size_of::<KvmRegs>());
        assert_eq!(ioc_size(KVM_GET_SREGS), size_of::<KvmSregs>());
        assert_eq!(ioc_size(KVM_SET_SREGS), size_of::<KvmSregs>());
        assert_eq!(ioc_size(KVM_SET_USER_MEMORY_REGION), size_of::<KvmUserspaceMemoryRegion>());
        assert_eq!(ioc_size(KVM_SET_GUEST_DEBUG), size_of::<KvmGuestDebug>());
        assert_eq!(ioc_size(KVM_REGISTER_COALESCED_MMIO), size_of::<KvmCoalescedMmioZone>());
        assert_eq!((ioc_dir(KVM_RUN), ioc_size(KVM_RUN)), (IOC_NONE, 0));
        assert_eq!(ioc_dir(KVM_GET_REGS), IOC_READ);
        assert_eq!(ioc_dir(KVM_SET_REGS), IOC_WRITE);
    }

    #[test]
    #[should_panic(expected = "not an _IO request")]
    fn an_integer_argument_is_refused_for_an_ioctl_that_takes_a_pointer() {
        let f = File::open("/dev/null").unwrap();
        let _ = ioctl_val(&f, KVM_GET_REGS, "KVM_GET_REGS", 0x1000);
    }

    #[test]
    fn anonymous_memory_starts_zeroed() {
        let m = Mmap::anonymous(4096).unwrap();
        let mut page = vec![0xffu8; 4096];
        m.read(0, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 0));
    }

    #[test]
    fn stop_requests_stay_and_pause_and_drain_are_taken_once() {
        let map = Mmap::anonymous(3 * PAGE_SIZE).unwrap();
        let shared = Arc::new(KickShared {
            run: Arc::clone(&map.map),
            ring: None,
            requests: AtomicU8::new(0),
            thread: Mutex::new(None),
        });
        let kick = Kick { shared: Arc::clone(&shared) };
        kick.pause();
        kick.drain();
        assert_eq!(shared.immediate_exit().load(Ordering::Relaxed), 1, "no KVM_RUN enters the guest now");
        let vcpu_view = |s: &KickShared| {
            s.immediate_exit().swap(0, Ordering::Acquire);
            stop_reason(s.requests.fetch_and(!(REQ_PAUSE | REQ_DRAIN), Ordering::AcqRel))
        };
        assert_eq!(shared.requests.load(Ordering::Relaxed), REQ_PAUSE | REQ_DRAIN);
        assert_eq!(vcpu_view(&shared), None);
        assert_eq!(shared.requests.load(Ordering::Relaxed), 0, "one-shot requests are taken");
        kick.stop(StopReason::Timeout);
        kick.stop(StopReason::Interrupted);
        assert_eq!(vcpu_view(&shared), Some(StopReason::Interrupted));
        assert_eq!(stop_reason(shared.requests.load(Ordering::Relaxed)), Some(StopReason::Interrupted), "sticky");
        assert!(!kick.ring_pending(), "no ring, nothing pending");
    }
}
