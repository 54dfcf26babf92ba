//! Version C under real KVM: guest file I/O on port 0x0278, checked through the
//! guests' stdout and the host files they leave behind.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{GUARD, Guarded, Run, guest, kvm_available, lines_of, run_in, temp_dir};

const SHARED: &[u8] = b"Hello from the host's shared file!\nThis line is shared by every VM.\n";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A test directory holding `host/shared.txt` (the `-f` file) and the private dirs under `files/`.
struct Setup {
    dir: PathBuf,
    shared: PathBuf,
}

impl Setup {
    fn new(tag: &str, shared: &[u8]) -> Setup {
        let dir = temp_dir(tag);
        fs::create_dir_all(dir.join("host")).unwrap();
        let path = dir.join("host/shared.txt");
        fs::write(&path, shared).unwrap();
        Setup { dir, shared: path }
    }

    fn files(&self) -> PathBuf {
        self.dir.join("files")
    }

    /// Runs `images` (guest names) with `-f host/shared.txt --files-dir files`.
    fn run(&self, images: &[&str], input: &[u8]) -> Run {
        let paths: Vec<String> = images.iter().map(|g| guest(g)).collect();
        let mut args =
            vec!["-q", "-m", "2", "-p", "2", "-f", self.shared.to_str().unwrap(), "--files-dir", "files", "-g"];
        args.extend(paths.iter().map(String::as_str));
        run_in(&self.dir, &args, input)
    }

    fn private(&self, dir: &str, name: &str) -> Vec<u8> {
        fs::read(self.files().join(dir).join(name)).unwrap_or_else(|e| panic!("{dir}/{name}: {e}"))
    }

