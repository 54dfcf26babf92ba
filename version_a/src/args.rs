//! The command line, parsed by hand into a [`Config`]; every mistake is a value.
//!
//! C counterpart: the `getopt_long` loop at the top of `main` in `Version_A/mini_hypervisor.c`.
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::long_mode::{MIB, PageSize};

pub const USAGE: &str = "\
Usage: mini_hypervisor -m|--memory <2|4|8> -p|--page <4|2> -g|--guest <image> [options]
Runs a flat 64-bit guest image in a KVM virtual machine (one vCPU, long mode).

  -m, --memory <2|4|8>   guest RAM in MiB
  -p, --page <4|2>       page size: 4 = 4 KiB pages, 2 = 2 MiB pages
  -g, --guest <image>    the guest image: a flat binary, loaded and started at address 0
  -q, --quiet            say nothing on stderr but warnings and errors
      --timeout <secs>   stop a VM still running after this many seconds (it counts as failed)
      --stats            print per-VM statistics on stderr at the end
      --trace            print one line per VM exit on stderr
      --gdb <port>       stop vm0 before its first instruction and wait for GDB on 127.0.0.1:<port>
      --no-coalesce      one VM exit per serial byte, as the C does (default: port 0xE9 output is
                         batched in a kernel ring when KVM supports it)
  -h, --help             print this help and exit
      --version          print the version and exit

Options may come in any order; --opt=value works as well as --opt value, and -m4 as well as -m 4.
Exit status: 0 when the VM halted, 1 when it failed or a startup check failed, 2 for usage errors.
";

/// The line that follows a usage error.
pub const TRY_HELP: &str = "Try 'mini_hypervisor --help' for more information.";

/// `--timeout`: the shortest and the longest (a little over 11 days), in seconds.
pub const TIMEOUT_MIN: f64 = 0.001;
pub const TIMEOUT_MAX: f64 = 1_000_000.0;

/// Everything a run needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Guest RAM in bytes (2, 4 or 8 MiB).
    pub mem_size: u64,
    pub page: PageSize,
    /// The guest images, in command-line order (version A: exactly one).
    pub images: Vec<PathBuf>,
    pub quiet: bool,
    pub timeout: Option<Timeout>,
    pub stats: bool,
    pub trace: bool,
    pub gdb: Option<u16>,
    /// Batch port 0xE9 output in a kernel ring when KVM can (`--no-coalesce`: false).
    pub coalesce: bool,
}

/// `--timeout`: how long, and the value as given, for the message that reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeout {
    pub after: Duration,
    pub given: String,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Run(Config),
    Help,
    Version,
}

/// A usage error: one line saying what is wrong (exit status 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, UsageError> {
    Err(UsageError(msg.into()))
}

/// Sets a scalar option, refusing a second occurrence.
macro_rules! set_once {
    ($slot:expr, $name:expr, $value:expr) => {
        if $slot.replace($value).is_some() {
            return err(format!("{} given more than once", $name));
        }
    };
}

/// The short options that take a value, which may come attached (`-m4`, `-gguest.img`).
const SHORT_WITH_VALUE: &[u8] = b"mpg";

