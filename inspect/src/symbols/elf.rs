//! The parts of an ELF64 x86-64 file the symbol reader needs: its sections (by name and
//! type) and its loadable segments. Every offset, size and count is checked against the
//! file before it is used.

use super::SymbolError::{self, Corrupt};
use super::read::{Reader, string_at};

const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
/// Section type: the symbol table.
pub const SHT_SYMTAB: u32 = 2;
const SHT_NOBITS: u32 = 8;
/// Section flag: occupies memory when the program runs.
pub const SHF_ALLOC: u64 = 0x2;
/// Section flag: machine code.
pub const SHF_EXECINSTR: u64 = 0x4;
/// Section flag: compressed (not read: its lines are left out).
pub const SHF_COMPRESSED: u64 = 0x800;
const PHDR_SIZE: u16 = 56;
const SHDR_SIZE: u16 = 64;

/// One section header, with its bytes (empty for `.bss`-like sections, which have none in
/// the file).
#[derive(Debug, Clone)]
pub struct Section<'a> {
    pub name: &'a str,
    pub kind: u32,
    pub flags: u64,
    pub addr: u64,
    pub link: u32,
    pub data: &'a [u8],
}

/// A loadable segment: its guest-physical address and its bytes in the file.
#[derive(Debug, Clone)]
pub struct Load<'a> {
    pub addr: u64,
    pub data: &'a [u8],
}

/// What the symbol reader uses of an ELF file.
#[derive(Debug)]
pub struct Elf<'a> {
    pub sections: Vec<Section<'a>>,
    pub loads: Vec<Load<'a>>,
}

impl<'a> Elf<'a> {
    /// The first section called `name`.
    pub fn section(&self, name: &str) -> Option<&Section<'a>> {
        self.sections.iter().find(|s| s.name == name)
    }
}

/// The `len` bytes at `offset` of `file`, or why not.
fn slice<'a>(file: &'a [u8], offset: u64, len: u64, what: &'static str) -> Result<&'a [u8], SymbolError> {
    let start = usize::try_from(offset).map_err(|_| Corrupt(what))?;
    let len = usize::try_from(len).map_err(|_| Corrupt(what))?;
    file.get(start..start.checked_add(len).ok_or(Corrupt(what))?).ok_or(Corrupt(what))
}

/// The fields of the ELF header this reader uses.
struct Header {
    phoff: u64,
    shoff: u64,
    phnum: u16,
    shnum: u16,
    shstrndx: u16,
}

fn header(file: &[u8]) -> Result<Header, SymbolError> {
    if file.get(..4) != Some(b"\x7fELF") {
        return Err(SymbolError::NotElf);
    }
    let mut r = Reader::at(file, 4);
    let (class, data) = (r.u8(), r.u8());
    let mut r = Reader::at(file, 18);
    let machine = r.u16();
    if class != Some(ELFCLASS64) || data != Some(ELFDATA2LSB) || machine != Some(EM_X86_64) {
        return Err(SymbolError::NotX86_64);
    }
    let mut r = Reader::at(file, 32);
    let truncated = Corrupt("the ELF header is cut short");
    let (phoff, shoff) = (r.u64().ok_or(truncated.clone())?, r.u64().ok_or(truncated.clone())?);
    let mut r = Reader::at(file, 54);
    let fields = (r.u16(), r.u16(), r.u16(), r.u16(), r.u16());
    let (Some(phentsize), Some(phnum), Some(shentsize), Some(shnum), Some(shstrndx)) = fields else {
        return Err(truncated);
    };
    if (phnum > 0 && phentsize != PHDR_SIZE) || shentsize != SHDR_SIZE {
        return Err(Corrupt("unexpected program or section header size"));
    }
    if shnum == 0 || shstrndx >= shnum {
        return Err(Corrupt("no section headers, or no section names"));
    }
    Ok(Header { phoff, shoff, phnum, shnum, shstrndx })
}

/// Parses the headers of `file`. Sections and segments are only located, not read.
pub fn parse(file: &[u8]) -> Result<Elf<'_>, SymbolError> {
    let h = header(file)?;
    let table = slice(file, h.shoff, u64::from(h.shnum) * u64::from(SHDR_SIZE), "section headers past the end")?;
    let mut raw = Vec::with_capacity(usize::from(h.shnum));
    for i in 0..usize::from(h.shnum) {
        let mut r = Reader::at(table, i * usize::from(SHDR_SIZE));
        let bad = || Corrupt("a section header is cut short");
        let (name, kind) = (r.u32().ok_or_else(bad)?, r.u32().ok_or_else(bad)?);
        let (flags, addr, offset, size) =
            (r.u64().ok_or_else(bad)?, r.u64().ok_or_else(bad)?, r.u64().ok_or_else(bad)?, r.u64().ok_or_else(bad)?);
        let link = r.u32().ok_or_else(bad)?;
        let data = if kind == SHT_NOBITS || kind == 0 {
            &[][..]
        } else {
            slice(file, offset, size, "a section lies past the end of the file")?
        };
        raw.push((name, kind, flags, addr, link, data));
    }
    let names = raw.get(usize::from(h.shstrndx)).map(|s| s.5).unwrap_or_default();
    let sections = raw
        .into_iter()
        .map(|(name, kind, flags, addr, link, data)| Section {
            name: string_at(names, u64::from(name), 64).unwrap_or(""),
            kind,
            flags,
            addr,
            link,
            data,
        })
        .collect();
    Ok(Elf { sections, loads: loads(file, &h)? })
}

/// The `PT_LOAD` segments with bytes in the file.
fn loads<'a>(file: &'a [u8], h: &Header) -> Result<Vec<Load<'a>>, SymbolError> {
    let table = slice(file, h.phoff, u64::from(h.phnum) * u64::from(PHDR_SIZE), "program headers past the end")?;
    let mut loads = Vec::new();
    for i in 0..usize::from(h.phnum) {
        let mut r = Reader::at(table, i * usize::from(PHDR_SIZE));
        let bad = || Corrupt("a program header is cut short");
        let kind = r.u32().ok_or_else(bad)?;
        r.u32().ok_or_else(bad)?; // flags
        let (offset, _vaddr, paddr, filesz) =
            (r.u64().ok_or_else(bad)?, r.u64().ok_or_else(bad)?, r.u64().ok_or_else(bad)?, r.u64().ok_or_else(bad)?);
        if kind == PT_LOAD && filesz > 0 {
            // The flat image holds each segment at its load (physical) address.
            loads.push(Load {
                addr: paddr,
                data: slice(file, offset, filesz, "a segment lies past the end of the file")?,
            });
        }
    }
    Ok(loads)
}
