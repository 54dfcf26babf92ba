//! The scratch directories, laid out as the course expects, and the files a run leaves in them.
//!
//! One side of one run (ours or the other hypervisor) gets a directory of its own:
//!
//! ```text
//! NN-ours/            (or NN-other/)
//!   Guest/            copies of the images and shared files of the run
//!   run/              the working directory: `../Guest/...` names the copies
//!   stdin             the bytes given on stdin
//! ```
//!
//! The files a run *leaves behind* are every file in that directory that was not there before
//! or differs from what was put there (a shared file written in place shows up as
//! `Guest/shared.txt`; one deleted, as `(deleted)`). Each is named by its path from the VM's
//! private directory `<stem>_vm<N>_files/` on, wherever that directory is: the course's C puts
//! it in `../Guest/`, ours in the working directory (`--files-dir` aside), and the two are
//! compared by name and contents. A file outside any such directory keeps its whole path
//! (`run/stray.txt`). Only files count: directories, even empty ones, do not (the C creates
//! every VM's directory at start, ours only when a VM writes).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// More entries than this in one scratch directory are not looked at (and said so).
const MAX_ENTRIES: usize = 10_000;
/// Deeper than this is not looked at.
const MAX_DEPTH: usize = 32;

/// What was put in a side's directory before the run: its path there and its contents.
#[derive(Debug, Clone)]
pub struct Placed {
    pub rel: PathBuf,
    pub contents: Source,
}

#[derive(Debug, Clone)]
pub enum Source {
    /// A copy of this file.
    Copy(PathBuf),
    Bytes(Vec<u8>),
}

/// A file left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Left {
    /// A regular file (its path, to read it).
    File(PathBuf),
    /// Something else (a symbolic link, a FIFO, ...) or a placed file that is gone: described.
    Other(String),
}

/// Creates `dir` with `Guest/` (the placed copies), `run/` and `stdin`, for one side of a run.
pub fn prepare(dir: &Path, placed: &[Placed]) -> io::Result<()> {
    fs::create_dir(dir)?;
    fs::create_dir(dir.join("Guest"))?;
    fs::create_dir(dir.join("run"))?;
    for p in placed {
        let to = dir.join(&p.rel);
        match &p.contents {
            Source::Copy(from) => fs::copy(from, &to).map(drop),
            Source::Bytes(bytes) => fs::write(&to, bytes),
        }
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", to.display())))?;
    }
    Ok(())
}

/// The files left behind in `dir` (see the module's documentation), by name; and a note if the
/// directory was too large or too deep to be looked at whole.
pub fn left_behind(dir: &Path, placed: &[Placed]) -> (BTreeMap<String, Left>, Option<String>) {
    let mut found = Vec::new();
    let mut note = None;
    walk(dir, PathBuf::new(), 0, &mut found, &mut note);
    let mut left = BTreeMap::new();
    for (rel, kind) in found {
        let placed_here = placed.iter().find(|p| p.rel == rel);
        if let (Some(p), Left::File(path)) = (placed_here, &kind)
            && same_as_placed(path, &p.contents)
        {
            continue;
        }
        let name = match placed_here {
            Some(_) => slashed(&rel),
            None => name_of(&rel),
        };
        // Two paths with one name (a program that writes both layouts): the second keeps its path.
        let name = if left.contains_key(&name) { slashed(&rel) } else { name };
        left.insert(name, kind);
    }
    for p in placed {
        if fs::symlink_metadata(dir.join(&p.rel)).is_err() {
            left.insert(slashed(&p.rel), Left::Other("(deleted)".to_owned()));
        }
    }
    (left, note)
}

/// Collects every non-directory under `dir/rel`, without following symbolic links.
fn walk(dir: &Path, rel: PathBuf, depth: usize, found: &mut Vec<(PathBuf, Left)>, note: &mut Option<String>) {
    let Ok(entries) = fs::read_dir(dir.join(&rel)) else { return };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if found.len() >= MAX_ENTRIES || depth >= MAX_DEPTH {
            *note = Some(format!("more than {MAX_ENTRIES} files or {MAX_DEPTH} levels: not all compared"));
            return;
        }
        let rel = rel.join(entry.file_name());
        let Ok(meta) = fs::symlink_metadata(dir.join(&rel)) else { continue };
        let kind = meta.file_type();
        if kind.is_dir() {
            walk(dir, rel, depth + 1, found, note);
        } else if kind.is_file() {
            found.push((rel.clone(), Left::File(dir.join(&rel))));
        } else if kind.is_symlink() {
            let target = fs::read_link(dir.join(&rel)).map(|t| t.display().to_string()).unwrap_or_default();
            found.push((rel, Left::Other(format!("(symbolic link to {target})"))));
        } else {
            found.push((rel, Left::Other("(not a regular file)".to_owned())));
        }
    }
}

