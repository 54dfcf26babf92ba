//! The VM's life: create it, then run it until it halts or fails (docs/REFERENCE.md §2).
//!
//! C counterpart: `run_vm` in `Version_C/mini_hypervisor.c`, the body of each VM's thread, in
//! its order: [`Vm::create`] (`vm_init`, `setup_long_mode`, `setup_segments_64`,
//! `load_guest_image`, the registers), then [`Vm::run`] (`while (stop == 0) { ioctl(KVM_RUN);
//! switch (run->exit_reason) ... }`, one `match` arm per exit reason), the output flushed and a
//! failure reported; `Drop` does `vm_destroy`.
//!
//! What the C does not have enters the loop at one `// Hook:` each, on a field that is off
//! unless asked for: `interrupts` (`signals.rs`), `ring` (serial output batched by KVM), `tools`.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use crate::kvm::{
    self, IoExit, KVM_GET_SREGS, KVM_SET_REGS, KVM_SET_SIGNAL_MASK, KVM_SET_SREGS, Kvm, RING_MAX, VcpuExit,
};
use crate::signals::{Interrupts, StopReason, Wake};
use inspect::crash;
use inspect::gdb::{Debugger, Resume, Stop};
use inspect::ring::{DRAIN_EVERY, DrainError, SerialRing};
use inspect::stats::Stats;
use inspect::tools::Tools;

use crate::args::Timeout;
use crate::fileio::FILE_PORT;
use crate::hooks::{self, Stopped};
use crate::image::Image;
use crate::long_mode::{self, Layout};
use crate::serial::{BulkRam, GuestError, IoError, Ports, SERIAL_PORT};

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest executed `hlt`.
    Halted,
    Failed(Failure),
}

/// Why the VM failed: the reason in its one-line diagnostic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// An exit that ends the VM (a crash, a KVM error).
    Exit(VcpuExit),
    /// `KVM_RUN` or another ioctl failed: the message.
    Kvm(String),
    Io(IoError),
    /// Stopped from outside (`--timeout`, a stop signal).
    Stopped(StopReason, Option<Timeout>),
    UnexpectedDebug(u64),
    /// `k` in gdb.
    Killed,
    /// The VM could not be created, or its thread could not start or panicked: why.
    NotRun(String),
}

/// What `run` hands back to `main`.
#[derive(Debug)]
pub struct Report {
    pub outcome: Outcome,
    pub exits: u64,
    pub wall: Duration,
    pub stats: Option<Stats>,
}

/// What the VM needs besides its image: its name, ports, signals, options and tools.
#[derive(Debug)]
pub struct Setup {
    pub label: String,
    pub ports: Ports,
    pub interrupts: Interrupts,
    /// stdout is a terminal (the serial ring then needs draining now and then).
    pub line_buffered: bool,
    pub timeout: Option<Timeout>,
    pub ring: SerialRing,
    pub tools: Tools,
}

/// The running VM, owner of all its loop touches (C: `struct vm` and the locals of `run_vm`).
#[derive(Debug)]
pub struct Vm {
    machine: kvm::Machine,
    /// Where the page tables are, for the crash report to compare them with RAM.
    layout: Layout,
    ports: Ports,
    label: String,
    line_buffered: bool,
    timeout: Option<Timeout>,
    exits: u64,
    // One hook each:
    interrupts: Interrupts,
    ring: SerialRing,
    tools: Tools,
}

