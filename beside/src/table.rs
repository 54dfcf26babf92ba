//! The table: one row per run, then, under a row that differs, the first differing line of each
//! side; every line cut to the terminal's width.
//!
//! ```text
//!  #  run                        ours       other      stdout  files   result
//!  1  guest -m4 -p2              exit 0     exit 0     same    none    same
//!  2  crash -m4 -p2              exit 1     exit 0     differ  none    different
//!       stdout
//!         ours:  crashing now
//!         other: crashing nowShutdown
//! ```
//!
//! `ours` and `other` are each program's outcome: `exit N`, the signal that ended it
//! (`SIGSEGV`), `timed out` (killed at the time limit) or `no start`. `stdout` and `files` say
//! whether those are the same (`none`: neither program left a file). `result` is `same` when
//! the outcomes, stdout and files are all the same, `failed` when either program did not end by
//! itself (a signal, the time limit, or it could not start), `different` otherwise.
#![forbid(unsafe_code)]

use crate::compare::Difference;
use crate::runner::Outcome;

/// Characters taken by everything but the run's name.
const FIXED: usize = 53;
const OUTCOME: usize = 9;
const CELL: usize = 6;

/// One run's result.
#[derive(Debug, Clone)]
pub struct Row {
    pub number: usize,
    pub label: String,
    pub ours: Outcome,
    pub other: Outcome,
    pub stdout: Option<Difference>,
    pub files: Option<Difference>,
    /// Neither program left a file.
    pub no_files: bool,
    /// Anything else to say under the row (why a program did not start, ...).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Same,
    Different,
    Failed,
}

impl Row {
    pub fn verdict(&self) -> Verdict {
        if !self.ours.ended() || !self.other.ended() {
            Verdict::Failed
        } else if self.ours == self.other && self.stdout.is_none() && self.files.is_none() {
            Verdict::Same
        } else {
            Verdict::Different
        }
    }
}

/// The widths of the table for `columns` characters and these run names.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    columns: usize,
    label: usize,
}

impl Layout {
    pub fn new(columns: usize, labels: &[String]) -> Layout {
        let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0).max(3);
        Layout { columns, label: longest.min(columns.saturating_sub(FIXED)).max(12) }
    }

    pub fn header(&self) -> String {
        self.line([" #", "run", "ours", "other", "stdout", "files", "result"])
    }

    /// The row, and under it its differences and notes: one string per line.
    pub fn row(&self, row: &Row) -> Vec<String> {
        let cell = |d: &Option<Difference>| if d.is_some() { "differ" } else { "same" };
        let files = if row.no_files && row.files.is_none() { "none" } else { cell(&row.files) };
        let verdict = match row.verdict() {
            Verdict::Same => "same",
            Verdict::Different => "different",
            Verdict::Failed => "failed",
        };
        let number = format!("{:>2}", row.number);
        let (ours, other) = (row.ours.short(), row.other.short());
        let mut lines = vec![self.line([&number, &row.label, &ours, &other, cell(&row.stdout), files, verdict])];
        for d in [&row.stdout, &row.files].into_iter().flatten() {
            lines.push(cut(&format!("      {}", d.what), self.columns));
            lines.push(cut(&format!("        ours:  {}", d.ours), self.columns));
            lines.push(cut(&format!("        other: {}", d.other), self.columns));
        }
        lines.extend(row.notes.iter().map(|note| cut(&format!("      {note}"), self.columns)));
        lines
    }

    /// One line of the table: number, run, ours, other, stdout, files, result.
    fn line(&self, [number, label, ours, other, stdout, files, verdict]: [&str; 7]) -> String {
        let label = cut(label, self.label);
        let line = format!(
            "{number}  {label:<lw$}  {ours:<ow$}  {other:<ow$}  {stdout:<cw$}  {files:<cw$}  {verdict}",
            lw = self.label,
            ow = OUTCOME,
            cw = CELL
        );
        cut(line.trim_end(), self.columns)
    }
}

/// `text` cut to `width` characters, ending in `...` when cut.
pub fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let kept: String = text.chars().take(width.saturating_sub(3)).collect();
    format!("{kept}...")
}

/// The summary line.
pub fn summary(rows: &[Row]) -> String {
    let count = |v: Verdict| rows.iter().filter(|r| r.verdict() == v).count();
    format!("{} same, {} different, {} failed", count(Verdict::Same), count(Verdict::Different), count(Verdict::Failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ours: Outcome, other: Outcome, stdout: Option<Difference>) -> Row {
        Row {
            number: 3,
            label: "echo -m4 -p2 <\"abc\"".to_owned(),
            ours,
            other,
            stdout,
            files: None,
            no_files: true,
            notes: vec![],
        }
    }

    #[test]
    fn verdicts() {
        let differ = || Some(Difference { what: "stdout".into(), ours: "a".into(), other: "b".into() });
        assert_eq!(row(Outcome::Exit(0), Outcome::Exit(0), None).verdict(), Verdict::Same);
        assert_eq!(row(Outcome::Exit(1), Outcome::Exit(0), None).verdict(), Verdict::Different);
        assert_eq!(row(Outcome::Exit(0), Outcome::Exit(0), differ()).verdict(), Verdict::Different);
        assert_eq!(row(Outcome::Exit(0), Outcome::TimedOut, None).verdict(), Verdict::Failed);
        assert_eq!(row(Outcome::Signal(11), Outcome::Signal(11), None).verdict(), Verdict::Failed);
        assert_eq!(row(Outcome::Exit(0), Outcome::NotStarted("x".into()), None).verdict(), Verdict::Failed);
        let rows = [row(Outcome::Exit(0), Outcome::Exit(0), None), row(Outcome::Exit(0), Outcome::TimedOut, differ())];
        assert_eq!(summary(&rows), "1 same, 0 different, 1 failed");
    }

    #[test]
    fn rows_fit_the_width() {
        let long = "x".repeat(500);
        let mut r = row(
            Outcome::Exit(0),
            Outcome::Signal(11),
            Some(Difference { what: "stdout".into(), ours: long.clone(), other: "short".into() }),
        );
        r.label = long.clone();
        for columns in [40, 80, 100, 200] {
            let layout = Layout::new(columns, std::slice::from_ref(&r.label));
            for line in std::iter::once(layout.header()).chain(layout.row(&r)) {
                assert!(line.chars().count() <= columns, "{columns}: {line}");
            }
        }
        let layout = Layout::new(100, std::slice::from_ref(&r.label));
        let lines = layout.row(&r);
        assert!(lines[0].contains("SIGSEGV") && lines[0].ends_with("failed"), "{}", lines[0]);
        assert_eq!(lines[1], "      stdout");
        assert!(lines[2].starts_with("        ours:  xxx") && lines[2].ends_with("..."));
        assert_eq!(lines[3], "        other: short");
    }

    #[test]
    fn cut_counts_characters() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcdef", 5), "ab...");
        assert_eq!(cut("ééééé", 4), "é...");
        assert_eq!(cut("abc", 0), "...");
    }
}
