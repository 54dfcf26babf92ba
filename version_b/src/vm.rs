//! One VM's life: create it, then run it until it halts or fails (docs/REFERENCE.md §2).
//!
//! C counterpart: `run_vm`, in its order:
//! 1. [`Vm::create`]: `vm_init` (the VM, its RAM, its vCPU), `setup_long_mode` and
//!    `setup_segments_64` (page tables, control registers, segments), `load_guest_image`, and
//!    the registers (RIP 0, RSP, RFLAGS 2);
//! 2. [`Vm::run`]: `while (stop == 0) { ioctl(KVM_RUN); switch (run->exit_reason) ... }`, a
//!    `match` with one arm per exit reason, each arm one call;
//! 3. the VM's output flushed and a failure reported; `Drop` does `vm_destroy`.
//!
//! What the C does not have enters the loop at one named hook each, a no-op when off:
//! `self.interrupts` (a stop, pause or drain from outside: `signals.rs`), `self.ring` (serial
//! output batched by KVM: `serial_ring.rs`), `self.stats` (`--stats`: `stats.rs`), `self.trace`
//! (`--trace`: `trace.rs`), `self.debugger` (`--gdb`: `gdb/`) and `self.explain` (the crash
//! report at the VM's end: `crash/`).
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::crash::{self, Explain};
use crate::devices::{Devices, IoError};
use crate::gdb::{Debugger, Resume, Stop};
use crate::image::Image;
use crate::kvm::{self, DebugExit, IoExit, Kvm, VcpuExit};
use crate::long_mode::{self, Layout};
use crate::serial::SERIAL_PORT;
use crate::serial_ring::{DRAIN_EVERY, SerialRing};
use crate::signals::{Interrupts, StopReason, Wake};
use crate::stats::Stats;
use crate::symbols::Symbols;
use crate::trace::Trace;

/// How long a stopped VM's last output may wait for a stdout that takes nothing.
const GRACE: Duration = Duration::from_millis(100);

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest executed `hlt`.
    Halted,
    Failed(Failure),
}

/// Why a VM failed: the reason in its one-line diagnostic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// An exit that ends the VM (a crash, a KVM error).
    Exit(VcpuExit),
    /// `KVM_RUN` or another ioctl failed: the message.
    Kvm(String),
    /// A port access that ended the VM.
    Io(IoError),
    /// Stopped from outside; `Some(t)`: by `--timeout t`.
    Stopped(StopReason, Option<Duration>),
    /// A debug exit with no debugger attached.
    UnexpectedDebug(u64),
    /// `k` in gdb.
    Killed,
    /// The VM could not be created, or its thread could not start or panicked (version B, C).
    #[allow(dead_code)] // version A creates its one VM before it runs anything
    NotRun(String),
}

/// What `run` hands back to `main`.
#[derive(Debug)]
pub struct Report {
    pub outcome: Outcome,
    pub stats: Stats,
    pub wall: Duration,
}

/// What a VM needs besides its image: a name, its ports, how it hears signals, the options.
#[derive(Debug)]
pub struct Setup {
    /// `vmN (image path)`, for messages.
    pub label: String,
    pub devices: Devices,
    pub interrupts: Interrupts,
    pub trace: bool,
    pub stats: bool,
    /// Not `--no-coalesce`.
    pub coalesce: bool,
    /// stdout is a terminal (the serial ring then needs draining now and then).
    pub line_buffered: bool,
    pub timeout: Option<Duration>,
    /// The image's symbols, from `NAME.elf` beside it (docs/REFERENCE.md §8).
    pub symbols: Option<Arc<Symbols>>,
    pub debugger: Option<Debugger>,
}

/// A VM that runs: it owns everything its loop touches (C: `struct vm` and the locals of
/// `run_vm`).
#[derive(Debug)]
pub struct Vm {
    /// The fds, guest RAM and the run area.
    kvm: kvm::Vm,
    /// The ports the guest sees.
    devices: Devices,
    label: String,
    line_buffered: bool,
    timeout: Option<Duration>,
    // One hook each:
    /// The crash report and the code check at the VM's end (`crash/`).
    explain: Explain,
    interrupts: Interrupts,
    ring: SerialRing,
    stats: Stats,
    trace: Trace,
    debugger: Option<Debugger>,
}

