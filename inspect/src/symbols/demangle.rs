//! Rust symbol names made readable: `_RNvCs6GOSKOG1BEw_8rs_hello3fib` is `rs_hello::fib`.
//!
//! rustc mangles a function's path into its symbol in one of two ways:
//!
//! - **v0** (RFC 2603), `_R...`: the path as a small grammar of one-letter tags, for example
//!   `N` (a nested path: `Nv <parent> <name>` is `parent::name`), `C` (a crate root), `M`/`X`/`Y`
//!   (`<T>`, `<T as Trait>`), `I ... E` (generic arguments), `B` (a back-reference: "the same
//!   as what is written at that earlier position"), and one letter per basic type (`h` is `u8`,
//!   `j` is `usize`, ...). Core is mangled this way, and our guests (`-C
//!   symbol-mangling-version=v0`).
//! - **legacy**, `_ZN...E`: the C++ scheme, each path element as its length and text, special
//!   characters escaped as `$LT$` (`<`) etc. and `..` (`::`), ending in a hash element
//!   `17h<16 hex digits>`, which we drop.
//!
//! [`demangle`] gives `None` for anything else (a C name such as `memcpy` stays as it is), and
//! for a name that does not parse. The names come from an ELF file we do not trust, so the
//! parser is bounded: at most [`MAX_DEPTH`] levels of nesting, [`MAX_OUTPUT`] bytes of result
//! and [`MAX_STEPS`] steps of work; past any of them the answer is `None` (never a cut name).
//! Every loop consumes input or counts a step, a back-reference may only point backwards, and
//! nothing here panics (no indexing that can fail, checked arithmetic).
//!
//! How v0 names are written out follows `rustc-demangle` (what rustc's own backtraces show),
//! without the crate hashes: `<u64 as core::fmt::Display>::fmt`, `zoo::main::{closure#0}`,
//! `<zoo::Wrap<u8, 3>>::first`. A legacy name reads as its escapes say:
//! `core::fmt::num::<impl core::fmt::Display for u64>::fmt`.
//!
//! Standalone test: `rustc --edition 2024 --test demangle.rs -o /tmp/dm && /tmp/dm`.
#![forbid(unsafe_code)]

/// The deepest nesting of paths, types and constants a name may have.
pub const MAX_DEPTH: u32 = 64;
/// The longest result, in bytes.
pub const MAX_OUTPUT: usize = 1024;
/// The most parsing steps (one per path, type, constant, back-reference or bound lifetime).
pub const MAX_STEPS: u32 = 10_000;

/// The readable form of a Rust symbol name (v0 or legacy), or `None` if `name` is not one
/// (a C name), does not parse, or goes past the limits above.
#[must_use]
pub fn demangle(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("_R") {
        v0(rest)
    } else if let Some(rest) = name.strip_prefix("_ZN") {
        legacy(rest)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------
// v0
// ---------------------------------------------------------------------------------------

/// Why parsing stopped: the symbol is malformed, or past a limit. Either way: `None`.
#[derive(Debug)]
struct Stop;

type Res<T = ()> = Result<T, Stop>;

/// `symbol` is the v0 name without its `_R`.
fn v0(symbol: &str) -> Option<String> {
    // Printable ASCII only: nothing in a v0 name is anything else, and this keeps control
    // characters (a terminal's escape sequences) out of the result.
    if !symbol.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let mut p = Parser {
        sym: symbol.as_bytes(),
        pos: 0,
        depth: 0,
        steps: 0,
        skipping: 0,
        bound_lifetimes: 0,
        out: String::new(),
    };
    // A leading number would be an encoding version: none but the first exists.
    if p.peek().is_some_and(|b| b.is_ascii_digit()) {
        return None;
    }
    p.path(true).ok()?;
    // The instantiating crate (where a generic function was instantiated): not shown.
    if p.peek().is_some_and(|b| b.is_ascii_uppercase()) {
        p.skipping(|p| p.path(false)).ok()?;
    }
    // A suffix added after mangling, such as `.llvm.1234`, is kept as it is.
    let rest = symbol.get(p.pos..)?;
    if !rest.is_empty() {
        if !rest.starts_with('.') {
            return None;
        }
        p.print(rest).ok()?;
    }
    Some(p.out)
}

/// An identifier: its text (punycode-encoded if `punycode`) and its disambiguator (which
/// tells apart, e.g., the closures of one function: `{closure#1}`).
struct Ident<'s> {
    text: &'s str,
    punycode: bool,
    disambiguator: u64,
}

struct Parser<'s> {
    /// The symbol after `_R`; back-references count positions in it.
    sym: &'s [u8],
    pos: usize,
    depth: u32,
    steps: u32,
    /// Above 0 while a part is parsed but not shown (the path of an `impl`, the instantiating
    /// crate).
    skipping: u32,
    /// The lifetimes bound by the `for<...>` binders around the current position.
    bound_lifetimes: u64,
    out: String,
}

impl<'s> Parser<'s> {
    fn peek(&self) -> Option<u8> {
        self.sym.get(self.pos).copied()
    }

    fn next(&mut self) -> Res<u8> {
        let b = self.peek().ok_or(Stop)?;
        self.pos += 1;
        Ok(b)
    }

    fn eat(&mut self, b: u8) -> bool {
        let found = self.peek() == Some(b);
        if found {
            self.pos += 1;
        }
        found
    }

    /// Appends to the result (unless skipping), within [`MAX_OUTPUT`].
    fn print(&mut self, s: &str) -> Res {
        if self.skipping > 0 {
            return Ok(());
        }
        if self.out.len() + s.len() > MAX_OUTPUT {
            return Err(Stop);
        }
        self.out.push_str(s);
        Ok(())
    }

    fn print_num(&mut self, n: u64) -> Res {
        self.print(&n.to_string())
    }

    /// One step of work, within [`MAX_STEPS`].
    fn tick(&mut self) -> Res {
        self.steps += 1;
        if self.steps > MAX_STEPS { Err(Stop) } else { Ok(()) }
    }

