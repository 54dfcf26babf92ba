//! The guest's call chain, innermost first, followed with the DWARF call-frame information of
//! its ELF (`.debug_frame`): at each frame, the rules for its address say where the caller's
//! frame (the CFA) is and where the return address and the registers were saved. This works
//! at `-O0` and at `-O2` alike, also where a function keeps no frame pointer, and in its
//! prologue; a frame-pointer chain would follow `-O0` code only. Where the ELF has no such
//! information for a function (a Rust guest: rustc writes none with `-C panic=abort`), the
//! frame pointer is followed instead, if the function's code, as its ELF holds it, begins by
//! setting one up (`push %rbp; mov %rsp,%rbp`, which the Rust guests are built to do).
//!
//! Nothing the guest left is trusted: the walk stops after [`MAX_FRAMES`] frames; every read
//! is of an aligned 8-byte word through the guest's own page tables, inside RAM; each frame's
//! CFA must lie strictly above the one before (the stack grows down, so callers are above);
//! and each return address must lie in the guest's code, as its ELF says. When one of these
//! fails, the chain stops there, with a line that says why.

use super::Evidence;
use crate::Regs;
use crate::page_walk::{self, ReadPhys, WalkEnd};
use crate::symbols::Symbols;
use crate::symbols::frame::{REGS, RSP, Row, Rule};

/// The deepest chain shown.
pub const MAX_FRAMES: usize = 32;

/// A call chain: the addresses of its frames, innermost first (RIP, then return addresses),
/// and why it stopped where it did, when that is worth saying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Backtrace {
    pub frames: Vec<u64>,
    pub stop: Option<String>,
}

/// What a walk reads: the registers where the guest stopped, and its memory through its page
/// tables.
#[derive(Clone, Copy)]
pub(crate) struct Stack<'a> {
    pub regs: &'a Regs,
    /// The guest's CR3: its page tables.
    pub cr3: u64,
    pub read: ReadPhys<'a>,
}

