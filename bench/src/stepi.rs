//! Benchmark 7: what one `stepi` costs end to end, gdb and the stub together, beside a plain
//! VM exit (the stub's target: at most about three plain exits per instruction).
//!
//! Version A waits for GDB on `bench_step.img`, whose loop is `dec %rax; jnz` (at 0x15 and
//! 0x18). Three ways to step it, each run to the loop with a breakpoint first:
//!
//! - **real gdb, `stepi N`**: `gdb -batch` with a script that connects, runs to the loop and
//!   gives one `stepi N`; timed from gdb's spawn to its exit, less the same script without
//!   the `stepi` (the two runs alternate), over N;
//! - **real gdb, N `stepi` commands**: the same with N lines of `stepi`: gdb also prints where
//!   it stopped and asks for the thread list after each;
//! - **a protocol client** (no gdb) that steps the way gdb's `stepi N` does: no-ack mode if the
//!   stub offers it, then per instruction `vCont;s:1;c`, `g` if the stop reply does not carry
//!   the registers, and the 64 bytes of stack gdb reads to unwind the frame. Timed over the N
//!   steps, twice: waiting for each reply in a blocking read as gdb does (so each reply also
//!   pays for waking the client), and looking for it without sleeping (the stub's own cost:
//!   what a client that costs nothing would see).
//!
//! Without gdb installed, the two gdb rows are left out (and the table says so).
#![forbid(unsafe_code)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Env, Row, median, progress};
use crate::stepping::{Client, free_run, start};

/// Instructions stepped in each run.
const STEPS: usize = 2000;
/// The loop's first instruction (`dec %rax` in guest_main: see guest/bench_step.c).
const LOOP: u64 = 0x15;
/// Rounds (each runs every kind once, in turn, so that a busy moment falls on all alike).
const RUNS: usize = 5;

/// Register `n` (gdb's number, hex) of a stop reply `T05...;n:VALUE;...`, if it carries it.
fn expedited(stop: &str, n: &str) -> Option<u64> {
    let hex = stop.split(';').find_map(|f| f.strip_prefix(n)?.strip_prefix(':'))?;
    u64::from_str_radix(hex, 16).ok().map(u64::swap_bytes)
}

