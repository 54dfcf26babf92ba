//! `--gdb PORT`: the real gdb against guest/debugme (break, next, print, set var, watch, a
//! crash, kill, detach; `hlt` reached by every kind of step; six breakpoints and an inlined
//! function's many; the control registers; `monitor`), and a small raw client for the
//! protocol's edge cases (bad checksum, unknown packet, unmapped memory, 0x03 while the guest
//! runs, a dropped connection, a hostile client). Every process runs under a guard; the tests
//! wait for the hypervisor's "waiting for GDB" line before they connect. Without gdb installed
//! (and outside CI) the gdb tests are skipped.
use crate::common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::{Guarded, Run, free_port, gdb_installed, guest, kvm_available};

const GUARD: Duration = Duration::from_secs(60);

/// Starts the hypervisor on `image` with `--gdb`, `input` on its stdin, and waits until it
/// says it is waiting for GDB. Returns it and the port.
fn start(image: &str, extra: &[&str], input: &[u8]) -> (Guarded, u16) {
    let port = free_port();
    let port_arg = port.to_string();
    let mut args = vec!["-m", "2", "-p", "4", "--gdb", &port_arg, "-g", image];
    args.extend_from_slice(extra);
    let mut hv = Guarded::spawn(&std::env::temp_dir(), &args, GUARD);
    hv.input(input, true);
    hv.wait_for_stderr("the waiting for GDB line", |e| e.contains("waiting for GDB"));
    (hv, port)
}

/// Runs gdb in batch mode on debugme.elf against `port`, with `commands` after the connect.
fn gdb(port: u16, commands: &[&str]) -> String {
    let mut cmd = Command::new("gdb");
    cmd.args(["-batch", "-nx", "-ex", "set confirm off", "-ex", "set pagination off"]);
    cmd.arg(guest("debugme.elf"));
    cmd.args(["-ex", &format!("target remote 127.0.0.1:{port}")]);
    for c in commands {
        cmd.args(["-ex", c]);
    }
    let mut g = Guarded::command(cmd, GUARD);
    g.input(b"", true);
    let run = g.finish();
    format!("{}{}", run.stdout(), run.stderr)
}

fn ready() -> bool {
    kvm_available() && gdb_installed()
}

fn expect(text: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(text.contains(w), "missing {w:?} in:\n{text}");
    }
}

fn finish(hv: Guarded) -> Run {
    hv.finish()
}

/// debugme's whole output when stdin is not 'c'.
const DEBUGME_OUT: &str = "debugme: 1 4 9\ndebugme: total 14, counter 3\n";

/// Runs gdb with `commands` on debugme (stdin `input`); the VM must end normally (`hlt`), with
/// gdb told so and the guest's output complete. Returns gdb's output and the hypervisor's stderr.
fn to_the_end(input: &[u8], commands: &[&str]) -> (String, String) {
    let (hv, port) = start(&guest("debugme.img"), &[], input);
    let out = gdb(port, commands);
    let run = finish(hv);
    assert!(out.contains("[Inferior 1 (Remote target) exited normally]"), "{commands:?}:\n{out}\n{}", run.stderr);
    assert_eq!(run.status, 0, "{commands:?}:\n{}", run.stderr);
    assert_eq!(run.stdout(), DEBUGME_OUT, "{commands:?}");
    (out, run.stderr)
}

#[test]
fn break_next_print_set_var_and_run_to_the_end() {
    if !ready() {
        return;
    }
    let (hv, port) = start(&guest("debugme.img"), &[], b"");
    let out = gdb(
        port,
        &[
            "break square",
            "continue",
            "next",
            "next",
            "print result",
            "print counter",
            "set var $r12 = 0x1234",
            "print/x $r12",
            "set var counter = 40",
            "info registers rbp rsp",
            "delete",
            "continue",
        ],
    );
    expect(&out, &["Breakpoint 1, square (n=1) at debugme.c", "$1 = 1", "$2 = 1", "$3 = 0x1234", "exited normally"]);
    let run = finish(hv);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.stdout(), "debugme: 1 4 9\ndebugme: total 14, counter 42\n");
}

