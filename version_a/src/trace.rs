//! `--trace`: one line per VM exit on stderr, with RIP and, for I/O, the first bytes moved.
//!
//! No C counterpart. Off, it costs one test of a bool per exit.
#![forbid(unsafe_code)]

use std::fmt::Display;
use std::io;
use std::sync::Arc;

use crate::crash;
use crate::kvm::{Vcpu, VcpuExit};
use crate::symbols::Symbols;

/// The tracer of one VM.
#[derive(Debug)]
pub struct Trace {
    on: bool,
    /// `vmN (image)`.
    label: String,
    /// To name RIPs (`rip=0x1e in guest_main+0xe (crash.c:9)`).
    symbols: Option<Arc<Symbols>>,
}

impl Trace {
    pub fn new(on: bool, label: &str, symbols: Option<Arc<Symbols>>) -> Trace {
        Trace { on, label: label.to_owned(), symbols }
    }

    /// The guest's RIP, with its symbol when known.
    fn rip(&self, vcpu: &Vcpu) -> String {
        match vcpu.get_regs() {
            Ok(regs) => crash::address(regs.rip, self.symbols.as_deref()),
            Err(_) => "?".to_owned(),
        }
    }

    /// The line for exit number `n` (after it was handled: an `in` shows its answer).
    pub fn exit(&self, vcpu: &Vcpu, n: u64, exit: &io::Result<VcpuExit>) {
        if !self.on {
            return;
        }
        let label = &self.label;
        let rip = self.rip(vcpu);
        match exit {
            Ok(VcpuExit::Io(io)) => {
                let mut first = [0u8; 8];
                let n_bytes = io.bytes().min(first.len());
                let data = match vcpu.io_data(io, 0, &mut first[..n_bytes]) {
                    Ok(()) => first[..n_bytes].iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "),
                    Err(_) => "?".to_owned(),
                };
                diag!(
                    "trace: {label} exit {n}: io {} port={:#x} size={} count={} data=[{data}] rip={rip}",
                    if io.out { "out" } else { "in" },
                    io.port,
                    io.size,
                    io.count
                );
            }
            Ok(exit) => diag!("trace: {label} exit {n}: {} rip={rip}", name(exit)),
            Err(e) => diag!("trace: {label} exit {n}: KVM_RUN returned an error: {e} rip={rip}"),
        }
    }

    /// A file request the guest completed (version C's port 0x0278), in words.
    pub fn file(&self, vcpu: &Vcpu, request: &dyn Display) {
        if self.on {
            diag!("trace: {} {request} rip={}", self.label, self.rip(vcpu));
        }
    }
}

/// A non-I/O exit in a few words, addresses in hex.
fn name(exit: &VcpuExit) -> String {
    match *exit {
        VcpuExit::Hlt => "hlt".to_owned(),
        VcpuExit::Mmio { phys_addr, len, is_write } => {
            format!("mmio {} of {len} at {phys_addr:#x}", if is_write { "write" } else { "read" })
        }
        VcpuExit::Shutdown => "shutdown (triple fault)".to_owned(),
        VcpuExit::FailEntry { reason, cpu } => format!("fail entry, reason {reason:#x} on cpu {cpu}"),
        VcpuExit::InternalError { suberror } => format!("internal error, suberror {suberror}"),
        VcpuExit::Debug(d) => format!("debug, exception {} at {:#x}, dr6 {:#x}", d.exception, d.pc, d.dr6),
        VcpuExit::Intr => "interrupted (a signal for this VM)".to_owned(),
        VcpuExit::BadIo { size, count, data_offset } => {
            format!("malformed io, size {size} count {count} data offset {data_offset:#x}")
        }
        VcpuExit::Unknown(reason) => format!("unknown exit reason {reason}"),
        VcpuExit::Io(io) => format!("io port {:#x}", io.port),
    }
}
