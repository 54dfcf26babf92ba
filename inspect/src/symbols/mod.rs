//! Guest symbols: names and source lines for guest code addresses, read from the `NAME.elf`
//! the guest build leaves beside `NAME.img`. [`SymbolFile`] is how the tools get them: it
//! reads the ELF the first time a tool asks (a trace line, a crash report, a changed image at
//! the VM's end), so that a run that never names an address never opens it; [`Symbols`] is
//! what it read.
//!
//! The reader is written here, without a library: the ELF64 section and program headers,
//! the symbol table (`.symtab`, `.strtab`) and the DWARF line table (`.debug_line`, with
//! `.debug_line_str` and `.debug_str`), read once into sorted tables. The ELF is used only
//! if its loadable bytes are exactly the image's, so that stale names never show up.
//!
//! Function names are shown as a person reads them: a Rust symbol (v0 `_R...` or legacy
//! `_ZN...E`) demangled into its path (`rs_hello::fib`, `<u64 as core::fmt::Display>::fmt`,
//! see `demangle.rs`), any other name (C) as it is; at most [`MAX_NAME`] bytes. Every name
//! shown (function names, source file names) is escaped ([`crate::text::escape`]): whatever
//! prints one prints printable ASCII only.
//!
//! The file is untrusted: it is read only if it is a regular file of at most
//! [`MAX_ELF_SIZE`] bytes, every offset and count is checked, every table is capped, and
//! nothing recurses or loops without consuming input. Whatever is wrong with it gives one
//! error, never a panic.

mod demangle;
mod elf;
pub(crate) mod frame;
mod line;
mod read;
#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::OpenOptions;
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use elf::{Load, SHF_ALLOC, SHF_COMPRESSED, SHF_EXECINSTR, SHT_SYMTAB, Section};
use line::{END, Lines, Strings};
use read::string_at;

/// A larger ELF is not read for symbols.
pub const MAX_ELF_SIZE: u64 = 32 << 20;
/// At most this many symbol table entries are looked at.
const MAX_SYMBOLS: usize = 1 << 18;
/// A function's name as shown (demangled): a longer one is cut, ending in `...`.
pub const MAX_NAME: usize = 128;
/// A symbol's name as read from the ELF (mangled): a longer one is cut, and a cut Rust name
/// cannot be demangled (it is shown as it is, cut to [`MAX_NAME`]). Long enough for the
/// mangled names of core's generic functions.
const MAX_SYMBOL_NAME: usize = 1024;
const SYMBOL_SIZE: usize = 24;
const STT_NOTYPE: u8 = 0;
const STT_FUNC: u8 = 2;
const STB_GLOBAL: u8 = 1;
const SHN_LORESERVE: u16 = 0xff00;
/// `open(2)` flags, as x86-64 Linux numbers them (std names neither): do not wait for a
/// writer if the path is a FIFO after all, and do not make a terminal our controlling one.
const O_NONBLOCK: i32 = 0o4000;
const O_NOCTTY: i32 = 0o400;

/// Why an ELF cannot be used for symbols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SymbolError {
    /// It does not start with the ELF magic number.
    NotElf,
    /// An ELF, but not a 64-bit little-endian x86-64 one.
    NotX86_64,
    /// Larger than [`MAX_ELF_SIZE`]: its size.
    TooLarge(u64),
    /// The structure is broken: what is wrong.
    Corrupt(&'static str),
    /// No function symbols (stripped).
    NoSymbols,
    /// No loadable segment with bytes in the file.
    NoLoadable,
    /// Its loadable bytes are not the image's: another build.
    DiffersFromImage,
}

impl fmt::Display for SymbolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SymbolError::NotElf => write!(f, "not an ELF file"),
            SymbolError::NotX86_64 => write!(f, "not a 64-bit little-endian x86-64 ELF file"),
            SymbolError::TooLarge(n) => {
                write!(f, "{n} bytes, more than the {} MiB read for symbols", MAX_ELF_SIZE >> 20)
            }
            SymbolError::Corrupt(what) => write!(f, "corrupt ELF file: {what}"),
            SymbolError::NoSymbols => write!(f, "it has no function symbols (was it stripped?)"),
            SymbolError::NoLoadable => write!(f, "it has no loadable bytes"),
            SymbolError::DiffersFromImage => {
                write!(f, "its loadable bytes differ from the image: not the same build (rebuild both)")
            }
        }
    }
}

