//! The built hypervisor on real guests under real KVM: stdout bytes, exit status, stderr.
//! The guest images come from `guest/` (`make guests`); `make test` builds them first.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{BIN, GUARD, Guarded, guest, kvm_available, run, run_with_input};

#[test]
fn hello_prints_exactly_the_guest_output_and_exits_0() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-m", "4", "-p", "2", "-g", &guest("guest.img")]);
    assert_eq!(r.stdout(), "Hello, world!\n");
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert!(r.stderr.contains("vm0") && r.stderr.contains("halted"), "{}", r.stderr);
    let quiet = run(&["-q", "-m", "2", "-p", "4", "-g", &guest("guest.img")]);
    assert_eq!((quiet.status, quiet.stdout(), quiet.stderr.as_str()), (0, "Hello, world!\n".to_owned(), ""));
}

#[test]
fn the_template_guest_a_student_starts_from_runs() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "-m", "2", "-p", "4", "-g", &guest("template.img")]);
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout(),
        "template: hello from the guest\n1 squared is 1\n2 squared is 4\n3 squared is 9\ntemplate: done\n"
    );
}

#[test]
fn page_tables_for_all_six_memory_and_page_sizes() {
    if !kvm_available() {
        return;
    }
    for mem in [2u64, 4, 8] {
        for (page, name) in [("4", "4K"), ("2", "2M")] {
            let r = run(&["-q", "-m", &mem.to_string(), "-p", page, "-g", &guest("paging.img")]);
            assert_eq!(r.status, 0, "{}", r.stderr);
            let tables = if page == "2" { 3 } else { 3 + mem / 2 };
            let base = mem * 1024 * 1024 - tables * 4096;
            assert_eq!(
                r.stdout(),
                format!(
                    "paging: mem={mem} page={name} cr3={base:#x} rsp={base:#x} tables={tables} identity=ok above=unmapped\n"
                ),
                "-m {mem} -p {page}"
            );
        }
    }
}

#[test]
fn serial_input_is_echoed_byte_for_byte_then_eof_reads_ff() {
    if !kvm_available() {
        return;
    }
    let input: Vec<u8> = (0u8..=0xfe).chain(*b"\nline two\n").collect();
    let r = run_with_input(&["-q", "-m", "2", "-p", "2", "-g", &guest("echo.img")], &input);
    let mut expected = input.clone();
    expected.extend_from_slice(b"[eof]\n");
    assert_eq!(r.stdout, expected);
    assert_eq!(r.status, 0);
    let empty = run(&["-q", "-m", "2", "-p", "2", "-g", &guest("echo.img")]);
    assert_eq!(empty.stdout(), "[eof]\n");
}

#[test]
fn rep_outsb_and_rep_insb_move_every_byte_in_order() {
    if !kvm_available() {
        return;
    }
    let r = run_with_input(&["-q", "-m", "2", "-p", "4", "-g", &guest("stringio.img")], b"abcdefXYZ");
    assert_eq!(r.stdout(), "rep outsb ok\ngot: abcdef\n");
    assert_eq!(r.status, 0, "{}", r.stderr);
    // Input shorter than the rep insb count: the rest reads as end of file (0xFF).
    let r = run_with_input(&["-q", "-m", "2", "-p", "4", "-g", &guest("stringio.img")], b"ab");
    assert_eq!(r.stdout, b"rep outsb ok\ngot: ab\xff\xff\xff\xff\n");
}

#[test]
fn a_line_read_with_one_rep_insb() {
    if !kvm_available() {
        return;
    }
    let r = run_with_input(&["-q", "--trace", "-m", "2", "-p", "2", "-g", &guest("readline.img")], b"abcdefgh\n");
    assert_eq!((r.status, r.stdout()), (0, "type 8 chars: you typed: abcdefgh\n".to_owned()), "{}", r.stderr);
    // All 8 bytes came in one exit (count 8), and the trace shows what the guest received.
    let ins: Vec<&str> = r.stderr.lines().filter(|l| l.contains("io in port=0xe9")).collect();
    assert_eq!(ins.len(), 1, "{}", r.stderr);
    assert!(ins[0].contains("size=1 count=8 data=[61 62 63 64 65 66 67 68] \"abcdefgh\" rip="), "{}", ins[0]);
}