    /// Runs `f` one level deeper, within [`MAX_DEPTH`], as one step.
    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Res<T>) -> Res<T> {
        self.tick()?;
        if self.depth >= MAX_DEPTH {
            return Err(Stop);
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    /// Runs `f` without printing what it parses.
    fn skipping<T>(&mut self, f: impl FnOnce(&mut Self) -> Res<T>) -> Res<T> {
        self.skipping += 1;
        let result = f(self);
        self.skipping -= 1;
        result
    }

    /// `<base-62-number>`: `_` is 0; digits 0-9 a-z A-Z, then `_`, are their value plus 1.
    fn base62(&mut self) -> Res<u64> {
        if self.eat(b'_') {
            return Ok(0);
        }
        let mut value: u64 = 0;
        loop {
            let digit = match self.next()? {
                b'_' => break,
                b @ b'0'..=b'9' => b - b'0',
                b @ b'a'..=b'z' => b - b'a' + 10,
                b @ b'A'..=b'Z' => b - b'A' + 36,
                _ => return Err(Stop),
            };
            value = value.checked_mul(62).and_then(|v| v.checked_add(u64::from(digit))).ok_or(Stop)?;
        }
        value.checked_add(1).ok_or(Stop)
    }

    /// An optional number after the tag `tag`: 0 without it, else the number plus 1.
    fn opt_base62(&mut self, tag: u8) -> Res<u64> {
        if !self.eat(tag) {
            return Ok(0);
        }
        self.base62()?.checked_add(1).ok_or(Stop)
    }

    /// `<decimal-number>`: `0`, or digits not starting with 0.
    fn decimal(&mut self) -> Res<usize> {
        let first = self.next()?;
        if !first.is_ascii_digit() {
            return Err(Stop);
        }
        let mut value = usize::from(first - b'0');
        if value == 0 {
            return Ok(0);
        }
        while let Some(b) = self.peek().filter(u8::is_ascii_digit) {
            self.pos += 1;
            value = value.checked_mul(10).and_then(|v| v.checked_add(usize::from(b - b'0'))).ok_or(Stop)?;
        }
        Ok(value)
    }

    /// `<identifier>`: an optional disambiguator `s<n>`, then the name.
    fn ident(&mut self) -> Res<Ident<'s>> {
        let disambiguator = self.opt_base62(b's')?;
        let mut ident = self.undisambiguated_ident()?;
        ident.disambiguator = disambiguator;
        Ok(ident)
    }

    /// `["u"] <decimal-number> ["_"] <bytes>`: `u` says punycode; the `_` separates the length
    /// from a name that starts with a digit or `_`.
    fn undisambiguated_ident(&mut self) -> Res<Ident<'s>> {
        let punycode = self.eat(b'u');
        let len = self.decimal()?;
        self.eat(b'_');
        let end = self.pos.checked_add(len).filter(|&end| end <= self.sym.len()).ok_or(Stop)?;
        let bytes = self.sym.get(self.pos..end).ok_or(Stop)?;
        self.pos = end;
        let text = std::str::from_utf8(bytes).map_err(|_| Stop)?;
        Ok(Ident { text, punycode, disambiguator: 0 })
    }

    fn print_ident(&mut self, ident: &Ident<'_>) -> Res {
        if !ident.punycode {
            return self.print(ident.text);
        }
        match punycode(ident.text) {
            Some(decoded) => self.print(&decoded),
            None => {
                self.print("punycode{")?;
                self.print(ident.text)?;
                self.print("}")
            }
        }
    }

    /// `<path>`; `in_value`: in an expression (`f::<u8>`) rather than a type (`Vec<u8>`).
    fn path(&mut self, in_value: bool) -> Res {
        self.nested(|p| match p.next()? {
            // crate root: its name (the hash-like disambiguator is dropped)
            b'C' => {
                let ident = p.ident()?;
                p.print_ident(&ident)
            }
            // nested path: parent, then `::name`; an upper-case namespace is a closure (C),
            // a shim (S) or other compiler-made item: `::{closure#0}`
            b'N' => {
                let namespace = p.next()?;
                if !namespace.is_ascii_alphabetic() {
                    return Err(Stop);
                }
                p.path(in_value)?;
                let ident = p.ident()?;
                if namespace.is_ascii_lowercase() {
                    if !ident.text.is_empty() {
                        p.print("::")?;
                        p.print_ident(&ident)?;
                    }
                    return Ok(());
                }
                p.print("::{")?;
                match namespace {
                    b'C' => p.print("closure")?,
                    b'S' => p.print("shim")?,
                    other => p.print(char::from(other).encode_utf8(&mut [0; 4]))?,
                }
                if !ident.text.is_empty() {
                    p.print(":")?;
                    p.print_ident(&ident)?;
                }
                p.print("#")?;
                p.print_num(ident.disambiguator)?;
                p.print("}")
            }
            // impl blocks: M = inherent `<T>`, X = trait `<T as Trait>` (both with the impl's
            // own path, not shown), Y = a trait's own item `<T as Trait>`
            tag @ (b'M' | b'X' | b'Y') => {
                if tag != b'Y' {
                    p.opt_base62(b's')?;
                    p.skipping(|p| p.path(false))?;
                }
                p.print("<")?;
                p.ty()?;
                if tag != b'M' {
                    p.print(" as ")?;
                    p.path(false)?;
                }
                p.print(">")
            }
            // generic arguments
            b'I' => {
                p.path(in_value)?;
                if in_value {
                    p.print("::")?;
                }
                p.print("<")?;
                p.list(Self::generic_arg)?;
                p.print(">")
            }
            b'B' => p.backref(|p| p.path(in_value)),
            _ => Err(Stop),
        })
    }

    /// Items up to the closing `E`, separated by `, `; returns how many.
    fn list(&mut self, mut item: impl FnMut(&mut Self) -> Res) -> Res<usize> {
        let mut count = 0;
        while !self.eat(b'E') {
            if count > 0 {
                self.print(", ")?;
            }
            item(self)?; // consumes input, or fails (at the end of the symbol, for one)
            count += 1;
        }
        Ok(count)
    }

    /// `B<n>`, the `B` already read: parses with `f` at the earlier position n, then goes on
    /// after the reference. Only backwards: a loop would have to point forwards at some step.
    fn backref<T: Default>(&mut self, f: impl FnOnce(&mut Self) -> Res<T>) -> Res<T> {
        let at = self.pos.checked_sub(1).ok_or(Stop)?; // where the B is
        let target = usize::try_from(self.base62()?).map_err(|_| Stop)?;
        if target >= at {
            return Err(Stop);
        }
        if self.skipping > 0 {
            return Ok(T::default()); // nothing to show: no need to follow it
        }
        let resume = self.pos;
        self.pos = target;
        let result = self.nested(f);
        self.pos = resume;
        result
    }

    /// `<generic-arg>`: a lifetime `L<n>`, a constant `K<const>`, or a type.
    fn generic_arg(&mut self) -> Res {
        if self.eat(b'L') {
            let lifetime = self.base62()?;
            self.print_lifetime(lifetime)
        } else if self.eat(b'K') {
            self.konst()
        } else {
            self.ty()
        }
    }

    /// Lifetime 0 is `'_` (erased); n > 0 is the n-th innermost bound one: `'a`, `'b`, ...
    fn print_lifetime(&mut self, lifetime: u64) -> Res {
        self.print("'")?;
        if lifetime == 0 {
            return self.print("_");
        }
        let index = self.bound_lifetimes.checked_sub(lifetime).ok_or(Stop)?;
        match u8::try_from(index) {
            Ok(i) if i < 26 => self.print(char::from(b'a' + i).encode_utf8(&mut [0; 4])),
            _ => {
                self.print("_")?;
                self.print_num(index)
            }
        }
    }

    /// `[G<n>]` before a function type or a `dyn`: binds n + 1 lifetimes, `for<'a, ...> `.
    fn binder(&mut self, f: impl FnOnce(&mut Self) -> Res) -> Res {
        let count = self.opt_base62(b'G')?;
        if count > MAX_OUTPUT as u64 {
            return Err(Stop); // more than could ever be printed
        }
        if count > 0 {
            self.print("for<")?;
            for i in 0..count {
                self.tick()?;
                if i > 0 {
                    self.print(", ")?;
                }
                self.bound_lifetimes = self.bound_lifetimes.checked_add(1).ok_or(Stop)?;
                self.print_lifetime(1)?;
            }
            self.print("> ")?;
        }
        let result = f(self);
        self.bound_lifetimes = self.bound_lifetimes.saturating_sub(count);
        result
    }

    /// `<type>`.
    fn ty(&mut self) -> Res {
        self.nested(|p| {
            let tag = p.next()?;
            if let Some(name) = basic_type(tag) {
                return p.print(name);
            }
            match tag {
                b'R' | b'Q' => {
                    p.print("&")?;
                    if p.eat(b'L') {
                        let lifetime = p.base62()?;
                        if lifetime != 0 {
                            p.print_lifetime(lifetime)?;
                            p.print(" ")?;
                        }
                    }
                    if tag == b'Q' {
                        p.print("mut ")?;
                    }
                    p.ty()
                }
                b'P' => {
                    p.print("*const ")?;
                    p.ty()
                }
                b'O' => {
                    p.print("*mut ")?;
                    p.ty()
                }
                b'A' => {
                    p.print("[")?;
                    p.ty()?;
                    p.print("; ")?;
                    p.konst()?;
                    p.print("]")
                }
                b'S' => {
                    p.print("[")?;
                    p.ty()?;
                    p.print("]")
                }
                b'T' => {
                    p.print("(")?;
                    if p.list(Self::ty)? == 1 {
                        p.print(",")?; // a 1-tuple: (T,)
                    }
                    p.print(")")
                }
                b'F' => p.binder(Self::fn_sig),
                b'D' => {
                    p.print("dyn ")?;
                    p.binder(|p| {
                        let mut count = 0;
                        while !p.eat(b'E') {
                            if count > 0 {
                                p.print(" + ")?;
                            }
                            p.dyn_trait()?;
                            count += 1;
                        }
                        Ok(())
                    })?;
                    if !p.eat(b'L') {
                        return Err(Stop);
                    }
                    let lifetime = p.base62()?;
                    if lifetime != 0 {
                        p.print(" + ")?;
                        p.print_lifetime(lifetime)?;
                    }
                    Ok(())
                }
                b'B' => p.backref(Self::ty),
                _ => {
                    p.pos -= 1; // a path (a named type): the tag is its first letter
                    p.path(false)
                }
            }
        })
    }

    /// `<fn-sig>`: `[U] [K<abi>] {<type>} E <type>`: `unsafe extern "C" fn(A, B) -> R`.
    fn fn_sig(&mut self) -> Res {
        if self.eat(b'U') {
            self.print("unsafe ")?;
        }
        if self.eat(b'K') {
            self.print("extern \"")?;
            if self.eat(b'C') {
                self.print("C")?;
            } else {
                let abi = self.undisambiguated_ident()?;
                self.print(&abi.text.replace('_', "-"))?; // "system_unwind" is "system-unwind"
            }
            self.print("\" ")?;
        }
        self.print("fn(")?;
        self.list(Self::ty)?;
        self.print(")")?;
        if self.eat(b'u') {
            return Ok(()); // returns (): nothing shown
        }
        self.print(" -> ")?;
        self.ty()
    }

    /// A trait of a `dyn`, with its associated types: `Fn<(u8,), Output = u8>`.
    fn dyn_trait(&mut self) -> Res {
        let mut open = self.path_maybe_open_generics()?;
        while self.eat(b'p') {
            self.print(if open { ", " } else { "<" })?;
            open = true;
            let name = self.undisambiguated_ident()?;
            self.print_ident(&name)?;
            self.print(" = ")?;
            self.ty()?;
        }
        if open {
            self.print(">")?;
        }
        Ok(())
    }

    /// A path whose generic arguments, if any, are left open (`Trait<A, B`) so that
    /// associated types can follow; says whether they are.
    fn path_maybe_open_generics(&mut self) -> Res<bool> {
        self.nested(|p| {
            if p.eat(b'B') {
                p.backref(Self::path_maybe_open_generics)
            } else if p.eat(b'I') {
                p.path(false)?;
                p.print("<")?;
                p.list(Self::generic_arg)?;
                Ok(true)
            } else {
                p.path(false)?;
                Ok(false)
            }
        })
    }

    /// `<const>`: a value of a const generic: `3`, `-5`, `true`, `'x'`, `"s"`, arrays, tuples,
    /// structs, references; `_` for a placeholder.
    fn konst(&mut self) -> Res {
        self.nested(|p| {
            let tag = p.next()?;
            match tag {
                b'B' => p.backref(Self::konst),
                b'p' => p.print("_"),
                // unsigned integers
                b'h' | b't' | b'm' | b'y' | b'o' | b'j' => p.const_integer(),
                // signed integers: an `n` first means negative
                b'a' | b's' | b'l' | b'x' | b'n' | b'i' => {
                    if p.eat(b'n') {
                        p.print("-")?;
                    }
                    p.const_integer()
                }
                b'b' => match p.hex_value()? {
                    Some(0) => p.print("false"),
                    Some(1) => p.print("true"),
                    _ => Err(Stop),
                },
                b'c' => {
                    let value = p.hex_value()?.and_then(|v| u32::try_from(v).ok());
                    let c = value.and_then(char::from_u32).ok_or(Stop)?;
                    let quoted = format!("'{}'", c.escape_debug());
                    p.print(&quoted)
                }
                b'e' => p.const_str(),
                b'R' | b'Q' => {
                    if tag == b'R' && p.eat(b'e') {
                        return p.const_str(); // &"..." is shown as "..."
                    }
                    p.print(if tag == b'Q' { "&mut " } else { "&" })?;
                    p.konst()
                }
                b'A' => {
                    p.print("[")?;
                    p.list(Self::konst)?;
                    p.print("]")
                }
                b'T' => {
                    p.print("(")?;
                    if p.list(Self::konst)? == 1 {
                        p.print(",")?;
                    }
                    p.print(")")
                }
                // a value of a struct or enum variant: Path, Path(a, b), Path { x: a }
                b'V' => {
                    p.path(true)?;
                    match p.next()? {
                        b'U' => Ok(()),
                        b'T' => {
                            p.print("(")?;
                            p.list(Self::konst)?;
                            p.print(")")
                        }
                        b'S' => {
                            p.print(" { ")?;
                            p.list(|p| {
                                let field = p.ident()?;
                                p.print_ident(&field)?;
                                p.print(": ")?;
                                p.konst()
                            })?;
                            p.print(" }")
                        }
                        _ => Err(Stop),
                    }
                }
                _ => Err(Stop),
            }
        })
    }

    /// Lower-case hex digits up to a `_`.
    fn hex_digits(&mut self) -> Res<&'s str> {
        let start = self.pos;
        while self.peek().is_some_and(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            self.pos += 1;
        }
        let digits = self.sym.get(start..self.pos).ok_or(Stop)?;
        if !self.eat(b'_') {
            return Err(Stop);
        }
        std::str::from_utf8(digits).map_err(|_| Stop)
    }

    /// The hex digits as a number, `None` if it does not fit 64 bits.
    fn hex_value(&mut self) -> Res<Option<u64>> {
        let digits = self.hex_digits()?;
        let digits = digits.trim_start_matches('0');
        if digits.is_empty() {
            return Ok(Some(0));
        }
        Ok(u64::from_str_radix(digits, 16).ok())
    }

    /// An integer constant: decimal, or `0x...` when it does not fit 64 bits.
    fn const_integer(&mut self) -> Res {
        let start = self.pos;
        match self.hex_value()? {
            Some(value) => self.print_num(value),
            None => {
                let digits = self.sym.get(start..self.pos.saturating_sub(1)).ok_or(Stop)?;
                let digits = std::str::from_utf8(digits).map_err(|_| Stop)?;
                self.print("0x")?;
                self.print(digits)
            }
        }
    }

    /// A `&str` constant: its UTF-8 bytes in hex pairs, shown quoted and escaped.
    fn const_str(&mut self) -> Res {
        let digits = self.hex_digits()?.as_bytes();
        if digits.len() % 2 != 0 {
            return Err(Stop);
        }
        let mut bytes = Vec::with_capacity(digits.len() / 2);
        for pair in digits.chunks_exact(2) {
            let pair = std::str::from_utf8(pair).map_err(|_| Stop)?;
            bytes.push(u8::from_str_radix(pair, 16).map_err(|_| Stop)?);
        }
        let text = String::from_utf8(bytes).map_err(|_| Stop)?;
        let quoted = format!("\"{}\"", text.escape_debug());
        self.print(&quoted)
    }
}

