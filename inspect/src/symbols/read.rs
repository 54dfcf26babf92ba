//! A cursor over untrusted bytes: every read is bounds-checked and returns `None` past the end,
//! so no input can make the parsers index out of range, and every successful read moves
//! forward by at least one byte (except a read of zero bytes), so no parser loop that reads in
//! each turn can run for ever.

/// The cursor: the bytes, and where the next read starts.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `data`.
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, pos: 0 }
    }

    /// A reader over `data` starting at `pos` (past the end: every read fails).
    pub fn at(data: &'a [u8], pos: usize) -> Reader<'a> {
        Reader { data, pos }
    }

    /// Where the next read starts.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left to read.
    pub fn left(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let bytes = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }

    /// Moves past `n` bytes.
    pub fn skip(&mut self, n: u64) -> Option<()> {
        self.bytes(usize::try_from(n).ok()?).map(|_| ())
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    /// One byte.
    pub fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|b| b[0])
    }

    /// A little-endian 16-bit value.
    pub fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }

    /// A little-endian 32-bit value.
    pub fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    /// A little-endian 64-bit value.
    pub fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// An unsigned 4- or 8-byte value (DWARF's 32- and 64-bit formats).
    pub fn offset(&mut self, size: u8) -> Option<u64> {
        if size == 8 { self.u64() } else { self.u32().map(u64::from) }
    }

    /// Unsigned LEB128. Bits beyond 64 are dropped (the bytes are still consumed).
    pub fn uleb(&mut self) -> Option<u64> {
        let mut value = 0u64;
        let mut shift = 0u32;
        loop {
            let byte = self.u8()?;
            if shift < 64 {
                value |= u64::from(byte & 0x7f) << shift;
            }
            shift = shift.saturating_add(7);
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
    }

    /// Signed LEB128. Bits beyond 64 are dropped (the bytes are still consumed).
    pub fn sleb(&mut self) -> Option<i64> {
        let mut value = 0i64;
        let mut shift = 0u32;
        loop {
            let byte = self.u8()?;
            if shift < 64 {
                value |= i64::from(byte & 0x7f) << shift;
            }
            shift = shift.saturating_add(7);
            if byte & 0x80 == 0 {
                if shift < 64 && byte & 0x40 != 0 {
                    value |= -1i64 << shift;
                }
                return Some(value);
            }
        }
    }

    /// A NUL-terminated string, without its NUL.
    pub fn cstr(&mut self) -> Option<&'a [u8]> {
        let rest = self.data.get(self.pos..)?;
        let len = rest.iter().position(|&b| b == 0)?;
        self.pos += len + 1;
        rest.get(..len)
    }
}

/// The NUL-terminated string at `offset` in `table`, at most `max` bytes of it (a longer one
/// is cut, at a character boundary), if it is there and UTF-8.
pub fn string_at(table: &[u8], offset: u64, max: usize) -> Option<&str> {
    let rest = table.get(usize::try_from(offset).ok()?..)?;
    let window = rest.get(..max.min(rest.len()))?;
    let len = window.iter().position(|&b| b == 0).unwrap_or(window.len());
    let bytes = window.get(..len)?;
    match std::str::from_utf8(bytes) {
        Ok(s) => Some(s),
        // Cut in the middle of a character by `max`: keep the whole characters before it.
        Err(e) if e.error_len().is_none() => std::str::from_utf8(bytes.get(..e.valid_up_to())?).ok(),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leb128_and_fixed_reads_stop_at_the_end() {
        let mut r = Reader::new(&[0xe5, 0x8e, 0x26, 0x7f, 0x80, 0x7f, 0x02]);
        assert_eq!(r.uleb(), Some(624485));
        assert_eq!(r.sleb(), Some(-1));
        assert_eq!(r.sleb(), Some(-128));
        assert_eq!(r.u16(), None);
        assert_eq!(r.u8(), Some(2));
        assert_eq!((r.u8(), r.left()), (None, 0));
        // Overlong LEB128: consumed to its last byte, high bits dropped, no overflow.
        let long = [0xffu8; 20].iter().copied().chain([0x01]).collect::<Vec<_>>();
        let mut r = Reader::new(&long);
        assert_eq!(r.uleb(), Some(u64::MAX));
        assert_eq!(r.left(), 0);
        assert_eq!(Reader::new(&[0x80, 0x80]).uleb(), None);
        assert_eq!(Reader::at(&[1, 2], usize::MAX).u8(), None);
        assert_eq!(Reader::new(&[1, 2]).skip(u64::MAX), None);
    }

    #[test]
    fn strings_are_bounded_and_checked() {
        let mut r = Reader::new(b"ab\0c");
        assert_eq!(r.cstr(), Some(&b"ab"[..]));
        assert_eq!(r.cstr(), None, "no NUL before the end");
        assert_eq!(string_at(b"xx\0main\0", 3, 64), Some("main"));
        assert_eq!(string_at(b"main", 0, 64), Some("main"), "the end of the table ends it");
        assert_eq!(string_at(b"main\0", 5, 64), Some(""));
        assert_eq!(string_at(b"main\0", 6, 64), None);
        assert_eq!(string_at(b"main\0", u64::MAX, 64), None);
        assert_eq!(string_at(b"abcdef\0", 0, 3), Some("abc"));
        assert_eq!(string_at("aé\0".as_bytes(), 0, 2), Some("a"), "cut inside é");
        assert_eq!(string_at(b"\xff\0", 0, 8), None);
    }
}
