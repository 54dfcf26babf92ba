//! Where this version meets the toolbox (`inspect`, what the C never had: the GDB stub, guest
//! symbols, the crash report in words, `--trace`, `--stats`), which sees a stopped VM only
//! through its trait [`inspect::Target`], implemented here over `kvm/` ([`Stopped`]), and holds
//! the tools a run asked for in [`inspect::tools::Tools`]; here is what of them needs KVM.
#![forbid(unsafe_code)]

use std::io;

use crate::kvm::{
    GuestRam, KVM_GET_REGS, KVM_GET_SREGS, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    KVM_SET_GUEST_DEBUG, KVM_SET_REGS, KVM_SET_SREGS, Kvm, KvmCoalescedMmio, KvmGuestDebug, KvmRegs, KvmSregs, Machine,
    Vcpu, VcpuExit,
};
use inspect::gdb;
use inspect::ring::Queued;
use inspect::trace::Trace;
use inspect::{Exit, GuestDebug, Regs, SystemRegs, Target};

use crate::long_mode::{self, Layout, MIB, PageSize};

/// A stopped vCPU and its RAM, as the toolbox sees them.
pub struct Stopped<'a> {
    pub vcpu: &'a Vcpu,
    pub ram: &'a GuestRam,
}

/// `kvm_regs` and the toolbox's `Regs` have the same fields.
macro_rules! copy_regs {
    ($from:expr => $to:ident) => {
        copy_regs!($from => $to: rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags)
    };
    ($from:expr => $to:ident: $($field:ident)*) => {{
        let r = $from;
        $to { $($field: r.$field),* }
    }};
}

impl Target for Stopped<'_> {
    fn regs(&self) -> io::Result<Regs> {
        Ok(copy_regs!(self.vcpu.get(KVM_GET_REGS)? => Regs))
    }

    fn set_regs(&self, regs: &Regs) -> io::Result<()> {
        self.vcpu.set(KVM_SET_REGS, &copy_regs!(regs => KvmRegs))?;
        self.vcpu.stale_stored_regs()
    }

    fn system_regs(&self) -> io::Result<SystemRegs> {
        Ok(system_regs(&self.vcpu.get(KVM_GET_SREGS)?))
    }

    fn set_system_regs(&self, new: &SystemRegs) -> io::Result<()> {
        let mut s = self.vcpu.get(KVM_GET_SREGS)?;
        (s.fs.base, s.gs.base) = (new.fs_base, new.gs_base);
        (s.cr0, s.cr2, s.cr3, s.cr4, s.efer) = (new.cr0, new.cr2, new.cr3, new.cr4, new.efer);
        self.vcpu.set(KVM_SET_SREGS, &s)?;
        self.vcpu.stale_stored_regs()
    }

    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
        self.ram.read(gpa, buf)
    }

    fn write_phys(&self, gpa: u64, buf: &[u8]) -> io::Result<()> {
        self.ram.write(gpa, buf)
    }

    fn set_debug(&self, debug: &GuestDebug) -> io::Result<()> {
        let on = if debug.enable { KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP } else { 0 };
        let step = if debug.single_step { KVM_GUESTDBG_SINGLESTEP } else { 0 };
        self.vcpu.set(KVM_SET_GUEST_DEBUG, &KvmGuestDebug { control: on | step, pad: 0, debugreg: debug.debugreg })
    }

    fn exit_regs(&self) -> Option<(Regs, SystemRegs)> {
        let (r, s) = self.vcpu.stored_regs().ok()??;
        Some((copy_regs!(r => Regs), system_regs(&s)))
    }

    fn store_exit_regs(&self, on: bool) {
        let _ = self.vcpu.store_regs_at_exits(on);
    }
}

/// `kvm_sregs` as the toolbox sees it.
fn system_regs(s: &KvmSregs) -> SystemRegs {
    SystemRegs {
        cs: s.cs.selector,
        ss: s.ss.selector,
        ds: s.ds.selector,
        es: s.es.selector,
        fs: s.fs.selector,
        gs: s.gs.selector,
        fs_base: s.fs.base,
        gs_base: s.gs.base,
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        efer: s.efer,
        idt_base: s.idt.base,
        idt_limit: s.idt.limit,
    }
}

/// An exit as `--trace` and `--stats` see it.
pub fn exit(exit: &VcpuExit) -> Exit {
    match *exit {
        VcpuExit::Io(io) => Exit::Io { out: io.out, port: io.port, size: io.size, count: io.count },
        VcpuExit::Hlt => Exit::Hlt,
        VcpuExit::Mmio { phys_addr, len, is_write } => Exit::Mmio { phys_addr, len, is_write },
        VcpuExit::Shutdown => Exit::Shutdown,
        VcpuExit::FailEntry { reason, cpu } => Exit::FailEntry { reason, cpu },
        VcpuExit::InternalError { suberror } => Exit::InternalError { suberror },
        VcpuExit::Debug { exception, pc, dr6 } => Exit::Debug { exception, pc, dr6 },
        VcpuExit::Intr => Exit::Intr,
        VcpuExit::BadIo { size, count, data_offset } => Exit::BadIo { size, count, data_offset },
        VcpuExit::Unknown(reason) => Exit::Unknown(reason),
    }
}

