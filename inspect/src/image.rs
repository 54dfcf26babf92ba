//! What a file given as a guest image is, when it is not one: the version checks before any VM
//! starts (the C's `load_guest_image` took any file that fit). A flat image is any bytes at all,
//! so only what is recognisable is refused: a path that is not a regular file, and a file a
//! student might give by mistake (an ELF file, an object file, a script, a C or Rust source).
//! An image too large is told the smallest `-m`/`-p` it fits ([`too_large`]).

use std::fs::FileType;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// `Ok` for a regular file; otherwise what the path is instead, and what to give.
pub fn regular(kind: FileType) -> Result<(), String> {
    let what = match kind {
        _ if kind.is_file() => return Ok(()),
        _ if kind.is_dir() => "is a directory",
        _ if kind.is_fifo() => "is a FIFO (named pipe)",
        _ if kind.is_socket() => "is a socket",
        _ if kind.is_char_device() => "is a character device",
        _ if kind.is_block_device() => "is a block device",
        _ => "is not a regular file",
    };
    Err(format!("{what}, not a regular file: give the path of a flat binary image"))
}

/// What the file at `path`, whose bytes (or first bytes) are `bytes`, is if it is recognisably
/// not a flat image, and what to give instead; `None` for anything else.
pub fn not_an_image(path: &Path, bytes: &[u8]) -> Option<String> {
    let img = format!("{}.img", path.file_stem().unwrap_or_default().to_string_lossy());
    let text = bytes.iter().take(512).all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    // ELF's e_type, little-endian, at offset 16: 1 is a relocatable object (`.o`).
    let (elf, object) = (bytes.starts_with(b"\x7fELF"), bytes.get(16) == Some(&1));
    let source = match path.extension().and_then(|e| e.to_str()) {
        _ if elf && !object => {
            return Some(format!(
                "is an ELF file, not a flat image: give {img}, the flat binary the guest Makefile makes from it (objcopy -O binary)"
            ));
        }
        _ if elf => "an object file (ELF)",
        // Nothing builds an image from a script: what to give is a guest's image. (`#![` begins
        // a Rust source's inner attribute, as rustc tells it from a `#!` line.)
        _ if bytes.starts_with(b"#!") && !bytes.starts_with(b"#![") => {
            return Some(
                "is a script, not a flat image: give a guest image (NAME.img, which make -C guest builds from NAME.c or NAME.rs)"
                    .to_owned(),
            );
        }
        Some("c" | "h") if text => "C source",
        Some("rs") if text => "Rust source",
        Some("s" | "S") if text => "assembly source",
        _ => return None,
    };
    Some(format!("is {source}, not a flat image: build it first (make -C guest {img}) and give {img}"))
}

/// Why an image of `size` bytes does not fit a VM of `mib` MiB with 2 MiB pages (`large_pages`)
/// or 4 KiB ones, and under which `-m`/`-p` it would: `tables_base(mib, large_pages)` is where the
/// version puts the page tables (an image may fill RAM up to them).
pub fn too_large(size: u64, mib: u64, large_pages: bool, tables_base: impl Fn(u64, bool) -> u64) -> String {
    let (base, page) = (tables_base(mib, large_pages), if large_pages { "2 MiB pages" } else { "4 KiB pages" });
    format!(
        "{size} bytes do not fit: with {mib} MiB of RAM and {page} the page tables start at {base:#x}, so an \
         image may have at most {base} bytes; {}",
        what_fits(size, tables_base)
    )
}