#[test]
fn a_breakpoint_stops_every_time_its_line_runs() {
    if !ready() {
        return;
    }
    let (hv, port) = start(&guest("debugme.img"), &[], b"");
    let out = gdb(port, &["break square", "continue", "continue", "continue", "print n", "continue"]);
    expect(&out, &["square (n=1)", "square (n=2)", "square (n=3)", "$1 = 3", "exited normally"]);
    assert_eq!(finish(hv).status, 0);
}

#[test]
fn watch_stops_where_the_variable_changes() {
    if !ready() {
        return;
    }
    let (hv, port) = start(&guest("debugme.img"), &[], b"");
    let out = gdb(port, &["watch counter", "continue", "continue", "delete", "continue"]);
    expect(&out, &["atchpoint 1: counter", "Old value = 0", "New value = 1", "New value = 2", "exited normally"]);
    assert_eq!(finish(hv).status, 0);
}

#[test]
fn rwatch_and_awatch_are_refused_and_the_stub_says_why_once() {
    if !ready() {
        return;
    }
    // This KVM fires no data breakpoints: gdb's own words for the refusal are about "too many
    // hardware breakpoints"; the hypervisor says why, once.
    let commands = ["rwatch counter", "continue", "awatch counter", "continue", "delete", "continue"];
    let (out, stderr) = to_the_end(b"", &commands);
    expect(&out, &["Could not insert hardware watchpoint 1."]);
    let said = "mini_hypervisor: gdb: rwatch/awatch refused: this KVM fires no data breakpoints";
    assert_eq!(stderr.matches(said).count(), 1, "{stderr}");
}

#[test]
fn a_crash_is_sigsegv_with_its_registers_then_the_vm_fails() {
    if !ready() {
        return;
    }
    let (hv, port) = start(&guest("debugme.img"), &[], b"c");
    let out = gdb(port, &["continue", "print/x $rip", "kill"]);
    expect(&out, &["SIGSEGV", "$1 = 0xc0000000"]);
    let run = finish(hv);
    assert_eq!(run.status, 1);
    expect(&run.stderr, &["triple fault", "RIP 0xc0000000"]);
}

#[test]
fn continuing_after_a_crash_ends_the_vm_as_failed() {
    if !ready() {
        return;
    }
    let (hv, port) = start(&guest("debugme.img"), &[], b"c");
    let out = gdb(port, &["continue", "continue"]);
    expect(&out, &["SIGSEGV", "terminated with signal SIGSEGV"]);
    let run = finish(hv);
    assert_eq!(run.status, 1);
    expect(&run.stderr, &["triple fault"]);
}

#[test]
fn kill_ends_the_vm_as_failed() {
    if !ready() {
        return;
    }
    let (hv, port) = start(&guest("debugme.img"), &[], b"");
    gdb(port, &["break square", "continue", "kill"]);
    let run = finish(hv);
    assert_eq!(run.status, 1);
    expect(&run.stderr, &["killed by the debugger"]);
    assert_eq!(run.stdout(), "debugme:", "the guest stopped in its first call of square");
}

#[test]
fn detach_lets_the_guest_run_to_its_end() {
    if !ready() {
        return;
    }
    let (hv, port) = start(&guest("debugme.img"), &[], b"");
    let out = gdb(port, &["break square", "continue", "detach"]);
    expect(&out, &["Breakpoint 1, square (n=1)", "etached"]);
    let run = finish(hv);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.stdout(), "debugme: 1 4 9\ndebugme: total 14, counter 3\n");
}

