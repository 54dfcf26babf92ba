//! Comparing what two runs left: their stdout (line by line, per VM) and their files.
//!
//! **stdout.** Both sides are cut into lines; lines that match `--ignore` are dropped from both.
//! With one VM the lines must be the same, in the same order. With several VMs, a side whose
//! every line starts with `[vmN] ` (ours does; N below the number of VMs) is split into one
//! sequence per VM, the prefixes removed. Two split sides must have the same lines per VM. A
//! side that is not split (the course's C prints no prefix) must be an *interleaving* of the
//! other side's per-VM lines: the same lines, each VM's in its order, whatever the order in
//! which lines from different VMs arrived. Only whole lines count: a line from one VM broken
//! by another VM's output is a difference.
//!
//! **files.** The files left behind (see `scratch.rs`) must have the same names and the same
//! bytes.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::regex::Regex;
use crate::runner::{KEEP_STDOUT, Kept};
use crate::scratch::{self, Left};

/// Past this many states explored, the interleaving search gives up and reports a difference.
const MAX_STATES: usize = 200_000;
/// How much of a file is read to show its first differing line.
const FILE_HEAD: usize = 8 * 1024;
const END: &str = "(end of output)";

/// The first difference between the two sides: what differs, and each side's first differing
/// line (as shown: control characters escaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub what: String,
    pub ours: String,
    pub other: String,
}

/// One line of output, without its newline; `newline` is false for an unfinished last line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    text: String,
    newline: bool,
}

impl Line {
    fn shown(&self) -> String {
        let mut out = String::new();
        for c in self.text.chars() {
            match c {
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
                c => out.push(c),
            }
        }
        if !self.newline {
            out.push_str(" [no newline at end]");
        }
        out
    }
}

/// The lines of `bytes`. If the bytes are only the start of the stream (`cut`), an unfinished
/// last line is left out (its rest was not kept).
fn lines(bytes: &[u8], cut: bool) -> Vec<Line> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<Line> = text
        .split_inclusive('\n')
        .map(|l| Line { text: l.trim_end_matches('\n').to_owned(), newline: l.ends_with('\n') })
        .collect();
    if cut && lines.last().is_some_and(|l| !l.newline) {
        lines.pop();
    }
    lines
}

/// Compares two stdouts of a run with `vms` VMs; `None` if they are the same.
pub fn stdout(ours: &Kept, other: &Kept, vms: usize, ignore: Option<&Regex>) -> Option<Difference> {
    let keep = |line: &Line| ignore.is_none_or(|re| !re.is_match(&line.text));
    let a: Vec<Line> = lines(&ours.bytes, ours.truncated()).into_iter().filter(keep).collect();
    let b: Vec<Line> = lines(&other.bytes, other.truncated()).into_iter().filter(keep).collect();
    let found = compare_lines(&a, &b, vms);
    let found = match found {
        None if ours.truncated() || other.truncated() => {
            Some(Difference { what: "stdout".to_owned(), ours: END.to_owned(), other: END.to_owned() })
        }
        found => found,
    };
    found.map(|mut d| {
        // A side cut short says so instead of "(end of output)".
        for (shown, kept) in [(&mut d.ours, ours), (&mut d.other, other)] {
            if kept.truncated() && shown == END {
                *shown = format!("({} bytes in all: only the first {} KiB were kept)", kept.total, KEEP_STDOUT / 1024);
            }
        }
        d
    })
}

