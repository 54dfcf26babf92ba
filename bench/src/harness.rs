//! Running the hypervisor and measuring it: `run`, `median`, a temporary directory, table rows.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::sys;

/// One finished child process.
#[derive(Debug)]
pub struct Run {
    pub wall: Duration,
    pub status: ExitStatus,
    /// Peak resident set size in KiB (`VmHWM` read at the child's exit) if it was `traced`.
    pub peak_rss_kib: Option<u64>,
}

/// Spawns `cmd` (stdin from /dev/null, stdout to `stdout`) and waits for it.
/// `wall` runs from just before the spawn to the moment the child has been reaped.
///
/// `traced`: the child runs under ptrace so that its own peak RSS can be read at its exit
/// (`sys::wait_traced`); that costs a few stops and a `fork` instead of a `vfork`, so runs whose
/// wall time matters are not traced.
pub fn run(cmd: &mut Command, stdout: File, traced: bool) -> io::Result<Run> {
    cmd.stdin(Stdio::null()).stdout(stdout);
    let start = Instant::now();
    if traced {
        let child = sys::spawn_traced(cmd).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => io::Error::other(format!("ptrace, to read its peak RSS: {e}")),
            _ => e,
        })?;
        let (status, hwm) = sys::wait_traced(child.id(), |pid| peak_rss_kib(&format!("/proc/{pid}/status")))?;
        let peak_rss_kib = hwm.flatten().ok_or_else(|| io::Error::other("cannot read VmHWM at the child's exit"))?;
        Ok(Run { wall: start.elapsed(), status, peak_rss_kib: Some(peak_rss_kib) })
    } else {
        let status = cmd.spawn()?.wait()?;
        Ok(Run { wall: start.elapsed(), status, peak_rss_kib: None })
    }
}

/// The median (the mean of the two middle values for an even count). Panics on an empty slice.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 }
}

/// Splits a fixed argument string on spaces (paths are pushed separately, so they may hold spaces).
pub fn words(s: &str) -> Vec<OsString> {
    s.split_whitespace().map(OsString::from).collect()
}

/// The bench reads at most this much of a file at once, to keep its own RSS small (see `run`).
const CHUNK: usize = 64 * 1024;

/// A successful hypervisor run, with its output.
#[derive(Debug)]
pub struct Output {
    pub wall: Duration,
    pub peak_rss_kib: Option<u64>,
    /// The first `CHUNK` bytes of stdout, and its whole length.
    pub stdout: Vec<u8>,
    pub stdout_len: u64,
    pub stderr: String,
}

/// A hypervisor binary to measure: one of ours (`version_X/mini_hypervisor`) or another one named
/// on the command line (run with the same options, minus ours-only ones such as `-q`).
#[derive(Debug, Clone)]
pub struct Hv {
    /// How the table names it: "version A", or the path as given.
    pub name: String,
    pub exe: PathBuf,
    pub ours: bool,
}

impl Hv {
    pub fn ours(root: &Path, v: char) -> Hv {
        let name = format!("version {}", v.to_ascii_uppercase());
        Hv { name, exe: root.join(format!("version_{v}/mini_hypervisor")), ours: true }
    }

    pub fn other(path: &str) -> Hv {
        // Absolute, as the runs start in the repository root.
        let exe = std::path::absolute(path).unwrap_or_else(|_| PathBuf::from(path));
        Hv { name: format!("`{path}`"), exe, ours: false }
    }
}

/// Where stdout of a run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdout {
    /// /dev/null.
    Discard,
    /// A file, whose length and first `CHUNK` bytes end up in [`Output`].
    Keep,
}

/// Where the binaries are, and a private temporary directory (removed when dropped).
#[derive(Debug)]
pub struct Env {
    pub root: PathBuf,
    pub tmp: PathBuf,
    /// Other hypervisor binaries to set beside ours (`--other`).
    pub others: Vec<Hv>,
    counter: Cell<u32>,
}

impl Env {
    pub fn new(root: PathBuf, others: Vec<Hv>) -> io::Result<Env> {
        let tmp = std::env::temp_dir().join(format!("mini_hypervisor_bench.{}", std::process::id()));
        fs::create_dir_all(&tmp)?;
        Ok(Env { root, tmp, others, counter: Cell::new(0) })
    }

