//! The byte requests, once complete: open, close, read and write on the file table.
//!
//! Each `answer_*` carries out one request, keeps its [`Completed`] event when tracing, and
//! returns the answer the guest will read; each `try_*` is the request itself, its `Err` the
//! reason for a -1.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Write};

use super::ShortWrite;
use super::completed::{Completed, GuestName, Why};
use super::{ERROR, FLAGS_READ, FLAGS_WRITE, FileDevice, MAX_TRANSFER, Mode, OpenFile, State};
use crate::sandbox::{self, NameError, OpenError};

impl FileDevice {
    /// The open request is complete (`len` name bytes in `self.name`): the vfd, or 0xFF.
    pub(super) fn answer_open(&mut self, flags: u8, len: usize) -> u8 {
        let answer = self.try_open(flags, len);
        let value = *answer.as_ref().unwrap_or(&ERROR);
        self.record(|dev| Completed::Open {
            name: GuestName::new(dev.name.get(..len).unwrap_or(&dev.name)),
            flags,
            answer,
        });
        value
    }

    pub(super) fn try_open(&mut self, flags: u8, len: usize) -> Result<u8, Why> {
        let mode = match flags {
            FLAGS_READ => Mode::Read,
            FLAGS_WRITE => Mode::Write,
            _ => return Err(Why::Flags),
        };
        let name = self.name.get(..len).ok_or(Why::Open(OpenError::Name(NameError::TooLong(len))))?;
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
    pub(super) fn answer_close(&mut self, vfd: u8) -> u8 {
        let answer = match self.files.get_mut(usize::from(vfd)) {
            Some(slot @ Some(_)) => {
                *slot = None;
                Ok(())
            }
            _ => Err(Why::NotOpen),
        };
        let value = if answer.is_ok() { 0 } else { ERROR };
        self.record(|_| Completed::Close { vfd, answer });
        value
    }

    /// The read request is complete: read up to min(count, 127) bytes into `self.data` and
    /// make the answer pending.
    pub(super) fn answer_read(&mut self, vfd: u8, count: u8) -> State {
        let answer = self.try_read(vfd, count);
        let state = match answer {
            Ok(0) => State::SendByte { value: 0 },
            Ok(n) => State::ReadSendCount { n },
            Err(_) => State::SendByte { value: ERROR },
        };
        self.record(|_| Completed::Read { vfd, count, answer });
        state
    }

    /// The number of bytes read into `self.data`: 0 at end of file (or for count 0).
    pub(super) fn try_read(&mut self, vfd: u8, count: u8) -> Result<u8, Why> {
        let file = lookup(&self.files, vfd, Mode::Read)?;
        let want = usize::from(count).min(MAX_TRANSFER);
        let buf = self.data.get_mut(..want).ok_or(Why::CountTooBig)?;
        match read_up_to(file, buf).map(u8::try_from) {
            Ok(Ok(n)) if usize::from(n) <= want => Ok(n),
            Ok(_) => Err(Why::ReadFailed(io::ErrorKind::InvalidData.into())),
            Err(e) => Err(Why::ReadFailed(e)),
        }
    }

    /// The write request is complete (`count` data bytes consumed): the answer.
    pub(super) fn answer_write(&mut self, vfd: u8, count: usize) -> u8 {
        let answer = self.try_write(vfd, count);
        let value = *answer.as_ref().unwrap_or(&ERROR);
        self.record(|_| Completed::Write { vfd, count, answer });
        value
    }

    pub(super) fn try_write(&self, vfd: u8, count: usize) -> Result<u8, Why> {
        if count > MAX_TRANSFER {
            return Err(Why::CountTooBig);
        }
        let file = lookup(&self.files, vfd, Mode::Write)?;
        let bytes = self.data.get(..count).ok_or(Why::CountTooBig)?;
        if bytes.is_empty() {
            return Ok(0);
        }
        // Straight to the file descriptor: once answered, the bytes are in the host file. A
        // failure part-way takes back the bytes that fit.
        write_counted(file, bytes).map_err(|short| take_back(file, short))?;
        u8::try_from(count).map_err(|_| Why::CountTooBig)
    }
}

/// The file behind `vfd` if it is open in `mode`.
pub(super) fn lookup(files: &[Option<OpenFile>], vfd: u8, mode: Mode) -> Result<&File, Why> {
    match files.get(usize::from(vfd)) {
        Some(Some(open)) if open.mode == mode => Ok(&open.file),
        Some(Some(open)) => Err(Why::OpenedFor(open.mode)),
        _ => Err(Why::NotOpen),
    }
}

/// Write all of `bytes` to `file`; on failure, how many reached the file first.
pub fn write_counted(mut file: &File, bytes: &[u8]) -> Result<(), ShortWrite> {
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
pub(super) fn take_back(file: &File, short: ShortWrite) -> Why {
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
pub fn read_up_to(mut file: &File, buf: &mut [u8]) -> io::Result<usize> {
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
