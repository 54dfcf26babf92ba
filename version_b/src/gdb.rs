//! `--gdb PORT`: a GDB remote-protocol stub for VM 0, written by hand over `std::net`.
//!
//! No C counterpart. The file has two halves:
//!
//! 1. The pure part, unit-tested without KVM: packet framing ([`Decoder`], [`frame`]), the
//!    register and memory encodings, the guest page walk ([`translate`]), the four debug
//!    registers ([`DebugRegs`]) and the command dispatcher ([`Session::handle`]), which works
//!    against the small [`Target`] trait.
//! 2. The glue: [`Target`] over a real vCPU and its RAM, the TCP connection, and
//!    [`Debugger`], whose [`Debugger::stopped`] the VM's run loop calls while the vCPU is
//!    stopped (before its first instruction, at a debug exit, at gdb's Ctrl-C, at a crash).
//!
//! The stub serves gdb on the VM's own thread while the vCPU is stopped, so guest memory is
//! never touched by two threads. One reader thread per connection decodes what gdb sends and
//! passes it on through a channel; only gdb's interrupt byte (0x03) acts across threads: it
//! pauses the vCPU ([`Kick::pause`]), and the run loop then calls the stub with
//! [`Stop::Interrupt`].
//!
//! Breakpoints (`Z0` and `Z1` alike) use the four debug registers; nothing is ever written into
//! guest memory. Watchpoints (`Z2`–`Z4`) use them too where the host's KVM fires data
//! breakpoints (probed once at startup, [`data_breakpoints_fire`]); where it does not, they get
//! the empty reply, and gdb falls back to software watchpoints (it single-steps).
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::kvm::{self, KvmGuestDebug, KvmRegs, KvmSregs, Mmap, Vcpu, VcpuExit};
use crate::long_mode::{self, Layout, PageSize};
use crate::signals::Kick;

// ---------------------------------------------------------------------------------------------
// 1. The pure part
// ---------------------------------------------------------------------------------------------

/// The largest packet we accept and announce (`PacketSize`, in hex in `qSupported`).
pub const PACKET_SIZE: usize = 0x4000;
/// The most bytes one `m` reply carries (two hex digits each, inside `PACKET_SIZE`).
const MAX_READ: usize = PACKET_SIZE / 2 - 16;
/// How often a waiting VM thread looks for a stop request (timeout, Ctrl-C of the hypervisor).
const POLL: Duration = Duration::from_millis(100);

/// What the byte stream from gdb decodes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A packet with a good checksum: its data, unescaped and run-length decoded.
    Packet(Vec<u8>),
    /// A packet whose checksum was wrong (or that was too long): answer `-`.
    BadChecksum,
    /// The interrupt byte 0x03 outside a packet (gdb's Ctrl-C).
    Interrupt,
    /// `+`: gdb got our last packet.
    Ack,
    /// `-`: gdb wants our last packet again.
    Nack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecodeState {
    /// Between packets: everything but `$`, `+`, `-` and 0x03 is skipped.
    Idle,
    Data,
    /// After `*`: the next byte is a repeat count.
    Repeat,
    /// After `#`: the first, then the second checksum digit.
    Sum1,
    Sum2(u8),
}

/// Turns the bytes gdb sends into [`Input`]s, one byte at a time. Never panics: garbage is
/// skipped, a bad checksum or an oversized packet becomes [`Input::BadChecksum`].
#[derive(Debug)]
pub struct Decoder {
    state: DecodeState,
    data: Vec<u8>,
    sum: u8,
    escape: bool,
    too_long: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder { state: DecodeState::Idle, data: Vec::new(), sum: 0, escape: false, too_long: false }
    }
}

impl Decoder {
    pub fn push(&mut self, b: u8) -> Option<Input> {
        match self.state {
            DecodeState::Idle => match b {
                b'$' => self.start(),
                b'+' => return Some(Input::Ack),
                b'-' => return Some(Input::Nack),
                0x03 => return Some(Input::Interrupt),
                _ => {}
            },
            DecodeState::Data => match b {
                b'#' => self.state = DecodeState::Sum1,
                // A new start: gdb gave up on the packet we were reading.
                b'$' => self.start(),
                _ => {
                    self.sum = self.sum.wrapping_add(b);
                    if self.escape {
                        self.escape = false;
                        self.put(b ^ 0x20);
                    } else if b == b'}' {
                        self.escape = true;
                    } else if b == b'*' {
                        self.state = DecodeState::Repeat;
                    } else {
                        self.put(b);
                    }
                }
            },
            DecodeState::Repeat => {
                self.sum = self.sum.wrapping_add(b);
                self.state = DecodeState::Data;
                // `X*c`: X once more for each of (c - 29).
                match self.data.last() {
                    Some(&last) if b >= 29 => {
                        for _ in 0..(b - 29) {
                            self.put(last);
                        }
                    }
                    _ => self.too_long = true, // malformed: reject the packet
                }
            }
            DecodeState::Sum1 => match hex_digit(b) {
                Some(hi) => self.state = DecodeState::Sum2(hi),
                None => return self.bad(),
            },
            DecodeState::Sum2(hi) => {
                let Some(lo) = hex_digit(b) else { return self.bad() };
                self.state = DecodeState::Idle;
                if self.too_long || hi << 4 | lo != self.sum {
                    return Some(Input::BadChecksum);
                }
                return Some(Input::Packet(std::mem::take(&mut self.data)));
            }
        }
        None
    }

    fn start(&mut self) {
        self.state = DecodeState::Data;
        self.data.clear();
        self.sum = 0;
        self.escape = false;
        self.too_long = false;
    }

    fn put(&mut self, b: u8) {
        if self.data.len() < PACKET_SIZE {
            self.data.push(b);
        } else {
            self.too_long = true;
        }
    }

    fn bad(&mut self) -> Option<Input> {
        self.state = DecodeState::Idle;
        Some(Input::BadChecksum)
    }
}

pub fn checksum(data: &[u8]) -> u8 {
    data.iter().fold(0u8, |s, &b| s.wrapping_add(b))
}

/// `$data#cs`, with `$ # } *` escaped as `}` + (byte ^ 0x20).
pub fn frame(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 4);
    out.push(b'$');
    for &b in data {
        if matches!(b, b'$' | b'#' | b'}' | b'*') {
            out.extend_from_slice(&[b'}', b ^ 0x20]);
        } else {
            out.push(b);
        }
    }
    let sum = checksum(&out[1..]);
    out.push(b'#');
    out.extend_from_slice(format!("{sum:02x}").as_bytes());
    out
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn to_hex(bytes: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes.iter().flat_map(|&b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]]).collect()
}

fn from_hex(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    text.chunks(2).map(|p| Some(hex_digit(p[0])? << 4 | hex_digit(p[1])?)).collect()
}

/// A hexadecimal number as gdb writes addresses and lengths (at most 16 digits).
fn parse_hex(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 16 {
        return None;
    }
    text.iter().try_fold(0u64, |v, &b| Some(v << 4 | u64::from(hex_digit(b)?)))
}

/// `ADDR,LEN` (as in `m`, `Z`), each hexadecimal.
fn parse_addr_len(text: &[u8]) -> Option<(u64, u64)> {
    let comma = text.iter().position(|&b| b == b',')?;
    Some((parse_hex(&text[..comma])?, parse_hex(&text[comma + 1..])?))
}

/// Splits `head:tail` at the first `sep`.
fn split(text: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let at = text.iter().position(|&b| b == sep)?;
    Some((&text[..at], &text[at + 1..]))
}

// --- registers ---

/// gdb's x86-64 register numbers 0–15 in `kvm_regs` terms. Beware the order: gdb has
/// `rsi rdi rbp rsp`, `struct kvm_regs` has `rsi rdi rsp rbp`.
fn gpr(r: &KvmRegs, n: usize) -> u64 {
    [r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15][n]
}

fn gpr_mut(r: &mut KvmRegs, n: usize) -> &mut u64 {
    match n {
        0 => &mut r.rax,
        1 => &mut r.rbx,
        2 => &mut r.rcx,
        3 => &mut r.rdx,
        4 => &mut r.rsi,
        5 => &mut r.rdi,
        6 => &mut r.rbp,
        7 => &mut r.rsp,
        8 => &mut r.r8,
        9 => &mut r.r9,
        10 => &mut r.r10,
        11 => &mut r.r11,
        12 => &mut r.r12,
        13 => &mut r.r13,
        14 => &mut r.r14,
        _ => &mut r.r15,
    }
}

/// Number of registers in the target description: 16 GPRs, rip, eflags, 6 segments, 8 x87
/// data registers, 8 x87 control registers.
const NUM_REGS: usize = 40;
/// Bytes of the `g` packet: 17 × 8 + 7 × 4 + 8 × 10 + 8 × 4.
pub const G_BYTES: usize = 17 * 8 + 7 * 4 + 8 * 10 + 8 * 4;