/// The one-letter basic types.
fn basic_type(tag: u8) -> Option<&'static str> {
    Some(match tag {
        b'a' => "i8",
        b'b' => "bool",
        b'c' => "char",
        b'd' => "f64",
        b'e' => "str",
        b'f' => "f32",
        b'h' => "u8",
        b'i' => "isize",
        b'j' => "usize",
        b'l' => "i32",
        b'm' => "u32",
        b'n' => "i128",
        b'o' => "u128",
        b's' => "i16",
        b't' => "u16",
        b'u' => "()",
        b'v' => "...",
        b'x' => "i64",
        b'y' => "u64",
        b'z' => "!",
        b'p' => "_",
        _ => return None,
    })
}

/// Decodes a v0 punycode identifier (RFC 3492; v0 writes its `-` delimiter as `_`):
/// `hlich_lqa8a` is `häßlich`. `None` if it is not valid punycode, would be longer than
/// [`MAX_OUTPUT`], or holds a control character.
fn punycode(encoded: &str) -> Option<String> {
    const BASE: u64 = 36;
    const T_MIN: u64 = 1;
    const T_MAX: u64 = 26;
    const SKEW: u64 = 38;
    const DAMP: u64 = 700;

    // The basic (ASCII) characters come first, up to the last `_`.
    let (basic, deltas) = match encoded.rfind('_') {
        Some(i) => (encoded.get(..i)?, encoded.get(i + 1..)?),
        None => ("", encoded),
    };
    let mut out: Vec<char> = basic.chars().collect();
    let adapt = |delta: u64, points: u64, first: bool| {
        let mut delta = if first { delta / DAMP } else { delta / 2 };
        delta += delta / points;
        let mut k = 0;
        while delta > ((BASE - T_MIN) * T_MAX) / 2 {
            delta /= BASE - T_MIN;
            k += BASE;
        }
        k + (BASE - T_MIN + 1) * delta / (delta + SKEW)
    };
    let (mut code, mut i, mut bias) = (128u64, 0u64, 72u64);
    let mut digits = deltas.bytes();
    while let Some(mut b) = digits.next() {
        // One variable-length number: the distance to the next insertion.
        let old_i = i;
        let (mut weight, mut k) = (1u64, BASE);
        loop {
            let digit = match b {
                b'a'..=b'z' => u64::from(b - b'a'),
                b'0'..=b'9' => u64::from(b - b'0') + 26,
                _ => return None,
            };
            i = i.checked_add(digit.checked_mul(weight)?)?;
            let t = k.saturating_sub(bias).clamp(T_MIN, T_MAX);
            if digit < t {
                break;
            }
            weight = weight.checked_mul(BASE - t)?;
            k = k.checked_add(BASE)?;
            b = digits.next()?;
        }
        let points = out.len() as u64 + 1;
        bias = adapt(i - old_i, points, old_i == 0);
        code = code.checked_add(i / points)?;
        i %= points;
        let c = char::from_u32(u32::try_from(code).ok()?)?;
        if c.is_control() || out.len() >= MAX_OUTPUT {
            return None;
        }
        out.insert(usize::try_from(i).ok()?, c);
        i += 1;
    }
    Some(out.into_iter().collect())
}