#[test]
fn without_access_to_dev_kvm_the_message_says_how_to_fix_it() {
    // Run as user `nobody` (needs root and setpriv); /dev/kvm is then not permitted.
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")));
    if euid != Some(true) || !std::path::Path::new("/usr/bin/setpriv").exists() {
        eprintln!("SKIP: needs root and setpriv to run as an unprivileged user");
        return;
    }
    let mut setpriv = Command::new("/usr/bin/setpriv");
    setpriv.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        BIN,
        "-m",
        "2",
        "-p",
        "2",
        "-g",
        &guest("guest.img"),
    ]);
    let mut running = Guarded::command(setpriv, GUARD);
    running.input(b"", true);
    let out = running.finish();
    let stderr = &out.stderr;
    if !stderr.contains("/dev/kvm") {
        eprintln!("SKIP: the test binary or image is not reachable for user nobody: {stderr}");
        return;
    }
    assert_eq!(out.status, 1);
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("/dev/kvm: permission denied") && stderr.contains("kvm group") && stderr.contains("sudo"),
        "{stderr}"
    );
}

#[test]
fn sse_is_enabled_in_cr0_and_cr4() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "-m", "2", "-p", "2", "-g", &guest("sse.img")]);
    assert_eq!(r.stdout(), "sse: cr0.em=0 cr0.mp=1 cr4.osfxsr=1 cr4.osxmmexcpt=1 => enabled\n");
    assert_eq!(r.status, 0);
}

#[test]
fn a_crashing_guest_fails_with_its_rip_and_keeps_its_output() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-m", "2", "-p", "2", "-g", &guest("crash.img")]);
    assert_eq!(r.status, 1);
    assert_eq!(r.stdout(), "crashing now\n", "output before the crash is flushed");
    let line = r.stderr.lines().find(|l| l.contains("failed at RIP")).unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(line.contains("vm0") && line.contains("crash.img") && line.contains("triple fault"), "{line}");
    for reg in ["rip", "rsp", "rflags", "rax", "r15", "cr0", "cr2", "cr3", "cr4", "efer"] {
        assert!(r.stderr.contains(&format!(" {reg} 0x")), "register dump lacks {reg}: {}", r.stderr);
    }
}

#[test]
fn mmio_outside_ram_and_wide_serial_access_are_guest_errors() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "-m", "4", "-p", "4", "-g", &guest("mmio.img")]);
    assert_eq!((r.status, r.stdout()), (1, "touching mmio\n".to_owned()));
    assert!(
        r.stderr.contains("MMIO write") && r.stderr.contains("0x40000000") && r.stderr.contains("RIP"),
        "{}",
        r.stderr
    );
    let r = run(&["-q", "-m", "4", "-p", "2", "-g", &guest("wide.img")]);
    assert_eq!((r.status, r.stdout()), (1, "wide out\n".to_owned()));
    assert!(r.stderr.contains("2-byte out on serial port 0xe9"), "{}", r.stderr);
}

#[test]
fn unknown_ports_are_ignored_read_ff_and_warn_once_per_port() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "-m", "2", "-p", "2", "-g", &guest("ports.img")]);
    assert_eq!(r.stdout(), "in 0x81 = 0xff\ndone\n");
    assert_eq!(r.status, 0, "{}", r.stderr);
    for port in ["0x80", "0x81", "0x3f8"] {
        let n = r.stderr.lines().filter(|l| l.contains("warning") && l.contains(&format!("port {port} "))).count();
        assert_eq!(n, 1, "one warning for port {port}: {}", r.stderr);
    }
}

