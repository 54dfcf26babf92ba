//! The I/O ports a guest sees (docs/REFERENCE.md §3, §4, §5). The run loop hands every I/O exit here as plain
//! bytes; nothing in this file knows about KVM.
//!
//! C counterpart: the `switch` on `run->io.port` inside `run_vm`.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;

use crate::fileio::{FILE_PORT, FileDevice, GuestRam};
use crate::hostfs::{self, ShortWrite};
use crate::kvm::Mmap;
use crate::serial::{SERIAL_PORT, Serial};

/// Why a port access ends the VM.
#[derive(Debug)]
pub enum IoError {
    /// The guest broke the port's rules (e.g. a 2-byte access to 0xE9).
    Guest(String),
    /// The host side failed (e.g. stdout is closed).
    Host(String),
    /// A stop (timeout, Ctrl-C) arrived while the port waited for stdin or for stdout.
    Stopped,
}

/// All ports of one VM. It borrows the VM's guest RAM (`'m`), for the file port's bulk commands.
#[derive(Debug)]
pub struct Devices<'m> {
    /// `vmN (image)`, for warnings.
    label: String,
    pub serial: Serial<File, File>,
    /// Port 0x0278: the guest's files.
    pub files: FileDevice,
    /// Unknown ports already warned about (one warning per VM and port).
    warned: Vec<u16>,
    /// Guest RAM.
    mem: &'m Mmap,
}

impl<'m> Devices<'m> {
    pub fn new(label: String, serial: Serial<File, File>, files: FileDevice, mem: &'m Mmap) -> Devices<'m> {
        Devices { label, serial, files, warned: Vec::new(), mem }
    }

    /// `out`: `data` holds `data.len() / size` accesses of `size` bytes, in order. `stop()`
    /// says whether the VM is being stopped (a blocked stdout write then gives up).
    pub fn out(&mut self, port: u16, size: u8, data: &[u8], stop: &dyn Fn() -> bool) -> Result<(), IoError> {
        match port {
            SERIAL_PORT => {
                serial_size(size, "out")?;
                self.serial.write(data, stop).map_err(output_error)
            }
            FILE_PORT => {
                for access in data.chunks(usize::from(size)) {
                    self.files.out(access, self.mem);
                    // With --trace: the request this access completed, decoded (else always None).
                    if let Some(completed) = self.files.take_completed() {
                        diag!("trace: {} {completed}", self.label);
                    }
                }
                Ok(())
            }
            _ => {
                self.warn_once(port, "out to", "ignored");
                Ok(())
            }
        }
    }

    /// `in`: fill `data`, `data.len() / size` accesses of `size` bytes.
    pub fn inp(&mut self, port: u16, size: u8, data: &mut [u8], stop: &dyn Fn() -> bool) -> Result<(), IoError> {
        match port {
            SERIAL_PORT => {
                serial_size(size, "in")?;
                self.serial.read(data, stop).map_err(output_error)
            }
            FILE_PORT => {
                for access in data.chunks_mut(usize::from(size)) {
                    self.files.inp(access);
                }
                Ok(())
            }
            _ => {
                self.warn_once(port, "in from", "reads 0xff");
                data.fill(0xFF); // an empty ISA bus
                Ok(())
            }
        }
    }

    /// The VM has ended (however it ended): close its files, write out what is buffered.
    pub fn finish(&mut self, stop: &dyn Fn() -> bool) -> Result<(), IoError> {
        self.files.close_all();
        self.serial.flush(stop).map_err(output_error)
    }

    fn warn_once(&mut self, port: u16, what: &str, effect: &str) {
        if !self.warned.contains(&port) {
            self.warned.push(port);
            diag!(
                "mini_hypervisor: warning: {}: {what} unknown port {port:#x} {effect} (not reported again for this port)",
                self.label
            );
        }
    }
}

/// Guest RAM for the file port's bulk commands: copies go straight between file and mapping.
impl GuestRam for Mmap {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_from_file(&self, file: &File, gpa: u64, len: usize) -> io::Result<usize> {
        hostfs::read_into_ram(self, file, usize::try_from(gpa).map_err(io::Error::other)?, len)
    }
    fn write_to_file(&self, file: &File, gpa: u64, len: usize) -> Result<(), ShortWrite> {
        let off = usize::try_from(gpa).map_err(|e| ShortWrite { written: 0, error: io::Error::other(e) })?;
        hostfs::write_from_ram(self, file, off, len)
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
fn serial_size(size: u8, what: &str) -> Result<(), IoError> {
    if size == 1 {
        Ok(())
    } else {
        Err(IoError::Guest(format!("{size}-byte {what} on serial port {SERIAL_PORT:#x} (it takes single bytes)")))
    }
}
