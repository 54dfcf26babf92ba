//! Guest images: checked before any VM starts, then copied to guest-physical 0.
//!
//! C counterpart: `load_guest_image`, which only refused an image larger than all of RAM
//! (and so let a large image overwrite the page tables it had put at 0x11000).
#![forbid(unsafe_code)]

use std::fs::{FileType, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use inspect::image::too_large;

use crate::long_mode::{Layout, MIB, PageSize};

/// `open(2)` flags: never wait for a writer (a FIFO swapped in after the check) nor become our tty.
const O_NONBLOCK_NOCTTY: i32 = libc::O_NONBLOCK | libc::O_NOCTTY;

/// A guest image that passed every check, with its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub path: PathBuf,
    pub bytes: Arc<[u8]>,
}

/// C: `load_guest_image`. Opens, checks and reads the image at `path` for a VM of `layout`; `Err`
/// is one line naming the path, the reason and what to do. Never blocks: a FIFO, socket or device
/// is refused by its type before it is opened (a FIFO would wait for a writer). Reads at most one
/// byte more than fits, so that a huge (or growing) file is not slurped.
pub fn load(path: &Path, layout: &Layout) -> Result<Image, String> {
    let error = |why: String| format!("guest image {}: {why}", path.display());
    let open = |e: io::Error| error(format!("{e}: check the path"));
    // `metadata` follows symlinks, like open(2), and never blocks.
    let meta = std::fs::metadata(path).map_err(open)?;
    regular(meta.file_type()).map_err(error)?;
    let file = OpenOptions::new().read(true).custom_flags(O_NONBLOCK_NOCTTY).open(path).map_err(open)?;
    // Check again what was opened: the path may have been replaced since.
    let meta = file.metadata().map_err(open)?;
    regular(meta.file_type()).map_err(error)?;
    let (max, mib) = (layout.tables_base, layout.mem_size / MIB);
    let mut bytes = Vec::with_capacity(meta.len().min(max) as usize);
    file.take(max + 1).read_to_end(&mut bytes).map_err(|e| error(format!("cannot read it: {e}")))?;
    let size = meta.len().max(bytes.len() as u64);
    // Not an image at any size (an ELF file, a source...): said before whether it fits.
    match bytes.len() as u64 {
        0 => Err(error("the file is empty: build the guest first (make guests)".to_owned())),
        n => match not_an_image(path, &bytes) {
            Some(what) => Err(error(what)),
            None if n > max => Err(error(too_large(size, mib, layout.page == PageSize::Large2M, tables_base))),
            None => Ok(Image { path: path.to_owned(), bytes: bytes.into() }),
        },
    }
}

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

/// Where the page tables start with `mib` MiB of RAM and 2 MiB pages (`large`) or 4 KiB ones:
/// for the toolbox's words on an image too large (`inspect::image::too_large`).
fn tables_base(mib: u64, large: bool) -> u64 {
    Layout::new(mib * MIB, if large { PageSize::Large2M } else { PageSize::Small4K }).tables_base
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mh_image_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn accepts_an_image_up_to_the_page_tables_and_refuses_one_byte_more() {
        let layout = Layout::new(2 * MIB, PageSize::Small4K);
        let max = layout.tables_base as usize;
        let ok = temp("fits.img", &vec![0xf4; max]);
        assert_eq!(load(&ok, &layout).unwrap().bytes.len(), max);
        let big = temp("big.img", &vec![0xf4; max + 1]);
        let e = load(&big, &layout).unwrap_err().to_string();
        assert!(e.contains("big.img") && e.contains("do not fit") && e.contains("-m"), "{e}");
        // The toolbox's words, with this version's tables: the numbers are the same as its own tests'.
        let fits = |size| too_large(size, 2, false, tables_base);
        assert!(fits(2084865).ends_with("it fits with -m 4 -p 2 (up to 4182016 bytes)"));
        assert!(fits(8 * MIB).ends_with("no setting fits it: the largest image is 8376320 bytes (-m 8 -p 2)"));
        assert!(e.ends_with("it fits with -m 2 -p 2 (up to 2084864 bytes)"), "{e}");
    }

    #[test]
    fn refuses_missing_empty_and_directory() {
        let layout = Layout::new(4 * MIB, PageSize::Large2M);
        let e = load(Path::new("/nonexistent/x.img"), &layout).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/x.img") && e.contains("No such file"), "{e}");
        let empty = temp("empty.img", b"");
        let e = load(&empty, &layout).unwrap_err().to_string();
        assert!(e.contains("empty.img") && e.contains("empty"), "{e}");
        let e = load(&std::env::temp_dir(), &layout).unwrap_err().to_string();
        assert!(e.contains("is a directory, not a regular file"), "{e}");
    }

    #[test]
    fn refuses_fifo_socket_and_device_without_blocking() {
        let layout = Layout::new(2 * MIB, PageSize::Large2M);
        let dir = std::env::temp_dir().join(format!("mh_image_special_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A FIFO with no writer: opening it for reading would block for ever.
        let fifo = dir.join("pipe.img");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo");
        assert!(made.success());
        let e = load(&fifo, &layout).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "guest image {}: is a FIFO (named pipe), not a regular file: give the path of a flat binary image",
                fifo.display()
            )
        );
        // Through a symlink too: the type is that of the target.
        let link = dir.join("link.img");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        assert!(load(&link, &layout).unwrap_err().to_string().contains("is a FIFO (named pipe)"));
        let sock = dir.join("sock.img");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(load(&sock, &layout).unwrap_err().to_string().contains("is a socket, not a regular file"));
        let e = load(Path::new("/dev/null"), &layout).unwrap_err().to_string();
        assert!(e.contains("/dev/null: is a character device, not a regular file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_that_is_not_an_image_is_told_so_before_whether_it_fits() {
        let layout = Layout::new(2 * MIB, PageSize::Small4K);
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(layout.tables_base as usize + 4096, 0);
        elf[16] = 2; // ET_EXEC
        let e = load(&temp("large.elf", &elf), &layout).unwrap_err();
        assert!(e.ends_with("large.elf: is an ELF file, not a flat image: give large.img, the flat binary the guest Makefile makes from it (objcopy -O binary)"), "{e}");
        let e = load(&temp("run.sh", b"#!/bin/sh\necho hi\n"), &layout).unwrap_err();
        assert!(e.ends_with("run.sh: is a script, not a flat image: give a guest image (NAME.img, which make -C guest builds from NAME.c or NAME.rs)"), "{e}");
        // Any other bytes are an image, whatever the name: a flat binary can hold anything.
        assert!(load(&temp("odd.c", &[0xf4, 0x00, 0xff]), &layout).is_ok());
    }

    #[test]
    fn a_symlink_to_an_image_is_followed() {
        let layout = Layout::new(2 * MIB, PageSize::Large2M);
        let target = temp("target.img", &[0xf4]);
        let link = target.with_file_name("via_link.img");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let image = load(&link, &layout).unwrap();
        assert_eq!((image.path, &*image.bytes), (link, &[0xf4][..]));
    }

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
