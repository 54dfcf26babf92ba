//! The FFI room: every `unsafe` of this crate is in this file.
//!
//! C counterpart: `vm_init` and `vm_destroy` (open `/dev/kvm`, create the VM and its memory
//! slot, create the vCPU and map its `kvm_run` area; then unmap and close it all).
//!
//! What is here, top to bottom:
//! 1. ioctl numbers, built from the argument *type* by `const fn` encoders (`_IO`, `_IOR`, `_IOW`);
//! 2. the `#[repr(C)]` structs of `<linux/kvm.h>` that we use, with compile-time layout checks
//!    (and `tests/layout.rs` compares all of it with what gcc computes from the real header);
//! 3. owning wrappers with `Drop`: [`Mmap`] (guest RAM, run area), [`Kvm`], [`VmFd`], [`Vcpu`],
//!    and [`Vm`], which bundles them as the C's `vm_init` does;
//! 4. decoding of `kvm_run` into a typed [`VcpuExit`];
//! 5. [`Kick`]: stopping a vCPU from another thread (`immediate_exit` + a signal), and the
//!    blocking and waiting of SIGINT/SIGTERM, which stop every VM.
//!
//! Everything outside this file is safe Rust: the crate root denies `unsafe_code`, this module
//! alone allows it, and every other module forbids it.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::thread::JoinHandleExt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

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
pub const KVM_RUN: u64 = io(0x80);
pub const KVM_GET_REGS: u64 = ior::<KvmRegs>(0x81);
pub const KVM_SET_REGS: u64 = iow::<KvmRegs>(0x82);
pub const KVM_GET_SREGS: u64 = ior::<KvmSregs>(0x83);
pub const KVM_SET_SREGS: u64 = iow::<KvmSregs>(0x84);

// The literals, checked against gcc on this machine (see also tests/layout.rs).
const _: () = assert!(KVM_GET_API_VERSION == 0xAE00);
const _: () = assert!(KVM_CREATE_VM == 0xAE01);
const _: () = assert!(KVM_CHECK_EXTENSION == 0xAE03);
const _: () = assert!(KVM_GET_VCPU_MMAP_SIZE == 0xAE04);
const _: () = assert!(KVM_CREATE_VCPU == 0xAE41);
const _: () = assert!(KVM_SET_USER_MEMORY_REGION == 0x4020_AE46);
const _: () = assert!(KVM_RUN == 0xAE80);
const _: () = assert!(KVM_GET_REGS == 0x8090_AE81);
const _: () = assert!(KVM_SET_REGS == 0x4090_AE82);
const _: () = assert!(KVM_GET_SREGS == 0x8138_AE83);
const _: () = assert!(KVM_SET_SREGS == 0x4138_AE84);

/// The only API version there has ever been (`KVM_API_VERSION`).
pub const KVM_API_VERSION: i32 = 12;
/// `KVM_CAP_IMMEDIATE_EXIT`: `kvm_run.immediate_exit` is honoured (Linux 4.11+).
pub const KVM_CAP_IMMEDIATE_EXIT: u64 = 136;

// Exit reasons (`kvm_run.exit_reason`).
pub const KVM_EXIT_IO: u32 = 2;
pub const KVM_EXIT_HLT: u32 = 5;
pub const KVM_EXIT_MMIO: u32 = 6;
pub const KVM_EXIT_SHUTDOWN: u32 = 8;
pub const KVM_EXIT_FAIL_ENTRY: u32 = 9;
pub const KVM_EXIT_INTR: u32 = 10;
pub const KVM_EXIT_INTERNAL_ERROR: u32 = 17;
pub const KVM_EXIT_IO_IN: u8 = 0;
pub const KVM_EXIT_IO_OUT: u8 = 1;

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

// `struct kvm_run` is 2352 bytes, most of which we never touch. We declare the offsets we read
// and the small exit structs that live in its union at offset 32, and read them by value.

/// Offset of `kvm_run.immediate_exit` (u8).
pub const RUN_IMMEDIATE_EXIT: usize = 1;
/// Offset of `kvm_run.exit_reason` (u32).
pub const RUN_EXIT_REASON: usize = 8;
/// Offset of the exit union in `kvm_run`.
pub const RUN_EXIT_UNION: usize = 32;

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
    assert!(size_of::<KvmRunIo>() == 16 && offset_of!(KvmRunIo, count) == 4);
    assert!(offset_of!(KvmRunIo, data_offset) == 8);
    assert!(size_of::<KvmRunMmio>() == 24 && offset_of!(KvmRunMmio, len) == 16);
    assert!(offset_of!(KvmRunMmio, is_write) == 20);
    assert!(size_of::<KvmRunFailEntry>() == 16 && offset_of!(KvmRunFailEntry, cpu) == 8);
    assert!(size_of::<KvmRunInternal>() == 8 && offset_of!(KvmRunInternal, ndata) == 4);
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
unsafe impl Pod for KvmRunIo {}
// SAFETY: as above.
unsafe impl Pod for KvmRunMmio {}
// SAFETY: as above.
unsafe impl Pod for KvmRunFailEntry {}
// SAFETY: as above.
unsafe impl Pod for KvmRunInternal {}
// SAFETY: u32 is an integer.
unsafe impl Pod for u32 {}

