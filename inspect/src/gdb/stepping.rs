//! Resuming the guest, and making sense of its debug exits: the stub's fast path.
//!
//! Most resumes let the guest run freely with the breakpoints in the debug registers. The guest
//! is single-stepped instead when gdb asks for one instruction, for one instruction past a
//! breakpoint at RIP, and for as long as a watchpoint or a fifth breakpoint needs it. Then every
//! instruction is a VM exit that comes here ([`Session::on_trap`]), so that path does as little
//! as it can: no system call (RIP comes with the exit; the watched bytes and the next
//! instruction are read straight from guest RAM through translations made at the resume), no
//! allocation, and [`Target::set_debug`] only when what it sets changes.
//!
//! `hlt` is never single-stepped: a single-stepped `hlt` comes back as a debug exit just past
//! it (KVM drops the halt), and the guest would run on instead of ending. When the next
//! instruction is `hlt`, the guest is resumed without single-stepping, so that `hlt` exits and
//! ends the VM however it was reached.

use std::io;
use std::time::Instant;

use super::breakpoints::{MAX_EMULATED_WATCH, Slot, Watch, guest_debug};
use super::paging::{paging, translate};
use super::session::Session;
use crate::Target;

/// Steps after which the stub says how long one takes.
const RATE_SAMPLE: u64 = 10_000;

/// One-time notices on the hypervisor's stderr.
#[derive(Debug, Clone, Copy, Default)]
pub struct Said {
    watch: bool,
    breakpoints: bool,
    rate: bool,
    /// Why `rwatch`/`awatch` are refused (said in `session.rs`).
    pub(super) read_watch: bool,
}

/// How the guest was resumed, to make sense of its next debug exit.
#[derive(Debug)]
pub struct Running {
    /// gdb asked for one instruction.
    gdb_step: bool,
    /// The guest steps one instruction first, past the breakpoint at RIP.
    over: bool,
    /// Every instruction is stepped (an emulated watchpoint, or more breakpoints than registers).
    all: bool,
    /// Whether single-stepping is on now.
    stepping: bool,
    /// The guest's paging when it was resumed: `Some(cr3)`, `None` for none; `Err` when
    /// this stub cannot walk it (then no instruction is read).
    space: Result<Option<u64>, ()>,
    /// The emulated watchpoints, with where their bytes are and what they were.
    watched: Vec<Watched>,
    /// The page of the last instruction read: (virtual, physical).
    code_page: Option<(u64, u64)>,
    steps: u64,
    since: Instant,
}

/// An emulated watchpoint: its bytes' physical places (at most two pages) and old value.
#[derive(Debug)]
struct Watched {
    watch: Watch,
    /// (guest-physical address, length); a length of 0 is no part. No parts: not mapped.
    parts: [(u64, usize); 2],
    old: [u8; MAX_EMULATED_WATCH as usize],
}

impl Watched {
    fn new<T: Target + ?Sized>(t: &T, space: Result<Option<u64>, ()>, watch: Watch) -> Watched {
        let mut w = Watched { watch, parts: [(0, 0); 2], old: [0; MAX_EMULATED_WATCH as usize] };
        if let Some(parts) = locate(t, space, watch) {
            let mut old = [0; MAX_EMULATED_WATCH as usize];
            if read_parts(t, &parts, &mut old).is_some() {
                (w.parts, w.old) = (parts, old);
            }
        }
        w
    }

    fn changed<T: Target + ?Sized>(&self, t: &T) -> bool {
        let mut now = [0u8; MAX_EMULATED_WATCH as usize];
        match read_parts(t, &self.parts, &mut now) {
            Some(n) => now[..n] != self.old[..n],
            None => false,
        }
    }
}

/// Where the bytes of `watch` lie in guest-physical memory: one part, or two when they cross a
/// page boundary. `None` when they are not all mapped.
fn locate<T: Target + ?Sized>(t: &T, space: Result<Option<u64>, ()>, watch: Watch) -> Option<[(u64, usize); 2]> {
    let len = watch.len.min(MAX_EMULATED_WATCH) as usize;
    let space = space.ok()?;
    let (mut done, mut parts) = (0usize, [(0u64, 0usize); 2]);
    for part in &mut parts {
        let va = watch.addr.checked_add(done as u64)?;
        let (pa, left) = match space {
            Some(cr3) => translate(t, cr3, va)?,
            None => (va, u64::MAX),
        };
        let n = (len - done).min(usize::try_from(left).unwrap_or(usize::MAX));
        *part = (pa, n);
        done += n;
        if done == len {
            return Some(parts);
        }
    }
    None
}

