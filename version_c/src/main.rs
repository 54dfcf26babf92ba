//! mini_hypervisor, version C: several VMs at once, one thread each, with guest file I/O.
//!
//! C counterpart: `main` in `Version_C/mini_hypervisor.c`, in the same order: parse the
//! options → check every image and shared file → open /dev/kvm → one thread per VM (C:
//! `pthread_create` running `run_vm`, which creates and runs its VM) → join them → exit
//! status. While the VMs run, this thread is their watchdog (`watchdog.rs`): Ctrl-C, SIGTERM
//! and `--timeout`.
//! Every `unsafe` of the crate is in `kvm/`, `signals.rs` and `hostfs.rs`; every other module
//! forbids it.
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
mod fileio;
mod gdb;
mod hostfs;
mod image;
mod kvm;
mod long_mode;
mod page_walk;
mod sandbox;
mod serial;
mod serial_ring;
mod signals;
mod stats;
mod symbols;
#[cfg(test)]
mod test_dir;
#[cfg(test)]
mod test_rng;
mod trace;
mod vm;
mod watchdog;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, IsTerminal};
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, mpsc};
use std::thread::{self, Scope, ScopedJoinHandle};
use std::time::Duration;

use args::{Command, Config};
use devices::Devices;
use fileio::FileDevice;
use image::Image;
use long_mode::{Layout, PageSize};
use sandbox::{Sandbox, SharedFiles};
use serial::{Console, Serial};
use signals::{Interruptible, Interrupts, Kick, Listener, SigSet};
use stats::Stats;
use symbols::Symbols;
use vm::{Failure, Outcome, Report, Setup, Vm};
use watchdog::{Watch, Watched};

/// Exit statuses (docs/REFERENCE.md §1).
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// Stack of a VM thread: the run loop needs little, and untouched stack costs no memory anyway.
const VM_STACK: usize = 256 * 1024;

