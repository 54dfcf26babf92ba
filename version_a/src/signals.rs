//! Signals: how a running VM learns that it is to stop, pause or drain its serial ring
//! (docs/REFERENCE.md §2). The second FFI room of the crate, after `kvm/`.
//!
//! C counterpart: none; Ctrl-C kills the C hypervisor with guest output still in its buffers.
//!
//! **No signal handler anywhere.** The signals this program uses (SIGINT, SIGTERM, SIGALRM for
//! the timer, and [`kick_signal`] for one thread to interrupt another) are blocked in every
//! thread from the start ([`block_ours`]). A vCPU unblocks the ones it listens to only while
//! it is inside `KVM_RUN` (`KVM_SET_SIGNAL_MASK`, see [`Listener::run_mask`]), so:
//! - a signal that arrives while the guest runs makes `KVM_RUN` return `EINTR`;
//! - one that arrives while the thread is anywhere else stays pending, and the next `KVM_RUN`
//!   returns `EINTR` at once: no window in which a signal is lost;
//! - nothing ever runs asynchronously: the thread takes the pending signals from a signalfd
//!   ([`Listener::take`]) when it chooses to, and decides what they mean ([`Interrupts`]).
//!
//! A blocking read of stdin or write to stdout waits with `poll(2)` on its file and on the
//! signalfd together ([`Interruptible`]), so a stop ends those waits too.
//!
//! What two threads share: a [`Kick`] (`Send + Sync`), whose requests are atomics and whose
//! target thread is registered under a lock; and a [`Listener`], whose signalfd each thread
//! reads for itself (the kernel hands a thread only its own and the process's signals).
//! [`Interrupts`] belongs to one vCPU thread (it is not `Sync`).
//!
//! Safety: the `unsafe` blocks below are system calls that take plain integers or pointers to
//! live local values (`rt_sigprocmask`, `signalfd4`, `poll`, `setitimer`, `pthread_kill`,
//! `pthread_self`) and the adoption of the descriptor `signalfd4` returns.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A set of signals, as the kernel's 64-bit mask (bit `n - 1` is signal `n`): the form
/// `rt_sigprocmask`, `signalfd4` and `KVM_SET_SIGNAL_MASK` take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SigSet(u64);

impl SigSet {
    pub const EMPTY: SigSet = SigSet(0);

    pub fn of(signals: &[libc::c_int]) -> SigSet {
        SigSet(signals.iter().filter(|&&s| (1..=64).contains(&s)).fold(0, |m, &s| m | 1 << (s - 1)))
    }

    pub fn contains(self, signal: libc::c_int) -> bool {
        (1..=64).contains(&signal) && self.0 & (1 << (signal - 1)) != 0
    }

    pub fn union(self, other: SigSet) -> SigSet {
        SigSet(self.0 | other.0)
    }

