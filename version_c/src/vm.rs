//! One VM's life: build it, then the `KVM_RUN` loop (docs/REFERENCE.md §2).
//!
//! C counterpart: `run_vm` (after `vm_init`): set up long mode and segments, load the image,
//! set RIP/RSP/RFLAGS, then loop on `KVM_RUN` and `switch (run->exit_reason)`.
//!
//! The loop is: run → drain the coalesced serial ring (if on) → decide what the exit means
//! ([`on_exit`], a pure function) → act on it. Port output to 0xE9 may go through the ring
//! (KVM queues the bytes and exits only when the ring is full), switched on lazily once a VM
//! has written [`COALESCE_AFTER`] serial bytes: registering it makes the process's exit slower
//! by a fixed ~16 ms (the kernel's teardown of the zone), which short runs should not pay.
#![forbid(unsafe_code)]

use std::io;
use std::time::{Duration, Instant};

use crate::devices::{Devices, IoError};
use crate::gdb::{Debugger, Resume, Stop};
use crate::image::Image;
use crate::kvm::{Kvm, KvmRegs, KvmSregs, Mmap, Requests, StopReason, Vcpu, VcpuExit, Vm, VmFd};
use crate::long_mode::{self, Layout};
use crate::serial::SERIAL_PORT;
use crate::stats::Stats;

/// Serial bytes a VM writes through plain exits before its port goes through the ring.
pub const COALESCE_AFTER: u64 = 256;

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest executed `hlt`.
    Halted,
    /// Crash, KVM error, guest error or timeout: the one-line reason.
    Failed(String),
}

/// What `run_vm` hands back to `main`.
#[derive(Debug)]
pub struct Report {
    pub outcome: Outcome,
    pub stats: Stats,
    pub wall: Duration,
}

/// Per-run switches from the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    pub trace: bool,
    pub stats: bool,
    pub timeout: Option<Duration>,
    /// Send port 0xE9 output through KVM's coalesced ring when it can (`--no-coalesce`: never).
    pub coalesce: bool,
}

/// C: `vm_init` + `setup_long_mode` + `setup_segments_64` + `load_guest_image` + the register
/// setup at the top of `run_vm`. The page tables go to the top of RAM, the image to 0.
pub fn create(kvm: &Kvm, layout: &Layout, image: &Image) -> io::Result<Vm> {
    let vm = Vm::new(kvm, layout.mem_size as usize)?;
    vm.mem.write(layout.tables_base() as usize, &layout.page_tables())?;
    vm.mem.write(0, &image.bytes)?;
    let sregs = long_mode::long_mode_sregs(vm.vcpu.get_sregs()?, layout);
    vm.vcpu.set_sregs(&sregs)?;
    vm.vcpu.set_regs(&long_mode::initial_regs(layout))?;
    Ok(vm)
}

/// What the loop does after `KVM_RUN` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Hand this I/O exit to the devices, then run again.
    Io { out: bool, port: u16, size: u8, count: u32, data_offset: usize },
    /// Run again (a stray signal, `EAGAIN`, a drain request).
    Resume,
    /// The guest executed `hlt`: the VM ends normally.
    Halt,
    /// Stopped from outside (`--timeout`, Ctrl-C): the VM ends as failed.
    Stop(StopReason),
    /// The debugger asked for the guest to stop (gdb's Ctrl-C); without one, run again.
    Pause,
    /// A debug exception (breakpoint, single step): only the debugger asks for these.
    Trap { exception: u32, pc: u64, dr6: u64, dr7: u64 },
    /// The VM cannot go on: the one-line reason.
    Fail(String),
}

/// Whether `KVM_RUN` came back because of a signal, so that the requests of a kick are to be
/// taken ([`Vcpu::take_requests`]) and handed to [`on_exit`].
pub fn interrupted(result: &io::Result<VcpuExit>) -> bool {
    match result {
        Ok(exit) => *exit == VcpuExit::Intr,
        Err(e) => e.kind() == io::ErrorKind::Interrupted,
    }
}

