//! The connection to gdb: the listening socket, the one accepted connection, and the one place
//! where the stub uses the version's [`Pause`] (gdb's Ctrl-C pauses the running guest).
//!
//! **Who reads.** While the guest is stopped, the VM's own thread reads gdb's packets from the
//! socket and writes the replies: a packet costs its system calls and nothing else, no thread
//! hand-off. Having sent a reply, it looks for the next packet without sleeping for
//! [`SPIN`] (gdb's next packet of the same command comes within that), then waits on the
//! socket. While the guest runs after a continue, a watcher thread reads instead, for
//! gdb's Ctrl-C (0x03 pauses the vCPU with [`Pause::pause`], and the run loop then calls the
//! stub with [`Stop::Interrupt`](super::Stop::Interrupt)) and for a connection that ends. A
//! single step needs no watcher: it ends after one instruction.
//!
//! **A client can never hold the VM.** The VM thread never blocks on the client for long:
//! - a wait for gdb's next packet looks at `stop_requested` (a timeout, a stop signal) every
//!   [`POLL`], whatever the client sends;
//! - a reply goes to the socket, whose kernel buffers take it at once unless the client has
//!   left several MiB of replies unread (Linux lets a sender's buffer grow to `tcp_wmem`'s
//!   4 MiB). A reply the socket cannot take whole within [`STALL`] means the client reads
//!   nothing: it is dropped, as by `D`. While the reply waits, `stop_requested` is looked at
//!   every [`POLL`];
//! - while the guest runs, gdb sends nothing but 0x03: a client that sends more than
//!   [`QUEUE`] packets is dropped.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::Pause;
use super::protocol::{Decoder, Input, frame};

/// How often a waiting VM thread looks for a stop request (timeout, Ctrl-C of the hypervisor).
pub const POLL: Duration = Duration::from_millis(100);
/// Packets a client may send while the guest runs: gdb sends none (only 0x03), so a client
/// that gets this far ahead is not gdb, and loses the connection.
pub const QUEUE: usize = 64;
/// How long a reply may wait for room on the socket before the client counts as one that reads
/// nothing.
pub const STALL: Duration = Duration::from_secs(1);
/// How long the VM thread looks for gdb's next packet without sleeping, yielding the CPU
/// between looks (a wake-up from a blocking read costs tens of µs on a nested KVM; gdb sends
/// the next packet of a command within this).
pub const SPIN: Duration = Duration::from_micros(1000);

/// Binds 127.0.0.1:`port` (loopback only) for `--gdb`, before the VM is created; the error is
/// the one startup line. The socket goes to [`Debugger::new`](super::Debugger::new).
pub fn listen(port: u16) -> Result<TcpListener, String> {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).map_err(|e| {
        let why = match e.kind() {
            io::ErrorKind::AddrInUse => "Address in use".to_owned(),
            io::ErrorKind::PermissionDenied => "Permission denied".to_owned(),
            _ => e.to_string(),
        };
        format!("--gdb {port}: cannot listen on 127.0.0.1:{port}: {why}: choose another port")
    })
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The client closed it, or the socket failed.
    Closed,
    /// A reply waited [`STALL`] for room on the socket: the client reads nothing.
    Stalled,
    /// More than [`QUEUE`] packets while the guest ran.
    Flooded,
}

/// What waiting for gdb brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Wait {
    /// Something gdb sent.
    Input(Input),
    /// The connection is gone.
    Closed(Lost),
    /// The VM is being stopped (timeout, Ctrl-C): stop serving, let the run loop end it.
    Stop,
}

/// What the VM thread and the watcher share.
struct Shared {
    state: Mutex<State>,
    /// Signalled when the watcher is to read (or to end).
    engaged: Condvar,
    pause: Arc<dyn Pause>,
}

