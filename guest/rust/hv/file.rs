//! Files on port `0x0278` (version C): the byte protocol of REFERENCE §5 and the bulk commands
//! of §6, as `hv.c`'s `f_open`, `f_read`, `f_write`, `f_close` and `f_read_bulk`/`f_write_bulk`
//! speak them, behind a safe API:
//!
//! ```ignore
//! use hv::{File, Mode};
//!
//! let mut out = File::open("notes.txt", Mode::Write)?;   // created, or appended to
//! out.write(b"a line\n")?;
//! // dropped here: closed
//! ```
//!
//! Every call that can fail returns a [`Result`]; [`Error::Refused`] is the hypervisor's `-1`
//! (in versions A and B, which have no file port, every request is refused).

use crate::port;

/// The file protocol's port.
pub const FILE_PORT: u16 = 0x0278;

// Command bytes (REFERENCE §5.1 and §6).
const CMD_OPEN: u8 = 0x01;
const CMD_CLOSE: u8 = 0x02;
const CMD_READ: u8 = 0x03;
const CMD_WRITE: u8 = 0x04;
const CMD_READ_BULK: u8 = 0x05;
const CMD_WRITE_BULK: u8 = 0x06;

/// The most bytes one read or write request moves: the hypervisor answers with a byte count,
/// which must never read as `0xFF` (-1).
pub const CHUNK_MAX: usize = 127;

/// The longest file name one open request can carry (its length is one byte, and 255 is
/// refused).
pub const NAME_MAX: usize = 254;

/// How a file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// For reading, from the start.
    Read = 0,
    /// For writing: created if it does not exist, appended to if it does.
    Write = 1,
}

/// Why a file call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The hypervisor answered -1: no such file, a name that is not a plain name, 16 files
    /// already open, the wrong mode, an address outside RAM, or no file port (versions A, B).
    Refused,
    /// A file name longer than [`NAME_MAX`] bytes: nothing was sent.
    NameTooLong,
    /// More bytes than one request can carry (255 for [`File::read_request`] and
    /// [`File::write_request`], 4 GiB for the bulk calls): nothing was sent.
    TooLong,
}

impl Error {
    /// The error in a few words, e.g. for `hv::putln!("cannot open: ", e.as_str())`.
    pub fn as_str(self) -> &'static str {
        match self {
            Error::Refused => "refused",
            Error::NameTooLong => "name too long",
            Error::TooLong => "request too long",
        }
    }
}

impl crate::serial::Put for Error {
    fn put(&self) {
        crate::serial::put_str(self.as_str());
    }
}

/// Sends one byte of a request.
fn send(byte: u8) {
    // SAFETY: a one-byte out to the file port only feeds the protocol's state machine: with
    // one-byte accesses alone no bulk request (which needs dword outs) can reach guest RAM.
    unsafe { port::outb(FILE_PORT, byte) };
}

/// Reads one byte of an answer.
fn receive() -> u8 {
    // SAFETY: as for `send`: a one-byte in takes the next byte of the pending answer.
    unsafe { port::inb(FILE_PORT) }
}

/// Reads an answer byte, signed: negative (0xFF is -1) means refused.
fn answer() -> Result<u8, Error> {
    let byte = receive();
    if (byte as i8) < 0 { Err(Error::Refused) } else { Ok(byte) }
}

/// An open file of this VM (its vfd). Dropping it closes it; [`File::close`] closes it and
/// says whether the hypervisor agreed.
#[derive(Debug)]
pub struct File {
    vfd: u8,
}

impl File {
    /// Opens `name`, a plain file name (no `/`): in version C the VM's private file of that
    /// name, else a shared file (`-f`); for [`Mode::Write`] a copy of the shared file, or a new
    /// file (REFERENCE §5.2). An empty name is sent, and refused by the hypervisor.
    pub fn open(name: impl AsRef<[u8]>, mode: Mode) -> Result<File, Error> {
        let name = name.as_ref();
        if name.len() > NAME_MAX {
            return Err(Error::NameTooLong);
        }
        send(CMD_OPEN);
        send(mode as u8);
        send(name.len() as u8);
        for &b in name {
            send(b);
        }
        Ok(File { vfd: answer()? })
    }

    /// The virtual file descriptor the hypervisor gave this file (0..15).
    pub fn vfd(&self) -> u8 {
        self.vfd
    }

