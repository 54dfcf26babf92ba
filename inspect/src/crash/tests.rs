//! Unit tests of the crash report: made-up registers over a made-up RAM (with page tables laid
//! out as the versions lay them out), the instruction decoder against objdump on every guest,
//! the code comparison with a real guest's ELF, and [`Explain`] over a fake target.
use super::*;

use std::cell::RefCell;
use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use crate::page_walk::{PTE_LARGE, PTE_PRESENT, TABLE_SIZE};
use crate::symbols::SymbolFile;
use crate::{GuestDebug, Target};

/// The page tables of an identity map of `[0, ram_size)` as the versions build them: at the
/// top of RAM, the PML4 (lowest: CR3 and the initial RSP), the PDPT, the PD and, for 4 KiB
/// pages, one page table per 2 MiB. The map, and the bytes of the table area
/// `[tables_base, ram_size)`.
fn identity_map(ram_size: u64, large_pages: bool) -> (MemoryMap, Vec<u8>) {
    let regions = ram_size.div_ceil(2 * MIB);
    let table_pages = if large_pages { 3 } else { 3 + regions };
    let base = ram_size - table_pages * TABLE_SIZE;
    let mut area = vec![0u8; (table_pages * TABLE_SIZE) as usize];
    let mut set = |table: u64, index: u64, entry: u64| {
        let at = (table - base + index * 8) as usize;
        area[at..at + 8].copy_from_slice(&entry.to_le_bytes());
    };
    let (pml4, pdpt, pd, first_pt) = (base, base + TABLE_SIZE, base + 2 * TABLE_SIZE, base + 3 * TABLE_SIZE);
    let rw = PTE_PRESENT | PTE_WRITABLE;
    set(pml4, 0, pdpt | rw);
    set(pdpt, 0, pd | rw);
    for region in 0..regions {
        let region_base = region * 2 * MIB;
        if large_pages {
            set(pd, region, region_base | rw | PTE_LARGE);
        } else {
            let pt = first_pt + region * TABLE_SIZE;
            set(pd, region, pt | rw);
            for page in 0..512 {
                set(pt, page, (region_base + page * TABLE_SIZE) | rw);
            }
        }
    }
    (MemoryMap { ram_size, large_pages, tables_base: base, image_len: 0 }, area)
}

/// RAM with the tables of [`identity_map`], and the system registers of long mode over them
/// (what matters here: CR3, CR0.PG, EFER.LMA, and no interrupt table).
fn long_mode(ram_size: u64, large_pages: bool) -> (MemoryMap, Vec<u8>, SystemRegs) {
    let (map, tables) = identity_map(ram_size, large_pages);
    let mut ram = vec![0u8; ram_size as usize];
    ram[map.tables_base as usize..].copy_from_slice(&tables);
    let sregs = SystemRegs {
        cs: 0x8,
        ss: 0x10,
        cr0: 0x8005_0033, // PE MP ET NE WP AM PG
        cr3: map.tables_base,
        cr4: 0x620,  // PAE OSFXSR OSXMMEXCPT
        efer: 0x500, // LME LMA
        ..SystemRegs::default()
    };
    (map, ram, sregs)
}

#[test]
fn the_test_tables_map_all_of_ram_and_nothing_else() {
    for (ram_size, large) in [(2 * MIB, false), (4 * MIB, false), (2 * MIB, true), (8 * MIB, true)] {
        let (map, ram, sregs) = long_mode(ram_size, large);
        let read = |addr: u64, buf: &mut [u8]| match ram.get(addr as usize..addr as usize + buf.len()) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                true
            }
            None => false,
        };
        let page = if large { 2 * MIB } else { TABLE_SIZE };
        for va in (0..ram_size).step_by(TABLE_SIZE as usize) {
            let want = WalkEnd::Page { pa: va + 8, page_size: page };
            assert_eq!(page_walk::walk(&read, sregs.cr3, va + 8, |_| {}), want, "{ram_size:#x} {large} {va:#x}");
        }
        assert_eq!(page_walk::walk(&read, sregs.cr3, ram_size, |_| {}), WalkEnd::NotPresent);
        assert_eq!(map.tables_base, ram_size - if large { 3 } else { 3 + ram_size / (2 * MIB) } * TABLE_SIZE);
    }
}

/// 2 MiB of RAM with 4 KiB pages (or 2 MiB ones): page tables at the top, `code` at 0.
struct Machine {
    map: MemoryMap,
    ram: Vec<u8>,
    regs: Regs,
    sregs: SystemRegs,
    /// The tables as built, for the comparison with RAM (empty: none, as if the hypervisor did
    /// not say).
    built_tables: Vec<u8>,
}

impl Machine {
    fn new(code: &[u8]) -> Machine {
        Machine::with_pages(code, false)
    }

    fn with_pages(code: &[u8], large_pages: bool) -> Machine {
        let (map, mut ram, sregs) = long_mode(2 * MIB, large_pages);
        ram[..code.len()].copy_from_slice(code);
        let regs = Regs { rsp: map.tables_base - 0x40, rflags: 2, ..Regs::default() };
        let built_tables = ram[map.tables_base as usize..].to_vec();
        Machine { map, ram, regs, sregs, built_tables }
    }

    /// The entry of the (only) page table for the 4 KiB page at `addr`.
    fn pte(&mut self, addr: u64) -> &mut [u8] {
        let at = (self.map.tables_base + 3 * TABLE_SIZE + (addr >> 12) * 8) as usize;
        &mut self.ram[at..at + 8]
    }

    fn explain(&self, image_len: u64, symbols: Option<&Symbols>) -> String {
        self.explain_failure(image_len, symbols, Failure::TripleFault)
    }

    fn explain_failure(&self, image_len: u64, symbols: Option<&Symbols>, failure: Failure) -> String {
        let read = |addr: u64, buf: &mut [u8]| match self.ram.get(addr as usize..addr as usize + buf.len()) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                true
            }
            None => false,
        };
        let map = MemoryMap { image_len, ..self.map };
        let built = &self.built_tables;
        let changed = TablesChanged::find(built, &self.ram[map.tables_base as usize..], map.tables_base);
        let tables = changed.as_ref().filter(|_| !built.is_empty());
        explain(&Evidence { regs: &self.regs, sregs: &self.sregs, map: &map, symbols, failure, read: &read, tables })
    }
}

const UD2: &str = "ud2: the undefined instruction, which raises #UD on purpose: asm(\"ud2\") or __builtin_trap() in \
                   the source, or put there by the compiler where it proved that the code cannot go on, after an \
                   access through a NULL pointer or where a function declared not to return returned";

