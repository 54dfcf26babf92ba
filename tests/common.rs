//! Helpers shared by the integration tests of every version: run the built binary under a guard
//! time, find guest images. Each version's `tests/common/mod.rs` includes this file beside what
//! is its own: the binary under test ([`BIN`]) and its crate.
//!
//! Every run has a guard: if the binary is still running after it (30 s unless the test picks
//! another), it is killed and the test fails with "guest ran longer than its guard of N s",
//! so a regression that hangs fails one test instead of stalling the whole suite. The guard is
//! not a synchronisation: the helpers wait for the end of the binary's output, read on threads,
//! with `recv_timeout`, and return as soon as it exits.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::BIN;

/// How long one run may take, unless the test gives its own guard.
pub const GUARD: Duration = Duration::from_secs(30);

pub struct Run {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// The lines of one VM of a run of several (`[vmN] ` each), prefix removed, in the order they were written.
pub fn lines_of(stdout: &str, vm: usize) -> Vec<String> {
    let prefix = format!("[vm{vm}] ");
    stdout.lines().filter_map(|l| l.strip_prefix(&prefix)).map(str::to_owned).collect()
}

pub fn guest(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest").join(name);
    assert!(p.is_file(), "{} is missing: build the guests first (make guests)", p.display());
    p.to_str().unwrap().to_owned()
}

/// KVM is needed from here on; without it (and not in CI) the test is skipped.
pub fn kvm_available() -> bool {
    match std::fs::File::options().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIP: /dev/kvm: {e}");
            false
        }
        Err(e) => panic!("/dev/kvm must work in CI: {e}"),
    }
}

/// The gdb tests need a gdb; without one (and not in CI) they are skipped.
/// A TCP port on 127.0.0.1 that nobody listens on right now, for `--gdb`: one of 20000..30000,
/// below the kernel's range for the local ports of outgoing connections (32768 and up), so that
/// no client connecting meanwhile (gdb, in another test) can take it between this check and the
/// hypervisor's bind, as a port the kernel picks for port 0 could be. Each call tries the next.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % 400) as u16 * 25; // another test process starts elsewhere
    loop {
        let port = 20000 + start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % 10000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn gdb_installed() -> bool {
    match Command::new("gdb").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        _ if std::env::var_os("CI").is_none() => {
            eprintln!("SKIP: gdb is not installed");
            false
        }
        _ => panic!("gdb must be installed in CI"),
    }
}

pub fn run_with_input(args: &[&str], input: &[u8]) -> Run {
    run_in(&std::env::temp_dir(), args, input)
}

pub fn run(args: &[&str]) -> Run {
    run_with_input(args, b"")
}

/// A fresh, empty directory for one test (removed first if a previous run left it).
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mh_c_{}_{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the binary with `cwd` as its current directory, `input` on its stdin (then end of file),
/// under the default [`GUARD`].
pub fn run_in(cwd: &Path, args: &[&str], input: &[u8]) -> Run {
    run_guarded(cwd, args, input, GUARD)
}

/// [`run_in`] with a guard of the test's choosing and arguments that need not be UTF-8.
pub fn run_guarded<S: AsRef<OsStr>>(cwd: &Path, args: &[S], input: &[u8], guard: Duration) -> Run {
    let mut running = Guarded::spawn(cwd, args, guard);
    running.input(input, true);
    running.finish()
}

/// What the reader threads report.
enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// One of the two pipes reached end of file.
    Closed,
}

/// A running process under a guard, for tests that talk to it while it runs (keep stdin open,
/// wait for a line on stderr, send a signal). Dropped early (a failed assertion), it is killed.
pub struct Guarded {
    child: Child,
    shown: String,
    guard: Duration,
    deadline: Instant,
    events: Receiver<Event>,
    /// Pipes (stdout, stderr) not yet at end of file.
    open: u32,
    stdin: Option<ChildStdin>,
    /// The thread writing the input; it hands stdin back when the test keeps it open.
    writer: Option<JoinHandle<Option<ChildStdin>>>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    reaped: bool,
}

impl Guarded {
    /// Starts the binary under test in `cwd`, every stdio a pipe.
    pub fn spawn<S: AsRef<OsStr>>(cwd: &Path, args: &[S], guard: Duration) -> Guarded {
        let mut command = Command::new(BIN);
        command.args(args).current_dir(cwd);
        Guarded::command(command, guard)
    }

    /// Starts the binary under test in `cwd` with its stdout going to `stdout` (a file), stdin
    /// and stderr pipes. [`Run::stdout`] is then empty: the file has the output.
    pub fn spawn_to<S: AsRef<OsStr>>(cwd: &Path, args: &[S], guard: Duration, stdout: std::fs::File) -> Guarded {
        let mut command = Command::new(BIN);
        command.args(args).current_dir(cwd);
        Guarded::start(command, guard, Some(stdout))
    }

