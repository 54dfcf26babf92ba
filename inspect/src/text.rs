//! Names from a guest's ELF (symbols, source file names) are text to show, never commands to a
//! terminal: [`escape`] is how every one of them is written before it reaches stderr, once,
//! here, when the ELF is read: printable ASCII as it is (a backslash doubled, so that an
//! escape cannot be forged), any other byte (control characters, DEL, every byte of a
//! non-ASCII character) as `\xNN`. So a hostile ELF can neither split a line, forge one, nor
//! send a terminal control sequence. (Version C's `--trace` quotes a guest's file names the
//! same way, with `\"` for a quote and `\n`, `\t`, `\r` for those three.)

use std::fmt::Write as _;

/// `bytes` as printable ASCII (see the module's documentation).
pub fn escape(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => text.push_str("\\\\"),
            0x20..=0x7e => text.push(char::from(b)),
            _ => {
                let _ = write!(text, "\\x{b:02x}");
            }
        }
    }
    text
}

/// Whether `text` could have come out of [`escape`]: printable ASCII only.
pub fn is_printable(text: &str) -> bool {
    text.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// The process's panic hook (`std::panic::set_hook(Box::new(report_panic))`): a panic, which
/// is a bug or the runtime out of memory, in one line on stderr that allocates nothing. (std's
/// own report takes a lock and may then fail to allocate, which under an address-space limit
/// ends in a hang: the allocation error's report waits for that same lock.)
pub fn report_panic(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let what = payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    let what = what.unwrap_or("(no message)");
    match info.location() {
        Some(at) => diag!("mini_hypervisor: internal error: {what} (at {}:{})", at.file(), at.line()),
        None => diag!("mini_hypervisor: internal error: {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_printable_ascii_comes_out() {
        assert_eq!(escape(b"guest_main"), "guest_main");
        assert_eq!(escape(b"a\nb\x1b[2J\x7f"), "a\\x0ab\\x1b[2J\\x7f");
        assert_eq!(escape("é\u{202e}".as_bytes()), "\\xc3\\xa9\\xe2\\x80\\xae");
        assert_eq!(escape(b"\"q\" 'a \\x41"), "\"q\" 'a \\\\x41");
        for b in 0..=255u8 {
            assert!(is_printable(&escape(&[b])), "{b:#x}");
        }
        assert!(!is_printable("a\tb") && is_printable("a b~"));
    }
}