// ---------------------------------------------------------------------------------------------
// 3. Owning wrappers
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

/// An `_IOR` ioctl: the kernel fills a `T`. Refuses (panics on) a request whose encoded size is
/// not `T`'s, a programming error that would let the kernel write past the value.
fn ioctl_read<T: Pod>(fd: &File, req: u64, name: &str) -> io::Result<T> {
    assert_eq!(ioc_size(req), size_of::<T>(), "{name}: argument type does not match the ioctl");
    let mut value = T::default();
    let arg = &mut value as *mut T as libc::c_ulong;
    // SAFETY: `arg` points to a live, writable `T` whose size is the one encoded in `req`
    // (asserted above), so the kernel writes only inside it; `T: Pod` makes any bytes it
    // writes a valid `T`.
    unsafe { ioctl(fd, req, name, arg) }?;
    Ok(value)
}

/// An `_IOW` ioctl: the kernel reads a `T`. Same size check as [`ioctl_read`].
fn ioctl_write<T: Pod>(fd: &File, req: u64, name: &str, value: &T) -> io::Result<()> {
    assert_eq!(ioc_size(req), size_of::<T>(), "{name}: argument type does not match the ioctl");
    let arg = value as *const T as libc::c_ulong;
    // SAFETY: `arg` points to a live `T` whose size is the one encoded in `req` (asserted
    // above), which the kernel only reads; `T: Pod` has no uninitialised padding to leak.
    unsafe { ioctl(fd, req, name, arg) }?;
    Ok(())
}

/// An `_IO` ioctl with an integer argument.
fn ioctl_val(fd: &File, req: u64, name: &str, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: callers pass only `_IO` requests (see the call sites), which take an integer.
    unsafe { ioctl(fd, req, name, arg) }
}

