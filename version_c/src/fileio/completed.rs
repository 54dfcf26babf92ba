//! What a completed request did, as data: [`Completed`] (the request and its answer) and
//! [`Why`] (the reason of a -1). Their [`fmt::Display`] is the `--trace` text, for example
//!
//! ```text
//! file open "notes.txt" for write -> fd 3
//! file read fd 3, 127 bytes -> 68
//! file write fd 3, 200 bytes -> -1 (count above 127)
//! file read bulk fd 3, 4096 bytes at 0x2000 -> 4096
//! file close fd 3 -> 0
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::io;

use super::bulk::Bulk;
use super::{FLAGS_READ, FLAGS_WRITE, MAX_NAME_BYTES, MAX_OPEN_FILES, MAX_TRANSFER, Mode};
use crate::sandbox::OpenError;

/// A request the guest completed, with the answer it got (`Err`: -1, and why).
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "an open keeps its name by value: one event per device at a time, and no allocation"
)]
pub enum Completed {
    /// open: the vfd.
    Open { name: GuestName, flags: u8, answer: Result<u8, Why> },
    /// close: 0.
    Close { vfd: u8, answer: Result<(), Why> },
    /// read of `count` bytes: the bytes read (0 = end of file).
    Read { vfd: u8, count: u8, answer: Result<u8, Why> },
    /// write of `count` bytes: the bytes written.
    Write { vfd: u8, count: usize, answer: Result<u8, Why> },
    /// read bulk or write bulk: the bytes moved (0 = end of file for a read).
    Bulk { op: Bulk, vfd: u8, address: u32, length: u32, answer: Result<u32, Why> },
    /// A command byte the device does not know: answered -1.
    Unknown { command: u8 },
}

impl fmt::Display for Completed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Completed::Open { name, flags, answer } => {
                write!(f, "file open \"{}\"", name.as_bytes().escape_ascii())?;
                match *flags {
                    FLAGS_READ => f.write_str(" for read")?,
                    FLAGS_WRITE => f.write_str(" for write")?,
                    _ => write!(f, " with flags {flags}")?,
                }
                match answer {
                    Ok(vfd) => write!(f, " -> fd {vfd}"),
                    Err(why) => write!(f, " -> -1 ({why})"),
                }
            }
            Completed::Close { vfd, answer } => {
                write!(f, "file close fd {vfd}")?;
                write_answer(f, answer.as_ref().map(|()| 0), false)
            }
            Completed::Read { vfd, count, answer } => {
                write!(f, "file read fd {vfd}, {}", Bytes(u64::from(*count)))?;
                write_answer(f, answer.as_ref().map(|&n| u32::from(n)), *count > 0)
            }
            Completed::Write { vfd, count, answer } => {
                write!(f, "file write fd {vfd}, {}", Bytes(u64::try_from(*count).unwrap_or(u64::MAX)))?;
                write_answer(f, answer.as_ref().map(|&n| u32::from(n)), false)
            }
            Completed::Bulk { op, vfd, address, length, answer } => {
                let what = match op {
                    Bulk::Read => "read bulk",
                    Bulk::Write => "write bulk",
                };
                write!(f, "file {what} fd {vfd}, {} at {address:#x}", Bytes(u64::from(*length)))?;
                write_answer(f, answer.as_ref().copied(), *op == Bulk::Read && *length > 0)
            }
            Completed::Unknown { command } => write!(f, "file command {command:#04x} -> -1 (unknown command)"),
        }
    }
}

/// ` -> N`, ` -> 0 (end of file)` when a read that asked for bytes got none, or
/// ` -> -1 (reason)`.
fn write_answer(f: &mut fmt::Formatter<'_>, answer: Result<u32, &Why>, reads: bool) -> fmt::Result {
    match answer {
        Ok(0) if reads => f.write_str(" -> 0 (end of file)"),
        Ok(n) => write!(f, " -> {n}"),
        Err(why) => write!(f, " -> -1 ({why})"),
    }
}

/// `1 byte`, `N bytes`.
struct Bytes(u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => f.write_str("1 byte"),
            n => write!(f, "{n} bytes"),
        }
    }
}

/// A file name as an open request carried it (any bytes, up to 255 of them), owned by the event.
#[derive(Clone, Copy)]
pub struct GuestName {
    bytes: [u8; MAX_NAME_BYTES],
    len: u8,
}

impl GuestName {
    /// The first 255 bytes of `name`.
    pub fn new(name: &[u8]) -> GuestName {
        let mut bytes = [0; MAX_NAME_BYTES];
        let len = name.len().min(MAX_NAME_BYTES);
        if let (Some(to), Some(from)) = (bytes.get_mut(..len), name.get(..len)) {
            to.copy_from_slice(from);
        }
        GuestName { bytes, len: u8::try_from(len).unwrap_or(u8::MAX) }
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&self.bytes)
    }
}

impl fmt::Debug for GuestName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.as_bytes().escape_ascii())
    }
}

/// Why a request was answered -1 (said in words by [`fmt::Display`], for `--trace`).
#[derive(Debug)]
pub enum Why {
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
    /// write: a count above 127.
    CountTooBig,
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
            Why::CountTooBig => write!(f, "count above {MAX_TRANSFER}"),
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
        }
    }
}
