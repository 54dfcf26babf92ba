//! `make bench`: runs the benchmarks of the three mini_hypervisor versions and prints a Markdown
//! table (with the machine it ran on) to stdout, ready to paste into docs/BENCHMARKS.md. Progress goes to
//! stderr. Exit status 1 if any run fails or prints the wrong output, 2 for a usage error.
//!
//! Usage: `bench [--other PATH]... [NAME...]` from anywhere (paths are relative to the workspace
//! root); NAME is one of startup, serial, copy, vms, parallel, stepping, stepi (default: all).
//! It needs the release binaries in `version_*/mini_hypervisor` and the guest images, so run it
//! through `make bench`.
//! `--other PATH` (repeatable; a value with spaces names several) sets another hypervisor binary
//! beside ours in the startup, memory and serial benchmarks, run with the same `-m -p -g` options
//! (e.g. the C hypervisor this project re-implements, as a yardstick).
//! Every `unsafe` of the crate is in `sys.rs` (`ptrace`, `waitpid`): the crate root denies
//! `unsafe_code`, `sys.rs` alone allows it, and every other module forbids it.
#![deny(unsafe_code)]

mod benches;
mod harness;
mod stepi;
mod stepping;
mod sys;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use harness::{Env, Hv, Row, progress};

type Bench = fn(&Env) -> Result<Vec<Row>, String>;
type Named = (&'static str, Bench);

const BENCHES: [Named; 7] = [
    ("startup", benches::startup),
    ("serial", benches::serial),
    ("copy", benches::copy),
    ("vms", benches::many_vms),
    ("parallel", benches::parallel),
    ("stepping", stepping::stepping),
    ("stepi", stepi::stepi),
];

/// Files the benchmarks need, relative to the workspace root.
const NEEDED: [&str; 11] = [
    "version_a/mini_hypervisor",
    "version_b/mini_hypervisor",
    "version_c/mini_hypervisor",
    "guest/guest.img",
    "guest/bench_out.img",
    "guest/bench_outsb.img",
    "guest/bench_bytecopy.img",
    "guest/bench_bulkcopy.img",
    "guest/compute.img",
    "guest/bench_step.img",
    "guest/bench_step.elf",
];

fn usage() -> String {
    let names: Vec<&str> = BENCHES.iter().map(|b| b.0).collect();
    format!("usage: bench [--other PATH]... [NAME...]   (NAME: {}; default: all)", names.join(", "))
}

/// `uname -r`, the CPU model, the number of CPUs this process may use (what `nproc` prints) and
/// the load average.
fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    // Other work on the machine shows in the wall times (above all in the parallelism rows).
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?");
    format!("Linux {}, {model}, nproc = {nproc}; load average (1 min) at the end: {load}", kernel.trim())
}

fn print_table(rows: &[Row]) {
    println!("Machine: {}", machine());
    println!();
    println!("| benchmark | runs | median | target | met? |");
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
        "Wall times run from spawn to exit of the hypervisor process. Peak RSS is `VmHWM` of the \
         hypervisor process, read while it is held at its exit (ptrace). Ours run with `-q`; \
         the ratios in brackets are ours / the other binary's."
    );
}

/// The command line: the other binaries (`--other PATH`) and the benchmarks to run.
fn parse(args: &[String]) -> Result<(Vec<Hv>, Vec<&'static Named>), String> {
    let (mut others, mut names) = (vec![], vec![]);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--other" {
            let value = it.next().ok_or_else(|| "--other needs a path".to_owned())?;
            others.extend(value.split_whitespace().map(Hv::other));
        } else if BENCHES.iter().any(|b| b.0 == a) {
            names.push(a.as_str());
        } else {
            return Err(format!("unknown benchmark or option {a:?}"));
        }
    }
    let selected = BENCHES.iter().filter(|b| names.is_empty() || names.contains(&b.0)).collect();
    Ok((others, selected))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{}", usage());
        return ExitCode::SUCCESS;
    }
    let (others, selected) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("bench: {e}\n{}", usage());
            return ExitCode::from(2);
        }
    };

    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("bench/ is inside the workspace").into();
    if let Some(missing) = NEEDED.iter().find(|p| !root.join(p).is_file()) {
        eprintln!("bench: {} is missing: run `make` (or `make bench`) first", root.join(missing).display());
        return ExitCode::FAILURE;
    }
    if let Some(bad) = others.iter().find(|o| !o.exe.is_file()) {
        eprintln!("bench: --other {}: no such file", bad.exe.display());
        return ExitCode::from(2);
    }
    let env = match Env::new(root, others) {
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
