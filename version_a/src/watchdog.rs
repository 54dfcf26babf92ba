//! Runs VMs on their own threads, enforces `--timeout` and handles Ctrl-C (SPEC §2).
//!
//! C counterpart: `pthread_create` / `pthread_join` in `main`; the C has no timeout, and
//! Ctrl-C kills it with guest output still in its buffers.
//! A VM still running at the deadline, or when SIGINT/SIGTERM arrives, is kicked out of
//! `KVM_RUN` ([`Kick`]): it then reports itself as timed out (interrupted) and ends like any
//! failed VM, its output flushed. The waiting is done on a channel that every VM thread, and
//! the thread that waits for signals, writes to, so nothing polls or sleeps.
#![forbid(unsafe_code)]

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::kvm::{self, Kick, StopReason};
use crate::stats::Stats;
use crate::vm::{Outcome, Report};

/// Stack of a VM thread: the run loop needs little, and untouched stack costs no memory anyway.
const VM_STACK: usize = 256 * 1024;
/// How often VMs that are being stopped are kicked again until they end.
const RETRY: Duration = Duration::from_millis(100);

/// One VM ready to run: its kick handle and the body of its thread.
pub struct Job {
    pub name: String,
    pub kick: Kick,
    pub body: Box<dyn FnOnce() -> Report + Send>,
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
/// SIGTERM, and returns their reports in job order. The caller must have called
/// [`kvm::block_stop_signals`] before starting any thread.
pub fn run_all(jobs: Vec<Job>, timeout: Option<Duration>) -> Vec<Report> {
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
        let body = job.body;
        let spawned = thread::Builder::new().name(job.name).stack_size(VM_STACK).spawn(move || {
            let _done = done;
            body()
        });
        match spawned {
            Ok(handle) => {
                running.push(Some((handle, job.kick)));
                reports.push(None);
            }
            Err(e) => {
                running.push(None);
                reports.push(Some(failed(format!("cannot start its thread: {e}"))));
            }
        }
    }
    drop(tx);

    let mut deadline = timeout.map(|t| Instant::now() + t);
    let mut finished = vec![false; running.len()];
    let mut left = running.iter().filter(|r| r.is_some()).count();
    // Once VMs are being stopped: why. They are kicked again every RETRY until they end, so
    // that a kick whose signal landed just before a blocking call cannot leave one hanging.
    let mut stopping: Option<StopReason> = None;
    // Kicks every VM that has not ended. The handles are still owned here (not joined), as
    // `Kick::kick` requires.
    let kick_all = |finished: &[bool], reason| {
        for (slot, &done) in running.iter().zip(finished) {
            if let (Some((handle, kick)), false) = (slot, done) {
                kick.kick(handle, reason);
            }
        }
    };
    while left > 0 {
        let next = match deadline {
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(Event::Ended(index)) => {
                finished[index] = true;
                left -= 1;
            }
            Ok(Event::Signal(_)) if stopping == Some(StopReason::Interrupted) => {
                eprintln!("mini_hypervisor: interrupted again: exiting without waiting for the VMs");
                std::process::exit(1);
            }
            Ok(Event::Signal(signal)) => {
                eprintln!("mini_hypervisor: signal {signal}: stopping every VM (again to exit at once)");
                stopping = Some(StopReason::Interrupted);
                kick_all(&finished, StopReason::Interrupted);
                deadline = Some(Instant::now() + RETRY);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let reason = *stopping.get_or_insert(StopReason::Timeout);
                kick_all(&finished, reason);
                deadline = Some(Instant::now() + RETRY);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }

    for (slot, report) in running.into_iter().zip(reports.iter_mut()) {
        if let Some((handle, _)) = slot {
            *report = Some(handle.join().unwrap_or_else(|_| failed("internal error: its thread panicked".to_owned())));
        }
    }
    reports.into_iter().map(|r| r.expect("every VM has a report")).collect()
}

fn failed(reason: String) -> Report {
    Report { outcome: Outcome::Failed(reason), stats: Stats::default(), wall: Duration::ZERO }
}
