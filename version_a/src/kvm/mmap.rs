//! An owned memory mapping (guest RAM, a vCPU's `kvm_run` area), reached only by
//! bounds-checked copies.
//!
//! C counterpart: the two `mmap` calls of `vm_init` and the `munmap` calls of `vm_destroy`;
//! where the C writes through `v->mem + addr` and `v->run->...`, we copy in and out.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

use super::sys::Pod;

/// An owned memory mapping, unmapped on drop.
///
/// No `&[u8]` into the mapping is ever handed out: the guest and the kernel write to it behind
/// Rust's back. Neither `Send` nor `Sync`: a VM is created on the thread that runs it and
/// stays there, so one thread copies in and out; and since every VM has one vCPU, run by that
/// same thread, the guest never writes its RAM while we copy (the vCPU is outside `KVM_RUN`
/// then).
#[derive(Debug)]
pub struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
    /// Neither `Send` nor `Sync`, whatever `NonNull` is (a raw pointer is neither).
    not_send_sync: PhantomData<*mut u8>,
}

const PROT_RW: libc::c_int = libc::PROT_READ | libc::PROT_WRITE;

impl Mmap {
    /// Private anonymous memory, zero-filled, faulted in only where touched (guest RAM).
    pub fn anonymous(len: usize) -> io::Result<Mmap> {
        Mmap::map(len, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE, None, "mmap guest RAM")
    }

    /// A shared mapping of `len` bytes of `fd` from offset 0 (the vCPU's `kvm_run` area).
    pub fn shared(fd: &File, len: usize) -> io::Result<Mmap> {
        Mmap::map(len, libc::MAP_SHARED, Some(fd), "mmap kvm_run")
    }

    fn map(len: usize, flags: libc::c_int, fd: Option<&File>, what: &str) -> io::Result<Mmap> {
        let raw = fd.map_or(-1, |f| f.as_raw_fd());
        // SAFETY: a new mapping at an address of the kernel's choice (null hint, no MAP_FIXED)
        // cannot alias any memory we use; `raw` is -1 (anonymous) or an open fd; the result is
        // checked before use.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, PROT_RW, flags, raw, 0) };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other(format!("{what}: returned 0")))?;
        Ok(Mmap { ptr, len, not_send_sync: PhantomData })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The host address of the mapping, for `KVM_SET_USER_MEMORY_REGION` only.
    pub(super) fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// The address of `[off, off + n)` inside the mapping, after checking that it is inside.
    fn at(&self, off: usize, n: usize) -> io::Result<*mut u8> {
        match off.checked_add(n) {
            Some(end) if end <= self.len => Ok(self.ptr.as_ptr().wrapping_add(off)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("access [{off:#x}, +{n:#x}) outside mapping of {:#x} bytes", self.len),
            )),
        }
    }

    /// The host address of `[off, off + n)` after checking that it lies inside the mapping,
    /// for the FFI that moves file data straight into or out of guest RAM (version C's
    /// `hostfs.rs`). The pointer is valid while `self` is alive; use it for no reference.
    #[allow(dead_code)] // versions A and B move no file data
    pub fn ptr_at(&self, off: usize, n: usize) -> io::Result<*mut u8> {
        self.at(off, n)
    }

    /// Copies `dst.len()` bytes at `off` out of the mapping.
    pub fn read(&self, off: usize, dst: &mut [u8]) -> io::Result<()> {
        let src = self.at(off, dst.len())?;
        // SAFETY: `src` is the start of `dst.len()` bytes inside the mapping (`at` checked);
        // `dst` is ordinary host memory, so it cannot overlap the mapping; no reference into
        // the mapping exists; and nothing else writes these bytes now: `Mmap` is not `Sync`,
        // and the only other writers, the kernel and the guest's one vCPU, write only while
        // that vCPU is inside `KVM_RUN`, which the thread holding this `Mmap` is not.
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
        // SAFETY: the bytes are inside the mapping (`at` checked) and not written meanwhile
        // (as in `read`); `T: Pod` makes every bit pattern a valid `T`; `read_unaligned` has
        // no alignment requirement.
        Ok(unsafe { src.read_unaligned() })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping this value created and owns alone; it is
        // unmapped once, here, and no pointer into it outlives `self` (`ptr_at`'s users keep
        // theirs only for one call).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_in_and_out_and_refuses_anything_out_of_bounds() {
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
    fn anonymous_memory_starts_zeroed() {
        let m = Mmap::anonymous(4096).unwrap();
        let mut page = vec![0xffu8; 4096];
        m.read(0, &mut page).unwrap();
        assert!(page.iter().all(|&b| b == 0));
    }
}