// ---------------------------------------------------------------------------------------
// legacy
// ---------------------------------------------------------------------------------------

/// `inner` is the legacy name without its `_ZN`: `<len><text>`... `E`, the last element the
/// hash `h<16 hex digits>` (which C++ names do not have), then maybe a suffix such as
/// `.llvm.1234`.
fn legacy(inner: &str) -> Option<String> {
    if !inner.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let bytes = inner.as_bytes();
    let mut pos = 0;
    let mut elements = Vec::new();
    loop {
        match *bytes.get(pos)? {
            b'E' => {
                pos += 1;
                break;
            }
            b'0'..=b'9' => {
                let mut len = 0usize;
                while let Some(&b) = bytes.get(pos).filter(|b| b.is_ascii_digit()) {
                    len = len.checked_mul(10)?.checked_add(usize::from(b - b'0'))?;
                    pos += 1;
                }
                let end = pos.checked_add(len)?;
                elements.push(inner.get(pos..end)?);
                pos = end;
                if elements.len() > MAX_OUTPUT / 2 {
                    return None; // each element shows as 2 bytes at least ("::")
                }
            }
            _ => return None,
        }
    }
    let (hash, path) = elements.split_last()?;
    let is_hash = hash.len() == 17
        && hash.starts_with('h')
        && hash.bytes().skip(1).all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if path.is_empty() || !is_hash {
        return None;
    }
    let suffix = inner.get(pos..)?;
    if !suffix.is_empty() && !suffix.starts_with('.') {
        return None;
    }
    let mut out = String::new();
    for (i, element) in path.iter().enumerate() {
        if i > 0 {
            out.push_str("::");
        }
        unescape(element, &mut out)?;
        if out.len() > MAX_OUTPUT {
            return None;
        }
    }
    out.push_str(suffix);
    (out.len() <= MAX_OUTPUT).then_some(out)
}