/// What an exit means (C: the `switch (run->exit_reason)`). `requests`: what a kick asked
/// for, when the exit was a signal's ([`interrupted`]); empty otherwise.
pub fn on_exit(result: &io::Result<VcpuExit>, requests: Requests) -> Next {
    if interrupted(result) {
        return match requests {
            Requests { stop: Some(reason), .. } => Next::Stop(reason),
            Requests { pause: true, .. } => Next::Pause,
            _ => Next::Resume, // a drain request, or a signal that was not ours
        };
    }
    match result {
        Ok(VcpuExit::Io { out, port, size, count, data_offset }) => {
            Next::Io { out: *out, port: *port, size: *size, count: *count, data_offset: *data_offset }
        }
        Ok(VcpuExit::Hlt) => Next::Halt,
        Ok(VcpuExit::Debug { exception, pc, dr6, dr7 }) => {
            Next::Trap { exception: *exception, pc: *pc, dr6: *dr6, dr7: *dr7 }
        }
        Ok(exit) => Next::Fail(describe_exit(exit)),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Next::Resume,
        Err(e) => Next::Fail(e.to_string()),
    }
}

/// C: the `KVM_RUN` loop of `run_vm`. Runs until the guest halts or fails, then flushes its
/// output; a failure is reported on stderr at once, with a register dump. `vm_fd` is for
/// switching the serial ring on; `mem` is guest RAM; `gdb`, with `--gdb` for VM 0, stops the
/// guest before its first instruction and serves the debugger whenever it is stopped.
pub fn run_vm(
    vcpu: &mut Vcpu,
    vm_fd: &VmFd,
    mem: &Mmap,
    devices: &mut Devices,
    label: &str,
    opts: &RunOptions,
    gdb: Option<Debugger>,
) -> Report {
    let start = Instant::now();
    let mut stats = Stats::default();
    let kick = match vcpu.kick_handle() {
        Ok(kick) => kick,
        Err(e) => {
            let outcome = Outcome::Failed(format!("cannot install the kick signal handler: {e}"));
            return Report { outcome, stats, wall: start.elapsed() };
        }
    };
    // Kicks (timeout, Ctrl-C, ring drains) reach this thread while it runs the loop and while
    // it writes out the last output.
    let outcome = kick.deliver_here(|| {
        let cx = Context { vm_fd, mem, label, opts };
        let mut outcome = run_loop(vcpu, devices, &mut stats, gdb, &cx);
        // However the VM ended, its output reaches stdout (unless it is being stopped while
        // stdout does not take it: then what is left is lost).
        let stop = || vcpu.stop_requested().is_some();
        if let Err(e) = devices.finish(&stop) {
            if outcome == Outcome::Halted {
                outcome = Outcome::Failed(describe_io_error(e));
            }
        }
        outcome
    });
    if let Outcome::Failed(reason) = &outcome {
        report_failure(vcpu, label, reason);
    }
    Report { outcome, stats, wall: start.elapsed() }
}

/// What the loop only reads: the VM fd (to switch the serial ring on), guest RAM (for the
/// debugger), the VM's label and the options.
struct Context<'a> {
    vm_fd: &'a VmFd,
    mem: &'a Mmap,
    label: &'a str,
    opts: &'a RunOptions,
}

