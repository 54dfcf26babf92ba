//! A failing guest explains itself (docs/REFERENCE.md §8): small guests that crash in the
//! usual ways, run under real KVM, with their exit status, their stdout and the words on
//! stderr; symbols from the ELF beside the image, or none; and the guest Makefile's DEBUG=1,
//! CFLAGS and `make check`, run on a copy of `guest/`.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Guarded, Run, guest, kvm_available, run, run_with_input, temp_dir};

const NO_IDT: &str = "the guest has no interrupt table (IDTR limit 0), so any exception ends in a triple fault, \
                      with RIP on the instruction that raised it";

const UD2: &str = "ud2: the undefined instruction, which raises #UD on purpose: asm(\"ud2\") or __builtin_trap() in \
                   the source, or put there by the compiler where it proved that the code cannot go on, after an \
                   access through a NULL pointer or where a function declared not to return returned";

/// The stderr line that starts with `start`.
fn line<'a>(run: &'a Run, start: &str) -> &'a str {
    run.stderr.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no line {start:?} in:\n{}", run.stderr))
}

/// The one-line diagnostic of the failed VM.
fn failed(run: &Run) -> &str {
    let found = run.stderr.lines().find(|l| l.contains(": failed at RIP "));
    found.unwrap_or_else(|| panic!("no failure in:\n{}", run.stderr))
}

#[test]
fn a_store_beyond_ram_names_the_function_the_line_and_the_address() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "-m", "2", "-p", "4", "-g", &guest("beyond.img")]);
    assert_eq!((r.status, r.stdout().as_str()), (1, "storing to 0x300000\n"), "{}", r.stderr);
    let failed = failed(&r);
    assert!(failed.contains("beyond.img): failed at RIP 0x10 in store_far+0x0 (beyond.c:"), "{failed}");
    assert!(failed.ends_with("): triple fault (KVM_EXIT_SHUTDOWN): the guest crashed"), "{failed}");
    for words in [
        "  - the instruction at RIP: 48 c7 04 25 00 00 30 00 2a 00 00 00 (it accesses memory)",
        "  - page fault at 0x300000 (CR2): beyond the 2 MiB of RAM, where nothing is mapped",
        &format!("  - {NO_IDT}"),
    ] {
        assert!(r.stderr.lines().any(|l| l == words), "{words:?} not in:\n{}", r.stderr);
    }
    // With 4 MiB, 0x300000 is RAM: the store works.
    let r = run(&["-q", "-m", "4", "-p", "2", "-g", &guest("beyond.img")]);
    assert_eq!((r.status, r.stdout().as_str(), r.stderr.as_str()), (0, "storing to 0x300000\nstored\n", ""));
}

#[test]
fn a_load_from_the_first_address_past_ram_is_beyond_it() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "-m", "2", "-p", "4", "-g", &guest("edge.img")]);
    assert_eq!((r.status, r.stdout().as_str()), (1, "loading from 0x200000\n"), "{}", r.stderr);
    assert!(failed(&r).contains(" in load_end+0x0 (edge.c:"), "{}", r.stderr);
    assert!(
        r.stderr
            .lines()
            .any(|l| l == "  - page fault at 0x200000 (CR2): beyond the 2 MiB of RAM, where nothing is mapped"),
        "{}",
        r.stderr
    );
    // With 4 MiB, 0x200000 is RAM: the load works.
    let r = run(&["-q", "-m", "4", "-p", "4", "-g", &guest("edge.img")]);
    assert_eq!((r.status, r.stdout().as_str(), r.stderr.as_str()), (0, "loading from 0x200000\nloaded\n", ""));
}

