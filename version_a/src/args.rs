//! The command line, parsed by hand into a [`Config`]; every mistake is a value.
//!
//! C counterpart: the option loop at the top of `main`.
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

/// Everything a run needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Guest RAM in bytes (2, 4 or 8 MiB).
    pub mem_size: u64,
    pub page: PageSize,
    /// The guest images, in command-line order (version A: exactly one).
    pub images: Vec<PathBuf>,
    pub quiet: bool,
    pub timeout: Option<Duration>,
    pub stats: bool,
    pub trace: bool,
    /// `--gdb <port>`: vm0 waits for a debugger on 127.0.0.1:port before its first instruction.
    pub gdb: Option<u16>,
    /// Batch port 0xE9 output in a kernel ring when KVM can (`--no-coalesce`: false).
    pub coalesce: bool,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Run(Config),
    Help,
    Version,
}

/// A usage error: one line saying what is wrong (the caller adds the usage; exit status 2).
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

/// The short options that take a value, which may come attached (`-m4`, `-gguest.img`).
const SHORT_WITH_VALUE: &[u8] = b"mpg";

/// An option word: starts with `-` and is more than `-` alone.
fn is_option(word: &OsString) -> bool {
    let b = word.as_bytes();
    b.len() > 1 && b[0] == b'-'
}

/// A word that may follow a scalar option as its value: not an option, or a negative number
/// (no option starts with a digit), so that `--timeout -1` is refused for its value.
fn is_value(word: &OsString) -> bool {
    let b = word.as_bytes();
    !is_option(word) || b[1].is_ascii_digit()
}

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

/// Sets a scalar option, refusing a second occurrence.
fn set_once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), UsageError> {
    if slot.is_some() {
        return err(format!("{name} given more than once"));
    }
    *slot = Some(value);
    Ok(())
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut args = args.into_iter().peekable();
    let (mut mem, mut page, mut timeout) = (None, None, None);
    let mut images: Vec<PathBuf> = Vec::new();
    let (mut quiet, mut stats, mut trace, mut gdb, mut coalesce) = (false, false, false, None, true);

    while let Some(word) = args.next() {
        if !is_option(&word) {
            return err(format!("unexpected argument '{}' (images follow -g)", word.to_string_lossy()));
        }
        let (name, mut inline) = split_option(&word);
        // The value of a scalar option: inline (not empty), or the next word if it is a value.
        let mut value = |what: &str| -> Result<OsString, UsageError> {
            match inline.take() {
                Some(v) if !v.is_empty() => Ok(v),
                Some(_) => err(format!("{name} needs a value: {what}")),
                None => match args.next_if(is_value) {
                    Some(v) => Ok(v),
                    None => err(format!("{name} needs a value: {what}")),
                },
            }
        };
        match name.as_str() {
            "-m" | "--memory" => set_once(&mut mem, "-m/--memory", memory(&value("2, 4 or 8 (MiB)")?)?)?,
            "-p" | "--page" => set_once(&mut page, "-p/--page", page_size(&value("4 (KiB) or 2 (MiB)")?)?)?,
            "--timeout" => set_once(&mut timeout, "--timeout", seconds(&value("a number of seconds")?)?)?,
            "--gdb" => set_once(&mut gdb, "--gdb", port(&value("a TCP port number from 1 to 65535")?)?)?,
            "-g" | "--guest" => take_list(&mut images, inline.take(), &mut args, &name, "at least one guest image")?,
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
    if images.is_empty() {
        return err("missing -g/--guest <image>");
    }
    if images.len() > 1 {
        return err(format!("version A runs one guest image, got {} (version B runs several)", images.len()));
    }
    Ok(Command::Run(Config { mem_size, page, images, quiet, timeout, stats, trace, gdb, coalesce }))
}

/// `-m`: 2, 4 or 8 (MiB), as bytes.
fn memory(v: &OsStr) -> Result<u64, UsageError> {
    match v.as_bytes() {
        b"2" => Ok(2 * MIB),
        b"4" => Ok(4 * MIB),
        b"8" => Ok(8 * MIB),
        _ => err(format!("invalid memory size '{}': use 2, 4 or 8 (MiB)", v.to_string_lossy())),
    }
}

/// `-p`: 4 (KiB pages) or 2 (MiB pages).
fn page_size(v: &OsStr) -> Result<PageSize, UsageError> {
    match v.as_bytes() {
        b"4" => Ok(PageSize::Small4K),
        b"2" => Ok(PageSize::Large2M),
        _ => err(format!("invalid page size '{}': use 4 (4 KiB) or 2 (2 MiB)", v.to_string_lossy())),
    }
}

/// `--timeout`: a number of seconds above 0.
fn seconds(v: &OsStr) -> Result<Duration, UsageError> {
    match v.to_str().and_then(|s| s.parse::<f64>().ok()) {
        Some(s) if s > 0.0 && s.is_finite() && s < 1e9 => Ok(Duration::from_secs_f64(s)),
        _ => err(format!("invalid timeout '{}': use a number of seconds above 0", v.to_string_lossy())),
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

/// `-g`: the inline value if any (not empty), then every following word that is not an option.
fn take_list(
    list: &mut Vec<PathBuf>,
    inline: Option<OsString>,
    args: &mut std::iter::Peekable<impl Iterator<Item = OsString>>,
    name: &str,
    what: &str,
) -> Result<(), UsageError> {
    if inline.as_ref().is_some_and(|v| v.is_empty()) {
        return err(format!("{name} needs a value: {what}"));
    }
    let before = list.len();
    list.extend(inline.map(PathBuf::from));
    while let Some(w) = args.next_if(|w| !is_option(w)) {
        list.push(PathBuf::from(w));
    }
    if list.len() == before {
        return err(format!("{name} needs {what}"));
    }
    Ok(())
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
        assert_eq!(c.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(config("-m 2 -p 4 -g x").mem_size, 2 * MIB);
        assert_eq!(config("-m 2 -p 4 -g x").timeout, None);
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
            ("-m 4 -p 2 -g", "-g needs at least one guest image"),
            ("-m 4 -p 2 -g -q", "-g needs at least one guest image"),
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
