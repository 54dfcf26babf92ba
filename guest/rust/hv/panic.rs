//! What a panic does: it prints `panicked at FILE:LINE: MESSAGE` on the serial port, then ends
//! the VM as a failure (exit status 1) with a triple fault on purpose: see [`crate::fail`].
//!
//! An index out of bounds in `rs_panic.rs` line 34, for example, prints
//! `panicked at rs_panic.rs:34: index out of bounds: the len is 3 but the index is 3`.
//!
//! The location is printed by our own code. A message with no arguments (`panic!("...")`,
//! `unwrap()` on `None`, `assert!`) is a plain `&str` and printed as such; any other message is
//! formatted with `core::fmt`, which the build compiles without SSE (LTO, `guest/README.md`),
//! and which `make check` would flag otherwise.

use core::fmt::Write;
use core::panic::PanicInfo;

use crate::serial::{Serial, put_byte, put_str, put_udec};

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    put_str("panicked at ");
    match info.location() {
        Some(at) => {
            put_str(at.file());
            put_byte(b':');
            put_udec(u64::from(at.line()));
        }
        None => put_str("an unknown place"),
    }
    put_str(": ");
    let message = info.message();
    match message.as_str() {
        Some(text) => put_str(text),
        None => {
            let _ = write!(Serial, "{message}"); // Serial never fails
        }
    }
    put_byte(b'\n');
    crate::fail()
}
