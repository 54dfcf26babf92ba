//! The five benchmarks, one function each. Every one returns its table rows, or an error if a run
//! failed or produced the wrong output.
#![forbid(unsafe_code)]

use std::fs;
use std::path::Path;

use crate::harness::{Env, Row, fmt_ms, median, own_peak_rss_kib, progress, same_contents, words, write_pseudo_random};

/// The numbers of a VM's `--stats` block (version A prints one block).
#[derive(Debug)]
struct VmStats {
    exits: u64,
    wall_ms: f64,
    in_run_ms: f64,
    handling_ms: f64,
}

/// Reads `  exits: N total, ...` and `  time: X ms wall, Y ms in KVM_RUN, Z ms handling exits (...)`.
fn parse_stats(stderr: &str) -> Result<VmStats, String> {
    let numbers = |line: &str| -> Vec<f64> { line.split_whitespace().filter_map(|w| w.parse().ok()).collect() };
    let exits = stderr.lines().find_map(|l| l.trim().strip_prefix("exits: ")?.split_whitespace().next()?.parse().ok());
    let times = stderr.lines().find(|l| l.trim().starts_with("time: ")).map(numbers);
    match (exits, times.as_deref()) {
        (Some(exits), Some(&[wall_ms, in_run_ms, handling_ms, ..])) => {
            Ok(VmStats { exits, wall_ms, in_run_ms, handling_ms })
        }
        _ => Err(format!("no --stats block in the hypervisor's stderr:\n{stderr}")),
    }
}

