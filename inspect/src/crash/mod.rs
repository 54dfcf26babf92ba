//! A failed guest explained in words: whether it overwrote the page tables the hypervisor
//! built, where RIP is, what the instruction there is, where a page fault went, whether the
//! stack overflowed, then its call chain ([`backtrace`]), and, at the VM's end, whether the
//! guest overwrote its own code. The version calls [`Explain`] when a VM ends; [`address`] and
//! [`register_dump`] are for its own messages too.
//!
//! The words are pure: they read the registers they are given and guest memory through a
//! closure, and return text. The guest starts with no interrupt table, so an exception ends in
//! a triple fault with RIP still on the instruction that raised it: the evidence is in the
//! registers.

pub(crate) mod backtrace;
mod insn;
mod report;
#[cfg(test)]
mod tests;

pub use report::{Explain, register_dump};

use crate::page_walk::{self, MIB, PTE_WRITABLE, ReadPhys, WalkEnd};
use crate::symbols::Symbols;
use crate::{MemoryMap, Regs, SystemRegs};

/// How the VM failed, as far as the explanation cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A triple fault (`KVM_EXIT_SHUTDOWN`): an exception the guest did not handle.
    TripleFault,
    /// A port access the hypervisor refused (a guest error on a port).
    Io,
    /// An access outside RAM (`KVM_EXIT_MMIO`).
    Mmio,
    /// Anything else: a KVM error, a timeout.
    Other,
}

/// What is known about a failed VM.
#[derive(Clone, Copy)]
pub(crate) struct Evidence<'a> {
    pub regs: &'a Regs,
    pub sregs: &'a SystemRegs,
    /// Where RAM, the image (its length: where it ends when the ELF does not say) and the page
    /// tables are.
    pub map: &'a MemoryMap,
    pub symbols: Option<&'a Symbols>,
    pub failure: Failure,
    pub read: ReadPhys<'a>,
    /// How the page tables the hypervisor built differ from what RAM holds now, if they do.
    pub tables: Option<&'a TablesChanged>,
}

/// Bits the CPU itself sets in page-table entries as it uses them: Accessed (5), Dirty (6).
const PTE_CPU_BITS: u64 = 0x60;

/// The page tables the hypervisor built, changed by the guest: the first changed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TablesChanged {
    /// Guest-physical address of the entry.
    pub entry_addr: u64,
    /// 3 (PML4) down to 0 (PT).
    pub level: u32,
    /// Which page table, for level 0 (one per 2 MiB of RAM).
    pub table: u64,
    pub index: u64,
    pub before: u64,
    pub now: u64,
    /// How many more entries changed.
    pub more: usize,
}

impl TablesChanged {
    /// Compares `built`, the bytes of the table area `[tables_base, ram_size)` as the hypervisor
    /// wrote them, with `now`, what it holds now, entry by entry, without the bits the CPU sets
    /// itself. With 2 MiB pages the area is PML4, PDPT, PD; with 4 KiB pages, then one PT per
    /// 2 MiB. `None` if they are the same (or not comparable).
    pub fn find(built: &[u8], now: &[u8], tables_base: u64) -> Option<TablesChanged> {
        if built.len() != now.len() {
            return None;
        }
        let entry = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().unwrap_or_default());
        let mut changed = built
            .chunks_exact(8)
            .zip(now.chunks_exact(8))
            .enumerate()
            .filter(|(_, (b, n))| (entry(b) ^ entry(n)) & !PTE_CPU_BITS != 0);
        let (at, (before, now)) = changed.next()?;
        let more = changed.count();
        let page = at as u64 * 8 / page_walk::TABLE_SIZE;
        let (level, table) = match page {
            0..=2 => (3 - page as u32, 0),
            n => (0, n - 3),
        };
        let index = at as u64 % 512;
        Some(TablesChanged {
            entry_addr: tables_base + at as u64 * 8,
            level,
            table,
            index,
            before: entry(before),
            now: entry(now),
            more,
        })
    }

    /// The virtual addresses the entry is for, in the hypervisor's identity map.
    fn covers(&self) -> (u64, u64) {
        let shift = 12 + 9 * self.level;
        let start = (self.table << 21) + (self.index << shift);
        // PML4 entries 256 and up are for the upper half: bit 47 is copied up.
        let start = if start >> 47 & 1 == 1 { start | 0xffff_0000_0000_0000 } else { start };
        (start, start.wrapping_add((1 << shift) - 1))
    }
}