fn run_loop(
    vcpu: &mut Vcpu,
    devices: &mut Devices,
    stats: &mut Stats,
    mut gdb: Option<Debugger>,
    cx: &Context,
) -> Outcome {
    let Context { vm_fd, mem, label, opts } = *cx;
    let mut ring = Ring::new(vcpu, opts, label);
    if let Some(outcome) = debug_stop(&mut gdb, vcpu, mem, Stop::Start) {
        return outcome;
    }
    let mut left_guest = opts.stats.then(Instant::now);
    loop {
        let entered = left_guest.map(|t| {
            let now = Instant::now();
            stats.handling += now - t;
            now
        });
        let result = vcpu.run();
        if let Some(t) = entered {
            let now = Instant::now();
            stats.in_guest += now - t;
            left_guest = Some(now);
        }
        // What the guest wrote through the ring comes before whatever this exit is.
        if ring.on {
            if let Err(e) = ring.drain(vcpu, devices, stats, label, opts.trace) {
                return io_failure(vcpu, e, opts);
            }
        }
        let requests = if interrupted(&result) { vcpu.take_requests() } else { Requests::default() };
        let next = on_exit(&result, requests);
        if opts.trace && !matches!(next, Next::Io { .. }) {
            trace(vcpu, label, stats.exits + 1, &result);
        }
        match next {
            Next::Io { out, port, size, count, data_offset } => {
                stats.io(port, out, u64::from(size) * u64::from(count));
                let handled = handle_io(vcpu, devices, out, port, size, count as usize, data_offset);
                if opts.trace {
                    trace(vcpu, label, stats.exits, &result); // after handling: shows an `in`'s answer too
                }
                if let Err(e) = handled {
                    return io_failure(vcpu, e, opts);
                }
                if out && port == SERIAL_PORT {
                    ring.count(u64::from(count), vm_fd, label, opts);
                }
            }
            Next::Resume => stats.other(),
            Next::Pause => {
                stats.other();
                if let Some(outcome) = debug_stop(&mut gdb, vcpu, mem, Stop::Interrupt) {
                    return outcome;
                }
            }
            Next::Halt => {
                stats.hlt();
                if let Some(gdb) = &mut gdb {
                    gdb.exited();
                }
                return Outcome::Halted;
            }
            Next::Stop(reason) => {
                stats.other();
                return stopped(reason, opts);
            }
            Next::Trap { pc, dr6, .. } => {
                stats.other();
                if gdb.is_none() {
                    return Outcome::Failed(format!("unexpected debug exit at {pc:#x} (no debugger attached)"));
                }
                if let Some(outcome) = debug_stop(&mut gdb, vcpu, mem, Stop::Trap { pc, dr6 }) {
                    return outcome;
                }
            }
            Next::Fail(reason) => {
                stats.other();
                // The debugger sees the crash first (registers as they were); then the VM ends.
                let _ = debug_stop(&mut gdb, vcpu, mem, Stop::Crash);
                return Outcome::Failed(reason);
            }
        }
    }
}

/// Hands a stop to the debugger, if one is attached; `Some` ends the VM. A detached debugger is
/// dropped: the guest runs on as if there had been none.
fn debug_stop(gdb: &mut Option<Debugger>, vcpu: &Vcpu, mem: &Mmap, why: Stop) -> Option<Outcome> {
    match gdb.as_mut()?.on_stop(vcpu, mem, why, &|| vcpu.stop_requested().is_some()) {
        Resume::Go => None,
        Resume::Kill => Some(Outcome::Failed("killed by the debugger".to_owned())),
        Resume::Detached => {
            *gdb = None;
            None
        }
    }
}

/// Port 0xE9 output through KVM's coalesced ring (`KVM_CAP_COALESCED_PIO`).
#[derive(Debug)]
struct Ring {
    /// Whether the zone is registered (bytes may be waiting in the ring).
    on: bool,
    /// Whether it may still be switched on.
    can: bool,
    /// Serial bytes written through plain exits so far.
    plain_bytes: u64,
}

impl Ring {
    fn new(vcpu: &Vcpu, opts: &RunOptions, label: &str) -> Ring {
        let can = opts.coalesce && vcpu.has_coalesced_ring();
        if opts.coalesce && !can && (opts.trace || opts.stats) {
            diag!(
                "mini_hypervisor: {label}: this KVM cannot coalesce port writes (no KVM_CAP_COALESCED_PIO): one exit per serial byte"
            );
        }
        Ring { on: false, can, plain_bytes: 0 }
    }

