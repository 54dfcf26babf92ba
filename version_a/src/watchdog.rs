//! Runs VMs on their own threads, enforces `--timeout` and handles Ctrl-C (docs/REFERENCE.md §2).
//!
//! C counterpart: `pthread_create` / `pthread_join` in `main`; the C has no timeout, and
//! Ctrl-C kills it with guest output still in its buffers.
//! A VM still running at the deadline, or when SIGINT/SIGTERM arrives, is kicked out of
//! `KVM_RUN` ([`Kick::stop`]): it then reports itself as timed out (interrupted) and ends like
//! any failed VM, its output flushed. The waiting is done on a channel that every VM thread,
//! and the thread that waits for signals, writes to. It wakes up on its own only for three
//! things: the deadline; every 100 ms while VMs are being stopped, to kick them again (a kick
//! whose signal landed just before a blocking call must not leave a VM hanging); and, when
//! serial output goes to a terminal, every 50 ms to kick (without stopping it) a VM whose
//! coalesced serial ring holds bytes, so that a line shows up even if the guest then
//! computes without exits ([`Kick::drain`]).
//!
//! One VM with no deadline and no threads of its own (version A without `--timeout` or
//! `--gdb`, or B and C with one image) runs on the calling thread instead, and signal handlers
//! do the same work ([`Kick::run_here`]): a process that starts no thread starts faster.
#![forbid(unsafe_code)]

use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::kvm::{self, Kick, StopReason};
use crate::stats::Stats;
use crate::vm::{Outcome, Report};

/// Stack of a VM thread: the run loop needs little, and untouched stack costs no memory anyway.
const VM_STACK: usize = 256 * 1024;
/// How often VMs that are being stopped are kicked again until they end.
const RETRY: Duration = Duration::from_millis(100);
/// How long bytes may wait in a coalesced serial ring when stdout is a terminal.
pub const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// One VM ready to run: its kick handle and the body of its thread.
pub struct Job {
    pub name: String,
    pub kick: Kick,
    pub body: Box<dyn FnOnce() -> Report + Send>,
    /// The body starts threads of its own (the debugger's): it must not run on the calling
    /// thread, whose signal handlers could then run on those threads instead.
    pub has_threads: bool,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("name", &self.name).finish_non_exhaustive()
    }
}

/// What the waiting thread hears about.
#[derive(Debug)]
enum Event {
    /// VM `index` ended.
    Ended(usize),
    /// SIGINT or SIGTERM arrived.
    Signal(libc::c_int),
}

/// Tells the waiting thread that VM `index` ended, even if its body panicked.
struct Done(usize, mpsc::Sender<Event>);
impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.1.send(Event::Ended(self.0));
    }
}