/// The line that says the guest overwrote the hypervisor's page tables.
fn tables_changed(c: &TablesChanged) -> String {
    let name = match c.level {
        0 => format!("PT {}", c.table),
        level => page_walk::TABLE_NAMES[level as usize].to_owned(),
    };
    let (start, end) = c.covers();
    let more = match c.more {
        0 => String::new(),
        1 => " (and 1 more entry)".to_owned(),
        n => format!(" (and {n} more entries)"),
    };
    format!(
        "the guest overwrote the page tables the hypervisor built at {:#x} ({name}, entry {}, for {start:#x}..{end:#x}: \
         {:#x} before, {:#x} now){more}",
        c.entry_addr, c.index, c.before, c.now
    )
}

/// The reason of a VM stopped by `signal` (its Linux number): `interrupted (SIGHUP)`; Ctrl-C
/// and `kill` (SIGINT, SIGTERM) alike.
pub fn interrupted(signal: i32) -> String {
    let name = match signal {
        2 | 15 => "SIGINT/SIGTERM",
        1 => "SIGHUP",
        3 => "SIGQUIT",
        10 => "SIGUSR1",
        12 => "SIGUSR2",
        n => return format!("interrupted (signal {n})"),
    };
    format!("interrupted ({name})")
}

/// A guest address with its symbol when known: `0x1e in guest_main+0xe (crash.c:9)`, or `0x1e`
/// (without symbols, or outside every function).
pub fn address(addr: u64, symbols: Option<&Symbols>) -> String {
    match symbols.and_then(|s| s.describe(addr)) {
        Some(name) => format!("{addr:#x} in {name}"),
        None => format!("{addr:#x}"),
    }
}

/// The crash report in words, to print after the register dump: lines starting with `  - `
/// (none when there is nothing to say).
pub(crate) fn explain(e: &Evidence) -> String {
    let mut lines = Vec::new();
    if let Some(changed) = e.tables {
        lines.push(tables_changed(changed));
    }
    let insn = instruction(e, &mut lines);
    if e.sregs.cr2 != 0 {
        lines.push(page_fault(e, insn.as_ref()));
    }
    if let Some(stack) = stack(e) {
        lines.push(stack);
    }
    if e.failure == Failure::TripleFault {
        lines.push(interrupt_table(e.sregs));
    }
    lines.iter().map(|l| format!("  - {l}")).collect::<Vec<_>>().join("\n")
}

/// Where the image ends: the ELF's `_image_end`, else the image's length.
fn image_end(e: &Evidence) -> u64 {
    e.symbols.and_then(Symbols::image_end).unwrap_or(e.map.image_len)
}

/// After "not mapped by the guest's page tables", when the hypervisor's tables were changed.
const CHANGED: &str = "which the guest changed (see above)";

/// `beyond the 2 MiB of RAM`-style words for an address outside RAM.
fn outside_ram(addr: u64, map: &MemoryMap) -> String {
    let ram = format!("{} MiB of RAM", map.ram_size / MIB);
    if (addr as i64) < 0 {
        format!("below address 0, outside the {ram}")
    } else {
        format!("beyond the {ram}, where nothing is mapped")
    }
}