struct State {
    /// The watcher reads the socket: the guest runs after a continue.
    watching: bool,
    /// The stub is done with the connection: the watcher ends.
    done: bool,
    /// One decoder for the bytes of both readers (a packet may be split between them).
    decoder: Decoder,
    /// Decoded, not yet served.
    inputs: VecDeque<Input>,
    /// The watcher saw the connection end.
    lost: Option<Lost>,
}

/// A poisoned lock only means a thread panicked while holding it; the state is still valid.
fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl State {
    /// Decodes `bytes` into `inputs` (acknowledgements need nothing); `interrupt` is called
    /// for each 0x03 instead of queueing it when given.
    fn take(&mut self, bytes: &[u8], interrupt: Option<&dyn Fn()>) {
        for &b in bytes {
            match (self.decoder.push(b), interrupt) {
                (None | Some(Input::Ack), _) => {}
                (Some(Input::Interrupt), Some(pause)) => pause(),
                (Some(input), _) => self.inputs.push_back(input),
            }
        }
    }
}

/// One accepted connection, owned by the VM thread.
pub struct Conn {
    stream: TcpStream,
    shared: Arc<Shared>,
    /// The socket is in non-blocking mode (the VM thread's reads spin; the watcher's peek
    /// needs blocking mode, set again before it is engaged).
    nonblocking: bool,
    /// The last packet sent, for a `-`.
    last: Vec<u8>,
    /// `QStartNoAckMode` was accepted: no `+` or `-` any more, either way.
    pub no_ack: bool,
    /// The guest was resumed and has not stopped since.
    running: bool,
    /// A write failed: later writes do nothing and the next wait says so.
    failed: Option<Failed>,
}

/// Why a write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    Lost(Lost),
    /// The VM is being stopped (seen while a reply waited for room).
    Stopping,
}

