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
//! With `--trace` ([`FileDevice::set_trace`]), every request answered -1 is reported on stderr
//! with the reason in words, e.g. `trace: vm0 (x.img): file: write vfd 3: count 150 > 127`.
//!
//! The device allocates nothing per access: names and data pass through fixed buffers.
#![forbid(unsafe_code)]

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};

use crate::hostfs::ShortWrite;
use crate::sandbox::{self, OpenError, Sandbox};

/// The I/O port of the file device.
pub const FILE_PORT: u16 = 0x0278;

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
enum Mode {
    Read,
    Write,
}

/// Which bulk command a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bulk {
    Read,
    Write,
}

impl Bulk {
    fn mode(self) -> Mode {
        match self {
            Bulk::Read => Mode::Read,
            Bulk::Write => Mode::Write,
        }
    }
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
    /// `vmN (image)` when `--trace` asked for the reason of every refusal; `None`: silent.
    trace: Option<String>,
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
            trace: None,
        }
    }

    /// Report every request answered -1 on stderr, with the reason, as
    /// `trace: <label>: file: <request>: <reason>`.
    pub fn set_trace(&mut self, label: String) {
        self.trace = Some(label);
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

    /// A 1-byte `out` in the current state; returns the next state.
    fn on_byte(&mut self, byte: u8) -> State {
        match self.state {
            // Waiting for a command, or an answer not (fully) read: a new command, the rest of
            // the answer is dropped.
            State::Idle
            | State::SendByte { .. }
            | State::SendDword { .. }
            | State::ReadSendCount { .. }
            | State::ReadSendByte { .. } => {
                let next = command(byte);
                if next == (State::SendByte { value: ERROR }) {
                    self.refuse(Request::Command(byte), &Why::UnknownCommand);
                }
                next
            }

            State::OpenWantFlags => State::OpenWantLen { flags: byte },
            State::OpenWantLen { flags } => match byte {
                0 => {
                    self.refuse(
                        Request::Open { name: &[], flags },
                        &Why::Open(OpenError::Name(sandbox::NameError::Empty)),
                    );
                    State::SendByte { value: ERROR }
                }
                len => State::OpenWantName { flags, len: usize::from(len), got: 0 },
            },
            State::OpenWantName { flags, len, got } => {
                if let Some(slot) = self.name.get_mut(got) {
                    *slot = byte;
                }
                let got = got + 1;
                if got < len {
                    State::OpenWantName { flags, len, got }
                } else {
                    State::SendByte { value: self.open(flags, len) }
                }
            }

            State::WriteWantVfd => State::WriteWantCount { vfd: byte },
            State::WriteWantCount { vfd } => match byte {
                0 => State::SendByte { value: self.write(vfd, 0) },
                count => State::WriteWantByte { vfd, count: usize::from(count), got: 0 },
            },
            State::WriteWantByte { vfd, count, got } => {
                if let Some(slot) = self.data.get_mut(got) {
                    *slot = byte;
                }
                let got = got + 1;
                if got < count {
                    State::WriteWantByte { vfd, count, got }
                } else {
                    State::SendByte { value: self.write(vfd, count) }
                }
            }

            State::ReadWantVfd => State::ReadWantCount { vfd: byte },
            State::ReadWantCount { vfd } => self.read(vfd, byte),

            State::CloseWantVfd => State::SendByte { value: self.close(byte) },

            State::BulkWantVfd { op } => State::BulkWantAddress { op, vfd: byte },
            // A byte where a dword is expected: the request is abandoned.
            State::BulkWantAddress { .. } | State::BulkWantLength { .. } => State::Idle,
        }
    }

    /// A 4-byte `out` in the current state; returns the next state.
    fn on_dword(&mut self, value: u32, ram: &dyn GuestRam) -> State {
        match self.state {
            State::BulkWantAddress { op, vfd } => State::BulkWantLength { op, vfd, address: value },
            State::BulkWantLength { op, vfd, address } => {
                State::SendDword { value: self.bulk(op, vfd, address, value, ram) }
            }
            // A dword where a byte is expected: the request is abandoned.
            _ => State::Idle,
        }
    }

    /// The open request is complete (`len` name bytes in `self.name`): the vfd, or 0xFF.
    fn open(&mut self, flags: u8, len: usize) -> u8 {
        match self.try_open(flags, len) {
            Ok(vfd) => vfd,
            Err(why) => {
                let name = self.name.get(..len).unwrap_or(&self.name);
                self.refuse(Request::Open { name, flags }, &why);
                ERROR
            }
        }
    }

    fn try_open(&mut self, flags: u8, len: usize) -> Result<u8, Why> {
        let mode = match flags {
            FLAGS_READ => Mode::Read,
            FLAGS_WRITE => Mode::Write,
            _ => return Err(Why::Flags),
        };
        let name = self.name.get(..len).ok_or(Why::Open(OpenError::Name(sandbox::NameError::TooLong(len))))?;
        sandbox::check_name(name).map_err(|e| Why::Open(OpenError::Name(e)))?;
        // The lowest free slot; a full table fails before anything is created on the host.
        let (slot, vfd) = self.files.iter_mut().zip(0u8..).find(|(slot, _)| slot.is_none()).ok_or(Why::TableFull)?;
        let opened = match mode {
            Mode::Read => self.sandbox.open_read(name),
            Mode::Write => self.sandbox.open_write(name),
        };
        *slot = Some(OpenFile { file: opened.map_err(Why::Open)?, mode });
        Ok(vfd)
    }

    /// close: 0, or 0xFF when `vfd` is not open.
    fn close(&mut self, vfd: u8) -> u8 {
        match self.files.get_mut(usize::from(vfd)) {
            Some(slot @ Some(_)) => {
                *slot = None;
                0
            }
            _ => {
                self.refuse(Request::Close(vfd), &Why::NotOpen);
                ERROR
            }
        }
    }

    /// The read request is complete: read up to min(count, 127) bytes into `self.data` and
    /// make the answer pending.
    fn read(&mut self, vfd: u8, count: u8) -> State {
        match self.try_read(vfd, count) {
            Ok(state) => state,
            Err(why) => {
                self.refuse(Request::Read(vfd), &why);
                State::SendByte { value: ERROR }
            }
        }
    }

    fn try_read(&mut self, vfd: u8, count: u8) -> Result<State, Why> {
        let file = lookup(&self.files, vfd, Mode::Read)?;
        let want = usize::from(count).min(MAX_TRANSFER);
        let buf = self.data.get_mut(..want).ok_or(Why::CountTooBig(want))?;
        match read_up_to(file, buf).map(u8::try_from) {
            Ok(Ok(0)) => Ok(State::SendByte { value: 0 }),
            Ok(Ok(n)) if usize::from(n) <= want => Ok(State::ReadSendCount { n }),
            Ok(_) => Err(Why::CountTooBig(want)),
            Err(e) => Err(Why::ReadFailed(e)),
        }
    }

    /// The write request is complete (`count` data bytes consumed): the answer.
    fn write(&mut self, vfd: u8, count: usize) -> u8 {
        match self.try_write(vfd, count) {
            Ok(n) => n,
            Err(why) => {
                self.refuse(Request::Write(vfd), &why);
                ERROR
            }
        }
    }

    fn try_write(&self, vfd: u8, count: usize) -> Result<u8, Why> {
        if count > MAX_TRANSFER {
            return Err(Why::CountTooBig(count));
        }
        let file = lookup(&self.files, vfd, Mode::Write)?;
        let bytes = self.data.get(..count).ok_or(Why::CountTooBig(count))?;
        if bytes.is_empty() {
            return Ok(0);
        }
        // Straight to the file descriptor: once answered, the bytes are in the host file. A
        // failure part-way takes back the bytes that fit.
        write_counted(file, bytes).map_err(|short| take_back(file, short))?;
        u8::try_from(count).map_err(|_| Why::CountTooBig(count))
    }

    /// The bulk request is complete: move up to `length` bytes between the file and guest RAM
    /// at `address`; the dword answer.
    fn bulk(&mut self, op: Bulk, vfd: u8, address: u32, length: u32, ram: &dyn GuestRam) -> u32 {
        match self.try_bulk(op, vfd, address, length, ram) {
            Ok(n) => n,
            Err(why) => {
                self.refuse(Request::Bulk { op, vfd, address, length }, &why);
                ERROR_DWORD
            }
        }
    }

    fn try_bulk(&self, op: Bulk, vfd: u8, address: u32, length: u32, ram: &dyn GuestRam) -> Result<u32, Why> {
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
            Bulk::Read => match ram.read_from_file(file, gpa, len) {
                Ok(n) if n <= len => u32::try_from(n).map_err(|_| Why::CountTooBig(n)),
                Ok(n) => Err(Why::CountTooBig(n)),
                Err(e) => Err(Why::ReadFailed(e)),
            },
            Bulk::Write => match ram.write_to_file(file, gpa, len) {
                Ok(()) => Ok(length),
                Err(short) => Err(take_back(file, short)),
            },
        }
    }

    /// With `--trace`: one line on stderr saying why `request` was answered -1. Never panics
    /// (a failing stderr is ignored); costs nothing without `--trace`.
    fn refuse(&self, request: Request<'_>, why: &Why) {
        if let Some(label) = &self.trace {
            let _ = writeln!(io::stderr(), "trace: {label}: file: {request}: {why}");
        }
    }
}

