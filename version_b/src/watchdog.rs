//! The main thread while the VM threads run: it takes the stop signals (Ctrl-C, SIGTERM, a
//! closed terminal's SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2), enforces `--timeout`, and kicks the
//! VMs that must stop or drain their serial ring (docs/REFERENCE.md §2, §3, §9).
//!
//! C counterpart: the `pthread_join` loop of `main` in `Version_B/mini_hypervisor.c`, which
//! only waits; the C has no timeout, and Ctrl-C kills it with guest output still in its buffers.
//!
//! It sleeps in one place, [`Listener::wait`], until one of: a stop signal; a VM thread
//! saying it started or ended (an [`Event`] on the channel, then a kick of this thread); the
//! next VM's deadline; while VMs are being stopped, every [`RETRY`] (a stopped VM whose stdout
//! takes nothing gives its output up at the next kick); on a terminal, every [`DRAIN_EVERY`]
//! to have VMs drain their coalesced serial ring.
//!
//! What it decides is [`Watchdog`], a state machine fed with the instant, the stop signal
//! taken and the VMs' events, so that its rules are unit-tested with a clock of the test's
//! own and VMs that never end (below): each VM's `--timeout` counts from its own start, and a
//! second stop signal more than [`SAME_REQUEST`] after the first exits without waiting.
#![forbid(unsafe_code)]

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::signals::{KICK_SIGNAL, Kick, Listener, SigSet, StopReason};
use inspect::ring::DRAIN_EVERY;

/// How often VMs that are being stopped are kicked again until they end.
const RETRY: Duration = Duration::from_millis(100);
/// Stop signals this soon after the first are the same request (a shell or `timeout(1)` may
/// send SIGTERM to the hypervisor and to its process group at once).
const SAME_REQUEST: Duration = Duration::from_secs(1);

/// What a VM thread tells the watchdog: its number on the channel, then a kick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// VM `index` is made and about to run (its first instruction, or its wait for gdb, comes
    /// next): its `--timeout` counts from this instant (docs/REFERENCE.md §2).
    Started(usize, Instant),
    /// VM `index`'s thread ended (halted, failed, never started, or panicked).
    Ended(usize),
}

/// What the watchdog knows of the VMs.
#[derive(Debug)]
pub struct Watch<'a> {
    /// One kick per VM, in VM order.
    pub kicks: &'a [Kick],
    /// What the VM threads say: each sends its events here, then kicks this thread.
    pub events: &'a Receiver<Event>,
    /// This thread's signals: the stop signals and the kicks of the VM threads.
    pub listener: &'a Listener,
    pub timeout: Option<Duration>,
    /// stdout is a terminal and the serial ring may be on: drain it every [`DRAIN_EVERY`].
    pub drains: bool,
}

/// How the watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    /// Every VM ended.
    AllEnded,
    /// A second stop signal, past [`SAME_REQUEST`]: the process is to exit at once, without
    /// waiting for the VMs.
    ExitNow,
}

/// Waits until every VM has ended, stopping each at its deadline or all at a stop signal.
pub fn watch(w: &Watch<'_>) -> Watched {
    let mut dog = Watchdog::new(w.kicks, w.timeout, w.drains, Instant::now());
    let mut signal = None;
    loop {
        while let Ok(event) = w.events.try_recv() {
            dog.on_event(event);
        }
        if let Some(end) = dog.step(Instant::now(), signal) {
            return end;
        }
        let wake = dog.next_wake().map(|t| t.saturating_duration_since(Instant::now()));
        let _ = w.listener.wait(None, wake);
        signal = w.listener.take().minus(SigSet::of(&[KICK_SIGNAL])).first();
    }
}

/// One VM as the watchdog sees it.
#[derive(Debug)]
struct VmWatch<'a> {
    kick: &'a Kick,
    running: bool,
    /// Its start plus `--timeout`, once it has started.
    deadline: Option<Instant>,
    /// Why it is being stopped, once it is (kicked again every [`RETRY`] until it ends).
    stopping: Option<StopReason>,
}

/// The watchdog's rules, apart from its waiting: fed with the VMs' [`Event`]s and, at every
/// wake, the instant and the stop signal taken, if any.
#[derive(Debug)]
struct Watchdog<'a> {
    vms: Vec<VmWatch<'a>>,
    timeout: Option<Duration>,
    /// When the first stop signal came.
    interrupted: Option<Instant>,
    /// When VMs being stopped are kicked again.
    next_retry: Option<Instant>,
    /// When VMs that asked for it drain their serial ring (on a terminal).
    next_drain: Option<Instant>,
}