const NO_TABLE: &str = "  - the guest has no interrupt table (IDTR limit 0), so any exception ends in a triple fault, \
                        with RIP on the instruction that raised it";

#[test]
fn ud2_is_named_and_the_missing_interrupt_table_explained() {
    let mut m = Machine::new(&[0x90, 0x0f, 0x0b, 0xc3]);
    m.regs.rip = 1;
    assert_eq!(m.explain(4, None), format!("  - the instruction at RIP: 0f 0b ({UD2})\n{NO_TABLE}"));
    // Not a triple fault: nothing about the interrupt table.
    assert_eq!(m.explain_failure(4, None, Failure::Other), format!("  - the instruction at RIP: 0f 0b ({UD2})"));
    // After an I/O or MMIO exit: RIP on the instruction that made the access, or past it.
    let past = format!(
        "  - RIP is past the instruction that made the access (this host's KVM finished it before it exited); \
         the next one, at RIP: 0f 0b ({UD2})"
    );
    assert_eq!(m.explain_failure(4, None, Failure::Mmio), past);
    assert_eq!(m.explain_failure(4, None, Failure::Io), past);
    let out = Machine::new(&[0x66, 0xe7, 0xe9]); // out %ax,$0xe9
    assert_eq!(
        out.explain_failure(3, None, Failure::Io),
        "  - the instruction at RIP: 66 e7 e9 (out: an I/O port write)"
    );
    let store = Machine::new(&[0x88, 0x10]); // mov %dl,(%rax)
    assert_eq!(store.explain_failure(2, None, Failure::Mmio), "  - the instruction at RIP: 88 10 (it accesses memory)");
    m.sregs.idt_limit = 0x6f;
    m.sregs.idt_base = 0x1000;
    assert!(m.explain(4, None).ends_with(
        "  - the guest's own interrupt table (IDTR base 0x1000, limit 0x6f) did not handle the exception: delivering it \
         failed too (a missing or bad gate, a bad GDT entry for the handler, or a fault in the handler)"
    ));
}

#[test]
fn a_store_beyond_ram_gives_the_address_and_where_it_is() {
    // movq $42, 0x300000
    let store = [0x48, 0xc7, 0x04, 0x25, 0x00, 0x00, 0x30, 0x00, 0x2a, 0x00, 0x00, 0x00];
    let mut m = Machine::new(&[&[0x90][..], &store, &[0xc3]].concat());
    (m.regs.rip, m.sregs.cr2) = (1, 0x300000);
    assert_eq!(
        m.explain(14, None),
        format!(
            "  - the instruction at RIP: 48 c7 04 25 00 00 30 00 2a 00 00 00 (it accesses memory)\n\
             \x20 - page fault at 0x300000 (CR2): beyond the 2 MiB of RAM, where nothing is mapped\n{NO_TABLE}"
        )
    );
}

#[test]
fn a_page_fault_inside_ram_says_whether_the_guest_mapped_it() {
    let mut m = Machine::new(&[0x48, 0x89, 0x07]); // mov %rax,(%rdi)
    m.sregs.cr2 = 0x5008;
    assert!(m.explain(3, None).contains("page fault at 0x5008 (CR2): in RAM and mapped\n"));
    m.pte(0x5000)[0] &= !(PTE_WRITABLE as u8);
    let words = m.explain(3, None);
    assert!(
        words.starts_with(
            "  - the guest overwrote the page tables the hypervisor built at 0x1ff028 (PT 0, entry 5, for \
             0x5000..0x5fff: 0x5003 before, 0x5001 now)\n"
        ),
        "{words}"
    );
    assert!(words.contains("page fault at 0x5008 (CR2): mapped read-only by the guest's page tables"));
    m.pte(0x5000)[0] = 0;
    assert!(m.explain(3, None).contains(
        "page fault at 0x5008 (CR2): in RAM but not mapped by the guest's page tables, which the guest changed (see above)"
    ));
    // Without the tables as built (the hypervisor did not say): a question.
    let built = std::mem::take(&mut m.built_tables);
    let words = m.explain(3, None);
    assert!(!words.contains("the hypervisor built"), "{words}");
    assert!(words.contains(
        "page fault at 0x5008 (CR2): in RAM but not mapped by the guest's page tables (did the guest change them?)"
    ));
    m.built_tables = built;
    (m.sregs.cr2, m.regs.rsp) = (m.map.tables_base + 0x10, 0x10_0000);
    assert!(m.explain(3, None).contains("page fault at 0x1fc010 (CR2): inside the page tables (0x1fc000..0x1fffff)"));
    // A null pointer: page 0 unmapped by the guest itself, an access at 8.
    let mut m = Machine::new(&[0x90; 0x20]);
    m.ram[0x1000..0x1003].copy_from_slice(&[0x48, 0x89, 0x07]);
    (m.regs.rip, m.sregs.cr2) = (0x1000, 8);
    m.pte(0)[0] = 0;
    assert!(m.explain(0x1003, None).contains(
        "page fault at 0x8 (CR2): in RAM but not mapped by the guest's page tables, which the guest changed (see above): \
         a null pointer?"
    ));
    m.built_tables.clear();
    assert!(m.explain(0x1003, None).contains(
        "page fault at 0x8 (CR2): in RAM but not mapped by the guest's page tables (did the guest change them?): a null pointer?"
    ));
}

#[test]
fn a_runaway_stack_is_called_an_overflow() {
    let mut m = Machine::new(&[0x48, 0x89, 0x3c, 0x24]); // mov %rdi,(%rsp)
    (m.regs.rsp, m.sregs.cr2) = (0xffff_ffff_ffff_ff20, 0xffff_ffff_ffff_ff20);
    assert_eq!(
        m.explain(4, None),
        format!(
            "  - the instruction at RIP: 48 89 3c 24 (it accesses memory)\n\
             \x20 - page fault at 0xffffffffffffff20 (CR2) on the stack (near RSP): below address 0, outside the 2 MiB of RAM\n\
             \x20 - RSP 0xffffffffffffff20 is below address 0, outside the 2 MiB of RAM: the stack overflowed or was \
             corrupted (a runaway recursion, a large local array?)\n{NO_TABLE}"
        )
    );
    (m.regs.rsp, m.sregs.cr2) = (0x800, 0);
    assert!(m.explain(0x1000, None).contains(
        "  - RSP 0x800 is below the end of the image (0x1000): the stack overflowed into the guest's code and data \
         (a runaway recursion, a large local array?)"
    ));
    m.regs.rsp = m.map.tables_base + 8;
    assert!(m.explain(4, None).contains(
        "  - RSP 0x1fc008 is above where the stack starts (0x1fc000), inside the page tables: the stack was corrupted"
    ));
    m.regs.rsp = m.map.tables_base;
    assert!(!m.explain(4, None).contains("RSP"), "an empty stack is fine");
}

