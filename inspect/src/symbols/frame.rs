//! The DWARF call-frame information (`.debug_frame`, as gcc writes it with `-g` when there is
//! no `.eh_frame`, which the guests' `-fno-asynchronous-unwind-tables` leaves out): for each
//! address of the guest's code, how to find its caller's frame: the CFA (the caller's RSP just
//! before its `call`) as a register plus an offset, and where each register of the caller,
//! the return address among them, was saved.
//!
//! Each entry is a CIE (common information: alignment factors, the return-address column, and
//! the first rules) or an FDE (one function's address range and its rule changes, a small
//! program of `DW_CFA_*` opcodes). [`FrameTable::parse`] indexes the FDEs; [`FrameTable::row`]
//! runs one function's program up to an address. The section is untrusted like the rest of
//! the ELF: every read is checked, the entries and the saved states are capped, and a program
//! is read forward only, once. What this reader does not know (an augmentation, an opcode, a
//! DWARF expression) makes that entry or rule unusable, never an error of the whole ELF: the
//! backtrace just stops there.

use std::collections::HashMap;

use super::read::Reader;

/// The registers a row has rules for, by DWARF number: rax, rdx, rcx, rbx, rsi, rdi, rbp,
/// rsp, r8..r15, and 16, the return address (RIP).
pub const REGS: usize = 17;
/// DWARF's numbers of RBP and RSP.
pub const RBP: usize = 6;
/// See [`RBP`].
pub const RSP: usize = 7;
/// The return-address column of the x86-64 ABI.
pub const RA: usize = 16;
/// At most this many entries are read, and this many states remembered at once.
const MAX_ENTRIES: usize = 1 << 16;
const MAX_STATES: usize = 16;

/// Where a register of the caller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Unchanged: the callee did not touch it.
    Same,
    /// Unknown (for the return address: there is no caller).
    Undefined,
    /// Saved in memory at CFA + n.
    Offset(i64),
    /// The value CFA + n itself.
    ValOffset(i64),
    /// In this other register.
    Register(u8),
}

/// The rules at one address: the CFA as (register, offset), `None` when this reader cannot
/// compute it (a DWARF expression), where each register is, and which of them holds the
/// return address (16 on x86-64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub cfa: Option<(u8, i64)>,
    pub rules: [Rule; REGS],
    pub ra: usize,
}

impl Row {
    /// The row right after a `call`, before the callee did anything: CFA = RSP + 8, the return
    /// address at CFA - 8 (what every x86-64 CIE starts with).
    pub const AFTER_CALL: Row = {
        let mut rules = [Rule::Same; REGS];
        rules[RA] = Rule::Offset(-8);
        Row { cfa: Some((RSP as u8, 8)), rules, ra: RA }
    };

    /// The row of a function that keeps a frame pointer (`push %rbp; mov %rsp,%rbp` first, as
    /// rustc's `-C force-frame-pointers=yes` makes every function), where no call-frame
    /// information covers it: the caller's RBP at CFA - 16, the return address at CFA - 8;
    /// CFA = RSP + 16 right after the `push`, RBP + 16 once RBP is set.
    pub fn frame_pointer(rbp_set: bool) -> Row {
        let mut rules = [Rule::Same; REGS];
        rules[RA] = Rule::Offset(-8);
        rules[RBP] = Rule::Offset(-16);
        let cfa = if rbp_set { (RBP as u8, 16) } else { (RSP as u8, 16) };
        Row { cfa: Some(cfa), rules, ra: RA }
    }
}

#[derive(Debug)]
struct Cie {
    code_align: u64,
    data_align: i64,
    ra: usize,
    /// The initial instructions: a range of [`FrameTable::data`].
    program: (usize, usize),
}

#[derive(Debug)]
struct Fde {
    start: u64,
    end: u64,
    cie: usize,
    program: (usize, usize),
}

/// The call-frame information of one ELF, indexed.
#[derive(Debug, Default)]
pub struct FrameTable {
    /// The section's bytes.
    data: Vec<u8>,
    cies: Vec<Cie>,
    /// Sorted by start.
    fdes: Vec<Fde>,
}