#[test]
fn a_stray_write_into_the_page_tables_is_said_first() {
    if !kvm_available() {
        return;
    }
    for (pages, entry) in [
        ("4", "at 0x1ff000 (PT 0, entry 0, for 0x0..0xfff: 0x3 before, 0x0 now)"),
        ("2", "at 0x1ff000 (PD, entry 0, for 0x0..0x1fffff: 0x83 before, 0x0 now)"),
    ] {
        let r = run(&["-q", "-m", "2", "-p", pages, "-g", &guest("tables.img")]);
        assert_eq!(
            (r.status, r.stdout().as_str()),
            (1, "clearing the page-table entry of my own code\n"),
            "{}",
            r.stderr
        );
        let failed = failed(&r);
        assert!(failed.contains(" in clear_code_mapping+0x") && failed.contains(" (tables.c:"), "{failed}");
        let words: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("  - ")).collect();
        assert_eq!(words[0], format!("  - the guest overwrote the page tables the hypervisor built {entry}"));
        assert!(
            words[1].starts_with("  - RIP 0x")
                && words[1].ends_with(
                    " is in RAM but not mapped by the guest's page tables, which the guest changed (see above)"
                ),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains("the guest jumped there"), "{}", r.stderr);
    }
    // A guest that changes its tables on purpose is told so as well, first.
    let r = run(&["-q", "-m", "2", "-p", "4", "-g", &guest("mmio.img")]);
    assert_eq!(r.status, 1, "{}", r.stderr);
    let first = r.stderr.lines().find(|l| l.starts_with("  - ")).unwrap();
    assert!(
        first.starts_with(
            "  - the guest overwrote the page tables the hypervisor built at 0x1fd008 (PDPT, entry 1, for \
             0x40000000..0x7fffffff: 0x0 before, 0x"
        ),
        "{first}"
    );
}

/// The backtrace lines of a report: from `  backtrace:` to the end of the report.
fn backtrace(run: &Run) -> Vec<&str> {
    let lines: Vec<&str> = run.stderr.lines().collect();
    let start =
        lines.iter().position(|l| *l == "  backtrace:").unwrap_or_else(|| panic!("no backtrace:\n{}", run.stderr));
    lines[start + 1..].iter().copied().take_while(|l| l.starts_with("    ")).collect()
}

/// Each backtrace line is `#N 0xADDR in ` + what starts with the `expected` part, in order.
fn assert_frames(run: &Run, expected: &[&str]) {
    let frames = backtrace(run);
    assert_eq!(frames.len(), expected.len(), "{}", run.stderr);
    for (n, (frame, want)) in frames.iter().zip(expected).enumerate() {
        let (head, rest) = frame.split_once(" in ").unwrap_or((frame, ""));
        assert!(head.starts_with(&format!("    #{n} 0x")), "{frame}");
        assert!(
            rest.starts_with(want.split('*').next().unwrap()) && rest.ends_with(want.rsplit('*').next().unwrap()),
            "{frame} is not {want}:\n{}",
            run.stderr
        );
    }
}

