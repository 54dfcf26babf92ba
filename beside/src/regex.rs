//! A small regular expression for `--ignore` (`IGNORE=` in make), since std has none: enough to
//! name a hypervisor's own banner and status lines.
//!
//! Syntax: a character stands for itself; `.` is any character; `[abc]`, `[a-z0-9_]` and
//! `[^...]` are character classes (`]` first in the class, or `\]`, is a literal `]`; `-` first
//! or last is a literal `-`); `*`, `+` and `?` after an item repeat it 0 or more, 1 or more, 0
//! or 1 times; `|` separates alternatives; `( )` groups; `^` matches at the start of the line
//! and `$` at its end; `\` before any character that is not a letter or digit makes it literal
//! (`\.`, `\(`, `\|`, `\\`). There are no counted repeats (`{` and `}` are literal), no
//! backreferences and no `\d`-style shorthands (write `[0-9]`).
//!
//! A pattern *matches a line* when it matches anywhere in it, as `grep` does: `KVM_EXIT` drops
//! every line that contains that word, `^KVM_EXIT_HLT$` only the line that is exactly that.
//!
//! Matching runs the pattern's automaton over the line once (Thompson's construction), so its
//! time is the line length times the pattern size, whatever the pattern.
#![forbid(unsafe_code)]

use std::fmt;

/// The longest pattern accepted, in characters; also bounds the nesting of groups.
const MAX_PATTERN: usize = 1000;

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct Regex {
    program: Vec<Inst>,
}

/// An error in the pattern, with the character position where it was found (0-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    pub at: usize,
    pub what: &'static str,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at character {})", self.what, self.at + 1)
    }
}

/// A set of characters: `ranges` (inclusive), or every character outside them if `negated`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Class {
    negated: bool,
    ranges: Vec<(char, char)>,
}

impl Class {
    fn contains(&self, c: char) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negated
    }
}

/// The parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Empty,
    Char(char),
    Any,
    Class(Class),
    Start,
    End,
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    Star(Box<Node>),
    Plus(Box<Node>),
    Quest(Box<Node>),
}

/// One instruction of the automaton. `Split` and `Jump` move without reading a character;
/// `Start` and `End` only let a thread through at the start or end of the line.
#[derive(Debug, Clone)]
enum Inst {
    Char(char),
    Any,
    Class(Class),
    Start,
    End,
    Split(usize, usize),
    Jump(usize),
    Match,
}

impl Regex {
    /// Parses and compiles `pattern`.
    pub fn new(pattern: &str) -> Result<Regex, PatternError> {
        let chars: Vec<char> = pattern.chars().collect();
        if chars.len() > MAX_PATTERN {
            return Err(PatternError { at: MAX_PATTERN, what: "pattern longer than 1000 characters" });
        }
        let mut parser = Parser { chars: &chars, pos: 0 };
        let node = parser.alternation()?;
        if parser.pos < chars.len() {
            // alternation() stops only at the end or at a `)` that no `(` opened.
            return Err(PatternError { at: parser.pos, what: "unmatched `)`" });
        }
        let mut program = Vec::new();
        compile(&node, &mut program);
        program.push(Inst::Match);
        Ok(Regex { program })
    }

    /// Whether the pattern matches anywhere in `line`.
    pub fn is_match(&self, line: &str) -> bool {
        let mut current = Threads::new(self.program.len());
        let mut next = Threads::new(self.program.len());
        let mut chars = line.chars().peekable();
        let mut at_start = true;
        loop {
            let at_end = chars.peek().is_none();
            // A match may begin at every position: add a fresh thread at the program's start.
            if self.add(&mut current, 0, at_start, at_end) {
                return true;
            }
            let Some(c) = chars.next() else { return false };
            next.clear();
            let next_at_end = chars.peek().is_none();
            for i in 0..current.list.len() {
                let pc = current.list[i];
                let moves = match &self.program[pc] {
                    Inst::Char(want) => *want == c,
                    Inst::Any => true,
                    Inst::Class(class) => class.contains(c),
                    _ => false,
                };
                if moves && self.add(&mut next, pc + 1, false, next_at_end) {
                    return true;
                }
            }
            std::mem::swap(&mut current, &mut next);
            at_start = false;
        }
    }

