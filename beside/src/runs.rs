//! What `make beside` runs for each version: the project's example guests, with the flags,
//! shared files and stdin of their demos (see `guest/README.md`), as plain data.
//!
//! Each run is one command line, the same for both hypervisors, in the course's form:
//!
//! ```text
//! HV -m MEMORY -p PAGE -g ../Guest/IMAGE [../Guest/IMAGE ...] [-f ../Guest/FILE ...]
//! ```
//!
//! Left out on purpose: guests that only exercise our extensions or need a hypervisor's own
//! options (`bulkcopy` and `fileshell`'s bulk commands, `debugme` for `--gdb`, the `bench_*`
//! guests, `chatty`, which tests our batching of serial output), and `spin`, which never halts
//! (it is there for `--timeout` and Ctrl-C, and would only show two time limits).
#![forbid(unsafe_code)]

/// One row of the table: one command line, run on both hypervisors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Image file names in `guest/`, one VM each, in command-line order (vm0, vm1, ...).
    pub images: &'static [&'static str],
    /// `-m`: guest RAM in MiB.
    pub memory: u8,
    /// `-p`: 4 (KiB pages) or 2 (MiB pages).
    pub page: u8,
    /// Shared files in `guest/`, passed as `-f ../Guest/NAME`.
    pub files: &'static [&'static str],
    /// The bytes on the hypervisor's stdin (then end of file).
    pub stdin: &'static str,
    /// What the run shows, for the reader of this table.
    pub shows: &'static str,
}

const fn one(image: &'static [&'static str], memory: u8, page: u8, shows: &'static str) -> Run {
    Run { images: image, memory, page, files: &[], stdin: "", shows }
}

const fn with_stdin(run: Run, stdin: &'static str) -> Run {
    Run { stdin, ..run }
}

const SHARED: &[&str] = &["shared.txt"];

const fn shared(images: &'static [&'static str], memory: u8, page: u8, shows: &'static str) -> Run {
    Run { images, memory, page, files: SHARED, stdin: "", shows }
}

/// Version A: one VM per run; the machine (RAM sizes, both page sizes), the serial port, and
/// the guests that end badly.
const RUNS_A: &[Run] = &[
    one(&["guest.img"], 4, 2, "the first guest"),
    one(&["guest.img"], 2, 4, "the same, 2 MiB of RAM in 4 KiB pages"),
    one(&["template.img"], 8, 4, "the guest to copy, 8 MiB"),
    one(&["paging.img"], 2, 4, "the page tables the guest sees, 4 KiB pages"),
    one(&["paging.img"], 8, 2, "the page tables the guest sees, 2 MiB pages"),
    one(&["sse.img"], 4, 2, "the control-register bits SSE needs"),
    one(&["ports.img"], 4, 2, "unknown ports: out ignored, in reads 0xFF"),
    with_stdin(one(&["echo.img"], 4, 2, "serial input, byte by byte, to end of file"), "abc"),
    with_stdin(one(&["stringio.img"], 4, 2, "string I/O: rep outsb and rep insb"), "abcdef"),
    one(&["crash.img"], 4, 2, "a triple fault ends the VM as failed"),
    one(&["mmio.img"], 4, 2, "an MMIO access ends the VM as failed"),
    one(&["wide.img"], 4, 2, "a 2-byte out to the serial port is a guest error"),
];

/// Version B: one VM per run first, then several VMs at once, each with its own lines.
const RUNS_B: &[Run] = &[
    one(&["guest.img"], 4, 2, "the first guest"),
    one(&["counter.img"], 4, 2, "five lines, with a busy loop between them"),
    one(&["partial.img"], 2, 4, "an unfinished last line, alone: byte for byte"),
    one(&["counter.img", "counter.img"], 4, 2, "two VMs at once (make run-b)"),
    one(&["partial.img", "guest.img"], 4, 2, "a VM's unfinished last line beside another VM"),
    one(&["counter.img", "template.img", "partial.img"], 2, 4, "three VMs at once"),
    one(&["crash.img", "counter.img"], 4, 2, "a VM that crashes does not stop the other"),
    one(&["compute.img", "compute.img"], 4, 2, "two compute-bound VMs in parallel"),
];

