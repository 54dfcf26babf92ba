//! The main thread while the VM threads run: it takes the stop signals (Ctrl-C, SIGTERM, a
//! closed terminal's SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2), enforces `--timeout`, and kicks the
//! VMs that must stop or drain their serial ring (docs/REFERENCE.md §2, §3).
//!
//! C counterpart: the `pthread_join` loop of `main` in `Version_B/mini_hypervisor.c`, which
//! only waits; the C has no timeout, and Ctrl-C kills it with guest output still in its buffers.
//!
//! It sleeps in one place, [`Listener::wait`], until one of: a stop signal; a VM thread
//! saying it ended (it sends its number on the channel, then kicks this thread); the deadline;
//! while VMs are being stopped, every [`RETRY`] (a stopped VM whose stdout takes nothing gives
//! its output up at the next kick); on a terminal, every [`DRAIN_EVERY`] to have VMs drain
//! their coalesced serial ring.
#![forbid(unsafe_code)]

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::serial_ring::DRAIN_EVERY;
use crate::signals::{Kick, Listener, SigSet, StopReason};

/// How often VMs that are being stopped are kicked again until they end.
const RETRY: Duration = Duration::from_millis(100);
/// Stop signals this soon after the first are the same request (a shell or `timeout(1)` may
/// send SIGTERM to the hypervisor and to its process group at once).
const SAME_REQUEST: Duration = Duration::from_secs(1);

/// What the watchdog knows of the VMs.
#[derive(Debug)]
pub struct Watch<'a> {
    /// One kick per VM, in VM order.
    pub kicks: &'a [Kick],
    /// VM threads send their number here when they end (then kick this thread).
    pub ended: &'a Receiver<usize>,
    /// This thread's signals: the stop signals and the kicks of ending VMs.
    pub listener: &'a Listener,
    pub timeout: Option<Duration>,
    /// stdout is a terminal and the serial ring may be on: drain it every [`DRAIN_EVERY`].
    pub drains: bool,
}

/// What a second stop signal, past [`SAME_REQUEST`], makes the watchdog do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    /// Every VM ended.
    AllEnded,
    /// Interrupted again: the process is to exit at once, without waiting for the VMs.
    ExitNow,
}

/// Waits until every VM has ended, stopping them at the deadline or at SIGINT/SIGTERM.
pub fn watch(w: &Watch<'_>) -> Watched {
    let start = Instant::now();
    let mut running = vec![true; w.kicks.len()];
    let mut deadline = w.timeout.map(|t| start + t);
    let mut next_drain = w.drains.then(|| start + DRAIN_EVERY);
    // Once VMs are being stopped: why, and since when.
    let mut stopping: Option<(StopReason, Instant)> = None;
    while running.contains(&true) {
        let wake = [deadline, next_drain].into_iter().flatten().min();
        let _ = w.listener.wait(None, wake.map(|t| t.saturating_duration_since(Instant::now())));
        let taken = w.listener.take();
        while let Ok(index) = w.ended.try_recv() {
            running[index] = false;
        }
        let now = Instant::now();
        if let Some(signal) = taken.minus(SigSet::of(&[crate::signals::KICK_SIGNAL])).first() {
            match stopping {
                Some((StopReason::Signal(_), since)) if now - since > SAME_REQUEST => {
                    diag!("mini_hypervisor: interrupted again: exiting without waiting for the VMs");
                    return Watched::ExitNow;
                }
                Some((StopReason::Signal(_), _)) => {}
                _ => {
                    diag!(
                        "mini_hypervisor: stopping every VM (interrupt again, a second later, to exit without waiting)"
                    );
                    stopping = Some((StopReason::Signal(signal), now));
                    deadline = Some(now);
                }
            }
        }
        if deadline.is_some_and(|d| now >= d) {
            let (reason, _) = *stopping.get_or_insert((StopReason::Timeout, now));
            live(w.kicks, &running).for_each(|kick| kick.stop(reason));
            deadline = Some(now + RETRY);
        }
        if let Some(t) = next_drain.filter(|&t| now >= t) {
            live(w.kicks, &running).filter(|kick| kick.wants_drains()).for_each(Kick::drain);
            next_drain = Some(t.max(now) + DRAIN_EVERY);
        }
    }
    Watched::AllEnded
}

/// The kicks of the VMs still running.
fn live<'a>(kicks: &'a [Kick], running: &'a [bool]) -> impl Iterator<Item = &'a Kick> {
    kicks.iter().zip(running).filter(|(_, run)| **run).map(|(kick, _)| kick)
}
