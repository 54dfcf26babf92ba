//! The KVM room: `/dev/kvm`, the VM with its RAM and its vCPU, as owning handles, over the
//! requests and structs of `<linux/kvm.h>` that `sys.rs` declares. What each type rules out,
//! and what each `unsafe` block relies on: docs/UNSAFE.md.
//!
//! C counterpart: `vm_init` and `vm_destroy` (open `/dev/kvm`, check the API version, create
//! the VM and its memory slot, create the vCPU and map its `kvm_run` area; then unmap and close
//! it all), and the reads of `run->exit_reason` and `run->io` in the `KVM_RUN` loop.
#![allow(unsafe_code)]

mod sys;

use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

pub use sys::*;

/// `ioctl(fd, number, arg)`; a negative result becomes an `io::Error` that names the request
/// (as the C's `perror("KVM_CREATE_VM")` does).
///
/// # Safety
/// `arg` must be what the kernel expects for `number`: an integer for `_IO` requests, or the
/// address of a live object of the size the kernel reads or writes (writable for `_IOR`), holding
/// no address the kernel keeps using after the call unless the caller keeps that memory alive.
// SAFETY: the kernel reads or writes through `arg`; each caller says why its `arg` fits.
unsafe fn ioctl(fd: &File, number: u64, name: &str, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: forwarded from this function's contract; `fd` is an open descriptor we own.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), number as _, arg) };
    if r < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{name}: {e}")))
    } else {
        Ok(r)
    }
}

impl Ioctl<Value, ()> {
    fn call(&self, fd: &File, arg: libc::c_ulong) -> io::Result<libc::c_int> {
        // SAFETY: an `_IO` request (its type says so): the kernel never dereferences `arg`.
        unsafe { ioctl(fd, self.number, self.name, arg) }
    }
}

impl Ioctl<NewFd, ()> {
    /// The new descriptor is owned at once, so that every path closes it.
    fn call(&self, fd: &File, arg: libc::c_ulong) -> io::Result<File> {
        let raw = Ioctl::<Value, ()> { number: self.number, name: self.name, kind: PhantomData }.call(fd, arg)?;
        // SAFETY: a `NewFd` request returns a new descriptor that nothing else owns or closes.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(raw) }))
    }
}

impl<T: Pod> Ioctl<Write, T> {
    fn call(&self, fd: &File, value: &T) -> io::Result<()> {
        // SAFETY: the request's number encodes `T` (or, for `KvmSignalMask`, a header that the
        // mask follows inside the same `T`), so the kernel reads only inside this live value;
        // `T: Pod` has no uninitialised bytes and no address the kernel would follow.
        unsafe { ioctl(fd, self.number, self.name, value as *const T as libc::c_ulong) }?;
        Ok(())
    }
}

/// The page size of x86-64, which KVM uses for the pages of the vCPU mapping.
const PAGE_SIZE: usize = 4096;

/// `/dev/kvm`, the system handle (C: `kvm_fd`).
#[derive(Debug)]
pub struct Kvm {
    fd: File,
}

impl Kvm {
    /// Opens `/dev/kvm` read-write (std sets `O_CLOEXEC`) and checks the API version.
    pub fn open() -> io::Result<Kvm> {
        let fd = File::options().read(true).write(true).open("/dev/kvm")?;
        let version = KVM_GET_API_VERSION.call(&fd, 0)?;
        if version != KVM_API_VERSION {
            return Err(io::Error::other(format!("KVM_GET_API_VERSION: got {version}, need {KVM_API_VERSION}")));
        }
        Ok(Kvm { fd })
    }
}

/// What the C's `vm_init` makes (C: `struct vm`), all private: the VM fd, guest RAM, one vCPU.
/// Fields drop top to bottom: the vCPU, then the [`Slot`]: the memory slot removed (KVM forgets
/// the RAM), the RAM unmapped, the VM fd closed.
#[derive(Debug)]
pub struct Machine {
    vcpu: Vcpu,
    slot: Slot,
}

