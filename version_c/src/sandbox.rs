//! Which host file a guest file name means: names, sharing and isolation.
//!
//! A guest names a file by a plain name (1..=254 bytes, no `/`, no NUL, not `.` or `..`). Two
//! places can hold a file of that name:
//!
//! - the VM's **private directory** `<stem>_vm<N>_files/` ([`private_dir_name`]), created on
//!   the first write-open and kept after the run;
//! - the **shared files** given with `-f` ([`SharedFiles`]), visible to every VM under their
//!   file name and never written. Each is checked and opened read-only once, at startup; every
//!   guest open of it and every copy-on-write reopens that descriptor (through
//!   `/proc/self/fd`), never the path, so a path renamed over or replaced by a symbolic link
//!   after the start changes nothing a guest reads.
//!
//! | guest open | private file exists | else shared file of that name | else |
//! |---|---|---|---|
//! | read  | open it | open the shared original read-only | fail |
//! | write | open it for append | copy it into the private dir, open the copy for append | create an empty private file |
//!
//! So after a VM's first write-open of a shared name, every later open of that name by that VM
//! (read or write) finds its private copy, while other VMs still see the original.
//!
//! Where the C original (`hypercall_open`, `is_shared_file`, `copy_file`) fell short, and what
//! this module does instead: private files are opened only with `openat(2)` relative to a
//! descriptor of the private directory, always `O_NOFOLLOW`, and only by a checked
//! [`FileName`] (the one argument type `hostfs::openat` takes), so neither a crafted name nor
//! a symbolic link planted in the directory can lead outside it; a shared file is the file
//! checked at startup, not whatever its path names at the time of the open (the C reopened
//! the path); a shared file is copied once,
//! not on every write-open; reads after the copy go to the copy.
//!
//! Every open of a private file also adds `O_NONBLOCK` and then checks that it got a regular file: if a FIFO or a
//! device has been put where a file was expected, the open fails instead of blocking the vCPU
//! thread forever. (`O_NONBLOCK` has no effect on reads and writes of regular files.) A private
//! file with more than one hard link is never opened, for reading or for writing: `O_NOFOLLOW`
//! does not see a hard link planted in the private directory, the link count does. (A shared
//! file may have any number of links: the user chose it with `-f`.)
//!
//! A private directory that cannot be created or opened (it is a symbolic link, it sits under
//! a regular file, its name is too long, ...) does not take the shared files with it: they stay
//! readable, every write-open fails, and the first failure prints one warning on stderr.
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::hostfs; // openat(2)/unlinkat(2) relative to the private directory

pub use crate::hostfs::{FileName, MAX_NAME_LEN, NameError};

/// Permission bits of files the guest creates (before the umask), as `fopen(3)` would use.
const NEW_FILE_MODE: libc::mode_t = 0o666;

/// Plain guest file name check: 1..=254 bytes, no `b'/'`, no NUL, not `"."` or `".."`
/// ([`FileName::new`], which makes the only names `openat` takes).
pub fn check_name(name: &[u8]) -> Result<(), NameError> {
    FileName::new(name).map(drop)
}

/// [`check_name`] as a yes/no.
pub fn valid_name(name: &[u8]) -> bool {
    check_name(name).is_ok()
}

/// `<stem>_vm<N>_files` where stem = image file name without its extension ([`Path::file_stem`]).
///
/// `guest.img`, VM 0 → `guest_vm0_files`; `dir/a.b.img`, VM 3 → `a.b_vm3_files`. An image path
/// without a file name (which the startup checks never let through) uses the stem `guest`.
pub fn private_dir_name(image: &Path, vm_index: usize) -> OsString {
    let mut name = image.file_stem().unwrap_or(OsStr::new("guest")).to_os_string();
    name.push(format!("_vm{vm_index}_files"));
    name
}

/// The `-f` files: each checked and opened once, read-only, at startup (before any VM starts),
/// and shared by all VMs. Every guest open and every copy-on-write of a shared file works
/// from the descriptor opened then, never from the path again: a path renamed, replaced or
/// made a symbolic link after the start changes nothing a guest reads.
#[derive(Debug)]
pub struct SharedFiles {
    files: Vec<SharedFile>,
}

/// One `-f` file: the name guests use, the path the user gave, and the file opened at startup.
#[derive(Debug)]
struct SharedFile {
    name: Vec<u8>,
    path: PathBuf,
    /// Opened read-only (`O_NONBLOCK`) at startup; only reopened, never read itself.
    file: File,
}

impl SharedFiles {
    /// Each path must exist, be a regular readable file; two paths with the same file name (last
    /// component) are an error, said in one line by [`SharedFileError`]'s `Display`. Each is
    /// opened here, once.
    pub fn check(paths: &[PathBuf]) -> Result<SharedFiles, SharedFileError> {
        let mut files: Vec<SharedFile> = Vec::with_capacity(paths.len());
        for path in paths {
            let (name, file) = check_shared(path)?;
            if let Some(earlier) = files.iter().find(|f| f.name == name) {
                return Err(SharedFileError::SameName { path: path.clone(), earlier: earlier.path.clone() });
            }
            files.push(SharedFile { name: name.to_vec(), path: path.clone(), file });
        }
        Ok(SharedFiles { files })
    }

    /// Number of shared files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when no `-f` file was given.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The shared file a guest calls `name`.
    fn find(&self, name: &[u8]) -> Option<&SharedFile> {
        self.files.iter().find(|f| f.name == name)
    }
}

impl SharedFile {
    /// The file opened at startup, opened again read-only: a new open file description of the
    /// same file, with its own read position (two guest opens of one name read independently,
    /// docs/REFERENCE.md §9). It goes through the descriptor's entry in `/proc/self/fd`, a link
    /// the kernel resolves to the open file itself, not to the path it was opened by: whatever
    /// happened to that path since (renamed over, replaced by a symbolic link, removed), this
    /// is the file checked at startup.
    fn reopen(&self) -> io::Result<File> {
        let fd = Path::new("/proc/self/fd").join(self.file.as_raw_fd().to_string());
        OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(fd)
    }
}