impl Vm {
    /// C: `vm_init`, `setup_long_mode`, `load_guest_image` and the register setup at the top of
    /// `run_vm`. The page tables go to the top of RAM, the image to 0.
    pub fn create(kvm: &Kvm, layout: &Layout, image: &Image, setup: Setup) -> io::Result<Vm> {
        let vm = kvm::Vm::new(kvm, layout.mem_size as usize)?;
        vm.mem.write(layout.tables_base() as usize, &layout.page_tables())?;
        vm.mem.write(0, &image.bytes)?;
        let sregs = long_mode::long_mode_sregs(vm.vcpu.get_sregs()?, layout);
        vm.vcpu.set_sregs(&sregs)?;
        vm.vcpu.set_regs(&long_mode::initial_regs(layout))?;
        // Not in the C: the signals this thread listens to interrupt the guest (signals.rs).
        vm.vcpu.set_signal_mask(setup.interrupts.listener().run_mask()?.bits())?;
        let ring = SerialRing::new(&vm.vcpu, setup.coalesce, setup.trace, setup.stats, &setup.label);
        Ok(Vm {
            explain: Explain::new(layout, image.bytes.len() as u64, setup.symbols.clone()),
            kvm: vm,
            devices: setup.devices,
            trace: Trace::new(setup.trace, &setup.label, setup.symbols),
            label: setup.label,
            line_buffered: setup.line_buffered,
            timeout: setup.timeout,
            interrupts: setup.interrupts,
            ring,
            stats: Stats::new(setup.stats),
            debugger: setup.debugger,
        })
    }

    /// Runs the guest until it halts or fails, then writes out its output and reports a
    /// failure on stderr (one line naming the VM, the reason and RIP, then the registers).
    pub fn run(mut self) -> Report {
        let start = Instant::now();
        let kick = self.interrupts.kick().clone();
        let outcome = kick.deliver_here(|| {
            let outcome = self.run_loop();
            self.finish(outcome)
        });
        Report { outcome, stats: std::mem::take(&mut self.stats), wall: start.elapsed() }
    }

