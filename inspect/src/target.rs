//! How the toolbox sees a VM: through [`Target`], a trait of its own that each version
//! implements in a few lines over its KVM handles, and plain structs for what crosses it.
//! Nothing here knows about KVM, file descriptors or `unsafe`.

use std::io;

/// The general-purpose registers, in the order of `struct kvm_regs` (beware: `rsp` before
/// `rbp`, the other way round from gdb's order).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// The system registers the tools read: segment selectors, the FS/GS bases, the control
/// registers, EFER and the interrupt table register.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SystemRegs {
    pub cs: u16,
    pub ss: u16,
    pub ds: u16,
    pub es: u16,
    pub fs: u16,
    pub gs: u16,
    pub fs_base: u64,
    pub gs_base: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub idt_base: u64,
    pub idt_limit: u16,
}

/// What the debugger asks of the vCPU's debug support (KVM: `KVM_SET_GUEST_DEBUG`).
/// `Default` is "off": no single-stepping, no debug registers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuestDebug {
    /// Debugging on: the debug registers below are loaded (KVM: `ENABLE | USE_HW_BP`).
    pub enable: bool,
    /// One debug exit per instruction (KVM: `SINGLESTEP`).
    pub single_step: bool,
    /// DR0–DR7 (DR4 and DR5 unused).
    pub debugreg: [u64; 8],
}

/// A stopped vCPU and its RAM, as the tools use them: the debugger, the crash report and the
/// tracer. Called only while the vCPU is outside `KVM_RUN`, on the thread that runs it.
pub trait Target {
    /// The general-purpose registers (KVM: `KVM_GET_REGS`).
    fn regs(&self) -> io::Result<Regs>;
    /// Writes the general-purpose registers (KVM: `KVM_SET_REGS`).
    fn set_regs(&self, regs: &Regs) -> io::Result<()>;
    /// The system registers (KVM: from `KVM_GET_SREGS`).
    fn system_regs(&self) -> io::Result<SystemRegs>;
    /// Writes `fs_base`, `gs_base`, `cr0`, `cr2`, `cr3`, `cr4` and `efer`; the selectors and
    /// the interrupt table register are left as they are.
    fn set_system_regs(&self, s: &SystemRegs) -> io::Result<()>;
    /// Copies guest-physical memory out; an error for anything outside RAM.
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Copies into guest-physical memory; an error for anything outside RAM.
    fn write_phys(&self, gpa: u64, buf: &[u8]) -> io::Result<()>;
    /// Sets what the vCPU stops for (KVM: `KVM_SET_GUEST_DEBUG`).
    fn set_debug(&self, debug: &GuestDebug) -> io::Result<()>;
    /// The registers and system registers as KVM stored them at the exit the vCPU stopped at,
    /// if the version stores them ([`Target::store_exit_regs`]) and no register was written
    /// since: the debugger then reads them without `regs` and `system_regs`, which cost an
    /// ioctl each. `None` (the default): it calls those.
    fn exit_regs(&self) -> Option<(Regs, SystemRegs)> {
        None
    }
    /// Asks the version to store the registers at the vCPU's next exits, for
    /// [`Target::exit_regs`] (KVM: `KVM_CAP_SYNC_REGS`): `true` when the debugger resumes the
    /// guest for one of gdb's single steps, whose stop it reports at once; `false` otherwise
    /// (an exit that stores them costs a little, and most exits of a continue are not
    /// reported) and when it detaches. The default does nothing.
    fn store_exit_regs(&self, _on: bool) {}
}

/// Where things are in a VM's RAM, as the version set it up (its `long_mode.rs`): for the
/// crash report's words and `monitor mem`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMap {
    /// Guest RAM is `[0, ram_size)`, identity-mapped.
    pub ram_size: u64,
    /// 2 MiB pages (`-p 2`); else 4 KiB pages.
    pub large_pages: bool,
    /// The lowest page-table page (the PML4): CR3 and the initial RSP. The tables fill
    /// `[tables_base, ram_size)`.
    pub tables_base: u64,
    /// The image's length: it lies at `[0, image_len)`.
    pub image_len: u64,
}

/// A VM exit as `--trace` and `--stats` show it (each version converts its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A port access (KVM: `KVM_EXIT_IO`): `count` accesses of `size` bytes.
    Io { out: bool, port: u16, size: u8, count: u32 },
    /// The guest executed `hlt`.
    Hlt,
    /// An access outside RAM (KVM: `KVM_EXIT_MMIO`).
    Mmio { phys_addr: u64, len: u32, is_write: bool },
    /// A triple fault (KVM: `KVM_EXIT_SHUTDOWN`).
    Shutdown,
    /// The hardware refused to enter the guest (KVM: `KVM_EXIT_FAIL_ENTRY`).
    FailEntry { reason: u64, cpu: u32 },
    /// KVM could not go on (KVM: `KVM_EXIT_INTERNAL_ERROR`).
    InternalError { suberror: u32 },
    /// A breakpoint, watchpoint or single step (KVM: `KVM_EXIT_DEBUG`).
    Debug { exception: u32, pc: u64, dr6: u64 },
    /// `KVM_RUN` came back early for a signal.
    Intr,
    /// An I/O exit whose fields make no sense (its data outside the run area).
    BadIo { size: u8, count: u32, data_offset: u64 },
    /// An exit reason the version does not know: its number.
    Unknown(u32),
}

impl Exit {
    /// The one-line reason of a VM that this exit ended (its failure line on stderr).
    pub fn reason(&self) -> String {
        match *self {
            Exit::Shutdown => "triple fault (KVM_EXIT_SHUTDOWN): the guest crashed".to_owned(),
            Exit::Mmio { phys_addr, len, is_write } => format!(
                "MMIO {} of {len} byte{} at guest-physical {phys_addr:#x}, outside RAM (KVM_EXIT_MMIO)",
                if is_write { "write" } else { "read" },
                if len == 1 { "" } else { "s" }
            ),
            Exit::FailEntry { reason, cpu } => {
                format!("VM entry failed (KVM_EXIT_FAIL_ENTRY), hardware reason {reason:#x} on cpu {cpu}")
            }
            Exit::InternalError { suberror } => format!(
                "KVM internal error (KVM_EXIT_INTERNAL_ERROR), suberror {suberror}{}",
                if suberror == 1 {
                    ": instruction emulation failed: an instruction this host's KVM cannot emulate \
                     (SSE arithmetic, int3, ...)"
                } else {
                    ""
                }
            ),
            Exit::BadIo { size, count, data_offset } => {
                format!("malformed I/O exit from KVM: size {size}, count {count}, data offset {data_offset:#x}")
            }
            Exit::Unknown(reason) => format!("unhandled KVM exit reason {reason}"),
            Exit::Io { .. } | Exit::Hlt | Exit::Intr | Exit::Debug { .. } => format!("unexpected exit {self:?}"),
        }
    }
}
