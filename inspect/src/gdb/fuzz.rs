//! A seeded fuzz test of the decoder and the dispatcher: thousands of packets, well-formed and
//! not, framed and mangled, against a fake guest. Nothing may panic, every reply must be a
//! proper one, and guest RAM may change only through a memory-write packet.
//!
//! `GDB_FUZZ_SEED=N cargo test -p inspect fuzz` runs another seed; a failure prints the seed.

use super::Stop;
use super::fake::{FakeTarget, RAM, session};
use super::protocol::{Decoder, Input, PACKET_SIZE, checksum, to_hex};
use super::session::Action;
use crate::test_rng::Rng;

const PACKETS: usize = 50_000;

/// What packets are made of, drawn from the generator.
trait Parts {
    fn number(&mut self) -> u64;
    fn hex(&mut self) -> String;
    fn bytes(&mut self, max: u64) -> Vec<u8>;
}

impl Parts for Rng {
    /// An address or length: often one near an edge, sometimes anything.
    fn number(&mut self) -> u64 {
        let edges = [0, 1, 7, 8, 0x100, 0x1000, 0x1f_ffff, 0x20_0000, RAM as u64 - 1, RAM as u64, 0x4000_0000];
        match self.below(4) {
            0 => self.next(),
            1 => u64::MAX - self.below(16),
            _ => self.pick(&edges).wrapping_add(self.below(3)).wrapping_sub(1),
        }
    }

    fn hex(&mut self) -> String {
        match self.below(8) {
            0 => String::new(),
            1 => "zz".to_owned(),
            2 => "1".repeat(1 + self.below(30) as usize),
            _ => format!("{:x}", self.number()),
        }
    }

    fn bytes(&mut self, max: u64) -> Vec<u8> {
        (0..self.below(max)).map(|_| self.next() as u8).collect()
    }
}

/// One packet's data, from a grammar of what gdb sends, with arguments from the edges.
fn packet(r: &mut Rng) -> Vec<u8> {
    let text = match r.below(18) {
        0 => format!("m{},{}", r.hex(), r.hex()),
        1 => {
            let data = to_hex(&r.bytes(40));
            format!("M{},{}:{}", r.hex(), r.hex(), String::from_utf8_lossy(&data))
        }
        2 => format!("G{}", String::from_utf8_lossy(&to_hex(&r.bytes(400)))),
        3 => format!("P{}={}", r.hex(), String::from_utf8_lossy(&to_hex(&r.bytes(12)))),
        4 => format!("p{}", r.hex()),
        5 => format!("{}{},{},{}", r.pick(&["Z", "z"]), r.below(6), r.hex(), r.hex()),
        6 => format!("qXfer:features:read:{}:{},{}", r.pick(&["target.xml", "x", ""]), r.hex(), r.hex()),
        7 => {
            let cmd = format!(
                "{} {}",
                r.pick(&["walk", "mem", "help", "xyz", ""]),
                r.pick(&["0x1000", "1", "", "-1", "0xfffffffffffffffff"])
            );
            format!("qRcmd,{}", String::from_utf8_lossy(&to_hex(cmd.as_bytes())))
        }
        8 => r.pick(&["c", "s", "vCont;c", "vCont;s:1", "vCont;r1,2", "C05", "S05"]).to_string(),
        9 => {
            r.pick(&["?", "g", "qSupported", "qAttached", "qC", "vCont?", "Hg0", "T1", "D", "k", "vKill;1"]).to_string()
        }
        10 => {
            let mut x = b"X".to_vec();
            x.extend_from_slice(format!("{},{}:", r.hex(), r.below(20)).as_bytes());
            x.extend(r.bytes(20));
            return x;
        }
        11 => format!("qXfer:threads:read:{}:{},{}", r.pick(&["", "x"]), r.hex(), r.hex()),
        12 => r
            .pick(&["QStartNoAckMode", "QStartNoAckMode;x", "QNonStop:1", "Q", "qXfer:threads:read::0,fff"])
            .to_string(),
        _ => return r.bytes(64),
    };
    text.into_bytes()
}