/// Size in bytes of register `n` in the target description.
fn reg_size(n: usize) -> usize {
    match n {
        0..=16 => 8,
        17..=23 => 4,
        24..=31 => 10,
        _ => 4,
    }
}

/// Register `n`, little-endian, in its size (the x87 registers read as zero).
fn reg_bytes(r: &KvmRegs, s: &KvmSregs, n: usize) -> Vec<u8> {
    let value: u64 = match n {
        0..=15 => gpr(r, n),
        16 => r.rip,
        17 => r.rflags,
        18..=23 => u64::from([s.cs, s.ss, s.ds, s.es, s.fs, s.gs][n - 18].selector),
        _ => 0,
    };
    let mut bytes = value.to_le_bytes().to_vec();
    bytes.resize(reg_size(n), 0);
    bytes
}

/// The `g` reply's bytes: every register in gdb's order.
pub fn encode_regs(r: &KvmRegs, s: &KvmSregs) -> Vec<u8> {
    let mut out = Vec::with_capacity(G_BYTES);
    for n in 0..NUM_REGS {
        out.extend_from_slice(&reg_bytes(r, s, n));
    }
    out
}

/// Writes register `n` from its little-endian bytes. Segments and x87 registers are accepted
/// and ignored (the guest's segments are fixed by the machine); `false` for no such register.
fn set_reg(r: &mut KvmRegs, n: usize, bytes: &[u8]) -> bool {
    if n >= NUM_REGS || bytes.len() != reg_size(n) {
        return false;
    }
    let mut word = [0u8; 8];
    let len = bytes.len().min(8);
    word[..len].copy_from_slice(&bytes[..len]);
    let v = u64::from_le_bytes(word);
    match n {
        0..=15 => *gpr_mut(r, n) = v,
        16 => r.rip = v,
        17 => r.rflags = v,
        _ => {}
    }
    true
}

/// Applies a `G` packet's bytes (all registers in order; a shorter packet sets the first ones).
pub fn decode_regs(r: &mut KvmRegs, bytes: &[u8]) -> bool {
    let mut at = 0;
    for n in 0..NUM_REGS {
        let size = reg_size(n);
        if at + size > bytes.len() {
            return at == bytes.len();
        }
        set_reg(r, n, &bytes[at..at + size]);
        at += size;
    }
    at == bytes.len()
}

/// The target description: x86-64 with the core feature, including the x87 registers, without
/// which gdb 13 rejects it and falls back to 32-bit i386.
pub fn target_xml() -> String {
    let mut x = String::from(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE target SYSTEM \"gdb-target.dtd\">\n<target version=\"1.0\">\n\
         <architecture>i386:x86-64</architecture>\n<feature name=\"org.gnu.gdb.i386.core\">\n\
         <flags id=\"i386_eflags\" size=\"4\">\
         <field name=\"CF\" start=\"0\" end=\"0\"/><field name=\"\" start=\"1\" end=\"1\"/>\
         <field name=\"PF\" start=\"2\" end=\"2\"/><field name=\"AF\" start=\"4\" end=\"4\"/>\
         <field name=\"ZF\" start=\"6\" end=\"6\"/><field name=\"SF\" start=\"7\" end=\"7\"/>\
         <field name=\"TF\" start=\"8\" end=\"8\"/><field name=\"IF\" start=\"9\" end=\"9\"/>\
         <field name=\"DF\" start=\"10\" end=\"10\"/><field name=\"OF\" start=\"11\" end=\"11\"/>\
         <field name=\"NT\" start=\"14\" end=\"14\"/><field name=\"RF\" start=\"16\" end=\"16\"/>\
         <field name=\"VM\" start=\"17\" end=\"17\"/><field name=\"AC\" start=\"18\" end=\"18\"/>\
         <field name=\"VIF\" start=\"19\" end=\"19\"/><field name=\"VIP\" start=\"20\" end=\"20\"/>\
         <field name=\"ID\" start=\"21\" end=\"21\"/></flags>\n",
    );
    let gprs = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"];
    for (i, name) in gprs.iter().enumerate() {
        let ty = if i >= 6 { "data_ptr" } else { "int64" };
        x += &format!("<reg name=\"{name}\" bitsize=\"64\" type=\"{ty}\"/>\n");
    }
    for i in 8..16 {
        x += &format!("<reg name=\"r{i}\" bitsize=\"64\" type=\"int64\"/>\n");
    }
    x += "<reg name=\"rip\" bitsize=\"64\" type=\"code_ptr\"/>\n";
    x += "<reg name=\"eflags\" bitsize=\"32\" type=\"i386_eflags\"/>\n";
    for name in ["cs", "ss", "ds", "es", "fs", "gs"] {
        x += &format!("<reg name=\"{name}\" bitsize=\"32\" type=\"int32\"/>\n");
    }
    for i in 0..8 {
        x += &format!("<reg name=\"st{i}\" bitsize=\"80\" type=\"i387_ext\"/>\n");
    }
    for name in ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"] {
        x += &format!("<reg name=\"{name}\" bitsize=\"32\" type=\"int\" group=\"float\"/>\n");
    }
    x += "</feature>\n</target>\n";
    x
}

// --- guest memory ---

/// What the stub needs from a stopped vCPU and its RAM (the real one: [`KvmTarget`]).
pub trait Target {
    fn regs(&self) -> io::Result<KvmRegs>;
    fn set_regs(&self, regs: &KvmRegs) -> io::Result<()>;
    fn sregs(&self) -> io::Result<KvmSregs>;
    /// Guest-physical memory; an error for anything outside RAM.
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_phys(&self, gpa: u64, buf: &[u8]) -> io::Result<()>;
    fn set_debug(&self, dbg: &KvmGuestDebug) -> io::Result<()>;
}

const PTE_PRESENT: u64 = 1;
const PTE_LARGE: u64 = 1 << 7;
/// Bits 51..12 of an entry: the physical address of the next table or the page.
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;
const CR0_PG: u64 = 1 << 31;
const EFER_LMA: u64 = 1 << 10;

/// Translates guest-virtual `va` by walking the guest's own 4-level page tables from `cr3`
/// (2 MiB and 1 GiB pages included), reading each entry from guest RAM. Returns the physical
/// address and how many bytes are left in that page; `None` if not mapped, not canonical, or
/// if a table lies outside RAM.
pub fn translate<T: Target + ?Sized>(t: &T, cr3: u64, va: u64) -> Option<(u64, u64)> {
    // Canonical: bits 63..47 all equal.
    let top = va >> 47;
    if top != 0 && top != (1 << 17) - 1 {
        return None;
    }
    let mut table = cr3 & PTE_ADDR;
    for level in (0..4).rev() {
        let shift = 12 + 9 * level;
        let index = (va >> shift) & 511;
        let mut entry = [0u8; 8];
        t.read_phys(table + index * 8, &mut entry).ok()?;
        let entry = u64::from_le_bytes(entry);
        if entry & PTE_PRESENT == 0 {
            return None;
        }
        // A page: at level 0 always, at PD (1) and PDPT (2) level when PS is set.
        if level == 0 || (level <= 2 && entry & PTE_LARGE != 0) {
            let page = 1u64 << shift;
            let offset = va & (page - 1);
            return Some(((entry & PTE_ADDR & !(page - 1)) + offset, page - offset));
        }
        table = entry & PTE_ADDR;
    }
    None
}

/// The paging mode the guest is in, from its control registers: `Some(cr3)` for 4-level
/// paging, `None` for no paging (virtual = physical). Other modes are not ours to debug.
fn paging(s: &KvmSregs) -> Result<Option<u64>, ()> {
    match (s.cr0 & CR0_PG != 0, s.efer & EFER_LMA != 0) {
        (false, _) => Ok(None),
        (true, true) => Ok(Some(s.cr3)),
        (true, false) => Err(()),
    }
}

/// Copies guest-virtual memory (page by page, each page translated) into or out of `buf`.
fn access_virt<T: Target + ?Sized>(t: &T, va: u64, buf: &mut [u8], write: bool) -> Result<(), ()> {
    let cr3 = paging(&t.sregs().map_err(|_| ())?)?;
    let mut done = 0;
    while done < buf.len() {
        let addr = va.checked_add(done as u64).ok_or(())?;
        let (pa, left) = match cr3 {
            Some(cr3) => translate(t, cr3, addr).ok_or(())?,
            None => (addr, u64::MAX),
        };
        let n = (buf.len() - done).min(usize::try_from(left).unwrap_or(usize::MAX));
        let chunk = &mut buf[done..done + n];
        let r = if write { t.write_phys(pa, chunk) } else { t.read_phys(pa, chunk) };
        r.map_err(|_| ())?;
        done += n;
    }
    Ok(())
}

