//! `--stats`: what a VM made the hypervisor do: exits by reason, bytes per port, where the
//! time went. The version makes a [`Stats`] only with `--stats`; it reads the clock around
//! every `KVM_RUN`, and counting is a few integer additions per exit.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::Exit;

/// Exits and bytes of one I/O port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// The port number.
    pub port: u16,
    /// `in` exits, and `out` exits.
    pub in_exits: u64,
    /// See `in_exits`.
    pub out_exits: u64,
    /// Bytes read by the guest, and written.
    pub in_bytes: u64,
    /// See `in_bytes`.
    pub out_bytes: u64,
}

/// Counters and timers of one VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Every exit (a failed `KVM_RUN` counts as one).
    pub exits: u64,
    /// `hlt` exits.
    pub hlt: u64,
    /// Exits neither I/O nor `hlt`.
    pub other: u64,
    /// Serial bytes that came through the coalesced ring (no exit each).
    pub ring_bytes: u64,
    /// How many drains of the ring brought them.
    pub ring_drains: u64,
    /// Ports in the order the guest first used them (a handful: linear search is fastest).
    pub ports: Vec<PortStats>,
    /// Time inside `KVM_RUN`.
    pub in_guest: Duration,
    /// Time between `KVM_RUN`s, handling exits.
    pub handling: Duration,
    /// When the last `KVM_RUN` was entered, and when it returned.
    entered: Option<Instant>,
    left: Option<Instant>,
}

impl Stats {
    /// Nothing counted yet.
    pub fn new() -> Stats {
        Stats::default()
    }

    /// Just before `KVM_RUN`: the time since the last one returned was spent handling exits.
    pub fn entering(&mut self) {
        let now = Instant::now();
        if let Some(left) = self.left {
            self.handling += now - left;
        }
        self.entered = Some(now);
    }

    /// Just after `KVM_RUN`: counts the exit (`None`: `KVM_RUN` failed, counted as other).
    pub fn left(&mut self, exit: Option<&Exit>) {
        if let Some(entered) = self.entered.take() {
            let now = Instant::now();
            self.in_guest += now - entered;
            self.left = Some(now);
        }
        match exit {
            Some(&Exit::Io { out, port, size, count }) => self.io(port, out, u64::from(size) * u64::from(count)),
            Some(Exit::Hlt) => self.hlt(),
            _ => self.other(),
        }
    }

    /// An I/O exit that moved `bytes` through `port`.
    fn io(&mut self, port: u16, out: bool, bytes: u64) {
        self.exits += 1;
        let p = match self.ports.iter().position(|p| p.port == port) {
            Some(i) => &mut self.ports[i],
            None => {
                self.ports.push(PortStats { port, ..PortStats::default() });
                self.ports.last_mut().expect("just pushed")
            }
        };
        if out {
            p.out_exits += 1;
            p.out_bytes += bytes;
        } else {
            p.in_exits += 1;
            p.in_bytes += bytes;
        }
    }

    fn hlt(&mut self) {
        self.exits += 1;
        self.hlt += 1;
    }

    fn other(&mut self) {
        self.exits += 1;
        self.other += 1;
    }

    /// `bytes` serial bytes drained from the coalesced ring at once.
    pub fn ring(&mut self, bytes: u64) {
        self.ring_bytes += bytes;
        self.ring_drains += 1;
    }

    /// The `--stats` block: a few indented lines.
    pub fn report(&self, wall: Duration) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "  exits: {} total, {} hlt, {} other", self.exits, self.hlt, self.other);
        if self.ring_drains > 0 {
            let _ = writeln!(
                s,
                "  serial ring: {} bytes in {} drains (coalesced: no exit per byte)",
                self.ring_bytes, self.ring_drains
            );
        }
        for p in &self.ports {
            let _ = writeln!(
                s,
                "  port {:#06x}: {} out exits ({} bytes), {} in exits ({} bytes)",
                p.port, p.out_exits, p.out_bytes, p.in_exits, p.in_bytes
            );
        }
        let per_exit = if self.exits > 0 { self.handling.as_nanos() / self.exits as u128 } else { 0 };
        let _ = writeln!(
            s,
            "  time: {:.3} ms wall, {:.3} ms in KVM_RUN, {:.3} ms handling exits ({per_exit} ns per exit)",
            ms(wall),
            ms(self.in_guest),
            ms(self.handling)
        );
        s
    }
}

/// A duration in milliseconds, for the `--stats` block and the version's closing line.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exits_per_port_and_direction() {
        let mut s = Stats::new();
        s.io(0xe9, true, 1);
        s.io(0xe9, true, 1);
        s.io(0xe9, false, 6);
        s.io(0x80, true, 1);
        s.hlt();
        s.ring(300);
        s.ring(20);
        assert_eq!(s.exits, 5, "ring bytes are not exits");
        assert_eq!(s.ports[0], PortStats { port: 0xe9, in_exits: 1, out_exits: 2, in_bytes: 6, out_bytes: 2 });
        assert_eq!(s.ports[1].port, 0x80);
        let r = s.report(Duration::from_millis(3));
        assert!(
            r.contains("exits: 5 total, 1 hlt, 0 other")
                && r.contains("port 0x00e9: 2 out exits (2 bytes), 1 in exits (6 bytes)")
                && r.contains("serial ring: 320 bytes in 2 drains"),
            "{r}"
        );
    }

    #[test]
    fn exits_are_counted_and_timed_from_their_kind() {
        let mut s = Stats::new();
        let exits = [
            Some(Exit::Io { out: true, port: 0xe9, size: 1, count: 5 }),
            Some(Exit::Io { out: false, port: 0x278, size: 4, count: 2 }),
            Some(Exit::Mmio { phys_addr: 0x1000_0000, len: 4, is_write: true }),
            None,
            Some(Exit::Hlt),
        ];
        for exit in &exits {
            s.entering();
            std::thread::sleep(Duration::from_millis(1)); // in the guest
            s.left(exit.as_ref());
            std::thread::sleep(Duration::from_millis(1)); // handling the exit
        }
        assert_eq!((s.exits, s.hlt, s.other), (5, 1, 2), "a failed KVM_RUN is an other exit");
        assert_eq!(s.ports[0], PortStats { port: 0xe9, out_exits: 1, out_bytes: 5, ..PortStats::default() });
        assert_eq!(s.ports[1], PortStats { port: 0x278, in_exits: 1, in_bytes: 8, ..PortStats::default() });
        assert!(s.in_guest >= Duration::from_millis(5), "the clock is always read: {s:?}");
        assert!(s.handling >= Duration::from_millis(4), "between the 5 runs: {s:?}");
        let r = s.report(Duration::from_millis(3));
        assert!(r.ends_with(" ns per exit)\n") && r.contains("  time: 3.000 ms wall, "), "{r}");
        assert!(!r.contains("serial ring"), "no drains, no line: {r}");
    }
}