    /// Counts serial bytes sent through plain exits; past [`COALESCE_AFTER`], registers the
    /// port as a coalesced zone (once; a failure only means it stays off).
    fn count(&mut self, bytes: u64, vm_fd: &VmFd, label: &str, opts: &RunOptions) {
        self.plain_bytes += bytes;
        if !self.can || self.plain_bytes < COALESCE_AFTER {
            return;
        }
        self.can = false;
        match vm_fd.register_coalesced_pio(SERIAL_PORT, 1) {
            Ok(()) => {
                self.on = true;
                if opts.trace {
                    diag!("trace: {label}: serial port {SERIAL_PORT:#x} now goes through the coalesced ring");
                }
            }
            Err(e) if opts.trace || opts.stats => {
                diag!("mini_hypervisor: {label}: cannot coalesce serial output ({e}): one exit per byte")
            }
            Err(_) => {}
        }
    }

    /// Hands every byte waiting in the ring to the serial port, in order.
    fn drain(
        &mut self,
        vcpu: &Vcpu,
        devices: &mut Devices,
        stats: &mut Stats,
        label: &str,
        trace: bool,
    ) -> Result<(), IoError> {
        let mut chunk = [0u8; 64];
        let (mut n, mut total, mut first_slot) = (0, 0u64, None);
        let stop = || vcpu.stop_requested().is_some();
        while let Some((slot, entry)) = vcpu.pop_coalesced().map_err(host)? {
            first_slot.get_or_insert(slot);
            if entry.pio != 1 || entry.phys_addr != u64::from(SERIAL_PORT) || entry.len != 1 {
                return Err(IoError::Guest(format!(
                    "{}-byte out on serial port {SERIAL_PORT:#x} (it takes single bytes; found in the coalesced ring)",
                    entry.len
                )));
            }
            chunk[n] = entry.data[0];
            n += 1;
            total += 1;
            if n == chunk.len() {
                devices.out(SERIAL_PORT, 1, &chunk, &stop)?;
                n = 0;
            }
        }
        if n > 0 {
            devices.out(SERIAL_PORT, 1, &chunk[..n], &stop)?;
        }
        if let Some(first) = first_slot {
            stats.ring(total);
            if trace {
                let last = (u64::from(first) + total - 1) % u64::from(crate::kvm::RING_MAX);
                diag!("trace: {label}: ring drain: {total} serial bytes from slots {first}..={last}");
            }
        }
        Ok(())
    }
}

/// One I/O exit: `count` accesses of `size` bytes, handed to the devices in order, through a
/// small stack buffer (no allocation on the exit path).
fn handle_io(
    vcpu: &Vcpu,
    devices: &mut Devices,
    out: bool,
    port: u16,
    size: u8,
    count: usize,
    data_offset: usize,
) -> Result<(), IoError> {
    let total = usize::from(size) * count;
    let mut chunk = [0u8; 512]; // a multiple of every access size
    let stop = || vcpu.stop_requested().is_some();
    let mut done = 0;
    while done < total {
        let buf = &mut chunk[..(total - done).min(512)];
        if out {
            vcpu.io_data(data_offset, done, buf).map_err(host)?;
            devices.out(port, size, buf, &stop)?;
        } else {
            devices.inp(port, size, buf, &stop)?;
            vcpu.set_io_data(data_offset, done, buf).map_err(host)?;
        }
        done += buf.len();
    }
    Ok(())
}

fn host(e: io::Error) -> IoError {
    IoError::Host(e.to_string())
}

/// The outcome of a port access that ended the VM.
fn io_failure(vcpu: &Vcpu, e: IoError, opts: &RunOptions) -> Outcome {
    match e {
        IoError::Stopped => stopped(vcpu.stop_requested().unwrap_or(StopReason::Interrupted), opts),
        e => Outcome::Failed(describe_io_error(e)),
    }
}

fn describe_io_error(e: IoError) -> String {
    match e {
        IoError::Guest(m) => format!("guest error: {m}"),
        IoError::Host(m) => m,
        IoError::Stopped => "stopped".to_owned(),
    }
}

/// A VM stopped from outside: by `--timeout`, or by SIGINT/SIGTERM.
fn stopped(reason: StopReason, opts: &RunOptions) -> Outcome {
    Outcome::Failed(match (reason, opts.timeout) {
        (StopReason::Timeout, Some(t)) => format!("timed out after {} s", t.as_secs_f64()),
        (StopReason::Timeout, None) => "timed out".to_owned(),
        (StopReason::Interrupted, _) => "interrupted (SIGINT/SIGTERM)".to_owned(),
    })
}

