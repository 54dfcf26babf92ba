//! One VM's life: build it, then the `KVM_RUN` loop (SPEC §2).
//!
//! C counterpart: `run_vm` (after `vm_init`): set up long mode and segments, load the image,
//! set RIP/RSP/RFLAGS, then loop on `KVM_RUN` and `switch (run->exit_reason)`.
#![forbid(unsafe_code)]

use std::io;
use std::time::{Duration, Instant};

use crate::devices::{Devices, IoError};
use crate::image::Image;
use crate::kvm::{Kvm, KvmRegs, KvmSregs, StopReason, Vcpu, VcpuExit, Vm};
use crate::long_mode::{self, Layout};
use crate::stats::Stats;

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

/// C: the `KVM_RUN` loop of `run_vm`. Runs until the guest halts or fails, then flushes its
/// output; a failure is reported on stderr at once, with a register dump.
pub fn run_vm(vm: &mut Vm, devices: &mut Devices, label: &str, opts: &RunOptions) -> Report {
    let start = Instant::now();
    let mut stats = Stats::default();
    let mut outcome = run_loop(vm, devices, label, opts, &mut stats);
    // However the VM ended, its output reaches stdout.
    if let Err(e) = devices.finish() {
        if outcome == Outcome::Halted {
            outcome = Outcome::Failed(describe_io_error(e));
        }
    }
    if let Outcome::Failed(reason) = &outcome {
        report_failure(&vm.vcpu, label, reason);
    }
    Report { outcome, stats, wall: start.elapsed() }
}

fn run_loop(vm: &mut Vm, devices: &mut Devices, label: &str, opts: &RunOptions, stats: &mut Stats) -> Outcome {
    let mut left_guest = opts.stats.then(Instant::now);
    loop {
        let entered = left_guest.map(|t| {
            let now = Instant::now();
            stats.handling += now - t;
            now
        });
        let result = vm.vcpu.run();
        if let Some(t) = entered {
            let now = Instant::now();
            stats.in_guest += now - t;
            left_guest = Some(now);
        }
        let exit = match result {
            Ok(exit) => exit,
            // A kick (timeout) or a stray signal: see whether we were asked to stop.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                if let Err(e) = vm.vcpu.clear_immediate_exit() {
                    return Outcome::Failed(e.to_string());
                }
                if let Some(reason) = vm.vcpu.stop_requested() {
                    return stopped(reason, opts);
                }
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        if opts.trace && !matches!(exit, VcpuExit::Io { .. }) {
            trace(&vm.vcpu, label, stats.exits + 1, &exit);
        }
        match exit {
            VcpuExit::Io { out, port, size, count, data_offset } => {
                stats.io(port, out, u64::from(size) * u64::from(count));
                let handled = handle_io(vm, devices, out, port, size, count as usize, data_offset);
                if opts.trace {
                    trace(&vm.vcpu, label, stats.exits, &exit); // after handling: shows an `in`'s answer too
                }
                if let Err(e) = handled {
                    return match e {
                        IoError::Stopped => stopped(vm.vcpu.stop_requested().unwrap_or(StopReason::Interrupted), opts),
                        e => Outcome::Failed(describe_io_error(e)),
                    };
                }
            }
            VcpuExit::Hlt => {
                stats.hlt();
                return Outcome::Halted;
            }
            VcpuExit::Intr => {
                stats.other();
                if let Some(reason) = vm.vcpu.stop_requested() {
                    return stopped(reason, opts);
                }
            }
            other => {
                stats.other();
                return Outcome::Failed(describe_exit(&other));
            }
        }
    }
}

/// One I/O exit: `count` accesses of `size` bytes, handed to the devices in order, through a
/// small stack buffer (no allocation on the exit path).
fn handle_io(
    vm: &Vm,
    devices: &mut Devices,
    out: bool,
    port: u16,
    size: u8,
    count: usize,
    data_offset: usize,
) -> Result<(), IoError> {
    let total = usize::from(size) * count;
    let mut chunk = [0u8; 512]; // a multiple of every access size
    let mut done = 0;
    while done < total {
        let buf = &mut chunk[..(total - done).min(512)];
        if out {
            vm.vcpu.io_data(data_offset, done, buf).map_err(host)?;
            devices.out(port, size, buf, &vm.mem)?;
        } else {
            devices.inp(port, size, buf, &|| vm.vcpu.stop_requested().is_some())?;
            vm.vcpu.set_io_data(data_offset, done, buf).map_err(host)?;
        }
        done += buf.len();
    }
    Ok(())
}

fn host(e: io::Error) -> IoError {
    IoError::Host(e.to_string())
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
                ": instruction emulation failed (an SSE instruction on a host whose KVM emulator lacks SSE?)"
            } else {
                ""
            }
        ),
        VcpuExit::BadIo { size, count, data_offset } => {
            format!("malformed I/O exit from KVM: size {size}, count {count}, data offset {data_offset:#x}")
        }
        VcpuExit::Unknown(reason) => format!("unhandled KVM exit reason {reason}"),
        VcpuExit::Io { .. } | VcpuExit::Hlt | VcpuExit::Intr => format!("unexpected exit {exit:?}"),
    }
}

/// The diagnostic of a failed VM: one line naming the VM, the reason and RIP, then the registers.
fn report_failure(vcpu: &Vcpu, label: &str, reason: &str) {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(regs), Ok(sregs)) => {
            eprintln!(
                "mini_hypervisor: {label}: failed at RIP {:#x}: {reason}\n{}",
                regs.rip,
                register_dump(&regs, &sregs)
            )
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("mini_hypervisor: {label}: failed: {reason} (registers unavailable: {e})")
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
fn trace(vcpu: &Vcpu, label: &str, n: u64, exit: &VcpuExit) {
    let rip = vcpu.get_regs().map(|r| format!("{:#x}", r.rip)).unwrap_or_else(|_| "?".to_owned());
    match *exit {
        VcpuExit::Io { out, port, size, count, data_offset } => {
            let mut first = [0u8; 8];
            let n_bytes = (usize::from(size) * count as usize).min(first.len());
            let data = match vcpu.io_data(data_offset, 0, &mut first[..n_bytes]) {
                Ok(()) => first[..n_bytes].iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "),
                Err(_) => "?".to_owned(),
            };
            eprintln!(
                "trace: {label} exit {n}: io {} port={port:#x} size={size} count={count} data=[{data}] rip={rip}",
                if out { "out" } else { "in" }
            );
        }
        _ => eprintln!("trace: {label} exit {n}: {exit:?} rip={rip}"),
    }
}