    /// A path in the temporary directory that nothing has used yet.
    pub fn fresh(&self, what: &str) -> PathBuf {
        let n = self.counter.get();
        self.counter.set(n + 1);
        self.tmp.join(format!("{what}.{n}"))
    }

    /// Runs `version_<v>/mini_hypervisor <args>` (see [`Env::run`]).
    pub fn hypervisor(&self, v: char, args: &[OsString], stdout: Stdout) -> Result<Output, String> {
        self.run(&Hv::ours(&self.root, v), args, stdout, false)
    }

    /// Runs `hv <args>` from the repository root with stdout and stderr going to files in the
    /// temporary directory (stdout to /dev/null with [`Stdout::Discard`]); `traced` as in [`run`].
    /// Anything but exit status 0 is an error, which quotes the child's stderr.
    pub fn run(&self, hv: &Hv, args: &[OsString], stdout: Stdout, traced: bool) -> Result<Output, String> {
        let (out_path, err_path) = (self.fresh("stdout"), self.fresh("stderr"));
        let stdout_path: &Path = if stdout == Stdout::Discard { Path::new("/dev/null") } else { &out_path };
        let out_file = File::create(stdout_path).map_err(|e| format!("{}: {e}", stdout_path.display()))?;
        let err_file = File::create(&err_path).map_err(|e| format!("{}: {e}", err_path.display()))?;
        let mut cmd = Command::new(&hv.exe);
        cmd.args(args).current_dir(&self.root).stderr(err_file);
        let shown = format!("{} {}", hv.exe.display(), args.join(OsStr::new(" ")).to_string_lossy());
        let r = run(&mut cmd, out_file, traced).map_err(|e| format!("cannot run {shown}: {e}"))?;
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        let _ = fs::remove_file(&err_path);
        if !r.status.success() {
            let _ = fs::remove_file(&out_path);
            return Err(format!("{shown} failed ({}); its stderr:\n{stderr}", r.status));
        }
        let (mut bytes, mut stdout_len) = (Vec::new(), 0);
        if stdout == Stdout::Keep {
            let file = File::open(&out_path).map_err(|e| format!("{}: {e}", out_path.display()))?;
            stdout_len = file.metadata().map_err(|e| e.to_string())?.len();
            file.take(CHUNK as u64).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
            let _ = fs::remove_file(&out_path);
        }
        Ok(Output { wall: r.wall, peak_rss_kib: r.peak_rss_kib, stdout: bytes, stdout_len, stderr })
    }

