//! The I/O ports a guest sees (docs/REFERENCE.md §3–§6): the serial port on 0xE9, guest
//! bytes out to stdout and stdin bytes in; the file port on 0x0278 (`fileio/`); and every other
//! port, ignored with a warning.
//!
//! C counterpart: the `KVM_EXIT_IO` case of `run_vm` in `Version_C/mini_hypervisor.c`, whose
//! `port == 0xE9` branches do `printf("%c")` under a mutex and a `scanf("%d")` behind a prompt,
//! and whose `port == 0x278` branches drive the file state machine. Ours passes raw bytes both ways and buffers like C's stdio:
//! line-buffered when stdout is a terminal, block-buffered otherwise, flushed before blocking
//! on stdin and when a VM ends. No syscall per guest byte, and no lock per guest byte.
//!
//! Version B: several VMs share one [`Console`] (stdout and stdin, each behind its lock).
//! With one VM the output is the guest's bytes, unchanged. With several, each VM collects its
//! bytes into lines and writes each whole line, prefixed `[vmN] `, under the stdout lock, so
//! lines of different VMs never mix; an unfinished line is written (with a newline added) when
//! its VM halts, fails or reads input.
//!
//! A VM being stopped (timeout, Ctrl-C) is never held by a stdout nobody reads: a write that
//! waits for stdout ends when the stop arrives, and what stdout did not take is dropped.
#![forbid(unsafe_code)]

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use inspect::ports::UnknownPorts;

use crate::fileio::{self, Completed, FileDevice, ShortWrite};
use crate::kvm::GuestRam;
use crate::signals::{self, Interruptible};

pub const SERIAL_PORT: u16 = 0xE9;
/// Output is written in blocks of this size (C's `BUFSIZ`) when stdout is not a terminal.
const BLOCK: usize = 8192;
/// A guest line longer than this is written in pieces of this size, each ended by a newline,
/// so that one VM cannot make the hypervisor hold unbounded output.
pub const MAX_LINE: usize = 64 * 1024;
/// How much stdin is read at once.
const INPUT_CHUNK: usize = 4096;
/// What an `in` reads once stdin is at end of file.
pub const EOF_BYTE: u8 = 0xFF;

/// stdout and stdin, shared by every VM.
#[derive(Debug)]
pub struct Console<W: Write, R: Read> {
    out: Mutex<Output<W>>,
    input: Mutex<Input<R>>,
    line_buffered: bool,
}

/// stdout: whole lines (or blocks) from every VM, written in blocks.
#[derive(Debug)]
struct Output<W> {
    w: W,
    buf: Vec<u8>,
}

/// stdin: bytes read ahead, handed out one `in` at a time to whichever VM asks.
#[derive(Debug)]
struct Input<R> {
    r: R,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

/// A poisoned lock only means another VM thread panicked while writing; the data is still
/// usable bytes, so carry on with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<W: Write, R: Read> Console<W, R> {
    /// `line_buffered`: flush at every newline (stdout is a terminal), else in blocks.
    pub fn new(out: W, input: R, line_buffered: bool) -> Self {
        Console {
            out: Mutex::new(Output { w: out, buf: Vec::new() }),
            input: Mutex::new(Input { r: input, buf: Vec::new(), pos: 0, eof: false }),
            line_buffered,
        }
    }

    /// Writes `parts` back to back under one lock, then flushes if the buffering rule says so.
    fn emit(&self, parts: &[&[u8]], stop: &dyn Fn() -> bool) -> io::Result<()> {
        let mut out = lock(&self.out);
        for part in parts {
            out.buf.extend_from_slice(part);
        }
        if self.line_buffered || out.buf.len() >= BLOCK { out.flush(stop) } else { Ok(()) }
    }

    /// Writes out everything every VM has handed over so far. `stop`: see [`write_all`].
    pub fn flush(&self, stop: &dyn Fn() -> bool) -> io::Result<()> {
        lock(&self.out).flush(stop)
    }
}

