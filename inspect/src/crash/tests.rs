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
}

impl Machine {
    fn new(code: &[u8]) -> Machine {
        Machine::with_pages(code, false)
    }

    fn with_pages(code: &[u8], large_pages: bool) -> Machine {
        let (map, mut ram, sregs) = long_mode(2 * MIB, large_pages);
        ram[..code.len()].copy_from_slice(code);
        let regs = Regs { rsp: map.tables_base - 0x40, rflags: 2, ..Regs::default() };
        Machine { map, ram, regs, sregs }
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
        explain(&Evidence { regs: &self.regs, sregs: &self.sregs, map: &map, symbols, failure, read: &read })
    }
}

const NO_TABLE: &str = "  - the guest has no interrupt table (IDTR limit 0), so any exception ends in a triple fault, \
                        with RIP on the instruction that raised it";

#[test]
fn ud2_is_named_and_the_missing_interrupt_table_explained() {
    let mut m = Machine::new(&[0x90, 0x0f, 0x0b, 0xc3]);
    m.regs.rip = 1;
    assert_eq!(
        m.explain(4, None),
        format!(
            "  - the instruction at RIP: 0f 0b (ud2: the undefined instruction, which raises #UD on purpose)\n{NO_TABLE}"
        )
    );
    // Not a triple fault: nothing about the interrupt table.
    assert_eq!(
        m.explain_failure(4, None, Failure::Other),
        "  - the instruction at RIP: 0f 0b (ud2: the undefined instruction, which raises #UD on purpose)"
    );
    // After an I/O or MMIO exit: RIP on the instruction that made the access, or past it.
    let past = "  - RIP is past the instruction that made the access (this host's KVM finished it before it exited); \
                the next one, at RIP: 0f 0b (ud2: the undefined instruction, which raises #UD on purpose)";
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
    assert!(m.explain(3, None).contains("page fault at 0x5008 (CR2): mapped read-only by the guest's page tables"));
    m.pte(0x5000)[0] = 0;
    assert!(m.explain(3, None).contains(
        "page fault at 0x5008 (CR2): in RAM but not mapped by the guest's page tables (did the guest change them?)"
    ));
    (m.sregs.cr2, m.regs.rsp) = (m.map.tables_base + 0x10, 0x10_0000);
    assert!(m.explain(3, None).contains("page fault at 0x1fc010 (CR2): inside the page tables (0x1fc000..0x1fffff)"));
    // A null pointer: page 0 unmapped by the guest itself, an access at 8.
    let mut m = Machine::new(&[0x90; 0x20]);
    m.ram[0x1000..0x1003].copy_from_slice(&[0x48, 0x89, 0x07]);
    (m.regs.rip, m.sregs.cr2) = (0x1000, 8);
    m.pte(0)[0] = 0;
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
    let cases: [(&[u8], usize, &str); 14] = [
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
    (Explain::new(map, Arc::clone(&symbols)), symbols, Fake::new(machine))
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
    assert_eq!(lines.len(), 7 + lines.iter().filter(|l| l.starts_with("  - ")).count());
    assert_eq!(*lines.last().unwrap(), NO_TABLE);
}