/// Starts every job on its own thread, kicks those still running at `timeout` or at SIGINT /
/// SIGTERM, and returns their reports in job order. `drain_every`: how often to have VMs
/// drain their coalesced serial ring when it holds bytes (`None`: never; output is then
/// block-buffered anyway). The caller must have called [`kvm::block_stop_signals`] before
/// starting any thread.
pub fn run_all(jobs: Vec<Job>, timeout: Option<Duration>, drain_every: Option<Duration>) -> Vec<Report> {
    // One VM, no deadline and no thread of its own: it runs on this thread, and signal
    // handlers do what the threads below would (`Kick::run_here`). A process that starts no
    // thread starts faster (about 0.3 ms here, a sixth of a hello guest's run).
    if let ([job], None) = (&jobs[..], timeout)
        && !job.has_threads
    {
        let Some(job) = jobs.into_iter().next() else { return vec![] };
        let (kick, body) = (job.kick, job.body);
        // As for a VM thread below, a panic is reported, not spread.
        let body = || std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        return vec![match kick.run_here(drain_every, RETRY, body) {
            Ok(Ok(report)) => report,
            Ok(Err(_)) => failed("internal error: its thread panicked".to_owned()),
            Err(e) => failed(format!("cannot set up its signal handlers: {e}")),
        }];
    }
    let (tx, rx) = mpsc::channel();
    let signals = tx.clone();
    // Not joined: it waits for a signal as long as the process lives.
    let _ = thread::Builder::new().name("signals".to_owned()).stack_size(64 * 1024).spawn(move || {
        while let Ok(signal) = kvm::wait_stop_signal() {
            if signals.send(Event::Signal(signal)).is_err() {
                break;
            }
        }
    });
    let mut running = Vec::with_capacity(jobs.len());
    let mut reports: Vec<Option<Report>> = Vec::with_capacity(jobs.len());
    for (index, job) in jobs.into_iter().enumerate() {
        let done = Done(index, tx.clone());
        let (body, name) = (job.body, job.name);
        let spawned = thread::Builder::new().name(name.clone()).stack_size(VM_STACK).spawn(move || {
            let _done = done;
            body()
        });
        match spawned {
            Ok(handle) => {
                running.push(Some((handle, job.kick)));
                reports.push(None);
            }
            Err(e) => {
                // The VM never ran, so nothing else will say why: say it now (even with -q).
                let reason = format!("cannot start its thread: {e}");
                diag!("mini_hypervisor: {name}: failed: {reason}");
                running.push(None);
                reports.push(Some(failed(reason)));
            }
        }
    }
    drop(tx);

    let mut deadline = timeout.map(|t| Instant::now() + t);
    let mut next_drain = drain_every.map(|d| Instant::now() + d);
    let mut finished = vec![false; running.len()];
    let mut left = running.iter().filter(|r| r.is_some()).count();
    // Once VMs are being stopped: why. They are kicked again every RETRY until they end, so
    // that a kick whose signal landed just before a blocking call cannot leave one hanging.
    let mut stopping: Option<StopReason> = None;
    while left > 0 {
        let wake = [deadline, next_drain].into_iter().flatten().min();
        let next = match wake {
            Some(t) => rx.recv_timeout(t.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        let now = Instant::now();
        match next {
            Ok(Event::Ended(index)) => {
                finished[index] = true;
                left -= 1;
            }
            Ok(Event::Signal(_)) if stopping == Some(StopReason::Interrupted) => {
                diag!("mini_hypervisor: interrupted again: exiting without waiting for the VMs");
                std::process::exit(1);
            }
            Ok(Event::Signal(signal)) => {
                diag!("mini_hypervisor: signal {signal}: stopping every VM (again to exit at once)");
                stopping = Some(StopReason::Interrupted);
                live(&running, &finished).for_each(|kick| kick.stop(StopReason::Interrupted));
                deadline = Some(now + RETRY);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if deadline.is_some_and(|d| now >= d) {
            let reason = *stopping.get_or_insert(StopReason::Timeout);
            live(&running, &finished).for_each(|kick| kick.stop(reason));
            deadline = Some(now + RETRY);
        }
        if let (Some(t), Some(every)) = (next_drain, drain_every) {
            if now >= t {
                live(&running, &finished).filter(|kick| kick.ring_pending()).for_each(Kick::drain);
                next_drain = Some(now + every);
            }
        }
    }

    for (slot, report) in running.into_iter().zip(reports.iter_mut()) {
        if let Some((handle, _)) = slot {
            *report = Some(handle.join().unwrap_or_else(|_| failed("internal error: its thread panicked".to_owned())));
        }
    }
    reports.into_iter().map(|r| r.expect("every VM has a report")).collect()
}

/// The kick handles of the VMs that started and have not ended.
fn live<'a>(running: &'a [Option<(JoinHandle<Report>, Kick)>], finished: &'a [bool]) -> impl Iterator<Item = &'a Kick> {
    running.iter().zip(finished).filter(|(_, done)| !**done).filter_map(|(slot, _)| slot.as_ref().map(|(_, kick)| kick))
}

fn failed(reason: String) -> Report {
    Report { outcome: Outcome::Failed(reason), stats: Stats::default(), wall: Duration::ZERO }
}
