//! The I/O ports a guest sees (docs/REFERENCE.md §3, §4): the serial port on 0xE9, guest
//! bytes out to stdout and stdin bytes in, and every other port, ignored with a warning.
//!
//! C counterpart: the `KVM_EXIT_IO` case of the `KVM_RUN` loop in `main`, whose `port == 0xE9`
//! branches do `printf("%c")` and a `scanf("%d")` behind a prompt. Ours passes raw bytes both
//! ways and buffers like C's stdio: line-buffered when stdout is a terminal, block-buffered
//! otherwise, flushed before blocking on stdin and when the VM ends. No syscall per guest byte.
#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, Read, Write};

use inspect::ports::UnknownPorts;

use crate::signals::Interruptible;

pub const SERIAL_PORT: u16 = 0xE9;
/// Output is written in blocks of this size (C's `BUFSIZ`) when stdout is not a terminal.
const BLOCK: usize = 8192;
/// How much stdin is read at once.
const INPUT_CHUNK: usize = 4096;
/// What an `in` reads once stdin is at end of file.
pub const EOF_BYTE: u8 = 0xFF;

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
        let GuestError::WideSerial { size, out } = *self;
        let how = if out { "out on" } else { "in on" };
        write!(f, "{size}-byte {how} serial port {SERIAL_PORT:#x} (it takes single bytes)")
    }
}

/// The ports of the VM: the serial port on stdout `W` and stdin `R` (the program's own, each
/// [`Interruptible`]; the unit tests' fakes), and the unknown ports it warned about.
#[derive(Debug)]
pub struct Ports<W: Write = Interruptible, R: Read = Interruptible> {
    /// `vm0 (image)`, for warnings.
    label: String,
    out: W,
    buf: Vec<u8>,
    line_buffered: bool,
    input: R,
    in_buf: Vec<u8>,
    in_pos: usize,
    eof: bool,
    /// The unknown ports it warned about.
    warned: UnknownPorts,
}

impl<W: Write, R: Read> Ports<W, R> {
    /// `line_buffered`: flush at every newline (stdout is a terminal), else in blocks.
    pub fn new(label: &str, out: W, input: R, line_buffered: bool) -> Self {
        let (buf, in_buf, warned) = (Vec::new(), Vec::new(), UnknownPorts::default());
        Ports { label: label.to_owned(), out, buf, line_buffered, input, in_buf, in_pos: 0, eof: false, warned }
    }

