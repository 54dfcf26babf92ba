//! Guest images: checked before any VM starts, then copied to guest-physical 0 (SPEC §1, §2).
//!
//! C counterpart: `load_guest_image`, which only refused an image larger than all of RAM
//! (and so let a large image overwrite the page tables it had put at 0x11000).
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::long_mode::Layout;

/// A guest image that passed every check, with its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
}

/// Opens, checks and reads the image at `path` for a VM of `layout`. The error is one line
/// naming the path, the reason and what to do.
pub fn check(path: &Path, layout: &Layout) -> Result<Image, String> {
    let shown = path.display();
    let file = File::open(path).map_err(|e| format!("guest image {shown}: {e}: check the path"))?;
    let meta = file.metadata().map_err(|e| format!("guest image {shown}: {e}"))?;
    if !meta.is_file() {
        let kind = if meta.is_dir() { "a directory" } else { "not a regular file" };
        return Err(format!("guest image {shown}: is {kind}: give the path of a flat binary image"));
    }
    let max = layout.max_image_size();
    let mut bytes = Vec::with_capacity(meta.len().min(max) as usize);
    // Read at most one byte more than fits, so that a huge (or growing) file is not slurped.
    file.take(max + 1).read_to_end(&mut bytes).map_err(|e| format!("guest image {shown}: cannot read it: {e}"))?;
    if bytes.is_empty() {
        return Err(format!("guest image {shown}: the file is empty: build the guest first (make guests)"));
    }
    if bytes.len() as u64 > max {
        return Err(format!(
            "guest image {shown}: {} bytes do not fit: with {} MiB of RAM and {} the page tables start at {:#x}, \
             so an image may have at most {max} bytes; use a larger -m",
            meta.len().max(bytes.len() as u64),
            layout.mem_size >> 20,
            match layout.page {
                crate::long_mode::PageSize::Small4K => "4 KiB pages",
                crate::long_mode::PageSize::Large2M => "2 MiB pages",
            },
            layout.tables_base(),
        ));
    }
    Ok(Image { path: path.to_owned(), bytes })
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
        let e = check(&big, &layout).unwrap_err();
        assert!(e.contains("big.img") && e.contains("do not fit") && e.contains("-m"), "{e}");
    }

    #[test]
    fn refuses_missing_empty_and_directory() {
        let layout = Layout::new(4 * MIB, PageSize::Large2M);
        let e = check(Path::new("/nonexistent/x.img"), &layout).unwrap_err();
        assert!(e.contains("/nonexistent/x.img") && e.contains("No such file"), "{e}");
        let empty = temp("empty.img", b"");
        let e = check(&empty, &layout).unwrap_err();
        assert!(e.contains("empty.img") && e.contains("empty"), "{e}");
        let e = check(&std::env::temp_dir(), &layout).unwrap_err();
        assert!(e.contains("directory"), "{e}");
    }
}