#[test]
fn a_jump_outside_ram_or_into_data_is_said_so() {
    let mut m = Machine::new(&[0xc3]);
    (m.regs.rip, m.sregs.cr2) = (0xc000_0000, 0xc000_0000);
    assert_eq!(
        m.explain(1, None),
        format!(
            "  - RIP 0xc0000000 is beyond the 2 MiB of RAM, where nothing is mapped: the guest jumped there (a bad function \
             pointer or a corrupted return address?)\n\
             \x20 - page fault at 0xc0000000 (CR2) fetching the instruction at RIP: beyond the 2 MiB of RAM, where nothing is \
             mapped\n{NO_TABLE}"
        )
    );
    m.regs.rip = 0x1000; // RAM, zeros, past the 1-byte image
    m.sregs.cr2 = 0;
    let words = m.explain(1, None);
    assert!(
        words.starts_with(
            "  - the instruction at RIP: 00 00 (it accesses memory)\n  - RIP 0x1000 is not in the guest's code"
        ),
        "{words}"
    );
}

/// A built guest's ELF and image.
fn guest(name: &str) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let elf = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest").join(format!("{name}.elf"));
    let read = |p: &PathBuf| {
        std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}: build the guests first (make guests)", p.display()))
    };
    (elf.clone(), read(&elf), read(&elf.with_extension("img")))
}

#[test]
fn with_symbols_the_place_is_named() {
    let (_, elf, image) = guest("crash");
    let symbols = Symbols::parse(&elf, &image).unwrap();
    assert_eq!(address(0xd, Some(&symbols)), "0xd in _start+0xd");
    let main = address(0x10, Some(&symbols));
    assert!(main.starts_with("0x10 in guest_main+0x0 (crash.c:"), "{main}");
    assert_eq!(address(0xd, None), "0xd");
    assert_eq!(address(0x10_0000, Some(&symbols)), "0x100000");
    // The image ends where the ELF says, and RIP in .rodata is not code.
    let mut m = Machine::new(&image);
    m.regs.rip = symbols.image_end().unwrap() - 1;
    m.regs.rsp = 0x10;
    let words = m.explain(image.len() as u64, Some(&symbols));
    assert!(words.contains("is not in the guest's code"), "{words}");
    assert!(words.contains(&format!("below the end of the image ({:#x})", image.len())), "{words}");
}

#[test]
fn overwritten_code_is_found_and_named() {
    let (_, elf, image) = guest("crash");
    let symbols = Symbols::parse(&elf, &image).unwrap();
    let mut ram = image.clone();
    let check = |ram: &Vec<u8>, rsp: u64| {
        let read = |addr: u64, buf: &mut [u8]| {
            buf.copy_from_slice(&ram[addr as usize..addr as usize + buf.len()]);
            true
        };
        overwritten_code(&symbols, rsp, &read)
    };
    assert_eq!(check(&ram, 0x1f_f000), None);
    ram[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    assert_eq!(
        check(&ram, 0x1f_f000).as_deref(),
        Some("the guest overwrote its own code at 0x8..0xf, in _start: a write through a null pointer?")
    );
    assert_eq!(
        check(&ram, 0).as_deref(),
        Some(
            "the guest overwrote its own code at 0x8..0xf, in _start: the stack grew down over it (a stack overflow?)"
        )
    );
    ram[0x11] ^= 0xff;
    ram[0x40] ^= 0xff;
    let two = check(&ram, 0x1f_f000).unwrap();
    assert!(
        two.starts_with("the guest overwrote its own code at 0x8..0x11, in _start (and in 1 more place): "),
        "{two}"
    );
    // Data (.rodata, .bss) may change: only code counts.
    let mut ram = image.clone();
    let last = ram.len() - 1;
    ram[last] = 0xaa;
    assert_eq!(check(&ram, 0x1f_f000), None);
}

/// Instruction lengths agree with objdump on every instruction of every guest.
#[test]
fn instruction_lengths_agree_with_objdump() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest");
    let (mut checked, mut unknown) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "elf") || !path.with_extension("img").is_file() {
            continue;
        }
        let image = std::fs::read(path.with_extension("img")).unwrap();
        let out = Command::new("objdump").args(["-d", "--insn-width=16"]).arg(&path).output().expect("objdump");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "  1c:\t48 c7 04 25 ...\tmovq ..."
            let mut parts = line.split('\t');
            let (Some(addr), Some(bytes), Some(text)) = (parts.next(), parts.next(), parts.next()) else { continue };
            let Ok(addr) = usize::from_str_radix(addr.trim().trim_end_matches(':'), 16) else { continue };
            let len = bytes.split_whitespace().count();
            let decoded = insn::decode(&image[addr..(addr + insn::MAX_LEN).min(image.len())]);
            match decoded.len {
                Some(n) => assert_eq!(n, len, "{}: {line}", path.display()),
                None => unknown += 1,
            }
            if text.starts_with("ud2") {
                assert!(decoded.name.unwrap().starts_with("ud2"));
            }
            checked += 1;
        }
    }
    assert!(checked > 5000, "only {checked} instructions: build the guests first (make guests)");
    assert_eq!(unknown, 0, "instructions not decoded");
}

