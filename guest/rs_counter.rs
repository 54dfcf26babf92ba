//! rs_counter.rs -> rs_counter.img (every version): counts stdin, as `wc` does.
//!
//! It reads stdin to its end, one byte per `in` (`hv::serial::read_byte`, `None` at the end),
//! then prints one line. With stdin `one two\nthree\n`: `lines 2, words 3, bytes 14\n`; with no
//! input: `lines 0, words 0, bytes 0\n`. Then it halts (exit status 0).
#![no_std]
#![no_main]

hv::entry!(main);

#[derive(Default)]
struct Counts {
    lines: u64,
    words: u64,
    bytes: u64,
}

fn main() {
    let mut counts = Counts::default();
    let mut in_word = false;
    while let Some(byte) = hv::serial::read_byte() {
        counts.bytes += 1;
        if byte == b'\n' {
            counts.lines += 1;
        }
        let space = matches!(byte, b' ' | b'\t' | b'\n' | b'\r');
        if !space && !in_word {
            counts.words += 1; // the first byte of a word
        }
        in_word = !space;
    }
    hv::putln!("lines ", counts.lines, ", words ", counts.words, ", bytes ", counts.bytes);
}