/// A request answered -1, as `--trace` names it.
#[derive(Debug, Clone, Copy)]
enum Request<'a> {
    Open {
        name: &'a [u8],
        flags: u8,
    },
    Close(u8),
    Read(u8),
    Write(u8),
    Bulk {
        op: Bulk,
        vfd: u8,
        address: u32,
        length: u32,
    },
    /// An unknown command byte.
    Command(u8),
}

impl fmt::Display for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Request::Open { name, flags } => {
                write!(f, "open \"{}\"", name.escape_ascii())?;
                match flags {
                    FLAGS_READ => f.write_str(" for read"),
                    FLAGS_WRITE => f.write_str(" for write"),
                    _ => write!(f, " with flags {flags}"),
                }
            }
            Request::Close(vfd) => write!(f, "close vfd {vfd}"),
            Request::Read(vfd) => write!(f, "read vfd {vfd}"),
            Request::Write(vfd) => write!(f, "write vfd {vfd}"),
            Request::Bulk { op, vfd, address, length } => {
                let what = match op {
                    Bulk::Read => "read bulk",
                    Bulk::Write => "write bulk",
                };
                write!(f, "{what} vfd {vfd}, {length} bytes at {address:#x}")
            }
            Request::Command(byte) => write!(f, "command {byte:#04x}"),
        }
    }
}

/// Why a request was answered -1 (said in words by [`fmt::Display`], for `--trace`).
#[derive(Debug)]
enum Why {
    /// open: flags neither 0 nor 1.
    Flags,
    /// open: all 16 slots of the file table are in use.
    TableFull,
    /// open: the name, or the sandbox, said no.
    Open(OpenError),
    /// The vfd is not open.
    NotOpen,
    /// The vfd is open, but for the other direction (read vs write).
    OpenedFor(Mode),
    /// A count above 127 (or a transfer that reported more than was asked).
    CountTooBig(usize),
    /// A bulk range `[address, end)` that does not lie inside guest RAM of `size` bytes.
    OutsideRam {
        end: u64,
        size: u64,
    },
    ReadFailed(io::Error),
    /// A write failed after `written` bytes reached the file; `undone`: they were taken back.
    WriteFailed {
        error: io::Error,
        written: usize,
        undone: bool,
    },
    UnknownCommand,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Flags => f.write_str("flags are neither 0 (read) nor 1 (write)"),
            Why::TableFull => write!(f, "{MAX_OPEN_FILES} files already open"),
            Why::Open(e) => write!(f, "{e}"),
            Why::NotOpen => f.write_str("not open"),
            Why::OpenedFor(Mode::Read) => f.write_str("opened for read"),
            Why::OpenedFor(Mode::Write) => f.write_str("opened for write"),
            Why::CountTooBig(count) => write!(f, "count {count} > {MAX_TRANSFER}"),
            Why::OutsideRam { end, size } => {
                write!(f, "the range ends at {end:#x}, past the end of guest RAM ({size:#x} bytes)")
            }
            Why::ReadFailed(e) => write!(f, "{e}"),
            Why::WriteFailed { error, written: 0, .. } => write!(f, "{error}"),
            Why::WriteFailed { error, written, undone: true } => {
                write!(f, "{error}; the {written} bytes written first were taken back")
            }
            Why::WriteFailed { error, written, undone: false } => {
                write!(f, "{error}; {written} bytes written first could not be taken back")
            }
            Why::UnknownCommand => f.write_str("unknown command"),
        }
    }
}

impl Drop for FileDevice {
    fn drop(&mut self) {
        self.close_all();
    }
}

/// The state after a command byte in `Idle`.
fn command(byte: u8) -> State {
    match byte {
        CMD_OPEN => State::OpenWantFlags,
        CMD_CLOSE => State::CloseWantVfd,
        CMD_READ => State::ReadWantVfd,
        CMD_WRITE => State::WriteWantVfd,
        CMD_READ_BULK => State::BulkWantVfd { op: Bulk::Read },
        CMD_WRITE_BULK => State::BulkWantVfd { op: Bulk::Write },
        _ => State::SendByte { value: ERROR },
    }
}

/// The file behind `vfd` if it is open in `mode`.
fn lookup(files: &[Option<OpenFile>], vfd: u8, mode: Mode) -> Result<&File, Why> {
    match files.get(usize::from(vfd)) {
        Some(Some(open)) if open.mode == mode => Ok(&open.file),
        Some(Some(open)) => Err(Why::OpenedFor(open.mode)),
        _ => Err(Why::NotOpen),
    }
}

/// Write all of `bytes` to `file`; on failure, how many reached the file first.
fn write_counted(mut file: &File, bytes: &[u8]) -> Result<(), ShortWrite> {
    let mut done = 0;
    while let Some(rest) = bytes.get(done..).filter(|rest| !rest.is_empty()) {
        match file.write(rest) {
            Ok(0) => return Err(ShortWrite { written: done, error: io::ErrorKind::WriteZero.into() }),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(ShortWrite { written: done, error }),
        }
    }
    Ok(())
}

/// A write failed after `short.written` bytes were appended: cut the file back to its length
/// before the request, so that a request answered -1 moves no data. The file is open for
/// append and private to this VM (the only writer), so those bytes are its last ones.
fn take_back(file: &File, short: ShortWrite) -> Why {
    let ShortWrite { written, error } = short;
    let undone = written == 0
        || u64::try_from(written)
            .ok()
            .zip(file.metadata().ok())
            .and_then(|(n, meta)| meta.len().checked_sub(n))
            .is_some_and(|len| file.set_len(len).is_ok());
    Why::WriteFailed { error, written, undone }
}