    pub fn minus(self, other: SigSet) -> SigSet {
        SigSet(self.0 & !other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The mask as the kernel lays it out (8 bytes, little-endian), for `KVM_SET_SIGNAL_MASK`.
    pub fn bits(self) -> u64 {
        self.0
    }
}

/// The signal one thread sends another to make it leave `KVM_RUN` (or a wait) and look at its
/// [`Kick`] (glibc reserves the first real-time signals; this is the first one free).
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// Every signal this program uses: SIGINT and SIGTERM (stop), SIGALRM (the timer), the kick.
pub fn ours() -> SigSet {
    SigSet::of(&[libc::SIGINT, libc::SIGTERM, libc::SIGALRM, kick_signal()])
}

/// Blocks [`ours`] in the calling thread and in every thread it starts afterwards. Call it in
/// `main` before any thread starts: from then on none of them can kill the process or run a
/// handler; they wait for a [`Listener`] to take them.
pub fn block_ours() -> io::Result<()> {
    sigprocmask(libc::SIG_BLOCK, Some(ours())).map(drop)
}

/// `rt_sigprocmask(how, set)` on the calling thread; returns the mask it had before. `None`
/// only reads the mask.
fn sigprocmask(how: libc::c_int, set: Option<SigSet>) -> io::Result<SigSet> {
    let new = set.map(SigSet::bits);
    let new_ptr = new.as_ref().map_or(std::ptr::null(), |bits| bits as *const u64);
    let mut old: u64 = 0;
    // SAFETY: `new_ptr` is null or points to a live u64, `&mut old` to a writable one; 8 is
    // the size of the kernel's sigset, which is all it reads or writes through them.
    let r = unsafe { libc::syscall(libc::SYS_rt_sigprocmask, how, new_ptr, &mut old as *mut u64, 8usize) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(SigSet(old)) }
}

/// The signals that one kind of thread takes for itself, through a signalfd.
#[derive(Debug)]
pub struct Listener {
    fd: File,
    set: SigSet,
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
    /// A non-blocking signalfd for `set` (which must be blocked: [`block_ours`]).
    pub fn new(set: SigSet) -> io::Result<Listener> {
        let mask = set.bits();
        let flags = libc::SFD_NONBLOCK | libc::SFD_CLOEXEC;
        // SAFETY: `&mask` points to a live u64 of the 8 bytes the kernel reads; -1 asks for a
        // new descriptor.
        let raw = unsafe { libc::syscall(libc::SYS_signalfd4, -1, &mask as *const u64, 8usize, flags) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        let raw = libc::c_int::try_from(raw).map_err(io::Error::other)?;
        // SAFETY: signalfd4 just returned `raw`, a new descriptor that nothing else owns.
        let fd = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        Ok(Listener { fd, set })
    }

    /// The signal mask for `KVM_RUN` on the calling thread: its mask with this listener's
    /// signals unblocked, so that they interrupt the guest (and only the guest).
    pub fn run_mask(&self) -> io::Result<SigSet> {
        Ok(sigprocmask(libc::SIG_BLOCK, None)?.minus(self.set))
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
        let mut fds = [
            libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: -1, events: 0, revents: 0 },
        ];
        if let Some((fd, ready)) = file {
            fds[1].fd = fd.as_raw_fd();
            fds[1].events = if ready == Ready::Read { libc::POLLIN } else { libc::POLLOUT };
        }
        match poll(&mut fds, timeout)? {
            0 => Ok(Woke::Timeout),
            // The file first: what it can take is written before any signal is looked at.
            _ if fds[1].revents != 0 => Ok(Woke::File),
            _ => Ok(Woke::Signal),
        }
    }
}

/// Whether `fd` takes output at once (a write of up to `PIPE_BUF` bytes would not block).
#[allow(dead_code)] // used by B and C: exiting at once, the console writes what stdout takes
pub fn writable_now(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 }];
    poll(&mut fds, Some(Duration::ZERO)).is_ok_and(|n| n > 0)
}

/// `poll(2)` until one of `fds` is ready or `timeout` passes (`None`: no limit); the number of
/// ready ones (0: timed out). A negative fd is skipped.
fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = timeout.map_or(-1, |t| libc::c_int::try_from(t.as_millis()).unwrap_or(libc::c_int::MAX));
    let n = libc::nfds_t::try_from(fds.len()).map_err(io::Error::other)?;
    loop {
        // SAFETY: `fds` is a live, writable slice of `n` pollfd: poll reads them and writes
        // their `revents`, nothing else.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), n, ms) };
        match usize::try_from(r) {
            Ok(ready) => return Ok(ready),
            Err(_) if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(io::Error::last_os_error()),
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

    fn ready(&self, ready: Ready) -> io::Result<usize> {
        match &self.listener {
            None => Ok(usize::MAX),
            Some(l) => match l.wait(Some((self.file.as_fd(), ready)), None)? {
                Woke::File => Ok(WRITE_CHUNK),
                _ => Err(io::ErrorKind::Interrupted.into()),
            },
        }
    }
}

impl Read for Interruptible {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.ready(Ready::Read)?;
        self.file.read(buf)
    }
}

impl Write for Interruptible {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let most = self.ready(Ready::Write)?;
        self.file.write(&buf[..buf.len().min(most)])
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
    Timeout = 1,
    /// SIGINT or SIGTERM (Ctrl-C, `kill`).
    Interrupted = 2,
}

// Bits of a kick's requests: the two stop reasons (they stay), then the one-shot requests.
const REQ_STOP_MASK: u8 = StopReason::Timeout as u8 | StopReason::Interrupted as u8;
const REQ_PAUSE: u8 = 4;
const REQ_DRAIN: u8 = 8;