    /// Bytes the guest wrote to the serial port (`out`, `rep outsb`, or the coalesced ring).
    pub fn serial_out(&mut self, size: u8, data: &[u8], stop: &dyn Fn() -> bool) -> Result<(), IoError> {
        if size != 1 {
            return Err(IoError::Guest(GuestError::WideSerial { size: size.into(), out: true }));
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BLOCK || (self.line_buffered && data.contains(&b'\n')) {
            self.flush(stop)?;
        }
        Ok(())
    }

    /// Bytes the guest reads from the serial port (`in`, `rep insb`): the next stdin bytes, then
    /// [`EOF_BYTE`]s; the output is flushed before any wait for stdin.
    pub fn serial_in(&mut self, size: u8, data: &mut [u8], stop: &dyn Fn() -> bool) -> Result<(), IoError> {
        if size != 1 {
            return Err(IoError::Guest(GuestError::WideSerial { size: size.into(), out: false }));
        }
        for byte in data {
            if self.in_pos == self.in_buf.len() && !self.eof {
                self.flush(stop)?;
                self.fill(stop)?;
            }
            *byte = self.in_buf.get(self.in_pos).copied().unwrap_or(EOF_BYTE);
            self.in_pos = self.in_buf.len().min(self.in_pos + 1);
        }
        Ok(())
    }

    /// Any other port: an `out` is ignored, an `in` (`Some(data)`) reads 0xFF as from an
    /// empty ISA bus, with one warning per port (the toolbox's [`UnknownPorts`]).
    pub fn unknown(&mut self, port: u16, data: Option<&mut [u8]>) -> Result<(), IoError> {
        self.warned.warn(port, data.is_some(), &self.label);
        if let Some(data) = data {
            data.fill(0xFF);
        }
        Ok(())
    }

    /// Writes out everything buffered (also when the VM ends, however it ends). A write that a
    /// signal interrupted gives up with [`IoError::Stopped`] if `stop()` says the VM is being
    /// stopped (so a stdout nobody reads never holds it; the rest is lost), and goes on otherwise
    /// (std's `write_all` retries after `EINTR`, so a stop could never end a blocked write).
    pub fn flush(&mut self, stop: &dyn Fn() -> bool) -> Result<(), IoError> {
        let mut rest = &self.buf[..];
        let result = loop {
            if rest.is_empty() {
                break Ok(());
            }
            match self.out.write(rest) {
                Ok(0) => break Err(IoError::Host("cannot write guest output to stdout: write returned 0".into())),
                Ok(n) => rest = &rest[n..],
                // A signal ended the wait for stdout (signals.rs, `Interruptible`).
                Err(e) if e.kind() == io::ErrorKind::Interrupted && stop() => break Err(IoError::Stopped),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(IoError::Host(format!("cannot write guest output to stdout: {e}"))),
            }
        };
        self.buf.clear();
        result
    }

    /// One `read(2)` of stdin into the (empty) input buffer.
    fn fill(&mut self, stop: &dyn Fn() -> bool) -> Result<(), IoError> {
        self.in_buf.resize(INPUT_CHUNK, 0);
        self.in_pos = 0;
        let n = loop {
            // A stop may have come while this thread waited for something else: look before
            // waiting. The wait itself (signals.rs, `Interruptible`) ends at any signal for this
            // VM, pending before it began or arriving during it.
            if stop() {
                self.in_buf.clear();
                return Err(IoError::Stopped);
            }
            match self.input.read(&mut self.in_buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // An unreadable stdin (closed, a directory...) reads as end of file.
                Err(_) => break 0,
            }
        };
        self.in_buf.truncate(n);
        self.eof = n == 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that records each write(2) as one chunk.
    #[derive(Default, Debug)]
    struct Chunks(Vec<Vec<u8>>);
    impl Write for Chunks {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Chunks {
        fn written(&self) -> Vec<Vec<u8>> {
            self.0.iter().filter(|c| !c.is_empty()).cloned().collect()
        }
    }

    fn never() -> bool {
        false
    }

    #[test]
    fn block_buffered_output_is_written_in_blocks_and_at_flush() {
        let mut s = Ports::new("vm0", Chunks::default(), &b""[..], false);
        s.serial_out(1, b"hello\n", &never).unwrap();
        assert!(s.out.written().is_empty(), "nothing written before a block is full");
        s.serial_out(1, &vec![b'x'; BLOCK], &never).unwrap();
        assert_eq!(s.out.written().len(), 1);
        s.serial_out(1, b"tail", &never).unwrap();
        s.flush(&never).unwrap();
        assert_eq!(s.out.written()[1], b"tail");
    }

    #[test]
    fn line_buffered_output_is_written_at_each_newline() {
        let mut s = Ports::new("vm0", Chunks::default(), &b""[..], true);
        s.serial_out(1, b"abc", &never).unwrap();
        assert!(s.out.written().is_empty());
        s.serial_out(1, b"\n", &never).unwrap();
        assert_eq!(s.out.written(), vec![b"abc\n".to_vec()]);
    }

    #[test]
    fn input_bytes_then_ff_at_eof_and_output_flushed_before_waiting() {
        let mut s = Ports::new("vm0", Chunks::default(), &b"ab"[..], false);
        s.serial_out(1, b"prompt> ", &never).unwrap();
        let mut one = [0u8; 1];
        s.serial_in(1, &mut one, &never).unwrap();
        assert_eq!(one, *b"a");
        assert_eq!(s.out.written(), vec![b"prompt> ".to_vec()], "flushed before reading stdin");
        let mut three = [0u8; 3];
        s.serial_in(1, &mut three, &never).unwrap();
        assert_eq!(three, [b'b', 0xff, 0xff]);
        s.serial_in(1, &mut one, &never).unwrap();
        assert_eq!(one, [0xff]);
    }

    #[test]
    fn a_stop_request_is_seen_before_blocking_on_stdin() {
        let mut s = Ports::new("vm0", Chunks::default(), &b"data"[..], false);
        let err = s.serial_in(1, &mut [0u8; 1], &|| true).unwrap_err();
        assert_eq!(err, IoError::Stopped);
    }

    /// A stdout nobody reads: every write blocks until a signal interrupts it.
    #[derive(Debug, Default)]
    struct Blocked {
        attempts: u32,
    }
    impl Write for Blocked {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.attempts += 1;
            match self.attempts {
                1 => Ok(1.min(b.len())),                     // part of it got through
                2 => Err(io::ErrorKind::Interrupted.into()), // a stray signal
                _ => Err(io::ErrorKind::Interrupted.into()),
            }
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_blocked_write_gives_up_at_a_stop_and_only_then() {
        let mut s = Ports::new("vm0", Blocked::default(), &b""[..], false);
        s.serial_out(1, b"abc", &never).unwrap();
        let stops = std::cell::Cell::new(0);
        // The first EINTR comes without a stop request (retried), the second with one.
        let stop = || {
            stops.set(stops.get() + 1);
            stops.get() > 1
        };
        assert_eq!(s.flush(&stop), Err(IoError::Stopped));
        assert_eq!((s.out.attempts, stops.get()), (3, 2));
        let mut s = Ports::new("vm0", Blocked::default(), &b""[..], true);
        assert!(s.serial_out(1, b"line\n", &|| true).is_err(), "a stopped VM does not wait for stdout");
        s.flush(&|| true).unwrap(); // the lost bytes are gone: nothing left to write
    }

    #[test]
    fn wide_serial_accesses_are_guest_errors_and_unknown_ports_read_ff() {
        let mut s = Ports::new("vm0", Chunks::default(), &b"x"[..], false);
        let wide = GuestError::WideSerial { size: 2, out: true };
        assert_eq!(s.serial_out(2, b"ab", &never), Err(IoError::Guest(wide)));
        let mut two = [0u8; 2];
        assert!(s.serial_in(4, &mut two, &never).is_err());
        s.unknown(0x80, Some(&mut two)).unwrap();
        assert_eq!(two, [0xff, 0xff]);
        s.unknown(0x80, None).unwrap();
    }
}
