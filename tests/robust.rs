//! Nothing hangs and nothing panics: a stdout nobody reads, a stderr that cannot be written.

use crate::common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{BIN, GUARD, Guarded, guest, kvm_available, temp_dir};

/// Runs the binary with stdout a pipe that nobody reads (kept open), stderr collected; once
/// stderr shows `signal_after`, sends SIGTERM. Kills it and fails past `guard`. Returns the
/// exit status and stderr.
fn run_with_stuck_stdout(args: &[&str], signal_after: Option<&str>, guard: Duration) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stdout = child.stdout.take().unwrap(); // open, never read: writes block once it is full
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stderr.read(&mut buf) {
            let _ = tx.send(buf[..n].to_vec());
        }
    });
    let deadline = Instant::now() + guard;
    let (mut text, mut signal_after) = (Vec::new(), signal_after);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(chunk) => text.extend_from_slice(&chunk),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("still running after {} s: {args:?}", guard.as_secs());
            }
        }
        if signal_after.is_some_and(|line| String::from_utf8_lossy(&text).contains(line)) {
            signal_after = None;
            assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
        }
    }
    let status = child.wait().unwrap().code().expect("exited, not killed by a signal");
    (status, String::from_utf8_lossy(&text).into_owned())
}

#[test]
fn a_timeout_stops_a_vm_blocked_writing_to_a_stdout_nobody_reads() {
    if !kvm_available() {
        return;
    }
    // bench_out.img writes 250,000 bytes: far more than a pipe holds.
    let args = ["-m", "2", "-p", "2", "--timeout", "1", "-g", &guest("bench_out.img")];
    let (status, stderr) = run_with_stuck_stdout(&args, None, Duration::from_secs(30));
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("timed out after 1 s"), "{stderr}");
}

#[test]
fn sigterm_stops_a_vm_blocked_writing_to_a_stdout_nobody_reads() {
    if !kvm_available() {
        return;
    }
    // Without --timeout: version A then runs its one VM on the main thread.
    let args = ["-m", "2", "-p", "2", "-g", &guest("bench_out.img")];
    let (status, stderr) = run_with_stuck_stdout(&args, Some("byte image"), Duration::from_secs(30));
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("interrupted (SIGINT/SIGTERM)"), "{stderr}");
}

/// Runs the binary through sh with stderr redirected as `redirect` says (`2>/dev/full`, `2>&-`).
fn run_with_stderr(redirect: &str, args: &[&str]) -> i32 {
    let script = format!("exec \"$0\" \"$@\" {redirect}");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .arg(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let id = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(status) => status.unwrap().code().expect("exited, not killed by a signal"),
        Err(_) => {
            let _ = Command::new("kill").arg("-KILL").arg(id.to_string()).status();
            panic!("still running after 30 s: {args:?} {redirect}");
        }
    }
}

#[test]
fn a_stderr_that_cannot_be_written_never_panics_and_the_exit_status_still_tells() {
    if !kvm_available() {
        return;
    }
    let hello = guest("guest.img");
    let crash = guest("crash.img");
    for redirect in ["2>/dev/full", "2>&-"] {
        for quiet in [false, true] {
            let q = if quiet { "-q" } else { "--stats" };
            assert_eq!(run_with_stderr(redirect, &[q, "-m", "2", "-p", "2", "-g", &hello]), 0, "{redirect} {q}");
            assert_eq!(run_with_stderr(redirect, &[q, "-m", "2", "-p", "2", "-g", &crash]), 1, "{redirect} {q}");
        }
        assert_eq!(run_with_stderr(redirect, &["-m", "3", "-p", "2", "-g", &hello]), 2, "usage error {redirect}");
        assert_eq!(run_with_stderr(redirect, &["-m", "2", "-p", "2", "-g", "/nonexistent.img"]), 1, "{redirect}");
    }
}

/// coreutils `timeout` sends SIGTERM to the hypervisor and then to its process group: two
/// signals in quick succession. They are one request to stop, and what the guest printed
/// reaches stdout (a file here) every time.
#[test]
fn two_sigterms_at_once_from_timeout_1_lose_no_output() {
    if !kvm_available() {
        return;
    }
    if Command::new("timeout").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "timeout(1) (coreutils) is needed in CI");
        eprintln!("SKIP: no timeout(1)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("mh_timeout1_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out");
    for run in 0..8 {
        let script = format!("timeout 0.3 '{BIN}' -q -m 2 -p 4 -g '{}' > '{}'", guest("spin.img"), out.display());
        let mut command = Command::new("sh");
        command.arg("-c").arg(script);
        let mut running = Guarded::command(command, GUARD);
        running.input(b"", true);
        let r = running.finish();
        assert_eq!(r.status, 124, "timeout(1) ended it (run {run}): {}", r.stderr);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "spinning\n", "run {run}: {}", r.stderr);
        assert!(r.stderr.contains("interrupted (SIGINT/SIGTERM)"), "run {run}: {}", r.stderr);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What flood.img writes before its sign on stderr: every byte of it.
fn flood_output() -> Vec<u8> {
    (0..1000).flat_map(|i| format!("flood line {i} of 1000 ..........\n").into_bytes()).collect()
}

/// Every signal that ends a terminal session or asks a program to end stops the run as SIGTERM
/// does (docs/REFERENCE.md §9): exit status 1, the VM reported as interrupted by that signal,
/// and stdout (a file, so block-buffered) holds every byte the guest wrote before the signal.
/// flood.img says on stderr that all its output has reached the serial port (the last of it
/// still in the hypervisor's buffer), then computes for ever: the signal is sent then.
#[test]
fn every_stop_signal_ends_the_run_as_sigterm_does_and_loses_no_output() {
    if !kvm_available() {
        return;
    }
    let dir = temp_dir("stop_signals");
    let flood = guest("flood.img");
    let cases = [
        ("HUP", "interrupted (SIGHUP)"),
        ("QUIT", "interrupted (SIGQUIT)"),
        ("USR1", "interrupted (SIGUSR1)"),
        ("USR2", "interrupted (SIGUSR2)"),
        ("INT", "interrupted (SIGINT/SIGTERM)"),
        ("TERM", "interrupted (SIGINT/SIGTERM)"),
    ];
    for (signal, report) in cases {
        let out = dir.join(format!("stdout_{signal}"));
        let file = std::fs::File::create(&out).unwrap();
        let mut hv = Guarded::spawn_to(&dir, &["-m", "2", "-p", "2", "-g", &flood], GUARD, file);
        hv.wait_for_stderr("flood.img's sign", |e| e.contains("unknown port 0x80"));
        let sent = Command::new("kill").arg(format!("-{signal}")).arg(hv.pid().to_string()).status().unwrap();
        assert!(sent.success(), "kill -{signal}");
        let r = hv.try_finish().unwrap_or_else(|| panic!("SIG{signal} killed the hypervisor"));
        assert_eq!(r.status, 1, "SIG{signal}: {}", r.stderr);
        assert!(r.stderr.contains("flood.img): failed at RIP "), "SIG{signal}: {}", r.stderr);
        assert!(r.stderr.contains(report), "SIG{signal}: {}", r.stderr);
        let written = std::fs::read(&out).unwrap();
        assert!(
            written == flood_output(),
            "SIG{signal}: stdout has {} of the {} bytes",
            written.len(),
            flood_output().len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
