//! The x86 port instructions, one `in` or `out` each, as `hv.h`'s inline functions.
//!
//! They are `unsafe` because a port can do anything a device does: a bulk request on the file
//! port (REFERENCE §6) makes the hypervisor write guest RAM at any address the guest names.
//! [`serial`](crate::serial) and [`file`](crate::file) wrap the ports in safe functions.

use core::arch::asm;

/// `out` of one byte: `value` to `port`.
/// # Safety
/// The byte must not make the device behind `port` touch memory that Rust code uses.
// SAFETY: a contract for the caller (above); the body relies on nothing else.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: one `out %al, %dx`; what the device then does is the caller's contract.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags)) };
}

/// `in` of one byte from `port`.
/// # Safety
/// As for [`outb`].
// SAFETY: the caller's contract, as for `outb`; the body relies on nothing else.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: one `in %dx, %al`; what the device then does is the caller's contract.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nostack, preserves_flags)) };
    value
}

/// `out` of two bytes (little-endian): `value` to `port`.
/// # Safety
/// As for [`outb`].
// SAFETY: the caller's contract, as for `outb`; the body relies on nothing else.
pub unsafe fn outw(port: u16, value: u16) {
    // SAFETY: one `out %ax, %dx`; what the device then does is the caller's contract.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") value, options(nostack, preserves_flags)) };
}

/// `in` of two bytes from `port`.
/// # Safety
/// As for [`outb`].
// SAFETY: the caller's contract, as for `outb`; the body relies on nothing else.
pub unsafe fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: one `in %dx, %ax`; what the device then does is the caller's contract.
    unsafe { asm!("in ax, dx", in("dx") port, out("ax") value, options(nostack, preserves_flags)) };
    value
}

/// `out` of four bytes (a dword, little-endian): `value` to `port`.
/// # Safety
/// As for [`outb`].
// SAFETY: the caller's contract, as for `outb`; the body relies on nothing else.
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: one `out %eax, %dx`; what the device then does is the caller's contract.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags)) };
}

/// `in` of four bytes from `port`.
/// # Safety
/// As for [`outb`].
// SAFETY: the caller's contract, as for `outb`; the body relies on nothing else.
pub unsafe fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: one `in %dx, %eax`; what the device then does is the caller's contract.
    unsafe { asm!("in eax, dx", in("dx") port, out("eax") value, options(nostack, preserves_flags)) };
    value
}
