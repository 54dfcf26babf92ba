//! The bulk commands (read bulk 0x05, write bulk 0x06), once complete: whole buffers moved
//! straight between a file and guest RAM, through [`GuestRam`].
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;

use super::completed::{Completed, Why};
use super::requests::{lookup, take_back};
use super::{ERROR_DWORD, FileDevice, Mode};

/// A write that stopped early: `written` bytes reached the file before `error`.
#[derive(Debug)]
pub struct ShortWrite {
    pub written: usize,
    pub error: io::Error,
}

/// Guest RAM as the bulk commands need it. The hypervisor implements it over its
/// mmap; tests implement it over a `Vec`. Callers ([`FileDevice`]) have already checked
/// `[gpa, gpa+len)` lies in `[0, size())`.
pub trait GuestRam {
    /// Size of guest RAM in bytes.
    fn size(&self) -> u64;
    /// read(2) from `file` straight into guest RAM `[gpa, gpa+len)`, looping until `len` bytes
    /// or end of file; returns bytes read.
    fn read_from_file(&self, file: &File, gpa: u64, len: usize) -> io::Result<usize>;
    /// write(2) all of guest RAM `[gpa, gpa+len)` to `file`; on failure, how many bytes reached
    /// the file first.
    fn write_to_file(&self, file: &File, gpa: u64, len: usize) -> Result<(), ShortWrite>;
}

/// Which bulk command a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bulk {
    Read,
    Write,
}

impl Bulk {
    /// The mode the vfd must have been opened in.
    fn mode(self) -> Mode {
        match self {
            Bulk::Read => Mode::Read,
            Bulk::Write => Mode::Write,
        }
    }
}

impl FileDevice {
    /// The bulk request is complete: move up to `length` bytes between the file and guest RAM
    /// at `address`; the dword answer.
    pub(super) fn answer_bulk(&mut self, op: Bulk, vfd: u8, address: u32, length: u32, ram: &dyn GuestRam) -> u32 {
        let answer = self.try_bulk(op, vfd, address, length, ram);
        let value = *answer.as_ref().unwrap_or(&ERROR_DWORD);
        self.record(|_| Completed::Bulk { op, vfd, address, length, answer });
        value
    }

    pub(super) fn try_bulk(
        &self,
        op: Bulk,
        vfd: u8,
        address: u32,
        length: u32,
        ram: &dyn GuestRam,
    ) -> Result<u32, Why> {
        let file = lookup(&self.files, vfd, op.mode())?;
        if length == 0 {
            return Ok(0);
        }
        // Both fit in 32 bits, so the sum cannot overflow in 64.
        let end = u64::from(address) + u64::from(length);
        let outside = Why::OutsideRam { end, size: ram.size() };
        if end > ram.size() {
            return Err(outside);
        }
        let len = usize::try_from(length).map_err(|_| outside)?;
        let gpa = u64::from(address);
        match op {
            Bulk::Read => match ram.read_from_file(file, gpa, len).map(u32::try_from) {
                Ok(Ok(n)) if n <= length => Ok(n),
                Ok(_) => Err(Why::ReadFailed(io::ErrorKind::InvalidData.into())),
                Err(e) => Err(Why::ReadFailed(e)),
            },
            Bulk::Write => match ram.write_to_file(file, gpa, len) {
                Ok(()) => Ok(length),
                Err(short) => Err(take_back(file, short)),
            },
        }
    }
}
