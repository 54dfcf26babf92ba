//! Host files for the guest file device: version C's third FFI room (besides `kvm/` and
//! `signals.rs`).
//!
//! Why std cannot do this:
//!
//! - std opens files by path only. To open a guest-chosen name *inside* the VM's private
//!   directory, so that no name can ever resolve outside it, the sandbox opens the directory once
//!   and then uses `openat(2)` / `unlinkat(2)` relative to that descriptor (the C original built
//!   the path string "../Guest/" + name instead, which a name like `../../x` escaped).
//! - std can only `read(2)` into and `write(2)` out of Rust slices, and no slice into guest RAM
//!   may exist (the guest and the kernel change it behind Rust's back). The bulk commands move
//!   file data straight between a host file and guest RAM, through [`Mmap::ptr_at`], the raw
//!   address of a bounds-checked range of the mapping.
//!
//! Everything else about files (metadata, `set_len`, plain reads and writes) uses std.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::kvm::Mmap;

/// A write that stopped early: `written` bytes reached the file before `error`.
#[derive(Debug)]
pub struct ShortWrite {
    pub written: usize,
    pub error: io::Error,
}

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

/// `read(2)` from `file` straight into guest RAM at `[off, off + len)`, looping until `len`
/// bytes or end of file. Returns the bytes read; only those bytes of RAM are changed. A range
/// outside the mapping is refused before anything is read. An error after some bytes arrived
/// returns those bytes (the error shows again next time).
pub fn read_into_ram(mem: &Mmap, file: &File, off: usize, len: usize) -> io::Result<usize> {
    let dst = mem.ptr_at(off, len)?;
    let mut got = 0;
    while got < len {
        // SAFETY: `dst + got .. dst + len` lies inside the mapping (`ptr_at` checked the whole
        // range) and `mem` keeps the mapping alive for the whole call; read(2) writes at most
        // `len - got` bytes there and keeps no pointer; no Rust reference into the mapping exists.
        let n = unsafe { libc::read(file.as_raw_fd(), dst.wrapping_add(got).cast(), len - got) };
        match usize::try_from(n) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => {
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

/// `write(2)` all of guest RAM `[off, off + len)` to `file`. On failure, says how many bytes
/// reached the file before the error (0 when the range is outside the mapping: refused before
/// anything is written), so that the caller can take them back.
pub fn write_from_ram(mem: &Mmap, file: &File, off: usize, len: usize) -> Result<(), ShortWrite> {
    let src = mem.ptr_at(off, len).map_err(|error| ShortWrite { written: 0, error })?;
    let mut done = 0;
    while done < len {
        // SAFETY: `src + done .. src + len` lies inside the mapping (`ptr_at` checked the whole
        // range) and `mem` keeps the mapping alive for the whole call; write(2) only reads
        // those bytes and keeps no pointer.
        let n = unsafe { libc::write(file.as_raw_fd(), src.wrapping_add(done).cast(), len - done) };
        match usize::try_from(n) {
            Ok(0) => return Err(ShortWrite { written: done, error: io::ErrorKind::WriteZero.into() }),
            Ok(n) => done += n,
            Err(_) => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(ShortWrite { written: done, error });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TempDir;

    #[test]
    fn openat_stays_in_its_directory_and_never_follows_a_symlink() {
        use std::io::{Read, Write};
        let tmp = TempDir::new("openat");
        let dir = File::open(&tmp.0).unwrap();
        let mut f = openat(&dir, c"x", libc::O_WRONLY | libc::O_CREAT, 0o644).unwrap();
        f.write_all(b"hello").unwrap();
        let mut text = String::new();
        openat(&dir, c"x", libc::O_RDONLY, 0).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello");
        std::fs::write(tmp.join("target"), b"outside").unwrap();
        std::os::unix::fs::symlink(tmp.join("target"), tmp.join("link")).unwrap();
        let err = openat(&dir, c"link", libc::O_WRONLY | libc::O_CREAT, 0o644).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        assert_eq!(std::fs::read(tmp.join("target")).unwrap(), b"outside");
        unlinkat(&dir, c"x").unwrap();
        assert_eq!(unlinkat(&dir, c"x").unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn file_copies_into_and_out_of_guest_ram_are_bounds_checked() {
        let tmp = TempDir::new("copy");
        std::fs::write(tmp.join("in"), b"0123456789").unwrap();
        let m = Mmap::anonymous(4096).unwrap();
        m.write(4090, b"zzzzzz").unwrap();
        let input = File::open(tmp.join("in")).unwrap();
        assert!(read_into_ram(&m, &input, 4095, 2).is_err(), "past the end: refused before reading");
        assert!(read_into_ram(&m, &input, usize::MAX, 2).is_err(), "overflow: refused");
        assert_eq!(read_into_ram(&m, &input, 4090, 4).unwrap(), 4);
        assert_eq!(read_into_ram(&m, &input, 4094, 2).unwrap(), 2);
        let mut tail = [0u8; 6];
        m.read(4090, &mut tail).unwrap();
        assert_eq!(&tail, b"012345");
        assert_eq!(read_into_ram(&m, &input, 0, 100).unwrap(), 4, "short only at end of file");
        assert_eq!(read_into_ram(&m, &input, 0, 100).unwrap(), 0, "end of file");
        let out = File::create(tmp.join("out")).unwrap();
        let refused = write_from_ram(&m, &out, 4093, 4).unwrap_err();
        assert_eq!((refused.written, refused.error.kind()), (0, io::ErrorKind::InvalidInput));
        write_from_ram(&m, &out, 4090, 6).unwrap();
        write_from_ram(&m, &out, 0, 0).unwrap();
        assert_eq!(std::fs::read(tmp.join("out")).unwrap(), b"012345");
    }

    #[test]
    fn a_failed_write_says_how_much_was_written() {
        let tmp = TempDir::new("shortwrite");
        std::fs::write(tmp.join("r"), b"read only").unwrap();
        let m = Mmap::anonymous(4096).unwrap();
        // A descriptor open for reading only: write(2) fails at once with EBADF.
        let read_only = File::open(tmp.join("r")).unwrap();
        let err = write_from_ram(&m, &read_only, 0, 10).unwrap_err();
        assert_eq!((err.written, err.error.raw_os_error()), (0, Some(libc::EBADF)));
        // /dev/full: every write fails with ENOSPC.
        if let Ok(full) = File::options().write(true).open("/dev/full") {
            let err = write_from_ram(&m, &full, 0, 10).unwrap_err();
            assert_eq!((err.written, err.error.raw_os_error()), (0, Some(libc::ENOSPC)));
        }
    }
}
