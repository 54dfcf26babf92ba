//! Just enough of an x86-64 decoder for a crash report: the length of the instruction at RIP
//! (prefixes, opcode, ModRM, SIB, displacement, immediate), whether it has a memory operand,
//! and a name for the instructions that typically end a guest (`ud2`, `int3`, privileged and
//! I/O instructions, divisions, SSE). Anything it does not know gets no length and no name.

/// The longest x86 instruction.
pub const MAX_LEN: usize = 15;

/// What the decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insn {
    /// Length in bytes, if decoded.
    pub len: Option<usize>,
    /// It reads or writes memory through an address it computes (a ModRM memory operand, an
    /// absolute address, or a string instruction's RSI/RDI), not only the stack.
    pub memory: bool,
    /// A port access: `in`, `out`, `ins`, `outs`.
    pub io: bool,
    /// What it is, for the instructions that end guests.
    pub name: Option<&'static str>,
}

/// The immediate after the opcode (and ModRM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Imm {
    None,
    /// That many bytes.
    Bytes(usize),
    /// 2 bytes with an operand-size prefix, else 4.
    Z,
    /// `mov reg, imm`: 8 bytes with REX.W, else as `Z`.
    V,
    /// An absolute address (`mov al, [moffs]`): 8 bytes, 4 with an address-size prefix.
    Moffs,
}

/// Has-ModRM and immediate of one-byte opcodes valid in 64-bit mode; `None` for the others.
fn one_byte(op: u8) -> Option<(bool, Imm)> {
    use Imm::*;
    Some(match op {
        0x00..=0x3f => match op & 7 {
            0..=3 => (true, None),
            4 => (false, Bytes(1)),
            5 => (false, Z),
            _ => return Option::None, // segment pushes, BCD: invalid in 64-bit mode
        },
        0x50..=0x5f | 0x6c..=0x6f | 0x90..=0x99 | 0x9b..=0x9f | 0xa4..=0xa7 | 0xaa..=0xaf => (false, None),
        0x63 | 0x84..=0x8f | 0xd0..=0xd3 | 0xd8..=0xdf | 0xfe | 0xff => (true, None),
        0x68 => (false, Z),
        0x69 | 0x81 | 0xc7 => (true, Z),
        0x6a | 0x70..=0x7f | 0xa8 | 0xb0..=0xb7 | 0xcd | 0xe0..=0xe7 | 0xeb => (false, Bytes(1)),
        0x6b | 0x80 | 0x83 | 0xc0 | 0xc1 | 0xc6 => (true, Bytes(1)),
        0xa0..=0xa3 => (false, Moffs),
        0xa9 => (false, Z),
        0xb8..=0xbf => (false, V),
        0xc2 | 0xca => (false, Bytes(2)),
        0xc3 | 0xc9 | 0xcb | 0xcc | 0xcf | 0xd7 | 0xec..=0xef | 0xf1 | 0xf4 | 0xf5 | 0xf8..=0xfd => (false, None),
        0xc8 => (false, Bytes(3)),
        0xe8 | 0xe9 => (false, Bytes(4)),
        0xf6 | 0xf7 => (true, None), // test's immediate depends on ModRM: see `decode`
        _ => return Option::None,
    })
}

/// Has-ModRM and immediate of two-byte opcodes (`0f xx`).
fn two_byte(op: u8) -> (bool, Imm) {
    match op {
        0x05..=0x09 | 0x0b | 0x0e | 0x30..=0x37 | 0x77 | 0xa0..=0xa2 | 0xa8..=0xaa | 0xc8..=0xcf => (false, Imm::None),
        0x80..=0x8f => (false, Imm::Bytes(4)),
        0x0f | 0x70..=0x73 | 0xa4 | 0xac | 0xba | 0xc2 | 0xc4..=0xc6 => (true, Imm::Bytes(1)),
        _ => (true, Imm::None),
    }
}

/// The prefixes that change how the rest is decoded.
#[derive(Debug, Clone, Copy, Default)]
struct Prefixes {
    opsize16: bool,
    addr32: bool,
    rex_w: bool,
}