#[test]
fn common_instructions_are_named() {
    let cases: [(&[u8], usize, &str); 27] = [
        (&[0xcc], 1, "int3"),
        (&[0xcd, 0x80], 2, "int n"),
        (&[0xf4], 1, "hlt"),
        (&[0xee], 1, "out"),
        (&[0x66, 0xe7, 0xe9], 3, "out"),
        (&[0xec], 1, "in"),
        (&[0x0f, 0x22, 0xd8], 3, "mov to a control register"),
        (&[0x0f, 0x01, 0x18], 3, "lidt"),
        (&[0x0f, 0x30], 2, "wrmsr"),
        (&[0x48, 0xcf], 2, "iretq"),
        (&[0x48, 0xf7, 0xf1], 3, "div"),
        (&[0xfa], 1, "cli"),
        (&[0x0f, 0x58, 0xc1], 3, "an SSE"),
        (&[0xf3, 0x0f, 0x1e, 0xfa], 4, ""), // endbr64: decoded, not named
        (&[0xeb, 0xfe], 2, "jmp to itself: an endless loop"),
        (&[0xe9, 0xfb, 0xff, 0xff, 0xff], 5, "jmp to itself"),
        (&[0xeb, 0xfd], 2, ""), // a jump back, not to itself
        (&[0xf3, 0x90], 2, "pause"),
        (&[0x90], 1, ""),
        (&[0xc3], 1, "ret: returns to the address on top of the stack"),
        (&[0xe8, 0, 0, 0, 0], 5, "call: pushes the return address"),
        (&[0xff, 0xd0], 2, "an indirect call"),
        (&[0xff, 0xe0], 2, "an indirect jump"),
        (&[0xf3, 0xa4], 2, "movs: copies memory"),
        (&[0xf3, 0x48, 0xab], 3, "stos: fills memory"),
        (&[0x8e, 0xd8], 2, "mov to a segment register"),
        (&[0x0f, 0x0b], 2, "ud2: the undefined instruction, which raises #UD on purpose: asm(\"ud2\")"),
    ];
    for (bytes, len, name) in cases {
        let i = insn::decode(bytes);
        assert_eq!(i.len, Some(len), "{bytes:02x?}");
        match name {
            "" => assert_eq!(i.name, None, "{bytes:02x?}: no name"),
            name => assert!(i.name.is_some_and(|n| n.starts_with(name)), "{bytes:02x?}: {:?}", i.name),
        }
    }
    // Cut short, or prefixes only: no length, no panic.
    assert_eq!(insn::decode(&[0x48, 0xc7]).len, None);
    assert_eq!(insn::decode(&[0x66; 15]).len, None);
    assert_eq!(insn::decode(&[]).len, None);
    assert_eq!(insn::decode(&[0xc5, 0xf8, 0x77]).name, Some("an AVX instruction (VEX or EVEX prefix)"));
    // The address of a memory operand the instruction holds whole: mov %rdi,0x8 (what gcc -O2
    // keeps of a store through a NULL pointer), movabs %al,0x1122334455667788; not [rip+8].
    assert_eq!(insn::decode(&[0x48, 0x89, 0x3c, 0x25, 8, 0, 0, 0]).absolute, Some(8));
    assert_eq!(insn::decode(&[0x89, 0x04, 0x25, 0xf0, 0xff, 0xff, 0xff]).absolute, Some(0xffff_ffff_ffff_fff0));
    assert_eq!(
        insn::decode(&[0xa2, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]).absolute,
        Some(0x1122_3344_5566_7788)
    );
    assert_eq!(insn::decode(&[0x48, 0x89, 0x05, 8, 0, 0, 0]).absolute, None);
    assert_eq!(insn::decode(&[0x48, 0x89, 0x04, 0x05, 8, 0, 0, 0]).absolute, None, "an index register");
    // Every byte string of up to 3 bytes: never a panic.
    for a in 0..=255u8 {
        for b in 0..=255u8 {
            for c in [0u8, 0x04, 0x05, 0x24, 0x44, 0x84, 0xc0, 0xff] {
                let _ = insn::decode(&[a, b, c]);
            }
        }
    }
}

#[test]
fn with_2_mib_pages_a_read_only_page_is_found_in_the_pd() {
    let mut m = Machine::with_pages(&[0x48, 0x89, 0x07], true); // mov %rax,(%rdi)
    m.sregs.cr2 = 0x5008;
    assert!(m.explain(3, None).contains("page fault at 0x5008 (CR2): in RAM and mapped\n"));
    let pd = (m.map.tables_base + 2 * TABLE_SIZE) as usize;
    m.ram[pd] &= !(PTE_WRITABLE as u8);
    assert!(m.explain(3, None).contains("page fault at 0x5008 (CR2): mapped read-only by the guest's page tables"));
    (m.sregs.cr2, m.regs.rsp) = (m.map.tables_base + 0x10, 0x10_0000);
    assert!(m.explain(3, None).contains("page fault at 0x1fd010 (CR2): inside the page tables (0x1fd000..0x1fffff)"));
}

/// A [`Target`] over a [`Machine`], counting the bytes read from its RAM.
struct Fake {
    m: RefCell<Machine>,
    read_bytes: RefCell<usize>,
}

impl Fake {
    fn new(m: Machine) -> Fake {
        Fake { m: RefCell::new(m), read_bytes: RefCell::new(0) }
    }
}

impl Target for Fake {
    fn regs(&self) -> io::Result<Regs> {
        Ok(self.m.borrow().regs)
    }
    fn set_regs(&self, regs: &Regs) -> io::Result<()> {
        self.m.borrow_mut().regs = *regs;
        Ok(())
    }
    fn system_regs(&self) -> io::Result<SystemRegs> {
        Ok(self.m.borrow().sregs)
    }
    fn set_system_regs(&self, _: &SystemRegs) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
        let m = self.m.borrow();
        let bytes = m.ram.get(gpa as usize..(gpa as usize).saturating_add(buf.len()));
        buf.copy_from_slice(bytes.ok_or(io::ErrorKind::InvalidInput)?);
        *self.read_bytes.borrow_mut() += buf.len();
        Ok(())
    }
    fn write_phys(&self, _: u64, _: &[u8]) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    fn set_debug(&self, _: &GuestDebug) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// An [`Explain`] of the built guest `name` in a 2 MiB machine, its image loaded at 0, with
/// the guest's ELF beside its image (not read yet).
fn explain_guest(name: &str) -> (Explain, Arc<SymbolFile>, Fake) {
    let (elf, _, image) = guest(name);
    let symbols = Arc::new(SymbolFile::new(&elf.with_extension("img"), image.clone().into()));
    let machine = Machine::new(&image);
    let map = MemoryMap { image_len: image.len() as u64, ..machine.map };
    let tables = machine.built_tables.clone();
    (Explain::new(map, Arc::clone(&symbols), tables), symbols, Fake::new(machine))
}

#[test]
fn at_the_end_an_unchanged_image_reads_no_elf() {
    fn shared<T: Send + Sync>() {}
    shared::<Explain>();
    let (explain, symbols, t) = explain_guest("crash");
    let image_len = symbols.image().len();
    assert_eq!(explain.overwritten(&t), None);
    assert!(!symbols.is_read(), "RAM holds the image: the ELF is not read");
    assert_eq!(*t.read_bytes.borrow(), image_len, "the image's bytes compared once");
    // Data after the code changed: the ELF is read, and says that no code changed.
    t.m.borrow_mut().ram[image_len - 1] ^= 0xff;
    assert_eq!(explain.overwritten(&t), None);
    assert!(symbols.is_read());
    // Code changed.
    t.m.borrow_mut().ram[8..16].copy_from_slice(&[0xaa; 8]);
    assert_eq!(
        explain.overwritten(&t).as_deref(),
        Some("the guest overwrote its own code at 0x8..0xf, in _start: a write through a null pointer?")
    );
}

