//! The protocol state of one debugging session and the packet dispatcher ([`Session::handle`]),
//! over [`Target`] so that unit tests run it on a fake guest. Never panics,
//! whatever the packet: a malformed one gets `E01` or the empty reply.

use super::Stop;
use super::breakpoints::{Breakpoints, DEBUG_REGS, MAX_EMULATED_WATCH, Slot, Watch, WatchKind, fits_register};
use super::monitor;
use super::paging::{read_virt, write_virt};
use super::protocol::{PACKET_SIZE, from_hex, parse_addr_len, parse_hex, split, to_hex};
use super::registers::{self, FIRST_SYSTEM_REG, NUM_REGS};
use super::stepping::{Running, Said};
use crate::{GuestDebug, MemoryMap, SystemRegs, Target};

/// The most bytes one `m` reply carries (two hex digits each, inside `PACKET_SIZE`).
const MAX_READ: usize = PACKET_SIZE / 2 - 16;
/// What the stub offers gdb (`qSupported`): no-ack mode and the thread list in one packet cut
/// round trips from every step.
pub const SUPPORTED: &str = "PacketSize=4000;qXfer:features:read+;qXfer:threads:read+;QStartNoAckMode+";
/// The thread list (`qXfer:threads:read`): the one vCPU.
const THREADS: &str = "<?xml version=\"1.0\"?>\n<threads>\n<thread id=\"1\"/>\n</threads>\n";
/// The error reply for unreadable memory and bad arguments.
pub const E_BAD: &str = "E01";
/// The error reply when there is no room for one more watchpoint.
pub const E_FULL: &str = "E0e";
/// The error reply when KVM refused a register write.
pub const E_KVM: &str = "E05";

/// What the dispatcher decided for one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Reply(Vec<u8>),
    /// The answer to `monitor`: sent as console output (`O` packets), then `OK`.
    Monitor(String),
    /// `QStartNoAckMode`: reply `OK`, then no `+`/`-` any more.
    NoAck,
    /// Resume the guest (`step`: for one instruction). No reply now: the next stop replies.
    Resume {
        step: bool,
    },
    /// `k`: end the VM as failed.
    Kill,
    /// `D`: reply OK, take every breakpoint out, let the guest run on.
    Detach,
}

fn reply(text: &str) -> Action {
    Action::Reply(text.as_bytes().to_vec())
}

fn ok_or_bad(ok: Option<()>) -> Action {
    reply(if ok.is_some() { "OK" } else { E_BAD })
}

/// The protocol state of one debugging session, apart from the connection.
#[derive(Debug)]
pub struct Session {
    pub points: Breakpoints,
    /// Whether `Z3`/`Z4` can be served (the host fires data breakpoints).
    pub data_watch: bool,
    /// While the guest runs: what it was resumed for.
    pub(super) running: Option<Running>,
    /// What DR0–DR3 hold now (to name a watchpoint hit in DR6).
    pub(super) slots: [Option<Slot>; DEBUG_REGS],
    /// The last [`Target::set_debug`] argument (it is set again only when it changes).
    pub(super) programmed: Option<GuestDebug>,
    /// Which one-time notices were given.
    pub(super) said: Said,
    /// Lines for the hypervisor's stderr, taken by the caller.
    pub notes: Vec<String>,
    /// The reply to `?`: the last stop.
    last_stop: Vec<u8>,
    xml: String,
    map: MemoryMap,
}

impl Session {
    /// A session with nothing inserted yet; `map` is for `monitor mem`.
    pub fn new(data_watch: bool, map: MemoryMap) -> Session {
        Session {
            points: Breakpoints::new(data_watch),
            data_watch,
            running: None,
            slots: [None; DEBUG_REGS],
            programmed: None,
            said: Said::default(),
            notes: Vec::new(),
            last_stop: b"S05".to_vec(),
            xml: registers::target_xml(),
            map,
        }
    }

    /// The stop reply for `why` (it becomes the answer to `?`); the guest no longer runs.
    pub fn stop_reply(&mut self, why: Stop) -> Vec<u8> {
        self.running = None;
        let text = match why {
            Stop::Start => "T05thread:01;".to_owned(),
            Stop::Interrupt => "T02thread:01;".to_owned(),
            Stop::Crash => "T0bthread:01;".to_owned(),
            Stop::Trap { dr6, .. } => match self.dr_hit(dr6) {
                Some(Slot::Watch(w)) => watch_reply(&w),
                _ => "T05thread:01;".to_owned(),
            },
        };
        self.last_stop = text.into_bytes();
        self.last_stop.clone()
    }