impl<W: Write + AsFd, R: Read> Console<W, R> {
    /// Exiting at once: writes what the console holds, as far as stdout takes it without
    /// waiting (nothing if a VM holds the lock: that VM is blocked on stdout).
    pub fn flush_without_waiting(&self) {
        let mut out = match self.out.try_lock() {
            Ok(out) => out,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let Output { w, buf } = &mut *out;
        let mut written = 0;
        while written < buf.len() && signals::writable_now(w.as_fd()) {
            match w.write(&buf[written..]) {
                Ok(n) if n > 0 => written += n,
                _ => break,
            }
        }
        buf.drain(..written);
    }
}

impl<W: Write> Output<W> {
    fn flush(&mut self, stop: &dyn Fn() -> bool) -> io::Result<()> {
        if !self.buf.is_empty() {
            let result = write_all(&mut self.w, &self.buf, stop);
            self.buf.clear();
            result?;
        }
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

/// Port 0xE9 of one VM.
#[derive(Debug)]
pub struct Serial<W: Write, R: Read> {
    console: Arc<Console<W, R>>,
    /// `[vmN] ` when several VMs run; `None`: the guest's bytes go out unchanged.
    prefix: Option<Box<[u8]>>,
    /// This VM's bytes not yet handed to the console: the current line, or (without a prefix)
    /// the current block.
    pending: Vec<u8>,
}

impl<W: Write, R: Read> Serial<W, R> {
    pub fn new(console: Arc<Console<W, R>>, prefix: Option<String>) -> Self {
        Serial { console, prefix: prefix.map(|p| p.into_bytes().into_boxed_slice()), pending: Vec::new() }
    }

    /// One or more bytes the guest wrote (`out`, or `rep outsb`). `stop`: see [`write_all`].
    pub fn write(&mut self, bytes: &[u8], stop: &dyn Fn() -> bool) -> io::Result<()> {
        if self.prefix.is_none() {
            self.pending.extend_from_slice(bytes);
            if self.pending.len() >= BLOCK || (self.console.line_buffered && bytes.contains(&b'\n')) {
                self.hand_over(stop)?;
            }
            return Ok(());
        }
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let mut rest = line;
            while !rest.is_empty() {
                let (now, later) = rest.split_at(rest.len().min(MAX_LINE - self.pending.len()));
                self.pending.extend_from_slice(now);
                rest = later;
                if self.pending.ends_with(b"\n") || self.pending.len() == MAX_LINE {
                    self.hand_over(stop)?;
                }
            }
        }
        Ok(())
    }

    /// Hands this VM's pending bytes to the console: a block as it is, or one whole prefixed
    /// line (a newline is added to an unfinished one).
    fn hand_over(&mut self, stop: &dyn Fn() -> bool) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = match &self.prefix {
            None => self.console.emit(&[&self.pending], stop),
            Some(prefix) if self.pending.ends_with(b"\n") => self.console.emit(&[prefix, &self.pending], stop),
            Some(prefix) => self.console.emit(&[prefix, &self.pending, b"\n"], stop),
        };
        self.pending.clear();
        result
    }

    /// The VM has ended, or is about to wait for stdin: everything it wrote goes out now.
    pub fn flush(&mut self, stop: &dyn Fn() -> bool) -> io::Result<()> {
        self.hand_over(stop)?;
        self.console.flush(stop)
    }

