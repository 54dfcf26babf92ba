//! An image too large for its VM is told the smallest `-m`/`-p` it fits ([`too_large`]): the C's
//! `load_guest_image` only refused one larger than all of RAM.

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
}
