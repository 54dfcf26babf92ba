//! `--trace`: one line per VM exit on stderr, with RIP (and its symbol, when the image's ELF
//! gives one; in the guest library, `hv.c` and `hv.h`, also the first caller outside it, found
//! with the crash report's backtrace) and, for I/O, the first bytes moved, in hex and as
//! escaped text. The version makes a [`Trace`] only when
//! `--trace` is on, and calls it after handling each exit.

use std::fmt::Display;
use std::io;
use std::sync::Arc;

use crate::crash::{self, backtrace};
use crate::symbols::SymbolFile;
use crate::{Exit, Target};

/// The most bytes of an I/O exit a trace line shows.
const MAX_DATA: usize = 8;

/// The tracer of one VM.
#[derive(Debug)]
pub struct Trace {
    /// `vmN (image)`.
    label: String,
    /// To name RIPs (`rip=0x1e in guest_main+0xe (crash.c:9)`): read at the first line.
    symbols: Arc<SymbolFile>,
}

impl Trace {
    /// The tracer of the VM called `label` (`vmN (image)`), running the image of `symbols`.
    pub fn new(label: &str, symbols: Arc<SymbolFile>) -> Trace {
        Trace { label: label.to_owned(), symbols }
    }

    /// The guest's RIP, with its symbol when known, and, when RIP is in the guest library
    /// (`hv.c`, `hv.h`), the first caller outside it: `0xce in puts_e9+0xe (hv.c:46) via
    /// guest_main+0x13 (hello.c:7)`.
    fn rip(&self, t: &dyn Target) -> String {
        let Ok(regs) = t.regs() else { return "?".to_owned() };
        let symbols = self.symbols.get();
        let rip = crash::address(regs.rip, symbols);
        let via = symbols.zip(t.system_regs().ok()).and_then(|(symbols, sregs)| {
            let read = |addr: u64, buf: &mut [u8]| t.read_phys(addr, buf).is_ok();
            let stack = backtrace::Stack { regs: &regs, cr3: sregs.cr3, read: &read };
            backtrace::first_outside_library(&stack, symbols)
        });
        match via {
            Some(caller) => format!("{rip} via {caller}"),
            None => rip,
        }
    }

    /// The line for exit number `n`, after the exit was handled: `exit` as the version got it
    /// from `KVM_RUN`, and for an I/O exit `data`, the first bytes it moved (at most 8 are
    /// shown; an `in` shows its answer).
    pub fn exit(&self, t: &dyn Target, n: u64, exit: Result<&Exit, &io::Error>, data: &[u8]) {
        diag!("{}", self.exit_line(t, n, exit, data));
    }

    /// The text of [`Trace::exit`].
    pub(crate) fn exit_line(&self, t: &dyn Target, n: u64, exit: Result<&Exit, &io::Error>, data: &[u8]) -> String {
        let label = &self.label;
        let rip = self.rip(t);
        match exit {
            Ok(Exit::Io { out, port, size, count }) => {
                let shown = &data[..data.len().min(MAX_DATA)];
                let hex = shown.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
                // The same bytes as text, quoted as version C quotes a guest's file names (printable
                // ASCII only): `data=[48 0a] "H\n"`.
                let text = if shown.is_empty() { String::new() } else { format!(" \"{}\"", shown.escape_ascii()) };
                format!(
                    "trace: {label} exit {n}: io {} port={port:#x} size={size} count={count} data=[{hex}]{text} rip={rip}",
                    if *out { "out" } else { "in" },
                )
            }
            Ok(exit) => format!("trace: {label} exit {n}: {} rip={rip}", name(exit)),
            Err(e) => format!("trace: {label} exit {n}: KVM_RUN returned an error: {e} rip={rip}"),
        }
    }

    /// A file request the guest completed (version C's file port), in words.
    pub fn file(&self, t: &dyn Target, request: &dyn Display) {
        diag!("trace: {} {request} rip={}", self.label, self.rip(t));
    }
}