    /// Adds the thread at `pc` to `threads`, following jumps, splits and anchors; `true` if a
    /// thread reaches `Match`.
    fn add(&self, threads: &mut Threads, pc: usize, at_start: bool, at_end: bool) -> bool {
        let mut stack = vec![pc];
        while let Some(pc) = stack.pop() {
            if !threads.mark(pc) {
                continue;
            }
            match self.program[pc] {
                Inst::Match => return true,
                Inst::Jump(to) => stack.push(to),
                Inst::Split(a, b) => {
                    stack.push(b);
                    stack.push(a);
                }
                Inst::Start if at_start => stack.push(pc + 1),
                Inst::End if at_end => stack.push(pc + 1),
                Inst::Start | Inst::End => {}
                Inst::Char(_) | Inst::Any | Inst::Class(_) => threads.list.push(pc),
            }
        }
        false
    }
}

/// The threads alive at one position: the instructions waiting for a character, each once.
struct Threads {
    list: Vec<usize>,
    seen: Vec<bool>,
}

impl Threads {
    fn new(len: usize) -> Threads {
        Threads { list: Vec::with_capacity(len), seen: vec![false; len] }
    }

    fn clear(&mut self) {
        self.list.clear();
        self.seen.iter_mut().for_each(|s| *s = false);
    }

    /// Marks `pc` as visited at this position; `false` if it already was.
    fn mark(&mut self, pc: usize) -> bool {
        !std::mem::replace(&mut self.seen[pc], true)
    }
}

struct Parser<'a> {
    chars: &'a [char],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn error(&self, what: &'static str) -> PatternError {
        PatternError { at: self.pos, what }
    }

    /// alternation := concat ('|' concat)*
    fn alternation(&mut self) -> Result<Node, PatternError> {
        let mut alternatives = vec![self.concat()?];
        while self.peek() == Some('|') {
            self.pos += 1;
            alternatives.push(self.concat()?);
        }
        Ok(if alternatives.len() == 1 { alternatives.remove(0) } else { Node::Alt(alternatives) })
    }

    /// concat := (atom ('*' | '+' | '?')*)*, up to `|`, `)` or the end.
    fn concat(&mut self) -> Result<Node, PatternError> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let mut item = self.atom()?;
            while let Some(op @ ('*' | '+' | '?')) = self.peek() {
                self.pos += 1;
                item = match op {
                    '*' => Node::Star(Box::new(item)),
                    '+' => Node::Plus(Box::new(item)),
                    _ => Node::Quest(Box::new(item)),
                };
            }
            items.push(item);
        }
        Ok(match items.len() {
            0 => Node::Empty,
            1 => items.remove(0),
            _ => Node::Concat(items),
        })
    }

    fn atom(&mut self) -> Result<Node, PatternError> {
        let c = self.peek().ok_or_else(|| self.error("pattern ends too early"))?;
        self.pos += 1;
        Ok(match c {
            '.' => Node::Any,
            '^' => Node::Start,
            '$' => Node::End,
            '[' => Node::Class(self.class()?),
            '\\' => Node::Char(self.escaped()?),
            '*' | '+' | '?' => {
                self.pos -= 1;
                return Err(self.error("`*`, `+` or `?` with nothing before it to repeat"));
            }
            '(' => {
                let open = self.pos - 1;
                let inner = self.alternation()?;
                if self.peek() != Some(')') {
                    return Err(PatternError { at: open, what: "`(` without its `)`" });
                }
                self.pos += 1;
                inner
            }
            c => Node::Char(c),
        })
    }

    /// The character after a `\`: any character but a letter or digit.
    fn escaped(&mut self) -> Result<char, PatternError> {
        let c = self.peek().ok_or_else(|| self.error("`\\` at the end of the pattern"))?;
        if c.is_alphanumeric() {
            return Err(self.error("`\\` before a letter or digit (write `[0-9]`, not `\\d`)"));
        }
        self.pos += 1;
        Ok(c)
    }

    /// A class, after its `[`, up to and including its `]`.
    fn class(&mut self) -> Result<Class, PatternError> {
        let open = self.pos - 1;
        let unclosed = PatternError { at: open, what: "`[` without its `]`" };
        let negated = self.peek() == Some('^');
        if negated {
            self.pos += 1;
        }
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let c = match self.peek() {
                None => return Err(unclosed),
                Some(']') if !first => break,
                Some('\\') => {
                    self.pos += 1;
                    self.escaped()?
                }
                Some(c) => {
                    self.pos += 1;
                    c
                }
            };
            first = false;
            let is_range = self.peek() == Some('-') && self.chars.get(self.pos + 1).is_some_and(|&n| n != ']');
            if !is_range {
                ranges.push((c, c));
                continue;
            }
            self.pos += 1;
            let hi = match self.peek() {
                Some('\\') => {
                    self.pos += 1;
                    self.escaped()?
                }
                Some(hi) => {
                    self.pos += 1;
                    hi
                }
                None => return Err(unclosed),
            };
            if hi < c {
                return Err(PatternError { at: self.pos - 1, what: "range out of order in `[...]`" });
            }
            ranges.push((c, hi));
        }
        self.pos += 1;
        Ok(Class { negated, ranges })
    }
}