impl Conn {
    /// The next input from gdb; gives up when `stop_requested` says the VM is being stopped.
    pub fn wait(&mut self, stop_requested: &dyn Fn() -> bool) -> Wait {
        let mut checked = Instant::now();
        let mut spin_start = checked;
        if !self.nonblocking {
            self.set_nonblocking(true);
        }
        let mut buf = [0u8; 4096];
        loop {
            match self.failed {
                Some(Failed::Lost(lost)) => return Wait::Closed(lost),
                Some(Failed::Stopping) => return Wait::Stop,
                None => {}
            }
            {
                let mut st = lock(&self.shared.state);
                if let Some(input) = st.inputs.pop_front() {
                    return Wait::Input(input);
                }
                if let Some(lost) = st.lost {
                    return Wait::Closed(lost);
                }
            }
            // Whatever the client sends or does not send, a stop request is seen within POLL.
            if checked.elapsed() >= POLL {
                if stop_requested() {
                    return Wait::Stop;
                }
                checked = Instant::now();
            }
            match (&self.stream).read(&mut buf) {
                Ok(0) => self.failed = Some(Failed::Lost(Lost::Closed)),
                Ok(n) => {
                    lock(&self.shared.state).take(&buf[..n], None);
                    spin_start = Instant::now();
                }
                Err(e) if would_block(&e) => {
                    if self.nonblocking && spin_start.elapsed() >= SPIN {
                        // gdb is thinking (or a human is): wait on the socket, POLL at a time.
                        self.set_nonblocking(false);
                    } else {
                        // Yields the CPU to gdb if it waits for this one.
                        thread::yield_now();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.failed = Some(Failed::Lost(Lost::Closed)),
            }
        }
    }

    /// Sends one packet. A failure shows at the next wait: the client closed the connection or
    /// reads nothing ([`STALL`]), or the VM is being stopped.
    pub fn send(&mut self, data: &[u8], stop_requested: &dyn Fn() -> bool) {
        self.last = frame(data);
        let last = std::mem::take(&mut self.last);
        self.write(&last, Some(stop_requested));
        self.last = last;
    }

    /// Sends one packet if the socket takes it at once (the VM is ending: `W00`, `X09`).
    pub fn send_now(&mut self, data: &[u8]) {
        if !self.nonblocking {
            self.set_nonblocking(true);
        }
        self.write(&frame(data), None);
    }

    /// Sends bytes as they are (an acknowledgement).
    pub fn write_raw(&mut self, bytes: &[u8], stop_requested: &dyn Fn() -> bool) {
        self.write(bytes, Some(stop_requested));
    }

    /// gdb asked for the last packet again (`-`).
    pub fn resend(&mut self, stop_requested: &dyn Fn() -> bool) {
        let last = std::mem::take(&mut self.last);
        self.write(&last, Some(stop_requested));
        self.last = last;
    }

    /// Writes all of `bytes`, or fails the connection. With `stop_requested`, waits for room
    /// on the socket up to [`STALL`], looking at `stop_requested` every [`POLL`]; without,
    /// gives up at once.
    fn write(&mut self, bytes: &[u8], stop_requested: Option<&dyn Fn() -> bool>) {
        if self.failed.is_some() {
            return;
        }
        let start = Instant::now();
        let mut at = 0;
        while at < bytes.len() {
            match (&self.stream).write(&bytes[at..]) {
                Ok(0) => self.failed = Some(Failed::Lost(Lost::Closed)),
                Ok(n) => at += n,
                Err(e) if would_block(&e) => match stop_requested {
                    None => self.failed = Some(Failed::Lost(Lost::Stalled)),
                    Some(stop) if stop() => self.failed = Some(Failed::Stopping),
                    Some(_) if start.elapsed() >= STALL => self.failed = Some(Failed::Lost(Lost::Stalled)),
                    // Blocking mode: the next write waits up to POLL (the write timeout).
                    Some(_) => self.set_nonblocking(false),
                },
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.failed = Some(Failed::Lost(Lost::Closed)),
            }
            if self.failed.is_some() {
                let _ = self.stream.shutdown(Shutdown::Both);
                return;
            }
        }
    }

    fn set_nonblocking(&mut self, on: bool) {
        if self.stream.set_nonblocking(on).is_ok() {
            self.nonblocking = on;
        }
    }

    /// Whether the guest runs (it was resumed and has not stopped since).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The guest is about to run; `watch` (a continue, not a single step): the watcher reads
    /// the socket, and gdb's 0x03 pauses the guest. A 0x03 read with the resume (gdb sent it
    /// right after) pauses the guest now; so does a connection that is gone already, so that
    /// the stub notices at once and detaches.
    pub fn run(&mut self, watch: bool) {
        self.running = true;
        if watch && self.nonblocking {
            self.set_nonblocking(false); // the watcher's peek waits
        }
        let mut st = lock(&self.shared.state);
        let queued = st.inputs.len();
        st.inputs.retain(|i| *i != Input::Interrupt);
        if st.inputs.len() != queued || st.lost.is_some() || self.failed.is_some() {
            self.shared.pause.pause();
        }
        st.watching = watch;
        drop(st);
        if watch {
            self.shared.engaged.notify_one();
        }
    }

    /// The stub takes over a stopped guest: the watcher stops reading, from now on 0x03 pauses
    /// nothing, and a pause that came in just before (the guest stopped for another reason)
    /// is dropped, so that the next resume does not stop at once. A stop request stays.
    pub fn hold(&mut self) {
        self.running = false;
        lock(&self.shared.state).watching = false;
        self.shared.pause.forget_pause(); // a stop stays
    }

    /// Ends the connection (the watcher then ends too).
    pub fn close(self) {
        lock(&self.shared.state).done = true;
        self.shared.engaged.notify_one();
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Waits for gdb on the listening socket (on a thread: std's accept retries on EINTR), and
/// gives up if the VM is being stopped. Then starts the connection's watcher thread.
pub fn accept(listener: TcpListener, pause: &Arc<dyn Pause>, stop_requested: &dyn Fn() -> bool) -> Option<Conn> {
    let stream = accept_stream(listener, stop_requested)?;
    let _ = stream.set_nodelay(true);
    // Reads and writes in blocking mode wait at most POLL (then stop requests are looked at).
    let timeouts = stream.set_read_timeout(Some(POLL)).and_then(|()| stream.set_write_timeout(Some(POLL)));
    let watcher = match timeouts.and_then(|()| stream.try_clone()) {
        Ok(w) => w,
        Err(e) => {
            diag!("mini_hypervisor: --gdb: {e}; the guest runs without a debugger");
            return None;
        }
    };
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            watching: false,
            done: false,
            decoder: Decoder::default(),
            inputs: VecDeque::new(),
            lost: None,
        }),
        engaged: Condvar::new(),
        pause: Arc::clone(pause),
    });
    let theirs = Arc::clone(&shared);
    let spawned = thread::Builder::new().name("gdb-watch".to_owned()).spawn(move || watch(&watcher, &theirs));
    if let Err(e) = spawned {
        diag!("mini_hypervisor: --gdb: cannot start a thread: {e}; the guest runs without a debugger");
        return None;
    }
    diag!("mini_hypervisor: gdb connected");
    Some(Conn { stream, shared, nonblocking: false, last: Vec::new(), no_ack: false, running: false, failed: None })
}

/// The first connection on `listener`; the listener closes after it (one debugger per run).
fn accept_stream(listener: TcpListener, stop_requested: &dyn Fn() -> bool) -> Option<TcpStream> {
    let (tx, rx) = mpsc::channel();
    let spawned = thread::Builder::new().name("gdb-accept".to_owned()).spawn(move || {
        let _ = tx.send(listener.accept().map(|(stream, _)| stream));
    });
    if let Err(e) = spawned {
        diag!("mini_hypervisor: --gdb: cannot start a thread: {e}; the guest runs without a debugger");
        return None;
    }
    loop {
        match rx.recv_timeout(POLL) {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(e)) => {
                diag!("mini_hypervisor: --gdb: accept: {e}; the guest runs without a debugger");
                return None;
            }
            Err(RecvTimeoutError::Timeout) if !stop_requested() => {}
            Err(_) => return None,
        }
    }
}