pub fn read_virt<T: Target + ?Sized>(t: &T, va: u64, buf: &mut [u8]) -> Result<(), ()> {
    access_virt(t, va, buf, false)
}

pub fn write_virt<T: Target + ?Sized>(t: &T, va: u64, data: &[u8]) -> Result<(), ()> {
    // Check the whole range first, so that a write that fails half-way changes nothing.
    let mut probe = vec![0u8; data.len()];
    access_virt(t, va, &mut probe, false)?;
    let mut copy = data.to_vec();
    access_virt(t, va, &mut copy, true)
}

// --- debug registers ---

/// What a debug register watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An instruction breakpoint (`Z0`, `Z1`).
    Exec,
    /// `Z2`: writes.
    Write,
    /// `Z3`: reads (x86 has no read-only watch: reads and writes, reported as `rwatch`).
    Read,
    /// `Z4`: reads and writes.
    Access,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub kind: Kind,
    pub addr: u64,
    /// 1 for breakpoints; 1, 2, 4 or 8 for watchpoints.
    pub len: u64,
}

/// DR7 bit 10 reads as 1; GE (bit 9) as QEMU sets it.
const DR7_BASE: u64 = 0x600;
/// DR6: B0–B3, which debug register hit; BS, a single step.
const DR6_HITS: u64 = 0xf;

/// The four debug registers DR0–DR3, shared by breakpoints and watchpoints.
///
/// Where the host does not fire data breakpoints (`native_watch` false), a write watchpoint
/// still takes one of the four, but is not put in DR7: the stub single-steps the guest and
/// compares the watched bytes after each instruction instead ([`Session::on_trap`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DebugRegs {
    pub slots: [Option<Slot>; 4],
    /// Whether watchpoints go into DR7 (the host fires data breakpoints).
    pub native_watch: bool,
}

impl DebugRegs {
    /// Takes a free register for `slot` (the same slot twice is one register). `false`: all
    /// four are taken.
    pub fn insert(&mut self, slot: Slot) -> bool {
        if self.slots.contains(&Some(slot)) {
            return true;
        }
        match self.slots.iter_mut().find(|s| s.is_none()) {
            Some(free) => {
                *free = Some(slot);
                true
            }
            None => false,
        }
    }

    /// Frees the register holding `slot`; `false` if none does.
    pub fn remove(&mut self, slot: Slot) -> bool {
        match self.slots.iter_mut().find(|s| **s == Some(slot)) {
            Some(s) => {
                *s = None;
                true
            }
            None => false,
        }
    }

    /// DR7: for register i, the local enable L<i> (bit 2i), R/W<i> (bits 16+4i) and LEN<i>
    /// (bits 18+4i).
    pub fn dr7(&self) -> u64 {
        let mut dr7 = 0;
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(s) = slot.filter(|s| !self.is_emulated(s)) else { continue };
            let rw: u64 = match s.kind {
                Kind::Exec => 0b00,
                Kind::Write => 0b01,
                Kind::Read | Kind::Access => 0b11,
            };
            let len: u64 = match (s.kind, s.len) {
                (Kind::Exec, _) | (_, 1) => 0b00,
                (_, 2) => 0b01,
                (_, 8) => 0b10,
                _ => 0b11,
            };
            dr7 |= 1 << (2 * i) | rw << (16 + 4 * i) | len << (18 + 4 * i);
        }
        if dr7 == 0 { 0 } else { dr7 | DR7_BASE }
    }

    /// The `KVM_SET_GUEST_DEBUG` argument: debugging off when nothing is set and no step asked.
    pub fn guest_debug(&self, step: bool) -> KvmGuestDebug {
        let mut dbg = KvmGuestDebug::default();
        let step = step || self.emulated().next().is_some();
        let dr7 = self.dr7();
        if dr7 == 0 && !step {
            return dbg;
        }
        dbg.control = kvm::KVM_GUESTDBG_ENABLE | kvm::KVM_GUESTDBG_USE_HW_BP;
        if step {
            dbg.control |= kvm::KVM_GUESTDBG_SINGLESTEP;
        }
        for (i, slot) in self.slots.iter().enumerate() {
            dbg.debugreg[i] = slot.filter(|s| !self.is_emulated(s)).map_or(0, |s| s.addr);
        }
        dbg.debugreg[7] = dr7;
        dbg
    }

    fn is_emulated(&self, s: &Slot) -> bool {
        s.kind != Kind::Exec && !self.native_watch
    }

    /// The watchpoints the stub emulates by single-stepping.
    pub fn emulated(&self) -> impl Iterator<Item = Slot> + '_ {
        self.slots.iter().flatten().copied().filter(|s| self.is_emulated(s))
    }

    /// Whether an instruction breakpoint sits at `rip` (resuming there must not hit it again).
    pub fn exec_at(&self, rip: u64) -> bool {
        self.slots.iter().flatten().any(|s| s.kind == Kind::Exec && s.addr == rip)
    }
}

// --- the session ---

/// Why the vCPU stopped, as the run loop tells the stub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Before the first instruction.
    Start,
    /// A debug exit: a breakpoint, a watchpoint or a single step (`dr6` says which).
    Trap { dr6: u64 },
    /// gdb's Ctrl-C.
    Interrupt,
    /// The guest crashed (triple fault, KVM internal error, MMIO outside RAM).
    Crash,
}

/// What the dispatcher decided for one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Reply(Vec<u8>),
    /// Resume the guest (`step`: for one instruction). No reply now: the next stop replies.
    Resume {
        step: bool,
    },
    /// `k`: end the VM as failed.
    Kill,
    /// `D`: reply OK, take every breakpoint out, let the guest run on.
    Detach,
}

/// The protocol state of one debugging session, apart from the connection.
#[derive(Debug, Clone)]
pub struct Session {
    pub regs: DebugRegs,
    /// Whether `Z2`–`Z4` can be served (the host fires data breakpoints).
    pub data_watch: bool,
    /// While the guest runs: what it was resumed for.
    running: Option<Running>,
    /// The reply to `?`: the last stop.
    pub last_stop: Vec<u8>,
    xml: String,
}

/// How the guest was resumed, to make sense of its next debug exit.
#[derive(Debug, Clone)]
struct Running {
    /// gdb asked for one instruction.
    step: bool,
    /// The guest first steps one instruction with the breakpoints at RIP out of DR7.
    over: bool,
    /// The bytes of each emulated watchpoint as they were.
    watched: Vec<(Slot, Vec<u8>)>,
}

fn reply(text: &str) -> Action {
    Action::Reply(text.as_bytes().to_vec())
}

/// The longest range an emulated watchpoint compares (a struct, a small array).
const MAX_EMULATED_WATCH: u64 = 256;
const E_BAD: &str = "E01"; // unreadable memory, bad arguments
const E_FULL: &str = "E0e"; // no free debug register

impl Session {
    pub fn new(data_watch: bool) -> Session {
        Session {
            regs: DebugRegs { native_watch: data_watch, ..DebugRegs::default() },
            data_watch,
            running: None,
            last_stop: b"S05".to_vec(),
            xml: target_xml(),
        }
    }

    /// The stop reply for `why` (it becomes the answer to `?`).
    pub fn stop_reply(&mut self, why: Stop) -> Vec<u8> {
        let text = match why {
            Stop::Start => "T05thread:01;".to_owned(),
            Stop::Interrupt => "T02thread:01;".to_owned(),
            Stop::Crash => "T0bthread:01;".to_owned(),
            Stop::Trap { dr6 } => {
                let hit = (0..4).filter(|i| dr6 & DR6_HITS & (1 << i) != 0).find_map(|i| self.regs.slots[i]);
                match hit {
                    Some(Slot { kind: Kind::Write, addr, .. }) => format!("T05watch:{addr:x};thread:01;"),
                    Some(Slot { kind: Kind::Read, addr, .. }) => format!("T05rwatch:{addr:x};thread:01;"),
                    Some(Slot { kind: Kind::Access, addr, .. }) => format!("T05awatch:{addr:x};thread:01;"),
                    _ => "T05thread:01;".to_owned(),
                }
            }
        };
        self.last_stop = text.into_bytes();
        self.last_stop.clone()
    }

    /// Takes every breakpoint and watchpoint out of the books (detach).
    pub fn forget_breakpoints(&mut self) {
        self.regs.slots = [None; 4];
        self.running = None;
    }

