//! `--gdb PORT`: a GDB remote-protocol stub for one VM, written by hand over `std::net`.
//!
//! The version's run loop calls [`Debugger::on_stop`] whenever the vCPU stops for the
//! debugger — before its first instruction, at a debug exit, at gdb's Ctrl-C, at a crash —
//! and [`Debugger::exited`] when the guest halts. The stub sees the vCPU and its RAM through
//! [`Target`], and pauses the running guest for gdb's Ctrl-C through [`Pause`]: both are the
//! version's, the rest is here. The parts:
//!
//! - `protocol.rs`: packet framing and the hex encodings (pure);
//! - `registers.rs`: the target description and the register encodings (pure);
//! - `paging.rs`: the walk of the guest's page tables, for memory access and `monitor walk`;
//! - `breakpoints.rs`: breakpoints, watchpoints and the four debug registers (pure);
//! - `stepping.rs`: resuming the guest and making sense of its debug exits (the fast path);
//! - `session.rs`: the packet dispatcher, over [`Target`];
//! - `cached.rs`: the registers read once per stop;
//! - `monitor.rs`: the `monitor` commands;
//! - `connection.rs`: the socket, read and written by the VM thread while the guest is stopped
//!   and by a watcher thread while it runs; the one use of [`Pause`];
//! - this file: the hook the run loop calls, and the probe of whether the host fires data
//!   breakpoints ([`data_watch_probe`]).

mod breakpoints;
mod cached;
mod connection;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod fuzz;
mod monitor;
mod paging;
mod protocol;
mod registers;
mod session;
mod stepping;

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

pub use connection::listen;

use breakpoints::{Breakpoints, Watch, WatchKind};
use cached::Cached;
use connection::{Conn, Lost, Wait};
use protocol::{Input, console_packets};
use session::{Action, Session};

use crate::{GuestDebug, MemoryMap, Target};

/// How the stub stops the running guest when gdb sends its Ctrl-C (or goes away): the
/// version's side of it, shared with the stub's watcher thread.
pub trait Pause: Send + Sync {
    /// Makes the vCPU leave the guest soon; the run loop then calls [`Debugger::on_stop`] with
    /// [`Stop::Interrupt`]. Called from the stub's watcher thread while the guest runs, or on
    /// the vCPU's thread as the stub resumes the guest (a Ctrl-C that came with the resume).
    fn pause(&self);
    /// Drops a pause not yet acted on (the guest stopped for another reason just before), so
    /// that the next resume does not stop at once. A request to stop the VM is not touched.
    /// Called on the vCPU's thread when the stub takes over a stopped guest.
    fn forget_pause(&self);
}

/// A [`Pause`] made of the version's handle `K` (its kick) and two of its methods: the one that
/// pauses, and the one that takes a pause not yet acted on (what it says is dropped).
#[derive(Debug)]
pub struct PauseBy<K> {
    pub handle: K,
    pub pause: fn(&K),
    pub take_pause: fn(&K) -> bool,
}

impl<K: Send + Sync> Pause for PauseBy<K> {
    fn pause(&self) {
        (self.pause)(&self.handle);
    }
    fn forget_pause(&self) {
        (self.take_pause)(&self.handle);
    }
}

/// Why the vCPU stopped, as the run loop tells the stub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Before the first instruction.
    Start,
    /// A debug exit (`KVM_EXIT_DEBUG`): a breakpoint, a watchpoint or a single step; `pc` and
    /// `dr6` as the exit gives them.
    Trap {
        /// The address of the next instruction (the exit's `pc`).
        pc: u64,
        /// DR6 at the exit: which debug register fired, or a single step.
        dr6: u64,
    },
    /// gdb's Ctrl-C (a [`Pause::pause`] the run loop acted on).
    Interrupt,
    /// The guest crashed (triple fault, KVM internal error, MMIO outside RAM).
    Crash,
}

