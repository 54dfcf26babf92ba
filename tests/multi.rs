//! Version B under real KVM: several VMs at once, whole prefixed lines, isolated failures.

use crate::common;

use std::process::Command;

use common::{BIN, GUARD, Guarded, guest, kvm_available, lines_of, run, run_with_input};

fn every_line_is_prefixed(stdout: &str, vms: usize) {
    assert!(stdout.ends_with('\n'), "whole lines only: {stdout:?}");
    for line in stdout.lines() {
        let ok = (0..vms).any(|i| line.starts_with(&format!("[vm{i}] ")));
        assert!(ok, "line without a VM prefix (interleaved?): {line:?}");
    }
}

#[test]
fn two_vms_write_whole_prefixed_lines_each_in_order() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "-m", "2", "-p", "4", "-g", &guest("counter.img"), &guest("counter.img")]);
    assert_eq!(r.status, 0, "{}", r.stderr);
    let out = r.stdout();
    every_line_is_prefixed(&out, 2);
    let expected: Vec<String> = (1..=5).map(|i| format!("count {i}")).collect();
    assert_eq!(lines_of(&out, 0), expected);
    assert_eq!(lines_of(&out, 1), expected);
}

#[test]
fn a_crashing_vm_does_not_stop_the_others() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-m", "2", "-p", "2", "-g", &guest("counter.img"), &guest("crash.img"), &guest("guest.img")]);
    assert_eq!(r.status, 1, "one VM failed");
    let out = r.stdout();
    every_line_is_prefixed(&out, 3);
    assert_eq!(lines_of(&out, 0).len(), 5, "vm0 ran to the end: {out}");
    assert_eq!(lines_of(&out, 1), ["crashing now"]);
    assert_eq!(lines_of(&out, 2), ["Hello, world!"]);
    assert!(r.stderr.contains("vm1 (") && r.stderr.contains("crash.img): failed at RIP"), "{}", r.stderr);
    assert!(r.stderr.contains("vm0 (") && r.stderr.contains("counter.img): halted"), "{}", r.stderr);
}

#[test]
fn sixty_four_vms_of_2_mib_all_halt() {
    if !kvm_available() {
        return;
    }
    let hello = guest("guest.img");
    let mut args = vec!["-q", "-m", "2", "-p", "4", "-g"];
    args.extend(std::iter::repeat_n(hello.as_str(), 64));
    let r = run(&args);
    assert_eq!(r.status, 0, "{}", r.stderr);
    let out = r.stdout();
    every_line_is_prefixed(&out, 64);
    for vm in 0..64 {
        assert_eq!(lines_of(&out, vm), ["Hello, world!"], "vm{vm}");
    }
    assert_eq!(out.lines().count(), 64);
}

#[test]
fn a_missing_image_among_several_starts_no_vm() {
    let r = run(&["-m", "2", "-p", "2", "-g", &guest("guest.img"), "/nonexistent/second.img", &guest("guest.img")]);
    assert_eq!(r.status, 1);
    assert!(r.stdout.is_empty(), "no guest output: {:?}", r.stdout());
    assert!(r.stderr.contains("/nonexistent/second.img") && !r.stderr.contains("vm0"), "{}", r.stderr);
}

#[test]
fn an_unfinished_last_line_is_written_with_a_newline() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "-m", "2", "-p", "2", "-g", &guest("partial.img"), &guest("guest.img")]);
    assert_eq!(r.status, 0);
    let out = r.stdout();
    every_line_is_prefixed(&out, 2);
    assert_eq!(lines_of(&out, 0), ["complete line", "unfinished"]);
    // One VM: byte-exact, no prefix and no newline added.
    let r = run(&["-q", "-m", "2", "-p", "2", "-g", &guest("partial.img")]);
    assert_eq!(r.stdout(), "complete line\nunfinished");
}

#[test]
fn timeout_stops_a_spinning_vm_while_another_finishes() {
    if !kvm_available() {
        return;
    }
    let r = run(&["--timeout", "2", "-m", "2", "-p", "2", "-g", &guest("spin.img"), &guest("counter.img")]);
    assert_eq!(r.status, 1);
    let out = r.stdout();
    assert_eq!(lines_of(&out, 0), ["spinning"]);
    assert_eq!(lines_of(&out, 1).len(), 5, "{out}");
    assert!(r.stderr.contains("vm0 (") && r.stderr.contains("timed out after 2 s"), "{}", r.stderr);
    assert!(r.stderr.contains("counter.img): halted"), "{}", r.stderr);
}

