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
    pub max_rss_kib: u64,
}

/// Spawns `cmd` (stdin from /dev/null, stdout to `stdout`) and waits for it.
/// `wall` runs from just before the spawn to the moment the child has been reaped.
///
/// `max_rss_kib` is never below the bench's own peak RSS: Linux carries the RSS of the memory the
/// child had before `exec` (here the bench's, as std spawns with `vfork`) into `ru_maxrss`. So the
/// bench keeps its own footprint small (no whole 1 MiB files in memory), and `own_peak_rss_kib`
/// tells how low a measurement can go.
pub fn run(cmd: &mut Command, stdout: File) -> io::Result<Run> {
    let start = Instant::now();
    let child = cmd.stdin(Stdio::null()).stdout(stdout).spawn()?;
    let (status, max_rss_kib) = sys::wait4(child.id())?;
    Ok(Run { wall: start.elapsed(), status, max_rss_kib })
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
    pub max_rss_kib: u64,
    /// The first `CHUNK` bytes of stdout, and its whole length.
    pub stdout: Vec<u8>,
    pub stdout_len: u64,
    pub stderr: String,
}

/// Where the binaries are, and a private temporary directory (removed when dropped).
#[derive(Debug)]
pub struct Env {
    pub root: PathBuf,
    pub tmp: PathBuf,
    counter: Cell<u32>,
}

impl Env {
    pub fn new(root: PathBuf) -> io::Result<Env> {
        let tmp = std::env::temp_dir().join(format!("mini_hypervisor_bench.{}", std::process::id()));
        fs::create_dir_all(&tmp)?;
        Ok(Env { root, tmp, counter: Cell::new(0) })
    }

    /// A path in the temporary directory that nothing has used yet.
    pub fn fresh(&self, what: &str) -> PathBuf {
        let n = self.counter.get();
        self.counter.set(n + 1);
        self.tmp.join(format!("{what}.{n}"))
    }

    /// Runs `version_<v>/mini_hypervisor <args>` from the repository root with stdout and stderr
    /// going to files in the temporary directory (stdout to /dev/null if `discard_stdout`).
    /// Anything but exit status 0 is an error, which quotes the child's stderr.
    pub fn hypervisor(&self, v: char, args: &[OsString], discard_stdout: bool) -> Result<Output, String> {
        let exe = self.root.join(format!("version_{v}/mini_hypervisor"));
        let (out_path, err_path) = (self.fresh("stdout"), self.fresh("stderr"));
        let stdout_path: &Path = if discard_stdout { Path::new("/dev/null") } else { &out_path };
        let stdout = File::create(stdout_path).map_err(|e| format!("{}: {e}", stdout_path.display()))?;
        let stderr = File::create(&err_path).map_err(|e| format!("{}: {e}", err_path.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.args(args).current_dir(&self.root).stderr(stderr);
        let shown = format!("{} {}", exe.display(), args.join(OsStr::new(" ")).to_string_lossy());
        let r = run(&mut cmd, stdout).map_err(|e| format!("cannot run {shown}: {e}"))?;
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        if !r.status.success() {
            return Err(format!("{shown} failed ({}); its stderr:\n{stderr}", r.status));
        }
        let (mut stdout, mut stdout_len) = (Vec::new(), 0);
        if !discard_stdout {
            let file = File::open(&out_path).map_err(|e| format!("{}: {e}", out_path.display()))?;
            stdout_len = file.metadata().map_err(|e| e.to_string())?.len();
            file.take(CHUNK as u64).read_to_end(&mut stdout).map_err(|e| e.to_string())?;
        }
        let _ = fs::remove_file(&out_path);
        let _ = fs::remove_file(&err_path);
        Ok(Output { wall: r.wall, max_rss_kib: r.max_rss_kib, stdout, stdout_len, stderr })
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

/// This process's peak RSS in KiB (`VmHWM` in /proc/self/status), the floor of every `max_rss_kib`.
pub fn own_peak_rss_kib() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
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
        assert!(own_peak_rss_kib().unwrap() > 0);
    }

    #[test]
    fn a_failing_run_is_an_error_that_quotes_stderr() {
        use std::os::unix::fs::PermissionsExt;
        let env = Env::new(std::env::temp_dir().join(format!("bench_test_root.{}", std::process::id()))).unwrap();
        let exe = env.root.join("version_z/mini_hypervisor");
        fs::create_dir_all(exe.parent().unwrap()).unwrap();
        fs::write(&exe, "#!/bin/sh\necho \"$@\"\necho boom >&2\nexit $1\n").unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        let ok = env.hypervisor('z', &words("0 a b"), false).unwrap();
        assert_eq!((ok.stdout.as_slice(), ok.stderr.as_str()), (&b"0 a b\n"[..], "boom\n"));
        let err = env.hypervisor('z', &words("3"), true).unwrap_err();
        assert!(err.contains("exit status: 3") && err.contains("boom"), "{err}");
        fs::remove_dir_all(&env.root).unwrap();
    }

    #[test]
    fn formats_times() {
        assert_eq!(fmt_ms(3.456), "3.46 ms");
        assert_eq!(fmt_ms(123.4), "123 ms");
        assert_eq!(fmt_ms(1234.0), "1.23 s");
        assert_eq!(fmt_ms(14_123.0), "14.1 s");
    }
}