impl Vm {
    /// C: `vm_init`, `setup_long_mode`, `load_guest_image` and the registers before the `KVM_RUN` loop.
    pub fn create(kvm: &Kvm, layout: &Layout, image: &Image, setup: Setup) -> io::Result<Vm> {
        let Setup { label, ports, interrupts, line_buffered, timeout, ring, tools } = setup;
        let mut machine = kvm::Machine::new(kvm, layout.mem_size as usize)?;
        let (vcpu, ram) = machine.parts();
        ram.write(layout.tables_base, &layout.page_tables())?;
        ram.write(0, &image.bytes)?;
        vcpu.set(KVM_SET_SREGS, &long_mode::long_mode_sregs(vcpu.get(KVM_GET_SREGS)?, layout))?;
        // RIP = 0 (the image's first byte), RSP = below the page tables, RFLAGS = 0x2 (bit 1 is always set).
        let regs = kvm::KvmRegs { rip: 0, rsp: layout.tables_base, rflags: 0x2, ..Default::default() };
        vcpu.set(KVM_SET_REGS, &regs)?;
        // Not in the C: the signals this thread listens to interrupt the guest (signals.rs).
        vcpu.set(KVM_SET_SIGNAL_MASK, &kvm::KvmSignalMask { len: 8, sigset: interrupts.run_mask })?;
        Ok(Vm { machine, layout: *layout, ports, label, line_buffered, timeout, exits: 0, interrupts, ring, tools })
    }

    /// Runs the guest until it halts or fails, then writes out its output and reports a failure.
    /// `started` hears the instant the VM starts, before its first instruction (or its wait for
    /// gdb): its `--timeout` counts from there, in every version (docs/REFERENCE.md §2).
    pub fn run(mut self, started: impl FnOnce(Instant)) -> Report {
        let start = Instant::now();
        started(start);
        // The watchdog's stops and drains, and gdb's Ctrl-C, reach this thread (signals.rs).
        let kick = self.interrupts.kick.clone();
        let outcome = kick.deliver_here(|| self.run_loop());
        let outcome = self.finish(outcome);
        Report { outcome, exits: self.exits, wall: start.elapsed(), stats: self.tools.stats.take() }
    }