#[test]
fn a_port_in_use_is_a_startup_error() {
    if !kvm_available() {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let run = common::run(&["-m", "2", "-p", "4", "-g", &guest("debugme.img"), "--gdb", &port]);
    assert_eq!(run.status, 1);
    assert_eq!(
        run.stderr,
        format!(
            "mini_hypervisor: --gdb {port}: cannot listen on 127.0.0.1:{port}: Address in use: choose another port\n"
        )
    );
    assert_eq!(run.stdout, b"", "no VM ran");
}

#[test]
fn a_timeout_while_waiting_for_gdb_ends_the_vm() {
    if !kvm_available() {
        return;
    }
    let (hv, _port) = start(&guest("debugme.img"), &["--timeout", "0.5"], b"");
    let run = finish(hv);
    assert_eq!(run.status, 1);
    expect(&run.stderr, &["timed out"]);
}

#[test]
fn a_timeout_while_the_guest_runs_under_gdb_ends_the_vm_and_tells_gdb() {
    if !kvm_available() {
        return;
    }
    let (hv, port) = start(&guest("spin.img"), &["--timeout", "1"], b"");
    let mut c = Client::connect(port);
    c.send("c");
    assert_eq!(c.reply(), "X09", "gdb hears the guest was killed");
    let run = finish(hv);
    assert_eq!(run.status, 1);
    expect(&run.stderr, &["timed out"]);
}

#[test]
fn the_other_vms_run_while_vm0_waits() {
    if !kvm_available() || common::BIN.ends_with("mini_hypervisor_a") {
        return; // version A runs one VM
    }
    let (mut hv, port) = start(&guest("debugme.img"), &[&guest("debugme.img")], b"");
    hv.wait_for_stdout("vm1's output", |out| String::from_utf8_lossy(out).contains("[vm1] debugme: total 14"));
    let mut c = Client::connect(port);
    c.send("D");
    assert_eq!(c.reply(), "OK");
    let run = finish(hv);
    assert_eq!(run.status, 0, "{}", run.stderr);
    expect(&run.stdout(), &["[vm0] debugme: total 14, counter 3"]);
}

/// The raw protocol, for what gdb itself never sends.
struct Client {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(GUARD)).unwrap();
        Client { stream, pending: Vec::new() }
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn send(&mut self, data: &str) {
        let sum = data.bytes().fold(0u8, |s, b| s.wrapping_add(b));
        self.raw(format!("${data}#{sum:02x}").as_bytes());
    }

    /// The next byte; panics at end of file or after the guard.
    fn byte(&mut self) -> u8 {
        if self.pending.is_empty() {
            let mut buf = [0u8; 4096];
            let n = self.stream.read(&mut buf).expect("no answer within the guard");
            assert!(n > 0, "the stub closed the connection");
            self.pending.extend_from_slice(&buf[..n]);
        }
        self.pending.remove(0)
    }

    /// The next packet's data (acks skipped), its checksum checked.
    fn reply(&mut self) -> String {
        while self.byte() != b'$' {}
        let mut data = Vec::new();
        loop {
            match self.byte() {
                b'#' => break,
                b => data.push(b),
            }
        }
        let sum = [self.byte(), self.byte()];
        let want = data.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        assert_eq!(std::str::from_utf8(&sum).unwrap(), format!("{want:02x}"), "checksum of {data:?}");
        self.raw(b"+");
        String::from_utf8(data).unwrap()
    }

    fn ask(&mut self, data: &str) -> String {
        self.send(data);
        self.reply()
    }

    /// Resumes with `data` and returns the stop reply's signal and RIP (the stop reply carries
    /// rip, rsp and rbp, as `T05thread:01;10:RIP;07:RSP;06:RBP;`).
    fn stop_after(&mut self, data: &str) -> (String, u64) {
        self.send(data);
        stop_of(&self.reply())
    }
}

