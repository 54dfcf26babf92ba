//! The serial port `0xE9` (REFERENCE §3): one `out` of a byte writes it to the hypervisor's
//! stdout; one `in` reads the next byte of its stdin, `0xFF` at end of input.
//!
//! Text and numbers are printed by this module's own code, not by `core::fmt`:
//!
//! ```ignore
//! hv::putln!("fib(", n, ") = ", fib(n));      // any mix of str, integers, char, bool, Hex
//! hv::serial::put_hex(0x1f);                   // "1f"
//! ```
//!
//! [`Serial`] also implements `core::fmt::Write`, for `write!(hv::Serial, "{x:>8}")`: the
//! build compiles `core` with the guest's own flags (LTO, see `guest/README.md`), so
//! `core::fmt` is free of SSE too, and `make check` proves it for each image. It makes an
//! image a few KiB larger.

use crate::port;

/// The serial port.
pub const SERIAL_PORT: u16 = 0xE9;

/// Writes one byte (one `out`).
pub fn put_byte(byte: u8) {
    // SAFETY: an `out` to the serial port only writes a byte to the hypervisor's stdout.
    unsafe { port::outb(SERIAL_PORT, byte) };
}

/// Writes the bytes, one `out` each.
pub fn put_bytes(bytes: &[u8]) {
    for &b in bytes {
        put_byte(b);
    }
}

/// Writes a string (no newline added).
pub fn put_str(s: &str) {
    put_bytes(s.as_bytes());
}

/// Writes `value` in decimal.
pub fn put_udec(mut value: u64) {
    let mut digits = [0u8; 20]; // u64::MAX has 20 decimal digits
    let mut n = 0;
    loop {
        digits[n] = b'0' + (value % 10) as u8;
        n += 1;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    while n > 0 {
        n -= 1;
        put_byte(digits[n]);
    }
}

/// Writes `value` in decimal, with a `-` if it is negative.
pub fn put_dec(value: i64) {
    if value < 0 {
        put_byte(b'-');
    }
    // unsigned_abs: i64::MIN too has its magnitude as a u64
    put_udec(value.unsigned_abs());
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `value` in lowercase hexadecimal, no `0x`, no leading zeros (`0` for zero).
pub fn put_hex(value: u64) {
    let digits = (64 - value.leading_zeros()).div_ceil(4).max(1);
    put_hex_width(value, digits);
}

/// Writes the low `digits` hex digits of `value`, zero-padded: `put_hex_width(0xab, 4)` writes
/// `00ab`.
pub fn put_hex_width(value: u64, digits: u32) {
    for i in (0..digits.min(16)).rev() {
        put_byte(HEX_DIGITS[((value >> (4 * i)) & 0xF) as usize]);
    }
}

/// Reads the next stdin byte (one `in`): `None` at end of input. (The port answers `0xFF` at
/// the end, so a real `0xFF` byte in the input also reads as `None`.)
pub fn read_byte() -> Option<u8> {
    // SAFETY: an `in` from the serial port only takes the next byte of the hypervisor's stdin.
    match unsafe { port::inb(SERIAL_PORT) } {
        0xFF => None,
        byte => Some(byte),
    }
}

/// Fills `buf` from stdin with ONE `rep insb` (one VM exit for all of it); past the end of
/// input the bytes are `0xFF`.
pub fn read_bytes(buf: &mut [u8]) {
    // SAFETY: rep insb stores exactly rcx = buf.len() bytes at rdi = buf, upwards (DF is clear,
    // as the ABI requires), each read from the serial port, which touches nothing else.
    unsafe {
        core::arch::asm!(
            "rep insb",
            inout("rdi") buf.as_mut_ptr() => _,
            inout("rcx") buf.len() => _,
            in("dx") SERIAL_PORT,
            options(nostack, preserves_flags),
        );
    }
}

/// Something [`put!`](crate::put) can print.
pub trait Put {
    /// Writes `self` to the serial port.
    fn put(&self);
}

impl Put for str {
    fn put(&self) {
        put_str(self);
    }
}

/// Raw bytes, unchanged.
impl Put for [u8] {
    fn put(&self) {
        put_bytes(self);
    }
}

impl Put for char {
    fn put(&self) {
        put_str(self.encode_utf8(&mut [0; 4]));
    }
}

impl Put for bool {
    fn put(&self) {
        put_str(if *self { "true" } else { "false" });
    }
}

impl<T: Put + ?Sized> Put for &T {
    fn put(&self) {
        (**self).put();
    }
}

// Integers print in decimal (as `{}` would): unsigned ones through u64, signed through i64.
macro_rules! put_integers {
    ($via:ident: $($t:ty),*) => {
        $(impl Put for $t {
            fn put(&self) {
                $via(*self as _);
            }
        })*
    };
}
put_integers!(put_udec: u8, u16, u32, u64, usize);
put_integers!(put_dec: i8, i16, i32, i64, isize);

/// An integer to print in hexadecimal: `putln!("cr3 = 0x", Hex(cr3))`.
#[derive(Clone, Copy, Debug)]
pub struct Hex(pub u64);

impl Put for Hex {
    fn put(&self) {
        put_hex(self.0);
    }
}

/// Prints each argument with [`Put`]: `hv::put!("x = ", x, ", ok = ", true);` (a list, not a
/// format string).
#[macro_export]
macro_rules! put {
    ($($item:expr),* $(,)?) => {{
        $( $crate::serial::Put::put(&$item); )*
    }};
}

/// As [`put!`](crate::put), then a newline.
#[macro_export]
macro_rules! putln {
    ($($item:expr),* $(,)?) => {{
        $crate::put!($($item),*);
        $crate::serial::put_byte(b'\n');
    }};
}

/// The serial port as a `core::fmt::Write`: `write!(hv::Serial, "{n:>5}")`. See the module
/// documentation for what it costs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Serial;

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        put_str(s);
        Ok(())
    }
}