/// What the run loop does after the stub let go of a stopped vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Run the guest (after a crash: end the VM as failed, with the usual report).
    Go,
    /// `k`: end the VM as failed.
    Kill,
    /// gdb detached or went away: breakpoints are out; drop the debugger and run on.
    Detached,
}

/// The debugger of one VM: the listening socket until gdb connects, then the session.
pub struct Debugger {
    port: u16,
    listener: Option<TcpListener>,
    conn: Option<Conn>,
    pause: Arc<dyn Pause>,
    session: Session,
    /// The ELF file to give gdb, for the message.
    elf: String,
    /// The guest crashed: resuming ends the VM.
    crashed: bool,
}

/// The VM ended while gdb waits for the running guest to stop (timeout, Ctrl-C of the
/// hypervisor, a device error): gdb hears that it was killed, instead of a lost connection.
impl Drop for Debugger {
    fn drop(&mut self) {
        if let Some(conn) = &mut self.conn
            && conn.is_running()
        {
            conn.send_now(b"X09");
        }
        self.close();
    }
}

impl std::fmt::Debug for Debugger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Debugger").field("port", &self.port).finish_non_exhaustive()
    }
}

impl Debugger {
    /// The debugger of a VM, on a socket from [`listen`]. `image` names the guest (gdb is told
    /// to load the ELF file beside it); `map` is for `monitor mem`; `data_watch` says whether
    /// this host fires data breakpoints (the version finds out with [`data_watch_probe`]).
    pub fn new(
        listener: TcpListener,
        pause: Arc<dyn Pause>,
        image: &Path,
        map: MemoryMap,
        data_watch: bool,
    ) -> Debugger {
        Debugger {
            port: listener.local_addr().map_or(0, |a| a.port()),
            listener: Some(listener),
            conn: None,
            pause,
            session: Session::new(data_watch, map),
            elf: image.with_extension("elf").display().to_string(),
            crashed: false,
        }
    }

    /// The vCPU is stopped: serve gdb until it resumes, kills or detaches. At [`Stop::Start`]
    /// this first waits for gdb to connect. `stop_requested` says whether the VM is being
    /// stopped (timeout, Ctrl-C of the hypervisor): then the stub stops waiting and returns
    /// [`Resume::Go`], and the run loop ends the VM. A debug exit of a single step that gdb
    /// need not hear of returns at once, with no system call.
    pub fn on_stop(&mut self, t: &dyn Target, why: Stop, stop_requested: &dyn Fn() -> bool) -> Resume {
        // The registers are read at most once while the guest stays stopped.
        let t = &Cached::new(t);
        if why == Stop::Start && !self.connect(stop_requested) {
            return Resume::Go; // being stopped: the run loop sees it at once
        }
        let Some(conn) = &mut self.conn else { return Resume::Detached };
        let mut stop = match why {
            Stop::Trap { pc, dr6 } => match self.session.on_trap(t, pc, dr6) {
                Some(stop) => stop,
                None => {
                    self.print_notes();
                    return Resume::Go; // a silent step: run on
                }
            },
            why => self.session.stop_reply(why),
        };
        self.crashed |= why == Stop::Crash;
        conn.hold();
        self.print_notes();
        if why != Stop::Start {
            // The registers gdb reads at every stop come with it: no `g` round trip.
            if let Ok(r) = t.regs() {
                registers::expedite(&mut stop, &r);
            }
            self.send(&stop, stop_requested);
        }
        self.serve(t, stop_requested)
    }

    /// The guest halted: gdb hears that it exited normally (`W00`), and the session ends.
    pub fn exited(&mut self) {
        if let Some(conn) = &mut self.conn {
            conn.send_now(b"W00");
            self.close();
        }
    }

