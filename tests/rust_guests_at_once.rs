//! Several Rust (and C) guests at once, in the versions that run several VMs (B and C).

use crate::common;

use common::{guest, kvm_available, lines_of, run};

#[test]
fn rust_and_c_guests_side_by_side_two_fail_the_others_run_to_their_end() {
    if !kvm_available() {
        return;
    }
    let images = ["rs_hello.img", "rs_counter.img", "rs_panic.img", "rs_pagefault.img", "guest.img"];
    let paths: Vec<String> = images.iter().map(|i| guest(i)).collect();
    let mut args = vec!["-m", "2", "-p", "2", "-g"];
    args.extend(paths.iter().map(String::as_str));
    let r = run(&args); // stdin empty: rs_counter counts nothing, rs_panic reads no `a`
    assert_eq!(r.status, 1, "two VMs failed: {}", r.stderr);
    let out = r.stdout();
    assert_eq!(lines_of(&out, 0), ["Hello from Rust!", "fib(20) = 6765"]);
    assert_eq!(lines_of(&out, 1), ["lines 0, words 0, bytes 0"]);
    assert_eq!(
        lines_of(&out, 2),
        [
            "day 0 is mon",
            "day 1 is tue",
            "day 2 is wed",
            "panicked at rs_panic.rs:34: index out of bounds: the len is 3 but the index is 3"
        ]
    );
    assert_eq!(lines_of(&out, 3), ["writing to 0x40000000"]);
    assert_eq!(lines_of(&out, 4), ["Hello, world!"]);
    assert_eq!(out.lines().count(), 9, "every line prefixed: {out}");
    for (vm, image, end) in [
        (0, "rs_hello.img", "halted"),
        (1, "rs_counter.img", "halted"),
        (2, "rs_panic.img", "failed at RIP"),
        (3, "rs_pagefault.img", "failed at RIP"),
        (4, "guest.img", "halted"),
    ] {
        let said = r.stderr.lines().any(|l| l.contains(&format!("vm{vm} (")) && l.contains(image) && l.contains(end));
        assert!(said, "vm{vm} {image} {end}: {}", r.stderr);
    }
}
