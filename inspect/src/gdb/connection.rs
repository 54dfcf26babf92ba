//! The connection to gdb: the listening socket, one reader thread per connection, and the one
//! place where the stub uses the version's [`Pause`] (gdb's Ctrl-C pauses the running guest).
//!
//! The stub serves gdb on the VM's own thread while the vCPU is stopped, so guest memory is
//! never touched by two threads. The reader thread decodes what gdb sends and passes it on
//! through a bounded channel; only gdb's interrupt byte (0x03) acts across threads: while the
//! guest runs, it pauses the vCPU ([`Pause::pause`]), and the run loop then calls the stub
//! with [`Stop::Interrupt`](super::Stop::Interrupt).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use super::Pause;
use super::protocol::{Decoder, Input, frame};

/// How often a waiting VM thread looks for a stop request (timeout, Ctrl-C of the hypervisor).
const POLL: Duration = Duration::from_millis(100);
/// Inputs waiting for the VM thread: gdb sends one packet and waits for the answer, so a
/// client that gets this far ahead is not gdb, and loses the connection.
const QUEUE: usize = 64;

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

/// What waiting for gdb brought.
pub enum Wait {
    /// Something gdb sent.
    Input(Input),
    /// The connection is gone.
    Closed,
    /// The VM is being stopped (timeout, Ctrl-C): stop serving, let the run loop end it.
    Stop,
}

/// One accepted connection: where replies go, and the reader thread's channel.
pub struct Conn {
    stream: TcpStream,
    inputs: Receiver<Input>,
    /// The last packet sent, for a `-`.
    last: Vec<u8>,
    /// Inputs taken out of the channel early (see [`Link::run`]).
    pending: VecDeque<Input>,
}

impl Conn {
    /// The next input from gdb; gives up when `stop_requested` says the VM is being stopped.
    pub fn wait(&mut self, stop_requested: &dyn Fn() -> bool) -> Wait {
        if let Some(input) = self.pending.pop_front() {
            return Wait::Input(input);
        }
        loop {
            match self.inputs.recv_timeout(POLL) {
                Ok(input) => return Wait::Input(input),
                Err(RecvTimeoutError::Timeout) if !stop_requested() => {}
                Err(RecvTimeoutError::Timeout) => return Wait::Stop,
                Err(RecvTimeoutError::Disconnected) => return Wait::Closed,
            }
        }
    }

    /// Sends one packet (a failure shows up as a closed connection at the next wait).
    pub fn send(&mut self, data: &[u8]) {
        self.last = frame(data);
        let _ = self.stream.write_all(&self.last);
    }

    /// Sends bytes as they are (an acknowledgement).
    pub fn write_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// gdb asked for the last packet again (`-`).
    pub fn resend(&mut self) {
        let _ = self.stream.write_all(&self.last);
    }

    /// Ends the connection (the reader thread then ends too).
    pub fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// The version's [`Pause`] and whether the guest runs, shared with the reader thread: gdb's
/// 0x03 pauses the vCPU only while the guest runs, and the lock orders a pause against the
/// stub's taking over.
pub struct Link {
    pause: Arc<dyn Pause>,
    running: Arc<Mutex<bool>>,
}

/// A poisoned lock only means a thread panicked while holding it; the flag is still valid.
fn lock(m: &Mutex<bool>) -> MutexGuard<'_, bool> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Link {
    /// A link with the guest stopped.
    pub fn new(pause: Arc<dyn Pause>) -> Link {
        Link { pause, running: Arc::new(Mutex::new(false)) }
    }

    /// Whether the guest runs (it was resumed and has not stopped since).
    pub fn is_running(&self) -> bool {
        *lock(&self.running)
    }

    /// The guest is about to run: from now on 0x03 pauses it. A 0x03 that gdb sent after
    /// the resume but the reader saw before it (while the guest was stopped) is in the channel
    /// already: it pauses the guest now. So does a reader that is gone already (gdb closed the
    /// connection), so that the stub notices at once and detaches.
    pub fn run(&self, conn: &mut Conn) {
        let mut running = lock(&self.running);
        *running = true;
        loop {
            match conn.inputs.try_recv() {
                Ok(Input::Interrupt) => self.pause.pause(),
                Ok(input) => conn.pending.push_back(input),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.pause.pause();
                    break;
                }
            }
        }
    }

    /// The stub takes over a stopped guest: from now on 0x03 pauses nothing, and a pause that
    /// came in just before (the guest stopped for another reason) is dropped, so that the next
    /// resume does not stop at once. A stop request stays.
    pub fn hold(&self) {
        let mut running = lock(&self.running);
        *running = false;
        self.pause.forget_pause(); // a stop stays
    }

    /// Waits for gdb on the listening socket (on a thread: std's accept retries on EINTR),
    /// and gives up if the VM is being stopped. Then starts the connection's reader thread.
    pub fn accept(&self, listener: TcpListener, stop_requested: &dyn Fn() -> bool) -> Option<Conn> {
        let stream = accept_stream(listener, stop_requested)?;
        let _ = stream.set_nodelay(true);
        let reader = match stream.try_clone() {
            Ok(r) => r,
            Err(e) => {
                diag!("mini_hypervisor: --gdb: {e}; the guest runs without a debugger");
                return None;
            }
        };
        let (tx, inputs) = mpsc::sync_channel(QUEUE);
        let (pause, running) = (Arc::clone(&self.pause), Arc::clone(&self.running));
        let spawned =
            thread::Builder::new().name("gdb-reader".to_owned()).spawn(move || read_loop(reader, tx, pause, running));
        if let Err(e) = spawned {
            diag!("mini_hypervisor: --gdb: cannot start a thread: {e}; the guest runs without a debugger");
            return None;
        }
        diag!("mini_hypervisor: gdb connected");
        Some(Conn { stream, inputs, last: Vec::new(), pending: VecDeque::new() })
    }
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

/// The reader thread: decodes everything gdb sends and passes it on; 0x03 also pauses the
/// running guest. Ends at end of file, on an error, when the session is gone, or when the
/// client floods the queue.
fn read_loop(mut stream: TcpStream, tx: SyncSender<Input>, pause: Arc<dyn Pause>, running: Arc<Mutex<bool>>) {
    let mut decoder = Decoder::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) if n > 0 => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            _ => return gone(&*pause, &running),
        };
        for input in buf[..n].iter().filter_map(|&b| decoder.push(b)) {
            if input == Input::Ack {
                continue; // nothing to do with it
            }
            // Under the lock, so that the stub, resuming, finds this 0x03 either paused
            // already or in the channel (`Link::run`).
            let guard = lock(&running);
            if input == Input::Interrupt && *guard {
                pause.pause();
            }
            match tx.try_send(input) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    drop(guard);
                    let _ = stream.shutdown(Shutdown::Both);
                    return gone(&*pause, &running);
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

/// gdb is gone: a running guest is stopped, so that the stub notices and detaches (its
/// breakpoints and any single-stepping go with it).
fn gone(pause: &dyn Pause, running: &Mutex<bool>) {
    if *lock(running) {
        pause.pause();
    }
}