    /// The stop reply for a watchpoint the stub saw change.
    pub(super) fn watch_stop(&mut self, w: &Watch) -> Vec<u8> {
        self.running = None;
        self.last_stop = watch_reply(w).into_bytes();
        self.last_stop.clone()
    }

    /// Which debug register DR6 says fired (B0–B3), and what it holds.
    pub(super) fn dr_hit(&self, dr6: u64) -> Option<Slot> {
        (0..DEBUG_REGS).filter(|i| dr6 & (1 << i) != 0).find_map(|i| self.slots[i])
    }

    /// Takes every breakpoint and watchpoint out (detach).
    pub fn forget_breakpoints(&mut self) {
        self.points.clear();
        self.running = None;
    }

    /// Answers one packet.
    pub fn handle<T: Target + ?Sized>(&mut self, p: &[u8], t: &T) -> Action {
        let Some((&first, rest)) = p.split_first() else { return reply("") };
        match first {
            b'?' => Action::Reply(self.last_stop.clone()),
            b'g' => read_all_registers(t),
            b'G' => self.write_all_registers(t, rest),
            b'p' => read_register(t, rest),
            b'P' => self.write_register(t, rest),
            b'm' => read_memory(t, rest),
            b'M' => ok_or_bad(write_memory(t, rest, true)),
            b'X' => ok_or_bad(write_memory(t, rest, false)),
            // c [addr], s [addr], C sig[;addr], S sig[;addr]: a resume address is not supported.
            b'c' | b'C' => Action::Resume { step: false },
            b's' | b'S' => Action::Resume { step: true },
            b'Z' | b'z' => self.breakpoint(first == b'Z', rest),
            b'D' => Action::Detach,
            b'k' => Action::Kill,
            b'H' | b'T' => reply("OK"), // one thread, and it is alive
            b'q' => self.query(rest, t),
            b'Q' if rest == b"StartNoAckMode" => Action::NoAck,
            b'v' => v_packet(rest),
            _ => reply(""),
        }
    }

    fn query<T: Target + ?Sized>(&self, q: &[u8], t: &T) -> Action {
        if q.starts_with(b"Supported") {
            return reply(SUPPORTED);
        }
        if let Some(args) = q.strip_prefix(b"Xfer:features:read:") {
            let Some((annex, range)) = split(args, b':') else { return reply(E_BAD) };
            return if annex == b"target.xml" { xfer(self.xml.as_bytes(), range) } else { reply(E_BAD) };
        }
        // The thread list gdb asks for at every stop: one round trip (qfThreadInfo and
        // qsThreadInfo take two).
        if let Some(range) = q.strip_prefix(b"Xfer:threads:read::") {
            return xfer(THREADS.as_bytes(), range);
        }
        if let Some(hex) = q.strip_prefix(b"Rcmd,") {
            return match from_hex(hex) {
                Some(bytes) => Action::Monitor(monitor::command(&self.map, t, &String::from_utf8_lossy(&bytes))),
                None => reply(E_BAD),
            };
        }
        match q {
            b"Attached" => reply("1"),
            b"C" => reply("QC1"),
            b"fThreadInfo" => reply("m1"),
            b"sThreadInfo" => reply("l"),
            _ => reply(""),
        }
    }

    /// `Z`/`z` TYPE,ADDR,KIND.
    fn breakpoint(&mut self, insert: bool, args: &[u8]) -> Action {
        let Some((ty, addr_kind)) = split(args, b',') else { return reply(E_BAD) };
        let Some((addr, len)) = parse_addr_len(addr_kind.split(|&b| b == b';').next().unwrap_or(b"")) else {
            return reply(E_BAD);
        };
        let kind = match ty {
            b"0" | b"1" => None,
            // Reads cannot be seen by single-stepping: only where the host fires them.
            b"3" | b"4" if !self.data_watch => {
                if insert {
                    self.say_no_read_watch();
                }
                return reply("");
            }
            b"2" => Some(WatchKind::Write),
            b"3" => Some(WatchKind::Read),
            b"4" => Some(WatchKind::Access),
            _ => return reply(""),
        };
        let Some(kind) = kind else {
            if insert && !self.points.insert_exec(addr) {
                return reply(E_FULL);
            }
            if !insert {
                self.points.remove_exec(addr);
            }
            return reply("OK");
        };
        // A debug register watches 1, 2, 4 or 8 aligned bytes; an emulated watchpoint
        // compares any range up to MAX_EMULATED_WATCH bytes.
        let fits = if self.data_watch && kind != WatchKind::Write {
            len > 0 && fits_register(&Watch { kind, addr, len })
        } else {
            (1..=MAX_EMULATED_WATCH).contains(&len) && addr.checked_add(len).is_some()
        };
        if !fits {
            return reply(E_BAD);
        }
        let w = Watch { kind, addr, len };
        if !insert {
            self.points.remove_watch(w);
            return reply("OK");
        }
        reply(if self.points.insert_watch(w) { "OK" } else { E_FULL })
    }