/// Guest RAM in memory slot 0 of its VM, and the VM fd.
#[derive(Debug)]
struct Slot {
    ram: GuestRam,
    vm: VmFd,
}

impl Machine {
    /// C: `vm_init`: `KVM_CREATE_VM`, `ram_size` bytes of anonymous RAM in slot 0 at
    /// guest-physical 0, `KVM_CREATE_VCPU` 0 and the mapping of its `kvm_run` area.
    pub fn new(kvm: &Kvm, ram_size: usize) -> io::Result<Machine> {
        let vm = VmFd { fd: KVM_CREATE_VM.call(&kvm.fd, 0)? };
        let ram = Mapping::new(ram_size, None)?;
        let (size, addr) = (ram.len as u64, ram.ptr.as_ptr() as u64);
        let region = KvmUserspaceMemoryRegion { memory_size: size, userspace_addr: addr, ..Default::default() };
        let arg = &region as *const KvmUserspaceMemoryRegion as libc::c_ulong;
        // SAFETY: `arg` points to a live region struct of the size the request encodes, which
        // the kernel copies. The kernel keeps using the RAM's address afterwards: the RAM goes
        // into a `Slot`, private to the `Machine`, whose `Drop` removes the slot before the RAM
        // is unmapped, so no safe code can free, move or replace the RAM meanwhile.
        unsafe { ioctl(&vm.fd, KVM_SET_USER_MEMORY_REGION.number, KVM_SET_USER_MEMORY_REGION.name, arg) }?;
        let slot = Slot { ram, vm };
        let mmap_size = usize::try_from(KVM_GET_VCPU_MMAP_SIZE.call(&kvm.fd, 0)?).map_err(io::Error::other)?;
        let fd = KVM_CREATE_VCPU.call(&slot.vm.fd, 0)?;
        let run = Mapping::new(mmap_size, Some(&fd))?;
        if run.len < RUN_EXIT_UNION + 256 {
            return Err(io::Error::other("KVM_GET_VCPU_MMAP_SIZE is smaller than struct kvm_run"));
        }
        Ok(Machine { vcpu: Vcpu { fd, run, ring: None }, slot })
    }

    /// The vCPU, to run it, and guest RAM, to copy in and out.
    pub fn parts(&mut self) -> (&mut Vcpu, &GuestRam) {
        (&mut self.vcpu, &self.slot.ram)
    }

    /// Has KVM queue the guest's writes to `port` in the vCPU's coalesced ring instead of
    /// exiting for each (`KVM_REGISTER_COALESCED_MMIO` with `pio = 1`). `Ok(false)`: this KVM
    /// cannot (no `KVM_CAP_COALESCED_PIO`, or no ring in the vCPU mapping).
    pub fn coalesce_port(&mut self, port: u16) -> io::Result<bool> {
        let vm = &self.slot.vm.fd;
        let page = usize::try_from(KVM_CHECK_EXTENSION.call(vm, KVM_CAP_COALESCED_MMIO)?).unwrap_or(0);
        let off = page * PAGE_SIZE;
        if page == 0 || KVM_CHECK_EXTENSION.call(vm, KVM_CAP_COALESCED_PIO)? <= 0 || off + PAGE_SIZE > self.vcpu.run.len
        {
            return Ok(false);
        }
        let zone = KvmCoalescedMmioZone { addr: u64::from(port), size: 1, pio: 1 };
        KVM_REGISTER_COALESCED_MMIO.call(vm, &zone)?;
        self.vcpu.ring = Some(off);
        Ok(true)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let region = KvmUserspaceMemoryRegion { slot: 0, ..KvmUserspaceMemoryRegion::default() };
        let arg = &region as *const KvmUserspaceMemoryRegion as libc::c_ulong;
        // SAFETY: `arg` points to a live region struct of the size the request encodes; a
        // region of size 0 deletes slot 0 and hands the kernel no address.
        let removed =
            unsafe { ioctl(&self.vm.fd, KVM_SET_USER_MEMORY_REGION.number, KVM_SET_USER_MEMORY_REGION.name, arg) };
        if removed.is_err() {
            // KVM may still use the RAM: never unmap it (the process ends soon anyway).
            self.ram.len = 0;
        }
    }
}

