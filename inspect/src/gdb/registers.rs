//! The registers gdb sees: the target description (XML) and how each register is encoded in
//! `g`, `G`, `p` and `P` packets.
//!
//! gdb's numbers, in the order of the description:
//!
//! | numbers | registers | from |
//! |---|---|---|
//! | 0–15 | rax rbx rcx rdx rsi rdi rbp rsp r8 … r15 (beware: [`Regs`] has rsp before rbp) | [`Regs`] |
//! | 16, 17 | rip, eflags (32 bits) | [`Regs`] |
//! | 18–23 | cs ss ds es fs gs (selectors, 32 bits) | [`SystemRegs`] |
//! | 24–39 | the x87 registers, always zero (gdb 13 wants them to accept x86-64) | – |
//! | 40, 41 | fs_base, gs_base (feature `org.gnu.gdb.i386.segments`, as gdb names them) | [`SystemRegs`] |
//! | 42–46 | cr0 cr2 cr3 cr4 efer (the names QEMU's x86-64 stub uses) | [`SystemRegs`] |
//!
//! `info registers cr3` and `p/x $cr0` show one; `info registers` shows the core registers
//! (not the x87 ones) and then these seven, as gdb does with QEMU: gdb 13 lists every x86
//! register that is not a floating-point or vector one. cr0, cr4 and efer are shown with the
//! names of their set bits (`[ PE MP ET NE WP AM PG ]`).

use crate::{Regs, SystemRegs};

/// Number of registers in the target description.
pub const NUM_REGS: usize = 47;
/// Bytes of the `g` packet: 17 × 8 + 7 × 4 + 8 × 10 + 8 × 4 + 7 × 8.
pub const G_BYTES: usize = 17 * 8 + 7 * 4 + 8 * 10 + 8 * 4 + 7 * 8;
/// The first register that lives in [`SystemRegs`] beyond the selectors (fs_base).
pub const FIRST_SYSTEM_REG: usize = 40;

/// Size in bytes of register `n` in the target description.
pub fn reg_size(n: usize) -> usize {
    match n {
        0..=16 => 8,
        17..=23 => 4,
        24..=31 => 10,
        32..=39 => 4,
        _ => 8,
    }
}

/// gdb's x86-64 register numbers 0–15 in [`Regs`] terms.
fn gpr(r: &Regs, n: usize) -> u64 {
    [r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15][n]
}

fn gpr_mut(r: &mut Regs, n: usize) -> &mut u64 {
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

/// Registers 40–46 (fs_base … efer) in [`SystemRegs`].
fn system_reg_mut(s: &mut SystemRegs, n: usize) -> Option<&mut u64> {
    Some(match n {
        40 => &mut s.fs_base,
        41 => &mut s.gs_base,
        42 => &mut s.cr0,
        43 => &mut s.cr2,
        44 => &mut s.cr3,
        45 => &mut s.cr4,
        46 => &mut s.efer,
        _ => return None,
    })
}

fn system_reg(s: &SystemRegs, n: usize) -> u64 {
    match n {
        40 => s.fs_base,
        41 => s.gs_base,
        42 => s.cr0,
        43 => s.cr2,
        44 => s.cr3,
        45 => s.cr4,
        46 => s.efer,
        _ => 0,
    }
}

/// The name of register `n` (for messages).
pub fn reg_name(n: usize) -> &'static str {
    const NAMES: [&str; 7] = ["fs_base", "gs_base", "cr0", "cr2", "cr3", "cr4", "efer"];
    match n {
        FIRST_SYSTEM_REG..NUM_REGS => NAMES[n - FIRST_SYSTEM_REG],
        _ => "register",
    }
}

