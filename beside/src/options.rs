//! The command line of `beside`, and its usage text.
#![forbid(unsafe_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::regex::Regex;
use crate::runs::{self, Run};
use crate::sys;

/// The `--ignore` pattern that fits the course's C solution's own stdout lines.
pub const COURSE_C_IGNORE: &str = "^(Starting VM with:|  (Memory|Page Size|Guests?|Shared files): |All VMs |VM [0-9]+ has \
                                   finished\\.|KVM_EXIT_HLT|Shutdown|Enter a value to send to the VM:)";

/// The usage text ([`USAGE`] with the pattern for the course's C filled in).
pub fn usage() -> String {
    USAGE.replace("{COURSE_C_IGNORE}", COURSE_C_IGNORE)
}

const USAGE: &str = "\
Usage: beside [OPTIONS] a|b|c HV
       make beside HV=PATH [VERSION=a|b|c] [TIMEOUT=S] [IGNORE=REGEX] [KEEP=1]

Runs the example guests of version a, b or c (make's default: c) on our hypervisor,
version_X/mini_hypervisor, and on HV: any program that takes the course's command line
(-m 2|4|8 -p 4|2 -g IMAGE... [-f FILE...]), such as the course's C solution or your own.
Then prints one table, a row per run: both outcomes, whether stdout and the files left
behind are the same, and under a row that differs the first differing line of each side.
Last, one line: N same, M different, K failed.

Each run is made twice, once per program, each time in a scratch directory of its own laid
out as the course expects: Guest/ holds copies of the images and shared files, run/ is the
working directory. Both programs get the same command line,
    -m M -p P -g ../Guest/IMAGE... [-f ../Guest/FILE...]
and the same stdin. The guests and shared files of the repository are never touched.
Compared: the exit status, stdout (with several VMs per VM, leaving out our [vmN] prefixes
and the order in which whole lines of different VMs arrive), and the files each run left
(named from the VM's <stem>_vm<N>_files/ directory on, wherever the program put it).
stderr is not compared.

Options:
  --timeout S     time limit per run, in seconds (default 10); then the program's whole
                  process group is killed, and the run is \"timed out\"   (make: TIMEOUT=)
  --ignore REGEX  drop the stdout lines that match REGEX from both sides before comparing:
                  a hypervisor's own banner and status lines            (make: IGNORE=)
  --keep          keep the scratch directories, and print where they are  (make: KEEP=1)
  --only TEXT     only the runs whose name (as in the table) contains TEXT
  --ours PATH     our hypervisor (default version_X/mini_hypervisor, X the version)
  --guests DIR    where the images and shared files are (default guest)
  -h, --help      this text
The table is as wide as the terminal, or $COLUMNS, or 100 characters.

REGEX matches a line when it matches anywhere in it (as grep does). It knows: characters
standing for themselves, . (any character), [abc] [a-z] [^...] (classes), * + ? after an
item, | (or), ( ) (groups), ^ and $ (start and end of the line), and \\ before any
character that is not a letter or digit to take it literally (\\. \\( \\|). In make, write
$$ for $ (or leave $ out, as below).

HV is a path from the repository's root (where make runs it), or absolute, or a name in $PATH.
The course's C solution, built from its public source beside this repository:
    git clone https://github.com/S-t-r-a-x/mini-kvm-hypervisor ../mini-kvm-hypervisor
    make -C ../mini-kvm-hypervisor/Version_C      (Version_A, Version_B likewise)
    make beside HV=../mini-kvm-hypervisor/Version_C/mini_hypervisor \\
        IGNORE='{COURSE_C_IGNORE}'
It prints its banner, KVM_EXIT_HLT and its other status lines on stdout: the pattern drops
them. Its Version_A and Version_B go with VERSION=a and VERSION=b.

Exit status: 0 if every row is the same, 1 if a row is different or failed, 2 for a usage
or setup error, 130 if interrupted.
";

/// What to compare, and how.
#[derive(Debug, Clone)]
pub struct Config {
    pub version: char,
    /// The other hypervisor (absolute), and its path as given (to show).
    pub hv: PathBuf,
    pub hv_given: String,
    /// Our hypervisor (absolute), and its path as given.
    pub ours: PathBuf,
    pub ours_given: String,
    pub guests: PathBuf,
    pub timeout: Duration,
    pub ignore: Option<(String, Regex)>,
    pub keep: bool,
    pub only: Option<String>,
    pub columns: usize,
}

impl Config {
    /// The runs to make, numbered as in the version's whole list (from 1).
    pub fn runs(&self) -> impl Iterator<Item = (usize, &'static Run)> + '_ {
        let all = runs::runs(self.version).unwrap_or_default();
        all.iter()
            .enumerate()
            .map(|(i, run)| (i + 1, run))
            .filter(|(_, run)| self.only.as_ref().is_none_or(|only| run.label().contains(only.as_str())))
    }
}

/// The options as given, before they are checked.
#[derive(Default)]
struct Given {
    positional: Vec<String>,
    timeout: Option<String>,
    ignore: Option<String>,
    keep: bool,
    only: Option<String>,
    ours: Option<String>,
    guests: Option<String>,
}

/// Parses the arguments; `Ok(None)` for `--help`.
pub fn parse(args: &[String]) -> Result<Option<Config>, String> {
    let Some(given) = gather(args)? else { return Ok(None) };
    let [version, hv] = given.positional.as_slice() else {
        return Err("give the version (a, b or c) and the other hypervisor's path".to_owned());
    };
    let version = match version.as_str() {
        "a" | "b" | "c" => version.chars().next().unwrap_or('c'),
        _ => return Err(format!("version {version:?}: say a, b or c")),
    };
    let hv_given = hv.clone();
    let hv = program(hv, "HV")?;
    let ours_given = given.ours.unwrap_or_else(|| format!("version_{version}/mini_hypervisor"));
    let ours = program(&ours_given, "our hypervisor").map_err(|e| format!("{e} (make build builds it)"))?;
    let guests = PathBuf::from(given.guests.as_deref().unwrap_or("guest"));
    if !guests.is_dir() {
        return Err(format!("{}: no such directory (the guest images; make guests builds them)", guests.display()));
    }
    let timeout = timeout(given.timeout.as_deref().unwrap_or("10"))?;
    let ignore = match given.ignore.filter(|p| !p.is_empty()) {
        None => None,
        Some(pattern) => {
            let re = Regex::new(&pattern).map_err(|e| format!("--ignore {pattern:?}: {e}"))?;
            Some((pattern, re))
        }
    };
    let only = given.only;
    let keep = given.keep;
    Ok(Some(Config {
        version,
        hv,
        hv_given,
        ours,
        ours_given,
        guests,
        timeout,
        ignore,
        keep,
        only,
        columns: columns(),
    }))
}

/// Sorts the arguments into options and positional words; `None` for `--help`.
fn gather(args: &[String]) -> Result<Option<Given>, String> {
    let mut given = Given::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (name, attached) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || attached.clone().or_else(|| args.next().cloned()).ok_or(format!("{name} needs a value"));
        match name {
            "-h" | "--help" => return Ok(None),
            "--keep" if attached.is_none() => given.keep = true,
            "--timeout" => given.timeout = Some(value()?),
            "--ignore" => given.ignore = Some(value()?),
            "--only" => given.only = Some(value()?),
            "--ours" => given.ours = Some(value()?),
            "--guests" => given.guests = Some(value()?),
            "--" => given.positional.extend(args.by_ref().cloned()),
            _ if name.starts_with('-') && name.len() > 1 => return Err(format!("unknown option {arg}")),
            _ => given.positional.push(arg.clone()),
        }
    }
    Ok(Some(given))
}

/// The absolute path of an executable file, given with a `/` or found in `$PATH`.
fn program(value: &str, what: &str) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    let path = if value.contains('/') {
        PathBuf::from(value)
    } else {
        let dirs = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&dirs)
            .map(|dir| dir.join(value))
            .find(|p| is_executable(p))
            .ok_or_else(|| format!("{what} {value}: not found in $PATH (give its path)"))?
    };
    let meta = std::fs::metadata(&path).map_err(|e| format!("{what} {value}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{what} {value}: not a file"));
    }
    if !is_executable(&path) {
        return Err(format!("{what} {value}: not executable (chmod +x?)"));
    }
    std::fs::canonicalize(&path).map_err(|e| format!("{what} {value}: {e}"))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn timeout(value: &str) -> Result<Duration, String> {
    match value.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!("time limit {value:?}: give seconds, above 0 and at most 3600 (e.g. 10 or 2.5)")),
    }
}