/// Each VM's `--timeout` counts from its own start (docs/REFERENCE.md §2), not from a clock
/// the watchdog started before the VMs were made: of 16 VMs, made one after another, even the
/// last runs its full 0.2 s (its closing line's time counts from the same start).
#[test]
fn each_vm_gets_its_whole_timeout_however_late_it_started() {
    if !kvm_available() {
        return;
    }
    let spin = guest("spin.img");
    let mut args = vec!["-m", "2", "-p", "2", "--timeout", "0.2", "-g"];
    args.extend([spin.as_str(); 16]);
    let r = run(&args);
    assert_eq!(r.status, 1, "{}", r.stderr);
    let times: Vec<f64> = r
        .stderr
        .lines()
        .filter_map(|l| l.split_once(": failed after ")?.1.rsplit(" in ").next()?.strip_suffix(" ms")?.parse().ok())
        .collect();
    assert_eq!(times.len(), 16, "{}", r.stderr);
    assert!(times.iter().all(|&ms| ms >= 200.0), "a VM stopped before its 0.2 s: {times:?}");
    assert_eq!(r.stderr.matches("timed out after 0.2 s").count(), 16, "{}", r.stderr);
}

#[test]
fn stdin_is_shared_each_byte_going_to_one_vm() {
    if !kvm_available() {
        return;
    }
    let input = b"abcdefghijklmnop";
    let r = run_with_input(&["-q", "-m", "2", "-p", "2", "-g", &guest("echo.img"), &guest("echo.img")], input);
    assert_eq!(r.status, 0, "{}", r.stderr);
    let out = r.stdout();
    every_line_is_prefixed(&out, 2);
    let mut echoed: Vec<u8> = Vec::new();
    for vm in 0..2 {
        let text = lines_of(&out, vm).concat();
        let bytes = text.strip_suffix("[eof]").unwrap_or_else(|| panic!("vm{vm} saw end of file: {out}"));
        // Each VM got its bytes in stdin order.
        assert!(bytes.as_bytes().windows(2).all(|w| w[0] < w[1]), "vm{vm}: {bytes}");
        echoed.extend_from_slice(bytes.as_bytes());
    }
    echoed.sort();
    assert_eq!(echoed, input, "every byte went to exactly one VM");
}

#[test]
fn timeout_stops_vms_that_all_wait_for_a_stdin_that_never_ends() {
    if !kvm_available() {
        return;
    }
    // Both echo.img VMs wait for input: one in read(2), the other for the stdin lock.
    let args = ["-q", "--timeout", "1", "-m", "2", "-p", "2", "-g", &guest("echo.img"), &guest("echo.img")];
    let mut running = Guarded::spawn(&std::env::temp_dir(), &args, GUARD);
    running.input(b"", false); // stdin stays open: no end of file
    let out = running.finish();
    assert_eq!(out.status, 1);
    assert_eq!(out.stderr.matches("timed out after 1 s").count(), 2, "{}", out.stderr);
}

/// Runs the binary under `prlimit --as=LIMIT` (address space, bytes); `None` if it was killed
/// by a signal (an allocation that failed outside our control aborts).
fn run_with_address_space(limit: u64, args: &[String]) -> Option<(i32, String)> {
    let mut command = Command::new("prlimit");
    command.arg(format!("--as={limit}")).arg("--").arg(BIN).args(args);
    let mut running = Guarded::command(command, GUARD);
    running.input(b"", true);
    running.try_finish().map(|r| (r.status, r.stderr))
}

/// Each VM is created on its own thread (as the C's `run_vm` does): one that cannot be
/// created, or whose thread cannot start, fails alone and says why, and the others run.
#[test]
fn a_vm_that_cannot_start_fails_alone_and_says_why_even_with_q() {
    if !kvm_available() {
        return;
    }
    if Command::new("prlimit").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "prlimit(1) (util-linux) is needed in CI");
        eprintln!("SKIP: no prlimit(1)");
        return;
    }
    let mut args: Vec<String> = ["-q", "-m", "2", "-p", "2", "-g"].map(String::from).to_vec();
    args.extend(std::iter::repeat_n(guest("guest.img"), 20));
    // The smallest address-space limit under which every VM runs (64 KiB precision)...
    let (mut lo, mut hi) = (8u64 << 20, 1u64 << 30);
    assert_eq!(run_with_address_space(hi, &args).map(|r| r.0), Some(0), "20 VMs run in 1 GiB");
    while hi - lo > 64 << 10 {
        let mid = (lo + hi) / 2;
        if run_with_address_space(mid, &args).is_some_and(|r| r.0 == 0) { hi = mid } else { lo = mid }
    }
    // ...and below it, some VMs cannot start while the others run (within the next 8 MiB: below
    // some limits an allocation of the runtime fails first, and aborts the process, or ends a new
    // thread in std's own set-up with a one-line internal error, which never hangs).
    for step in 1..=512 {
        let Some((status, stderr)) = run_with_address_space(hi - step * (16 << 10), &args) else { continue };
        let failed: Vec<&str> = stderr.lines().filter(|l| l.contains(": failed: cannot ")).collect();
        if failed.is_empty() || failed.len() == 20 || stderr.contains("mini_hypervisor: internal error: ") {
            continue;
        }
        assert_eq!(status, 1, "{stderr}");
        for line in &failed {
            assert!(
                line.starts_with("mini_hypervisor: vm")
                    && (line.contains(": failed: cannot start its thread: ")
                        || line.contains(": failed: cannot create the VM: ")),
                "{line}"
            );
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
        return;
    }
    panic!("no address-space limit made some VMs fail to start while others ran (limit found: {hi} bytes)");
}