/// Reads the parts into `buf`: how many bytes, or `None` if one lies outside RAM.
fn read_parts<T: Target + ?Sized>(t: &T, parts: &[(u64, usize); 2], buf: &mut [u8]) -> Option<usize> {
    let mut at = 0;
    for &(pa, n) in parts.iter().filter(|p| p.1 > 0) {
        t.read_phys(pa, buf.get_mut(at..at + n)?).ok()?;
        at += n;
    }
    Some(at)
}

/// Legacy and REX prefixes that may stand before a `hlt` (0xf4).
fn is_prefix(b: u8) -> bool {
    matches!(b, 0x26 | 0x2e | 0x36 | 0x3e | 0x64..=0x67 | 0xf0 | 0xf2 | 0xf3 | 0x40..=0x4f)
}

impl Running {
    /// The guest-physical address of the instruction byte at `va`, through a one-page cache.
    fn code_addr<T: Target + ?Sized>(&mut self, t: &T, va: u64) -> Option<u64> {
        let Ok(space) = self.space else { return None };
        let Some(cr3) = space else { return Some(va) };
        let page = va & !0xfff;
        match self.code_page {
            Some((v, p)) if v == page => Some(p + (va & 0xfff)),
            _ => {
                let (pa, _) = translate(t, cr3, va)?;
                self.code_page = Some((page, pa & !0xfff));
                Some(pa)
            }
        }
    }

    /// Whether the instruction at `pc` is `hlt` (after any prefixes).
    fn at_hlt<T: Target + ?Sized>(&mut self, t: &T, pc: u64) -> bool {
        for i in 0..15 {
            let Some(pa) = self.code_addr(t, pc.wrapping_add(i)) else { return false };
            let mut b = [0u8];
            if t.read_phys(pa, &mut b).is_err() {
                return false;
            }
            match b[0] {
                0xf4 => return true,
                b if is_prefix(b) => continue,
                _ => return false,
            }
        }
        false
    }
}

impl Session {
    /// Programs the vCPU to resume the guest (`step`: for one instruction).
    pub fn resume<T: Target + ?Sized>(&mut self, t: &T, step: bool) -> io::Result<()> {
        let pc = t.regs()?.rip;
        let space = paging(&t.system_regs()?);
        let all = self.points.needs_stepping();
        let over = !step && !all && self.points.is_exec(pc);
        let watched = self.points.emulated().map(|w| Watched::new(t, space, w)).collect();
        let mut run = Running {
            gdb_step: step,
            over,
            all,
            stepping: false,
            space,
            watched,
            code_page: None,
            steps: 0,
            since: Instant::now(),
        };
        if all {
            self.say_stepping();
        }
        run.stepping = (step || over || all) && !run.at_hlt(t, pc);
        self.program(t, run.stepping, Some(pc))?;
        // gdb's single step stops at once: its registers can come from the exit.
        t.store_exit_regs(step && run.stepping);
        self.running = Some(run);
        Ok(())
    }

    /// Sets what the vCPU stops for, unless it is set already. Single-stepping, the debug
    /// registers hold only watchpoints; running freely, also the breakpoints but the one at
    /// `except` (the guest is to run that instruction, not stop on it again).
    fn program<T: Target + ?Sized>(&mut self, t: &T, step: bool, except: Option<u64>) -> io::Result<()> {
        let slots = self.points.slots(step, except);
        let dbg = guest_debug(&slots, step);
        if self.programmed != Some(dbg) {
            t.set_debug(&dbg)?;
            self.programmed = Some(dbg);
        }
        self.slots = slots;
        Ok(())
    }

    /// Turns guest debugging off (detach); the next resume programs it again.
    pub fn unprogram<T: Target + ?Sized>(&mut self, t: &T) {
        self.slots = [None; 4];
        self.programmed = None;
        let _ = t.set_debug(&Default::default());
        t.store_exit_regs(false);
    }

    /// A debug exit at `pc`: `Some(stop reply)` to tell gdb, or `None` to run on silently (a
    /// step that changed no watched byte and reached no breakpoint).
    pub fn on_trap<T: Target + ?Sized>(&mut self, t: &T, pc: u64, dr6: u64) -> Option<Vec<u8>> {
        let why = super::Stop::Trap { pc, dr6 };
        let Some(mut run) = self.running.take() else { return Some(self.stop_reply(why)) };
        let hit = self.dr_hit(dr6);
        if let Some(Slot::Watch(w)) = hit {
            return Some(self.watch_stop(&w));
        }
        if let Some(w) = run.watched.iter().find(|w| w.changed(t)) {
            let watch = w.watch;
            return Some(self.watch_stop(&watch));
        }
        // Not a step of ours (a breakpoint in a debug register), gdb's one step, or a
        // breakpoint reached by stepping: gdb hears of it.
        if !run.stepping || hit.is_some() || run.gdb_step || self.points.is_exec(pc) {
            return Some(self.stop_reply(why));
        }
        run.over = false;
        self.count_step(&mut run);
        run.stepping = run.all && !run.at_hlt(t, pc);
        if self.program(t, run.stepping, None).is_err() {
            return Some(self.stop_reply(why));
        }
        self.running = Some(run);
        None
    }