fn compare_lines(a: &[Line], b: &[Line], vms: usize) -> Option<Difference> {
    let what = |vm: Option<usize>| match vm {
        Some(vm) => format!("stdout [vm{vm}]"),
        None => "stdout".to_owned(),
    };
    if vms <= 1 {
        let (ours, other) = first_difference(a, b)?;
        return Some(Difference { what: what(None), ours, other });
    }
    match (split_vms(a, vms), split_vms(b, vms)) {
        (Some(a), Some(b)) => a.iter().zip(&b).enumerate().find_map(|(vm, (a, b))| {
            let (ours, other) = first_difference(a, b)?;
            Some(Difference { what: what(Some(vm)), ours, other })
        }),
        (Some(a), None) => {
            let (ours, other) = interleaving(&a, b)?;
            Some(Difference { what: what(None), ours, other })
        }
        (None, Some(b)) => {
            let (other, ours) = interleaving(&b, a)?;
            Some(Difference { what: what(None), ours, other })
        }
        (None, None) => {
            let (ours, other) = first_difference(a, b)?;
            Some(Difference { what: what(None), ours, other })
        }
    }
}

/// The first line where `a` and `b` differ, as shown (or "(end of output)" for the shorter).
fn first_difference(a: &[Line], b: &[Line]) -> Option<(String, String)> {
    let shown = |lines: &[Line], i: usize| lines.get(i).map_or_else(|| END.to_owned(), Line::shown);
    let i = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i))?;
    Some((shown(a, i), shown(b, i)))
}

/// Splits lines that all start with `[vmN] ` (N < vms) into one sequence per VM, prefixes
/// removed; `None` if any line does not.
fn split_vms(lines: &[Line], vms: usize) -> Option<Vec<Vec<Line>>> {
    let mut per_vm = vec![Vec::new(); vms];
    for line in lines {
        let rest = line.text.strip_prefix("[vm")?;
        let close = rest.find("] ")?;
        let number = &rest[..close];
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let vm: usize = number.parse().ok().filter(|&vm| vm < vms)?;
        per_vm[vm].push(Line { text: rest[close + 2..].to_owned(), newline: line.newline });
    }
    Some(per_vm)
}

/// Whether `flat` is an interleaving of the `per_vm` sequences. If not: the furthest point any
/// interleaving reaches, as (the VMs' next line most like the line of `flat` there, prefixed;
/// that line of `flat`, which no VM's next line matches).
fn interleaving(per_vm: &[Vec<Line>], flat: &[Line]) -> Option<(String, String)> {
    let start = vec![0usize; per_vm.len()];
    let mut seen: HashSet<Vec<usize>> = HashSet::new();
    let mut stack = vec![start.clone()];
    let mut furthest = start;
    while let Some(state) = stack.pop() {
        let done: usize = state.iter().sum();
        if done == flat.len() && state.iter().zip(per_vm).all(|(&i, lines)| i == lines.len()) {
            return None;
        }
        if done > furthest.iter().sum() {
            furthest.clone_from(&state);
        }
        if seen.len() >= MAX_STATES {
            break;
        }
        for (vm, lines) in per_vm.iter().enumerate() {
            if let (Some(next), Some(want)) = (lines.get(state[vm]), flat.get(done))
                && next == want
            {
                let mut after = state.clone();
                after[vm] += 1;
                if seen.insert(after.clone()) {
                    stack.push(after);
                }
            }
        }
    }
    let done: usize = furthest.iter().sum();
    // Of the VMs' next lines, show the one most like the line that no VM explains.
    let common = |line: &Line| match flat.get(done) {
        Some(want) => line.text.chars().zip(want.text.chars()).take_while(|(a, b)| a == b).count(),
        None => 0,
    };
    let split_side = per_vm
        .iter()
        .enumerate()
        .filter_map(|(vm, lines)| lines.get(furthest[vm]).map(|line| (vm, line)))
        .rev()
        .max_by_key(|(_, line)| common(line))
        .map_or_else(|| END.to_owned(), |(vm, line)| format!("[vm{vm}] {}", line.shown()));
    let flat_side = flat.get(done).map_or_else(|| END.to_owned(), Line::shown);
    Some((split_side, flat_side))
}

