//! mini_hypervisor, version B: several VMs at once, one thread each.
//!
//! C counterpart: `main` in `Version_B/mini_hypervisor.c`, in the same order: parse the
//! options → check every image → open /dev/kvm → one thread per VM (C: `pthread_create`
//! running `run_vm`, which creates and runs its VM: `vm.rs`) → join them → exit status. While
//! the VMs run, this thread is their watchdog (`watchdog.rs`): the stop signals and `--timeout`.
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
mod watchdog;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, IsTerminal};
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock, mpsc};
use std::thread::{self, Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use inspect::MemoryMap;
use inspect::gdb::PauseBy;
use inspect::ring::{COALESCE_AFTER, SerialRing};
use inspect::stats::Stats;
use inspect::symbols::SymbolFile;
use inspect::tools::Tools;
use inspect::trace::Trace;
// The FFI room, this crate's library: every module reaches it as `crate::kvm`, `crate::signals`.
use version_b::{kvm, signals};

use args::{Command, Config};
use image::Image;
use kvm::Kvm;
use long_mode::{Layout, PageSize};
use serial::{Console, Ports, Serial};
use signals::{Interruptible, Interrupts, KICK_SIGNAL, Kick, Listener, SigSet};
use vm::{Failure, Outcome, Report, Setup, Vm};
use watchdog::{Event, Watch, Watched};

/// Exit statuses (docs/REFERENCE.md §1).
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const VERSION: &str = concat!("mini_hypervisor ", env!("CARGO_PKG_VERSION"), " (version B: several VMs)\n");

/// Stack of a VM thread: the run loop needs little, and untouched stack costs no memory anyway.
const VM_STACK: usize = 256 * 1024;

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
        Ok(reports) if reports.iter().all(|r| r.outcome == Outcome::Halted) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(EXIT_FAILED),
        Err(e) => {
            diag!("mini_hypervisor: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Everything after parsing. `Err`: why no VM ran (one line, saying what to do).
fn run(config: &Config) -> Result<Vec<Report>, String> {
    let layout = Layout::new(config.mem_size, config.page);
    // Every check before any VM starts (docs/REFERENCE.md §1). C: load_guest_image.
    let images = config.images.iter().map(|path| image::load(path, &layout));
    let images = images.collect::<Result<Vec<_>, _>>()?;
    // Before any thread starts: the stop signals now stop the VMs instead of killing us. This
    // thread, the watchdog, takes them, and the kicks of VM threads that end.
    let watchdog = Listener::block(signals::OURS).map_err(|e| format!("cannot block signals: {e}"))?;
    let kvm = Kvm::open().map_err(|e| kvm_open_error(&e))?;
    // --gdb: the port is taken before any VM is created; VM 0 waits there for the debugger.
    let gdb = config.gdb.map(hooks::listen).transpose()?;
    let shared = Shared::new(config, &kvm, &layout)?;
    let labels: Vec<String> =
        images.iter().enumerate().map(|(index, image)| format!("vm{index} ({})", image.path.display())).collect();
    let reports = run_all(&shared, &watchdog, &images, &labels, gdb);
    for (label, report) in labels.iter().zip(&reports) {
        summarize(label, report, config);
    }
    Ok(reports)
}

/// One thread per VM (C: `pthread_create` for each guest, then `pthread_join`); this thread
/// watches them meanwhile.
fn run_all(
    shared: &Shared<'_>,
    listener: &Listener,
    images: &[Image],
    labels: &[String],
    mut gdb: Option<TcpListener>,
) -> Vec<Report> {
    let (events_tx, events) = mpsc::channel();
    let watchdog = Kick::default();
    // Each image's symbols, read at most once however many VMs run it (and only if needed).
    let mut symbols: HashMap<&Path, Arc<SymbolFile>> = HashMap::new();
    watchdog.deliver_here(|| {
        thread::scope(|s| {
            let mut threads = Vec::with_capacity(images.len());
            let mut kicks = Vec::with_capacity(images.len());
            for (index, image) in images.iter().enumerate() {
                let kick = Kick::default();
                let symbols = symbols
                    .entry(&image.path)
                    .or_insert_with(|| Arc::new(SymbolFile::new(&image.path, image.bytes.clone())));
                let gdb = gdb.take().map(|listener| (listener, kick.clone()));
                let setup = shared.setup(index, image, &labels[index], (kick.clone(), Arc::clone(symbols)), gdb);
                announce(shared.config, &labels[index], image.bytes.len());
                let timed = shared.config.timeout.is_some();
                let done = Done { index, tx: events_tx.clone(), watchdog: watchdog.clone(), timed };
                threads.push(spawn_vm(s, shared, image, setup, done));
                kicks.push(kick);
            }
            let drains = shared.line_buffered && shared.config.coalesce;
            let timeout = shared.config.timeout.as_ref().map(|t| t.after);
            let watch = Watch { kicks: &kicks, events: &events, listener, timeout, drains };
            if watchdog::watch(&watch) == Watched::ExitNow {
                shared.console.flush_without_waiting();
                std::process::exit(EXIT_FAILED.into());
            }
            threads.into_iter().zip(labels).map(|(thread, label)| join(thread, label)).collect()
        })
    })
}

/// C: `pthread_create(..., run_vm, ...)`: the VM's thread creates its VM, then runs it.
fn spawn_vm<'scope>(
    s: &'scope Scope<'scope, '_>,
    shared: &'scope Shared<'_>,
    image: &'scope Image,
    setup: Setup,
    done: Done,
) -> Result<ScopedJoinHandle<'scope, Report>, Failure> {
    let (label, shown) = (setup.label.clone(), setup.label.clone());
    let name = format!("vm{}", done.index);
    let (kvm, layout) = (shared.kvm, shared.layout);
    let body = move || {
        let done = done; // tells the watchdog when this thread ends, even by a panic
        match Vm::create(kvm, layout, image, setup) {
            // The VM's --timeout counts from its start (docs/REFERENCE.md §2).
            Ok(vm) => vm.run(|at| done.started(at)),
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
    Report { outcome: Outcome::Failed(failure), exits: 0, wall: Duration::ZERO, stats: None }
}

/// Tells the watchdog that VM `index` started, and (when dropped) that its thread ended: an
/// [`Event`] on the channel, then a kick.
#[derive(Debug)]
struct Done {
    index: usize,
    tx: mpsc::Sender<Event>,
    watchdog: Kick,
    /// There is a `--timeout`: the start must wake the watchdog (without one, it reads the start
    /// when it next wakes, and a run with no timeout spends no kick on it).
    timed: bool,
}

impl Done {
    /// The VM is made and about to run: its `--timeout` counts from `at`.
    fn started(&self, at: Instant) {
        let _ = self.tx.send(Event::Started(self.index, at));
        if self.timed {
            self.watchdog.wake();
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.tx.send(Event::Ended(self.index));
        self.watchdog.wake();
    }
}

/// What every VM thread shares: stdout and stdin, the signals a VM thread listens to, and the
/// options.
#[derive(Debug)]
struct Shared<'a> {
    config: &'a Config,
    kvm: &'a Kvm,
    layout: &'a Layout,
    console: Arc<Console<Interruptible, Interruptible>>,
    /// A VM thread listens to its kicks only; the stop signals are the watchdog's.
    listener: Arc<Listener>,
    line_buffered: bool,
}

impl<'a> Shared<'a> {
    fn new(config: &'a Config, kvm: &'a Kvm, layout: &'a Layout) -> Result<Shared<'a>, String> {
        let listener = Arc::new(Listener::block(SigSet::of(&[KICK_SIGNAL])).map_err(|e| format!("signalfd: {e}"))?);
        let stdout = File::from(io::stdout().as_fd().try_clone_to_owned().map_err(|e| format!("stdout: {e}"))?);
        let stdin = File::from(io::stdin().as_fd().try_clone_to_owned().map_err(|e| format!("stdin: {e}"))?);
        let line_buffered = stdout.is_terminal();
        let (stdout, stdin) = (Interruptible::new(stdout, &listener), Interruptible::new(stdin, &listener));
        let console = Arc::new(Console::new(stdout, stdin, line_buffered));
        Ok(Shared { config, kvm, layout, console, listener, line_buffered })
    }

    /// VM `index`'s ports, its signals and its tools (`--gdb` for VM 0, `--trace`, `--stats`,
    /// the crash report).
    fn setup(
        &self,
        index: usize,
        image: &Image,
        label: &str,
        (kick, symbols): (Kick, Arc<SymbolFile>),
        gdb: Option<(TcpListener, Kick)>,
    ) -> Setup {
        let config = self.config;
        let (layout, image_len) = (self.layout, image.bytes.len() as u64);
        let (ram_size, tables_base, large_pages) =
            (layout.mem_size, layout.tables_base, layout.page == PageSize::Large2M);
        let map = MemoryMap { ram_size, large_pages, tables_base, image_len };
        let (stats, image_path, symbols) = (config.stats.then(Stats::new), image.path.clone(), OnceLock::from(symbols));
        let mut tools =
            Tools { trace: None, stats, debugger: None, map, image_path, image: Arc::clone(&image.bytes), symbols };
        if config.trace {
            tools.trace = Some(Trace::new(label, tools.symbols()));
        }
        if let Some((listener, kick)) = gdb {
            let pause = PauseBy { handle: kick, pause: Kick::pause, take_pause: Kick::take_pause };
            tools.debug_with(listener, pause, hooks::data_breakpoints_fire(self.kvm));
        }
        let (trace, verbose) = (config.trace, config.trace || config.stats);
        // With several VMs, output lines are prefixed with the VM's number (docs/REFERENCE.md §3).
        let prefix = (config.images.len() > 1).then(|| format!("[vm{index}] "));
        Setup {
            label: label.to_owned(),
            ports: Ports::new(label, Serial::new(Arc::clone(&self.console), prefix)),
            interrupts: Interrupts::new(Arc::clone(&self.listener), kick),
            line_buffered: self.line_buffered,
            timeout: config.timeout.clone(),
            // Not --no-coalesce: after COALESCE_AFTER serial bytes, the port goes through KVM's ring.
            ring: SerialRing {
                countdown: config.coalesce.then_some(COALESCE_AFTER),
                trace,
                verbose,
                ..Default::default()
            },
            tools,
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
        let page = if config.page == PageSize::Large2M { "2 MiB" } else { "4 KiB" };
        diag!("mini_hypervisor: {label}: {} MiB RAM, {page} pages, {image_bytes} byte image", config.mem_size >> 20);
    }
}

/// The closing line per VM on stderr (and the `--stats` block).
fn summarize(label: &str, report: &Report, config: &Config) {
    if !config.quiet {
        let (how, ms) =
            (if report.outcome == Outcome::Halted { "halted" } else { "failed" }, report.wall.as_secs_f64() * 1e3);
        diag!("mini_hypervisor: {label}: {how} after {} exits in {ms:.3} ms", report.exits);
    }
    if let Some(stats) = &report.stats {
        diag!("mini_hypervisor: {label}: stats\n{}", stats.report(report.wall).trim_end());
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