/// Register `n`, little-endian, in its size (the x87 registers read as zero).
pub fn reg_bytes(r: &Regs, s: &SystemRegs, n: usize) -> Vec<u8> {
    let value: u64 = match n {
        0..=15 => gpr(r, n),
        16 => r.rip,
        17 => r.rflags,
        18..=23 => u64::from([s.cs, s.ss, s.ds, s.es, s.fs, s.gs][n - 18]),
        FIRST_SYSTEM_REG..NUM_REGS => system_reg(s, n),
        _ => 0,
    };
    let mut bytes = value.to_le_bytes().to_vec();
    bytes.resize(reg_size(n), 0);
    bytes
}

/// The `g` reply's bytes: every register in gdb's order.
pub fn encode_regs(r: &Regs, s: &SystemRegs) -> Vec<u8> {
    let mut out = Vec::with_capacity(G_BYTES);
    for n in 0..NUM_REGS {
        out.extend_from_slice(&reg_bytes(r, s, n));
    }
    out
}

/// The registers gdb reads at every stop, for the stop reply (`T05thread:01;` + these):
/// `10:` rip, `07:` rsp, `06:` rbp in gdb's numbering, each as its `p` reply. gdb then needs
/// no `g` to show where the guest stopped and to unwind its frame.
pub fn expedite(stop: &mut Vec<u8>, r: &Regs) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (n, v) in [(0x10u8, r.rip), (7, r.rsp), (6, r.rbp)] {
        stop.extend_from_slice(&[DIGITS[usize::from(n >> 4)], DIGITS[usize::from(n & 15)], b':']);
        for b in v.to_le_bytes() {
            stop.extend_from_slice(&[DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]]);
        }
        stop.push(b';');
    }
}

/// Writes register `n` from its little-endian bytes into `r` or `s`. Segment selectors and x87
/// registers are accepted and ignored (the guest's segments are fixed by the machine); `false`
/// for no such register or a wrong size.
pub fn set_reg(r: &mut Regs, s: &mut SystemRegs, n: usize, bytes: &[u8]) -> bool {
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
        _ => {
            if let Some(reg) = system_reg_mut(s, n) {
                *reg = v;
            }
        }
    }
    true
}

/// Applies a `G` packet's bytes (all registers in order; a shorter packet sets the first ones).
pub fn decode_regs(r: &mut Regs, s: &mut SystemRegs, bytes: &[u8]) -> bool {
    let mut at = 0;
    for n in 0..NUM_REGS {
        let size = reg_size(n);
        if at + size > bytes.len() {
            return at == bytes.len();
        }
        set_reg(r, s, n, &bytes[at..at + size]);
        at += size;
    }
    at == bytes.len()
}

/// `<flags>` fields as (name, bit).
type Fields = &'static [(&'static str, u32)];

const EFLAGS: Fields = &[
    ("CF", 0),
    ("", 1),
    ("PF", 2),
    ("AF", 4),
    ("ZF", 6),
    ("SF", 7),
    ("TF", 8),
    ("IF", 9),
    ("DF", 10),
    ("OF", 11),
    ("NT", 14),
    ("RF", 16),
    ("VM", 17),
    ("AC", 18),
    ("VIF", 19),
    ("VIP", 20),
    ("ID", 21),
];
const CR0: Fields = &[
    ("PE", 0),
    ("MP", 1),
    ("EM", 2),
    ("TS", 3),
    ("ET", 4),
    ("NE", 5),
    ("WP", 16),
    ("AM", 18),
    ("NW", 29),
    ("CD", 30),
    ("PG", 31),
];
const CR4: Fields = &[
    ("VME", 0),
    ("PVI", 1),
    ("TSD", 2),
    ("DE", 3),
    ("PSE", 4),
    ("PAE", 5),
    ("MCE", 6),
    ("PGE", 7),
    ("PCE", 8),
    ("OSFXSR", 9),
    ("OSXMMEXCPT", 10),
    ("UMIP", 11),
    ("LA57", 12),
    ("FSGSBASE", 16),
    ("PCIDE", 17),
    ("OSXSAVE", 18),
    ("SMEP", 20),
    ("SMAP", 21),
    ("PKE", 22),
];
const EFER: Fields = &[("SCE", 0), ("LME", 8), ("LMA", 10), ("NXE", 11)];

