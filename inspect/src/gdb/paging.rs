//! Guest-virtual memory for gdb: its memory accesses translate each address through the
//! guest's own page tables (the walk is the crate's `page_walk.rs`, shared with the crash
//! report), and `monitor walk` shows every step.

use crate::page_walk::{CR0_PG, EFER_LMA};
pub use crate::page_walk::{PTE_ADDR, PTE_LARGE, PTE_PRESENT, Step, TABLE_NAMES, WalkEnd};
use crate::{SystemRegs, Target};

/// [`crate::page_walk::walk`] through the target's guest RAM.
pub fn walk<T: Target + ?Sized>(t: &T, cr3: u64, va: u64, visit: impl FnMut(&Step)) -> WalkEnd {
    crate::page_walk::walk(&|gpa, buf| t.read_phys(gpa, buf).is_ok(), cr3, va, visit)
}

/// Translates guest-virtual `va`: the physical address and how many bytes are left in its
/// page; `None` if not mapped, not canonical, or if a table lies outside RAM.
pub fn translate<T: Target + ?Sized>(t: &T, cr3: u64, va: u64) -> Option<(u64, u64)> {
    match walk(t, cr3, va, |_| {}) {
        WalkEnd::Page { pa, page_size } => Some((pa, page_size - (va & (page_size - 1)))),
        _ => None,
    }
}

/// The paging mode the guest is in, from its control registers: `Some(cr3)` for 4-level
/// paging, `None` for no paging (virtual = physical). Other modes are not ours to debug.
pub fn paging(s: &SystemRegs) -> Result<Option<u64>, ()> {
    match (s.cr0 & CR0_PG != 0, s.efer & EFER_LMA != 0) {
        (false, _) => Ok(None),
        (true, true) => Ok(Some(s.cr3)),
        (true, false) => Err(()),
    }
}

/// Copies guest-virtual memory (page by page, each page translated through `cr3`, or
/// virtual = physical for `None`) into or out of `buf`.
pub fn access<T: Target + ?Sized>(t: &T, cr3: Option<u64>, va: u64, buf: &mut [u8], write: bool) -> Result<(), ()> {
    let mut done = 0;
    while done < buf.len() {
        let addr = va.checked_add(done as u64).ok_or(())?;
        let (pa, left) = match cr3 {
            Some(cr3) => translate(t, cr3, addr).ok_or(())?,
            None => (addr, u64::MAX),
        };
        let n = (buf.len() - done).min(usize::try_from(left).unwrap_or(usize::MAX));
        let chunk = &mut buf[done..done + n];
        let r = if write { t.write_phys(pa, chunk) } else { t.read_phys(pa, chunk) };
        r.map_err(|_| ())?;
        done += n;
    }
    Ok(())
}

/// The guest's paging now ([`paging`]); `Err` also when its registers cannot be read.
fn current_paging<T: Target + ?Sized>(t: &T) -> Result<Option<u64>, ()> {
    paging(&t.system_regs().map_err(|_| ())?)
}

/// Reads guest-virtual memory, through the guest's paging as it is now.
pub fn read_virt<T: Target + ?Sized>(t: &T, va: u64, buf: &mut [u8]) -> Result<(), ()> {
    access(t, current_paging(t)?, va, buf, false)
}

/// Writes guest-virtual memory, all or nothing: the whole range is checked first, so that a
/// write that would fail half-way changes nothing.
pub fn write_virt<T: Target + ?Sized>(t: &T, va: u64, data: &[u8]) -> Result<(), ()> {
    let cr3 = current_paging(t)?;
    let mut probe = vec![0u8; data.len()];
    access(t, cr3, va, &mut probe, false)?;
    let mut copy = data.to_vec();
    access(t, cr3, va, &mut copy, true)
}

#[cfg(test)]
mod tests {
    use super::super::fake::{FakeTarget, RAM};
    use super::*;

