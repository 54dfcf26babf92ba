//! `monitor` commands (gdb's `qRcmd` packet): what the hypervisor knows about the machine that
//! gdb cannot see by itself. `monitor help` lists them; the answer is text, which the stub
//! sends as console output.

use std::fmt::Write as _;

use super::paging::{PTE_ADDR, PTE_LARGE, PTE_PRESENT, Step, TABLE_NAMES, WalkEnd, paging, walk};
use crate::page_walk::{KIB, MIB, TABLE_SIZE};
use crate::{MemoryMap, Target};

const HELP: &str = "\
monitor commands of mini_hypervisor:
  monitor help        this list
  monitor mem         the VM's memory map: image, free RAM, stack, page tables
  monitor walk ADDR   the page-table walk of a guest-virtual address, level by level
                      (ADDR: 0x1f000 in hex, or 4096 in decimal)
";

/// The answer to `monitor LINE`. Never fails: a bad command answers how to use it.
pub fn command<T: Target + ?Sized>(m: &MemoryMap, t: &T, line: &str) -> String {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (None, _, _) | (Some("help"), None, _) => HELP.to_owned(),
        (Some("mem"), None, _) => mem(m, t),
        (Some("walk"), Some(addr), None) => match parse_addr(addr) {
            Some(va) => walk_text(m, t, va),
            None => format!("monitor walk: {addr:?} is not an address: give it as 0x1f000 (hex) or 4096 (decimal)\n"),
        },
        (Some("walk"), _, _) => "monitor walk: give one address, e.g. monitor walk 0x1000\n".to_owned(),
        (Some(cmd @ ("help" | "mem")), Some(_), _) => format!("monitor {cmd} takes no argument\n"),
        (Some(other), _, _) => format!(
            "unknown monitor command {:?}: type \"monitor help\" for the list\n",
            other.chars().take(40).collect::<String>()
        ),
    }
}