#[test]
fn the_failure_report_names_rip_and_dumps_the_registers() {
    let (explain, symbols, t) = explain_guest("crash");
    t.m.borrow_mut().regs.rip = 0xd;
    let report = explain.failure_report(&t, "vm0 (crash.img)", Failure::TripleFault, &"triple fault");
    assert!(symbols.is_read(), "a report names places: the ELF is read");
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines[0], "mini_hypervisor: vm0 (crash.img): failed at RIP 0xd in _start+0xd: triple fault");
    assert_eq!(
        lines[1],
        "     rip 0x000000000000000d    rsp 0x00000000001fbfc0    rbp 0x0000000000000000 rflags 0x0000000000000002"
    );
    assert_eq!(lines[6], register_dump(&t.m.borrow().regs, &t.m.borrow().sregs).lines().nth(5).unwrap());
    assert!(lines[6].ends_with("    cs 0x0000000000000008"), "{}", lines[6]);
    assert_eq!(lines.len(), 7 + lines.iter().filter(|l| l.starts_with("  - ")).count() + 2);
    // The words, then the backtrace: RIP in _start, which has no caller.
    assert_eq!(lines[lines.len() - 3..], [NO_TABLE, "  backtrace:", "    #0 0xd in _start+0xd"]);
}

#[test]
fn the_backtrace_follows_the_call_frame_information_and_stops_at_a_bad_return_address() {
    let (explain, _, t) = explain_guest("crash");
    let (_, elf, image) = guest("crash");
    let symbols = Symbols::parse(&elf, &image).unwrap();
    // RIP on crash.c's ud2 in guest_main, called by _start (the return address 0xd).
    let rip = image.windows(2).position(|w| w == [0x0f, 0x0b]).unwrap() as u64;
    let row = symbols.frame_row(rip).expect("gcc's .debug_frame covers guest_main");
    let (reg, offset) = row.cfa.unwrap();
    assert_eq!(usize::from(reg), crate::symbols::frame::RSP);
    let rsp = t.m.borrow().regs.rsp;
    let ra_slot = (rsp as i64 + offset - 8) as usize;
    let set_ra = |ra: u64| t.m.borrow_mut().ram[ra_slot..ra_slot + 8].copy_from_slice(&ra.to_le_bytes());
    t.m.borrow_mut().regs.rip = rip;
    set_ra(0xd);
    let report = explain.failure_report(&t, "vm0 (crash.img)", Failure::TripleFault, &"triple fault");
    let main = symbols.describe(rip).unwrap();
    assert!(
        report.ends_with(&format!("  backtrace:\n    #0 {rip:#x} in {main}\n    #1 0xd in _start+0xd")),
        "{report}"
    );
    // A return address outside the code: the chain stops, and says why.
    set_ra(0x4141_4141_4141_4141);
    let report = explain.failure_report(&t, "vm0 (crash.img)", Failure::TripleFault, &"triple fault");
    assert!(
        report.ends_with(&format!(
            "    #0 {rip:#x} in {main}\n    (the chain stops here: the return address on the stack, 0x4141414141414141, \
             is not in the guest's code: a corrupted stack?)"
        )),
        "{report}"
    );
    // The stack unmapped by the guest: nothing is read from it.
    set_ra(0xd);
    let slot_page = ra_slot as u64 & !0xfff;
    t.m.borrow_mut().pte(slot_page).fill(0);
    let report = explain.failure_report(&t, "vm0 (crash.img)", Failure::TripleFault, &"triple fault");
    assert!(
        report.ends_with(&format!(
            "(the chain stops here: the return address at {ra_slot:#x} cannot be read through the guest's page tables)"
        )),
        "{report}"
    );
}

/// A function without call-frame information (a Rust guest's) is followed by its frame pointer
/// when its code begins by setting one up, with the rules of where in it RIP is.
#[test]
fn without_call_frame_information_a_frame_pointer_prologue_is_followed() {
    use crate::symbols::frame::Row;
    let (_, elf, image) = guest("rs_pagefault");
    let symbols = Symbols::parse(&elf, &image).unwrap();
    let store = image.windows(4).position(|w| w == [0x55, 0x48, 0x89, 0xe5]).unwrap() as u64;
    assert!(symbols.function(store).is_some_and(|(name, at)| name == "rs_pagefault::store" && at == 0));
    assert_eq!(symbols.frame_row(store), None, "rustc writes no call-frame information here");
    let ret = store + image[store as usize..].iter().position(|&b| b == 0xc3).unwrap() as u64;
    let row = |pc, innermost| backtrace::frame_pointer_row(&symbols, pc, innermost);
    assert_eq!(row(store, true), Some(Row::AFTER_CALL), "before the push");
    assert_eq!(row(store + 1, true), Some(Row::frame_pointer(false)), "after the push");
    assert_eq!(row(store + 4, true), Some(Row::frame_pointer(true)), "RBP set");
    assert_eq!(row(ret, true), Some(Row::AFTER_CALL), "on its ret, RBP is the caller's again");
    assert_eq!(row(ret, false), Some(Row::frame_pointer(true)), "a caller is never on its ret");
    assert_eq!(row(0, true), None, "_start sets up no frame");
}

#[test]
fn the_guest_library_is_told_by_file_in_c_and_by_crate_in_rust() {
    use backtrace::in_guest_library as lib;
    assert!(lib("outb", Some("hv.h")) && lib("f_open", Some("hv.c")) && lib("_start", None));
    assert!(!lib("guest_main", Some("myfiles.c")) && !lib("greet", Some("mine.c")));
    assert!(lib("hv::port::outb", Some("port.rs")) && lib("<hv::file::File as core::ops::drop::Drop>::drop", None));
    assert!(lib("core::panicking::panic_fmt", None) && lib("__rustc::rust_begin_unwind", None));
    assert!(lib("hv_fail", None) && !lib("rs_filecopy::copy", Some("rs_filecopy.rs")));
    assert!(!lib("hvac::run", None), "a crate whose name begins as hv's is not hv");
}