/// A stop reply's signal and RIP.
fn stop_of(reply: &str) -> (String, u64) {
    let fields: Vec<&str> = reply.split(';').collect();
    assert!(fields.len() == 5 && fields[0].ends_with("thread:01") && fields[4].is_empty(), "{reply}");
    let reg = |i: usize, n: &str| {
        let (num, hex) = fields[i].split_once(':').unwrap();
        assert_eq!(num, n, "{reply}");
        assert_eq!(hex.len(), 16, "{reply}");
        u64::from_str_radix(hex, 16).unwrap().swap_bytes()
    };
    let rip = reg(1, "10");
    reg(2, "07");
    reg(3, "06");
    (fields[0][..3].to_owned(), rip)
}

#[test]
fn raw_protocol_edge_cases() {
    if !kvm_available() {
        return;
    }
    let (hv, port) = start(&guest("debugme.img"), &[], b"");
    let mut c = Client::connect(port);
    // Garbage before a packet is skipped; a wrong checksum is answered '-'.
    c.raw(b"hello\x00\xff");
    c.raw(b"$g#00");
    assert_eq!(c.byte(), b'-');
    assert_eq!(c.ask("?"), "T05thread:01;");
    assert_eq!(
        c.ask("qSupported:multiprocess+"),
        "PacketSize=4000;qXfer:features:read+;qXfer:threads:read+;QStartNoAckMode+"
    );
    assert_eq!(c.ask("vCont?"), "vCont;c;C;s;S");
    assert_eq!(c.ask("qNoSuchThing"), "", "an unknown packet gets the empty reply");
    assert_eq!(c.ask("qAttached"), "1");
    let g = c.ask("g");
    assert_eq!(g.len(), 2 * 332, "{g}");
    assert_eq!(&g[16 * 16..17 * 16], "0000000000000000", "rip = 0 before the first instruction");
    // The image's first bytes (mov %rsp, hv_entry_rsp(%rip) = 48 89 25 ...), read through the
    // guest's page tables; unmapped memory and memory outside RAM are errors.
    assert_eq!(c.ask("m0,3"), "488925");
    assert!(c.ask("mc0000000,4").starts_with('E'), "unmapped");
    assert!(c.ask("m1ffffe,4").starts_with('E'), "runs past the end of 2 MiB RAM");
    // Breakpoints beyond the four debug registers are taken too.
    for addr in ["10", "20", "30", "40", "50", "60"] {
        assert_eq!(c.ask(&format!("Z1,{addr},1")), "OK");
    }
    for addr in ["10", "20", "30", "40", "50", "60"] {
        assert_eq!(c.ask(&format!("z1,{addr},1")), "OK");
    }
    // A dropped connection: the guest runs on to its end as if there had been no --gdb.
    drop(c);
    let run = finish(hv);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.stdout(), "debugme: 1 4 9\ndebugme: total 14, counter 3\n");
}

#[test]
fn interrupt_byte_stops_a_running_guest() {
    if !kvm_available() {
        return;
    }
    let (hv, port) = start(&guest("spin.img"), &[], b"");
    let mut c = Client::connect(port);
    assert_eq!(c.ask("?"), "T05thread:01;");
    // Run to spin's endless `jmp .` (at 0x20: see objdump -d guest/spin.elf) first.
    assert_eq!(c.ask("Z0,20,1"), "OK");
    assert_eq!(c.stop_after("c"), ("T05".to_owned(), 0x20));
    assert_eq!(c.ask("p10"), "2000000000000000");
    assert_eq!(c.ask("z0,20,1"), "OK");
    c.send("c");
    c.raw(b"\x03");
    assert_eq!(stop_of(&c.reply()), ("T02".to_owned(), 0x20), "still in the loop");
    // Stopped, not ended: it can be resumed, stopped again, then killed.
    c.send("vCont;c");
    c.raw(b"\x03");
    assert_eq!(stop_of(&c.reply()).0, "T02");
    c.send("k");
    let run = finish(hv);
    assert_eq!(run.status, 1);
    expect(&run.stderr, &["killed by the debugger"]);
}