/// The one-line reason for an exit that ends the VM.
pub fn describe_exit(exit: &VcpuExit) -> String {
    match *exit {
        VcpuExit::Shutdown => "triple fault (KVM_EXIT_SHUTDOWN): the guest crashed".to_owned(),
        VcpuExit::Mmio { phys_addr, len, is_write } => format!(
            "MMIO {} of {len} bytes at guest-physical {phys_addr:#x}, outside RAM (KVM_EXIT_MMIO)",
            if is_write { "write" } else { "read" }
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
        VcpuExit::Io { .. } | VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::Debug { .. } => {
            format!("unexpected exit {exit:?}")
        }
    }
}

/// The diagnostic of a failed VM: one line naming the VM, the reason and RIP, then the registers.
fn report_failure(vcpu: &Vcpu, label: &str, reason: &str) {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(regs), Ok(sregs)) => {
            diag!("mini_hypervisor: {label}: failed at RIP {:#x}: {reason}\n{}", regs.rip, register_dump(&regs, &sregs))
        }
        (Err(e), _) | (_, Err(e)) => {
            diag!("mini_hypervisor: {label}: failed: {reason} (registers unavailable: {e})")
        }
    }
}

/// The registers, four to a line, as a debugger shows them.
pub fn register_dump(r: &KvmRegs, s: &KvmSregs) -> String {
    let rows: [[(&str, u64); 4]; 6] = [
        [("rip", r.rip), ("rsp", r.rsp), ("rbp", r.rbp), ("rflags", r.rflags)],
        [("rax", r.rax), ("rbx", r.rbx), ("rcx", r.rcx), ("rdx", r.rdx)],
        [("rsi", r.rsi), ("rdi", r.rdi), ("r8", r.r8), ("r9", r.r9)],
        [("r10", r.r10), ("r11", r.r11), ("r12", r.r12), ("r13", r.r13)],
        [("r14", r.r14), ("r15", r.r15), ("cr0", s.cr0), ("cr2", s.cr2)],
        [("cr3", s.cr3), ("cr4", s.cr4), ("efer", s.efer), ("cs", u64::from(s.cs.selector))],
    ];
    let lines: Vec<String> = rows
        .iter()
        .map(|row| {
            let cells: Vec<String> = row.iter().map(|(n, v)| format!("{n:>6} {v:#018x}")).collect();
            format!("  {}", cells.join(" "))
        })
        .collect();
    lines.join("\n")
}

