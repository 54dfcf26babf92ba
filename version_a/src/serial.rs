//! The serial port on 0xE9 (docs/REFERENCE.md §3): guest bytes out to stdout, stdin bytes in.
//!
//! C counterpart: the `port == 0xE9` branches of `run_vm` (`printf("%c")` and a `scanf("%d")`
//! behind a prompt). Ours passes raw bytes both ways and buffers like C's stdio: line-buffered
//! when stdout is a terminal, block-buffered otherwise, flushed before blocking on stdin and
//! when the VM ends. No syscall per guest byte.
//!
//! A VM being stopped (timeout, Ctrl-C) is never held by a stdout nobody reads: a write that
//! waits for stdout ends when the stop arrives, and what stdout did not take is dropped.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};

pub const SERIAL_PORT: u16 = 0xE9;
/// Output is written in blocks of this size (C's `BUFSIZ`) when stdout is not a terminal.
const BLOCK: usize = 8192;
/// How much stdin is read at once.
const INPUT_CHUNK: usize = 4096;
/// What an `in` reads once stdin is at end of file.
pub const EOF_BYTE: u8 = 0xFF;

/// Port 0xE9 of one VM.
#[derive(Debug)]
pub struct Serial<W: Write, R: Read> {
    out: W,
    buf: Vec<u8>,
    line_buffered: bool,
    input: R,
    in_buf: Vec<u8>,
    in_pos: usize,
    eof: bool,
}

impl<W: Write, R: Read> Serial<W, R> {
    /// `line_buffered`: flush at every newline (stdout is a terminal), else in blocks.
    pub fn new(out: W, input: R, line_buffered: bool) -> Self {
        Serial { out, buf: Vec::new(), line_buffered, input, in_buf: Vec::new(), in_pos: 0, eof: false }
    }

    /// One or more bytes the guest wrote (`out`, or `rep outsb`). `stop`: see [`Serial::flush`].
    pub fn write(&mut self, bytes: &[u8], stop: &dyn Fn() -> bool) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= BLOCK || (self.line_buffered && bytes.contains(&b'\n')) {
            self.flush(stop)?;
        }
        Ok(())
    }

    /// Writes out everything buffered. If a write is interrupted by a signal and `stop()`
    /// says the VM is being stopped, gives up with `ErrorKind::Interrupted` (the rest is lost).
    pub fn flush(&mut self, stop: &dyn Fn() -> bool) -> io::Result<()> {
        if !self.buf.is_empty() {
            let result = write_all(&mut self.out, &self.buf, stop);
            self.buf.clear();
            result?;
        }
        Ok(())
    }

    /// Fills `dst` with the next stdin bytes (`in`, or `rep insb`), `EOF_BYTE` after end of file.
    /// Flushes the output first whenever it has to wait for stdin. If the read is interrupted
    /// by a signal and `stop()` says the VM is being stopped, returns `ErrorKind::Interrupted`.
    pub fn read(&mut self, dst: &mut [u8], stop: &dyn Fn() -> bool) -> io::Result<()> {
        for byte in dst {
            if self.in_pos == self.in_buf.len() && !self.eof {
                self.flush(stop)?;
                self.fill(stop)?;
            }
            *byte = match self.in_buf.get(self.in_pos) {
                Some(&b) => {
                    self.in_pos += 1;
                    b
                }
                None => EOF_BYTE,
            };
        }
        Ok(())
    }

    /// One `read(2)` of stdin into the (empty) input buffer.
    fn fill(&mut self, stop: &dyn Fn() -> bool) -> io::Result<()> {
        self.in_buf.resize(INPUT_CHUNK, 0);
        self.in_pos = 0;
        let n = loop {
            // A stop may have come while this thread waited for something else (e.g. for the
            // stdin lock): look before waiting. The wait itself (signals.rs, `Interruptible`)
            // ends at any signal for this VM, pending before it began or arriving during it.
            if stop() {
                self.in_buf.clear();
                return Err(io::ErrorKind::Interrupted.into());
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

/// `write_all`, except that a write interrupted by a signal gives up when `stop()` says so
/// (std's `write_all` retries after `EINTR`, so a stop could never end a blocked write).
pub fn write_all(w: &mut impl Write, mut buf: &[u8], stop: &dyn Fn() -> bool) -> io::Result<()> {
    while !buf.is_empty() {
        match w.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            // A signal ended the wait for stdout (signals.rs, `Interruptible`): give up if it is
            // a stop, write on otherwise.
            Err(e) if e.kind() == io::ErrorKind::Interrupted && stop() => return Err(e),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that records each `write_all` + `flush` as one chunk.
    #[derive(Default, Debug)]
    struct Chunks(Vec<Vec<u8>>);
    impl Write for Chunks {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            match self.0.last_mut() {
                Some(last) if !last.is_empty() => last.extend_from_slice(b),
                _ => self.0.push(b.to_vec()),
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.push(Vec::new());
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
        let mut s = Serial::new(Chunks::default(), &b""[..], false);
        s.write(b"hello\n", &never).unwrap();
        assert!(s.out.written().is_empty(), "nothing written before a block is full");
        s.write(&vec![b'x'; BLOCK], &never).unwrap();
        assert_eq!(s.out.written().len(), 1);
        s.write(b"tail", &never).unwrap();
        s.flush(&never).unwrap();
        assert_eq!(s.out.written()[1], b"tail");
    }

    #[test]
    fn line_buffered_output_is_written_at_each_newline() {
        let mut s = Serial::new(Chunks::default(), &b""[..], true);
        s.write(b"abc", &never).unwrap();
        assert!(s.out.written().is_empty());
        s.write(b"\n", &never).unwrap();
        assert_eq!(s.out.written(), vec![b"abc\n".to_vec()]);
    }

    #[test]
    fn input_bytes_then_ff_at_eof_and_output_flushed_before_waiting() {
        let mut s = Serial::new(Chunks::default(), &b"ab"[..], false);
        s.write(b"prompt> ", &never).unwrap();
        let mut one = [0u8; 1];
        s.read(&mut one, &never).unwrap();
        assert_eq!(one, *b"a");
        assert_eq!(s.out.written(), vec![b"prompt> ".to_vec()], "flushed before reading stdin");
        let mut three = [0u8; 3];
        s.read(&mut three, &never).unwrap();
        assert_eq!(three, [b'b', 0xff, 0xff]);
        s.read(&mut one, &never).unwrap();
        assert_eq!(one, [0xff]);
    }

    #[test]
    fn a_stop_request_is_seen_before_blocking_on_stdin() {
        let mut s = Serial::new(Chunks::default(), &b"data"[..], false);
        let err = s.read(&mut [0u8; 1], &|| true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
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
        let mut w = Blocked::default();
        let stops = std::cell::Cell::new(0);
        // The first EINTR comes without a stop request (retried), the second with one.
        let stop = || {
            stops.set(stops.get() + 1);
            stops.get() > 1
        };
        let err = write_all(&mut w, b"abc", &stop).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
        assert_eq!((w.attempts, stops.get()), (3, 2));
        let mut s = Serial::new(Blocked::default(), &b""[..], true);
        assert!(s.write(b"line\n", &|| true).is_err(), "a stopped VM does not wait for stdout");
        s.flush(&|| true).unwrap(); // the lost bytes are gone: nothing left to write
    }
}