    /// Starts `command` (any program) under `guard`, every stdio a pipe.
    pub fn command(command: Command, guard: Duration) -> Guarded {
        Guarded::start(command, guard, None)
    }

    /// Starts `command` under `guard`: stdout to `stdout` if given, else a pipe; stdin and
    /// stderr pipes.
    fn start(mut command: Command, guard: Duration, stdout: Option<std::fs::File>) -> Guarded {
        let shown = std::iter::once(command.get_program())
            .chain(command.get_args())
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let to_file = stdout.is_some();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(stdout.map_or_else(Stdio::piped, Stdio::from))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
        let deadline = Instant::now() + guard;
        let (tx, events) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            reader(stdout, tx.clone(), Event::Stdout);
        }
        reader(child.stderr.take().unwrap(), tx, Event::Stderr);
        let stdin = child.stdin.take();
        Guarded {
            child,
            shown,
            guard,
            deadline,
            events,
            open: if to_file { 1 } else { 2 },
            stdin,
            writer: None,
            stdout: Vec::new(),
            stderr: Vec::new(),
            reaped: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes `input` to stdin on a thread (the process may never read it all), then closes
    /// stdin (end of file) if `close`; otherwise stdin stays open until the process is gone.
    pub fn input(&mut self, input: &[u8], close: bool) {
        let mut stdin = self.stdin.take().expect("stdin was already given away");
        if input.is_empty() {
            self.stdin = (!close).then_some(stdin);
            return;
        }
        let input = input.to_vec();
        self.writer = Some(thread::spawn(move || {
            // An error is the process having exited or closed stdin: not the writer's concern.
            let _ = stdin.write_all(&input);
            (!close).then_some(stdin)
        }));
    }

    /// Writes `bytes` to stdin now; stdin stays open (it must not have been given to
    /// [`Guarded::input`]). For the few bytes of a command, which a pipe takes at once.
    pub fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin was closed or given away");
        stdin.write_all(bytes).unwrap_or_else(|e| panic!("{}: writing to its stdin: {e}", self.shown));
    }

    /// Closes stdin: the process reads end of file.
    pub fn close_input(&mut self) {
        self.stdin = None;
    }

    /// Waits until the stderr written so far satisfies `done` (`what` says what it waits for);
    /// panics if stderr ends first.
    pub fn wait_for_stderr(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        while !done(&String::from_utf8_lossy(&self.stderr)) {
            assert!(self.next_event(), "stderr ended before {what}: {}", String::from_utf8_lossy(&self.stderr));
        }
    }

    /// Waits until the stdout written so far satisfies `done` (`what` says what it waits for);
    /// panics if stdout ends first.
    pub fn wait_for_stdout(&mut self, what: &str, done: impl Fn(&[u8]) -> bool) {
        while !done(&self.stdout) {
            assert!(self.next_event(), "stdout ended before {what}: {}", String::from_utf8_lossy(&self.stdout));
        }
    }

    /// Waits for the process to exit and returns what it wrote.
    pub fn finish(self) -> Run {
        let shown = self.shown.clone();
        self.try_finish().unwrap_or_else(|| panic!("{shown}: killed by a signal"))
    }

    /// As [`Guarded::finish`], but `None` if the process was killed by a signal.
    pub fn try_finish(mut self) -> Option<Run> {
        while self.next_event() {}
        // Both pipes are closed: the process has exited (it closes them in no other way).
        let status = self.child.wait().unwrap();
        self.reaped = true;
        Some(Run {
            status: status.code()?,
            stdout: std::mem::take(&mut self.stdout),
            stderr: String::from_utf8_lossy(&self.stderr).into_owned(),
        })
    }

    /// Takes in the next output; `false` once both pipes are closed. Past the guard, kills the
    /// process and panics.
    fn next_event(&mut self) -> bool {
        if self.open == 0 {
            return false;
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.events.recv_timeout(left) {
            Ok(Event::Stdout(bytes)) => self.stdout.extend_from_slice(&bytes),
            Ok(Event::Stderr(bytes)) => self.stderr.extend_from_slice(&bytes),
            Ok(Event::Closed) => self.open -= 1,
            Err(RecvTimeoutError::Disconnected) => self.open = 0,
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                panic!(
                    "guest ran longer than its guard of {} s: {}\nstderr so far: {}",
                    self.guard.as_secs_f64(),
                    self.shown,
                    String::from_utf8_lossy(&self.stderr)
                );
            }
        }
        self.open > 0
    }

    fn kill(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads `pipe` to its end on a thread, sending each chunk as `wrap(chunk)`, then `Closed`.
fn reader(mut pipe: impl Read + Send + 'static, tx: Sender<Event>, wrap: fn(Vec<u8>) -> Event) {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(wrap(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = tx.send(Event::Closed);
    });
}