/// A VM fd (C: `vm_fd`).
#[derive(Debug)]
pub struct VmFd {
    fd: File,
}

/// An owned memory mapping (guest RAM, a vCPU's run area), unmapped on drop, reached only by
/// bounds-checked copies (the guest and the kernel write to it behind Rust's back). Neither
/// `Send` nor `Sync`: it stays on the thread that runs its VM's one vCPU, outside `KVM_RUN`.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// `len` bytes of `fd` from offset 0, shared (a vCPU's run area); or, with no fd, private
    /// anonymous memory, zero-filled, faulted in only where touched (guest RAM).
    fn new(len: usize, fd: Option<&File>) -> io::Result<Mapping> {
        let (flags, raw, what) = match fd {
            Some(f) => (libc::MAP_SHARED, f.as_raw_fd(), "mmap kvm_run"),
            None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE, -1, "mmap guest RAM"),
        };
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: a new mapping at an address of the kernel's choice (null hint, no MAP_FIXED)
        // cannot alias any memory we use; `raw` is -1 (anonymous) or an open vCPU fd; the
        // result is checked before use.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, raw, 0) };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other(format!("{what}: returned 0")))?;
        Ok(Mapping { ptr, len })
    }

    /// The address of `[off, off + n)` inside the mapping, after checking that it is inside.
    fn at(&self, off: u64, n: usize) -> io::Result<*mut u8> {
        match usize::try_from(off).ok().and_then(|off| Some((off, off.checked_add(n)?))) {
            Some((off, end)) if end <= self.len => Ok(self.ptr.as_ptr().wrapping_add(off)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("access [{off:#x}, +{n:#x}) outside mapping of {:#x} bytes", self.len),
            )),
        }
    }

    /// Copies the `dst.len()` bytes at `off` (in guest RAM: the guest-physical address) out.
    pub fn read(&self, off: u64, dst: &mut [u8]) -> io::Result<()> {
        let src = self.at(off, dst.len())?;
        // SAFETY: `src` starts `dst.len()` bytes inside the mapping (`at` checked); `dst`, host
        // memory, cannot overlap it; no reference into the mapping exists; nothing else writes
        // these bytes now: a `Mapping` stays on one thread, and the kernel and the guest's one vCPU
        // write only while that vCPU is inside `KVM_RUN`, which the thread holding it is not.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Copies `src` into the mapping at `off`.
    pub fn write(&self, off: u64, src: &[u8]) -> io::Result<()> {
        let dst = self.at(off, src.len())?;
        // SAFETY: as in `read`, with the roles swapped.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        Ok(())
    }

    /// Reads a plain-old-data value at `off` (any alignment).
    fn read_obj<T: Pod>(&self, off: usize) -> io::Result<T> {
        let src = self.at(off as u64, size_of::<T>())?.cast::<T>();
        // SAFETY: the bytes are inside the mapping (`at` checked) and not written meanwhile (as
        // in `read`); `T: Pod` makes any bits a valid `T`; `read_unaligned` needs no alignment.
        Ok(unsafe { src.read_unaligned() })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: `ptr`/`len` describe a mapping this value created and owns alone, unmapped
            // once, here; no pointer into it outlives `self`. (`len` 0: KVM may still use it.)
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

/// Guest RAM (C: `mem`): guest-physical `[0, len)`, owned by its [`Machine`] alone.
pub type GuestRam = Mapping;

/// A vCPU (C: `vcpu_fd` and `run`): its fd and its mapped `kvm_run` area.
#[derive(Debug)]
pub struct Vcpu {
    fd: File,
    run: Mapping,
    /// Offset of the coalesced ring's page in `run`, once a port goes through it.
    ring: Option<usize>,
}

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
    Debug { exception: u32, pc: u64, dr6: u64 },
    /// `KVM_RUN` returned early (`EINTR`, `EAGAIN`, `KVM_EXIT_INTR`): not an error.
    Intr,
    /// An I/O exit whose size or data location makes no sense (never seen from a sane kernel).
    BadIo { size: u8, count: u32, data_offset: u64 },
    /// Any exit reason this hypervisor does not handle.
    Unknown(u32),
}

/// An I/O exit: `count` accesses of `size` bytes to `port`; their `bytes` (`size * count`) are
/// at `data_offset` in the run area (bounds already checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoExit {
    pub out: bool,
    pub port: u16,
    pub size: u8,
    pub count: u32,
    pub bytes: usize,
    pub data_offset: usize,
}

