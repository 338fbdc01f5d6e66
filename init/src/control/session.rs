//! One client of the control protocol: its connection, what it has sent that is not yet a
//! whole line, what init has still to write to it, and what it is doing (waiting for a
//! request, following a stream, relaying an exec). Every read and write is non-blocking: a
//! slow or stuck client is dropped, never waited for.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use berth_control::{to_line, ExecOutput, StreamLine, VERSION};
use nix::unistd::Pid;

/// The longest line read from a client (an `apply` carries a whole manifest): the most
/// unparsed input a session holds.
const MAX_LINE: usize = 1 << 20;
/// Bytes read from one client per turn, at most: a client that sends without end is read
/// as fast as the loop turns, never all at once.
const READ_PER_TURN: usize = 64 << 10;
/// Bytes per `read(2)` from a client.
const READ_CHUNK: usize = 8 << 10;
/// While more than this many bytes of an exec's stdin wait for its process, init reads
/// nothing more from the client: the connection's buffers fill and the client's writes
/// block. A client streaming stdin faster than the process reads it costs PID 1 this much,
/// plus what one turn reads, instead of memory without bound.
pub const STDIN_HIGH_WATER: usize = 64 << 10;
/// Output queued for a client that reads too slowly; past this it is dropped.
const MAX_PENDING: usize = 4 << 20;
/// Bytes read from an exec'd process' output per message.
const OUTPUT_CHUNK: usize = 16 << 10;

/// Chunks relayed from one output per turn, so one chatty process cannot hold the loop.
const CHUNKS_PER_TURN: usize = 16;

/// At most this many bounded reads of each output after the process exited.
const FINAL_DRAIN_TURNS: usize = 64;

/// How far one call got through an exec'd process' output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relayed {
    /// Nothing more to read now.
    Drained,
    /// Stopped at the per-turn bound; more may wait.
    More,
    /// The output has ended.
    Ended,
}

/// What a `-f` client follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    Events,
    Logs(String),
    /// Events and every container's lines (`journal -f`).
    Journal,
}

/// The connection a session talks over.
#[derive(Debug)]
pub enum Conn {
    /// One request per connection, on the Unix socket.
    Unix(UnixStream),
    /// The virtio-serial port: one long session, bounded by the host's connect and
    /// disconnect.
    Port(std::fs::File),
}

impl Conn {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Unix(stream) => stream.as_fd(),
            Conn::Port(file) => file.as_fd(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(stream) => stream.read(buf),
            Conn::Port(file) => file.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(stream) => stream.write(buf),
            Conn::Port(file) => file.write(buf),
        }
    }
}

/// A process started by `exec` whose I/O the session relays.
#[derive(Debug)]
pub struct ExecRelay {
    pub pid: Pid,
    /// Where the client's stdin goes (a pipe, or the terminal's master side).
    pub stdin: Option<OwnedFd>,
    pub stdin_pending: Vec<u8>,
    /// The client's stdin ended: close the process' once `stdin_pending` is written.
    pub stdin_closing: bool,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// On a terminal: `stdin` and `stdout` are the master side.
    pub tty: bool,
}

impl ExecRelay {
    pub fn wants_stdin_written(&self) -> bool {
        !self.stdin_pending.is_empty()
    }

    /// More stdin waits for the process than [`STDIN_HIGH_WATER`]: the client is not read
    /// until the process has taken enough of it.
    pub fn stdin_backed_up(&self) -> bool {
        self.stdin_pending.len() > STDIN_HIGH_WATER
    }
}

#[derive(Debug)]
pub enum State {
    AwaitingRequest,
    Following(Follow),
    Exec(ExecRelay),
    /// `stop`, `restart` or `apply` asked: `response` goes once the containers named have
    /// stopped, while the loop goes on serving.
    AwaitingStops {
        names: Vec<String>,
        response: Box<berth_control::Response>,
    },
    /// Done: closed once the pending output is written (Unix socket only).
    Closing,
}

#[derive(Debug)]
pub struct Session {
    pub conn: Conn,
    input: Vec<u8>,
    output: Vec<u8>,
    pub state: State,
    /// For the serial port: whether the host side is connected. Always true on the socket.
    pub connected: bool,
    /// The `id` of the request being answered.
    pub request_id: Option<u64>,
    pub opened: Instant,
    /// Set when the session must go: its client left, or read too slowly.
    pub dead: bool,
}

/// Sets O_NONBLOCK on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFL) {
        let _ = fcntl(
            fd,
            FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
        );
    }
}