/// `--trace`: one line per exit, with the first (up to 8) bytes an I/O exit moved.
fn trace(vcpu: &Vcpu, label: &str, n: u64, result: &io::Result<VcpuExit>) {
    let rip = vcpu.get_regs().map(|r| format!("{:#x}", r.rip)).unwrap_or_else(|_| "?".to_owned());
    match result {
        Ok(VcpuExit::Io { out, port, size, count, data_offset }) => {
            let mut first = [0u8; 8];
            let n_bytes = (usize::from(*size) * *count as usize).min(first.len());
            let data = match vcpu.io_data(*data_offset, 0, &mut first[..n_bytes]) {
                Ok(()) => first[..n_bytes].iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "),
                Err(_) => "?".to_owned(),
            };
            diag!(
                "trace: {label} exit {n}: io {} port={port:#x} size={size} count={count} data=[{data}] rip={rip}",
                if *out { "out" } else { "in" }
            );
        }
        Ok(exit) => diag!("trace: {label} exit {n}: {exit:?} rip={rip}"),
        Err(e) => diag!("trace: {label} exit {n}: KVM_RUN returned an error: {e} rip={rip}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(exit: VcpuExit) -> io::Result<VcpuExit> {
        Ok(exit)
    }

    fn err(errno: i32) -> io::Result<VcpuExit> {
        Err(io::Error::from_raw_os_error(errno))
    }

    const NONE: Requests = Requests { stop: None, pause: false, drain: false };

    #[test]
    fn hlt_ends_the_vm_normally_and_io_goes_to_the_devices() {
        assert_eq!(on_exit(&ok(VcpuExit::Hlt), NONE), Next::Halt);
        let io = VcpuExit::Io { out: true, port: 0xe9, size: 1, count: 3, data_offset: 4096 };
        assert_eq!(on_exit(&ok(io), NONE), Next::Io { out: true, port: 0xe9, size: 1, count: 3, data_offset: 4096 });
    }

    #[test]
    fn a_signal_resumes_unless_a_kick_asked_to_stop_or_pause() {
        for interrupted in [err(libc::EINTR), ok(VcpuExit::Intr)] {
            assert_eq!(on_exit(&interrupted, NONE), Next::Resume, "a stray signal");
            let drain = Requests { drain: true, ..NONE };
            assert_eq!(on_exit(&interrupted, drain), Next::Resume, "a drain does not stop the guest");
            let pause = Requests { pause: true, drain: true, ..NONE };
            assert_eq!(on_exit(&interrupted, pause), Next::Pause);
            for reason in [StopReason::Timeout, StopReason::Interrupted] {
                let stop = Requests { stop: Some(reason), pause: true, drain: true };
                assert_eq!(on_exit(&interrupted, stop), Next::Stop(reason), "a stop wins over a pause");
            }
        }
    }

    #[test]
    fn eagain_is_retried_and_other_run_errors_end_the_vm() {
        assert_eq!(on_exit(&err(libc::EAGAIN), NONE), Next::Resume);
        let Next::Fail(reason) = on_exit(&err(libc::EFAULT), NONE) else { panic!("EFAULT must fail") };
        assert!(reason.contains("Bad address"), "{reason}");
        // Requests are only read for a signal's exit: a stop pending at an ordinary exit waits.
        let stop = Requests { stop: Some(StopReason::Timeout), ..NONE };
        assert_eq!(on_exit(&ok(VcpuExit::Hlt), stop), Next::Halt);
    }

    #[test]
    fn each_crash_exit_has_its_one_line_reason() {
        let cases: [(VcpuExit, &str); 6] = [
            (VcpuExit::Shutdown, "triple fault (KVM_EXIT_SHUTDOWN)"),
            (
                VcpuExit::Mmio { phys_addr: 0x1000_0000, len: 4, is_write: true },
                "MMIO write of 4 bytes at guest-physical 0x10000000",
            ),
            (
                VcpuExit::FailEntry { reason: 0x21, cpu: 1 },
                "VM entry failed (KVM_EXIT_FAIL_ENTRY), hardware reason 0x21 on cpu 1",
            ),
            (
                VcpuExit::InternalError { suberror: 1 },
                "an instruction this host's KVM cannot emulate (SSE arithmetic, int3",
            ),
            (VcpuExit::BadIo { size: 3, count: 1, data_offset: 0x1000 }, "malformed I/O exit from KVM: size 3"),
            (VcpuExit::Unknown(99), "unhandled KVM exit reason 99"),
        ];
        for (exit, want) in cases {
            match on_exit(&ok(exit), NONE) {
                Next::Fail(reason) => assert!(reason.contains(want), "{exit:?}: {reason}"),
                other => panic!("{exit:?} must end the VM, got {other:?}"),
            }
        }
        let Next::Fail(other) = on_exit(&ok(VcpuExit::InternalError { suberror: 3 }), NONE) else { panic!() };
        assert!(!other.contains("emulate"), "only suberror 1 is an emulation failure: {other}");
    }

    #[test]
    fn a_debug_exit_goes_to_the_debugger() {
        let exit = VcpuExit::Debug { exception: 1, pc: 0x42, dr6: 0x4000, dr7: 0x400 };
        assert_eq!(on_exit(&ok(exit), NONE), Next::Trap { exception: 1, pc: 0x42, dr6: 0x4000, dr7: 0x400 });
    }
}
