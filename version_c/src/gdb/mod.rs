//! `--gdb PORT`: a GDB remote-protocol stub for VM 0, written by hand over `std::net`.
//!
//! No C counterpart. The run loop calls [`Debugger::on_stop`] whenever the vCPU stops for the
//! debugger — before its first instruction, at a debug exit, at gdb's Ctrl-C, at a crash —
//! and [`Debugger::exited`] when the guest halts. The parts:
//!
//! - `protocol.rs`: packet framing and the hex encodings (pure);
//! - `registers.rs`: the target description and the register encodings (pure);
//! - `paging.rs`: the walk of the guest's page tables, for memory access and `monitor walk`;
//! - `breakpoints.rs`: breakpoints, watchpoints and the four debug registers (pure);
//! - `stepping.rs`: resuming the guest and making sense of its debug exits (the fast path);
//! - `session.rs`: the packet dispatcher, over the [`target::Target`] trait;
//! - `monitor.rs`: the `monitor` commands;
//! - `target.rs`: the trait over a real vCPU and its RAM;
//! - `connection.rs`: the socket, the reader thread, and the vCPU's kick;
//! - this file: the hook the run loop calls.
#![forbid(unsafe_code)]

mod breakpoints;
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
mod target;

use std::net::TcpListener;
use std::path::Path;

pub use connection::listen;
pub use target::data_breakpoints_fire;

use connection::{Conn, Link, Wait};
use monitor::Machine;
use protocol::{Input, console_packets};
use session::{Action, Session};
use target::KvmTarget;

use crate::kvm::{Mmap, Vcpu};
use crate::long_mode::Layout;
use crate::signals::Kick;

/// Why the vCPU stopped, as the run loop tells the stub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Before the first instruction.
    Start,
    /// A debug exit (`KVM_EXIT_DEBUG`): a breakpoint, a watchpoint or a single step; `pc` and
    /// `dr6` as the exit gives them.
    Trap { pc: u64, dr6: u64 },
    /// gdb's Ctrl-C (the kick's pause request).
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

/// The debugger side of VM 0: the listening socket until gdb connects, then the session.
pub struct Debugger {
    port: u16,
    listener: Option<TcpListener>,
    conn: Option<Conn>,
    link: Link,
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
        if self.conn.is_some() && self.link.is_running() {
            self.send(b"X09");
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
    /// The debugger for VM 0, on a socket from [`listen`]. `image` names the guest (gdb is told
    /// to load the ELF file beside it); `image_size` and `layout` are for `monitor mem`;
    /// `data_watch` comes from [`data_breakpoints_fire`].
    pub fn new(
        listener: TcpListener,
        kick: Kick,
        image: &Path,
        image_size: u64,
        layout: Layout,
        data_watch: bool,
    ) -> Debugger {
        Debugger {
            port: listener.local_addr().map_or(0, |a| a.port()),
            listener: Some(listener),
            conn: None,
            link: Link::new(kick),
            session: Session::new(data_watch, Machine { layout, image_size }),
            elf: image.with_extension("elf").display().to_string(),
            crashed: false,
        }
    }

    /// The vCPU is stopped: serve gdb until it resumes, kills or detaches. At [`Stop::Start`]
    /// this first waits for gdb to connect. `stop_requested` says whether the VM is being
    /// stopped (timeout, Ctrl-C of the hypervisor): then the stub stops waiting and returns
    /// [`Resume::Go`], and the run loop ends the VM. A debug exit of a single step that gdb
    /// need not hear of returns at once, with no system call.
    pub fn on_stop(&mut self, vcpu: &Vcpu, mem: &Mmap, why: Stop, stop_requested: &dyn Fn() -> bool) -> Resume {
        if why == Stop::Start && !self.connect(stop_requested) {
            return Resume::Go; // being stopped: the run loop sees it at once
        }
        if self.conn.is_none() {
            return Resume::Detached;
        }
        let target = KvmTarget { vcpu, mem };
        let stop = match why {
            Stop::Trap { pc, dr6 } => match self.session.on_trap(&target, pc, dr6) {
                Some(stop) => stop,
                None => {
                    self.print_notes();
                    return Resume::Go; // a silent step: run on
                }
            },
            why => self.session.stop_reply(why),
        };
        self.crashed |= why == Stop::Crash;
        self.link.hold();
        self.print_notes();
        if why != Stop::Start {
            self.send(&stop);
        }
        self.serve(&target, stop_requested)
    }

    /// The guest halted: gdb hears that it exited normally (`W00`), and the session ends.
    pub fn exited(&mut self) {
        if self.conn.is_some() {
            self.send(b"W00");
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
        self.conn = self.link.accept(listener, stop_requested);
        self.conn.is_some() || !stop_requested()
    }

    /// Answers gdb's packets until one resumes, kills or detaches.
    fn serve(&mut self, t: &KvmTarget<'_>, stop_requested: &dyn Fn() -> bool) -> Resume {
        loop {
            let Some(conn) = &mut self.conn else { return Resume::Detached };
            let packet = match conn.wait(stop_requested) {
                Wait::Input(Input::Packet(p)) => p,
                Wait::Input(Input::BadChecksum) => {
                    conn.write_raw(b"-");
                    continue;
                }
                Wait::Input(Input::Nack) => {
                    conn.resend();
                    continue;
                }
                // An ack needs nothing; 0x03 while stopped: the guest is stopped already.
                Wait::Input(Input::Ack | Input::Interrupt) => continue,
                Wait::Stop => return Resume::Go,
                Wait::Closed => return self.detach(t),
            };
            conn.write_raw(b"+");
            let action = self.session.handle(&packet, t);
            self.print_notes();
            if let Some(resume) = self.act(t, action, &packet) {
                return resume;
            }
        }
    }

    /// Carries out what the dispatcher decided; `Some` lets go of the vCPU.
    fn act(&mut self, t: &KvmTarget<'_>, action: Action, packet: &[u8]) -> Option<Resume> {
        match action {
            Action::Reply(r) => self.send(&r),
            Action::Monitor(text) => {
                for p in console_packets(&text) {
                    self.send(&p);
                }
                self.send(b"OK");
            }
            Action::Resume { step } => return self.resume(t, step),
            Action::Kill => {
                if packet.starts_with(b"vKill") {
                    self.send(b"OK"); // `k` has no reply, `vKill` has
                }
                self.close();
                return Some(Resume::Kill);
            }
            Action::Detach => {
                self.send(b"OK");
                return Some(self.detach(t));
            }
        }
        None
    }

    /// gdb resumes the guest: after a crash that ends the VM; else the vCPU is programmed.
    fn resume(&mut self, t: &KvmTarget<'_>, step: bool) -> Option<Resume> {
        if self.crashed {
            // The guest is gone: gdb hears that it died of SIGSEGV.
            self.send(b"X0b");
            self.close();
            return Some(Resume::Go);
        }
        if let Err(e) = self.session.resume(t, step) {
            self.send(format!("E{:02x}", e.raw_os_error().unwrap_or(1) & 0xff).as_bytes());
            return None;
        }
        self.print_notes();
        if let Some(conn) = &mut self.conn {
            self.link.run(conn);
        }
        Some(Resume::Go)
    }

    /// Takes every breakpoint out and lets go of gdb.
    fn detach(&mut self, t: &KvmTarget<'_>) -> Resume {
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

    fn send(&mut self, data: &[u8]) {
        if let Some(conn) = &mut self.conn {
            conn.send(data);
        }
    }

    fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.close();
        }
    }
}
