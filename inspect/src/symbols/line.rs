//! The DWARF line table (`.debug_line`, versions 2 to 5, as gcc writes them): for each
//! address of the guest's code, the source file and line it was compiled from.
//!
//! Each unit is a header (the file names) and a small program for a state machine whose rows
//! are (address, file, line). Every opcode consumes at least one byte and the program never
//! jumps back, so running it takes time in proportion to its length; the rows kept are capped.

use std::collections::HashMap;

use super::SymbolError::{self, Corrupt};
use super::read::{Reader, string_at};

/// A row's `file` when it ends a sequence: the addresses from here on are not covered.
pub const END: u32 = u32::MAX;
/// A row's `file` when its file index is not in its unit's table.
pub const UNKNOWN_FILE: u32 = u32::MAX - 1;
/// At most this many rows are kept (16 bytes each), this many distinct file names, and a unit
/// may list at most this many files or directories.
pub const MAX_ROWS: usize = 1 << 19;
const MAX_FILES: usize = 1 << 16;
/// Work allowed on one `.debug_line`: a unit of work per opcode and per table entry, more per
/// unit and file name. A real guest's table takes a small part of it; a hostile one stops
/// being read there (after some 15 ms), with the rows read so far.
const WORK: usize = 1 << 21;
const UNIT_WORK: usize = 64;
const FILE_WORK: usize = 16;
/// File names longer than this are cut.
const MAX_NAME: usize = 128;

/// One row: from `addr` on (up to the next row), the code is from `file`:`line`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub addr: u64,
    pub file: u32,
    pub line: u32,
}

/// All rows of all units, sorted by address; `files` holds the names the rows point to.
#[derive(Debug, Default)]
pub struct Lines {
    pub rows: Vec<Row>,
    pub files: Vec<String>,
}

/// Where `DW_FORM_line_strp` and `DW_FORM_strp` names are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Strings<'a> {
    pub line_str: &'a [u8],
    pub str: &'a [u8],
}

const CUT: SymbolError = Corrupt("the line table (.debug_line) is cut short");
const TOO_MANY_FILES: SymbolError = Corrupt("a .debug_line unit lists more files than it can hold");

/// The table being built, and the work left for it.
struct Builder {
    lines: Lines,
    /// File name -> its index in `lines.files`.
    names: HashMap<String, u32>,
    work: usize,
}

impl Builder {
    /// Takes `n` units of work: `false` once the budget is spent.
    fn spend(&mut self, n: usize) -> bool {
        let enough = self.work >= n;
        self.work = self.work.saturating_sub(n);
        enough
    }

    /// The id of a file name (its last path component), adding it if new.
    fn intern(&mut self, path: &[u8]) -> u32 {
        let base = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        let base = base.get(..MAX_NAME.min(base.len())).unwrap_or_default();
        let name = String::from_utf8_lossy(base).into_owned();
        if let Some(&id) = self.names.get(&name) {
            return id;
        }
        if self.lines.files.len() >= MAX_FILES {
            return UNKNOWN_FILE;
        }
        let id = self.lines.files.len() as u32;
        self.lines.files.push(name.clone());
        self.names.insert(name, id);
        id
    }
}

/// Reads every unit of `.debug_line`. A unit of a version this reader does not know is
/// skipped; anything malformed is an error.
pub fn parse(section: &[u8], strings: Strings) -> Result<Lines, SymbolError> {
    let mut b = Builder { lines: Lines::default(), names: HashMap::new(), work: WORK };
    let mut r = Reader::new(section);
    while r.left() > 0 && b.lines.rows.len() < MAX_ROWS && b.spend(UNIT_WORK) {
        let length = r.u32().ok_or(CUT)?;
        let (offset_size, length) = match length {
            0xffff_ffff => (8, r.u64().ok_or(CUT)?),
            0xffff_fff0.. => return Err(Corrupt("a .debug_line unit has a reserved length")),
            n => (4, u64::from(n)),
        };
        let body = r.bytes(usize::try_from(length).map_err(|_| CUT)?).ok_or(CUT)?;
        unit(body, offset_size, strings, &mut b)?;
    }
    // End-of-sequence rows first at equal addresses: a sequence may start where one ends.
    b.lines.rows.sort_by_key(|row| (row.addr, row.file != END));
    Ok(b.lines)
}

/// The header fields the line program needs.
struct Params<'a> {
    version: u16,
    min_inst: u8,
    line_base: i8,
    line_range: u8,
    opcode_base: u8,
    standard_lengths: &'a [u8],
    /// The unit's file table: file index -> id in [`Lines::files`].
    files: Vec<u32>,
}

