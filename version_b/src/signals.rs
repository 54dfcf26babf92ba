//! Signals: how a running VM learns that it is to stop (Ctrl-C, `kill`, a closed terminal,
//! `--timeout`), to pause for the debugger, or to drain its serial ring (docs/REFERENCE.md §2).
//! The second FFI room of the crate, after `kvm/`.
//!
//! Version B: the main thread is the watchdog. It takes the stop signals for the whole process
//! and enforces `--timeout`, and it [`Kick`]s the VM threads, each of which listens only to
//! the kick signal.
//!
//! C counterpart: none; Ctrl-C kills the C hypervisor with guest output still in its buffers.
//!
//! **No signal handler anywhere.** The signals this program uses ([`OURS`]: the stop signals
//! and [`KICK_SIGNAL`] for one thread to interrupt another) are blocked from the start
//! ([`Listener::block`], in `main` before any thread starts). A VM's thread unblocks the kick
//! signal only while it is inside `KVM_RUN` (`KVM_SET_SIGNAL_MASK` with
//! [`Interrupts::run_mask`]), so:
//! - a kick that arrives while the guest runs makes `KVM_RUN` return `EINTR`;
//! - one that arrives while the thread is anywhere else stays pending, and the next `KVM_RUN`
//!   returns `EINTR` at once: no window in which a kick is lost;
//! - nothing ever runs asynchronously: a thread takes its pending signals from a signalfd
//!   ([`Listener::take`]) when it chooses to.
//!
//! A blocking read of stdin or write to stdout waits with `poll(2)` on its file and on the
//! signalfd together ([`Interruptible`]), so a stop ends those waits too.
//!
//! This needs Linux 4.15 or later, the minimum of the whole hypervisor (docs/UNSAFE.md; the
//! serial ring's `KVM_CAP_COALESCED_PIO` is 4.19, but optional): `signalfd` and
//! `KVM_SET_SIGNAL_MASK` are older, but only since 4.15 does a blocked signal that
//! `KVM_SET_SIGNAL_MASK` unblocks reach `KVM_RUN` as `EINTR` on every path.
//!
//! Safety: the `unsafe` blocks below are system calls that take plain integers or pointers to
//! live local values (`rt_sigprocmask`, `signalfd4`, `poll`, `pthread_kill`, `pthread_self`)
//! and the adoption of the descriptor `signalfd4` returns.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A set of signals, as the kernel's 64-bit mask (bit `n - 1` is signal `n`): the form
/// `rt_sigprocmask`, `signalfd4` and `KVM_SET_SIGNAL_MASK` take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SigSet(u64);

impl SigSet {
    pub const EMPTY: SigSet = SigSet(0);

    pub const fn of(signals: &[libc::c_int]) -> SigSet {
        let (mut mask, mut i) = (0, 0);
        while i < signals.len() {
            if signals[i] >= 1 && signals[i] <= 64 {
                mask |= 1 << (signals[i] - 1);
            }
            i += 1;
        }
        SigSet(mask)
    }

    pub const fn contains(self, signal: libc::c_int) -> bool {
        signal >= 1 && signal <= 64 && self.0 & (1 << (signal - 1)) != 0
    }

    pub const fn union(self, other: SigSet) -> SigSet {
        SigSet(self.0 | other.0)
    }

    pub const fn minus(self, other: SigSet) -> SigSet {
        SigSet(self.0 & !other.0)
    }

    /// The lowest signal in the set, if any.
    pub fn first(self) -> Option<libc::c_int> {
        (self.0 != 0).then(|| self.0.trailing_zeros() as libc::c_int + 1)
    }
}

/// The signals that stop every VM, as SIGTERM does: Ctrl-C, `kill`, a closed terminal (SIGHUP),
/// Ctrl-\ and the user signals, whose default action would kill the process with guest output
/// still in its buffers.
pub const STOP_SIGNALS: SigSet =
    SigSet::of(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2]);

/// The signal the debugger's thread sends the VM's thread to make it leave `KVM_RUN` (or a
/// wait) and look at its [`Kick`]: SIGURG, whose default action is to be ignored, so that even
/// a thread that did not block it could not be killed by it (it is sent for a socket's urgent
/// data only to a process that asks, which this one never does).
pub const KICK_SIGNAL: libc::c_int = libc::SIGURG;