/// A write KVM queued in the coalesced ring, as the toolbox's ring sees it.
pub fn queued((slot, entry): (u32, KvmCoalescedMmio)) -> Queued {
    Queued { slot, port: entry.phys_addr, len: entry.len, pio: entry.pio == 1, data: entry.data }
}

/// `--trace`: the line of exit number `n`, after it was handled (an `in` shows its answer).
pub fn trace_exit(trace: &Trace, machine: &mut Machine, n: u64, result: &io::Result<VcpuExit>) {
    let (vcpu, ram) = machine.parts();
    let mut first = [0u8; 8];
    let data = match result {
        Ok(VcpuExit::Io(io)) => {
            let len = io.bytes.min(first.len());
            if vcpu.io_data(io, 0, &mut first[..len]).is_ok() { &first[..len] } else { &[][..] }
        }
        _ => &[][..],
    };
    let converted = result.as_ref().map(exit);
    trace.exit(&Stopped { vcpu, ram }, n, converted.as_ref().map_err(|e| *e), data);
}

/// Whether this host's KVM fires DR7 data breakpoints: a tiny VM writes a watched byte, and
/// either exits for the debugger (yes) or runs on to its `hlt` (no). Any error counts as no.
pub fn data_breakpoints_fire(kvm: &Kvm) -> bool {
    let probe = || -> io::Result<bool> {
        let layout = Layout::new(2 * MIB, PageSize::Large2M);
        let (code, debug) = gdb::data_watch_probe();
        let mut machine = Machine::new(kvm, layout.mem_size as usize)?;
        let (vcpu, ram) = machine.parts();
        ram.write(layout.tables_base, &layout.page_tables())?;
        ram.write(0, &code)?;
        vcpu.set(KVM_SET_SREGS, &long_mode::long_mode_sregs(vcpu.get(KVM_GET_SREGS)?, &layout))?;
        vcpu.set(KVM_SET_REGS, &KvmRegs { rsp: layout.tables_base, rflags: 0x2, ..KvmRegs::default() })?;
        Stopped { vcpu, ram }.set_debug(&debug)?;
        for _ in 0..8 {
            match vcpu.run() {
                Ok(VcpuExit::Debug { .. }) => return Ok(true),
                Ok(VcpuExit::Intr) => continue,
                _ => return Ok(false),
            }
        }
        Ok(false)
    };
    probe().unwrap_or(false)
}

/// `TcpListener` for `--gdb`, re-exported for `main`.
pub use inspect::gdb::listen;

#[cfg(test)]
mod tests {
    use super::*;

    /// Asked for, the registers come from the exit, and a write makes them stale until the
    /// next exit: a tiny VM single-steps `nop; nop; hlt`.
    #[test]
    fn registers_stored_at_the_exit_match_the_ioctls_and_go_stale_on_a_write() {
        let Ok(kvm) = Kvm::open() else {
            eprintln!("SKIP: no /dev/kvm");
            return;
        };
        let layout = Layout::new(2 * MIB, PageSize::Large2M);
        let mut machine = Machine::new(&kvm, layout.mem_size as usize).unwrap();
        let (vcpu, ram) = machine.parts();
        ram.write(layout.tables_base, &layout.page_tables()).unwrap();
        ram.write(0, &[0x90, 0x90, 0xf4]).unwrap();
        vcpu.set(KVM_SET_SREGS, &long_mode::long_mode_sregs(vcpu.get(KVM_GET_SREGS).unwrap(), &layout)).unwrap();
        vcpu.set(KVM_SET_REGS, &KvmRegs { rsp: layout.tables_base, rflags: 0x2, ..KvmRegs::default() }).unwrap();
        let step = GuestDebug { enable: true, single_step: true, debugreg: [0; 8] };
        Stopped { vcpu, ram }.set_debug(&step).unwrap();
        Stopped { vcpu, ram }.store_exit_regs(true);
        assert_eq!(Stopped { vcpu, ram }.exit_regs(), None, "nothing stored before an exit");
        assert!(matches!(vcpu.run().unwrap(), VcpuExit::Debug { pc: 1, .. }));
        let t = Stopped { vcpu, ram };
        let (r, s) = t.exit_regs().expect("stored at the exit");
        assert_eq!((r, s), (t.regs().unwrap(), t.system_regs().unwrap()), "as the ioctls read them");
        assert_eq!(r.rip, 1);
        t.set_regs(&Regs { rip: 0, ..r }).unwrap();
        assert_eq!(t.exit_regs(), None, "stale after a write");
        assert!(matches!(vcpu.run().unwrap(), VcpuExit::Debug { pc: 1, .. }));
        let t = Stopped { vcpu, ram };
        assert_eq!(t.exit_regs().map(|(r, _)| r.rip), Some(1), "stored again at the next exit");
        let mut s = t.system_regs().unwrap();
        s.cr2 = 0x1234;
        t.set_system_regs(&s).unwrap();
        assert_eq!(t.exit_regs(), None, "stale after a write of the system registers");
        t.store_exit_regs(false);
        t.set_debug(&GuestDebug::default()).unwrap();
        assert!(matches!(vcpu.run().unwrap(), VcpuExit::Hlt));
        assert_eq!(Stopped { vcpu, ram }.exit_regs(), None, "not stored once turned off");
    }
}