    /// Counts a silent step; after [`RATE_SAMPLE`] of them, says once what one costs.
    fn count_step(&mut self, run: &mut Running) {
        run.steps += 1;
        if run.steps == RATE_SAMPLE && !self.said.rate {
            self.said.rate = true;
            let us = run.since.elapsed().as_secs_f64() * 1e6 / RATE_SAMPLE as f64;
            self.notes.push(format!(
                "mini_hypervisor: gdb: single-stepping takes about {us:.1} µs per guest instruction here: \
                 a million instructions take about {:.0} s",
                us
            ));
        }
    }

    /// Says once why the guest now runs one instruction at a time.
    fn say_stepping(&mut self) {
        if self.points.emulated().next().is_some() && !self.said.watch {
            self.said.watch = true;
            self.notes.push(
                "mini_hypervisor: gdb: this KVM fires no data breakpoints, so while the watchpoint is set the \
                 guest runs one instruction at a time, one VM exit each (much slower)"
                    .to_owned(),
            );
        }
        if self.points.exec_overflow() && !self.said.breakpoints {
            self.said.breakpoints = true;
            self.notes.push(format!(
                "mini_hypervisor: gdb: {} breakpoints, 4 debug registers: while more than 4 are set the guest \
                 runs one instruction at a time, one VM exit each (slow)",
                self.points.exec_count()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Stop;
    use super::super::fake::{FakeTarget, ask, session};
    use crate::GuestDebug;

    const STEP: u64 = 0xffff_4ff0; // DR6 of a single step (BS)

    fn stepping(t: &FakeTarget) -> bool {
        t.debug.borrow().is_some_and(|d| d.enable && d.single_step)
    }

    #[test]
    fn emulated_write_watchpoints_single_step_until_the_value_changes() {
        let mut s = session(false);
        let t = FakeTarget::new(true);
        assert_eq!(ask(&mut s, &t, "Z2,1000,4"), "OK");
        assert_eq!(ask(&mut s, &t, "Z0,2000,1"), "OK");
        s.resume(&t, false).unwrap();
        assert!(stepping(&t));
        assert_eq!(t.debug.borrow().unwrap().debugreg[7], 0, "breakpoints are compared in software");
        assert_eq!(s.notes.len(), 1, "said once: {:?}", s.notes);
        assert_eq!(s.on_trap(&t, 0x10, STEP), None, "nothing changed: run on");
        t.ram.borrow_mut()[0x1002] = 7;
        assert_eq!(s.on_trap(&t, 0x11, STEP), Some(b"T05watch:1000;thread:01;".to_vec()));
        assert_eq!(ask(&mut s, &t, "?"), "T05watch:1000;thread:01;");
        // Continuing: a breakpoint reached while stepping stops there.
        s.resume(&t, false).unwrap();
        assert_eq!(s.on_trap(&t, 0x2000, STEP), Some(b"T05thread:01;".to_vec()));
        // gdb's own single step stops after one instruction.
        s.resume(&t, true).unwrap();
        assert_eq!(s.on_trap(&t, 0x2005, STEP), Some(b"T05thread:01;".to_vec()));
        s.resume(&t, false).unwrap();
        assert_eq!(s.notes.len(), 1, "not said again");
        // Without watchpoints, a debug exit is gdb's.
        s.forget_breakpoints();
        s.resume(&t, false).unwrap();
        assert_eq!(*t.debug.borrow(), Some(GuestDebug::default()));
        assert_eq!(s.on_trap(&t, 0, 0), Some(b"T05thread:01;".to_vec()));
    }

    #[test]
    fn a_watch_across_two_pages_compares_both() {
        let mut s = session(false);
        let t = FakeTarget::new(true);
        assert_eq!(ask(&mut s, &t, "Z2,201ffc,8"), "OK"); // 4 bytes in each of two 4 KiB pages
        s.resume(&t, false).unwrap();
        assert_eq!(s.on_trap(&t, 0x10, STEP), None);
        t.ram.borrow_mut()[0x20_2003] = 1;
        assert_eq!(s.on_trap(&t, 0x11, STEP), Some(b"T05watch:201ffc;thread:01;".to_vec()));
    }

    #[test]
    fn continuing_from_a_breakpoint_steps_past_it_first() {
        let mut s = session(false);
        let t = FakeTarget::new(false);
        assert_eq!(ask(&mut s, &t, "Z0,1234,1"), "OK"); // rip is 0x1234
        assert_eq!(ask(&mut s, &t, "Z1,2000,1"), "OK");
        s.resume(&t, false).unwrap();
        let past = t.debug.borrow().unwrap();
        assert_eq!(past.debugreg[7], 0, "one step with no breakpoint in DR7");
        assert!(stepping(&t));
        assert_eq!(s.on_trap(&t, 0x1236, STEP), None);
        let all = t.debug.borrow().unwrap();
        assert_eq!(all.debugreg[..2], [0x1234, 0x2000]);
        assert_eq!(all.debugreg[7], 5 | 0x600);
        assert!(!stepping(&t), "no more stepping");
        assert_eq!(t.store_exit_regs.get(), Some(false), "a continue's exits store no registers");
        assert_eq!(s.on_trap(&t, 0x2000, 0xffff_0ff2), Some(b"T05thread:01;".to_vec()), "the next breakpoint");
        // gdb's step from a breakpoint: one step, then stop, with the registers from the exit.
        s.resume(&t, true).unwrap();
        assert_eq!(t.store_exit_regs.get(), Some(true));
        assert_eq!(s.on_trap(&t, 0x2001, STEP), Some(b"T05thread:01;".to_vec()));
    }

    #[test]
    fn six_breakpoints_are_served_by_stepping() {
        let mut s = session(false);
        let t = FakeTarget::new(true);
        for a in [0x100, 0x200, 0x300, 0x400, 0x500, 0x600] {
            assert_eq!(ask(&mut s, &t, &format!("Z0,{a:x},1")), "OK");
        }
        s.resume(&t, false).unwrap();
        assert!(stepping(&t));
        assert!(s.notes[0].contains("6 breakpoints"), "{:?}", s.notes);
        let sets = t.set_debug_calls.get();
        for pc in 0x1236..0x1300 {
            assert_eq!(s.on_trap(&t, pc, STEP), None);
        }
        assert_eq!(t.set_debug_calls.get(), sets, "guest debugging is set only when it changes");
        assert_eq!(s.on_trap(&t, 0x500, STEP), Some(b"T05thread:01;".to_vec()));
    }

    #[test]
    fn hlt_is_never_single_stepped() {
        let mut s = session(false);
        let t = FakeTarget::new(true);
        // 0x20: nop; 0x21: rex.W hlt; 0x23: hlt
        t.ram.borrow_mut()[0x20..0x24].copy_from_slice(&[0x90, 0x48, 0xf4, 0xf4]);
        assert_eq!(ask(&mut s, &t, "Z2,1000,8"), "OK");
        t.regs.borrow_mut().rip = 0x20;
        s.resume(&t, false).unwrap();
        assert!(stepping(&t));
        assert_eq!(s.on_trap(&t, 0x21, STEP), None, "the next instruction is hlt");
        assert!(!stepping(&t), "so the guest runs into it freely: KVM_EXIT_HLT ends the VM");
        // gdb's own `stepi` onto a hlt does the same.
        t.regs.borrow_mut().rip = 0x23;
        s.resume(&t, true).unwrap();
        assert!(!stepping(&t));
        assert_eq!(t.store_exit_regs.get(), Some(false), "the hlt ends the VM: no stop to report");
        // And so does continuing from a breakpoint on the hlt: DR7 leaves that breakpoint out.
        s.forget_breakpoints();
        assert_eq!(ask(&mut s, &t, "Z0,23,1"), "OK");
        s.resume(&t, false).unwrap();
        assert!(!stepping(&t));
        assert_eq!(t.debug.borrow().unwrap().debugreg[7], 0);
        // Unreadable code is stepped as usual (it will fault).
        t.regs.borrow_mut().rip = 0x20_0000;
        s.resume(&t, true).unwrap();
        assert!(stepping(&t));
    }

    #[test]
    fn a_stray_debug_exit_or_interrupt_reaches_gdb() {
        let mut s = session(false);
        let t = FakeTarget::new(false);
        assert_eq!(s.on_trap(&t, 0, STEP), Some(b"T05thread:01;".to_vec()), "not running");
        assert_eq!(s.stop_reply(Stop::Interrupt), b"T02thread:01;");
    }
}