#[test]
fn a_ud2_the_compiler_put_after_a_null_access_is_said_so() {
    let (_, elf, image) = guest("nulltrap");
    let symbols = Symbols::parse(&elf, &image).unwrap();
    let ud2 = image.windows(2).position(|w| w == [0x0f, 0x0b]).expect("gcc -O2 put a ud2 in nulltrap") as u64;
    assert!(
        symbols.function(ud2).is_some_and(|(name, _)| name.starts_with("link_after")),
        "{:?}",
        symbols.function(ud2)
    );
    let mut m = Machine::new(&image);
    m.regs.rip = ud2;
    let words = m.explain(image.len() as u64, Some(&symbols));
    let store = ud2 - 8; // mov %rax,0x8
    assert!(
        words.contains(&format!(
            "  - the instruction before it, at {store:#x}, accesses address 0x8 through a NULL pointer: the compiler saw \
             that the pointer is always NULL there, kept the access, and put the ud2 after it\n"
        )),
        "{words}"
    );
    // A ud2 written in the source, after a call: nothing more.
    let (_, elf, image) = guest("crash");
    let symbols = Symbols::parse(&elf, &image).unwrap();
    let mut m = Machine::new(&image);
    m.regs.rip = image.windows(2).position(|w| w == [0x0f, 0x0b]).unwrap() as u64;
    let words = m.explain(image.len() as u64, Some(&symbols));
    assert!(words.contains(UD2) && !words.contains("before it"), "{words}");
}

#[test]
fn the_end_of_ram_is_beyond_it_and_the_byte_below_is_not() {
    // A load from 0x200000, the first byte past 2 MiB: mov (%rdi),%al.
    let mut m = Machine::new(&[0x8a, 0x07]);
    m.sregs.cr2 = 2 * MIB;
    assert!(
        m.explain(2, None).contains("page fault at 0x200000 (CR2): beyond the 2 MiB of RAM, where nothing is mapped")
    );
    m.sregs.cr2 = 2 * MIB - 1;
    let words = m.explain(2, None);
    assert!(words.contains("page fault at 0x1fffff (CR2): inside the page tables (0x1fc000..0x1fffff)"), "{words}");
    assert!(!words.contains("beyond"), "{words}");
    // RIP at the end of RAM, and one byte below (whose byte reads: it is mapped).
    let mut m = Machine::new(&[0xc3]);
    m.regs.rip = 2 * MIB;
    assert!(m.explain(1, None).starts_with("  - RIP 0x200000 is beyond the 2 MiB of RAM, where nothing is mapped"));
    m.regs.rip = 2 * MIB - 1;
    let words = m.explain(1, None);
    assert!(words.starts_with("  - the instruction at RIP: 00") && !words.contains("beyond"), "{words}");
    // RSP at the end of RAM is the top of the table area; above it, beyond RAM.
    m.regs.rip = 0;
    m.regs.rsp = 2 * MIB;
    assert!(
        m.explain(1, None).contains("RSP 0x200000 is above where the stack starts (0x1fc000), inside the page tables")
    );
    m.regs.rsp = 2 * MIB + 8;
    assert!(m.explain(1, None).contains("RSP 0x200008 is beyond the 2 MiB of RAM, where nothing is mapped: the stack"));
}

#[test]
fn rip_in_ram_but_unmapped_is_a_jump_or_the_guests_own_change_to_the_tables() {
    // The guest unmapped the page of its code at 0x3000 and jumped there.
    let mut m = Machine::new(&[0xc3]);
    m.ram[0x3000] = 0x90;
    m.pte(0x3000).fill(0);
    (m.regs.rip, m.sregs.cr2) = (0x3000, 0x3000);
    assert_eq!(
        m.explain(0x3001, None),
        format!(
            "  - the guest overwrote the page tables the hypervisor built at 0x1ff018 (PT 0, entry 3, for 0x3000..0x3fff: \
             0x3003 before, 0x0 now)\n\
             \x20 - RIP 0x3000 is in RAM but not mapped by the guest's page tables, which the guest changed (see above)\n\
             \x20 - page fault at 0x3000 (CR2) fetching the instruction at RIP: in RAM but not mapped by the guest's page \
             tables, which the guest changed (see above)\n{NO_TABLE}"
        )
    );
    // On tables of its own (CR3 elsewhere, the hypervisor's unchanged): the jump is the guess.
    let mut own = Machine::new(&[0xc3]);
    let (pml4, pt) = (0x10_0000, 0x10_3000);
    own.ram.copy_within(own.map.tables_base as usize..2 * MIB as usize, pml4);
    for (table, next) in [(pml4, pml4 + 0x1000), (pml4 + 0x1000, pml4 + 0x2000), (pml4 + 0x2000, pt)] {
        own.ram[table..table + 8].copy_from_slice(&(next as u64 | PTE_PRESENT | PTE_WRITABLE).to_le_bytes());
    }
    own.ram[pt + 3 * 8..pt + 4 * 8].fill(0);
    own.sregs.cr3 = pml4 as u64;
    (own.regs.rip, own.sregs.cr2) = (0x3000, 0x3000);
    let words = own.explain(1, None);
    assert!(
        words.starts_with(
            "  - RIP 0x3000 is in RAM but not mapped by the guest's page tables: the guest jumped there (a bad function \
             pointer or a corrupted return address?)\n"
        ),
        "{words}"
    );
}

