//! Breakpoints and watchpoints, and how the four debug registers serve them.
//!
//! Nothing is ever written into guest memory to make a breakpoint (no `int3`: under guest
//! debugging some KVMs, this nested one among them, cannot run it). Instead:
//!
//! - While the guest runs freely, DR0–DR3 hold up to four instruction breakpoints (and, where
//!   the host fires data breakpoints, the watchpoints first).
//! - When there are more breakpoints than free registers, or a write watchpoint that no
//!   register can serve (this host fires no data breakpoints), the guest is single-stepped:
//!   one VM exit per instruction, where the stub compares RIP with every breakpoint and the
//!   watched bytes with their old values. The debug registers then hold only the watchpoints
//!   the host fires. That is the slow path; `stepping.rs` makes it cheap.

use crate::GuestDebug;

/// What a data watchpoint watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchKind {
    /// `Z2`: writes.
    Write,
    /// `Z3`: reads (x86 has no read-only watch: reads and writes, reported as `rwatch`).
    Read,
    /// `Z4`: reads and writes.
    Access,
}

/// A data watchpoint: what it watches, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watch {
    pub kind: WatchKind,
    /// The first byte watched (guest-virtual).
    pub addr: u64,
    /// 1, 2, 4 or 8 in a debug register; up to [`MAX_EMULATED_WATCH`] when emulated.
    pub len: u64,
}

/// What one debug register holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Exec(u64),
    Watch(Watch),
}

/// The longest range an emulated watchpoint compares (a struct, a small array).
pub const MAX_EMULATED_WATCH: u64 = 256;
/// Limits against a client that inserts without end (gdb itself never comes near):
/// instruction breakpoints, and watchpoints.
pub const MAX_BREAKPOINTS: usize = 1 << 16;
/// See [`MAX_BREAKPOINTS`].
pub const MAX_WATCHES: usize = 64;
/// The debug registers DR0–DR3.
pub const DEBUG_REGS: usize = 4;

/// DR7 bit 10 reads as 1; GE (bit 9) as QEMU sets it.
const DR7_BASE: u64 = 0x600;

/// Every breakpoint and watchpoint gdb has inserted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Breakpoints {
    /// Instruction breakpoints (`Z0`, `Z1`), sorted, each once.
    exec: Vec<u64>,
    /// Data watchpoints, in the order gdb inserted them.
    watches: Vec<Watch>,
    /// Whether the host fires data breakpoints (watchpoints may go into DR7).
    native_watch: bool,
}

impl Breakpoints {
    /// None yet; `native_watch`: the host fires data breakpoints.
    pub fn new(native_watch: bool) -> Breakpoints {
        Breakpoints { native_watch, ..Breakpoints::default() }
    }

    /// `false` only past [`MAX_BREAKPOINTS`] (the same address twice is one breakpoint).
    pub fn insert_exec(&mut self, addr: u64) -> bool {
        match self.exec.binary_search(&addr) {
            Ok(_) => true,
            Err(_) if self.exec.len() >= MAX_BREAKPOINTS => false,
            Err(at) => {
                self.exec.insert(at, addr);
                true
            }
        }
    }

    /// Takes out the instruction breakpoint at `addr`, if there is one.
    pub fn remove_exec(&mut self, addr: u64) {
        if let Ok(at) = self.exec.binary_search(&addr) {
            self.exec.remove(at);
        }
    }

    /// Whether an instruction breakpoint sits at `pc`.
    pub fn is_exec(&self, pc: u64) -> bool {
        self.exec.binary_search(&pc).is_ok()
    }

    /// How many instruction breakpoints there are.
    pub fn exec_count(&self) -> usize {
        self.exec.len()
    }

    /// `false`: no room (read and access watchpoints need a debug register each).
    pub fn insert_watch(&mut self, w: Watch) -> bool {
        if self.watches.contains(&w) {
            return true;
        }
        let in_registers = self.watches.iter().filter(|w| w.kind != WatchKind::Write).count();
        if self.watches.len() >= MAX_WATCHES || (w.kind != WatchKind::Write && in_registers >= DEBUG_REGS) {
            return false;
        }
        self.watches.push(w);
        true
    }

    /// Takes out the watchpoint `w`, if there is one.
    pub fn remove_watch(&mut self, w: Watch) {
        self.watches.retain(|x| *x != w);
    }

    /// Takes out every breakpoint and watchpoint.
    pub fn clear(&mut self) {
        self.exec.clear();
        self.watches.clear();
    }