/// Skips the prefixes: where the opcode starts, and what they say.
fn prefixes(bytes: &[u8]) -> Option<(usize, Prefixes)> {
    let mut p = Prefixes::default();
    for (at, &b) in bytes.iter().enumerate().take(MAX_LEN - 1) {
        match b {
            0x66 => p.opsize16 = true,
            0x67 => p.addr32 = true,
            0xf0 | 0xf2 | 0xf3 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 => {}
            0x40..=0x4f => p.rex_w = b & 8 != 0, // REX: the last prefix
            _ => return Some((at, p)),
        }
    }
    None
}

/// The opcode at `bytes[at..]`: its bytes (one-byte opcodes padded with 0), whether a ModRM
/// byte follows, its immediate, and its length; `Err` with what to say when unknown.
fn opcode(bytes: &[u8], at: usize) -> Result<([u8; 2], bool, Imm, usize), Option<&'static str>> {
    match *bytes.get(at).ok_or(None)? {
        0x0f => match *bytes.get(at + 1).ok_or(None)? {
            0x38 => Ok(([0x0f, 0x38], true, Imm::None, 3)),
            0x3a => Ok(([0x0f, 0x3a], true, Imm::Bytes(1), 3)),
            op2 => {
                let (modrm, imm) = two_byte(op2);
                Ok(([0x0f, op2], modrm, imm, 2))
            }
        },
        0xc4 | 0xc5 | 0x62 => Err(Some("an AVX instruction (VEX or EVEX prefix)")),
        op => one_byte(op).map(|(modrm, imm)| ([op, 0], modrm, imm, 1)).ok_or(None),
    }
}

/// The ModRM operand at `bytes[at..]` (with its SIB and displacement): its length, whether it
/// is in memory, and the reg field (which selects the instruction in opcode groups).
fn operand(bytes: &[u8], at: usize) -> Option<(usize, bool, u8)> {
    let m = *bytes.get(at)?;
    let (mode, reg, rm) = (m >> 6, (m >> 3) & 7, m & 7);
    if mode == 3 {
        return Some((1, false, reg));
    }
    let mut len = 1;
    if rm == 4 {
        let sib = *bytes.get(at + 1)?;
        len += 1;
        if mode == 0 && sib & 7 == 5 {
            len += 4; // no base register: disp32
        }
    }
    len += match (mode, rm) {
        (0, 5) | (2, _) => 4, // RIP-relative, disp32
        (1, _) => 1,
        _ => 0,
    };
    Some((len, true, reg))
}

/// Decodes the instruction at the start of `bytes` (at most [`MAX_LEN`] of them).
pub fn decode(bytes: &[u8]) -> Insn {
    let unknown = |name| Insn { len: None, memory: false, io: false, name };
    let Some((mut at, p)) = prefixes(bytes) else { return unknown(None) };
    let (opcode, modrm, imm, opcode_len) = match opcode(bytes, at) {
        Ok(found) => found,
        Err(name) => return unknown(name),
    };
    let op = opcode[0];
    at += opcode_len;
    let mut memory = matches!(imm, Imm::Moffs) || matches!(op, 0x6c..=0x6f | 0xa4..=0xa7 | 0xaa..=0xaf);
    let mut reg = 0;
    if modrm {
        let Some((len, in_memory, field)) = operand(bytes, at) else { return unknown(None) };
        (at, memory, reg) = (at + len, in_memory, field);
    }
    let z = if p.opsize16 { 2 } else { 4 };
    at += match imm {
        Imm::None if matches!(op, 0xf6 | 0xf7) && reg < 2 => {
            if op == 0xf6 { 1 } else { z } // test r/m, imm
        }
        Imm::None => 0,
        Imm::Bytes(n) => n,
        Imm::Z => z,
        Imm::V => {
            if p.rex_w {
                8
            } else {
                z
            }
        }
        Imm::Moffs => {
            if p.addr32 {
                4
            } else {
                8
            }
        }
    };
    let len = (at <= bytes.len()).then_some(at);
    let io = matches!(op, 0x6c..=0x6f | 0xe4..=0xe7 | 0xec..=0xef);
    Insn { len, memory, io, name: name(opcode, reg, memory, p.rex_w) }
}

