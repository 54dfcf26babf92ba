//! Runs one program once, whatever it does: in its own process group, with a time limit after
//! which the whole group is killed, its stdout and stderr drained to the end on threads but only
//! their first bytes kept.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::sys;

/// How much of stdout is kept for the comparison: every example guest prints far less.
pub const KEEP_STDOUT: usize = 8 * 1024;
/// How much of stderr is kept (it is not compared; `--keep` saves it beside the run).
pub const KEEP_STDERR: usize = 4 * 1024;
/// The largest file a program may write (past it, the kernel sends it SIGXFSZ).
pub const MAX_FILE: u64 = 64 << 20;
/// How long, after SIGKILL to its group, we wait for the program to be reaped and its pipes to
/// close (a process that left the group may keep them open; we then stop reading).
const GRACE: Duration = Duration::from_secs(2);

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exit(i32),
    Signal(i32),
    TimedOut,
    /// The program could not be started (the reason).
    NotStarted(String),
}

impl Outcome {
    /// Whether the program ended by itself (an exit status, not a signal or the time limit).
    pub fn ended(&self) -> bool {
        matches!(self, Outcome::Exit(_))
    }

    /// `exit 0`, `SIGSEGV`, `timed out`, `no start`.
    pub fn short(&self) -> String {
        match self {
            Outcome::Exit(code) => format!("exit {code}"),
            Outcome::Signal(signal) => signal_name(*signal),
            Outcome::TimedOut => "timed out".to_owned(),
            Outcome::NotStarted(_) => "no start".to_owned(),
        }
    }
}

/// The first bytes of a stream, and how many it had in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    pub bytes: Vec<u8>,
    pub total: u64,
}

impl Kept {
    pub fn truncated(&self) -> bool {
        self.total > self.bytes.len() as u64
    }
}

/// What a run left: its outcome and its output.
#[derive(Debug, Clone)]
pub struct Finished {
    pub outcome: Outcome,
    pub stdout: Kept,
    pub stderr: Kept,
}

/// Runs `program args` in `cwd` with `stdin` as its stdin, for at most `limit`.
pub fn run<S: AsRef<OsStr>>(program: &Path, args: &[S], cwd: &Path, stdin: &Path, limit: Duration) -> Finished {
    let not_started =
        |why: String| Finished { outcome: Outcome::NotStarted(why), stdout: Kept::default(), stderr: Kept::default() };
    let input = match File::open(stdin) {
        Ok(file) => file,
        Err(e) => return not_started(format!("cannot open {}: {e}", stdin.display())),
    };
    let mut command = Command::new(program);
    command.args(args).current_dir(cwd).stdin(input).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.process_group(0);
    sys::limit_child(&mut command, MAX_FILE);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return not_started(format!("cannot start {}: {e}", program.display())),
    };
    let pgid = child.id();
    sys::set_running_group(pgid);
    let stdout = drain(child.stdout.take(), KEEP_STDOUT);
    let stderr = drain(child.stderr.take(), KEEP_STDERR);
    let (tx, exited) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let (status, timed_out) = wait(&exited, pgid, limit);
    // Whatever the program left running in its group (children, grandchildren) ends with it.
    sys::kill_group(pgid);
    sys::set_running_group(0);
    let outcome = match status {
        _ if timed_out => Outcome::TimedOut,
        Some(status) => outcome_of(status),
        None => Outcome::TimedOut,
    };
    let deadline = Instant::now() + GRACE;
    Finished { outcome, stdout: stdout.finish(deadline), stderr: stderr.finish(deadline) }
}

/// Waits for the exit status until `limit`; past it, kills the group and waits a little more.
/// Returns the status (`None` if it never came) and whether the limit was reached.
fn wait(exited: &Receiver<std::io::Result<ExitStatus>>, pgid: u32, limit: Duration) -> (Option<ExitStatus>, bool) {
    match exited.recv_timeout(limit) {
        Ok(status) => (status.ok(), false),
        Err(RecvTimeoutError::Disconnected) => (None, false),
        Err(RecvTimeoutError::Timeout) => {
            sys::kill_group(pgid);
            (exited.recv_timeout(GRACE).ok().and_then(Result::ok), true)
        }
    }
}

fn outcome_of(status: ExitStatus) -> Outcome {
    match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::Exit(code),
        (None, Some(signal)) => Outcome::Signal(signal),
        (None, None) => Outcome::NotStarted(format!("unknown wait status {status}")),
    }
}