/// One `-f` path checked and opened: a readable regular file whose file name a guest can use.
/// Returns that name and the file, opened read-only once and for all.
fn check_shared(path: &Path) -> Result<(&[u8], File), SharedFileError> {
    let fail = |make: fn(PathBuf) -> SharedFileError| make(path.to_path_buf());
    // Metadata first: the type of what is there says why it cannot be shared, before opening it.
    let meta = fs::metadata(path).map_err(|error| SharedFileError::Missing { path: path.to_path_buf(), error })?;
    if meta.is_dir() {
        return Err(fail(SharedFileError::Directory));
    }
    if !meta.is_file() {
        return Err(fail(SharedFileError::NotRegular));
    }
    // O_NONBLOCK: should a FIFO have been put there since, the open does not wait for a writer;
    // the check of what was opened then refuses it.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| SharedFileError::Unreadable { path: path.to_path_buf(), error })?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(fail(SharedFileError::NotRegular));
    }
    let name = path.file_name().ok_or_else(|| fail(SharedFileError::NoFileName))?.as_bytes();
    if !valid_name(name) {
        return Err(SharedFileError::NameTooLong { path: path.to_path_buf(), len: name.len() });
    }
    // Every guest open reopens it (`SharedFile::reopen`): that must work now, not only later.
    let shared = SharedFile { name: Vec::new(), path: path.to_path_buf(), file };
    shared.reopen().map_err(|error| SharedFileError::Reopen { path: path.to_path_buf(), error })?;
    Ok((name, shared.file))
}

/// Why a `-f` file cannot be shared. `Display` says it in one line naming the path, the reason
/// and what to do, e.g. `shared file ../x.txt: No such file or directory (os error 2): check the
/// -f path`.
#[derive(Debug)]
pub enum SharedFileError {
    /// `stat(2)` failed: it does not exist, or cannot be reached.
    Missing {
        path: PathBuf,
        error: io::Error,
    },
    Directory(PathBuf),
    /// A device, FIFO or socket.
    NotRegular(PathBuf),
    /// It cannot be opened for reading.
    Unreadable {
        path: PathBuf,
        error: io::Error,
    },
    /// The path ends in `..` (or is `/`).
    NoFileName(PathBuf),
    /// Its file name is longer than a guest can name (`len` bytes).
    NameTooLong {
        path: PathBuf,
        len: usize,
    },
    /// Two `-f` paths with the same file name.
    SameName {
        path: PathBuf,
        earlier: PathBuf,
    },
    /// Opened, but it cannot be opened again through `/proc/self/fd` (as every guest open does).
    Reopen {
        path: PathBuf,
        error: io::Error,
    },
}

impl fmt::Display for SharedFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SharedFileError::Missing { path, error } => {
                write!(f, "shared file {}: {error}: check the -f path", path.display())
            }
            SharedFileError::Directory(path) => {
                write!(f, "shared file {}: is a directory, not a regular file: give -f a file", path.display())
            }
            SharedFileError::NotRegular(path) => write!(
                f,
                "shared file {}: not a regular file (a device, FIFO or socket): give -f a regular file",
                path.display()
            ),
            SharedFileError::Unreadable { path, error } => write!(
                f,
                "shared file {}: {error}: make it readable (chmod +r) or give another -f path",
                path.display()
            ),
            SharedFileError::NoFileName(path) => {
                write!(f, "shared file {}: the path has no file name: give -f the path of a file", path.display())
            }
            SharedFileError::NameTooLong { path, len } => write!(
                f,
                "shared file {}: its file name is {len} bytes, a guest can name at most {MAX_NAME_LEN}: give -f a copy with a shorter name",
                path.display()
            ),
            SharedFileError::SameName { path, earlier } => write!(
                f,
                "shared file {}: same file name as shared file {}, and guests name shared files by file name alone: rename one of them",
                path.display(),
                earlier.display()
            ),
            SharedFileError::Reopen { path, error } => write!(
                f,
                "shared file {}: cannot be opened again through /proc/self/fd ({error}): mount /proc",
                path.display()
            ),
        }
    }
}

/// The one line of text, for a caller whose errors are lines of text.
impl From<SharedFileError> for String {
    fn from(e: SharedFileError) -> String {
        e.to_string()
    }
}

/// Where the private directories go: under `--files-dir DIR` when it is given, else in the
/// current directory (the empty path, which `Path::join` leaves relative).
///
/// Checked at startup, before any VM starts. A DIR that does not exist yet is fine: it is
/// created at the first write-open. A DIR that exists and is not a directory, or cannot even be
/// looked at (it lies under a regular file, no permission, ...), could never be used.
pub fn check_files_dir(dir: Option<&Path>) -> Result<PathBuf, FilesDirError> {
    let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(PathBuf::new());
    };
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(dir.to_path_buf()),
        Ok(_) => Err(FilesDirError::NotADirectory(dir.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(dir.to_path_buf()),
        Err(error) => Err(FilesDirError::Unusable { path: dir.to_path_buf(), error }),
    }
}

/// Why `--files-dir` cannot be used. `Display` says it in one line naming the path and what to do.
#[derive(Debug)]
pub enum FilesDirError {
    /// It exists and is not a directory.
    NotADirectory(PathBuf),
    /// It cannot be looked at, so it could never be created or used.
    Unusable { path: PathBuf, error: io::Error },
}

impl fmt::Display for FilesDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const WHAT_TO_DO: &str = "give a directory (it is created if missing)";
        match self {
            FilesDirError::NotADirectory(path) => {
                write!(f, "--files-dir {}: not a directory: {WHAT_TO_DO}", path.display())
            }
            FilesDirError::Unusable { path, error } => {
                write!(f, "--files-dir {}: cannot be used ({error}): {WHAT_TO_DO}", path.display())
            }
        }
    }
}

/// The one line of text, for a caller whose errors are lines of text.
impl From<FilesDirError> for String {
    fn from(e: FilesDirError) -> String {
        e.to_string()
    }
}

/// Which step of getting the private directory failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirStep {
    Create,
    Open,
}

/// Why the private directory cannot be used (kept after the first failure, which is not retried).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirProblem {
    step: DirStep,
    /// What was found at the path, in words ("" if nothing more than the error is known).
    hint: &'static str,
    /// The `errno` of the failure, if it had one.
    code: Option<i32>,
    kind: io::ErrorKind,
}