    /// At the start: says where to connect, and waits for gdb. `false`: the VM is being
    /// stopped, or no connection could be made (the guest then runs without a debugger).
    fn connect(&mut self, stop_requested: &dyn Fn() -> bool) -> bool {
        let Some(listener) = self.listener.take() else { return true };
        diag!(
            "mini_hypervisor: vm0 is waiting for GDB on 127.0.0.1:{port}; connect with: gdb {elf} -ex 'target remote :{port}'",
            port = self.port,
            elf = self.elf
        );
        if self.session.data_watch {
            diag!("mini_hypervisor: gdb: watchpoints use the debug registers (this KVM fires data breakpoints)");
        } else {
            diag!(
                "mini_hypervisor: gdb: this KVM fires no data breakpoints: `watch` single-steps the guest, rwatch/awatch are refused"
            );
        }
        self.conn = connection::accept(listener, &self.pause, stop_requested);
        self.conn.is_some() || !stop_requested()
    }

    /// Answers gdb's packets until one resumes, kills or detaches.
    fn serve(&mut self, t: &dyn Target, stop: &dyn Fn() -> bool) -> Resume {
        loop {
            let Some(conn) = &mut self.conn else { return Resume::Detached };
            let packet = match conn.wait(stop) {
                Wait::Input(Input::Packet(p)) => p,
                // In no-ack mode there is nobody to ask again: the packet is dropped.
                Wait::Input(Input::BadChecksum) if !conn.no_ack => {
                    conn.write_raw(b"-", stop);
                    continue;
                }
                Wait::Input(Input::Nack) if !conn.no_ack => {
                    conn.resend(stop);
                    continue;
                }
                // An ack needs nothing; 0x03 while stopped: the guest is stopped already.
                Wait::Input(_) => continue,
                Wait::Stop => return Resume::Go,
                Wait::Closed(why) => {
                    say_lost(why);
                    return self.detach(t);
                }
            };
            if !conn.no_ack {
                conn.write_raw(b"+", stop);
            }
            let action = self.session.handle(&packet, t);
            self.print_notes();
            if let Some(resume) = self.act(t, action, &packet, stop) {
                return resume;
            }
        }
    }

    /// Carries out what the dispatcher decided; `Some` lets go of the vCPU.
    fn act(&mut self, t: &dyn Target, action: Action, packet: &[u8], stop: &dyn Fn() -> bool) -> Option<Resume> {
        match action {
            Action::Reply(r) => self.send(&r, stop),
            Action::NoAck => {
                self.send(b"OK", stop);
                if let Some(conn) = &mut self.conn {
                    conn.no_ack = true;
                }
            }
            Action::Monitor(text) => {
                for p in console_packets(&text) {
                    self.send(&p, stop);
                }
                self.send(b"OK", stop);
            }
            Action::Resume { step } => return self.resume(t, step, stop),
            Action::Kill => {
                if packet.starts_with(b"vKill") {
                    self.send(b"OK", stop); // `k` has no reply, `vKill` has
                }
                self.close();
                return Some(Resume::Kill);
            }
            Action::Detach => {
                self.send(b"OK", stop);
                return Some(self.detach(t));
            }
        }
        None
    }

    /// gdb resumes the guest: after a crash that ends the VM; else the vCPU is programmed.
    fn resume(&mut self, t: &dyn Target, step: bool, stop: &dyn Fn() -> bool) -> Option<Resume> {
        if self.crashed {
            // The guest is gone: gdb hears that it died of SIGSEGV.
            self.send(b"X0b", stop);
            self.close();
            return Some(Resume::Go);
        }
        if let Err(e) = self.session.resume(t, step) {
            self.send(format!("E{:02x}", e.raw_os_error().unwrap_or(1) & 0xff).as_bytes(), stop);
            return None;
        }
        self.print_notes();
        if let Some(conn) = &mut self.conn {
            // A single step ends after one instruction: only a continue needs the watcher.
            conn.run(!step);
        }
        Some(Resume::Go)
    }

    /// Takes every breakpoint out and lets go of gdb.
    fn detach(&mut self, t: &dyn Target) -> Resume {
        self.session.forget_breakpoints();
        self.session.unprogram(t);
        self.close();
        diag!("mini_hypervisor: gdb detached: the guest runs on");
        Resume::Detached
    }