/// A guest poking 1,000 unknown ports gets 16 warnings and one line saying the rest go
/// unreported, not 1,000 lines; `--trace` still shows every access.
#[test]
fn unknown_ports_beyond_sixteen_are_not_reported_one_by_one() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "-m", "2", "-p", "2", "-g", &guest("manyports.img")]);
    assert_eq!((r.status, r.stdout()), (0, "500 ins read 0xff: yes\n".to_owned()), "{}", r.stderr);
    let warnings: Vec<&str> = r.stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 17, "{}", r.stderr);
    assert!(warnings[..16].iter().all(|l| l.contains("unknown port 0x4")), "{}", r.stderr);
    assert!(warnings[16].ends_with("more unknown ports: not reported any more (--trace shows every access)"));
    let traced = run(&["-q", "--trace", "-m", "2", "-p", "2", "-g", &guest("manyports.img")]);
    let ports = traced.stderr.lines().filter(|l| l.contains(" port=0x") && !l.contains(" port=0xe9 ")).count();
    assert!(ports >= 1000, "--trace shows every access: {ports} lines");
}

#[test]
fn bad_images_are_refused_before_any_vm_starts() {
    let dir = std::env::temp_dir().join(format!("mh_images_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    let big = dir.join("big.img");
    std::fs::write(&big, vec![0xf4u8; 2 * 1024 * 1024 - 4 * 4096 + 1]).unwrap();
    let cases = [
        (empty.to_str().unwrap().to_owned(), "empty"),
        (big.to_str().unwrap().to_owned(), "do not fit"),
        (dir.join("missing.img").to_str().unwrap().to_owned(), "No such file"),
        (dir.to_str().unwrap().to_owned(), "directory"),
    ];
    for (path, why) in &cases {
        let r = run(&["-m", "2", "-p", "4", "-g", path]);
        assert_eq!(r.status, 1, "{path}: {}", r.stderr);
        assert!(r.stdout.is_empty());
        assert!(r.stderr.contains(path.as_str()) && r.stderr.contains(why), "{path}: {}", r.stderr);
        assert!(!r.stderr.contains("vm0"), "no VM was created: {}", r.stderr);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn timeout_stops_a_spinning_guest_and_one_waiting_for_input() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-m", "2", "-p", "2", "--timeout", "1", "-g", &guest("spin.img")]);
    assert_eq!((r.status, r.stdout()), (1, "spinning\n".to_owned()));
    assert!(r.stderr.contains("timed out after 1 s") && r.stderr.contains("RIP"), "{}", r.stderr);

    // echo.img blocks on stdin, which stays open: the kick must interrupt the read.
    let args = ["-q", "-m", "2", "-p", "2", "--timeout", "1", "-g", &guest("echo.img")];
    let mut running = Guarded::spawn(&std::env::temp_dir(), &args, Duration::from_secs(20));
    running.input(b"typed", false);
    let out = running.finish();
    assert_eq!(out.status, 1);
    assert_eq!(out.stdout, b"typed", "echoed bytes are flushed when the VM is stopped");
    assert!(out.stderr.contains("timed out"), "{}", out.stderr);
}

/// The milliseconds of the closing line "vm0 (...): halted|failed after N exits in X ms".
fn wall_ms(stderr: &str) -> f64 {
    let line = stderr.lines().find(|l| l.contains(" exits in ")).unwrap_or_else(|| panic!("no closing line: {stderr}"));
    let ms = line.rsplit(" in ").next().and_then(|t| t.strip_suffix(" ms"));
    ms.and_then(|t| t.parse().ok()).unwrap_or_else(|| panic!("no time in {line:?}"))
}

/// `--timeout` counts from the VM's start (created, about to run its first instruction), the
/// same in every version (docs/REFERENCE.md §2): a guest that halts well before it exits 0;
/// one that spins is stopped at it, not before (the VM's own time, from that same start, is
/// at least the timeout), and the report gives the value as given.
#[test]
fn a_timeout_counts_from_the_vms_start_and_stops_only_a_guest_still_running() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-m", "2", "-p", "2", "--timeout", "10", "-g", &guest("guest.img")]);
    assert_eq!((r.status, r.stdout()), (0, "Hello, world!\n".to_owned()), "{}", r.stderr);
    assert!(wall_ms(&r.stderr) < 10_000.0, "{}", r.stderr);
    for page in ["2", "4"] {
        let r = run(&["-m", "8", "-p", page, "--timeout", "0.2", "-g", &guest("spin.img")]);
        assert_eq!((r.status, r.stdout()), (1, "spinning\n".to_owned()), "{}", r.stderr);
        assert!(r.stderr.contains("): timed out after 0.2 s"), "{}", r.stderr);
        assert!(wall_ms(&r.stderr) >= 200.0, "stopped before its 0.2 s: {}", r.stderr);
    }
}

#[test]
fn ctrl_c_stops_the_vm_and_keeps_its_output() {
    if !kvm_available() {
        return;
    }
    let args = ["--trace", "-m", "2", "-p", "2", "-g", &guest("spin.img")];
    let mut running = Guarded::spawn(&std::env::temp_dir(), &args, GUARD);
    running.input(b"", true);
    // Wait until the guest has written "spinning\n": --trace reports each exit on stderr,
    // and the last byte is the newline (0x0a). Its output is still in the buffer then.
    running.wait_for_stderr("the guest wrote its newline", |s| s.contains("data=[0a]"));
    let kill = Command::new("kill").args(["-INT", &running.pid().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = running.finish();
    assert_eq!(out.status, 1, "{}", out.stderr);
    assert_eq!(out.stdout, b"spinning\n", "output flushed though interrupted");
    assert!(out.stderr.contains("interrupted (SIGINT/SIGTERM)"), "{}", out.stderr);
}

#[test]
fn usage_errors_exit_2_with_one_line_and_a_pointer_to_help_and_help_exits_0() {
    for (args, line) in [
        (&["-m", "3", "-p", "2", "-g", "x.img"][..], "invalid memory size '3': use 2, 4 or 8 (MiB)"),
        (&["-p", "2", "-g", "x.img"], "missing -m/--memory <2|4|8>"),
        (&["-m", "2", "-p", "2", "-g", "a", "--bogus"], "unknown option '--bogus'"),
    ] {
        let r = run(args);
        assert_eq!(r.status, 2, "{args:?}");
        assert!(r.stdout.is_empty());
        assert_eq!(
            r.stderr,
            format!("mini_hypervisor: {line}\nTry 'mini_hypervisor --help' for more information.\n"),
            "{args:?}"
        );
    }
    let r = run(&["--help"]);
    assert_eq!(r.status, 0);
    assert!(r.stdout().starts_with("Usage: mini_hypervisor"));
    let r = run(&["--version"]);
    assert_eq!(r.status, 0);
    assert!(r.stdout().starts_with("mini_hypervisor "));
}

#[test]
fn stats_and_trace_describe_the_exits() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "--stats", "--trace", "-m", "2", "-p", "2", "-g", &guest("guest.img")]);
    assert_eq!((r.status, r.stdout()), (0, "Hello, world!\n".to_owned()));
    // "Hello, world!\n" is 14 one-byte outs, then hlt.
    assert_eq!(
        r.stderr.lines().filter(|l| l.starts_with("trace: ") && l.contains("io out port=0xe9")).count(),
        14,
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("exits: 15 total, 1 hlt, 0 other"), "{}", r.stderr);
    assert!(r.stderr.contains("port 0x00e9: 14 out exits (14 bytes), 0 in exits (0 bytes)"), "{}", r.stderr);
    assert!(r.stderr.contains("in KVM_RUN") && r.stderr.contains("handling exits"), "{}", r.stderr);
    // guest.elf lies beside guest.img: every RIP is named (docs/REFERENCE.md §8).
    let traced: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("trace: ")).collect();
    assert!(traced.iter().all(|l| l.contains(" rip=0x") && l.contains(" in ")), "{}", r.stderr);
    assert!(traced.last().is_some_and(|l| l.contains(": hlt rip=") && l.contains(" in _start+0x")), "{}", r.stderr);
}
