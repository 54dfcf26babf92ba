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

use crate::kvm::{Machine, RING_MAX, Vcpu};
use inspect::stats::Stats;

use crate::serial::{GuestError, IoError, Ports, SERIAL_PORT};

/// Serial bytes a VM writes through plain exits before its port goes through the ring.
pub const COALESCE_AFTER: u64 = 256;
/// How long bytes may wait in the ring when stdout is a terminal.
pub const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// The VM's ring.
#[derive(Debug, Default)]
pub struct SerialRing {
    /// Whether the port goes through the ring (bytes may be waiting in it).
    pub on: bool,
    /// While the ring may still go on: how many more serial bytes before it does (the run
    /// loop counts them down and calls [`SerialRing::start`] at 0).
    pub countdown: Option<u64>,
    /// `--trace`: say when it goes on and what each drain took.
    pub trace: bool,
}

impl SerialRing {
    /// Has KVM queue the serial port's writes in the ring (once; if it cannot, the ring stays
    /// off, and with `--trace` or `--stats` (`verbose`) says why). True when it has gone on.
    pub fn start(&mut self, machine: &mut Machine, label: &str, trace: bool, verbose: bool) -> bool {
        (self.countdown, self.trace) = (None, trace);
        match machine.coalesce_port(SERIAL_PORT) {
            Ok(true) => {
                self.on = true;
                if self.trace {
                    diag!("trace: {label}: serial port {SERIAL_PORT:#x} now goes through the coalesced ring");
                }
            }
            Ok(false) if verbose => diag!(
                "mini_hypervisor: {label}: this KVM cannot coalesce port writes (no KVM_CAP_COALESCED_PIO): one exit per serial byte"
            ),
            Err(e) if verbose => {
                diag!("mini_hypervisor: {label}: cannot coalesce serial output ({e}): one exit per byte")
            }
            _ => {}
        }
        self.on
    }

    /// Hands every byte waiting in the ring to the serial port, in order.
    pub fn drain(
        &mut self,
        vcpu: &Vcpu,
        ports: &mut Ports,
        stats: Option<&mut Stats>,
        label: &str,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), IoError> {
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
                ports.serial_out(1, &chunk, stop)?;
                n = 0;
            }
        }
        if n > 0 {
            ports.serial_out(1, &chunk[..n], stop)?;
        }
        if let Some(first) = first_slot {
            if let Some(stats) = stats {
                stats.ring(total);
            }
            if self.trace {
                let last = (u64::from(first) + total - 1) % u64::from(RING_MAX);
                diag!("trace: {label}: ring drain: {total} serial bytes from slots {first}..={last}");
            }
        }
        Ok(())
    }
}
