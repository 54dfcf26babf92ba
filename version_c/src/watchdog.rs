//! Runs VMs on their own threads and enforces `--timeout` (SPEC §2).
//!
//! C counterpart: `pthread_create` / `pthread_join` in `main`; the C has no timeout.
//! A VM still running at the deadline is kicked out of `KVM_RUN` ([`Kick`]): it then reports
//! itself as timed out and ends like any failed VM. The waiting is done on a channel that
//! every VM thread signals when it ends, so nothing polls or sleeps.
#![forbid(unsafe_code)]

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::kvm::Kick;
use crate::stats::Stats;
use crate::vm::{Outcome, Report};

/// Stack of a VM thread: the run loop needs little, and untouched stack costs no memory anyway.
const VM_STACK: usize = 256 * 1024;

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

/// Tells the waiting thread that VM `index` ended, even if its body panicked.
struct Done(usize, mpsc::Sender<usize>);
impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.1.send(self.0);
    }
}

/// Starts every job on its own thread, kicks those still running at `timeout`, and returns
/// their reports in job order.
pub fn run_all(jobs: Vec<Job>, timeout: Option<Duration>) -> Vec<Report> {
    let (tx, rx) = mpsc::channel();
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

    let deadline = timeout.map(|t| Instant::now() + t);
    let mut finished = vec![false; running.len()];
    let mut left = running.iter().filter(|r| r.is_some()).count();
    let mut kicked = false;
    while left > 0 {
        let next = match deadline {
            Some(d) if !kicked => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
            _ => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(index) => {
                finished[index] = true;
                left -= 1;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // The deadline: kick every VM that has not ended. The handles are still
                // owned here (not joined), which `Kick::kick` requires.
                for (i, slot) in running.iter().enumerate() {
                    if let (Some((handle, kick)), false) = (slot, finished[i]) {
                        kick.kick(handle);
                    }
                }
                kicked = true;
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