/// Every signal this program uses: the stop signals and the kick.
pub const OURS: SigSet = STOP_SIGNALS.union(SigSet::of(&[KICK_SIGNAL]));

/// `rt_sigprocmask(how, set)` on the calling thread; returns the mask it had before. `None`
/// only reads the mask.
fn sigprocmask(how: libc::c_int, set: Option<SigSet>) -> io::Result<SigSet> {
    let new = set.map(|s| s.0);
    let new_ptr = new.as_ref().map_or(std::ptr::null(), |bits| bits as *const u64);
    let mut old: u64 = 0;
    // SAFETY: `new_ptr` is null or points to a live u64, `&mut old` to a writable one; 8 is
    // the size of the kernel's sigset, which is all it reads or writes through them.
    let r = unsafe { libc::syscall(libc::SYS_rt_sigprocmask, how, new_ptr, &mut old as *mut u64, 8usize) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(SigSet(old)) }
}

/// The signals one thread takes for itself, through a signalfd.
#[derive(Debug)]
pub struct Listener {
    fd: File,
    /// The calling thread's mask before [`Listener::block`], without the listened signals: the
    /// mask for `KVM_RUN`, so that they interrupt the guest (and only the guest).
    run_mask: SigSet,
}

/// What [`Listener::wait`] waits for on a file, besides the signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    Read,
    Write,
}

/// Why [`Listener::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// The file is ready (or in error: the next read or write says which).
    File,
    /// One of the listened signals is pending for this thread.
    Signal,
    Timeout,
}

impl Listener {
    /// Blocks `set` in the calling thread (and in every thread it starts afterwards), so that
    /// none of them can kill the process or run a handler, and makes a non-blocking signalfd
    /// that takes them.
    pub fn block(set: SigSet) -> io::Result<Listener> {
        let before = sigprocmask(libc::SIG_BLOCK, Some(set))?;
        let flags = libc::SFD_NONBLOCK | libc::SFD_CLOEXEC;
        // SAFETY: `&set.0` points to a live u64 of the 8 bytes the kernel reads; -1 asks for a
        // new descriptor.
        let raw = unsafe { libc::syscall(libc::SYS_signalfd4, -1, &set.0 as *const u64, 8usize, flags) };
        let raw = libc::c_int::try_from(raw).ok().filter(|&fd| fd >= 0).ok_or_else(io::Error::last_os_error)?;
        // SAFETY: signalfd4 just returned `raw`, a new descriptor that nothing else owns.
        let fd = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        Ok(Listener { fd, run_mask: SigSet(before.0 & !set.0) })
    }

    /// Takes every listened signal pending for this thread or the process, without waiting.
    pub fn take(&self) -> SigSet {
        // struct signalfd_siginfo is 128 bytes; ssi_signo (u32) comes first.
        let mut buf = [0u8; 128 * 8];
        let mut taken = SigSet::EMPTY;
        while let Ok(n @ 128..) = (&self.fd).read(&mut buf) {
            for info in buf[..n].chunks_exact(128) {
                let signo = u32::from_le_bytes([info[0], info[1], info[2], info[3]]);
                taken = taken.union(SigSet::of(&[libc::c_int::try_from(signo).unwrap_or(0)]));
            }
        }
        taken
    }

    /// Waits until `file` is ready for `ready`, one of the listened signals is pending for
    /// this thread, or `timeout` passes (`None`: no limit). The signals are not taken.
    pub fn wait(&self, file: Option<(BorrowedFd<'_>, Ready)>, timeout: Option<Duration>) -> io::Result<Woke> {
        let (fd, events) =
            file.map_or((-1, 0), |(f, r)| (f.as_raw_fd(), if r == Ready::Read { libc::POLLIN } else { libc::POLLOUT }));
        let mut fds = [
            libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd, events, revents: 0 },
        ];
        let ms = timeout.map_or(-1, |t| libc::c_int::try_from(t.as_millis()).unwrap_or(libc::c_int::MAX));
        loop {
            // SAFETY: `fds` is a live, writable array of 2 pollfd: poll reads them and writes
            // their `revents`, nothing else.
            match unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) } {
                0 => return Ok(Woke::Timeout),
                // The file first: what it can take is written before any signal is looked at.
                1.. => return Ok(if fds[1].revents != 0 { Woke::File } else { Woke::Signal }),
                _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                _ => return Err(io::Error::last_os_error()),
            }
        }
    }
}