    /// Says once why `rwatch`/`awatch` are refused: gdb's own words for the empty reply ("Could
    /// not insert hardware watchpoint", "too many hardware breakpoints/watchpoints") do not.
    fn say_no_read_watch(&mut self) {
        if !self.said.read_watch {
            self.said.read_watch = true;
            self.notes.push(
                "mini_hypervisor: gdb: rwatch/awatch refused: this KVM fires no data breakpoints, and a read \
                 cannot be seen by single-stepping (only a change can); use `watch` for writes, or break on the \
                 code that reads (docs/GDB.md)"
                    .to_owned(),
            );
        }
    }

    fn write_all_registers<T: Target + ?Sized>(&mut self, t: &T, hex: &[u8]) -> Action {
        let Some(bytes) = from_hex(hex) else { return reply(E_BAD) };
        let (Ok(r0), Ok(s0)) = (t.regs(), t.system_regs()) else { return reply(E_BAD) };
        let (mut r, mut s) = (r0, s0);
        if !registers::decode_regs(&mut r, &mut s, &bytes) {
            return reply(E_BAD);
        }
        if r != r0 && t.set_regs(&r).is_err() {
            return reply(E_BAD);
        }
        if s != s0 {
            return self.set_system(t, &s, "the registers of a G packet");
        }
        reply("OK")
    }

    fn write_register<T: Target + ?Sized>(&mut self, t: &T, args: &[u8]) -> Action {
        let parsed = split(args, b'=').and_then(|(n, v)| Some((usize::try_from(parse_hex(n)?).ok()?, from_hex(v)?)));
        let Some((n, value)) = parsed else { return reply(E_BAD) };
        let (Ok(mut r), Ok(mut s)) = (t.regs(), t.system_regs()) else { return reply(E_BAD) };
        if !registers::set_reg(&mut r, &mut s, n, &value) {
            return reply(E_BAD);
        }
        if n < FIRST_SYSTEM_REG {
            return ok_or_bad(t.set_regs(&r).ok());
        }
        let what =
            format!("{} = {:#x}", registers::reg_name(n), u64::from_le_bytes(value.try_into().unwrap_or([0; 8])));
        self.set_system(t, &s, &what)
    }

    /// Writes control or segment-base registers ([`Target::set_system_regs`]); when KVM refuses
    /// (a value the CPU does not allow), says why on stderr and answers an error.
    fn set_system<T: Target + ?Sized>(&mut self, t: &T, s: &SystemRegs, what: &str) -> Action {
        match t.set_system_regs(s) {
            Ok(()) => reply("OK"),
            Err(e) => {
                self.notes.push(format!(
                    "mini_hypervisor: gdb: KVM refused {what} ({e}): not a state this CPU can be in \
                     (long mode needs CR0.PG and PE, CR4.PAE, EFER.LME and LMA); the registers are unchanged"
                ));
                reply(E_KVM)
            }
        }
    }
}

/// `qXfer:...:read:ANNEX:OFFSET,LENGTH` of `doc`: `m` + a chunk, or `l` + the last one.
fn xfer(doc: &[u8], range: &[u8]) -> Action {
    let Some((off, len)) = parse_addr_len(range) else { return reply(E_BAD) };
    let start = usize::try_from(off).unwrap_or(usize::MAX).min(doc.len());
    let len = usize::try_from(len).unwrap_or(usize::MAX).min(PACKET_SIZE - 16);
    let end = start.saturating_add(len).min(doc.len());
    let mut out = vec![if end == doc.len() { b'l' } else { b'm' }];
    out.extend_from_slice(&doc[start..end]);
    Action::Reply(out)
}

fn watch_reply(w: &Watch) -> String {
    let name = match w.kind {
        WatchKind::Write => "watch",
        WatchKind::Read => "rwatch",
        WatchKind::Access => "awatch",
    };
    format!("T05{name}:{:x};thread:01;", w.addr)
}