/// µs per step of a client that steps as gdb's `stepi N` does; `spin`: without sleeping.
fn client_once(env: &Env, spin: bool) -> Result<f64, String> {
    let (mut child, port) = start(env, "bench_step.img")?;
    let result = (|| {
        let mut c = Client::connect(port)?;
        if c.ask("qSupported:multiprocess+;xmlRegisters=i386")?.contains("QStartNoAckMode+") {
            if c.ask("QStartNoAckMode")? != "OK" {
                return Err("gdb client: QStartNoAckMode refused".to_owned());
            }
            c.no_ack = true;
        }
        c.ask(&format!("Z0,{LOOP:x},1"))?;
        if !c.ask("vCont;c")?.starts_with("T05") {
            return Err("gdb client: no stop at the loop".to_owned());
        }
        c.ask(&format!("z0,{LOOP:x},1"))?;
        c.spin(spin)?;
        let t0 = Instant::now();
        for _ in 0..STEPS {
            let stop = c.ask("vCont;s:1;c")?;
            let rsp = match expedited(&stop, "07") {
                Some(rsp) => rsp,
                // gdb reads every register when the stop reply carries none.
                None => u64::from_str_radix(&c.ask("g")?[7 * 16..8 * 16], 16).map_err(|e| e.to_string())?.swap_bytes(),
            };
            let stack = c.ask(&format!("m{:x},40", rsp & !0x3f))?;
            if stack.len() != 128 {
                return Err(format!("gdb client: the stack read got {stack:?}"));
            }
        }
        let us = t0.elapsed().as_secs_f64() * 1e6 / STEPS as f64;
        c.send("k")?;
        Ok(us)
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Real gdb on the loop: the wall time of `gdb -batch` from spawn to exit, with `steps` steps
/// given as one `stepi N` or (`lines`) as N commands.
fn gdb_once(env: &Env, steps: usize, lines: bool) -> Result<Duration, String> {
    let (mut child, port) = start(env, "bench_step.img")?;
    let script = env.fresh("gdb_script");
    let mut text = format!(
        "set confirm off\nset pagination off\ntarget remote 127.0.0.1:{port}\nbreak *{LOOP:#x}\ncontinue\ndelete\n"
    );
    match (steps, lines) {
        (0, _) => {}
        (n, false) => text += &format!("stepi {n}\n"),
        (n, true) => text += &"stepi\n".repeat(n),
    }
    text += "kill\n";
    let result = (|| {
        std::fs::write(&script, &text).map_err(|e| e.to_string())?;
        let mut gdb = Command::new("gdb");
        gdb.args(["-batch", "-nx", "-x"]).arg(&script).arg(env.root.join("guest/bench_step.elf"));
        gdb.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let t0 = Instant::now();
        let status = gdb.status().map_err(|e| format!("cannot run gdb: {e}"))?;
        let wall = t0.elapsed();
        if !status.success() {
            return Err(format!("gdb failed ({status})"));
        }
        Ok(wall)
    })();
    let _ = std::fs::remove_file(&script);
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn gdb_installed() -> bool {
    Command::new("gdb").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// `us` and its multiple of a plain exit.
fn per_step(us: f64, exit: f64) -> String {
    format!("{us:.1} µs per instruction = {:.1} plain exits", us / exit)
}

pub fn stepi(env: &Env) -> Result<Vec<Row>, String> {
    let gdb = gdb_installed();
    progress(&format!(
        "stepi: version A, bench_step.img, {STEPS} steps{}, and a plain exit, {RUNS} rounds",
        if gdb {
            " by gdb (stepi N, N stepi commands) and by a protocol client"
        } else {
            " by a protocol client (no gdb)"
        }
    ));
    let (mut count, mut lines, mut client, mut spinning, mut exit) = (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..RUNS {
        if gdb {
            let base = gdb_once(env, 0, false)?;
            count.push((gdb_once(env, STEPS, false)?.saturating_sub(base)).as_secs_f64() * 1e6 / STEPS as f64);
            let base = gdb_once(env, 0, false)?;
            lines.push((gdb_once(env, STEPS, true)?.saturating_sub(base)).as_secs_f64() * 1e6 / STEPS as f64);
        }
        client.push(client_once(env, false)?);
        spinning.push(client_once(env, true)?);
        if round % 2 == 0 {
            exit.push(free_run(env, "bench_out.img", "--no-coalesce ")? / 250_000.0);
        }
    }
    let exit_runs = exit.len();
    let exit = median(&exit);
    let mut rows = vec![];
    if gdb {
        let us = median(&count);
        rows.push(
            Row::new(
                format!("GDB stepi: version A, real gdb, `stepi {STEPS}` over `bench_step.img`'s loop, end to end"),
                format!("{RUNS} + {RUNS}"),
                per_step(us, exit),
            )
            .target("≤ 3 plain exits", us <= 3.0 * exit),
        );
        rows.push(Row::new(
            format!("GDB stepi: version A, real gdb, a script of {STEPS} `stepi` commands, end to end"),
            format!("{RUNS} + {RUNS}"),
            per_step(median(&lines), exit),
        ));
    } else {
        rows.push(Row::new("GDB stepi: real gdb (not installed: skipped)", 0, "–"));
    }
    rows.push(Row::new(
        "GDB stepi: version A, a protocol client stepping as gdb's `stepi N` does, waiting for each reply",
        RUNS,
        per_step(median(&client), exit),
    ));
    rows.push(Row::new(
        "GDB stepi: version A, the same client looking for each reply without sleeping (the stub's own cost)",
        RUNS,
        per_step(median(&spinning), exit),
    ));
    rows.push(Row::new(
        "GDB stepi: a plain exit, one-byte `out` (`bench_out.img --no-coalesce`)",
        exit_runs,
        format!("{exit:.2} µs"),
    ));
    Ok(rows)
}
