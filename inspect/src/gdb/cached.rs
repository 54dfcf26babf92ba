//! The vCPU's registers read once per stop: a [`Target`] in front of the version's that keeps
//! what `regs` and `system_regs` returned until the stub writes them or the guest runs again.
//!
//! On a nested KVM `KVM_GET_REGS` costs about 7 µs and `KVM_GET_SREGS` about 12 µs, a plain VM
//! exit about 9 µs; a `stepi` under gdb reads the registers for the stop reply, the system
//! registers for the memory gdb reads next (the page tables), and both again to resume. With
//! this, each is read once per stop, and not at all when the version has them from the exit
//! ([`Target::exit_regs`]).

use std::cell::Cell;
use std::io;

use crate::{GuestDebug, Regs, SystemRegs, Target};

/// `t` with its registers kept for one stop (the guest does not run while it lives).
pub struct Cached<'a> {
    t: &'a dyn Target,
    regs: Cell<Option<Regs>>,
    system: Cell<Option<SystemRegs>>,
    /// [`Target::exit_regs`] was asked (at the first read: a silent step reads none).
    asked: Cell<bool>,
}

impl<'a> Cached<'a> {
    pub fn new(t: &'a dyn Target) -> Cached<'a> {
        Cached { t, regs: Cell::new(None), system: Cell::new(None), asked: Cell::new(false) }
    }

    /// The first time: what the version stored at the exit, if anything, and nothing was
    /// written since (the version says so: it answers `None` then).
    fn take_exit_regs(&self) {
        if !self.asked.replace(true)
            && let Some((r, s)) = self.t.exit_regs()
        {
            self.regs.set(Some(r));
            self.system.set(Some(s));
        }
    }
}

/// What `cell` holds, or else what `read` reads, kept in `cell` for the next time.
fn cached<T: Copy>(cell: &Cell<Option<T>>, read: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    if let Some(value) = cell.get() {
        return Ok(value);
    }
    let value = read()?;
    cell.set(Some(value));
    Ok(value)
}

impl Target for Cached<'_> {
    fn regs(&self) -> io::Result<Regs> {
        self.take_exit_regs();
        cached(&self.regs, || self.t.regs())
    }

    fn set_regs(&self, regs: &Regs) -> io::Result<()> {
        self.asked.set(true); // what was stored is stale now
        self.regs.set(None);
        self.t.set_regs(regs)?;
        self.regs.set(Some(*regs));
        Ok(())
    }

    fn system_regs(&self) -> io::Result<SystemRegs> {
        self.take_exit_regs();
        cached(&self.system, || self.t.system_regs())
    }

    /// KVM may keep bits of its own (CR0, EFER): they are read again when next asked for.
    fn set_system_regs(&self, s: &SystemRegs) -> io::Result<()> {
        self.asked.set(true); // what was stored is stale now
        self.system.set(None);
        self.t.set_system_regs(s)
    }

    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
        self.t.read_phys(gpa, buf)
    }

    fn write_phys(&self, gpa: u64, buf: &[u8]) -> io::Result<()> {
        self.t.write_phys(gpa, buf)
    }

    fn set_debug(&self, debug: &GuestDebug) -> io::Result<()> {
        self.t.set_debug(debug)
    }

    fn store_exit_regs(&self, on: bool) {
        self.t.store_exit_regs(on);
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeTarget;
    use super::*;

    /// Counts the reads that reach the target.
    struct Counting {
        t: FakeTarget,
        reads: Cell<usize>,
    }

    impl Target for Counting {
        fn regs(&self) -> io::Result<Regs> {
            self.reads.set(self.reads.get() + 1);
            self.t.regs()
        }
        fn set_regs(&self, regs: &Regs) -> io::Result<()> {
            self.t.set_regs(regs)
        }
        fn system_regs(&self) -> io::Result<SystemRegs> {
            self.reads.set(self.reads.get() + 1);
            self.t.system_regs()
        }
        fn set_system_regs(&self, s: &SystemRegs) -> io::Result<()> {
            self.t.set_system_regs(s)
        }
        fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
            self.t.read_phys(gpa, buf)
        }
        fn write_phys(&self, gpa: u64, buf: &[u8]) -> io::Result<()> {
            self.t.write_phys(gpa, buf)
        }
        fn set_debug(&self, debug: &GuestDebug) -> io::Result<()> {
            self.t.set_debug(debug)
        }
    }

    /// A version that has the registers from the exit.
    struct Stored(FakeTarget);

    impl Target for Stored {
        fn regs(&self) -> io::Result<Regs> {
            panic!("read with an ioctl")
        }
        fn set_regs(&self, regs: &Regs) -> io::Result<()> {
            self.0.set_regs(regs)
        }
        fn system_regs(&self) -> io::Result<SystemRegs> {
            panic!("read with an ioctl")
        }
        fn set_system_regs(&self, s: &SystemRegs) -> io::Result<()> {
            self.0.set_system_regs(s)
        }
        fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
            self.0.read_phys(gpa, buf)
        }
        fn write_phys(&self, gpa: u64, buf: &[u8]) -> io::Result<()> {
            self.0.write_phys(gpa, buf)
        }
        fn set_debug(&self, debug: &GuestDebug) -> io::Result<()> {
            self.0.set_debug(debug)
        }
        fn exit_regs(&self) -> Option<(Regs, SystemRegs)> {
            Some((self.0.regs().ok()?, self.0.system_regs().ok()?))
        }
    }

    #[test]
    fn registers_stored_at_the_exit_need_no_read() {
        let stored = Stored(FakeTarget::new(true));
        let c = Cached::new(&stored);
        assert_eq!(c.regs().unwrap().rip, 0x1234);
        assert_eq!(c.system_regs().unwrap().cr3, 0x3f_c000);
    }

    #[test]
    fn registers_are_read_once_and_writes_go_through() {
        let inner = Counting { t: FakeTarget::new(true), reads: Cell::new(0) };
        let c = Cached::new(&inner);
        assert_eq!(c.regs().unwrap().rip, 0x1234);
        assert_eq!(c.regs().unwrap().rip, 0x1234);
        assert_eq!(c.system_regs().unwrap().cs, 8);
        assert_eq!(c.system_regs().unwrap().cs, 8);
        assert_eq!(inner.reads.get(), 2);
        let mut r = c.regs().unwrap();
        r.rip = 0x42;
        c.set_regs(&r).unwrap();
        assert_eq!(c.regs().unwrap().rip, 0x42);
        assert_eq!(inner.t.regs.borrow().rip, 0x42, "written through");
        let mut s = c.system_regs().unwrap();
        s.cr2 = 0x77;
        c.set_system_regs(&s).unwrap();
        assert_eq!(c.system_regs().unwrap().cr2, 0x77);
        assert_eq!(inner.reads.get(), 3, "read again after a write of the system registers");
        // A refused write leaves the kept copy out: the next read asks the target.
        inner.t.refuse_system.set(true);
        assert!(c.set_system_regs(&SystemRegs::default()).is_err());
        assert_eq!(c.system_regs().unwrap().cr2, 0x77);
        assert_eq!(inner.reads.get(), 4);
    }
}