/// Compares the files two runs left behind; `None` if they have the same names and bytes.
pub fn files(ours: &BTreeMap<String, Left>, other: &BTreeMap<String, Left>) -> Option<Difference> {
    let names: BTreeSet<&String> = ours.keys().chain(other.keys()).collect();
    names.into_iter().find_map(|name| {
        let (a, b) = (ours.get(name), other.get(name));
        let what = format!("file {name}");
        match (a, b) {
            (Some(Left::File(a)), Some(Left::File(b))) => {
                if scratch::same_contents(a, b).unwrap_or(false) {
                    return None;
                }
                let (x, y) = (scratch::head(a, FILE_HEAD), scratch::head(b, FILE_HEAD));
                let (ours, other) = first_difference(&lines(&x, true), &lines(&y, true))
                    .unwrap_or_else(|| (format!("(differs after {} KiB)", FILE_HEAD / 1024), String::new()));
                Some(Difference { what, ours, other })
            }
            _ if a == b => None,
            _ => Some(Difference { what, ours: describe(a), other: describe(b) }),
        }
    })
}

/// A file as shown when only one side has it: its first line, or what it is.
fn describe(left: Option<&Left>) -> String {
    match left {
        None => "(no such file)".to_owned(),
        Some(Left::Other(what)) => what.clone(),
        Some(Left::File(path)) => {
            let head = scratch::head(path, FILE_HEAD);
            match lines(&head, false).first() {
                None => "(empty file)".to_owned(),
                Some(line) => line.shown(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(text: &str) -> Kept {
        Kept { bytes: text.as_bytes().to_vec(), total: text.len() as u64 }
    }

    fn diff(ours: &str, other: &str, vms: usize) -> Option<(String, String, String)> {
        stdout(&kept(ours), &kept(other), vms, None).map(|d| (d.what, d.ours, d.other))
    }

    fn d(what: &str, ours: &str, other: &str) -> Option<(String, String, String)> {
        Some((what.to_owned(), ours.to_owned(), other.to_owned()))
    }

    #[test]
    fn one_vm_compares_line_by_line() {
        assert_eq!(diff("a\nb\n", "a\nb\n", 1), None);
        assert_eq!(diff("a\nb\n", "a\nc\n", 1), d("stdout", "b", "c"));
        assert_eq!(diff("a\nb\n", "a\n", 1), d("stdout", "b", END));
        assert_eq!(diff("a\nb", "a\nb\n", 1), d("stdout", "b [no newline at end]", "b"));
        assert_eq!(diff("a\x1b[2J\n", "a\n", 1), d("stdout", "a\\x1b[2J", "a"));
        assert_eq!(diff("", "", 1), None);
    }

    #[test]
    fn ignored_lines_are_dropped_from_both_sides() {
        let re = Regex::new("^(Starting|KVM_EXIT_HLT)").unwrap();
        let ours = kept("Hello\n");
        let other = kept("Starting VM with:\nHello\nKVM_EXIT_HLT\n");
        assert_eq!(stdout(&ours, &other, 1, Some(&re)), None);
        assert!(stdout(&ours, &other, 1, None).is_some());
    }

    #[test]
    fn several_vms_compare_per_vm_whatever_the_order() {
        let ours = "[vm0] a\n[vm1] x\n[vm0] b\n[vm1] y\n";
        assert_eq!(diff(ours, "[vm1] x\n[vm1] y\n[vm0] a\n[vm0] b\n", 2), None);
        assert_eq!(diff(ours, "[vm0] a\n[vm0] b\n[vm1] x\n[vm1] z\n", 2), d("stdout [vm1]", "y", "z"));
        // Lines in another order within one VM are a difference.
        assert_eq!(diff(ours, "[vm0] b\n[vm0] a\n[vm1] x\n[vm1] y\n", 2), d("stdout [vm0]", "a", "b"));
    }

    #[test]
    fn an_unprefixed_side_must_interleave_the_vms_lines() {
        let ours = "[vm0] count 1\n[vm1] count 1\n[vm0] count 2\n[vm1] count 2\n";
        assert_eq!(diff(ours, "count 1\ncount 2\ncount 1\ncount 2\n", 2), None);
        assert_eq!(diff("count 1\ncount 1\ncount 2\ncount 2\n", ours, 2), None);
        // Two VMs' characters mixed inside a line.
        let (what, ours_line, other_line) = diff(ours, "count 1\ncocount 1\nunt 2\ncount 2\n", 2).unwrap();
        assert_eq!(what, "stdout");
        assert_eq!(ours_line, "[vm0] count 1");
        // Of the VMs' next lines, the one most like the other side's is shown.
        let ours = "[vm0] count 1\n[vm1] complete\n[vm1] unfinished\n";
        assert_eq!(
            diff(ours, "count 1\ncomplete\nunfinishedKVM_EXIT_HLT\n", 2),
            d("stdout", "[vm1] unfinished", "unfinishedKVM_EXIT_HLT")
        );
        assert_eq!(other_line, "cocount 1");
        // A line too many, or one missing.
        assert_eq!(diff("[vm0] a\n[vm1] b\n", "a\nb\nc\n", 2), d("stdout", END, "c"));
        assert_eq!(diff("[vm0] a\n[vm1] b\n", "b\n", 2), d("stdout", "[vm0] a", END));
    }

    #[test]
    fn the_interleaving_search_backtracks_over_equal_lines() {
        // vm0: a b, vm1: a c. "a a c b" needs vm1's `a` second: a greedy match on vm0 fails.
        assert_eq!(diff("[vm0] a\n[vm0] b\n[vm1] a\n[vm1] c\n", "a\na\nc\nb\n", 2), None);
    }

    #[test]
    fn a_prefix_that_names_no_vm_is_not_a_prefix() {
        assert!(split_vms(&lines(b"[vm2] a\n", false), 2).is_none());
        assert!(split_vms(&lines(b"[vmx] a\n", false), 2).is_none());
        assert!(split_vms(&lines(b"[vm0]a\n", false), 2).is_none());
        assert_eq!(split_vms(&lines(b"", false), 2), Some(vec![vec![], vec![]]));
    }

    #[test]
    fn a_side_cut_short_is_a_difference_that_says_so() {
        let long = Kept { bytes: b"x\nx\npartial".to_vec(), total: 5_000_000 };
        let d = stdout(&kept("x\nx\n"), &long, 1, None).unwrap();
        assert_eq!(d.ours, END);
        assert!(d.other.contains("5000000 bytes in all"), "{}", d.other);
    }

    #[test]
    fn files_compare_by_name_and_bytes() {
        let dir = std::env::temp_dir().join(format!("beside-compare-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            Left::File(path)
        };
        let a = BTreeMap::from([("cow_vm0_files/notes.txt".to_owned(), file("a", "one\ntwo\n"))]);
        let b = BTreeMap::from([("cow_vm0_files/notes.txt".to_owned(), file("b", "one\ntwo\n"))]);
        let c = BTreeMap::from([("cow_vm0_files/notes.txt".to_owned(), file("c", "one\nthree\n"))]);
        let e = BTreeMap::from([("run/stray".to_owned(), file("e", ""))]);
        assert_eq!(files(&a, &b), None);
        assert_eq!(files(&BTreeMap::new(), &BTreeMap::new()), None);
        let d = files(&a, &c).unwrap();
        assert_eq!(
            (d.what.as_str(), d.ours.as_str(), d.other.as_str()),
            ("file cow_vm0_files/notes.txt", "two", "three")
        );
        let d = files(&a, &e).unwrap();
        assert_eq!(
            (d.what.as_str(), d.ours.as_str(), d.other.as_str()),
            ("file cow_vm0_files/notes.txt", "one", "(no such file)")
        );
        let d = files(&BTreeMap::new(), &e).unwrap();
        assert_eq!((d.ours.as_str(), d.other.as_str()), ("(no such file)", "(empty file)"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