    /// Reads up to `buf.len()` bytes, in as many requests of at most [`CHUNK_MAX`] bytes as it
    /// takes: `Ok(n)`, `n < buf.len()` only at end of file (`Ok(0)` when already there).
    /// `Err` only if the first request is refused; after that, the bytes read so far. An empty
    /// `buf` still sends one request (it checks the file).
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return self.read_request(buf);
        }
        let mut total = 0;
        while total < buf.len() {
            let want = (buf.len() - total).min(CHUNK_MAX);
            match self.read_request(&mut buf[total..total + want]) {
                Err(e) if total == 0 => return Err(e),
                Err(_) => break, // refused after some bytes: those bytes
                Ok(n) => {
                    total += n;
                    if n < want {
                        break; // end of file
                    }
                }
            }
        }
        Ok(total)
    }

    /// Writes all of `buf`, in requests of at most [`CHUNK_MAX`] bytes: `Ok(buf.len())`, or
    /// fewer if a later request was refused or written short. `Err` only if the first request
    /// is refused. An empty `buf` still sends one request (it checks the file).
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return self.write_request(buf);
        }
        let mut total = 0;
        for chunk in buf.chunks(CHUNK_MAX) {
            match self.write_request(chunk) {
                Err(e) if total == 0 => return Err(e),
                Err(_) => break, // refused after some bytes: those bytes
                Ok(n) => {
                    total += n;
                    if n < chunk.len() {
                        break; // a short write: stop there
                    }
                }
            }
        }
        Ok(total)
    }

    /// Exactly ONE read request for `buf.len()` bytes (0..=255), as on the wire: the
    /// hypervisor answers at most 127. Every answer byte is read, to stay in step with the
    /// hypervisor, but at most `buf.len()` are stored.
    pub fn read_request(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let count = u8::try_from(buf.len()).map_err(|_| Error::TooLong)?;
        send(CMD_READ);
        send(self.vfd);
        send(count);
        let n = usize::from(answer()?); // bytes that follow; 0 at end of file
        for i in 0..n {
            let byte = receive();
            if let Some(slot) = buf.get_mut(i) {
                *slot = byte;
            }
        }
        Ok(n.min(buf.len()))
    }

    /// Exactly ONE write request of `buf.len()` bytes (0..=255), as on the wire: the
    /// hypervisor refuses more than 127.
    pub fn write_request(&mut self, buf: &[u8]) -> Result<usize, Error> {
        let count = u8::try_from(buf.len()).map_err(|_| Error::TooLong)?;
        send(CMD_WRITE);
        send(self.vfd);
        send(count);
        for &b in buf {
            send(b);
        }
        Ok(usize::from(answer()?))
    }

    /// Reads up to `buf.len()` bytes with ONE bulk request: the hypervisor copies them from the
    /// file straight into `buf` (one VM exit). `Ok(0)` at end of file.
    pub fn read_bulk(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        // SAFETY: the hypervisor writes at most buf.len() bytes, and only inside
        // [buf, buf + len) (REFERENCE §6), which we borrow mutably: nothing else sees it.
        unsafe { self.bulk(CMD_READ_BULK, buf.as_mut_ptr(), buf.len()) }
    }

    /// Writes `buf` with ONE bulk request: the hypervisor copies it from guest RAM into the file
    /// (one VM exit). `Ok(buf.len())`.
    pub fn write_bulk(&mut self, buf: &[u8]) -> Result<usize, Error> {
        // SAFETY: for a write the hypervisor only reads [buf, buf + len), which we borrow.
        unsafe { self.bulk(CMD_WRITE_BULK, buf.as_ptr().cast_mut(), buf.len()) }
    }

    /// One bulk request: command and vfd (bytes), address and length (dwords), then the answer
    /// (a dword, `0xFFFFFFFF` = refused). RAM is identity-mapped, so a pointer is the address.
    /// # Safety
    /// The hypervisor may write (read bulk) or read (write bulk) `[buf, buf + len)`: that range
    /// must be ours to give it.
    // SAFETY: a contract for the callers (above), each of which says why its range is its own.
    unsafe fn bulk(&mut self, cmd: u8, buf: *mut u8, len: usize) -> Result<usize, Error> {
        // `expose_provenance`: the address leaves Rust's sight as a number, so the compiler
        // must assume that the port instructions below (which do not say `nomem`) touch it.
        let address = u32::try_from(buf.expose_provenance()).map_err(|_| Error::TooLong)?;
        let len = u32::try_from(len).map_err(|_| Error::TooLong)?;
        send(cmd);
        send(self.vfd);
        // SAFETY: the caller gives the hypervisor [buf, buf + len); the dword outs are the
        // address and the length, the dword in is the answer (REFERENCE §6).
        let result = unsafe {
            port::outl(FILE_PORT, address);
            port::outl(FILE_PORT, len);
            port::inl(FILE_PORT)
        };
        if result == u32::MAX { Err(Error::Refused) } else { Ok(result as usize) }
    }

    /// Closes the file: `Err(Refused)` if the hypervisor did not know it (it always should).
    pub fn close(self) -> Result<(), Error> {
        let vfd = self.vfd;
        core::mem::forget(self); // closed here, not again by Drop
        close_vfd(vfd)
    }
}

fn close_vfd(vfd: u8) -> Result<(), Error> {
    send(CMD_CLOSE);
    send(vfd);
    answer().map(|_| ())
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = close_vfd(self.vfd); // nothing to do about a refusal here; see File::close
    }
}
