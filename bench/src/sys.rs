//! The one `unsafe` of the bench: `wait4(2)`, which gives a child's exit status together with
//! its resource usage (std's `Child::wait` gives only the status).
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// Waits for the child `pid` to end and returns its exit status and its peak resident set
/// size in KiB (`ru_maxrss`). The child must not be waited for anywhere else.
pub fn wait4(pid: u32) -> io::Result<(ExitStatus, u64)> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    let mut status: libc::c_int = 0;
    let mut usage = libc::rusage::default();
    loop {
        // SAFETY: `wait4` only writes an `int` through its second pointer and a `struct rusage`
        // through its fourth; both point to live, aligned, exclusively borrowed locals of exactly
        // those types, and it keeps neither pointer after it returns.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((ExitStatus::from_raw(status), u64::try_from(usage.ru_maxrss).unwrap_or(0)));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
