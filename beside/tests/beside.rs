//! `beside` from the outside: our hypervisor on both sides, stand-in scripts that crash, hang,
//! flood, tamper with files or differ by one line, and the scratch directories.
//!
//! Our hypervisors are the debug binaries that `cargo test --workspace` builds beside this test
//! (`target/debug/mini_hypervisor_X`); the guests come from `make guests`. `make test` does
//! both. Every run of `beside` has a guard: past it, it is killed and the test fails.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const BESIDE: &str = env!("CARGO_BIN_EXE_beside");
const GUARD: Duration = Duration::from_secs(120);

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn guests() -> PathBuf {
    let dir = workspace().join("guest");
    assert!(
        dir.join("template.img").is_file(),
        "{} has no images: build the guests first (make guests)",
        dir.display()
    );
    dir
}

/// Our hypervisor of `version`, built by `cargo test --workspace` next to this test.
fn ours(version: char) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(format!("mini_hypervisor_{version}"));
    assert!(path.is_file(), "{} is missing: run cargo test --workspace (or make test)", path.display());
    path
}

/// KVM is needed; without it (and not in CI) the test is skipped.
fn kvm_available() -> bool {
    match std::fs::File::options().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIP: /dev/kvm: {e}");
            false
        }
        Err(e) => panic!("/dev/kvm must work in CI: {e}"),
    }
}

/// A fresh, empty directory for one test.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("beside_test_{}_{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes an executable shell script.
fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

struct Beside {
    status: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Beside {
    /// The table row whose run name is `label` (the row line, without the lines under it).
    fn row(&self, label: &str) -> &str {
        let pattern = format!("  {label}  ");
        self.stdout.lines().find(|l| l.contains(&pattern)).unwrap_or_else(|| panic!("no row {label}:\n{}", self.stdout))
    }

    /// The lines under the row of `label`, up to the next row.
    fn under(&self, label: &str) -> Vec<&str> {
        let row = self.row(label);
        self.stdout.lines().skip_while(|l| *l != row).skip(1).take_while(|l| l.starts_with("    ")).collect()
    }

    /// The last line, which is the summary.
    fn summary(&self) -> &str {
        self.stdout.lines().last().unwrap_or("")
    }
}

/// Runs `beside` with `args`, `env` added, under the guard.
fn beside(args: &[&str], env: &[(&str, &Path)]) -> Beside {
    let mut command = Command::new(BESIDE);
    command.args(args).env("COLUMNS", "120").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let started = Instant::now();
    let mut child = command.spawn().unwrap();
    let read = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(child.wait().unwrap()));
    let Ok(status) = rx.recv_timeout(GUARD) else {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        panic!("beside {args:?} ran longer than its guard of {} s", GUARD.as_secs());
    };
    let took = started.elapsed();
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    Beside { status: status.code().unwrap_or(-1), stdout, stderr, took }
}

fn args_for<'a>(version: &'a str, other: &'a Path, ours: &'a Path, guests: &'a Path) -> Vec<&'a str> {
    vec![version, other.to_str().unwrap(), "--ours", ours.to_str().unwrap(), "--guests", guests.to_str().unwrap()]
}

fn same_on_both_sides(version: char) {
    if !kvm_available() {
        return;
    }
    let ours = ours(version);
    let guests = guests();
    let v = version.to_string();
    let mut args = args_for(&v, &ours, &ours, &guests);
    // A generous time limit: the compute guests take seconds on a busy machine.
    args.extend(["--timeout", "60"]);
    let run = beside(&args, &[]);
    assert_eq!(run.status, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.summary().ends_with(" same, 0 different, 0 failed"), "{}", run.stdout);
    let rows = run.stdout.lines().filter(|l| l.ends_with("  same")).count();
    assert!(run.summary().starts_with(&format!("{rows} same")), "{}", run.stdout);
    assert!(rows >= 8, "{}", run.stdout);
    assert!(!run.stdout.contains("        ours:  "), "no difference shown: {}", run.stdout);
}

#[test]
fn our_binary_on_both_sides_is_the_same_in_version_a() {
    same_on_both_sides('a');
}

#[test]
fn our_binary_on_both_sides_is_the_same_in_version_b() {
    same_on_both_sides('b');
}

#[test]
fn our_binary_on_both_sides_is_the_same_in_version_c() {
    same_on_both_sides('c');
}

/// Crashes on guest.img, hangs on echo.img (leaving a child behind that holds stdout open),
/// floods stdout on paging.img, and on template.img writes into the image and leaves a file
/// beside it; runs our hypervisor otherwise.
const HOSTILE: &str = r#"#!/bin/sh
case " $* " in
*"/guest.img "*) echo "about to crash"; kill -SEGV $$ ;;
*"/echo.img "*) sleep 300 & echo $! > "$PIDFILE"; echo "hanging"; exec sleep 300 ;;
*"/paging.img "*) head -c 100000000 /dev/zero; exit 0 ;;
*"/template.img "*) echo tampered >> ../Guest/template.img; echo stray > ../Guest/stray.txt; exec "$OURS" "$@" ;;
*) exec "$OURS" "$@" ;;
esac
"#;