/// `0x` + hex, or decimal.
fn parse_addr(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// A size in words: "2 MiB", "12 KiB", "100 bytes", "70000 bytes (68.4 KiB)".
fn size(bytes: u64) -> String {
    if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes % KIB == 0 {
        format!("{} KiB", bytes / KIB)
    } else if bytes >= KIB {
        format!("{bytes} bytes ({:.1} KiB)", bytes as f64 / KIB as f64)
    } else {
        format!("{bytes} bytes")
    }
}

/// An entry's flags in words.
fn flags(level: u32, e: u64) -> String {
    if e & PTE_PRESENT == 0 {
        return "not present".to_owned();
    }
    let page = level == 0 || (level <= 2 && e & PTE_LARGE != 0);
    let mut words = vec!["present"];
    words.push(if e & 2 != 0 { "writable" } else { "read-only" });
    words.push(if e & 4 != 0 { "user" } else { "supervisor-only" });
    let bits = [(1 << 3, "write-through"), (1 << 4, "cache-disabled"), (1 << 5, "accessed")];
    words.extend(bits.iter().filter(|(b, _)| e & b != 0).map(|(_, w)| *w));
    if page && e & (1 << 6) != 0 {
        words.push("dirty");
    }
    if level > 0 && e & PTE_LARGE != 0 {
        words.push(if level <= 2 { "large page (PS)" } else { "PS set (reserved here)" });
    }
    if page && e & (1 << 8) != 0 {
        words.push("global");
    }
    if e & (1 << 63) != 0 {
        words.push("no-execute");
    }
    words.join(" ")
}

/// One line per entry read: table, index, entry address, value, flags, where it leads.
fn step_line(s: &Step) -> String {
    let name = format!("{}[{}]", TABLE_NAMES[s.level as usize], s.index);
    let next = if s.entry & PTE_PRESENT == 0 {
        "the walk stops here".to_owned()
    } else if s.level == 0 || (s.level <= 2 && s.entry & PTE_LARGE != 0) {
        let page = 1u64 << (12 + 9 * s.level);
        format!("{} page at {:#x}", size(page), s.entry & PTE_ADDR & !(page - 1))
    } else {
        format!("{} at {:#x}", TABLE_NAMES[s.level as usize - 1], s.entry & PTE_ADDR)
    };
    format!(
        "  {name:<10} entry at {:#010x} = {:#018x}  {}  -> {next}\n",
        s.entry_addr,
        s.entry,
        flags(s.level, s.entry)
    )
}

/// `monitor walk ADDR`: every entry the walk reads, and where it ends.
fn walk_text<T: Target + ?Sized>(m: &MemoryMap, t: &T, va: u64) -> String {
    let ram = m.ram_size;
    let cr3 = match t.system_regs().map(|s| paging(&s)) {
        Err(e) => return format!("monitor walk: cannot read the control registers: {e}\n"),
        Ok(Err(())) => {
            return "the guest pages, but not with 4-level long-mode tables: this walk cannot follow it\n".into();
        }
        Ok(Ok(None)) => return format!("paging is off (CR0.PG = 0): virtual {va:#x} = physical {va:#x}\n"),
        Ok(Ok(Some(cr3))) => cr3,
    };
    let mut out = format!("virtual {va:#x}: CR3 = {cr3:#x}, so the PML4 is at {:#x}\n", cr3 & PTE_ADDR);
    let end = walk(t, cr3, va, |s| out += &step_line(s));
    let _ = match end {
        WalkEnd::Page { pa, .. } if pa < ram => writeln!(out, "= physical {pa:#x}"),
        WalkEnd::Page { pa, .. } => writeln!(
            out,
            "= physical {pa:#x}, beyond the {} of RAM: an access leaves RAM (an MMIO exit) and fails the VM",
            size(ram)
        ),
        WalkEnd::NotCanonical => writeln!(
            out,
            "{va:#x} is not canonical (bits 63..47 are not all equal): no table maps it; an access faults (#GP)"
        ),
        WalkEnd::NotPresent => writeln!(out, "{va:#x} is not mapped: an access faults (#PF)"),
        WalkEnd::Unreadable { entry_addr } => writeln!(
            out,
            "the next entry, at {entry_addr:#x}, lies beyond the {} of RAM: the walk stops there",
            size(ram)
        ),
    };
    out
}

/// `monitor mem`: the memory map, and where the stack pointer and CR3 are now.
fn mem<T: Target + ?Sized>(m: &MemoryMap, t: &T) -> String {
    let (ram, tables) = (m.ram_size, m.tables_base.min(m.ram_size));
    let image_end = m.image_len.min(tables);
    let page = if m.large_pages { "2 MiB pages" } else { "4 KiB pages" };
    let mut out =
        format!("RAM: {}, guest-physical {:#x}..{ram:#x}, mapped virtual = physical with {page}\n", size(ram), 0);
    let mut row = |from: u64, to: Option<u64>, what: String| {
        let range = match to {
            Some(to) => format!("{from:#08x}..{to:#08x}"),
            None => format!("{from:#08x}"),
        };
        let _ = writeln!(out, "  {range:<18} {what}");
    };
    row(0, Some(image_end), format!("image: {}, code and data, loaded at 0 (RIP starts at 0)", size(m.image_len)));
    row(
        image_end,
        Some(tables),
        format!("free: {}; the stack grows down into it from its top", size(tables - image_end)),
    );
    row(tables, None, "stack top: RSP starts here, just below the page tables".to_owned());
    // PML4, PDPT and PD, then the page tables (4 KiB pages only).
    let table_pages = (ram - tables) / TABLE_SIZE;
    let pt_text = match table_pages.saturating_sub(3) {
        0 => String::new(),
        1 => format!(", PT {:#x}", tables + 3 * TABLE_SIZE),
        n => format!(", {n} PTs from {:#x}", tables + 3 * TABLE_SIZE),
    };
    row(
        tables,
        Some(ram),
        format!(
            "page tables: {table_pages} pages of 4 KiB: PML4 {tables:#x}, PDPT {:#x}, PD {:#x}{pt_text}",
            tables + TABLE_SIZE,
            tables + 2 * TABLE_SIZE
        ),
    );
    out + &now(t, tables)
}

/// The stack pointer and CR3 now, against the layout.
fn now<T: Target + ?Sized>(t: &T, tables: u64) -> String {
    let (Ok(r), Ok(s)) = (t.regs(), t.system_regs()) else { return String::new() };
    let stack = if r.rsp <= tables {
        format!("{} of stack in use", size(tables - r.rsp))
    } else {
        "above the stack top: the stack pointer was moved".to_owned()
    };
    let cr3 = if s.cr3 & PTE_ADDR == tables { "the hypervisor's PML4" } else { "tables of the guest's own" };
    format!("now: RSP = {:#x} ({stack}), CR3 = {:#x} ({cr3})\n", r.rsp, s.cr3)
}

#[cfg(test)]
mod tests {
    use super::super::fake::{FakeTarget, RAM, machine};
    use super::*;

    #[test]
    fn help_and_unknown_commands() {
        let t = FakeTarget::new(true);
        let m = machine();
        assert_eq!(command(&m, &t, "help"), HELP);
        assert_eq!(command(&m, &t, "  "), HELP);
        let unknown = command(&m, &t, "reset now");
        assert_eq!(unknown, "unknown monitor command \"reset\": type \"monitor help\" for the list\n");
        assert!(command(&m, &t, "walk").contains("give one address"));
        assert!(command(&m, &t, "walk 1 2").contains("give one address"));
        assert!(command(&m, &t, "walk xyz").contains("\"xyz\" is not an address"));
        assert!(command(&m, &t, "mem x").contains("takes no argument"));
        assert_eq!((parse_addr("0x1F"), parse_addr("31"), parse_addr("1f")), (Some(31), Some(31), None));
        assert_eq!(
            [size(2 * MIB), size(8 * KIB), size(100), size(70_000)],
            ["2 MiB", "8 KiB", "100 bytes", "70000 bytes (68.4 KiB)"]
        );
    }

    #[test]
    fn walk_shows_every_level_and_where_it_ends() {
        let t = FakeTarget::new(true);
        let m = machine();
        let out = command(&m, &t, "walk 0x201008");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "virtual 0x201008: CR3 = 0x3fc000, so the PML4 is at 0x3fc000");
        assert!(lines[1].starts_with("  PML4[0]    entry at 0x003fc000 = 0x00000000003fd003  present writable"));
        assert!(lines[1].ends_with("-> PDPT at 0x3fd000"), "{out}");
        assert!(lines[3].starts_with("  PD[1]") && lines[3].ends_with("-> PT at 0x3ff000"), "{out}");
        assert!(lines[4].starts_with("  PT[1]") && lines[4].ends_with("-> 4 KiB page at 0x201000"), "{out}");
        assert_eq!(lines[5], "= physical 0x201008");
        let large = command(&m, &t, "walk 4660");
        assert!(
            large.contains("large page (PS)  -> 2 MiB page at 0x0") && large.contains("= physical 0x1234"),
            "{large}"
        );
        let hole = command(&m, &t, "walk 0x200000");
        assert!(
            hole.contains("not present  -> the walk stops here")
                && hole.ends_with("is not mapped: an access faults (#PF)\n"),
            "{hole}"
        );
        let outside = command(&m, &t, "walk 0x400000");
        assert!(outside.contains("beyond the 4 MiB of RAM"), "{outside}");
        assert!(command(&m, &t, "walk 0x800000000000").contains("not canonical"));
        t.system.borrow_mut().cr3 = RAM as u64;
        assert!(command(&m, &t, "walk 0").contains("lies beyond the 4 MiB of RAM: the walk stops there"));
        let flat = FakeTarget::new(false);
        assert_eq!(command(&m, &flat, "walk 0x10"), "paging is off (CR0.PG = 0): virtual 0x10 = physical 0x10\n");
    }

    #[test]
    fn mem_shows_the_layout() {
        let t = FakeTarget::new(true);
        let out = command(&machine(), &t, "mem");
        assert!(out.starts_with("RAM: 4 MiB, guest-physical 0x0..0x400000"), "{out}");
        assert!(out.contains("image: 4660 bytes (4.6 KiB)"), "{out}");
        assert!(out.contains("page tables: 5 pages of 4 KiB: PML4 0x3fb000"), "{out}");
        assert!(out.contains("stack top: RSP starts here"), "{out}");
        assert!(out.contains("now: RSP = 0x7 (above the stack top") || out.contains("now: RSP = 0x7 ("), "{out}");
    }
}