/// Version C: the file I/O demos, all with `-f ../Guest/shared.txt`, alone and side by side.
const RUNS_C: &[Run] = &[
    shared(&["filecopy.img"], 4, 2, "copies shared.txt to a private copy.txt"),
    shared(&["cow.img"], 4, 2, "copy-on-write of the shared file, a private notes.txt"),
    shared(&["reader.img"], 2, 4, "prints the shared file"),
    shared(&["deny.img"], 4, 2, "names a guest may not open"),
    shared(&["limit.img"], 4, 2, "at most 16 open files"),
    shared(&["bytes.img"], 4, 2, "all 256 byte values through a file"),
    shared(&["chunks.img"], 4, 2, "f_read/f_write of any count, in requests of 127"),
    shared(&["snoop.img"], 4, 2, "isolation: cannot open another VM's file"),
    with_stdin(shared(&["readline.img"], 4, 2, "serial input with rep insb"), "abcdefgh"),
    shared(&["cow.img", "snoop.img"], 4, 2, "two VMs, one shared file (make run-c)"),
    shared(&["cow.img", "reader.img"], 4, 2, "the reader still sees the original"),
    shared(&["filecopy.img", "filecopy.img"], 2, 4, "one image twice: a private directory each"),
];

/// The runs for version `a`, `b` or `c`.
pub fn runs(version: char) -> Option<&'static [Run]> {
    match version {
        'a' => Some(RUNS_A),
        'b' => Some(RUNS_B),
        'c' => Some(RUNS_C),
        _ => None,
    }
}

impl Run {
    /// The arguments after the program name, as run from `run/` beside `Guest/`.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["-m".to_owned(), self.memory.to_string(), "-p".to_owned(), self.page.to_string()];
        args.push("-g".to_owned());
        args.extend(self.images.iter().map(|image| format!("../Guest/{image}")));
        if !self.files.is_empty() {
            args.push("-f".to_owned());
            args.extend(self.files.iter().map(|file| format!("../Guest/{file}")));
        }
        args
    }

    /// A short name for the table: `cow+snoop -m4 -p2 -f shared.txt <"abc"`.
    pub fn label(&self) -> String {
        let stems: Vec<&str> = self.images.iter().map(|image| image.strip_suffix(".img").unwrap_or(image)).collect();
        let mut label = format!("{} -m{} -p{}", stems.join("+"), self.memory, self.page);
        if !self.files.is_empty() {
            label.push_str(&format!(" -f {}", self.files.join(" ")));
        }
        if !self.stdin.is_empty() {
            label.push_str(&format!(" <{:?}", self.stdin));
        }
        label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_the_courses() {
        let run = shared(&["cow.img", "snoop.img"], 4, 2, "");
        assert_eq!(run.args().join(" "), "-m 4 -p 2 -g ../Guest/cow.img ../Guest/snoop.img -f ../Guest/shared.txt");
        assert_eq!(run.label(), "cow+snoop -m4 -p2 -f shared.txt");
        let run = with_stdin(one(&["echo.img"], 2, 4, ""), "abc");
        assert_eq!(run.args().join(" "), "-m 2 -p 4 -g ../Guest/echo.img");
        assert_eq!(run.label(), "echo -m2 -p4 <\"abc\"");
    }

    #[test]
    fn every_run_is_valid_for_its_version() {
        for (version, max_images) in [('a', 1), ('b', 8), ('c', 8)] {
            let runs = runs(version).unwrap();
            assert!(!runs.is_empty());
            for run in runs {
                assert!((1..=max_images).contains(&run.images.len()), "{}", run.label());
                assert!([2, 4, 8].contains(&run.memory) && [2, 4].contains(&run.page), "{}", run.label());
                assert!(version == 'c' || run.files.is_empty(), "{}", run.label());
                assert!(run.images.iter().all(|image| image.ends_with(".img")));
            }
            let labels: std::collections::HashSet<String> = runs.iter().map(Run::label).collect();
            assert_eq!(labels.len(), runs.len(), "every row of version {version} has its own label");
        }
        assert!(runs('d').is_none());
    }
}
