//! The file device's unit tests: the protocol request by request, its refusals and their
//! reasons, its events; `model.rs` checks random request sequences against a model.

mod model;

use super::ShortWrite;
use super::completed::{GuestName, Why};
use super::requests::{read_up_to, take_back, write_counted};
use super::*;
use crate::sandbox::{OpenError, SharedFiles};
use crate::test_dir::TempDir;
use std::cell::RefCell;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

const RAM_SIZE: usize = 64 * 1024;

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
    /// With tracing on: the text of every event, taken after each `out` as the run loop does.
    events: Vec<String>,
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
            events: Vec::new(),
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
        if let Some(event) = self.dev.take_completed() {
            self.events.push(event.to_string());
        }
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
    /// Makes every access of `script`, in order.
    fn play(&mut self, script: &[Access]) {
        for access in script {
            match *access {
                Access::Out1(b) => self.outb(b),
                Access::Out4(d) => self.outd(d),
                Access::In1 => {
                    self.inb();
                }
            }
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
    // 256 bytes come as 127 + 127 + 2, then end of file. A read that never gets there fails
    // after those 4 instead of looping on (a broken read once looped here for 15 minutes,
    // growing `back` to 1 GB).
    for reads in 1.. {
        assert!(reads <= 4, "no end of file after {} bytes in {} reads", back.len(), reads - 1);
        match vm.read(1, 255) {
            Some(chunk) if !chunk.is_empty() => back.extend(chunk),
            _ => break,
        }
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

/// A script of accesses that leads into each state of the device, with that state (vfd 0 =
/// "r" open for read, vfd 1 = "w" open for write).
fn every_state() -> Vec<(Vec<Access>, State)> {
    use Access::*;
    let w = FLAGS_WRITE;
    vec![
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
    ]
}

/// The accesses of a wrong size in `state`: `(true, bytes, 0)` for an `out` of those bytes,
/// `(false, [], n)` for an `in` of `n` bytes.
fn wrong_accesses(state: &State) -> Vec<(bool, &'static [u8], usize)> {
    let wrong_outs: [&'static [u8]; 5] = [&[0x01, 0x00], &[0x01, 0, 0, 0], &[0x01], &[1, 2, 3], &[]];
    let dword_state = matches!(state, State::BulkWantAddress { .. } | State::BulkWantLength { .. });
    let byte_answer =
        matches!(state, State::SendByte { .. } | State::ReadSendCount { .. } | State::ReadSendByte { .. });
    let dword_answer = matches!(state, State::SendDword { .. });
    let outs = wrong_outs.into_iter().filter(|o| match o.len() {
        1 => dword_state,
        4 => !dword_state,
        _ => true,
    });
    let ins = [1usize, 2, 4, 3].into_iter().filter(|&n| match n {
        1 => !byte_answer,
        4 => !dword_answer,
        _ => true,
    });
    outs.map(|o| (true, o, 0)).chain(ins.map(|n| (false, &[][..], n))).collect()
}

#[test]
fn wrong_size_accesses_in_every_state() {
    let tmp = TempDir::new("wrongsize");
    for (script, expected) in &every_state() {
        for (is_out, out, in_len) in wrong_accesses(expected) {
            let what = format!(
                "{expected:?} then {}",
                if is_out { format!("out {out:?}") } else { format!("in of {in_len}") }
            );
            let _ = fs::remove_dir_all(tmp.0.join("guest_vm0_files"));
            let mut vm = Vm::with(&tmp, &[]);
            vm.put_private("r", b"0123456789");
            assert_eq!(vm.open(b"r", FLAGS_READ), 0);
            assert_eq!(vm.open(b"w", FLAGS_WRITE), 1);
            vm.play(script);
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
    assert_eq!(vm.dev.try_write(3, 150).unwrap_err().to_string(), "count above 127");
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

/// What `every_completed_request_is_one_event_in_words` makes the device say, request by
/// request.
const EVENTS_IN_WORDS: [&str; 21] = [
    "file open \"shared.txt\" for read -> fd 0",
    "file read fd 0, 5 bytes -> 5",
    "file read fd 0, 1 byte -> 1",
    "file read fd 0, 127 bytes -> 7",
    "file read fd 0, 127 bytes -> 0 (end of file)",
    "file read fd 0, 0 bytes -> 0",
    "file open \"notes.txt\" for write -> fd 1",
    "file write fd 1, 3 bytes -> 3",
    "file write fd 1, 150 bytes -> -1 (count above 127)",
    "file write fd 1, 0 bytes -> 0",
    "file write bulk fd 1, 4096 bytes at 0x2000 -> 4096",
    "file read bulk fd 0, 100 bytes at 0x3000 -> 0 (end of file)",
    "file read bulk fd 0, 2 bytes at 0xffff -> -1 (the range ends at 0x10001, past the end of guest RAM (0x10000 bytes))",
    "file close fd 1 -> 0",
    "file close fd 1 -> -1 (not open)",
    "file open \"a/b\" for read -> -1 (refused, '/' in a name)",
    "file open \"x\\x00\\\"\\xff\" with flags 7 -> -1 (flags are neither 0 (read) nor 1 (write))",
    "file open \"\" for write -> -1 (refused, empty name)",
    "file command 0x07 -> -1 (unknown command)",
    "file read fd 5, 10 bytes -> -1 (not open)",
    "file write fd 0, 2 bytes -> -1 (opened for read)",
];

#[test]
fn every_completed_request_is_one_event_in_words() {
    let tmp = TempDir::new("events");
    let mut vm = Vm::with(&tmp, &[("shared.txt", b"Hello, shared")]);
    vm.dev.trace_requests(true);
    let size = u32::try_from(RAM_SIZE).unwrap();
    assert_eq!(vm.open(b"shared.txt", FLAGS_READ), 0);
    assert_eq!(vm.read(0, 5).unwrap(), b"Hello");
    assert_eq!(vm.read(0, 1).unwrap(), b",");
    assert_eq!(vm.read(0, 127).unwrap(), b" shared");
    assert_eq!(vm.read(0, 127).unwrap(), b"");
    assert_eq!(vm.read(0, 0).unwrap(), b"");
    assert_eq!(vm.open(b"notes.txt", FLAGS_WRITE), 1);
    assert_eq!(vm.write(1, b"abc"), 3);
    assert_eq!(vm.write(1, &[b'x'; 150]), ERROR);
    assert_eq!(vm.write(1, b""), 0);
    assert_eq!(vm.bulk(CMD_WRITE_BULK, 1, 0x2000, 4096), 4096);
    assert_eq!(vm.bulk(CMD_READ_BULK, 0, 0x3000, 100), 0);
    assert_eq!(vm.bulk(CMD_READ_BULK, 0, size - 1, 2), ERROR_DWORD);
    assert_eq!(vm.close(1), 0);
    assert_eq!(vm.close(1), ERROR);
    assert_eq!(vm.open(b"a/b", FLAGS_READ), ERROR);
    assert_eq!(vm.open(b"x\0\"\xff", 7), ERROR);
    vm.send(&[CMD_OPEN, FLAGS_WRITE, 0]);
    assert_eq!(vm.inb(), ERROR);
    vm.outb(0x07);
    assert_eq!(vm.inb(), ERROR);
    assert_eq!(vm.read(5, 10), None);
    assert_eq!(vm.write(0, b"no"), ERROR);
    assert_eq!(vm.events, EVENTS_IN_WORDS);
    // A request cut short completes nothing, and neither does reading its answer.
    vm.events.clear();
    vm.send(&[CMD_OPEN, FLAGS_WRITE, 3, b'a']);
    assert_eq!(vm.inb(), 0xFF);
    vm.send(&[CMD_READ_BULK, 0, 0x10]);
    vm.out(&[CMD_CLOSE, 0]);
    assert!(vm.events.is_empty(), "{:?}", vm.events);
    vm.assert_in_sync();
    assert_eq!(vm.events.len(), 7, "{:?}", vm.events);
}

#[test]
fn without_trace_no_event_is_kept() {
    let tmp = TempDir::new("noevents");
    let mut vm = Vm::with(&tmp, &[]);
    assert_eq!(vm.open(b"f", FLAGS_WRITE), 0);
    assert_eq!(vm.write(0, b"x"), 1);
    assert_eq!(vm.close(0), 0);
    vm.outb(0x07);
    assert!(vm.events.is_empty() && vm.dev.completed.is_none(), "{:?}", vm.events);
    // Switched on, then off: an event not taken yet is dropped.
    vm.dev.trace_requests(true);
    vm.dev.out(&[CMD_CLOSE], &vm.ram);
    vm.dev.out(&[3], &vm.ram);
    assert!(vm.dev.completed.is_some());
    vm.dev.trace_requests(false);
    assert!(vm.dev.take_completed().is_none());
    vm.assert_in_sync();
    assert!(vm.events.is_empty(), "{:?}", vm.events);
}

#[test]
fn an_event_names_what_the_guest_sent() {
    let long = [b'n'; 300];
    assert_eq!(GuestName::new(&long).as_bytes(), &long[..255]);
    assert_eq!(format!("{:?}", GuestName::new(b"a\"\0")), "\"a\\\"\\x00\"");
    let event = Completed::Bulk { op: Bulk::Read, vfd: 2, address: 0x100000, length: 1, answer: Ok(1) };
    assert_eq!(event.to_string(), "file read bulk fd 2, 1 byte at 0x100000 -> 1");
    let event = Completed::Write { vfd: 3, count: 200, answer: Err(Why::CountTooBig) };
    assert_eq!(event.to_string(), "file write fd 3, 200 bytes -> -1 (count above 127)");
    let hard_links = Why::Open(OpenError::HardLinks(2));
    let event = Completed::Open { name: GuestName::new(b"h"), flags: FLAGS_READ, answer: Err(hard_links) };
    assert_eq!(event.to_string(), format!("file open \"h\" for read -> -1 ({})", OpenError::HardLinks(2)));
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