/// The name a left file is compared under: its path from the last `<stem>_vm<N>_files`
/// directory on, or its whole path if it is in none.
pub fn name_of(rel: &Path) -> String {
    let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let start = parts[..parts.len().saturating_sub(1)].iter().rposition(|p| is_vm_dir(p)).unwrap_or(0);
    parts[start..].join("/")
}

fn slashed(rel: &Path) -> String {
    rel.iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// `<stem>_vm<N>_files` with a non-empty stem and N decimal.
fn is_vm_dir(name: &str) -> bool {
    let Some(rest) = name.strip_suffix("_files") else { return false };
    let Some(at) = rest.rfind("_vm") else { return false };
    let number = &rest[at + 3..];
    at > 0 && !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())
}

fn same_as_placed(path: &Path, source: &Source) -> bool {
    match source {
        Source::Copy(from) => same_contents(path, from).unwrap_or(false),
        Source::Bytes(bytes) => fs::read(path).is_ok_and(|now| &now == bytes),
    }
}

/// Whether two files have the same bytes (read in blocks, any size).
pub fn same_contents(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut a, mut b) = (File::open(a)?, File::open(b)?);
    if a.metadata()?.len() != b.metadata()?.len() {
        return Ok(false);
    }
    let (mut block_a, mut block_b) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = read_full(&mut a, &mut block_a)?;
        let m = read_full(&mut b, &mut block_b)?;
        if n != m || block_a[..n] != block_b[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the end of the file; the count read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The first `max` bytes of a file (for showing its first differing line).
pub fn head(path: &Path, max: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Ok(file) = File::open(path) {
        let _ = file.take(max as u64).read_to_end(&mut bytes);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("beside-scratch-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn names_start_at_the_vm_directory() {
        assert_eq!(name_of(Path::new("Guest/cow_vm0_files/notes.txt")), "cow_vm0_files/notes.txt");
        assert_eq!(name_of(Path::new("run/cow_vm0_files/notes.txt")), "cow_vm0_files/notes.txt");
        assert_eq!(name_of(Path::new("run/demo/a_b_vm12_files/x")), "a_b_vm12_files/x");
        assert_eq!(name_of(Path::new("run/stray.txt")), "run/stray.txt");
        assert_eq!(name_of(Path::new("run/_vm0_files/x")), "run/_vm0_files/x");
        assert_eq!(name_of(Path::new("run/cow_vmx_files/x")), "run/cow_vmx_files/x");
        // A file named like a directory is still a file.
        assert_eq!(name_of(Path::new("run/cow_vm0_files")), "run/cow_vm0_files");
    }

    #[test]
    fn only_what_changed_is_left_behind() {
        let dir = temp("left");
        let source = temp("left-source");
        fs::write(&source, b"shared\n").unwrap();
        let placed = vec![
            Placed { rel: "Guest/shared.txt".into(), contents: Source::Copy(source.clone()) },
            Placed { rel: "Guest/other.txt".into(), contents: Source::Copy(source.clone()) },
            Placed { rel: "Guest/gone.txt".into(), contents: Source::Copy(source.clone()) },
            Placed { rel: "stdin".into(), contents: Source::Bytes(b"abc".to_vec()) },
        ];
        prepare(&dir, &placed).unwrap();
        assert!(left_behind(&dir, &placed).0.is_empty());
        fs::write(dir.join("Guest/other.txt"), b"changed\n").unwrap();
        fs::remove_file(dir.join("Guest/gone.txt")).unwrap();
        fs::create_dir_all(dir.join("run/cow_vm0_files")).unwrap();
        fs::create_dir_all(dir.join("Guest/empty_vm1_files")).unwrap();
        fs::write(dir.join("run/cow_vm0_files/notes.txt"), b"note\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("run/link")).unwrap();
        let (left, note) = left_behind(&dir, &placed);
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_file(&source).unwrap();
        let names: Vec<&str> = left.keys().map(String::as_str).collect();
        assert_eq!(names, ["Guest/gone.txt", "Guest/other.txt", "cow_vm0_files/notes.txt", "run/link"]);
        assert_eq!(left["Guest/gone.txt"], Left::Other("(deleted)".to_owned()));
        assert_eq!(left["run/link"], Left::Other("(symbolic link to /etc/passwd)".to_owned()));
        assert!(note.is_none());
    }

    #[test]
    fn contents_compare_byte_for_byte() {
        let (a, b) = (temp("a"), temp("b"));
        fs::write(&a, vec![7u8; 200_000]).unwrap();
        fs::write(&b, vec![7u8; 200_000]).unwrap();
        assert!(same_contents(&a, &b).unwrap());
        let mut changed = vec![7u8; 200_000];
        changed[150_000] = 8;
        fs::write(&b, changed).unwrap();
        assert!(!same_contents(&a, &b).unwrap());
        fs::write(&b, vec![7u8; 199_999]).unwrap();
        assert!(!same_contents(&a, &b).unwrap());
        assert_eq!(head(&a, 10), vec![7u8; 10]);
        fs::remove_file(&a).unwrap();
        fs::remove_file(&b).unwrap();
    }
}