/// A file (stdin, stdout) whose reads and writes also end, with `ErrorKind::Interrupted` and
/// nothing moved, when a listened signal is pending: a stop never waits for a stdin nobody
/// types into or a stdout nobody reads. A regular file never blocks, so it is used directly.
#[derive(Debug)]
pub struct Interruptible {
    file: File,
    listener: Option<Arc<Listener>>,
}

/// At most this much per write(2) once poll says the file takes output: a pipe then takes it
/// whole, without blocking (`PIPE_BUF`).
const WRITE_CHUNK: usize = 4096;

impl Interruptible {
    pub fn new(file: File, listener: &Arc<Listener>) -> Interruptible {
        let regular = file.metadata().is_ok_and(|m| m.file_type().is_file());
        Interruptible { file, listener: (!regular).then(|| Arc::clone(listener)) }
    }
}

impl Read for Interruptible {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(l) = &self.listener
            && l.wait(Some((self.file.as_fd(), Ready::Read)), None)? != Woke::File
        {
            return Err(io::ErrorKind::Interrupted.into());
        }
        self.file.read(buf)
    }
}

impl Write for Interruptible {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut most = buf.len();
        if let Some(l) = &self.listener {
            if l.wait(Some((self.file.as_fd(), Ready::Write)), None)? != Woke::File {
                return Err(io::ErrorKind::Interrupted.into());
            }
            most = most.min(WRITE_CHUNK);
        }
        self.file.write(&buf[..most])
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Interruptible {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Why a VM is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `--timeout` ran out.
    Timeout,
    /// A stop signal ([`STOP_SIGNALS`]): which one.
    Signal(libc::c_int),
}

/// Asks a VM's thread, from another thread, to stop for good (the watchdog), to pause (gdb's
/// Ctrl-C) or to drain its serial ring: it records the request, then sends [`KICK_SIGNAL`] to
/// the thread registered with [`Kick::deliver_here`]. Whether that thread is in `KVM_RUN`, in
/// a wait, or about to enter one, it finds the signal and then the request ([`Kick::take`]).
#[derive(Debug, Clone, Default)]
pub struct Kick {
    shared: Arc<KickShared>,
}

#[derive(Debug, Default)]
struct KickShared {
    /// The stop reason (it stays), the signal of a stop by signal, a pause and a drain (each
    /// taken once).
    stop: AtomicU8,
    signal: AtomicU8,
    pause: AtomicBool,
    drain: AtomicBool,
    /// The VM asked for periodic drains (its serial ring is on and stdout is a terminal).
    wants_drains: AtomicBool,
    /// The thread inside [`Kick::deliver_here`], if any. A kick signals it under this lock, and
    /// the thread clears it under this lock before it leaves, so a kick never signals a thread
    /// that has ended.
    thread: Mutex<Option<libc::pthread_t>>,
}

/// What other threads asked of a VM ([`Kick::take`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// The VM is to end (this stays).
    pub stop: Option<StopReason>,
    /// The debugger wants the guest stopped (taken once).
    pub pause: bool,
    /// The coalesced serial ring should be drained (taken once).
    pub drain: bool,
}

/// A poisoned lock only means a thread panicked while holding it; the value is still valid.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

const STOP_TIMEOUT: u8 = 1;
const STOP_SIGNAL: u8 = 2;

impl Kick {
    /// Ends the VM: it reports itself as timed out or stopped by a signal (a signal wins).
    pub fn stop(&self, reason: StopReason) {
        if let StopReason::Signal(signal) = reason {
            self.shared.signal.store(u8::try_from(signal).unwrap_or(0), Ordering::Relaxed);
        }
        let bit = if reason == StopReason::Timeout { STOP_TIMEOUT } else { STOP_SIGNAL };
        self.request(|s| s.stop.fetch_or(bit, Ordering::Release));
    }

    /// Stops the guest for the debugger, without ending the VM.
    pub fn pause(&self) {
        self.request(|s| s.pause.store(true, Ordering::Release));
    }

    /// Has the VM drain its coalesced serial ring, without stopping the guest.
    pub fn drain(&self) {
        self.request(|s| s.drain.store(true, Ordering::Release));
    }

    /// Only wakes the thread (it then looks at whatever it is waiting for).
    pub fn wake(&self) {
        self.request(|_| ());
    }