    #[test]
    fn page_walk_small_large_huge_unmapped_and_outside_ram() {
        let t = FakeTarget::new(true);
        let cr3 = t.system.borrow().cr3;
        assert_eq!(translate(&t, cr3, 0x1234), Some((0x1234, 0x20_0000 - 0x1234)), "2 MiB page");
        assert_eq!(translate(&t, cr3, 0x20_1008), Some((0x20_1008, 0xff8)), "4 KiB page");
        assert_eq!(translate(&t, cr3, 0x20_0010), None, "PT entry 0 is not present");
        assert_eq!(translate(&t, cr3, 0x4000_0010), Some((0x10, (1 << 30) - 0x10)), "1 GiB page");
        assert_eq!(translate(&t, cr3, 0x60_0000), None, "PD entry 3 is not present");
        assert_eq!(translate(&t, cr3, 0x8000_0000_0000), None, "not canonical");
        assert_eq!(translate(&t, cr3, 0xffff_8000_0000_0000), None, "PML4 entry 256 is not present");
        assert_eq!(translate(&t, RAM as u64, 0), None, "tables outside RAM");
        assert_eq!(walk(&t, RAM as u64, 0, |_| {}), WalkEnd::Unreadable { entry_addr: RAM as u64 });
    }

    #[test]
    fn a_walk_visits_each_level_with_its_entry() {
        let t = FakeTarget::new(true);
        let cr3 = t.system.borrow().cr3;
        let mut steps = vec![];
        let end = walk(&t, cr3, 0x20_1008, |s| steps.push(*s));
        assert_eq!(end, WalkEnd::Page { pa: 0x20_1008, page_size: 0x1000 });
        let levels: Vec<(u32, u64, u64)> = steps.iter().map(|s| (s.level, s.index, s.entry_addr)).collect();
        assert_eq!(levels, [(3, 0, cr3), (2, 0, 0x3f_d000), (1, 1, 0x3f_e008), (0, 1, 0x3f_f008)]);
        assert_eq!(steps[3].entry, 0x20_1003);
        steps.clear();
        assert_eq!(walk(&t, cr3, 0x20_0000, |s| steps.push(*s)), WalkEnd::NotPresent);
        assert_eq!(steps.len(), 4);
        assert_eq!(walk(&t, cr3, 1 << 47, |_| panic!("nothing read")), WalkEnd::NotCanonical);
    }

    #[test]
    fn virtual_reads_and_writes_cross_pages_and_stop_at_holes() {
        let t = FakeTarget::new(true);
        t.ram.borrow_mut()[0x20_1ffe..0x20_2002].copy_from_slice(&[1, 2, 3, 4]);
        let mut buf = [0u8; 4];
        assert_eq!(read_virt(&t, 0x20_1ffe, &mut buf), Ok(()), "across two 4 KiB pages");
        assert_eq!(buf, [1, 2, 3, 4]);
        assert_eq!(read_virt(&t, 0x1f_fffe, &mut buf), Err(()), "runs into the unmapped page");
        assert_eq!(read_virt(&t, 0x40_0000, &mut buf[..1]), Err(()), "mapped outside RAM");
        assert_eq!(read_virt(&t, u64::MAX, &mut buf[..2]), Err(()), "wraps around");
        assert_eq!(write_virt(&t, 0x1f_ffff, &[0xaa, 0xbb]), Err(()));
        assert_eq!(t.ram.borrow()[0x1f_ffff], 0, "a write half outside changes nothing");
        let flat = FakeTarget::new(false);
        assert_eq!(read_virt(&flat, RAM as u64 - 1, &mut buf[..1]), Ok(()), "no paging: virtual = physical");
        assert_eq!(read_virt(&flat, RAM as u64, &mut buf[..1]), Err(()));
        let mut legacy = *flat.system.borrow();
        legacy.cr0 |= CR0_PG;
        assert_eq!(paging(&legacy), Err(()), "32-bit paging is not ours to walk");
    }
}