#[test]
fn single_steps_and_a_breakpoint_at_the_current_instruction() {
    if !kvm_available() {
        return;
    }
    let (hv, port) = start(&guest("debugme.img"), &[], b"");
    let mut c = Client::connect(port);
    // A breakpoint on the first instruction does not stop the guest before it has run it.
    assert_eq!(c.ask("Z0,0,1"), "OK");
    assert_eq!(c.stop_after("s"), ("T05".to_owned(), 7), "mov %rsp, hv_entry_rsp(%rip) is 7 bytes");
    assert_eq!(c.ask("p10"), "0700000000000000", "the stop reply's rip is the register's");
    assert_eq!(c.ask("z0,0,1"), "OK");
    // A breakpoint two instructions on (cld is one byte): continue stops there.
    assert_eq!(c.ask("Z0,8,1"), "OK");
    assert_eq!(c.stop_after("c"), ("T05".to_owned(), 8));
    assert_eq!(c.ask("p10"), "0800000000000000");
    assert_eq!(c.ask("D"), "OK");
    let run = finish(hv);
    assert_eq!(run.status, 0, "{}", run.stderr);
}

#[test]
fn stepi_costs_two_packets_in_no_ack_mode() {
    if !ready() {
        return;
    }
    // gdb's own log of its packets: the stop reply carries rip, rsp and rbp, so a stepi is
    // `vCont;s` and the stack read gdb needs to unwind the frame: no `g`, no acknowledgement;
    // the thread list gdb asks for at each prompt is one packet.
    let (hv, port) = start(&guest("debugme.img"), &[], b"");
    let out = gdb(port, &["set debug remote 1", "stepi", "stepi", "set debug remote 0", "print/x $pc", "kill"]);
    let log: Vec<&str> = out.lines().filter(|l| l.contains("[remote] ")).collect();
    let sent: Vec<&str> = log.iter().filter_map(|l| l.split("Sending packet: $").nth(1)).collect();
    let steps = sent.iter().filter(|p| p.starts_with("vCont;s")).count();
    assert_eq!(steps, 2, "{out}");
    assert!(!sent.iter().any(|p| p.starts_with("g#") || p.starts_with("qfThreadInfo")), "{out}");
    assert_eq!(sent.iter().filter(|p| p.starts_with("qXfer:threads:read")).count(), 2, "{out}");
    assert!(!log.iter().any(|l| l.contains("Ack")), "no-ack mode:\n{out}");
    assert_eq!(log.iter().filter(|l| l.contains("Packet received: T05thread:01;10:")).count(), 2, "{out}");
    expect(&out, &["$1 = 0x8"]); // mov %rsp, hv_entry_rsp(%rip) (7 bytes), then cld
    assert_eq!(finish(hv).status, 1);
}

// `hlt` ends the VM however it is reached: a single-stepped `hlt` comes back from KVM as a
// debug exit past it, so the stub never single-steps one.

#[test]
fn stepi_onto_the_final_hlt_ends_the_vm() {
    if !ready() {
        return;
    }
    // finish out of square, then out of guest_main: gdb stops on _start's hlt; stepi runs it.
    let (out, _) = to_the_end(b"", &["break square", "continue", "finish", "delete", "finish", "stepi"]);
    expect(&out, &["0x000000000000000d in _start ()"]);
}

#[test]
fn next_and_until_off_the_end_of_main_end_the_vm() {
    if !ready() {
        return;
    }
    // The last `next` steps through _start, which has no line information, into its hlt.
    let (out, _) = to_the_end(b"", &["break debugme.c:55", "continue", "next", "next", "next"]);
    expect(&out, &["59\t}", "0x000000000000000d in _start ()"]);
    to_the_end(b"", &["break debugme.c:55", "continue", "until", "until", "until"]);
    to_the_end(b"", &["break debugme.c:55", "continue", "advance *0xd", "stepi"]);
}