    fn shared_is_untouched(&self, original: &[u8]) {
        assert_eq!(fs::read(&self.shared).unwrap(), original, "the shared original is never written");
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs fileshell.img with these commands; returns its output lines.
fn shell(setup: &Setup, commands: &str) -> (Run, Vec<String>) {
    let r = setup.run(&["fileshell.img"], commands.as_bytes());
    let lines = r.stdout().lines().map(str::to_owned).collect();
    (r, lines)
}

#[test]
fn create_write_and_read_back_a_private_file() {
    if !kvm_available() {
        return;
    }
    let s = Setup::new("create", SHARED);
    let (r, out) = shell(&s, "o 1 new.txt\nw 0 48656c6c6f\nw 0 \nc 0\no 0 new.txt\nr 0 10\nr 0 10\nc 0\nc 0\nq\n");
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert_eq!(out, ["0", "5", "0", "0", "0", "5 48656c6c6f", "0 ", "0", "-1"]);
    assert_eq!(s.private("fileshell_vm0_files", "new.txt"), b"Hello");
    // Without --files-dir the private directory is made in the current directory.
    let r = run_in(&s.dir, &["-q", "-m", "2", "-p", "4", "-g", &guest("fileshell.img")], b"o 1 here.txt\nw 0 41\n");
    assert_eq!(r.stdout(), "0\n1\n");
    assert_eq!(fs::read(s.dir.join("fileshell_vm0_files/here.txt")).unwrap(), b"A");
}

#[test]
fn a_shared_file_larger_than_127_bytes_reads_whole() {
    if !kvm_available() {
        return;
    }
    let text: Vec<u8> = (0..40).flat_map(|i| format!("shared line number {i:02}\n").into_bytes()).collect();
    assert!(text.len() > 127 * 6);
    let s = Setup::new("bigshared", &text);
    let r = s.run(&["filecopy.img"], b"");
    assert_eq!(r.status, 0, "{}", r.stderr);
    let mut expected = format!("copied {} bytes\n", text.len()).into_bytes();
    expected.extend_from_slice(&text);
    assert_eq!(r.stdout, expected);
    assert_eq!(s.private("filecopy_vm0_files", "copy.txt"), text);
    s.shared_is_untouched(&text);
}

#[test]
fn copy_on_write_leaves_the_other_vm_and_the_host_original_unchanged() {
    if !kvm_available() {
        return;
    }
    let s = Setup::new("cow", SHARED);
    let r = s.run(&["cow.img", "reader.img"], b"");
    assert_eq!(r.status, 0, "{}", r.stderr);
    let shared = String::from_utf8(SHARED.to_vec()).unwrap();
    let shared_lines: Vec<&str> = shared.lines().collect();
    let mut cow = vec!["shared.txt before:"];
    cow.extend(&shared_lines);
    cow.push("shared.txt after:");
    cow.extend(&shared_lines);
    cow.extend(["appended by guest", "done"]);
    assert_eq!(lines_of(&r.stdout(), 0), cow);
    let mut reader = vec!["reader sees:"];
    reader.extend(&shared_lines);
    reader.push("reader done");
    assert_eq!(lines_of(&r.stdout(), 1), reader, "the other VM still sees the original");
    let mut copy = SHARED.to_vec();
    copy.extend_from_slice(b"appended by guest\n");
    assert_eq!(s.private("cow_vm0_files", "shared.txt"), copy);
    assert_eq!(s.private("cow_vm0_files", "notes.txt"), b"private note\n");
    assert!(!s.files().join("reader_vm1_files").exists(), "a VM that only reads gets no directory");
    s.shared_is_untouched(SHARED);
}

#[test]
fn the_private_copy_persists_into_a_second_run() {
    if !kvm_available() {
        return;
    }
    let s = Setup::new("persist", SHARED);
    assert_eq!(s.run(&["cow.img"], b"").status, 0);
    let r = s.run(&["cow.img"], b"");
    assert_eq!(r.status, 0, "{}", r.stderr);
    let once = format!("{}appended by guest\n", String::from_utf8_lossy(SHARED));
    let twice = format!("{once}appended by guest\n");
    assert_eq!(r.stdout(), format!("shared.txt before:\n{once}shared.txt after:\n{twice}done\n"));
    assert_eq!(s.private("cow_vm0_files", "shared.txt"), twice.as_bytes());
    s.shared_is_untouched(SHARED);
}

#[test]
fn a_guest_reaches_no_file_but_its_own_and_the_shared_ones() {
    if !kvm_available() {
        return;
    }
    let s = Setup::new("deny", SHARED);
    // Another VM's private file, a host file beside the private dirs, a symlink planted
    // in this VM's own private directory that points outside it.
    fs::create_dir_all(s.files().join("other_vm0_files")).unwrap();
    fs::write(s.files().join("other_vm0_files/secret.txt"), b"other VM's").unwrap();
    fs::write(s.files().join("host_secret.txt"), b"host's").unwrap();
    fs::create_dir_all(s.files().join("fileshell_vm0_files")).unwrap();
    std::os::unix::fs::symlink(s.files().join("host_secret.txt"), s.files().join("fileshell_vm0_files/link")).unwrap();

    let r = s.run(&["deny.img"], b"");
    let expected = [
        "open ../shared.txt -> -1",
        "open /etc/passwd -> -1",
        "open . -> -1",
        "open .. -> -1",
        "open a/b -> -1",
        "open missing.txt -> -1",
        "open \"\" -> -1",
        "deny done",
    ];
    assert_eq!(r.stdout().lines().collect::<Vec<_>>(), expected);

    let (_, out) = shell(
        &s,
        "o 0 secret.txt\no 0 ../other_vm0_files/secret.txt\no 0 host_secret.txt\no 0 ../host_secret.txt\n\
         o 1 ../escape.txt\no 0 link\no 1 link\no 0 /etc/hostname\n",
    );
    assert_eq!(out, ["-1"; 8]);
    assert!(!s.files().join("escape.txt").exists() && !s.dir.join("escape.txt").exists());
    assert_eq!(fs::read(s.files().join("host_secret.txt")).unwrap(), b"host's", "not written through the link");
}

#[test]
fn all_256_byte_values_round_trip() {
    if !kvm_available() {
        return;
    }
    let all: Vec<u8> = (0..=255).collect();
    let s = Setup::new("bytes", &all);
    let r = s.run(&["bytes.img"], b"");
    assert_eq!(r.stdout(), "bytes ok\n");
    assert_eq!(s.private("bytes_vm0_files", "bytes.bin"), all);
    // The shared file holds every byte value too: read it back through the byte protocol.
    let (_, out) = shell(&s, "o 0 shared.txt\nr 0 200\nr 0 200\nr 0 200\n");
    assert_eq!(
        out,
        [
            "0".to_owned(),
            format!("127 {}", hex(&all[..127])),
            format!("127 {}", hex(&all[127..254])),
            format!("2 {}", hex(&all[254..])),
        ]
    );
}

#[test]
fn at_most_sixteen_files_are_open_at_once() {
    if !kvm_available() {
        return;
    }
    let s = Setup::new("limit", SHARED);
    let r = s.run(&["limit.img"], b"");
    assert_eq!(r.stdout(), "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 -1\nlimit done\n");
    assert_eq!(r.status, 0);
}

#[test]
fn data_written_before_a_crash_is_on_disk() {
    if !kvm_available() {
        return;
    }
    let s = Setup::new("crash", SHARED);
    // `d 800000 1` reads above the 2 MiB of RAM: a page fault with no IDT, a triple fault.
    let (r, out) = shell(&s, "o 1 log.txt\nw 0 6265666f726520637261736800\nd 800000 1\nw 0 6166746572\n");
    assert_eq!(r.status, 1);
    assert_eq!(out, ["0", "13"]);
    assert!(r.stderr.contains("triple fault"), "{}", r.stderr);
    assert_eq!(s.private("fileshell_vm0_files", "log.txt"), b"before crash\0");
}

#[test]
fn several_vms_copy_one_shared_file_at_once() {
    if !kvm_available() {
        return;
    }
    let s = Setup::new("manycow", SHARED);
    let r = s.run(&["cow.img"; 4], b"");
    assert_eq!(r.status, 0, "{}", r.stderr);
    let mut copy = SHARED.to_vec();
    copy.extend_from_slice(b"appended by guest\n");
    for vm in 0..4 {
        assert_eq!(s.private(&format!("cow_vm{vm}_files"), "shared.txt"), copy, "vm{vm}");
        assert_eq!(lines_of(&r.stdout(), vm).last().map(String::as_str), Some("done"));
    }
    s.shared_is_untouched(SHARED);
}

#[test]
fn the_protocol_recovers_from_garbage_and_half_requests() {
    if !kvm_available() {
        return;
    }
    let s = Setup::new("garbage", SHARED);
    let too_long_write = format!("x 040180{}", "41".repeat(128)); // write 128 bytes to vfd 1
    let commands = [
        "x 07",
        "i 1", // an unknown command byte: 0xFF is pending
        "i 1", // an in with nothing pending
        "x 0102",
        "I", // an open cut short by a 4-byte in
        "x 0400",
        "i 1", // a write cut short by a 1-byte in
        "x 010000",
        "i 1", // an open with length 0: refused at once
        "o 0 shared.txt",
        "o 1 w.txt", // vfds 0 and 1
        &too_long_write,
        "i 1",    // count above 127: all data consumed, nothing written
        "w 1 42", // still in step: this write works
        "r 0 5",
    ];
    let (r, out) = shell(&s, &(commands.join("\n") + "\n"));
    assert_eq!(r.status, 0, "{}", r.stderr);
    let expected =
        ["ok", "ff", "ff", "ok", "ffffffff", "ok", "ff", "ok", "ff", "0", "1", "ok", "ff", "1", "5 48656c6c6f"];
    assert_eq!(out, expected);
    assert_eq!(s.private("fileshell_vm0_files", "w.txt"), b"B");
}

#[test]
fn bulk_commands_move_whole_buffers_within_ram_bounds() {
    if !kvm_available() {
        return;
    }
    let s = Setup::new("bulk", SHARED);
    // -m 2: RAM is [0, 0x200000); the scratch area at 0x100000 is free.
    let commands = [
        format!("m 110000 {}", "ff".repeat(12)),
        format!("m 100000 {}", hex(b"bulk data!")),
        "o 1 bulk.bin".to_owned(),
        "B w 0 100000 10".to_owned(),  // 10 bytes to the file
        "B w 0 1ffffc 4".to_owned(),   // ends exactly at the end of RAM: allowed
        "B w 0 1ffffd 4".to_owned(),   // one byte past the end: refused
        "B w 0 ffffffff 2".to_owned(), // address + length overflows 32 bits: refused
        "B w 0 100000 0".to_owned(),   // length 0
        "B r 0 100000 4".to_owned(),   // read bulk on a vfd open for writing
        "c 0".to_owned(),
        "o 0 bulk.bin".to_owned(),
        "B r 0 1ffffe 4".to_owned(),   // refused...
        "r 0 4".to_owned(),            // ...and the file position did not move
        "B r 0 110000 100".to_owned(), // short read at end of file: the 10 bytes left
        "d 110000 12".to_owned(),      // only those 10 bytes of RAM changed
        "B r 0 110000 100".to_owned(), // end of file
        "x 0500".to_owned(),
        "x 00".to_owned(),           // a byte where the address dword belongs: request abandoned
        "I".to_owned(),              // so the answer is an error
        "B w 0 100000 4".to_owned(), // write bulk on a vfd open for reading
    ];
    let (r, out) = shell(&s, &(commands.join("\n") + "\n"));
    assert_eq!(r.status, 0, "{}", r.stderr);
    let after_read = format!("{}{}{}", hex(b" data!"), hex(&[0; 4]), "ffff");
    let expected = [
        "ok",
        "ok",
        "0",
        "10",
        "4",
        "-1",
        "-1",
        "0",
        "-1",
        "0",
        "0",
        "-1",
        "4 62756c6b",
        "10",
        &after_read,
        "0",
        "ok",
        "ok",
        "ffffffff",
        "-1",
    ];
    assert_eq!(out, expected);
    // The last 4 bytes of RAM are the top of the (zero) end of the page directory.
    let mut file = b"bulk data!".to_vec();
    file.extend_from_slice(&[0; 4]);
    assert_eq!(s.private("fileshell_vm0_files", "bulk.bin"), file);
}

#[test]
fn bulk_copy_guest_copies_a_file_exactly() {
    if !kvm_available() {
        return;
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let s = Setup::new("bulkcopy", b"");
    fs::write(s.dir.join("host/big.bin"), &data).unwrap();
    let r = run_in(
        &s.dir,
        &["-q", "-m", "4", "-p", "4", "-f", "host/big.bin", "--files-dir", "files", "-g", &guest("bulkcopy.img")],
        b"",
    );
    assert_eq!((r.status, r.stdout()), (0, "bulk copied 300000 bytes\n".to_owned()), "{}", r.stderr);
    assert_eq!(s.private("bulkcopy_vm0_files", "big_copy.bin"), data);
}

#[test]
fn shared_files_are_checked_before_any_vm_starts() {
    let s = Setup::new("fcheck", SHARED);
    fs::create_dir_all(s.dir.join("other")).unwrap();
    fs::write(s.dir.join("other/shared.txt"), b"same name").unwrap();
    let hello = guest("guest.img");
    let cases: [(&[&str], &str); 3] = [
        (&["-f", "host/missing.txt"], "host/missing.txt"),
        (&["-f", "host"], "directory"),
        (&["-f", "host/shared.txt", "other/shared.txt"], "same file name"),
    ];
    for (files, why) in cases {
        let mut args = vec!["-m", "2", "-p", "2", "-g", hello.as_str()];
        args.extend(files);
        let r = run_in(&s.dir, &args, b"");
        assert_eq!(r.status, 1, "{files:?}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "no VM ran");
        assert!(r.stderr.contains(why) && !r.stderr.contains("vm0"), "{files:?}: {}", r.stderr);
    }
    let r = run_in(&s.dir, &["-m", "2", "-p", "2", "-g", &hello, "--files-dir", "host/shared.txt"], b"");
    assert_eq!(r.status, 1);
    assert!(r.stderr.contains("not a directory"), "{}", r.stderr);
}

/// The shared file is opened once, at startup: a path swapped after the start (another file
/// renamed over it, then a symbolic link put in its place) changes nothing the guest reads or
/// copies. fileshell.img waits for its commands on stdin, so each open comes after a swap.
#[test]
fn a_shared_path_swapped_after_the_start_still_reads_the_original() {
    if !kvm_available() {
        return;
    }
    let s = Setup::new("swap", SHARED);
    fs::write(s.dir.join("impostor.txt"), b"not the shared file").unwrap();
    fs::write(s.dir.join("secret.txt"), b"a file the guest must never see").unwrap();
    let shared = s.shared.to_str().unwrap();
    let args = ["-m", "2", "-p", "2", "-f", shared, "--files-dir", "files", "-g", &guest("fileshell.img")];
    let mut hv = Guarded::spawn(&s.dir, &args, GUARD);
    // The startup checks, which open the shared file, are over once the VM is announced.
    hv.wait_for_stderr("the VM's opening line", |e| e.contains("byte image"));
    let read_whole = format!("{} {}", SHARED.len(), hex(SHARED));
    let lines = |out: &[u8]| out.iter().filter(|&&b| b == b'\n').count();

    fs::rename(s.dir.join("impostor.txt"), &s.shared).unwrap();
    hv.send(b"o 0 shared.txt\nr 0 127\nc 0\n");
    hv.wait_for_stdout("3 lines", |out| lines(out) == 3);

    fs::remove_file(&s.shared).unwrap();
    std::os::unix::fs::symlink(s.dir.join("secret.txt"), &s.shared).unwrap();
    hv.send(b"o 0 shared.txt\nr 0 127\nc 0\no 1 shared.txt\nw 0 2b\nc 0\nq\n");
    hv.close_input();
    let r = hv.finish();
    assert_eq!(r.status, 0, "{}", r.stderr);
    let out: Vec<String> = r.stdout().lines().map(str::to_owned).collect();
    assert_eq!(out, ["0", read_whole.as_str(), "0", "0", read_whole.as_str(), "0", "0", "1", "0"]);
    let mut copy = SHARED.to_vec();
    copy.push(b'+');
    assert_eq!(s.private("fileshell_vm0_files", "shared.txt"), copy, "copy-on-write copied the original");
    assert_eq!(fs::read(s.dir.join("secret.txt")).unwrap(), b"a file the guest must never see");
}

#[test]
fn files_dir_under_a_regular_file_is_refused_at_startup() {
    let s = Setup::new("fdirfile", SHARED);
    let hello = guest("guest.img");
    let r = run_in(&s.dir, &["-m", "2", "-p", "2", "-g", &hello, "--files-dir", "host/shared.txt/sub"], b"");
    assert_eq!(r.status, 1, "{}", r.stderr);
    assert!(r.stdout.is_empty(), "no VM ran");
    assert!(
        r.stderr.starts_with("mini_hypervisor: --files-dir host/shared.txt/sub: cannot be used (Not a directory"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
}

/// The one warning line about an unusable private directory.
fn unusable_warning(image: &str, dir: &str, reason: &str) -> String {
    format!(
        "mini_hypervisor: warning: vm0 ({image}): private directory {dir} cannot be used: {reason}; its guest can read the shared files but not write"
    )
}

#[test]
fn an_unusable_private_dir_leaves_the_shared_files_readable_with_one_warning() {
    if !kvm_available() {
        return;
    }
    let s = Setup::new("unusable", SHARED);
    fs::create_dir_all(s.files().join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(s.files().join("elsewhere"), s.files().join("fileshell_vm0_files")).unwrap();
    let commands = "o 0 shared.txt\nr 0 5\no 1 new.txt\no 1 shared.txt\no 0 missing\no 0 shared.txt\nc 0\nc 1\n";
    let (r, out) = shell(&s, commands);
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert_eq!(out, ["0", "5 48656c6c6f", "-1", "-1", "-1", "1", "0", "0"]);
    let warning = unusable_warning(
        &guest("fileshell.img"),
        "files/fileshell_vm0_files",
        "it is a symbolic link (Not a directory (os error 20))",
    );
    assert_eq!(r.stderr.lines().collect::<Vec<_>>(), [warning.as_str()], "exactly one warning");
    assert_eq!(fs::read_dir(s.files().join("elsewhere")).unwrap().count(), 0, "nothing written through the link");

    // Its name too long: an image whose file name leaves no room for "_vm0_files".
    let long = format!("{}.img", "n".repeat(250));
    fs::copy(guest("fileshell.img"), s.dir.join(&long)).unwrap();
    let r = run_in(
        &s.dir,
        &["-q", "-m", "2", "-p", "2", "-f", "host/shared.txt", "--files-dir", "files", "-g", &long],
        b"o 1 x\no 0 shared.txt\nr 0 5\no 1 y\n",
    );
    assert_eq!((r.status, r.stdout()), (0, "-1\n0\n5 48656c6c6f\n-1\n".to_owned()), "{}", r.stderr);
    let dir = format!("files/{}_vm0_files", "n".repeat(250));
    let warning = unusable_warning(&long, &dir, "its name is too long (File name too long (os error 36))");
    assert_eq!(r.stderr.lines().collect::<Vec<_>>(), [warning.as_str()]);
}

#[test]
fn a_hard_link_planted_in_the_private_dir_is_not_written_through() {
    if !kvm_available() {
        return;
    }
    let s = Setup::new("hardlink", SHARED);
    let private = s.files().join("fileshell_vm0_files");
    fs::create_dir_all(&private).unwrap();
    fs::write(s.files().join("host_file.txt"), b"host's").unwrap();
    fs::hard_link(s.files().join("host_file.txt"), private.join("h")).unwrap();
    // A link to the shared original itself, under its shared name.
    fs::hard_link(&s.shared, private.join("shared.txt")).unwrap();
    let (r, out) = shell(&s, "o 1 h\no 1 shared.txt\no 1 own\nw 0 6f6b\n");
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert_eq!(out, ["-1", "-1", "0", "2"]);
    assert_eq!(fs::read(s.files().join("host_file.txt")).unwrap(), b"host's");
    s.shared_is_untouched(SHARED);
    assert_eq!(s.private("fileshell_vm0_files", "own"), b"ok");
}

#[test]
fn a_hard_link_planted_in_the_private_dir_is_not_read_either() {
    if !kvm_available() {
        return;
    }
    let s = Setup::new("hardlinkread", SHARED);
    let private = s.files().join("fileshell_vm0_files");
    fs::create_dir_all(&private).unwrap();
    fs::write(s.files().join("host_secret.txt"), b"host's secret").unwrap();
    fs::hard_link(s.files().join("host_secret.txt"), private.join("h")).unwrap();
    fs::hard_link(&s.shared, private.join("shared.txt")).unwrap();
    fs::write(private.join("own"), b"mine").unwrap();
    let image = guest("fileshell.img");
    let args = ["-q", "--trace", "-m", "2", "-p", "2", "-f", "host/shared.txt", "--files-dir", "files", "-g", &image];
    let r = run_in(&s.dir, &args, b"o 0 h\no 0 shared.txt\no 0 own\nr 0 10\n");
    assert_eq!((r.status, r.stdout()), (0, "-1\n-1\n0\n4 6d696e65\n".to_owned()), "{}", r.stderr);
    let refused = "-> -1 (the private file has 2 hard links: another may be outside the private directory, so it is never opened)";
    assert_eq!(
        file_trace(&r, &image),
        [
            format!("open \"h\" for read {refused}"),
            format!("open \"shared.txt\" for read {refused}"),
            "open \"own\" for read -> fd 0".to_owned(),
            "read fd 0, 10 bytes -> 4".to_owned(),
        ]
    );
}

/// A small tmpfs for one test (unmounted when dropped), or `None` (the test is skipped) when
/// it cannot be mounted outside CI.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs(dir.to_owned())),
            other if std::env::var_os("CI").is_none() => {
                eprintln!("SKIP: cannot mount a tmpfs (needs root): {other:?}");
                None
            }
            other => panic!("mount a tmpfs (CI runs as root): {other:?}"),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_write_that_does_not_fit_on_the_disk_moves_no_data() {
    if !kvm_available() {
        return;
    }
    let s = Setup::new("enospc", SHARED);
    let Some(disk) = Tmpfs::mount(&s.dir.join("small"), "64k") else {
        return;
    };
    let mark = b"mark of the start of the scratch area";
    let mut commands = vec![
        format!("m 100000 {}", hex(mark)),
        "o 1 big.bin".to_owned(),
        "B w 0 100000 524288".to_owned(), // 512 KiB onto a 64 KiB disk
        "o 1 part.bin".to_owned(),
        "B w 1 100000 4046".to_owned(), // one page, 50 bytes of it free
        "o 1 fill.bin".to_owned(),
    ];
    commands.extend((0..20).map(|_| "B w 2 100000 4096".to_owned())); // until the disk is full
    commands.extend([
        format!("w 1 {}", "41".repeat(127)), // 50 bytes fit, the rest do not
        "B w 1 100000 8192".to_owned(),      // the same, through bulk
        "w 1 5a5a5a".to_owned(),             // room again for what fits in the page
    ]);
    let r = run_in(
        &s.dir,
        &["-q", "-m", "2", "-p", "2", "--files-dir", "small", "-g", &guest("fileshell.img")],
        (commands.join("\n") + "\n").as_bytes(),
    );
    assert_eq!(r.status, 0, "{}", r.stderr);
    let out: Vec<String> = r.stdout().lines().map(str::to_owned).collect();
    assert_eq!(out[..5], ["ok", "0", "-1", "1", "4046"], "{out:?}");
    assert_eq!(out[5], "2");
    let fills = &out[6..26];
    let full = fills.iter().position(|l| l == "-1").expect("the disk fills up");
    assert!(
        full > 0 && fills[full..].iter().all(|l| l == "-1") && fills[..full].iter().all(|l| l == "4096"),
        "{fills:?}"
    );
    assert_eq!(out[26..], ["-1", "-1", "3"]);

    let private = disk.0.join("fileshell_vm0_files");
    assert_eq!(fs::metadata(private.join("big.bin")).unwrap().len(), 0, "the refused bulk write left nothing");
    let part = fs::read(private.join("part.bin")).unwrap();
    assert_eq!(part.len(), 4046 + 3, "the refused writes left nothing");
    assert_eq!(&part[..mark.len()], mark);
    assert_eq!(&part[4046..], b"ZZZ");
    assert_eq!(fs::metadata(private.join("fill.bin")).unwrap().len(), 4096 * u64::try_from(full).unwrap());
}

#[test]
fn trace_says_why_the_file_device_said_no() {
    if !kvm_available() {
        return;
    }
    let s = Setup::new("trace", SHARED);
    let image = guest("fileshell.img");
    let commands = [
        "o 0 a/b".to_owned(),
        "o 0 shared.txt".to_owned(),
        "w 0 41".to_owned(),
        "r 5 10".to_owned(),
        format!("w 0 {}", "42".repeat(150)),
        "B r 0 1ffffe 4".to_owned(),
        "c 7".to_owned(),
        "o 1 ..".to_owned(),
        "r 0 3".to_owned(),
    ];
    let input = commands.join("\n") + "\n";
    let args = ["-m", "2", "-p", "2", "-f", "host/shared.txt", "--files-dir", "files", "-g", image.as_str()];
    let mut traced = vec!["--trace"];
    traced.extend(args);
    let r = run_in(&s.dir, &traced, input.as_bytes());
    assert_eq!(r.status, 0, "{}", r.stderr.lines().last().unwrap_or(""));
    assert_eq!(r.stdout(), "-1\n0\n-1\n-1 \n-1\n-1\n-1\n-1\n3 48656c\n");
    let expected = [
        "open \"a/b\" for read -> -1 (refused, '/' in a name)",
        "open \"shared.txt\" for read -> fd 0",
        "write fd 0, 1 byte -> -1 (opened for read)",
        "read fd 5, 10 bytes -> -1 (not open)",
        "write fd 0, 150 bytes -> -1 (count above 127)",
        "read bulk fd 0, 4 bytes at 0x1ffffe -> -1 (the range ends at 0x200002, past the end of guest RAM (0x200000 bytes))",
        "close fd 7 -> -1 (not open)",
        "open \"..\" for write -> -1 (refused, \".\" and \"..\" are not file names)",
        "read fd 0, 3 bytes -> 3",
    ];
    assert_eq!(file_trace(&r, &image), expected);
    // Without --trace: the same answers, and not a word.
    let r = run_in(&s.dir, &args, input.as_bytes());
    assert_eq!(r.stdout(), "-1\n0\n-1\n-1 \n-1\n-1\n-1\n-1\n3 48656c\n");
    assert!(!r.stderr.contains("trace:"), "{}", r.stderr);
}

/// The `--trace` lines of vm0's file requests, without their common start
/// `trace: vm0 (<image>) file `.
fn file_trace(r: &Run, image: &str) -> Vec<String> {
    let start = format!("trace: vm0 ({image}) file ");
    let lines = r.stderr.lines().filter_map(|l| l.strip_prefix(&start));
    // Each line ends with the RIP of the `out` that completed the request.
    lines
        .map(|l| {
            let (request, rip) = l.rsplit_once(" rip=0x").unwrap_or_else(|| panic!("no RIP in: {l}"));
            // With the guest's ELF beside its image, RIP comes with its symbol: `0x9f in f_read+0x..`.
            let hex = rip.split_once(" in ").map_or(rip, |(hex, _)| hex);
            assert!(u64::from_str_radix(hex, 16).is_ok(), "{l}");
            request.to_owned()
        })
        .collect()
}

#[test]
fn trace_decodes_every_request_of_the_copy_guests() {
    if !kvm_available() {
        return;
    }
    // The byte protocol: 127-byte requests, one exit per byte.
    let s = Setup::new("tracecopy", SHARED);
    let image = guest("filecopy.img");
    let args = ["-q", "--trace", "-m", "2", "-p", "2", "-f", "host/shared.txt", "--files-dir", "files", "-g", &image];
    let r = run_in(&s.dir, &args, b"");
    assert_eq!(r.status, 0, "{}", r.stderr.lines().last().unwrap_or(""));
    let expected = [
        "open \"shared.txt\" for read -> fd 0",
        "open \"copy.txt\" for write -> fd 1",
        "read fd 0, 127 bytes -> 68",
        "write fd 1, 68 bytes -> 68",
        "read fd 0, 127 bytes -> 0 (end of file)",
        "close fd 0 -> 0",
        "close fd 1 -> 0",
        // cat_file prints the copy.
        "open \"copy.txt\" for read -> fd 0",
        "read fd 0, 127 bytes -> 68",
        "read fd 0, 127 bytes -> 0 (end of file)",
        "close fd 0 -> 0",
    ];
    assert_eq!(file_trace(&r, &image), expected);

    // The bulk commands: 64 KiB per request at the scratch area, one exit each.
    let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(s.dir.join("host/big.bin"), &data).unwrap();
    let image = guest("bulkcopy.img");
    let args = ["-q", "--trace", "-m", "4", "-p", "4", "-f", "host/big.bin", "--files-dir", "files", "-g", &image];
    let r = run_in(&s.dir, &args, b"");
    assert_eq!((r.status, r.stdout()), (0, "bulk copied 70000 bytes\n".to_owned()), "{}", r.stderr);
    let expected = [
        "open \"big.bin\" for read -> fd 0",
        "open \"big_copy.bin\" for write -> fd 1",
        "read bulk fd 0, 65536 bytes at 0x100000 -> 65536",
        "write bulk fd 1, 65536 bytes at 0x100000 -> 65536",
        "read bulk fd 0, 65536 bytes at 0x100000 -> 4464",
        "write bulk fd 1, 4464 bytes at 0x100000 -> 4464",
        "read bulk fd 0, 65536 bytes at 0x100000 -> 0 (end of file)",
        "close fd 0 -> 0",
        "close fd 1 -> 0",
    ];
    assert_eq!(file_trace(&r, &image), expected);
    assert_eq!(s.private("bulkcopy_vm0_files", "big_copy.bin"), data);
}

#[test]
fn the_library_splits_reads_and_writes_into_protocol_sized_requests() {
    if !kvm_available() {
        return;
    }
    let dir = temp_dir("chunks");
    let r = run_in(&dir, &["-q", "--trace", "-m", "2", "-p", "2", "-g", &guest("chunks.img")], b"");
    assert_eq!(
        r.stdout(),
        "f_write 300 -> 300\nf_read 300 -> 300\nf_read at end -> 0\nf_read 400 -> 300\nchecksum 5773598 same\n",
        "{}",
        r.stderr
    );
    assert_eq!(r.status, 0, "{}", r.stderr);
    let expected: Vec<u8> = (0..300u32).map(|i| ((7 * i + 3) % 256) as u8).collect();
    assert_eq!(fs::read(dir.join("chunks_vm0_files/chunks.bin")).unwrap(), expected);
    // One f_write of 300 bytes is three requests on the port: 127 + 127 + 46 bytes.
    let writes: Vec<&str> = r.stderr.lines().filter(|l| l.contains("port=0x278") && l.contains("data=[04")).collect();
    assert!(writes.len() >= 3, "{}", r.stderr);
    let _ = fs::remove_dir_all(&dir);
}