    /// The session's notices, on stderr.
    fn print_notes(&mut self) {
        if !self.session.notes.is_empty() {
            for note in self.session.notes.drain(..) {
                diag!("{note}");
            }
        }
    }

    /// Sends one packet to gdb, if connected.
    fn send(&mut self, data: &[u8], stop: &dyn Fn() -> bool) {
        if let Some(conn) = &mut self.conn {
            conn.send(data, stop);
        }
    }

    /// Closes the connection, if any.
    fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.close();
        }
    }
}

/// Why the stub let go of a client that did not leave by itself, on stderr.
fn say_lost(why: Lost) {
    match why {
        Lost::Closed => {}
        Lost::Stalled => diag!(
            "mini_hypervisor: gdb: the client takes none of its replies (one waited {} s for room on the socket): \
             it is dropped, as if it had detached",
            connection::STALL.as_secs()
        ),
        Lost::Flooded => diag!(
            "mini_hypervisor: gdb: the client sent more than {} packets while the guest ran (gdb sends none): \
             it is dropped, as if it had detached",
            connection::QUEUE
        ),
    }
}

/// A 2-instruction probe guest: `mov [0x100], al; hlt`.
const PROBE_CODE: [u8; 8] = [0x88, 0x04, 0x25, 0x00, 0x01, 0x00, 0x00, 0xf4];
/// The byte the probe writes.
const PROBE_WATCHED: u64 = 0x100;

