//! Our hand-written KVM declarations against the kernel's own `<linux/kvm.h>`: a small C
//! program compiled with the system C compiler prints every ioctl number, size and offset
//! the hypervisor relies on, and each must equal ours.

use std::collections::HashMap;
use std::mem::{offset_of, size_of};
use std::process::Command;

use crate::common::ffi::kvm::*;

const PROBE: &str = r#"
#include <stdio.h>
#include <stddef.h>
#include <linux/kvm.h>
#define V(n, x) printf("%s %llu\n", n, (unsigned long long)(x))
#define SIZE(t) V("sizeof_" #t, sizeof(struct t))
#define OFF(t, f, name) V("off_" #t "_" name, offsetof(struct t, f))
int main(void) {
    V("KVM_API_VERSION", KVM_API_VERSION);
    V("KVM_GET_API_VERSION", KVM_GET_API_VERSION);
    V("KVM_CREATE_VM", KVM_CREATE_VM);
    V("KVM_CHECK_EXTENSION", KVM_CHECK_EXTENSION);
    V("KVM_GET_VCPU_MMAP_SIZE", KVM_GET_VCPU_MMAP_SIZE);
    V("KVM_CREATE_VCPU", KVM_CREATE_VCPU);
    V("KVM_SET_USER_MEMORY_REGION", KVM_SET_USER_MEMORY_REGION);
    V("KVM_RUN", KVM_RUN);
    V("KVM_GET_REGS", KVM_GET_REGS);
    V("KVM_SET_REGS", KVM_SET_REGS);
    V("KVM_GET_SREGS", KVM_GET_SREGS);
    V("KVM_SET_SREGS", KVM_SET_SREGS);
    V("KVM_SET_SIGNAL_MASK", KVM_SET_SIGNAL_MASK);
    V("KVM_SET_GUEST_DEBUG", KVM_SET_GUEST_DEBUG);
    V("KVM_REGISTER_COALESCED_MMIO", KVM_REGISTER_COALESCED_MMIO);
    V("KVM_CAP_COALESCED_MMIO", KVM_CAP_COALESCED_MMIO);
    V("KVM_CAP_COALESCED_PIO", KVM_CAP_COALESCED_PIO);
    V("KVM_GUESTDBG_ENABLE", KVM_GUESTDBG_ENABLE);
    V("KVM_GUESTDBG_SINGLESTEP", KVM_GUESTDBG_SINGLESTEP);
    V("KVM_GUESTDBG_USE_HW_BP", KVM_GUESTDBG_USE_HW_BP);
    V("KVM_EXIT_DEBUG", KVM_EXIT_DEBUG);
    V("KVM_EXIT_IO", KVM_EXIT_IO);
    V("KVM_EXIT_HLT", KVM_EXIT_HLT);
    V("KVM_EXIT_MMIO", KVM_EXIT_MMIO);
    V("KVM_EXIT_SHUTDOWN", KVM_EXIT_SHUTDOWN);
    V("KVM_EXIT_FAIL_ENTRY", KVM_EXIT_FAIL_ENTRY);
    V("KVM_EXIT_INTR", KVM_EXIT_INTR);
    V("KVM_EXIT_INTERNAL_ERROR", KVM_EXIT_INTERNAL_ERROR);
    V("KVM_EXIT_IO_IN", KVM_EXIT_IO_IN);
    V("KVM_EXIT_IO_OUT", KVM_EXIT_IO_OUT);
    V("KVM_SYNC_X86_REGS", KVM_SYNC_X86_REGS);
    V("KVM_SYNC_X86_SREGS", KVM_SYNC_X86_SREGS);
    SIZE(kvm_regs); SIZE(kvm_segment); SIZE(kvm_dtable); SIZE(kvm_sregs);
    SIZE(kvm_userspace_memory_region);
    SIZE(kvm_guest_debug); SIZE(kvm_coalesced_mmio_zone); SIZE(kvm_coalesced_mmio);
    SIZE(kvm_coalesced_mmio_ring); SIZE(kvm_debug_exit_arch); SIZE(kvm_signal_mask);
    OFF(kvm_signal_mask, len, "len"); OFF(kvm_signal_mask, sigset, "sigset");
    OFF(kvm_guest_debug, control, "control"); OFF(kvm_guest_debug, pad, "pad");
    OFF(kvm_guest_debug, arch.debugreg, "debugreg");
    OFF(kvm_coalesced_mmio_zone, addr, "addr"); OFF(kvm_coalesced_mmio_zone, size, "size");
    OFF(kvm_coalesced_mmio_zone, pio, "pio");
    OFF(kvm_coalesced_mmio, phys_addr, "phys_addr"); OFF(kvm_coalesced_mmio, len, "len");
    OFF(kvm_coalesced_mmio, pio, "pio"); OFF(kvm_coalesced_mmio, data, "data");
    OFF(kvm_coalesced_mmio_ring, first, "first"); OFF(kvm_coalesced_mmio_ring, last, "last");
    OFF(kvm_coalesced_mmio_ring, coalesced_mmio, "entries");
    OFF(kvm_debug_exit_arch, exception, "exception"); OFF(kvm_debug_exit_arch, pc, "pc");
    OFF(kvm_debug_exit_arch, dr6, "dr6"); OFF(kvm_debug_exit_arch, dr7, "dr7");
    OFF(kvm_run, debug.arch, "debug_arch");
    OFF(kvm_regs, rax, "rax"); OFF(kvm_regs, rsp, "rsp"); OFF(kvm_regs, r8, "r8");
    OFF(kvm_regs, r15, "r15"); OFF(kvm_regs, rip, "rip"); OFF(kvm_regs, rflags, "rflags");
    OFF(kvm_segment, base, "base"); OFF(kvm_segment, limit, "limit");
    OFF(kvm_segment, selector, "selector"); OFF(kvm_segment, type, "type");
    OFF(kvm_segment, present, "present"); OFF(kvm_segment, dpl, "dpl"); OFF(kvm_segment, db, "db");
    OFF(kvm_segment, s, "s"); OFF(kvm_segment, l, "l"); OFF(kvm_segment, g, "g");
    OFF(kvm_segment, avl, "avl"); OFF(kvm_segment, unusable, "unusable");
    OFF(kvm_dtable, base, "base"); OFF(kvm_dtable, limit, "limit");
    OFF(kvm_sregs, cs, "cs"); OFF(kvm_sregs, ds, "ds"); OFF(kvm_sregs, es, "es");
    OFF(kvm_sregs, fs, "fs"); OFF(kvm_sregs, gs, "gs"); OFF(kvm_sregs, ss, "ss");
    OFF(kvm_sregs, tr, "tr"); OFF(kvm_sregs, ldt, "ldt"); OFF(kvm_sregs, gdt, "gdt");
    OFF(kvm_sregs, idt, "idt"); OFF(kvm_sregs, cr0, "cr0"); OFF(kvm_sregs, cr2, "cr2");
    OFF(kvm_sregs, cr3, "cr3"); OFF(kvm_sregs, cr4, "cr4"); OFF(kvm_sregs, cr8, "cr8");
    OFF(kvm_sregs, efer, "efer"); OFF(kvm_sregs, apic_base, "apic_base");
    OFF(kvm_sregs, interrupt_bitmap, "interrupt_bitmap");
    OFF(kvm_userspace_memory_region, slot, "slot"); OFF(kvm_userspace_memory_region, flags, "flags");
    OFF(kvm_userspace_memory_region, guest_phys_addr, "guest_phys_addr");
    OFF(kvm_userspace_memory_region, memory_size, "memory_size");
    OFF(kvm_userspace_memory_region, userspace_addr, "userspace_addr");
    OFF(kvm_run, exit_reason, "exit_reason");
    OFF(kvm_run, io, "exit_union");
    OFF(kvm_run, io.direction, "io_direction"); OFF(kvm_run, io.size, "io_size");
    OFF(kvm_run, io.port, "io_port"); OFF(kvm_run, io.count, "io_count");
    OFF(kvm_run, io.data_offset, "io_data_offset");
    OFF(kvm_run, mmio.phys_addr, "mmio_phys_addr"); OFF(kvm_run, mmio.data, "mmio_data");
    OFF(kvm_run, mmio.len, "mmio_len"); OFF(kvm_run, mmio.is_write, "mmio_is_write");
    OFF(kvm_run, fail_entry.hardware_entry_failure_reason, "fail_entry_reason");
    OFF(kvm_run, fail_entry.cpu, "fail_entry_cpu");
    OFF(kvm_run, internal.suberror, "internal_suberror"); OFF(kvm_run, internal.ndata, "internal_ndata");
    OFF(kvm_run, kvm_valid_regs, "valid_regs"); OFF(kvm_run, s.regs.regs, "sync_regs");
    OFF(kvm_run, s.regs.sregs, "sync_sregs");
    return 0;
}
"#;