#[test]
fn continuing_under_a_watchpoint_runs_to_the_hlt_and_says_once_that_it_steps() {
    if !ready() {
        return;
    }
    let (out, stderr) = to_the_end(b"", &["watch counter", "continue", "continue", "continue", "continue"]);
    expect(&out, &["New value = 3"]);
    let said = stderr.matches("the guest runs one instruction at a time").count();
    assert_eq!(said, 1, "said once:\n{stderr}");
}

#[test]
fn a_crash_reached_by_stepping_is_sigsegv_and_kill_reports_it() {
    if !ready() {
        return;
    }
    let (hv, port) = start(&guest("debugme.img"), &[], b"c");
    let out = gdb(port, &["watch counter", "continue", "continue", "continue", "continue", "print/x $rip", "kill"]);
    expect(&out, &["New value = 3", "SIGSEGV", "$1 = 0xc0000000"]);
    let run = finish(hv);
    assert_eq!(run.status, 1);
    expect(&run.stderr, &["triple fault", "RIP 0xc0000000"]);
    expect(&run.stdout(), &["debugme: jumping to 0xc0000000\n"]);
}

// Any number of breakpoints: beyond the four debug registers, the stub single-steps.

#[test]
fn six_breakpoints_at_once_each_stop_in_turn() {
    if !ready() {
        return;
    }
    let mut commands = vec!["break square"];
    commands.extend(["break debugme.c:46", "break debugme.c:47", "break debugme.c:48"]);
    commands.extend(["break debugme.c:51", "break debugme.c:53"]);
    commands.extend(std::iter::repeat_n("continue", 15)); // 4 stops in each of 3 rounds, 2 after, the end
    let (out, stderr) = to_the_end(b"", &commands);
    let stops: Vec<&str> = out.lines().filter(|l| l.starts_with("Breakpoint ") && !l.contains(" at 0x")).collect();
    assert_eq!(stops.len(), 14, "{out}");
    for (i, stop) in stops[..12].iter().enumerate() {
        let want = match i % 4 {
            0 => format!("Breakpoint 1, square (n={})", i / 4 + 1),
            n => format!("Breakpoint {}, guest_main () at debugme.c:{}", n + 1, 45 + n),
        };
        assert!(stop.starts_with(&want), "stop {i}: {stop}\n{out}");
    }
    assert!(stops[12].starts_with("Breakpoint 5, guest_main () at debugme.c:51"), "{out}");
    assert!(stops[13].starts_with("Breakpoint 6, guest_main () at debugme.c:53"), "{out}");
    assert_eq!(stderr.matches("6 breakpoints, 4 debug registers").count(), 1, "{stderr}");
}

#[test]
fn break_on_an_inlined_function_then_finish() {
    if !ready() {
        return;
    }
    // putchar_e9 is inlined at many places in hv.c (-O2): one breakpoint of many locations.
    let (out, _) = to_the_end(b"", &["break putchar_e9", "continue", "finish", "delete", "continue"]);
    expect(&out, &["locations)", "putchar_e9 (c=100 'd') at hv.c", "puts_e9 (s="]);
}

// The control registers in the target description.

#[test]
fn control_registers_read_and_write() {
    if !ready() {
        return;
    }
    let commands = [
        "info registers cr0 cr3 cr4 efer",
        "p/x $fs_base",
        "info registers",
        "set $cr2 = 0x1234",
        "p/x $cr2",
        "set $cr0 = (long)0",
        "p/x $cr0",
        "continue",
    ];
    let (out, stderr) = to_the_end(b"", &commands);
    expect(
        &out,
        &[
            "cr0            0x80050033          [ PE MP ET NE WP AM PG ]",
            "cr3            0x1fc000",
            "cr4            0x620               [ PAE OSFXSR OSXMMEXCPT ]",
            "efer           0x500               [ LME LMA ]",
            "$1 = 0x0",
            "rip            0x0                 0x0 <_start>",
            "$2 = 0x1234",
            "Could not write register \"cr0\"; remote failure reply 'E05'",
            "$3 = 0x80050033",
        ],
    );
    expect(&stderr, &["KVM refused cr0 = 0x0"]);
}