/// Entries in the coalesced ring (`KVM_COALESCED_MMIO_MAX` for 4 KiB pages).
pub const RING_MAX: u32 = ((PAGE_SIZE - RING_ENTRIES) / size_of::<KvmCoalescedMmio>()) as u32;

impl Vcpu {
    /// C: `ioctl(vcpu_fd, KVM_RUN, 0)`, then the `switch (run->exit_reason)` and the reads of
    /// `run->io`: enters the guest and returns why it left.
    pub fn run(&mut self) -> io::Result<VcpuExit> {
        if let Err(e) = KVM_RUN.call(&self.fd, 0) {
            // EINTR or EAGAIN: not an error. The exit reason is stale after an error: not read.
            let again = matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock);
            return if again { Ok(VcpuExit::Intr) } else { Err(e) };
        }
        let (run, union) = (&self.run, RUN_EXIT_UNION);
        Ok(match run.read_obj::<u32>(RUN_EXIT_REASON)? {
            KVM_EXIT_IO => {
                let io: KvmRunIo = run.read_obj(union)?;
                let n = usize::from(io.size) * io.count as usize;
                let fits = (io.data_offset as usize).checked_add(n).is_some_and(|end| end <= run.len);
                match io.direction {
                    KVM_EXIT_IO_IN | KVM_EXIT_IO_OUT if matches!(io.size, 1 | 2 | 4) && fits => VcpuExit::Io(IoExit {
                        out: io.direction == KVM_EXIT_IO_OUT,
                        port: io.port,
                        size: io.size,
                        count: io.count,
                        bytes: n,
                        data_offset: io.data_offset as usize,
                    }),
                    _ => VcpuExit::BadIo { size: io.size, count: io.count, data_offset: io.data_offset },
                }
            }
            KVM_EXIT_HLT => VcpuExit::Hlt,
            KVM_EXIT_MMIO => {
                let m: KvmRunMmio = run.read_obj(union)?;
                VcpuExit::Mmio { phys_addr: m.phys_addr, len: m.len, is_write: m.is_write != 0 }
            }
            KVM_EXIT_SHUTDOWN => VcpuExit::Shutdown,
            KVM_EXIT_FAIL_ENTRY => {
                let f: KvmRunFailEntry = run.read_obj(union)?;
                VcpuExit::FailEntry { reason: f.hardware_entry_failure_reason, cpu: f.cpu }
            }
            KVM_EXIT_INTERNAL_ERROR => {
                VcpuExit::InternalError { suberror: run.read_obj::<KvmRunInternal>(union)?.suberror }
            }
            KVM_EXIT_DEBUG => {
                let d: KvmDebugExitArch = run.read_obj(union)?;
                VcpuExit::Debug { exception: d.exception, pc: d.pc, dr6: d.dr6 }
            }
            KVM_EXIT_INTR => VcpuExit::Intr,
            other => VcpuExit::Unknown(other),
        })
    }

    /// With `on`, KVM stores the registers and system registers in the run area at every exit
    /// (`KVM_CAP_SYNC_REGS`): no ioctl to read them, each of which costs several µs on a nested
    /// KVM. What is stored now is from before: marked stale.
    pub fn store_regs_at_exits(&self, on: bool) -> io::Result<()> {
        let sets = if on { KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS } else { 0 };
        self.run.write(RUN_VALID_REGS as u64, &sets.to_le_bytes())?;
        self.stale_stored_regs()
    }

    /// The registers and system registers KVM stored at the last exit, if any and not written since.
    pub fn stored_regs(&self) -> io::Result<Option<(KvmRegs, KvmSregs)>> {
        let mut sets = [0u8; 8];
        self.run.read(RUN_VALID_REGS as u64, &mut sets)?;
        let both = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
        if u64::from_le_bytes(sets) & both != both {
            return Ok(None);
        }
        let regs: KvmRegs = self.run.read_obj(RUN_SYNC_REGS)?;
        if regs.rflags & RFLAGS_FIXED == 0 {
            return Ok(None); // stale
        }
        Ok(Some((regs, self.run.read_obj(RUN_SYNC_REGS + size_of::<KvmRegs>())?)))
    }

    /// Marks the stored registers stale, after an ioctl wrote registers: RFLAGS 0 in the stored
    /// copy, which no vCPU can have (bit 1 is always set) and KVM overwrites at the next exit.
    /// (Before Linux 4.16 KVM stores nothing: they stay stale, and every read is an ioctl.)
    pub fn stale_stored_regs(&self) -> io::Result<()> {
        self.run.write((RUN_SYNC_REGS + std::mem::offset_of!(KvmRegs, rflags)) as u64, &0u64.to_le_bytes())
    }

    /// Copies I/O data out of the run area (`offset` is relative to the exit's data).
    pub fn io_data(&self, io: &IoExit, offset: usize, dst: &mut [u8]) -> io::Result<()> {
        self.run.read((io.data_offset + offset) as u64, dst)
    }

    /// Copies the answer of an IN exit into the run area, for the guest at the next `run`.
    pub fn set_io_data(&self, io: &IoExit, offset: usize, src: &[u8]) -> io::Result<()> {
        self.run.write((io.data_offset + offset) as u64, src)
    }

    /// An `_IOR` request on the vCPU, `vcpu.get(KVM_GET_SREGS)`: the kernel fills a `T`.
    pub fn get<T: Pod>(&self, request: Ioctl<Read, T>) -> io::Result<T> {
        let mut value = T::default();
        // SAFETY: the request's number encodes `T` (its type says so, and only `sys.rs` builds
        // requests), so the kernel writes at most a `T` into this live, writable one; `T: Pod`
        // makes whatever it writes a valid `T`.
        unsafe { ioctl(&self.fd, request.number, request.name, &mut value as *mut T as libc::c_ulong) }?;
        Ok(value)
    }

    /// An `_IOW` request on the vCPU, `vcpu.set(KVM_SET_REGS, &regs)`: the kernel reads a `T`.
    pub fn set<T: Pod>(&self, request: Ioctl<Write, T>, value: &T) -> io::Result<()> {
        request.call(&self.fd, value)
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
        self.run.write((ring + RING_FIRST) as u64, &((first + 1) % RING_MAX).to_le_bytes())?;
        Ok(Some((first, entry)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_in_and_out_and_refuses_anything_out_of_bounds() {
        let m = Mapping::new(2 * 4096, None).unwrap();
        m.write(8190, b"hi").unwrap();
        let mut two = [0u8; 2];
        m.read(8190, &mut two).unwrap();
        assert_eq!(&two, b"hi");
        assert_eq!(m.read_obj::<u32>(8188).unwrap(), u32::from_le_bytes([0, 0, b'h', b'i']));
        for (off, n) in [(8191, 2), (8192, 1), (u64::MAX, 2), (0, 8193)] {
            let mut buf = vec![0u8; n];
            assert!(m.read(off, &mut buf).is_err(), "read {off:#x}+{n}");
            assert!(m.write(off, &buf).is_err(), "write {off:#x}+{n}");
        }
        assert!(m.read_obj::<u32>(8189).is_err());
        m.read(8192, &mut []).unwrap(); // an empty access at the very end is in bounds
    }

    #[test]
    fn anonymous_memory_starts_zeroed() {
        let m = Mapping::new(4096, None).unwrap();
        let mut page = vec![0xffu8; 4096];
        m.read(0, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 0));
    }

    #[test]
    fn the_ring_holds_170_entries() {
        assert_eq!(RING_MAX, 170, "KVM_COALESCED_MMIO_MAX with 4 KiB pages");
    }
}