    /// The watchpoints in debug registers (none where the host fires no data breakpoints):
    /// read and access ones first, then the writes a register can hold, four at most.
    fn native(&self) -> impl Iterator<Item = Watch> + '_ {
        let reads = self.watches.iter().filter(|w| w.kind != WatchKind::Write);
        let writes = self.watches.iter().filter(|w| w.kind == WatchKind::Write && fits_register(w));
        reads.chain(writes).copied().filter(|_| self.native_watch).take(DEBUG_REGS)
    }

    /// The write watchpoints the stub emulates by single-stepping: those not in a register.
    pub fn emulated(&self) -> impl Iterator<Item = Watch> + '_ {
        let writes = self.watches.iter().filter(|w| w.kind == WatchKind::Write).copied();
        writes.filter(|w| !self.native().any(|n| n == *w))
    }

    /// More instruction breakpoints than the debug registers the watchpoints leave free.
    pub fn exec_overflow(&self) -> bool {
        self.exec.len() > DEBUG_REGS - self.native().count()
    }

    /// Whether the guest must be single-stepped to serve every breakpoint and watchpoint.
    pub fn needs_stepping(&self) -> bool {
        self.exec_overflow() || self.emulated().next().is_some()
    }

    /// What DR0–DR3 hold for a resume. Single-stepping (`step`), the stub compares RIP with
    /// the breakpoints itself, so only watchpoints go into registers; `except` leaves out the
    /// breakpoint at the current instruction (the guest must run it, not stop on it again).
    pub fn slots(&self, step: bool, except: Option<u64>) -> [Option<Slot>; DEBUG_REGS] {
        let mut slots = [None; DEBUG_REGS];
        let mut used = 0;
        for w in self.native() {
            slots[used] = Some(Slot::Watch(w));
            used += 1;
        }
        if !step && !self.exec_overflow() {
            for &addr in self.exec.iter().filter(|&&a| Some(a) != except) {
                slots[used] = Some(Slot::Exec(addr));
                used += 1;
            }
        }
        slots
    }
}

/// Whether a debug register can watch exactly `w`'s bytes: 1, 2, 4 or 8 of them, aligned.
pub fn fits_register(w: &Watch) -> bool {
    matches!(w.len, 1 | 2 | 4 | 8) && w.addr % w.len == 0
}

/// DR7 for `slots`: for register i, the local enable `L<i>` (bit 2i), `R/W<i>` (bits 16+4i) and
/// `LEN<i>` (bits 18+4i).
pub fn dr7(slots: &[Option<Slot>; DEBUG_REGS]) -> u64 {
    let mut dr7 = 0;
    for (i, slot) in slots.iter().enumerate() {
        let (rw, len): (u64, u64) = match slot {
            None => continue,
            Some(Slot::Exec(_)) => (0b00, 0b00),
            Some(Slot::Watch(w)) => {
                let rw = if w.kind == WatchKind::Write { 0b01 } else { 0b11 };
                let len = match w.len {
                    1 => 0b00,
                    2 => 0b01,
                    8 => 0b10,
                    _ => 0b11,
                };
                (rw, len)
            }
        };
        dr7 |= 1 << (2 * i) | rw << (16 + 4 * i) | len << (18 + 4 * i);
    }
    if dr7 == 0 { 0 } else { dr7 | DR7_BASE }
}

/// The [`GuestDebug`] for `slots`, single-stepping or not: debugging off (the default) when
/// there is nothing to do.
pub fn guest_debug(slots: &[Option<Slot>; DEBUG_REGS], step: bool) -> GuestDebug {
    let mut dbg = GuestDebug::default();
    let dr7 = dr7(slots);
    if dr7 == 0 && !step {
        return dbg;
    }
    dbg.enable = true;
    dbg.single_step = step;
    for (i, slot) in slots.iter().enumerate() {
        dbg.debugreg[i] = match slot {
            Some(Slot::Exec(addr)) => *addr,
            Some(Slot::Watch(w)) => w.addr,
            None => 0,
        };
    }
    dbg.debugreg[7] = dr7;
    dbg
}