fn read_all_registers<T: Target + ?Sized>(t: &T) -> Action {
    match (t.regs(), t.system_regs()) {
        (Ok(r), Ok(s)) => Action::Reply(to_hex(&registers::encode_regs(&r, &s))),
        _ => reply(E_BAD),
    }
}

fn read_register<T: Target + ?Sized>(t: &T, arg: &[u8]) -> Action {
    let value = parse_hex(arg).and_then(|n| {
        let n = usize::try_from(n).ok().filter(|&n| n < NUM_REGS)?;
        Some(registers::reg_bytes(&t.regs().ok()?, &t.system_regs().ok()?, n))
    });
    value.map_or_else(|| reply(E_BAD), |v| Action::Reply(to_hex(&v)))
}

fn read_memory<T: Target + ?Sized>(t: &T, args: &[u8]) -> Action {
    let Some((addr, len)) = parse_addr_len(args) else { return reply(E_BAD) };
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(MAX_READ).min(MAX_READ)];
    match read_virt(t, addr, &mut buf) {
        Ok(()) => Action::Reply(to_hex(&buf)),
        Err(()) => reply(E_BAD),
    }
}

/// `M ADDR,LEN:HEX` (`hex`) or `X ADDR,LEN:BINARY`.
fn write_memory<T: Target + ?Sized>(t: &T, args: &[u8], hex: bool) -> Option<()> {
    let (head, data) = split(args, b':')?;
    let (addr, len) = parse_addr_len(head)?;
    let bytes = if hex { from_hex(data)? } else { data.to_vec() };
    (bytes.len() as u64 == len).then_some(())?;
    write_virt(t, addr, &bytes).ok()
}

fn v_packet(v: &[u8]) -> Action {
    if v == b"Cont?" {
        return reply("vCont;c;C;s;S");
    }
    if let Some(actions) = v.strip_prefix(b"Cont;") {
        // One thread: the first action decides.
        return match actions.first() {
            Some(b'c' | b'C') => Action::Resume { step: false },
            Some(b's' | b'S') => Action::Resume { step: true },
            _ => reply(E_BAD),
        };
    }
    if v.starts_with(b"Kill") {
        return Action::Kill;
    }
    reply("")
}

#[cfg(test)]
mod tests {
    use super::super::fake::{FakeTarget, ask, session};
    use super::*;

    #[test]
    fn memory_through_the_guest_page_tables() {
        let mut s = session(false);
        let t = FakeTarget::new(true);
        t.ram.borrow_mut()[0x20_1ffe..0x20_2002].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(ask(&mut s, &t, "m201ffe,4"), "01020304", "a read across two 4 KiB pages");
        assert_eq!(ask(&mut s, &t, "m1ffffe,4"), "E01", "runs into the unmapped page");
        assert_eq!(ask(&mut s, &t, "m400000,1"), "E01", "mapped to 0x10000000, outside RAM");
        assert_eq!(ask(&mut s, &t, "mffffffffffffffff,2"), "E01");
        assert_eq!(ask(&mut s, &t, "m0,ffffffffffffffff").len(), 2 * MAX_READ, "a huge length is cut");
        assert_eq!(ask(&mut s, &t, "M1fffff,2:aabb"), "E01", "a write half outside changes nothing");
        assert_eq!(t.ram.borrow()[0x1f_ffff], 0);
        assert_eq!(ask(&mut s, &t, "M100,2:aabb"), "OK");
        assert_eq!(ask(&mut s, &t, "M100,3:aabb"), "E01", "length and data disagree");
        assert_eq!(ask(&mut s, &t, "X102,2:}#"), "OK", "binary data as the decoder hands it over");
        assert_eq!(ask(&mut s, &t, "m100,4"), "aabb7d23");
        // Without paging, virtual = physical.
        let flat = FakeTarget::new(false);
        assert_eq!(ask(&mut s, &flat, "m0,2"), "0000");
        assert_eq!(ask(&mut s, &flat, &format!("m{:x},1", super::super::fake::RAM)), "E01");
    }