impl Session {
    pub fn new(conn: Conn, connected: bool) -> Session {
        set_nonblocking(conn.fd());
        Session {
            conn,
            input: Vec::new(),
            output: Vec::new(),
            state: State::AwaitingRequest,
            connected,
            request_id: None,
            opened: Instant::now(),
            dead: false,
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.conn.fd()
    }

    pub fn is_port(&self) -> bool {
        matches!(self.conn, Conn::Port(_))
    }

    pub fn wants_to_write(&self) -> bool {
        !self.output.is_empty()
    }

    /// Whether init reads what the client sends now: not while its exec's stdin is backed up
    /// ([`ExecRelay::stdin_backed_up`]).
    pub fn reads_input(&self) -> bool {
        !matches!(&self.state, State::Exec(relay) if relay.stdin_backed_up())
    }

    /// For a session not polled for input: whether the client has hung up (the connection
    /// polls hung up or failed), in which case it is treated as gone. Returns true then.
    pub fn check_hangup(&mut self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.conn.fd(), PollFlags::empty())];
        let hung_up = match poll(&mut fds, PollTimeout::ZERO) {
            Ok(_) => fds.first().and_then(PollFd::revents).is_some_and(|r| {
                r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
            }),
            Err(_) => false,
        };
        if hung_up {
            self.client_gone();
        }
        hung_up
    }

    /// Forgets the client (the serial port's host went away, or came anew): what was left to
    /// write to it cleared, an exec's relay dropped (its process sees its stdin close, or its
    /// terminal hang up). What it sent and is not a whole line yet stays: the port's buffers
    /// may still hold the rest of that line, which then ends it, and a request that follows
    /// it on the same line is found there (`port_line`).
    pub fn reset(&mut self) {
        self.new_client();
    }

    /// A new client on the serial port whose first line is already read: what was left for
    /// the previous one goes.
    pub fn new_client(&mut self) {
        self.hang_up_exec();
        self.output.clear();
        self.state = State::AwaitingRequest;
        self.request_id = None;
    }

    /// Reads what the client sent, at most [`READ_PER_TURN`] bytes (a level-triggered poll
    /// brings the session back for the rest). Returns the complete lines; end of stream or
    /// an error marks the client gone.
    pub fn read_lines(&mut self) -> Vec<String> {
        let mut buf = [0u8; READ_CHUNK];
        let mut read = 0;
        while read < READ_PER_TURN {
            match self.conn.read(&mut buf) {
                Ok(0) => {
                    self.client_gone();
                    break;
                }
                Ok(n) => {
                    read += n;
                    self.input
                        .extend_from_slice(buf.get(..n).unwrap_or_default());
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.client_gone();
                    break;
                }
            }
            if self.input.len() > MAX_LINE && !self.input.contains(&b'\n') {
                self.respond(berth_control::Response::refusal(
                    berth_control::ErrorCode::Invalid,
                    "request line too long",
                ));
                self.input.clear();
                self.state = State::Closing;
                break;
            }
        }
        let mut lines = Vec::new();
        while let Some(end) = self.input.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.input.drain(..=end).collect();
            lines.push(String::from_utf8_lossy(&line).trim().to_string());
        }
        lines.retain(|l| !l.is_empty());
        lines
    }

    fn client_gone(&mut self) {
        if self.is_port() {
            // The host side closed: the next client starts afresh.
            self.connected = false;
            self.reset();
        } else {
            self.hang_up_exec();
            self.dead = true;
        }
    }

    /// The client of a running `exec` left: the process' group (the exec'd process leads its
    /// own session) gets SIGHUP, as a closed terminal sends it, so what the client started
    /// does not run on unattended. A process that ignores SIGHUP (`nohup`) goes on, as after
    /// a closed terminal; its exit is reaped as any other. The process has not been reaped
    /// while the session relays it, so its group is still its own.
    pub fn hang_up_exec(&mut self) {
        if let State::Exec(relay) = &self.state {
            let _ = nix::sys::signal::killpg(relay.pid, nix::sys::signal::Signal::SIGHUP);
        }
    }

    /// Queues `bytes` and writes what the connection takes now.
    pub fn send(&mut self, bytes: &[u8]) {
        if !self.connected || self.dead {
            return;
        }
        self.output.extend_from_slice(bytes);
        if self.output.len() > MAX_PENDING {
            log::warn!("a control client reads too slowly; dropped");
            self.output.clear();
            if self.is_port() {
                self.reset();
            } else {
                self.hang_up_exec();
                self.dead = true;
            }
            return;
        }
        self.flush();
    }

    pub fn flush(&mut self) {
        while !self.output.is_empty() {
            match self.conn.write(&self.output) {
                Ok(0) => break,
                Ok(n) => {
                    self.output.drain(..n.min(self.output.len()));
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.client_gone();
                    break;
                }
            }
        }
        if self.output.is_empty() && matches!(self.state, State::Closing) && !self.is_port() {
            self.dead = true;
        }
    }

    pub fn respond(&mut self, mut response: berth_control::Response) {
        response.id = self.request_id;
        self.send(to_line(&response).as_bytes());
    }

    pub fn respond_error(&mut self, message: &str) {
        self.respond(berth_control::Response::error(message));
    }

    pub fn stream_line(&mut self, line: &str) {
        self.stream_entry(None, line);
    }

    /// A journal line: `container`'s output, or an event when none.
    pub fn stream_entry(&mut self, container: Option<&str>, line: &str) {
        let message = StreamLine {
            v: VERSION,
            line: line.to_string(),
            container: container.map(str::to_string),
        };
        self.send(to_line(&message).as_bytes());
    }

    /// A request answered and nothing follows: the socket's connection closes, the serial
    /// port waits for the next request.
    pub fn done(&mut self) {
        self.state = if self.is_port() {
            State::AwaitingRequest
        } else {
            State::Closing
        };
        self.flush();
    }

    /// Relays what the exec'd process wrote, up to a bounded amount per call.
    pub fn relay_output(&mut self, stderr: bool) -> Relayed {
        let State::Exec(relay) = &mut self.state else {
            return Relayed::Ended;
        };
        let slot = if stderr {
            &mut relay.stderr
        } else {
            &mut relay.stdout
        };
        let Some(fd) = slot.as_ref() else {
            return Relayed::Ended;
        };
        let mut chunks = Vec::new();
        let mut buf = vec![0u8; OUTPUT_CHUNK];
        let relayed = loop {
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => break Relayed::Ended,
                Ok(n) => chunks.push(berth_control::encode_bytes(
                    buf.get(..n).unwrap_or_default(),
                )),
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => break Relayed::Drained,
                // A terminal's master reads EIO once the last slave is closed.
                Err(_) => break Relayed::Ended,
            }
            if chunks.len() >= CHUNKS_PER_TURN {
                break Relayed::More;
            }
        };
        if relayed == Relayed::Ended {
            *slot = None;
        }
        for chunk in chunks {
            let message = ExecOutput {
                v: VERSION,
                stdout: (!stderr).then(|| chunk.clone()),
                stderr: stderr.then_some(chunk),
                exit: None,
            };
            self.send(to_line(&message).as_bytes());
        }
        relayed
    }

    /// Writes the client's pending stdin bytes to the process, as far as its pipe takes them.
    pub fn relay_stdin(&mut self) {
        let State::Exec(relay) = &mut self.state else {
            return;
        };
        let Some(fd) = relay.stdin.as_ref() else {
            relay.stdin_pending.clear();
            return;
        };
        while !relay.stdin_pending.is_empty() {
            match nix::unistd::write(fd, &relay.stdin_pending) {
                Ok(n) => {
                    relay
                        .stdin_pending
                        .drain(..n.min(relay.stdin_pending.len()));
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(_) => {
                    relay.stdin = None;
                    relay.stdin_pending.clear();
                    return;
                }
            }
        }
        if relay.stdin_closing {
            relay.stdin = None;
        }
    }

    /// The exec'd process exited: what it wrote is relayed, then its exit code, and the
    /// session is done.
    pub fn exec_exited(&mut self, code: i32) {
        // Bounded: a process left in the background may hold the pipe and go on writing.
        for stderr in [false, true] {
            for _ in 0..FINAL_DRAIN_TURNS {
                if self.relay_output(stderr) != Relayed::More {
                    break;
                }
            }
        }
        let message = ExecOutput {
            v: VERSION,
            exit: Some(code),
            ..ExecOutput::default()
        };
        self.send(to_line(&message).as_bytes());
        self.done();
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn a_turn_reads_a_bounded_amount_and_holds_a_bounded_partial_line() {
        let (ours, mut client) = UnixStream::pair().unwrap();
        client.set_nonblocking(true).unwrap();
        // Many lines per write: the socket's buffer counts each write's overhead.
        let lines = format!("{}\n", "x".repeat(999)).repeat(32);
        let mut sent = 0;
        while let Ok(n) = client.write(lines.as_bytes()) {
            sent += n;
        }
        assert!(sent > 2 * READ_PER_TURN, "the socket buffers {sent} bytes");
        let mut session = Session::new(Conn::Unix(ours), true);
        let lines = session.read_lines();
        let taken: usize = lines.iter().map(|l| l.len() + 1).sum::<usize>() + session.input.len();
        assert!(taken <= READ_PER_TURN, "{taken}");
        assert!(!lines.is_empty());

        // A line without end is refused once it passes the bound, not held whole.
        let (ours, mut client) = UnixStream::pair().unwrap();
        client.set_nonblocking(true).unwrap();
        let mut session = Session::new(Conn::Unix(ours), true);
        let chunk = vec![b'y'; 4096];
        while !matches!(session.state, State::Closing) {
            while client.write(&chunk).is_ok() {}
            assert!(session.read_lines().is_empty());
            assert!(session.input.len() <= MAX_LINE + READ_PER_TURN);
        }
        assert!(session.input.is_empty());
    }
}
