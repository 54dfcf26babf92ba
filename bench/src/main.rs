//! `make bench`: runs the benchmarks of the three mini_hypervisor versions and prints a Markdown
//! table (with the machine it ran on) to stdout, ready to paste into README.md. Progress goes to
//! stderr. Exit status 1 if any run fails or prints the wrong output, 2 for a usage error.
//!
//! Usage: `bench [NAME...]` from anywhere (paths are relative to the workspace root); NAME is one
//! of startup, serial, copy, vms, parallel (default: all). It needs the release binaries in
//! `version_*/mini_hypervisor` and the guest images, so run it through `make bench`.
//! Every `unsafe` of the crate is in `sys.rs` (`wait4`): the crate root denies `unsafe_code`,
//! `sys.rs` alone allows it, and every other module forbids it.
#![deny(unsafe_code)]

mod benches;
mod harness;
mod sys;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use harness::{Env, Row, progress};

type Bench = fn(&Env) -> Result<Vec<Row>, String>;

const BENCHES: [(&str, Bench); 5] = [
    ("startup", benches::startup),
    ("serial", benches::serial),
    ("copy", benches::copy),
    ("vms", benches::many_vms),
    ("parallel", benches::parallel),
];

/// Files the benchmarks need, relative to the workspace root.
const NEEDED: [&str; 8] = [
    "version_a/mini_hypervisor",
    "version_b/mini_hypervisor",
    "version_c/mini_hypervisor",
    "guest/guest.img",
    "guest/bench_out.img",
    "guest/bench_bytecopy.img",
    "guest/bench_bulkcopy.img",
    "guest/compute.img",
];

fn usage() -> String {
    let names: Vec<&str> = BENCHES.iter().map(|b| b.0).collect();
    format!("usage: bench [NAME...]   (NAME: {}; default: all)", names.join(", "))
}

/// `uname -r`, the CPU model and the number of CPUs this process may use (what `nproc` prints).
fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("Linux {}, {model}, nproc = {nproc}", kernel.trim())
}

fn print_table(rows: &[Row]) {
    println!("Machine: {}", machine());
    println!();
    println!("| benchmark | runs | value (median) | target | met? |");
    println!("|---|---:|---|---|---|");
    for r in rows {
        let (target, met) = match &r.target {
            Some((t, met)) => (t.as_str(), if *met { "met" } else { "**missed**" }),
            None => ("–", "–"),
        };
        println!("| {} | {} | {} | {target} | {met} |", r.what, r.runs, r.value);
    }
    println!();
    println!(
        "Wall times are from spawn to exit of the hypervisor process. Peak RSS is `ru_maxrss` of the \
         hypervisor process (from `wait4`); it cannot be lower than the bench's own peak RSS ({} KiB here).",
        harness::own_peak_rss_kib().map_or("?".to_owned(), |k| k.to_string())
    );
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{}", usage());
        return ExitCode::SUCCESS;
    }
    if let Some(bad) = args.iter().find(|a| !BENCHES.iter().any(|b| b.0 == a.as_str())) {
        eprintln!("bench: unknown benchmark {bad:?}\n{}", usage());
        return ExitCode::from(2);
    }
    let selected: Vec<&(&str, Bench)> =
        BENCHES.iter().filter(|b| args.is_empty() || args.iter().any(|a| a == b.0)).collect();

    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench/ is inside the workspace").into();
    if let Some(missing) = NEEDED.iter().find(|p| !root.join(p).is_file()) {
        eprintln!("bench: {} is missing: run `make` (or `make bench`) first", root.join(missing).display());
        return ExitCode::FAILURE;
    }
    let env = match Env::new(root) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("bench: cannot create a temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };

    let start = Instant::now();
    let mut rows = vec![];
    for (name, bench) in selected {
        match bench(&env) {
            Ok(r) => rows.extend(r),
            Err(e) => {
                eprintln!("bench: FAILED in {name}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    print_table(&rows);
    progress(&format!("done in {:.0} s", start.elapsed().as_secs_f64()));
    ExitCode::SUCCESS
}