fn stop_reason(bits: u8) -> Option<StopReason> {
    match bits & REQ_STOP_MASK {
        0 => None,
        b if b & StopReason::Interrupted as u8 != 0 => Some(StopReason::Interrupted),
        _ => Some(StopReason::Timeout),
    }
}

/// What other threads asked of a vCPU ([`Kick::take`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// The VM is to end (this stays).
    pub stop: Option<StopReason>,
    /// The debugger wants the guest stopped (taken once).
    pub pause: bool,
    /// The coalesced serial ring should be drained (taken once).
    pub drain: bool,
}

/// Asks a vCPU thread, from another thread, to stop for good, to pause (gdb's Ctrl-C) or to
/// drain its serial ring: it records the request, then sends [`kick_signal`] to the thread
/// registered with [`Kick::deliver_here`]. Whether that thread is in `KVM_RUN`, in a wait, or
/// about to enter one, it finds the signal and then the request ([`Kick::take`]).
#[derive(Debug, Clone, Default)]
pub struct Kick {
    shared: Arc<KickShared>,
}

#[derive(Debug, Default)]
struct KickShared {
    requests: AtomicU8,
    /// The vCPU asked for periodic drains (its serial ring is on and stdout is a terminal).
    wants_drains: AtomicBool,
    /// The thread inside [`Kick::deliver_here`], if any. A kick signals it under this lock, and
    /// the thread clears it under this lock before it leaves, so a kick never signals a thread
    /// that has ended.
    thread: Mutex<Option<libc::pthread_t>>,
}

/// A poisoned lock only means a thread panicked while holding it; the value is still valid.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Kick {
    pub fn new() -> Kick {
        Kick::default()
    }

    /// Ends the VM: it reports itself as timed out or interrupted.
    #[allow(dead_code)] // version A's VM takes its stops itself; B and C's watchdog sends them
    pub fn stop(&self, reason: StopReason) {
        self.request(reason as u8);
    }

    /// Stops the guest for the debugger, without ending the VM.
    pub fn pause(&self) {
        self.request(REQ_PAUSE);
    }

    /// Has the vCPU drain its coalesced serial ring, without stopping the guest.
    #[allow(dead_code)] // used by B and C's watchdog
    pub fn drain(&self) {
        self.request(REQ_DRAIN);
    }

    /// Only wakes the thread (it then looks at whatever it is waiting for).
    #[allow(dead_code)] // used by B and C: a VM thread that ends wakes the watchdog
    pub fn wake(&self) {
        self.request(0);
    }

    /// Whether the vCPU asked for periodic drains ([`Kick::want_drains`]).
    #[allow(dead_code)] // used by B and C's watchdog
    pub fn wants_drains(&self) -> bool {
        self.shared.wants_drains.load(Ordering::Relaxed)
    }

    /// The vCPU side: from now on, kick this VM's thread to drain its ring now and then.
    pub fn want_drains(&self) {
        self.shared.wants_drains.store(true, Ordering::Relaxed);
    }

    fn request(&self, bit: u8) {
        // Release: the thread that takes the signal sees the bit.
        self.shared.requests.fetch_or(bit, Ordering::Release);
        let thread = lock(&self.shared.thread);
        if let Some(thread) = *thread {
            // SAFETY: `thread` was stored by `deliver_here` on that thread, which clears it
            // under this same lock before it returns, so while we hold the lock the thread is
            // alive and its pthread_t valid. The signal is blocked there: it stays pending
            // until that thread takes it, so it can neither kill the process nor be lost.
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
    }

    /// The vCPU side: what was asked. A stop stays; a pause and a drain are taken once.
    pub fn take(&self) -> Requests {
        let bits = self.shared.requests.fetch_and(!(REQ_PAUSE | REQ_DRAIN), Ordering::Acquire);
        Requests { stop: stop_reason(bits), pause: bits & REQ_PAUSE != 0, drain: bits & REQ_DRAIN != 0 }
    }

    /// Why the VM is to stop, if a kick asked that.
    pub fn stop_requested(&self) -> Option<StopReason> {
        stop_reason(self.shared.requests.load(Ordering::Acquire))
    }

    /// Runs `body` on this thread with kicks delivered here (the vCPU thread runs its whole
    /// life inside this). Kicks sent while no thread is inside are recorded and found later.
    pub fn deliver_here<R>(&self, body: impl FnOnce() -> R) -> R {
        /// Clears the slot when `body` returns or unwinds.
        struct Unregister<'a>(&'a KickShared);
        impl Drop for Unregister<'_> {
            fn drop(&mut self) {
                *lock(&self.0.thread) = None;
            }
        }
        // SAFETY: pthread_self has no preconditions and cannot fail.
        let me = unsafe { libc::pthread_self() };
        *lock(&self.shared.thread) = Some(me);
        let _unregister = Unregister(&self.shared);
        body()
    }
}