/// The line about the instruction at RIP (or why there is none); its decoding, if read.
fn instruction(e: &Evidence, lines: &mut Vec<String>) -> Option<insn::Insn> {
    let rip = e.regs.rip;
    let mut bytes = [0u8; insn::MAX_LEN];
    let mut got = 0;
    for (i, byte) in bytes.iter_mut().enumerate() {
        let Some(phys) = translate(e, rip.wrapping_add(i as u64)).map(|m| m.phys) else { break };
        let mut one = [0u8];
        if !(e.read)(phys, &mut one) {
            break;
        }
        *byte = one[0];
        got += 1;
    }
    if got == 0 {
        if rip < e.map.ram_size && e.tables.is_some() {
            lines.push(format!("RIP {rip:#x} is in RAM but not mapped by the guest's page tables, {CHANGED}"));
            return None;
        }
        let place = if rip >= e.map.ram_size {
            outside_ram(rip, e.map)
        } else {
            "in RAM but not mapped by the guest's page tables".to_owned()
        };
        lines.push(format!(
            "RIP {rip:#x} is {place}: the guest jumped there (a bad function pointer or a corrupted return address?)"
        ));
        return None;
    }
    let decoded = insn::decode(&bytes[..got]);
    let shown = &bytes[..decoded.len.unwrap_or(got.min(8))];
    let hex = shown.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
    let more = if decoded.len.is_none() && got > shown.len() { " ..." } else { "" };
    let what = match (decoded.name, decoded.memory) {
        (Some(name), _) => format!(" ({name})"),
        (None, true) => " (it accesses memory)".to_owned(),
        (None, false) => String::new(),
    };
    // After an I/O or MMIO exit, RIP may be on the next instruction already.
    let made_the_access = if e.failure == Failure::Io { decoded.io } else { decoded.memory };
    if matches!(e.failure, Failure::Io | Failure::Mmio) && !made_the_access {
        lines.push(format!(
            "RIP is past the instruction that made the access (this host's KVM finished it before it exited); \
             the next one, at RIP: {hex}{more}{what}"
        ));
    } else {
        lines.push(format!("the instruction at RIP: {hex}{more}{what}"));
    }
    if let Some(line) = outside_code(e, rip) {
        lines.push(line);
    }
    if decoded.name.is_some_and(|n| n.starts_with("ud2")) {
        lines.extend(e.symbols.and_then(|s| null_before_ud2(s, rip)));
    }
    Some(decoded)
}

/// A line if the instruction before the `ud2` at `rip` (in the ELF's code) accesses an address
/// below 0x1000 that it holds whole: gcc -O2 keeps such an access through a pointer it proved
/// NULL, and puts a `ud2` right after it.
fn null_before_ud2(symbols: &Symbols, rip: u64) -> Option<String> {
    let (at, before) = previous_instruction(symbols, rip)?;
    let addr = before.absolute.filter(|&a| a < 0x1000)?;
    Some(format!(
        "the instruction before it, at {at:#x}, accesses address {addr:#x} through a NULL pointer: the compiler \
         saw that the pointer is always NULL there, kept the access, and put the ud2 after it"
    ))
}

/// The instruction that ends right at `addr`, decoded from the start of its function in the
/// ELF's code (not guest RAM, which the guest may have changed): its address and decoding.
fn previous_instruction(symbols: &Symbols, addr: u64) -> Option<(u64, insn::Insn)> {
    let (_, offset) = symbols.function(addr)?;
    let start = addr.checked_sub(offset)?;
    let (base, code) = symbols.code().find(|&(base, code)| start >= base && addr - base <= code.len() as u64)?;
    let (mut at, mut previous) = (start, None);
    while at < addr {
        let from = usize::try_from(at - base).ok()?;
        let decoded = insn::decode(code.get(from..(from + insn::MAX_LEN).min(code.len()))?);
        let len = decoded.len? as u64; // at least 1: every step moves on
        previous = Some((at, decoded));
        at += len;
    }
    previous.filter(|_| at == addr)
}

/// A line if RIP, although in RAM, is not in the guest's code.
fn outside_code(e: &Evidence, rip: u64) -> Option<String> {
    let in_code = match e.symbols {
        Some(s) => s.in_code(rip),
        None => rip < image_end(e),
    };
    (!in_code).then(|| {
        format!("RIP {rip:#x} is not in the guest's code: it jumped to data or the stack (a corrupted return address or function pointer?)")
    })
}

/// The line about CR2, the address of the last page fault.
fn page_fault(e: &Evidence, insn: Option<&insn::Insn>) -> String {
    let (cr2, rsp, map) = (e.sregs.cr2, e.regs.rsp, e.map);
    let what = if cr2 == e.regs.rip {
        " fetching the instruction at RIP"
    } else if cr2.wrapping_sub(rsp).wrapping_add(256) < 4096 + 256 {
        " on the stack (near RSP)"
    } else {
        ""
    };
    let tables = map.tables_base;
    let place = if cr2 >= map.ram_size {
        outside_ram(cr2, map)
    } else if cr2 >= tables {
        format!("inside the page tables ({tables:#x}..{:#x})", map.ram_size - 1)
    } else {
        match translate(e, cr2) {
            None if e.tables.is_some() => format!("in RAM but not mapped by the guest's page tables, {CHANGED}"),
            None => "in RAM but not mapped by the guest's page tables (did the guest change them?)".to_owned(),
            Some(m) if !m.writable => "mapped read-only by the guest's page tables (a write to it faults)".to_owned(),
            Some(_) => "in RAM and mapped".to_owned(),
        }
    };
    let null = if cr2 < 0x1000 && insn.is_some_and(|i| i.memory) { ": a null pointer?" } else { "" };
    format!("page fault at {cr2:#x} (CR2){what}: {place}{null}")
}