/// The smallest `-m`/`-p` under which an image of `size` bytes fits (`-p 2` needs fewer table
/// pages than `-p 4`, so it leaves more room), or why none does.
fn what_fits(size: u64, tables_base: impl Fn(u64, bool) -> u64) -> String {
    for mib in [2, 4, 8] {
        for (large_pages, flag) in [(true, "2"), (false, "4")] {
            let max = tables_base(mib, large_pages);
            if size <= max {
                return format!("it fits with -m {mib} -p {flag} (up to {max} bytes)");
            }
        }
    }
    format!("no setting fits it: the largest image is {} bytes (-m 8 -p 2)", tables_base(8, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(e_type: u8) -> Vec<u8> {
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(64, 0);
        elf[16] = e_type;
        elf
    }

    #[test]
    fn files_that_are_recognisably_not_images_are_named_with_what_to_give() {
        let is = |path: &str, bytes: &[u8]| not_an_image(Path::new(path), bytes);
        assert_eq!(
            is("guest/hello.elf", &elf(2)).unwrap(), // ET_EXEC
            "is an ELF file, not a flat image: give hello.img, the flat binary the guest Makefile makes from it (objcopy -O binary)"
        );
        assert_eq!(
            is("hello.o", &elf(1)).unwrap(), // ET_REL
            "is an object file (ELF), not a flat image: build it first (make -C guest hello.img) and give hello.img"
        );
        assert_eq!(
            is("mine.c", b"#include \"hv.h\"\nvoid guest_main(void) {}\n").unwrap(),
            "is C source, not a flat image: build it first (make -C guest mine.img) and give mine.img"
        );
        assert_eq!(
            is("rs_mine.rs", b"#![no_std]\n").unwrap(),
            "is Rust source, not a flat image: build it first (make -C guest rs_mine.img) and give rs_mine.img"
        );
        // Whatever its name, a script is not built into an image: any guest's image is what to give.
        for script in ["run.sh", "run", "run.c"] {
            assert_eq!(
                is(script, b"#!/bin/sh\necho hi\n").unwrap(),
                "is a script, not a flat image: give a guest image (NAME.img, which make -C guest builds from NAME.c or NAME.rs)"
            );
        }
        // An ELF file is one whatever its name, and whatever its size (the caller reads part of a large one).
        assert!(is("big.img", &elf(2)).unwrap().starts_with("is an ELF file, not a flat image: give big.img,"));
    }

    #[test]
    fn any_other_bytes_are_an_image_whatever_the_name() {
        // A flat binary can hold anything: only what is recognisable is refused.
        assert_eq!(not_an_image(Path::new("odd.c"), &[0xf4, 0x00, 0xff]), None);
        assert_eq!(not_an_image(Path::new("text.img"), b"#include <x>"), None);
        assert_eq!(not_an_image(Path::new("guest.img"), &[0xf4]), None);
        assert_eq!(not_an_image(Path::new("short.elf"), b"\x7fEL"), None);
    }

    /// Where the versions put the page tables: PML4, PDPT, PD, and with 4 KiB pages one PT per 2 MiB.
    fn tables_base(mib: u64, large_pages: bool) -> u64 {
        let pages = if large_pages { 3 } else { 3 + mib / 2 };
        (mib << 20) - pages * 4096
    }

    #[test]
    fn an_image_too_large_is_told_the_smallest_setting_it_fits() {
        assert_eq!(
            too_large(2084865, 2, true, tables_base),
            "2084865 bytes do not fit: with 2 MiB of RAM and 2 MiB pages the page tables start at 0x1fd000, so an \
             image may have at most 2084864 bytes; it fits with -m 4 -p 2 (up to 4182016 bytes)"
        );
        let fits = |size| what_fits(size, tables_base);
        assert_eq!(fits(1), "it fits with -m 2 -p 2 (up to 2084864 bytes)");
        assert_eq!(fits(4182017), "it fits with -m 8 -p 2 (up to 8376320 bytes)");
        assert_eq!(fits(8 << 20), "no setting fits it: the largest image is 8376320 bytes (-m 8 -p 2)");
    }

    #[test]
    fn a_path_that_is_not_a_regular_file_is_named_with_what_it_is() {
        let kind = |path: &str| std::fs::metadata(path).unwrap().file_type();
        assert_eq!(regular(kind(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))), Ok(()));
        assert_eq!(
            regular(kind("/")).unwrap_err(),
            "is a directory, not a regular file: give the path of a flat binary image"
        );
        assert!(regular(kind("/dev/null")).unwrap_err().starts_with("is a character device, not a regular file"));
    }
}