/// The table's width: `$COLUMNS`, else the terminal's, else 100; at least 40.
fn columns() -> usize {
    let from_env = std::env::var("COLUMNS").ok().and_then(|c| c.trim().parse::<usize>().ok()).filter(|&c| c > 0);
    from_env.or_else(sys::terminal_columns).unwrap_or(100).max(40)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn options_and_errors() {
        assert!(parse(&args(&["--help"])).unwrap().is_none());
        assert!(parse(&args(&["c", "/bin/sh", "-h"])).unwrap().is_none());
        let err = |words: &[&str]| parse(&args(words)).unwrap_err();
        assert!(err(&[]).contains("give the version"));
        assert!(err(&["c"]).contains("give the version"));
        assert!(err(&["d", "/bin/sh"]).contains("say a, b or c"));
        assert!(err(&["c", "/nonexistent/hv"]).contains("/nonexistent/hv"));
        assert!(err(&["c", "/"]).contains("not a file"));
        assert!(err(&["c", "no-such-program-here"]).contains("not found in $PATH"));
        assert!(err(&["--bogus", "c", "/bin/sh"]).contains("unknown option --bogus"));
        assert!(err(&["c", "/bin/sh", "--timeout"]).contains("needs a value"));
        let with_ours = |more: &[&str]| {
            let mut words = vec!["a", "sh", "--ours", "/bin/sh", "--guests", "/"];
            words.extend_from_slice(more);
            parse(&args(&words))
        };
        assert!(with_ours(&["--timeout", "0"]).unwrap_err().contains("time limit"));
        assert!(with_ours(&["--timeout=nan"]).unwrap_err().contains("time limit"));
        assert!(with_ours(&["--ignore", "(x"]).unwrap_err().contains("without its `)`"));
        let config = with_ours(&["--timeout=2.5", "--ignore", "^KVM", "--keep", "--only", "echo"]).unwrap().unwrap();
        assert_eq!(config.version, 'a');
        assert!(config.hv.is_absolute(), "{}", config.hv.display());
        assert_eq!(config.timeout, Duration::from_millis(2500));
        assert!(config.ignore.as_ref().is_some_and(|(p, re)| p == "^KVM" && re.is_match("KVM_EXIT_HLT")));
        assert!(config.keep);
        let selected: Vec<String> = config.runs().map(|(_, run)| run.label()).collect();
        assert_eq!(selected, ["echo -m4 -p2 <\"abc\""]);
        assert_eq!(config.runs().next().map(|(n, _)| n), Some(8));
        let config = with_ours(&["--ignore="]).unwrap().unwrap();
        assert!(config.ignore.is_none(), "an empty pattern would drop every line: it means none");
    }

    #[test]
    fn the_usage_shows_the_pattern_for_the_course_c() {
        assert!(usage().contains(&format!("IGNORE='{COURSE_C_IGNORE}'")));
        assert!(!usage().contains('{'));
        assert!(Regex::new(COURSE_C_IGNORE).is_ok());
    }
}
