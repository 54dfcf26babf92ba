//! Port 0xE9 output through KVM's coalesced ring: the same bytes as with one exit per byte,
//! in order with `in`, errors and the VM's end, and on a terminal without waiting for an exit.

use crate::common;

use std::process::Command;

use common::{BIN, GUARD, Guarded, guest, kvm_available, run_with_input};

/// chatty.img's output before it reads its command byte.
fn chatty_lines() -> String {
    (0..8).map(|i| format!("line {i}: {}\n", ".".repeat(56))).collect()
}

#[test]
fn output_through_the_ring_is_byte_for_byte_the_same_and_counted_apart_from_exits() {
    if !kvm_available() {
        return;
    }
    for (command, tail) in [("x", "done\n"), ("s", "rep outsb through the ring\n")] {
        let image = guest("chatty.img");
        let ring = run_with_input(&["--stats", "-m", "2", "-p", "2", "-g", &image], command.as_bytes());
        let plain =
            run_with_input(&["--stats", "--no-coalesce", "-m", "2", "-p", "2", "-g", &image], command.as_bytes());
        let expected = chatty_lines() + tail;
        assert_eq!((ring.status, ring.stdout()), (0, expected.clone()), "{}", ring.stderr);
        assert_eq!((plain.status, plain.stdout()), (0, expected), "{}", plain.stderr);
        assert!(ring.stderr.contains("serial ring: "), "{}", ring.stderr);
        assert!(!plain.stderr.contains("serial ring"), "--no-coalesce: one exit per byte: {}", plain.stderr);
        let exits = |stderr: &str| -> u64 {
            let line = stderr.lines().find(|l| l.contains("exits: ")).expect("--stats exits line");
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        assert!(exits(&ring.stderr) < exits(&plain.stderr) - 20, "{}\n{}", ring.stderr, plain.stderr);
    }
}

#[test]
fn trace_shows_each_drain_and_its_ring_slots() {
    if !kvm_available() {
        return;
    }
    let r = run_with_input(&["-q", "--trace", "-m", "2", "-p", "2", "-g", &guest("chatty.img")], b"x");
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert!(r.stderr.contains("serial port 0xe9 now goes through the coalesced ring"), "{}", r.stderr);
    let drains: Vec<&str> = r.stderr.lines().filter(|l| l.contains("ring drain: ")).collect();
    assert!(!drains.is_empty(), "{}", r.stderr);
    assert!(drains[0].contains("serial bytes from slots 0..="), "{}", drains[0]);
}

#[test]
fn input_and_output_stay_in_order_through_the_ring() {
    if !kvm_available() {
        return;
    }
    // echo.img answers each `in` with an `out`: past 256 bytes the outs go through the ring,
    // and every `in` must first see the earlier bytes drained.
    let input: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let r = run_with_input(&["-q", "-m", "2", "-p", "2", "-g", &guest("echo.img")], &input);
    let mut expected = input.clone();
    expected.extend_from_slice(b"[eof]\n");
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert!(r.stdout == expected, "echoed bytes differ");
}

#[test]
fn a_wide_access_to_the_serial_port_is_still_a_guest_error_once_the_ring_is_on() {
    if !kvm_available() {
        return;
    }
    let r = run_with_input(&["-q", "-m", "2", "-p", "2", "-g", &guest("chatty.img")], b"w");
    assert_eq!(r.status, 1);
    assert_eq!(r.stdout(), chatty_lines() + "wide out\n", "everything before the error, nothing after");
    assert!(r.stderr.contains("guest error: 2-byte out on serial port 0xe9"), "{}", r.stderr);
}

#[test]
fn on_a_terminal_a_line_shows_up_while_the_guest_computes_without_exits() {
    if !kvm_available() {
        return;
    }
    // script(1) gives the hypervisor a terminal for stdout (and stdin) and copies it to us.
    if Command::new("script").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "script(1) (util-linux) is needed in CI");
        eprintln!("SKIP: no script(1) to run the hypervisor on a terminal");
        return;
    }
    let inner = format!("{BIN} -q -m 2 -p 2 --timeout 600 -g {}", guest("chatty.img"));
    let mut command = Command::new("script");
    command.args(["-qfec", &inner, "/dev/null"]);
    let mut running = Guarded::command(command, GUARD);
    running.input(b"l\n", false); // the terminal hands the byte over at the newline
    // The guest writes "ready\n" into the ring and then never exits again: without the
    // watchdog's drain kick the line would wait for the timeout, past this test's guard.
    running.wait_for_stdout("the guest's ready line", |out| String::from_utf8_lossy(out).contains("ready"));
}
