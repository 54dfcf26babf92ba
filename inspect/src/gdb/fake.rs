//! For unit tests: a [`Target`] with guest RAM in a `Vec` and registers in cells.

use std::cell::{Cell, RefCell};
use std::io;

use super::paging::PTE_PRESENT;
use super::session::{Action, Session};
use crate::page_walk::{CR0_PG, EFER_LMA, MIB, TABLE_SIZE};
use crate::{GuestDebug, MemoryMap, Regs, SystemRegs, Target};

pub const RAM: usize = 4 << 20;

pub struct FakeTarget {
    pub ram: RefCell<Vec<u8>>,
    pub regs: RefCell<Regs>,
    pub system: RefCell<SystemRegs>,
    pub debug: RefCell<Option<GuestDebug>>,
    pub set_debug_calls: Cell<usize>,
    /// `set_system_regs` fails as KVM does for a value it does not allow.
    pub refuse_system: Cell<bool>,
    /// Calls of `write_phys`, and those that reached outside RAM (refused).
    pub writes: Cell<usize>,
    pub writes_outside: Cell<usize>,
    /// The last `store_exit_regs` asked for.
    pub store_exit_regs: Cell<Option<bool>>,
}

impl FakeTarget {
    /// 4 MiB; with `paging`, an identity map (2 MiB pages for the first 2 MiB, 4 KiB pages for
    /// the second, so that both walks are tested) with 0x200000..0x201000 left unmapped, a
    /// 2 MiB page at 0x400000 that maps outside RAM, and a 1 GiB page mapping 0x40000000.. to 0.
    pub fn new(paging: bool) -> FakeTarget {
        let regs = Regs {
            rax: 1,
            rbx: 2,
            rcx: 3,
            rdx: 4,
            rsi: 5,
            rdi: 6,
            rsp: 7,
            rbp: 8,
            r8: 9,
            r15: 16,
            rip: 0x1234,
            rflags: 0x202,
            ..Regs::default()
        };
        let system = SystemRegs { cs: 0x8, ss: 0x10, ..SystemRegs::default() };
        let t = FakeTarget {
            ram: RefCell::new(vec![0; RAM]),
            regs: RefCell::new(regs),
            system: RefCell::new(system),
            debug: RefCell::new(None),
            set_debug_calls: Cell::new(0),
            refuse_system: Cell::new(false),
            writes: Cell::new(0),
            writes_outside: Cell::new(0),
            store_exit_regs: Cell::new(None),
        };
        if paging {
            let (pml4, pdpt, pd, pt) = (0x3f_c000u64, 0x3f_d000u64, 0x3f_e000u64, 0x3f_f000u64);
            t.put(pml4, pdpt | 3);
            t.put(pdpt, pd | 3);
            t.put(pdpt + 8, 0x83); // 1 GiB page at 0
            t.put(pd, 0x83); // 2 MiB page at 0
            t.put(pd + 8, pt | 3);
            for i in 1..512 {
                t.put(pt + i * 8, (0x20_0000 + i * 0x1000) | 3);
            }
            t.put(pd + 16, 0x1000_0000 | 0x83 | PTE_PRESENT); // maps outside RAM
            let mut s = t.system.borrow_mut();
            s.cr0 = CR0_PG | 1;
            s.efer = EFER_LMA;
            s.cr3 = pml4;
        }
        t
    }

    pub fn put(&self, at: u64, v: u64) {
        self.ram.borrow_mut()[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    }
}

impl Target for FakeTarget {
    fn regs(&self) -> io::Result<Regs> {
        Ok(*self.regs.borrow())
    }
    fn set_regs(&self, regs: &Regs) -> io::Result<()> {
        *self.regs.borrow_mut() = *regs;
        Ok(())
    }
    fn system_regs(&self) -> io::Result<SystemRegs> {
        Ok(*self.system.borrow())
    }
    fn set_system_regs(&self, s: &SystemRegs) -> io::Result<()> {
        if self.refuse_system.get() {
            return Err(io::ErrorKind::InvalidInput.into()); // KVM: EINVAL
        }
        let mut now = self.system.borrow_mut();
        // What the trait writes; the selectors and the interrupt table register stay.
        (now.fs_base, now.gs_base, now.cr0, now.cr2, now.cr3, now.cr4, now.efer) =
            (s.fs_base, s.gs_base, s.cr0, s.cr2, s.cr3, s.cr4, s.efer);
        Ok(())
    }
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
        let ram = self.ram.borrow();
        let at = usize::try_from(gpa).map_err(io::Error::other)?;
        let src = ram.get(at..at.checked_add(buf.len()).ok_or(io::ErrorKind::InvalidInput)?);
        buf.copy_from_slice(src.ok_or(io::ErrorKind::InvalidInput)?);
        Ok(())
    }
    fn write_phys(&self, gpa: u64, buf: &[u8]) -> io::Result<()> {
        self.writes.set(self.writes.get() + 1);
        if gpa.saturating_add(buf.len() as u64) > RAM as u64 {
            self.writes_outside.set(self.writes_outside.get() + 1);
        }
        let mut ram = self.ram.borrow_mut();
        let at = usize::try_from(gpa).map_err(io::Error::other)?;
        let dst = ram.get_mut(at..at.checked_add(buf.len()).ok_or(io::ErrorKind::InvalidInput)?);
        dst.ok_or(io::ErrorKind::InvalidInput)?.copy_from_slice(buf);
        Ok(())
    }
    fn set_debug(&self, dbg: &GuestDebug) -> io::Result<()> {
        *self.debug.borrow_mut() = Some(*dbg);
        self.set_debug_calls.set(self.set_debug_calls.get() + 1);
        Ok(())
    }
    fn store_exit_regs(&self, on: bool) {
        self.store_exit_regs.set(Some(on));
    }
}

/// The machine the monitor describes in tests: 4 MiB with 4 KiB pages (5 table pages at the
/// top: PML4, PDPT, PD and two page tables), a 4660-byte image.
pub fn machine() -> MemoryMap {
    let ram_size = 4 * MIB;
    MemoryMap { ram_size, large_pages: false, tables_base: ram_size - 5 * TABLE_SIZE, image_len: 0x1234 }
}

pub fn session(data_watch: bool) -> Session {
    Session::new(data_watch, machine())
}

/// The reply to packet `p` as text (an action that is no reply: its debug form).
pub fn ask(s: &mut Session, t: &FakeTarget, p: &str) -> String {
    match s.handle(p.as_bytes(), t) {
        Action::Reply(r) => String::from_utf8_lossy(&r).into_owned(),
        other => format!("{other:?}"),
    }
}