/// Compiles and runs the probe; `None` (test skipped) only when there is no C compiler at all.
fn probe() -> Option<HashMap<String, u64>> {
    let dir = std::env::temp_dir().join(format!("mh_layout_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("probe.c");
    let exe = dir.join("probe");
    std::fs::write(&src, PROBE).unwrap();
    let Ok(status) = Command::new("cc").args(["-Wall", "-Wextra", "-o"]).arg(&exe).arg(&src).status() else {
        eprintln!("SKIP: no C compiler (cc) to compile the <linux/kvm.h> probe");
        return None;
    };
    assert!(status.success(), "probe.c did not compile: are the kernel headers (linux-libc-dev) installed?");
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    let _ = std::fs::remove_dir_all(&dir);
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let (k, v) = l.split_once(' ').unwrap();
                (k.to_owned(), v.parse().unwrap())
            })
            .collect(),
    )
}

#[test]
fn ioctl_numbers_structs_and_offsets_match_linux_kvm_h() {
    let Some(c) = probe() else { return };
    let mut checked = 0;
    let mut eq = |name: &str, ours: u64| {
        let theirs = *c.get(name).unwrap_or_else(|| panic!("probe did not print {name}"));
        assert_eq!(ours, theirs, "{name}: ours {ours:#x}, <linux/kvm.h> {theirs:#x}");
        checked += 1;
    };
    eq("KVM_API_VERSION", KVM_API_VERSION as u64);
    eq("KVM_GET_API_VERSION", KVM_GET_API_VERSION.number());
    eq("KVM_CREATE_VM", KVM_CREATE_VM.number());
    eq("KVM_CHECK_EXTENSION", KVM_CHECK_EXTENSION.number());
    eq("KVM_GET_VCPU_MMAP_SIZE", KVM_GET_VCPU_MMAP_SIZE.number());
    eq("KVM_CREATE_VCPU", KVM_CREATE_VCPU.number());
    eq("KVM_SET_USER_MEMORY_REGION", KVM_SET_USER_MEMORY_REGION.number());
    eq("KVM_RUN", KVM_RUN.number());
    eq("KVM_GET_REGS", KVM_GET_REGS.number());
    eq("KVM_SET_REGS", KVM_SET_REGS.number());
    eq("KVM_GET_SREGS", KVM_GET_SREGS.number());
    eq("KVM_SET_SREGS", KVM_SET_SREGS.number());
    eq("KVM_SET_SIGNAL_MASK", KVM_SET_SIGNAL_MASK.number());
    eq("KVM_SET_GUEST_DEBUG", KVM_SET_GUEST_DEBUG.number());
    eq("KVM_REGISTER_COALESCED_MMIO", KVM_REGISTER_COALESCED_MMIO.number());
    eq("KVM_CAP_COALESCED_MMIO", KVM_CAP_COALESCED_MMIO);
    eq("KVM_CAP_COALESCED_PIO", KVM_CAP_COALESCED_PIO);
    eq("KVM_GUESTDBG_ENABLE", KVM_GUESTDBG_ENABLE.into());
    eq("KVM_GUESTDBG_SINGLESTEP", KVM_GUESTDBG_SINGLESTEP.into());
    eq("KVM_GUESTDBG_USE_HW_BP", KVM_GUESTDBG_USE_HW_BP.into());
    eq("KVM_EXIT_DEBUG", KVM_EXIT_DEBUG.into());
    eq("KVM_EXIT_IO", KVM_EXIT_IO.into());
    eq("KVM_EXIT_HLT", KVM_EXIT_HLT.into());
    eq("KVM_EXIT_MMIO", KVM_EXIT_MMIO.into());
    eq("KVM_EXIT_SHUTDOWN", KVM_EXIT_SHUTDOWN.into());
    eq("KVM_EXIT_FAIL_ENTRY", KVM_EXIT_FAIL_ENTRY.into());
    eq("KVM_EXIT_INTR", KVM_EXIT_INTR.into());
    eq("KVM_EXIT_INTERNAL_ERROR", KVM_EXIT_INTERNAL_ERROR.into());
    eq("KVM_EXIT_IO_IN", KVM_EXIT_IO_IN.into());
    eq("KVM_EXIT_IO_OUT", KVM_EXIT_IO_OUT.into());

    macro_rules! size {
        ($c:literal, $t:ty) => {
            eq(concat!("sizeof_", $c), size_of::<$t>() as u64)
        };
    }
    size!("kvm_regs", KvmRegs);
    size!("kvm_segment", KvmSegment);
    size!("kvm_dtable", KvmDtable);
    size!("kvm_sregs", KvmSregs);
    size!("kvm_userspace_memory_region", KvmUserspaceMemoryRegion);
    size!("kvm_guest_debug", KvmGuestDebug);
    size!("kvm_coalesced_mmio_zone", KvmCoalescedMmioZone);
    size!("kvm_coalesced_mmio", KvmCoalescedMmio);
    size!("kvm_debug_exit_arch", KvmDebugExitArch);
    // The header; the mask follows it (`len` bytes at `sigset`).
    eq("sizeof_kvm_signal_mask", 4);

    // The ring is a header of two u32 indices and a flexible array of entries.
    eq("sizeof_kvm_coalesced_mmio_ring", RING_ENTRIES as u64);
    eq("off_kvm_coalesced_mmio_ring_first", RING_FIRST as u64);
    eq("off_kvm_coalesced_mmio_ring_last", RING_LAST as u64);
    eq("off_kvm_coalesced_mmio_ring_entries", RING_ENTRIES as u64);

    macro_rules! off {
        ($c:literal, $t:ty, $($f:ident),+) => {
            $( eq(concat!("off_", $c, "_", stringify!($f)), offset_of!($t, $f) as u64); )+
        };
    }
    off!("kvm_regs", KvmRegs, rax, rsp, r8, r15, rip, rflags);
    off!("kvm_signal_mask", KvmSignalMask, len, sigset);
    off!("kvm_segment", KvmSegment, base, limit, selector, present, dpl, db, s, l, g, avl, unusable);
    eq("off_kvm_segment_type", offset_of!(KvmSegment, type_) as u64);
    off!("kvm_dtable", KvmDtable, base, limit);
    off!("kvm_guest_debug", KvmGuestDebug, control, pad, debugreg);
    off!("kvm_coalesced_mmio_zone", KvmCoalescedMmioZone, addr, size, pio);
    off!("kvm_coalesced_mmio", KvmCoalescedMmio, phys_addr, len, pio, data);
    off!("kvm_debug_exit_arch", KvmDebugExitArch, exception, pc, dr6, dr7);
    off!(
        "kvm_sregs",
        KvmSregs,
        cs,
        ds,
        es,
        fs,
        gs,
        ss,
        tr,
        ldt,
        gdt,
        idt,
        cr0,
        cr2,
        cr3,
        cr4,
        cr8,
        efer,
        apic_base,
        interrupt_bitmap
    );
    off!(
        "kvm_userspace_memory_region",
        KvmUserspaceMemoryRegion,
        slot,
        flags,
        guest_phys_addr,
        memory_size,
        userspace_addr
    );

    // kvm_run: the offsets we read, and the exit structs we read at the union's offset.
    let u = RUN_EXIT_UNION as u64;
    eq("off_kvm_run_exit_reason", RUN_EXIT_REASON as u64);
    eq("off_kvm_run_exit_union", u);
    eq("off_kvm_run_io_direction", u + offset_of!(KvmRunIo, direction) as u64);
    eq("off_kvm_run_io_size", u + offset_of!(KvmRunIo, size) as u64);
    eq("off_kvm_run_io_port", u + offset_of!(KvmRunIo, port) as u64);
    eq("off_kvm_run_io_count", u + offset_of!(KvmRunIo, count) as u64);
    eq("off_kvm_run_io_data_offset", u + offset_of!(KvmRunIo, data_offset) as u64);
    eq("off_kvm_run_mmio_phys_addr", u + offset_of!(KvmRunMmio, phys_addr) as u64);
    eq("off_kvm_run_mmio_data", u + offset_of!(KvmRunMmio, data) as u64);
    eq("off_kvm_run_mmio_len", u + offset_of!(KvmRunMmio, len) as u64);
    eq("off_kvm_run_mmio_is_write", u + offset_of!(KvmRunMmio, is_write) as u64);
    eq("off_kvm_run_fail_entry_reason", u + offset_of!(KvmRunFailEntry, hardware_entry_failure_reason) as u64);
    eq("off_kvm_run_fail_entry_cpu", u + offset_of!(KvmRunFailEntry, cpu) as u64);
    eq("off_kvm_run_internal_suberror", u + offset_of!(KvmRunInternal, suberror) as u64);
    eq("off_kvm_run_internal_ndata", u + offset_of!(KvmRunInternal, ndata) as u64);
    eq("off_kvm_run_debug_arch", u);
    // The registers KVM stores at each exit while the debugger asks for them.
    eq("off_kvm_run_valid_regs", RUN_VALID_REGS as u64);
    eq("off_kvm_run_sync_regs", RUN_SYNC_REGS as u64);
    eq("off_kvm_run_sync_sregs", (RUN_SYNC_REGS + size_of::<KvmRegs>()) as u64);
    eq("KVM_SYNC_X86_REGS", KVM_SYNC_X86_REGS);
    eq("KVM_SYNC_X86_SREGS", KVM_SYNC_X86_SREGS);
    assert_eq!(checked, c.len(), "every value the probe printed is compared");
}