impl DirProblem {
    /// The failure `e` of `step` on `path`; looks at the path once more (`lstat(2)`) to say
    /// what is in the way.
    fn new(step: DirStep, e: &io::Error, path: &Path) -> DirProblem {
        let hint = match (fs::symlink_metadata(path), e.raw_os_error()) {
            (_, Some(libc::ENAMETOOLONG)) => "its name is too long",
            (Ok(meta), _) if meta.is_symlink() => "it is a symbolic link",
            (Ok(meta), _) if !meta.is_dir() => "it exists and is not a directory",
            (Err(_), Some(libc::ENOTDIR)) => "a component of its path is not a directory",
            _ => "",
        };
        DirProblem { step, hint, code: e.raw_os_error(), kind: e.kind() }
    }
}

impl fmt::Display for DirProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hint = self.hint;
        let error = match self.code {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::from(self.kind),
        };
        if hint.is_empty() { write!(f, "{error}") } else { write!(f, "{hint} ({error})") }
    }
}

/// Why an open failed: [`fmt::Display`] says it in words, for `--trace`.
#[derive(Debug)]
pub enum OpenError {
    /// Not a plain file name.
    Name(NameError),
    /// No private file and no shared file of that name.
    NotFound,
    /// The private directory cannot be created or opened.
    PrivateDir(DirProblem),
    /// The private file exists but cannot be opened (a symbolic link, no permission, ...).
    Private(io::Error),
    /// The shared original cannot be opened.
    Shared(io::Error),
    /// Copying the shared original into the private directory failed (no copy is left).
    Copy(io::Error),
    /// Not a regular file (a directory, a FIFO, a device).
    NotRegular,
    /// A private file with this many hard links (more than one) is never opened.
    HardLinks(u64),
    /// `fstat(2)` of the opened file failed.
    Stat(io::Error),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Name(e) => write!(f, "refused, {e}"),
            OpenError::NotFound => f.write_str("no private file and no shared file of that name"),
            OpenError::PrivateDir(p) => match p.step {
                DirStep::Create => write!(f, "private directory cannot be created: {p}"),
                DirStep::Open => write!(f, "private directory cannot be opened: {p}"),
            },
            OpenError::Private(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                write!(f, "the private file is a symbolic link, never followed ({e})")
            }
            OpenError::Private(e) => write!(f, "private file: {e}"),
            OpenError::Shared(e) => write!(f, "shared file: {e}"),
            OpenError::Copy(e) => write!(f, "copy-on-write of the shared file failed: {e}"),
            OpenError::NotRegular => f.write_str("not a regular file"),
            OpenError::HardLinks(n) => {
                write!(
                    f,
                    "the private file has {n} hard links: another may be outside the private directory, so it is never opened"
                )
            }
            OpenError::Stat(e) => write!(f, "fstat: {e}"),
        }
    }
}

#[cfg(test)]
impl OpenError {
    /// The `io::ErrorKind` closest to this error (for tests and callers that only need a kind).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            OpenError::Name(_) | OpenError::NotRegular | OpenError::HardLinks(_) => io::ErrorKind::InvalidInput,
            OpenError::NotFound => io::ErrorKind::NotFound,
            OpenError::PrivateDir(p) => p.kind,
            OpenError::Private(e) | OpenError::Shared(e) | OpenError::Copy(e) | OpenError::Stat(e) => e.kind(),
        }
    }
}

/// The private directory of a VM, as far as the sandbox got with it.
#[derive(Debug)]
enum PrivateDir {
    /// Not opened yet (perhaps it does not exist yet: it is created on the first write-open).
    NotOpen,
    /// Opened `O_DIRECTORY | O_NOFOLLOW`; every private file is opened relative to it.
    Open(File),
    /// Creating or opening it failed once (a warning was printed); not tried again.
    Unusable(DirProblem),
}

/// One VM's view of the host's files: its private directory over the shared files.
#[derive(Debug)]
pub struct Sandbox {
    shared: Arc<SharedFiles>,
    private_dir: PathBuf,
    dir: PrivateDir,
    /// `vmN (image)`, for the warning about an unusable private directory.
    label: String,
}

impl Sandbox {
    /// `private_dir` is the VM's private directory (created lazily on the first write-open;
    /// never created for reads). `label` names the VM in warnings.
    pub fn new(shared: Arc<SharedFiles>, private_dir: PathBuf, label: String) -> Self {
        Sandbox { shared, private_dir, dir: PrivateDir::NotOpen, label }
    }

    /// The private file if it exists, else the shared file of that name, else `Err`. When the
    /// private directory cannot be used, the shared files are still found.
    pub fn open_read(&mut self, name: &[u8]) -> Result<File, OpenError> {
        let name = FileName::new(name).map_err(OpenError::Name)?;
        let mut dir_error = None;
        match private_dir(&mut self.dir, &self.private_dir, &self.label, false) {
            Ok(Some(dir)) => match hostfs::openat(dir, &name, libc::O_RDONLY | libc::O_NONBLOCK, 0) {
                Ok(file) => return private_file(file),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // A private entry exists but cannot be used (a symbolic link, no permission):
                // it hides the shared file of that name all the same.
                Err(e) => return Err(OpenError::Private(e)),
            },
            Ok(None) => {}
            Err(e) => dir_error = Some(e),
        }
        match (self.shared.find(name.as_bytes()), dir_error) {
            (Some(shared), _) => shared.reopen().map_err(OpenError::Shared),
            (None, Some(e)) => Err(e),
            (None, None) => Err(OpenError::NotFound),
        }
    }

