//! The hooks the version's run loop calls when a VM ends: the failure report on stderr (one
//! line naming the VM, the reason and RIP with its symbol, the registers, then the words of
//! `explain`), and, halted or not, the check that the guest did not overwrite its own code.

use std::fmt::Display;
use std::sync::Arc;

use super::{Evidence, Failure};
use crate::symbols::SymbolFile;
use crate::{MemoryMap, Regs, SystemRegs, Target};

/// Bytes of guest RAM compared with the image at a time, at the VM's end.
const CHUNK: usize = 4096;

/// What explaining a VM's end needs: where things are in its RAM, and the image's symbols
/// (read only when a report needs them).
#[derive(Debug)]
pub struct Explain {
    map: MemoryMap,
    symbols: Arc<SymbolFile>,
}

impl Explain {
    /// The explainer of a VM whose RAM is laid out as `map`, running the image of `symbols`.
    pub fn new(map: MemoryMap, symbols: Arc<SymbolFile>) -> Explain {
        Explain { map, symbols }
    }

    /// The diagnostic of a failed VM, on stderr: one line naming the VM, the reason and RIP
    /// (with its symbol), then the registers, then what they show in words.
    pub fn failure(&self, t: &dyn Target, label: &str, kind: Failure, reason: &dyn Display) {
        diag!("{}", self.failure_report(t, label, kind, reason));
    }

    /// The text of [`Explain::failure`].
    pub(super) fn failure_report(&self, t: &dyn Target, label: &str, kind: Failure, reason: &dyn Display) -> String {
        let (regs, sregs) = match (t.regs(), t.system_regs()) {
            (Ok(regs), Ok(sregs)) => (regs, sregs),
            (Err(e), _) | (_, Err(e)) => {
                return format!("mini_hypervisor: {label}: failed: {reason} (registers unavailable: {e})");
            }
        };
        let read = |addr: u64, buf: &mut [u8]| t.read_phys(addr, buf).is_ok();
        let symbols = self.symbols.get();
        let evidence = Evidence { regs: &regs, sregs: &sregs, map: &self.map, symbols, failure: kind, read: &read };
        let rip = super::address(regs.rip, symbols);
        let words = super::explain(&evidence);
        let sep = if words.is_empty() { "" } else { "\n" };
        format!("mini_hypervisor: {label}: failed at RIP {rip}: {reason}\n{}{sep}{words}", register_dump(&regs, &sregs))
    }

    /// At the VM's end, halted or not: one warning on stderr if the guest overwrote its own
    /// code. When guest RAM still holds the image as it was loaded, nothing can have been
    /// overwritten and the ELF is not read; only when it differs are the symbols read, to
    /// compare the code.
    pub fn at_end(&self, t: &dyn Target, label: &str) {
        if let Some(warning) = self.overwritten(t) {
            diag!("mini_hypervisor: warning: {label}: {warning}");
        }
    }

    /// The words of [`Explain::at_end`]'s warning, if there is one.
    pub(super) fn overwritten(&self, t: &dyn Target) -> Option<String> {
        if self.image_unchanged(t) {
            return None;
        }
        let (Some(symbols), Ok(regs)) = (self.symbols.get(), t.regs()) else { return None };
        let read = |addr: u64, buf: &mut [u8]| t.read_phys(addr, buf).is_ok();
        super::overwritten_code(symbols, regs.rsp, &read)
    }

    /// Whether guest RAM at `[0, image length)` holds the image's bytes (`false` if it cannot
    /// be read).
    fn image_unchanged(&self, t: &dyn Target) -> bool {
        let mut now = [0u8; CHUNK];
        let mut at = 0u64;
        self.symbols.image().chunks(CHUNK).all(|expected| {
            let now = &mut now[..expected.len()];
            let same = t.read_phys(at, now).is_ok() && now == expected;
            at += expected.len() as u64;
            same
        })
    }
}

/// The registers, four to a line, as a debugger shows them.
pub fn register_dump(r: &Regs, s: &SystemRegs) -> String {
    let rows: [[(&str, u64); 4]; 6] = [
        [("rip", r.rip), ("rsp", r.rsp), ("rbp", r.rbp), ("rflags", r.rflags)],
        [("rax", r.rax), ("rbx", r.rbx), ("rcx", r.rcx), ("rdx", r.rdx)],
        [("rsi", r.rsi), ("rdi", r.rdi), ("r8", r.r8), ("r9", r.r9)],
        [("r10", r.r10), ("r11", r.r11), ("r12", r.r12), ("r13", r.r13)],
        [("r14", r.r14), ("r15", r.r15), ("cr0", s.cr0), ("cr2", s.cr2)],
        [("cr3", s.cr3), ("cr4", s.cr4), ("efer", s.efer), ("cs", u64::from(s.cs))],
    ];
    let lines: Vec<String> = rows
        .iter()
        .map(|row| {
            let cells: Vec<String> = row.iter().map(|(n, v)| format!("{n:>6} {v:#018x}")).collect();
            format!("  {}", cells.join(" "))
        })
        .collect();
    lines.join("\n")
}