/// Splits an option word into its name and its inline value, as bytes (a value need not be
/// UTF-8): `--name=value` at the first `=`, `-xVALUE` for a short option that takes a value.
fn split_option(word: &OsStr) -> (String, Option<OsString>) {
    let b = word.as_bytes();
    let (name, value) = if b.starts_with(b"--") {
        match b.iter().position(|&c| c == b'=') {
            Some(i) => (&b[..i], Some(&b[i + 1..])),
            None => (b, None),
        }
    } else if b.len() > 2 && SHORT_WITH_VALUE.contains(&b[1]) {
        (&b[..2], Some(&b[2..]))
    } else {
        (b, None)
    };
    (String::from_utf8_lossy(name).into_owned(), value.map(|v| OsStr::from_bytes(v).to_owned()))
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut args = args.into_iter().peekable();
    let (mut mem, mut page, mut timeout, mut gdb) = (None, None, None, None);
    let mut images: Vec<PathBuf> = Vec::new();
    let (mut quiet, mut stats, mut trace, mut coalesce) = (false, false, false, true);
    let is_option = |w: &OsString| w.len() > 1 && w.as_bytes()[0] == b'-'; // `-x...`, not `-` alone
    while let Some(word) = args.next() {
        if !is_option(&word) {
            return err(format!("unexpected argument '{}' (images follow -g)", word.to_string_lossy()));
        }
        let (name, mut inline) = split_option(&word);
        // A scalar's value: inline (not empty), or the next word if not an option (a negative number is a value).
        let mut value = |what: &str| -> Result<OsString, UsageError> {
            match inline.take() {
                Some(v) if !v.is_empty() => Ok(v),
                Some(_) => err(format!("{name} needs a value: {what}")),
                None => args
                    .next_if(|w| !is_option(w) || w.as_bytes()[1].is_ascii_digit())
                    .map_or_else(|| err(format!("{name} needs a value: {what}")), Ok),
            }
        };
        match name.as_str() {
            "-m" | "--memory" => set_once!(mem, "-m/--memory", choice(&value("2, 4 or 8 (MiB)")?, MEMORY)?),
            "-p" | "--page" => set_once!(page, "-p/--page", choice(&value("4 (KiB) or 2 (MiB)")?, PAGE)?),
            "--timeout" => set_once!(timeout, "--timeout", seconds(&value("a number of seconds")?)?),
            "--gdb" => set_once!(gdb, "--gdb", port(&value("a TCP port number from 1 to 65535")?)?),
            // -g: the inline value if any (not empty), then every following non-option word.
            "-g" | "--guest" => {
                let (before, empty) = (images.len(), inline.as_ref().is_some_and(|v| v.is_empty()));
                images.extend(inline.take().map(PathBuf::from));
                while let Some(w) = args.next_if(|w| !is_option(w) && !empty) {
                    images.push(PathBuf::from(w));
                }
                if empty || images.len() == before {
                    return err(format!("{name} needs a value: at least one guest image"));
                }
            }
            "-q" | "--quiet" => quiet = true,
            "--stats" => stats = true,
            "--trace" => trace = true,
            "--no-coalesce" => coalesce = false,
            "-h" | "--help" => return Ok(Command::Help),
            "--version" => return Ok(Command::Version),
            _ => return err(format!("unknown option '{name}'")),
        }
        if inline.is_some() {
            return err(format!("{name} takes no value"));
        }
    }

    let Some(mem_size) = mem else { return err("missing -m/--memory <2|4|8>") };
    let Some(page) = page else { return err("missing -p/--page <4|2>") };
    match images.len() {
        0 => return err("missing -g/--guest <image>"),
        1 => {}
        n => return err(format!("version A runs one guest image, got {n} (version B runs several)")),
    }
    Ok(Command::Run(Config { mem_size, page, images, quiet, timeout, stats, trace, gdb, coalesce }))
}

/// The values an option takes, and how its error names them.
struct Choices<T: 'static> {
    values: &'static [(&'static str, T)],
    what: &'static str,
    help: &'static str,
}

const MEMORY: &Choices<u64> = &Choices {
    values: &[("2", 2 * MIB), ("4", 4 * MIB), ("8", 8 * MIB)],
    what: "memory size",
    help: "2, 4 or 8 (MiB)",
};
const PAGE: &Choices<PageSize> = &Choices {
    values: &[("4", PageSize::Small4K), ("2", PageSize::Large2M)],
    what: "page size",
    help: "4 (4 KiB) or 2 (2 MiB)",
};

/// `-m`, `-p`: one of the choices, exactly as written.
fn choice<T: Copy>(v: &OsStr, choices: &Choices<T>) -> Result<T, UsageError> {
    match choices.values.iter().find(|(text, _)| text.as_bytes() == v.as_bytes()) {
        Some(&(_, value)) => Ok(value),
        None => err(format!("invalid {} '{}': use {}", choices.what, v.to_string_lossy(), choices.help)),
    }
}

/// `--timeout`: a number of seconds from [`TIMEOUT_MIN`] to [`TIMEOUT_MAX`].
fn seconds(v: &OsStr) -> Result<Timeout, UsageError> {
    match v.to_str().and_then(|s| Some((s, s.parse::<f64>().ok()?))) {
        Some((s, secs)) if (TIMEOUT_MIN..=TIMEOUT_MAX).contains(&secs) => {
            Ok(Timeout { after: Duration::from_secs_f64(secs), given: s.to_owned() })
        }
        _ => err(format!(
            "invalid timeout '{}': use a number of seconds from {TIMEOUT_MIN} to {TIMEOUT_MAX}",
            v.to_string_lossy()
        )),
    }
}

