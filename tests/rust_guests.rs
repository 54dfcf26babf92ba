//! The Rust guests of `guest/` (`rs_*.rs`, built by `make guests` with the hv library in
//! `guest/rust/hv/`) on the built hypervisor under real KVM: stdout bytes, exit status, and the
//! hypervisor's report of a panic and of a page fault; and gdb on a Rust guest's ELF.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{Guarded, gdb_installed, guest, kvm_available, run, run_with_input};

const HELLO: &str = "Hello from Rust!\nfib(20) = 6765\n";

#[test]
fn rs_hello_prints_and_halts_in_every_memory_and_page_size() {
    if !kvm_available() {
        return;
    }
    for (mem, page) in [("2", "4"), ("2", "2"), ("4", "4"), ("8", "2")] {
        let r = run(&["-m", mem, "-p", page, "-g", &guest("rs_hello.img")]);
        assert_eq!((r.status, r.stdout()), (0, HELLO.to_owned()), "-m {mem} -p {page}: {}", r.stderr);
        assert!(r.stderr.contains("halted"), "{}", r.stderr);
        assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    }
}

/// The Rust template the README quotes, as template.c is for C.
#[test]
fn rs_template_prints_its_squares_and_halts() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "-m", "2", "-p", "2", "-g", &guest("rs_template.img")]);
    let expected = "template: hello from the guest\n1 squared is 1\n2 squared is 4\n3 squared is 9\ntemplate: done\n";
    assert_eq!((r.status, r.stdout(), r.stderr.as_str()), (0, expected.to_owned(), ""));
}

#[test]
fn rs_counter_counts_stdin_to_its_end() {
    if !kvm_available() {
        return;
    }
    let args = ["-q", "-m", "2", "-p", "4", "-g", &guest("rs_counter.img")];
    let r = run_with_input(&args, b"one two\nthree\n");
    assert_eq!((r.status, r.stdout(), r.stderr.as_str()), (0, "lines 2, words 3, bytes 14\n".to_owned(), ""));
    let r = run(&args);
    assert_eq!((r.status, r.stdout()), (0, "lines 0, words 0, bytes 0\n".to_owned()), "{}", r.stderr);
    // Every byte but 0xFF (which reads as the end), then a last line without a newline: 7 words
    // (the 4 runs of bytes 0..=254 between \t \n \r and space, then last, word, end).
    let input: Vec<u8> = (0u8..0xff).chain(*b"\tlast  word\r\nend").collect();
    let r = run_with_input(&args, &input);
    assert_eq!(r.stdout(), format!("lines 2, words 7, bytes {}\n", input.len()), "{}", r.stderr);
}

#[test]
fn rs_panic_prints_where_and_why_then_fails_in_hv_fail() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-m", "2", "-p", "4", "-g", &guest("rs_panic.img")]);
    assert_eq!(r.status, 1, "{}", r.stderr);
    assert_eq!(
        r.stdout(),
        "day 0 is mon\nday 1 is tue\nday 2 is wed\n\
         panicked at rs_panic.rs:34: index out of bounds: the len is 3 but the index is 3\n"
    );
    let line = r.stderr.lines().find(|l| l.contains("failed at RIP")).unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(line.contains("in hv_fail+") && line.contains("triple fault"), "{line}");
    assert!(r.stderr.contains("ud2") && r.stderr.contains("IDTR limit 0"), "{}", r.stderr);
    // The backtrace follows the frame pointers from hv_fail out to the student's line.
    let chain = r.stderr.split("  backtrace:\n").nth(1).unwrap_or_else(|| panic!("{}", r.stderr));
    let chain: Vec<_> = chain.lines().take_while(|l| l.starts_with("    ")).collect();
    let at_index = chain.iter().position(|l| l.contains(" in rs_panic::main+") && l.ends_with(" (rs_panic.rs:34)"));
    assert!(at_index.is_some_and(|n| n >= 2), "{chain:?}");
    assert!(chain.last().is_some_and(|l| l.ends_with(" in _start+0xd")), "{chain:?}");
    // A message without arguments (assert! with a plain string) is printed as it is.
    let r = run_with_input(&["-q", "-m", "2", "-p", "2", "-g", &guest("rs_panic.img")], b"a");
    assert_eq!((r.status, r.stdout()), (1, "panicked at rs_panic.rs:38: a week has seven days\n".to_owned()));
}

