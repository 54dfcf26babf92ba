//! rs_pagefault.rs -> rs_pagefault.img (every version): a write through a bad pointer, which
//! Rust cannot catch (`unsafe`).
//!
//! The address, 1 GiB, is far beyond the guest's RAM, where nothing is mapped: the write
//! page-faults, and as there is no interrupt table the fault becomes a triple fault. Output:
//! `writing to 0x40000000\n`, then the VM fails (exit status 1), and the hypervisor's report
//! names the function and line of the write (`store`, rs_pagefault.rs:30) and the address
//! (CR2 = 0x40000000, beyond RAM).
#![no_std]
#![no_main]

hv::entry!(main);

fn main() {
    // black_box: the compiler cannot see the address, so it compiles the write as written.
    let address = core::hint::black_box(0x4000_0000usize);
    hv::putln!("writing to 0x", hv::serial::Hex(address as u64));
    // SAFETY: none, on purpose: this is the bug the example shows (no RAM is there).
    unsafe { store(address as *mut u64, 1) };
    hv::putln!("not reached");
}

/// Writes `value` at `p`.
/// # Safety
/// `p` must point to RAM the guest owns.
// SAFETY: a contract for the caller (above), which main breaks on purpose.
#[inline(never)] // a function of its own, so that the crash report has it to name
unsafe fn store(p: *mut u64, value: u64) {
    // SAFETY: the caller's contract (which main breaks).
    unsafe { *p = value };
}