    /// Whether `version_<v>/mini_hypervisor --help` offers `--no-coalesce`.
    pub fn has_no_coalesce(&self, v: char) -> bool {
        self.hypervisor(v, &words("--help"), Stdout::Keep)
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--no-coalesce"))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// One line of the result table.
#[derive(Debug)]
pub struct Row {
    pub what: String,
    /// How many runs the value comes from, e.g. `3` or `1 + 5`.
    pub runs: String,
    pub value: String,
    /// The target and whether it was met, if the row has one.
    pub target: Option<(String, bool)>,
}

impl Row {
    pub fn new(what: impl Into<String>, runs: impl ToString, value: impl Into<String>) -> Row {
        Row { what: what.into(), runs: runs.to_string(), value: value.into(), target: None }
    }

    pub fn target(mut self, target: impl Into<String>, met: bool) -> Row {
        self.target = Some((target.into(), met));
        self
    }
}

/// A progress line on stderr, so that a person sees the bench is alive.
pub fn progress(msg: &str) {
    eprintln!("bench: {msg}");
}

/// Writes `len` pseudo-random bytes to `path`, from a fixed seed (xorshift64*): the same every run.
pub fn write_pseudo_random(path: &Path, len: usize) -> io::Result<()> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut file = File::create(path)?;
    let mut buf = Vec::with_capacity(CHUNK);
    let mut left = len;
    while left > 0 {
        buf.clear();
        while buf.len() < CHUNK {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            buf.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let n = left.min(CHUNK);
        file.write_all(&buf[..n])?;
        left -= n;
    }
    Ok(())
}

/// Whether two files hold the same bytes (compared a chunk at a time).
pub fn same_contents(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0; CHUNK], vec![0; CHUNK]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// The peak RSS in KiB (`VmHWM`) in a `/proc/PID/status` file.
pub fn peak_rss_kib(status_file: &str) -> Option<u64> {
    let status = fs::read_to_string(status_file).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// Milliseconds with a precision that suits the size.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{:.1} s", ms / 1e3)
    } else if ms >= 1_000.0 {
        format!("{:.2} s", ms / 1e3)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
    }

    #[test]
    fn random_files_are_fixed_and_varied() {
        let dir = std::env::temp_dir().join(format!("bench_test_random.{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
        write_pseudo_random(&a, 100_000).unwrap();
        write_pseudo_random(&b, 100_000).unwrap();
        write_pseudo_random(&c, 99_999).unwrap();
        let bytes = fs::read(&a).unwrap();
        assert_eq!(bytes.len(), 100_000);
        assert!(bytes.iter().filter(|&&x| x == bytes[0]).count() < 1000);
        assert_eq!(&fs::read(&c).unwrap()[..], &bytes[..99_999]);
        assert!(same_contents(&a, &b).unwrap());
        assert!(!same_contents(&a, &c).unwrap());
        fs::write(&b, [&bytes[..70_000], &[bytes[70_000] ^ 1], &bytes[70_001..]].concat()).unwrap();
        assert!(!same_contents(&a, &b).unwrap());
        fs::remove_dir_all(&dir).unwrap();
        assert!(peak_rss_kib("/proc/self/status").unwrap() > 0);
    }

    #[test]
    fn a_failing_run_is_an_error_that_quotes_stderr() {
        use std::os::unix::fs::PermissionsExt;
        let env =
            Env::new(std::env::temp_dir().join(format!("bench_test_root.{}", std::process::id())), vec![]).unwrap();
        let exe = env.root.join("version_z/mini_hypervisor");
        fs::create_dir_all(exe.parent().unwrap()).unwrap();
        fs::write(&exe, "#!/bin/sh\necho \"$@\"\necho boom >&2\nexit $1\n").unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        let ok = env.hypervisor('z', &words("0 a b"), Stdout::Keep).unwrap();
        assert_eq!((ok.stdout.as_slice(), ok.stderr.as_str()), (&b"0 a b\n"[..], "boom\n"));
        let err = env.hypervisor('z', &words("3"), Stdout::Discard).unwrap_err();
        assert!(err.contains("exit status: 3") && err.contains("boom"), "{err}");
        fs::remove_dir_all(&env.root).unwrap();
    }

    #[test]
    fn a_traced_run_reads_the_childs_own_peak_rss_and_keeps_its_status() {
        use std::os::unix::process::ExitStatusExt;
        let sh = |script: &str, traced| {
            let mut cmd = Command::new("/bin/sh");
            cmd.args(["-c", script]);
            run(&mut cmd, File::create("/dev/null").unwrap(), traced).unwrap()
        };
        let r = sh("exit 3", true);
        assert_eq!(r.status.code(), Some(3));
        assert!(r.peak_rss_kib.is_some_and(|k| k > 0), "{r:?}");
        assert!(sh("exit 3", false).peak_rss_kib.is_none());
        // A signal the child gets on the way is passed on: here it kills the child.
        let r = sh("kill -USR1 $$; exit 0", true);
        assert_eq!(r.status.signal(), Some(libc::SIGUSR1), "{r:?}");
        // The peak is the child's own, not the bench's: a child that touches 64 MiB shows it.
        let r = sh("x=$(head -c 67108864 /dev/zero | tr '\\0' a); exit 0", true);
        assert!(r.peak_rss_kib.is_some_and(|k| k > 64 * 1024), "{r:?}");
    }

    #[test]
    fn formats_times() {
        assert_eq!(fmt_ms(3.456), "3.46 ms");
        assert_eq!(fmt_ms(123.4), "123 ms");
        assert_eq!(fmt_ms(1234.0), "1.23 s");
        assert_eq!(fmt_ms(14_123.0), "14.1 s");
    }
}