#[test]
fn the_backtrace_names_each_caller_by_the_line_of_its_call_at_o2_and_o0() {
    if !kvm_available() {
        return;
    }
    // -O2: store_far keeps no frame pointer; the call-frame information still gives its caller.
    let expected = ["store_far+0x*(beyond.c:17)", "guest_main+0x*(beyond.c:23)", "_start+0xd"];
    let r = run(&["-q", "-m", "2", "-p", "4", "-g", &guest("beyond.img")]);
    assert_frames(&r, &expected);
    // -O0 (DEBUG=1), built in a copy of guest/: other addresses, the same functions and lines.
    let dir = guest_copy("backtrace_o0");
    let (status, out) = make(&dir, &["beyond.img", "DEBUG=1"]);
    assert_eq!(status, 0, "{out}");
    let r = run(&["-q", "-m", "2", "-p", "4", "-g", dir.join("beyond.img").to_str().unwrap()]);
    assert_frames(&r, &expected);
    let _ = std::fs::remove_dir_all(dir);
    // A call through a bad pointer: RIP has no name, and its caller is found on the stack.
    let r = run_with_input(&["-q", "-m", "2", "-p", "4", "-g", &guest("debugme.img")], b"c");
    assert_eq!(r.status, 1, "{}", r.stderr);
    assert_eq!(backtrace(&r)[0], "    #0 0xc0000000");
    assert!(backtrace(&r)[1].ends_with(" in guest_main+0xba (debugme.c:57)"), "{}", r.stderr);
    // Without the ELF: no backtrace.
    let (dir, img) = alone("no_elf_backtrace", "beyond.img", None);
    let r = run(&["-q", "-m", "2", "-p", "4", "-g", &img]);
    assert!(!r.stderr.lines().any(|l| l == "  backtrace:"), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_recursion_and_a_stack_below_zero_stop_the_backtrace_with_a_reason() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "-m", "2", "-p", "4", "-g", &guest("recurse.img")]);
    assert_eq!(
        backtrace(&r)[1],
        "    (the chain stops here: the caller's frame would be at 0xffffffffffffff20 + 0x110, past the top of the \
         address space: a stack overflow below address 0?)"
    );
    let dir = guest_copy("backtrace_recurse_o0");
    let (status, out) = make(&dir, &["recurse.img", "DEBUG=1"]);
    assert_eq!(status, 0, "{out}");
    let r = run(&["-q", "-m", "2", "-p", "4", "-g", dir.join("recurse.img").to_str().unwrap()]);
    let frames = backtrace(&r);
    assert!(frames[1].contains(" in sum_to+0x") && frames[1].ends_with(" (recurse.c:19)"), "{}", r.stderr);
    assert_eq!(frames[2], "    #2..#31: the same call, 30 more times (a recursion)");
    assert_eq!(frames[3], "    (the chain stops here: more frames not shown (at most 32))");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn trace_names_the_first_caller_outside_the_guest_library() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "--trace", "-m", "2", "-p", "4", "-g", &guest("crash.img")]);
    let outs: Vec<&str> = r.stderr.lines().filter(|l| l.contains(" io out port=0xe9 ")).collect();
    assert_eq!(outs.len(), "crashing now\n".len(), "{}", r.stderr);
    for line in outs {
        assert!(line.contains(" in puts_e9+0x") && line.ends_with(" via guest_main+0xe (crash.c:8)"), "{line}");
    }
    // hello.c's guest_main jumps to puts_e9 (a tail call): no caller of its own to name.
    let r = run(&["-q", "--trace", "-m", "2", "-p", "4", "-g", &guest("guest.img")]);
    assert!(r.stderr.contains(" in puts_e9+0x") && !r.stderr.contains(" via "), "{}", r.stderr);
}

#[test]
fn a_null_write_over_start_halts_with_one_warning() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "-m", "2", "-p", "2", "-g", &guest("nullwrite.img")]);
    assert_eq!((r.status, r.stdout().as_str()), (0, "linking a node\nlinked\n"));
    assert_eq!(
        r.stderr,
        format!(
            "mini_hypervisor: warning: vm0 ({}): the guest overwrote its own code at 0x8..0xf, in _start: \
             a write through a null pointer?\n",
            guest("nullwrite.img")
        )
    );
}

#[test]
fn a_runaway_recursion_is_called_a_stack_overflow() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "-m", "2", "-p", "4", "-g", &guest("recurse.img")]);
    assert_eq!((r.status, r.stdout().as_str()), (1, "recursing\n"), "{}", r.stderr);
    let failed = failed(&r);
    assert!(failed.contains(" in sum_to+0x") && failed.contains(" (recurse.c:"), "{failed}");
    let stack = line(&r, "  - RSP ");
    assert!(
        stack.ends_with(": the stack overflowed or was corrupted (a runaway recursion, a large local array?)"),
        "{stack}"
    );
    assert!(r.stderr.contains(NO_IDT), "{}", r.stderr);
    // On its way down, the stack went over the code.
    let overwritten = line(&r, "mini_hypervisor: warning: ");
    assert!(overwritten.ends_with(": the stack grew down over it (a stack overflow?)"), "{overwritten}");
}

