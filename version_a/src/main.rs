//! mini_hypervisor, version A: one VM, 64-bit long mode, serial port 0xE9.
//!
//! C counterpart: `main` in `Version_A/mini_hypervisor.c`, in the same order: parse the
//! options → check the image → open /dev/kvm → create the VM (`vm.rs`: `vm_init`,
//! `setup_long_mode`, `load_guest_image`) → the `KVM_RUN` loop → exit status. The VM runs on
//! this thread; the only threads ever started are the debugger's (`--gdb`).
#![forbid(unsafe_code)]

/// `eprintln!` that never panics: a diagnostic that cannot be written is dropped (the exit
/// status still tells). Every module uses it.
macro_rules! diag {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod args;
mod hooks;
mod image;
mod long_mode;
mod serial;
mod vm;

use std::fs::File;
use std::io::{self, IsTerminal};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use inspect::MemoryMap;
use inspect::gdb::PauseBy;
use inspect::ring::{COALESCE_AFTER, SerialRing};
use inspect::stats::Stats;
use inspect::tools::Tools;
use inspect::trace::Trace;
// The FFI room, this crate's library: every module reaches it as `crate::kvm`, `crate::signals`.
use version_a::{kvm, signals};

use kvm::Kvm;
use signals::{Interruptible, Interrupts, Kick, Listener};

use args::{Command, Config};
use image::Image;
use long_mode::{Layout, PageSize};
use serial::Ports;
use vm::{Outcome, Setup, Vm};

/// Exit statuses (docs/REFERENCE.md §1).
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const VERSION: &str = concat!("mini_hypervisor ", env!("CARGO_PKG_VERSION"), " (version A: one VM)\n");

fn main() -> ExitCode {
    // A panic (a bug, or the runtime out of memory) in one line that cannot hang (inspect::text).
    std::panic::set_hook(Box::new(inspect::text::report_panic));
    let config = match args::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => return print_stdout(args::USAGE),
        Ok(Command::Version) => return print_stdout(VERSION),
        Err(e) => {
            diag!("mini_hypervisor: {e}\n{}", args::TRY_HELP);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(&config) {
        Ok(Outcome::Halted) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(EXIT_FAILED),
        Err(e) => {
            diag!("mini_hypervisor: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Everything after parsing, in the C's order. `Err`: why no VM ran (one line, saying what to do).
fn run(config: &Config) -> Result<Outcome, String> {
    let layout = Layout::new(config.mem_size, config.page);
    // Every check before the VM starts (docs/REFERENCE.md §1). C: load_guest_image.
    let image = image::load(&config.images[0], &layout)?;
    let kvm = Kvm::open().map_err(|e| kvm_open_error(&e))?;
    let setup = setup(config, &kvm, &layout, &image)?;
    let label = setup.label.clone();
    if !config.quiet {
        let (bytes, page) = (image.bytes.len(), if layout.page == PageSize::Large2M { "2 MiB" } else { "4 KiB" });
        diag!("mini_hypervisor: {label}: {} MiB RAM, {page} pages, {bytes} byte image", config.mem_size >> 20);
    }
    let vm = Vm::create(&kvm, &layout, &image, setup).map_err(|e| format!("{label}: cannot create the VM: {e}"))?;
    let report = vm.run();
    if !config.quiet {
        let (how, ms) =
            (if report.outcome == Outcome::Halted { "halted" } else { "failed" }, report.wall.as_secs_f64() * 1e3);
        diag!("mini_hypervisor: {label}: {how} after {} exits in {ms:.3} ms", report.exits);
    }
    if let Some(stats) = &report.stats {
        diag!("mini_hypervisor: {label}: stats\n{}", stats.report(report.wall).trim_end());
    }
    Ok(report.outcome)
}

/// The VM's signals, ports and tools (`--gdb`, `--trace`, `--stats`, the crash report).
fn setup(config: &Config, kvm: &Kvm, layout: &Layout, image: &Image) -> Result<Setup, String> {
    // Before any thread starts: the stop signals now stop the VM instead of killing us.
    let listener = Arc::new(Listener::block(signals::OURS).map_err(|e| format!("cannot block signals: {e}"))?);
    // --gdb: the port is taken before the VM is created; the VM waits there for the debugger.
    let gdb = config.gdb.map(hooks::listen).transpose()?;
    let kick = gdb.is_some().then(Kick::default);
    let timeout = config.timeout.as_ref().map(|t| t.after);
    let interrupts = Interrupts::new(Arc::clone(&listener), timeout, kick.clone());
    let stdout = File::from(io::stdout().as_fd().try_clone_to_owned().map_err(|e| format!("stdout: {e}"))?);
    let stdin = File::from(io::stdin().as_fd().try_clone_to_owned().map_err(|e| format!("stdin: {e}"))?);
    let (line_buffered, label) = (stdout.is_terminal(), format!("vm0 ({})", image.path.display()));
    let (stdout, stdin) = (Interruptible::new(stdout, &listener), Interruptible::new(stdin, &listener));
    let (ram_size, tables_base, image_len) = (layout.mem_size, layout.tables_base, image.bytes.len() as u64);
    let map = MemoryMap { ram_size, large_pages: layout.page == PageSize::Large2M, tables_base, image_len };
    let (stats, image_path, symbols) = (config.stats.then(Stats::new), image.path.clone(), OnceLock::new());
    let mut tools =
        Tools { trace: None, stats, debugger: None, map, image_path, image: Arc::clone(&image.bytes), symbols };
    if config.trace {
        tools.trace = Some(Trace::new(&label, tools.symbols()));
    }
    if let Some((listener, kick)) = gdb.zip(kick) {
        let pause = PauseBy { handle: kick, pause: Kick::pause, take_pause: Kick::take_pause };
        tools.debug_with(listener, pause, hooks::data_breakpoints_fire(kvm));
    }
    let (trace, verbose) = (config.trace, config.trace || config.stats);
    Ok(Setup {
        ports: Ports::new(&label, stdout, stdin, line_buffered),
        label,
        interrupts,
        line_buffered,
        timeout: config.timeout.clone(),
        // Not --no-coalesce: after COALESCE_AFTER serial bytes, the port goes through KVM's ring.
        ring: SerialRing { countdown: config.coalesce.then_some(COALESCE_AFTER), trace, verbose, ..Default::default() },
        tools,
    })
}

/// `--help`, `--version`: the text on stdout; exit status 1 if it cannot be written.
fn print_stdout(text: &str) -> ExitCode {
    use std::io::Write as _;
    match io::stdout().write_all(text.as_bytes()).and_then(|()| io::stdout().flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(EXIT_FAILED),
    }
}

/// Why /dev/kvm did not open, and what to do about it.
fn kvm_open_error(e: &io::Error) -> String {
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
        let missing = kvm_open_error(&io::ErrorKind::NotFound.into());
        assert!(missing.starts_with("/dev/kvm: not found") && missing.contains("kvm_intel or kvm_amd"), "{missing}");
        let denied = kvm_open_error(&io::ErrorKind::PermissionDenied.into());
        assert!(denied.contains("kvm group") && denied.contains("sudo"), "{denied}");
    }
}
