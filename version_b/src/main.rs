//! mini_hypervisor, version B: several VMs at once, one thread each.
//!
//! C counterpart: `main` in `Version_B/mini_hypervisor.c`. Same steps, same order:
//! parse the options → check every image → open /dev/kvm → build the VMs → one thread per VM
//! (C: `pthread_create` running `run_vm`) → join them → exit status.
//! Every `unsafe` of the crate is in `kvm.rs`; every other module forbids it.
#![deny(unsafe_code, unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

/// `eprintln!` that never panics: a diagnostic that cannot be written (stderr closed, or on
/// a full disk) is dropped, and the exit status still tells. Every module uses it.
macro_rules! diag {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod args;
mod devices;
mod gdb;
mod image;
mod kvm;
mod long_mode;
mod serial;
mod stats;
mod vm;
mod watchdog;

use std::fs::File;
use std::io::{self, IsTerminal};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::Arc;

use args::{Command, Config};
use devices::Devices;
use long_mode::{Layout, PageSize};
use serial::{Console, Serial};
use vm::{Outcome, Report, RunOptions};

/// Exit statuses (docs/REFERENCE.md §1).
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let config = match args::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => return print_stdout(args::USAGE),
        Ok(Command::Version) => {
            return print_stdout(&format!("mini_hypervisor {} (version B: several VMs)\n", env!("CARGO_PKG_VERSION")));
        }
        Err(e) => {
            diag!("mini_hypervisor: {e}\n\n{}", args::USAGE.trim_end());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(&config) {
        Ok(reports) if reports.iter().all(|r| r.outcome == Outcome::Halted) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(EXIT_FAILED),
        Err(message) => {
            diag!("mini_hypervisor: {message}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// `--help`, `--version`: the text on stdout; exit status 1 if it cannot be written.
fn print_stdout(text: &str) -> ExitCode {
    use std::io::Write as _;
    match io::stdout().write_all(text.as_bytes()).and_then(|()| io::stdout().flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(EXIT_FAILED),
    }
}

/// Everything after parsing. `Err` is a startup failure: no VM ran.
fn run(config: &Config) -> Result<Vec<Report>, String> {
    let layout = Layout::new(config.mem_size, config.page);
    // Every check before any VM starts (docs/REFERENCE.md §1).
    let images = config.images.iter().map(|path| image::check(path, &layout)).collect::<Result<Vec<_>, _>>()?;
    // From here on nothing blocks until the VMs run, and no thread has started yet: Ctrl-C
    // and SIGTERM now stop the VMs instead of killing us.
    kvm::block_stop_signals().map_err(|e| format!("cannot block SIGINT/SIGTERM: {e}"))?;
    let kvm = kvm::Kvm::open().map_err(kvm_open_error)?;
    if config.timeout.is_some() && kvm.check_extension(kvm::KVM_CAP_IMMEDIATE_EXIT).unwrap_or(0) == 0 {
        return Err("--timeout needs KVM_CAP_IMMEDIATE_EXIT (Linux 4.11 or later); run without --timeout".to_owned());
    }
    // --gdb: the port is taken before any VM starts; VM 0 waits there for the debugger.
    let mut gdb_listener = config.gdb.map(gdb::listen).transpose()?;
    let data_watch = gdb_listener.is_some() && gdb::data_breakpoints_fire(&kvm);
    let stdout = File::from(io::stdout().as_fd().try_clone_to_owned().map_err(|e| format!("cannot use stdout: {e}"))?);
    let stdin = File::from(io::stdin().as_fd().try_clone_to_owned().map_err(|e| format!("cannot use stdin: {e}"))?);
    let line_buffered = stdout.is_terminal();
    let console = Arc::new(Console::new(stdout, stdin, line_buffered));
    // With several VMs, output lines are prefixed with the VM's number (docs/REFERENCE.md §3).
    let several = images.len() > 1;
    let opts =
        RunOptions { trace: config.trace, stats: config.stats, timeout: config.timeout, coalesce: config.coalesce };

    let mut jobs = Vec::with_capacity(images.len());
    let mut labels = Vec::with_capacity(images.len());
    for (index, image) in images.iter().enumerate() {
        let label = format!("vm{index} ({})", image.path.display());
        let mut vm = vm::create(&kvm, &layout, image).map_err(|e| format!("{label}: cannot create the VM: {e}"))?;
        let kick = vm.vcpu.kick_handle().map_err(|e| format!("cannot install the kick signal handler: {e}"))?;
        let debugger = gdb_listener
            .take()
            .map(|l| gdb::Debugger::new(l, kick.clone(), &image.path, image.bytes.len() as u64, layout, data_watch));
        if !config.quiet {
            diag!(
                "mini_hypervisor: {label}: {} MiB RAM, {} pages, {} byte image",
                config.mem_size >> 20,
                page_name(config.page),
                image.bytes.len()
            );
        }
        let serial = Serial::new(Arc::clone(&console), several.then(|| format!("[vm{index}] ")));
        let mut devices = Devices::new(label.clone(), serial);
        let body_label = label.clone();
        jobs.push(watchdog::Job {
            name: format!("vm{index}"),
            kick,
            has_threads: debugger.is_some(),
            body: Box::new(move || {
                vm::run_vm(&mut vm.vcpu, &vm.fd, &vm.mem, &mut devices, &body_label, &opts, debugger)
            }),
        });
        labels.push(label);
    }
    drop(images); // the bytes are in guest RAM now

    // On a terminal, a line waiting in a coalesced ring must show up soon (docs/REFERENCE.md §3).
    let drain_every = (line_buffered && config.coalesce).then_some(watchdog::DRAIN_EVERY);
    let reports = watchdog::run_all(jobs, config.timeout, drain_every);
    for (label, report) in labels.iter().zip(&reports) {
        summarize(label, report, config);
    }
    Ok(reports)
}

/// The closing line per VM on stderr (and the `--stats` block).
fn summarize(label: &str, report: &Report, config: &Config) {
    if !config.quiet {
        let how = match &report.outcome {
            Outcome::Halted => "halted".to_owned(),
            Outcome::Failed(_) => "failed".to_owned(),
        };
        diag!("mini_hypervisor: {label}: {how} after {} exits in {:.3} ms", report.stats.exits, stats::ms(report.wall));
    }
    if config.stats {
        diag!("mini_hypervisor: {label}: stats\n{}", report.stats.report(report.wall).trim_end());
    }
}

fn page_name(page: PageSize) -> &'static str {
    match page {
        PageSize::Small4K => "4 KiB",
        PageSize::Large2M => "2 MiB",
    }
}

/// Why /dev/kvm did not open, and what to do about it.
fn kvm_open_error(e: io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => {
            "/dev/kvm: not found: KVM is not available; load the kvm module (kvm_intel or kvm_amd) and enable virtualization in the BIOS".to_owned()
        }
        io::ErrorKind::PermissionDenied => {
            "/dev/kvm: permission denied: add yourself to the kvm group (sudo usermod -aG kvm $USER, then log in again) or run with sudo".to_owned()
        }
        _ => format!("/dev/kvm: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_kvm_errors_say_what_to_do() {
        let missing = kvm_open_error(io::ErrorKind::NotFound.into());
        assert!(missing.starts_with("/dev/kvm: not found") && missing.contains("kvm_intel or kvm_amd"), "{missing}");
        let denied = kvm_open_error(io::ErrorKind::PermissionDenied.into());
        assert!(denied.contains("kvm group") && denied.contains("sudo"), "{denied}");
    }
}
