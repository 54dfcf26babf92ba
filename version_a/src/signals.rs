//! Signals: how the running VM learns that it is to stop (Ctrl-C, `kill`, a closed terminal,
//! `--timeout`), to pause for the debugger, or to drain its serial ring (docs/REFERENCE.md §2).
//!
//! C counterpart: none; Ctrl-C kills the C hypervisor with guest output still in its buffers.
//!
//! **No signal handler anywhere** (docs/UNSAFE.md says why and how): the signals of [`OURS`]
//! are blocked from the start ([`Listener::block`], before any thread starts) and unblocked only
//! inside `KVM_RUN` (`KVM_SET_SIGNAL_MASK`), which one makes return `EINTR`, at once if it was
//! pending before. The thread takes them from a signalfd ([`Listener::take`]) when it chooses,
//! and [`Interrupts`] says what they mean; a wait for stdin or stdout polls that signalfd too
//! ([`Interruptible`]). Linux 4.15 or later: only since then does a blocked signal that
//! `KVM_SET_SIGNAL_MASK` unblocks reach `KVM_RUN` as `EINTR` on every path.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
/// Ctrl-\ and the user signals, whose default action would lose the guest's buffered output.
pub const STOP_SIGNALS: SigSet =
    SigSet::of(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2]);

/// The signal that makes the VM's thread leave `KVM_RUN` (or a wait) and look at its [`Kick`]:
/// SIGURG, ignored by default, so that it kills no thread that did not block it (the kernel
/// sends it for a socket's urgent data only to a process that asks, which this one never does).
pub const KICK_SIGNAL: libc::c_int = libc::SIGURG;

/// Every signal this program uses: the stop signals, SIGALRM (the timer), the kick.
pub const OURS: SigSet = STOP_SIGNALS.union(SigSet::of(&[libc::SIGALRM, KICK_SIGNAL]));