    /// The private file if it exists; else copy-on-write of the shared file into the private
    /// directory; else a new empty private file. Opened for append (`O_APPEND`).
    pub fn open_write(&mut self, name: &[u8]) -> Result<File, OpenError> {
        const APPEND: libc::c_int = libc::O_WRONLY | libc::O_APPEND | libc::O_NONBLOCK;
        let name = FileName::new(name).map_err(OpenError::Name)?;
        let Some(dir) = private_dir(&mut self.dir, &self.private_dir, &self.label, true)? else {
            return Err(OpenError::NotFound);
        };
        match hostfs::openat(dir, &name, APPEND, 0) {
            Ok(file) => return private_file(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(OpenError::Private(e)),
        }
        if let Some(shared) = self.shared.find(name.as_bytes()) {
            copy_on_write(shared, dir, &name)?;
            return private_file(hostfs::openat(dir, &name, APPEND, 0).map_err(OpenError::Private)?);
        }
        private_file(hostfs::openat(dir, &name, APPEND | libc::O_CREAT, NEW_FILE_MODE).map_err(OpenError::Private)?)
    }
}

/// The private directory's descriptor, opening it (and with `create`, first creating it) when
/// not open yet. `Ok(None)`: it does not exist and `create` is false.
///
/// `O_NOFOLLOW`: if the private directory itself has been replaced by a symbolic link, refuse.
/// The first failure (other than "does not exist yet" for a read) prints one warning and is
/// kept: the directory is not tried again.
fn private_dir<'a>(
    dir: &'a mut PrivateDir,
    path: &Path,
    label: &str,
    create: bool,
) -> Result<Option<&'a File>, OpenError> {
    if let PrivateDir::NotOpen = dir {
        let created = if create {
            fs::create_dir_all(path).map_err(|e| DirProblem::new(DirStep::Create, &e, path))
        } else {
            Ok(())
        };
        let opened = created.and_then(|()| {
            match OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(path) {
                Ok(d) => Ok(Some(d)),
                Err(e) if !create && e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(DirProblem::new(DirStep::Open, &e, path)),
            }
        });
        match opened {
            Ok(Some(d)) => *dir = PrivateDir::Open(d),
            Ok(None) => return Ok(None),
            Err(problem) => {
                let _ = writeln!(io::stderr(), "{}", unusable_warning(label, path, &problem));
                *dir = PrivateDir::Unusable(problem);
            }
        }
    }
    match dir {
        PrivateDir::Open(d) => Ok(Some(d)),
        PrivateDir::Unusable(problem) => Err(OpenError::PrivateDir(*problem)),
        PrivateDir::NotOpen => Ok(None),
    }
}

/// The one warning line about a private directory that cannot be used.
fn unusable_warning(label: &str, path: &Path, problem: &DirProblem) -> String {
    format!(
        "mini_hypervisor: warning: {label}: private directory {} cannot be used: {problem}; its guest can read the shared files but not write",
        path.display()
    )
}

/// Copy the shared original (the file opened at startup) into a new file `name` in the private
/// directory.
///
/// The copy is created with `O_CREAT | O_EXCL`; if copying fails half-way, the partial copy is
/// removed, so that a truncated copy never poses as the VM's private file.
fn copy_on_write(shared: &SharedFile, dir: &File, name: &FileName) -> Result<(), OpenError> {
    let mut original = shared.reopen().map_err(OpenError::Shared)?;
    let mut copy = hostfs::openat(dir, name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, NEW_FILE_MODE)
        .map_err(OpenError::Private)?;
    if let Err(e) = io::copy(&mut original, &mut copy) {
        drop(copy);
        // Best effort: the copy error is the one worth reporting.
        let _ = hostfs::unlinkat(dir, name);
        return Err(OpenError::Copy(e));
    }
    Ok(())
}

