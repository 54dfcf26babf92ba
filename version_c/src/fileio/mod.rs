//! Port 0x0278: the guest's file I/O device: the byte protocol and the bulk commands.
//!
//! The guest drives this device one port access at a time, exactly as the C original's file
//! state machine did: every `out` moves the [`State`] one step, and once a request is complete
//! its answer becomes pending for the following `in`s.
//!
//! ```text
//! open        out 0x01, flags (0 read, 1 write), len (1..=254), len name bytes  in vfd | 0xFF
//! close       out 0x02, vfd                                                     in 0 | 0xFF
//! read        out 0x03, vfd, count                                              in n (0 = EOF) | 0xFF, then n × in data
//! write       out 0x04, vfd, count, count data bytes                            in n | 0xFF
//! read bulk   out 0x05, vfd, address (dword), length (dword)                    in dword: bytes read | 0xFFFF_FFFF
//! write bulk  out 0x06, vfd, address (dword), length (dword)                    in dword: bytes written | 0xFFFF_FFFF
//! ```
//!
//! Bytes are 1-byte accesses; a dword is one 4-byte access, little-endian. The rules that keep a
//! confused guest from ever desynchronising the protocol:
//!
//! - An `out` of a size the current state does not expect (2 bytes anywhere; 4 where a byte is
//!   expected; 1 where a dword is expected) abandons the request: back to `Idle`.
//! - An `in` takes the next byte of the pending answer (1-byte `in`), or the whole dword answer
//!   of a bulk command (4-byte `in`). Any other `in` (nothing pending, a request only half sent,
//!   the wrong size, any 2-byte access) reads all ones in its size (0xFF, 0xFFFF, 0xFFFF_FFFF)
//!   and drops whatever was pending: back to `Idle`.
//! - An `out` while an answer (or read data) is still pending drops it; the byte is taken as a
//!   new command byte in `Idle`.
//! - An unknown command byte answers 0xFF.
//!
//! An error answer "pending" after an abandoned request and "nothing pending" read the same
//! (all ones, in any size), so an abandoned request simply returns the device to `Idle`.
//!
//! A request that is refused moves no data: a write that fails part-way (a full disk) answers
//! -1 and first puts the file back to its length before the request.
//!
//! The parts: this file is the state machine (which byte goes where); `requests.rs` carries out
//! the byte requests on the file table; `bulk.rs` the bulk commands; `completed.rs` says what a
//! request did, in words, for `--trace`.
//!
//! With `--trace` ([`FileDevice::trace_requests`]), the device keeps a [`Completed`] event for
//! the request that has just completed (its command, name, vfd, count and answer, and the
//! reason of a -1); the caller takes it with [`FileDevice::take_completed`] and prints it, e.g.
//! `file write fd 3, 150 bytes -> -1 (count above 127)`. The device itself prints nothing.
//!
//! The device allocates nothing per access: names and data pass through fixed buffers, and
//! without `--trace` no event is kept.
#![forbid(unsafe_code)]

mod bulk;
mod completed;
mod requests;
#[cfg(test)]
mod tests;

use std::fs::File;

use crate::sandbox::Sandbox;
use bulk::Bulk;

pub use bulk::{GuestRam, ShortWrite};
pub use completed::Completed;
pub use requests::{read_up_to, write_counted};

/// The I/O port of the file device.
pub const FILE_PORT: u16 = 0x0278;

/// Command bytes (the first byte of every request).
const CMD_OPEN: u8 = 0x01;
const CMD_CLOSE: u8 = 0x02;
const CMD_READ: u8 = 0x03;
const CMD_WRITE: u8 = 0x04;
const CMD_READ_BULK: u8 = 0x05;
const CMD_WRITE_BULK: u8 = 0x06;

/// open flags.
const FLAGS_READ: u8 = 0;
const FLAGS_WRITE: u8 = 1;

/// A byte answer of 0xFF is -1: error.
const ERROR: u8 = 0xFF;
/// A dword answer of all ones: error.
const ERROR_DWORD: u32 = 0xFFFF_FFFF;

/// Files a VM may have open at once; a vfd is an index into the file table.
const MAX_OPEN_FILES: usize = 16;
/// Most bytes one byte-protocol read or write moves, so that a count never reads as 0xFF.
const MAX_TRANSFER: usize = 127;
/// Longest name an open request can carry (its length byte); valid names stop at 254.
const MAX_NAME_BYTES: usize = 255;

/// What a file was opened for: a read vfd cannot write and vice versa.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Read,
    Write,
}