    /// Whether the VM asked for periodic drains ([`Kick::want_drains`]).
    pub fn wants_drains(&self) -> bool {
        self.shared.wants_drains.load(Ordering::Relaxed)
    }

    /// The VM's side: from now on, kick this VM's thread to drain its ring now and then.
    pub fn want_drains(&self) {
        self.shared.wants_drains.store(true, Ordering::Relaxed);
    }

    /// Records a request (Release: the thread that takes the signal sees it), then signals.
    fn request<R>(&self, record: impl FnOnce(&KickShared) -> R) {
        record(&self.shared);
        let thread = lock(&self.shared.thread);
        if let Some(thread) = *thread {
            // SAFETY: `thread` was stored by `deliver_here` on that thread, which clears it
            // under this same lock before it returns, so while we hold the lock the thread is
            // alive and its pthread_t valid. The signal is blocked there (`deliver_here`
            // checks): it stays pending until that thread takes it, so it can neither kill the
            // process nor be lost.
            unsafe { libc::pthread_kill(thread, KICK_SIGNAL) };
        }
    }

    /// The VM's side: what was asked. A stop stays; a pause and a drain are taken once.
    pub fn take(&self) -> Requests {
        let s = &self.shared;
        let (pause, drain) = (s.pause.swap(false, Ordering::Acquire), s.drain.swap(false, Ordering::Acquire));
        Requests { stop: self.stop_requested(), pause, drain }
    }

    /// The VM's side: whether a pause was asked since the last call (taken once).
    pub fn take_pause(&self) -> bool {
        self.shared.pause.swap(false, Ordering::Acquire)
    }

    /// Why the VM is to stop, if a kick asked that.
    pub fn stop_requested(&self) -> Option<StopReason> {
        match self.shared.stop.load(Ordering::Acquire) {
            0 => None,
            bits if bits & STOP_SIGNAL != 0 => {
                Some(StopReason::Signal(self.shared.signal.load(Ordering::Relaxed).into()))
            }
            _ => Some(StopReason::Timeout),
        }
    }

    /// Runs `body` on this thread with kicks delivered here (the VM's thread runs its whole
    /// life inside this). Kicks sent while no thread is inside are recorded and found later.
    /// The kick signal must be blocked on this thread (asserted in debug builds), or it would
    /// be lost.
    pub fn deliver_here<R>(&self, body: impl FnOnce() -> R) -> R {
        /// Clears the slot when `body` returns or unwinds.
        struct Unregister<'a>(&'a KickShared);
        impl Drop for Unregister<'_> {
            fn drop(&mut self) {
                *lock(&self.0.thread) = None;
            }
        }
        debug_assert!(
            sigprocmask(libc::SIG_BLOCK, None).is_ok_and(|mask| mask.contains(KICK_SIGNAL)),
            "the kick signal must be blocked on the thread it is delivered to"
        );
        // SAFETY: pthread_self has no preconditions and cannot fail.
        let me = unsafe { libc::pthread_self() };
        *lock(&self.shared.thread) = Some(me);
        let _unregister = Unregister(&self.shared);
        body()
    }
}

/// Whether `fd` takes output at once (a write of up to `PIPE_BUF` bytes would not block): the
/// console's last write when the process exits without waiting for its VMs.
pub fn writable_now(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 }];
    // SAFETY: `fds` is a live, writable array of 1 pollfd: poll reads it and writes its
    // `revents`, nothing else.
    unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) == 1 }
}

/// What the signals a VM took mean for its loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// End the VM.
    Stop(StopReason),
    /// Stop the guest for the debugger.
    Pause,
    /// Nothing to do but run on (a drain: the loop drains its ring at every exit anyway).
    Resume,
}

/// One VM thread's view of its signals: its listener (the kick signal only: the watchdog, on
/// the main thread, takes the stop signals and enforces `--timeout`) and its kick.
#[derive(Debug)]
pub struct Interrupts {
    /// This VM's kick: the watchdog's stops and drains, and gdb's Ctrl-C.
    pub kick: Kick,
    /// The signal mask for `KVM_RUN` (`KVM_SET_SIGNAL_MASK`, as the kernel's two 32-bit
    /// words): the kick signal unblocked.
    pub run_mask: [u32; 2],
    listener: Arc<Listener>,
    /// A kick signal taken inside a wait and not acted on yet (acted on at the next exit).
    taken: Cell<bool>,
}

