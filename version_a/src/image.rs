//! Guest images: checked before any VM starts, then copied to guest-physical 0.
//!
//! C counterpart: `load_guest_image`, which only refused an image larger than all of RAM
//! (and so let a large image overwrite the page tables it had put at 0x11000).
#![forbid(unsafe_code)]

use std::fmt;
use std::fs::{File, FileType, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::long_mode::Layout;

/// A guest image that passed every check, with its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// Why an image cannot be used: its `Display` is the one line naming the path, the reason and
/// what to do.
#[derive(Debug)]
pub struct ImageError {
    path: PathBuf,
    why: Why,
}

#[derive(Debug)]
enum Why {
    /// It cannot be opened (missing, no permission...).
    Open(io::Error),
    /// It is not a regular file: what it is instead.
    NotRegular(&'static str),
    Read(io::Error),
    Empty,
    /// `size` bytes do not fit under `layout`.
    TooLarge {
        size: u64,
        layout: Layout,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "guest image {}: ", self.path.display())?;
        match &self.why {
            Why::Open(e) => write!(f, "{e}: check the path"),
            Why::NotRegular(what) => write!(f, "{what}: give the path of a flat binary image"),
            Why::Read(e) => write!(f, "cannot read it: {e}"),
            Why::Empty => f.write_str("the file is empty: build the guest first (make guests)"),
            Why::TooLarge { size, layout } => {
                let page = match layout.page {
                    crate::long_mode::PageSize::Small4K => "4 KiB pages",
                    crate::long_mode::PageSize::Large2M => "2 MiB pages",
                };
                write!(
                    f,
                    "{size} bytes do not fit: with {} MiB of RAM and {page} the page tables start at {:#x}, \
                     so an image may have at most {} bytes; {}",
                    layout.mem_size >> 20,
                    layout.tables_base(),
                    layout.max_image_size(),
                    what_fits(*size),
                )
            }
        }
    }
}

/// Opens, checks and reads the image at `path` for a VM of `layout`. Never blocks: a FIFO,
/// socket or device is refused by its type before it is opened (opening a FIFO would wait for
/// a writer), and the open itself is non-blocking in case the path was swapped for one in
/// between.
pub fn check(path: &Path, layout: &Layout) -> Result<Image, ImageError> {
    let error = |why| ImageError { path: path.to_owned(), why };
    // `metadata` follows symlinks, like open(2), and never blocks.
    let meta = std::fs::metadata(path).map_err(|e| error(Why::Open(e)))?;
    regular(meta.file_type()).map_err(error)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| error(Why::Open(e)))?;
    // Check again what was opened: the path may have been replaced since.
    let meta = file.metadata().map_err(|e| error(Why::Open(e)))?;
    regular(meta.file_type()).map_err(error)?;
    let bytes = read(file, meta.len(), layout).map_err(error)?;
    Ok(Image { path: path.to_owned(), bytes })
}

/// `Ok` for a regular file; otherwise what the path is instead.
fn regular(kind: FileType) -> Result<(), Why> {
    if kind.is_file() {
        return Ok(());
    }
    Err(Why::NotRegular(if kind.is_dir() {
        "is a directory, not a regular file"
    } else if kind.is_fifo() {
        "is a FIFO (named pipe), not a regular file"
    } else if kind.is_socket() {
        "is a socket, not a regular file"
    } else if kind.is_char_device() {
        "is a character device, not a regular file"
    } else if kind.is_block_device() {
        "is a block device, not a regular file"
    } else {
        "is not a regular file"
    }))
}

/// Reads the opened regular `file` (`len` bytes by its metadata) and checks its size.
fn read(file: File, len: u64, layout: &Layout) -> Result<Vec<u8>, Why> {
    let max = layout.max_image_size();
    let mut bytes = Vec::with_capacity(len.min(max) as usize);
    // Read at most one byte more than fits, so that a huge (or growing) file is not slurped.
    file.take(max + 1).read_to_end(&mut bytes).map_err(Why::Read)?;
    if bytes.is_empty() {
        return Err(Why::Empty);
    }
    if bytes.len() as u64 > max {
        return Err(Why::TooLarge { size: len.max(bytes.len() as u64), layout: *layout });
    }
    Ok(bytes)
}

/// The smallest `-m`/`-p` under which an image of `size` bytes fits (`-p 2` needs fewer table
/// pages than `-p 4`, so it leaves more room), or why none does.
fn what_fits(size: u64) -> String {
    use crate::long_mode::{MIB, PageSize};
    for mib in [2, 4, 8] {
        for (page, flag) in [(PageSize::Large2M, "2"), (PageSize::Small4K, "4")] {
            let max = Layout::new(mib * MIB, page).max_image_size();
            if size <= max {
                return format!("it fits with -m {mib} -p {flag} (up to {max} bytes)");
            }
        }
    }
    let max = Layout::new(8 * MIB, PageSize::Large2M).max_image_size();
    format!("no setting fits it: the largest image is {max} bytes (-m 8 -p 2)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::long_mode::{MIB, PageSize};

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
        let max = layout.max_image_size() as usize;
        let ok = temp("fits.img", &vec![0xf4; max]);
        assert_eq!(check(&ok, &layout).unwrap().bytes.len(), max);
        let big = temp("big.img", &vec![0xf4; max + 1]);
        let e = check(&big, &layout).unwrap_err().to_string();
        assert!(e.contains("big.img") && e.contains("do not fit") && e.contains("-m"), "{e}");
        assert_eq!(what_fits(1), "it fits with -m 2 -p 2 (up to 2084864 bytes)");
        assert_eq!(what_fits(2084865), "it fits with -m 4 -p 2 (up to 4182016 bytes)");
        assert_eq!(what_fits(8 * MIB), "no setting fits it: the largest image is 8376320 bytes (-m 8 -p 2)");
    }

    #[test]
    fn refuses_missing_empty_and_directory() {
        let layout = Layout::new(4 * MIB, PageSize::Large2M);
        let e = check(Path::new("/nonexistent/x.img"), &layout).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/x.img") && e.contains("No such file"), "{e}");
        let empty = temp("empty.img", b"");
        let e = check(&empty, &layout).unwrap_err().to_string();
        assert!(e.contains("empty.img") && e.contains("empty"), "{e}");
        let e = check(&std::env::temp_dir(), &layout).unwrap_err().to_string();
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
        let e = check(&fifo, &layout).unwrap_err().to_string();
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
        assert!(check(&link, &layout).unwrap_err().to_string().contains("is a FIFO (named pipe)"));
        let sock = dir.join("sock.img");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(check(&sock, &layout).unwrap_err().to_string().contains("is a socket, not a regular file"));
        let e = check(Path::new("/dev/null"), &layout).unwrap_err().to_string();
        assert!(e.contains("/dev/null: is a character device, not a regular file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_symlink_to_an_image_is_followed() {
        let layout = Layout::new(2 * MIB, PageSize::Large2M);
        let target = temp("target.img", &[0xf4]);
        let link = target.with_file_name("via_link.img");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let image = check(&link, &layout).unwrap();
        assert_eq!((image.path, image.bytes), (link, vec![0xf4]));
    }
}
