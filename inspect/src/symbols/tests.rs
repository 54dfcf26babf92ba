//! Unit tests of the symbol reader: the project's own guest ELFs, cross-checked against
//! binutils (`nm`, `addr2line`, `c++filt`, which the guest build needs anyway); ELFs built here
//! with DWARF 4, 5 and 64-bit DWARF; names as shown (Rust names demangled, bounded, no control
//! character); unusable files; and a seeded fuzz test of mutated ELFs.
use super::*;
use crate::test_rng::Rng;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn guest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest")
}

/// The ELF and image of a built guest.
fn guest(name: &str) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let elf = guest_dir().join(format!("{name}.elf"));
    let img = elf.with_extension("img");
    let read = |p: &Path| {
        std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}: build the guests first (make guests)", p.display()))
    };
    (elf.clone(), read(&elf), read(&img))
}

fn tool(name: &str, args: &[&str]) -> String {
    let out = Command::new(name).args(args).output().unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    assert!(out.status.success(), "{name} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Every text symbol by `nm`: address -> names.
fn nm(elf: &Path) -> HashMap<u64, Vec<String>> {
    let mut map: HashMap<u64, Vec<String>> = HashMap::new();
    for line in tool("nm", &["--defined-only", elf.to_str().unwrap()]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [addr, "T" | "t", name] = f[..] {
            map.entry(u64::from_str_radix(addr, 16).unwrap()).or_default().push(name.to_owned());
        }
    }
    map
}

/// `addr2line` for each address: (file name, line), or None where it knows nothing.
fn addr2line(elf: &Path, addrs: &[u64]) -> Vec<Option<(String, u32)>> {
    let mut args = vec!["-e".to_owned(), elf.to_str().unwrap().to_owned()];
    args.extend(addrs.iter().map(|a| format!("{a:#x}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = tool("addr2line", &args);
    let answers: Vec<Option<(String, u32)>> = out
        .lines()
        .map(|l| {
            let l = l.split(" (discriminator").next().unwrap();
            let (file, line) = l.rsplit_once(':')?;
            let file = file.rsplit('/').next()?;
            let line: u32 = line.parse().ok()?;
            (file != "??" && line != 0).then(|| (file.to_owned(), line))
        })
        .collect();
    assert_eq!(answers.len(), addrs.len());
    answers
}

/// Names and lines of every code byte of `elf` agree with binutils.
fn agrees_with_binutils(elf_path: &Path, elf: &[u8], image: &[u8]) -> Symbols {
    let symbols = Symbols::parse(elf, image).unwrap_or_else(|e| panic!("{}: {e}", elf_path.display()));
    for (addr, names) in nm(elf_path) {
        let (name, offset) = symbols.function(addr).unwrap_or_else(|| panic!("{addr:#x} {names:?}"));
        let shown = names.iter().any(|n| *shown_name(n) == *name);
        assert!(shown && offset == 0, "{}: {addr:#x}: {name} {names:?}", elf_path.display());
    }
    let addrs: Vec<u64> = symbols.code().flat_map(|(start, bytes)| start..start + bytes.len() as u64).collect();
    assert!(!addrs.is_empty());
    for (addr, expected) in addrs.iter().zip(addr2line(elf_path, &addrs)) {
        let ours = symbols.line(*addr).map(|(f, l)| (f.to_owned(), l));
        assert_eq!(ours, expected, "{}: line of {addr:#x}", elf_path.display());
    }
    symbols
}

#[test]
fn the_guests_names_and_lines_agree_with_nm_and_addr2line() {
    let mut checked = 0;
    for entry in std::fs::read_dir(guest_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "elf") && path.with_extension("img").is_file() {
            let (elf, image) = (std::fs::read(&path).unwrap(), std::fs::read(path.with_extension("img")).unwrap());
            agrees_with_binutils(&path, &elf, &image);
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} guest ELFs found: build the guests first (make guests)");
}

#[test]
fn crash_and_debugme_read_as_expected() {
    let (path, elf, image) = guest("crash");
    let s = Symbols::parse(&elf, &image).unwrap();
    // _start is written in assembly: a name, but no line.
    assert_eq!(s.describe(0).as_deref(), Some("_start+0x0"));
    assert_eq!(s.function(0xd), Some(("_start", 0xd)));
    let main = s.describe(0x10).unwrap();
    assert!(main.starts_with("guest_main+0x0 (crash.c:"), "{main}");
    assert_eq!(s.image_end(), Some(image.len() as u64));
    assert_eq!(s.code().next().map(|(a, b)| (a, b.len())), Some((0, 0x10)), "{}", path.display());
    // Between functions (alignment padding) there is no function.
    let (_, elf, image) = guest("debugme");
    let s = Symbols::parse(&elf, &image).unwrap();
    let square = (0..image.len() as u64).find(|&a| s.function(a) == Some(("square", 0))).expect("square");
    let described = s.describe(square).unwrap();
    assert!(described.starts_with("square+0x0 (debugme.c:") && described.ends_with(')'), "{described}");
    assert!(s.describe(image.len() as u64 + 0x1000).is_none());
}

/// The Rust guests' symbols, demangled here as binutils' `c++filt` does (less the crate hashes
/// it shows, `core[c1f1a4ba060b9bfa]`), and shown so by the symbol reader: rs_pagefault's crash
/// report names `rs_pagefault::store`.
#[test]
fn rust_names_are_demangled_as_cxxfilt_does() {
    let mut rust = 0;
    for name in ["rs_hello", "rs_counter", "rs_panic", "rs_pagefault", "rs_filecopy"] {
        let (path, elf, image) = guest(name);
        let symbols = Symbols::parse(&elf, &image).unwrap();
        for (addr, names) in nm(&path) {
            let (shown, _) = symbols.function(addr).unwrap();
            let Some(raw) = names.iter().find(|n| *shown_name(n) == *shown) else { continue };
            if !raw.starts_with("_R") && !raw.starts_with("_ZN") {
                assert_eq!(shown, raw, "a C name is shown as it is");
                continue;
            }
            let theirs = tool("c++filt", &[raw]);
            let mut theirs = theirs.trim_end().to_owned();
            while let Some(open) = theirs.find('[') {
                let close = theirs[open..].find(']').map_or(theirs.len(), |c| open + c + 1);
                theirs.replace_range(open..close, "");
            }
            assert_eq!(shown, theirs, "{}: {raw}", path.display());
            rust += 1;
        }
    }
    assert!(rust >= 10, "only {rust} Rust names");
    let (_, elf, image) = guest("rs_pagefault");
    let s = Symbols::parse(&elf, &image).unwrap();
    let store = (0..image.len() as u64).find(|&a| s.function(a) == Some(("rs_pagefault::store", 0))).expect("store");
    assert_eq!(s.describe(store + 4).as_deref(), Some("rs_pagefault::store+0x4 (rs_pagefault.rs:30)"));
}

#[test]
fn shown_names_are_demangled_bounded_and_free_of_control_characters() {
    assert_eq!(&*shown_name("guest_main"), "guest_main", "C names as they are");
    assert_eq!(&*shown_name("_RNvCs6GOSKOG1BEw_8rs_hello3fib"), "rs_hello::fib");
    assert_eq!(&*shown_name("_ZN8rs_hello3fib17h4e7ecfad8b3ada5aE"), "rs_hello::fib");
    assert_eq!(&*shown_name("_RNvC3foo3barX"), "_RNvC3foo3barX", "not a Rust name after all: as it is");
    assert_eq!(&*shown_name("red\u{1b}[31mname\u{7f}"), "red\\x1b[31mname\\x7f");
    assert_eq!(&*shown_name("a\u{202e}b\té"), "a\\xe2\\x80\\xaeb\\x09\\xc3\\xa9");
    // Long: cut to MAX_NAME bytes, at a character boundary, ending in "...".
    let long = shown_name(&"x".repeat(300));
    assert_eq!((long.len(), long.ends_with("xx...")), (MAX_NAME, true));
    let wide = shown_name(&"é".repeat(200));
    assert!(wide.ends_with("\\xc3\\xa9...") && wide.is_ascii(), "{wide}");
    assert_eq!(&*shown_name(&"y".repeat(MAX_NAME)), "y".repeat(MAX_NAME), "MAX_NAME bytes fit");
    // A Rust name whose path is longer than MAX_NAME: its demangled form, cut.
    let deep = format!("_R{}C3foo{}", "Nv".repeat(30), "3bar".repeat(30));
    let shown = shown_name(&deep);
    assert!(shown.starts_with("foo::bar::bar::") && shown.ends_with("...") && shown.len() <= MAX_NAME, "{shown}");
}

/// In a real ELF: a Rust name longer than `MAX_NAME` mangled (not demangled) is read whole
/// and demangled; a name holding a terminal escape is shown without it; C names as they are.
#[test]
fn an_elfs_long_rust_names_and_control_characters() {
    // eight generic arguments that are crate roots, each 18 bytes mangled and 3 shown
    let root = "Cs779nruZdk0e_3zoo";
    let long = format!("_RINv{root}3bar{}E", root.repeat(8));
    assert!(long.len() > MAX_NAME);
    let source = format!(
        "int rust_v0(int x) __asm__(\"{long}\");
int rust_v0(int x) {{ return x + 1; }}
int rust_legacy(int x) __asm__(\"_ZN2hv4file4File9read_bulk17h693971a2a270e3f7E\");
int rust_legacy(int x) {{ return rust_v0(x) * 3; }}
int evil(int x) __asm__(\"evil_PLACEHOLDER_red\");
int evil(int x) {{ return rust_legacy(x) - 2; }}
{SMALL_GUEST}"
    );
    let dir = temp_dir("names");
    let (path, mut elf, image) = build(&dir, "names", &source, &["-O0", "-g"]);
    let names = nm(&path);
    let at = |symbol: &str| {
        *names.iter().find(|(_, n)| n.iter().any(|n| n == symbol)).unwrap_or_else(|| panic!("{symbol}")).0
    };
    let (v0, legacy, evil) =
        (at(&long), at("_ZN2hv4file4File9read_bulk17h693971a2a270e3f7E"), at("evil_PLACEHOLDER_red"));
    // The placeholder becomes terminal escapes, a bell and a backspace, wherever the ELF has it
    // (the string table, the debug information: the image is the same).
    while let Some(place) = elf.windows(11).position(|w| w == b"PLACEHOLDER") {
        elf[place..place + 11].copy_from_slice(b"\x1b[31m\x07\x1b[0m\x08");
    }
    let s = Symbols::parse(&elf, &image).unwrap();
    assert_eq!(s.function(v0), Some(("zoo::bar::<zoo, zoo, zoo, zoo, zoo, zoo, zoo, zoo>", 0)));
    assert_eq!(s.function(legacy), Some(("hv::file::File::read_bulk", 0)));
    assert_eq!(s.function(evil), Some(("evil_\\x1b[31m\\x07\\x1b[0m\\x08_red", 0)));
    assert!(s.describe(evil + 1).unwrap().starts_with("evil_\\x1b[31m\\x07\\x1b[0m\\x08_red+0x1 (names.c:"));
    assert_eq!(s.function(0).map(|(n, _)| n), Some("_start"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Builds a one-file guest with `flags` (a DWARF version) into `dir`: (elf path, elf, image).
fn build(dir: &Path, name: &str, source: &str, flags: &[&str]) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, source).unwrap();
    let (o, elf, img) = (c.with_extension("o"), c.with_extension("elf"), c.with_extension("img"));
    let mut args =
        vec!["-c", "-ffreestanding", "-fno-pic", "-fno-pie", "-mgeneral-regs-only", "-fno-asynchronous-unwind-tables"];
    args.extend(flags);
    args.extend([c.to_str().unwrap(), "-o", o.to_str().unwrap()]);
    tool("cc", &args);
    let ld = guest_dir().join("guest.ld");
    tool(
        "ld",
        &["-T", ld.to_str().unwrap(), "--oformat", "elf64-x86-64", "-o", elf.to_str().unwrap(), o.to_str().unwrap()],
    );
    tool("objcopy", &["-O", "binary", elf.to_str().unwrap(), img.to_str().unwrap()]);
    (elf.clone(), std::fs::read(&elf).unwrap(), std::fs::read(&img).unwrap())
}

const SMALL_GUEST: &str = "
int twice(int x)
{
    return x + x;
}

__attribute__((section(\".start\"))) void _start(void)
{
    volatile int v = twice(21);
    (void)v;
    for (;;)
        __asm__ volatile(\"hlt\");
}
";

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mh_symbols_{}_{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The small guest built with each DWARF flavour gcc writes: (name, elf path, elf, image).
fn small_guests(dir: &Path) -> Vec<(&'static str, PathBuf, Vec<u8>, Vec<u8>)> {
    [
        ("v3", &["-O0", "-gdwarf-3"][..]),
        ("v4", &["-O0", "-gdwarf-4"]),
        ("v5", &["-O2", "-gdwarf-5"]),
        ("v5_32", &["-O1", "-gdwarf-5"]),
        ("v5_64", &["-O1", "-gdwarf-5", "-gdwarf64"]),
    ]
    .into_iter()
    .map(|(name, flags)| {
        let (path, elf, image) = build(dir, name, SMALL_GUEST, flags);
        (name, path, elf, image)
    })
    .collect()
}

#[test]
fn dwarf_3_4_5_and_64_bit_dwarf_line_tables_agree_with_addr2line() {
    let dir = temp_dir("dwarf");
    let guests = small_guests(&dir);
    let mut lines = HashMap::new();
    for (name, path, elf, image) in &guests {
        let s = if *name == "v5_64" {
            // binutils 2.40's addr2line misreads 64-bit DWARF line tables; the same code with
            // 32-bit DWARF (v5_32) must give the same lines.
            let s = Symbols::parse(elf, image).unwrap();
            assert_eq!(image, &guests[3].3);
            for (addr, line) in &lines {
                assert_eq!(s.line(*addr).map(|(_, l)| l), *line, "v5_64 line of {addr:#x}");
            }
            s
        } else {
            agrees_with_binutils(path, elf, image)
        };
        if *name == "v5_32" {
            lines = (0..image.len() as u64).map(|a| (a, s.line(a).map(|(_, l)| l))).collect();
            assert!(lines.values().filter(|l| l.is_some()).count() > 10);
        }
        let start = s.describe(0).unwrap();
        assert!(start.starts_with(&format!("_start+0x0 ({name}.c:")), "{start}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unusable_files_give_one_line_or_nothing() {
    let dir = temp_dir("load");
    let (_, elf, image) = guest("crash");
    let img = dir.join("g.img");
    std::fs::write(&img, &image).unwrap();
    assert!(Symbols::load(&img, &image).unwrap().is_none(), "no g.elf: no symbols, no warning");
    std::fs::write(dir.join("g.elf"), &elf).unwrap();
    assert!(Symbols::load(&img, &image).unwrap().is_some());
    // An image rebuilt without its ELF.
    let mut changed = image.clone();
    changed[0x10] ^= 1;
    let e = Symbols::load(&img, &changed).unwrap_err();
    assert_eq!(
        e,
        format!(
            "{}: not used for symbols: its loadable bytes differ from the image: not the same build (rebuild both); addresses are shown bare",
            dir.join("g.elf").display()
        )
    );
    assert!(Symbols::load(&img, &image[..image.len() - 1]).unwrap_err().contains("differ from the image"));
    let cases: [(&[u8], &str); 4] = [
        (b"", "not an ELF file"),
        (&image, "not an ELF file"),
        (b"\x7fELF\x01\x01\x01", "not a 64-bit little-endian x86-64 ELF file"),
        (&elf[..100], "corrupt ELF file: "),
    ];
    for (bytes, words) in cases {
        std::fs::write(dir.join("g.elf"), bytes).unwrap();
        let e = Symbols::load(&img, &image).unwrap_err();
        assert!(e.contains(words) && e.contains("g.elf: not used for symbols"), "{e}");
    }
    // Too large: refused by its size, without reading it (a sparse file).
    let big = std::fs::File::create(dir.join("g.elf")).unwrap();
    big.set_len(MAX_ELF_SIZE + 1).unwrap();
    assert!(Symbols::load(&img, &image).unwrap_err().contains("33554433 bytes, more than the 32 MiB"));
    std::fs::remove_file(dir.join("g.elf")).unwrap();
    std::fs::create_dir(dir.join("g.elf")).unwrap();
    assert!(Symbols::load(&img, &image).unwrap_err().contains("not a regular file"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fifo_named_like_the_elf_does_not_block() {
    let dir = temp_dir("fifo");
    let img = dir.join("g.img");
    std::fs::write(&img, [0xf4]).unwrap();
    assert!(Command::new("mkfifo").arg(dir.join("g.elf")).status().unwrap().success());
    let e = Symbols::load(&img, &[0xf4]).unwrap_err();
    assert!(e.ends_with("g.elf: not used for symbols: not a regular file; addresses are shown bare"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stripped_elf_has_no_symbols() {
    let dir = temp_dir("strip");
    let (path, _, image) = guest("crash");
    let stripped = dir.join("s.elf");
    tool("objcopy", &["--strip-all", path.to_str().unwrap(), stripped.to_str().unwrap()]);
    let e = Symbols::parse(&std::fs::read(&stripped).unwrap(), &image).unwrap_err();
    assert_eq!(e, SymbolError::NoSymbols);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Values that break naive parsers, for header fields and counts.
const EXTREMES: [u64; 10] = [0, 1, 2, 0x7f, 0xff, 0xffff, 0x7fff_ffff, 0xffff_fff0, 0xffff_ffff, u64::MAX];

/// One mutation of `base`: bit flips, a cut, an extreme value in a header field, or noise in
/// the line table.
fn mutate(rng: &mut Rng, base: &[u8], debug_line: (usize, usize)) -> Vec<u8> {
    let mut elf = base.to_vec();
    let field_at = |rng: &mut Rng| -> usize {
        // ELF header fields, section header fields, or anywhere in .debug_line.
        const HEADER: [usize; 9] = [24, 32, 40, 54, 56, 58, 60, 62, 20];
        let shoff = u64::from_le_bytes(base[40..48].try_into().unwrap()) as usize;
        match rng.index(3) {
            0 => HEADER[rng.index(HEADER.len())],
            1 => shoff + 64 * rng.index(20) + 8 * rng.index(8),
            _ => debug_line.0 + rng.index(debug_line.1),
        }
    };
    for _ in 0..1 + rng.index(3) {
        match rng.index(5) {
            0 => {
                for _ in 0..1 + rng.index(8) {
                    let (at, bit) = (rng.index(elf.len()), rng.index(8));
                    if let Some(byte) = elf.get_mut(at) {
                        *byte ^= 1 << bit;
                    }
                }
            }
            1 => elf.truncate(rng.index(elf.len())),
            2 | 3 => {
                let at = field_at(rng);
                let value = EXTREMES[rng.index(EXTREMES.len())].to_le_bytes();
                let width = [1, 2, 4, 8][rng.index(4)];
                for (i, b) in value.iter().take(width).enumerate() {
                    if let Some(byte) = elf.get_mut(at + i) {
                        *byte = *b;
                    }
                }
            }
            _ => {
                let at = debug_line.0 + rng.index(debug_line.1);
                for i in 0..1 + rng.index(16) {
                    if let Some(byte) = elf.get_mut(at + i) {
                        *byte = rng.next() as u8;
                    }
                }
            }
        }
    }
    elf
}

/// Where `.debug_line` is in a guest ELF (file offset, size), by readelf's own reading.
fn debug_line_of(path: &Path) -> (usize, usize) {
    let out = tool("readelf", &["-SW", path.to_str().unwrap()]);
    let line = out.lines().find(|l| l.contains(" .debug_line ")).expect(".debug_line");
    let f: Vec<&str> = line.split(']').nth(1).unwrap().split_whitespace().collect();
    (usize::from_str_radix(f[3], 16).unwrap(), usize::from_str_radix(f[4], 16).unwrap())
}

/// An ELF to mutate, its image, and where its `.debug_line` is (offset, size).
type Base = (Vec<u8>, Vec<u8>, (usize, usize));

/// Parses `rounds` mutations; every result is used, as the hypervisor would use it.
fn fuzz(seed: u64, rounds: usize, bases: &[Base]) -> usize {
    let mut rng = Rng::new(seed);
    let mut usable = 0;
    for round in 0..rounds {
        let (elf, image, debug_line) = &bases[round % bases.len()];
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mutated = mutate(&mut rng, elf, *debug_line);
            let s = Symbols::parse(&mutated, image).ok()?;
            for addr in [0, 0x10, 0x123, image.len() as u64 / 2, image.len() as u64, u64::MAX] {
                let _ = (s.describe(addr), s.line(addr), s.describe_return(addr), s.function_file(addr));
                let _ = s.frame_row(addr);
            }
            Some(s.code().count())
        }));
        match result {
            Ok(parsed) => usable += usize::from(parsed.is_some()),
            Err(panic) => {
                eprintln!("symbols fuzz: panic in round {round}: repeat with MH_SYMBOLS_SEED={seed}");
                std::panic::resume_unwind(panic);
            }
        }
    }
    usable
}

/// Mutated ELFs per run of the fuzz test.
const ROUNDS: usize = 4000;

#[test]
fn thousands_of_mutated_and_truncated_elfs_never_panic_or_hang() {
    let seed = match std::env::var("MH_SYMBOLS_SEED") {
        Ok(s) => s.parse().expect("MH_SYMBOLS_SEED: a decimal number"),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    };
    // A real guest (every unit of hv.c), a Rust guest (mangled names, demangled when shown),
    // and the small guest in each DWARF flavour, whose line tables are small enough that the
    // mutations often land in them.
    let dir = temp_dir("fuzz");
    let mut bases = Vec::new();
    for name in ["crash", "rs_panic"] {
        let (path, elf, image) = guest(name);
        bases.push((elf, image, debug_line_of(&path)));
    }
    for (_, path, elf, image) in small_guests(&dir) {
        bases.push((elf, image, debug_line_of(&path)));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (done, results) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || done.send(fuzz(seed, ROUNDS, &bases)));
    // A parser that loops for ever fails the test instead of hanging it.
    match results.recv_timeout(Duration::from_secs(60)) {
        Ok(usable) => eprintln!(
            "symbols fuzz: seed {seed}: {ROUNDS} ELFs in {:.2} s, {usable} still usable",
            started.elapsed().as_secs_f64()
        ),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("symbols fuzz: still running after 60 s: MH_SYMBOLS_SEED={seed}")
        }
        Err(e) => panic!("symbols fuzz: {e}: MH_SYMBOLS_SEED={seed}"),
    }
}

/// Not a check, a measurement (run it with `cargo test --release -p inspect -- --ignored
/// --nocapture reading_a_1_mib_elf`): how long `Symbols::load` takes on a guest ELF of about
/// 1 MiB (3600 functions at -O0 -g, 8000 line rows), file reading included.
#[test]
#[ignore]
fn reading_a_1_mib_elf() {
    let dir = temp_dir("big");
    let mut source = String::from(SMALL_GUEST);
    for i in 0..3600 {
        source += &format!(
            "unsigned long table_{i}[4] = {{{i}, 1, 2, 3}};\n\
             unsigned long f_{i}(unsigned long x)\n{{\n    unsigned long y = x * {i};\n    \
             if (y > {i})\n        y -= table_{i}[x & 3];\n    return y + {i};\n}}\n"
        );
    }
    let (path, elf, image) = build(&dir, "big", &source, &["-O0", "-g"]);
    let img = path.with_extension("img");
    let mut times: Vec<Duration> = (0..21)
        .map(|_| {
            let t = Instant::now();
            let s = Symbols::load(&img, &image).unwrap().unwrap();
            let took = t.elapsed();
            assert!(s.describe(0x20).is_some());
            took
        })
        .collect();
    times.sort();
    let s = Symbols::parse(&elf, &image).unwrap();
    eprintln!(
        "reading a {} byte ELF ({} functions, {} line rows): median {:?}, fastest {:?}",
        elf.len(),
        s.functions.len(),
        s.lines.rows.len(),
        times[times.len() / 2],
        times[0]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The warnings of [`a_bad_elf_warns_once_and_is_not_read_again`], and of
/// [`threads_share_one_reading`] (each test its own list: tests run in parallel).
static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
static WARNED_THREADS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn warned(line: &str) {
    WARNED.lock().unwrap().push(line.to_owned());
}

fn warned_threads(line: &str) {
    WARNED_THREADS.lock().unwrap().push(line.to_owned());
}

#[test]
fn a_symbol_file_reads_nothing_until_asked() {
    let dir = temp_dir("lazy");
    let (_, elf, image) = guest("crash");
    let img = dir.join("g.img");
    let file = SymbolFile::new(&img, image.clone().into());
    assert!(!file.is_read());
    std::fs::write(dir.join("g.elf"), &elf).unwrap(); // there now: it is read at the first get
    assert!(!file.is_read());
    let s = file.get().expect("the ELF matches the image");
    assert_eq!(s.describe(0).as_deref(), Some("_start+0x0"));
    assert!(file.is_read());
    // Gone now: the symbols read stay.
    std::fs::remove_file(dir.join("g.elf")).unwrap();
    assert_eq!(file.get().and_then(|s| s.describe(0)).as_deref(), Some("_start+0x0"));
    // No ELF: no symbols, no warning.
    let missing = SymbolFile::warning_to(&dir.join("none.img"), image.into(), |line| panic!("no warning: {line}"));
    assert!(missing.get().is_none() && missing.is_read());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_elf_warns_once_and_is_not_read_again() {
    let dir = temp_dir("bad");
    let (_, elf, image) = guest("crash");
    let img = dir.join("g.img");
    let elf_path = dir.join("g.elf");
    std::fs::write(&elf_path, b"not an ELF at all").unwrap();
    let file = SymbolFile::warning_to(&img, image.into(), warned);
    assert!(WARNED.lock().unwrap().is_empty(), "nothing read yet");
    assert!(file.get().is_none());
    let warning = format!(
        "mini_hypervisor: warning: {}: not used for symbols: not an ELF file; addresses are shown bare",
        elf_path.display()
    );
    assert_eq!(*WARNED.lock().unwrap(), std::slice::from_ref(&warning));
    // A good ELF now: the answer stays the first one, and nothing is said again.
    std::fs::write(&elf_path, &elf).unwrap();
    for _ in 0..3 {
        assert!(file.get().is_none());
    }
    assert_eq!(*WARNED.lock().unwrap(), [warning]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn threads_share_one_reading() {
    fn shared<T: Send + Sync>() {}
    shared::<SymbolFile>();
    let dir = temp_dir("threads");
    let (_, elf, image) = guest("crash");
    let mut other = image.clone();
    other[0x10] ^= 1;
    std::fs::write(dir.join("g.elf"), &elf).unwrap();
    // One image that matches its ELF, one that does not: 8 threads ask each at once.
    let good = std::sync::Arc::new(SymbolFile::new(&dir.join("g.img"), image.into()));
    let bad = std::sync::Arc::new(SymbolFile::warning_to(&dir.join("g.img"), other.into(), warned_threads));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (good, bad) = (std::sync::Arc::clone(&good), std::sync::Arc::clone(&bad));
            std::thread::spawn(move || (good.get().is_some(), bad.get().is_some()))
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), (true, false));
    }
    let warnings = WARNED_THREADS.lock().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].ends_with(
        "its loadable bytes differ from the image: not the same build (rebuild both); addresses are shown bare"
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