impl Params<'_> {
    /// The row for the state `s` (an end-of-sequence row if `end`).
    fn row(&self, s: &State, end: bool) -> Row {
        // Versions 2 to 4 count files from 1, version 5 from 0.
        let index = if self.version >= 5 { Some(s.file) } else { s.file.checked_sub(1) };
        let file = index.and_then(|i| self.files.get(usize::try_from(i).ok()?)).copied().unwrap_or(UNKNOWN_FILE);
        Row { addr: s.addr, file: if end { END } else { file }, line: u32::try_from(s.line).unwrap_or(0) }
    }

    /// Moves the address on by `operation_advance` instructions.
    fn advance(&self, s: &mut State, operation_advance: u64) {
        s.addr = s.addr.wrapping_add(operation_advance.wrapping_mul(u64::from(self.min_inst)));
    }
}

fn unit(body: &[u8], offset_size: u8, strings: Strings, b: &mut Builder) -> Result<(), SymbolError> {
    let mut u = Reader::new(body);
    let version = u.u16().ok_or(CUT)?;
    if !(2..=5).contains(&version) {
        return Ok(());
    }
    if version >= 5 {
        u.skip(2).ok_or(CUT)?; // address size, segment selector size
    }
    let header_length = u.offset(offset_size).ok_or(CUT)?;
    let program_start = usize::try_from(header_length).ok().and_then(|n| n.checked_add(u.pos())).ok_or(CUT)?;
    let program = body.get(program_start..).ok_or(CUT)?;
    let min_inst = u.u8().ok_or(CUT)?;
    if version >= 4 {
        u.u8().ok_or(CUT)?; // maximum operations per instruction (1 on x86)
    }
    u.u8().ok_or(CUT)?; // default is_stmt
    let (line_base, line_range, opcode_base) = (u.u8().ok_or(CUT)? as i8, u.u8().ok_or(CUT)?, u.u8().ok_or(CUT)?);
    if line_range == 0 {
        return Err(Corrupt("a .debug_line unit has a line range of 0"));
    }
    let standard_lengths = u.bytes(usize::from(opcode_base.saturating_sub(1))).ok_or(CUT)?;
    let mut header = Reader::new(body.get(..program_start).ok_or(CUT)?);
    header.skip(u.pos() as u64).ok_or(CUT)?;
    let files = if version >= 5 {
        entries_v5(&mut header, offset_size, strings, false, b)?;
        entries_v5(&mut header, offset_size, strings, true, b)?
    } else {
        files_v4(&mut header, b)?
    };
    let params = Params { version, min_inst, line_base, line_range, opcode_base, standard_lengths, files };
    run(program, &params, b)
}

/// Versions 2 to 4: include directories (skipped), then file entries (name, directory,
/// time, size), each list ended by an empty string. Out of work: the files read so far.
fn files_v4(h: &mut Reader, b: &mut Builder) -> Result<Vec<u32>, SymbolError> {
    let mut files = Vec::new();
    while !h.cstr().ok_or(CUT)?.is_empty() {
        if !b.spend(1) {
            return Ok(files);
        }
    }
    loop {
        let name = h.cstr().ok_or(CUT)?;
        if name.is_empty() || !b.spend(FILE_WORK) {
            return Ok(files);
        }
        if files.len() >= MAX_FILES {
            return Err(TOO_MANY_FILES);
        }
        for _ in 0..3 {
            h.uleb().ok_or(CUT)?;
        }
        files.push(b.intern(name));
    }
}

const DW_LNCT_PATH: u64 = 1;

/// Version 5: a table described by (content type, form) pairs, then its entries. For the
/// file table (`files`), the ids of the entries' paths; nothing for the directory table.
/// Out of work: the files read so far.
fn entries_v5<'a>(
    h: &mut Reader<'a>,
    offset_size: u8,
    strings: Strings<'a>,
    files: bool,
    b: &mut Builder,
) -> Result<Vec<u32>, SymbolError> {
    let columns = h.u8().ok_or(CUT)?;
    let mut format = Vec::with_capacity(usize::from(columns));
    for _ in 0..columns {
        format.push((h.uleb().ok_or(CUT)?, h.uleb().ok_or(CUT)?));
    }
    let count = h.uleb().ok_or(CUT)?;
    // Every entry takes at least one byte per column, so a count beyond the bytes left (or
    // entries without columns) cannot be right.
    if count > h.left().min(MAX_FILES) as u64 || (count > 0 && columns == 0) {
        return Err(TOO_MANY_FILES);
    }
    let mut ids = Vec::new();
    for _ in 0..count {
        if !b.spend(if files { FILE_WORK } else { 1 }) {
            break;
        }
        let mut path: &[u8] = b"?";
        for &(content, form) in &format {
            if let Some(s) = form_value(h, form, offset_size, strings)? {
                if content == DW_LNCT_PATH {
                    path = s;
                }
            }
        }
        if files {
            ids.push(b.intern(path));
        }
    }
    Ok(ids)
}