impl Interrupts {
    /// The VM's signals, on the thread that runs it; `listener` listens to the kick signal.
    pub fn new(listener: Arc<Listener>, kick: Kick) -> Interrupts {
        let run_mask = [listener.run_mask.0 as u32, (listener.run_mask.0 >> 32) as u32];
        Interrupts { kick, run_mask, listener, taken: Cell::new(false) }
    }

    /// The serial ring is on and stdout is a terminal: the watchdog kicks this VM to drain it
    /// now and then even if the guest makes no exit.
    pub fn drain_every(&self, _every: std::time::Duration) {
        self.kick.want_drains();
    }

    /// Whether a kick was taken inside a wait and not acted on yet (checked before each
    /// `KVM_RUN`, for no system call).
    pub fn has_taken(&self) -> bool {
        self.taken.get()
    }

    /// Takes what is pending and says whether the VM is being stopped. Blocking waits call
    /// this when a signal interrupts them.
    pub fn stop_requested(&self) -> Option<StopReason> {
        if self.listener.take() != SigSet::EMPTY {
            self.taken.set(true);
        }
        self.kick.stop_requested()
    }

    /// After `KVM_RUN` returned early (or a wait took a kick): what to do now.
    pub fn wake(&self) -> Wake {
        let _ = self.listener.take();
        self.taken.set(false);
        let requests = self.kick.take();
        match requests.stop {
            Some(reason) => Wake::Stop(reason),
            None if requests.pause => Wake::Pause,
            None => Wake::Resume,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_the_kernels_bit_layout() {
        let s = SigSet::of(&[libc::SIGINT, libc::SIGTERM]);
        assert_eq!(s.0, 1 << 1 | 1 << 14);
        assert!(s.contains(libc::SIGINT) && !s.contains(libc::SIGALRM));
        assert_eq!(s.minus(SigSet::of(&[libc::SIGINT])), SigSet::of(&[libc::SIGTERM]));
        assert_eq!(s.first(), Some(libc::SIGINT));
        assert_eq!(SigSet::of(&[0, 65, -1]), SigSet::EMPTY, "no such signals");
        assert!(OURS.contains(KICK_SIGNAL) && OURS.contains(libc::SIGHUP) && !OURS.contains(libc::SIGALRM));
    }

    /// A kicked thread that blocks the kick signal finds it pending, and the listener takes
    /// it, with another thread spinning in the process all along: no handler, nothing to race.
    #[test]
    fn a_kick_reaches_the_registered_thread_only_through_its_listener() {
        let kick = Kick::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let vcpu = {
            let kick = kick.clone();
            std::thread::spawn(move || {
                let listener = Listener::block(SigSet::of(&[KICK_SIGNAL])).unwrap();
                kick.deliver_here(|| {
                    tx.send(()).unwrap();
                    let woke = listener.wait(None, Some(Duration::from_secs(20))).unwrap();
                    (woke, listener.take(), kick.take_pause())
                })
            })
        };
        rx.recv().unwrap();
        kick.pause();
        let (woke, taken, paused) = vcpu.join().unwrap();
        assert_eq!(woke, Woke::Signal);
        assert!(taken.contains(KICK_SIGNAL));
        assert!(paused);
        assert!(!kick.take_pause(), "a pause is taken once");
        kick.pause(); // nobody registered any more: recorded, no signal sent
        assert!(kick.take_pause());
    }

    #[test]
    fn stop_requests_stay_and_pause_and_drain_are_taken_once() {
        let kick = Kick::default();
        kick.pause();
        kick.drain();
        assert_eq!(kick.take(), Requests { stop: None, pause: true, drain: true });
        assert_eq!(kick.take(), Requests::default(), "one-shot requests are taken");
        kick.stop(StopReason::Timeout);
        kick.stop(StopReason::Signal(libc::SIGHUP));
        assert_eq!(kick.take().stop, Some(StopReason::Signal(libc::SIGHUP)), "a signal wins");
        assert_eq!(kick.stop_requested(), Some(StopReason::Signal(libc::SIGHUP)), "a stop stays");
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "the kick signal must be blocked")]
    fn delivering_kicks_to_a_thread_that_does_not_block_them_is_refused() {
        if let Err(panic) = std::thread::spawn(|| Kick::default().deliver_here(|| ())).join() {
            std::panic::resume_unwind(panic);
        }
    }
}