impl FrameTable {
    /// Indexes `.debug_frame`. Entries it cannot read are left out; a section broken in the
    /// middle keeps the entries before the break.
    pub fn parse(section: &[u8]) -> FrameTable {
        let mut cie_at: HashMap<u64, usize> = HashMap::new();
        let mut cies = Vec::new();
        // (CIE offset, start, end, program range), resolved once every CIE is known.
        let mut pending = Vec::new();
        let mut r = Reader::new(section);
        for _ in 0..MAX_ENTRIES {
            let at = r.pos();
            let Some(length) = r.u32() else { break };
            let (offset_size, length) = match length {
                0xffff_ffff => match r.u64() {
                    Some(n) => (8, n),
                    None => break,
                },
                0xffff_fff0.. => break,
                n => (4, u64::from(n)),
            };
            let Some(body_len) = usize::try_from(length).ok() else { break };
            let body_at = r.pos();
            if r.skip(length).is_none() {
                break;
            }
            let mut body = Reader::at(&section[..body_at + body_len], body_at);
            let Some(id) = body.offset(offset_size) else { continue };
            let is_cie = if offset_size == 4 { id == 0xffff_ffff } else { id == u64::MAX };
            if is_cie {
                if let Some(cie) = cie(&mut body, body_at + body_len) {
                    cie_at.insert(at as u64, cies.len());
                    cies.push(cie);
                }
            } else if let (Some(start), Some(range)) = (body.u64(), body.u64()) {
                if let Some(end) = start.checked_add(range) {
                    pending.push((id, start, end, (body.pos(), body_at + body_len)));
                }
            }
        }
        let mut fdes: Vec<Fde> = pending
            .into_iter()
            .filter_map(|(id, start, end, program)| cie_at.get(&id).map(|&cie| Fde { start, end, cie, program }))
            .collect();
        fdes.sort_unstable_by_key(|f| f.start);
        FrameTable { data: section.to_vec(), cies, fdes }
    }

    /// The rules at `pc`, if an FDE covers it and its program can be run up to `pc`.
    pub fn row(&self, pc: u64) -> Option<Row> {
        let fde = self.fdes.get(self.fdes.partition_point(|f| f.start <= pc).checked_sub(1)?)?;
        if pc >= fde.end {
            return None;
        }
        let cie = self.cies.get(fde.cie)?;
        let program = |(from, to): (usize, usize)| self.data.get(from..to);
        let mut initial = Row { cfa: None, rules: [Rule::Same; REGS], ra: cie.ra };
        let mut loc = fde.start;
        run(program(cie.program)?, cie, &mut initial, None, &mut loc, None)?;
        let mut row = initial;
        run(program(fde.program)?, cie, &mut row, Some(&initial), &mut loc, Some(pc))?;
        Some(row)
    }
}

/// A CIE's fields, from after its id to `end`; `None` for one this reader does not know.
fn cie(r: &mut Reader, end: usize) -> Option<Cie> {
    let version = r.u8()?;
    if !matches!(version, 1 | 3 | 4) {
        return None;
    }
    let augmentation = r.cstr()?;
    if !augmentation.is_empty() {
        return None;
    }
    if version == 4 {
        let (address_size, segment_size) = (r.u8()?, r.u8()?);
        if address_size != 8 || segment_size != 0 {
            return None;
        }
    }
    let code_align = r.uleb()?;
    let data_align = r.sleb()?;
    let ra = if version == 1 { u64::from(r.u8()?) } else { r.uleb()? };
    let ra = usize::try_from(ra).ok().filter(|&ra| ra < REGS)?;
    Some(Cie { code_align, data_align, ra, program: (r.pos(), end) })
}

