//! The guest's own page tables, walked the way the CPU walks them: the debugger's memory
//! accesses and `monitor walk` ([`crate::gdb`]) and the crash report's page-fault words
//! ([`crate::crash`]) all go through [`walk`]. With it, the few x86 constants the toolbox
//! needs: sizes, page-table entry bits, and the control-register bits that say whether the
//! guest pages.
//!
//! Four levels, PML4 → PDPT → PD → PT, each a 4 KiB table of 512 eight-byte entries indexed
//! by nine bits of the virtual address (47..39, 38..30, 29..21, 20..12); bit 7 (PS) in a PDPT
//! or PD entry makes it map a 1 GiB or 2 MiB page directly.

/// A kibibyte.
pub const KIB: u64 = 1024;
/// A mebibyte.
pub const MIB: u64 = 1024 * KIB;
/// Size of one page-table page (512 entries of 8 bytes), and of a small page.
pub const TABLE_SIZE: u64 = 4 * KIB;

// Page-table entry bits.
/// P: the entry is used (else the walk ends in a page fault).
pub const PTE_PRESENT: u64 = 1 << 0;
/// R/W: writes are allowed through this entry (a walk allows a write only if every level does).
pub const PTE_WRITABLE: u64 = 1 << 1;
/// PS, in a PDPT or PD entry: it maps a 1 GiB or 2 MiB page instead of pointing to a table.
pub const PTE_LARGE: u64 = 1 << 7;
/// Bits 51..12 of an entry: the physical address of the next table or the page.
pub const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

// Control-register and EFER bits.
/// CR0.PG: paging is on.
pub const CR0_PG: u64 = 1 << 31;
/// EFER.LMA: long mode is active (with CR0.PG: 4-level paging).
pub const EFER_LMA: u64 = 1 << 10;

/// The tables' names, by level (0 = the page table, 3 = the PML4).
pub const TABLE_NAMES: [&str; 4] = ["PT", "PD", "PDPT", "PML4"];

/// Reads guest-physical memory into the buffer; `false` if the range is not all RAM.
pub type ReadPhys<'a> = &'a dyn Fn(u64, &mut [u8]) -> bool;

/// One entry read on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// 3 (PML4) down to 0 (PT).
    pub level: u32,
    /// The entry's index in its table (nine bits of the virtual address).
    pub index: u64,
    /// Guest-physical address of the entry.
    pub entry_addr: u64,
    /// The entry's value.
    pub entry: u64,
}

/// Where a walk ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkEnd {
    /// Mapped: the physical address, and the size of the page it lies in.
    Page { pa: u64, page_size: u64 },
    /// Bits 63..47 of the address are not all equal: no table can map it.
    NotCanonical,
    /// The last entry read is not present.
    NotPresent,
    /// An entry could not be read: its table lies outside RAM.
    Unreadable { entry_addr: u64 },
}

/// Walks the guest's tables from `cr3` for virtual address `va`, calling `visit` with each
/// entry read. Never reads outside RAM (`read` refuses), never loops (four levels).
pub fn walk(read: ReadPhys, cr3: u64, va: u64, mut visit: impl FnMut(&Step)) -> WalkEnd {
    let top = va >> 47;
    if top != 0 && top != (1 << 17) - 1 {
        return WalkEnd::NotCanonical;
    }
    let mut table = cr3 & PTE_ADDR;
    for level in (0..4u32).rev() {
        let shift = 12 + 9 * level;
        let index = (va >> shift) & 511;
        let entry_addr = table + index * 8;
        let mut bytes = [0u8; 8];
        if !read(entry_addr, &mut bytes) {
            return WalkEnd::Unreadable { entry_addr };
        }
        let entry = u64::from_le_bytes(bytes);
        visit(&Step { level, index, entry_addr, entry });
        if entry & PTE_PRESENT == 0 {
            return WalkEnd::NotPresent;
        }
        // A page: at level 0 always, at PD (1) and PDPT (2) level when PS is set.
        if level == 0 || (level <= 2 && entry & PTE_LARGE != 0) {
            let page_size = 1u64 << shift;
            let pa = (entry & PTE_ADDR & !(page_size - 1)) + (va & (page_size - 1));
            return WalkEnd::Page { pa, page_size };
        }
        table = entry & PTE_ADDR;
    }
    WalkEnd::NotPresent // not reached: level 0 always ends the walk
}