impl<'a> Stack<'a> {
    /// The stack of a failed VM.
    pub fn of(e: &Evidence<'a>) -> Stack<'a> {
        Stack { regs: e.regs, cr3: e.sregs.cr3, read: e.read }
    }
}

/// The registers in DWARF's numbering (rax, rdx, rcx, rbx, rsi, rdi, rbp, rsp, r8..r15, rip).
fn dwarf_regs(r: &Regs) -> [Option<u64>; REGS] {
    [
        r.rax, r.rdx, r.rcx, r.rbx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15,
        r.rip,
    ]
    .map(Some)
}

/// The aligned 8-byte word at guest-virtual `va`, read through the guest's page tables.
fn word(s: &Stack, va: u64) -> Option<u64> {
    if va % 8 != 0 {
        return None;
    }
    let WalkEnd::Page { pa, .. } = page_walk::walk(s.read, s.cr3, va, |_| {}) else { return None };
    let mut bytes = [0u8; 8];
    (s.read)(pa, &mut bytes).then(|| u64::from_le_bytes(bytes))
}

/// Follows the chain from the registers of `s`, with the call-frame information of `symbols`,
/// for at most `max` frames.
pub(crate) fn unwind(s: &Stack, symbols: &Symbols, max: usize) -> Backtrace {
    let mut regs = dwarf_regs(s.regs);
    let mut frames = vec![s.regs.rip];
    let mut last_cfa = None;
    // The address whose rules apply: RIP itself, then each call (return address - 1).
    let mut lookup = s.regs.rip;
    let stop = |frames: Vec<u64>, why: String| Backtrace { frames, stop: Some(why) };
    while frames.len() < max {
        let pc = *frames.last().unwrap_or(&0);
        let row = match symbols.frame_row(lookup).or_else(|| frame_pointer_row(symbols, lookup, frames.len() == 1)) {
            Some(row) => row,
            // RIP outside the code (a call through a bad pointer): the state right after the
            // call, whose return address is on top of the stack.
            None if frames.len() == 1 && !symbols.in_code(pc) => Row::AFTER_CALL,
            None => {
                let named = symbols.function(lookup).map(|(name, _)| name);
                return match named {
                    // The entry point, in assembly: the chain's normal end.
                    Some("_start") | None => Backtrace { frames, stop: None },
                    Some(name) => {
                        stop(frames, format!("{name} has no call-frame information: its callers are unknown"))
                    }
                };
            }
        };
        let Some((reg, offset)) = row.cfa else {
            return stop(frames, "the frame's address is computed by a DWARF expression, which is not followed".into());
        };
        let Some(base) = regs[usize::from(reg)] else {
            return stop(frames, "the frame's address depends on a register whose value is lost".into());
        };
        let Some(cfa) = base.checked_add_signed(offset) else {
            let why = format!(
                "the caller's frame would be at {base:#x} + {offset:#x}, past the top of the address space: \
                 a stack overflow below address 0?"
            );
            return stop(frames, why);
        };
        let rsp = regs[RSP].unwrap_or(0);
        if cfa <= rsp || last_cfa.is_some_and(|last| cfa <= last) {
            return stop(
                frames,
                format!("the caller's frame would be at {cfa:#x}, not above this one: a corrupted stack?"),
            );
        }
        let mut caller = [None; REGS];
        for (n, rule) in row.rules.iter().enumerate() {
            caller[n] = match *rule {
                Rule::Same => regs[n],
                Rule::Undefined => None,
                Rule::Offset(at) => cfa.checked_add_signed(at).and_then(|va| word(s, va)),
                Rule::ValOffset(at) => cfa.checked_add_signed(at),
                Rule::Register(other) => regs.get(usize::from(other)).copied().flatten(),
            };
        }
        caller[RSP] = Some(cfa);
        let Some(ret) = caller[row.ra] else {
            return match row.rules[row.ra] {
                Rule::Offset(at) => {
                    let at = cfa.wrapping_add_signed(at);
                    stop(
                        frames,
                        format!("the return address at {at:#x} cannot be read through the guest's page tables"),
                    )
                }
                _ => Backtrace { frames, stop: None }, // no caller: the outermost frame
            };
        };
        if !symbols.in_code(ret) {
            return stop(
                frames,
                format!("the return address on the stack, {ret:#x}, is not in the guest's code: a corrupted stack?"),
            );
        }
        frames.push(ret);
        (regs, last_cfa, lookup) = (caller, Some(cfa), ret.wrapping_sub(1));
    }
    stop(frames, format!("more frames not shown (at most {max})"))
}

/// The rules at `pc` from the frame-pointer convention, for a function without call-frame
/// information whose code begins with `push %rbp; mov %rsp,%rbp`: before the `push` (and, at
/// RIP, on a `ret`, after the `pop %rbp`) the return address is on top of the stack; after the
/// `push`, above the saved RBP; once RBP is set, RBP locates both. `None` for any other code.
pub(crate) fn frame_pointer_row(symbols: &Symbols, pc: u64, innermost: bool) -> Option<Row> {
    const PROLOGUE: [u8; 4] = [0x55, 0x48, 0x89, 0xe5];
    const RET: u8 = 0xc3;
    let (_, offset) = symbols.function(pc)?;
    if symbols.code_at(pc - offset, PROLOGUE.len())? != PROLOGUE {
        return None;
    }
    Some(match offset {
        0 => Row::AFTER_CALL,
        _ if innermost && symbols.code_at(pc, 1) == Some(&[RET]) => Row::AFTER_CALL,
        1..4 => Row::frame_pointer(false),
        _ => Row::frame_pointer(true),
    })
}

/// The backtrace lines of the crash report: `  backtrace:`, then one line per frame, `    #0
/// 0x1e in guest_main+0xe (crash.c:9)`, callers named by the line of their call (a run of
/// three or more frames with the same return address, a recursion, in two lines), then why
/// it stopped if that is worth saying.
pub(crate) fn lines(s: &Stack, symbols: &Symbols) -> String {
    let trace = unwind(s, symbols, MAX_FRAMES);
    let mut out = vec!["  backtrace:".to_owned()];
    let mut n = 0;
    while let Some(&addr) = trace.frames.get(n) {
        let named = if n == 0 { symbols.describe(addr) } else { symbols.describe_return(addr) };
        out.push(match named {
            Some(name) => format!("    #{n} {addr:#x} in {name}"),
            None => format!("    #{n} {addr:#x}"),
        });
        let same = trace.frames[n + 1..].iter().take_while(|&&next| next == addr && n > 0).count();
        if same >= 2 {
            out.push(format!("    #{}..#{}: the same call, {same} more times (a recursion)", n + 1, n + same));
            n += same;
        }
        n += 1;
    }
    if let Some(why) = trace.stop {
        out.push(format!("    (the chain stops here: {why})"));
    }
    out.join("\n")
}

/// For `--trace`: when RIP is in the guest library, the first caller outside it,
/// `guest_main+0x2a (myfiles.c:17)`, so that the student's own line shows; `None` when RIP is
/// already in the student's code, or no such caller is found (a tail call leaves none: the
/// caller jumped to the library instead of calling it). The C library is recognised by source
/// file: a function whose first instruction's line is in `hv.c` or `hv.h`; the Rust one, and
/// what it brings of the Rust toolchain, by name (`hv::…`, `core::…`, `<hv::File as …>::…`);
/// and the assembly both have, `_start` and `hv_fail`, without lines.
pub(crate) fn first_outside_library(s: &Stack, symbols: &Symbols) -> Option<String> {
    let in_library =
        |addr: u64| symbols.function(addr).is_some_and(|(name, _)| in_guest_library(name, symbols.function_file(addr)));
    if !in_library(s.regs.rip) {
        return None;
    }
    let trace = unwind(s, symbols, MAX_FRAMES);
    let caller = trace.frames.iter().skip(1).find(|&&ret| !in_library(ret.wrapping_sub(1)))?;
    symbols.describe_return(*caller)
}

/// Whether the function `name`, whose first line is in `file`, is the guest library's (see
/// [`first_outside_library`]).
pub(crate) fn in_guest_library(name: &str, file: Option<&str>) -> bool {
    const RUST_LIBRARY: [&str; 4] = ["hv::", "core::", "compiler_builtins::", "__rustc::"];
    let path = name.strip_prefix('<').unwrap_or(name);
    matches!(file, Some("hv.c" | "hv.h"))
        || RUST_LIBRARY.iter().any(|crate_| path.starts_with(crate_))
        || matches!(name, "_start" | "hv_fail")
}