    /// Programs the debug registers to resume the guest (`step`: for one instruction). With a
    /// breakpoint at RIP, the guest first single-steps with that breakpoint out of DR7 (else it
    /// would stop on it again at once: RFLAGS.RF is not honoured by every KVM).
    pub fn resume<T: Target + ?Sized>(&mut self, t: &T, step: bool) -> io::Result<()> {
        let rip = t.regs()?.rip;
        let over = self.regs.exec_at(rip);
        let dbg = if over {
            let mut past = self.regs.clone();
            past.slots.iter_mut().filter(|s| s.is_some_and(|s| s.kind == Kind::Exec && s.addr == rip)).for_each(|s| {
                *s = None;
            });
            past.guest_debug(true)
        } else {
            self.regs.guest_debug(step)
        };
        t.set_debug(&dbg)?;
        let watched = self.regs.emulated().map(|s| (s, watched_bytes(t, s))).collect();
        self.running = Some(Running { step, over, watched });
        Ok(())
    }

    /// A debug exit: `Some(stop reply)` to tell gdb, or `None` to run on silently (a single
    /// step of an emulated watchpoint that changed nothing and reached no breakpoint).
    pub fn on_trap<T: Target + ?Sized>(&mut self, t: &T, dr6: u64) -> Option<Vec<u8>> {
        let Some(mut run) = self.running.take() else { return Some(self.stop_reply(Stop::Trap { dr6 })) };
        if let Some((slot, _)) = run.watched.iter().find(|(slot, old)| watched_bytes(t, *slot) != *old) {
            self.last_stop = format!("T05watch:{:x};thread:01;", slot.addr).into_bytes();
            return Some(self.last_stop.clone());
        }
        let at_breakpoint = t.regs().is_ok_and(|r| self.regs.exec_at(r.rip));
        if run.step || at_breakpoint {
            return Some(self.stop_reply(Stop::Trap { dr6: 0 }));
        }
        if run.over {
            // Past the breakpoint: now run on with every breakpoint in place.
            if t.set_debug(&self.regs.guest_debug(false)).is_err() {
                return Some(self.stop_reply(Stop::Trap { dr6: 0 }));
            }
            run.over = false;
        } else if run.watched.is_empty() {
            // Only DR7 makes the guest stop: a breakpoint or a watchpoint of the host's.
            return Some(self.stop_reply(Stop::Trap { dr6 }));
        } else {
            let exec_hit =
                (0..4).any(|i| dr6 & (1 << i) != 0 && self.regs.slots[i].is_some_and(|s| s.kind == Kind::Exec));
            if exec_hit {
                return Some(self.stop_reply(Stop::Trap { dr6: 0 }));
            }
        }
        self.running = Some(run);
        None
    }

    /// Answers one packet. Never panics, whatever the packet.
    pub fn handle<T: Target + ?Sized>(&mut self, p: &[u8], t: &T) -> Action {
        let (&first, rest) = match p.split_first() {
            Some(x) => x,
            None => return reply(""),
        };
        match first {
            b'?' => Action::Reply(self.last_stop.clone()),
            b'g' => match (t.regs(), t.sregs()) {
                (Ok(r), Ok(s)) => Action::Reply(to_hex(&encode_regs(&r, &s))),
                _ => reply(E_BAD),
            },
            b'G' => {
                let ok = from_hex(rest).and_then(|bytes| {
                    let mut r = t.regs().ok()?;
                    decode_regs(&mut r, &bytes).then_some(())?;
                    t.set_regs(&r).ok()
                });
                reply(if ok.is_some() { "OK" } else { E_BAD })
            }
            b'p' => {
                let value = parse_hex(rest).and_then(|n| {
                    let n = usize::try_from(n).ok().filter(|&n| n < NUM_REGS)?;
                    Some(reg_bytes(&t.regs().ok()?, &t.sregs().ok()?, n))
                });
                value.map_or_else(|| reply(E_BAD), |v| Action::Reply(to_hex(&v)))
            }
            b'P' => {
                let ok = split(rest, b'=').and_then(|(n, v)| {
                    let n = usize::try_from(parse_hex(n)?).ok()?;
                    let mut r = t.regs().ok()?;
                    set_reg(&mut r, n, &from_hex(v)?).then_some(())?;
                    t.set_regs(&r).ok()
                });
                reply(if ok.is_some() { "OK" } else { E_BAD })
            }
            b'm' => {
                let Some((addr, len)) = parse_addr_len(rest) else { return reply(E_BAD) };
                let mut buf = vec![0u8; (len as usize).min(MAX_READ)];
                match read_virt(t, addr, &mut buf) {
                    Ok(()) => Action::Reply(to_hex(&buf)),
                    Err(()) => reply(E_BAD),
                }
            }
            b'M' => {
                let ok = split(rest, b':').and_then(|(head, data)| {
                    let (addr, len) = parse_addr_len(head)?;
                    let bytes = from_hex(data).filter(|b| b.len() as u64 == len)?;
                    write_virt(t, addr, &bytes).ok()
                });
                reply(if ok.is_some() { "OK" } else { E_BAD })
            }
            b'X' => {
                let ok = split(rest, b':').and_then(|(head, data)| {
                    let (addr, len) = parse_addr_len(head)?;
                    (data.len() as u64 == len).then_some(())?;
                    write_virt(t, addr, data).ok()
                });
                reply(if ok.is_some() { "OK" } else { E_BAD })
            }
            // c [addr], s [addr], C sig[;addr], S sig[;addr]: a resume address is not supported.
            b'c' | b'C' => Action::Resume { step: false },
            b's' | b'S' => Action::Resume { step: true },
            b'Z' | b'z' => self.breakpoint(first == b'Z', rest),
            b'D' => Action::Detach,
            b'k' => Action::Kill,
            b'H' => reply("OK"),
            b'T' => reply("OK"), // thread 1 is alive
            b'q' => self.query(rest),
            b'v' => self.v_packet(rest),
            _ => reply(""),
        }
    }

    fn query(&self, q: &[u8]) -> Action {
        if q.starts_with(b"Supported") {
            return reply(&format!("PacketSize={PACKET_SIZE:x};qXfer:features:read+"));
        }
        if let Some(args) = q.strip_prefix(b"Xfer:features:read:") {
            let Some((annex, range)) = split(args, b':') else { return reply(E_BAD) };
            if annex != b"target.xml" {
                return reply(E_BAD);
            }
            let Some((off, len)) = parse_addr_len(range) else { return reply(E_BAD) };
            let xml = self.xml.as_bytes();
            let start = usize::try_from(off).unwrap_or(usize::MAX).min(xml.len());
            let end = start.saturating_add((len as usize).min(PACKET_SIZE - 16)).min(xml.len());
            let mut out = vec![if end == xml.len() { b'l' } else { b'm' }];
            out.extend_from_slice(&xml[start..end]);
            return Action::Reply(out);
        }
        match q {
            b"Attached" => reply("1"),
            b"C" => reply("QC1"),
            b"fThreadInfo" => reply("m1"),
            b"sThreadInfo" => reply("l"),
            _ => reply(""),
        }
    }

    fn v_packet(&self, v: &[u8]) -> Action {
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

    /// `Z`/`z` TYPE,ADDR,KIND.
    fn breakpoint(&mut self, insert: bool, args: &[u8]) -> Action {
        let Some((ty, addr_kind)) = split(args, b',') else { return reply(E_BAD) };
        let Some((addr, len)) = parse_addr_len(addr_kind.split(|&b| b == b';').next().unwrap_or(b"")) else {
            return reply(E_BAD);
        };
        let kind = match ty {
            b"0" | b"1" => Kind::Exec,
            // Reads cannot be seen by single-stepping: only where the host fires them.
            b"3" | b"4" if !self.data_watch => return reply(""),
            b"2" => Kind::Write,
            b"3" => Kind::Read,
            b"4" => Kind::Access,
            _ => return reply(""),
        };
        let len = if kind == Kind::Exec { 1 } else { len };
        // A debug register watches 1, 2, 4 or 8 aligned bytes; an emulated watchpoint compares
        // any range up to MAX_EMULATED_WATCH bytes.
        let fits = match kind {
            Kind::Exec => true,
            _ if self.data_watch => matches!(len, 1 | 2 | 4 | 8) && addr % len == 0,
            _ => (1..=MAX_EMULATED_WATCH).contains(&len),
        };
        if !fits {
            return reply(E_BAD);
        }
        let slot = Slot { kind, addr, len };
        if !insert {
            self.regs.remove(slot);
            return reply("OK");
        }
        reply(if self.regs.insert(slot) { "OK" } else { E_FULL })
    }
}

/// The bytes an emulated watchpoint watches (empty if they cannot be read).
fn watched_bytes<T: Target + ?Sized>(t: &T, s: Slot) -> Vec<u8> {
    let mut buf = vec![0u8; s.len as usize];
    match read_virt(t, s.addr, &mut buf) {
        Ok(()) => buf,
        Err(()) => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The glue: KVM, TCP, the run loop
// ---------------------------------------------------------------------------------------------

/// [`Target`] over a stopped vCPU and its RAM.
pub struct KvmTarget<'a> {
    pub vcpu: &'a Vcpu,
    pub mem: &'a Mmap,
}

impl Target for KvmTarget<'_> {
    fn regs(&self) -> io::Result<KvmRegs> {
        self.vcpu.get_regs()
    }
    fn set_regs(&self, regs: &KvmRegs) -> io::Result<()> {
        self.vcpu.set_regs(regs)
    }
    fn sregs(&self) -> io::Result<KvmSregs> {
        self.vcpu.get_sregs()
    }
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
        self.mem.read(usize::try_from(gpa).map_err(io::Error::other)?, buf)
    }
    fn write_phys(&self, gpa: u64, buf: &[u8]) -> io::Result<()> {
        self.mem.write(usize::try_from(gpa).map_err(io::Error::other)?, buf)
    }
    fn set_debug(&self, dbg: &KvmGuestDebug) -> io::Result<()> {
        self.vcpu.set_guest_debug(dbg)
    }
}

