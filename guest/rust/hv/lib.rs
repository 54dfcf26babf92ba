//! hv: the guest library for Rust guests of the mini hypervisor, the Rust twin of `hv.c`.
//!
//! A Rust guest is a `#![no_std]` `#![no_main]` crate that names its main function with
//! [`entry!`]:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//!
//! hv::entry!(main);
//!
//! fn main() {
//!     hv::putln!("Hello from Rust! 6 * 7 = ", 6 * 7);
//! }   // returning halts the VM: exit status 0
//! ```
//!
//! What the library gives (see `guest/README.md` for every call):
//!
//! - `_start`, the first byte of every image (module `start`), which calls your main function
//!   and then halts the VM; [`halt`] ends the VM from anywhere, [`fail`] ends it as a failure;
//! - the serial port `0xE9` ([`serial`]): text, numbers (no `core::fmt` needed), stdin;
//! - files on port `0x0278`, version C ([`file`]): a [`File`] that closes itself when dropped,
//!   and every error as a [`Result`];
//! - a panic handler (module `panic`): `panicked at FILE:LINE: message` on the serial port,
//!   then the VM ends as a failure (exit status 1);
//! - `memcpy`, `memmove`, `memset`, `memcmp`, `bcmp` (module `mem`, in assembly), which the
//!   compiler and `core` call;
//! - the raw port instructions ([`port`]) and the scratch area ([`scratch`]).
//!
//! Built by `guest/Makefile` with `rustc` alone (no cargo, no download), without SSE: the KVM
//! of some hosts, ours among them, emulates guest instructions and has no SSE arithmetic.
#![no_std]
// Every `unsafe` block says why it is sound in a `// SAFETY:` comment; an `unsafe fn` says
// what its caller must ensure (`# Safety`) and still needs `unsafe {}` inside.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod file;
mod mem;
mod panic;
pub mod port;
pub mod serial;
mod start;

pub use file::{Error, File, Mode};
pub use serial::Serial;
pub use start::entry_rsp;

use core::sync::atomic::{AtomicBool, Ordering};

/// Stops the vCPU with `hlt`: the hypervisor ends the VM normally (exit status 0).
pub fn halt() -> ! {
    loop {
        // SAFETY: hlt only stops the vCPU; the hypervisor ends the VM there. The loop is for
        // the case that it ever resumed us.
        unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
    }
}

// SAFETY: hv_fail is defined in module `mem` (assembly) with exactly this signature: no
// arguments, no result, it never returns.
unsafe extern "C" {
    /// Ends the VM as a failure, on purpose (module `mem`, in assembly): it loads an empty
    /// interrupt table (limit 0) and executes `ud2`. The CPU cannot deliver the
    /// invalid-opcode exception through an empty table, nor the double fault that follows,
    /// so it triple-faults: the hypervisor reports `triple fault (KVM_EXIT_SHUTDOWN)` with RIP
    /// on that `ud2`, in `hv_fail`, and the exit status is 1. Loading the empty table first
    /// makes this work even in a guest that installed its own interrupt table.
    ///
    /// `safe`: it takes nothing, touches no memory of ours, and never returns.
    safe fn hv_fail() -> !;
}

/// Ends the VM as a failure (exit status 1), as a panic does after its message: a triple
/// fault on purpose, in `hv_fail` (see module `mem`).
pub fn fail() -> ! {
    hv_fail()
}

/// Start of the scratch area: guest-physical `0x100000` (1 MiB), as `SCRATCH_BASE` in `hv.h`.
pub const SCRATCH_BASE: usize = 0x10_0000;
/// Size of the scratch area: 512 KiB.
pub const SCRATCH_SIZE: usize = 0x8_0000;

/// The scratch area `[0x100000, 0x180000)` as a buffer, for big buffers (bulk file copies)
/// that would make the image big as a `static` or the stack deep as a local: `Some` the first
/// time, `None` after (there is one area, so there is one `&mut` to it).
pub fn scratch() -> Option<&'static mut [u8]> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::Relaxed) {
        return None;
    }
    // SAFETY: the area is RAM in every memory size (2, 4 or 8 MiB), identity-mapped; nothing
    // else uses it: the image ends below 1 MiB (`make check` checks it), the stack and the page
    // tables are at the top of RAM, and `TAKEN` makes this the only reference to it.
    Some(unsafe { core::slice::from_raw_parts_mut(SCRATCH_BASE as *mut u8, SCRATCH_SIZE) })
}
