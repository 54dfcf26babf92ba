//! The guest machine's starting state, as plain data (docs/REFERENCE.md §2): RAM `[0, M)`
//! mapped to itself (virtual = physical), 64-bit long mode, flat segments.
//!
//! C counterpart: `setup_long_mode` (page tables, CR3, CR4.PAE, CR0.PE|PG, EFER.LME|LMA) and
//! `setup_segments_64` (flat 64-bit code and data segments), the same in every version of the
//! C's `mini_hypervisor.c`. Unlike the C, which puts the tables at a fixed 0x11000 that a large
//! image overwrites, the tables take the last pages below the top of RAM, M:
//!
//! ```text
//!  0 ......................... image ... free ... stack | PML4 | PDPT | PD | PT... |  M
//!  RIP = 0                                   RSP = CR3 ^
//! ```
#![forbid(unsafe_code)]

use crate::kvm::{KvmDtable, KvmSegment, KvmSregs};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
/// Size of one page-table page, and of a small page.
pub const TABLE_SIZE: u64 = 4 * KIB;
/// Each table holds 512 eight-byte entries.
const ENTRIES: u64 = 512;

// Page-table entry bits.
pub const PTE_PRESENT: u64 = 1 << 0;
pub const PTE_WRITABLE: u64 = 1 << 1;
/// In a PD entry: it maps a 2 MiB page instead of pointing to a page table.
pub const PDE_PAGE_SIZE: u64 = 1 << 7;

// Control-register and EFER bits.
pub const CR0_PE: u64 = 1 << 0; // protected mode
pub const CR0_MP: u64 = 1 << 1; // monitor coprocessor (needed for SSE)
pub const CR0_EM: u64 = 1 << 2; // x87 emulation: must be clear for SSE
pub const CR0_ET: u64 = 1 << 4; // extension type (always 1 on modern CPUs)
pub const CR0_NE: u64 = 1 << 5; // native FPU error reporting
pub const CR0_WP: u64 = 1 << 16; // write protect, also for the kernel
pub const CR0_AM: u64 = 1 << 18; // alignment mask
pub const CR0_PG: u64 = 1 << 31; // paging
pub const CR4_PAE: u64 = 1 << 5; // physical address extension (long mode needs it)
pub const CR4_OSFXSR: u64 = 1 << 9; // OS supports FXSAVE/FXRSTOR: enables SSE
pub const CR4_OSXMMEXCPT: u64 = 1 << 10; // OS handles SIMD floating-point exceptions
pub const EFER_LME: u64 = 1 << 8; // long mode enable
pub const EFER_LMA: u64 = 1 << 10; // long mode active

/// The page size the guest's RAM is mapped with (`-p 4` / `-p 2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSize {
    Small4K,
    Large2M,
}

/// Where things are in guest RAM for one memory size and page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// M, the RAM size in bytes.
    pub mem_size: u64,
    pub page: PageSize,
    /// Lowest address of the page tables = address of the PML4 = CR3 = initial RSP; also the
    /// largest image that fits (all of RAM below the tables).
    pub tables_base: u64,
}

impl Layout {
    /// The tables: PML4 + PDPT + PD, plus, for 4 KiB pages, one page table per 2 MiB of RAM.
    pub fn new(mem_size: u64, page: PageSize) -> Layout {
        let tables = 3 + if page == PageSize::Small4K { mem_size.div_ceil(2 * MIB) } else { 0 };
        Layout { mem_size, page, tables_base: mem_size - tables * TABLE_SIZE }
    }

    /// C: the table writes of `setup_long_mode`: the bytes of the table area `[tables_base, M)`.
    pub fn page_tables(&self) -> Vec<u8> {
        let base = self.tables_base;
        let (pml4, pdpt, pd) = (base, base + TABLE_SIZE, base + 2 * TABLE_SIZE);
        let first_pt = base + 3 * TABLE_SIZE;
        let mut area = vec![0u8; (self.mem_size - base) as usize];
        let mut set = |table: u64, index: u64, entry: u64| {
            let at = (table - base + index * 8) as usize;
            area[at..at + 8].copy_from_slice(&entry.to_le_bytes());
        };
        let table_entry = PTE_PRESENT | PTE_WRITABLE;
        set(pml4, 0, pdpt | table_entry); // PML4[0] -> PDPT: covers 512 GiB
        set(pdpt, 0, pd | table_entry); // PDPT[0] -> PD: covers 1 GiB
        for region in 0..self.mem_size.div_ceil(2 * MIB) {
            let region_base = region * 2 * MIB;
            match self.page {
                // PD[i] maps the 2 MiB page at i * 2 MiB directly.
                PageSize::Large2M => set(pd, region, region_base | table_entry | PDE_PAGE_SIZE),
                // PD[i] -> PT i, whose 512 entries map the 4 KiB pages of that 2 MiB.
                PageSize::Small4K => {
                    let pt = first_pt + region * TABLE_SIZE;
                    set(pd, region, pt | table_entry);
                    for page in 0..ENTRIES {
                        set(pt, page, (region_base + page * TABLE_SIZE) | table_entry);
                    }
                }
            }
        }
        area
    }
}