/// Checks that stdout is exactly `n` lines that each end with `ending` (after an optional `[vmN] `).
fn check_lines(stdout: &[u8], n: usize, ending: &str) -> Result<(), String> {
    let text = String::from_utf8_lossy(stdout);
    if text.lines().count() == n && text.ends_with('\n') && text.lines().all(|l| l.ends_with(ending)) {
        Ok(())
    } else {
        Err(format!("expected {n} lines ending in {ending:?} on stdout, got:\n{text}"))
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// 1. Startup: version A runs `guest.img` (prints 14 bytes and halts), stdout to /dev/null.
pub fn startup(env: &Env) -> Result<Vec<Row>, String> {
    const RUNS: usize = 10;
    let args = words("-q -m 2 -p 4 -g guest/guest.img");
    progress(&format!("startup: version A, guest.img, {RUNS} runs"));
    let walls: Vec<f64> =
        (0..RUNS).map(|_| env.hypervisor('a', &args, true).map(|o| ms(o.wall))).collect::<Result<_, _>>()?;
    Ok(vec![Row::new("Startup: version A, `guest.img` (`-m 2 -p 4`), process wall time", RUNS, fmt_ms(median(&walls)))])
}

/// 2. Serial exit cost: `bench_out.img` does 1,000,000 one-byte `out`s to 0xE9 (one exit each).
pub fn serial(env: &Env) -> Result<Vec<Row>, String> {
    const RUNS: usize = 3;
    const BYTES: usize = 1_000_000;
    let args = words("-q --stats -m 2 -p 2 -g guest/bench_out.img");
    let (mut wall, mut per_exit, mut in_run, mut handling, mut share) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 1..=RUNS {
        progress(&format!("serial: version A, bench_out.img, run {i}/{RUNS} (about 15 s each here)"));
        let o = env.hypervisor('a', &args, false)?;
        if o.stdout_len != BYTES as u64 {
            return Err(format!("bench_out.img wrote {} bytes to stdout, expected {BYTES}", o.stdout_len));
        }
        let s = parse_stats(&o.stderr)?;
        if s.exits < BYTES as u64 {
            return Err(format!("--stats counted {} exits, expected at least {BYTES}", s.exits));
        }
        wall.push(ms(o.wall));
        per_exit.push(o.wall.as_nanos() as f64 / s.exits as f64);
        in_run.push(s.in_run_ms);
        handling.push(s.handling_ms);
        share.push(100.0 * s.handling_ms / s.wall_ms);
    }
    let share = median(&share);
    let what = "Serial: version A, `bench_out.img` (1,000,000 one-byte `out`s, `-m 2 -p 2`)";
    Ok(vec![
        Row::new(format!("{what}, process wall time"), RUNS, fmt_ms(median(&wall))),
        Row::new("Serial: wall time per VM exit (process wall / exits)", RUNS, format!("{:.0} ns", median(&per_exit))),
        Row::new("Serial: time in `KVM_RUN` (`--stats`)", RUNS, fmt_ms(median(&in_run))),
        Row::new("Serial: time handling exits (`--stats`)", RUNS, fmt_ms(median(&handling))),
        Row::new("Serial: handling exits / VM wall time (`--stats`)", RUNS, format!("{share:.2} %"))
            .target("< 5 %", share < 5.0),
    ])
}

/// Runs one copy guest on a fresh `--files-dir`, checks the private `copy.bin`, returns the wall time in ms.
fn copy_once(env: &Env, stem: &str, big: &Path, size: usize) -> Result<f64, String> {
    let dir = env.fresh("files");
    fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut args = words(&format!("-q -m 4 -p 2 -g guest/{stem}.img -f"));
    args.extend([big.into(), "--files-dir".into(), dir.clone().into()]);
    let o = env.hypervisor('c', &args, false)?;
    let expected = format!("copied {size}\n");
    if o.stdout != expected.as_bytes() {
        return Err(format!("{stem}.img printed {:?}, expected {expected:?}", String::from_utf8_lossy(&o.stdout)));
    }
    let copy = dir.join(format!("{stem}_vm0_files/copy.bin"));
    if !same_contents(big, &copy).map_err(|e| format!("{}: {e}", copy.display()))? {
        return Err(format!("{} differs from {}", copy.display(), big.display()));
    }
    let _ = fs::remove_dir_all(&dir);
    Ok(ms(o.wall))
}

/// 3. File copy of a 1 MiB shared file: byte protocol (one exit per byte) against the bulk commands.
pub fn copy(env: &Env) -> Result<Vec<Row>, String> {
    const BULK_RUNS: usize = 5;
    const SIZE: usize = 1 << 20;
    let big = env.tmp.join("big.bin");
    write_pseudo_random(&big, SIZE).map_err(|e| format!("{}: {e}", big.display()))?;
    progress("copy: version C, bench_bytecopy.img, 1 run (about 35 s here)");
    let byte = copy_once(env, "bench_bytecopy", &big, SIZE)?;
    progress(&format!("copy: version C, bench_bulkcopy.img, {BULK_RUNS} runs"));
    let bulk: Vec<f64> =
        (0..BULK_RUNS).map(|_| copy_once(env, "bench_bulkcopy", &big, SIZE)).collect::<Result<_, _>>()?;
    let bulk = median(&bulk);
    let mib_s = |ms: f64| {
        let rate = 1e3 / ms;
        if rate >= 10.0 {
            format!("{rate:.0} MiB/s ({})", fmt_ms(ms))
        } else {
            format!("{rate:.3} MiB/s ({})", fmt_ms(ms))
        }
    };
    let speedup = byte / bulk;
    Ok(vec![
        Row::new("File copy 1 MiB: version C, `bench_bytecopy.img`, byte protocol (`-m 4 -p 2`)", 1, mib_s(byte)),
        Row::new("File copy 1 MiB: version C, `bench_bulkcopy.img`, bulk commands", BULK_RUNS, mib_s(bulk)),
        Row::new("File copy: speed-up bulk vs byte protocol", format!("1 + {BULK_RUNS}"), format!("{speedup:.0}×"))
            .target("≥ 1000×", speedup >= 1000.0),
    ])
}

/// 4. Many VMs: version B runs N copies of `guest.img`; wall time and peak RSS of the process.
pub fn many_vms(env: &Env) -> Result<Vec<Row>, String> {
    const RUNS: usize = 3;
    const RSS_TARGET_KIB: f64 = 16.0 * 1024.0;
    let mut rows = vec![];
    for n in [1, 8, 32, 64] {
        progress(&format!("many VMs: version B, {n} × guest.img, {RUNS} runs"));
        let mut args = words("-q -m 2 -p 4 -g");
        args.extend(std::iter::repeat_n("guest/guest.img".into(), n));
        let (mut wall, mut rss) = (vec![], vec![]);
        for _ in 0..RUNS {
            let o = env.hypervisor('b', &args, false)?;
            check_lines(&o.stdout, n, "Hello, world!")?;
            wall.push(ms(o.wall));
            rss.push(o.max_rss_kib as f64);
        }
        let rss = median(&rss);
        // A value at the bench's own peak RSS only says "at most this" (see `harness::run`).
        let at_most = if own_peak_rss_kib().is_some_and(|floor| rss <= floor as f64) { "≤ " } else { "" };
        let row = Row::new(
            format!("Many VMs: version B, {n} × `guest.img` (`-m 2 -p 4`): wall time / peak RSS"),
            RUNS,
            format!("{} / {at_most}{:.1} MiB ({rss:.0} KiB)", fmt_ms(median(&wall)), rss / 1024.0),
        );
        rows.push(if n == 64 { row.target("< 16 MiB peak RSS", rss < RSS_TARGET_KIB) } else { row });
    }
    Ok(rows)
}

/// 5. Parallelism: one `compute.img` VM against two at once (one thread each, 2 cores here).
pub fn parallel(env: &Env) -> Result<Vec<Row>, String> {
    const RUNS: usize = 3;
    let mut walls = [0.0; 2];
    for (n, median_wall) in [1, 2].into_iter().zip(&mut walls) {
        progress(&format!("parallel: version B, {n} × compute.img, {RUNS} runs (about 1.5 s each)"));
        let mut args = words("-q -m 2 -p 2 -g");
        args.extend(std::iter::repeat_n("guest/compute.img".into(), n));
        let mut wall = vec![];
        for _ in 0..RUNS {
            let o = env.hypervisor('b', &args, false)?;
            check_lines(&o.stdout, n, "compute done 2922840257")?;
            wall.push(ms(o.wall));
        }
        *median_wall = median(&wall);
    }
    let ratio = walls[1] / walls[0];
    Ok(vec![
        Row::new("Parallelism: version B, 1 × `compute.img` (`-m 2 -p 2`), wall time", RUNS, fmt_ms(walls[0])),
        Row::new("Parallelism: version B, 2 × `compute.img` at once, wall time", RUNS, fmt_ms(walls[1])),
        Row::new("Parallelism: 2 VMs / 1 VM wall time", format!("{RUNS} + {RUNS}"), format!("{ratio:.2}×"))
            .target("≤ 1.15×", ratio <= 1.15),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_stats_block() {
        let stderr = "mini_hypervisor: vm0 (guest/bench_out.img): stats\n  exits: 1000001 total, 1 hlt, 0 other\n  \
                      port 0x00e9: 1000000 out exits (1000000 bytes), 0 in exits (0 bytes)\n  \
                      time: 14012.500 ms wall, 13800.250 ms in KVM_RUN, 150.125 ms handling exits (150 ns per exit)\n";
        let s = parse_stats(stderr).unwrap();
        assert_eq!(s.exits, 1_000_001);
        assert_eq!((s.wall_ms, s.in_run_ms, s.handling_ms), (14012.5, 13800.25, 150.125));
        assert!(parse_stats("nothing here\n").is_err());
    }

    #[test]
    fn checks_output_lines() {
        assert!(check_lines(b"[vm1] Hello, world!\n[vm0] Hello, world!\n", 2, "Hello, world!").is_ok());
        assert!(check_lines(b"Hello, world!\n", 2, "Hello, world!").is_err());
        assert!(check_lines(b"Hello, world!", 1, "Hello, world!").is_err());
        assert!(check_lines(b"open failed\n", 1, "Hello, world!").is_err());
    }
}