/// The process's interval timer: SIGALRM after `first`, then every `every` (zero: once).
/// `first` zero turns it off.
fn set_alarm(first: Duration, every: Duration) -> io::Result<()> {
    let tv = |d: Duration| libc::timeval {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(d.subsec_micros()),
    };
    let it = libc::itimerval { it_interval: tv(every), it_value: tv(first) };
    // SAFETY: `it` is an initialised itimerval; a null old-value pointer is allowed.
    let r = unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// What the signals a vCPU took mean for its loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// End the VM.
    Stop(StopReason),
    /// Stop the guest for the debugger.
    Pause,
    /// Nothing to do but run on (a drain tick: the loop drains its ring at every exit anyway).
    Resume,
}

/// One vCPU thread's view of its signals: the listener, its kick, and (in a program whose
/// vCPU runs on the main thread) the `--timeout` deadline and the timer that enforces it.
#[derive(Debug)]
pub struct Interrupts {
    listener: Arc<Listener>,
    kick: Kick,
    /// `Some` when this thread owns the process's timer (version A): the deadline, if any,
    /// and how often to drain the ring once asked.
    timer: Option<Timer>,
    /// Signals taken but not yet acted on (taken inside a wait, acted on at the next exit).
    taken: Cell<SigSet>,
    /// Set once a stop came: the VM is ending.
    stop: Cell<Option<StopReason>>,
}

#[derive(Debug, Clone, Copy)]
struct Timer {
    deadline: Option<Instant>,
    drain_every: Option<Duration>,
}

impl Interrupts {
    /// A vCPU whose stops come only through `kick` (versions B and C: the watchdog takes
    /// SIGINT/SIGTERM and enforces `--timeout`).
    #[allow(dead_code)] // versions B and C
    pub fn kicked(listener: Arc<Listener>, kick: Kick) -> Interrupts {
        Interrupts::with_timer(listener, kick, None)
    }

    fn with_timer(listener: Arc<Listener>, kick: Kick, timer: Option<Timer>) -> Interrupts {
        Interrupts { listener, kick, timer, taken: Cell::new(SigSet::EMPTY), stop: Cell::new(None) }
    }

    /// A vCPU that listens to SIGINT, SIGTERM and SIGALRM itself (version A, on the main
    /// thread): `timeout` arms the timer now.
    #[allow(dead_code)] // B and C run their VMs on threads of their own
    pub fn owning_timer(listener: Arc<Listener>, kick: Kick, timeout: Option<Duration>) -> io::Result<Interrupts> {
        if let Some(t) = timeout {
            set_alarm(t.max(Duration::from_micros(1)), Duration::ZERO)?;
        }
        let timer = Timer { deadline: timeout.map(|t| Instant::now() + t), drain_every: None };
        Ok(Interrupts::with_timer(listener, kick, Some(timer)))
    }

    pub fn listener(&self) -> &Arc<Listener> {
        &self.listener
    }

    pub fn kick(&self) -> &Kick {
        &self.kick
    }

    /// The serial ring is on and stdout is a terminal: bytes waiting in it must be drained
    /// every `every` even if the guest makes no exit.
    pub fn drain_every(&mut self, every: Duration) {
        match &mut self.timer {
            Some(timer) => {
                timer.drain_every = Some(every);
                let _ = set_alarm(every, every);
            }
            None => self.kick.want_drains(),
        }
    }

    /// Whether anything was taken inside a wait and not acted on yet (checked before each
    /// `KVM_RUN`, for no system call).
    pub fn has_taken(&self) -> bool {
        !self.taken.get().is_empty()
    }

    /// Takes what is pending and says whether the VM is being stopped. Blocking waits call
    /// this when a signal interrupts them.
    pub fn stop_requested(&self) -> Option<StopReason> {
        self.collect();
        self.stop.get()
    }

