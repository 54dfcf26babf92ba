//! What the stub needs from a stopped vCPU and its RAM ([`Target`]), the real one over KVM
//! ([`KvmTarget`]), and the startup probe of whether this host fires data breakpoints.
#![forbid(unsafe_code)]

use std::io;

use super::breakpoints::{Breakpoints, Watch, WatchKind};
use crate::kvm::{self, KvmGuestDebug, KvmRegs, KvmSregs, Mmap, Vcpu, VcpuExit};
use crate::long_mode::{self, Layout, PageSize};

/// A stopped vCPU and its RAM, as the session uses them (unit tests use a fake one).
pub trait Target {
    fn regs(&self) -> io::Result<KvmRegs>;
    fn set_regs(&self, regs: &KvmRegs) -> io::Result<()>;
    fn sregs(&self) -> io::Result<KvmSregs>;
    fn set_sregs(&self, sregs: &KvmSregs) -> io::Result<()>;
    /// Guest-physical memory; an error for anything outside RAM.
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_phys(&self, gpa: u64, buf: &[u8]) -> io::Result<()>;
    fn set_debug(&self, dbg: &KvmGuestDebug) -> io::Result<()>;
}

/// [`Target`] over a stopped vCPU and its RAM. Memory access is a copy out of or into the
/// mapping of guest RAM, bounds-checked, without a system call.
pub struct KvmTarget<'a> {
    pub vcpu: &'a Vcpu,
    pub mem: &'a Mmap,
}

impl Target for KvmTarget<'_> {
    fn regs(&self) -> io::Result<KvmRegs> {
        self.vcpu.get_regs()
    }
    fn set_regs(&self, regs: &KvmRegs) -> io::Result<()> {
        self.vcpu.set_regs(regs)
    }
    fn sregs(&self) -> io::Result<KvmSregs> {
        self.vcpu.get_sregs()
    }
    fn set_sregs(&self, sregs: &KvmSregs) -> io::Result<()> {
        self.vcpu.set_sregs(sregs)
    }
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
        self.mem.read(usize::try_from(gpa).map_err(|_| io::ErrorKind::InvalidInput)?, buf)
    }
    fn write_phys(&self, gpa: u64, buf: &[u8]) -> io::Result<()> {
        self.mem.write(usize::try_from(gpa).map_err(|_| io::ErrorKind::InvalidInput)?, buf)
    }
    fn set_debug(&self, dbg: &KvmGuestDebug) -> io::Result<()> {
        self.vcpu.set_guest_debug(dbg)
    }
}

/// A 2-instruction probe guest: `mov [0x100], al; hlt`.
const PROBE_CODE: [u8; 8] = [0x88, 0x04, 0x25, 0x00, 0x01, 0x00, 0x00, 0xf4];

/// Whether this host's KVM fires DR7 data breakpoints: a tiny VM writes a watched byte, and
/// either exits for the debugger (yes) or runs on to its `hlt` (no). Any error counts as no.
pub fn data_breakpoints_fire(kvm: &kvm::Kvm) -> bool {
    probe(kvm).unwrap_or(false)
}

fn probe(kvm: &kvm::Kvm) -> io::Result<bool> {
    let layout = Layout::new(2 * long_mode::MIB, PageSize::Large2M);
    let mut vm = kvm::Vm::new(kvm, layout.mem_size as usize)?;
    vm.mem.write(layout.tables_base() as usize, &layout.page_tables())?;
    vm.mem.write(0, &PROBE_CODE)?;
    vm.vcpu.set_sregs(&long_mode::long_mode_sregs(vm.vcpu.get_sregs()?, &layout))?;
    vm.vcpu.set_regs(&long_mode::initial_regs(&layout))?;
    let mut points = Breakpoints::new(true);
    let _ = points.insert_watch(Watch { kind: WatchKind::Write, addr: 0x100, len: 1 });
    vm.vcpu.set_guest_debug(&points.guest_debug(false).0)?;
    for _ in 0..8 {
        match vm.vcpu.run() {
            Ok(VcpuExit::Debug(_)) => return Ok(true),
            Ok(VcpuExit::Intr) => continue,
            _ => return Ok(false),
        }
    }
    Ok(false)
}
