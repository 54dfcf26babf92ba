//! `make beside`: runs the example guests of one version on our hypervisor and on another
//! program with the course's command line (the course's C solution, a student's own), each run
//! in a scratch directory laid out as the course expects, and prints one table of what differs.
//! See `options.rs` (its usage text) for the command line, `runs.rs` for what runs, `compare.rs` for what "the
//! same" means, `table.rs` for the table.
//!
//! Every `unsafe` of the crate is in `sys.rs` (process groups, child limits, the signal
//! handler, the terminal width): the crate root denies `unsafe_code`, `sys.rs` alone allows it,
//! and every other module forbids it.
#![deny(unsafe_code)]

mod compare;
mod options;
mod regex;
mod runner;
mod runs;
mod scratch;
mod sys;
mod table;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use options::Config;
use runs::Run;
use scratch::{Placed, Source};
use table::{Layout, Row, Verdict};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match options::parse(&args) {
        Ok(Some(config)) => config,
        Ok(None) => {
            print!("{}", options::usage());
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("beside: {message}");
            eprintln!("Usage: beside [OPTIONS] a|b|c HV   (beside --help, or make beside, says more)");
            return ExitCode::from(2);
        }
    };
    sys::catch_interrupts();
    match compare_all(&config) {
        Ok(_) if sys::interrupted().is_some() => ExitCode::from(130),
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("beside: {message}");
            ExitCode::from(2)
        }
    }
}

/// Runs every selected run on both programs and prints the table; `true` if every row is the
/// same.
fn compare_all(config: &Config) -> Result<bool, String> {
    let runs: Vec<(usize, &Run)> = config.runs().collect();
    check_guests(config, &runs)?;
    let root = scratch_root(config.version)?;
    let labels: Vec<String> = runs.iter().map(|(_, run)| run.label()).collect();
    let layout = Layout::new(config.columns, &labels);
    print_intro(config);
    println!("{}", layout.header());
    let mut rows = Vec::new();
    let mut trouble = None;
    for (number, run) in runs {
        match one_run(config, &root, number, run) {
            Ok(row) => {
                layout.row(&row).iter().for_each(|line| println!("{line}"));
                rows.push(row);
            }
            Err(e) => trouble = Some(e),
        }
        if trouble.is_some() || sys::interrupted().is_some() {
            break;
        }
    }
    if let Some(signal) = sys::interrupted() {
        println!("interrupted by {}: the remaining runs were not made", runner::signal_name(signal));
    }
    finish_scratch(config, &root);
    println!("{}", table::summary(&rows));
    let _ = std::io::stdout().flush();
    match trouble {
        Some(e) => Err(e),
        None => Ok(rows.iter().all(|row| row.verdict() == Verdict::Same)),
    }
}

/// Says what is compared with what, and how.
fn print_intro(config: &Config) {
    let show = |line: String| println!("{}", table::cut(&line, config.columns));
    show(format!("beside, version {}: the same runs on our hypervisor and on another one", config.version));
    show(format!("  ours:  {}", config.ours_given));
    show(format!("  other: {}", config.hv_given));
    show("Each gets the command line PROGRAM -m M -p P -g ../Guest/IMAGE... [-f ../Guest/FILE...]".to_owned());
    show(format!(
        "and the same stdin, in run/ beside Guest/ (copies), for at most {} s.",
        config.timeout.as_secs_f64()
    ));
    show("Compared: the outcome, stdout (per VM) and the files left behind; not stderr.".to_owned());
    if let Some((pattern, _)) = &config.ignore {
        show(format!("First dropped from both stdouts: the lines that match {pattern}"));
    }
    println!();
}

/// Every image and shared file the runs need must be in the guest directory.
fn check_guests(config: &Config, runs: &[(usize, &Run)]) -> Result<(), String> {
    if runs.is_empty() {
        return Err(format!(
            "no run of version {} is named like {:?}",
            config.version,
            config.only.as_deref().unwrap_or("")
        ));
    }
    for name in runs.iter().flat_map(|(_, run)| run.images.iter().chain(run.files)) {
        let path = config.guests.join(name);
        if !path.is_file() {
            return Err(format!("{} is missing: build the guests first (make guests)", path.display()));
        }
    }
    Ok(())
}