impl<'a> Watchdog<'a> {
    /// The VMs of `kicks`, none started yet, at `now`.
    fn new(kicks: &'a [Kick], timeout: Option<Duration>, drains: bool, now: Instant) -> Watchdog<'a> {
        let vms = kicks.iter().map(|kick| VmWatch { kick, running: true, deadline: None, stopping: None }).collect();
        Watchdog { vms, timeout, interrupted: None, next_retry: None, next_drain: drains.then(|| now + DRAIN_EVERY) }
    }

    /// A VM started (its deadline is fixed) or ended.
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Started(index, at) => {
                if let Some(vm) = self.vms.get_mut(index) {
                    vm.deadline = self.timeout.and_then(|t| at.checked_add(t));
                }
            }
            Event::Ended(index) => {
                if let Some(vm) = self.vms.get_mut(index) {
                    vm.running = false;
                }
            }
        }
    }

    /// At `now`, having taken the stop signal `signal` (if any): kicks what is due; `Some`
    /// once the watch is over.
    fn step(&mut self, now: Instant, signal: Option<libc::c_int>) -> Option<Watched> {
        if !self.vms.iter().any(|vm| vm.running) {
            return Some(Watched::AllEnded);
        }
        if let Some(signal) = signal {
            match self.interrupted {
                Some(since) if now.saturating_duration_since(since) > SAME_REQUEST => {
                    diag!("mini_hypervisor: interrupted again: exiting without waiting for the VMs");
                    return Some(Watched::ExitNow);
                }
                Some(_) => {}
                None => {
                    diag!(
                        "mini_hypervisor: stopping every VM (interrupt again, a second later, to exit without waiting)"
                    );
                    self.interrupted = Some(now);
                    // A signal wins over a timeout already under way, as in `Kick::stop`.
                    self.live().for_each(|vm| vm.stopping = Some(StopReason::Signal(signal)));
                    self.next_retry = Some(now);
                }
            }
        }
        let mut timed_out = false;
        for vm in self.live() {
            if vm.stopping.is_none() && vm.deadline.is_some_and(|d| now >= d) {
                vm.stopping = Some(StopReason::Timeout);
                timed_out = true;
            }
        }
        if timed_out {
            self.next_retry = Some(now);
        }
        if self.next_retry.is_some_and(|t| now >= t) {
            let mut kicked = false;
            for vm in self.live() {
                if let Some(reason) = vm.stopping {
                    vm.kick.stop(reason);
                    kicked = true;
                }
            }
            self.next_retry = kicked.then(|| now + RETRY);
        }
        if let Some(t) = self.next_drain.filter(|&t| now >= t) {
            self.live().filter(|vm| vm.kick.wants_drains()).for_each(|vm| vm.kick.drain());
            self.next_drain = Some(t.max(now) + DRAIN_EVERY);
        }
        None
    }

    /// When [`Watchdog::step`] has something to do next without a signal or an event: the
    /// next deadline of a VM not being stopped yet, the next retry or the next drain.
    fn next_wake(&self) -> Option<Instant> {
        let deadlines = self.vms.iter().filter(|vm| vm.running && vm.stopping.is_none()).filter_map(|vm| vm.deadline);
        deadlines.chain(self.next_retry).chain(self.next_drain).min()
    }

    /// The VMs still running.
    fn live(&mut self) -> impl Iterator<Item = &mut VmWatch<'a>> {
        self.vms.iter_mut().filter(|vm| vm.running)
    }
}

