//! mini_hypervisor, version A: one VM, 64-bit long mode, serial port 0xE9.
//!
//! C counterpart: `main` in `Version_A/mini_hypervisor.c`, in the same order: parse the
//! options → check the image → open /dev/kvm → create the VM → run it → exit status. The VM
//! runs on this thread; the only threads ever started are the debugger's (`--gdb`).
//! Every `unsafe` of the crate is in `kvm/` and `signals.rs`; every other module forbids it.
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
mod crash;
mod devices;
mod gdb;
mod image;
mod kvm;
mod long_mode;
mod page_walk;
mod serial;
mod serial_ring;
mod signals;
mod stats;
mod symbols;
#[cfg(test)]
mod test_rng;
mod trace;
mod vm;

use std::fmt;
use std::fs::File;
use std::io::{self, IsTerminal};
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::Arc;

use args::{Command, Config};
use devices::Devices;
use image::Image;
use long_mode::{Layout, PageSize};
use serial::Serial;
use signals::{Interruptible, Interrupts, Kick, Listener};
use symbols::Symbols;
use vm::{Outcome, Report, Setup, Vm};

/// Exit statuses (docs/REFERENCE.md §1).
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let config = match args::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => return print_stdout(args::USAGE),
        Ok(Command::Version) => {
            return print_stdout(&format!("mini_hypervisor {} (version A: one VM)\n", env!("CARGO_PKG_VERSION")));
        }
        Err(e) => {
            diag!("mini_hypervisor: {e}\n\n{}", args::USAGE.trim_end());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(&config) {
        Ok(report) if report.outcome == Outcome::Halted => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(EXIT_FAILED),
        Err(e) => {
            diag!("mini_hypervisor: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Everything after parsing. `Err`: a startup failure, no VM ran.
fn run(config: &Config) -> Result<Report, StartError> {
    let layout = Layout::new(config.mem_size, config.page);
    // Every check before the VM starts (docs/REFERENCE.md §1).
    let image = image::check(&config.images[0], &layout).map_err(StartError::Image)?;
    // Before any thread starts: Ctrl-C and SIGTERM now stop the VM instead of killing us.
    signals::block_ours().map_err(|e| StartError::Host("cannot block SIGINT/SIGTERM", e))?;
    let kvm = kvm::Kvm::open().map_err(StartError::DevKvm)?;
    // --gdb: the port is taken before the VM is created; the VM waits there for the debugger.
    let gdb = config.gdb.map(gdb::listen).transpose().map_err(StartError::Gdb)?;
    let label = format!("vm0 ({})", image.path.display());
    let setup = setup(config, &kvm, (&layout, &image), &label, gdb)?;
    announce(config, &label, image.bytes.len());
    let vm = Vm::create(&kvm, &layout, &image, setup).map_err(|e| StartError::Create(label.clone(), e))?;
    let report = vm.run();
    summarize(&label, &report, config);
    Ok(report)
}

/// The VM's ports, its signals and its extras (`--gdb`, `--trace`, `--stats`).
fn setup(
    config: &Config,
    kvm: &kvm::Kvm,
    (layout, image): (&Layout, &Image),
    label: &str,
    gdb: Option<TcpListener>,
) -> Result<Setup, StartError> {
    // This thread runs the VM: it takes Ctrl-C, SIGTERM, the timer and the debugger's kicks.
    let listener = Arc::new(Listener::new(signals::ours()).map_err(|e| StartError::Host("signalfd", e))?);
    let kick = Kick::new();
    let debugger = gdb.map(|l| {
        let size = image.bytes.len() as u64;
        gdb::Debugger::new(l, kick.clone(), &image.path, size, *layout, gdb::data_breakpoints_fire(kvm))
    });
    let interrupts = Interrupts::owning_timer(Arc::clone(&listener), kick, config.timeout)
        .map_err(|e| StartError::Host("setitimer", e))?;
    let stdout = stdio(io::stdout().as_fd(), "stdout")?;
    let line_buffered = stdout.is_terminal();
    let stdin = stdio(io::stdin().as_fd(), "stdin")?;
    let serial =
        Serial::new(Interruptible::new(stdout, &listener), Interruptible::new(stdin, &listener), line_buffered);
    Ok(Setup {
        label: label.to_owned(),
        devices: Devices::new(label.to_owned(), serial),
        interrupts,
        trace: config.trace,
        stats: config.stats,
        coalesce: config.coalesce,
        line_buffered,
        timeout: config.timeout,
        symbols: symbols_of(image),
        debugger,
    })
}

/// The image's symbols from `NAME.elf` beside it (docs/REFERENCE.md §8); an ELF that cannot
/// be used gives one warning, and addresses are shown bare.
fn symbols_of(image: &Image) -> Option<Arc<Symbols>> {
    match Symbols::load(&image.path, &image.bytes) {
        Ok(symbols) => symbols.map(Arc::new),
        Err(warning) => {
            diag!("mini_hypervisor: warning: {warning}");
            None
        }
    }
}

/// Our own handle on stdout or stdin.
fn stdio(fd: std::os::fd::BorrowedFd<'_>, name: &'static str) -> Result<File, StartError> {
    Ok(File::from(fd.try_clone_to_owned().map_err(|e| StartError::Host(name, e))?))
}

/// Why no VM ran: one line, saying what to do where it can.
#[derive(Debug)]
enum StartError {
    Image(image::ImageError),
    DevKvm(io::Error),
    Gdb(String),
    /// A system call of the setup failed: which, and why.
    Host(&'static str, io::Error),
    /// The VM could not be created: its label, and why.
    Create(String, io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Image(e) => write!(f, "{e}"),
            StartError::Gdb(message) => f.write_str(message),
            StartError::DevKvm(e) => f.write_str(&kvm_open_error(e)),
            StartError::Host(what, e) => write!(f, "{what}: {e}"),
            StartError::Create(label, e) => write!(f, "{label}: cannot create the VM: {e}"),
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

/// The VM's opening line on stderr (C: the "Starting VM with:" lines, which it prints on stdout).
fn announce(config: &Config, label: &str, image_bytes: usize) {
    if !config.quiet {
        let page = match config.page {
            PageSize::Small4K => "4 KiB",
            PageSize::Large2M => "2 MiB",
        };
        diag!("mini_hypervisor: {label}: {} MiB RAM, {page} pages, {image_bytes} byte image", config.mem_size >> 20);
    }
}

/// The closing line per VM on stderr (and the `--stats` block).
fn summarize(label: &str, report: &Report, config: &Config) {
    if !config.quiet {
        let how = if report.outcome == Outcome::Halted { "halted" } else { "failed" };
        diag!("mini_hypervisor: {label}: {how} after {} exits in {:.3} ms", report.stats.exits, stats::ms(report.wall));
    }
    if config.stats {
        diag!("mini_hypervisor: {label}: stats\n{}", report.stats.report(report.wall).trim_end());
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