/// The watcher thread: while the guest runs after a continue, reads what gdb sends; 0x03
/// pauses the guest, and so does the end of the connection (so that the stub notices and
/// detaches: its breakpoints and any single-stepping go with it). Anything else is queued for
/// the VM thread, up to [`QUEUE`] packets. While the guest is stopped it sleeps: the bytes are
/// the VM thread's to read.
fn watch(stream: &TcpStream, shared: &Shared) {
    let mut buf = [0u8; 4096];
    loop {
        {
            let mut st = lock(&shared.state);
            while !st.watching && !st.done {
                st = shared.engaged.wait(st).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if st.done {
                return;
            }
        }
        // Looks without taking: if the VM thread took over meanwhile, the bytes are its.
        let peeked = stream.peek(&mut buf);
        let mut st = lock(&shared.state);
        if st.done {
            return;
        }
        if !st.watching {
            continue;
        }
        let n = match peeked {
            // The bytes are there, and nobody else reads while the guest runs.
            Ok(n) if n > 0 => match (&*stream).read(&mut buf[..n]) {
                Ok(k) => k,
                Err(e) if would_block(&e) || e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            },
            Err(e) if would_block(&e) || e.kind() == io::ErrorKind::Interrupted => continue,
            _ => 0,
        };
        if n == 0 {
            st.lost = Some(Lost::Closed);
            shared.pause.pause();
            return;
        }
        st.take(&buf[..n], Some(&|| shared.pause.pause()));
        if st.inputs.len() > QUEUE {
            st.inputs.clear();
            st.lost = Some(Lost::Flooded);
            let _ = stream.shutdown(Shutdown::Both);
            shared.pause.pause();
            return;
        }
    }
}
