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
            let _ = write_refusal(&mut io::stderr(), label, request, why);
        }
    }
}

/// The `--trace` line for a refusal: `trace: <label>: file: <request>: <reason>`.
fn write_refusal(out: &mut impl Write, label: &str, request: Request<'_>, why: &Why) -> io::Result<()> {
    writeln!(out, "trace: {label}: file: {request}: {why}")
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
        // Flags with bit 0 set (3, 0xFF) must not pass for a write-open either: "g" does not
        // exist and must not be created, "f" exists and must not be opened or appended to.
        for flags in [2, 3, 0x80, 0xFF] {
            for name in [b'f', b'g'] {
                vm.send(&[CMD_OPEN, flags, 1]);
                assert_eq!(vm.dev.state, State::OpenWantName { flags, len: 1, got: 0 });
                vm.outb(name);
                assert_eq!(vm.inb(), ERROR);
                assert_eq!(vm.dev.open_count(), 0);
            }
            // flags 2 with len 0: fails at once too.
            vm.send(&[CMD_OPEN, flags, 0]);
            assert_eq!(vm.inb(), ERROR);
        }
        let entries: Vec<_> = fs::read_dir(&vm.private).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(entries, ["f"], "nothing was created in the private directory");
        assert_eq!(vm.private_file("f"), b"data");
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

    // ---- refusals and their reasons ------------------------------------------------------

    /// The reason `try_open` gives for `name` with `flags` (the name put where the protocol
    /// puts it).
    fn why_open(vm: &mut Vm, name: &[u8], flags: u8) -> String {
        vm.dev.name[..name.len()].copy_from_slice(name);
        vm.dev.try_open(flags, name.len()).unwrap_err().to_string()
    }

    /// The whole `--trace` line for a refusal.
    fn trace_line(request: Request<'_>, why: &Why) -> String {
        let mut out = Vec::new();
        write_refusal(&mut out, "vm0 (x.img)", request, why).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_refusal_has_a_reason_in_words() {
        let tmp = TempDir::new("reasons");
        let mut vm = Vm::with(&tmp, &[("shared.txt", b"s")]);
        vm.put_private("r", b"data");
        assert_eq!(why_open(&mut vm, b"a/b", FLAGS_READ), "refused, '/' in a name");
        assert_eq!(why_open(&mut vm, b"..", FLAGS_WRITE), "refused, \".\" and \"..\" are not file names");
        assert_eq!(why_open(&mut vm, b"a\0", FLAGS_WRITE), "refused, NUL in a name");
        assert_eq!(why_open(&mut vm, &[b'z'; 255], FLAGS_WRITE), "refused, a name of 255 bytes, more than 254");
        assert_eq!(why_open(&mut vm, b"r", 2), "flags are neither 0 (read) nor 1 (write)");
        assert_eq!(why_open(&mut vm, b"missing", FLAGS_READ), "no private file and no shared file of that name");
        assert_eq!(vm.open(b"r", FLAGS_READ), 0);
        assert_eq!(vm.open(b"w", FLAGS_WRITE), 1);
        assert_eq!(vm.dev.try_write(3, 150).unwrap_err().to_string(), "count 150 > 127");
        assert_eq!(vm.dev.try_write(3, 1).unwrap_err().to_string(), "not open");
        assert_eq!(vm.dev.try_write(0, 1).unwrap_err().to_string(), "opened for read");
        assert_eq!(vm.dev.try_read(5, 1).unwrap_err().to_string(), "not open");
        assert_eq!(vm.dev.try_read(1, 0).unwrap_err().to_string(), "opened for write");
        let size = u32::try_from(RAM_SIZE).unwrap();
        assert_eq!(
            vm.dev.try_bulk(Bulk::Write, 1, size - 1, 2, &vm.ram).unwrap_err().to_string(),
            "the range ends at 0x10001, past the end of guest RAM (0x10000 bytes)"
        );
        assert_eq!(vm.dev.try_bulk(Bulk::Read, 1, 0, 2, &vm.ram).unwrap_err().to_string(), "opened for write");
        for i in 2..16 {
            assert_eq!(vm.open(b"r", FLAGS_READ), i);
        }
        assert_eq!(why_open(&mut vm, b"r", FLAGS_READ), "16 files already open");

        // The whole line, as --trace prints it.
        let line = |request, why| trace_line(request, &why);
        assert_eq!(
            line(
                Request::Open { name: b"a/b", flags: FLAGS_READ },
                Why::Open(OpenError::Name(sandbox::NameError::Slash))
            ),
            "trace: vm0 (x.img): file: open \"a/b\" for read: refused, '/' in a name\n"
        );
        assert_eq!(
            line(Request::Write(3), Why::CountTooBig(150)),
            "trace: vm0 (x.img): file: write vfd 3: count 150 > 127\n"
        );
        assert_eq!(line(Request::Read(5), Why::NotOpen), "trace: vm0 (x.img): file: read vfd 5: not open\n");
        assert_eq!(
            line(Request::Write(2), Why::OpenedFor(Mode::Read)),
            "trace: vm0 (x.img): file: write vfd 2: opened for read\n"
        );
        assert_eq!(line(Request::Close(9), Why::NotOpen), "trace: vm0 (x.img): file: close vfd 9: not open\n");
        assert_eq!(
            line(Request::Open { name: b"x\0\"\xff", flags: 7 }, Why::Flags),
            "trace: vm0 (x.img): file: open \"x\\x00\\\"\\xff\" with flags 7: flags are neither 0 (read) nor 1 (write)\n"
        );
        assert_eq!(
            line(Request::Bulk { op: Bulk::Write, vfd: 1, address: 0x1000, length: 20 }, Why::NotOpen),
            "trace: vm0 (x.img): file: write bulk vfd 1, 20 bytes at 0x1000: not open\n"
        );
        assert_eq!(
            line(Request::Command(7), Why::UnknownCommand),
            "trace: vm0 (x.img): file: command 0x07: unknown command\n"
        );
        let enospc = || io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(
            Why::WriteFailed { error: enospc(), written: 0, undone: true }.to_string(),
            "No space left on device (os error 28)"
        );
        assert_eq!(
            Why::WriteFailed { error: enospc(), written: 50, undone: true }.to_string(),
            "No space left on device (os error 28); the 50 bytes written first were taken back"
        );
        assert_eq!(
            Why::WriteFailed { error: enospc(), written: 50, undone: false }.to_string(),
            "No space left on device (os error 28); 50 bytes written first could not be taken back"
        );
    }

    #[test]
    fn a_private_dir_that_cannot_be_created_is_the_reason() {
        let tmp = TempDir::new("nodir");
        let shared = shared_files(&tmp, &[("shared.txt", b"shared")]);
        fs::write(tmp.join("file"), b"in the way").unwrap();
        let mut dev = FileDevice::new(Sandbox::new(shared, tmp.join("file/p"), "vm0 (x.img)".to_owned()));
        dev.name[..1].copy_from_slice(b"x");
        assert_eq!(
            dev.try_open(FLAGS_WRITE, 1).unwrap_err().to_string(),
            "private directory cannot be created: a component of its path is not a directory (Not a directory (os error 20))"
        );
        // The shared file is still readable.
        dev.name[..10].copy_from_slice(b"shared.txt");
        assert_eq!(dev.try_open(FLAGS_READ, 10).unwrap(), 0);
    }

    #[test]
    fn a_failed_write_is_taken_back() {
        let tmp = TempDir::new("takeback");
        let path = tmp.join("f");
        fs::write(&path, b"0123456789").unwrap();
        let file = File::options().append(true).open(&path).unwrap();
        let why = take_back(&file, ShortWrite { written: 4, error: io::Error::from_raw_os_error(libc::ENOSPC) });
        assert!(matches!(why, Why::WriteFailed { written: 4, undone: true, .. }), "{why:?}");
        assert_eq!(fs::read(&path).unwrap(), b"012345");
        let why = take_back(&file, ShortWrite { written: 0, error: io::Error::from_raw_os_error(libc::ENOSPC) });
        assert!(matches!(why, Why::WriteFailed { written: 0, undone: true, .. }), "{why:?}");
        assert_eq!(fs::read(&path).unwrap(), b"012345");
        // A descriptor that cannot truncate: said so.
        let read_only = File::open(&path).unwrap();
        let why = take_back(&read_only, ShortWrite { written: 2, error: io::Error::from_raw_os_error(libc::EIO) });
        assert!(matches!(why, Why::WriteFailed { written: 2, undone: false, .. }), "{why:?}");
        assert_eq!(fs::read(&path).unwrap(), b"012345");
    }

    /// Guest RAM whose writes to a file stop half-way with ENOSPC, as a full disk does.
    struct HalfFullRam(VecRam);

    impl GuestRam for HalfFullRam {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn read_from_file(&self, file: &File, gpa: u64, len: usize) -> io::Result<usize> {
            self.0.read_from_file(file, gpa, len)
        }
        fn write_to_file(&self, file: &File, gpa: u64, len: usize) -> Result<(), ShortWrite> {
            let half = len / 2;
            self.0.write_to_file(file, gpa, half)?;
            Err(ShortWrite { written: half, error: io::Error::from_raw_os_error(libc::ENOSPC) })
        }
    }

    #[test]
    fn a_bulk_write_that_fails_half_way_moves_no_data() {
        let tmp = TempDir::new("halfbulk");
        let mut vm = Vm::with(&tmp, &[]);
        vm.put_private("f", b"before");
        assert_eq!(vm.open(b"f", FLAGS_WRITE), 0);
        let ram = HalfFullRam(VecRam::new(RAM_SIZE));
        vm.dev.out(&[CMD_WRITE_BULK], &ram);
        vm.dev.out(&[0], &ram);
        vm.dev.out(&100u32.to_le_bytes(), &ram);
        vm.dev.out(&1000u32.to_le_bytes(), &ram);
        assert_eq!(vm.ind(), ERROR_DWORD);
        assert_eq!(vm.private_file("f"), b"before", "the 500 bytes that fit were taken back");
        assert_eq!(vm.write(0, b"+after"), 6);
        assert_eq!(vm.private_file("f"), b"before+after");
    }

    // ---- randomized, against a model ------------------------------------------------------

    /// xorshift64*: a small, seeded, deterministic generator (std only).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
        }
        fn byte(&mut self) -> u8 {
            self.next().to_le_bytes()[7]
        }
        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())]
        }
        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }
    }

    /// The answer the model has waiting for `in`s.
    #[derive(Debug)]
    enum Pending {
        Nothing,
        Bytes(std::collections::VecDeque<u8>),
        Dword(u32),
    }

    #[derive(Debug, Clone)]
    struct ModelFile {
        name: Vec<u8>,
        write: bool,
        /// Opened on the VM's private file (else on the shared original).
        private: bool,
        /// Read position.
        pos: usize,
    }

    /// The file device as its rules describe it, written from those rules and not from the code
    /// above: a request is the list of bytes (and dwords) received so far, and it is decided
    /// when that list is complete. Files live in maps, guest RAM in a Vec.
    struct Model {
        req: Vec<u8>,
        dwords: Vec<u32>,
        pending: Pending,
        table: Vec<Option<ModelFile>>,
        private: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
        shared: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
        ram: Vec<u8>,
    }

    impl Model {
        fn new(shared: &[(&str, &[u8])], ram_size: usize) -> Model {
            Model {
                req: Vec::new(),
                dwords: Vec::new(),
                pending: Pending::Nothing,
                table: vec![None; 16],
                private: Default::default(),
                shared: shared.iter().map(|(n, b)| (n.as_bytes().to_vec(), b.to_vec())).collect(),
                ram: vec![0; ram_size],
            }
        }

        fn idle(&mut self) {
            self.req.clear();
            self.dwords.clear();
            self.pending = Pending::Nothing;
        }

        /// A bulk request that has its command and vfd waits for its two dwords.
        fn wants_dword(&self) -> bool {
            matches!(self.req.first(), Some(&(CMD_READ_BULK | CMD_WRITE_BULK))) && self.req.len() == 2
        }

        fn out(&mut self, data: &[u8]) {
            match *data {
                [b] if self.wants_dword() => {
                    let _ = b;
                    self.idle();
                }
                [b] => {
                    if self.req.is_empty() {
                        // A new command; an answer not (fully) read is dropped.
                        self.pending = Pending::Nothing;
                    }
                    self.req.push(b);
                    self.decide();
                }
                [a, b, c, d] if self.wants_dword() => {
                    self.dwords.push(u32::from_le_bytes([a, b, c, d]));
                    if self.dwords.len() == 2 {
                        let op = self.req[0];
                        let vfd = self.req[1];
                        let (address, length) = (self.dwords[0], self.dwords[1]);
                        let answer = self.bulk(op, vfd, address, length);
                        self.req.clear();
                        self.dwords.clear();
                        self.pending = Pending::Dword(answer);
                    }
                }
                _ => self.idle(),
            }
        }

        fn inp(&mut self, size: usize) -> Vec<u8> {
            let waiting = self.req.is_empty();
            match (size, &mut self.pending) {
                (1, Pending::Bytes(bytes)) if waiting => {
                    let b = bytes.pop_front().unwrap();
                    if bytes.is_empty() {
                        self.pending = Pending::Nothing;
                    }
                    vec![b]
                }
                (4, Pending::Dword(v)) if waiting => {
                    let v = *v;
                    self.pending = Pending::Nothing;
                    v.to_le_bytes().to_vec()
                }
                _ => {
                    self.idle();
                    vec![0xFF; size]
                }
            }
        }

        /// If the request in `req` is complete, carry it out and make its answer pending.
        fn decide(&mut self) {
            let r = self.req.clone();
            let answer: Option<Vec<u8>> = match r[0] {
                CMD_OPEN if r.len() >= 3 => {
                    let len = usize::from(r[2]);
                    if len == 0 {
                        Some(vec![ERROR])
                    } else if r.len() - 3 == len {
                        Some(vec![self.open(r[1], &r[3..])])
                    } else {
                        None
                    }
                }
                CMD_OPEN => None,
                CMD_CLOSE if r.len() == 2 => Some(vec![self.close(r[1])]),
                CMD_READ if r.len() == 3 => Some(self.read(r[1], r[2])),
                CMD_WRITE if r.len() >= 3 && r.len() - 3 == usize::from(r[2]) => Some(vec![self.write(r[1], &r[3..])]),
                CMD_CLOSE | CMD_READ | CMD_WRITE | CMD_READ_BULK | CMD_WRITE_BULK => None,
                _ => Some(vec![ERROR]),
            };
            if let Some(answer) = answer {
                self.req.clear();
                self.pending = Pending::Bytes(answer.into());
            }
        }

        fn name_ok(name: &[u8]) -> bool {
            (1..=254).contains(&name.len())
                && !name.contains(&b'/')
                && !name.contains(&0)
                && name != b"."
                && name != b".."
        }

        fn open(&mut self, flags: u8, name: &[u8]) -> u8 {
            if flags > 1 || !Model::name_ok(name) {
                return ERROR;
            }
            let Some(vfd) = self.table.iter().position(Option::is_none) else {
                return ERROR;
            };
            let private = if flags == 0 {
                if self.private.contains_key(name) {
                    true
                } else if self.shared.contains_key(name) {
                    false
                } else {
                    return ERROR;
                }
            } else {
                if !self.private.contains_key(name) {
                    let copy = self.shared.get(name).cloned().unwrap_or_default();
                    self.private.insert(name.to_vec(), copy);
                }
                true
            };
            self.table[vfd] = Some(ModelFile { name: name.to_vec(), write: flags == 1, private, pos: 0 });
            u8::try_from(vfd).unwrap()
        }

        fn close(&mut self, vfd: u8) -> u8 {
            match self.table.get_mut(usize::from(vfd)).and_then(Option::take) {
                Some(_) => 0,
                None => ERROR,
            }
        }

        fn file(&mut self, vfd: u8, write: bool) -> Option<&mut ModelFile> {
            self.table.get_mut(usize::from(vfd)).and_then(Option::as_mut).filter(|f| f.write == write)
        }

        /// Reads up to `max` bytes at the read position of `vfd` (open for read).
        fn take(&mut self, vfd: u8, max: usize) -> Vec<u8> {
            let f = self.table[usize::from(vfd)].clone().unwrap();
            let content = if f.private { &self.private[&f.name] } else { &self.shared[&f.name] };
            let data = content[f.pos.min(content.len())..].iter().take(max).copied().collect::<Vec<u8>>();
            self.table[usize::from(vfd)].as_mut().unwrap().pos += data.len();
            data
        }

        fn read(&mut self, vfd: u8, count: u8) -> Vec<u8> {
            if self.file(vfd, false).is_none() {
                return vec![ERROR];
            }
            let data = self.take(vfd, usize::from(count).min(127));
            let mut answer = vec![u8::try_from(data.len()).unwrap()];
            answer.extend(data);
            answer
        }

        fn write(&mut self, vfd: u8, data: &[u8]) -> u8 {
            if data.len() > 127 {
                return ERROR;
            }
            let Some(f) = self.file(vfd, true) else {
                return ERROR;
            };
            let name = f.name.clone();
            self.private.get_mut(&name).unwrap().extend_from_slice(data);
            u8::try_from(data.len()).unwrap()
        }

        fn bulk(&mut self, op: u8, vfd: u8, address: u32, length: u32) -> u32 {
            let write = op == CMD_WRITE_BULK;
            if self.file(vfd, write).is_none() {
                return ERROR_DWORD;
            }
            if length == 0 {
                return 0;
            }
            let (start, len) = (usize::try_from(address).unwrap(), usize::try_from(length).unwrap());
            if u64::from(address) + u64::from(length) > u64::try_from(self.ram.len()).unwrap() {
                return ERROR_DWORD;
            }
            if write {
                let name = self.file(vfd, true).unwrap().name.clone();
                let bytes = self.ram[start..start + len].to_vec();
                self.private.get_mut(&name).unwrap().extend(bytes);
                length
            } else {
                let data = self.take(vfd, len);
                self.ram[start..start + data.len()].copy_from_slice(&data);
                u32::try_from(data.len()).unwrap()
            }
        }
    }

    /// One port access of a random sequence.
    #[derive(Debug, Clone, Copy)]
    enum Op {
        Out(u32, usize),
        In(usize),
    }

    /// The names the random requests use: private and shared ones, and invalid ones.
    const NAMES: [&[u8]; 10] = [b"a", b"b", b"s", b"t", b"", b".", b"..", b"a/b", b"x\0", b"s.txt"];

    /// A random sequence of accesses: whole requests (with their answers read, or not, or with
    /// the wrong size), requests cut short, and single stray accesses.
    fn random_ops(rng: &mut Rng, model: &Model, ops: &mut Vec<Op>) {
        let ram = u32::try_from(model.ram.len()).unwrap();
        let open_vfd = |rng: &mut Rng| -> u8 {
            let open: Vec<usize> = (0..16).filter(|&i| model.table[i].is_some()).collect();
            match rng.below(10) {
                0 => rng.pick(&[16, 17, 127, 128, 255]),
                1..=2 => u8::try_from(rng.below(16)).unwrap(),
                _ if open.is_empty() => 0,
                _ => u8::try_from(rng.pick(&open)).unwrap(),
            }
        };
        let b = |v: u8| Op::Out(u32::from(v), 1);
        for _ in 0..1 + rng.below(6) {
            let start = ops.len();
            match rng.below(100) {
                0..=17 => {
                    let name: Vec<u8> = match rng.below(40) {
                        0 => vec![b'L'; 254],
                        1 => vec![b'z'; 255],
                        _ => rng.pick(&NAMES).to_vec(),
                    };
                    let flags = rng.pick(&[0, 0, 0, 1, 1, 1, 2, 3, 0xFF]);
                    ops.extend([b(CMD_OPEN), b(flags), b(u8::try_from(name.len()).unwrap_or(255))]);
                    ops.extend(name.iter().map(|&c| b(c)));
                    ops.push(Op::In(1));
                }
                18..=29 => {
                    ops.extend([b(CMD_CLOSE), b(open_vfd(rng))]);
                    ops.push(Op::In(1));
                }
                30..=47 => {
                    let count = rng.pick(&[0, 1, 2, 5, 50, 127, 128, 200, 255]);
                    ops.extend([b(CMD_READ), b(open_vfd(rng)), b(count)]);
                    // The count, then (usually) every data byte, sometimes a few too many.
                    let ins = 1 + usize::from(count.min(127)) + rng.pick(&[0, 0, 0, 1, 3]);
                    ops.extend((0..ins).map(|_| Op::In(1)));
                }
                48..=65 => {
                    let count = rng.pick(&[0, 1, 3, 10, 127, 128, 200]);
                    ops.extend([b(CMD_WRITE), b(open_vfd(rng)), b(count)]);
                    ops.extend((0..count).map(|_| b(rng.byte())));
                    ops.push(Op::In(1));
                }
                66..=79 => {
                    let op = rng.pick(&[CMD_READ_BULK, CMD_WRITE_BULK]);
                    let address = match rng.below(6) {
                        0 => rng.pick(&[0, ram - 1, ram, ram + 1, u32::MAX]),
                        _ => u32::try_from(rng.below(model.ram.len())).unwrap(),
                    };
                    let length = match rng.below(6) {
                        0 => rng.pick(&[0, 1, ram, ram + 1, u32::MAX]),
                        _ => u32::try_from(rng.below(700)).unwrap(),
                    };
                    ops.extend([b(op), b(open_vfd(rng)), Op::Out(address, 4), Op::Out(length, 4), Op::In(4)]);
                }
                80..=89 => {
                    // A stray out: a command-ish byte, a dword, or a wrong size.
                    let op = match rng.below(4) {
                        0 => Op::Out(rng.below(256).try_into().unwrap(), rng.pick(&[2, 3])),
                        1 => Op::Out(u32::try_from(rng.next() >> 32).unwrap(), 4),
                        _ => b(rng.pick(&[0, 1, 2, 3, 4, 5, 6, 7, 0x7F, 0xFF])),
                    };
                    ops.push(op);
                }
                _ => ops.push(Op::In(rng.pick(&[1, 1, 2, 3, 4]))),
            }
            // Requests are sometimes cut short, or their answer taken with the wrong size.
            if ops.len() - start > 1 {
                match rng.below(20) {
                    0 => ops.truncate(start + 1 + rng.below(ops.len() - start - 1)),
                    1 => {
                        let last = ops.len() - 1;
                        if let Op::In(size) = ops[last] {
                            ops[last] = Op::In(if size == 1 { rng.pick(&[2, 4]) } else { rng.pick(&[1, 2]) });
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Every host file of the private directory is exactly the model's, and nothing else is
    /// there.
    fn assert_files_match(private: &std::path::Path, model: &Model, context: &dyn Fn() -> String) {
        let mut names: Vec<Vec<u8>> = match fs::read_dir(private) {
            Ok(dir) => dir.map(|e| e.unwrap().file_name().into_encoded_bytes()).collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        let expected: Vec<Vec<u8>> = model.private.keys().cloned().collect();
        assert_eq!(names, expected, "private files, {}", context());
        for (name, content) in &model.private {
            let on_disk =
                fs::read(private.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name))).unwrap();
            assert!(
                on_disk == *content,
                "host file {:?}: {} bytes, model {} bytes, {}",
                name.escape_ascii().to_string(),
                on_disk.len(),
                content.len(),
                context()
            );
        }
    }

    /// Seeded random sequences of byte and bulk requests, every answer and every host-file
    /// byte compared with [`Model`]. A fresh seed each run (printed with any failure; set
    /// MH_FILEIO_SEED to repeat one).
    #[test]
    fn random_requests_match_the_model_of_the_protocol() {
        const ROUNDS: usize = 1000;
        const SEQUENCES: usize = 100;
        const RAM: usize = 4096;
        let seed = match std::env::var("MH_FILEIO_SEED") {
            Ok(s) => u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("MH_FILEIO_SEED is hex"),
            Err(_) => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
                (u64::try_from(now.as_nanos() & u128::from(u64::MAX)).unwrap() ^ (u64::from(std::process::id()) << 32))
                    | 1
            }
        };
        eprintln!(
            "random_requests_match_the_model_of_the_protocol: seed {seed:#x} (MH_FILEIO_SEED={seed:x} repeats it)"
        );
        let mut rng = Rng(seed);
        let tmp = TempDir::new("model");
        let shared_content: [(&str, &[u8]); 2] = [("s", &pattern(300)), ("t", b"tiny")];
        let shared = shared_files(&tmp, &shared_content);
        let mut ops = Vec::new();
        let mut sequences = 0usize;
        for round in 0..ROUNDS {
            let private = tmp.join(format!("r{round}"));
            let mut dev = FileDevice::new(Sandbox::new(Arc::clone(&shared), private.clone(), "vm0 (model)".to_owned()));
            let ram = VecRam::new(RAM);
            let mut model = Model::new(&shared_content, RAM);
            for sequence in 0..SEQUENCES {
                let context = || format!("seed {seed:#x}, round {round}, sequence {sequence}");
                // Some new guest data for the bulk writes.
                if rng.chance(20) {
                    let at = rng.below(RAM - 64);
                    let data: Vec<u8> = (0..64).map(|_| rng.byte()).collect();
                    ram.mem.borrow_mut()[at..at + 64].copy_from_slice(&data);
                    model.ram[at..at + 64].copy_from_slice(&data);
                }
                ops.clear();
                random_ops(&mut rng, &model, &mut ops);
                let mut wrote = false;
                for (i, &op) in ops.iter().enumerate() {
                    match op {
                        Op::Out(value, size) => {
                            let bytes = value.to_le_bytes();
                            let data = if size <= 4 { &bytes[..size] } else { &bytes[..] };
                            dev.out(data, &ram);
                            model.out(data);
                            wrote |= matches!(data.first(), Some(&(CMD_OPEN | CMD_WRITE | CMD_WRITE_BULK)));
                        }
                        Op::In(size) => {
                            let mut got = vec![0x5A; size];
                            dev.inp(&mut got);
                            let want = model.inp(size);
                            assert!(
                                got == want,
                                "in of {size} at access {i}: got {got:x?}, model {want:x?}; {}; accesses {ops:?}",
                                context()
                            );
                        }
                    }
                }
                assert!(*ram.mem.borrow() == model.ram, "guest RAM differs, {}; accesses {ops:?}", context());
                if wrote || sequence == SEQUENCES - 1 {
                    assert_files_match(&private, &model, &context);
                }
                assert_eq!(dev.open_count(), model.table.iter().flatten().count(), "{}", context());
                sequences += 1;
            }
            drop(dev);
            let _ = fs::remove_dir_all(&private);
        }
        assert_eq!(sequences, ROUNDS * SEQUENCES);
        for (name, content) in shared_content {
            assert_eq!(fs::read(tmp.join("host").join(name)).unwrap(), content, "shared originals are never written");
        }
    }
}