/// A function (or a code label): `[start, end)`.
#[derive(Debug)]
struct Function {
    start: u64,
    end: u64,
    /// Where its name (mangled, for a Rust function) is in [`Symbols::names`].
    name: u64,
    /// The name as shown, made the first time it is asked for (demangling every symbol of a
    /// large ELF up front would be work for names nobody sees).
    shown: OnceLock<Box<str>>,
}

/// The symbols and line table of one guest, read from its ELF.
#[derive(Debug)]
pub struct Symbols {
    /// Sorted by start, no two at the same address.
    functions: Vec<Function>,
    /// The ELF's symbol string table (`.strtab`), where the functions' names are.
    names: Box<[u8]>,
    lines: Lines,
    /// The executable sections: address and the bytes the image has there.
    code: Vec<(u64, Vec<u8>)>,
    /// The linker script's `_image_end`, if the ELF has it.
    image_end: Option<u64>,
    /// The call-frame information (`.debug_frame`), for backtraces.
    frames: frame::FrameTable,
}

impl Symbols {
    /// The symbols of the ELF beside `image_path` (`NAME.elf` for `NAME.img`), whose image
    /// bytes are `image`. `Ok(None)` when there is no such file; `Err` is one warning line
    /// naming the ELF and why it is not used. Never blocks: a FIFO or device is refused by
    /// its type, and the open is non-blocking in case the path changed in between.
    pub fn load(image_path: &Path, image: &[u8]) -> Result<Option<Symbols>, String> {
        let path = image_path.with_extension("elf");
        if path == image_path {
            return Ok(None);
        }
        let why =
            |e: &dyn fmt::Display| format!("{}: not used for symbols: {e}; addresses are shown bare", path.display());
        let meta = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(why(&e)),
            Ok(meta) => meta,
        };
        if !meta.is_file() {
            return Err(why(&"not a regular file"));
        }
        if meta.len() > MAX_ELF_SIZE {
            return Err(why(&SymbolError::TooLarge(meta.len())));
        }
        let file =
            OpenOptions::new().read(true).custom_flags(O_NONBLOCK | O_NOCTTY).open(&path).map_err(|e| why(&e))?;
        match file.metadata() {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Err(why(&"not a regular file")),
            Err(e) => return Err(why(&e)),
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(MAX_ELF_SIZE + 1).read_to_end(&mut bytes).map_err(|e| why(&e))?;
        if bytes.len() as u64 > MAX_ELF_SIZE {
            return Err(why(&SymbolError::TooLarge(bytes.len() as u64)));
        }
        Symbols::parse(&bytes, image).map(Some).map_err(|e| why(&e))
    }

    /// The symbols of the ELF file `elf`, if its loadable bytes are exactly `image`.
    pub fn parse(elf: &[u8], image: &[u8]) -> Result<Symbols, SymbolError> {
        let parsed = elf::parse(elf)?;
        matches_image(&parsed.loads, image)?;
        let symtab = parsed.sections.iter().find(|s| s.kind == SHT_SYMTAB).ok_or(SymbolError::NoSymbols)?;
        let strtab = parsed.sections.get(symtab.link as usize).map(|s| s.data).unwrap_or_default();
        let (functions, image_end) = functions(symtab.data, strtab, &parsed.sections);
        if functions.is_empty() {
            return Err(SymbolError::NoSymbols);
        }
        let data = |name: &str| {
            parsed.section(name).filter(|s| s.flags & SHF_COMPRESSED == 0).map(|s| s.data).unwrap_or_default()
        };
        let strings = Strings { line_str: data(".debug_line_str"), str: data(".debug_str") };
        let lines = line::parse(data(".debug_line"), strings)?;
        let code = code(&parsed.sections, image)?;
        let frames = frame::FrameTable::parse(data(".debug_frame"));
        Ok(Symbols { functions, names: strtab.into(), lines, code, image_end, frames })
    }