// monitor commands.

#[test]
fn monitor_help_mem_walk_and_an_unknown_command() {
    if !ready() {
        return;
    }
    let commands = [
        "monitor help",
        "monitor mem",
        "monitor walk 0x1008",
        "monitor walk 0x400000",
        "monitor frobnicate",
        "continue",
    ];
    let (out, _) = to_the_end(b"", &commands);
    expect(
        &out,
        &[
            "monitor walk ADDR",
            "RAM: 2 MiB, guest-physical 0x0..0x200000, mapped virtual = physical with 4 KiB pages",
            "page tables: 4 pages of 4 KiB: PML4 0x1fc000, PDPT 0x1fd000, PD 0x1fe000, PT 0x1ff000",
            "now: RSP = 0x1fc000 (0 bytes of stack in use)",
            "PT[1]      entry at 0x001ff008 = 0x0000000000001003  present writable supervisor-only  -> 4 KiB page at 0x1000",
            "= physical 0x1008",
            "PD[2]      entry at 0x001fe010 = 0x0000000000000000  not present  -> the walk stops here",
            "0x400000 is not mapped",
            "unknown monitor command \"frobnicate\": type \"monitor help\" for the list",
        ],
    );
}

// A hostile client changes nothing.

impl Client {
    /// The reply to `data`, skipping console output (`O` packets) before it.
    fn ask_final(&mut self, data: &str) -> String {
        self.send(data);
        loop {
            let r = self.reply();
            if !r.starts_with('O') || r == "OK" {
                return r;
            }
        }
    }
}

#[test]
fn a_hostile_client_gets_errors_and_the_guest_runs_on() {
    if !kvm_available() {
        return;
    }
    let (hv, port) = start(&guest("debugme.img"), &[], b"");
    let mut c = Client::connect(port);
    c.raw(b"\x00\xffgarbage$$$###}}}***");
    c.raw(b"$g#00");
    assert_eq!(c.byte(), b'-', "a bad checksum");
    let mut huge = b"$".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge.extend_from_slice(b"#00");
    c.raw(&huge);
    assert_eq!(c.byte(), b'-', "a 1 MiB packet");
    let errors = [
        "mffffffffffffffff,ffffffffffffffff",
        "m1fffff,ffff",
        "mzz,1",
        "M0,1:",
        "Mffffffffffffffff,2:0000",
        "M200000,1:00",
        "X1fffff,2:ab",
        "Gzz",
        "G00",
        "P1000=00",
        "Pffffffffffffffffffff=00",
        "P7=00",
        "Z2,ffffffffffffffff,8",
        "Z2,0,ffffffff",
        "Z0,zz,1",
        "qXfer:features:read:target.xml:zz",
        "qXfer:features:read:../../etc/passwd:0,100",
        "qRcmd,zz",
        "vCont;r0,1",
    ];
    for p in errors {
        let r = c.ask(p);
        assert!(r.starts_with('E'), "{p} -> {r}");
    }
    assert!(c.ask("m0,ffffffffffffffff").len() <= 0x4000, "a long read is cut to the packet size");
    assert_eq!(c.ask("qXfer:features:read:target.xml:ffffffffffffffff,ffff"), "l");
    let walk: String = "walk 0xffffffffffffffffff".bytes().map(|b| format!("{b:02x}")).collect();
    assert_eq!(c.ask_final(&format!("qRcmd,{walk}")), "OK");
    for i in 0..100 {
        assert_eq!(c.ask(&format!("Z0,{:x},1", 0x1000 + i)), "OK", "breakpoint {i}");
    }
    assert_eq!(c.ask("?"), "T05thread:01;", "the stub still answers");
    // A connection dropped in the middle of a packet: the stub detaches, the guest runs on
    // without breakpoints, and nobody else can connect.
    c.raw(b"$m0,");
    drop(c);
    let run = finish(hv);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.stdout(), DEBUGME_OUT);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "one debugger per run");
}