/// A stream being read to its end on a thread.
struct Drain {
    kept: Arc<Mutex<Kept>>,
    done: Receiver<()>,
}

impl Drain {
    /// What was read, once the stream ended or at `deadline`, whichever comes first.
    fn finish(self, deadline: Instant) -> Kept {
        let _ = self.done.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        self.kept.lock().map(|kept| kept.clone()).unwrap_or_default()
    }
}

/// Reads `pipe` to its end on a thread, keeping its first `keep` bytes and counting the rest.
fn drain(pipe: Option<impl Read + Send + 'static>, keep: usize) -> Drain {
    let kept = Arc::new(Mutex::new(Kept::default()));
    let (tx, done) = mpsc::channel();
    let shared = Arc::clone(&kept);
    thread::spawn(move || {
        if let Some(mut pipe) = pipe {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let Ok(mut kept) = shared.lock() else { break };
                let room = keep.saturating_sub(kept.bytes.len()).min(n);
                kept.bytes.extend_from_slice(&buf[..room]);
                kept.total += n as u64;
            }
        }
        let _ = tx.send(());
    });
    Drain { kept, done }
}

/// The name of signal `signal` on Linux (`SIGSEGV`), or `signal N`.
pub fn signal_name(signal: i32) -> String {
    const NAMES: [&str; 31] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM",
        "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF",
        "WINCH", "IO", "PWR", "SYS",
    ];
    match usize::try_from(signal).ok().and_then(|s| s.checked_sub(1)).and_then(|i| NAMES.get(i)) {
        Some(name) => format!("SIG{name}"),
        None => format!("signal {signal}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, limit: Duration) -> Finished {
        let dir = std::env::temp_dir();
        run(Path::new("/bin/sh"), &["-c", script], &dir, Path::new("/dev/null"), limit)
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(libc::SIGSEGV), "SIGSEGV");
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(libc::SIGHUP), "SIGHUP");
        assert_eq!(signal_name(libc::SIGSYS), "SIGSYS");
        assert_eq!(signal_name(libc::SIGXFSZ), "SIGXFSZ");
        assert_eq!(signal_name(0), "signal 0");
        assert_eq!(signal_name(40), "signal 40");
        assert_eq!(signal_name(-3), "signal -3");
    }

    #[test]
    fn exit_status_and_output() {
        let done = sh("printf 'out\\n'; printf err >&2; exit 3", Duration::from_secs(20));
        assert_eq!(done.outcome, Outcome::Exit(3));
        assert_eq!(done.stdout.bytes, b"out\n");
        assert_eq!(done.stderr.bytes, b"err");
        assert!(!done.stdout.truncated());
    }

    #[test]
    fn a_signal_is_named() {
        let done = sh("kill -SEGV $$", Duration::from_secs(20));
        assert_eq!(done.outcome, Outcome::Signal(libc::SIGSEGV));
        assert_eq!(done.outcome.short(), "SIGSEGV");
    }

    #[test]
    fn a_flood_is_drained_and_only_its_start_kept() {
        let done = sh("head -c 3000000 /dev/zero", Duration::from_secs(20));
        assert_eq!(done.outcome, Outcome::Exit(0));
        assert_eq!(done.stdout.bytes.len(), KEEP_STDOUT);
        assert_eq!(done.stdout.total, 3_000_000);
        assert!(done.stdout.truncated());
    }

    #[test]
    fn a_hang_is_killed_with_its_children() {
        // The background child keeps stdout open: the run still ends, once the group is killed.
        let started = Instant::now();
        let done = sh("sleep 300 & echo started; sleep 300", Duration::from_millis(300));
        assert_eq!(done.outcome, Outcome::TimedOut);
        assert_eq!(done.stdout.bytes, b"started\n");
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    #[test]
    fn a_program_that_cannot_start() {
        let dir = std::env::temp_dir();
        let done = run(Path::new("/nonexistent/hv"), &["-m"], &dir, Path::new("/dev/null"), Duration::from_secs(1));
        assert!(matches!(&done.outcome, Outcome::NotStarted(why) if why.contains("/nonexistent/hv")));
        assert_eq!(done.outcome.short(), "no start");
    }

    #[test]
    fn stdin_comes_from_the_file() {
        let path = std::env::temp_dir().join(format!("beside-stdin-{}", std::process::id()));
        std::fs::write(&path, b"abc").unwrap();
        let dir = std::env::temp_dir();
        let done = run(Path::new("/bin/cat"), &[] as &[&str], &dir, &path, Duration::from_secs(20));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(done.stdout.bytes, b"abc");
    }
}
