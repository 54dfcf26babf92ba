//! Versions A and B have no file device: port 0x0278 is an unknown port there (docs/REFERENCE.md §4).

use crate::common;

use common::{guest, kvm_available, run_with_input};

#[test]
fn port_0x278_is_an_unknown_port() {
    if !kvm_available() {
        return;
    }
    // fileshell: `x 01` is an out of 0x01 to 0x0278, `i 2` two ins, `I` a 4-byte in.
    let r = run_with_input(&["-q", "-m", "2", "-p", "2", "-g", &guest("fileshell.img")], b"x 0102\ni 2\nI\no 0 x\n");
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert_eq!(r.stdout(), "ok\nffff\nffffffff\n-1\n");
    let warnings: Vec<&str> = r.stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "one warning per VM and port, for out and in together: {}", r.stderr);
    assert!(warnings.iter().all(|w| w.contains("port 0x278")), "{warnings:?}");
}
