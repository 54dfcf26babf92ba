//! rs_filecopy.rs -> rs_filecopy.img (version C): files with `hv::File`. Run with
//! `-f ../guest/shared.txt`.
//!
//! It copies the shared file `shared.txt` into a new private file `copy.txt` with the byte
//! protocol (`File::read`/`File::write`, one VM exit per byte), prints the copy with bulk
//! reads (`File::read_bulk`, one exit per 512 bytes), and tries a file that does not exist.
//! Output: `copied <n> bytes\n`, the text of copy.txt, then `missing.txt: refused\n`.
//! (Write-opens append: in a files directory kept from an earlier run, copy.txt then holds the
//! text twice.) Every error is a `Result`; every file is closed when dropped.
#![no_std]
#![no_main]

use hv::{Error, File, Mode};

hv::entry!(main);

fn main() {
    match copy("shared.txt", "copy.txt") {
        Ok(n) => hv::putln!("copied ", n, " bytes"),
        Err(e) => return hv::putln!("copy: ", e),
    }
    if let Err(e) = print_file("copy.txt") {
        hv::putln!("copy.txt: ", e);
    }
    if let Err(e) = File::open("missing.txt", Mode::Read) {
        hv::putln!("missing.txt: ", e);
    }
}

/// Copies the file `from` to the end of the file `to`; returns the bytes copied.
fn copy(from: &str, to: &str) -> Result<usize, Error> {
    let mut input = File::open(from, Mode::Read)?;
    let mut output = File::open(to, Mode::Write)?;
    let mut buf = [0u8; hv::file::CHUNK_MAX]; // one request's worth
    let mut total = 0;
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            return Ok(total); // end of file; both files are closed as they drop
        }
        output.write(&buf[..n])?; // one request: all of it, or Err
        total += n;
    }
}

/// Prints the file `name` on the serial port.
fn print_file(name: &str) -> Result<(), Error> {
    let mut file = File::open(name, Mode::Read)?;
    let mut buf = [0u8; 512];
    loop {
        let n = file.read_bulk(&mut buf)?;
        if n == 0 {
            return file.close(); // closing by hand, to see its result
        }
        hv::serial::put_bytes(&buf[..n]);
    }
}