    /// `function+0xOFF (file.c:LINE)`, or `function+0xOFF` without line information, or
    /// `None` if `addr` is in no function.
    pub fn describe(&self, addr: u64) -> Option<String> {
        let (name, offset) = self.function(addr)?;
        Some(match self.line(addr) {
            Some((file, line)) => format!("{name}+{offset:#x} ({file}:{line})"),
            None => format!("{name}+{offset:#x}"),
        })
    }

    /// `function+0xOFF (file.c:LINE)` for a return address: the function and line of the call
    /// before it (`ret - 1`: a call that ends its function returns past it), the offset of
    /// `ret` itself, as gdb shows a caller's frame.
    pub fn describe_return(&self, ret: u64) -> Option<String> {
        let call = ret.checked_sub(1)?;
        let (name, offset) = self.function(call)?;
        Some(match self.line(call) {
            Some((file, line)) => format!("{name}+{:#x} ({file}:{line})", offset + 1),
            None => format!("{name}+{:#x}", offset + 1),
        })
    }

    /// The source file of the function `addr` lies in: the file of the line at its first
    /// instruction (for code inlined from another file, still the function's own file).
    pub fn function_file(&self, addr: u64) -> Option<&str> {
        let (_, offset) = self.function(addr)?;
        self.line(addr - offset).map(|(file, _)| file)
    }

    /// The `n` bytes of the ELF's code at `addr`, as the compiler wrote them.
    pub(crate) fn code_at(&self, addr: u64, n: usize) -> Option<&[u8]> {
        let (start, bytes) =
            self.code.iter().find(|(start, bytes)| addr >= *start && addr - start < bytes.len() as u64)?;
        bytes.get(usize::try_from(addr - start).ok()?..)?.get(..n)
    }

    /// Whether `addr` lies in the ELF's code.
    pub fn in_code(&self, addr: u64) -> bool {
        self.code.iter().any(|(start, bytes)| addr >= *start && addr - start < bytes.len() as u64)
    }

    /// The call-frame rules at `pc`, from `.debug_frame`.
    pub(crate) fn frame_row(&self, pc: u64) -> Option<frame::Row> {
        self.frames.row(pc)
    }

    /// The function `addr` lies in (its name as shown: demangled, see `shown_name`), and
    /// its offset there.
    pub fn function(&self, addr: u64) -> Option<(&str, u64)> {
        let after = self.functions.partition_point(|f| f.start <= addr);
        let f = self.functions.get(after.checked_sub(1)?)?;
        if addr >= f.end {
            return None;
        }
        let name = f.shown.get_or_init(|| {
            // Read as a whole up to MAX_SYMBOL_NAME; if that is not UTF-8 (beyond the part
            // read when the table was made), the part read then.
            let raw =
                string_at(&self.names, f.name, MAX_SYMBOL_NAME).or_else(|| string_at(&self.names, f.name, MAX_NAME));
            shown_name(raw.unwrap_or("?"))
        });
        Some((name, addr - f.start))
    }

    /// The source file (its name without directories) and line of the code at `addr`.
    pub fn line(&self, addr: u64) -> Option<(&str, u32)> {
        let rows = &self.lines.rows;
        let row = rows.get(rows.partition_point(|r| r.addr <= addr).checked_sub(1)?)?;
        if row.file == END || row.line == 0 {
            return None;
        }
        let file = self.lines.files.get(row.file as usize).map_or("?", String::as_str);
        Some((file, row.line))
    }

    /// The executable sections: each one's address and the bytes the image holds there.
    pub fn code(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.code.iter().map(|(addr, bytes)| (*addr, bytes.as_slice()))
    }

    /// Where the image ends by the ELF (`_image_end`: code, data and `.bss`), if it says.
    pub fn image_end(&self) -> Option<u64> {
        self.image_end
    }
}

