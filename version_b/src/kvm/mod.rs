//! The KVM room: `/dev/kvm`, the VM, its memory and its vCPU, as owning handles.
//!
//! C counterpart: `vm_init` and `vm_destroy` (open `/dev/kvm`, check the API version, create
//! the VM and its memory slot, create the vCPU and map its `kvm_run` area; then unmap and close
//! it all), and the reads of `run->exit_reason` and `run->io` in `run_vm`.
//!
//! - `sys.rs`: the ioctl numbers and structs of `<linux/kvm.h>`;
//! - `mmap.rs`: [`Mmap`], an owned mapping reached only by bounds-checked copies;
//! - here: the ioctl calls, one typed wrapper per kind of argument, and [`Kvm`], [`VmFd`],
//!   [`Vcpu`], [`Vm`]; decoding `kvm_run` into a typed [`VcpuExit`]; the coalesced ring.
//!
//! Together with `signals.rs` (and version C's `hostfs.rs`) these are the only files with
//! `unsafe`: the crate root denies it, they allow it, every other module forbids it.
#![allow(unsafe_code)]

mod mmap;
mod sys;

use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub use mmap::Mmap;
pub use sys::*;

// ---------------------------------------------------------------------------------------------
// ioctl calls
// ---------------------------------------------------------------------------------------------

/// Issues `ioctl(fd, req, arg)` and turns a negative result into an `io::Error` that names the
/// ioctl (as the C's `perror("KVM_CREATE_VM")` does).
///
/// # Safety
/// `arg` must be what the kernel expects for `req`: an integer for `_IO` requests, or a pointer
/// to a live object of the size the kernel reads or writes (writable for `_IOR`), holding no
/// address the kernel would keep using after the call unless the caller keeps that memory alive.
// SAFETY: an `unsafe fn` because the kernel reads or writes through `arg`; its three callers
// below (`ioctl_read`, `ioctl_write`, `ioctl_val`) and `set_user_memory_region` each check
// their part of the contract above at their own call site.
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

/// An `_IOR` ioctl: the kernel fills a `T`. Refuses (panics on) a request that is not `_IOR`
/// or whose encoded size is not `T`'s: a programming error that would let the kernel write
/// past the value.
fn ioctl_read<T: Pod>(fd: &File, req: u64, name: &str) -> io::Result<T> {
    assert!(ioc_dir(req) == IOC_READ && ioc_size(req) == T::ENCODED_SIZE, "{name}: not an _IOR of this type");
    let mut value = T::default();
    let arg = &mut value as *mut T as libc::c_ulong;
    // SAFETY: `arg` points to a live, writable `T`, the type whose size `req` encodes
    // (asserted above), so the kernel writes only inside it; `T: Pod` makes any bytes it
    // writes a valid `T`.
    unsafe { ioctl(fd, req, name, arg) }?;
    Ok(value)
}