/// Appends the instructions for `node` to `program`.
fn compile(node: &Node, program: &mut Vec<Inst>) {
    match node {
        Node::Empty => {}
        Node::Char(c) => program.push(Inst::Char(*c)),
        Node::Any => program.push(Inst::Any),
        Node::Class(class) => program.push(Inst::Class(class.clone())),
        Node::Start => program.push(Inst::Start),
        Node::End => program.push(Inst::End),
        Node::Concat(items) => items.iter().for_each(|item| compile(item, program)),
        Node::Alt(alternatives) => {
            // Split to each alternative in turn; every one but the last jumps to the end.
            let mut jumps = Vec::new();
            for (i, alternative) in alternatives.iter().enumerate() {
                if i + 1 < alternatives.len() {
                    let split = program.len();
                    program.push(Inst::Split(split + 1, 0));
                    compile(alternative, program);
                    jumps.push(program.len());
                    program.push(Inst::Jump(0));
                    program[split] = Inst::Split(split + 1, program.len());
                } else {
                    compile(alternative, program);
                }
            }
            let end = program.len();
            jumps.into_iter().for_each(|j| program[j] = Inst::Jump(end));
        }
        Node::Star(inner) => {
            let split = program.len();
            program.push(Inst::Split(split + 1, 0));
            compile(inner, program);
            program.push(Inst::Jump(split));
            program[split] = Inst::Split(split + 1, program.len());
        }
        Node::Plus(inner) => {
            let start = program.len();
            compile(inner, program);
            program.push(Inst::Split(start, program.len() + 1));
        }
        Node::Quest(inner) => {
            let split = program.len();
            program.push(Inst::Split(split + 1, 0));
            compile(inner, program);
            program[split] = Inst::Split(split + 1, program.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, line: &str) -> bool {
        Regex::new(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}")).is_match(line)
    }

    #[test]
    fn literals_match_anywhere_in_the_line() {
        assert!(m("HLT", "KVM_EXIT_HLT"));
        assert!(m("KVM", "KVM_EXIT_HLT"));
        assert!(!m("HLTX", "KVM_EXIT_HLT"));
        assert!(m("", "anything"));
        assert!(m("", ""));
        assert!(!m("a", ""));
    }

    #[test]
    fn anchors() {
        assert!(m("^KVM", "KVM_EXIT_HLT"));
        assert!(!m("^EXIT", "KVM_EXIT_HLT"));
        assert!(m("HLT$", "KVM_EXIT_HLT"));
        assert!(!m("EXIT$", "KVM_EXIT_HLT"));
        assert!(m("^$", ""));
        assert!(!m("^$", " "));
        assert!(m("^KVM_EXIT_HLT$", "KVM_EXIT_HLT"));
        assert!(!m("^KVM_EXIT_HLT$", "unfinishedKVM_EXIT_HLT"));
    }

    #[test]
    fn dot_and_repeats() {
        assert!(m("a.c", "xabcx"));
        assert!(!m("a.c", "ac"));
        assert!(m("^ab*c$", "ac"));
        assert!(m("^ab*c$", "abbbc"));
        assert!(m("^ab+c$", "abc"));
        assert!(!m("^ab+c$", "ac"));
        assert!(m("^ab?c$", "ac"));
        assert!(m("^ab?c$", "abc"));
        assert!(!m("^ab?c$", "abbc"));
        assert!(m("^.*$", "whatever it is"));
        assert!(m("^(ab)+$", "ababab"));
        assert!(!m("^(ab)+$", "ababa"));
    }

    #[test]
    fn alternation_and_groups() {
        assert!(m("cat|dog", "hotdog"));
        assert!(m("cat|dog", "cats"));
        assert!(!m("cat|dog", "cow"));
        assert!(m("^(Memory|Page Size): ", "Page Size: 2 MB"));
        assert!(!m("^(Memory|Page Size): ", "  Page Size: 2 MB"));
        assert!(m("^VM (0|1) has", "VM 1 has finished."));
        assert!(m("^a(|b)c$", "ac"));
        assert!(m("^a(|b)c$", "abc"));
        assert!(m("^((a|b)c)+$", "acbcac"));
    }

    #[test]
    fn classes() {
        assert!(m("^VM [0-9]+ has", "VM 12 has"));
        assert!(!m("^VM [0-9]+ has", "VM x has"));
        assert!(m("^[^a-z]+$", "ABC 123"));
        assert!(!m("^[^a-z]+$", "ABc"));
        assert!(m("^[]x]$", "]"));
        assert!(m("^[a-]$", "-"));
        assert!(m("^[-a]$", "-"));
        assert!(m("^[\\]]$", "]"));
        assert!(m("^[.]$", "."));
        assert!(!m("^[.]$", "x"));
        assert!(m("[é]", "café"));
    }

    #[test]
    fn escapes_make_characters_literal() {
        assert!(m("finished\\.$", "VM 0 has finished."));
        assert!(!m("^a\\.c$", "abc"));
        assert!(m("^\\(x\\)$", "(x)"));
        assert!(m("^a\\|b$", "a|b"));
        assert!(m("^\\\\$", "\\"));
        assert!(m("^\\*$", "*"));
        assert!(m("^{1}$", "{1}"));
    }

    #[test]
    fn bad_patterns_are_refused_with_a_position() {
        let err = |p: &str| Regex::new(p).unwrap_err();
        assert_eq!(err("(ab").at, 0);
        assert_eq!(err("ab)").at, 2);
        assert_eq!(err("*a").at, 0);
        assert_eq!(err("a|+").at, 2);
        assert_eq!(err("[ab").at, 0);
        assert_eq!(err("a\\").at, 2);
        assert_eq!(err("\\d").at, 1);
        assert_eq!(err("[z-a]").at, 3);
        assert!(Regex::new(&"a".repeat(1001)).is_err());
        assert!(err("((").to_string().contains("without its `)`"));
    }

    #[test]
    fn nested_empty_repeats_end() {
        // Repeats of something that can match nothing must not loop for ever.
        assert!(m("^(a*)*$", "aaa"));
        assert!(!m("^(a*)*$", "aab"));
        assert!(m("(^)*x", "x"));
        assert!(m("^(a?)+b", "b"));
    }

    #[test]
    fn linear_on_patterns_that_make_backtracking_slow() {
        let line = "a".repeat(5000);
        assert!(!m("^(a|a)*(a|a)*(a|a)*b$", &line));
        assert!(!m("^(a*)*b$", &line));
    }

    #[test]
    fn the_pattern_for_the_course_c() {
        let pattern = "^(Starting VM with:|  (Memory|Page Size|Guests?|Shared files): |All VMs |VM [0-9]+ has \
                       finished\\.|KVM_EXIT_HLT|Shutdown|Enter a value to send to the VM:)";
        for line in [
            "Starting VM with:",
            "  Memory: 4 MB",
            "  Page Size: 2 MB",
            "  Guest: ../Guest/guest.img",
            "  Guests: ../Guest/counter.img, ../Guest/counter.img ",
            "  Shared files: ../Guest/shared.txt ",
            "All VMs running. Waiting for them to exit...",
            "VM 1 has finished.",
            "All VMs have finished. Exiting hypervisor.",
            "KVM_EXIT_HLT",
            "Shutdown",
            "Enter a value to send to the VM:",
        ] {
            assert!(m(pattern, line), "{line}");
        }
        for line in ["Hello, world!", "count 1", "unfinishedKVM_EXIT_HLT", "shared.txt before:", "template: done"] {
            assert!(!m(pattern, line), "{line}");
        }
    }
}