#[test]
fn ud2_is_named_with_its_function() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-m", "2", "-p", "2", "-g", &guest("ud2.img")]);
    assert_eq!((r.status, r.stdout().as_str()), (1, "running ud2\n"), "{}", r.stderr);
    assert!(failed(&r).contains("ud2.img): failed at RIP 0x10 in bad_opcode+0x0 (ud2.c:"), "{}", r.stderr);
    let words: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("  - ")).collect();
    assert_eq!(words, [&format!("  - the instruction at RIP: 0f 0b ({UD2})"), &format!("  - {NO_IDT}"),]);
    // The words come right after the register dump.
    let dump_end = r.stderr.find("     cr3 ").unwrap();
    assert!(r.stderr[dump_end..].lines().nth(1).unwrap().starts_with("  - the instruction at RIP"));
}

#[test]
fn a_ud2_the_compiler_put_after_a_null_store_is_said_so() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "-m", "2", "-p", "4", "-g", &guest("nulltrap.img")]);
    assert_eq!((r.status, r.stdout().as_str()), (1, "linking a node\n"), "{}", r.stderr);
    assert!(failed(&r).contains(" in link_after"), "{}", r.stderr);
    let words: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("  - ")).collect();
    assert_eq!(words[0], format!("  - the instruction at RIP: 0f 0b ({UD2})"), "{}", r.stderr);
    assert!(
        words[1].starts_with("  - the instruction before it, at 0x")
            && words[1].ends_with(
                ", accesses address 0x8 through a NULL pointer: the compiler saw that the pointer is always NULL \
                 there, kept the access, and put the ud2 after it"
            ),
        "{}",
        r.stderr
    );
    // The store itself went to RAM, over _start.
    let overwritten = line(&r, "mini_hypervisor: warning: ");
    assert!(overwritten.ends_with("own code at 0x8..0xf, in _start: a write through a null pointer?"), "{overwritten}");
}