    /// Fills `dst` with the next stdin bytes (`in`, or `rep insb`), `EOF_BYTE` after end of file.
    /// Any other VM may take bytes in between: each byte goes to whichever VM asks first.
    /// Before it has to wait for stdin, all output so far (every VM's) is flushed. If the wait
    /// is interrupted by a signal and `stop()` says this VM is being stopped, returns
    /// `ErrorKind::Interrupted`.
    pub fn read(&mut self, dst: &mut [u8], stop: &dyn Fn() -> bool) -> io::Result<()> {
        // With several VMs, an unfinished line is written when its VM reads input (docs/REFERENCE.md §3);
        // with one, the bytes join the console's buffer, flushed below before any wait.
        self.hand_over(stop)?;
        let mut input = lock(&self.console.input);
        for byte in dst {
            if input.pos == input.buf.len() && !input.eof {
                self.console.flush(stop)?;
                input.fill(stop)?;
            }
            *byte = match input.buf.get(input.pos) {
                Some(&b) => {
                    input.pos += 1;
                    b
                }
                None => EOF_BYTE,
            };
        }
        Ok(())
    }
}

impl<R: Read> Input<R> {
    /// One `read(2)` of stdin into the (empty) input buffer.
    fn fill(&mut self, stop: &dyn Fn() -> bool) -> io::Result<()> {
        self.buf.resize(INPUT_CHUNK, 0);
        self.pos = 0;
        let n = loop {
            // A stop may have come while this thread waited for something else (e.g. for the
            // stdin lock): look before waiting. The wait itself (signals.rs, `Interruptible`)
            // ends at any signal for this VM, pending before it began or arriving during it.
            if stop() {
                self.buf.clear();
                return Err(io::ErrorKind::Interrupted.into());
            }
            match self.r.read(&mut self.buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // An unreadable stdin (closed, a directory...) reads as end of file.
                Err(_) => break 0,
            }
        };
        self.buf.truncate(n);
        self.eof = n == 0;
        Ok(())
    }
}

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

/// The ports of one VM: its serial port on the shared console, its file port, and the unknown
/// ports it warned about.
#[derive(Debug)]
pub struct Ports {
    /// `vmN (image)`, for warnings.
    label: String,
    pub serial: Serial<Interruptible, Interruptible>,
    /// Port 0x0278: the guest's files.
    files: FileDevice,
    /// With `--trace`: the file requests completed during the last exit, for the trace.
    completed: Vec<Completed>,
    /// The unknown ports it warned about.
    warned: UnknownPorts,
}

impl Ports {
    pub fn new(label: &str, serial: Serial<Interruptible, Interruptible>, files: FileDevice) -> Ports {
        Ports { label: label.to_owned(), serial, files, completed: Vec::new(), warned: UnknownPorts::default() }
    }

    /// `out` on the file port: `data` holds `data.len() / size` accesses of `size` bytes. `ram`:
    /// guest RAM, for the bulk commands.
    pub fn file_out(&mut self, size: u8, data: &[u8], ram: &BulkRam<'_>) -> Result<(), IoError> {
        for access in data.chunks(usize::from(size)) {
            self.files.out(access, ram);
            self.completed.extend(self.files.take_completed());
        }
        Ok(())
    }

    /// `in` on the file port: the answers, one access of `size` bytes at a time.
    pub fn file_in(&mut self, size: u8, data: &mut [u8]) -> Result<(), IoError> {
        for access in data.chunks_mut(usize::from(size)) {
            self.files.inp(access);
        }
        Ok(())
    }

    /// With `--trace`, the file requests the last exit completed.
    pub fn completed(&mut self) -> std::vec::Drain<'_, Completed> {
        self.completed.drain(..)
    }

    /// Bytes the guest wrote to the serial port (`out`, `rep outsb`, or the coalesced ring).
    pub fn serial_out(&mut self, size: u8, data: &[u8], stop: &dyn Fn() -> bool) -> Result<(), IoError> {
        if size != 1 {
            return Err(IoError::Guest(GuestError::WideSerial { size: size.into(), out: true }));
        }
        self.serial.write(data, stop).map_err(output_error)
    }

    /// Bytes the guest reads from the serial port (`in`, `rep insb`): the next stdin bytes,
    /// [`EOF_BYTE`] after end of file.
    pub fn serial_in(&mut self, size: u8, data: &mut [u8], stop: &dyn Fn() -> bool) -> Result<(), IoError> {
        if size != 1 {
            return Err(IoError::Guest(GuestError::WideSerial { size: size.into(), out: false }));
        }
        self.serial.read(data, stop).map_err(output_error)
    }

    /// The VM has ended (however it ended): its files are closed, its output goes to the
    /// console and out.
    pub fn flush(&mut self, stop: &dyn Fn() -> bool) -> Result<(), IoError> {
        self.files.close_all();
        self.serial.flush(stop).map_err(output_error)
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
}

/// Guest RAM for the file port's bulk commands, which move whole buffers between a file and
/// guest RAM: through a buffer, since no slice into guest RAM may exist (the guest and the
/// kernel write it behind Rust's back).
#[derive(Debug)]
pub struct BulkRam<'a> {
    pub ram: &'a GuestRam,
    pub size: u64,
}

/// How much a bulk command moves per copy.
const BULK_CHUNK: usize = 64 * 1024;