/// For the version's probe of whether this host's KVM fires DR7 data breakpoints: the code of
/// a tiny guest that writes the byte at 0x100 and then halts (to load at 0 and run from RIP 0,
/// in long mode with RAM identity-mapped), and the [`GuestDebug`] that watches that write.
/// The probe VM either exits for the debugger (the host fires them) or runs on to its `hlt`
/// (it does not); the answer is [`Debugger::new`]'s `data_watch`.
pub fn data_watch_probe() -> ([u8; 8], GuestDebug) {
    let mut points = Breakpoints::new(true);
    let _ = points.insert_watch(Watch { kind: WatchKind::Write, addr: PROBE_WATCHED, len: 1 });
    (PROBE_CODE, points.guest_debug(false).0)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::thread;
    use std::time::{Duration, Instant};

    use super::fake::{FakeTarget, machine};
    use super::protocol::frame;
    use super::*;

    /// Counts what the stub asks of the version.
    #[derive(Default)]
    struct Counted {
        pauses: AtomicUsize,
        forgotten: AtomicUsize,
    }

    impl Pause for Counted {
        fn pause(&self) {
            self.pauses.fetch_add(1, Ordering::SeqCst);
        }
        fn forget_pause(&self) {
            self.forgotten.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// gdb's side: sends packets and reads replies (acknowledgements skipped).
    struct Client(TcpStream);

    impl Client {
        fn send(&mut self, data: &str) {
            self.0.write_all(&frame(data.as_bytes())).unwrap();
        }

        /// The next packet's data; `None` when the connection ends first.
        fn reply(&mut self) -> Option<String> {
            let mut bytes = Vec::new();
            let mut b = [0u8];
            while bytes.len() < 1 << 16 {
                if self.0.read(&mut b).ok()? == 0 {
                    return None;
                }
                match (bytes.first(), b[0]) {
                    (None, b'+') => {}
                    _ => bytes.push(b[0]),
                }
                if bytes.len() >= 4 && bytes[bytes.len() - 3] == b'#' {
                    return Some(String::from_utf8_lossy(&bytes[1..bytes.len() - 3]).into_owned());
                }
            }
            None
        }
    }

    /// A debugger on an ephemeral port, and gdb connecting to it from a thread running `gdb`.
    fn session(gdb: impl FnOnce(&mut Client) + Send + 'static) -> (Debugger, Arc<Counted>, thread::JoinHandle<()>) {
        let listener = listen(0).unwrap();
        let port = listener.local_addr().unwrap().port();
        let pause = Arc::new(Counted::default());
        let debugger = Debugger::new(listener, pause.clone(), Path::new("guest.img"), machine(), false);
        let client = thread::spawn(move || {
            let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            gdb(&mut Client(stream));
        });
        (debugger, pause, client)
    }

    /// Waits (a bounded while) until `done`.
    fn until(done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() && start.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(5));
        }
        assert!(done(), "not within 10 s");
    }

    #[test]
    fn ctrl_c_pauses_the_running_guest_and_k_kills_it() {
        let (mut debugger, pause, client) = session(|gdb| {
            gdb.send("qAttached");
            assert_eq!(gdb.reply().as_deref(), Some("1"));
            gdb.send("p10");
            assert_eq!(gdb.reply().as_deref(), Some("3412000000000000"), "rip");
            gdb.send("c");
            gdb.0.write_all(&[0x03]).unwrap(); // Ctrl-C while the guest runs
            // The stop reply carries rip, rsp and rbp.
            let stop = "T02thread:01;10:3412000000000000;07:0700000000000000;06:0800000000000000;";
            assert_eq!(gdb.reply().as_deref(), Some(stop));
            gdb.send("k");
            assert_eq!(gdb.reply(), None, "`k` has no reply: the connection ends");
        });
        let t = FakeTarget::new(true);
        let never = || false;
        assert_eq!(debugger.on_stop(&t, Stop::Start, &never), Resume::Go);
        assert_eq!(pause.forgotten.load(Ordering::SeqCst), 1, "taking over drops an old pause");
        until(|| pause.pauses.load(Ordering::SeqCst) == 1);
        // The run loop acted on the pause.
        assert_eq!(debugger.on_stop(&t, Stop::Interrupt, &never), Resume::Kill);
        assert_eq!(pause.forgotten.load(Ordering::SeqCst), 2);
        client.join().unwrap();
        assert_eq!(pause.pauses.load(Ordering::SeqCst), 1, "a stopped guest is not paused");
    }

    #[test]
    fn a_halted_guest_is_an_exit_and_a_vanished_gdb_a_detach() {
        let (mut debugger, _, client) = session(|gdb| {
            gdb.send("Z0,30,1");
            assert_eq!(gdb.reply().as_deref(), Some("OK"));
            gdb.send("c");
            assert_eq!(gdb.reply().as_deref(), Some("W00"));
            assert_eq!(gdb.reply(), None);
        });
        let t = FakeTarget::new(true);
        assert_eq!(debugger.on_stop(&t, Stop::Start, &|| false), Resume::Go);
        assert_eq!(t.debug.borrow().unwrap().debugreg[0], 0x30, "the breakpoint is in DR0");
        debugger.exited();
        client.join().unwrap();
        assert_eq!(debugger.on_stop(&t, Stop::Trap { pc: 0x30, dr6: 1 }, &|| false), Resume::Detached);
        // gdb goes away while the guest runs: the guest is paused, and the stub detaches.
        let (mut debugger, pause, client) = session(|gdb| {
            gdb.send("c");
        });
        assert_eq!(debugger.on_stop(&t, Stop::Start, &|| false), Resume::Go);
        client.join().unwrap();
        until(|| pause.pauses.load(Ordering::SeqCst) == 1);
        assert_eq!(debugger.on_stop(&t, Stop::Interrupt, &|| false), Resume::Detached);
        assert_eq!(*t.debug.borrow(), Some(GuestDebug::default()), "breakpoints out");
    }

    #[test]
    fn no_ack_mode_sends_and_expects_no_acknowledgements() {
        let (mut debugger, _, client) = session(|gdb| {
            let exact = |gdb: &mut Client, want: &[u8]| {
                let mut got = vec![0u8; want.len()];
                gdb.0.read_exact(&mut got).unwrap();
                assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
            };
            gdb.0.write_all(b"$QStartNoAckMode#b0").unwrap();
            exact(gdb, b"+$OK#9a"); // the request is still acknowledged, the reply is the last
            gdb.0.write_all(b"+").unwrap(); // gdb's ack of that reply
            gdb.0.write_all(b"$g#00").unwrap(); // a bad checksum: dropped, no `-`
            gdb.0.write_all(b"$qAttached#8f").unwrap();
            exact(gdb, b"$1#31");
            gdb.0.write_all(b"$vCont;s:1;c#c1").unwrap();
            exact(gdb, b"$T05thread:01;10:3412000000000000;07:0700000000000000;06:0800000000000000;#ad");
            gdb.send("D");
            assert_eq!(gdb.reply().as_deref(), Some("OK"));
        });
        let t = FakeTarget::new(true);
        assert_eq!(debugger.on_stop(&t, Stop::Start, &|| false), Resume::Go);
        assert!(t.debug.borrow().unwrap().single_step);
        assert_eq!(debugger.on_stop(&t, Stop::Trap { pc: 0x1234, dr6: 0xffff_4ff0 }, &|| false), Resume::Detached);
        client.join().unwrap();
    }

    /// gdb's side of a client that asks for 16 KiB of memory `requests` times and reads
    /// nothing; it holds the connection open until told to go.
    fn never_reads(requests: usize) -> (impl FnOnce(&mut Client) + Send + 'static, mpsc::Sender<()>) {
        let (go, gone) = mpsc::channel::<()>();
        let gdb = move |gdb: &mut Client| {
            let _ = gdb.0.write_all(&frame(b"m0,2000").repeat(requests));
            let _ = gone.recv();
        };
        (gdb, go)
    }

    #[test]
    fn a_client_that_reads_no_replies_is_dropped() {
        // 64 MiB of replies: far more than any kernel's socket buffers.
        let (gdb, go) = never_reads(4096);
        let (mut debugger, _, client) = session(gdb);
        let t = FakeTarget::new(false);
        let start = Instant::now();
        assert_eq!(debugger.on_stop(&t, Stop::Start, &|| false), Resume::Detached);
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
        assert_eq!(*t.debug.borrow(), Some(GuestDebug::default()), "breakpoints out, as by D");
        go.send(()).unwrap();
        client.join().unwrap();
    }

    #[test]
    fn a_stop_request_ends_a_reply_that_waits_for_room() {
        let (gdb, go) = never_reads(4096);
        let (mut debugger, _, client) = session(gdb);
        let t = FakeTarget::new(false);
        let start = Instant::now();
        // The VM is stopped (a timeout, SIGTERM) while the client reads nothing: the stub lets
        // go well before the client counts as stalled, and the run loop ends the VM.
        let stop = || start.elapsed() > Duration::from_millis(200);
        assert_eq!(debugger.on_stop(&t, Stop::Start, &stop), Resume::Go);
        go.send(()).unwrap();
        client.join().unwrap();
    }

    #[test]
    fn a_stop_request_ends_the_wait_for_gdb() {
        let listener = listen(0).unwrap();
        let mut debugger =
            Debugger::new(listener, Arc::new(Counted::default()), Path::new("guest.img"), machine(), true);
        let t = FakeTarget::new(false);
        assert_eq!(debugger.on_stop(&t, Stop::Start, &|| true), Resume::Go);
    }

    #[test]
    fn the_probe_watches_the_byte_its_code_writes() {
        let (code, debug) = data_watch_probe();
        assert_eq!(code, [0x88, 0x04, 0x25, 0x00, 0x01, 0x00, 0x00, 0xf4], "mov [0x100], al; hlt");
        assert!(debug.enable && !debug.single_step);
        assert_eq!(debug.debugreg[0], 0x100);
        // L0, R/W0 = 01 (writes), LEN0 = 00 (1 byte), and the fixed bits.
        assert_eq!(debug.debugreg[7], 1 | 0b01 << 16 | 0x600);
        assert_eq!(debug.debugreg[1..7], [0; 6]);
    }

    #[test]
    fn the_debugger_can_move_to_the_vm_thread() {
        fn send<T: Send>() {}
        send::<Debugger>();
    }
}
