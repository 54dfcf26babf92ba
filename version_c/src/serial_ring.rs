//! Port 0xE9 output through KVM's coalesced ring (`KVM_CAP_COALESCED_PIO`): KVM queues the
//! guest's serial bytes in a ring inside the vCPU's mapping and exits only when it is full,
//! instead of once per byte (docs/REFERENCE.md §3).
//!
//! No C counterpart: the C exits once per serial byte. `--no-coalesce` does the same here.
//!
//! The ring is switched on lazily, once a VM has written [`COALESCE_AFTER`] serial bytes
//! through plain exits: registering it makes the process's exit slower by a fixed ~16 ms (the
//! kernel's teardown of the zone), which short runs should not pay. Once on, the run loop
//! drains it at every exit, before handling the exit, so the guest's bytes keep their order
//! with everything else it does; on a terminal it is also drained every [`DRAIN_EVERY`], so
//! that a line shows up while the guest computes without exits.
#![forbid(unsafe_code)]

use std::time::Duration;

use crate::devices::{Devices, GuestError, IoError};
use crate::kvm::{RING_MAX, Vcpu, VmFd};
use crate::serial::SERIAL_PORT;
use crate::stats::Stats;

/// Serial bytes a VM writes through plain exits before its port goes through the ring.
pub const COALESCE_AFTER: u64 = 256;
/// How long bytes may wait in the ring when stdout is a terminal.
pub const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// One VM's ring.
#[derive(Debug)]
pub struct SerialRing {
    /// Whether the zone is registered (bytes may be waiting in the ring).
    on: bool,
    /// Whether it may still be switched on.
    can: bool,
    /// Serial bytes written through plain exits so far.
    plain_bytes: u64,
    /// `--trace`: say when it goes on and what each drain took.
    trace: bool,
    /// `--trace` or `--stats`: say why it cannot go on.
    verbose: bool,
}

impl SerialRing {
    /// `coalesce`: not `--no-coalesce`.
    pub fn new(vcpu: &Vcpu, coalesce: bool, trace: bool, stats: bool, label: &str) -> SerialRing {
        let can = coalesce && vcpu.has_coalesced_ring();
        if coalesce && !can && (trace || stats) {
            diag!(
                "mini_hypervisor: {label}: this KVM cannot coalesce port writes (no KVM_CAP_COALESCED_PIO): one exit per serial byte"
            );
        }
        SerialRing { on: false, can, plain_bytes: 0, trace, verbose: trace || stats }
    }

    /// Counts serial bytes sent through plain exits; past [`COALESCE_AFTER`], registers the
    /// port as a coalesced zone (once; a failure only means it stays off). True when it has
    /// just gone on.
    pub fn count(&mut self, bytes: u64, vm_fd: &VmFd, label: &str) -> bool {
        self.plain_bytes += bytes;
        if !self.can || self.plain_bytes < COALESCE_AFTER {
            return false;
        }
        self.can = false;
        match vm_fd.register_coalesced_pio(SERIAL_PORT, 1) {
            Ok(()) => {
                self.on = true;
                if self.trace {
                    diag!("trace: {label}: serial port {SERIAL_PORT:#x} now goes through the coalesced ring");
                }
            }
            Err(e) if self.verbose => {
                diag!("mini_hypervisor: {label}: cannot coalesce serial output ({e}): one exit per byte")
            }
            Err(_) => {}
        }
        self.on
    }

    /// Hands every byte waiting in the ring to the serial port, in order (nothing to do while
    /// the ring is off).
    pub fn drain(
        &mut self,
        vcpu: &Vcpu,
        devices: &mut Devices,
        stats: &mut Stats,
        label: &str,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), IoError> {
        if !self.on {
            return Ok(());
        }
        let mut chunk = [0u8; 64];
        let (mut n, mut total, mut first_slot) = (0, 0u64, None);
        while let Some((slot, entry)) = vcpu.pop_coalesced().map_err(|e| IoError::Host(e.to_string()))? {
            first_slot.get_or_insert(slot);
            if entry.pio != 1 || entry.phys_addr != u64::from(SERIAL_PORT) || entry.len != 1 {
                return Err(IoError::Guest(GuestError::WideSerial { size: entry.len, out: true }));
            }
            chunk[n] = entry.data[0];
            n += 1;
            total += 1;
            if n == chunk.len() {
                devices.serial_out(1, &chunk, stop)?;
                n = 0;
            }
        }
        if n > 0 {
            devices.serial_out(1, &chunk[..n], stop)?;
        }
        if let Some(first) = first_slot {
            stats.ring(total);
            if self.trace {
                let last = (u64::from(first) + total - 1) % u64::from(RING_MAX);
                diag!("trace: {label}: ring drain: {total} serial bytes from slots {first}..={last}");
            }
        }
        Ok(())
    }
}
