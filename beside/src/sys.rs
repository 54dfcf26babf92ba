//! Every `unsafe` of the crate: killing a process group, limits set in a child before it runs,
//! the signal handler that takes the running program down with us, and the terminal's width.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

/// The process group of the program running now (0: none), for the signal handler.
static RUNNING_GROUP: AtomicI32 = AtomicI32::new(0);
/// The signal that interrupted us (0: none yet).
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

/// Sends SIGKILL to every process of group `pgid`; a group that is already gone is no error.
pub fn kill_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else { return };
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of this process. A negative
    // pid names the process group, which the caller created for its child (never ours: the
    // child was spawned with its own group).
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

/// Makes `command`'s child, before it runs: unable to write files over `max_file` bytes
/// (SIGXFSZ past it), dump no core file, and be killed if this process dies (the child's
/// process group does not get the terminal's Ctrl-C; our handler, or this, ends it).
/// `PR_SET_PDEATHSIG` fires when the thread that spawned the child ends: spawn from the main
/// thread.
pub fn limit_child(command: &mut Command, max_file: u64) {
    let parent = std::process::id();
    // SAFETY: `child_setup` runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes four raw system calls on values it owns,
    // allocates nothing (its errors are raw OS errors) and takes no lock.
    unsafe { command.pre_exec(move || child_setup(max_file, parent)) };
}

/// What [`limit_child`] does in the child.
fn child_setup(max_file: u64, parent: u32) -> io::Result<()> {
    set_limit(libc::RLIMIT_FSIZE, max_file)?;
    set_limit(libc::RLIMIT_CORE, 0)?;
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getppid(2) takes nothing and cannot fail.
    let ppid = unsafe { libc::getppid() };
    // Reparented already: the runner died before prctl, and nothing would end this child.
    if u32::try_from(ppid).ok() != Some(parent) {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// setrlimit(2) of `resource` to `value`, soft and hard.
fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
    // SAFETY: setrlimit reads one rlimit through the pointer, which points to a live local,
    // and keeps no pointer.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Records `pgid` as the group to kill if we are interrupted (0: none). If a signal came
/// before, kills the group now.
pub fn set_running_group(pgid: u32) {
    let pgid = i32::try_from(pgid).unwrap_or(0);
    RUNNING_GROUP.store(pgid, Ordering::SeqCst);
    if pgid > 0 && interrupted().is_some() {
        kill_group(pgid as u32);
    }
}

/// The signal (SIGINT, SIGTERM or SIGHUP) that interrupted us, if any.
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// On SIGINT, SIGTERM and SIGHUP: kill the running program's group and note the signal, so that
/// the main loop stops after this run and removes the scratch directories.
pub fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: all-zero bytes are a valid sigaction (no handler, no flags, empty mask).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: the handler is an `extern "C" fn(c_int)` that only makes async-signal-safe
        // calls (two atomic operations and kill(2)); sigaction copies the struct and keeps no
        // pointer to it.
        unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
    }
}

/// The handler: two atomics and kill(2), which are async-signal-safe; `errno`, which kill(2)
/// may change (ESRCH for a group already gone), is put back as the interrupted code left it.
extern "C" fn on_interrupt(signal: libc::c_int) {
    INTERRUPTED.store(signal, Ordering::SeqCst);
    let pgid = RUNNING_GROUP.load(Ordering::SeqCst);
    if pgid > 1 {
        // SAFETY: __errno_location has no preconditions; it returns the calling thread's errno
        // slot, valid and aligned for the thread's life.
        let errno = unsafe { libc::__errno_location() };
        // SAFETY: `errno` is valid and aligned (above); a plain load.
        let saved = unsafe { errno.read() };
        // SAFETY: kill(2) is async-signal-safe and touches no memory of this process.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        // SAFETY: as above, a plain store into this thread's errno slot.
        unsafe { errno.write(saved) };
    }
}

/// The width of the terminal on stdout, if stdout is one.
pub fn terminal_columns() -> Option<usize> {
    // SAFETY: all-zero bytes are a valid winsize.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize through the pointer, which points to a live,
    // aligned, exclusively borrowed local, and keeps no pointer.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (r == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}
