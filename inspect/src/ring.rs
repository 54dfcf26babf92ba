//! Serial output batched by KVM: the coalesced ring (`KVM_CAP_COALESCED_PIO`). KVM queues the
//! guest's serial bytes in a ring inside the vCPU's mapping and exits only when it is full,
//! instead of once per byte (docs/REFERENCE.md §3). The C exits once per serial byte, as
//! `--no-coalesce` does.
//!
//! The ring is switched on lazily, once a VM has written [`COALESCE_AFTER`] serial bytes
//! through plain exits: registering it makes the process's exit slower by a fixed ~16 ms (the
//! kernel's teardown of the zone), which short runs should not pay. Once on, the run loop
//! drains it at every exit, before handling the exit, so the guest's bytes keep their order
//! with everything else it does; on a terminal it is also drained every [`DRAIN_EVERY`], so
//! that a line shows up while the guest computes without exits.
//!
//! The version does the KVM part (registering the port, taking entries out of the ring); this
//! is the rest.

use std::io;
use std::time::Duration;

use crate::stats::Stats;

/// Serial bytes a VM writes through plain exits before its port goes through the ring.
pub const COALESCE_AFTER: u64 = 256;
/// How long bytes may wait in the ring when stdout is a terminal.
pub const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// One write KVM queued in the ring (`struct kvm_coalesced_mmio`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    /// Its slot in the ring, for `--trace`.
    pub slot: u32,
    /// The port (or, for MMIO, the address).
    pub port: u64,
    pub len: u32,
    /// A port write, not an MMIO one.
    pub pio: bool,
    pub data: [u8; 8],
}

/// Why draining the ring ended the VM.
#[derive(Debug)]
pub enum DrainError<E> {
    /// The ring could not be read.
    Ring(io::Error),
    /// The guest queued a write of `len` bytes to the serial port, which takes single bytes.
    Wide(u32),
    /// The serial port failed (the version's error).
    Out(E),
}

/// A VM's ring.
#[derive(Debug, Default)]
pub struct SerialRing {
    /// Whether the port goes through the ring (bytes may be waiting in it).
    pub on: bool,
    /// While the ring may still go on: how many more serial bytes before it does (the version's
    /// run loop counts them down, then calls [`SerialRing::started`]).
    pub countdown: Option<u64>,
    /// `--trace`: say when it goes on and what each drain took.
    pub trace: bool,
    /// `--trace` or `--stats`: say why it cannot go on.
    pub verbose: bool,
    /// Entries in the ring (`KVM_COALESCED_MMIO_MAX`), to name the last slot of a drain (set
    /// by [`SerialRing::drain`]).
    pub slots: u32,
}

impl SerialRing {
    /// The ring of a VM: it may go on unless `--no-coalesce`; `trace` and `verbose` as the fields say.
    pub fn new(coalesce: bool, trace: bool, verbose: bool) -> SerialRing {
        SerialRing { countdown: coalesce.then_some(COALESCE_AFTER), trace, verbose, ..SerialRing::default() }
    }

    /// The version tried to register `port` (`Ok(false)`: this KVM cannot). Says so with
    /// `--trace`, or why not with `--trace` or `--stats`. True when it is on.
    pub fn started(&mut self, registered: io::Result<bool>, port: u16, label: &str) -> bool {
        self.countdown = None;
        match registered {
            Ok(true) => {
                self.on = true;
                if self.trace {
                    diag!("trace: {label}: serial port {port:#x} now goes through the coalesced ring");
                }
            }
            Ok(false) if self.verbose => diag!(
                "mini_hypervisor: {label}: this KVM cannot coalesce port writes (no KVM_CAP_COALESCED_PIO): one exit per serial byte"
            ),
            Err(e) if self.verbose => {
                diag!("mini_hypervisor: {label}: cannot coalesce serial output ({e}): one exit per byte")
            }
            _ => {}
        }
        self.on
    }