    /// After `KVM_RUN` returned early (or a wait took signals): what to do now.
    pub fn wake(&self) -> Wake {
        self.collect();
        self.taken.set(SigSet::EMPTY);
        let requests = self.kick.take();
        match self.stop.get() {
            Some(reason) => Wake::Stop(reason),
            None if requests.pause => Wake::Pause,
            None => Wake::Resume,
        }
    }

    /// Reads the signalfd and folds what came into `taken` and `stop`.
    fn collect(&self) {
        let taken = self.taken.get().union(self.listener.take());
        self.taken.set(taken);
        if self.stop.get().is_some() {
            return;
        }
        let now_due = self.timer.and_then(|t| t.deadline).is_some_and(|d| Instant::now() >= d);
        let stop = if taken.contains(libc::SIGINT) || taken.contains(libc::SIGTERM) {
            Some(StopReason::Interrupted)
        } else if taken.contains(libc::SIGALRM) && now_due {
            Some(StopReason::Timeout)
        } else {
            self.kick.stop_requested()
        };
        self.stop.set(stop);
    }

    /// Once the VM is being stopped, its last output gets a short time to go out: after
    /// `grace`, a stdout that takes nothing is given up on (SIGALRM then interrupts the wait).
    pub fn give_output(&self, grace: Duration) {
        if self.timer.is_some() && self.stop.get().is_some() {
            let _ = set_alarm(grace, grace);
        }
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        if self.timer.is_some() {
            let _ = set_alarm(Duration::ZERO, Duration::ZERO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_the_kernels_bit_layout() {
        let s = SigSet::of(&[libc::SIGINT, libc::SIGTERM]);
        assert_eq!(s.bits(), 1 << 1 | 1 << 14);
        assert!(s.contains(libc::SIGINT) && !s.contains(libc::SIGALRM));
        assert_eq!(s.minus(SigSet::of(&[libc::SIGINT])), SigSet::of(&[libc::SIGTERM]));
        assert_eq!(SigSet::of(&[0, 65, -1]), SigSet::EMPTY, "no such signals");
        assert!(ours().contains(kick_signal()) && ours().contains(libc::SIGALRM));
    }

    #[test]
    fn stop_requests_stay_and_pause_and_drain_are_taken_once() {
        let kick = Kick::new();
        kick.pause();
        kick.drain();
        assert_eq!(kick.take(), Requests { stop: None, pause: true, drain: true });
        assert_eq!(kick.take(), Requests::default(), "one-shot requests are taken");
        kick.stop(StopReason::Timeout);
        kick.stop(StopReason::Interrupted);
        assert_eq!(kick.take().stop, Some(StopReason::Interrupted), "an interrupt wins");
        assert_eq!(kick.stop_requested(), Some(StopReason::Interrupted), "a stop stays");
    }

    /// A kicked thread that blocks the kick signal finds it pending, and the listener takes
    /// it, with another thread spinning in the process all along: no handler, nothing to race.
    #[test]
    fn a_kick_reaches_the_registered_thread_only_through_its_listener() {
        let spinning = Arc::new(AtomicBool::new(true));
        let spin = {
            let spinning = Arc::clone(&spinning);
            std::thread::spawn(move || {
                while spinning.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let kick = Kick::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let vcpu = {
            let kick = kick.clone();
            std::thread::spawn(move || {
                sigprocmask(libc::SIG_BLOCK, Some(SigSet::of(&[kick_signal()]))).unwrap();
                let listener = Listener::new(SigSet::of(&[kick_signal()])).unwrap();
                kick.deliver_here(|| {
                    tx.send(()).unwrap();
                    let woke = listener.wait(None, Some(Duration::from_secs(20))).unwrap();
                    (woke, listener.take(), kick.take())
                })
            })
        };
        rx.recv().unwrap();
        kick.pause();
        let (woke, taken, requests) = vcpu.join().unwrap();
        spinning.store(false, Ordering::Relaxed);
        spin.join().unwrap();
        assert_eq!(woke, Woke::Signal);
        assert!(taken.contains(kick_signal()));
        assert!(requests.pause);
        kick.stop(StopReason::Timeout); // nobody registered any more: recorded, no signal sent
        assert_eq!(kick.stop_requested(), Some(StopReason::Timeout));
    }
}