/// `rt_sigprocmask(how, set)` on the calling thread (`None`: only reads); returns the mask before.
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
    /// Blocks `set` in the calling thread and every thread it starts afterwards (none of them can
    /// then kill the process or run a handler), and makes a non-blocking signalfd that takes them.
    pub fn block(set: SigSet) -> io::Result<Listener> {
        let before = sigprocmask(libc::SIG_BLOCK, Some(set))?;
        let flags = libc::SFD_NONBLOCK | libc::SFD_CLOEXEC;
        // SAFETY: `&set.0` points to the live 8-byte mask the kernel reads; -1 asks for a new fd.
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

    /// Waits until `file` has one of its `poll(2)` events (`POLLIN`, `POLLOUT`), one of the
    /// listened signals is pending for this thread, or `timeout` passes (`None`: no limit). The
    /// signals are not taken.
    pub fn wait(&self, file: Option<(BorrowedFd<'_>, i16)>, timeout: Option<Duration>) -> io::Result<Woke> {
        let (fd, events) = file.map_or((-1, 0), |(f, events)| (f.as_raw_fd(), events));
        let mut fds = [
            libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd, events, revents: 0 },
        ];
        let ms = timeout.map_or(-1, |t| libc::c_int::try_from(t.as_millis()).unwrap_or(libc::c_int::MAX));
        loop {
            // SAFETY: `fds` is a live, writable array of 2 pollfd; poll writes only their `revents`.
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

/// At most this much per write(2) once poll says the file takes output: a pipe takes it whole (`PIPE_BUF`).
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
            && l.wait(Some((self.file.as_fd(), libc::POLLIN)), None)? != Woke::File
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
            if l.wait(Some((self.file.as_fd(), libc::POLLOUT)), None)? != Woke::File {
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

/// Why the VM is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `--timeout` ran out.
    Timeout,
    /// A stop signal ([`STOP_SIGNALS`]): which one.
    Signal(libc::c_int),
}

/// Lets the debugger's thread stop the running guest (gdb's Ctrl-C): it records the request, then
/// sends [`KICK_SIGNAL`] to the VM's thread, which finds the signal wherever it is, then the request.
#[derive(Debug, Clone, Default)]
pub struct Kick {
    shared: Arc<KickShared>,
}

#[derive(Debug, Default)]
struct KickShared {
    /// A pause was asked and not yet taken.
    pause: AtomicBool,
    /// The thread inside [`Kick::deliver_here`], if any (set, cleared and signalled under this lock).
    thread: Mutex<Option<libc::pthread_t>>,
}

/// A poisoned lock only means a thread panicked while holding it; the value is still valid.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Kick {
    /// Stops the guest for the debugger, without ending the VM.
    pub fn pause(&self) {
        // Release: the thread that takes the signal sees the request.
        self.shared.pause.store(true, Ordering::Release);
        let thread = lock(&self.shared.thread);
        if let Some(thread) = *thread {
            // SAFETY: `thread` was stored by `deliver_here` on that thread, which clears it under
            // this lock before it returns: while we hold the lock, the thread is alive and its
            // pthread_t valid. The signal is blocked there (`deliver_here` checks): it stays
            // pending until that thread takes it, so it can neither kill the process nor be lost.
            unsafe { libc::pthread_kill(thread, KICK_SIGNAL) };
        }
    }

    /// The VM's side: whether a pause was asked since the last call (taken once).
    pub fn take_pause(&self) -> bool {
        self.shared.pause.swap(false, Ordering::Acquire)
    }

    /// Runs `body` on this thread with kicks delivered here (the VM runs its whole life inside
    /// this); kicks sent while no thread is inside are recorded and found later. The kick signal
    /// must be blocked on this thread (asserted in debug builds), or it would be lost (ignored).
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

/// `d` as a `timeval`, rounded *up* to the microsecond: a timer set with it never fires before
/// `d` has passed (rounded down, a SIGALRM could come a fraction of a microsecond before the
/// `--timeout` deadline, find it not due, and be the last one).
fn timeval_at_least(d: Duration) -> libc::timeval {
    let micros = d.as_nanos().div_ceil(1000);
    libc::timeval {
        tv_sec: libc::time_t::try_from(micros / 1_000_000).unwrap_or(libc::time_t::MAX),
        tv_usec: (micros % 1_000_000) as libc::suseconds_t,
    }
}

/// The process's interval timer: SIGALRM after `first` (zero: off), then every `every` (zero: once).
fn set_alarm(first: Duration, every: Duration) -> io::Result<()> {
    let it = libc::itimerval { it_interval: timeval_at_least(every), it_value: timeval_at_least(first) };
    // SAFETY: `it` is an initialised itimerval; a null old-value pointer is allowed.
    let r = unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// What the signals the VM took mean for its loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// End the VM.
    Stop(StopReason),
    /// Stop the guest for the debugger.
    Pause,
    /// Nothing to do but run on (a drain tick: the loop drains its ring at every exit anyway).
    Resume,
}

/// The VM's view of its signals: the listener, the `--timeout` deadline and the timer that
/// enforces it, and the debugger's kick (with `--gdb`).
#[derive(Debug)]
pub struct Interrupts {
    pub kick: Option<Kick>,
    /// The signal mask for `KVM_RUN` (`KVM_SET_SIGNAL_MASK`, as the kernel's two 32-bit
    /// words): the listener's signals unblocked.
    pub run_mask: [u32; 2],
    listener: Arc<Listener>,
    timeout: Option<Duration>,
    /// The start plus `timeout`, fixed by [`Interrupts::start_clock`].
    deadline: Cell<Option<Instant>>,
    /// Signals taken but not yet acted on (taken inside a wait, acted on at the next exit).
    taken: Cell<SigSet>,
    /// Set once a stop came: the VM is ending.
    stop: Cell<Option<StopReason>>,
}

impl Interrupts {
    /// The VM's signals, `timeout` not counting yet ([`Interrupts::start_clock`]).
    pub fn new(listener: Arc<Listener>, timeout: Option<Duration>, kick: Option<Kick>) -> Interrupts {
        let run_mask = [listener.run_mask.0 as u32, (listener.run_mask.0 >> 32) as u32];
        let (deadline, taken, stop) = (Cell::new(None), Cell::new(SigSet::EMPTY), Cell::new(None));
        Interrupts { run_mask, listener, kick, timeout, deadline, taken, stop }
    }

    /// `--timeout` counts from `start`: the deadline is fixed first, then the timer armed, so
    /// that however soon the SIGALRM comes, it finds the deadline due.
    pub fn start_clock(&self, start: Instant) -> io::Result<()> {
        self.start_clock_with(start, |after| set_alarm(after, Duration::ZERO))
    }

    /// [`Interrupts::start_clock`] with the timer armed by `arm(after)` (a test's own).
    fn start_clock_with(&self, start: Instant, arm: impl FnOnce(Duration) -> io::Result<()>) -> io::Result<()> {
        let Some(t) = self.timeout else { return Ok(()) };
        self.deadline.set(start.checked_add(t));
        arm(t.max(Duration::from_micros(1)))
    }

    /// The serial ring is on and stdout is a terminal: bytes waiting in it must be drained
    /// every `every` even if the guest makes no exit (a SIGALRM each time; a `--timeout`
    /// deadline is then found due at the first tick past it).
    pub fn drain_every(&self, every: Duration) {
        let _ = set_alarm(every, every);
    }

    /// Whether signals taken inside a wait await action (checked before each `KVM_RUN`: no syscall).
    pub fn has_taken(&self) -> bool {
        self.taken.get() != SigSet::EMPTY
    }

    /// Takes what is pending and says whether the VM is being stopped (asked by interrupted waits).
    pub fn stop_requested(&self) -> Option<StopReason> {
        self.collect();
        self.stop.get()
    }

    /// After `KVM_RUN` returned early (or a wait took signals): what to do now.
    pub fn wake(&self) -> Wake {
        self.collect();
        self.taken.set(SigSet::EMPTY);
        let pause = self.kick.as_ref().is_some_and(Kick::take_pause);
        match self.stop.get() {
            Some(reason) => Wake::Stop(reason),
            None if pause => Wake::Pause,
            None => Wake::Resume,
        }
    }

    /// Reads the signalfd and folds what came into `taken` and `stop`.
    fn collect(&self) {
        let taken = self.taken.get().union(self.listener.take());
        self.taken.set(taken);
        if self.stop.get().is_none() {
            self.stop.set(self.stop_for(taken, Instant::now()));
        }
    }

    /// What the signals `taken` mean at `now`: a stop signal stops; a SIGALRM stops only once
    /// the deadline is due (it may be a drain tick, or give a stopped VM's output up).
    fn stop_for(&self, taken: SigSet, now: Instant) -> Option<StopReason> {
        let due = self.deadline.get().is_some_and(|d| now >= d);
        if let Some(signal) = taken.minus(SigSet::of(&[libc::SIGALRM, KICK_SIGNAL])).first() {
            Some(StopReason::Signal(signal))
        } else if taken.contains(libc::SIGALRM) && due {
            Some(StopReason::Timeout)
        } else {
            None
        }
    }

    /// Once the VM is being stopped, its last output gets a short time to go out: after
    /// `grace`, a stdout that takes nothing is given up on (SIGALRM then interrupts the wait).
    pub fn give_output(&self, grace: Duration) {
        if self.stop.get().is_some() {
            let _ = set_alarm(grace, grace);
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
        assert!(OURS.contains(KICK_SIGNAL) && OURS.contains(libc::SIGALRM) && OURS.contains(libc::SIGHUP));
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

    /// The timer race, with a clock of the test's own: the deadline must be fixed before the
    /// timer is armed, so that a SIGALRM, which comes `after` the arming at the soonest, finds
    /// it due. (The other order, arming first, gave a deadline later than the alarm: the one
    /// SIGALRM came, was not due, and the VM ran on for ever.)
    #[test]
    fn the_deadline_is_fixed_before_the_timer_is_armed() {
        let listener = Arc::new(Listener::block(SigSet::of(&[KICK_SIGNAL])).unwrap());
        let t = Duration::from_millis(200);
        let interrupts = Interrupts::new(listener, Some(t), None);
        let start = Instant::now();
        let mut armed = false;
        interrupts
            .start_clock_with(start, |after| {
                // The thread may be slow to get here: the clock has moved on since `start`.
                let armed_at = start + Duration::from_millis(5);
                let deadline = interrupts.deadline.get().expect("the deadline is fixed before the timer is armed");
                assert_eq!(after, t);
                assert!(deadline <= armed_at + after, "the alarm cannot come before the deadline");
                armed = true;
                Ok(())
            })
            .unwrap();
        assert!(armed);
        let alarm = SigSet::of(&[libc::SIGALRM]);
        assert_eq!(interrupts.stop_for(alarm, start + t), Some(StopReason::Timeout), "an alarm at the deadline");
        assert_eq!(interrupts.stop_for(alarm, start + t - Duration::from_nanos(1)), None, "a drain tick before it");
        assert_eq!(interrupts.stop_for(SigSet::EMPTY, start + 2 * t), None, "only a SIGALRM looks at the clock");
        let hup = SigSet::of(&[libc::SIGHUP, libc::SIGALRM]);
        assert_eq!(interrupts.stop_for(hup, start), Some(StopReason::Signal(libc::SIGHUP)));
        // Without --timeout the clock starts nothing: no deadline, no timer.
        let listener = Arc::new(Listener::block(SigSet::of(&[KICK_SIGNAL])).unwrap());
        let untimed = Interrupts::new(listener, None, None);
        untimed.start_clock_with(start, |_| panic!("no timer without --timeout")).unwrap();
        assert_eq!(untimed.stop_for(alarm, start + Duration::from_secs(1_000_000)), None);
    }

    #[test]
    fn the_timer_never_fires_before_its_time() {
        let tv = |d| {
            let t = timeval_at_least(d);
            (t.tv_sec, t.tv_usec)
        };
        assert_eq!(tv(Duration::from_millis(200)), (0, 200_000));
        assert_eq!(tv(Duration::from_nanos(1_000_500)), (0, 1001), "a part of a microsecond rounds up");
        assert_eq!(tv(Duration::from_nanos(1_999_999_001)), (2, 0));
        assert_eq!(tv(Duration::from_secs(1_000_000)), (1_000_000, 0));
        assert_eq!(tv(Duration::ZERO), (0, 0), "zero still turns the timer off");
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