/// A non-I/O exit in a few words, addresses in hex.
fn name(exit: &Exit) -> String {
    match *exit {
        Exit::Hlt => "hlt".to_owned(),
        Exit::Mmio { phys_addr, len, is_write } => {
            format!("mmio {} of {len} at {phys_addr:#x}", if is_write { "write" } else { "read" })
        }
        Exit::Shutdown => "shutdown (triple fault)".to_owned(),
        Exit::FailEntry { reason, cpu } => format!("fail entry, reason {reason:#x} on cpu {cpu}"),
        Exit::InternalError { suberror } => format!("internal error, suberror {suberror}"),
        Exit::Debug { exception, pc, dr6 } => format!("debug, exception {exception} at {pc:#x}, dr6 {dr6:#x}"),
        Exit::Intr => "interrupted (a signal for this VM)".to_owned(),
        Exit::BadIo { size, count, data_offset } => {
            format!("malformed io, size {size} count {count} data offset {data_offset:#x}")
        }
        Exit::Unknown(reason) => format!("unknown exit reason {reason}"),
        Exit::Io { port, .. } => format!("io port {port:#x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GuestDebug, Regs, SystemRegs};
    use std::path::PathBuf;

    /// Registers only: RIP where the test puts it, and a refusal for everything else.
    struct AtRip(Option<u64>);

    impl Target for AtRip {
        fn regs(&self) -> io::Result<Regs> {
            let rip = self.0.ok_or(io::ErrorKind::Other)?;
            Ok(Regs { rip, ..Regs::default() })
        }
        fn set_regs(&self, _: &Regs) -> io::Result<()> {
            Err(io::ErrorKind::Unsupported.into())
        }
        fn system_regs(&self) -> io::Result<SystemRegs> {
            Err(io::ErrorKind::Unsupported.into())
        }
        fn set_system_regs(&self, _: &SystemRegs) -> io::Result<()> {
            Err(io::ErrorKind::Unsupported.into())
        }
        fn read_phys(&self, _: u64, _: &mut [u8]) -> io::Result<()> {
            Err(io::ErrorKind::Unsupported.into())
        }
        fn write_phys(&self, _: u64, _: &[u8]) -> io::Result<()> {
            Err(io::ErrorKind::Unsupported.into())
        }
        fn set_debug(&self, _: &GuestDebug) -> io::Result<()> {
            Err(io::ErrorKind::Unsupported.into())
        }
    }

    fn guest(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest").join(name)
    }

    /// A tracer of the built guest `guest.img` (from hello.c), with its ELF beside it.
    fn hello() -> (Trace, Arc<SymbolFile>) {
        let img = guest("guest.img");
        let image = std::fs::read(&img).unwrap_or_else(|e| panic!("{}: {e}: build the guests first", img.display()));
        let symbols = Arc::new(SymbolFile::new(&img, image.into()));
        (Trace::new("vm0 (guest.img)", Arc::clone(&symbols)), symbols)
    }

    #[test]
    fn an_io_exit_shows_its_port_bytes_and_named_rip() {
        fn send<T: Send>() {}
        send::<Trace>();
        let (trace, symbols) = hello();
        assert!(!symbols.is_read(), "nothing read before the first line");
        let out = Exit::Io { out: true, port: 0xe9, size: 1, count: 1 };
        let line = trace.exit_line(&AtRip(Some(0x15)), 1, Ok(&out), &[0x48]);
        assert!(symbols.is_read(), "read for the first line");
        let rip = crash::address(0x15, symbols.get());
        assert!(rip.starts_with("0x15 in guest_main+0x5 (hello.c:") && rip.ends_with(')'), "{rip}");
        assert_eq!(
            line,
            format!("trace: vm0 (guest.img) exit 1: io out port=0xe9 size=1 count=1 data=[48] \"H\" rip={rip}")
        );
        // An `in` of 4 bytes 3 times: at most 8 bytes shown.
        let read = Exit::Io { out: false, port: 0x278, size: 4, count: 3 };
        let line = trace.exit_line(&AtRip(Some(0x100_000)), 7, Ok(&read), &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(
            line,
            "trace: vm0 (guest.img) exit 7: io in port=0x278 size=4 count=3 data=[01 02 03 04 05 06 07 08] \
             \"\\x01\\x02\\x03\\x04\\x05\\x06\\x07\\x08\" rip=0x100000"
        );
        let line = trace.exit_line(&AtRip(None), 8, Ok(&read), &[]);
        assert_eq!(line, "trace: vm0 (guest.img) exit 8: io in port=0x278 size=4 count=3 data=[] rip=?");
        // Serial bytes read as text; a control byte cannot reach the terminal.
        let line = trace.exit_line(&AtRip(None), 9, Ok(&out), b"Hel\n\x1b[2J");
        assert_eq!(
            line,
            "trace: vm0 (guest.img) exit 9: io out port=0xe9 size=1 count=1 data=[48 65 6c 0a 1b 5b 32 4a] \
             \"Hel\\n\\x1b[2J\" rip=?"
        );
    }

    #[test]
    fn other_exits_and_errors_in_words() {
        let symbols = Arc::new(SymbolFile::new(&guest("no_such_guest.img"), Arc::from(&[0xf4u8][..])));
        let trace = Trace::new("vm1 (x.img)", symbols);
        let t = AtRip(Some(0x10));
        let cases = [
            (Exit::Hlt, "hlt"),
            (Exit::Mmio { phys_addr: 0x1000_0000, len: 4, is_write: true }, "mmio write of 4 at 0x10000000"),
            (Exit::Mmio { phys_addr: 0x20_0000, len: 1, is_write: false }, "mmio read of 1 at 0x200000"),
            (Exit::Shutdown, "shutdown (triple fault)"),
            (Exit::FailEntry { reason: 0x21, cpu: 1 }, "fail entry, reason 0x21 on cpu 1"),
            (Exit::InternalError { suberror: 1 }, "internal error, suberror 1"),
            (Exit::Debug { exception: 1, pc: 0x30, dr6: 0xffff_4ff0 }, "debug, exception 1 at 0x30, dr6 0xffff4ff0"),
            (Exit::Intr, "interrupted (a signal for this VM)"),
            (Exit::BadIo { size: 3, count: 1, data_offset: 0x1000 }, "malformed io, size 3 count 1 data offset 0x1000"),
            (Exit::Unknown(99), "unknown exit reason 99"),
        ];
        for (exit, words) in cases {
            let line = trace.exit_line(&t, 3, Ok(&exit), &[1, 2]);
            assert_eq!(line, format!("trace: vm1 (x.img) exit 3: {words} rip=0x10"), "{exit:?}");
        }
        let e = io::Error::from_raw_os_error(14);
        let line = trace.exit_line(&t, 4, Err(&e), &[]);
        assert_eq!(line, format!("trace: vm1 (x.img) exit 4: KVM_RUN returned an error: {e} rip=0x10"));
    }
}
