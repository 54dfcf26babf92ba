//! mini_hypervisor's toolbox: what the course's C never had, written once for every version.
//!
//! - [`gdb`]: `--gdb PORT`, a GDB remote-protocol stub;
//! - [`symbols`]: guest symbols and source lines from `NAME.elf` (ELF and DWARF, read here;
//!   Rust names demangled);
//! - [`crash`]: the crash report in words, and the code-overwritten check;
//! - [`image`]: what a file given as a guest image is, when it is recognisably not one;
//! - [`trace`] and [`stats`]: `--trace` and `--stats`;
//! - [`ring`]: serial output batched by KVM (when it goes on, and draining it);
//! - [`ports`]: the warnings about ports a VM does not have;
//! - [`text`]: how a name from a guest's ELF is escaped before it is shown;
//! - [`tools`]: the tools of one VM, as its version's run loop holds them;
//! - [`test_rng`]: the seeded generator of every crate's fuzz tests.
//!
//! The toolbox sees a VM only through [`Target`], a trait of its own that each version
//! implements over its KVM handles, and plain structs ([`Regs`], [`SystemRegs`],
//! [`GuestDebug`], [`MemoryMap`], [`Exit`]). No `unsafe`, no dependency.
#![forbid(unsafe_code)]

/// `eprintln!` that never panics: a diagnostic that cannot be written (stderr closed, or on
/// a full disk) is dropped.
macro_rules! diag {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod crash;
pub mod gdb;
pub mod image;
mod page_walk;
pub mod ports;
pub mod ring;
pub mod stats;
pub mod symbols;
mod target;
pub mod test_rng;
pub mod text;
pub mod tools;
pub mod trace;

pub use target::{Exit, GuestDebug, MemoryMap, Regs, SystemRegs, Target};