/// Where the device is in a request. The first twelve match the C original's enum (IDLE,
/// OPEN_WANT_FLAGS, OPEN_WANT_PATH_LEN, OPEN_WANT_PATH_BYTE, ...); the bulk states and the two
/// plain answer states are ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a command byte; nothing pending (an `in` reads all ones).
    Idle,

    /// open: got 0x01, want the flags byte.
    OpenWantFlags,
    /// open: want the name length (0 fails at once, no name bytes follow).
    OpenWantLen { flags: u8 },
    /// open: `got` of `len` name bytes are in `FileDevice::name`.
    OpenWantName { flags: u8, len: usize, got: usize },

    /// write: got 0x04, want the vfd.
    WriteWantVfd,
    /// write: want the count (0 answers at once, no data bytes follow).
    WriteWantCount { vfd: u8 },
    /// write: `got` of `count` data bytes received; the first 127 are in `FileDevice::data`
    /// (a count above 127 is refused once all its bytes have been consumed).
    WriteWantByte { vfd: u8, count: usize, got: usize },

    /// read: got 0x03, want the vfd.
    ReadWantVfd,
    /// read: want the count; then the read happens.
    ReadWantCount { vfd: u8 },
    /// read answered: the count `n` (1..=127) is pending, the data is in `FileDevice::data`.
    /// (A read of 0 bytes, or a failed one, is a plain [`State::SendByte`] answer.)
    ReadSendCount { n: u8 },
    /// read answered: data byte `next` of `n` is pending.
    ReadSendByte { next: u8, n: u8 },

    /// close: got 0x02, want the vfd.
    CloseWantVfd,

    /// bulk: got 0x05/0x06, want the vfd byte.
    BulkWantVfd { op: Bulk },
    /// bulk: want the guest-physical address (one dword).
    BulkWantAddress { op: Bulk, vfd: u8 },
    /// bulk: want the length (one dword); then the transfer happens.
    BulkWantLength { op: Bulk, vfd: u8, address: u32 },

    /// A one-byte answer is pending (open, close, write, a read of 0 bytes or an error, an
    /// unknown command).
    SendByte { value: u8 },
    /// A bulk answer is pending, to be read with one 4-byte `in`.
    SendDword { value: u32 },
}

/// One slot of the file table.
#[derive(Debug)]
struct OpenFile {
    file: File,
    mode: Mode,
}

/// The per-VM file device: the protocol state, the file table (16 slots) and the VM's sandbox.
#[derive(Debug)]
pub struct FileDevice {
    state: State,
    files: [Option<OpenFile>; MAX_OPEN_FILES],
    sandbox: Sandbox,
    /// The name of the open request being received.
    name: [u8; MAX_NAME_BYTES],
    /// The data of the write being received, or of the read being answered.
    data: [u8; MAX_TRANSFER],
    /// Whether completed requests are kept as events (`--trace`).
    trace: bool,
    /// The request that has just completed, until the caller takes it (only with `trace`).
    completed: Option<Completed>,
}

impl FileDevice {
    /// A device with no file open, waiting for a command.
    pub fn new(sandbox: Sandbox) -> Self {
        FileDevice {
            state: State::Idle,
            files: Default::default(),
            sandbox,
            name: [0; MAX_NAME_BYTES],
            data: [0; MAX_TRANSFER],
            trace: false,
            completed: None,
        }
    }

    /// With `on`, keep every completed request as a [`Completed`] event for
    /// [`FileDevice::take_completed`]; without it (the default) nothing is kept.
    pub fn trace_requests(&mut self, on: bool) {
        self.trace = on;
        self.completed = None;
    }

    /// The request completed by the last `out`, if any (only while tracing): take it after each
    /// `out` access, or the next completed request replaces it. Costs one test of a `None`
    /// when not tracing.
    pub fn take_completed(&mut self) -> Option<Completed> {
        self.completed.take()
    }

    /// One `out` access: `data` is the access's bytes (len 1, 2 or 4, little-endian). String
    /// I/O is split by the caller into one call per element.
    pub fn out(&mut self, data: &[u8], ram: &dyn GuestRam) {
        self.state = match *data {
            [byte] => self.on_byte(byte),
            [b0, b1, b2, b3] => self.on_dword(u32::from_le_bytes([b0, b1, b2, b3]), ram),
            // 2 bytes (or a size no port access has): never expected, the request is abandoned.
            _ => State::Idle,
        };
    }

    /// One `in` access: fill `data` (len 1, 2 or 4).
    pub fn inp(&mut self, data: &mut [u8]) {
        let state = std::mem::replace(&mut self.state, State::Idle);
        match (state, data.len()) {
            (State::SendByte { value }, 1) => data.fill(value),
            (State::ReadSendCount { n }, 1) => {
                data.fill(n);
                self.state = State::ReadSendByte { next: 0, n };
            }
            (State::ReadSendByte { next, n }, 1) => {
                data.fill(self.data.get(usize::from(next)).copied().unwrap_or(ERROR));
                let next = next.saturating_add(1);
                if next < n {
                    self.state = State::ReadSendByte { next, n };
                }
            }
            (State::SendDword { value }, 4) => data.copy_from_slice(&value.to_le_bytes()),
            // Nothing pending, a request not finished, or the wrong size: error, back to Idle.
            _ => data.fill(0xFF),
        }
    }