/// What the run loop does after the stub let go of a stopped vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Run the guest (or, after a crash, end the VM as failed).
    Go,
    /// `k`: end the VM as failed.
    Kill,
    /// gdb detached or went away: breakpoints are out, run on without a debugger.
    Detached,
}

/// One accepted connection: where replies go, and the reader thread's channel.
struct Conn {
    stream: TcpStream,
    inputs: Receiver<Input>,
    /// The last packet sent, for a `-`.
    last: Vec<u8>,
    /// Inputs taken out of the channel early (see `Debugger::arm`).
    pending: VecDeque<Input>,
}

/// What waiting for gdb brought.
enum Wait {
    Input(Input),
    /// The connection is gone.
    Closed,
    /// The VM is being stopped (timeout, Ctrl-C): stop serving, let the run loop end it.
    Stop,
}

/// The debugger side of VM 0: the listening socket until gdb connects, then the session.
pub struct Debugger {
    port: u16,
    listener: Option<TcpListener>,
    conn: Option<Conn>,
    kick: Kick,
    session: Session,
    /// The ELF file to give gdb, for the message.
    elf: String,
    /// Whether the guest runs (shared with the reader thread): gdb's 0x03 pauses the vCPU
    /// only then, and the lock orders a pause against the stub's taking over.
    running: Arc<Mutex<bool>>,
    /// The guest crashed: resuming ends the VM.
    crashed: bool,
}

/// The VM ended while gdb waits for the running guest to stop (timeout, Ctrl-C of the
/// hypervisor, a device error): gdb hears that it was killed, instead of a lost connection.
impl Drop for Debugger {
    fn drop(&mut self) {
        if self.conn.is_some() && *lock(&self.running) {
            self.send(b"X09");
        }
        self.close();
    }
}

impl std::fmt::Debug for Debugger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Debugger").field("port", &self.port).finish_non_exhaustive()
    }
}

/// Binds 127.0.0.1:`port` (loopback only) for `--gdb`; the error is the one startup line.
pub fn listen(port: u16) -> Result<TcpListener, String> {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).map_err(|e| {
        let why = match e.kind() {
            io::ErrorKind::AddrInUse => "Address in use".to_owned(),
            io::ErrorKind::PermissionDenied => "Permission denied".to_owned(),
            _ => e.to_string(),
        };
        format!("--gdb {port}: cannot listen on 127.0.0.1:{port}: {why}: choose another port")
    })
}

/// A 2-instruction probe guest: `mov [0x100], al; hlt`.
const PROBE_CODE: [u8; 8] = [0x88, 0x04, 0x25, 0x00, 0x01, 0x00, 0x00, 0xf4];

/// Whether this host's KVM fires DR7 data breakpoints: a tiny VM writes a watched byte, and
/// either exits for the debugger (yes) or runs on to its `hlt` (no). Any error counts as no.
pub fn data_breakpoints_fire(kvm: &kvm::Kvm) -> bool {
    probe(kvm).unwrap_or(false)
}

fn probe(kvm: &kvm::Kvm) -> io::Result<bool> {
    let layout = Layout::new(2 * long_mode::MIB, PageSize::Large2M);
    let mut vm = kvm::Vm::new(kvm, layout.mem_size as usize)?;
    vm.mem.write(layout.tables_base() as usize, &layout.page_tables())?;
    vm.mem.write(0, &PROBE_CODE)?;
    vm.vcpu.set_sregs(&long_mode::long_mode_sregs(vm.vcpu.get_sregs()?, &layout))?;
    vm.vcpu.set_regs(&long_mode::initial_regs(&layout))?;
    let mut regs = DebugRegs { native_watch: true, ..DebugRegs::default() };
    regs.insert(Slot { kind: Kind::Write, addr: 0x100, len: 1 });
    vm.vcpu.set_guest_debug(&regs.guest_debug(false))?;
    for _ in 0..8 {
        match vm.vcpu.run() {
            Ok(VcpuExit::Debug(_)) => return Ok(true),
            Ok(VcpuExit::Intr) => continue,
            _ => return Ok(false),
        }
    }
    Ok(false)
}

impl Debugger {
    /// The debugger for VM 0, on a socket from [`listen`]; `image` names the guest (gdb is told
    /// to load the ELF file beside it); `data_watch` from [`data_breakpoints_fire`].
    pub fn new(listener: TcpListener, kick: Kick, image: &Path, data_watch: bool) -> Debugger {
        let port = listener.local_addr().map_or(0, |a| a.port());
        Debugger {
            port,
            listener: Some(listener),
            conn: None,
            kick,
            session: Session::new(data_watch),
            elf: image.with_extension("elf").display().to_string(),
            running: Arc::new(Mutex::new(false)),
            crashed: false,
        }
    }

    /// The vCPU is stopped: serve gdb until it resumes, kills or detaches. At [`Stop::Start`]
    /// this first waits for gdb to connect.
    pub fn stopped(&mut self, vcpu: &Vcpu, mem: &Mmap, why: Stop, stopping: &dyn Fn() -> bool) -> Resume {
        if why == Stop::Start {
            match self.accept(stopping) {
                Some(conn) => self.conn = Some(conn),
                None => return Resume::Go, // being stopped: the run loop sees it at once
            }
        }
        if self.conn.is_none() {
            return Resume::Detached;
        }
        let target = KvmTarget { vcpu, mem };
        let stop = match why {
            Stop::Trap { dr6 } => match self.session.on_trap(&target, dr6) {
                Some(stop) => stop,
                None => return Resume::Go, // an emulated watchpoint's step: nothing to tell
            },
            why => self.session.stop_reply(why),
        };
        if why == Stop::Crash {
            self.crashed = true;
        }
        self.hold();
        if why != Stop::Start {
            self.send(&stop);
        }
        loop {
            let input = match self.wait(stopping) {
                Wait::Input(input) => input,
                Wait::Stop => return Resume::Go,
                Wait::Closed => return self.detach(&target),
            };
            let packet = match input {
                Input::Packet(p) => p,
                Input::BadChecksum => {
                    self.write_raw(b"-");
                    continue;
                }
                Input::Nack => {
                    let last = self.conn.as_ref().map(|c| c.last.clone()).unwrap_or_default();
                    self.write_raw(&last);
                    continue;
                }
                Input::Ack => continue,
                Input::Interrupt => continue, // the guest is stopped already
            };
            self.write_raw(b"+");
            match self.session.handle(&packet, &target) {
                Action::Reply(r) => self.send(&r),
                Action::Resume { step } => {
                    if self.crashed {
                        // The guest is gone: gdb hears that it died of SIGSEGV.
                        self.send(b"X0b");
                        self.close();
                        return Resume::Go;
                    }
                    if let Err(e) = self.arm(&target, step) {
                        self.send(format!("E{:02x}", e.raw_os_error().unwrap_or(1) & 0xff).as_bytes());
                        continue;
                    }
                    return Resume::Go;
                }
                Action::Kill => {
                    if packet.starts_with(b"vKill") {
                        self.send(b"OK"); // `k` has no reply, `vKill` has
                    }
                    self.close();
                    return Resume::Kill;
                }
                Action::Detach => {
                    self.send(b"OK");
                    return self.detach(&target);
                }
            }
        }
    }

    /// The guest halted: gdb hears that it exited normally (`W00`), and the session ends.
    pub fn exited(&mut self) {
        if self.conn.is_some() {
            self.send(b"W00");
            self.close();
        }
    }

    /// Programs the debug registers for a resume; RF when a breakpoint sits at RIP, so that
    /// the guest does not stop on it again at once.
    fn arm(&mut self, t: &KvmTarget<'_>, step: bool) -> io::Result<()> {
        self.session.resume(t, step)?;
        let mut running = lock(&self.running);
        *running = true;
        // A 0x03 that gdb sent after this resume but the reader saw before it (while the guest
        // was stopped) is in the channel already: it stops the guest now.
        if let Some(conn) = &mut self.conn {
            while let Ok(input) = conn.inputs.try_recv() {
                if input == Input::Interrupt {
                    self.kick.pause();
                } else {
                    conn.pending.push_back(input);
                }
            }
        }
        Ok(())
    }

