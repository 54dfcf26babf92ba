//! Host files for the guest file device: version C's third FFI room (besides `kvm/` and
//! `signals.rs`).
//!
//! Why std cannot do this: std opens files by path only. To open a guest-chosen name *inside*
//! the VM's private directory, so that no name can ever resolve outside it, the sandbox opens
//! the directory once and then uses `openat(2)` / `unlinkat(2)` relative to that descriptor
//! (the C original built the path string "../Guest/" + name instead, which a name like
//! `../../x` escaped).
//!
//! Everything else about files (metadata, `set_len`, plain reads and writes, and the bulk
//! commands' copies between a file and guest RAM, through a buffer) uses std.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openat_stays_in_its_directory_and_never_follows_a_symlink() {
        use std::io::{Read, Write};
        let tmp = std::env::temp_dir().join(format!("mh_hostfs_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let dir = File::open(&tmp).unwrap();
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
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
