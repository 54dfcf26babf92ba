//! The I/O ports a guest sees (docs/REFERENCE.md §3, §4). The run loop hands every I/O exit
//! here as plain bytes; nothing in this file knows about KVM.
//!
//! C counterpart: the `switch` on `run->io.port` inside `run_vm`.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::fmt;

use crate::kvm::Mmap;
use crate::serial::{SERIAL_PORT, Serial};
use crate::signals::Interruptible;

/// Why a port access ends the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoError {
    /// The guest broke the port's rules.
    Guest(GuestError),
    /// The host side failed (e.g. stdout is closed): the message.
    Host(String),
    /// A stop (timeout, Ctrl-C) arrived while the port waited for stdin or for stdout.
    Stopped,
}

/// A rule of a port that the guest broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestError {
    /// A 2- or 4-byte access to the serial port, which moves single bytes.
    WideSerial { size: u32, out: bool },
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            GuestError::WideSerial { size, out } => write!(
                f,
                "{size}-byte {} serial port {SERIAL_PORT:#x} (it takes single bytes)",
                if out { "out on" } else { "in on" }
            ),
        }
    }
}

/// How many unknown ports of one VM get a warning each; past them, one line says the rest go
/// unreported (docs/REFERENCE.md §4).
pub const WARNED_PORTS: usize = 16;

/// All ports of one VM.
#[derive(Debug)]
pub struct Devices {
    /// `vmN (image)`, for warnings.
    label: String,
    pub serial: Serial<Interruptible, Interruptible>,
    /// Unknown ports already warned about (one warning per VM and port, at most 16).
    warned: Vec<u16>,
}

impl Devices {
    pub fn new(label: String, serial: Serial<Interruptible, Interruptible>) -> Devices {
        Devices { label, serial, warned: Vec::new() }
    }

    /// `out`: `data` holds `data.len() / size` accesses of `size` bytes, in order. `_ram`:
    /// guest RAM, which version C's file port reads and writes for its bulk commands (no port
    /// here does). `stop()` says whether the VM is being stopped (a blocked stdout write then
    /// gives up).
    pub fn out(
        &mut self,
        port: u16,
        size: u8,
        data: &[u8],
        _ram: &Mmap,
        stop: &dyn Fn() -> bool,
    ) -> Result<(), IoError> {
        match port {
            SERIAL_PORT => self.serial_out(size, data, stop),
            _ => {
                self.warn_once(port, "out to", "ignored");
                Ok(())
            }
        }
    }

    /// With `--trace`, the file requests the last exit completed: version C's file port
    /// has them; there is no file port here.
    pub fn completed(&mut self) -> std::iter::Empty<Infallible> {
        std::iter::empty()
    }

    /// Bytes for the serial port (also those KVM queued in the coalesced ring).
    pub fn serial_out(&mut self, size: u8, data: &[u8], stop: &dyn Fn() -> bool) -> Result<(), IoError> {
        serial_size(size, true)?;
        self.serial.write(data, stop).map_err(output_error)
    }

    /// `in`: fill `data`, `data.len() / size` accesses of `size` bytes.
    pub fn inp(&mut self, port: u16, size: u8, data: &mut [u8], stop: &dyn Fn() -> bool) -> Result<(), IoError> {
        match port {
            SERIAL_PORT => {
                serial_size(size, false)?;
                self.serial.read(data, stop).map_err(output_error)
            }
            _ => {
                self.warn_once(port, "in from", "reads 0xff");
                data.fill(0xFF); // an empty ISA bus
                Ok(())
            }
        }
    }

    /// The VM has ended (however it ended): write out what is buffered.
    pub fn finish(&mut self, stop: &dyn Fn() -> bool) -> Result<(), IoError> {
        self.serial.flush(stop).map_err(output_error)
    }

    fn warn_once(&mut self, port: u16, what: &str, effect: &str) {
        if self.warned.len() > WARNED_PORTS || self.warned.contains(&port) {
            return;
        }
        self.warned.push(port);
        if self.warned.len() > WARNED_PORTS {
            diag!(
                "mini_hypervisor: warning: {}: more unknown ports: not reported any more (--trace shows every access)",
                self.label
            );
            return;
        }
        diag!(
            "mini_hypervisor: warning: {}: {what} unknown port {port:#x} {effect} (not reported again for this port)",
            self.label
        );
    }
}

/// A failed write of guest output (or a stop that interrupted it, or a read of stdin).
fn output_error(e: std::io::Error) -> IoError {
    match e.kind() {
        std::io::ErrorKind::Interrupted => IoError::Stopped,
        _ => IoError::Host(format!("cannot write guest output to stdout: {e}")),
    }
}

/// Port 0xE9 moves single bytes: a 2- or 4-byte access is a guest error (docs/REFERENCE.md §3).
fn serial_size(size: u8, out: bool) -> Result<(), IoError> {
    if size == 1 { Ok(()) } else { Err(IoError::Guest(GuestError::WideSerial { size: size.into(), out })) }
}