#[test]
fn rs_pagefault_is_reported_at_its_function_and_line() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-m", "2", "-p", "2", "-g", &guest("rs_pagefault.img")]);
    assert_eq!((r.status, r.stdout()), (1, "writing to 0x40000000\n".to_owned()), "{}", r.stderr);
    let line = r.stderr.lines().find(|l| l.contains("failed at RIP")).unwrap_or_else(|| panic!("{}", r.stderr));
    // The function by its path, demangled from its v0 symbol (_RNvCs..._12rs_pagefault5store).
    assert!(line.contains(" in rs_pagefault::store+0x4 (rs_pagefault.rs:30): "), "{line}");
    assert!(!r.stderr.contains("_RNv"), "no mangled name: {}", r.stderr);
    assert!(line.contains("triple fault"), "{line}");
    assert!(r.stderr.contains("page fault at 0x40000000 (CR2): beyond the 2 MiB of RAM"), "{}", r.stderr);
    let chain = r.stderr.split("  backtrace:\n").nth(1).unwrap_or_else(|| panic!("{}", r.stderr));
    let frames: Vec<_> = chain
        .lines()
        .take_while(|l| l.starts_with("    "))
        .map(|l| l.split_once(" in ").map_or(l, |(_, f)| f))
        .collect();
    assert_eq!(frames.len(), 3, "{chain}");
    assert!(frames[0].starts_with("rs_pagefault::store+0x4 (rs_pagefault.rs:30)"), "{chain}");
    assert!(frames[1].starts_with("guest_main+") && frames[1].ends_with(" (rs_pagefault.rs:19)"), "{chain}");
    assert_eq!(frames[2], "_start+0xd", "{chain}");
}

/// gdb 13 on rs_hello.elf: a breakpoint on a Rust function, an argument, the backtrace through
/// the hv library's `_start`, `finish` with the value returned, `next`, and the run to the end.
#[test]
fn gdb_breaks_on_a_rust_function_and_walks_its_stack() {
    if !kvm_available() || !gdb_installed() {
        return;
    }
    let guard = Duration::from_secs(60);
    let port = common::free_port().to_string();
    let args = ["-m", "2", "-p", "4", "--gdb", &port, "-g", &guest("rs_hello.img")];
    let mut hv = Guarded::spawn(&std::env::temp_dir(), &args, guard);
    hv.input(b"", true);
    hv.wait_for_stderr("the waiting for GDB line", |e| e.contains("waiting for GDB"));
    let mut cmd = Command::new("gdb");
    cmd.args(["-batch", "-nx", "-ex", "set confirm off", "-ex", "set pagination off"]);
    cmd.arg(guest("rs_hello.elf"));
    cmd.args(["-ex", &format!("target remote 127.0.0.1:{port}")]);
    for c in ["break rs_hello::fib", "continue", "print n", "backtrace", "delete", "finish", "next", "continue"] {
        cmd.args(["-ex", c]);
    }
    let mut gdb = Guarded::command(cmd, guard);
    gdb.input(b"", true);
    let gdb = gdb.finish();
    let out = format!("{}{}", gdb.stdout(), gdb.stderr);
    for wanted in [
        "Breakpoint 1, rs_hello::fib (n=20) at rs_hello.rs:11",
        "$1 = 20",
        "in rs_hello::main () at rs_hello.rs:17",
        "in _start ()",
        "Value returned is $2 = 6765",
        "18\t    hv::putln!(\"fib(\", n, \") = \", result);",
        "[Inferior 1 (Remote target) exited normally]",
    ] {
        assert!(out.contains(wanted), "missing {wanted:?} in:\n{out}");
    }
    assert!(!out.contains("Internal error"), "{out}");
    let r = hv.finish();
    assert_eq!((r.status, r.stdout()), (0, HELLO.to_owned()), "{}", r.stderr);
}