/// The packet framed as gdb would, or mangled: a wrong checksum, bytes around it, a run-length
/// repeat, an interrupt byte, a torn frame, or now and then a packet far too long. Before
/// no-ack mode, gdb's `+` or `-` for the last reply may come first.
fn wire(r: &mut Rng, data: &[u8], no_ack: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if !no_ack && r.below(2) == 0 {
        out.push(*r.pick(b"+++-"));
    }
    if r.below(8) == 0 {
        out.extend(r.bytes(16));
    }
    out.push(b'$');
    out.extend_from_slice(data);
    let mut sum = checksum(data);
    match r.below(12) {
        0 => sum = sum.wrapping_add(1),
        1 => out.extend_from_slice(b"*"),
        2 => out.push(0x03),
        3 => out.truncate(out.len() / 2),
        4 if r.below(50) == 0 => out.extend(std::iter::repeat_n(b'a', PACKET_SIZE + 100)),
        _ => {}
    }
    out.extend_from_slice(format!("#{sum:02x}").as_bytes());
    out
}

/// A reply must be text gdb can read, inside the packet size.
fn check_reply(p: &[u8], reply: &[u8]) {
    assert!(reply.len() <= PACKET_SIZE, "a reply of {} bytes to {:?}", reply.len(), String::from_utf8_lossy(p));
    assert!(
        reply.iter().all(|&b| b == b'\n' || (0x20..0x7f).contains(&b)),
        "a reply that is not text: {:?} to {:?}",
        String::from_utf8_lossy(reply),
        String::from_utf8_lossy(p)
    );
}

/// What a packet did; a resume also runs a few debug exits. `true`: no-ack mode begins.
fn apply(r: &mut Rng, s: &mut super::session::Session, t: &FakeTarget, p: &[u8]) -> bool {
    let before = t.writes.get();
    let mut no_ack = false;
    match s.handle(p, t) {
        Action::Reply(reply) => check_reply(p, &reply),
        Action::NoAck => {
            assert_eq!(p, b"QStartNoAckMode", "no-ack mode for {:?}", String::from_utf8_lossy(p));
            no_ack = true;
        }
        Action::Monitor(text) => assert!(!text.is_empty() && text.ends_with('\n'), "{text:?}"),
        Action::Resume { step } => {
            if s.resume(t, step).is_ok() {
                for _ in 0..r.below(4) {
                    let (pc, dr6) = (r.number(), r.next());
                    if let Some(stop) = s.on_trap(t, pc, dr6) {
                        check_reply(p, &stop);
                        break;
                    }
                }
            }
        }
        Action::Kill | Action::Detach => s.forget_breakpoints(),
    }
    if !matches!(p.first(), Some(b'M' | b'X')) {
        assert_eq!(t.writes.get(), before, "guest RAM written by {:?}", String::from_utf8_lossy(p));
    }
    assert_eq!(t.writes_outside.get(), 0, "a write outside RAM for {:?}", String::from_utf8_lossy(p));
    no_ack
}

/// Prints the seed if the test fails (the test harness shows it with the failure).
struct SeedOnFailure(u64);

impl Drop for SeedOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("gdb fuzz: failed with GDB_FUZZ_SEED={}", self.0);
        }
    }
}

#[test]
fn fuzzed_packets_never_panic_and_only_memory_writes_change_ram() {
    let seed = match std::env::var("GDB_FUZZ_SEED") {
        Ok(v) => v.trim().parse().expect("GDB_FUZZ_SEED must be a number"),
        Err(_) => 0x6462_6775_7a7a,
    };
    let _report = SeedOnFailure(seed);
    let mut r = Rng::new(seed);
    let mut s = session(r.below(2) == 0);
    let t = FakeTarget::new(true);
    let mut decoder = Decoder::default();
    let (mut packets, mut no_ack) = (0, false);
    for _ in 0..PACKETS {
        let data = packet(&mut r);
        for b in wire(&mut r, &data, no_ack) {
            if let Some(Input::Packet(p)) = decoder.push(b) {
                packets += 1;
                no_ack |= apply(&mut r, &mut s, &t, &p);
                if r.below(200) == 0 {
                    // Now and then, a guest that crashed or was interrupted.
                    let _ = s.stop_reply(*r.pick(&[Stop::Crash, Stop::Interrupt, Stop::Start]));
                }
            }
        }
    }
    assert!(packets > PACKETS / 2, "only {packets} packets got through the decoder");
    assert!(no_ack, "no-ack mode was never asked for");
    // The session still answers after all that.
    assert!(matches!(s.handle(b"qAttached", &t), Action::Reply(r) if r == b"1"));
}