fn flags(id: &str, size: u32, fields: Fields) -> String {
    let mut x = format!("<flags id=\"{id}\" size=\"{size}\">");
    for (name, bit) in fields {
        x += &format!("<field name=\"{name}\" start=\"{bit}\" end=\"{bit}\"/>");
    }
    x + "</flags>\n"
}

fn reg(name: &str, bits: u32, ty: &str, group: Option<&str>) -> String {
    let group = group.map(|g| format!(" group=\"{g}\"")).unwrap_or_default();
    format!("<reg name=\"{name}\" bitsize=\"{bits}\" type=\"{ty}\"{group}/>\n")
}

/// The core feature: x86-64 with the x87 registers, without which gdb 13 rejects the
/// description and falls back to 32-bit i386.
fn core_feature() -> String {
    let mut x = String::from("<feature name=\"org.gnu.gdb.i386.core\">\n");
    x += &flags("i386_eflags", 4, EFLAGS);
    for (i, name) in ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"].iter().enumerate() {
        x += &reg(name, 64, if i >= 6 { "data_ptr" } else { "int64" }, None);
    }
    for i in 8..16 {
        x += &reg(&format!("r{i}"), 64, "int64", None);
    }
    x += &reg("rip", 64, "code_ptr", None);
    x += &reg("eflags", 32, "i386_eflags", None);
    for name in ["cs", "ss", "ds", "es", "fs", "gs"] {
        x += &reg(name, 32, "int32", None);
    }
    for i in 0..8 {
        x += &reg(&format!("st{i}"), 80, "i387_ext", None);
    }
    for name in ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"] {
        x += &reg(name, 32, "int", Some("float"));
    }
    x + "</feature>\n"
}