    /// C: the `KVM_RUN` loop of `run_vm` and its `switch (run->exit_reason)`.
    fn run_loop(&mut self) -> Outcome {
        if let Some(end) = self.debug(Stop::Start) {
            return end;
        }
        loop {
            // Signals taken while a port waited: act on them before entering the guest again.
            if self.interrupts.has_taken()
                && let Some(end) = self.on_signal()
            {
                return end;
            }
            self.stats.entering();
            let exit = self.kvm.vcpu.run(); // C: ioctl(v.vcpu_fd, KVM_RUN, 0)
            self.stats.left(&exit);
            if let Some(end) = self.drain_ring() {
                return end;
            }
            let end = match exit {
                Ok(VcpuExit::Io(io)) => self.on_io(io),
                Ok(VcpuExit::Hlt) => self.on_hlt(),
                Ok(VcpuExit::Debug(trap)) => self.on_debug(trap),
                Ok(VcpuExit::Intr) => self.on_signal(),
                Ok(crash) => self.on_crash(Failure::Exit(crash)),
                Err(ref e) => self.on_crash(Failure::Kvm(e.to_string())),
            };
            self.trace.exit(&self.kvm.vcpu, self.stats.exits, &exit);
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// `KVM_EXIT_IO` (C: `case KVM_EXIT_IO`): the exit's bytes to or from the devices.
    fn on_io(&mut self, io: IoExit) -> Option<Outcome> {
        let stop = || self.interrupts.stop_requested().is_some();
        if let Err(e) = move_io(&self.kvm.vcpu, &mut self.devices, &io, &self.kvm.mem, &stop) {
            return Some(self.io_failure(e));
        }
        for request in self.devices.completed() {
            self.trace.file(&self.kvm.vcpu, &request);
        }
        if io.out && io.port == SERIAL_PORT && self.ring.count(io.count.into(), &self.kvm.fd, &self.label) {
            self.on_ring();
        }
        None
    }

    /// `KVM_EXIT_HLT` (C: `case KVM_EXIT_HLT: stop = 1`): the guest is done.
    fn on_hlt(&mut self) -> Option<Outcome> {
        if let Some(gdb) = &mut self.debugger {
            gdb.exited();
        }
        Some(Outcome::Halted)
    }

    /// `KVM_EXIT_DEBUG`: a breakpoint or a single step, for the debugger.
    fn on_debug(&mut self, trap: DebugExit) -> Option<Outcome> {
        match self.debugger {
            None => Some(Outcome::Failed(Failure::UnexpectedDebug(trap.pc))),
            Some(_) => self.debug(Stop::Trap { pc: trap.pc, dr6: trap.dr6 }),
        }
    }

    /// `KVM_RUN` came back early (`EINTR`): a stop, a pause, or nothing to do but run on.
    fn on_signal(&mut self) -> Option<Outcome> {
        match self.interrupts.wake() {
            Wake::Stop(reason) => Some(self.stopped(reason)),
            Wake::Pause => self.debug(Stop::Interrupt),
            Wake::Resume => None,
        }
    }

    /// An exit that ends the VM (C: `case KVM_EXIT_SHUTDOWN`, and what the C leaves out).
    fn on_crash(&mut self, failure: Failure) -> Option<Outcome> {
        // The debugger sees the crash first (registers as they were); then the VM ends.
        let _ = self.debug(Stop::Crash);
        Some(Outcome::Failed(failure))
    }

    /// Hook: serial bytes waiting in KVM's coalesced ring go out before this exit is handled.
    fn drain_ring(&mut self) -> Option<Outcome> {
        let stop = || self.interrupts.stop_requested().is_some();
        let drained = self.ring.drain(&self.kvm.vcpu, &mut self.devices, &mut self.stats, &self.label, &stop);
        drained.err().map(|e| self.io_failure(e))
    }

    /// The ring has just gone on: on a terminal, it must be drained now and then.
    fn on_ring(&mut self) {
        if self.line_buffered {
            self.interrupts.drain_every(DRAIN_EVERY);
        }
    }

    /// Hook: hands a stop to the debugger, if one is attached; `Some` ends the VM. A debugger
    /// that detached is dropped: the guest runs on as if there had been none.
    fn debug(&mut self, why: Stop) -> Option<Outcome> {
        let gdb = self.debugger.as_mut()?;
        let stop = || self.interrupts.stop_requested().is_some();
        match gdb.on_stop(&self.kvm.vcpu, &self.kvm.mem, why, &stop) {
            Resume::Go => None,
            Resume::Kill => Some(Outcome::Failed(Failure::Killed)),
            Resume::Detached => {
                self.debugger = None;
                None
            }
        }
    }

    /// The outcome of a port access that ended the VM.
    fn io_failure(&self, e: IoError) -> Outcome {
        match e {
            IoError::Stopped => self.stopped(self.interrupts.stop_requested().unwrap_or(StopReason::Interrupted)),
            e => Outcome::Failed(Failure::Io(e)),
        }
    }

    fn stopped(&self, reason: StopReason) -> Outcome {
        Outcome::Failed(Failure::Stopped(reason, self.timeout))
    }

    /// However the VM ended, its output reaches stdout (a stopped VM's only while stdout takes
    /// it), and a failure is reported.
    fn finish(&mut self, mut outcome: Outcome) -> Outcome {
        self.interrupts.give_output(GRACE);
        let stop = || self.interrupts.stop_requested().is_some();
        if let Err(e) = self.devices.finish(&stop)
            && outcome == Outcome::Halted
        {
            outcome = Outcome::Failed(Failure::Io(e));
        }
        if let Outcome::Failed(failure) = &outcome {
            self.explain.failure(&self.kvm, &self.label, failure.kind(), failure);
        }
        self.explain.at_end(&self.kvm, &self.label);
        outcome
    }
}

/// One I/O exit: `count` accesses of `size` bytes, handed to the devices in order, through a
/// small stack buffer (no allocation on the exit path). `ram`: for the file port's bulk commands.
fn move_io(
    vcpu: &kvm::Vcpu,
    devices: &mut Devices,
    io: &IoExit,
    ram: &kvm::Mmap,
    stop: &dyn Fn() -> bool,
) -> Result<(), IoError> {
    let total = io.bytes();
    let mut chunk = [0u8; 512]; // a multiple of every access size
    let host = |e: io::Error| IoError::Host(e.to_string());
    let mut done = 0;
    while done < total {
        let buf = &mut chunk[..(total - done).min(512)];
        if io.out {
            vcpu.io_data(io, done, buf).map_err(host)?;
            devices.out(io.port, io.size, buf, ram, stop)?;
        } else {
            devices.inp(io.port, io.size, buf, stop)?;
            vcpu.set_io_data(io, done, buf).map_err(host)?;
        }
        done += buf.len();
    }
    Ok(())
}

impl Failure {
    /// How this failure counts for the crash report in words.
    fn kind(&self) -> crash::Failure {
        match self {
            Failure::Exit(VcpuExit::Shutdown) => crash::Failure::TripleFault,
            Failure::Exit(VcpuExit::Mmio { .. }) => crash::Failure::Mmio,
            Failure::Io(IoError::Guest(_)) => crash::Failure::Io,
            _ => crash::Failure::Other,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Exit(exit) => f.write_str(&describe_exit(exit)),
            Failure::Kvm(message) => f.write_str(message),
            Failure::Io(IoError::Guest(e)) => write!(f, "guest error: {e}"),
            Failure::Io(IoError::Host(message)) => f.write_str(message),
            Failure::Io(IoError::Stopped) => f.write_str("stopped"),
            Failure::Stopped(StopReason::Timeout, Some(t)) => write!(f, "timed out after {} s", t.as_secs_f64()),
            Failure::Stopped(StopReason::Timeout, None) => f.write_str("timed out"),
            Failure::Stopped(StopReason::Interrupted, _) => f.write_str("interrupted (SIGINT/SIGTERM)"),
            Failure::UnexpectedDebug(pc) => write!(f, "unexpected debug exit at {pc:#x} (no debugger attached)"),
            Failure::Killed => f.write_str("killed by the debugger"),
            Failure::NotRun(why) => f.write_str(why),
        }
    }
}

/// The one-line reason for an exit that ends the VM.
pub fn describe_exit(exit: &VcpuExit) -> String {
    match *exit {
        VcpuExit::Shutdown => "triple fault (KVM_EXIT_SHUTDOWN): the guest crashed".to_owned(),
        VcpuExit::Mmio { phys_addr, len, is_write } => format!(
            "MMIO {} of {len} byte{} at guest-physical {phys_addr:#x}, outside RAM (KVM_EXIT_MMIO)",
            if is_write { "write" } else { "read" },
            if len == 1 { "" } else { "s" }
        ),
        VcpuExit::FailEntry { reason, cpu } => {
            format!("VM entry failed (KVM_EXIT_FAIL_ENTRY), hardware reason {reason:#x} on cpu {cpu}")
        }
        VcpuExit::InternalError { suberror } => format!(
            "KVM internal error (KVM_EXIT_INTERNAL_ERROR), suberror {suberror}{}",
            if suberror == 1 {
                ": instruction emulation failed: an instruction this host's KVM cannot emulate \
                 (SSE arithmetic, int3, ...)"
            } else {
                ""
            }
        ),
        VcpuExit::BadIo { size, count, data_offset } => {
            format!("malformed I/O exit from KVM: size {size}, count {count}, data offset {data_offset:#x}")
        }
        VcpuExit::Unknown(reason) => format!("unhandled KVM exit reason {reason}"),
        VcpuExit::Io(_) | VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::Debug(_) => {
            format!("unexpected exit {exit:?}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::GuestError;

    #[test]
    fn each_failure_has_its_one_line_reason() {
        let cases: [(Failure, &str); 11] = [
            (Failure::Exit(VcpuExit::Shutdown), "triple fault (KVM_EXIT_SHUTDOWN)"),
            (
                Failure::Exit(VcpuExit::Mmio { phys_addr: 0x1000_0000, len: 4, is_write: true }),
                "MMIO write of 4 bytes at guest-physical 0x10000000",
            ),
            (
                Failure::Exit(VcpuExit::FailEntry { reason: 0x21, cpu: 1 }),
                "VM entry failed (KVM_EXIT_FAIL_ENTRY), hardware reason 0x21 on cpu 1",
            ),
            (
                Failure::Exit(VcpuExit::InternalError { suberror: 1 }),
                "an instruction this host's KVM cannot emulate (SSE arithmetic, int3",
            ),
            (
                Failure::Exit(VcpuExit::BadIo { size: 3, count: 1, data_offset: 0x1000 }),
                "malformed I/O exit from KVM: size 3",
            ),
            (Failure::Exit(VcpuExit::Unknown(99)), "unhandled KVM exit reason 99"),
            (Failure::Kvm("KVM_RUN: Bad address".to_owned()), "KVM_RUN: Bad address"),
            (
                Failure::Io(IoError::Guest(GuestError::WideSerial { size: 2, out: true })),
                "guest error: 2-byte out on serial port 0xe9",
            ),
            (Failure::Stopped(StopReason::Timeout, Some(Duration::from_millis(1500))), "timed out after 1.5 s"),
            (Failure::Stopped(StopReason::Interrupted, None), "interrupted (SIGINT/SIGTERM)"),
            (Failure::UnexpectedDebug(0x42), "unexpected debug exit at 0x42"),
        ];
        for (failure, want) in cases {
            let text = failure.to_string();
            assert!(text.contains(want), "{failure:?}: {text}");
        }
        let other = Failure::Exit(VcpuExit::InternalError { suberror: 3 }).to_string();
        assert!(!other.contains("emulate"), "only suberror 1 is an emulation failure: {other}");
    }
}
