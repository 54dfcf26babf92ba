//! Benchmark 6: what one guest instruction costs when the GDB stub single-steps the guest (a
//! software watchpoint, as `watch var` gets on a host whose KVM fires no data breakpoints),
//! beside the same instructions run freely and a plain VM exit.
//!
//! The stepped run: version A waits for GDB on `bench_step.img`; a small client of the remote
//! protocol sets a write watchpoint on bytes the guest never writes and a breakpoint on the
//! final `hlt`, and times `c` until the stop at that breakpoint: 40,005 instructions, each a
//! debug exit that the stub checks and resumes.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{Env, Row, Stdout, median, progress, words};

/// Instructions from the first of `bench_step.img` to its `hlt` (see guest/bench_step.c).
const STEPPED: f64 = 40_005.0;
/// The address of `_start`'s `hlt` in every guest image.
const HLT: &str = "d";
/// Bytes the guest never writes (the scratch area at 1 MiB).
const WATCHED: &str = "100000";
/// How long a stepped run may take before the benchmark gives up.
const GUARD: Duration = Duration::from_secs(120);

/// gdb's remote protocol, buffered, with or without acknowledgements.
pub(crate) struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    at: usize,
    pub no_ack: bool,
    /// Reads do not block: the client looks for the reply again and again (yielding the CPU).
    spin: bool,
}

impl Client {
    pub(crate) fn connect(port: u16) -> Result<Client, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(Some(GUARD)).map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        Ok(Client { stream, buf: Vec::new(), at: 0, no_ack: false, spin: false })
    }

    pub(crate) fn spin(&mut self, on: bool) -> Result<(), String> {
        self.spin = on;
        self.stream.set_nonblocking(on).map_err(|e| e.to_string())
    }

    pub(crate) fn send(&mut self, data: &str) -> Result<(), String> {
        let sum = data.bytes().fold(0u8, |s, b| s.wrapping_add(b));
        self.stream.write_all(format!("${data}#{sum:02x}").as_bytes()).map_err(|e| format!("gdb client: {e}"))
    }

    fn byte(&mut self) -> Result<u8, String> {
        if self.at == self.buf.len() {
            self.buf.resize(8192, 0);
            let start = Instant::now();
            let n = loop {
                match self.stream.read(&mut self.buf) {
                    Err(e) if self.spin && e.kind() == std::io::ErrorKind::WouldBlock && start.elapsed() < GUARD => {
                        std::thread::yield_now();
                    }
                    r => break r.map_err(|e| format!("gdb client: no answer: {e}"))?,
                }
            };
            if n == 0 {
                return Err("gdb client: the stub closed the connection".to_owned());
            }
            self.buf.truncate(n);
            self.at = 0;
        }
        self.at += 1;
        Ok(self.buf[self.at - 1])
    }

    /// The next packet's data (acknowledgements skipped); acknowledged unless in no-ack mode.
    pub(crate) fn reply(&mut self) -> Result<String, String> {
        while self.byte()? != b'$' {}
        let mut data = Vec::new();
        loop {
            match self.byte()? {
                b'#' => break,
                b => data.push(b),
            }
        }
        self.byte()?;
        self.byte()?;
        if !self.no_ack {
            self.stream.write_all(b"+").map_err(|e| format!("gdb client: {e}"))?;
        }
        Ok(String::from_utf8_lossy(&data).into_owned())
    }

    pub(crate) fn ask(&mut self, data: &str) -> Result<String, String> {
        self.send(data)?;
        self.reply()
    }

    /// [`Client::ask`], and an error unless the reply begins with `want`.
    fn expect(&mut self, data: &str, want: &str) -> Result<(), String> {
        match self.ask(data)? {
            r if r.starts_with(want) => Ok(()),
            r => Err(format!("gdb client: {data} got {r:?}, expected {want}...")),
        }
    }
}

/// Starts version A on `image` with `--gdb`, and waits until it listens.
pub fn start(env: &Env, image: &str) -> Result<(Child, u16), String> {
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
    let exe = env.root.join("version_a/mini_hypervisor");
    let mut child = Command::new(&exe)
        .args(words(&format!("-q -m 2 -p 2 --gdb {port} -g guest/{image}")))
        .current_dir(&env.root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("waiting for GDB") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        return Err("version A never said it was waiting for GDB".to_owned());
    }
    Ok((child, port))
}

/// One stepped run: microseconds per instruction.
fn stepped_once(env: &Env) -> Result<f64, String> {
    let (mut child, port) = start(env, "bench_step.img")?;
    let result = (|| {
        let mut c = Client::connect(port)?;
        c.expect(&format!("Z2,{WATCHED},8"), "OK")?;
        c.expect(&format!("Z0,{HLT},1"), "OK")?;
        let t0 = Instant::now();
        c.expect("c", "T05")?;
        let elapsed = t0.elapsed();
        c.expect("p10", "0d00000000000000")?; // stopped at the hlt, after every instruction
        c.send("k")?;
        Ok(elapsed.as_secs_f64() * 1e6 / STEPPED)
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Wall time of one run, in microseconds.
pub fn free_run(env: &Env, image: &str, extra: &str) -> Result<f64, String> {
    let o = env.hypervisor('a', &words(&format!("-q {extra}-m 2 -p 2 -g guest/{image}")), Stdout::Discard)?;
    Ok(o.wall.as_secs_f64() * 1e6)
}

fn us(v: f64) -> String {
    format!("{v:.2} µs")
}

pub fn stepping(env: &Env) -> Result<Vec<Row>, String> {
    const RUNS: usize = 5;
    progress(&format!("stepping: version A, bench_step.img under a software watchpoint, {RUNS} runs"));
    let stepped = median(&(0..RUNS).map(|_| stepped_once(env)).collect::<Result<Vec<_>, _>>()?);
    progress(&format!("stepping: version A, bench_step.img and guest.img run freely, {RUNS} runs each"));
    let mut free = vec![];
    for _ in 0..RUNS {
        free.push((free_run(env, "bench_step.img", "")? - free_run(env, "guest.img", "")?).max(0.0) / STEPPED);
    }
    let free = median(&free);
    progress("stepping: version A, bench_out.img --no-coalesce (one exit per byte), 1 run");
    let exit = free_run(env, "bench_out.img", "--no-coalesce ")? / 250_000.0;
    Ok(vec![
        Row::new(
            "GDB stepping: version A, `bench_step.img` under a software watchpoint: per guest instruction",
            RUNS,
            format!("{} ({:.1}× a plain exit)", us(stepped), stepped / exit),
        ),
        Row::new("GDB stepping: the same instructions run freely (wall time minus `guest.img`'s)", RUNS, us(free)),
        Row::new("GDB stepping: a plain exit, one-byte `out` (`bench_out.img --no-coalesce`)", 1, us(exit)),
    ])
}