/// Names for the instructions that end guests, by opcode and ModRM reg field.
fn name(opcode: [u8; 2], reg: u8, memory: bool, rex_w: bool) -> Option<&'static str> {
    Some(match (opcode, reg) {
        ([0x0f, 0x0b], _) => "ud2: the undefined instruction, which raises #UD on purpose",
        ([0x0f, 0xb9 | 0xff], _) => "ud1/ud0: an undefined instruction (#UD)",
        ([0xcc, _], _) => "int3: a breakpoint (#BP)",
        ([0xcd, _], _) => "int n: a software interrupt, through the interrupt table",
        ([0xf1, _], _) => "int1: a debug trap (#DB)",
        ([0xcf, _], _) if rex_w => "iretq: a return from an interrupt handler",
        ([0xcf, _], _) => "iret: a return from an interrupt handler",
        ([0xf4, _], _) => "hlt",
        ([0xfa, _], _) => "cli: disables interrupts",
        ([0xfb, _], _) => "sti: enables interrupts",
        ([0xe4 | 0xe5 | 0xec | 0xed, _], _) => "in: an I/O port read",
        ([0xe6 | 0xe7 | 0xee | 0xef, _], _) => "out: an I/O port write",
        ([0x6c | 0x6d, _], _) => "ins: a string read from an I/O port",
        ([0x6e | 0x6f, _], _) => "outs: a string write to an I/O port",
        ([0xf6 | 0xf7, _], 6) => "div: #DE if the divisor is 0 or the quotient does not fit",
        ([0xf6 | 0xf7, _], 7) => "idiv: #DE if the divisor is 0 or the quotient does not fit",
        ([0x0f, 0x20], _) => "mov from a control register (privileged)",
        ([0x0f, 0x22], _) => "mov to a control register (privileged: #GP for a value it does not allow)",
        ([0x0f, 0x21 | 0x23], _) => "mov from or to a debug register (privileged)",
        ([0x0f, 0x01], 0) if memory => "sgdt: stores the GDT register",
        ([0x0f, 0x01], 1) if memory => "sidt: stores the interrupt table register",
        ([0x0f, 0x01], 2) if memory => "lgdt: loads the GDT register (privileged)",
        ([0x0f, 0x01], 3) if memory => "lidt: loads the interrupt table register (privileged)",
        ([0x0f, 0x01], 7) if memory => "invlpg: flushes a TLB entry (privileged)",
        ([0x0f, 0x01], _) => "a system instruction (0f 01 group, privileged or special)",
        ([0x0f, 0x00], 2) => "lldt (privileged)",
        ([0x0f, 0x00], 3) => "ltr (privileged)",
        ([0x0f, 0x30], _) => "wrmsr: writes a model-specific register (privileged: #GP for an unknown MSR)",
        ([0x0f, 0x32], _) => "rdmsr: reads a model-specific register (privileged: #GP for an unknown MSR)",
        ([0x0f, 0x31], _) => "rdtsc",
        ([0x0f, 0xa2], _) => "cpuid",
        ([0x0f, 0x05], _) => "syscall (no system call handler is set up: #UD)",
        ([0x0f, 0x07], _) => "sysret (privileged)",
        ([0x0f, 0x06 | 0x08 | 0x09], _) => "a privileged cache or task instruction (clts, invd, wbinvd)",
        ([0xd8..=0xdf, _], _) => "an x87 floating-point instruction",
        ([0x0f, 0x10..=0x17 | 0x28..=0x2f | 0x50..=0x76 | 0x78..=0x7f | 0xc2 | 0xc4..=0xc6 | 0xd0..=0xfe], _) => {
            "an SSE/MMX instruction, which the KVM of some hosts cannot emulate"
        }
        ([0x0f, 0x38 | 0x3a], _) => "an SSE/MMX instruction, which the KVM of some hosts cannot emulate",
        _ => return None,
    })
}