/// One legacy path element, unescaped: `$LT$` `<`, `$GT$` `>`, `$RF$` `&`, `$BP$` `*`, `$SP$`
/// `@`, `$LP$` `(`, `$RP$` `)`, `$C$` `,`, `$u20$` (any code point in hex) ` `, `..` `::`; a
/// leading `_$` is `$` escaped once more.
fn unescape(element: &str, out: &mut String) -> Option<()> {
    let mut rest = if element.starts_with("_$") { element.get(1..)? } else { element };
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("..") {
            out.push_str("::");
            rest = after;
        } else if let Some(after) = rest.strip_prefix('.') {
            out.push('.');
            rest = after;
        } else if let Some(after) = rest.strip_prefix('$') {
            let end = after.find('$')?;
            let code = after.get(..end)?;
            let c = match code {
                "SP" => '@',
                "BP" => '*',
                "RF" => '&',
                "LT" => '<',
                "GT" => '>',
                "LP" => '(',
                "RP" => ')',
                "C" => ',',
                _ => {
                    let hex = code
                        .strip_prefix('u')
                        .filter(|h| !h.is_empty() && h.len() <= 6 && h.bytes().all(|b| b.is_ascii_hexdigit()))?;
                    char::from_u32(u32::from_str_radix(hex, 16).ok()?).filter(|c| !c.is_control())?
                }
            };
            out.push(c);
            rest = after.get(end + 1..)?;
        } else {
            let end = rest.find(['$', '.']).unwrap_or(rest.len());
            out.push_str(rest.get(..end)?);
            rest = rest.get(end..)?;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// v0 names from the guests' ELFs (`nm guest/rs_*.elf`), as built by `guest/Makefile`.
    const GUESTS_V0: &[(&str, &str)] = &[
        ("_RNvCs6GOSKOG1BEw_8rs_hello3fib", "rs_hello::fib"),
        ("_RNvCs63m4T1GQbvA_8rs_panic4main", "rs_panic::main"),
        ("_RNvCsddnBtZOcZ2B_12rs_pagefault5store", "rs_pagefault::store"),
        ("_RNvCscl8ZGbUloQG_2hv4fail", "hv::fail"),
        ("_RNvCsfLfy6EI15iL_7___rustc17rust_begin_unwind", "__rustc::rust_begin_unwind"),
        ("_RNvNtCsgEmfK2I1SDS_4core3fmt5write", "core::fmt::write"),
        ("_RNvNtCsgEmfK2I1SDS_4core9panicking18panic_bounds_check", "core::panicking::panic_bounds_check"),
        ("_RNvNtNtCsgEmfK2I1SDS_4core5slice5index16slice_index_fail", "core::slice::index::slice_index_fail"),
        (
            "_RNvNvMsa_NtCsgEmfK2I1SDS_4core3fmtNtB7_9Formatter12pad_integral12write_prefix",
            "<core::fmt::Formatter>::pad_integral::write_prefix",
        ),
        (
            "_RNvXs1_NtNtCsgEmfK2I1SDS_4core5panic10panic_infoNtB5_12PanicMessageNtNtB9_3fmt7Display3fmt",
            "<core::panic::panic_info::PanicMessage as core::fmt::Display>::fmt",
        ),
        (
            "_RNvXs4_NtCscl8ZGbUloQG_2hv6serialNtB5_6SerialNtNtCsgEmfK2I1SDS_4core3fmt5Write9write_str",
            "<hv::serial::Serial as core::fmt::Write>::write_str",
        ),
        ("_RNvXs8_NtCscl8ZGbUloQG_2hv6serialyNtB5_3Put3put", "<u64 as hv::serial::Put>::put"),
        ("_RNvXsi_NtNtNtCsgEmfK2I1SDS_4core3fmt3num3impjNtB9_7Display3fmt", "<usize as core::fmt::Display>::fmt"),
        (
            "_RNvYNtNtCscl8ZGbUloQG_2hv6serial6SerialNtNtCsgEmfK2I1SDS_4core3fmt5Write10write_charB6_",
            "<hv::serial::Serial as core::fmt::Write>::write_char",
        ),
    ];

    /// v0 names from a test program built with `-C symbol-mangling-version=v0`: closures,
    /// shims, generics, const generics, tuples, arrays, slices, references, raw pointers,
    /// function pointers (unsafe, extern "C", for<'a>), dyn with an associated type, punycode.
    /// (The expected forms agree with binutils' c++filt, less crate hashes and the types it
    /// adds to constants.)
    const PROGRAM_V0: &[(&str, &str)] = &[
        ("_RINvCs779nruZdk0e_3zoo7genericReEB2_", "zoo::generic::<&str>"),
        ("_RINvCs779nruZdk0e_3zoo7genericThAtj4_EEB2_", "zoo::generic::<(u8, [u16; 4])>"),
        (
            "_RINvNtCsgEmfK2I1SDS_4core4hint9black_boxNCINvCs779nruZdk0e_3zoo7genericReE0EBH_",
            "core::hint::black_box::<zoo::generic<&str>::{closure#0}>",
        ),
        ("_RNCINvCs779nruZdk0e_3zoo7generichE0B4_", "zoo::generic::<u8>::{closure#0}"),
        ("_RNCNvCs779nruZdk0e_3zoo4mains1_0B3_", "zoo::main::{closure#3}"),
        (
            "_RINvNtNtCs779nruZdk0e_3zoo5inner6deeper1fNCNvB6_4mains1_0EB6_",
            "zoo::inner::deeper::f::<zoo::main::{closure#3}>",
        ),
        (
            "_RNSNvYNCNvCs779nruZdk0e_3zoo4mains_0INtNtNtCsgEmfK2I1SDS_4core3ops8function6FnOnceTRhEE9call_once6vtableB8_",
            "<zoo::main::{closure#1} as core::ops::function::FnOnce<(&u8,)>>::call_once::{shim:vtable#0}",
        ),
        (
            "_RNcNtINtNtCsgEmfK2I1SDS_4core6result6ResultuINtNtNtB8_3num7nonzero7NonZerojEE3Err0Cs779nruZdk0e_3zoo",
            "core::result::Result::<(), core::num::nonzero::NonZero<usize>>::Err",
        ),
        ("_RNvCs779nruZdk0e_3zoou11hlich_lqa8a", "zoo::häßlich"),
        ("_RNvCs779nruZdk0e_3zoou7_1lqs71d", "zoo::東京"),
        ("_RNvMCs779nruZdk0e_3zooINtB2_4WraphKj3_E5firstB2_", "<zoo::Wrap<u8, 3>>::first"),
        ("_RNvMs8_Cs779nruZdk0e_3zooINtB5_4FlagKb1_Kc78_Kxn5_E3getB5_", "<zoo::Flag<true, 'x', -5>>::get"),
        (
            "_RNvMs8_Cs779nruZdk0e_3zooINtB5_4FlagKb0_Kce9_Kx11f71fb04cb_E3getB5_",
            "<zoo::Flag<false, 'é', 1234567890123>>::get",
        ),
        ("_RNvXs0_Cs779nruZdk0e_3zooRSyNtB5_5Speak5speak", "<&[u64] as zoo::Speak>::speak"),
        ("_RNvXs1_Cs779nruZdk0e_3zooFhEbNtB5_5Speak5speak", "<fn(u8) -> bool as zoo::Speak>::speak"),
        ("_RNvXs2_Cs779nruZdk0e_3zooPcNtB5_5Speak5speak", "<*const char as zoo::Speak>::speak"),
        (
            "_RNvXs3_Cs779nruZdk0e_3zooDG_INtNtNtCsgEmfK2I1SDS_4core3ops8function2FnTRL0_hEEp6OutputhEL_NtB5_5Speak5speak",
            "<dyn for<'a> core::ops::function::Fn<(&'a u8,), Output = u8> as zoo::Speak>::speak",
        ),
        (
            "_RNvXs4_Cs779nruZdk0e_3zooFG_RL0_eERL0_eNtB5_5Speak5speak",
            "<for<'a> fn(&'a str) -> &'a str as zoo::Speak>::speak",
        ),
        (
            "_RNvXs5_Cs779nruZdk0e_3zooFUKCOaEuNtB5_5Speak5speak",
            "<unsafe extern \"C\" fn(*mut i8) as zoo::Speak>::speak",
        ),
        ("_RNvXs6_Cs779nruZdk0e_3zooAbj3_NtB5_5Speak5speak", "<[bool; 3] as zoo::Speak>::speak"),
        (
            "_RNvXs7_Cs779nruZdk0e_3zooTuifdonuENtB5_5Speak5speak",
            "<((), isize, f32, f64, u128, i128, ()) as zoo::Speak>::speak",
        ),
        ("_RNvXs_Cs779nruZdk0e_3zooThsENtB4_5Speak5speak", "<(u8, i16) as zoo::Speak>::speak"),
        (
            "_RNvXs1_NtCsgEmfK2I1SDS_4core3anyDNtB5_3AnyNtNtB7_6marker4SyncNtBG_4SendEL_NtNtB7_3fmt5Debug3fmt",
            "<dyn core::any::Any + core::marker::Sync + core::marker::Send as core::fmt::Debug>::fmt",
        ),
        (
            "_RNvNvXs0_NtNtCsgEmfK2I1SDS_4core5slice5indexjINtB7_10SliceIndexSpE13get_unchecked18precondition_checkCs779nruZdk0e_3zoo",
            "<usize as core::slice::index::SliceIndex<[_]>>::get_unchecked::precondition_check",
        ),
        (
            "_RNvYFEuINtNtNtCsgEmfK2I1SDS_4core3ops8function6FnOnceuE9call_onceCs779nruZdk0e_3zoo",
            "<fn() as core::ops::function::FnOnce<()>>::call_once",
        ),
        ("_RNvCs6GOSKOG1BEw_8rs_hello3fib.llvm.12345", "rs_hello::fib.llvm.12345"),
    ];

    /// Legacy names from the same guests built with rustc's default mangling, `legacy`.
    const GUESTS_LEGACY: &[(&str, &str)] = &[
        ("_ZN8rs_hello3fib17h4e7ecfad8b3ada5aE", "rs_hello::fib"),
        ("_ZN2hv4file4File9read_bulk17h693971a2a270e3f7E", "hv::file::File::read_bulk"),
        ("_ZN4core3fmt5Write9write_fmt17h5d273c56f92a5641E", "core::fmt::Write::write_fmt"),
        ("_ZN39_$LT$str$u20$as$u20$hv..serial..Put$GT$3put17h6f1452a3e7f588cfE", "<str as hv::serial::Put>::put"),
        (
            "_ZN51_$LT$hv..file..Error$u20$as$u20$hv..serial..Put$GT$3put17h8ad9293bbc2161f2E",
            "<hv::file::Error as hv::serial::Put>::put",
        ),
        (
            "_ZN55_$LT$hv..serial..Serial$u20$as$u20$core..fmt..Write$GT$9write_str17hce3d22eb399455e0E",
            "<hv::serial::Serial as core::fmt::Write>::write_str",
        ),
        (
            "_ZN4core3fmt3num52_$LT$impl$u20$core..fmt..Display$u20$for$u20$u64$GT$3fmt17h0123456789abcdefE",
            "core::fmt::num::<impl core::fmt::Display for u64>::fmt",
        ),
        (
            "_ZN44_$LT$$RF$T$u20$as$u20$core..fmt..Display$GT$3fmt17h8e9e46c03c6cf64dE",
            "<&T as core::fmt::Display>::fmt",
        ),
        ("_ZN8rs_hello3fib17h4e7ecfad8b3ada5aE.llvm.99", "rs_hello::fib.llvm.99"),
    ];

    #[test]
    fn known_v0_names() {
        for (mangled, readable) in GUESTS_V0.iter().chain(PROGRAM_V0) {
            assert_eq!(demangle(mangled).as_deref(), Some(*readable), "{mangled}");
        }
    }

    #[test]
    fn known_legacy_names() {
        for (mangled, readable) in GUESTS_LEGACY {
            assert_eq!(demangle(mangled).as_deref(), Some(*readable), "{mangled}");
        }
    }

    #[test]
    fn c_names_and_non_rust_names_are_none() {
        for name in [
            "",
            "memcpy",
            "_start",
            "guest_main",
            "hv_fail",
            "_R",
            "_ZN",
            "_RNvC",
            "_ZN3foo3barEv",                    // C++: no Rust hash
            "_ZN17h0123456789abcdefE",          // a hash alone is no path
            "_ZN3foo3bar17h0123456789abcdeE",   // 15 hex digits
            "_ZN3foo3bar17h0123456789abcdefEx", // a suffix must start with '.'
            "_R1NvC3foo3bar",                   // an encoding version we do not know
            "_RNvC3foo3bar ",                   // a space
            "_RNvC3foo3bar\u{1b}[31m",          // a terminal escape
            "_ZN3foo$u1b$3bar17h0123456789abcdefE",
            "_ZN6foo$u1b$3bar17h0123456789abcdefE", // an escaped control character
            "_RNvC3foo5bar",                        // 5 bytes of name, 3 there
            "_RNvC3foo3barX",                       // trailing garbage
        ] {
            assert_eq!(demangle(name), None, "{name:?}");
        }
    }

    #[test]
    fn backrefs_must_point_backwards_and_cannot_loop() {
        // B_ at position 2 points at position 0, which reaches the same B again: a loop, cut
        // by the depth limit.
        assert_eq!(demangle("_RNvB_3foo"), None);
        // Forwards, or to itself: refused at once.
        assert_eq!(demangle("_RNvB4_3foo"), None);
        assert_eq!(demangle("_RNvB1_3foo"), None);
        // Proper ones: B0_ is position 1, the path `NvC3foo3bar`; B2_ is 3, `C3foo`.
        assert_eq!(demangle("_RINvC3foo3barB0_E").as_deref(), Some("foo::bar::<foo::bar>"));
        assert_eq!(demangle("_RINvC3foo3barB2_E").as_deref(), Some("foo::bar::<foo>"));
    }

    #[test]
    fn depth_output_and_work_are_bounded() {
        let nested = format!("_R{}C3foo{}", "Nv".repeat(100), "3bar".repeat(100));
        assert_eq!(demangle(&nested), None, "100 levels");
        let fine = format!("_R{}C3foo{}", "Nv".repeat(40), "3bar".repeat(40));
        assert_eq!(demangle(&fine).map(|s| s.len()), Some(3 + 5 * 40));
        // Generic arguments, each a 30-byte name: 30 of them fit in 1024 bytes, 40 do not.
        let args = |n| format!("C30{}", "x".repeat(30)).repeat(n);
        assert!(demangle(&format!("_RINvC3foo3bar{}E", args(30))).is_some_and(|s| s.len() <= MAX_OUTPUT));
        assert_eq!(demangle(&format!("_RINvC3foo3bar{}E", args(40))), None, "past {MAX_OUTPUT} bytes");
        // Tuples of tuples, each (T, T) with the second T a back-reference to the first: the
        // output doubles at each level, 2^n, and is cut by the output limit.
        assert_eq!(demangle(&doubling(3)).as_deref(), Some("foo::bar::<(((u8, u8), (u8, u8)), ((u8, u8), (u8, u8)))>"));
        assert_eq!(demangle(&doubling(40)), None);
        // A binder of 2^60 lifetimes in a part that is not printed: refused, not looped over.
        let binder = "_RNvMC3fooFGzzzzzzzzzz_EuE3bar";
        assert_eq!(demangle(binder), None);
        // Legacy: 10,000 elements.
        let many = format!("_ZN{}17h0123456789abcdefE", "1a".repeat(10_000));
        assert_eq!(demangle(&many), None);
    }

    /// `<base-62-number>` of `n`, as a back-reference writes it.
    fn base62(n: usize) -> String {
        const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        if n == 0 {
            return "_".to_owned();
        }
        let (mut n, mut digits) = (n - 1, Vec::new());
        loop {
            digits.push(DIGITS[n % 62]);
            n /= 62;
            if n == 0 {
                break;
            }
        }
        digits.reverse();
        format!("{}_", String::from_utf8(digits).unwrap())
    }

    /// `foo::bar::<T0>` with T(k) = (T(k+1), T(k+1)) for k < levels, the second T(k+1) a
    /// back-reference to the first, and T(levels) = u8.
    fn doubling(levels: usize) -> String {
        let prefix = "INvC3foo3bar"; // positions count from after "_R"
        let mut symbol = format!("_R{prefix}{}h", "T".repeat(levels));
        for level in (0..levels).rev() {
            // T(level) starts at prefix.len() + level; its first element right after it
            symbol.push_str(&format!("B{}E", base62(prefix.len() + level + 1)));
        }
        symbol.push('E');
        symbol
    }

    #[test]
    fn punycode_decodes_or_is_shown_encoded() {
        assert_eq!(punycode("hlich_lqa8a").as_deref(), Some("häßlich"));
        assert_eq!(punycode("1lqs71d").as_deref(), Some("東京"));
        assert_eq!(punycode("ZZZZZZZZZZZZ"), None);
        assert_eq!(punycode("9999999999999999999999"), None);
        assert_eq!(demangle("_RNvC3foou5_ZZZZZ").as_deref(), Some("foo::punycode{ZZZZZ}"));
    }

    /// xorshift64*, seeded: the same inputs every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn fuzz_random_and_mutated_names_never_panic_and_stay_bounded() {
        // Bytes a mangled name is made of, and a few that it is not.
        const ALPHABET: &[u8] = b"_RZNCMXYIBEKLGDFUSATQOPpsuvhjmyxbcde0123456789az$.LTGT";
        let known: Vec<&str> = GUESTS_V0.iter().chain(PROGRAM_V0).chain(GUESTS_LEGACY).map(|&(m, _)| m).collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut parsed = 0;
        for round in 0..30_000 {
            let input: String = if round % 3 == 0 {
                // random: a prefix, then random bytes of the alphabet (and sometimes any char)
                let prefix = ["_R", "_ZN", ""][rng.below(3)];
                let len = rng.below(80);
                let body: String = (0..len)
                    .map(|_| match rng.below(20) {
                        0 => char::from_u32(rng.below(0x3000) as u32).unwrap_or('x'),
                        _ => char::from(ALPHABET[rng.below(ALPHABET.len())]),
                    })
                    .collect();
                format!("{prefix}{body}")
            } else {
                // a known name with a few bytes replaced, inserted, removed or duplicated
                let mut bytes = known[rng.below(known.len())].as_bytes().to_vec();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(bytes.len() + 1);
                    let b = ALPHABET[rng.below(ALPHABET.len())];
                    match rng.below(4) {
                        0 if at < bytes.len() => bytes[at] = b,
                        1 => bytes.insert(at, b),
                        2 if at < bytes.len() => {
                            bytes.remove(at);
                        }
                        _ => {
                            let tail = bytes.get(at..).unwrap_or_default().to_vec();
                            bytes.extend_from_slice(&tail);
                        }
                    }
                }
                String::from_utf8_lossy(&bytes).into_owned()
            };
            if let Some(out) = demangle(&input) {
                parsed += 1;
                assert!(out.len() <= MAX_OUTPUT, "{input:?} gave {} bytes", out.len());
                assert!(!out.chars().any(char::is_control), "{input:?} gave a control character");
            }
        }
        // The mutations leave many names valid: the test reaches the printing code too.
        assert!(parsed > 1_000, "only {parsed} inputs parsed");
    }
}
