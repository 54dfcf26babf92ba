//! The command line (SPEC §1), parsed by hand into a [`Config`]; every mistake is a value.
//!
//! C counterpart: the option loop at the top of `main`.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::long_mode::{MIB, PageSize};

pub const USAGE: &str = "\
Usage: mini_hypervisor -m|--memory <2|4|8> -p|--page <4|2> -g|--guest <image> [<image> ...] [options]
Runs flat 64-bit guest images in KVM virtual machines (one vCPU each, long mode), all at once.

  -m, --memory <2|4|8>   guest RAM in MiB
  -p, --page <4|2>       page size: 4 = 4 KiB pages, 2 = 2 MiB pages
  -g, --guest <image>... guest images: flat binaries, each loaded and started at address 0 of
                         its own VM; one VM (and thread) per image, numbered vm0, vm1, ...
  -q, --quiet            say nothing on stderr but warnings and errors
      --timeout <secs>   stop a VM still running after this many seconds (it counts as failed)
      --stats            print per-VM statistics on stderr at the end
      --trace            print one line per VM exit on stderr
  -h, --help             print this help and exit
      --version          print the version and exit

Options may come in any order; --opt=value works as well as --opt value.
With several VMs, each output line is prefixed [vmN] (N = the image's position, from 0).
Exit status: 0 when every VM halted, 1 when any failed or a startup check failed, 2 for usage errors.
";

/// Everything a run needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Guest RAM in bytes (2, 4 or 8 MiB).
    pub mem_size: u64,
    pub page: PageSize,
    /// The guest images, in command-line order: one VM each.
    pub images: Vec<PathBuf>,
    pub quiet: bool,
    pub timeout: Option<Duration>,
    pub stats: bool,
    pub trace: bool,
    /// Port 0xE9 output through KVM's coalesced ring (`--no-coalesce`: off).
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

/// An option word: starts with `-` and is more than `-` alone.
fn is_option(word: &OsString) -> bool {
    let b = word.as_bytes();
    b.len() > 1 && b[0] == b'-'
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
    let (mut quiet, mut stats, mut trace, mut coalesce) = (false, false, false, true);

    while let Some(word) = args.next() {
        if !is_option(&word) {
            return err(format!("unexpected argument '{}' (images follow -g)", word.to_string_lossy()));
        }
        // "--name=value" carries its value inline; short options never do.
        let text = word.to_string_lossy().into_owned();
        let (name, mut inline) = match text.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(OsString::from(v))),
            _ => (text, None),
        };
        // The value of a scalar option: inline, or the next word if it is not an option.
        let mut value = |what: &str| -> Result<OsString, UsageError> {
            if let Some(v) = inline.take() {
                return Ok(v);
            }
            match args.next_if(|w| !is_option(w)) {
                Some(v) => Ok(v),
                None => err(format!("{name} needs a value: {what}")),
            }
        };
        match name.as_str() {
            "-m" | "--memory" => {
                let v = value("2, 4 or 8 (MiB)")?;
                let mib = match v.as_bytes() {
                    b"2" => 2,
                    b"4" => 4,
                    b"8" => 8,
                    _ => return err(format!("invalid memory size '{}': use 2, 4 or 8 (MiB)", v.to_string_lossy())),
                };
                set_once(&mut mem, "-m/--memory", mib * MIB)?;
            }
            "-p" | "--page" => {
                let v = value("4 (KiB) or 2 (MiB)")?;
                let p = match v.as_bytes() {
                    b"4" => PageSize::Small4K,
                    b"2" => PageSize::Large2M,
                    _ => {
                        return err(format!("invalid page size '{}': use 4 (4 KiB) or 2 (2 MiB)", v.to_string_lossy()));
                    }
                };
                set_once(&mut page, "-p/--page", p)?;
            }
            "--timeout" => {
                let v = value("a number of seconds")?;
                let secs: Option<f64> = v.to_str().and_then(|s| s.parse().ok());
                match secs {
                    Some(s) if s > 0.0 && s.is_finite() && s < 1e9 => {
                        set_once(&mut timeout, "--timeout", Duration::from_secs_f64(s))?
                    }
                    _ => {
                        return err(format!(
                            "invalid timeout '{}': use a number of seconds above 0",
                            v.to_string_lossy()
                        ));
                    }
                }
            }
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
    Ok(Command::Run(Config { mem_size, page, images, quiet, timeout, stats, trace, coalesce }))
}

/// `-g`: the inline value if any, then every following word that is not an option.
fn take_list(
    list: &mut Vec<PathBuf>,
    inline: Option<OsString>,
    args: &mut std::iter::Peekable<impl Iterator<Item = OsString>>,
    name: &str,
    what: &str,
) -> Result<(), UsageError> {
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
    fn several_images_after_one_or_repeated_g() {
        let expect: Vec<PathBuf> = ["a.img", "b.img", "c.img"].iter().map(PathBuf::from).collect();
        assert_eq!(config("-m 2 -p 4 -g a.img b.img c.img").images, expect);
        assert_eq!(config("-g a.img -m 2 -g b.img c.img -p 4").images, expect);
        assert_eq!(config("--guest=a.img b.img -p 4 --guest c.img -m 2").images, expect);
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
            ("-m 4 -p 2 -g x --timeout -1", "--timeout needs a value"),
            ("-m 4 -p 2 -g x --timeout soon", "invalid timeout 'soon'"),
            ("-m 4 -p 2 -g x --frobnicate", "unknown option '--frobnicate'"),
            ("-m 4 -p 2 -g x -x", "unknown option '-x'"),
            ("-m 4 -p 2 -g x --quiet=yes", "--quiet takes no value"),
            ("stray -m 4 -p 2 -g x", "unexpected argument 'stray'"),
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
        let args = ["-m", "2", "-p", "4", "-g"].map(OsString::from).into_iter().chain([odd.clone()]);
        match parse(args) {
            Ok(Command::Run(c)) => assert_eq!(c.images, vec![PathBuf::from(odd)]),
            other => panic!("{other:?}"),
        }
    }
}
