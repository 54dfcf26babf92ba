//! Host files for the guest file device: version C's third FFI room (besides `kvm/` and
//! `signals.rs`).
//!
//! Why std cannot do this: std opens files by path only. To open a guest-chosen name *inside*
//! the VM's private directory, so that no name can ever resolve outside it, the sandbox opens
//! the directory once and then uses `openat(2)` / `unlinkat(2)` relative to that descriptor
//! (the C original built the path string "../Guest/" + name instead, which a name like
//! `../../x` escaped).
//!
//! Both take the name as a [`FileName`], which only [`FileName::new`] makes, and only from a
//! name that passes the rules of docs/REFERENCE.md §5.2 (1..=254 bytes, no `/`, no NUL, not `.`
//! or `..`): no safe code can hand them a path, so every name stays in its directory.
//!
//! Everything else about files (metadata, `set_len`, plain reads and writes, the shared files
//! opened once at startup, and the bulk commands' copies between a file and guest RAM, through
//! a buffer) uses std.
#![allow(unsafe_code)]

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The longest guest file name: the open request's length byte is 1..=254.
pub const MAX_NAME_LEN: usize = 254;

/// Why a guest file name is not a plain file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Empty,
    /// Its length in bytes (above 254).
    TooLong(usize),
    Slash,
    Nul,
    Dots,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("empty name"),
            NameError::TooLong(n) => write!(f, "a name of {n} bytes, more than {MAX_NAME_LEN}"),
            NameError::Slash => f.write_str("'/' in a name"),
            NameError::Nul => f.write_str("NUL in a name"),
            NameError::Dots => f.write_str("\".\" and \"..\" are not file names"),
        }
    }
}

/// A plain file name (docs/REFERENCE.md §5.2): 1..=254 bytes, no `/`, no NUL, not `.` or `..`.
/// [`FileName::new`] is the only way to make one, and it checks exactly that, so a name given
/// to [`openat`] or [`unlinkat`] names an entry of their directory and nothing else: no `/` to
/// reach into another directory, no `..` to climb out.
///
/// It keeps the name NUL-terminated in place, without allocating: `bytes[..len]` is the name
/// and `bytes[len]` is 0 (the fields are private: nothing changes them after the check).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FileName {
    bytes: [u8; MAX_NAME_LEN + 1],
    len: u8,
}

impl FileName {
    /// `name` if it is a plain file name; else why not.
    pub fn new(name: &[u8]) -> Result<FileName, NameError> {
        let len = match name.len() {
            0 => return Err(NameError::Empty),
            n @ 1..=MAX_NAME_LEN => n,
            n => return Err(NameError::TooLong(n)),
        };
        if name.contains(&b'/') {
            return Err(NameError::Slash);
        }
        if name.contains(&0) {
            return Err(NameError::Nul);
        }
        if name == b"." || name == b".." {
            return Err(NameError::Dots);
        }
        let mut bytes = [0; MAX_NAME_LEN + 1];
        bytes[..len].copy_from_slice(name);
        // `len` is at most 254; `bytes[len]` stays 0, the terminating NUL.
        Ok(FileName { bytes, len: len as u8 })
    }

    /// The name's bytes (without the NUL).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileName({:?})", self.as_bytes().escape_ascii().to_string())
    }
}

/// `openat(2)` of `name` in the directory `dir`, always with `O_NOFOLLOW | O_CLOEXEC` added.
///
/// `name` is a plain file name (the type says so), so the open stays in `dir`; `O_NOFOLLOW`
/// makes a symbolic link planted there fail with `ELOOP` instead of being followed. `mode` is
/// used only when `flags` contains `O_CREAT`. Retried on `EINTR`.
pub fn openat(dir: &File, name: &FileName, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let path = name.bytes.as_ptr().cast::<libc::c_char>();
    loop {
        // SAFETY: `dir.as_raw_fd()` is an open descriptor borrowed from `dir`, which outlives the
        // call; `path` points into `name`, borrowed for the whole call, at a NUL-terminated
        // string: `FileName::new` checked that its 1..=254 bytes hold no NUL and left a 0 after
        // them, and its private fields never change. openat keeps neither. The variadic mode is
        // passed as `c_uint`, the promoted type of `mode_t` that openat reads (only with O_CREAT).
        let fd = unsafe { libc::openat(dir.as_raw_fd(), path, flags, libc::c_uint::from(mode)) };
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
pub fn unlinkat(dir: &File, name: &FileName) -> io::Result<()> {
    let path = name.bytes.as_ptr().cast::<libc::c_char>();
    // SAFETY: `dir.as_raw_fd()` is an open descriptor borrowed from `dir` for the whole call;
    // `path` is the NUL-terminated name inside `name`, borrowed for the whole call (as in
    // `openat`); unlinkat keeps neither pointer.
    let rc = unsafe { libc::unlinkat(dir.as_raw_fd(), path, 0) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(bytes: &[u8]) -> FileName {
        FileName::new(bytes).unwrap()
    }

    #[test]
    fn a_file_name_is_checked_once_and_kept_nul_terminated() {
        for good in [&b"a"[..], b"file.txt", b"...", b".hidden", b"a b", &[0xFF, 0x80], &[b'x'; 254]] {
            let n = name(good);
            assert_eq!(n.as_bytes(), good);
            assert_eq!(n.bytes[good.len()], 0, "NUL-terminated");
        }
        let long = [b'x'; 255];
        let cases: [(&[u8], NameError); 9] = [
            (b"", NameError::Empty),
            (&long, NameError::TooLong(255)),
            (b"a/b", NameError::Slash),
            (b"/x", NameError::Slash),
            (b"x/", NameError::Slash),
            (b"a\0b", NameError::Nul),
            (b"\0", NameError::Nul),
            (b".", NameError::Dots),
            (b"..", NameError::Dots),
        ];
        for (bad, why) in cases {
            assert_eq!(FileName::new(bad), Err(why), "{bad:?}");
        }
        assert_eq!(format!("{:?}", name(b"a\xffb")), "FileName(\"a\\\\xffb\")");
    }

    #[test]
    fn openat_stays_in_its_directory_and_never_follows_a_symlink() {
        use std::io::{Read, Write};
        let tmp = std::env::temp_dir().join(format!("mh_hostfs_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let dir = File::open(&tmp).unwrap();
        let mut f = openat(&dir, &name(b"x"), libc::O_WRONLY | libc::O_CREAT, 0o644).unwrap();
        f.write_all(b"hello").unwrap();
        let mut text = String::new();
        openat(&dir, &name(b"x"), libc::O_RDONLY, 0).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello");
        std::fs::write(tmp.join("target"), b"outside").unwrap();
        std::os::unix::fs::symlink(tmp.join("target"), tmp.join("link")).unwrap();
        let err = openat(&dir, &name(b"link"), libc::O_WRONLY | libc::O_CREAT, 0o644).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        assert_eq!(std::fs::read(tmp.join("target")).unwrap(), b"outside");
        unlinkat(&dir, &name(b"x")).unwrap();
        assert_eq!(unlinkat(&dir, &name(b"x")).unwrap_err().kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