/// A file opened in the private directory: `file` if it is a regular file with a single hard
/// link (one `fstat(2)`). A second link means the same file is also somewhere else, perhaps
/// anywhere on the host: a hard link planted in the private directory, which `O_NOFOLLOW`
/// cannot see. Refused for reading as well as writing, so that the guest neither reads nor
/// changes a file outside its directory.
fn private_file(file: File) -> Result<File, OpenError> {
    let meta = file.metadata().map_err(OpenError::Stat)?;
    if !meta.is_file() {
        Err(OpenError::NotRegular)
    } else if meta.nlink() > 1 {
        Err(OpenError::HardLinks(meta.nlink()))
    } else {
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;

    use crate::test_dir::TempDir;

    /// A host directory with the shared originals, and the shared set built from them.
    fn shared_setup(tmp: &TempDir, files: &[(&str, &[u8])]) -> Arc<SharedFiles> {
        let host = tmp.join("host");
        fs::create_dir_all(&host).unwrap();
        let mut paths = Vec::new();
        for (name, bytes) in files {
            let p = host.join(name);
            fs::write(&p, bytes).unwrap();
            paths.push(p);
        }
        Arc::new(SharedFiles::check(&paths).unwrap())
    }

    fn test_sandbox(shared: Arc<SharedFiles>, private_dir: PathBuf) -> Sandbox {
        Sandbox::new(shared, private_dir, "vm0 (test.img)".to_owned())
    }

    fn read_all(mut f: File) -> Vec<u8> {
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn valid_names() {
        for good in [&b"a"[..], b"file.txt", b"...", b".hidden", b"a b", &[0xFF, 0x80], &[b'x'; 254]] {
            assert!(valid_name(good), "{good:?}");
        }
        for bad in [&b""[..], b".", b"..", b"a/b", b"/x", b"x/", b"a\0b", b"\0", &[b'x'; 255]] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn private_dir_names() {
        assert_eq!(private_dir_name(Path::new("guest.img"), 0), "guest_vm0_files");
        assert_eq!(private_dir_name(Path::new("../dir/a.b.img"), 3), "a.b_vm3_files");
        assert_eq!(private_dir_name(Path::new("/x/noext"), 12), "noext_vm12_files");
        assert_eq!(private_dir_name(Path::new(".img"), 1), ".img_vm1_files");
        assert_eq!(private_dir_name(Path::new("/"), 2), "guest_vm2_files");
    }

    #[test]
    fn check_accepts_regular_files() {
        let tmp = TempDir::new("check-ok");
        assert!(SharedFiles::check(&[]).unwrap().is_empty());
        let shared = shared_setup(&tmp, &[("a.txt", b"A"), ("b.bin", b"")]);
        assert_eq!(shared.len(), 2);
        assert!(!shared.is_empty());
        assert_eq!(shared.find(b"a.txt").map(|f| f.path.as_path()), Some(tmp.join("host/a.txt").as_path()));
        assert!(shared.find(b"c").is_none());
    }

    #[test]
    fn check_missing_file_names_the_path() {
        let tmp = TempDir::new("check-missing");
        let missing = tmp.join("nope.txt");
        let err = SharedFiles::check(std::slice::from_ref(&missing)).unwrap_err();
        assert!(matches!(err, SharedFileError::Missing { .. }), "{err:?}");
        let err = err.to_string();
        assert!(err.starts_with(&format!("shared file {}: ", missing.display())), "{err}");
        assert!(err.contains("No such file or directory"), "{err}");
        assert!(err.ends_with("check the -f path"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn check_refuses_a_directory_and_a_device() {
        let tmp = TempDir::new("check-dir");
        let err = SharedFiles::check(std::slice::from_ref(&tmp.0)).unwrap_err();
        assert!(matches!(err, SharedFileError::Directory(_)), "{err:?}");
        let err = err.to_string();
        assert!(err.contains(&tmp.0.display().to_string()), "{err}");
        assert!(err.contains("is a directory"), "{err}");
        let err = SharedFiles::check(&[PathBuf::from("/dev/null")]).unwrap_err();
        assert!(matches!(err, SharedFileError::NotRegular(_)), "{err:?}");
        let err = err.to_string();
        assert!(err.starts_with("shared file /dev/null: not a regular file"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn check_refuses_duplicate_file_names() {
        let tmp = TempDir::new("check-dup");
        fs::create_dir_all(tmp.join("one")).unwrap();
        fs::create_dir_all(tmp.join("two")).unwrap();
        fs::write(tmp.join("one/x.txt"), b"1").unwrap();
        fs::write(tmp.join("two/x.txt"), b"2").unwrap();
        let paths = [tmp.join("one/x.txt"), tmp.join("two/x.txt")];
        let err = SharedFiles::check(&paths).unwrap_err();
        assert!(matches!(err, SharedFileError::SameName { .. }), "{err:?}");
        let err = err.to_string();
        assert!(err.contains(&paths[0].display().to_string()), "{err}");
        assert!(err.contains(&paths[1].display().to_string()), "{err}");
        assert!(err.contains("same file name"), "{err}");
        assert!(!err.contains('\n'));
    }

    /// The check itself, on a file this process cannot read.
    fn assert_unreadable_is_refused(p: &Path) {
        assert!(File::open(p).is_err(), "{} must be unreadable here", p.display());
        let err = SharedFiles::check(&[p.to_path_buf()]).unwrap_err();
        assert!(matches!(err, SharedFileError::Unreadable { .. }), "{err:?}");
        let err = err.to_string();
        assert!(err.contains(&p.display().to_string()), "{err}");
        assert!(err.contains("Permission denied"), "{err}");
        assert!(err.ends_with("make it readable (chmod +r) or give another -f path"), "{err}");
    }

    /// Root reads any file, so as root (as in CI) the check runs again in a child process as
    /// user nobody: a copy of this test binary started through setpriv(1), running this test
    /// alone, which then finds the file's path in `MH_UNREADABLE_FILE`.
    #[test]
    fn check_refuses_an_unreadable_file() {
        const AS_NOBODY: &str = "MH_UNREADABLE_FILE";
        if let Some(path) = std::env::var_os(AS_NOBODY) {
            assert_unreadable_is_refused(Path::new(&path));
            return;
        }
        let tmp = TempDir::new("check-unreadable");
        let p = tmp.join("secret");
        fs::write(&p, b"s").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o000)).unwrap();
        if File::open(&p).is_err() {
            assert_unreadable_is_refused(&p);
            return;
        }
        // Root: nobody must reach the file and the binary (a copy in the temp dir, whose
        // directories are 0755, in case the build directory is not open to nobody).
        fs::set_permissions(&tmp.0, fs::Permissions::from_mode(0o755)).unwrap();
        let exe = tmp.join("unit-tests");
        fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        let test = "sandbox::tests::check_refuses_an_unreadable_file";
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(&exe)
            .args(["--exact", test, "--test-threads=1"])
            .env(AS_NOBODY, &p)
            .output()
            .expect("run setpriv (util-linux) to repeat the test as user nobody");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "as nobody: {}\n{stdout}{stderr}", out.status);
        assert!(stdout.contains("test result: ok. 1 passed"), "the test must have run as nobody:\n{stdout}{stderr}");
    }

    #[test]
    fn check_refuses_a_name_no_guest_can_use() {
        let tmp = TempDir::new("check-longname");
        let long = "n".repeat(255);
        fs::write(tmp.join(&long), b"x").unwrap();
        let err = SharedFiles::check(&[tmp.join(&long)]).unwrap_err();
        assert!(matches!(err, SharedFileError::NameTooLong { len: 255, .. }), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("255 bytes"), "{err}");
    }

    #[test]
    fn files_dir_default_existing_and_missing_are_fine() {
        let tmp = TempDir::new("filesdir-ok");
        assert_eq!(check_files_dir(None).unwrap(), PathBuf::new(), "the current directory");
        assert_eq!(check_files_dir(Some(Path::new(""))).unwrap(), PathBuf::new());
        assert_eq!(check_files_dir(Some(&tmp.0)).unwrap(), tmp.0);
        // Missing, even several levels deep: created at the first write-open.
        let missing = tmp.join("a/b/c");
        assert_eq!(check_files_dir(Some(&missing)).unwrap(), missing);
        assert!(!tmp.join("a").exists(), "the check creates nothing");
        // A symbolic link to a directory is that directory.
        std::os::unix::fs::symlink(&tmp.0, tmp.join("link")).unwrap();
        assert_eq!(check_files_dir(Some(&tmp.join("link"))).unwrap(), tmp.join("link"));
    }

    #[test]
    fn files_dir_that_can_never_be_a_directory_is_refused_in_one_line() {
        let tmp = TempDir::new("filesdir-bad");
        let file = tmp.join("file");
        fs::write(&file, b"regular").unwrap();
        let err = check_files_dir(Some(&file)).unwrap_err();
        assert!(matches!(&err, FilesDirError::NotADirectory(p) if *p == file), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("--files-dir {}: not a directory: give a directory (it is created if missing)", file.display())
        );
        let under = file.join("sub");
        let err = check_files_dir(Some(&under)).unwrap_err();
        assert!(matches!(&err, FilesDirError::Unusable { path, .. } if *path == under), "{err:?}");
        assert_eq!(
            String::from(err),
            format!(
                "--files-dir {}: cannot be used (Not a directory (os error 20)): give a directory (it is created if missing)",
                under.display()
            )
        );
        let long = tmp.join("d".repeat(300));
        let err = check_files_dir(Some(&long)).unwrap_err().to_string();
        assert!(err.contains("File name too long") && !err.contains('\n'), "{err}");
    }

    #[test]
    fn read_finds_nothing_and_never_creates_the_private_dir() {
        let tmp = TempDir::new("read-none");
        let shared = shared_setup(&tmp, &[]);
        let private = tmp.join("guest_vm0_files");
        let mut sb = test_sandbox(shared, private.clone());
        let err = sb.open_read(b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(!private.exists());
    }

    #[test]
    fn write_creates_the_private_dir_and_a_new_file_then_appends() {
        let tmp = TempDir::new("write-new");
        let private = tmp.join("guest_vm0_files");
        let mut sb = test_sandbox(shared_setup(&tmp, &[]), private.clone());
        sb.open_write(b"new.txt").unwrap().write_all(b"one").unwrap();
        sb.open_write(b"new.txt").unwrap().write_all(b"two").unwrap();
        assert_eq!(fs::read(private.join("new.txt")).unwrap(), b"onetwo");
        assert_eq!(read_all(sb.open_read(b"new.txt").unwrap()), b"onetwo");
    }

    #[test]
    fn read_prefers_the_private_file_over_the_shared_one() {
        let tmp = TempDir::new("read-private");
        let shared = shared_setup(&tmp, &[("s.txt", b"shared")]);
        let private = tmp.join("p");
        fs::create_dir_all(&private).unwrap();
        let mut sb = test_sandbox(shared.clone(), private.clone());
        assert_eq!(read_all(sb.open_read(b"s.txt").unwrap()), b"shared");
        fs::write(private.join("s.txt"), b"mine").unwrap();
        assert_eq!(read_all(sb.open_read(b"s.txt").unwrap()), b"mine");
    }

    #[test]
    fn copy_on_write_leaves_the_original_and_other_vms_alone() {
        let tmp = TempDir::new("cow");
        let original: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let shared = shared_setup(&tmp, &[("data.bin", &original)]);
        let mut vm0 = test_sandbox(shared.clone(), tmp.join("g_vm0_files"));
        let mut vm1 = test_sandbox(shared.clone(), tmp.join("g_vm1_files"));

        let mut w = vm0.open_write(b"data.bin").unwrap();
        w.write_all(b"+tail").unwrap();
        let mut expected = original.clone();
        expected.extend_from_slice(b"+tail");
        assert_eq!(read_all(vm0.open_read(b"data.bin").unwrap()), expected);
        // A second write-open keeps the earlier private writes (the C original copied again).
        vm0.open_write(b"data.bin").unwrap().write_all(b"!").unwrap();
        expected.push(b'!');
        assert_eq!(read_all(vm0.open_read(b"data.bin").unwrap()), expected);

        assert_eq!(read_all(vm1.open_read(b"data.bin").unwrap()), original);
        assert_eq!(fs::read(tmp.join("host/data.bin")).unwrap(), original);
        assert!(!tmp.join("g_vm1_files").exists());
    }

    #[test]
    fn private_files_persist_for_a_second_run() {
        let tmp = TempDir::new("persist");
        let shared = shared_setup(&tmp, &[("s", b"orig")]);
        let private = tmp.join("g_vm0_files");
        let mut run1 = test_sandbox(shared.clone(), private.clone());
        run1.open_write(b"s").unwrap().write_all(b"+1").unwrap();
        run1.open_write(b"own").unwrap().write_all(b"own").unwrap();
        drop(run1);
        let mut run2 = test_sandbox(shared, private);
        assert_eq!(read_all(run2.open_read(b"s").unwrap()), b"orig+1");
        assert_eq!(read_all(run2.open_read(b"own").unwrap()), b"own");
        run2.open_write(b"s").unwrap().write_all(b"+2").unwrap();
        assert_eq!(read_all(run2.open_read(b"s").unwrap()), b"orig+1+2");
        assert_eq!(fs::read(tmp.join("host/s")).unwrap(), b"orig");
    }

    #[test]
    fn invalid_names_are_refused_before_touching_the_disk() {
        let tmp = TempDir::new("names");
        let shared = shared_setup(&tmp, &[]);
        let private = tmp.join("p");
        let mut sb = test_sandbox(shared, private.clone());
        let long = [b'y'; 255];
        for bad in [&b""[..], b".", b"..", b"a/b", b"/x", b"../escape", b"a\0b", &long] {
            assert_eq!(sb.open_read(bad).unwrap_err().kind(), io::ErrorKind::InvalidInput);
            assert_eq!(sb.open_write(bad).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        }
        assert!(!private.exists());
        assert!(!tmp.join("escape").exists());
        let ok = [b'y'; 254];
        sb.open_write(&ok).unwrap();
        assert!(private.join(OsStr::from_bytes(&ok)).is_file());
    }

    #[test]
    fn a_symlink_in_the_private_dir_is_never_followed() {
        let tmp = TempDir::new("symlink");
        let shared = shared_setup(&tmp, &[("s", b"shared")]);
        let private = tmp.join("p");
        fs::create_dir_all(&private).unwrap();
        fs::write(tmp.join("outside"), b"outside").unwrap();
        std::os::unix::fs::symlink(tmp.join("outside"), private.join("link")).unwrap();
        std::os::unix::fs::symlink(tmp.join("outside"), private.join("s")).unwrap();
        let mut sb = test_sandbox(shared, private);
        assert!(sb.open_read(b"link").is_err());
        assert!(sb.open_write(b"link").is_err());
        // The planted link hides the shared file rather than leading outside.
        assert!(sb.open_read(b"s").is_err());
        assert!(sb.open_write(b"s").is_err());
        assert_eq!(fs::read(tmp.join("outside")).unwrap(), b"outside");
        assert_eq!(fs::read(tmp.join("host/s")).unwrap(), b"shared");
    }

    #[test]
    fn a_private_dir_that_is_a_symlink_is_refused() {
        let tmp = TempDir::new("dirlink");
        let shared = shared_setup(&tmp, &[]);
        fs::create_dir_all(tmp.join("elsewhere")).unwrap();
        fs::write(tmp.join("elsewhere/f"), b"x").unwrap();
        std::os::unix::fs::symlink(tmp.join("elsewhere"), tmp.join("p")).unwrap();
        let mut sb = test_sandbox(shared, tmp.join("p"));
        assert!(sb.open_read(b"f").is_err());
        assert!(sb.open_write(b"g").is_err());
        assert!(!tmp.join("elsewhere/g").exists());
    }

    #[test]
    fn a_directory_in_the_private_dir_is_not_a_file() {
        let tmp = TempDir::new("subdir");
        let shared = shared_setup(&tmp, &[]);
        let private = tmp.join("p");
        fs::create_dir_all(private.join("d")).unwrap();
        let mut sb = test_sandbox(shared, private);
        assert!(sb.open_read(b"d").is_err());
        assert!(sb.open_write(b"d").is_err());
    }

    /// The shared files are opened at startup: whatever happens to their paths afterwards,
    /// guests read, and copy on write, the files that were checked.
    #[test]
    fn a_shared_path_changed_after_the_check_still_leads_to_the_original() {
        let tmp = TempDir::new("replaced");
        let names = ["renamed", "linked", "dir", "removed"];
        let shared = shared_setup(&tmp, &names.map(|n| (n, n.as_bytes())));
        let host = tmp.join("host");
        fs::write(tmp.join("other"), b"another file").unwrap();
        fs::rename(tmp.join("other"), host.join("renamed")).unwrap();
        fs::write(tmp.join("target"), b"what the link leads to").unwrap();
        fs::remove_file(host.join("linked")).unwrap();
        std::os::unix::fs::symlink(tmp.join("target"), host.join("linked")).unwrap();
        fs::remove_file(host.join("dir")).unwrap();
        fs::create_dir(host.join("dir")).unwrap();
        fs::remove_file(host.join("removed")).unwrap();
        let private = tmp.join("p");
        let mut sb = test_sandbox(shared, private.clone());
        for name in names {
            assert_eq!(read_all(sb.open_read(name.as_bytes()).unwrap()), name.as_bytes(), "{name}");
            sb.open_write(name.as_bytes()).unwrap().write_all(b"+").unwrap();
            assert_eq!(fs::read(private.join(name)).unwrap(), format!("{name}+").as_bytes(), "{name}");
        }
        assert_eq!(fs::read(host.join("renamed")).unwrap(), b"another file");
        assert_eq!(fs::read(tmp.join("target")).unwrap(), b"what the link leads to");
    }

    #[test]
    fn two_opens_of_a_shared_file_read_from_their_own_positions() {
        let tmp = TempDir::new("positions");
        let mut sb = test_sandbox(shared_setup(&tmp, &[("s", b"0123456789")]), tmp.join("p"));
        let (mut one, mut two) = (sb.open_read(b"s").unwrap(), sb.open_read(b"s").unwrap());
        let mut buf = [0u8; 4];
        one.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"0123");
        two.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"0123", "its own position, not the other's");
        assert_eq!(read_all(one), b"456789");
    }

    // ---- an unusable private directory --------------------------------------------------

    /// What the three kinds of unusable private directory do: the shared files stay readable,
    /// every write-open fails with the directory's problem, and the problem is kept (not
    /// retried, so the warning is printed once).
    fn assert_unusable(tmp: &TempDir, private: PathBuf, reason: &str) {
        let shared = shared_setup(tmp, &[("s", b"shared")]);
        let mut sb = test_sandbox(shared, private.clone());
        assert_eq!(read_all(sb.open_read(b"s").unwrap()), b"shared", "{reason}");
        let err = sb.open_write(b"s").unwrap_err();
        assert!(matches!(err, OpenError::PrivateDir(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with("private directory cannot be "), "{text}");
        assert!(text.contains(reason), "{text}");
        let PrivateDir::Unusable(problem) = sb.dir else { panic!("{:?}", sb.dir) };
        // Reads keep working, and a name that is not shared says why it was not found.
        assert_eq!(read_all(sb.open_read(b"s").unwrap()), b"shared");
        assert!(matches!(sb.open_read(b"other"), Err(OpenError::PrivateDir(p)) if p == problem));
        assert!(matches!(sb.open_write(b"new"), Err(OpenError::PrivateDir(p)) if p == problem));
        let warning = unusable_warning("vm0 (test.img)", &private, &problem);
        assert_eq!(
            warning,
            format!(
                "mini_hypervisor: warning: vm0 (test.img): private directory {} cannot be used: {problem}; its guest can read the shared files but not write",
                private.display()
            )
        );
        assert!(warning.contains(reason) && !warning.contains('\n'), "{warning}");
        assert_eq!(fs::read(tmp.join("host/s")).unwrap(), b"shared");
    }

    #[test]
    fn a_private_dir_that_is_a_symlink_leaves_the_shared_files_readable() {
        let tmp = TempDir::new("unusable-link");
        fs::create_dir_all(tmp.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(tmp.join("elsewhere"), tmp.join("p")).unwrap();
        assert_unusable(&tmp, tmp.join("p"), "it is a symbolic link");
        assert_eq!(fs::read_dir(tmp.join("elsewhere")).unwrap().count(), 0, "nothing written through the link");
    }

    #[test]
    fn a_private_dir_under_a_regular_file_leaves_the_shared_files_readable() {
        let tmp = TempDir::new("unusable-file");
        fs::write(tmp.join("file"), b"regular").unwrap();
        assert_unusable(&tmp, tmp.join("file/p"), "a component of its path is not a directory");
        // The private directory itself a regular file.
        let tmp = TempDir::new("unusable-file2");
        fs::write(tmp.join("p"), b"regular").unwrap();
        assert_unusable(&tmp, tmp.join("p"), "it exists and is not a directory");
        assert_eq!(fs::read(tmp.join("p")).unwrap(), b"regular");
    }

    #[test]
    fn a_private_dir_with_a_name_too_long_leaves_the_shared_files_readable() {
        let tmp = TempDir::new("unusable-long");
        assert_unusable(&tmp, tmp.join("d".repeat(300)), "its name is too long");
    }

    #[test]
    fn an_unusable_private_dir_is_not_tried_again() {
        let tmp = TempDir::new("unusable-kept");
        fs::write(tmp.join("p"), b"in the way").unwrap();
        let mut sb = test_sandbox(shared_setup(&tmp, &[]), tmp.join("p"));
        assert!(matches!(sb.open_write(b"f"), Err(OpenError::PrivateDir(_))));
        // The obstacle goes away: the sandbox keeps its verdict (one warning, no retry per open).
        fs::remove_file(tmp.join("p")).unwrap();
        assert!(matches!(sb.open_write(b"f"), Err(OpenError::PrivateDir(_))));
        assert!(!tmp.join("p").exists());
        // A directory that does not exist yet is not a problem for reads: it is created later.
        let mut sb = test_sandbox(shared_setup(&tmp, &[]), tmp.join("q"));
        assert!(matches!(sb.open_read(b"f"), Err(OpenError::NotFound)));
        assert!(matches!(sb.dir, PrivateDir::NotOpen));
        sb.open_write(b"f").unwrap();
        assert!(matches!(sb.dir, PrivateDir::Open(_)));
    }

    // ---- hard links -------------------------------------------------------------------

    #[test]
    fn a_hard_link_in_the_private_dir_is_never_opened() {
        let tmp = TempDir::new("hardlink");
        let shared = shared_setup(&tmp, &[("s", b"shared"), ("t", b"linked on the host")]);
        let private = tmp.join("p");
        fs::create_dir_all(&private).unwrap();
        fs::write(tmp.join("outside"), b"outside").unwrap();
        fs::hard_link(tmp.join("outside"), private.join("h")).unwrap();
        // A link to the shared original itself, under its shared name.
        fs::hard_link(tmp.join("host/s"), private.join("s")).unwrap();
        let mut sb = test_sandbox(shared, private.clone());
        for err in [sb.open_read(b"h").unwrap_err(), sb.open_write(b"h").unwrap_err()] {
            assert!(matches!(err, OpenError::HardLinks(2)), "{err:?}");
            assert_eq!(
                err.to_string(),
                "the private file has 2 hard links: another may be outside the private directory, so it is never opened"
            );
        }
        // The planted link hides the shared file of that name rather than leading to it.
        assert!(matches!(sb.open_read(b"s"), Err(OpenError::HardLinks(2))));
        assert!(matches!(sb.open_write(b"s"), Err(OpenError::HardLinks(2))));
        assert_eq!(fs::read(tmp.join("outside")).unwrap(), b"outside");
        assert_eq!(fs::read(tmp.join("host/s")).unwrap(), b"shared");
        // A shared original may have links of its own on the host: the user chose it.
        fs::hard_link(tmp.join("host/t"), tmp.join("t_elsewhere")).unwrap();
        assert_eq!(read_all(sb.open_read(b"t").unwrap()), b"linked on the host");
        sb.open_write(b"t").unwrap().write_all(b"+mine").unwrap();
        assert_eq!(read_all(sb.open_read(b"t").unwrap()), b"linked on the host+mine");
        assert_eq!(fs::read(tmp.join("host/t")).unwrap(), b"linked on the host");
        // Once the host removes the other link, the file is the VM's alone again.
        fs::remove_file(tmp.join("outside")).unwrap();
        assert_eq!(read_all(sb.open_read(b"h").unwrap()), b"outside");
        sb.open_write(b"h").unwrap().write_all(b"+mine").unwrap();
        assert_eq!(fs::read(private.join("h")).unwrap(), b"outside+mine");
    }

    // ---- reasons ----------------------------------------------------------------------

    #[test]
    fn name_errors_say_what_is_wrong() {
        let long = [b'x'; 255];
        let cases: [(&[u8], NameError, &str); 6] = [
            (b"", NameError::Empty, "empty name"),
            (&long, NameError::TooLong(255), "a name of 255 bytes, more than 254"),
            (b"a/b", NameError::Slash, "'/' in a name"),
            (b"a\0", NameError::Nul, "NUL in a name"),
            (b".", NameError::Dots, "\".\" and \"..\" are not file names"),
            (b"..", NameError::Dots, "\".\" and \"..\" are not file names"),
        ];
        for (name, error, text) in cases {
            assert_eq!(check_name(name), Err(error), "{name:?}");
            assert_eq!(error.to_string(), text);
            assert_eq!(OpenError::Name(error).to_string(), format!("refused, {text}"));
        }
        assert_eq!(check_name(b"ok"), Ok(()));
    }

    #[test]
    fn open_errors_say_what_happened() {
        let tmp = TempDir::new("reasons");
        let shared = shared_setup(&tmp, &[]);
        let mut sb = test_sandbox(shared, tmp.join("p"));
        assert_eq!(sb.open_read(b"none").unwrap_err().to_string(), "no private file and no shared file of that name");
        fs::create_dir_all(tmp.join("p/d")).unwrap();
        assert_eq!(sb.open_read(b"d").unwrap_err().to_string(), "not a regular file");
        std::os::unix::fs::symlink("/etc/passwd", tmp.join("p/l")).unwrap();
        let link = sb.open_write(b"l").unwrap_err().to_string();
        assert!(link.starts_with("the private file is a symbolic link, never followed ("), "{link}");
        let problem = DirProblem::new(DirStep::Create, &io::Error::from_raw_os_error(libc::EACCES), &tmp.join("p"));
        assert_eq!(
            OpenError::PrivateDir(problem).to_string(),
            "private directory cannot be created: Permission denied (os error 13)"
        );
        std::os::unix::fs::symlink(tmp.join("p"), tmp.join("q")).unwrap();
        let problem = DirProblem::new(DirStep::Open, &io::Error::from_raw_os_error(libc::ENOTDIR), &tmp.join("q"));
        assert_eq!(
            OpenError::PrivateDir(problem).to_string(),
            "private directory cannot be opened: it is a symbolic link (Not a directory (os error 20))"
        );
    }
}