/// Reads one attribute of `form`; a string comes back as `Some`. Every form accepted takes
/// at least one byte.
fn form_value<'a>(
    h: &mut Reader<'a>,
    form: u64,
    offset_size: u8,
    strings: Strings<'a>,
) -> Result<Option<&'a [u8]>, SymbolError> {
    let indirect = |table: &'a [u8], offset: u64| string_at(table, offset, MAX_NAME).map(str::as_bytes);
    let skipped = match form {
        0x08 => return h.cstr().map(Some).ok_or(CUT), // DW_FORM_string
        0x1f => return Ok(indirect(strings.line_str, h.offset(offset_size).ok_or(CUT)?)), // line_strp
        0x0e => return Ok(indirect(strings.str, h.offset(offset_size).ok_or(CUT)?)), // strp
        0x0f | 0x1a => h.uleb().map(|_| ()),          // udata, strx (not looked up: no .debug_str_offsets)
        0x0d => h.sleb().map(|_| ()),                 // sdata
        0x0b | 0x25 => h.skip(1),                     // data1, strx1
        0x05 | 0x26 => h.skip(2),                     // data2, strx2
        0x27 => h.skip(3),                            // strx3
        0x06 | 0x28 => h.skip(4),                     // data4, strx4
        0x07 => h.skip(8),                            // data8
        0x1e => h.skip(16),                           // data16 (an MD5)
        0x09 => h.uleb().and_then(|n| h.skip(n)),     // block
        0x0a => h.u8().and_then(|n| h.skip(n.into())), // block1
        _ => return Err(Corrupt("a .debug_line file table uses an unknown form")),
    };
    skipped.map(|()| None).ok_or(CUT)
}

/// The line-number state machine's registers that matter here.
struct State {
    addr: u64,
    file: u64,
    line: u64,
}

impl State {
    fn new() -> State {
        State { addr: 0, file: 1, line: 1 }
    }
}

/// Runs one unit's line program, adding its rows (up to [`MAX_ROWS`], and while there is
/// work left).
fn run(program: &[u8], p: &Params, b: &mut Builder) -> Result<(), SymbolError> {
    let mut r = Reader::new(program);
    let mut s = State::new();
    // Where the current sequence's rows begin in `rows`.
    let mut sequence = b.lines.rows.len();
    while r.left() > 0 && b.lines.rows.len() < MAX_ROWS && b.spend(1) {
        let rows = &mut b.lines.rows;
        let op = r.u8().ok_or(CUT)?;
        if op >= p.opcode_base {
            let adjusted = op - p.opcode_base;
            p.advance(&mut s, u64::from(adjusted / p.line_range));
            let delta = i64::from(p.line_base) + i64::from(adjusted % p.line_range);
            s.line = s.line.wrapping_add_signed(delta);
            rows.push(p.row(&s, false));
            continue;
        }
        match op {
            0 => {
                let length = r.uleb().ok_or(CUT)?;
                let mut e = Reader::new(r.bytes(usize::try_from(length).map_err(|_| CUT)?).ok_or(CUT)?);
                match e.u8() {
                    Some(1) => {
                        // DW_LNE_end_sequence: rows at its address cover nothing.
                        while rows.len() > sequence && rows.last().is_some_and(|last| last.addr >= s.addr) {
                            rows.pop();
                        }
                        rows.push(p.row(&s, true));
                        s = State::new();
                        sequence = rows.len();
                    }
                    Some(2) => s.addr = e.offset(if e.left() == 4 { 4 } else { 8 }).ok_or(CUT)?, // set_address
                    _ => {} // define_file, set_discriminator, vendor extensions
                }
            }
            1 => rows.push(p.row(&s, false)), // DW_LNS_copy
            2 => p.advance(&mut s, r.uleb().ok_or(CUT)?),
            3 => s.line = s.line.wrapping_add_signed(r.sleb().ok_or(CUT)?),
            4 => s.file = r.uleb().ok_or(CUT)?,
            8 => p.advance(&mut s, u64::from((255 - p.opcode_base) / p.line_range)), // const_add_pc
            9 => s.addr = s.addr.wrapping_add(u64::from(r.u16().ok_or(CUT)?)),       // fixed_advance_pc
            // Opcodes with no effect on the rows: skip their operands as the header counts them.
            _ => {
                let operands = p.standard_lengths.get(usize::from(op) - 1).copied().unwrap_or(0);
                for _ in 0..operands {
                    r.uleb().ok_or(CUT)?;
                }
            }
        }
    }
    Ok(())
}