#[test]
fn changed_tables_are_named_by_table_and_entry_without_the_cpus_own_bits() {
    let (map, built) = identity_map(4 * MIB, false); // PML4, PDPT, PD, PT 0, PT 1
    let base = map.tables_base;
    let find = |now: &[u8]| TablesChanged::find(&built, now, base).map(|c| tables_changed(&c));
    assert_eq!(find(&built), None);
    // The CPU sets Accessed and Dirty bits as it walks: not a change.
    let mut now = built.clone();
    for entry in now.chunks_exact_mut(8) {
        entry[0] |= 0x60;
    }
    assert_eq!(find(&now), None);
    let set = |now: &mut Vec<u8>, page: u64, index: u64, value: u64| {
        let at = (page * TABLE_SIZE + index * 8) as usize;
        now[at..at + 8].copy_from_slice(&value.to_le_bytes());
    };
    let cases = [
        (0, 0, 0, "at 0x3fb000 (PML4, entry 0, for 0x0..0x7fffffffff: 0x3fc003 before, 0x0 now)"),
        (0, 256, 1, "at 0x3fb800 (PML4, entry 256, for 0xffff800000000000..0xffff807fffffffff: 0x0 before, 0x1 now)"),
        (1, 1, 0x1023, "at 0x3fc008 (PDPT, entry 1, for 0x40000000..0x7fffffff: 0x0 before, 0x1023 now)"),
        (2, 1, 0, "at 0x3fd008 (PD, entry 1, for 0x200000..0x3fffff: 0x3ff003 before, 0x0 now)"),
        (4, 511, 0x4141, "at 0x3ffff8 (PT 1, entry 511, for 0x3ff000..0x3fffff: 0x3ff003 before, 0x4141 now)"),
    ];
    for (page, index, value, words) in cases {
        let mut now = built.clone();
        set(&mut now, page, index, value);
        assert_eq!(find(&now), Some(format!("the guest overwrote the page tables the hypervisor built {words}")));
    }
    let mut now = built.clone();
    set(&mut now, 3, 7, 0);
    set(&mut now, 3, 8, 0);
    set(&mut now, 4, 0, 0);
    assert!(find(&now).unwrap().ends_with("0x7003 before, 0x0 now) (and 2 more entries)"));
    set(&mut now, 4, 0, built_entry(&built, 4, 0));
    assert!(find(&now).unwrap().ends_with(" (and 1 more entry)"));
    // Not comparable: nothing said.
    assert_eq!(TablesChanged::find(&built, &now[8..], base), None);
}

fn built_entry(built: &[u8], page: u64, index: u64) -> u64 {
    let at = (page * TABLE_SIZE + index * 8) as usize;
    u64::from_le_bytes(built[at..at + 8].try_into().unwrap())
}

/// Random and hostile stacks and registers under real guests' call-frame information (`-O2`
/// guests, and debugme, always `-O0`, whose frames go through RBP), and under Rust guests'
/// frame pointers (rs_panic, rs_pagefault: no call-frame information): the walk never panics,
/// never shows more than [`backtrace::MAX_FRAMES`] frames, and every caller it shows is in the
/// guest's code. The seed is printed; `MH_BACKTRACE_SEED=N` repeats a run.
#[test]
fn random_and_hostile_stacks_give_a_bounded_backtrace_and_no_panic() {
    use crate::test_rng::Rng;
    let seed = match std::env::var("MH_BACKTRACE_SEED") {
        Ok(s) => s.parse().expect("MH_BACKTRACE_SEED: a decimal number"),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    };
    let guests: Vec<(Symbols, Vec<u8>)> =
        ["crash", "debugme", "recurse", "tables", "nulltrap", "rs_panic", "rs_pagefault"]
            .iter()
            .map(|name| {
                let (_, elf, image) = guest(name);
                (Symbols::parse(&elf, &image).unwrap(), image)
            })
            .collect();
    let mut rng = Rng::new(seed);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for _ in 0..3000 {
            let (symbols, image) = rng.pick(&guests);
            let mut m = Machine::with_pages(image, rng.chance(30));
            let top = m.map.tables_base;
            let code: Vec<u64> = symbols.code().flat_map(|(a, b)| [a, a + b.len() as u64 - 1]).collect();
            // A value a hostile stack or register could hold.
            let value = |rng: &mut Rng| match rng.below(8) {
                0 => *rng.pick(&code) + rng.below(0x40),
                1 => top - rng.below(0x400),
                2 => top - 8 * rng.below(0x80),
                3 => rng.next(),
                4 => 0,
                5 => u64::MAX - rng.below(0x100),
                6 => 0xd,
                _ => 2 * MIB + rng.below(0x100),
            };
            let from = (top - 0x800) as usize;
            for at in (from..top as usize).step_by(8) {
                let word = if rng.chance(50) { value(&mut rng) } else { rng.next() };
                m.ram[at..at + 8].copy_from_slice(&word.to_le_bytes());
            }
            m.regs.rip = if rng.chance(70) { *rng.pick(&code) + rng.below(0x20) } else { value(&mut rng) };
            m.regs.rsp = if rng.chance(70) { top - rng.below(0x800) } else { value(&mut rng) };
            m.regs.rbp = if rng.chance(50) { top - rng.below(0x800) } else { value(&mut rng) };
            m.regs.rbx = value(&mut rng);
            if rng.chance(10) {
                m.sregs.cr3 = value(&mut rng);
            }
            if rng.chance(10) && !m.map.large_pages {
                m.pte(top - 0x1000).fill(0); // the stack's page unmapped
            }
            let read =
                |addr: u64, buf: &mut [u8]| match m.ram.get(addr as usize..(addr as usize).saturating_add(buf.len())) {
                    Some(bytes) => {
                        buf.copy_from_slice(bytes);
                        true
                    }
                    None => false,
                };
            let stack = backtrace::Stack { regs: &m.regs, cr3: m.sregs.cr3, read: &read };
            let trace = backtrace::unwind(&stack, symbols, backtrace::MAX_FRAMES);
            assert!(trace.frames.len() <= backtrace::MAX_FRAMES);
            assert!(trace.frames[1..].iter().all(|&ret| symbols.in_code(ret)), "{trace:?}");
            let text = backtrace::lines(&stack, symbols);
            assert!(text.lines().count() <= backtrace::MAX_FRAMES + 2, "{text}");
            assert!(text.lines().all(crate::text::is_printable), "{text}");
            let _ = backtrace::first_outside_library(&stack, symbols);
        }
    }));
    if let Err(panic) = result {
        eprintln!("backtrace fuzz: failed: repeat with MH_BACKTRACE_SEED={seed}");
        std::panic::resume_unwind(panic);
    }
}

/// Where section `name` is in the ELF at `path` (file offset, size), by readelf.
fn section_of(path: &std::path::Path, name: &str) -> (usize, usize) {
    let out = Command::new("readelf").arg("-SW").arg(path).output().expect("readelf");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains(&format!(" {name} "))).unwrap_or_else(|| panic!("no {name}"));
    let f: Vec<&str> = line.split(']').nth(1).unwrap().split_whitespace().collect();
    (usize::from_str_radix(f[3], 16).unwrap(), usize::from_str_radix(f[4], 16).unwrap())
}