#[test]
fn a_hostile_program_cannot_stop_the_run_or_touch_the_guests() {
    if !kvm_available() {
        return;
    }
    let dir = temp_dir("hostile");
    let stand_in = script(&dir, "hostile.sh", HOSTILE);
    let (ours, guests) = (ours('a'), guests());
    let template_before = std::fs::read(guests.join("template.img")).unwrap();
    let pid_file = dir.join("pid");
    let mut args = args_for("a", &stand_in, &ours, &guests);
    args.extend(["--timeout", "3"]);
    let run = beside(&args, &[("OURS", &ours), ("PIDFILE", &pid_file), ("TMPDIR", &dir)]);
    assert_eq!(run.status, 1, "{}\n{}", run.stdout, run.stderr);
    let crash = run.row("guest -m4 -p2");
    assert!(crash.contains("SIGSEGV") && crash.ends_with("failed"), "{crash}");
    let hang = run.row("echo -m4 -p2 <\"abc\"");
    assert!(hang.contains("timed out") && hang.ends_with("failed"), "{hang}");
    assert!(run.under("paging -m8 -p2").iter().any(|l| l.contains("bytes in all")), "{}", run.stdout);
    let tampered = run.under("template -m8 -p4").join("\n");
    assert!(tampered.contains("file Guest/stray.txt"), "{tampered}");
    assert!(run.row("sse -m4 -p2").ends_with("  same"), "{}", run.stdout);
    assert!(run.summary().ends_with("failed"), "{}", run.stdout);
    // Within its limits: about 3 s for the hang, and a table of a few lines.
    assert!(run.took < Duration::from_secs(60), "{:?}", run.took);
    assert!(run.stdout.len() < 8192 && run.stdout.lines().all(|l| l.chars().count() <= 120), "{}", run.stdout);
    // The child left behind was killed with its process group (gone, or a zombie).
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let state = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    assert!(state.is_empty() || state.contains(") Z "), "the hanging script's child still runs: {state}");
    // The repository's guests are untouched; nothing is left in the scratch area.
    assert_eq!(std::fs::read(guests.join("template.img")).unwrap(), template_before);
    assert!(!guests.join("stray.txt").exists());
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "only the script and its pid file: {left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_one_line_difference_is_shown_on_both_sides() {
    if !kvm_available() {
        return;
    }
    let dir = temp_dir("oneline");
    let stand_in = script(
        &dir,
        "oneline.sh",
        "#!/bin/sh\ncase \" $* \" in\n*\"/template.img \"*) \"$OURS\" \"$@\" | sed 's/^2 squared is 4$/2 squared is 5/' ;;\n\
         *) exec \"$OURS\" \"$@\" ;;\nesac\n",
    );
    let (ours, guests) = (ours('a'), guests());
    let run = beside(&args_for("a", &stand_in, &ours, &guests), &[("OURS", &ours)]);
    assert_eq!(run.status, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.row("template -m8 -p4").ends_with("different"), "{}", run.stdout);
    assert_eq!(
        run.under("template -m8 -p4"),
        ["      stdout", "        ours:  2 squared is 4", "        other: 2 squared is 5"]
    );
    assert!(run.summary().ends_with(" same, 1 different, 0 failed"), "{}", run.stdout);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Prints two banner lines of its own, then our output without the `[vmN] ` prefixes.
const UNPREFIXED: &str = "#!/bin/bash\nset -o pipefail\necho 'Starting VM with:'\necho 'All VMs running.'\n\
                          \"$OURS\" \"$@\" | sed 's/^\\[vm[0-9]*\\] //'\n";

#[test]
fn several_vms_compare_without_prefixes_and_ignored_lines() {
    if !kvm_available() {
        return;
    }
    let dir = temp_dir("unprefixed");
    let stand_in = script(&dir, "unprefixed.sh", UNPREFIXED);
    let (ours, guests) = (ours('b'), guests());
    let mut args = args_for("b", &stand_in, &ours, &guests);
    let without_ignore = beside(&args, &[("OURS", &ours)]);
    assert!(without_ignore.row("guest -m4 -p2").ends_with("different"), "{}", without_ignore.stdout);
    args.extend(["--ignore", "^(Starting VM with:|All VMs )"]);
    let run = beside(&args, &[("OURS", &ours)]);
    assert_eq!(run.status, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.row("counter+counter -m4 -p2").ends_with("  same"), "{}", run.stdout);
    assert!(run.summary().ends_with(" same, 0 different, 0 failed"), "{}", run.stdout);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn keep_leaves_the_scratch_directories_and_says_where() {
    if !kvm_available() {
        return;
    }
    let dir = temp_dir("keep");
    let (ours, guests) = (ours('c'), guests());
    let mut args = args_for("c", &ours, &ours, &guests);
    args.extend(["--only", "cow+snoop"]);
    let run = beside(&args, &[("TMPDIR", &dir)]);
    assert_eq!(run.status, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "scratch left behind without --keep");

    args.push("--keep");
    let run = beside(&args, &[("TMPDIR", &dir)]);
    assert_eq!(run.status, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.summary(), "1 same, 0 different, 0 failed", "the summary comes last: {}", run.stdout);
    let line = run.stdout.lines().find(|l| l.starts_with("scratch directories kept in ")).expect(&run.stdout);
    let kept = PathBuf::from(line["scratch directories kept in ".len()..].split(' ').next().unwrap());
    assert!(kept.starts_with(&dir), "{}", kept.display());
    for side in ["10-ours", "10-other"] {
        assert!(kept.join(side).join("Guest/cow.img").is_file(), "{}", kept.display());
        assert!(kept.join(side).join("stdout.txt").is_file());
    }
    // Ours puts the private directories in its working directory.
    assert!(kept.join("10-ours/run/cow_vm0_files/notes.txt").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_a_hypervisor_it_explains_itself() {
    let run = beside(&["--help"], &[]);
    assert_eq!(run.status, 0);
    assert!(run.stdout.contains("make beside HV=PATH"), "{}", run.stdout);
    assert!(run.stdout.contains("git clone https://github.com/S-t-r-a-x/mini-kvm-hypervisor"));
    let run = beside(&[], &[]);
    assert_eq!(run.status, 2);
    assert!(run.stderr.contains("give the version"), "{}", run.stderr);
}