impl fileio::GuestRam for BulkRam<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_from_file(&self, file: &File, gpa: u64, len: usize) -> io::Result<usize> {
        let mut buf = vec![0u8; len.min(BULK_CHUNK)];
        let mut done = 0;
        while done < len {
            let want = (len - done).min(BULK_CHUNK);
            let got = match fileio::read_up_to(file, &mut buf[..want]) {
                Ok(got) => got,
                Err(_) if done > 0 => break, // the error shows again next time
                Err(e) => return Err(e),
            };
            self.ram.write(gpa + done as u64, &buf[..got])?;
            done += got;
            if got < want {
                break; // end of file
            }
        }
        Ok(done)
    }

    fn write_to_file(&self, file: &File, gpa: u64, len: usize) -> Result<(), ShortWrite> {
        let mut buf = vec![0u8; len.min(BULK_CHUNK)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(BULK_CHUNK);
            self.ram.read(gpa + done as u64, &mut buf[..n]).map_err(|error| ShortWrite { written: done, error })?;
            fileio::write_counted(file, &buf[..n])
                .map_err(|short| ShortWrite { written: done + short.written, error: short.error })?;
            done += n;
        }
        Ok(())
    }
}

/// A failed write of guest output (or a stop that interrupted it, or a read of stdin).
fn output_error(e: io::Error) -> IoError {
    match e.kind() {
        io::ErrorKind::Interrupted => IoError::Stopped,
        _ => IoError::Host(format!("cannot write guest output to stdout: {e}")),
    }
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

    type TestConsole = Console<Chunks, &'static [u8]>;

    fn console(input: &'static [u8], line_buffered: bool) -> Arc<TestConsole> {
        Arc::new(Console::new(Chunks::default(), input, line_buffered))
    }

    fn written(c: &TestConsole) -> Vec<Vec<u8>> {
        lock(&c.out).w.0.iter().filter(|c| !c.is_empty()).cloned().collect()
    }

    fn all_written(c: &TestConsole) -> Vec<u8> {
        written(c).concat()
    }

    fn never() -> bool {
        false
    }

    #[test]
    fn one_vm_block_buffered_output_is_written_in_blocks_and_at_flush() {
        let c = console(b"", false);
        let mut s = Serial::new(Arc::clone(&c), None);
        s.write(b"hello\n", &never).unwrap();
        assert!(written(&c).is_empty(), "nothing written before a block is full");
        s.write(&vec![b'x'; BLOCK], &never).unwrap();
        assert_eq!(written(&c).len(), 1);
        s.write(b"tail", &never).unwrap();
        s.flush(&never).unwrap();
        assert_eq!(written(&c)[1], b"tail", "no prefix, no newline added with one VM");
    }

    #[test]
    fn one_vm_line_buffered_output_is_written_at_each_newline() {
        let c = console(b"", true);
        let mut s = Serial::new(Arc::clone(&c), None);
        s.write(b"abc", &never).unwrap();
        assert!(written(&c).is_empty());
        s.write(b"\n", &never).unwrap();
        assert_eq!(written(&c), vec![b"abc\n".to_vec()]);
    }

    #[test]
    fn several_vms_write_whole_prefixed_lines() {
        let c = console(b"", false);
        let mut a = Serial::new(Arc::clone(&c), Some("[vm0] ".into()));
        let mut b = Serial::new(Arc::clone(&c), Some("[vm1] ".into()));
        a.write(b"hel", &never).unwrap();
        b.write(b"wor", &never).unwrap();
        a.write(b"lo\nsecond", &never).unwrap();
        b.write(b"ld\n", &never).unwrap();
        a.write(b" line\n", &never).unwrap();
        b.write(b"unfinished", &never).unwrap();
        b.flush(&never).unwrap();
        a.flush(&never).unwrap();
        assert_eq!(
            String::from_utf8(all_written(&c)).unwrap(),
            "[vm0] hello\n[vm1] world\n[vm0] second line\n[vm1] unfinished\n"
        );
    }

    #[test]
    fn an_overlong_line_is_cut_into_pieces_each_with_the_prefix() {
        let c = console(b"", false);
        let mut s = Serial::new(Arc::clone(&c), Some("[vm0] ".into()));
        s.write(&vec![b'y'; MAX_LINE + 10], &never).unwrap();
        s.flush(&never).unwrap();
        let out = all_written(&c);
        let lines: Vec<&[u8]> = out.split_inclusive(|&b| b == b'\n').collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), 6 + MAX_LINE + 1);
        assert_eq!(lines[1], &b"[vm0] yyyyyyyyyy\n"[..]);
    }

    #[test]
    fn input_bytes_then_ff_at_eof_and_output_flushed_before_waiting() {
        let c = console(b"ab", false);
        let mut s = Serial::new(Arc::clone(&c), None);
        s.write(b"prompt> ", &never).unwrap();
        let mut one = [0u8; 1];
        s.read(&mut one, &never).unwrap();
        assert_eq!(one, *b"a");
        assert_eq!(written(&c), vec![b"prompt> ".to_vec()], "flushed before reading stdin");
        let mut three = [0u8; 3];
        s.read(&mut three, &never).unwrap();
        assert_eq!(three, [b'b', 0xff, 0xff]);
        s.read(&mut one, &never).unwrap();
        assert_eq!(one, [0xff]);
    }

    #[test]
    fn several_vms_share_stdin_and_an_unfinished_line_is_written_at_input() {
        let c = console(b"xyz", false);
        let mut a = Serial::new(Arc::clone(&c), Some("[vm0] ".into()));
        let mut b = Serial::new(Arc::clone(&c), Some("[vm1] ".into()));
        a.write(b"name? ", &never).unwrap();
        let mut one = [0u8; 1];
        a.read(&mut one, &never).unwrap();
        assert_eq!(one, *b"x");
        assert_eq!(all_written(&c), b"[vm0] name? \n", "unfinished line written, newline added");
        b.read(&mut one, &never).unwrap();
        assert_eq!(one, *b"y", "the next byte goes to whichever VM asks");
        a.read(&mut one, &never).unwrap();
        assert_eq!(one, *b"z");
        b.read(&mut one, &never).unwrap();
        assert_eq!(one, [EOF_BYTE]);
    }

    /// Exiting at once: what the console holds goes out as far as stdout takes it without
    /// waiting, and nothing waits for a lock another VM holds.
    #[test]
    fn flushing_without_waiting_writes_what_stdout_takes_and_never_blocks() {
        use std::io::Read as _;
        use std::os::unix::net::UnixStream;
        let (w, mut r) = UnixStream::pair().unwrap();
        let c = Console::new(w.try_clone().unwrap(), &b""[..], false);
        let mut s = Serial::new(Arc::new(c), Some("[vm0] ".into()));
        s.write(b"printed\n", &never).unwrap();
        let c = Arc::clone(&s.console);
        c.flush_without_waiting();
        let mut got = [0u8; 14];
        r.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"[vm0] printed\n");
        // A stdout that takes nothing more: the call returns, the bytes stay where they are.
        w.set_nonblocking(true).unwrap();
        // A socket buffer holds a few MiB at most: a socket that takes 40 MiB and more fails the
        // test instead of filling memory for ever.
        for writes in 0.. {
            assert!(writes < 10_000, "a non-blocking socket took 40 MiB and takes more");
            if (&w).write(&[0u8; 4096]).is_err() {
                break;
            }
        }
        s.write(b"stuck\n", &never).unwrap();
        c.flush_without_waiting();
        assert_eq!(lock(&c.out).buf.len(), 12, "kept, not written, not lost");
        // Another VM holds the lock (blocked on stdout): not waited for.
        let held = lock(&c.out);
        c.flush_without_waiting();
        drop(held);
    }

    #[test]
    fn a_stop_request_is_seen_before_blocking_on_stdin() {
        let c = console(b"data", false);
        let mut s = Serial::new(Arc::clone(&c), Some("[vm0] ".into()));
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
                1 => Ok(1.min(b.len())), // part of it got through
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
        let c = Arc::new(Console::new(Blocked::default(), &b""[..], true));
        let mut s = Serial::new(Arc::clone(&c), Some("[vm0] ".into()));
        assert!(s.write(b"line\n", &|| true).is_err(), "a stopped VM does not wait for stdout");
        s.flush(&|| true).unwrap(); // the lost bytes are gone: nothing left to write
    }
}