/// A line if RSP shows that the stack overflowed or was corrupted.
fn stack(e: &Evidence) -> Option<String> {
    let (rsp, map) = (e.regs.rsp, e.map);
    let end = image_end(e);
    let why = "(a runaway recursion, a large local array?)";
    if rsp > map.ram_size {
        Some(format!("RSP {rsp:#x} is {}: the stack overflowed or was corrupted {why}", outside_ram(rsp, map)))
    } else if rsp > map.tables_base {
        Some(format!(
            "RSP {rsp:#x} is above where the stack starts ({:#x}), inside the page tables: the stack was corrupted",
            map.tables_base
        ))
    } else if rsp < end {
        Some(format!(
            "RSP {rsp:#x} is below the end of the image ({end:#x}): the stack overflowed into the guest's code and data {why}"
        ))
    } else {
        None
    }
}

/// Why an exception became a triple fault.
fn interrupt_table(sregs: &SystemRegs) -> String {
    if sregs.idt_limit == 0 {
        "the guest has no interrupt table (IDTR limit 0), so any exception ends in a triple fault, \
         with RIP on the instruction that raised it"
            .to_owned()
    } else {
        format!(
            "the guest's own interrupt table (IDTR base {:#x}, limit {:#x}) did not handle the exception: \
             delivering it failed too (a missing or bad gate, a bad GDT entry for the handler, or a fault in the handler)",
            sregs.idt_base, sregs.idt_limit
        )
    }
}

/// A guest-virtual address mapped by the guest's page tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping {
    phys: u64,
    writable: bool,
}

/// Walks the guest's own page tables (from CR3) for `va`, reading them through `e.read`.
fn translate(e: &Evidence, va: u64) -> Option<Mapping> {
    let mut writable = true;
    match page_walk::walk(e.read, e.sregs.cr3, va, |step| writable &= step.entry & PTE_WRITABLE != 0) {
        WalkEnd::Page { pa, .. } => Some(Mapping { phys: pa, writable }),
        _ => None,
    }
}

/// At the VM's end: the one warning if guest RAM no longer holds the ELF's code, naming the
/// first changed range and its function. `rsp` is the guest's last stack pointer (a stack
/// that grew down over the code is said so).
pub(crate) fn overwritten_code(symbols: &Symbols, rsp: u64, read: ReadPhys) -> Option<String> {
    // Changed ranges (first, last), merging differences up to 8 bytes apart.
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (start, expected) in symbols.code() {
        let mut now = vec![0u8; expected.len()];
        if !read(start, &mut now) {
            continue;
        }
        for (i, _) in now.iter().zip(expected).enumerate().filter(|(_, (a, b))| a != b) {
            let addr = start + i as u64;
            match ranges.last_mut() {
                Some(last) if addr - last.1 <= 8 => last.1 = addr,
                _ => ranges.push((addr, addr)),
            }
        }
    }
    let &(first, last) = ranges.first()?;
    let function = symbols.function(first).map(|(name, _)| format!(", in {name}")).unwrap_or_default();
    let more = match ranges.len() {
        1 => String::new(),
        n => format!(" (and in {} more place{})", n - 1, if n == 2 { "" } else { "s" }),
    };
    let guess = if rsp <= last || (rsp as i64) < 0 {
        "the stack grew down over it (a stack overflow?)"
    } else if first < 0x1000 {
        "a write through a null pointer?"
    } else {
        "a write through a bad pointer, or past the end of an array?"
    };
    Some(format!("the guest overwrote its own code at {first:#x}..{last:#x}{function}{more}: {guess}"))
}