    /// C: the `KVM_RUN` loop and its `switch (run->exit_reason)`.
    fn run_loop(&mut self) -> Outcome {
        // Hook: with --gdb, the VM waits for the debugger before its first instruction.
        if let Some(end) = self.tools.debugger.is_some().then(|| self.debug(Stop::Start)).flatten() {
            return end;
        }
        loop {
            // Signals taken while a port waited: act on them before entering the guest again.
            if let Some(end) = self.interrupts.has_taken().then(|| self.on_signal()).flatten() {
                return end;
            }
            self.tools.stats.iter_mut().for_each(Stats::entering);
            let exit = self.machine.parts().0.run(); // C: ioctl(v.vcpu_fd, KVM_RUN, 0)
            self.exits += 1;
            self.tools.stats.iter_mut().for_each(|stats| stats.left(exit.as_ref().ok().map(hooks::exit).as_ref()));
            // Hook: serial bytes waiting in KVM's coalesced ring go out before this exit is handled.
            if let Some(end) = self.ring.on.then(|| self.drain_ring()).flatten() {
                return end;
            }
            let end = match exit {
                Ok(VcpuExit::Io(io)) => self.on_io(io),
                // C: case KVM_EXIT_HLT: stop = 1. The guest is done (a debugger hears it).
                Ok(VcpuExit::Hlt) => {
                    self.tools.debugger.iter_mut().for_each(Debugger::exited);
                    Some(Outcome::Halted)
                }
                Ok(VcpuExit::Debug { pc, dr6, .. }) => self.on_debug(pc, dr6),
                Ok(VcpuExit::Intr) => self.on_signal(),
                Ok(crash) => self.on_crash(Failure::Exit(crash)),
                Err(ref e) => self.on_crash(Failure::Kvm(e.to_string())),
            };
            if let Some(trace) = &self.tools.trace {
                hooks::trace_exit(trace, &mut self.machine, self.exits, &exit);
            }
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// `KVM_EXIT_IO` (C: `case KVM_EXIT_IO`): the exit's bytes to or from the ports.
    fn on_io(&mut self, io: IoExit) -> Option<Outcome> {
        let (vcpu, ram) = self.machine.parts();
        let ram = BulkRam { ram, size: self.layout.mem_size };
        let stop = || self.interrupts.stop_requested().is_some();
        let mut chunk = [0u8; 512]; // a multiple of every access size: no allocation here
        for done in (0..io.bytes).step_by(chunk.len()) {
            let buf = &mut chunk[..(io.bytes - done).min(512)];
            let copied = if io.out { vcpu.io_data(&io, done, buf).map_err(host) } else { Ok(()) };
            // C: `if (run->io.port == 0xE9)`, `0x278`: the serial and file ports; any other port
            // is unknown.
            let moved = copied.and_then(|()| match (io.port, io.out) {
                (SERIAL_PORT, true) => self.ports.serial_out(io.size, buf, &stop),
                (SERIAL_PORT, false) => self.ports.serial_in(io.size, buf, &stop),
                (FILE_PORT, true) => self.ports.file_out(io.size, buf, &ram),
                (FILE_PORT, false) => self.ports.file_in(io.size, buf),
                (port, out) => self.ports.unknown(port, (!out).then_some(&mut *buf)),
            });
            let answered =
                moved.and_then(|()| if io.out { Ok(()) } else { vcpu.set_io_data(&io, done, buf).map_err(host) });
            if let Err(e) = answered {
                return Some(self.io_failure(e));
            }
        }
        // Hook: --trace says what each completed file request did.
        if let Some(trace) = &self.tools.trace {
            for request in self.ports.completed() {
                trace.file(&Stopped { vcpu, ram: ram.ram }, &request);
            }
        }
        // Hook: after COALESCE_AFTER serial bytes, the port goes through KVM's ring.
        if io.out
            && io.port == SERIAL_PORT
            && let Some(left) = &mut self.ring.countdown
        {
            *left = left.saturating_sub(io.bytes as u64);
            if *left == 0 {
                self.start_ring();
            }
        }
        None
    }

    /// `KVM_EXIT_DEBUG`: a breakpoint or a single step, for the debugger.
    fn on_debug(&mut self, pc: u64, dr6: u64) -> Option<Outcome> {
        match self.tools.debugger {
            None => Some(Outcome::Failed(Failure::UnexpectedDebug(pc))),
            Some(_) => self.debug(Stop::Trap { pc, dr6 }),
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
        let (vcpu, _) = self.machine.parts();
        let pop = || vcpu.pop_coalesced().map(|entry| entry.map(hooks::queued));
        let out = |bytes: &[u8]| self.ports.serial_out(1, bytes, &stop);
        let drained = self.ring.drain((SERIAL_PORT, RING_MAX), pop, out, self.tools.stats.as_mut(), &self.label);
        drained.err().map(|e| {
            self.io_failure(match e {
                DrainError::Ring(e) => host(e),
                DrainError::Wide(size) => IoError::Guest(GuestError::WideSerial { size, out: true }),
                DrainError::Out(e) => e,
            })
        })
    }

    /// The serial port goes through KVM's ring, if this KVM can; on a terminal, the ring must
    /// then be drained now and then.
    fn start_ring(&mut self) {
        let registered = self.machine.coalesce_port(SERIAL_PORT);
        if self.ring.started(registered, SERIAL_PORT, &self.label) && self.line_buffered {
            self.interrupts.drain_every(DRAIN_EVERY);
        }
    }

    /// Hook: hands a stop to the debugger, if one is attached; `Some` ends the VM. A debugger
    /// that detached is dropped: the guest runs on as if there had been none.
    fn debug(&mut self, why: Stop) -> Option<Outcome> {
        let gdb = self.tools.debugger.as_mut()?;
        let stop = || self.interrupts.stop_requested().is_some();
        let (vcpu, ram) = self.machine.parts();
        match gdb.on_stop(&Stopped { vcpu, ram }, why, &stop) {
            Resume::Go => None,
            Resume::Kill => Some(Outcome::Failed(Failure::Killed)),
            Resume::Detached => {
                self.tools.debugger = None;
                None
            }
        }
    }

    /// The outcome of a port access that ended the VM.
    fn io_failure(&self, e: IoError) -> Outcome {
        match e {
            IoError::Stopped => {
                let reason = self.interrupts.stop_requested().unwrap_or(StopReason::Signal(libc::SIGINT));
                self.stopped(reason)
            }
            e => Outcome::Failed(Failure::Io(e)),
        }
    }

    fn stopped(&self, reason: StopReason) -> Outcome {
        Outcome::Failed(Failure::Stopped(reason, self.timeout.clone()))
    }

    /// However the VM ended, its output reaches stdout (a stopped VM's only while stdout takes
    /// it), and a failure is reported; then the code check, if the guest changed its image.
    fn finish(&mut self, mut outcome: Outcome) -> Outcome {
        // A stopped VM whose stdout takes nothing gives its output up at the watchdog's next kick.
        let flushed = self.ports.flush(&|| self.interrupts.stop_requested().is_some());
        if let (Err(e), Outcome::Halted) = (flushed, &outcome) {
            outcome = Outcome::Failed(Failure::Io(e));
        }
        let (vcpu, ram) = self.machine.parts();
        let guest = Stopped { vcpu, ram };
        if let Outcome::Failed(failure) = &outcome {
            self.tools.explain(self.layout.page_tables()).failure(&guest, &self.label, failure.kind(), failure);
        }
        // Hook: the code check, when the guest changed bytes of its image before its closing zeros
        // (its .bss): only NAME.elf, read only then, can tell whether they were code.
        let image = &self.tools.image;
        let data = image.len() - image.iter().rev().take_while(|&&b| b == 0).count();
        let mut now = vec![0u8; data];
        if ram.read(0, &mut now).is_ok_and(|()| *now != image[..data]) {
            self.tools.explain(Vec::new()).at_end(&guest, &self.label);
        }
        outcome
    }
}

/// A failed copy between the run area and the ports.
fn host(e: io::Error) -> IoError {
    IoError::Host(e.to_string())
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
            Failure::Exit(exit) => f.write_str(&hooks::exit(exit).reason()),
            Failure::Kvm(message) => f.write_str(message),
            Failure::Io(IoError::Guest(e)) => write!(f, "guest error: {e}"),
            Failure::Io(IoError::Host(message)) => f.write_str(message),
            Failure::Io(IoError::Stopped) => f.write_str("stopped"),
            Failure::Stopped(StopReason::Timeout, Some(t)) => write!(f, "timed out after {} s", t.given),
            Failure::Stopped(StopReason::Timeout, None) => f.write_str("timed out"),
            Failure::Stopped(StopReason::Signal(signal), _) => f.write_str(&crash::interrupted(*signal)),
            Failure::UnexpectedDebug(pc) => write!(f, "unexpected debug exit at {pc:#x} (no debugger attached)"),
            Failure::Killed => f.write_str("killed by the debugger"),
            Failure::NotRun(why) => f.write_str(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serial::GuestError;

    #[test]
    fn each_failure_has_its_one_line_reason() {
        let timeout = Timeout { after: Duration::from_millis(1500), given: "1.50".to_owned() };
        let cases: [(Failure, &str); 12] = [
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
            (Failure::Stopped(StopReason::Timeout, Some(timeout)), "timed out after 1.50 s"),
            (Failure::Stopped(StopReason::Signal(libc::SIGTERM), None), "interrupted (SIGINT/SIGTERM)"),
            (Failure::Stopped(StopReason::Signal(libc::SIGHUP), None), "interrupted (SIGHUP)"),
            (Failure::UnexpectedDebug(0x42), "unexpected debug exit at 0x42"),
        ];
        for (failure, want) in cases {
            let text = failure.to_string();
            assert!(text.contains(want), "{failure:?}: {text}");
        }
        // The toolbox names signals by their Linux numbers: the same as libc's.
        let names = [
            (libc::SIGINT, "SIGINT/SIGTERM"),
            (libc::SIGQUIT, "SIGQUIT"),
            (libc::SIGUSR1, "SIGUSR1"),
            (libc::SIGUSR2, "SIGUSR2"),
            (40, "signal 40"),
        ];
        for (signal, name) in names {
            assert_eq!(Failure::Stopped(StopReason::Signal(signal), None).to_string(), format!("interrupted ({name})"));
        }
        let other = Failure::Exit(VcpuExit::InternalError { suberror: 3 }).to_string();
        assert!(!other.contains("emulate"), "only suberror 1 is an emulation failure: {other}");
    }
}