impl Breakpoints {
    /// [`Breakpoints::slots`] and the [`guest_debug`] that programs them.
    pub fn guest_debug(&self, step: bool) -> (GuestDebug, [Option<Slot>; DEBUG_REGS]) {
        let slots = self.slots(step, None);
        (guest_debug(&slots, step), slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(kind: WatchKind, addr: u64, len: u64) -> Watch {
        Watch { kind, addr, len }
    }

    #[test]
    fn four_breakpoints_in_registers_and_their_dr7() {
        let mut b = Breakpoints::new(true);
        assert!(b.insert_exec(0x10) && b.insert_exec(0x20));
        assert!(b.insert_watch(w(WatchKind::Write, 0x1000, 4)));
        assert!(b.insert_watch(w(WatchKind::Access, 0x2008, 8)));
        assert!(b.insert_exec(0x10), "the same breakpoint again is one");
        assert_eq!(b.exec_count(), 2);
        assert!(!b.needs_stepping());
        let slots = b.slots(false, None);
        // Access watch first, then the write watch, then the breakpoints.
        assert_eq!(
            slots,
            [
                Some(Slot::Watch(w(WatchKind::Access, 0x2008, 8))),
                Some(Slot::Watch(w(WatchKind::Write, 0x1000, 4))),
                Some(Slot::Exec(0x10)),
                Some(Slot::Exec(0x20)),
            ]
        );
        // L0..L3; RW0 = 11, LEN0 = 10 (8); RW1 = 01, LEN1 = 11 (4); exec: RW = LEN = 00.
        let want = 0x55 | 0b11 << 16 | 0b10 << 18 | 0b01 << 20 | 0b11 << 22 | DR7_BASE;
        assert_eq!(dr7(&slots), want);
        let (dbg, _) = b.guest_debug(false);
        assert!(dbg.enable && !dbg.single_step);
        assert_eq!(dbg.debugreg[..4], [0x2008, 0x1000, 0x10, 0x20]);
        assert_eq!(dbg.debugreg[7], want);
        // Single-stepping, only the watchpoints stay in registers.
        let (step, slots) = b.guest_debug(true);
        assert!(step.enable && step.single_step);
        assert_eq!(slots[2..], [None, None]);
        assert_eq!(b.slots(false, Some(0x10))[2..], [Some(Slot::Exec(0x20)), None], "except the one at RIP");
    }

    #[test]
    fn a_fifth_breakpoint_makes_the_guest_step() {
        let mut b = Breakpoints::new(false);
        for a in 1..=4 {
            assert!(b.insert_exec(a * 0x10));
        }
        assert!(!b.needs_stepping());
        assert!(b.insert_exec(0x50), "never refused for lack of registers");
        assert!(b.exec_overflow() && b.needs_stepping());
        assert_eq!(b.slots(false, None), [None; 4], "all compared in software");
        assert!(b.is_exec(0x50) && !b.is_exec(0x51));
        b.remove_exec(0x50);
        assert!(!b.needs_stepping());
        b.remove_exec(0x99); // not there: nothing happens
        assert_eq!(b.exec_count(), 4);
        b.clear();
        assert_eq!(b.guest_debug(false).0, GuestDebug::default(), "debugging off when nothing is set");
    }

    #[test]
    fn write_watchpoints_are_emulated_where_the_host_fires_none() {
        let mut b = Breakpoints::new(false);
        assert!(b.insert_watch(w(WatchKind::Write, 0x1000, 100)));
        assert!(b.insert_exec(0x2000));
        assert!(b.needs_stepping() && !b.exec_overflow());
        assert_eq!(b.emulated().collect::<Vec<_>>(), [w(WatchKind::Write, 0x1000, 100)]);
        assert_eq!(b.slots(true, None), [None; 4]);
        assert_eq!(b.slots(false, None)[0], Some(Slot::Exec(0x2000)));
        b.remove_watch(w(WatchKind::Write, 0x1000, 100));
        assert!(!b.needs_stepping());
        // Where the host fires them, a fifth write watchpoint is emulated, a fifth read one refused.
        let mut n = Breakpoints::new(true);
        for i in 0..4 {
            assert!(n.insert_watch(w(WatchKind::Read, i * 8, 8)));
        }
        assert!(!n.insert_watch(w(WatchKind::Access, 0x100, 8)));
        assert!(n.insert_watch(w(WatchKind::Write, 0x200, 8)));
        assert_eq!(n.emulated().collect::<Vec<_>>(), [w(WatchKind::Write, 0x200, 8)]);
        assert!(n.exec_overflow() || n.insert_exec(0x10));
        assert!(n.exec_overflow(), "no register is left for a breakpoint");
        for i in 0..MAX_WATCHES as u64 {
            n.insert_watch(w(WatchKind::Write, 0x1000 + i, 1));
        }
        assert!(!n.insert_watch(w(WatchKind::Write, 0x9000, 1)), "a limit for hostile clients");
    }

    /// A debug register watches 1, 2, 4 or 8 aligned bytes: any other write watchpoint is
    /// compared by stepping, even where the host fires data breakpoints.
    #[test]
    fn a_write_watchpoint_no_register_can_hold_is_emulated() {
        let mut n = Breakpoints::new(true);
        let odd = [w(WatchKind::Write, 0x1000, 3), w(WatchKind::Write, 0x2000, 16), w(WatchKind::Write, 0x3002, 4)];
        for x in odd {
            assert!(n.insert_watch(x));
        }
        assert!(n.insert_watch(w(WatchKind::Write, 0x4008, 8)));
        assert_eq!(n.emulated().collect::<Vec<_>>(), odd);
        assert_eq!(n.slots(false, None)[0], Some(Slot::Watch(w(WatchKind::Write, 0x4008, 8))));
        assert_eq!(n.slots(false, None)[1..], [None; 3]);
        assert!(fits_register(&w(WatchKind::Write, 0x4008, 8)) && !fits_register(&w(WatchKind::Write, 0x4004, 8)));
    }
}