/// Read until `buf` is full or end of file (a short read alone does not mean end of file).
/// An error after some bytes arrived returns those bytes; the error will show again next time.
fn read_up_to(mut file: &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while let Some(rest) = buf.get_mut(got..).filter(|rest| !rest.is_empty()) {
        match file.read(rest) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) if got > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::SharedFiles;
    use std::cell::RefCell;
    use std::fs;
    use std::path::PathBuf;
    use std::sync::Arc;

    const RAM_SIZE: usize = 64 * 1024;

    use crate::test_dir::TempDir;

    /// Guest RAM over a Vec, as the hypervisor's mmap would offer it.
    struct VecRam {
        mem: RefCell<Vec<u8>>,
    }

    impl VecRam {
        fn new(size: usize) -> VecRam {
            VecRam { mem: RefCell::new(vec![0; size]) }
        }
    }

    impl GuestRam for VecRam {
        fn size(&self) -> u64 {
            u64::try_from(self.mem.borrow().len()).unwrap()
        }
        fn read_from_file(&self, file: &File, gpa: u64, len: usize) -> io::Result<usize> {
            let start = usize::try_from(gpa).unwrap();
            let mut mem = self.mem.borrow_mut();
            read_up_to(file, &mut mem[start..start + len])
        }
        fn write_to_file(&self, file: &File, gpa: u64, len: usize) -> Result<(), ShortWrite> {
            let start = usize::try_from(gpa).unwrap();
            write_counted(file, &self.mem.borrow()[start..start + len])
        }
    }

    /// One VM's device over a temp dir: shared originals in `host/`, the private dir
    /// `guest_vm0_files/`.
    struct Vm {
        dev: FileDevice,
        ram: VecRam,
        root: PathBuf,
        private: PathBuf,
    }

    fn shared_files(tmp: &TempDir, files: &[(&str, &[u8])]) -> Arc<SharedFiles> {
        let paths: Vec<PathBuf> = files
            .iter()
            .map(|(name, bytes)| {
                fs::create_dir_all(tmp.join("host")).unwrap();
                let p = tmp.join("host").join(name);
                fs::write(&p, bytes).unwrap();
                p
            })
            .collect();
        Arc::new(SharedFiles::check(&paths).unwrap())
    }

    impl Vm {
        fn new(tmp: &TempDir, shared: Arc<SharedFiles>, index: usize) -> Vm {
            let private = tmp.0.join(format!("guest_vm{index}_files"));
            Vm {
                dev: FileDevice::new(Sandbox::new(shared, private.clone(), format!("vm{index} (test)"))),
                ram: VecRam::new(RAM_SIZE),
                root: tmp.0.clone(),
                private,
            }
        }
        fn with(tmp: &TempDir, files: &[(&str, &[u8])]) -> Vm {
            Vm::new(tmp, shared_files(tmp, files), 0)
        }
        fn private_file(&self, name: &str) -> Vec<u8> {
            fs::read(self.private.join(name)).unwrap()
        }
        fn put_private(&self, name: &str, bytes: &[u8]) {
            fs::create_dir_all(&self.private).unwrap();
            fs::write(self.private.join(name), bytes).unwrap();
        }

        fn out(&mut self, data: &[u8]) {
            self.dev.out(data, &self.ram);
        }
        fn outb(&mut self, b: u8) {
            self.out(&[b]);
        }
        fn outd(&mut self, v: u32) {
            self.out(&v.to_le_bytes());
        }
        fn send(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.outb(b);
            }
        }
        fn inb(&mut self) -> u8 {
            let mut d = [0x5A; 1];
            self.dev.inp(&mut d);
            d[0]
        }
        fn inw(&mut self) -> u16 {
            let mut d = [0x5A; 2];
            self.dev.inp(&mut d);
            u16::from_le_bytes(d)
        }
        fn ind(&mut self) -> u32 {
            let mut d = [0x5A; 4];
            self.dev.inp(&mut d);
            u32::from_le_bytes(d)
        }

        fn open(&mut self, name: &[u8], flags: u8) -> u8 {
            self.send(&[CMD_OPEN, flags, u8::try_from(name.len()).unwrap()]);
            self.send(name);
            self.inb()
        }
        fn close(&mut self, vfd: u8) -> u8 {
            self.send(&[CMD_CLOSE, vfd]);
            self.inb()
        }
        fn write(&mut self, vfd: u8, bytes: &[u8]) -> u8 {
            self.send(&[CMD_WRITE, vfd, u8::try_from(bytes.len()).unwrap()]);
            self.send(bytes);
            self.inb()
        }
        /// `None` for the error answer; `Some(empty)` for 0 (end of file or count 0).
        fn read(&mut self, vfd: u8, count: u8) -> Option<Vec<u8>> {
            self.send(&[CMD_READ, vfd, count]);
            match self.inb() {
                ERROR => None,
                n => Some((0..n).map(|_| self.inb()).collect()),
            }
        }
        fn bulk(&mut self, cmd: u8, vfd: u8, address: u32, length: u32) -> u32 {
            self.send(&[cmd, vfd]);
            self.outd(address);
            self.outd(length);
            self.ind()
        }
        fn ram(&self, range: std::ops::Range<usize>) -> Vec<u8> {
            self.ram.mem.borrow()[range].to_vec()
        }
        fn set_ram(&self, at: usize, bytes: &[u8]) {
            self.ram.mem.borrow_mut()[at..at + bytes.len()].copy_from_slice(bytes);
        }

        /// A complete, fresh request sequence works: the protocol is in sync. Leaves the open
        /// count as it found it.
        fn assert_in_sync(&mut self) {
            // Not in the middle of a request (an unread answer is fine: the next `out` drops it).
            assert!(
                matches!(
                    self.dev.state,
                    State::Idle
                        | State::SendByte { .. }
                        | State::SendDword { .. }
                        | State::ReadSendCount { .. }
                        | State::ReadSendByte { .. }
                ),
                "{:?}",
                self.dev.state
            );
            let before = self.dev.open_count();
            let _ = fs::remove_file(self.private.join("sync.txt"));
            let vfd = self.open(b"sync.txt", FLAGS_WRITE);
            assert!(usize::from(vfd) < MAX_OPEN_FILES, "open answered {vfd:#x}");
            assert_eq!(self.write(vfd, b"in sync"), 7);
            assert_eq!(self.close(vfd), 0);
            let vfd = self.open(b"sync.txt", FLAGS_READ);
            assert!(usize::from(vfd) < MAX_OPEN_FILES, "open answered {vfd:#x}");
            assert_eq!(self.read(vfd, 127).unwrap(), b"in sync");
            assert_eq!(self.read(vfd, 127).unwrap(), b"");
            assert_eq!(self.close(vfd), 0);
            assert_eq!(self.dev.open_count(), before);
            assert_eq!(self.dev.state, State::Idle);
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..=255u8).cycle().take(len).collect()
    }

    // ---- open / write / read / close: the happy path -----------------------------------

    #[test]
    fn open_write_read_close() {
        let tmp = TempDir::new("basic");
        let mut vm = Vm::with(&tmp, &[]);
        assert_eq!(vm.open(b"hello.txt", FLAGS_WRITE), 0);
        assert!(vm.private.is_dir(), "created on the first write-open");
        assert_eq!(vm.write(0, b"Hello"), 5);
        // Answered means written to the host file, before any close.
        assert_eq!(vm.private_file("hello.txt"), b"Hello");
        assert_eq!(vm.write(0, b", world"), 7);
        assert_eq!(vm.close(0), 0);
        assert_eq!(vm.open(b"hello.txt", FLAGS_READ), 0);
        assert_eq!(vm.read(0, 3).unwrap(), b"Hel");
        assert_eq!(vm.read(0, 127).unwrap(), b"lo, world");
        assert_eq!(vm.read(0, 127).unwrap(), b"", "0 = end of file");
        assert_eq!(vm.close(0), 0);
        assert_eq!(vm.dev.open_count(), 0);
        assert_eq!(FILE_PORT, 0x0278);
    }

    #[test]
    fn write_appends_to_an_existing_file() {
        let tmp = TempDir::new("append");
        let mut vm = Vm::with(&tmp, &[]);
        vm.put_private("log", b"old;");
        assert_eq!(vm.open(b"log", FLAGS_WRITE), 0);
        assert_eq!(vm.write(0, b"new"), 3);
        assert_eq!(vm.private_file("log"), b"old;new");
    }

    #[test]
    fn open_for_read_of_a_missing_file_fails_and_creates_nothing() {
        let tmp = TempDir::new("missing");
        let mut vm = Vm::with(&tmp, &[]);
        assert_eq!(vm.open(b"nothing.txt", FLAGS_READ), ERROR);
        assert!(!vm.private.exists(), "reads never create the private dir");
        vm.assert_in_sync();
    }

    // ---- open: lengths, flags, names --------------------------------------------------

    #[test]
    fn open_len_0_answers_at_once() {
        let tmp = TempDir::new("len0");
        let mut vm = Vm::with(&tmp, &[]);
        vm.send(&[CMD_OPEN, FLAGS_WRITE, 0]);
        assert_eq!(vm.dev.state, State::SendByte { value: ERROR });
        assert_eq!(vm.inb(), ERROR);
        // No name bytes follow: the next byte is a command.
        vm.send(&[CMD_OPEN, FLAGS_READ, 0]);
        vm.assert_in_sync();
    }

    #[test]
    fn open_len_1_and_254_work() {
        let tmp = TempDir::new("len254");
        let mut vm = Vm::with(&tmp, &[]);
        assert_eq!(vm.open(b"a", FLAGS_WRITE), 0);
        let long = [b'L'; 254];
        assert_eq!(vm.open(&long, FLAGS_WRITE), 1);
        assert_eq!(vm.write(1, b"x"), 1);
        assert_eq!(vm.private_file(std::str::from_utf8(&long).unwrap()), b"x");
        assert!(vm.private.join("a").is_file());
    }

    #[test]
    fn open_len_255_consumes_255_bytes_then_fails() {
        let tmp = TempDir::new("len255");
        let mut vm = Vm::with(&tmp, &[]);
        vm.send(&[CMD_OPEN, FLAGS_WRITE, 255]);
        vm.send(&[b'z'; 254]);
        assert_eq!(vm.dev.state, State::OpenWantName { flags: FLAGS_WRITE, len: 255, got: 254 });
        vm.outb(b'z');
        assert_eq!(vm.dev.state, State::SendByte { value: ERROR });
        assert_eq!(vm.inb(), ERROR);
        assert_eq!(vm.dev.open_count(), 0);
        assert!(!vm.private.exists());
        vm.assert_in_sync();
    }

    #[test]
    fn open_with_flags_other_than_0_or_1_consumes_the_name_and_fails() {
        let tmp = TempDir::new("flags");
        let mut vm = Vm::with(&tmp, &[]);
        vm.put_private("f", b"data");
        for flags in [2, 3, 0x80, 0xFF] {
            vm.send(&[CMD_OPEN, flags, 1]);
            assert_eq!(vm.dev.state, State::OpenWantName { flags, len: 1, got: 0 });
            vm.outb(b'f');
            assert_eq!(vm.inb(), ERROR);
            assert_eq!(vm.dev.open_count(), 0);
            // flags 2 with len 0: fails at once too.
            vm.send(&[CMD_OPEN, flags, 0]);
            assert_eq!(vm.inb(), ERROR);
        }
        assert!(!vm.private.join("").join("g").exists());
        vm.assert_in_sync();
    }

    #[test]
    fn invalid_names_fail_and_touch_nothing() {
        let tmp = TempDir::new("badnames");
        let mut vm = Vm::with(&tmp, &[("shared.txt", b"s")]);
        let bad: [&[u8]; 9] =
            [b".", b"..", b"a/b", b"/x", b"a\0b", b"\0", b"../escape", b"../../etc/passwd", b"host/shared.txt"];
        for name in bad {
            for flags in [FLAGS_READ, FLAGS_WRITE] {
                assert_eq!(vm.open(name, flags), ERROR, "{name:?} flags {flags}");
            }
        }
        assert_eq!(vm.dev.open_count(), 0);
        assert!(!vm.private.exists());
        assert!(!vm.root.join("escape").exists());
        assert_eq!(fs::read(vm.root.join("host/shared.txt")).unwrap(), b"s");
        vm.assert_in_sync();
    }

    // ---- close ----------------------------------------------------------------------

    #[test]
    fn close_of_a_vfd_not_open_fails() {
        let tmp = TempDir::new("close");
        let mut vm = Vm::with(&tmp, &[]);
        for vfd in [0, 1, 15, 16, 127, 128, 255] {
            assert_eq!(vm.close(vfd), ERROR, "vfd {vfd}");
        }
        assert_eq!(vm.open(b"f", FLAGS_WRITE), 0);
        assert_eq!(vm.close(0), 0);
        assert_eq!(vm.close(0), ERROR, "closed twice");
        vm.assert_in_sync();
    }

    // ---- read / write counts ----------------------------------------------------------

    #[test]
    fn read_counts_0_127_128_255() {
        let tmp = TempDir::new("readcounts");
        let mut vm = Vm::with(&tmp, &[]);
        let content = pattern(300);
        vm.put_private("data", &content);
        assert_eq!(vm.open(b"data", FLAGS_READ), 0);
        assert_eq!(vm.read(0, 0).unwrap(), b"", "count 0 answers 0");
        assert_eq!(vm.dev.state, State::Idle, "no data bytes follow");
        assert_eq!(vm.read(0, 127).unwrap(), &content[..127]);
        assert_eq!(vm.read(0, 128).unwrap(), &content[127..254], "at most 127");
        assert_eq!(vm.read(0, 255).unwrap(), &content[254..], "the last 46 bytes");
        assert_eq!(vm.read(0, 255).unwrap(), b"", "end of file");
        assert_eq!(vm.read(0, 0).unwrap(), b"");
        // A bad vfd is an error even with count 0, and no data bytes follow.
        for vfd in [1, 16, 255] {
            assert_eq!(vm.read(vfd, 0), None);
            assert_eq!(vm.read(vfd, 10), None);
            assert_eq!(vm.dev.state, State::Idle);
        }
        vm.assert_in_sync();
    }

    #[test]
    fn write_counts_0_127_128_255() {
        let tmp = TempDir::new("writecounts");
        let mut vm = Vm::with(&tmp, &[]);
        assert_eq!(vm.open(b"out", FLAGS_WRITE), 0);
        assert_eq!(vm.write(0, b""), 0);
        assert_eq!(vm.dev.state, State::Idle, "count 0: no data bytes follow");
        let data = pattern(255);
        assert_eq!(vm.write(0, &data[..127]), 127);
        assert_eq!(vm.private_file("out"), &data[..127]);

        // 128 and 255: every data byte is consumed, then the error; nothing written.
        for count in [128u8, 255] {
            vm.send(&[CMD_WRITE, 0, count]);
            let n = usize::from(count);
            vm.send(&data[..n - 1]);
            assert_eq!(vm.dev.state, State::WriteWantByte { vfd: 0, count: n, got: n - 1 });
            vm.outb(data[n - 1]);
            assert_eq!(vm.inb(), ERROR);
            assert_eq!(vm.private_file("out"), &data[..127]);
        }
        // Count 0 to a bad vfd is still an error.
        for vfd in [1, 16, 255] {
            assert_eq!(vm.write(vfd, b""), ERROR);
            assert_eq!(vm.write(vfd, b"abc"), ERROR);
        }
        vm.assert_in_sync();
    }

    #[test]
    fn a_read_vfd_cannot_write_and_a_write_vfd_cannot_read() {
        let tmp = TempDir::new("modes");
        let mut vm = Vm::with(&tmp, &[]);
        vm.put_private("r", b"readable");
        assert_eq!(vm.open(b"r", FLAGS_READ), 0);
        assert_eq!(vm.open(b"w", FLAGS_WRITE), 1);
        assert_eq!(vm.write(0, b"nope"), ERROR);
        assert_eq!(vm.write(0, b""), ERROR);
        assert_eq!(vm.read(1, 10), None);
        assert_eq!(vm.read(1, 0), None);
        assert_eq!(vm.bulk(CMD_WRITE_BULK, 0, 0, 4), ERROR_DWORD);
        assert_eq!(vm.bulk(CMD_READ_BULK, 1, 0, 4), ERROR_DWORD);
        assert_eq!(vm.private_file("r"), b"readable");
        assert_eq!(vm.private_file("w"), b"");
        assert_eq!(vm.read(0, 127).unwrap(), b"readable", "position untouched");
        vm.assert_in_sync();
    }

    #[test]
    fn all_256_byte_values_round_trip() {
        let tmp = TempDir::new("binary");
        let mut vm = Vm::with(&tmp, &[]);
        let all = pattern(256);
        assert_eq!(vm.open(b"bin", FLAGS_WRITE), 0);
        for chunk in all.chunks(MAX_TRANSFER) {
            assert_eq!(usize::from(vm.write(0, chunk)), chunk.len());
        }
        assert_eq!(vm.private_file("bin"), all);
        assert_eq!(vm.open(b"bin", FLAGS_READ), 1);
        let mut back = Vec::new();
        while let Some(chunk) = vm.read(1, 255).filter(|c| !c.is_empty()) {
            back.extend(chunk);
        }
        assert_eq!(back, all);

        // And through bulk: RAM -> file -> RAM.
        vm.set_ram(1000, &all);
        assert_eq!(vm.open(b"bulk", FLAGS_WRITE), 2);
        assert_eq!(vm.bulk(CMD_WRITE_BULK, 2, 1000, 256), 256);
        assert_eq!(vm.open(b"bulk", FLAGS_READ), 3);
        assert_eq!(vm.bulk(CMD_READ_BULK, 3, 5000, 300), 256);
        assert_eq!(vm.ram(5000..5256), all);
    }

    // ---- protocol robustness ----------------------------------------------------------

    #[test]
    fn unknown_command_bytes_answer_0xff() {
        let tmp = TempDir::new("unknown");
        let mut vm = Vm::with(&tmp, &[]);
        for cmd in [0x00, 0x07, 0x08, 0x10, 0x7F, 0x80, 0xFE, 0xFF] {
            vm.outb(cmd);
            assert_eq!(vm.dev.state, State::SendByte { value: ERROR });
            assert_eq!(vm.inb(), ERROR);
            assert_eq!(vm.dev.state, State::Idle);
            // Unanswered, then a valid request.
            vm.outb(cmd);
            vm.assert_in_sync();
        }
    }

    #[test]
    fn in_with_nothing_pending_reads_all_ones() {
        let tmp = TempDir::new("nothing");
        let mut vm = Vm::with(&tmp, &[]);
        assert_eq!(vm.inb(), 0xFF);
        assert_eq!(vm.inw(), 0xFFFF);
        assert_eq!(vm.ind(), 0xFFFF_FFFF);
        let mut odd = [0u8; 3];
        vm.dev.inp(&mut odd);
        assert_eq!(odd, [0xFF; 3]);
        vm.dev.inp(&mut []);
        // After a complete answer, nothing is pending any more.
        assert_eq!(vm.close(3), ERROR);
        assert_eq!(vm.inb(), 0xFF);
        assert_eq!(vm.dev.state, State::Idle);
        vm.assert_in_sync();
    }

    #[test]
    fn an_in_during_a_request_abandons_it() {
        let tmp = TempDir::new("inmid");
        let mut vm = Vm::with(&tmp, &[]);
        vm.send(&[CMD_OPEN, FLAGS_WRITE, 3, b'a']);
        assert_eq!(vm.inb(), 0xFF);
        assert_eq!(vm.dev.state, State::Idle);
        assert_eq!(vm.dev.open_count(), 0);
        vm.assert_in_sync();
    }

    #[test]
    fn an_out_while_an_answer_is_pending_drops_it_and_starts_a_command() {
        let tmp = TempDir::new("pending");
        let mut vm = Vm::with(&tmp, &[]);
        // open answered but not read; then close of that vfd.
        vm.send(&[CMD_OPEN, FLAGS_WRITE, 1, b'f']);
        assert_eq!(vm.dev.state, State::SendByte { value: 0 });
        assert_eq!(vm.close(0), 0, "the open happened, its answer was dropped");

        // read data half taken, then a new command.
        vm.put_private("ten", b"0123456789");
        assert_eq!(vm.open(b"ten", FLAGS_READ), 0);
        vm.send(&[CMD_READ, 0, 10]);
        assert_eq!(vm.inb(), 10);
        assert_eq!([vm.inb(), vm.inb(), vm.inb()], *b"012");
        assert_eq!(vm.read(0, 2).unwrap(), b"", "the file position is at the end");
        // the count pending, not read.
        assert_eq!(vm.close(0), 0);
        assert_eq!(vm.open(b"ten", FLAGS_READ), 0);
        vm.send(&[CMD_READ, 0, 4]);
        assert_eq!(vm.dev.state, State::ReadSendCount { n: 4 });
        assert_eq!(vm.read(0, 3).unwrap(), b"456");

        // a bulk answer pending, then a byte command.
        vm.send(&[CMD_READ_BULK, 0]);
        vm.outd(0);
        vm.outd(2);
        assert_eq!(vm.dev.state, State::SendDword { value: 2 });
        assert_eq!(vm.read(0, 127).unwrap(), b"9");
        assert_eq!(vm.close(0), 0);
        vm.assert_in_sync();
    }

    #[test]
    fn malformed_requests_never_desynchronise_later_ones() {
        let tmp = TempDir::new("garbage");
        let mut vm = Vm::with(&tmp, &[]);
        assert_eq!(vm.open(b"keep", FLAGS_WRITE), 0);
        // Complete but malformed requests, answers read or not.
        vm.send(&[0x42, 0x00, 0xFF, 0x09]);
        vm.send(&[CMD_CLOSE, 200]);
        vm.send(&[CMD_READ, 9, 100]);
        vm.send(&[CMD_WRITE, 7, 3, 1, 2, 3]);
        assert_eq!(vm.inb(), ERROR);
        vm.send(&[CMD_OPEN, 9, 2, b'x', b'y']);
        vm.send(&[CMD_OPEN, FLAGS_READ, 2, b'.', b'.']);
        vm.send(&[CMD_OPEN, FLAGS_WRITE, 0]);
        vm.send(&[CMD_WRITE, 0, 200]);
        vm.send(&[0xEE; 200]);
        vm.send(&[CMD_READ_BULK, 0]);
        vm.outd(0xFFFF_FFFF);
        vm.outd(0xFFFF_FFFF);
        vm.send(&[CMD_WRITE_BULK, 0]);
        vm.outd(u32::try_from(RAM_SIZE).unwrap());
        vm.outd(1);
        assert_eq!(vm.ind(), ERROR_DWORD);
        vm.send(&[0x00]);
        assert_eq!(vm.write(0, b"ok"), 2);
        assert_eq!(vm.private_file("keep"), b"ok");
        assert_eq!(vm.dev.open_count(), 1);
        vm.assert_in_sync();
    }

    /// One port access, for scripted sequences.
    #[derive(Debug, Clone, Copy)]
    enum Access {
        Out1(u8),
        Out4(u32),
        In1,
    }

    #[test]
    fn wrong_size_accesses_in_every_state() {
        use Access::*;
        let w = FLAGS_WRITE;
        // vfd 0 = "r" open for read, vfd 1 = "w" open for write.
        let cases: Vec<(Vec<Access>, State)> = vec![
            (vec![], State::Idle),
            (vec![Out1(1)], State::OpenWantFlags),
            (vec![Out1(1), Out1(w)], State::OpenWantLen { flags: w }),
            (vec![Out1(1), Out1(w), Out1(3), Out1(b'n')], State::OpenWantName { flags: w, len: 3, got: 1 }),
            (vec![Out1(4)], State::WriteWantVfd),
            (vec![Out1(4), Out1(1)], State::WriteWantCount { vfd: 1 }),
            (vec![Out1(4), Out1(1), Out1(3), Out1(b'x')], State::WriteWantByte { vfd: 1, count: 3, got: 1 }),
            (vec![Out1(3)], State::ReadWantVfd),
            (vec![Out1(3), Out1(0)], State::ReadWantCount { vfd: 0 }),
            (vec![Out1(3), Out1(0), Out1(5)], State::ReadSendCount { n: 5 }),
            (vec![Out1(3), Out1(0), Out1(5), In1, In1], State::ReadSendByte { next: 1, n: 5 }),
            (vec![Out1(2)], State::CloseWantVfd),
            (vec![Out1(5)], State::BulkWantVfd { op: Bulk::Read }),
            (vec![Out1(6), Out1(1)], State::BulkWantAddress { op: Bulk::Write, vfd: 1 }),
            (vec![Out1(6), Out1(1), Out4(0)], State::BulkWantLength { op: Bulk::Write, vfd: 1, address: 0 }),
            (vec![Out1(2), Out1(9)], State::SendByte { value: ERROR }),
            (vec![Out1(0x77)], State::SendByte { value: ERROR }),
            (vec![Out1(5), Out1(0), Out4(0), Out4(0)], State::SendDword { value: 0 }),
        ];
        let wrong_outs: [&[u8]; 5] = [&[0x01, 0x00], &[0x01, 0, 0, 0], &[0x01], &[1, 2, 3], &[]];
        let wrong_ins = [1usize, 2, 4, 3];
        let tmp = TempDir::new("wrongsize");
        for (script, expected) in &cases {
            let dword_state = matches!(expected, State::BulkWantAddress { .. } | State::BulkWantLength { .. });
            let byte_answer =
                matches!(expected, State::SendByte { .. } | State::ReadSendCount { .. } | State::ReadSendByte { .. });
            let dword_answer = matches!(expected, State::SendDword { .. });
            let outs = wrong_outs.iter().filter(|o| match o.len() {
                1 => dword_state,
                4 => !dword_state,
                _ => true,
            });
            let ins = wrong_ins.iter().filter(|&&n| match n {
                1 => !byte_answer,
                4 => !dword_answer,
                _ => true,
            });
            let wrongs: Vec<(bool, &[u8], usize)> =
                outs.map(|o| (true, *o, 0)).chain(ins.map(|&n| (false, &[][..], n))).collect();
            for (is_out, out, in_len) in wrongs {
                let what = format!(
                    "{expected:?} then {}",
                    if is_out { format!("out {out:?}") } else { format!("in of {in_len}") }
                );
                let _ = fs::remove_dir_all(tmp.0.join("guest_vm0_files"));
                let mut vm = Vm::with(&tmp, &[]);
                vm.put_private("r", b"0123456789");
                assert_eq!(vm.open(b"r", FLAGS_READ), 0);
                assert_eq!(vm.open(b"w", FLAGS_WRITE), 1);
                for access in script {
                    match *access {
                        Out1(b) => vm.outb(b),
                        Out4(d) => vm.outd(d),
                        In1 => {
                            vm.inb();
                        }
                    }
                }
                assert_eq!(vm.dev.state, *expected, "{what}");
                if is_out {
                    vm.out(out);
                    assert_eq!(vm.dev.state, State::Idle, "{what}");
                    // The error answer is what any `in` reads now.
                    let mut answer = [0x5A; 4];
                    vm.dev.inp(&mut answer[..1]);
                    assert_eq!(answer[0], 0xFF, "{what}");
                    assert_eq!(vm.ind(), 0xFFFF_FFFF, "{what}");
                } else {
                    let mut answer = vec![0x5A; in_len];
                    vm.dev.inp(&mut answer);
                    assert!(answer.iter().all(|&b| b == 0xFF), "{what}: {answer:?}");
                    assert_eq!(vm.dev.state, State::Idle, "{what}");
                    assert_eq!(vm.inb(), 0xFF, "{what}: the pending answer was dropped");
                }
                // The abandoned request had no effect.
                assert_eq!(vm.dev.open_count(), 2, "{what}");
                assert_eq!(vm.private_file("w"), b"", "{what}");
                assert!(!vm.private.join("n").exists(), "{what}");
                vm.assert_in_sync();
                assert_eq!(vm.write(1, b"w"), 1, "{what}");
            }
        }
    }

    // ---- the file table ---------------------------------------------------------------

    #[test]
    fn at_most_16_files_open_and_the_lowest_free_vfd_is_reused() {
        let tmp = TempDir::new("limit");
        let mut vm = Vm::with(&tmp, &[]);
        for i in 0..16u8 {
            assert_eq!(vm.open(format!("f{i}").as_bytes(), FLAGS_WRITE), i);
        }
        assert_eq!(vm.dev.open_count(), 16);
        assert_eq!(vm.open(b"f16", FLAGS_WRITE), ERROR, "the 17th fails");
        assert!(!vm.private.join("f16").exists(), "and creates nothing");
        assert_eq!(vm.open(b"f0", FLAGS_READ), ERROR);
        assert_eq!(vm.close(5), 0);
        assert_eq!(vm.close(9), 0);
        assert_eq!(vm.open(b"f16", FLAGS_WRITE), 5, "lowest free slot");
        assert_eq!(vm.open(b"f17", FLAGS_WRITE), 9);
        assert_eq!(vm.open(b"f18", FLAGS_WRITE), ERROR);
        vm.dev.close_all();
        assert_eq!(vm.dev.open_count(), 0);
        assert_eq!(vm.open(b"f0", FLAGS_READ), 0);
        vm.assert_in_sync();
    }

    #[test]
    fn the_same_file_can_be_open_twice() {
        let tmp = TempDir::new("twice");
        let mut vm = Vm::with(&tmp, &[]);
        assert_eq!(vm.open(b"f", FLAGS_WRITE), 0);
        assert_eq!(vm.open(b"f", FLAGS_WRITE), 1);
        assert_eq!(vm.write(0, b"a"), 1);
        assert_eq!(vm.write(1, b"b"), 1);
        assert_eq!(vm.write(0, b"c"), 1);
        assert_eq!(vm.private_file("f"), b"abc", "both append");
    }

    #[test]
    fn dropping_the_device_closes_its_files() {
        let tmp = TempDir::new("drop");
        let shared = shared_files(&tmp, &[]);
        let mut vm = Vm::new(&tmp, shared.clone(), 0);
        assert_eq!(vm.open(b"f", FLAGS_WRITE), 0);
        assert_eq!(Arc::strong_count(&shared), 2);
        drop(vm);
        assert_eq!(Arc::strong_count(&shared), 1, "the sandbox went with the device");
    }

    // ---- sharing and isolation, through the protocol -------------------------------------

    #[test]
    fn copy_on_write_of_a_shared_file() {
        let tmp = TempDir::new("cow");
        let original = pattern(1000);
        let shared = shared_files(&tmp, &[("shared.bin", &original)]);
        let mut vm0 = Vm::new(&tmp, shared.clone(), 0);
        let mut vm1 = Vm::new(&tmp, shared.clone(), 1);

        assert_eq!(vm0.open(b"shared.bin", FLAGS_READ), 0);
        assert_eq!(vm0.read(0, 10).unwrap(), &original[..10]);
        assert!(!vm0.private.exists(), "reading a shared file copies nothing");
        assert_eq!(vm0.open(b"shared.bin", FLAGS_WRITE), 1);
        assert_eq!(vm0.write(1, b"+vm0"), 4);
        assert_eq!(vm0.close(1), 0);
        let mut expected = original.clone();
        expected.extend_from_slice(b"+vm0");
        assert_eq!(vm0.private_file("shared.bin"), expected);

        // That VM's later opens see its copy ...
        assert_eq!(vm0.open(b"shared.bin", FLAGS_READ), 1);
        assert_eq!(vm0.bulk(CMD_READ_BULK, 1, 0, 2000), 1004);
        assert_eq!(vm0.ram(0..1004), expected);
        // ... a second write-open does not copy again ...
        assert_eq!(vm0.open(b"shared.bin", FLAGS_WRITE), 2);
        assert_eq!(vm0.write(2, b"!"), 1);
        expected.push(b'!');
        assert_eq!(vm0.private_file("shared.bin"), expected);
        // ... the other VM still sees the original ...
        assert_eq!(vm1.open(b"shared.bin", FLAGS_READ), 0);
        assert_eq!(vm1.bulk(CMD_READ_BULK, 0, 0, 2000), 1000);
        assert_eq!(vm1.ram(0..1000), original);
        // ... and the original is byte-for-byte unchanged.
        assert_eq!(fs::read(tmp.0.join("host/shared.bin")).unwrap(), original);
    }

    #[test]
    fn a_private_file_persists_for_a_second_run() {
        let tmp = TempDir::new("rerun");
        let shared = shared_files(&tmp, &[]);
        let mut run1 = Vm::new(&tmp, shared.clone(), 0);
        assert_eq!(run1.open(b"notes", FLAGS_WRITE), 0);
        assert_eq!(run1.write(0, b"first run"), 9);
        drop(run1);
        let mut run2 = Vm::new(&tmp, shared, 0);
        assert_eq!(run2.open(b"notes", FLAGS_READ), 0);
        assert_eq!(run2.read(0, 127).unwrap(), b"first run");
    }

    #[test]
    fn vms_do_not_see_each_others_private_files() {
        let tmp = TempDir::new("isolation");
        let shared = shared_files(&tmp, &[]);
        let mut vm0 = Vm::new(&tmp, shared.clone(), 0);
        let mut vm1 = Vm::new(&tmp, shared, 1);
        assert_eq!(vm0.open(b"secret", FLAGS_WRITE), 0);
        assert_eq!(vm0.write(0, b"vm0"), 3);
        assert_eq!(vm1.open(b"secret", FLAGS_READ), ERROR);
        assert_eq!(vm1.open(b"secret", FLAGS_WRITE), 0);
        assert_eq!(vm1.private_file("secret"), b"");
    }

    // ---- bulk --------------------------------------------------------------------------

    #[test]
    fn bulk_range_must_lie_inside_guest_ram() {
        let tmp = TempDir::new("bulkrange");
        let mut vm = Vm::with(&tmp, &[]);
        let size = u32::try_from(RAM_SIZE).unwrap();
        vm.set_ram(RAM_SIZE - 1, b"Z");
        assert_eq!(vm.open(b"out", FLAGS_WRITE), 0);
        for (address, length) in
            [(0xFFFF_FFFF, 2), (0xFFFF_FFFF, 0xFFFF_FFFF), (2, 0xFFFF_FFFF), (size - 1, 2), (size, 1), (0, size + 1)]
        {
            assert_eq!(vm.bulk(CMD_WRITE_BULK, 0, address, length), ERROR_DWORD, "{address:#x}+{length:#x}");
        }
        assert_eq!(vm.private_file("out"), b"", "nothing moved");
        assert_eq!(vm.bulk(CMD_WRITE_BULK, 0, size - 1, 1), 1, "ends exactly at size");
        assert_eq!(vm.bulk(CMD_WRITE_BULK, 0, 0, size), size);
        assert_eq!(vm.private_file("out").len(), RAM_SIZE + 1);

        assert_eq!(vm.open(b"out", FLAGS_READ), 1);
        vm.set_ram(0, &[0xAA; 8]);
        assert_eq!(vm.bulk(CMD_READ_BULK, 1, size - 1, 2), ERROR_DWORD);
        assert_eq!(vm.bulk(CMD_READ_BULK, 1, 0xFFFF_FFFF, 2), ERROR_DWORD);
        assert_eq!(vm.bulk(CMD_READ_BULK, 1, size - 1, 1), 1);
        assert_eq!(vm.ram(RAM_SIZE - 1..RAM_SIZE), b"Z");
        assert_eq!(vm.ram(0..8), [0xAA; 8], "refused reads changed nothing");
    }

    #[test]
    fn bulk_length_0_answers_0_and_bad_vfds_fail() {
        let tmp = TempDir::new("bulkzero");
        let mut vm = Vm::with(&tmp, &[]);
        vm.put_private("r", b"abc");
        assert_eq!(vm.open(b"r", FLAGS_READ), 0);
        assert_eq!(vm.open(b"w", FLAGS_WRITE), 1);
        assert_eq!(vm.bulk(CMD_READ_BULK, 0, 0, 0), 0);
        assert_eq!(vm.bulk(CMD_WRITE_BULK, 1, 0, 0), 0);
        assert_eq!(vm.bulk(CMD_READ_BULK, 0, 0xFFFF_FFFF, 0), 0);
        for vfd in [2, 15, 16, 255] {
            assert_eq!(vm.bulk(CMD_READ_BULK, vfd, 0, 0), ERROR_DWORD);
            assert_eq!(vm.bulk(CMD_READ_BULK, vfd, 0, 1), ERROR_DWORD);
            assert_eq!(vm.bulk(CMD_WRITE_BULK, vfd, 0, 1), ERROR_DWORD);
        }
        assert_eq!(vm.read(0, 127).unwrap(), b"abc");
        assert_eq!(vm.private_file("w"), b"");
        vm.assert_in_sync();
    }

    #[test]
    fn bulk_read_is_short_only_at_end_of_file_and_lands_only_where_it_read() {
        let tmp = TempDir::new("bulkeof");
        let mut vm = Vm::with(&tmp, &[]);
        let content = pattern(10_000);
        vm.put_private("big", &content);
        vm.set_ram(0, &[0xAA; 20_000]);
        assert_eq!(vm.open(b"big", FLAGS_READ), 0);
        assert_eq!(vm.bulk(CMD_READ_BULK, 0, 100, 4000), 4000);
        assert_eq!(vm.bulk(CMD_READ_BULK, 0, 4100, 9000), 6000, "short at end of file");
        assert_eq!(vm.bulk(CMD_READ_BULK, 0, 0, 10), 0, "0 = end of file");
        assert_eq!(vm.ram(100..10_100), content);
        assert_eq!(vm.ram(0..100), [0xAA; 100]);
        assert_eq!(vm.ram(10_100..20_000), vec![0xAA; 9_900]);
    }

    #[test]
    fn byte_and_bulk_requests_share_the_file_position() {
        let tmp = TempDir::new("bulkpos");
        let mut vm = Vm::with(&tmp, &[]);
        let content = pattern(200);
        vm.put_private("r", &content);
        assert_eq!(vm.open(b"r", FLAGS_READ), 0);
        assert_eq!(vm.read(0, 5).unwrap(), &content[..5]);
        assert_eq!(vm.bulk(CMD_READ_BULK, 0, 0, 10), 10);
        assert_eq!(vm.ram(0..10), &content[5..15]);
        assert_eq!(vm.read(0, 3).unwrap(), &content[15..18]);

        assert_eq!(vm.open(b"w", FLAGS_WRITE), 1);
        vm.set_ram(500, b"cd");
        assert_eq!(vm.write(1, b"ab"), 2);
        assert_eq!(vm.bulk(CMD_WRITE_BULK, 1, 500, 2), 2);
        assert_eq!(vm.write(1, b"ef"), 2);
        assert_eq!(vm.private_file("w"), b"abcdef");
    }

    #[test]
    fn a_refused_bulk_request_leaves_the_file_position() {
        let tmp = TempDir::new("bulkrefused");
        let mut vm = Vm::with(&tmp, &[]);
        let content = pattern(100);
        vm.put_private("r", &content);
        assert_eq!(vm.open(b"r", FLAGS_READ), 0);
        assert_eq!(vm.read(0, 3).unwrap(), &content[..3]);
        assert_eq!(vm.bulk(CMD_READ_BULK, 0, 0xFFFF_FFF0, 0x20), ERROR_DWORD);
        let size = u32::try_from(RAM_SIZE).unwrap();
        assert_eq!(vm.bulk(CMD_READ_BULK, 0, size - 5, 6), ERROR_DWORD);
        assert_eq!(vm.ram(RAM_SIZE - 5..RAM_SIZE), [0; 5]);
        assert_eq!(vm.read(0, 3).unwrap(), &content[3..6]);
    }

    #[test]
    fn bulk_answers_need_a_4_byte_in_and_bulk_values_a_4_byte_out() {
        let tmp = TempDir::new("bulksizes");
        let mut vm = Vm::with(&tmp, &[]);
        vm.put_private("r", b"0123456789");
        assert_eq!(vm.open(b"r", FLAGS_READ), 0);
        // The answer read with a 1-byte `in`: error, and the answer is gone.
        vm.send(&[CMD_READ_BULK, 0]);
        vm.outd(0);
        vm.outd(4);
        assert_eq!(vm.inb(), 0xFF);
        assert_eq!(vm.ind(), ERROR_DWORD);
        assert_eq!(vm.ram(0..4), b"0123", "the transfer itself happened");
        // The address sent as bytes: abandoned at its first byte, nothing moves.
        vm.send(&[CMD_READ_BULK, 0, 0x10]);
        assert_eq!(vm.dev.state, State::Idle);
        assert_eq!(vm.ind(), ERROR_DWORD);
        // The vfd sent as a dword: abandoned.
        vm.outb(CMD_READ_BULK);
        vm.outd(0);
        assert_eq!(vm.dev.state, State::Idle);
        // The length as a 2-byte out: abandoned.
        vm.send(&[CMD_READ_BULK, 0]);
        vm.outd(0x10);
        vm.out(&[4, 0]);
        assert_eq!(vm.dev.state, State::Idle);
        assert_eq!(vm.ram(0x10..0x14), [0; 4]);
        assert_eq!(vm.read(0, 127).unwrap(), b"456789");
        vm.assert_in_sync();
    }

    // ---- randomized ----------------------------------------------------------------------

    /// xorshift64: a small, seeded, deterministic generator (std only).
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
        }
        fn byte(&mut self) -> u8 {
            self.next().to_le_bytes()[0]
        }
        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())]
        }
    }

    /// Random port accesses, with a bias towards command bytes and small values so that
    /// every state is reached; sometimes a whole (possibly truncated, possibly bad) request.
    fn random_sequence(vm: &mut Vm, rng: &mut XorShift) {
        let size = u32::try_from(RAM_SIZE).unwrap();
        for _ in 0..1 + rng.below(30) {
            match rng.below(100) {
                0..40 => {
                    let b = match rng.below(4) {
                        0 => rng.pick(&[0, 1, 2, 3, 4, 5, 6, 7]),
                        1 => rng.pick(&[0, 1, 2, 15, 16, 127, 128, 254, 255]),
                        _ => rng.byte(),
                    };
                    vm.outb(b);
                }
                40..50 => {
                    let d = match rng.below(3) {
                        0 => rng.pick(&[0, 1, 2, 100, size - 1, size, size + 1, u32::MAX]),
                        1 => u32::try_from(rng.below(RAM_SIZE)).unwrap(),
                        _ => rng.next().to_le_bytes()[..4].iter().rev().fold(0, |acc, &b| (acc << 8) | u32::from(b)),
                    };
                    vm.outd(d);
                }
                50..57 => {
                    let len = rng.pick(&[0, 2, 2, 3, 8]);
                    let data: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
                    vm.out(&data);
                }
                57..88 => {
                    let len = rng.pick(&[1, 1, 1, 1, 1, 4, 4, 2, 0, 3]);
                    let mut data = vec![0; len];
                    vm.dev.inp(&mut data);
                }
                _ => {
                    let mut request: Vec<Access> = Vec::new();
                    let vfd = match rng.below(3) {
                        0 => u8::try_from(rng.below(18)).unwrap(),
                        _ => rng.pick(&[0, 0, 1, 1, 2, 3]),
                    };
                    match rng.below(5) {
                        0 => {
                            let name: &[u8] = rng.pick(&[&b"a"[..], b"b", b"shared.txt", b"..", b"x/y", b""]);
                            request.push(Access::Out1(CMD_OPEN));
                            request.push(Access::Out1(rng.pick(&[0, 0, 1, 2])));
                            request.push(Access::Out1(u8::try_from(name.len()).unwrap()));
                            request.extend(name.iter().map(|&b| Access::Out1(b)));
                        }
                        1 => {
                            let count = rng.pick(&[0, 1, 5, 127, 128, 255]);
                            request.extend([CMD_WRITE, vfd, count].map(Access::Out1));
                            request.extend((0..count).map(|_| Access::Out1(rng.byte())));
                        }
                        2 => {
                            let count = rng.pick(&[0, 1, 5, 127, 128, 255]);
                            request.extend([CMD_READ, vfd, count].map(Access::Out1));
                            request.extend((0..rng.pick(&[0, 0, 1, 3, 10, 130])).map(|_| Access::In1));
                        }
                        3 => request.extend([CMD_CLOSE, vfd].map(Access::Out1)),
                        _ => {
                            request.push(Access::Out1(rng.pick(&[CMD_READ_BULK, CMD_WRITE_BULK])));
                            request.push(Access::Out1(vfd));
                            request.push(Access::Out4(u32::try_from(rng.below(RAM_SIZE)).unwrap()));
                            request.push(Access::Out4(u32::try_from(rng.below(512)).unwrap()));
                        }
                    }
                    // Sometimes cut short.
                    if rng.below(4) == 0 {
                        request.truncate(rng.below(request.len() + 1));
                    }
                    for access in request {
                        match access {
                            Access::Out1(b) => vm.outb(b),
                            Access::Out4(d) => vm.outd(d),
                            Access::In1 => {
                                vm.inb();
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn random_accesses_never_panic_and_the_protocol_always_recovers() {
        let tmp = TempDir::new("random");
        let original = b"the shared original".to_vec();
        let mut vm = Vm::with(&tmp, &[("shared.txt", &original)]);
        vm.put_private("a", &pattern(100_000));
        vm.put_private("b", &pattern(300));
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for i in 0..5000u64 {
            random_sequence(&mut vm, &mut rng);

            // Recover: a 2-byte `in` is wrong in every state, so it always returns to Idle.
            assert_eq!(vm.inw(), 0xFFFF, "sequence {i}");
            assert_eq!(vm.dev.state, State::Idle, "sequence {i}");
            for vfd in 0..16 {
                let answer = vm.close(vfd);
                assert!(answer == 0 || answer == ERROR, "sequence {i}: close {answer:#x}");
            }
            assert_eq!(vm.dev.open_count(), 0, "sequence {i}");

            let _ = fs::remove_file(vm.private.join("check.bin"));
            let payload = i.to_le_bytes();
            assert_eq!(vm.open(b"check.bin", FLAGS_WRITE), 0, "sequence {i}");
            assert_eq!(vm.write(0, &payload), 8, "sequence {i}");
            assert_eq!(vm.close(0), 0, "sequence {i}");
            assert_eq!(vm.open(b"check.bin", FLAGS_READ), 0, "sequence {i}");
            if i % 2 == 0 {
                assert_eq!(vm.read(0, 127).unwrap(), payload, "sequence {i}");
                assert_eq!(vm.read(0, 127).unwrap(), b"", "sequence {i}");
            } else {
                assert_eq!(vm.bulk(CMD_READ_BULK, 0, 8, 100), 8, "sequence {i}");
                assert_eq!(vm.ram(8..16), payload, "sequence {i}");
            }
            assert_eq!(vm.close(0), 0, "sequence {i}");
            assert_eq!(vm.dev.state, State::Idle, "sequence {i}");
        }
        assert_eq!(fs::read(tmp.0.join("host/shared.txt")).unwrap(), original);
    }
}
