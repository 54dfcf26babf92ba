//! The hook the run loop calls when a VM ends: the failure report on stderr (one line naming
//! the VM, the reason and RIP with its symbol, the registers, then the words of `explain`),
//! and, halted or not, the check that the guest did not overwrite its own code.
#![forbid(unsafe_code)]

use std::fmt::Display;
use std::sync::Arc;

use super::{Evidence, Failure};
use crate::kvm::{self, KvmRegs, KvmSregs};
use crate::long_mode::Layout;
use crate::symbols::Symbols;

/// What explaining a VM's end needs: the memory layout, the image's length and its symbols
/// (when `NAME.elf` lies beside `NAME.img` and matches it).
#[derive(Debug)]
pub struct Explain {
    layout: Layout,
    image_len: u64,
    symbols: Option<Arc<Symbols>>,
}

impl Explain {
    pub fn new(layout: &Layout, image_len: u64, symbols: Option<Arc<Symbols>>) -> Explain {
        Explain { layout: *layout, image_len, symbols }
    }

    /// The diagnostic of a failed VM: one line naming the VM, the reason and RIP (with its
    /// symbol), then the registers, then what they show in words.
    pub fn failure(&self, vm: &kvm::Vm, label: &str, kind: Failure, reason: &dyn Display) {
        let (regs, sregs) = match (vm.vcpu.get_regs(), vm.vcpu.get_sregs()) {
            (Ok(regs), Ok(sregs)) => (regs, sregs),
            (Err(e), _) | (_, Err(e)) => {
                diag!("mini_hypervisor: {label}: failed: {reason} (registers unavailable: {e})");
                return;
            }
        };
        let read = |addr: u64, buf: &mut [u8]| usize::try_from(addr).is_ok_and(|at| vm.mem.read(at, buf).is_ok());
        let evidence = Evidence {
            regs: &regs,
            sregs: &sregs,
            layout: &self.layout,
            image_len: self.image_len,
            symbols: self.symbols.as_deref(),
            failure: kind,
            read: &read,
        };
        let rip = super::address(regs.rip, self.symbols.as_deref());
        let words = super::explain(&evidence);
        let sep = if words.is_empty() { "" } else { "\n" };
        diag!("mini_hypervisor: {label}: failed at RIP {rip}: {reason}\n{}{sep}{words}", register_dump(&regs, &sregs));
    }

    /// At the VM's end, halted or not: one warning if the guest overwrote its own code.
    pub fn at_end(&self, vm: &kvm::Vm, label: &str) {
        let (Some(symbols), Ok(regs)) = (&self.symbols, vm.vcpu.get_regs()) else { return };
        let read = |addr: u64, buf: &mut [u8]| usize::try_from(addr).is_ok_and(|at| vm.mem.read(at, buf).is_ok());
        if let Some(warning) = super::overwritten_code(symbols, regs.rsp, &read) {
            diag!("mini_hypervisor: warning: {label}: {warning}");
        }
    }
}

/// The registers, four to a line, as a debugger shows them.
pub fn register_dump(r: &KvmRegs, s: &KvmSregs) -> String {
    let rows: [[(&str, u64); 4]; 6] = [
        [("rip", r.rip), ("rsp", r.rsp), ("rbp", r.rbp), ("rflags", r.rflags)],
        [("rax", r.rax), ("rbx", r.rbx), ("rcx", r.rcx), ("rdx", r.rdx)],
        [("rsi", r.rsi), ("rdi", r.rdi), ("r8", r.r8), ("r9", r.r9)],
        [("r10", r.r10), ("r11", r.r11), ("r12", r.r12), ("r13", r.r13)],
        [("r14", r.r14), ("r15", r.r15), ("cr0", s.cr0), ("cr2", s.cr2)],
        [("cr3", s.cr3), ("cr4", s.cr4), ("efer", s.efer), ("cs", u64::from(s.cs.selector))],
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