/// An `_IOW` ioctl: the kernel reads a `T`. Same checks as [`ioctl_read`], for `_IOW`.
fn ioctl_write<T: Pod>(fd: &File, req: u64, name: &str, value: &T) -> io::Result<()> {
    assert!(ioc_dir(req) == IOC_WRITE && ioc_size(req) == T::ENCODED_SIZE, "{name}: not an _IOW of this type");
    let arg = value as *const T as libc::c_ulong;
    // SAFETY: `arg` points to a live `T`, the type whose size `req` encodes (asserted above;
    // a header type such as `KvmSignalMask` carries the data its header announces), which the
    // kernel only reads; `T: Pod` has no uninitialised padding to leak and no address the
    // kernel would follow.
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

/// An `_IO` ioctl that returns a new file descriptor (`KVM_CREATE_VM`, `KVM_CREATE_VCPU`),
/// wrapped at once so that every path closes it.
fn ioctl_fd(fd: &File, req: u64, name: &str, arg: libc::c_ulong) -> io::Result<File> {
    let raw = ioctl_val(fd, req, name, arg)?;
    // SAFETY: the kernel just returned `raw` as a new descriptor for us alone: nothing else
    // owns it or will close it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(raw) }))
}

// ---------------------------------------------------------------------------------------------
// /dev/kvm, the VM, the vCPU
// ---------------------------------------------------------------------------------------------

/// The page size of x86-64, which KVM uses for the pages of the vCPU mapping.
const PAGE_SIZE: usize = 4096;

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
    fn vcpu_mmap_size(&self) -> io::Result<usize> {
        let n = ioctl_val(&self.fd, KVM_GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE", 0)?;
        usize::try_from(n).map_err(io::Error::other)
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

/// One virtual machine as the C's `vm_init` builds it (C: `struct vm`): the VM fd, guest RAM in
/// slot 0 at guest-physical 0, and one vCPU with its run area.
///
/// Fields drop top to bottom (C: `vm_destroy`): the vCPU (its run area unmapped, its fd
/// closed), then the VM fd, then the RAM, which the kernel has released by then.
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
        let fd = VmFd { fd: ioctl_fd(&kvm.fd, KVM_CREATE_VM, "KVM_CREATE_VM", 0)? };
        let mem = Mmap::anonymous(mem_size)?;
        // SAFETY: `mem` is moved into the returned `Vm` next to `fd` and declared after it and
        // after the vCPU, so it is unmapped only once the vCPU and the VM fd are closed (and
        // with them the kernel's VM); slot 0 is the VM's only slot.
        unsafe { fd.set_user_memory_region(0, 0, &mem) }?;
        let mmap_size = kvm.vcpu_mmap_size()?;
        let vcpu = fd.create_vcpu(0, mmap_size, kvm.coalesced_ring(mmap_size))?;
        Ok(Vm { vcpu, fd, mem })
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
    /// The kernel keeps reading and writing `mem` through its address after this returns:
    /// `mem` must stay mapped until this VM and every vCPU of it are gone (both fds closed and
    /// every run area unmapped), and must not overlap the memory of another slot.
    // SAFETY: an `unsafe fn` because the kernel keeps using `mem` after the call; its one
    // caller, `Vm::new`, keeps `mem` in the same `Vm`, dropped after the vCPU and the VM fd.
    unsafe fn set_user_memory_region(&self, slot: u32, gpa: u64, mem: &Mmap) -> io::Result<()> {
        let region = KvmUserspaceMemoryRegion {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: mem.len() as u64,
            userspace_addr: mem.addr(),
        };
        let arg = &region as *const KvmUserspaceMemoryRegion as libc::c_ulong;
        // SAFETY: `arg` points to a live region struct of exactly the size encoded in the
        // request, which the kernel copies; that it keeps using `mem` is this function's
        // contract, which the caller upholds.
        unsafe { ioctl(&self.fd, KVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION", arg) }?;
        Ok(())
    }

    /// `KVM_REGISTER_COALESCED_MMIO` with `pio = 1`: from now on KVM queues the guest's writes
    /// to ports `[port, port + size)` in the coalesced ring instead of exiting for each.
    pub fn register_coalesced_pio(&self, port: u16, size: u32) -> io::Result<()> {
        let zone = KvmCoalescedMmioZone { addr: u64::from(port), size, pio: 1 };
        ioctl_write(&self.fd, KVM_REGISTER_COALESCED_MMIO, "KVM_REGISTER_COALESCED_MMIO", &zone)
    }

    /// `KVM_CREATE_VCPU` and the mapping of its `kvm_run` area (`mmap_size` from
    /// `KVM_GET_VCPU_MMAP_SIZE`); `ring`: where the coalesced ring is in that mapping, if any.
    fn create_vcpu(&self, id: u32, mmap_size: usize, ring: Option<usize>) -> io::Result<Vcpu> {
        let fd = ioctl_fd(&self.fd, KVM_CREATE_VCPU, "KVM_CREATE_VCPU", libc::c_ulong::from(id))?;
        let run = Mmap::shared(&fd, mmap_size)?;
        if run.len() < RUN_EXIT_UNION + 256 {
            return Err(io::Error::other("KVM_GET_VCPU_MMAP_SIZE is smaller than struct kvm_run"));
        }
        Ok(Vcpu { fd, run, ring })
    }
}

/// A vCPU: its fd and its mapped `kvm_run` area. `Send`, not `Sync`: one thread runs it, and
/// that thread alone reads and writes the run area, always between two `KVM_RUN`s.
#[derive(Debug)]
pub struct Vcpu {
    fd: File,
    run: Mmap,
    /// Offset of the coalesced ring's page in `run`, when KVM has one there.
    ring: Option<usize>,
}

// ---------------------------------------------------------------------------------------------
// Exits, and the coalesced ring
// ---------------------------------------------------------------------------------------------

/// Why the vCPU left `KVM_RUN`, decoded from `kvm_run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuExit {
    /// `in`/`ins` or `out`/`outs` (`KVM_EXIT_IO`).
    Io(IoExit),
    /// The guest executed `hlt` (`KVM_EXIT_HLT`).
    Hlt,
    /// An access to guest-physical memory outside RAM (`KVM_EXIT_MMIO`).
    Mmio { phys_addr: u64, len: u32, is_write: bool },
    /// Triple fault (or INIT): the guest is gone (`KVM_EXIT_SHUTDOWN`).
    Shutdown,
    /// VM entry failed; the reason is hardware specific (`KVM_EXIT_FAIL_ENTRY`).
    FailEntry { reason: u64, cpu: u32 },
    /// KVM could not go on; suberror 1 = the instruction emulator failed.
    InternalError { suberror: u32 },
    /// A debug exception for the debugger (`KVM_EXIT_DEBUG`, see `KVM_SET_GUEST_DEBUG`).
    Debug(DebugExit),
    /// `KVM_RUN` returned early: a signal is pending (`EINTR`, `KVM_EXIT_INTR`) or KVM asked
    /// to be called again (`EAGAIN`). Not an error: the loop looks at its signals and resumes.
    Intr,
    /// An I/O exit whose size or data location makes no sense (never seen from a sane kernel).
    BadIo { size: u8, count: u32, data_offset: u64 },
    /// Any exit reason this hypervisor does not handle.
    Unknown(u32),
}

/// An I/O exit: `count` accesses of `size` bytes to `port`; their `size * count` bytes are at
/// `data_offset` in the run area (bounds already checked). Read them with
/// [`Vcpu::io_data`]; answer an IN with [`Vcpu::set_io_data`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoExit {
    pub out: bool,
    pub port: u16,
    pub size: u8,
    pub count: u32,
    pub data_offset: usize,
}

impl IoExit {
    /// How many bytes the exit moves.
    pub fn bytes(&self) -> usize {
        usize::from(self.size) * self.count as usize
    }
}

/// A debug exit: a single step (`exception` 1, `dr6` says which) or a debug-register
/// breakpoint; `pc` is the guest's RIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugExit {
    pub exception: u32,
    pub pc: u64,
    pub dr6: u64,
    pub dr7: u64,
}

/// Entries in the coalesced ring (`KVM_COALESCED_MMIO_MAX` for 4 KiB pages).
pub const RING_MAX: u32 = ((PAGE_SIZE - RING_ENTRIES) / size_of::<KvmCoalescedMmio>()) as u32;

impl Vcpu {
    /// `KVM_RUN`: enters the guest and returns why it left.
    pub fn run(&mut self) -> io::Result<VcpuExit> {
        // KVM_RUN is an _IO ioctl: the argument is ignored; the results land in `self.run`.
        match ioctl_val(&self.fd, KVM_RUN, "KVM_RUN", 0) {
            Ok(_) => self.decode_exit(),
            // The exit reason is stale after an error: not read.
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => Ok(VcpuExit::Intr),
            Err(e) => Err(e),
        }
    }

    /// C: the `switch (run->exit_reason)` and the reads of `run->io`.
    fn decode_exit(&self) -> io::Result<VcpuExit> {
        let reason: u32 = self.run.read_obj(RUN_EXIT_REASON)?;
        Ok(match reason {
            KVM_EXIT_IO => self.decode_io(self.run.read_obj(RUN_EXIT_UNION)?),
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
                VcpuExit::Debug(DebugExit { exception: d.exception, pc: d.pc, dr6: d.dr6, dr7: d.dr7 })
            }
            KVM_EXIT_INTR => VcpuExit::Intr,
            other => VcpuExit::Unknown(other),
        })
    }

    fn decode_io(&self, io: KvmRunIo) -> VcpuExit {
        let n = u64::from(io.size) * u64::from(io.count);
        let fits = io.data_offset.checked_add(n).is_some_and(|end| end <= self.run.len() as u64);
        let out = match io.direction {
            KVM_EXIT_IO_IN => Some(false),
            KVM_EXIT_IO_OUT => Some(true),
            _ => None,
        };
        match out {
            Some(out) if matches!(io.size, 1 | 2 | 4) && fits => VcpuExit::Io(IoExit {
                out,
                port: io.port,
                size: io.size,
                count: io.count,
                data_offset: io.data_offset as usize,
            }),
            _ => VcpuExit::BadIo { size: io.size, count: io.count, data_offset: io.data_offset },
        }
    }

    /// Copies I/O data out of the run area (`offset` is relative to the exit's data).
    pub fn io_data(&self, io: &IoExit, offset: usize, dst: &mut [u8]) -> io::Result<()> {
        self.run.read(io.data_offset + offset, dst)
    }

    /// Copies the answer of an IN exit into the run area; KVM hands it to the guest at the
    /// next `run`.
    pub fn set_io_data(&self, io: &IoExit, offset: usize, src: &[u8]) -> io::Result<()> {
        self.run.write(io.data_offset + offset, src)
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

    /// `KVM_SET_SIGNAL_MASK`: the calling thread's signal mask while it is inside `KVM_RUN`
    /// (`mask`: the kernel's 64-bit sigset; see `signals.rs`).
    pub fn set_signal_mask(&self, mask: u64) -> io::Result<()> {
        let arg = KvmSignalMask { len: 8, sigset: [mask as u32, (mask >> 32) as u32] };
        ioctl_write(&self.fd, KVM_SET_SIGNAL_MASK, "KVM_SET_SIGNAL_MASK", &arg)
    }

    /// Whether this vCPU's mapping holds a coalesced ring that port writes can go to.
    pub fn has_coalesced_ring(&self) -> bool {
        self.ring.is_some()
    }

    /// Takes the oldest write out of the coalesced ring: its slot number and the entry, or
    /// `None` when the ring is empty (or there is none). KVM adds entries only while this VM's
    /// one vCPU is in `KVM_RUN`, so between runs plain copies are enough.
    pub fn pop_coalesced(&self) -> io::Result<Option<(u32, KvmCoalescedMmio)>> {
        let Some(ring) = self.ring else { return Ok(None) };
        let first: u32 = self.run.read_obj(ring + RING_FIRST)?;
        let last: u32 = self.run.read_obj(ring + RING_LAST)?;
        if first == last {
            return Ok(None);
        }
        if first >= RING_MAX {
            return Err(io::Error::other(format!("coalesced ring index {first} out of range")));
        }
        let entry = self.run.read_obj(ring + RING_ENTRIES + first as usize * size_of::<KvmCoalescedMmio>())?;
        self.run.write(ring + RING_FIRST, &((first + 1) % RING_MAX).to_le_bytes())?;
        Ok(Some((first, entry)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_and_direction_encoded_in_each_ioctl_is_its_argument_type() {
        assert_eq!(ioc_size(KVM_GET_REGS), size_of::<KvmRegs>());
        assert_eq!(ioc_size(KVM_SET_REGS), size_of::<KvmRegs>());
        assert_eq!(ioc_size(KVM_GET_SREGS), size_of::<KvmSregs>());
        assert_eq!(ioc_size(KVM_SET_SREGS), size_of::<KvmSregs>());
        assert_eq!(ioc_size(KVM_SET_USER_MEMORY_REGION), size_of::<KvmUserspaceMemoryRegion>());
        assert_eq!(ioc_size(KVM_SET_GUEST_DEBUG), size_of::<KvmGuestDebug>());
        assert_eq!(ioc_size(KVM_REGISTER_COALESCED_MMIO), size_of::<KvmCoalescedMmioZone>());
        assert_eq!(ioc_size(KVM_SET_SIGNAL_MASK), 4, "the header; the mask follows it");
        assert_eq!((ioc_dir(KVM_RUN), ioc_size(KVM_RUN)), (IOC_NONE, 0));
        assert_eq!(ioc_dir(KVM_GET_REGS), IOC_READ);
        assert_eq!(ioc_dir(KVM_SET_REGS), IOC_WRITE);
        assert_eq!(RING_MAX, 170, "KVM_COALESCED_MMIO_MAX with 4 KiB pages");
    }

    #[test]
    #[should_panic(expected = "not an _IO request")]
    fn an_integer_argument_is_refused_for_an_ioctl_that_takes_a_pointer() {
        let f = File::open("/dev/null").unwrap();
        let _ = ioctl_val(&f, KVM_GET_REGS, "KVM_GET_REGS", 0x1000);
    }

    #[test]
    fn a_header_type_encodes_the_size_of_its_header() {
        assert_eq!(KvmSignalMask::ENCODED_SIZE, ioc_size(KVM_SET_SIGNAL_MASK));
        assert_eq!(KvmRegs::ENCODED_SIZE, size_of::<KvmRegs>());
    }

    #[test]
    #[should_panic(expected = "not an _IOW of this type")]
    fn a_struct_of_the_wrong_size_is_refused() {
        let f = File::open("/dev/null").unwrap();
        let _ = ioctl_write(&f, KVM_SET_REGS, "KVM_SET_REGS", &0u64);
    }
}