/// The target description gdb reads with `qXfer:features:read:target.xml`.
pub fn target_xml() -> String {
    let mut x = String::from(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE target SYSTEM \"gdb-target.dtd\">\n<target version=\"1.0\">\n\
         <architecture>i386:x86-64</architecture>\n",
    );
    x += &core_feature();
    x += "<feature name=\"org.gnu.gdb.i386.segments\">\n";
    x += &reg("fs_base", 64, "int", None);
    x += &reg("gs_base", 64, "int", None);
    x += "</feature>\n<feature name=\"org.mini_hypervisor.x86_64.control\">\n";
    x += &flags("x64_cr0", 8, CR0);
    x += &flags("x64_cr4", 8, CR4);
    x += &flags("x64_efer", 8, EFER);
    x += &reg("cr0", 64, "x64_cr0", None);
    x += &reg("cr2", 64, "data_ptr", None);
    x += &reg("cr3", 64, "data_ptr", None);
    x += &reg("cr4", 64, "x64_cr4", None);
    x += &reg("efer", 64, "x64_efer", None);
    x + "</feature>\n</target>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fake target's registers, and system registers with more set.
    fn regs() -> (Regs, SystemRegs) {
        let r = *super::super::fake::FakeTarget::new(false).regs.borrow();
        let s = SystemRegs {
            cs: 0x8,
            ss: 0x10,
            fs_base: 0xf5,
            cr0: 0x8000_0011,
            cr3: 0x1f_c000,
            efer: 0x500,
            ..SystemRegs::default()
        };
        (r, s)
    }

    #[test]
    fn registers_in_gdb_order_rbp_before_rsp() {
        let (r, s) = regs();
        let g = encode_regs(&r, &s);
        assert_eq!(g.len(), G_BYTES);
        assert_eq!(G_BYTES, 332);
        let word = |i: usize| u64::from_le_bytes(g[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!((0..6).map(word).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
        assert_eq!((word(6), word(7)), (8, 7), "gdb: rbp (6) then rsp (7)");
        assert_eq!((word(8), word(15), word(16)), (9, 16, 0x1234));
        assert_eq!(&g[136..140], &0x202u32.to_le_bytes());
        assert_eq!(&g[140..144], &8u32.to_le_bytes());
        assert_eq!(&g[144..148], &0x10u32.to_le_bytes());
        // After the x87 registers (at 276): fs_base, gs_base, cr0, cr2, cr3, cr4, efer.
        let sys = |i: usize| u64::from_le_bytes(g[276 + i * 8..284 + i * 8].try_into().unwrap());
        assert_eq!((0..7).map(sys).collect::<Vec<_>>(), [0xf5, 0, 0x8000_0011, 0, 0x1f_c000, 0, 0x500]);
        // G writes them back the same way.
        let (mut back, mut back_s) = (Regs::default(), SystemRegs::default());
        assert!(decode_regs(&mut back, &mut back_s, &g));
        assert_eq!(back, r);
        assert_eq!((back_s.cr0, back_s.cr3, back_s.efer, back_s.fs_base), (s.cr0, s.cr3, s.efer, s.fs_base));
        assert!(!decode_regs(&mut back, &mut back_s, &g[..7]), "a torn register is refused");
        assert!(decode_regs(&mut back, &mut back_s, &g[..136]), "the first registers only");
    }

    #[test]
    fn a_stop_reply_carries_rip_rsp_and_rbp_as_p_would() {
        let (r, s) = regs();
        let mut stop = b"T05thread:01;".to_vec();
        expedite(&mut stop, &r);
        let text = String::from_utf8(stop).unwrap();
        let hex = |n: usize| String::from_utf8(super::super::protocol::to_hex(&reg_bytes(&r, &s, n))).unwrap();
        assert_eq!(text, format!("T05thread:01;10:{};07:{};06:{};", hex(16), hex(7), hex(6)));
    }

    #[test]
    fn single_registers_have_their_sizes() {
        let (mut r, mut s) = regs();
        assert_eq!(reg_bytes(&r, &s, 44), 0x1f_c000u64.to_le_bytes(), "cr3");
        assert_eq!(reg_bytes(&r, &s, 24), [0; 10], "st0");
        assert!(set_reg(&mut r, &mut s, 43, &0xdeadu64.to_le_bytes()));
        assert_eq!(s.cr2, 0xdead);
        assert!(!set_reg(&mut r, &mut s, 43, &[1, 2, 3, 4]), "cr2 has 8 bytes");
        assert!(!set_reg(&mut r, &mut s, NUM_REGS, &[0; 8]));
        assert!(set_reg(&mut r, &mut s, 18, &[0x10, 0, 0, 0]), "a selector: accepted, ignored");
        assert_eq!(s.cs, 8);
        assert_eq!((reg_name(42), reg_name(46), reg_name(3)), ("cr0", "efer", "register"));
    }

    #[test]
    fn the_description_numbers_the_registers_as_the_packets_do() {
        let text = target_xml();
        assert!(text.contains("i386:x86-64") && text.contains("org.gnu.gdb.i386.core"));
        assert!(text.contains("org.gnu.gdb.i386.segments"));
        assert_eq!(text.matches("<reg ").count(), NUM_REGS);
        let names: Vec<&str> = text.split("<reg name=\"").skip(1).map(|r| r.split('"').next().unwrap()).collect();
        assert_eq!(names[6..8], ["rbp", "rsp"]);
        assert_eq!(names[16..18], ["rip", "eflags"]);
        assert_eq!(names[40..], ["fs_base", "gs_base", "cr0", "cr2", "cr3", "cr4", "efer"]);
        let bits: usize =
            text.split("bitsize=\"").skip(1).map(|r| r.split('"').next().unwrap().parse::<usize>().unwrap()).sum();
        assert_eq!(bits / 8, G_BYTES);
        assert!(text.contains("<reg name=\"st7\" bitsize=\"80\" type=\"i387_ext\"/>"));
        assert!(text.contains("<field name=\"PG\" start=\"31\" end=\"31\"/>"));
    }
}
