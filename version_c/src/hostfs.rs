//! Version C's second FFI room: host files for the guest file device.
//!
//! JUSTIFICATION: std opens files by path only. To open a guest-chosen name *inside* the VM's
//! private directory, so that no name can ever resolve outside it, the sandbox opens the
//! directory once and then uses `openat(2)` / `unlinkat(2)` relative to that descriptor (the C
//! original built the path string "../Guest/" + name instead, which a name like `../../x`
//! escaped). And std has no way to `read(2)` into memory that is not a Rust slice: the bulk
//! commands move file data straight into and out of guest RAM.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::kvm::Mmap;

//
// JUSTIFICATION: std opens files by path only. To open a guest-chosen name *inside* the VM's
// private directory, so that no name can ever resolve outside it, the sandbox opens the
// directory once and then uses `openat(2)` / `unlinkat(2)` relative to that descriptor (the C
// original built the path string "../Guest/" + name instead, which a name like `../../x`
// escaped). And std has no way to `read(2)` into memory that is not a Rust slice: the bulk
// commands move file data straight into and out of guest RAM.

/// `openat(2)` relative to the directory `dir`, always with `O_NOFOLLOW | O_CLOEXEC` added.
///
/// `O_NOFOLLOW` makes a symbolic link in the last component fail with `ELOOP` instead of being
/// followed; `name` should be a plain file name (no `/`), which the caller checks. `mode` is used
/// only when `flags` contains `O_CREAT`. Retried on `EINTR`.
pub fn openat(dir: &File, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    loop {
        // SAFETY: `dir.as_raw_fd()` is an open descriptor borrowed from `dir`, which outlives the
        // call; `name.as_ptr()` points to a NUL-terminated string owned by `name` for the whole
        // call, and openat keeps neither. The variadic mode is passed as `c_uint`, the promoted
        // type of `mode_t` that openat reads (only when O_CREAT is set).
        let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, libc::c_uint::from(mode)) };
        if fd >= 0 {
            // SAFETY: openat just returned `fd`: a newly opened descriptor that nothing else owns
            // or will close, so `OwnedFd` may take ownership and close it exactly once.
            return Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// `unlinkat(2)` of the file `name` in the directory `dir` (never a directory: no `AT_REMOVEDIR`).
pub fn unlinkat(dir: &File, name: &CStr) -> io::Result<()> {
    // SAFETY: `dir.as_raw_fd()` is an open descriptor borrowed from `dir` for the whole call;
    // `name.as_ptr()` is a NUL-terminated string owned by `name` for the whole call; unlinkat
    // keeps neither pointer.
    let rc = unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// `read(2)` from `file` straight into guest RAM at `[off, off + len)`, looping until
/// `len` bytes or end of file. Returns the bytes read; only those bytes are changed.
/// An error after some bytes arrived returns those bytes (the error shows again next time).
pub fn read_into_ram(mem: &Mmap, file: &File, off: usize, len: usize) -> io::Result<usize> {
    let dst = mem.ptr_at(off, len)?;
    let mut got = 0;
    while got < len {
        // SAFETY: `dst + got .. dst + len` lies inside the mapping (`ptr_at` checked the whole
        // range); read(2) writes at most `len - got` bytes there and keeps no pointer; no
        // Rust reference into the mapping exists.
        let n = unsafe { libc::read(file.as_raw_fd(), dst.wrapping_add(got).cast(), len - got) };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    _ if got > 0 => break,
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(got)
}

/// `write(2)` all of `[off, off + len)` of guest RAM to `file`.
pub fn write_from_ram(mem: &Mmap, file: &File, off: usize, len: usize) -> io::Result<()> {
    let src = mem.ptr_at(off, len)?;
    let mut done = 0;
    while done < len {
        // SAFETY: `src + done .. src + len` lies inside the mapping (`ptr_at` checked the whole
        // range); write(2) only reads those bytes and keeps no pointer.
        let n = unsafe { libc::write(file.as_raw_fd(), src.wrapping_add(done).cast(), len - done) };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(io::ErrorKind::WriteZero.into()),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}