    /// Close every open file (also happens on Drop).
    pub fn close_all(&mut self) {
        for slot in &mut self.files {
            *slot = None;
        }
    }

    #[cfg(test)]
    /// Number of files currently open (for tests/stats).
    pub fn open_count(&self) -> usize {
        self.files.iter().filter(|slot| slot.is_some()).count()
    }

    /// Keep `event` for [`FileDevice::take_completed`] when tracing.
    fn record(&mut self, event: impl FnOnce(&Self) -> Completed) {
        if self.trace {
            self.completed = Some(event(self));
        }
    }

    /// A 1-byte `out` in the current state; returns the next state.
    fn on_byte(&mut self, byte: u8) -> State {
        match self.state {
            // Waiting for a command, or an answer not (fully) read: a new command, the rest of
            // the answer is dropped.
            State::Idle
            | State::SendByte { .. }
            | State::SendDword { .. }
            | State::ReadSendCount { .. }
            | State::ReadSendByte { .. } => self.on_command(byte),

            State::OpenWantFlags => State::OpenWantLen { flags: byte },
            State::OpenWantLen { flags } => match byte {
                // No name bytes follow: refused at once.
                0 => State::SendByte { value: self.answer_open(flags, 0) },
                len => State::OpenWantName { flags, len: usize::from(len), got: 0 },
            },
            State::OpenWantName { flags, len, got } => self.on_name_byte(byte, flags, len, got),

            State::WriteWantVfd => State::WriteWantCount { vfd: byte },
            State::WriteWantCount { vfd } => match byte {
                0 => State::SendByte { value: self.answer_write(vfd, 0) },
                count => State::WriteWantByte { vfd, count: usize::from(count), got: 0 },
            },
            State::WriteWantByte { vfd, count, got } => self.on_data_byte(byte, vfd, count, got),

            State::ReadWantVfd => State::ReadWantCount { vfd: byte },
            State::ReadWantCount { vfd } => self.answer_read(vfd, byte),

            State::CloseWantVfd => State::SendByte { value: self.answer_close(byte) },

            State::BulkWantVfd { op } => State::BulkWantAddress { op, vfd: byte },
            // A byte where a dword is expected: the request is abandoned.
            State::BulkWantAddress { .. } | State::BulkWantLength { .. } => State::Idle,
        }
    }

    /// A command byte: the first state of its request, or the error answer of an unknown one.
    fn on_command(&mut self, byte: u8) -> State {
        match byte {
            CMD_OPEN => State::OpenWantFlags,
            CMD_CLOSE => State::CloseWantVfd,
            CMD_READ => State::ReadWantVfd,
            CMD_WRITE => State::WriteWantVfd,
            CMD_READ_BULK => State::BulkWantVfd { op: Bulk::Read },
            CMD_WRITE_BULK => State::BulkWantVfd { op: Bulk::Write },
            command => {
                self.record(|_| Completed::Unknown { command });
                State::SendByte { value: ERROR }
            }
        }
    }

    /// Name byte `got` (counting from 0) of an open request's `len`; the last one opens.
    fn on_name_byte(&mut self, byte: u8, flags: u8, len: usize, got: usize) -> State {
        if let Some(slot) = self.name.get_mut(got) {
            *slot = byte;
        }
        let got = got + 1;
        if got < len {
            State::OpenWantName { flags, len, got }
        } else {
            State::SendByte { value: self.answer_open(flags, len) }
        }
    }

    /// Data byte `got` (counting from 0) of a write request's `count`; the last one writes.
    fn on_data_byte(&mut self, byte: u8, vfd: u8, count: usize, got: usize) -> State {
        if let Some(slot) = self.data.get_mut(got) {
            *slot = byte;
        }
        let got = got + 1;
        if got < count {
            State::WriteWantByte { vfd, count, got }
        } else {
            State::SendByte { value: self.answer_write(vfd, count) }
        }
    }

    /// A 4-byte `out` in the current state; returns the next state.
    fn on_dword(&mut self, value: u32, ram: &dyn GuestRam) -> State {
        match self.state {
            State::BulkWantAddress { op, vfd } => State::BulkWantLength { op, vfd, address: value },
            State::BulkWantLength { op, vfd, address } => {
                State::SendDword { value: self.answer_bulk(op, vfd, address, value, ram) }
            }
            // A dword where a byte is expected: the request is abandoned.
            _ => State::Idle,
        }
    }
}

impl Drop for FileDevice {
    fn drop(&mut self) {
        self.close_all();
    }
}
