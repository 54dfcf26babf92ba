//! The five benchmarks, one function each. Every one returns its table rows, or an error if a run
//! failed or produced the wrong output.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use crate::harness::{Env, Hv, Row, Stdout, fmt_ms, median, progress, same_contents, words, write_pseudo_random};

/// The numbers of a VM's `--stats` block (version A prints one block).
#[derive(Debug)]
struct VmStats {
    exits: u64,
    wall_ms: f64,
    handling_ms: f64,
}

/// Reads `  exits: N total, ...` and `  time: X ms wall, Y ms in KVM_RUN, Z ms handling exits (...)`.
fn parse_stats(stderr: &str) -> Result<VmStats, String> {
    let numbers = |line: &str| -> Vec<f64> { line.split_whitespace().filter_map(|w| w.parse().ok()).collect() };
    let exits = stderr.lines().find_map(|l| l.trim().strip_prefix("exits: ")?.split_whitespace().next()?.parse().ok());
    let times = stderr.lines().find(|l| l.trim().starts_with("time: ")).map(numbers);
    match (exits, times.as_deref()) {
        (Some(exits), Some(&[wall_ms, _in_run_ms, handling_ms, ..])) => Ok(VmStats { exits, wall_ms, handling_ms }),
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

/// Milliseconds with a precision that suits the size, and this value as a multiple of each of
/// `others`, e.g. `2.10 ms (0.95× \`x\`, 1.20× \`y\`)`.
fn with_ratios(value: f64, shown: String, others: &[(String, f64)]) -> String {
    if others.is_empty() {
        return shown;
    }
    let ratios: Vec<String> = others.iter().map(|(name, o)| format!("{:.2}× {name}", value / o)).collect();
    format!("{shown} ({})", ratios.join(", "))
}

/// Our three versions, then the other binaries named on the command line.
fn all_hypervisors(env: &Env) -> Vec<Hv> {
    let mut all: Vec<Hv> = ['a', 'b', 'c'].iter().map(|&v| Hv::ours(&env.root, v)).collect();
    all.extend(env.others.iter().cloned());
    all
}

/// `-q` (ours only) and then `args`.
fn args_for(hv: &Hv, args: &str) -> Vec<OsString> {
    if hv.ours { words(&format!("-q {args}")) } else { words(args) }
}

/// Benchmark 1: Startup and memory: every version (and every other binary) runs `guest.img` (prints 14
/// bytes and halts), stdout to /dev/null, in interleaved rounds so that a busy moment of the
/// machine hits them all alike; then its peak RSS with an idle 8 MiB VM.
pub fn startup(env: &Env) -> Result<Vec<Row>, String> {
    const ROUNDS: usize = 40;
    const RSS_RUNS: usize = 5;
    const START_ARGS: &str = "-m 2 -p 2";
    const RSS_ARGS: &str = "-m 8 -p 4";
    let all = all_hypervisors(env);
    progress(&format!(
        "startup: {} binaries × {ROUNDS} runs of guest.img, then {RSS_RUNS} traced runs each",
        all.len()
    ));
    // guest.img as it lies in guest/, with guest.elf beside it, and a copy alone in a directory:
    // with no crash, no --trace and no --gdb, our hypervisors never open the ELF, so the two
    // start alike.
    let alone = env.root.join("target/bench/alone");
    fs::create_dir_all(&alone).map_err(|e| format!("{}: {e}", alone.display()))?;
    fs::copy(env.root.join("guest/guest.img"), alone.join("guest.img")).map_err(|e| format!("guest.img: {e}"))?;
    let alone_arg = format!("{START_ARGS} -g {}", alone.join("guest.img").display());
    let mut walls = vec![vec![]; all.len()];
    let mut walls_alone = vec![vec![]; all.len()];
    for round in 0..ROUNDS {
        for ((hv, wall), wall_alone) in all.iter().zip(&mut walls).zip(&mut walls_alone) {
            let beside =
                || env.run(hv, &args_for(hv, &format!("{START_ARGS} -g guest/guest.img")), Stdout::Discard, false);
            if !hv.ours {
                wall.push(ms(beside()?.wall));
                continue;
            }
            // One round the image with its ELF first, the next the image alone first.
            let alone = || env.run(hv, &args_for(hv, &alone_arg), Stdout::Discard, false);
            let (first, second) = if round % 2 == 0 { (beside()?, alone()?) } else { (alone()?, beside()?) };
            let (with_elf, without) = if round % 2 == 0 { (first, second) } else { (second, first) };
            wall.push(ms(with_elf.wall));
            wall_alone.push(ms(without.wall));
        }
    }
    let mut rss = vec![vec![]; all.len()];
    for _ in 0..RSS_RUNS {
        for (hv, rss) in all.iter().zip(&mut rss) {
            let o = env.run(hv, &args_for(hv, &format!("{RSS_ARGS} -g guest/guest.img")), Stdout::Discard, true)?;
            rss.push(o.peak_rss_kib.unwrap_or(0) as f64);
        }
    }
    let walls: Vec<f64> = walls.iter().map(|w| median(w)).collect();
    let rss: Vec<f64> = rss.iter().map(|r| median(r)).collect();
    let others = |values: &[f64]| -> Vec<(String, f64)> {
        all.iter().zip(values).filter(|(hv, _)| !hv.ours).map(|(hv, &v)| (hv.name.clone(), v)).collect()
    };
    let (other_walls, other_rss) = (others(&walls), others(&rss));
    let mut rows = vec![];
    for (i, hv) in all.iter().enumerate() {
        let w = if hv.ours { &other_walls[..] } else { &[] };
        let what = format!("Startup: `guest.img` `{START_ARGS}`, spawn to exit: {}", hv.name);
        rows.push(Row::new(what, ROUNDS, with_ratios(walls[i], fmt_ms(walls[i]), w)));
        if hv.ours {
            let alone = median(&walls_alone[i]);
            let what = format!("Startup, `guest.elf` beside the image / the image alone: {}", hv.name);
            let value = format!("{} / {}: {:.3}×", fmt_ms(walls[i]), fmt_ms(alone), walls[i] / alone);
            rows.push(Row::new(what, ROUNDS, value).target("≤ 1.02×", walls[i] / alone <= 1.02));
        }
    }
    for (i, hv) in all.iter().enumerate() {
        let r = if hv.ours { &other_rss[..] } else { &[] };
        let what = format!("Peak RSS: idle 8 MiB VM, `guest.img` `{RSS_ARGS}`: {}", hv.name);
        rows.push(Row::new(what, RSS_RUNS, with_ratios(rss[i], format!("{:.0} KiB", rss[i]), r)));
    }
    Ok(rows)
}

/// The serial guests: one `out` per byte, and one `rep outsb` for all of them.
const SERIAL_GUESTS: [(&str, &str); 2] =
    [("bench_out", "250,000 one-byte `out`s"), ("bench_outsb", "250,000 bytes in one `rep outsb`")];
/// What each serial guest writes: 5000 lines of 49 `x` and a newline.
const SERIAL_BYTES: u64 = 250_000;
const SERIAL_LINE: &[u8] = b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n";

/// One serial run: process wall time per byte of stdout, in ns. Ours must print exactly the
/// guest's bytes; another binary at least them (it may add banners).
fn serial_once(env: &Env, hv: &Hv, stem: &str, extra: &str) -> Result<f64, String> {
    let o = env.run(hv, &args_for(hv, &format!("{extra}-m 2 -p 2 -g guest/{stem}.img")), Stdout::Keep, false)?;
    let ok = if hv.ours {
        o.stdout_len == SERIAL_BYTES && o.stdout.starts_with(SERIAL_LINE)
    } else {
        o.stdout_len >= SERIAL_BYTES
    };
    if !ok {
        return Err(format!(
            "{} on {stem}.img wrote {} bytes to stdout, expected {SERIAL_BYTES}",
            hv.name, o.stdout_len
        ));
    }
    Ok(o.wall.as_nanos() as f64 / SERIAL_BYTES as f64)
}

fn ns(v: f64) -> String {
    let v = v.round() as u64;
    if v >= 1000 { format!("{},{:03} ns/byte", v / 1000, v % 1000) } else { format!("{v} ns/byte") }
}

/// Benchmark 2: Serial output cost: 250,000 bytes through port 0xE9 to a file, one `out` per byte and one
/// `rep outsb`, with the coalesced ring (the default) and with `--no-coalesce` (where a version
/// has it), beside the other binaries. Target: ours coalesced at most half the fastest other's.
pub fn serial(env: &Env) -> Result<Vec<Row>, String> {
    const RUNS: usize = 3;
    let mut rows = vec![];
    for (stem, what) in SERIAL_GUESTS {
        let mut fastest_other: Option<(String, f64)> = None;
        let mut other_rows = vec![];
        for hv in &env.others {
            progress(&format!("serial: {}, {stem}.img, {RUNS} runs", hv.name));
            let v = median(&(0..RUNS).map(|_| serial_once(env, hv, stem, "")).collect::<Result<Vec<_>, _>>()?);
            other_rows.push(Row::new(format!("Serial: {what} (`{stem}.img`) to a file: {}", hv.name), RUNS, ns(v)));
            if fastest_other.as_ref().is_none_or(|(_, f)| v < *f) {
                fastest_other = Some((hv.name.clone(), v));
            }
        }
        for v in ['a', 'b', 'c'] {
            let hv = Hv::ours(&env.root, v);
            progress(&format!("serial: {}, {stem}.img, {RUNS} runs", hv.name));
            let on = median(&(0..RUNS).map(|_| serial_once(env, &hv, stem, "")).collect::<Result<Vec<_>, _>>()?);
            // Without the ring every byte is a VM exit (seconds here): three runs for A, one for B and C.
            let off_runs = if v == 'a' { RUNS } else { 1 };
            let (value, runs) = if env.has_no_coalesce(v) {
                progress(&format!("serial: {} --no-coalesce, {stem}.img, {off_runs} runs", hv.name));
                let off = (0..off_runs)
                    .map(|_| serial_once(env, &hv, stem, "--no-coalesce "))
                    .collect::<Result<Vec<_>, _>>()?;
                let off = median(&off);
                (format!("{}; `--no-coalesce` {}: {:.2}×", ns(on), ns(off), on / off), format!("{RUNS} + {off_runs}"))
            } else {
                (format!("{}; `--no-coalesce` n/a", ns(on)), RUNS.to_string())
            };
            let row = Row::new(format!("Serial: {what} (`{stem}.img`) to a file: {}", hv.name), runs, value);
            rows.push(match &fastest_other {
                Some((name, f)) => row.target(format!("≤ 0.5× {name}"), on <= 0.5 * f),
                None => row,
            });
        }
        rows.extend(other_rows);
    }
    rows.push(exit_handling_share(env)?);
    Ok(rows)
}

/// The share of version A's wall time spent handling exits (`--stats`), one-byte `out`s.
fn exit_handling_share(env: &Env) -> Result<Row, String> {
    progress("serial: version A --stats, bench_out.img, 1 run");
    let o = env.hypervisor('a', &words("-q --stats -m 2 -p 2 -g guest/bench_out.img"), Stdout::Discard)?;
    let what = "Serial: version A, `bench_out.img`: handling exits / VM wall time (`--stats`)";
    Ok(match parse_stats(&o.stderr) {
        Ok(s) => {
            let share = 100.0 * s.handling_ms / s.wall_ms;
            Row::new(what, 1, format!("{share:.2} % ({} exits)", s.exits)).target("< 5 %", share < 5.0)
        }
        Err(_) => Row::new(what, 1, "n/a (no `time:` line in `--stats`)"),
    })
}

/// Runs one copy guest on a fresh `--files-dir`, checks the private `copy.bin`, returns the wall time in ms.
fn copy_once(env: &Env, stem: &str, big: &Path, size: u64) -> Result<f64, String> {
    let dir = env.fresh("files");
    fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut args = words(&format!("-q -m 4 -p 2 -g guest/{stem}.img -f"));
    args.extend([big.into(), "--files-dir".into(), dir.clone().into()]);
    let o = env.hypervisor('c', &args, Stdout::Keep)?;
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

/// A pseudo-random `big.bin` of `size` bytes in its own directory (the guests open it by that name).
fn big_file(env: &Env, size: u64) -> Result<PathBuf, String> {
    let dir = env.fresh("big");
    let big = dir.join("big.bin");
    fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    write_pseudo_random(&big, size as usize).map_err(|e| format!("{}: {e}", big.display()))?;
    Ok(big)
}

/// Benchmark 3: File copy of a shared file: byte protocol (one exit per byte, 256 KiB so that it takes
/// seconds, not a minute) against the bulk commands (1 MiB); compared as MiB/s.
pub fn copy(env: &Env) -> Result<Vec<Row>, String> {
    const BULK_RUNS: usize = 5;
    const BYTE_SIZE: u64 = 256 << 10;
    const BULK_SIZE: u64 = 1 << 20;
    let (small, big) = (big_file(env, BYTE_SIZE)?, big_file(env, BULK_SIZE)?);
    progress("copy: version C, bench_bytecopy.img, 256 KiB, 1 run (about 10 s here)");
    let byte = copy_once(env, "bench_bytecopy", &small, BYTE_SIZE)?;
    progress(&format!("copy: version C, bench_bulkcopy.img, 1 MiB, {BULK_RUNS} runs"));
    let bulk: Vec<f64> =
        (0..BULK_RUNS).map(|_| copy_once(env, "bench_bulkcopy", &big, BULK_SIZE)).collect::<Result<_, _>>()?;
    let bulk = median(&bulk);
    let mib_s = |ms: f64, size: u64| -> (f64, String) {
        let rate = size as f64 / (1 << 20) as f64 * 1e3 / ms;
        let shown = if rate >= 10.0 { format!("{rate:.0}") } else { format!("{rate:.3}") };
        (rate, format!("{shown} MiB/s ({})", fmt_ms(ms)))
    };
    let ((byte_rate, byte_shown), (bulk_rate, bulk_shown)) = (mib_s(byte, BYTE_SIZE), mib_s(bulk, BULK_SIZE));
    let speedup = bulk_rate / byte_rate;
    Ok(vec![
        Row::new("File copy 256 KiB: version C, `bench_bytecopy.img`, byte protocol (`-m 4 -p 2`)", 1, byte_shown),
        Row::new("File copy 1 MiB: version C, `bench_bulkcopy.img`, bulk commands", BULK_RUNS, bulk_shown),
        Row::new(
            "File copy: speed-up bulk vs byte protocol (MiB/s)",
            format!("1 + {BULK_RUNS}"),
            format!("{speedup:.0}×"),
        )
        .target("≥ 1000×", speedup >= 1000.0),
    ])
}

/// Benchmark 4: Many VMs: version B runs N copies of `guest.img`; wall time (untraced runs) and peak RSS
/// (traced runs, `VmHWM` at exit) of the process.
pub fn many_vms(env: &Env) -> Result<Vec<Row>, String> {
    const RUNS: usize = 3;
    const RSS_TARGET_KIB: f64 = 16.0 * 1024.0;
    let b = Hv::ours(&env.root, 'b');
    let mut rows = vec![];
    for n in [1, 8, 32, 64] {
        progress(&format!("many VMs: version B, {n} × guest.img, {RUNS} + {RUNS} runs"));
        let mut args = words("-q -m 2 -p 4 -g");
        args.extend(std::iter::repeat_n("guest/guest.img".into(), n));
        let (mut wall, mut rss) = (vec![], vec![]);
        for traced in [false, true] {
            for _ in 0..RUNS {
                let o = env.run(&b, &args, Stdout::Keep, traced)?;
                check_lines(&o.stdout, n, "Hello, world!")?;
                match o.peak_rss_kib {
                    Some(kib) => rss.push(kib as f64),
                    None => wall.push(ms(o.wall)),
                }
            }
        }
        let rss = median(&rss);
        let row = Row::new(
            format!("Many VMs: version B, {n} × `guest.img` (`-m 2 -p 4`): wall time / peak RSS"),
            format!("{RUNS} + {RUNS}"),
            format!("{} / {:.1} MiB ({rss:.0} KiB)", fmt_ms(median(&wall)), rss / 1024.0),
        );
        rows.push(if n == 64 { row.target("< 16 MiB peak RSS", rss < RSS_TARGET_KIB) } else { row });
    }
    Ok(rows)
}

/// Benchmark 5: Parallelism: one `compute.img` VM against two at once (one thread each, 2 cores here).
pub fn parallel(env: &Env) -> Result<Vec<Row>, String> {
    const RUNS: usize = 5;
    progress(&format!("parallel: version B, 1 and 2 × compute.img in turn, {RUNS} runs each (about 0.6 s each here)"));
    // In turn, 1 then 2 VMs, so that other work on the machine weighs on both alike.
    let mut wall = [vec![], vec![]];
    for _ in 0..RUNS {
        for (n, wall) in [1, 2].into_iter().zip(&mut wall) {
            let mut args = words("-q -m 2 -p 2 -g");
            args.extend(std::iter::repeat_n("guest/compute.img".into(), n));
            let o = env.hypervisor('b', &args, Stdout::Keep)?;
            check_lines(&o.stdout, n, "compute done 2922840257")?;
            wall.push(ms(o.wall));
        }
    }
    let walls = [median(&wall[0]), median(&wall[1])];
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
        assert_eq!((s.wall_ms, s.handling_ms), (14012.5, 150.125));
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
