//! rs_panic.rs -> rs_panic.img (every version): a bug that Rust catches, an index out of
//! bounds. The panic prints where it happened and why, then ends the VM as a failure.
//!
//! Output (exit status 1, the hypervisor reporting a triple fault in hv_fail):
//!
//! ```text
//! day 0 is mon
//! day 1 is tue
//! day 2 is wed
//! panicked at rs_panic.rs:34: index out of bounds: the len is 3 but the index is 3
//! ```
//!
//! With stdin `a` it fails an `assert!` first, whose message is a plain string:
//! `panicked at rs_panic.rs:38: a week has seven days`.
#![no_std]
#![no_main]

hv::entry!(main);

const DAYS: [&str; 3] = ["mon", "tue", "wed"];

fn main() {
    if hv::serial::read_byte() == Some(b'a') {
        check_week();
    }
    for i in 0..=DAYS.len() {
        // 0..=3: one day too many
        let name = day(i); // before printing: put! prints each item as it comes
        hv::putln!("day ", i, " is ", name);
    }
}

fn day(i: usize) -> &'static str {
    DAYS[i]
}

fn check_week() {
    assert!(DAYS.len() == 7, "a week has seven days");
}