/// `--gdb`: a TCP port, 1 to 65535, in decimal digits.
fn port(v: &OsStr) -> Result<u16, UsageError> {
    let port = v.to_str().filter(|s| s.bytes().all(|c| c.is_ascii_digit())).and_then(|s| s.parse().ok());
    match port {
        Some(p) if p != 0 => Ok(p),
        _ => err(format!("invalid --gdb port '{}': use a TCP port number from 1 to 65535", v.to_string_lossy())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Command, UsageError> {
        parse(s.split_whitespace().map(OsString::from))
    }

    fn config(s: &str) -> Config {
        match parse_str(s) {
            Ok(Command::Run(c)) => c,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn error(s: &str) -> String {
        match parse_str(s) {
            Err(UsageError(m)) => m,
            other => panic!("{s}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn short_and_long_options_in_any_order() {
        let c = config("-m 4 -p 2 -g guest.img");
        assert_eq!(
            (c.mem_size, c.page, c.images.clone()),
            (4 * MIB, PageSize::Large2M, vec![PathBuf::from("guest.img")])
        );
        assert_eq!(config("--guest guest.img --page 2 --memory 4"), c);
        assert_eq!(config("--memory=4 --page=2 --guest=guest.img"), c);
        let c = config("-g g.img -p 4 -m 8 -q --timeout 1.5 --stats --trace");
        assert_eq!((c.mem_size, c.page), (8 * MIB, PageSize::Small4K));
        assert!(c.quiet && c.stats && c.trace);
        assert_eq!(c.timeout, Some(Timeout { after: Duration::from_millis(1500), given: "1.5".to_owned() }));
        assert_eq!(config("-m 2 -p 4 -g x").mem_size, 2 * MIB);
        assert_eq!(config("-m 2 -p 4 -g x").timeout, None);
    }

    #[test]
    fn a_timeout_takes_1_ms_to_its_maximum_and_keeps_the_value_as_given() {
        let t = |v: &str| config(&format!("-m 2 -p 4 -g x --timeout {v}")).timeout.unwrap();
        assert_eq!(t("0.001"), Timeout { after: Duration::from_millis(1), given: "0.001".to_owned() });
        assert_eq!(t("1e6").after, Duration::from_secs(1_000_000));
        assert_eq!(t("2.50").given, "2.50");
        for bad in ["1e9", "1e-300", "0.0009", "1000001", "inf", "NaN", "0"] {
            let msg = error(&format!("-m 2 -p 4 -g x --timeout {bad}"));
            assert_eq!(msg, format!("invalid timeout '{bad}': use a number of seconds from 0.001 to 1000000"));
        }
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse_str("-h"), Ok(Command::Help));
        assert_eq!(parse_str("-m 4 --help"), Ok(Command::Help));
        assert_eq!(parse_str("--version"), Ok(Command::Version));
    }

    #[test]
    fn every_usage_error_names_the_problem() {
        let cases = [
            ("", "missing -m"),
            ("-p 2 -g x", "missing -m"),
            ("-m 4 -g x", "missing -p"),
            ("-m 4 -p 2", "missing -g"),
            ("-m 3 -p 2 -g x", "invalid memory size '3'"),
            ("-m 16 -p 2 -g x", "invalid memory size '16'"),
            ("-m four -p 2 -g x", "invalid memory size 'four'"),
            ("-m 4 -p 1 -g x", "invalid page size '1'"),
            ("-m 4 -p 4k -g x", "invalid page size '4k'"),
            ("-m -p 2 -g x", "-m needs a value"),
            ("-m 4 -p 2 -g x --memory", "--memory needs a value"),
            ("-m 4 -p 2 -g", "-g needs a value: at least one guest image"),
            ("-m 4 -p 2 -g -q", "-g needs a value: at least one guest image"),
            ("-m 4 -m 4 -p 2 -g x", "-m/--memory given more than once"),
            ("-m 4 -p 2 --page 2 -g x", "-p/--page given more than once"),
            ("-m 4 -p 2 -g x --timeout 1 --timeout 2", "--timeout given more than once"),
            ("-m 4 -p 2 -g x --timeout 0", "invalid timeout '0'"),
            ("-m 4 -p 2 -g x --timeout -1", "invalid timeout '-1'"),
            ("-m -1 -p 2 -g x", "invalid memory size '-1'"),
            ("-m4x -p 2 -g x", "invalid memory size '4x'"),
            ("-m=4 -p 2 -g x", "invalid memory size '=4'"),
            ("-m 4 -p 2 -g x -qm", "unknown option '-qm'"),
            ("-m 4 -p 2 -g x --timeout soon", "invalid timeout 'soon'"),
            ("-m 4 -p 2 -g x --frobnicate", "unknown option '--frobnicate'"),
            ("-m 4 -p 2 -g x -x", "unknown option '-x'"),
            ("-m 4 -p 2 -g x --quiet=yes", "--quiet takes no value"),
            ("stray -m 4 -p 2 -g x", "unexpected argument 'stray'"),
            ("-m 4 -p 2 -g a.img b.img", "version A runs one guest image, got 2"),
            ("-m 4 -p 2 -g a.img -g b.img", "version A runs one guest image, got 2"),
        ];
        for (args, expected) in cases {
            let msg = error(args);
            assert!(msg.contains(expected), "{args:?}: {msg:?} should contain {expected:?}");
            assert!(!msg.contains('\n'), "one line: {msg:?}");
        }
    }

    #[test]
    fn image_paths_need_not_be_utf8() {
        use std::os::unix::ffi::OsStringExt;
        let odd = OsString::from_vec(b"g\xffuest.img".to_vec());
        let with = |words: Vec<OsString>| {
            let args = ["-m", "2", "-p", "4"].map(OsString::from).into_iter().chain(words);
            match parse(args) {
                Ok(Command::Run(c)) => c.images,
                other => panic!("{other:?}"),
            }
        };
        let expect = vec![PathBuf::from(&odd)];
        assert_eq!(with(vec![OsString::from("-g"), odd.clone()]), expect);
        // Inline, the value is split off as bytes and kept as it is.
        assert_eq!(with(vec![OsString::from_vec(b"--guest=g\xffuest.img".to_vec())]), expect);
        assert_eq!(with(vec![OsString::from_vec(b"-gg\xffuest.img".to_vec())]), expect);
    }

    #[test]
    fn an_inline_value_is_split_at_the_first_equals_sign() {
        let split = |w: &str| split_option(OsStr::new(w));
        assert_eq!(split("--guest=a=b.img"), ("--guest".to_owned(), Some(OsString::from("a=b.img"))));
        assert_eq!(split("--memory="), ("--memory".to_owned(), Some(OsString::new())));
        assert_eq!(split("--stats"), ("--stats".to_owned(), None));
        assert_eq!(split("-m4"), ("-m".to_owned(), Some(OsString::from("4"))));
        assert_eq!(split("-q=1"), ("-q=1".to_owned(), None));
        assert_eq!(split("-m"), ("-m".to_owned(), None));
        assert_eq!(config("--guest=a=b.img -m 2 -p 4").images, [PathBuf::from("a=b.img")]);
    }

    #[test]
    fn short_options_take_an_attached_value_as_getopt_does() {
        let c = config("-m 4 -p 2 -g guest.img");
        assert_eq!(config("-m4 -p2 -gguest.img"), c);
        assert_eq!(config("-gguest.img -p2 -m4"), c);
        let c = config("-m8 -p4 -ga.img");
        assert_eq!((c.mem_size, c.page, c.images), (8 * MIB, PageSize::Small4K, vec![PathBuf::from("a.img")]));
    }

    #[test]
    fn an_empty_inline_value_is_a_missing_value() {
        for (args, expected) in [
            ("-m 4 -p 2 -g x --memory=", "--memory needs a value: 2, 4 or 8 (MiB)"),
            ("-m 4 -g x --page=", "--page needs a value: 4 (KiB) or 2 (MiB)"),
            ("-m 4 -p 2 -g x --timeout=", "--timeout needs a value: a number of seconds"),
            ("-m 4 -p 2 -g x --gdb=", "--gdb needs a value: a TCP port number from 1 to 65535"),
            ("-m 4 -p 2 --guest=", "--guest needs a value: at least one guest image"),
            ("-m 4 -p 2 --guest= x", "--guest needs a value: at least one guest image"),
        ] {
            assert_eq!(error(args), expected, "{args:?}");
        }
    }

    #[test]
    fn gdb_port_and_no_coalesce() {
        let c = config("-m 2 -p 4 -g x");
        assert_eq!((c.gdb, c.coalesce), (None, true));
        assert_eq!(config("-m 2 -p 4 -g x --gdb 1234").gdb, Some(1234));
        assert_eq!(config("--gdb=1 -m 2 -p 4 -g x").gdb, Some(1));
        assert_eq!(config("-m 2 -p 4 -g x --gdb 65535").gdb, Some(65535));
        assert!(!config("-m 2 -p 4 --no-coalesce -g x").coalesce);
        for bad in ["abc", "0", "70000", "-1", "+80", "12a", "1.5"] {
            let msg = error(&format!("-m 2 -p 4 -g x --gdb {bad}"));
            assert_eq!(msg, format!("invalid --gdb port '{bad}': use a TCP port number from 1 to 65535"));
            let msg = error(&format!("-m 2 -p 4 -g x --gdb={bad}"));
            assert!(msg.starts_with(&format!("invalid --gdb port '{bad}'")), "{msg}");
        }
        assert!(error("-m 2 -p 4 -g x --gdb").contains("--gdb needs a value"));
        assert!(error("-m 2 -p 4 -g x --gdb 1 --gdb 2").contains("--gdb given more than once"));
        assert!(error("-m 2 -p 4 -g x --no-coalesce=1").contains("--no-coalesce takes no value"));
    }
}