/// Bytes a hostile name could hold: control characters, escape sequences (7- and 8-bit),
/// DEL, newlines, and UTF-8 that reorders or hides text.
fn hostile_name(rng: &mut crate::test_rng::Rng, len: usize, utf8: bool) -> Vec<u8> {
    const PIECES: [&[u8]; 12] = [
        b"\x1b[2J",
        b"\x1b]0;owned\x07",
        b"\n",
        b"\r",
        b"\x7f",
        b"\x08",
        b"\t",
        "\u{202e}".as_bytes(),
        "\u{9b}".as_bytes(), // an 8-bit CSI
        "é".as_bytes(),
        b"mini_hypervisor: vm0: failed",
        b"a",
    ];
    let mut name = Vec::new();
    while name.len() < len {
        let piece: Vec<u8> = if !utf8 && rng.chance(30) { vec![rng.byte().max(1)] } else { rng.pick(&PIECES).to_vec() };
        if name.len() + piece.len() <= len {
            name.extend(piece);
        } else {
            name.push(b'a' + rng.below(26) as u8);
        }
    }
    name
}

/// Every path that prints a name from the ELF, with ELFs whose symbol and file names are
/// hostile bytes: the crash report (RIP, words, backtrace), `describe`, `--trace` lines with
/// their caller, and the code-overwritten warning. Nothing below 0x20 but the lines' own
/// newlines, no DEL, and no more lines than with the clean ELF. `MH_NAMES_SEED=N` repeats a run.
#[test]
fn hostile_names_in_the_elf_reach_stderr_as_printable_text_only() {
    use crate::test_rng::Rng;
    use crate::trace::Trace;
    let seed = match std::env::var("MH_NAMES_SEED") {
        Ok(s) => s.parse().expect("MH_NAMES_SEED: a decimal number"),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    };
    let (path, elf, image) = guest("crash");
    let sections = [(section_of(&path, ".strtab"), true), (section_of(&path, ".debug_line_str"), false)];
    let clean = Symbols::parse(&elf, &image).unwrap();
    let ud2 = image.windows(2).position(|w| w == [0x0f, 0x0b]).unwrap() as u64;
    let puts = (0..image.len() as u64).find(|&a| clean.function(a) == Some(("puts_e9", 0))).unwrap();
    let ok = |text: &str| text.bytes().all(|b| b == b'\n' || (0x20..0x7f).contains(&b));
    // Runs every printing path over `symbols`: the texts, and the report's line count.
    let texts = |symbols: Symbols| -> (Vec<String>, usize) {
        let file = Arc::new(SymbolFile::preloaded(&path.with_extension("img"), image.clone().into(), Some(symbols)));
        let s = file.get().unwrap();
        let mut out: Vec<String> = (0..image.len() as u64).filter_map(|a| s.describe(a)).collect();
        out.extend((1..image.len() as u64).filter_map(|a| s.describe_return(a)));
        let machine = Machine::new(&image);
        let map = MemoryMap { image_len: image.len() as u64, ..machine.map };
        let explain = Explain::new(map, Arc::clone(&file), machine.built_tables.clone());
        let t = Fake::new(machine);
        {
            let mut m = t.m.borrow_mut();
            m.regs.rip = ud2;
            let slot = (m.regs.rsp + 8) as usize; // guest_main's return address (sub $8,%rsp)
            m.ram[slot..slot + 8].copy_from_slice(&0xdu64.to_le_bytes());
        }
        let report = explain.failure_report(&t, "vm0 (crash.img)", Failure::TripleFault, &"triple fault");
        let lines = report.lines().count();
        out.push(report);
        // --trace, in puts_e9 called from guest_main (its return address on the stack).
        {
            let mut m = t.m.borrow_mut();
            m.regs.rip = puts + 1;
            let (rsp, ret) = (m.regs.rsp as usize, ud2);
            m.ram[rsp..rsp + 8].copy_from_slice(&ret.to_le_bytes());
        }
        let trace = Trace::new("vm0 (crash.img)", Arc::clone(&file));
        let exit = crate::Exit::Io { out: true, port: 0xe9, size: 1, count: 1 };
        out.push(trace.exit_line(&t, 1, Ok(&exit), b"\x1b[2J"));
        t.m.borrow_mut().ram[0x10..0x18].fill(0xcc);
        out.extend(explain.overwritten(&t));
        (out, lines)
    };
    let (clean_texts, clean_lines) = texts(clean);
    assert!(clean_texts.iter().all(|t| ok(t)));
    assert!(clean_texts.iter().any(|t| t.contains(" via guest_main+")), "the trace path names a caller");
    let mut rng = Rng::new(seed);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut used = 0;
        for _ in 0..150 {
            let mut hostile = elf.clone();
            for ((offset, size), utf8) in sections {
                let table = &mut hostile[offset..offset + size];
                let mut start = 1;
                while start < table.len() {
                    let len = table[start..].iter().position(|&b| b == 0).unwrap_or(table.len() - start);
                    if len > 0 && rng.chance(70) {
                        table[start..start + len].copy_from_slice(&hostile_name(&mut rng, len, utf8));
                    }
                    start += len + 1;
                }
            }
            let Ok(symbols) = Symbols::parse(&hostile, &image) else { continue };
            used += 1;
            let (texts, lines) = texts(symbols);
            for text in &texts {
                assert!(ok(text), "{text:?}");
            }
            // The report: as many lines as with clean names (one more when `_start` is renamed:
            // then the backtrace says that its callers are unknown), each of a known kind.
            let report = texts.iter().find(|t| t.starts_with("mini_hypervisor: vm0")).unwrap();
            assert!(lines == clean_lines || lines == clean_lines + 1, "{report}");
            let kinds = ["mini_hypervisor: vm0 (crash.img): failed at RIP ", "     ", "  - ", "  backtrace:", "    #"];
            for line in report.lines() {
                let known =
                    kinds.iter().any(|k| line.starts_with(k)) || line.starts_with("    (the chain stops here: ");
                assert!(known, "{line}");
            }
        }
        assert!(used > 100, "only {used} hostile ELFs were usable");
    }));
    if let Err(panic) = result {
        eprintln!("hostile names: failed: repeat with MH_NAMES_SEED={seed}");
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn a_signal_that_stopped_the_vm_is_named() {
    // Linux's numbers: SIGHUP 1, SIGINT 2, SIGQUIT 3, SIGUSR1 10, SIGUSR2 12, SIGTERM 15.
    let names = [
        (1, "SIGHUP"),
        (2, "SIGINT/SIGTERM"),
        (3, "SIGQUIT"),
        (10, "SIGUSR1"),
        (12, "SIGUSR2"),
        (15, "SIGINT/SIGTERM"),
    ];
    for (signal, name) in names {
        assert_eq!(super::interrupted(signal), format!("interrupted ({name})"));
    }
    assert_eq!(super::interrupted(34), "interrupted (signal 34)");
}