#[test]
fn a_client_that_floods_a_running_guest_loses_the_connection() {
    if !kvm_available() {
        return;
    }
    let (hv, port) = start(&guest("spin.img"), &["--timeout", "1"], b"");
    let mut c = Client::connect(port);
    assert_eq!(c.ask("?"), "T05thread:01;");
    c.send("c");
    // gdb sends one packet and waits for its answer; a client that queues a thousand while the
    // guest runs is not gdb.
    c.raw(&b"$?#3f".repeat(1000));
    let mut rest = Vec::new();
    let _ = c.stream.read_to_end(&mut rest); // ends when the stub closes the connection
    let run = finish(hv);
    assert_eq!(run.status, 1);
    expect(&run.stderr, &["gdb detached: the guest runs on", "timed out"]);
}

// A client can never hold the VM: one that stops reading its replies is dropped, and
// `--timeout` and stop signals work whatever it does.

/// A request for 8 KiB of guest memory: a 16 KiB reply.
const BIG_READ: &[u8] = b"$m0,2000#8b";

/// Connects and asks for 8 KiB of memory `requests` times, one request a millisecond (a slow
/// client: the pace is its behaviour, not a synchronisation), and never reads a reply. The
/// connection stays open (returned) until the test drops it. Stops early when the stub has
/// closed the connection.
fn never_reads(port: u16, requests: usize) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    for _ in 0..requests {
        if s.write_all(BIG_READ).is_err() {
            break; // dropped by the stub
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    s
}

/// 280 paced requests: 4.6 MB of replies, more than Linux (its default limits) holds for a
/// client that reads nothing (the sender's buffer grows to `tcp_wmem`'s 4 MiB, the receiver's
/// stays small: about 250 replies here), and fewer than 64 requests beyond that point (the
/// stub once queued up to 64 and dropped the client past that: this client was the one that
/// held it).
const PACED: usize = 280;

#[test]
fn a_client_that_never_reads_cannot_hold_the_vm_past_its_timeout() {
    if !kvm_available() {
        return;
    }
    let (hv, port) = start(&guest("spin.img"), &["--timeout", "2"], b"");
    let t0 = std::time::Instant::now();
    let client = never_reads(port, PACED);
    let run = finish(hv);
    let took = t0.elapsed();
    drop(client);
    assert_eq!(run.status, 1, "{}", run.stderr);
    expect(&run.stderr, &["timed out after 2 s"]);
    assert!(took < Duration::from_secs(5), "the VM ended {took:?} after the client connected:\n{}", run.stderr);
}

#[test]
fn a_client_that_never_reads_cannot_hold_the_vm_against_sigterm() {
    if !kvm_available() {
        return;
    }
    let (hv, port) = start(&guest("spin.img"), &[], b"");
    let client = never_reads(port, PACED);
    let t0 = std::time::Instant::now();
    assert!(Command::new("kill").args(["-TERM", &hv.pid().to_string()]).status().unwrap().success());
    let run = finish(hv);
    let took = t0.elapsed();
    drop(client);
    assert_eq!(run.status, 1, "{}", run.stderr);
    expect(&run.stderr, &["interrupted (SIGINT/SIGTERM)"]);
    assert!(took < Duration::from_secs(3), "the VM ended {took:?} after SIGTERM:\n{}", run.stderr);
}

#[test]
fn a_client_that_never_reads_is_dropped_and_the_guest_runs_on() {
    if !kvm_available() {
        return;
    }
    let (hv, port) = start(&guest("debugme.img"), &[], b"");
    // 64 MiB of replies asked for at once: far beyond any kernel's socket buffers.
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = client.write_all(&BIG_READ.repeat(4096));
    let run = finish(hv);
    drop(client);
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(run.stdout(), DEBUGME_OUT);
    expect(&run.stderr, &["takes none of its replies", "gdb detached: the guest runs on"]);
}