/// A new, empty directory for this invocation's scratch directories, under `$TMPDIR`.
fn scratch_root(version: char) -> Result<PathBuf, String> {
    let base = std::env::temp_dir();
    let pid = std::process::id();
    let mut last = None;
    for attempt in 0..100 {
        let dir = base.join(format!("beside-{version}-{pid}-{attempt}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(format!("cannot create a scratch directory in {}: {e}", base.display())),
        }
    }
    Err(format!(
        "cannot create a scratch directory in {}: {}",
        base.display(),
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// Removes the scratch directories, or says where they are with `--keep`.
fn finish_scratch(config: &Config, root: &Path) {
    if config.keep {
        println!("scratch directories kept in {} (NN-ours/ and NN-other/ per run)", root.display());
    } else if let Err(e) = std::fs::remove_dir_all(root) {
        eprintln!("beside: could not remove the scratch directory {}: {e}", root.display());
    }
}

/// What goes into each side's directory for `run`: the images and shared files in `Guest/`,
/// the stdin bytes in `stdin`.
fn placed_files(config: &Config, run: &Run) -> Vec<Placed> {
    let mut names: Vec<&str> = run.images.iter().chain(run.files).copied().collect();
    names.sort_unstable();
    names.dedup();
    let mut placed: Vec<Placed> = names
        .into_iter()
        .map(|name| Placed { rel: Path::new("Guest").join(name), contents: Source::Copy(config.guests.join(name)) })
        .collect();
    placed.push(Placed { rel: PathBuf::from("stdin"), contents: Source::Bytes(run.stdin.as_bytes().to_vec()) });
    placed
}

/// One side's run, finished, with the files it left.
struct Side {
    done: runner::Finished,
    left: std::collections::BTreeMap<String, scratch::Left>,
    note: Option<String>,
    dir: PathBuf,
}

/// Runs `program` for `run` in a fresh `NN-side` directory under `root`.
fn run_side(config: &Config, root: &Path, tag: &str, program: &Path, run: &Run) -> Result<Side, String> {
    let placed = placed_files(config, run);
    let dir = root.join(tag);
    scratch::prepare(&dir, &placed).map_err(|e| format!("cannot prepare the scratch directory: {e}"))?;
    let done = runner::run(program, &run.args(), &dir.join("run"), &dir.join("stdin"), config.timeout);
    let (left, note) = scratch::left_behind(&dir, &placed);
    if config.keep {
        // After the files were looked at, so that these are not counted as left behind.
        let _ = std::fs::write(dir.join("stdout.txt"), &done.stdout.bytes);
        let _ = std::fs::write(dir.join("stderr.txt"), &done.stderr.bytes);
    }
    Ok(Side { done, left, note, dir })
}

/// Runs `run` on both programs and compares them.
fn one_run(config: &Config, root: &Path, number: usize, run: &Run) -> Result<Row, String> {
    let ours = run_side(config, root, &format!("{number:02}-ours"), &config.ours, run)?;
    let other = run_side(config, root, &format!("{number:02}-other"), &config.hv, run)?;
    let regex = config.ignore.as_ref().map(|(_, re)| re);
    let stdout = compare::stdout(&ours.done.stdout, &other.done.stdout, run.images.len(), regex);
    let files = compare::files(&ours.left, &other.left);
    let mut notes = Vec::new();
    for (who, side) in [("ours", &ours), ("other", &other)] {
        if let runner::Outcome::NotStarted(why) = &side.done.outcome {
            notes.push(format!("{who}: {why}"));
        }
        if let Some(note) = &side.note {
            notes.push(format!("{who}: {note}"));
        }
    }
    let row = Row {
        number,
        label: run.label(),
        ours: ours.done.outcome.clone(),
        other: other.done.outcome.clone(),
        stdout,
        files,
        no_files: ours.left.is_empty() && other.left.is_empty(),
        notes,
    };
    if !config.keep {
        for dir in [&ours.dir, &other.dir] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    Ok(row)
}
