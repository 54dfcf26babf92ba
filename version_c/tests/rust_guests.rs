//! The tests of `tests/rust_guests.rs` at the workspace root (the Rust guests of `guest/`),
//! which every version shares, and of `tests/rust_guests_at_once.rs` (several Rust and C guests
//! at once), which versions B and C share, on this version's binary and crate (`common`). Then,
//! here, files with `hv::File` (rs_filecopy).

mod common;

#[path = "../../tests/rust_guests.rs"]
mod rust_guests;
#[path = "../../tests/rust_guests_at_once.rs"]
mod rust_guests_at_once;

use std::fs;

use common::{guest, kvm_available, run, run_in, temp_dir};

/// rs_filecopy in a fresh directory: `host/shared.txt` holding `shared` (shared with `-f`), the
/// private files under `files/`. Runs it `runs` times; returns the last stdout and the private
/// copy.txt.
fn filecopy(tag: &str, shared: &[u8], runs: usize) -> (Vec<u8>, Vec<u8>) {
    let dir = temp_dir(tag);
    fs::create_dir_all(dir.join("host")).unwrap();
    fs::write(dir.join("host/shared.txt"), shared).unwrap();
    let args = ["-q", "-m", "2", "-p", "4", "-f", "host/shared.txt", "--files-dir", "files", "-g"];
    let mut args = args.to_vec();
    let image = guest("rs_filecopy.img");
    args.push(&image);
    let mut stdout = Vec::new();
    for _ in 0..runs {
        let r = run_in(&dir, &args, b"");
        assert_eq!((r.status, r.stderr.as_str()), (0, ""));
        stdout = r.stdout;
    }
    let copy = fs::read(dir.join("files/rs_filecopy_vm0_files/copy.txt")).unwrap();
    assert_eq!(fs::read(dir.join("host/shared.txt")).unwrap(), shared, "the shared original is never written");
    let _ = fs::remove_dir_all(&dir);
    (stdout, copy)
}

#[test]
fn rs_filecopy_copies_prints_the_copy_and_reports_a_missing_file() {
    if !kvm_available() {
        return;
    }
    let shared = b"Hello from the host's shared file!\nThis line is shared by every VM.\n";
    let (stdout, copy) = filecopy("rs_copy", shared, 1);
    let mut expected = format!("copied {} bytes\n", shared.len()).into_bytes();
    expected.extend_from_slice(shared);
    expected.extend_from_slice(b"missing.txt: refused\n");
    assert_eq!(String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&expected));
    assert_eq!(copy, shared);
    // Larger than one request (127 bytes) and one bulk read (512), every byte value but none
    // lost; and a second run appends (write-opens append), so the copy holds it twice.
    let big: Vec<u8> = (0..1500u32).map(|i| (i * 7 + 3) as u8).collect();
    let (stdout, copy) = filecopy("rs_copy_big", &big, 2);
    let mut twice = big.clone();
    twice.extend_from_slice(&big);
    let mut expected = format!("copied {} bytes\n", big.len()).into_bytes();
    expected.extend_from_slice(&twice);
    expected.extend_from_slice(b"missing.txt: refused\n");
    assert!(stdout == expected, "stdout differs: {} bytes, {} expected", stdout.len(), expected.len());
    assert!(copy == twice, "copy.txt differs: {} bytes", copy.len());
}

#[test]
fn rs_filecopy_without_the_shared_file_says_why() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "-m", "2", "-p", "2", "-g", &guest("rs_filecopy.img")]);
    assert_eq!((r.status, r.stdout(), r.stderr.as_str()), (0, "copy: refused\n".to_owned(), ""));
}
