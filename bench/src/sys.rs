//! Every `unsafe` of the bench: `ptrace(2)` and `waitpid(2)`, to hold a child at its exit so that
//! its peak RSS can be read from `/proc/PID/status` (`VmHWM`).
//!
//! Why ptrace: `ru_maxrss` from `wait4` cannot read below the bench's own peak RSS, because Linux
//! carries the RSS a process had before `exec` into it. `VmHWM` belongs to the memory map that
//! `exec` created, so it starts from zero; but it is gone once the child has exited. With
//! `PTRACE_O_TRACEEXIT` the child stops in `exit` before its memory is released, the bench reads
//! `VmHWM`, and lets it go on.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};

/// `PTRACE_EVENT_EXIT << 8 | SIGTRAP`: the `status >> 8` of a tracee stopped in `exit`.
const EXIT_EVENT_STOP: libc::c_int = (libc::PTRACE_EVENT_EXIT << 8) | libc::SIGTRAP;

/// Spawns `cmd` with the child traced by this process (`PTRACE_TRACEME` between `fork` and
/// `exec`). It must then be waited for with [`wait_traced`], and nowhere else.
pub fn spawn_traced(cmd: &mut Command) -> io::Result<Child> {
    // SAFETY: `trace_me` runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: it makes one raw syscall (ptrace), allocates nothing and takes no lock.
    unsafe { cmd.pre_exec(trace_me) };
    cmd.spawn()
}

/// `ptrace(PTRACE_TRACEME)`: makes the parent the tracer of the calling process.
fn trace_me() -> io::Result<()> {
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: PTRACE_TRACEME ignores its pid, address and data arguments and touches no memory
    // of this process.
    let r = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0 as libc::pid_t, null, null) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// `ptrace(request, pid, 0, data)` for the requests that take no address.
fn ptrace(request: libc::c_uint, pid: libc::pid_t, data: libc::c_int) -> io::Result<()> {
    // glibc reads `data` as a pointer-sized variadic argument, hence the c_long.
    // SAFETY: SETOPTIONS and CONT read `data` as a plain integer (options or a signal number)
    // and take no address: no memory of this process is touched.
    let r = unsafe { libc::ptrace(request, pid, std::ptr::null_mut::<libc::c_void>(), libc::c_long::from(data)) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Waits for the traced child `pid` (from [`spawn_traced`]) to end. It stops first at its `exec`
/// (where the bench asks to see its exit and to have it killed should the bench die), then at its
/// exit, where `at_exit(pid)` runs while the child's memory is still there; signals on the way
/// are passed on. Returns the exit status and `at_exit`'s answer (`None` if the child never
/// stopped at its exit, e.g. it was killed by SIGKILL).
pub fn wait_traced<T>(pid: u32, at_exit: impl FnOnce(u32) -> T) -> io::Result<(ExitStatus, Option<T>)> {
    let raw = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    let mut at_exit = Some(at_exit);
    let mut answer = None;
    let mut options_set = false;
    loop {
        let status = waitpid(raw)?;
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return Ok((ExitStatus::from_raw(status), answer));
        }
        if !libc::WIFSTOPPED(status) {
            continue;
        }
        let mut pass_on = 0;
        if status >> 8 == EXIT_EVENT_STOP {
            answer = at_exit.take().map(|f| f(pid));
        } else if !options_set && libc::WSTOPSIG(status) == libc::SIGTRAP {
            // The SIGTRAP that a PTRACE_TRACEME child gets at its exec: swallowed.
            ptrace(libc::PTRACE_SETOPTIONS, raw, libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_EXITKILL)?;
            options_set = true;
        } else {
            pass_on = libc::WSTOPSIG(status);
        }
        ptrace(libc::PTRACE_CONT, raw, pass_on)?;
    }
}

/// `waitpid(pid, &status, 0)`, retried on EINTR: the raw status (an exit or, for a tracee, a stop).
fn waitpid(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `waitpid` only writes an `int` through its pointer, which points to a live,
        // aligned, exclusively borrowed local, and it does not keep the pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