/// Runs a CIE's or FDE's program on `row`. For an FDE (`pc` given), stops before the first
/// step that moves `loc` past `pc`; `initial` is the CIE's row, for `DW_CFA_restore`. `None`
/// for an opcode this reader does not know, or a broken one.
fn run(code: &[u8], cie: &Cie, row: &mut Row, initial: Option<&Row>, loc: &mut u64, pc: Option<u64>) -> Option<()> {
    let mut r = Reader::new(code);
    let mut states: Vec<Row> = Vec::new();
    // Moves `loc` to `to`: false if that is past `pc` (the row for `pc` is complete).
    let advance = |loc: &mut u64, to: Option<u64>| -> Option<bool> {
        let to = to?;
        if pc.is_some_and(|pc| to > pc) {
            return Some(false);
        }
        *loc = to;
        Some(true)
    };
    let factored = |n: u64| n.checked_mul(cie.code_align);
    let offset = |n: i64| n.checked_mul(cie.data_align);
    // A rule for register `reg`; registers beyond the ones kept (SSE, ...) are read and ignored.
    let set = |row: &mut Row, reg: u64, rule: Rule| {
        if let Some(slot) = usize::try_from(reg).ok().and_then(|reg| row.rules.get_mut(reg)) {
            *slot = rule;
        }
    };
    let restore = |row: &mut Row, reg: u64| {
        let rule = match (initial, usize::try_from(reg)) {
            (Some(initial), Ok(reg)) if reg < REGS => initial.rules[reg],
            _ => Rule::Same,
        };
        set(row, reg, rule);
    };
    let register = |reg: u64| u8::try_from(reg).ok().filter(|&reg| usize::from(reg) < REGS);
    while r.left() > 0 {
        let op = r.u8()?;
        match (op >> 6, op & 0x3f) {
            (1, delta) => {
                if !advance(loc, factored(u64::from(delta)).and_then(|d| loc.checked_add(d)))? {
                    return Some(());
                }
            }
            (2, reg) => {
                let n = offset(i64::try_from(r.uleb()?).ok()?)?;
                set(row, u64::from(reg), Rule::Offset(n));
            }
            (3, reg) => restore(row, u64::from(reg)),
            _ => match op {
                0x00 => {} // nop
                0x01 => {
                    if !advance(loc, r.u64())? {
                        return Some(());
                    }
                }
                0x02..=0x04 => {
                    let delta = match op {
                        0x02 => u64::from(r.u8()?),
                        0x03 => u64::from(r.u16()?),
                        _ => u64::from(r.u32()?),
                    };
                    if !advance(loc, factored(delta).and_then(|d| loc.checked_add(d)))? {
                        return Some(());
                    }
                }
                0x05 => {
                    let (reg, n) = (r.uleb()?, offset(i64::try_from(r.uleb()?).ok()?)?);
                    set(row, reg, Rule::Offset(n));
                }
                0x06 => restore(row, r.uleb()?),
                0x07 => set(row, r.uleb()?, Rule::Undefined),
                0x08 => set(row, r.uleb()?, Rule::Same),
                0x09 => {
                    let (reg, other) = (r.uleb()?, r.uleb()?);
                    let rule = register(other).map_or(Rule::Undefined, Rule::Register);
                    set(row, reg, rule);
                }
                0x0a => {
                    if states.len() >= MAX_STATES {
                        return None;
                    }
                    states.push(*row);
                }
                0x0b => *row = states.pop()?, // the rules and the CFA, as remembered
                0x0c => {
                    let (reg, n) = (r.uleb()?, r.uleb()?);
                    row.cfa = register(reg).zip(i64::try_from(n).ok());
                }
                0x0d => {
                    let reg = register(r.uleb()?);
                    row.cfa = reg.zip(row.cfa.map(|(_, n)| n));
                }
                0x0e => {
                    let n = i64::try_from(r.uleb()?).ok();
                    row.cfa = row.cfa.map(|(reg, _)| reg).zip(n);
                }
                0x0f => {
                    let len = r.uleb()?;
                    r.skip(len)?;
                    row.cfa = None; // an expression: not computed here
                }
                0x10 | 0x16 => {
                    let (reg, len) = (r.uleb()?, r.uleb()?);
                    r.skip(len)?;
                    set(row, reg, Rule::Undefined);
                }
                0x11 => {
                    let (reg, n) = (r.uleb()?, offset(r.sleb()?)?);
                    set(row, reg, Rule::Offset(n));
                }
                0x12 => {
                    let (reg, n) = (r.uleb()?, offset(r.sleb()?)?);
                    row.cfa = register(reg).map(|reg| (reg, n));
                }
                0x13 => {
                    let n = offset(r.sleb()?)?;
                    row.cfa = row.cfa.map(|(reg, _)| (reg, n));
                }
                0x14 => {
                    let (reg, n) = (r.uleb()?, offset(i64::try_from(r.uleb()?).ok()?)?);
                    set(row, reg, Rule::ValOffset(n));
                }
                0x15 => {
                    let (reg, n) = (r.uleb()?, offset(r.sleb()?)?);
                    set(row, reg, Rule::ValOffset(n));
                }
                0x2e => {
                    r.uleb()?; // DW_CFA_GNU_args_size: nothing to do here
                }
                0x2f => {
                    let (reg, n) = (r.uleb()?, offset(i64::try_from(r.uleb()?).ok()?)?);
                    set(row, reg, Rule::Offset(n.checked_neg()?));
                }
                _ => return None,
            },
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 32-bit DWARF CIE (version 1) with the x86-64 initial rules, at offset 0, and one FDE
    /// for `[start, end)` with `program`.
    fn section(start: u64, end: u64, program: &[u8]) -> Vec<u8> {
        let mut cie = vec![0xff, 0xff, 0xff, 0xff, 1, 0, 1, 0x78, 16, 0x0c, 7, 8, 0x90, 1];
        while (cie.len() + 4) % 8 != 0 {
            cie.push(0);
        }
        let mut out = (cie.len() as u32).to_le_bytes().to_vec();
        out.extend(cie);
        let mut fde = 0u32.to_le_bytes().to_vec(); // the CIE at offset 0
        fde.extend(start.to_le_bytes());
        fde.extend((end - start).to_le_bytes());
        fde.extend(program);
        out.extend((fde.len() as u32).to_le_bytes());
        out.extend(fde);
        out
    }

    #[test]
    fn a_push_rbp_frame_is_followed_address_by_address() {
        // push %rbp; mov %rsp,%rbp; ...; leave at 0x20; ret at 0x21.
        let program = [
            0x41, 0x0e, 16, 0x86, 2, // at 0x11: CFA = rsp+16, rbp at CFA-16
            0x43, 0x0d, 6, // at 0x14: CFA = rbp+16
            0x4c, 0x0c, 7, 8, // at 0x20: CFA = rsp+8
        ];
        let t = FrameTable::parse(&section(0x10, 0x22, &program));
        let ra = Rule::Offset(-8);
        let at = |pc| t.row(pc).map(|row| (row.cfa, row.rules[6], row.rules[RA]));
        assert_eq!(at(0x10), Some((Some((7, 8)), Rule::Same, ra)));
        assert_eq!(at(0x11), Some((Some((7, 16)), Rule::Offset(-16), ra)));
        assert_eq!(at(0x13), Some((Some((7, 16)), Rule::Offset(-16), ra)));
        assert_eq!(at(0x14), Some((Some((6, 16)), Rule::Offset(-16), ra)));
        assert_eq!(at(0x20), Some((Some((7, 8)), Rule::Offset(-16), ra)));
        assert_eq!(at(0x21), Some((Some((7, 8)), Rule::Offset(-16), ra)));
        assert_eq!(at(0x22), None);
        assert_eq!(at(0xf), None);
        assert_eq!(Row::AFTER_CALL, t.row(0x10).unwrap());
    }

    #[test]
    fn remembered_states_expressions_and_unknown_opcodes() {
        let program = [
            0x41, 0x0e, 16, 0x0a, // at 0x11: CFA rsp+16, remember
            0x41, 0x0e, 8, // at 0x12: CFA rsp+8
            0x41, 0x0b, // at 0x13: restore: rsp+16
            0x41, 0x0f, 1, 0x77, // at 0x14: CFA by an expression
            0x41, 0x3f, // at 0x15: an unknown opcode
        ];
        let t = FrameTable::parse(&section(0x10, 0x20, &program));
        let cfa = |pc| t.row(pc).map(|row| row.cfa);
        assert_eq!(cfa(0x12), Some(Some((7, 8))));
        assert_eq!(cfa(0x13), Some(Some((7, 16))));
        assert_eq!(cfa(0x14), Some(None));
        assert_eq!(cfa(0x15), None);
        // Broken sections: nothing, or the entries before the break.
        assert!(FrameTable::parse(&[]).row(0).is_none());
        assert!(FrameTable::parse(&[0xff; 3]).row(0).is_none());
        let mut cut = section(0x10, 0x20, &[0x41]);
        cut.extend([0xf0, 0xff, 0xff, 0xff]);
        assert!(FrameTable::parse(&cut).row(0x10).is_some());
        let restore_unknown = section(0x10, 0x20, &[0x0b]);
        assert!(FrameTable::parse(&restore_unknown).row(0x10).is_none());
    }

    /// Random programs and random bytes in every field: no panic, and a row only inside the
    /// FDE's range.
    #[test]
    fn random_programs_never_panic() {
        let mut rng = crate::test_rng::Rng::new(0x5eed_f4a3e);
        for _ in 0..20_000 {
            let program: Vec<u8> = (0..rng.index(24)).map(|_| rng.byte()).collect();
            let mut bytes = section(0x10, 0x40, &program);
            for _ in 0..rng.index(3) {
                let at = rng.index(bytes.len());
                bytes[at] = rng.byte();
            }
            let t = FrameTable::parse(&bytes);
            for pc in [0, 0xf, 0x10, 0x11, 0x2f, 0x3f, 0x40, u64::MAX] {
                let row = t.row(pc);
                assert!(row.is_none() || t.fdes.iter().any(|f| f.start <= pc && pc < f.end));
            }
        }
    }
}