/// The rules are tested here, with a clock of the test's own and VMs that never end because
/// nobody takes their kicks; end to end in `tests/stop.rs`, which holds real VM threads in a
/// ptrace stop at `KVM_RUN` (the hypervisor itself leaves nothing a stop cannot end): a second
/// SIGTERM past [`SAME_REQUEST`] exits at once, status 1, after `Console::flush_without_waiting`.
#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A second stop signal within a second of the first is the same request; one that comes
    /// later, while VMs still run (these never end: nobody takes their kicks), exits at once.
    #[test]
    fn a_second_stop_signal_past_a_second_exits_without_waiting_for_the_vms() {
        let kicks = [Kick::default(), Kick::default(), Kick::default()];
        let t0 = Instant::now();
        let mut dog = Watchdog::new(&kicks, None, false, t0);
        dog.on_event(Event::Started(0, t0));
        dog.on_event(Event::Started(1, t0));
        dog.on_event(Event::Ended(2));
        assert_eq!(dog.step(t0, None), None);
        assert_eq!(dog.next_wake(), None, "nothing to do until a signal or an event");
        let first = t0 + ms(10);
        assert_eq!(dog.step(first, Some(libc::SIGHUP)), None);
        for kick in &kicks[..2] {
            assert_eq!(kick.stop_requested(), Some(StopReason::Signal(libc::SIGHUP)));
        }
        assert_eq!(kicks[2].stop_requested(), None, "a VM that ended is not kicked");
        assert_eq!(dog.next_wake(), Some(first + RETRY), "kicked again until they end");
        assert_eq!(dog.step(first + RETRY, None), None);
        // timeout(1) sends SIGTERM twice at once; a user's second Ctrl-C at exactly 1 s is the
        // same request still.
        assert_eq!(dog.step(first + ms(1), Some(libc::SIGTERM)), None);
        assert_eq!(dog.step(first + SECOND, Some(libc::SIGINT)), None);
        assert_eq!(kicks[0].stop_requested(), Some(StopReason::Signal(libc::SIGHUP)), "the first signal names it");
        assert_eq!(dog.step(first + SECOND + ms(1), Some(libc::SIGTERM)), Some(Watched::ExitNow));
    }

    #[test]
    fn the_watch_ends_when_every_vm_has_ended_whatever_is_pending() {
        let kicks = [Kick::default(), Kick::default()];
        let t0 = Instant::now();
        let mut dog = Watchdog::new(&kicks, Some(SECOND), false, t0);
        dog.on_event(Event::Started(0, t0));
        assert_eq!(dog.step(t0 + SECOND, Some(libc::SIGTERM)), None);
        dog.on_event(Event::Ended(0));
        assert_eq!(dog.step(t0 + SECOND, None), None, "VM 1 never started, and has not ended");
        dog.on_event(Event::Ended(1));
        assert_eq!(dog.step(t0 + 3 * SECOND, Some(libc::SIGTERM)), Some(Watched::AllEnded));
    }

    /// `--timeout` counts from each VM's own start: not from the watchdog's, and not while a
    /// VM is still being made.
    #[test]
    fn each_vm_times_out_on_its_own_clock() {
        let kicks = [Kick::default(), Kick::default(), Kick::default()];
        let t0 = Instant::now();
        let mut dog = Watchdog::new(&kicks, Some(SECOND), false, t0);
        assert_eq!(dog.next_wake(), None, "no VM has started: no deadline");
        dog.on_event(Event::Started(0, t0 + ms(100)));
        dog.on_event(Event::Started(1, t0 + ms(600)));
        assert_eq!(dog.step(t0 + ms(200), None), None);
        assert_eq!(dog.next_wake(), Some(t0 + ms(1100)));
        assert_eq!(dog.step(t0 + ms(1099), None), None);
        assert!(kicks.iter().all(|k| k.stop_requested().is_none()), "not before its deadline");
        assert_eq!(dog.step(t0 + ms(1100), None), None);
        assert_eq!(kicks[0].stop_requested(), Some(StopReason::Timeout));
        assert_eq!(kicks[1].stop_requested(), None, "VM 1 started later");
        assert_eq!(dog.next_wake(), Some(t0 + ms(1100) + RETRY));
        dog.on_event(Event::Ended(0));
        assert_eq!(dog.step(t0 + ms(1600), None), None);
        assert_eq!(kicks[1].stop_requested(), Some(StopReason::Timeout));
        assert_eq!(kicks[2].stop_requested(), None, "VM 2 never started (still being made)");
        // A stop signal after a timeout is the first stop signal: it stops, it does not exit.
        assert_eq!(dog.step(t0 + ms(5000), Some(libc::SIGUSR1)), None);
        assert_eq!(kicks[1].stop_requested(), Some(StopReason::Signal(libc::SIGUSR1)), "a signal wins");
        assert_eq!(kicks[2].stop_requested(), Some(StopReason::Signal(libc::SIGUSR1)));
    }

    #[test]
    fn vms_that_asked_for_it_drain_their_ring_every_tick() {
        let kicks = [Kick::default(), Kick::default()];
        kicks[1].want_drains();
        let t0 = Instant::now();
        let mut dog = Watchdog::new(&kicks, None, true, t0);
        assert_eq!(dog.next_wake(), Some(t0 + DRAIN_EVERY));
        assert_eq!(dog.step(t0 + DRAIN_EVERY, None), None);
        assert!(!kicks[0].take().drain);
        assert!(kicks[1].take().drain);
        assert_eq!(dog.next_wake(), Some(t0 + 2 * DRAIN_EVERY));
    }
}