#[test]
fn a_guest_spinning_on_a_jump_to_itself_is_called_an_endless_loop() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "-m", "2", "-p", "4", "-g", &guest("spin.img"), "--timeout", "0.2"]);
    assert_eq!((r.status, r.stdout().as_str()), (1, "spinning\n"), "{}", r.stderr);
    assert!(
        failed(&r).contains(" in guest_main+0x") && failed(&r).ends_with(": timed out after 0.2 s"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.lines().any(|l| l
            == "  - the instruction at RIP: eb fe (jmp to itself: an endless loop, such as for (;;); or a wait for \
                something that never comes)"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_guest_with_its_own_interrupt_table_handles_its_exception() {
    if !kvm_available() {
        return;
    }
    let r = run(&["-q", "-m", "2", "-p", "4", "-g", &guest("ownidt.img")]);
    assert_eq!(
        (r.status, r.stdout().as_str(), r.stderr.as_str()),
        (0, "ownidt: ud2 with my own handler\nownidt: handled 1 time, back after the ud2\n", "")
    );
}

/// `NAME.img` copied into a fresh directory, with `elf` (if any) as `NAME.elf` beside it.
fn alone(tag: &str, image: &str, elf: Option<&Path>) -> (PathBuf, String) {
    let dir = temp_dir(tag);
    let img = dir.join(image);
    std::fs::copy(guest(image), &img).unwrap();
    if let Some(elf) = elf {
        std::fs::copy(elf, img.with_extension("elf")).unwrap();
    }
    (dir, img.to_str().unwrap().to_owned())
}

#[test]
fn without_a_matching_elf_addresses_are_bare_with_at_most_one_warning() {
    if !kvm_available() {
        return;
    }
    let (dir, img) = alone("no_elf", "ud2.img", None);
    let r = run(&["-q", "-m", "2", "-p", "2", "-g", &img]);
    assert!(
        r.stderr.starts_with(&format!("mini_hypervisor: vm0 ({img}): failed at RIP 0x10: triple fault")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("  - the instruction at RIP: 0f 0b (ud2"), "{}", r.stderr);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(dir);
    // An ELF of another guest: one warning, then bare addresses.
    let (dir, img) = alone("stale_elf", "ud2.img", Some(Path::new(&guest("crash.elf"))));
    let r = run(&["-q", "-m", "2", "-p", "2", "-g", &img]);
    let elf = Path::new(&img).with_extension("elf");
    assert_eq!(
        r.stderr.lines().next().unwrap(),
        format!(
            "mini_hypervisor: warning: {}: not used for symbols: its loadable bytes differ from the image: not the same \
             build (rebuild both); addresses are shown bare",
            elf.display()
        )
    );
    assert_eq!(r.stderr.matches("warning").count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("failed at RIP 0x10: triple fault"), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_fifo_or_garbage_named_like_the_elf_neither_blocks_nor_fails_the_run() {
    if !kvm_available() {
        return;
    }
    let (dir, img) = alone("fifo_elf", "template.img", None);
    assert!(Command::new("mkfifo").arg(Path::new(&img).with_extension("elf")).status().unwrap().success());
    // A run that halts with its image unchanged needs no symbols: NAME.elf is not looked at.
    let r = run(&["-q", "-m", "2", "-p", "2", "-g", &img]);
    assert_eq!((r.status, r.stderr.as_str()), (0, ""));
    // --trace names addresses: it looks at NAME.elf, and says why it cannot use it.
    let r = run(&["-q", "--trace", "-m", "2", "-p", "2", "-g", &img]);
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert!(r.stderr.contains("template.elf: not used for symbols: not a regular file; addresses are shown bare\n"));
    let _ = std::fs::remove_dir_all(dir);
    let (dir, img) = alone("garbage_elf", "template.img", None);
    std::fs::write(Path::new(&img).with_extension("elf"), b"\x7fELF\x02\x01\x01garbage").unwrap();
    let r = run(&["-q", "--trace", "-m", "2", "-p", "2", "-g", &img]);
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert!(r.stderr.contains("template.elf: not used for symbols: "), "{}", r.stderr);
    assert_eq!(r.stderr.matches("warning").count(), 1, "{}", r.stderr);
    let _ = std::fs::remove_dir_all(dir);
}

/// A copy of `guest/` (sources, and whatever is built, with its times) to run make in,
/// so that the images the other tests use are never rebuilt under them.
fn guest_copy(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest");
    let status = Command::new("cp").arg("-a").arg(src.join(".")).arg(&dir).status().unwrap();
    assert!(status.success());
    dir
}

/// `make ARGS` in `dir`: (exit status, stdout and stderr).
fn make(dir: &Path, args: &[&str]) -> (i32, String) {
    let mut command = Command::new("make");
    command.arg("-C").arg(dir).arg("--no-print-directory").args(args);
    let r = Guarded::command(command, Duration::from_secs(300)).finish();
    (r.status, format!("{}{}", r.stdout(), r.stderr))
}

/// The compiler line that built `object`, from make's V=1 output.
fn compile_line<'a>(output: &'a str, object: &str) -> &'a str {
    let tail = format!("-c {} -o {object}", object.replace(".o", ".c"));
    output.lines().find(|l| l.ends_with(&tail)).unwrap_or_else(|| panic!("{object} not compiled:\n{output}"))
}

#[test]
fn debug_builds_at_o0_and_cflags_adds_to_the_required_flags() {
    let dir = guest_copy("make_flags");
    let (status, out) = make(&dir, &["ud2.img", "DEBUG=1", "V=1"]);
    assert_eq!(status, 0, "{out}");
    let cc = compile_line(&out, "ud2.o");
    assert!(cc.contains(" -mgeneral-regs-only ") && cc.contains(" -O0 -g") && !cc.contains("-O2"), "{cc}");
    // The ELF says so itself (gcc records its options in the debug info).
    let elf = std::fs::read(dir.join("ud2.elf")).unwrap();
    assert!(contains(&elf, b" -g -O0 ") && contains(&elf, b"-mgeneral-regs-only"));
    // Nothing changed: nothing rebuilt, also without DEBUG (the image keeps its flags, and make
    // says so). DEBUG=0: rebuilt at -O2.
    let (status, out) = make(&dir, &["ud2.img", "DEBUG=1", "V=1"]);
    assert_eq!(status, 0, "{out}");
    assert!(!out.contains(" -c "), "nothing to compile again:\n{out}");
    let (status, out) = make(&dir, &["ud2.img", "V=1"]);
    assert_eq!(status, 0, "{out}");
    assert!(!out.contains(" -c ") && out.contains("ud2.img: kept as built with DEBUG=1"), "{out}");
    let (status, out) = make(&dir, &["ud2.img", "DEBUG=0", "V=1"]);
    assert_eq!(status, 0, "{out}");
    assert!(compile_line(&out, "ud2.o").contains(" -O2 -g"), "{out}");
    // CFLAGS on the command line comes last and replaces nothing.
    let (status, out) = make(&dir, &["ud2.img", "V=1", "CFLAGS=-O0 -DEXTRA=1"]);
    assert_eq!(status, 0, "{out}");
    let cc = compile_line(&out, "ud2.o");
    assert!(
        cc.contains(" -mgeneral-regs-only ") && cc.contains(" -ffreestanding ") && cc.contains(" -O0 -DEXTRA=1"),
        "{cc}"
    );
    // CFLAGS from the environment is not used.
    let mut command = Command::new("make");
    command.arg("-C").arg(&dir).args(["--no-print-directory", "ud2.img", "V=1"]).env("CFLAGS", "-fstack-protector-all");
    let r = Guarded::command(command, Duration::from_secs(300)).finish();
    assert!(!r.stdout().contains("-fstack-protector-all"), "{}", r.stdout());
    let _ = std::fs::remove_dir_all(dir);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn make_check_checks_a_students_own_images_and_names_the_bad_one() {
    let dir = guest_copy("make_check");
    std::fs::copy(dir.join("template.c"), dir.join("mine.c")).unwrap();
    let (status, out) = make(&dir, &["mine.img"]);
    assert_eq!(status, 0, "{out}");
    let (status, out) = make(&dir, &["check"]);
    assert_eq!(status, 0, "{out}");
    assert!(out.contains(" images OK "), "{out}");
    // A flat binary that is not a guest of this Makefile: named, and the check fails.
    std::fs::write(dir.join("stray.img"), [0xf4]).unwrap();
    let (status, out) = make(&dir, &["check"]);
    assert_ne!(status, 0, "{out}");
    assert!(out.contains("check: stray.img does not start with _start"), "{out}");
    assert!(out.contains("check: FAILED: stray.img\n"), "{out}");
    // A student's image with SSE code (as if built without -mgeneral-regs-only): addps at 0x10,
    // the first instruction after _start.
    std::fs::remove_file(dir.join("stray.img")).unwrap();
    let mut mine = std::fs::read(dir.join("mine.img")).unwrap();
    mine[0x10..0x13].copy_from_slice(&[0x0f, 0x58, 0xc1]);
    std::fs::write(dir.join("mine.img"), mine).unwrap();
    let (status, out) = make(&dir, &["check"]);
    assert_ne!(status, 0, "{out}");
    assert!(out.contains("check: mine.img contains SSE/MMX code"), "{out}");
    assert!(out.contains("check: FAILED: mine.img\n"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}