    /// Hands every byte waiting in the ring to the serial port, in order, in chunks: `pop`
    /// takes the oldest entry out of the ring (`None`: empty), `out` writes bytes to the port;
    /// `slots` is how many entries the ring holds.
    pub fn drain<E>(
        &mut self,
        (port, slots): (u16, u32),
        mut pop: impl FnMut() -> io::Result<Option<Queued>>,
        mut out: impl FnMut(&[u8]) -> Result<(), E>,
        stats: Option<&mut Stats>,
        label: &str,
    ) -> Result<(), DrainError<E>> {
        self.slots = slots;
        let mut chunk = [0u8; 64];
        let (mut n, mut total, mut first_slot) = (0, 0u64, None);
        while let Some(entry) = pop().map_err(DrainError::Ring)? {
            first_slot.get_or_insert(entry.slot);
            if !entry.pio || entry.port != u64::from(port) || entry.len != 1 {
                return Err(DrainError::Wide(entry.len));
            }
            chunk[n] = entry.data[0];
            (n, total) = (n + 1, total + 1);
            if n == chunk.len() {
                out(&chunk).map_err(DrainError::Out)?;
                n = 0;
            }
        }
        if n > 0 {
            out(&chunk[..n]).map_err(DrainError::Out)?;
        }
        if let Some(first) = first_slot {
            if let Some(stats) = stats {
                stats.ring(total);
            }
            if self.trace {
                let last = (u64::from(first) + total - 1) % u64::from(self.slots.max(1));
                diag!("trace: {label}: ring drain: {total} serial bytes from slots {first}..={last}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(slot: u32, byte: u8) -> Queued {
        Queued { slot, port: 0xe9, len: 1, pio: true, data: [byte, 0, 0, 0, 0, 0, 0, 0] }
    }

    #[test]
    fn it_goes_on_only_after_countdown_and_registration() {
        assert_eq!(SerialRing::new(false, false, false).countdown, None, "--no-coalesce: never");
        let mut ring = SerialRing::new(true, false, false);
        assert_eq!(ring.countdown, Some(COALESCE_AFTER));
        assert!(!ring.started(Ok(false), 0xe9, "vm0"), "this KVM cannot");
        assert_eq!((ring.on, ring.countdown), (false, None), "tried once only");
        let mut ring = SerialRing::new(true, false, false);
        assert!(ring.started(Ok(true), 0xe9, "vm0") && ring.on);
    }

    #[test]
    fn a_drain_hands_every_byte_over_in_order_and_counts_it() {
        let mut ring = SerialRing::new(true, false, false);
        let mut entries: Vec<Queued> = (0..150u32).map(|i| queued(i % 170, b'a' + (i % 26) as u8)).collect();
        entries.reverse();
        let mut written = Vec::new();
        let mut stats = Stats::new();
        let result = ring.drain::<()>(
            (0xe9, 170),
            || Ok(entries.pop()),
            |bytes| {
                written.extend_from_slice(bytes);
                Ok(())
            },
            Some(&mut stats),
            "vm0",
        );
        assert!(result.is_ok());
        let expected: Vec<u8> = (0..150u32).map(|i| b'a' + (i % 26) as u8).collect();
        assert_eq!(written, expected);
        assert_eq!((stats.ring_bytes, stats.ring_drains), (150, 1));
    }

    #[test]
    fn a_wide_write_in_the_ring_is_the_guests_error_and_a_failed_read_the_hosts() {
        let mut ring = SerialRing::new(true, false, false);
        let mut wide = vec![Queued { len: 2, ..queued(0, b'x') }];
        let r = ring.drain((0xe9, 170), || Ok(wide.pop()), |_: &[u8]| Ok::<(), ()>(()), None, "vm0");
        assert!(matches!(r, Err(DrainError::Wide(2))));
        let r = ring.drain((0xe9, 170), || Err(io::Error::other("gone")), |_: &[u8]| Ok::<(), ()>(()), None, "vm0");
        assert!(matches!(r, Err(DrainError::Ring(_))));
        let mut one = vec![queued(0, b'x')];
        let r = ring.drain((0xe9, 170), || Ok(one.pop()), |_: &[u8]| Err("closed"), None, "vm0");
        assert!(matches!(r, Err(DrainError::Out("closed"))));
    }
}
