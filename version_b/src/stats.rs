//! What a VM made the hypervisor do: exits by reason, bytes per port, where the time went.
//! Counting is a few integer additions per exit; clocks are read only with `--stats`.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io;
use std::time::{Duration, Instant};

use crate::kvm::VcpuExit;

/// Exits and bytes of one I/O port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    pub port: u16,
    pub in_exits: u64,
    pub out_exits: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

/// Counters of one VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub exits: u64,
    pub hlt: u64,
    pub other: u64,
    /// Serial bytes that came through the coalesced ring (no exit each), and in how many drains.
    pub ring_bytes: u64,
    pub ring_drains: u64,
    /// Ports in the order the guest first used them (a handful: linear search is fastest).
    pub ports: Vec<PortStats>,
    /// Time inside `KVM_RUN` (measured with `--stats` only).
    pub in_guest: Duration,
    /// Time between `KVM_RUN`s, handling exits (measured with `--stats` only).
    pub handling: Duration,
    /// `--stats`: read the clock around every `KVM_RUN`.
    clock: bool,
    /// When the last `KVM_RUN` was entered, and when it returned (with `clock` only).
    entered: Option<Instant>,
    left: Option<Instant>,
}

impl Stats {
    /// `clock`: time `KVM_RUN` and the handling of exits (`--stats`).
    pub fn new(clock: bool) -> Stats {
        Stats { clock, ..Stats::default() }
    }

    /// Just before `KVM_RUN`.
    pub fn entering(&mut self) {
        if self.clock {
            let now = Instant::now();
            if let Some(left) = self.left {
                self.handling += now - left;
            }
            self.entered = Some(now);
        }
    }

    /// Just after `KVM_RUN`: counts the exit.
    pub fn left(&mut self, exit: &io::Result<VcpuExit>) {
        if let Some(entered) = self.entered.take() {
            let now = Instant::now();
            self.in_guest += now - entered;
            self.left = Some(now);
        }
        match exit {
            Ok(VcpuExit::Io(io)) => self.io(io.port, io.out, io.bytes() as u64),
            Ok(VcpuExit::Hlt) => self.hlt(),
            _ => self.other(),
        }
    }

    pub fn io(&mut self, port: u16, out: bool, bytes: u64) {
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

    pub fn hlt(&mut self) {
        self.exits += 1;
        self.hlt += 1;
    }

    pub fn other(&mut self) {
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

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exits_per_port_and_direction() {
        let mut s = Stats::default();
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
}