    #[test]
    fn breakpoints_are_never_refused_for_lack_of_registers() {
        let mut s = session(false);
        let t = FakeTarget::new(false);
        for i in 1..=6 {
            assert_eq!(ask(&mut s, &t, &format!("Z0,{:x},1", i * 0x10)), "OK", "breakpoint {i}");
        }
        assert!(s.points.exec_overflow());
        for i in 1..=6 {
            assert_eq!(ask(&mut s, &t, &format!("z0,{:x},1", i * 0x10)), "OK");
        }
        assert_eq!(s.points.exec_count(), 0);
        // Where data breakpoints do not fire, read and access watchpoints get the empty reply;
        // write watchpoints are emulated, for any range up to 256 bytes.
        assert_eq!(ask(&mut s, &t, "Z2,1001,3"), "OK");
        assert_eq!(ask(&mut s, &t, "Z2,1000,100"), "OK");
        assert_eq!(ask(&mut s, &t, "Z2,1000,101"), "E01");
        assert_eq!(ask(&mut s, &t, "Z2,1000,0"), "E01");
        assert_eq!(ask(&mut s, &t, "Z2,ffffffffffffffff,2"), "E01", "wraps around");
        assert!(s.notes.is_empty(), "{:?}", s.notes);
        assert_eq!(ask(&mut s, &t, "Z3,1000,4"), "");
        assert_eq!(ask(&mut s, &t, "Z4,1000,4"), "");
        assert_eq!(ask(&mut s, &t, "z3,1000,4"), "");
        assert_eq!(ask(&mut s, &t, "Z9,1000,4"), "");
        // ... and the stub says why, once (gdb's own message does not).
        assert_eq!(s.notes.len(), 1, "{:?}", s.notes);
        assert!(s.notes[0].contains("rwatch/awatch refused: this KVM fires no data breakpoints"), "{:?}", s.notes);
        assert_eq!(ask(&mut s, &t, "Z0,zz,1"), "E01");
        // Where they fire, a debug register takes 1, 2, 4 or 8 aligned bytes.
        let mut native = session(true);
        assert_eq!(ask(&mut native, &t, "Z3,1000,4"), "OK");
        assert_eq!(ask(&mut native, &t, "Z4,1001,4"), "E01", "unaligned");
        assert_eq!(ask(&mut native, &t, "Z3,1000,3"), "E01", "no such length");
    }

    #[test]
    fn the_stop_reply_names_the_watchpoint_that_fired() {
        let mut s = session(true);
        let t = FakeTarget::new(false);
        assert_eq!(ask(&mut s, &t, "Z2,1000,4"), "OK");
        assert_eq!(ask(&mut s, &t, "Z0,30,1"), "OK");
        s.resume(&t, false).unwrap();
        assert_eq!(s.stop_reply(Stop::Trap { pc: 0, dr6: 0xffff_0ff1 }), b"T05watch:1000;thread:01;");
        assert_eq!(s.stop_reply(Stop::Trap { pc: 0x30, dr6: 0xffff_0ff2 }), b"T05thread:01;");
        assert_eq!(ask(&mut s, &t, "?"), "T05thread:01;");
        assert_eq!(s.stop_reply(Stop::Interrupt), b"T02thread:01;");
        assert_eq!(s.stop_reply(Stop::Crash), b"T0bthread:01;");
    }

