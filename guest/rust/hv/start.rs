//! `_start`, the first instruction of every image, and [`entry!`](crate::entry), which names
//! the guest's main function.
//!
//! The hypervisor starts the vCPU at address 0 with RSP just below the page tables (page
//! aligned). `guest.ld` puts section `.start` first, and `_start` is all that section holds.

use core::sync::atomic::{AtomicU64, Ordering};

// The same instructions as hv.c's _start, byte for byte: `make check` recognises an image by
// its first instruction (48 89 25 ..: mov %rsp, hv_entry_rsp(%rip)).
core::arch::global_asm!(
    ".section .start, \"ax\", @progbits", // put _start in section .start
    ".globl _start",                      // visible to the linker script
    "_start:",
    "    mov %rsp, hv_entry_rsp(%rip)", // remember the entry RSP (nothing pushed yet)
    "    cld",                          // string instructions go upwards (the ABI wants DF = 0)
    "    call guest_main",              // the guest's main function, see entry!
    "1:  hlt",                          // stop the VM ...
    "    jmp 1b",                       // ... and never run past it
    ".previous",                        // back to the section before
    options(att_syntax)
);

/// RSP exactly as the hypervisor set it, written by `_start` before anything is pushed.
/// (A `u64` in memory; atomic only so that Rust lets `_start` write it without `static mut`.)
#[unsafe(no_mangle)]
#[allow(non_upper_case_globals)] // the C library's name, which _start uses
static hv_entry_rsp: AtomicU64 = AtomicU64::new(0);

/// RSP as the hypervisor set it at entry: the base of the page tables (`CR3`), the top of the
/// stack.
pub fn entry_rsp() -> u64 {
    hv_entry_rsp.load(Ordering::Relaxed)
}

/// Names the guest's main function, a `fn()`: `hv::entry!(main);` at the top level of the
/// guest's crate. `_start` calls it; when it returns, `_start` halts the VM (exit status 0).
///
/// It defines the one function `_start` calls, `guest_main` (as a C guest defines it), so a
/// guest has exactly one `entry!`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// Called by `_start` (see the hv library): runs the guest's main function.
        #[unsafe(no_mangle)]
        pub extern "C" fn guest_main() {
            let main: fn() = $main; // a guest's main function takes and returns nothing
            main()
        }
    };
}