fn main() -> ExitCode {
    let config = match args::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => return print_stdout(args::USAGE),
        Ok(Command::Version) => {
            return print_stdout(&format!(
                "mini_hypervisor {} (version C: several VMs, file I/O)\n",
                env!("CARGO_PKG_VERSION")
            ));
        }
        Err(e) => {
            diag!("mini_hypervisor: {e}\n\n{}", args::USAGE.trim_end());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(&config) {
        Ok(reports) if reports.iter().all(|r| r.outcome == Outcome::Halted) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(EXIT_FAILED),
        Err(e) => {
            diag!("mini_hypervisor: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Everything after parsing. `Err`: a startup failure, no VM ran.
fn run(config: &Config) -> Result<Vec<Report>, StartError> {
    let layout = Layout::new(config.mem_size, config.page);
    // Every check before any VM starts (docs/REFERENCE.md §1).
    let images = config.images.iter().map(|path| image::check(path, &layout));
    let images = images.collect::<Result<Vec<_>, _>>().map_err(StartError::Image)?;
    let files = Files::check(config)?;
    // Before any thread starts: Ctrl-C and SIGTERM now stop the VMs instead of killing us.
    signals::block_ours().map_err(|e| StartError::Host("cannot block SIGINT/SIGTERM", e))?;
    let kvm = kvm::Kvm::open().map_err(StartError::DevKvm)?;
    // --gdb: the port is taken before any VM is created; VM 0 waits there for the debugger.
    let gdb = config.gdb.map(gdb::listen).transpose().map_err(StartError::Gdb)?;
    let shared = Shared::new(config, &kvm, gdb.is_some(), files)?;
    let labels: Vec<String> =
        images.iter().enumerate().map(|(index, image)| format!("vm{index} ({})", image.path.display())).collect();
    let reports = run_all(&shared, &layout, &images, &labels, gdb)?;
    for (label, report) in labels.iter().zip(&reports) {
        summarize(label, report, config);
    }
    Ok(reports)
}

/// One thread per VM (C: `pthread_create` for each guest, then `pthread_join`); this thread
/// watches them meanwhile.
fn run_all(
    shared: &Shared<'_>,
    layout: &Layout,
    images: &[Image],
    labels: &[String],
    mut gdb: Option<TcpListener>,
) -> Result<Vec<Report>, StartError> {
    let (ended_tx, ended) = mpsc::channel();
    // This thread's signals: Ctrl-C, SIGTERM, and the kicks of VM threads that end.
    let listener = Listener::new(SigSet::of(&[libc::SIGINT, libc::SIGTERM, signals::kick_signal()]))
        .map_err(|e| StartError::Host("signalfd", e))?;
    let watchdog = Kick::new();
    // Each image's symbols, read once however many VMs run it.
    let mut symbols: HashMap<&Path, Option<Arc<Symbols>>> = HashMap::new();
    Ok(watchdog.deliver_here(|| {
        thread::scope(|s| {
            let mut threads = Vec::with_capacity(images.len());
            let mut kicks = Vec::with_capacity(images.len());
            for (index, image) in images.iter().enumerate() {
                let kick = Kick::new();
                let mut setup = shared.setup(index, (layout, image), &labels[index], kick.clone(), gdb.take());
                setup.symbols = symbols.entry(&image.path).or_insert_with(|| symbols_of(image)).clone();
                announce(shared.config, &labels[index], image.bytes.len());
                let done = Done { index, tx: ended_tx.clone(), watchdog: watchdog.clone() };
                threads.push(spawn_vm(s, shared.kvm, layout, image, setup, done));
                kicks.push(kick);
            }
            let drains = shared.line_buffered && shared.config.coalesce;
            let watch =
                Watch { kicks: &kicks, ended: &ended, listener: &listener, timeout: shared.config.timeout, drains };
            if watchdog::watch(&watch) == Watched::ExitNow {
                shared.console.flush_without_waiting();
                std::process::exit(EXIT_FAILED.into());
            }
            threads.into_iter().zip(labels).map(|(thread, label)| join(thread, label)).collect()
        })
    }))
}

/// C: `pthread_create(..., run_vm, ...)`: the VM's thread creates its VM, then runs it.
fn spawn_vm<'scope>(
    s: &'scope Scope<'scope, '_>,
    kvm: &'scope kvm::Kvm,
    layout: &'scope Layout,
    image: &'scope Image,
    setup: Setup,
    done: Done,
) -> Result<ScopedJoinHandle<'scope, Report>, Failure> {
    let (label, shown) = (setup.label.clone(), setup.label.clone());
    let name = format!("vm{}", done.index);
    let body = move || {
        let _done = done; // tells the watchdog when this thread ends, even by a panic
        match Vm::create(kvm, layout, image, setup) {
            Ok(vm) => vm.run(),
            Err(e) => failed(not_run(&label, format!("cannot create the VM: {e}"))),
        }
    };
    let spawned = thread::Builder::new().name(name).stack_size(VM_STACK).spawn_scoped(s, body);
    spawned.map_err(|e| not_run(&shown, format!("cannot start its thread: {e}")))
}

/// C: `pthread_join`: the VM's report (a thread that never started has one already).
fn join(thread: Result<ScopedJoinHandle<'_, Report>, Failure>, label: &str) -> Report {
    match thread {
        Ok(handle) => {
            handle.join().unwrap_or_else(|_| failed(not_run(label, "internal error: its thread panicked".into())))
        }
        Err(failure) => failed(failure),
    }
}

/// A VM that never ran its guest: says why on stderr (even with -q: nothing else will).
fn not_run(label: &str, why: String) -> Failure {
    diag!("mini_hypervisor: {label}: failed: {why}");
    Failure::NotRun(why)
}

fn failed(failure: Failure) -> Report {
    Report { outcome: Outcome::Failed(failure), stats: Stats::default(), wall: Duration::ZERO }
}

/// Tells the watchdog that VM `index` ended: its number on the channel, then a kick.
#[derive(Debug)]
struct Done {
    index: usize,
    tx: mpsc::Sender<usize>,
    watchdog: Kick,
}

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.tx.send(self.index);
        self.watchdog.wake();
    }
}

/// The files of `-f` (shared with every VM) and where the VMs' private directories go.
#[derive(Debug)]
struct Files {
    shared: Arc<SharedFiles>,
    /// `--files-dir`, or "" for the current directory.
    dir: PathBuf,
}

impl Files {
    /// Every `-f` path and `--files-dir` checked before any VM starts (docs/REFERENCE.md §1, §5).
    fn check(config: &Config) -> Result<Files, StartError> {
        let shared = Arc::new(SharedFiles::check(&config.files).map_err(|e| StartError::Files(e.to_string()))?);
        let dir =
            sandbox::check_files_dir(config.files_dir.as_deref()).map_err(|e| StartError::Files(e.to_string()))?;
        if !config.quiet && !shared.is_empty() {
            diag!("mini_hypervisor: {} shared file(s) from -f, visible to every VM", shared.len());
        }
        Ok(Files { shared, dir })
    }

    /// VM `index`'s file device: its private files in `<files-dir>/<stem>_vm<N>_files/`.
    fn device(&self, image: &std::path::Path, index: usize, label: &str, trace: bool) -> FileDevice {
        let private_dir = self.dir.join(sandbox::private_dir_name(image, index));
        let mut files = FileDevice::new(Sandbox::new(Arc::clone(&self.shared), private_dir, label.to_owned()));
        files.trace_requests(trace);
        files
    }
}

/// What every VM thread shares: stdout and stdin, the signals a VM thread listens to, the
/// files, and the options.
#[derive(Debug)]
struct Shared<'a> {
    config: &'a Config,
    kvm: &'a kvm::Kvm,
    console: Arc<Console<Interruptible, Interruptible>>,
    /// A VM thread listens to kicks only; SIGINT and SIGTERM are the watchdog's.
    listener: Arc<Listener>,
    line_buffered: bool,
    /// Whether this host fires data breakpoints (probed only with --gdb).
    data_watch: bool,
    files: Files,
}

