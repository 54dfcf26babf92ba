//! The command line and the startup checks, end to end: what the binary accepts, what it
//! refuses and how fast; and the test helpers' own guard.

use crate::common;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::time::Duration;

use common::{GUARD, Guarded, guest, kvm_available, run, run_guarded, temp_dir};

#[test]
fn a_fifo_as_guest_image_is_refused_at_once() {
    let dir = temp_dir("startup_fifo");
    let fifo = dir.join("pipe.img");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo");
    assert!(made.success());
    // Nobody ever writes to the FIFO: opening it to read would block for ever. The guard is
    // generous for a loaded machine; the check itself takes no time.
    let path = fifo.to_str().unwrap();
    for args in [&["-m", "2", "-p", "4", "-g", path][..], &["-m2", "-p4", &format!("--guest={path}")]] {
        let r = run_guarded(&dir, args, b"", Duration::from_secs(5));
        assert_eq!(r.status, 1, "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty());
        assert_eq!(
            r.stderr,
            format!(
                "mini_hypervisor: guest image {path}: is a FIFO (named pipe), not a regular file: \
                 give the path of a flat binary image\n"
            )
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An ELF file given as the image is told so, and what to give, even when it is too large to
/// fit: it is not an image at any size, so no -m/-p would help.
#[test]
fn an_elf_file_too_large_to_fit_is_told_it_is_an_elf() {
    let dir = temp_dir("startup_big_elf");
    let elf = dir.join("big.elf");
    let mut bytes = b"\x7fELF\x02\x01\x01".to_vec();
    bytes.resize(3 << 20, 0);
    bytes[16] = 2; // ET_EXEC
    std::fs::write(&elf, &bytes).unwrap();
    let path = elf.to_str().unwrap();
    let r = run_guarded(&dir, &["-m", "2", "-p", "4", "-g", path], b"", GUARD);
    assert_eq!((r.status, r.stdout.is_empty()), (1, true), "{}", r.stderr);
    assert_eq!(
        r.stderr,
        format!(
            "mini_hypervisor: guest image {path}: is an ELF file, not a flat image: give big.img, the flat binary the \
             guest Makefile makes from it (objcopy -O binary)\n"
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_image_path_that_is_not_utf8_is_used_as_it_is() {
    if !kvm_available() {
        return;
    }
    let dir = temp_dir("startup_non_utf8");
    let name = OsString::from_vec(b"g\xff.img".to_vec());
    std::fs::copy(guest("guest.img"), dir.join(&name)).unwrap();
    let mut inline = OsString::from("--guest=");
    inline.push(&name);
    let mut attached = OsString::from("-g");
    attached.push(&name);
    for image in [inline, attached] {
        let args = [OsString::from("-q"), "-m".into(), "2".into(), "-p".into(), "2".into(), image.clone()];
        let r = run_guarded(&dir, &args, b"", GUARD);
        assert_eq!((r.status, r.stdout()), (0, "Hello, world!\n".to_owned()), "{image:?}: {}", r.stderr);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn short_options_with_attached_values_run_a_guest() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "-m4", "-p2", &format!("-g{}", guest("guest.img"))]);
    assert_eq!((r.status, r.stdout()), (0, "Hello, world!\n".to_owned()), "{}", r.stderr);
}

#[test]
fn bad_option_values_are_usage_errors_naming_the_value() {
    let hello = guest("guest.img");
    for (args, expected) in [
        (vec!["-m", "2", "-p", "4", "-g", &hello, "--gdb", "abc"], "invalid --gdb port 'abc'"),
        (vec!["-m", "2", "-p", "4", "-g", &hello, "--gdb=70000"], "invalid --gdb port '70000'"),
        (vec!["-m", "2", "-p", "4", "-g", &hello, "--gdb", "0"], "invalid --gdb port '0'"),
        (vec!["-m", "2", "-p", "4", "-g", &hello, "--gdb", "-1"], "invalid --gdb port '-1'"),
        (vec!["-m", "2", "-p", "4", "-g", &hello, "--gdb="], "--gdb needs a value"),
        (vec!["--memory=", "-p", "4", "-g", &hello], "--memory needs a value"),
        (vec!["-m", "2", "-p", "4", "--guest="], "--guest needs a value"),
        (vec!["-m5", "-p", "4", "-g", &hello], "invalid memory size '5'"),
    ] {
        let r = run(&args);
        assert_eq!(r.status, 2, "{args:?}: {}", r.stderr);
        assert!(r.stdout.is_empty());
        let first = r.stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("mini_hypervisor: ") && first.contains(expected), "{args:?}: {}", r.stderr);
        assert_eq!(r.stderr.lines().nth(1), Some("Try 'mini_hypervisor --help' for more information."));
        assert_eq!(r.stderr.lines().count(), 2, "{}", r.stderr);
    }
    let help = run(&["--help"]).stdout();
    assert!(help.contains("--gdb <port>") && help.contains("--no-coalesce"), "{help}");
}

/// `--timeout` takes 0.001 to 1,000,000 seconds: outside, a usage error naming the range;
/// 0.001 itself runs (docs/REFERENCE.md §1).
#[test]
fn timeout_takes_a_millisecond_to_a_million_seconds() {
    let hello = guest("guest.img");
    for bad in ["1e9", "1e-300", "0", "0.0009", "1000000.5", "-1", "nan", "inf", "1s"] {
        let r = run(&["-m", "2", "-p", "2", "-g", &hello, "--timeout", bad]);
        assert_eq!(r.status, 2, "{bad}: {}", r.stderr);
        assert!(r.stdout.is_empty());
        assert_eq!(
            r.stderr.lines().next(),
            Some(
                format!("mini_hypervisor: invalid timeout '{bad}': use a number of seconds from 0.001 to 1000000")
                    .as_str()
            ),
            "{bad}"
        );
    }
    if !kvm_available() {
        return;
    }
    let r = run(&["-m", "2", "-p", "2", "--timeout", "0.001", "-g", &guest("spin.img")]);
    assert_eq!(r.status, 1, "{}", r.stderr);
    assert!(r.stderr.contains("timed out after 0.001 s"), "{}", r.stderr);
    let r = run(&["-q", "-m", "2", "-p", "2", "--timeout=1e6", "-g", &hello]);
    assert_eq!((r.status, r.stdout()), (0, "Hello, world!\n".to_owned()), "{}", r.stderr);
}

#[test]
fn a_run_past_its_guard_is_killed_and_fails_the_test() {
    if !kvm_available() {
        return;
    }
    // spin.img never halts: the helper must stop it at the guard, not hang.
    let spin = guest("spin.img");
    let outcome = std::panic::catch_unwind(|| {
        let mut running = Guarded::spawn(Path::new("/"), &["-q", "-m", "2", "-p", "2", "-g", &spin], GUARD / 30);
        running.input(b"", true);
        running.finish()
    });
    let panic = outcome.err().expect("a guest past its guard fails the test");
    let message = panic.downcast_ref::<String>().expect("a formatted panic message");
    assert!(message.starts_with("guest ran longer than its guard of 1 s: "), "{message}");
    assert!(message.contains("spin.img"), "{message}");
}