/// C: `setup_segments_64`, the code segment: flat 64-bit code, GDT entry 1.
pub const CODE_SEGMENT: KvmSegment = KvmSegment {
    base: 0,
    limit: 0xffff_ffff,
    selector: 1 << 3,
    type_: 11, // execute/read, accessed
    present: 1,
    dpl: 0,
    db: 0, // must be 0 when L = 1
    s: 1,  // code/data, not system
    l: 1,  // 64-bit code
    g: 1,  // limit in 4 KiB units
    avl: 0,
    unusable: 0,
    padding: 0,
};

/// C: `setup_segments_64`, the data segments: flat, type 3 (read/write, accessed), GDT entry 2.
pub const DATA_SEGMENT: KvmSegment = KvmSegment { selector: 2 << 3, type_: 3, db: 1, l: 0, ..CODE_SEGMENT };

/// C: `setup_long_mode` and `setup_segments_64`: the special registers for 64-bit long mode
/// with paging rooted at `layout`'s PML4, from what `KVM_GET_SREGS` returned (so that TR, LDT
/// and the rest stay valid). No interrupt table (IDTR limit 0; the reset 0xFFFF would have the
/// CPU read gates out of the guest's code at 0): an exception the guest does not handle is a
/// triple fault with RIP still on the faulting instruction.
pub fn long_mode_sregs(mut sregs: KvmSregs, layout: &Layout) -> KvmSregs {
    sregs.cr3 = layout.tables_base;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.cr0 = (CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG) & !CR0_EM;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs.cs = CODE_SEGMENT;
    [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] = [DATA_SEGMENT; 5];
    sregs.idt = KvmDtable { base: 0, limit: 0, ..sregs.idt };
    sregs
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [(u64, PageSize); 6] = [
        (2 * MIB, PageSize::Small4K),
        (4 * MIB, PageSize::Small4K),
        (8 * MIB, PageSize::Small4K),
        (2 * MIB, PageSize::Large2M),
        (4 * MIB, PageSize::Large2M),
        (8 * MIB, PageSize::Large2M),
    ];

    /// Guest RAM with the tables written where the hypervisor writes them.
    fn ram_with_tables(layout: &Layout) -> Vec<u8> {
        let mut ram = vec![0u8; layout.mem_size as usize];
        let base = layout.tables_base as usize;
        ram[base..].copy_from_slice(&layout.page_tables());
        ram
    }

    fn entry(ram: &[u8], table: u64, index: u64) -> u64 {
        let at = (table + index * 8) as usize;
        u64::from_le_bytes(ram[at..at + 8].try_into().unwrap())
    }

    /// A software page walk, as the MMU does it: the physical address of `va`, or None.
    fn translate(ram: &[u8], cr3: u64, va: u64) -> Option<u64> {
        let addr_mask = 0x000f_ffff_ffff_f000;
        let pml4e = entry(ram, cr3, (va >> 39) & 511);
        if pml4e & PTE_PRESENT == 0 {
            return None;
        }
        let pdpte = entry(ram, pml4e & addr_mask, (va >> 30) & 511);
        if pdpte & PTE_PRESENT == 0 {
            return None;
        }
        assert_eq!(pdpte & PDE_PAGE_SIZE, 0, "no 1 GiB pages expected");
        let pde = entry(ram, pdpte & addr_mask, (va >> 21) & 511);
        if pde & PTE_PRESENT == 0 {
            return None;
        }
        if pde & PDE_PAGE_SIZE != 0 {
            return Some((pde & 0x000f_ffff_ffe0_0000) + (va & (2 * MIB - 1)));
        }
        let pte = entry(ram, pde & addr_mask, (va >> 12) & 511);
        if pte & PTE_PRESENT == 0 {
            return None;
        }
        Some((pte & addr_mask) + (va & 0xfff))
    }

    #[test]
    fn every_page_below_m_is_identity_mapped_and_nothing_above() {
        for (mem, page) in ALL {
            let layout = Layout::new(mem, page);
            let ram = ram_with_tables(&layout);
            let cr3 = layout.tables_base;
            for va in (0..mem).step_by(TABLE_SIZE as usize) {
                assert_eq!(translate(&ram, cr3, va), Some(va), "{mem:#x} {page:?} va {va:#x}");
                assert_eq!(translate(&ram, cr3, va + 0xabc), Some(va + 0xabc));
            }
            for va in [mem, mem + TABLE_SIZE, 1 << 30, 1 << 39, 0xffff_ffff_ffff_f000 & ((1 << 48) - 1)] {
                assert_eq!(translate(&ram, cr3, va), None, "{mem:#x} {page:?} va {va:#x} must be unmapped");
            }
        }
    }

    #[test]
    fn pd_entries_have_the_page_size_bit_only_for_2m_pages() {
        for (mem, page) in ALL {
            let layout = Layout::new(mem, page);
            let ram = ram_with_tables(&layout);
            let pd = layout.tables_base + 2 * TABLE_SIZE;
            for i in 0..512 {
                let pde = entry(&ram, pd, i);
                if i < mem / (2 * MIB) {
                    assert_ne!(pde & PTE_PRESENT, 0);
                    assert_eq!(pde & PDE_PAGE_SIZE != 0, page == PageSize::Large2M);
                } else {
                    assert_eq!(pde, 0, "PD[{i}] must be empty for {mem:#x}");
                }
            }
        }
    }

    #[test]
    fn tables_sit_at_the_top_of_ram_above_the_image_area() {
        let expected_pages = [4, 5, 7, 3, 3, 3];
        for ((mem, page), pages) in ALL.into_iter().zip(expected_pages) {
            let layout = Layout::new(mem, page);
            assert_eq!(layout.tables_base, mem - pages * TABLE_SIZE);
            assert_eq!(layout.page_tables().len() as u64, pages * TABLE_SIZE);
            // Every table page the walk uses lies in [tables_base, M).
            let ram = ram_with_tables(&layout);
            let mut tables = vec![layout.tables_base];
            let mask = 0x000f_ffff_ffff_f000;
            let pdpt = entry(&ram, tables[0], 0) & mask;
            let pd = entry(&ram, pdpt, 0) & mask;
            tables.extend([pdpt, pd]);
            for i in 0..mem / (2 * MIB) {
                let pde = entry(&ram, pd, i);
                if pde & PDE_PAGE_SIZE == 0 {
                    tables.push(pde & mask);
                }
            }
            tables.sort();
            tables.dedup();
            assert_eq!(tables.len() as u64, pages);
            assert!(tables.iter().all(|&t| t >= layout.tables_base && t + TABLE_SIZE <= mem));
        }
    }

    #[test]
    fn registers_enter_long_mode_with_sse_enabled() {
        let layout = Layout::new(4 * MIB, PageSize::Large2M);
        let sregs = long_mode_sregs(KvmSregs::default(), &layout);
        assert_eq!(sregs.cr3, 4 * MIB - 3 * TABLE_SIZE);
        assert_ne!(sregs.cr0 & CR0_PE, 0);
        assert_ne!(sregs.cr0 & CR0_PG, 0);
        assert_ne!(sregs.cr0 & CR0_MP, 0);
        assert_eq!(sregs.cr0 & CR0_EM, 0);
        assert_eq!(sregs.cr4 & (CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT), CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT);
        assert_eq!(CR4_OSFXSR, 0x200, "OSFXSR is bit 9 (kvm-hello-world has bit 8, wrongly)");
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.l, sregs.cs.db, sregs.cs.type_, sregs.cs.selector), (1, 0, 11, 8));
        assert_eq!((sregs.ss.type_, sregs.ss.selector), (3, 0x10));
    }

    #[test]
    fn the_guest_starts_with_no_interrupt_table() {
        let layout = Layout::new(2 * MIB, PageSize::Small4K);
        // What KVM_GET_SREGS gives after reset: IDTR base 0, limit 0xFFFF.
        let mut reset = KvmSregs::default();
        reset.idt.limit = 0xffff;
        reset.idt.base = 0x1234;
        let sregs = long_mode_sregs(reset, &layout);
        assert_eq!((sregs.idt.base, sregs.idt.limit), (0, 0));
    }
}