/// The symbols of one guest image, from `NAME.elf` beside `NAME.img`, read the first time a
/// tool asks for them and kept: shared by every tool and VM that runs the image
/// (`Arc<SymbolFile>`), from any thread.
pub struct SymbolFile {
    image_path: PathBuf,
    image: Arc<[u8]>,
    read: OnceLock<Option<Symbols>>,
    /// Where the one warning goes: stderr (unit tests catch it instead).
    warn: fn(&str),
}

impl SymbolFile {
    /// The symbols of the image at `image_path`, whose bytes are `image`, not read yet: this
    /// opens nothing.
    pub fn new(image_path: &Path, image: Arc<[u8]>) -> SymbolFile {
        SymbolFile::warning_to(image_path, image, |line| diag!("{line}"))
    }

    /// A symbol file already read, as `symbols` (for tests of what prints names).
    #[cfg(test)]
    pub(crate) fn preloaded(image_path: &Path, image: Arc<[u8]>, symbols: Option<Symbols>) -> SymbolFile {
        let file = SymbolFile::new(image_path, image);
        let _ = file.read.set(symbols);
        file
    }

    /// [`SymbolFile::new`], with the warning given to `warn`.
    fn warning_to(image_path: &Path, image: Arc<[u8]>, warn: fn(&str)) -> SymbolFile {
        SymbolFile { image_path: image_path.to_owned(), image, read: OnceLock::new(), warn }
    }

    /// The symbols, if `NAME.elf` is there and matches the image. The first call reads the ELF
    /// ([`Symbols::load`]); an ELF that cannot be used gives its one warning on stderr then
    /// (`mini_hypervisor: warning: NAME.elf: not used for symbols: ...`), and addresses are
    /// shown bare. Every later call gives the same answer without reading again; calls on
    /// other threads meanwhile wait for the first.
    pub fn get(&self) -> Option<&Symbols> {
        let read = self.read.get_or_init(|| match Symbols::load(&self.image_path, &self.image) {
            Ok(symbols) => symbols,
            Err(warning) => {
                (self.warn)(&format!("mini_hypervisor: warning: {warning}"));
                None
            }
        });
        read.as_ref()
    }

    /// Whether [`SymbolFile::get`] has run (the ELF was looked for).
    pub fn is_read(&self) -> bool {
        self.read.get().is_some()
    }

    /// The image's bytes, as loaded into guest RAM at 0.
    pub(crate) fn image(&self) -> &[u8] {
        &self.image
    }
}

impl fmt::Debug for SymbolFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SymbolFile")
            .field("image_path", &self.image_path)
            .field("image_len", &self.image.len())
            .field("read", &self.read.get().map(Option::is_some))
            .finish_non_exhaustive()
    }
}

/// How the symbol `name` is shown: demangled if it is a Rust name (v0 or legacy), else as it
/// is; escaped as every name from the ELF is ([`crate::text::escape`]: printable ASCII as it
/// is, `\` doubled, any other byte `\xNN`); at most
/// [`MAX_NAME`] bytes, a longer name cut at a character boundary and ending in `...`.
fn shown_name(name: &str) -> Box<str> {
    let demangled = demangle::demangle(name);
    let name = demangled.as_deref().unwrap_or(name);
    let cut = match name.char_indices().nth(MAX_NAME - "...".len()) {
        Some((at, _)) if name.len() > MAX_NAME => Some(at),
        _ => None,
    };
    match cut {
        Some(at) => format!("{}...", crate::text::escape(&name.as_bytes()[..at])).into(),
        None => crate::text::escape(name.as_bytes()).into(),
    }
}

/// `Ok` if the segments put the bytes of `image` at their addresses, and nothing else.
fn matches_image(loads: &[Load], image: &[u8]) -> Result<(), SymbolError> {
    if loads.is_empty() {
        return Err(SymbolError::NoLoadable);
    }
    let (mut total, mut end) = (0usize, 0usize);
    for load in loads {
        // Overlapping segments cannot have come from a flat image; refusing them also
        // bounds the comparing to the image's size.
        total = total.saturating_add(load.data.len());
        let at = usize::try_from(load.addr).map_err(|_| SymbolError::DiffersFromImage)?;
        let load_end = at.checked_add(load.data.len()).ok_or(SymbolError::DiffersFromImage)?;
        if total > image.len() || image.get(at..load_end) != Some(load.data) {
            return Err(SymbolError::DiffersFromImage);
        }
        end = end.max(load_end);
    }
    if end != image.len() {
        return Err(SymbolError::DiffersFromImage);
    }
    Ok(())
}

