//! Helpers shared by the integration tests: run the built binary, find guest images.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_mini_hypervisor_a");

pub struct Run {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

pub fn guest(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest").join(name);
    assert!(p.is_file(), "{} is missing: build the guests first (make guests)", p.display());
    p.to_str().unwrap().to_owned()
}

/// KVM is needed from here on; without it (and not in CI) the test is skipped.
pub fn kvm_available() -> bool {
    match std::fs::File::options().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIP: /dev/kvm: {e}");
            false
        }
        Err(e) => panic!("/dev/kvm must work in CI: {e}"),
    }
}

pub fn run_with_input(args: &[&str], input: &[u8]) -> Run {
    run_in(&std::env::temp_dir(), args, input)
}

pub fn run(args: &[&str]) -> Run {
    run_with_input(args, b"")
}

/// A fresh, empty directory for one test (removed first if a previous run left it).
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mh_c_{}_{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the binary with `cwd` as its current directory.
pub fn run_in(cwd: &std::path::Path, args: &[&str], input: &[u8]) -> Run {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mini_hypervisor");
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(input);
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    Run {
        status: out.status.code().expect("exited, not killed by a signal"),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