/// Wraps a file descriptor that an ioctl returned, so that every path closes it.
fn owned_fd(raw: libc::c_int) -> File {
    // SAFETY: `raw` was just returned by a successful ioctl that creates a new descriptor
    // (KVM_CREATE_VM / KVM_CREATE_VCPU), so it is open and owned by nobody else.
    File::from(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// An owned memory mapping (guest RAM, or a vCPU's `kvm_run` area), unmapped on drop.
///
/// Access goes only through bounds-checked copies: no `&[u8]` into the mapping is ever
/// handed out, because the guest and the kernel write to it behind Rust's back.
#[derive(Debug)]
pub struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value and only accessed through bounds-checked copies;
// moving it to another thread (one VM per thread) moves that ownership.
unsafe impl Send for Mmap {}
// SAFETY: shared access is needed only for `Kick`, which touches the one byte
// `immediate_exit` through an `AtomicU8`; every other access takes `&self` on the owning
// vCPU thread only (the `Vcpu` is not shared).
unsafe impl Sync for Mmap {}

impl Mmap {
    /// Private anonymous memory, zero-filled, faulted in only where touched (guest RAM).
    pub fn anonymous(len: usize) -> io::Result<Mmap> {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choice cannot alias
        // anything; the result is checked before use.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, PROT_RW, flags, -1, 0) };
        Self::from_raw(p, len, "mmap guest RAM")
    }

    /// A shared mapping of `len` bytes of `fd` from offset 0 (the vCPU's `kvm_run` area).
    pub fn shared(fd: &File, len: usize) -> io::Result<Mmap> {
        let raw = fd.as_raw_fd();
        // SAFETY: maps `len` bytes of an open vCPU fd at an address of the kernel's choice;
        // the result is checked before use.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, PROT_RW, libc::MAP_SHARED, raw, 0) };
        Self::from_raw(p, len, "mmap kvm_run")
    }

    fn from_raw(p: *mut libc::c_void, len: usize, what: &str) -> io::Result<Mmap> {
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned 0"))?;
        Ok(Mmap { ptr, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The host address of the mapping, for `KVM_SET_USER_MEMORY_REGION`.
    fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    fn check(&self, off: usize, n: usize) -> io::Result<()> {
        match off.checked_add(n) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("access [{off:#x}, +{n:#x}) outside mapping of {:#x} bytes", self.len),
            )),
        }
    }

    /// The address of `[off, off + n)` inside the mapping, after checking that it is inside.
    fn at(&self, off: usize, n: usize) -> io::Result<*mut u8> {
        self.check(off, n)?;
        Ok(self.ptr.as_ptr().wrapping_add(off))
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
        // the mapping exists.
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
        // pattern a valid `T`; `read_unaligned` has no alignment requirement.
        Ok(unsafe { src.read_unaligned() })
    }

    /// The byte at `off` viewed as an atomic, for the one field two threads touch.
    fn atomic_u8(&self, off: usize) -> io::Result<&AtomicU8> {
        let byte = self.at(off, 1)?;
        // SAFETY: the byte is inside the mapping (`at` checked), `AtomicU8` has alignment 1,
        // and the returned reference borrows `self`, so it cannot outlive the mapping. This
        // byte is only ever accessed atomically by us (the kernel reads it at KVM_RUN entry).
        Ok(unsafe { AtomicU8::from_ptr(byte) })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: we created this mapping with this length, and no pointer into it outlives
        // `self` (all access is by copy; `atomic_u8` borrows `self`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

const PROT_RW: libc::c_int = libc::PROT_READ | libc::PROT_WRITE;

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
    /// PIO data page and more; 12288 bytes on current kernels).
    pub fn vcpu_mmap_size(&self) -> io::Result<usize> {
        let n = ioctl_val(&self.fd, KVM_GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE", 0)?;
        Ok(n as usize)
    }

    /// `KVM_CREATE_VM` with the default machine type.
    pub fn create_vm(&self) -> io::Result<VmFd> {
        let raw = ioctl_val(&self.fd, KVM_CREATE_VM, "KVM_CREATE_VM", 0)?;
        Ok(VmFd { fd: owned_fd(raw) })
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

    /// `KVM_CREATE_VCPU` and the mapping of its `kvm_run` area (`mmap_size` from [`Kvm::vcpu_mmap_size`]).
    pub fn create_vcpu(&self, id: u32, mmap_size: usize) -> io::Result<Vcpu> {
        let raw = ioctl_val(&self.fd, KVM_CREATE_VCPU, "KVM_CREATE_VCPU", id as libc::c_ulong)?;
        let fd = owned_fd(raw);
        let run = Arc::new(Mmap::shared(&fd, mmap_size)?);
        if run.len() < RUN_EXIT_UNION + 256 {
            return Err(io::Error::other("KVM_GET_VCPU_MMAP_SIZE is smaller than struct kvm_run"));
        }
        Ok(Vcpu { fd, run, stop: Arc::new(AtomicU8::new(0)) })
    }
}

/// One virtual machine as the C's `vm_init` builds it: VM fd, guest RAM in slot 0 at
/// guest-physical 0, one vCPU with its run area. Fields drop top to bottom (C: `vm_destroy`):
/// the vCPU first, then the VM fd (the kernel lets go of the memory slot), then the RAM.
#[derive(Debug)]
pub struct Vm {
    pub vcpu: Vcpu,
    #[expect(dead_code, reason = "never used after setup, but it must live as long as the vCPU")]
    vm_fd: VmFd,
    /// Guest RAM, `[0, len)` guest-physical.
    pub mem: Mmap,
}

impl Vm {
    /// `KVM_CREATE_VM`, `mem_size` bytes of RAM at guest-physical 0, `KVM_CREATE_VCPU` 0.
    pub fn new(kvm: &Kvm, mem_size: usize) -> io::Result<Vm> {
        let vm_fd = kvm.create_vm()?;
        let mem = Mmap::anonymous(mem_size)?;
        // SAFETY: `mem` is moved into the returned `Vm` next to `vm_fd` and is declared after
        // it, so it is unmapped only after the VM fd is closed; slot 0 is the only slot.
        unsafe { vm_fd.set_user_memory_region(0, 0, &mem) }?;
        let vcpu = vm_fd.create_vcpu(0, kvm.vcpu_mmap_size()?)?;
        Ok(Vm { vcpu, vm_fd, mem })
    }
}

/// A vCPU: its fd and its mapped `kvm_run` area. Dropping it unmaps the area, then closes the fd.
#[derive(Debug)]
pub struct Vcpu {
    fd: File,
    run: Arc<Mmap>,
    /// 0, or the [`StopReason`] of a kick.
    stop: Arc<AtomicU8>,
}

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
    /// `KVM_EXIT_INTR`: a signal arrived (only seen alongside EINTR).
    Intr,
    /// An I/O exit whose size or data location makes no sense (never seen from a sane kernel).
    BadIo { size: u8, count: u32, data_offset: u64 },
    /// Any exit reason this hypervisor does not handle.
    Unknown(u32),
}

impl Vcpu {
    /// `KVM_RUN`: enters the guest and returns why it left. `EINTR` comes back as an error
    /// of kind `Interrupted`: see [`Kick`] and [`Vcpu::clear_immediate_exit`].
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
                let fits = io.data_offset.checked_add(n).is_some_and(|end| end <= self.run.len() as u64);
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

    /// A handle another thread can use to stop this vCPU (installs the kick signal's
    /// handler the first time, so a kick can never kill the process).
    pub fn kick_handle(&self) -> io::Result<Kick> {
        static HANDLER: OnceLock<Result<(), i32>> = OnceLock::new();
        HANDLER
            .get_or_init(|| install_kick_handler().map_err(|e| e.raw_os_error().unwrap_or(0)))
            .map_err(io::Error::from_raw_os_error)?;
        Ok(Kick { run: Arc::clone(&self.run), stop: Arc::clone(&self.stop) })
    }

    /// Why a [`Kick`] asked this vCPU to stop, once one did.
    pub fn stop_requested(&self) -> Option<StopReason> {
        match self.stop.load(Ordering::Acquire) {
            1 => Some(StopReason::Timeout),
            2 => Some(StopReason::Interrupted),
            _ => None,
        }
    }

    /// Clears `kvm_run.immediate_exit` after a kick, or every later `KVM_RUN` fails at once.
    pub fn clear_immediate_exit(&self) -> io::Result<()> {
        self.run.atomic_u8(RUN_IMMEDIATE_EXIT)?.store(0, Ordering::Relaxed);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Stopping a vCPU from another thread
// ---------------------------------------------------------------------------------------------

/// Stops a vCPU from another thread: sets `kvm_run.immediate_exit` (so no new `KVM_RUN` enters
/// the guest) and sends the vCPU thread a signal (so a `KVM_RUN` in progress returns `EINTR`).
/// Together they cannot race: whichever comes first, the vCPU ends up out of the guest.
#[derive(Debug, Clone)]
pub struct Kick {
    run: Arc<Mmap>,
    stop: Arc<AtomicU8>,
}

/// Why a VM is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `--timeout` ran out.
    Timeout = 1,
    /// SIGINT or SIGTERM (Ctrl-C, `kill`).
    Interrupted = 2,
}

/// The signal used for kicks; its handler does nothing ([`install_kick_handler`]).
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int) {}

/// Installs a do-nothing handler for the kick signal (without it the signal would kill the
/// process); [`Vcpu::kick_handle`] calls it once. No `SA_RESTART`: a blocking read of stdin
/// returns `EINTR` too, so a VM waiting for input can be stopped.
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

impl Kick {
    /// Asks the vCPU running on `thread` to stop. The borrow of the `JoinHandle` guarantees the
    /// thread has not been joined, so its `pthread_t` is still valid (it may have exited).
    pub fn kick<T>(&self, thread: &JoinHandle<T>, reason: StopReason) {
        self.stop.store(reason as u8, Ordering::Release);
        if let Ok(flag) = self.run.atomic_u8(RUN_IMMEDIATE_EXIT) {
            flag.store(1, Ordering::Release);
        }
        // SAFETY: `thread` is borrowed, so it has not been joined or detached, and its
        // pthread_t names a live or exited-but-unjoined thread, which pthread_kill accepts.
        // The signal's handler was installed before this `Kick` could exist (`kick_handle`).
        unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
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
/// output the VMs have not written yet). Call it first thing, before any thread starts.
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
        }
        assert!(m.read_obj::<u32>(8189).is_err());
        assert!(m.atomic_u8(8192).is_err());
        m.read(8192, &mut []).unwrap(); // an empty access at the very end is in bounds
    }

    #[test]
    fn the_size_encoded_in_each_ioctl_is_its_argument_type() {
        assert_eq!(ioc_size(KVM_GET_REGS), size_of::<KvmRegs>());
        assert_eq!(ioc_size(KVM_SET_REGS), size_of::<KvmRegs>());
        assert_eq!(ioc_size(KVM_GET_SREGS), size_of::<KvmSregs>());
        assert_eq!(ioc_size(KVM_SET_SREGS), size_of::<KvmSregs>());
        assert_eq!(ioc_size(KVM_SET_USER_MEMORY_REGION), size_of::<KvmUserspaceMemoryRegion>());
        assert_eq!(ioc_size(KVM_RUN), 0);
    }

    #[test]
    fn anonymous_memory_starts_zeroed() {
        let m = Mmap::anonymous(4096).unwrap();
        let mut page = vec![0xffu8; 4096];
        m.read(0, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 0));
    }
}