/// The function symbols of `symtab` (and code labels: untyped symbols in executable
/// sections), sorted and with their ends, and the value of `_image_end` if there is one.
fn functions(symtab: &[u8], strtab: &[u8], sections: &[Section]) -> (Vec<Function>, Option<u64>) {
    // (start, size, rank: the lowest is kept when several share an address, section index,
    // where the name is in strtab)
    let mut found: Vec<(u64, u64, u8, usize, u64)> = Vec::new();
    let mut image_end = None;
    for entry in symtab.chunks_exact(SYMBOL_SIZE).take(MAX_SYMBOLS) {
        let field = |at: usize, n: usize| entry.get(at..at + n).unwrap_or_default();
        let name = u32::from_le_bytes(field(0, 4).try_into().unwrap_or_default());
        let info = field(4, 1).first().copied().unwrap_or_default();
        let shndx = u16::from_le_bytes(field(6, 2).try_into().unwrap_or_default());
        let value = u64::from_le_bytes(field(8, 8).try_into().unwrap_or_default());
        let size = u64::from_le_bytes(field(16, 8).try_into().unwrap_or_default());
        let name_at = u64::from(name);
        // (Its first MAX_NAME bytes: enough to tell it is there, and whether it is _image_end;
        // `Symbols::function` reads it whole, for the one function it names.)
        let Some(name) = string_at(strtab, name_at, MAX_NAME).filter(|n| !n.is_empty()) else {
            continue;
        };
        if name == "_image_end" {
            image_end = Some(value);
        }
        let Some(section) = sections.get(usize::from(shndx)).filter(|_| shndx != 0 && shndx < SHN_LORESERVE) else {
            continue;
        };
        let rank = match (info & 0xf, info >> 4) {
            (STT_FUNC, STB_GLOBAL) => 0,
            (STT_FUNC, _) => 1,
            (STT_NOTYPE, _) if section.flags & SHF_EXECINSTR != 0 => 2,
            _ => continue,
        };
        found.push((value, size, rank, usize::from(shndx), name_at));
    }
    found.sort_unstable_by_key(|&(start, _, rank, _, _)| (start, rank));
    found.dedup_by_key(|f| f.0);
    let mut functions = Vec::with_capacity(found.len());
    for (i, &(start, size, _, shndx, name)) in found.iter().enumerate() {
        let end = if size > 0 {
            start.saturating_add(size)
        } else {
            // A label without a size runs to the next symbol or the end of its section.
            let next = found.get(i + 1).map_or(u64::MAX, |f| f.0);
            let section_end = sections.get(shndx).map_or(0, |s| s.addr.saturating_add(s.data.len() as u64));
            next.min(section_end)
        };
        functions.push(Function { start, end, name, shown: OnceLock::new() });
    }
    (functions, image_end)
}

/// The executable sections with their bytes, which must be the image's at their addresses.
fn code(sections: &[Section], image: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, SymbolError> {
    let mut code = Vec::new();
    let mut total = 0usize;
    for s in sections.iter().filter(|s| s.flags & (SHF_ALLOC | SHF_EXECINSTR) == SHF_ALLOC | SHF_EXECINSTR) {
        if s.data.is_empty() {
            continue;
        }
        total = total.saturating_add(s.data.len());
        let at = usize::try_from(s.addr).map_err(|_| SymbolError::DiffersFromImage)?;
        let end = at.checked_add(s.data.len()).ok_or(SymbolError::DiffersFromImage)?;
        if total > image.len() || image.get(at..end) != Some(s.data) {
            return Err(SymbolError::DiffersFromImage);
        }
        code.push((s.addr, s.data.to_vec()));
    }
    Ok(code)
}