impl<'a> Shared<'a> {
    fn new(config: &'a Config, kvm: &'a kvm::Kvm, gdb: bool, files: Files) -> Result<Shared<'a>, StartError> {
        let listener = Arc::new(
            Listener::new(SigSet::of(&[signals::kick_signal()])).map_err(|e| StartError::Host("signalfd", e))?,
        );
        let stdout = stdio(io::stdout().as_fd(), "stdout")?;
        let line_buffered = stdout.is_terminal();
        let stdin = stdio(io::stdin().as_fd(), "stdin")?;
        let (stdout, stdin) = (Interruptible::new(stdout, &listener), Interruptible::new(stdin, &listener));
        let console = Arc::new(Console::new(stdout, stdin, line_buffered));
        let data_watch = gdb && gdb::data_breakpoints_fire(kvm);
        Ok(Shared { config, kvm, console, listener, line_buffered, data_watch, files })
    }

    /// VM `index`'s ports, its signals and its extras (`--gdb` for VM 0, `--trace`, `--stats`).
    fn setup(
        &self,
        index: usize,
        (layout, image): (&Layout, &Image),
        label: &str,
        kick: Kick,
        gdb: Option<TcpListener>,
    ) -> Setup {
        let config = self.config;
        let debugger = gdb.map(|l| {
            let size = image.bytes.len() as u64;
            gdb::Debugger::new(l, kick.clone(), &image.path, size, *layout, self.data_watch)
        });
        // With several VMs, output lines are prefixed with the VM's number (docs/REFERENCE.md §3).
        let prefix = (config.images.len() > 1).then(|| format!("[vm{index}] "));
        let serial = Serial::new(Arc::clone(&self.console), prefix);
        let files = self.files.device(&config.images[index], index, label, config.trace);
        Setup {
            label: label.to_owned(),
            devices: Devices::new(label.to_owned(), serial, files),
            interrupts: Interrupts::kicked(Arc::clone(&self.listener), kick),
            trace: config.trace,
            stats: config.stats,
            coalesce: config.coalesce,
            line_buffered: self.line_buffered,
            timeout: config.timeout,
            symbols: None,
            debugger,
        }
    }
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
    /// A `-f` path or `--files-dir` that cannot be used.
    Files(String),
    DevKvm(io::Error),
    Gdb(String),
    /// A system call of the setup failed: which, and why.
    Host(&'static str, io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Image(e) => write!(f, "{e}"),
            StartError::Files(message) | StartError::Gdb(message) => f.write_str(message),
            StartError::DevKvm(e) => f.write_str(&kvm_open_error(e)),
            StartError::Host(what, e) => write!(f, "{what}: {e}"),
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

/// A VM's opening line on stderr (C: the "Starting VM with:" lines, which it prints on stdout).
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