    #[test]
    fn queries_description_and_unknown_packets() {
        let mut s = session(false);
        let t = FakeTarget::new(false);
        assert_eq!(
            ask(&mut s, &t, "qSupported:multiprocess+;xmlRegisters=i386"),
            "PacketSize=4000;qXfer:features:read+;qXfer:threads:read+;QStartNoAckMode+"
        );
        assert!(SUPPORTED.starts_with(&format!("PacketSize={PACKET_SIZE:x};")));
        assert_eq!(s.handle(b"QStartNoAckMode", &t), Action::NoAck);
        assert_eq!(ask(&mut s, &t, "QStartNoAckMode:1"), "");
        assert_eq!(ask(&mut s, &t, "QNonStop:1"), "");
        // The thread list in one packet, in chunks as gdb asks.
        assert_eq!(ask(&mut s, &t, "qXfer:threads:read::0,fff"), format!("l{THREADS}"));
        assert_eq!(ask(&mut s, &t, "qXfer:threads:read::0,8"), "m<?xml ve");
        assert_eq!(ask(&mut s, &t, &format!("qXfer:threads:read::{:x},1000", THREADS.len() - 2)), "l>\n");
        assert!(THREADS.contains("<thread id=\"1\"/>"), "{THREADS}");
        assert_eq!(ask(&mut s, &t, "qXfer:threads:read:x:0,fff"), "", "threads have no annex");
        assert_eq!(ask(&mut s, &t, "qXfer:threads:read::zz"), "E01");
        let mut xml = Vec::new();
        for _ in 0..100 {
            let r = ask(&mut s, &t, &format!("qXfer:features:read:target.xml:{:x},200", xml.len()));
            xml.extend_from_slice(&r.as_bytes()[1..]);
            if r.starts_with('l') {
                break;
            }
            assert!(r.starts_with('m'), "{r}");
        }
        assert_eq!(xml, registers::target_xml().as_bytes(), "the whole description, in at most 100 chunks");
        assert_eq!(ask(&mut s, &t, "qXfer:features:read:target.xml:ffffffffffffffff,ffffffffffffffff"), "l");
        assert_eq!(ask(&mut s, &t, "qXfer:features:read:other.xml:0,10"), "E01");
        assert_eq!(ask(&mut s, &t, "qAttached"), "1");
        assert_eq!(ask(&mut s, &t, "qC"), "QC1");
        assert_eq!(ask(&mut s, &t, "qfThreadInfo"), "m1");
        assert_eq!(ask(&mut s, &t, "qsThreadInfo"), "l");
        assert_eq!(ask(&mut s, &t, "Hg0"), "OK");
        assert_eq!(ask(&mut s, &t, "vCont?"), "vCont;c;C;s;S");
        assert_eq!(ask(&mut s, &t, "vMustReplyEmpty"), "");
        assert_eq!(ask(&mut s, &t, "qTStatus"), "");
        assert_eq!(ask(&mut s, &t, "!"), "");
        assert_eq!(ask(&mut s, &t, "qRcmd,zz"), "E01");
        assert!(matches!(s.handle(b"qRcmd,68656c70", &t), Action::Monitor(text) if text.contains("walk")));
        assert_eq!(s.handle(b"vCont;s:1;c", &t), Action::Resume { step: true });
        assert_eq!(s.handle(b"vCont;c", &t), Action::Resume { step: false });
        assert_eq!(s.handle(b"c", &t), Action::Resume { step: false });
        assert_eq!(s.handle(b"s", &t), Action::Resume { step: true });
        assert_eq!(s.handle(b"k", &t), Action::Kill);
        assert_eq!(s.handle(b"vKill;1", &t), Action::Kill);
        assert_eq!(s.handle(b"D", &t), Action::Detach);
        assert_eq!(s.handle(b"D;1", &t), Action::Detach);
    }

    #[test]
    fn single_registers_read_and_write() {
        let mut s = session(false);
        let t = FakeTarget::new(true);
        assert_eq!(ask(&mut s, &t, "p6"), "0800000000000000", "rbp");
        assert_eq!(ask(&mut s, &t, "p7"), "0700000000000000", "rsp");
        assert_eq!(ask(&mut s, &t, "p11"), "02020000", "eflags");
        assert_eq!(ask(&mut s, &t, "p12"), "08000000", "cs");
        assert_eq!(ask(&mut s, &t, "p18"), "00000000000000000000", "st0");
        assert_eq!(ask(&mut s, &t, "p2c"), "00c03f0000000000", "cr3");
        assert_eq!(ask(&mut s, &t, "p2f"), "E01");
        assert_eq!(ask(&mut s, &t, "pffffffffffffffffff"), "E01");
        assert_eq!(ask(&mut s, &t, "P10=efbeadde00000000"), "OK");
        assert_eq!(t.regs.borrow().rip, 0xdead_beef);
        assert_eq!(ask(&mut s, &t, "P7=01"), "E01", "wrong size");
        assert_eq!(ask(&mut s, &t, "P12=10000000"), "OK", "segments are accepted and ignored");
        // Control registers go through set_system_regs; a refusal is an error and a note.
        assert_eq!(ask(&mut s, &t, "P2b=0010000000000000"), "OK", "cr2");
        assert_eq!(t.system.borrow().cr2, 0x1000);
        t.refuse_system.set(true);
        assert_eq!(ask(&mut s, &t, "P2a=0000000000000000"), E_KVM, "cr0");
        assert_eq!(s.notes.len(), 1);
        assert!(s.notes[0].contains("KVM refused cr0 = 0x0"), "{:?}", s.notes);
        assert_ne!(t.system.borrow().cr0, 0);
        t.refuse_system.set(false);
        let g = ask(&mut s, &t, "g");
        assert_eq!(g.len(), 2 * registers::G_BYTES);
        assert_eq!(ask(&mut s, &t, &format!("G{g}")), "OK");
        assert_eq!(ask(&mut s, &t, "Gzz"), "E01");
        assert_eq!(ask(&mut s, &t, "G0011"), "E01", "a torn register");
    }
}