    /// The stub takes over a stopped guest: from now on 0x03 pauses nothing, and a pause that
    /// came in just before (the guest stopped for another reason) is dropped, so that the next
    /// resume does not stop at once.
    fn hold(&mut self) {
        let mut running = lock(&self.running);
        *running = false;
        let _ = self.kick.take(); // a stop request stays; only the pause is dropped
    }

    /// Takes every breakpoint out and lets go of gdb.
    fn detach(&mut self, t: &KvmTarget<'_>) -> Resume {
        self.session.forget_breakpoints();
        let _ = t.set_debug(&KvmGuestDebug::default());
        self.close();
        diag!("mini_hypervisor: gdb detached: the guest runs on");
        Resume::Detached
    }

    /// Waits for gdb on the listening socket (on a thread: std's accept retries on EINTR), and
    /// gives up if the VM is being stopped.
    fn accept(&mut self, stop: &dyn Fn() -> bool) -> Option<Conn> {
        let listener = self.listener.take()?;
        diag!(
            "mini_hypervisor: vm0 is waiting for GDB on 127.0.0.1:{port}; connect with: gdb {elf} -ex 'target remote :{port}'",
            port = self.port,
            elf = self.elf
        );
        if self.session.data_watch {
            diag!("mini_hypervisor: gdb: watchpoints use the debug registers (this KVM fires data breakpoints)");
        } else {
            diag!(
                "mini_hypervisor: gdb: this KVM fires no data breakpoints: `watch` single-steps the guest, rwatch/awatch are refused"
            );
        }
        let (tx, rx) = mpsc::channel();
        let spawned = thread::Builder::new().name("gdb-accept".to_owned()).spawn(move || {
            let _ = tx.send(listener.accept().map(|(stream, _)| stream));
        });
        if let Err(e) = spawned {
            diag!("mini_hypervisor: --gdb: cannot start a thread: {e}; the guest runs without a debugger");
            return None;
        }
        let stream = loop {
            match rx.recv_timeout(POLL) {
                Ok(Ok(stream)) => break stream,
                Ok(Err(e)) => {
                    diag!("mini_hypervisor: --gdb: accept: {e}; the guest runs without a debugger");
                    return None;
                }
                Err(RecvTimeoutError::Timeout) if !stop() => {}
                Err(_) => return None,
            }
        };
        let _ = stream.set_nodelay(true);
        let reader = match stream.try_clone() {
            Ok(r) => r,
            Err(e) => {
                diag!("mini_hypervisor: --gdb: {e}; the guest runs without a debugger");
                return None;
            }
        };
        let (tx, inputs) = mpsc::channel();
        let (kick, running) = (self.kick.clone(), Arc::clone(&self.running));
        let spawned =
            thread::Builder::new().name("gdb-reader".to_owned()).spawn(move || read_loop(reader, tx, kick, running));
        if let Err(e) = spawned {
            diag!("mini_hypervisor: --gdb: cannot start a thread: {e}; the guest runs without a debugger");
            return None;
        }
        diag!("mini_hypervisor: gdb connected");
        Some(Conn { stream, inputs, last: Vec::new(), pending: VecDeque::new() })
    }

    fn wait(&mut self, stop: &dyn Fn() -> bool) -> Wait {
        let Some(conn) = &mut self.conn else { return Wait::Closed };
        if let Some(input) = conn.pending.pop_front() {
            return Wait::Input(input);
        }
        loop {
            match conn.inputs.recv_timeout(POLL) {
                Ok(input) => return Wait::Input(input),
                Err(RecvTimeoutError::Timeout) if !stop() => {}
                Err(RecvTimeoutError::Timeout) => return Wait::Stop,
                Err(RecvTimeoutError::Disconnected) => return Wait::Closed,
            }
        }
    }

    /// Sends one packet (a failure shows up as a closed connection at the next wait).
    fn send(&mut self, data: &[u8]) {
        if let Some(conn) = &mut self.conn {
            conn.last = frame(data);
            let _ = conn.stream.write_all(&conn.last);
        }
    }

    fn write_raw(&mut self, bytes: &[u8]) {
        if let Some(conn) = &mut self.conn {
            let _ = conn.stream.write_all(bytes);
        }
    }

    fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A poisoned lock only means a thread panicked while holding it; the flag is still valid.
fn lock(m: &Mutex<bool>) -> std::sync::MutexGuard<'_, bool> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The reader thread: decodes everything gdb sends and passes it on; 0x03 also pauses the
/// vCPU. Ends at end of file, on an error, or when the session is gone.
fn read_loop(mut stream: TcpStream, tx: mpsc::Sender<Input>, kick: Kick, running: Arc<Mutex<bool>>) {
    let mut decoder = Decoder::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) if n > 0 => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            _ => {
                // gdb is gone: a running guest is stopped, so that the stub notices and detaches
                // (its breakpoints and any single-stepping go with it).
                let running = lock(&running);
                if *running {
                    kick.pause();
                }
                drop(tx);
                return;
            }
        };
        for &b in &buf[..n] {
            if let Some(input) = decoder.push(b) {
                // Under the lock, so that the stub, resuming, finds this 0x03 either paused
                // already or in the channel (`Debugger::arm`).
                let running = lock(&running);
                if input == Input::Interrupt && *running {
                    kick.pause();
                }
                if tx.send(input).is_err() {
                    return;
                }
                drop(running);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn decode(bytes: &[u8]) -> Vec<Input> {
        let mut d = Decoder::default();
        bytes.iter().filter_map(|&b| d.push(b)).collect()
    }

    #[test]
    fn framing_checksums_and_acks() {
        assert_eq!(frame(b"OK"), b"$OK#9a");
        assert_eq!(checksum(b"qSupported"), 0x37);
        assert_eq!(decode(b"$g#67"), vec![Input::Packet(b"g".to_vec())]);
        assert_eq!(decode(b"$g#68"), vec![Input::BadChecksum]);
        assert_eq!(decode(b"$g#6"), vec![]);
        assert_eq!(decode(b"$g#zz"), vec![Input::BadChecksum]);
        assert_eq!(decode(b"+-\x03"), vec![Input::Ack, Input::Nack, Input::Interrupt]);
        // Bytes before `$` are skipped; a `$` inside a packet starts it again.
        assert_eq!(decode(b"garbage\xff\x00$OK#9a"), vec![Input::Packet(b"OK".to_vec())]);
        assert_eq!(decode(b"$abc$OK#9a"), vec![Input::Packet(b"OK".to_vec())]);
        // 0x03 inside a packet is data, not an interrupt.
        let p = [b'$', b'X', 3, b'#'];
        let sum = format!("{:02x}", checksum(&[b'X', 3]));
        let all: Vec<u8> = p.iter().copied().chain(sum.bytes()).collect();
        assert_eq!(decode(&all), vec![Input::Packet(vec![b'X', 3])]);
    }

    #[test]
    fn escaping_and_run_length_round_trip() {
        let data = b"a$b#c}d*e".to_vec();
        let framed = frame(&data);
        assert!(!framed[1..framed.len() - 3].iter().any(|&b| b == b'$' || b == b'#'));
        assert_eq!(decode(&framed), vec![Input::Packet(data)]);
        // "0* " = '0' and 32 - 29 = 3 more.
        let body = b"0* ";
        let mut pkt = b"$".to_vec();
        pkt.extend_from_slice(body);
        pkt.extend_from_slice(format!("#{:02x}", checksum(body)).as_bytes());
        assert_eq!(decode(&pkt), vec![Input::Packet(b"0000".to_vec())]);
        // A repeat with nothing to repeat is refused, not a panic.
        assert_eq!(decode(format!("$* #{:02x}", checksum(b"* ")).as_bytes()), vec![Input::BadChecksum]);
    }

    #[test]
    fn garbage_never_panics_and_long_packets_are_refused() {
        let mut d = Decoder::default();
        let mut x: u32 = 12345;
        for _ in 0..200_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let _ = d.push((x >> 16) as u8);
        }
        let mut long = vec![b'$'];
        long.extend(std::iter::repeat_n(b'a', PACKET_SIZE + 10));
        long.extend_from_slice(b"#00");
        assert_eq!(decode(&long), vec![Input::BadChecksum]);
        let mut s = Session::new(false);
        let t = FakeTarget::new(false);
        for p in [&b""[..], b"m", b"mzz,1", b"m1,", b"M1,2:3", b"X", b"Z9,1,1", b"Z0", b"p", b"P", b"G1", b"qXfer:"] {
            let _ = s.handle(p, &t);
        }
    }

    fn regs() -> (KvmRegs, KvmSregs) {
        let r = KvmRegs {
            rax: 1,
            rbx: 2,
            rcx: 3,
            rdx: 4,
            rsi: 5,
            rdi: 6,
            rsp: 7,
            rbp: 8,
            r8: 9,
            r15: 16,
            rip: 0x1234,
            rflags: 0x202,
            ..KvmRegs::default()
        };
        let mut s = KvmSregs::default();
        s.cs.selector = 0x8;
        s.ss.selector = 0x10;
        (r, s)
    }

    #[test]
    fn registers_in_gdb_order_rbp_before_rsp() {
        let (r, s) = regs();
        let g = encode_regs(&r, &s);
        assert_eq!(g.len(), G_BYTES);
        assert_eq!(G_BYTES, 276);
        let word = |i: usize| u64::from_le_bytes(g[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!((0..6).map(word).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
        assert_eq!((word(6), word(7)), (8, 7), "gdb: rbp (6) then rsp (7)");
        assert_eq!((word(8), word(15), word(16)), (9, 16, 0x1234));
        assert_eq!(&g[136..140], &0x202u32.to_le_bytes());
        assert_eq!(&g[140..144], &8u32.to_le_bytes());
        assert_eq!(&g[144..148], &0x10u32.to_le_bytes());
        // G writes them back the same way.
        let mut back = KvmRegs::default();
        assert!(decode_regs(&mut back, &g));
        assert_eq!(back, r);
        assert!(!decode_regs(&mut back, &g[..7]), "a torn register is refused");
    }

    /// Guest RAM in a Vec, with registers, for the dispatcher.
    struct FakeTarget {
        ram: RefCell<Vec<u8>>,
        regs: RefCell<KvmRegs>,
        sregs: KvmSregs,
        debug: RefCell<Option<KvmGuestDebug>>,
    }

    const RAM: usize = 4 << 20;

    impl FakeTarget {
        /// 4 MiB; with `paging`, the identity map the hypervisor builds (2 MiB pages for the
        /// first 2 MiB, 4 KiB pages for the second, so that both walks are tested) with
        /// 0x200000..0x201000 left unmapped, and a 1 GiB page mapping 0x40000000.. to 0.
        fn new(paging: bool) -> FakeTarget {
            let (regs, mut sregs) = regs();
            let t = FakeTarget {
                ram: RefCell::new(vec![0; RAM]),
                regs: RefCell::new(regs),
                sregs: KvmSregs::default(),
                debug: RefCell::new(None),
            };
            if paging {
                let (pml4, pdpt, pd, pt) = (0x3f_c000u64, 0x3f_d000u64, 0x3f_e000u64, 0x3f_f000u64);
                t.put(pml4, pdpt | 3);
                t.put(pdpt, pd | 3);
                t.put(pdpt + 8, 0x83); // 1 GiB page at 0
                t.put(pd, 0x83); // 2 MiB page at 0
                t.put(pd + 8, pt | 3);
                for i in 1..512 {
                    t.put(pt + i * 8, (0x20_0000 + i * 0x1000) | 3);
                }
                t.put(pd + 16, 0x1000_0000 | 0x83); // maps outside RAM
                sregs.cr0 = CR0_PG | 1;
                sregs.efer = EFER_LMA;
                sregs.cr3 = pml4;
            }
            FakeTarget { sregs, ..t }
        }

        fn put(&self, at: u64, v: u64) {
            self.ram.borrow_mut()[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
        }
    }

    impl Target for FakeTarget {
        fn regs(&self) -> io::Result<KvmRegs> {
            Ok(*self.regs.borrow())
        }
        fn set_regs(&self, regs: &KvmRegs) -> io::Result<()> {
            *self.regs.borrow_mut() = *regs;
            Ok(())
        }
        fn sregs(&self) -> io::Result<KvmSregs> {
            Ok(self.sregs)
        }
        fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
            let ram = self.ram.borrow();
            let at = usize::try_from(gpa).map_err(io::Error::other)?;
            let src = ram.get(at..at.checked_add(buf.len()).ok_or(io::ErrorKind::InvalidInput)?);
            buf.copy_from_slice(src.ok_or(io::ErrorKind::InvalidInput)?);
            Ok(())
        }
        fn write_phys(&self, gpa: u64, buf: &[u8]) -> io::Result<()> {
            let mut ram = self.ram.borrow_mut();
            let at = usize::try_from(gpa).map_err(io::Error::other)?;
            let dst = ram.get_mut(at..at.checked_add(buf.len()).ok_or(io::ErrorKind::InvalidInput)?);
            dst.ok_or(io::ErrorKind::InvalidInput)?.copy_from_slice(buf);
            Ok(())
        }
        fn set_debug(&self, dbg: &KvmGuestDebug) -> io::Result<()> {
            *self.debug.borrow_mut() = Some(*dbg);
            Ok(())
        }
    }

    fn ask(s: &mut Session, t: &FakeTarget, p: &str) -> String {
        match s.handle(p.as_bytes(), t) {
            Action::Reply(r) => String::from_utf8_lossy(&r).into_owned(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn page_walk_small_large_huge_unmapped_and_outside_ram() {
        let t = FakeTarget::new(true);
        let cr3 = t.sregs.cr3;
        assert_eq!(translate(&t, cr3, 0x1234), Some((0x1234, 0x20_0000 - 0x1234)), "2 MiB page");
        assert_eq!(translate(&t, cr3, 0x20_1008), Some((0x20_1008, 0xff8)), "4 KiB page");
        assert_eq!(translate(&t, cr3, 0x20_0010), None, "PT entry 0 is not present");
        assert_eq!(translate(&t, cr3, 0x4000_0010), Some((0x10, (1 << 30) - 0x10)), "1 GiB page");
        assert_eq!(translate(&t, cr3, 0x60_0000), None, "PD entry 3 is not present");
        assert_eq!(translate(&t, cr3, 0x8000_0000_0000), None, "not canonical");
        assert_eq!(translate(&t, cr3, 0xffff_8000_0000_0000), None, "PML4 entry 256 is not present");
        assert_eq!(translate(&t, RAM as u64, 0), None, "tables outside RAM");
        let mut s = Session::new(false);
        t.ram.borrow_mut()[0x20_1ffe..0x20_2002].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(ask(&mut s, &t, "m201ffe,4"), "01020304", "a read across two 4 KiB pages");
        assert_eq!(ask(&mut s, &t, "m1ffffe,4"), "E01", "runs into the unmapped page");
        assert_eq!(ask(&mut s, &t, "m400000,1"), "E01", "mapped to 0x10000000, outside RAM");
        assert_eq!(ask(&mut s, &t, "mffffffffffffffff,2"), "E01");
        assert_eq!(ask(&mut s, &t, "M1fffff,2:aabb"), "E01", "a write half outside changes nothing");
        assert_eq!(t.ram.borrow()[0x1f_ffff], 0);
        assert_eq!(ask(&mut s, &t, "M100,2:aabb"), "OK");
        assert_eq!(ask(&mut s, &t, "X102,2:}#"), "OK", "binary data as the decoder hands it over");
        assert_eq!(ask(&mut s, &t, "m100,4"), "aabb7d23");
        // Without paging, virtual = physical.
        let flat = FakeTarget::new(false);
        assert_eq!(ask(&mut s, &flat, "m0,2"), "0000");
        assert_eq!(ask(&mut s, &flat, &format!("m{:x},1", RAM)), "E01");
    }

    #[test]
    fn four_debug_registers_then_e_and_their_dr7() {
        let mut s = Session::new(true);
        let t = FakeTarget::new(false);
        for (i, p) in ["Z0,10,1", "Z1,20,1", "Z2,1000,4", "Z4,2008,8"].iter().enumerate() {
            assert_eq!(ask(&mut s, &t, p), "OK", "{i}");
        }
        assert_eq!(ask(&mut s, &t, "Z0,30,1"), E_FULL, "a fifth");
        assert_eq!(ask(&mut s, &t, "Z0,10,1"), "OK", "the same breakpoint again takes no register");
        // L0..L3; RW1 = 01, LEN1 = 00 (exec), RW2 = 01 (write), LEN2 = 11 (4), RW3 = 11, LEN3 = 10 (8).
        let dr7 = 0x55 | 0b01 << 24 | 0b11 << 26 | 0b11 << 28 | 0b10 << 30 | DR7_BASE;
        assert_eq!(s.regs.dr7(), dr7);
        let dbg = s.regs.guest_debug(false);
        assert_eq!(dbg.control, kvm::KVM_GUESTDBG_ENABLE | kvm::KVM_GUESTDBG_USE_HW_BP);
        assert_eq!(dbg.debugreg[..4], [0x10, 0x20, 0x1000, 0x2008]);
        assert_eq!(dbg.debugreg[7], dr7);
        assert_eq!(s.regs.guest_debug(true).control & kvm::KVM_GUESTDBG_SINGLESTEP, kvm::KVM_GUESTDBG_SINGLESTEP);
        assert_eq!(ask(&mut s, &t, "z1,20,1"), "OK");
        assert_eq!(ask(&mut s, &t, "Z0,30,1"), "OK", "a freed register is reused");
        assert_eq!(s.regs.slots[1].unwrap().addr, 0x30);
        assert_eq!(ask(&mut s, &t, "Z2,1001,4"), "E01", "unaligned");
        assert_eq!(ask(&mut s, &t, "Z3,1000,3"), "E01", "no such length");
        // The watch hit is named in the stop reply.
        assert_eq!(s.stop_reply(Stop::Trap { dr6: 0xffff_0ff4 }), b"T05watch:1000;thread:01;");
        assert_eq!(s.stop_reply(Stop::Trap { dr6: 0xffff_4ff0 }), b"T05thread:01;");
        assert_eq!(ask(&mut s, &t, "?"), "T05thread:01;");
        for p in ["z0,10,1", "z0,30,1", "z2,1000,4", "z4,2008,8"] {
            assert_eq!(ask(&mut s, &t, p), "OK");
        }
        assert_eq!(s.regs.guest_debug(false), KvmGuestDebug::default(), "debugging off when nothing is set");
        // Where data breakpoints do not fire, read and access watchpoints get the empty reply;
        // write watchpoints are emulated, for any range up to 256 bytes.
        let mut no_watch = Session::new(false);
        assert_eq!(ask(&mut no_watch, &t, "Z2,1001,3"), "OK");
        assert_eq!(ask(&mut no_watch, &t, "Z2,1000,100"), "OK");
        assert_eq!(ask(&mut no_watch, &t, "Z2,1000,101"), "E01");
        assert_eq!(ask(&mut no_watch, &t, "Z2,1000,0"), "E01");
        assert_eq!(ask(&mut no_watch, &t, "Z3,1000,4"), "");
        assert_eq!(ask(&mut no_watch, &t, "Z4,1000,4"), "");
        assert_eq!(ask(&mut no_watch, &t, "Z1,1000,1"), "OK");
    }

    #[test]
    fn emulated_write_watchpoints_single_step_until_the_value_changes() {
        let mut s = Session::new(false);
        let t = FakeTarget::new(true);
        assert_eq!(ask(&mut s, &t, "Z2,1000,4"), "OK");
        assert_eq!(ask(&mut s, &t, "Z0,2000,1"), "OK");
        // Only the breakpoint is in DR7; the watchpoint makes every resume a single step.
        assert_eq!(s.regs.dr7(), 1 << 2 | DR7_BASE, "L1 only");
        let dbg = s.regs.guest_debug(false);
        assert_eq!(dbg.debugreg[..2], [0, 0x2000], "the watch slot is not programmed");
        assert_ne!(dbg.control & kvm::KVM_GUESTDBG_SINGLESTEP, 0);
        s.resume(&t, false).unwrap();
        assert_eq!(t.debug.borrow().unwrap(), dbg);
        t.regs.borrow_mut().rip = 0x10;
        assert_eq!(s.on_trap(&t, 0x4000), None, "nothing changed: run on");
        t.ram.borrow_mut()[0x1002] = 7;
        assert_eq!(s.on_trap(&t, 0x4000), Some(b"T05watch:1000;thread:01;".to_vec()));
        assert_eq!(ask(&mut s, &t, "?"), "T05watch:1000;thread:01;");
        // Continuing: a breakpoint reached while stepping stops there.
        s.resume(&t, false).unwrap();
        t.regs.borrow_mut().rip = 0x2000;
        assert_eq!(s.on_trap(&t, 0x4000), Some(b"T05thread:01;".to_vec()));
        // At the breakpoint, a resume first steps with that breakpoint out of DR7.
        s.resume(&t, false).unwrap();
        let past = t.debug.borrow().unwrap();
        assert_eq!((past.debugreg[1], past.debugreg[7]), (0, 0), "{past:?}");
        assert_ne!(past.control & kvm::KVM_GUESTDBG_SINGLESTEP, 0);
        t.regs.borrow_mut().rip = 0x2005;
        assert_eq!(s.on_trap(&t, 0x4000), None, "past it: on, silently");
        assert_eq!(t.debug.borrow().unwrap(), dbg, "every breakpoint back");
        // gdb's own single step stops after one instruction.
        s.resume(&t, true).unwrap();
        t.regs.borrow_mut().rip = 0x11;
        assert_eq!(s.on_trap(&t, 0x4000), Some(b"T05thread:01;".to_vec()));
        // Without watchpoints, a debug exit is always gdb's.
        s.forget_breakpoints();
        s.resume(&t, false).unwrap();
        assert_eq!(*t.debug.borrow(), Some(KvmGuestDebug::default()));
        assert_eq!(s.on_trap(&t, 0), Some(b"T05thread:01;".to_vec()));
    }

    #[test]
    fn continuing_from_a_breakpoint_steps_past_it_first() {
        let mut s = Session::new(false);
        let t = FakeTarget::new(false);
        assert_eq!(ask(&mut s, &t, "Z0,1234,1"), "OK"); // rip is 0x1234
        assert_eq!(ask(&mut s, &t, "Z1,2000,1"), "OK");
        s.resume(&t, false).unwrap();
        let past = t.debug.borrow().unwrap();
        assert_eq!(past.debugreg[..2], [0, 0x2000]);
        assert_eq!(past.debugreg[7], 1 << 2 | DR7_BASE);
        assert_ne!(past.control & kvm::KVM_GUESTDBG_SINGLESTEP, 0);
        t.regs.borrow_mut().rip = 0x1236;
        assert_eq!(s.on_trap(&t, 0x4000), None);
        let all = t.debug.borrow().unwrap();
        assert_eq!(all.debugreg[..2], [0x1234, 0x2000]);
        assert_eq!(all.debugreg[7], 5 | DR7_BASE);
        assert_eq!(all.control & kvm::KVM_GUESTDBG_SINGLESTEP, 0, "no more stepping");
        t.regs.borrow_mut().rip = 0x2000;
        assert_eq!(s.on_trap(&t, 0x2), Some(b"T05thread:01;".to_vec()), "the next breakpoint");
        // gdb's step from a breakpoint: one step, then stop.
        s.resume(&t, true).unwrap();
        t.regs.borrow_mut().rip = 0x2001;
        assert_eq!(s.on_trap(&t, 0x4000), Some(b"T05thread:01;".to_vec()));
    }

    #[test]
    fn queries_description_and_unknown_packets() {
        let mut s = Session::new(false);
        let t = FakeTarget::new(false);
        assert_eq!(
            ask(&mut s, &t, "qSupported:multiprocess+;xmlRegisters=i386"),
            "PacketSize=4000;qXfer:features:read+"
        );
        let mut xml = Vec::new();
        loop {
            let r = ask(&mut s, &t, &format!("qXfer:features:read:target.xml:{:x},200", xml.len()));
            xml.extend_from_slice(&r.as_bytes()[1..]);
            if r.starts_with('l') {
                break;
            }
            assert!(r.starts_with('m'), "{r}");
        }
        assert_eq!(xml, target_xml().as_bytes());
        let text = target_xml();
        assert!(text.contains("i386:x86-64") && text.contains("org.gnu.gdb.i386.core"));
        assert_eq!(text.matches("<reg ").count(), NUM_REGS);
        assert!(text.contains("<reg name=\"st7\" bitsize=\"80\" type=\"i387_ext\"/>"));
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
        let mut s = Session::new(false);
        let t = FakeTarget::new(false);
        assert_eq!(ask(&mut s, &t, "p6"), "0800000000000000", "rbp");
        assert_eq!(ask(&mut s, &t, "p7"), "0700000000000000", "rsp");
        assert_eq!(ask(&mut s, &t, "p11"), "02020000", "eflags");
        assert_eq!(ask(&mut s, &t, "p12"), "08000000", "cs");
        assert_eq!(ask(&mut s, &t, "p18"), "00000000000000000000", "st0");
        assert_eq!(ask(&mut s, &t, "p28"), "E01");
        assert_eq!(ask(&mut s, &t, "P10=efbeadde00000000"), "OK");
        assert_eq!(t.regs.borrow().rip, 0xdead_beef);
        assert_eq!(ask(&mut s, &t, "P7=01"), "E01", "wrong size");
        assert_eq!(ask(&mut s, &t, "P12=10000000"), "OK", "segments are accepted and ignored");
        let g = ask(&mut s, &t, "g");
        assert_eq!(g.len(), 2 * G_BYTES);
        assert_eq!(ask(&mut s, &t, &format!("G{g}")), "OK");
        assert_eq!(ask(&mut s, &t, "Gzz"), "E01");
    }
}
