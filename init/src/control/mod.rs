//! The control API: `berthctl` on the Unix socket [`SOCKET`], and a rig's host side on the
//! virtio-serial port `org.berth.control`, ask init about and for its containers with the
//! versioned JSON lines of `berth-control`. The socket is root only: mode 0600, and the
//! peer's credentials are checked on every connection.
//!
//! Everything here runs in PID 1's poll loop and never blocks on a client: each session reads
//! and writes non-blocking, and `exec` relays the process' I/O through the same loop.

mod host_info;
mod port;
mod session;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_control::{parse_envelope, ErrorCode, Request, Response, PORT_NAME, SOCKET};
use nix::poll::PollFlags;
use nix::sys::socket::{getsockopt, sockopt};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::shutdown::ShutdownAction;
use crate::supervisor::{ExecIo, OperatorError, Supervisor};
pub use session::set_nonblocking;
use session::{Conn, ExecRelay, Follow, Relayed, Session, State};

/// A socket client that has not sent its request by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Socket clients served at once. Each costs init a descriptor (and one with an `exec`, three
/// more): past this, a new client is told so and closed, so a client that opens connection
/// after connection cannot use up init's descriptors and stop it starting containers.
const MAX_SOCKET_CLIENTS: usize = 32;
/// Connections taken from the listener per turn, at most (the rest wait in its backlog).
const ACCEPTS_PER_TURN: usize = 64;
/// How long after boot init looks for the serial port (the driver may bind it late).
const PORT_SEARCH: Duration = Duration::from_secs(30);
/// How often it looks meanwhile.
const PORT_RESCAN: Duration = Duration::from_millis(250);

/// A shutdown an operator asked for.
pub type ShutdownRequest = (ShutdownAction, &'static str);

/// What one of the control's poll slots belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Listener,
    Session(usize),
    Stdout(usize),
    Stderr(usize),
    Stdin(usize),
}

#[derive(Debug)]
pub struct Control {
    listener: Option<UnixListener>,
    sessions: Vec<Session>,
    /// Until when the serial port is looked for, while it has not been found.
    port_search_until: Option<Instant>,
}

fn bind_socket() -> Option<UnixListener> {
    let _ = std::fs::create_dir_all("/run/berth");
    let _ = std::fs::remove_file(SOCKET);
    let bound = UnixListener::bind(SOCKET).and_then(|listener| {
        std::fs::set_permissions(SOCKET, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    });
    match bound {
        Ok(listener) => Some(listener),
        Err(err) => {
            log::error!("no control socket at {SOCKET}: {err}");
            None
        }
    }
}

impl Control {
    pub fn new() -> Control {
        let mut control = Control {
            listener: bind_socket(),
            sessions: Vec::new(),
            port_search_until: Some(Instant::now() + PORT_SEARCH),
        };
        control.look_for_port();
        control
    }

    fn look_for_port(&mut self) {
        let Some(until) = self.port_search_until else {
            return;
        };
        match port::find(Path::new(port::SYS_CLASS_VIRTIO_PORTS), PORT_NAME) {
            Some(node) => {
                self.port_search_until = None;
                match port::open(&node) {
                    Ok(file) => {
                        log::info!("control port: {} ({PORT_NAME})", node.display());
                        let connected = port::host_connected(&file);
                        self.sessions
                            .push(Session::new(Conn::Port(file), connected));
                    }
                    Err(err) => log::error!("cannot open {}: {err}", node.display()),
                }
            }
            None if Instant::now() >= until => self.port_search_until = None,
            None => {}
        }
    }

    /// The host side of the serial port connected or went away (the driver's SIGIO).
    pub fn on_port_signal(&mut self) {
        for session in self.sessions.iter_mut() {
            let Conn::Port(file) = &session.conn else {
                continue;
            };
            let connected = port::host_connected(file);
            if connected != session.connected {
                session.reset();
                session.connected = connected;
            }
        }
    }

    /// The file descriptors to poll, each with what it belongs to.
    pub fn poll_fds(&self) -> Vec<(Slot, BorrowedFd<'_>, PollFlags)> {
        let mut fds = Vec::new();
        if let Some(listener) = &self.listener {
            fds.push((Slot::Listener, listener.as_fd(), PollFlags::POLLIN));
        }
        for (index, session) in self.sessions.iter().enumerate() {
            if !session.connected {
                continue;
            }
            // Polled with no flags at all while its input waits (an exec's stdin backed up):
            // poll still reports a hang-up, which `on_session_ready` checks for.
            let mut flags = PollFlags::empty();
            if session.reads_input() {
                flags |= PollFlags::POLLIN;
            }
            if session.wants_to_write() {
                flags |= PollFlags::POLLOUT;
            }
            fds.push((Slot::Session(index), session.fd(), flags));
            if let State::Exec(relay) = &session.state {
                if let Some(fd) = &relay.stdout {
                    fds.push((Slot::Stdout(index), fd.as_fd(), PollFlags::POLLIN));
                }
                if let Some(fd) = &relay.stderr {
                    fds.push((Slot::Stderr(index), fd.as_fd(), PollFlags::POLLIN));
                }
                if let (Some(fd), true) = (&relay.stdin, relay.wants_stdin_written()) {
                    fds.push((Slot::Stdin(index), fd.as_fd(), PollFlags::POLLOUT));
                }
            }
        }
        fds
    }

    /// Handles the slots poll found ready.
    pub fn on_ready(
        &mut self,
        ready: &[Slot],
        mut supervisor: Option<&mut Supervisor>,
    ) -> Option<ShutdownRequest> {
        let mut shutdown = None;
        for slot in ready {
            let asked = match *slot {
                Slot::Listener => {
                    self.accept();
                    None
                }
                Slot::Session(index) => self.on_session_ready(index, supervisor.as_deref_mut()),
                Slot::Stdout(index) | Slot::Stderr(index) => {
                    if let Some(session) = self.sessions.get_mut(index) {
                        let _: Relayed = session.relay_output(*slot == Slot::Stderr(index));
                    }
                    None
                }
                Slot::Stdin(index) => {
                    if let Some(session) = self.sessions.get_mut(index) {
                        session.relay_stdin();
                    }
                    None
                }
            };
            if let Some(asked) = asked {
                shutdown.get_or_insert(asked);
            }
        }
        shutdown
    }

    fn accept(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        let mut refused = 0;
        for _ in 0..ACCEPTS_PER_TURN {
            let Ok((stream, _)) = listener.accept() else {
                break;
            };
            let clients = self.sessions.iter().filter(|s| !s.is_port()).count();
            if clients >= MAX_SOCKET_CLIENTS {
                refused += 1;
                refuse_client(stream);
                continue;
            }
            let root = getsockopt(&stream, sockopt::PeerCredentials).is_ok_and(|c| c.uid() == 0);
            let mut session = Session::new(Conn::Unix(stream), true);
            if !root {
                session.respond_error("the control socket is for root only");
                session.done();
            }
            if !session.dead {
                self.sessions.push(session);
            }
        }
        if refused > 0 {
            log::warn!(
                "refused {refused} control client(s): {MAX_SOCKET_CLIENTS} are connected already"
            );
        }
    }

    fn on_session_ready(
        &mut self,
        index: usize,
        mut supervisor: Option<&mut Supervisor>,
    ) -> Option<ShutdownRequest> {
        let session = self.sessions.get_mut(index)?;
        // The serial port was ready when polled, but this turn's signals may have marked its
        // host gone since: the old client's hang-up read after the new client had already
        // connected, with the driver's signal of the connect read as one with the hang-up.
        // Answering now would drop the answer (nothing is sent to a host marked gone) and
        // lose the new client's request; ask the driver instead.
        if let Conn::Port(file) = &session.conn {
            if !session.connected {
                if !port::host_connected(file) {
                    return None;
                }
                session.reset();
                session.connected = true;
            }
        }
        session.flush();
        if !session.reads_input() {
            // Back-pressure: its exec's stdin waits for the process, so nothing more is read
            // from the client (whose writes then block). Only a hang-up is looked at.
            session.check_hangup();
            return None;
        }
        let mut shutdown = None;
        for line in session.read_lines() {
            let line = match session.is_port() {
                true => port_line(&line),
                false => &line,
            };
            // On the serial port a new client's request may come before the driver's signal
            // of the old one leaving was read: a request line always starts a new session.
            if session.is_port()
                && !matches!(session.state, State::AwaitingRequest)
                && parse_envelope(line).is_ok()
            {
                session.new_client();
            }
            if matches!(session.state, State::AwaitingRequest) {
                if session.is_port() && is_leftover_exec_input(line) {
                    continue;
                }
                if let Some(asked) = answer_line(session, line, supervisor.as_deref_mut()) {
                    shutdown.get_or_insert(asked);
                }
            } else if let State::Exec(relay) = &mut session.state {
                exec_input(relay, line);
            }
            // A follower or a closing session has nothing more to ask.
        }
        if let State::Exec(_) = session.state {
            session.relay_stdin();
        }
        shutdown
    }

    /// An exited child: true when it was a process started by `exec`.
    pub fn on_exit(&mut self, pid: Pid, status: WaitStatus) -> bool {
        let Some(session) = self
            .sessions
            .iter_mut()
            .find(|s| matches!(&s.state, State::Exec(relay) if relay.pid == pid))
        else {
            return false;
        };
        if let Some(code) = crate::supervisor::policy::exit_code(status) {
            session.exec_exited(code);
        }
        crate::update::on_exit(pid, status);
        true
    }

    /// End of a loop turn: answers wait for stops that are over, followers get the lines
    /// that came, sessions that are done close, the serial port is looked for while it may
    /// still appear.
    pub fn after_turn(&mut self, supervisor: Option<&Supervisor>) {
        self.look_for_port();
        let events = if self.follows(|f| *f == Follow::Events) {
            crate::event::take_new()
        } else {
            Vec::new()
        };
        let logs = if self.follows(|f| matches!(f, Follow::Logs(_))) {
            crate::supervisor::logs::take_new()
        } else {
            Vec::new()
        };
        let journal = if self.follows(|f| *f == Follow::Journal) {
            crate::journal::take_new()
        } else {
            Vec::new()
        };
        let now = Instant::now();
        for session in &mut self.sessions {
            if matches!(session.state, State::Following(Follow::Journal)) {
                for (container, line) in &journal {
                    session.stream_entry(container.as_deref(), line);
                }
                continue;
            }
            if let State::AwaitingStops { names, .. } = &session.state {
                if supervisor.is_none_or(|s| s.settled(names)) {
                    let state = std::mem::replace(&mut session.state, State::AwaitingRequest);
                    if let State::AwaitingStops { response, .. } = state {
                        session.respond(*response);
                    }
                    session.done();
                }
                continue;
            }
            let lines: Vec<&String> = match &session.state {
                State::Following(Follow::Events) => events.iter().collect(),
                State::Following(Follow::Logs(name)) => logs
                    .iter()
                    .filter(|(container, _)| container == name)
                    .map(|(_, line)| line)
                    .collect(),
                State::AwaitingRequest
                    if !session.is_port()
                        && now.saturating_duration_since(session.opened) > REQUEST_TIMEOUT =>
                {
                    session.dead = true;
                    Vec::new()
                }
                _ => Vec::new(),
            };
            for line in lines {
                session.stream_line(line);
            }
        }
        // A client may leave in the very turn its `exec` started (it sent the request and
        // closed at once): its process hangs up with it all the same.
        for session in self.sessions.iter_mut().filter(|s| s.dead) {
            session.hang_up_exec();
        }
        self.sessions.retain(|s| !s.dead);
        self.mark_followed();
    }

    fn follows(&self, what: impl Fn(&Follow) -> bool) -> bool {
        self.sessions
            .iter()
            .any(|s| matches!(&s.state, State::Following(f) if what(f)))
    }

    fn mark_followed(&self) {
        use std::sync::atomic::Ordering;
        let events = self.follows(|f| *f == Follow::Events);
        let logs = self.follows(|f| matches!(f, Follow::Logs(_)));
        crate::event::FOLLOWED.store(events, Ordering::Relaxed);
        crate::journal::FOLLOWED.store(self.follows(|f| *f == Follow::Journal), Ordering::Relaxed);
        crate::supervisor::logs::FOLLOWED.store(logs, Ordering::Relaxed);
    }

    /// When the loop must wake for the control: a socket client's request deadline, the next
    /// look for the serial port.
    pub fn next_deadline(&self) -> Option<Instant> {
        let rescan = self.port_search_until.map(|_| Instant::now() + PORT_RESCAN);
        self.sessions
            .iter()
            .filter(|s| !s.is_port() && matches!(s.state, State::AwaitingRequest))
            .map(|s| s.opened + REQUEST_TIMEOUT)
            .chain(rescan)
            .min()
    }
}

/// How every request line a client sends begins (`berth_control::to_line` of an envelope).
const REQUEST_START: &str = r#"{"v":"#;

/// Tells a client over the limit why it is closed, if its socket takes the line now (it is
/// new, so its buffer is empty), and closes it.
fn refuse_client(stream: std::os::unix::net::UnixStream) {
    use std::io::Write;
    let _ = stream.set_nonblocking(true);
    let line = berth_control::to_line(&Response::refusal(
        ErrorCode::Busy,
        format!("busy: {MAX_SOCKET_CLIENTS} control clients are connected already"),
    ));
    let _ = (&stream).write(line.as_bytes());
}

/// A line read from the serial port, less what an earlier client left before a request.
///
/// The port is one byte stream for every client in turn. An `exec -i` client that went away
/// while init was not reading it (its stdin backed up) leaves its last lines in the port's
/// buffers, the last one possibly cut short, and the next client's request follows right
/// after such a cut line. The request is the line's first suffix, from a `{"v":`, that
/// parses as one; the line is taken as is when none does.
fn port_line(line: &str) -> &str {
    if parse_envelope(line).is_ok() {
        return line;
    }
    line.match_indices(REQUEST_START)
        .map(|(at, _)| at)
        .filter(|at| *at > 0)
        .filter_map(|at| line.get(at..))
        .find(|suffix| parse_envelope(suffix).is_ok())
        .unwrap_or(line)
}

/// An exec's input line read when no exec runs: left on the serial port by a client that
/// went away (see [`port_line`]); ignored, since an error for it would reach the next client
/// as the answer to its request.
fn is_leftover_exec_input(line: &str) -> bool {
    parse_envelope(line).is_err() && berth_control::parse_exec_input(line).is_ok()
}

/// One line from the client of an exec: stdin bytes, its end, a terminal resize.
fn exec_input(relay: &mut ExecRelay, line: &str) {
    let Ok(input) = berth_control::parse_exec_input(line) else {
        return;
    };
    if let Some(data) = input.stdin.as_deref() {
        if let Ok(bytes) = berth_control::decode_bytes(data) {
            relay.stdin_pending.extend(bytes);
        }
    }
    if input.stdin_close {
        if relay.tty {
            // A terminal has no end of file of its own: ^D is what a shell reads as one.
            relay.stdin_pending.push(0x04);
        } else {
            // Closed once what came before it is written.
            relay.stdin_closing = true;
        }
    }
    if let (Some(size), Some(master), true) = (input.resize, relay.stdout.as_ref(), relay.tty) {
        set_window_size(master.as_fd(), size);
    }
}

fn set_window_size(master: BorrowedFd<'_>, size: berth_control::TtySize) {
    use std::os::fd::AsRawFd;
    let winsize = nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which points at a live
    // value of that type for the duration of the call; the fd is a terminal master we own.
    let _ = unsafe { nix::libc::ioctl(master.as_raw_fd(), nix::libc::TIOCSWINSZ, &winsize) };
}

/// Parses and answers one request line.
fn answer_line(
    session: &mut Session,
    line: &str,
    supervisor: Option<&mut Supervisor>,
) -> Option<ShutdownRequest> {
    let envelope = match parse_envelope(line) {
        Ok(envelope) => envelope,
        Err(err) => {
            session.request_id = None;
            session.respond(Response::refusal(ErrorCode::Invalid, err));
            session.done();
            return None;
        }
    };
    session.request_id = envelope.id;
    let answer = answer(envelope.request, supervisor);
    if let Next::AfterStops(names) = answer.next {
        session.state = State::AwaitingStops {
            names,
            response: Box::new(answer.response),
        };
        return answer.shutdown;
    }
    session.respond(answer.response);
    session.state = match answer.next {
        Next::Done | Next::AfterStops(_) => {
            session.done();
            return answer.shutdown;
        }
        Next::Follow(follow) => State::Following(follow),
        Next::Journal { backlog, follow } => {
            for (container, line) in &backlog {
                session.stream_entry(container.as_deref(), line);
            }
            if !follow {
                session.done();
                return answer.shutdown;
            }
            // Lines emitted later in this very turn are queued for it already.
            crate::journal::FOLLOWED.store(true, std::sync::atomic::Ordering::Relaxed);
            State::Following(Follow::Journal)
        }
        Next::Exec(relay) => State::Exec(relay),
    };
    answer.shutdown
}

/// What follows a response.
enum Next {
    Done,
    Follow(Follow),
    /// `journal`: what init kept, then, with `follow`, the stream.
    Journal {
        backlog: Vec<crate::journal::Entry>,
        follow: bool,
    },
    Exec(ExecRelay),
    /// The response waits until these containers have stopped.
    AfterStops(Vec<String>),
}

struct Answer {
    response: Response,
    shutdown: Option<ShutdownRequest>,
    next: Next,
}

impl Answer {
    fn done(response: Response) -> Answer {
        Answer {
            response,
            shutdown: None,
            next: Next::Done,
        }
    }
}

/// The answer to `stop` or `restart` of `name`: given once its stop is over.
fn after_stops(result: Result<(), OperatorError>, name: String) -> Answer {
    match result {
        Ok(()) => Answer {
            response: Response::ok(),
            shutdown: None,
            next: Next::AfterStops(vec![name]),
        },
        Err(err) => Answer::done(refused(&err)),
    }
}

fn result(result: Result<(), OperatorError>) -> Response {
    match result {
        Ok(()) => Response::ok(),
        Err(err) => refused(&err),
    }
}

/// The reply to a refused operator request, with its code.
fn refused(err: &OperatorError) -> Response {
    Response::refusal(err.code(), err.to_string())
}

fn answer(request: Request, supervisor: Option<&mut Supervisor>) -> Answer {
    let shutdown = |action| Answer {
        response: Response::ok(),
        shutdown: Some((action, "berthctl")),
        next: Next::Done,
    };
    match request {
        Request::Reboot => return shutdown(ShutdownAction::Reboot),
        Request::Poweroff => return shutdown(ShutdownAction::PowerOff),
        Request::Dmesg { tail } => return Answer::done(Response::lines(host_info::dmesg(tail))),
        Request::Events { tail, follow } => {
            return Answer {
                response: Response::lines(crate::event::recent(tail)),
                shutdown: None,
                next: if follow {
                    Next::Follow(Follow::Events)
                } else {
                    Next::Done
                },
            }
        }
        Request::Journal { tail, follow } => {
            let containers = supervisor.as_deref().map(Supervisor::all_logs);
            let backlog = if tail == Some(0) {
                Vec::new()
            } else {
                crate::journal::backlog(
                    crate::event::recent(None),
                    containers.unwrap_or_default(),
                    tail,
                )
            };
            return Answer {
                response: Response::ok(),
                shutdown: None,
                next: Next::Journal { backlog, follow },
            };
        }
        _ => {}
    }
    let Some(supervisor) = supervisor else {
        return Answer::done(Response::error(
            "no containers: the manifest was not loaded",
        ));
    };
    let response = match request {
        Request::Ps => Response {
            watchdog: crate::watchdog::status(),
            ..Response::containers(supervisor.statuses())
        },
        Request::Inspect { name } => {
            let found: Vec<_> = supervisor
                .statuses()
                .into_iter()
                .filter(|c| c.name == name)
                .collect();
            if found.is_empty() {
                Response::refusal(ErrorCode::NotFound, format!("no container `{name}`"))
            } else {
                Response::containers(found)
            }
        }
        Request::Logs {
            name,
            tail,
            follow,
            since_secs,
        } => {
            return match supervisor.logs(&name, tail, since_secs.map(Duration::from_secs)) {
                Ok(lines) => Answer {
                    response: Response::lines(lines),
                    shutdown: None,
                    next: if follow {
                        Next::Follow(Follow::Logs(name))
                    } else {
                        Next::Done
                    },
                },
                Err(err) => Answer::done(refused(&err)),
            }
        }
        Request::Stats => Response {
            stats: Some(
                supervisor
                    .statuses()
                    .into_iter()
                    .filter(|c| c.state == "running")
                    .map(|c| host_info::cgroup_stats(&c.name))
                    .collect(),
            ),
            event_counts: Some(crate::event::counts()),
            ..Response::ok()
        },
        Request::Top { name } => match supervisor.statuses().iter().find(|c| c.name == name) {
            Some(c) if c.state == "running" => Response::lines(host_info::top(&name)),
            Some(_) => Response::refusal(
                ErrorCode::Conflict,
                format!("container `{name}` is not running"),
            ),
            None => Response::refusal(ErrorCode::NotFound, format!("no container `{name}`")),
        },
        Request::Start { name } => result(supervisor.operator_start(&name)),
        Request::Stop { name } => return after_stops(supervisor.operator_stop(&name), name),
        Request::Restart { name } => return after_stops(supervisor.operator_restart(&name), name),
        Request::Apply { manifest, file } => {
            let origin = file.unwrap_or_else(|| "apply".to_string());
            return match supervisor.apply(&manifest, Path::new(&origin)) {
                Ok(changes) => {
                    let stopping = changes
                        .changed
                        .iter()
                        .chain(&changes.removed)
                        .cloned()
                        .collect();
                    Answer {
                        response: Response {
                            changes: Some(changes),
                            ..Response::ok()
                        },
                        shutdown: None,
                        next: Next::AfterStops(stopping),
                    }
                }
                Err(err) => Answer::done(Response::refusal(ErrorCode::Invalid, err)),
            };
        }
        Request::Images => match supervisor.images() {
            Ok(images) => Response {
                images: Some(images),
                ..Response::ok()
            },
            Err(err) => Response::error(err),
        },
        Request::ImagePrune => match supervisor.prune_images() {
            Ok(report) => Response {
                prune: Some(report),
                ..Response::ok()
            },
            Err(err) => Response::error(err),
        },
        Request::Version | Request::Rollback => {
            let rollback = request == Request::Rollback;
            return relayed(crate::update::start_relayed(rollback));
        }
        Request::Update { pull: None } => {
            return relayed(crate::update::start(supervisor.update_settings(), None))
        }
        Request::Update {
            pull: Some(reference),
        } => {
            let source = crate::update::check_reference(&reference)
                .and_then(|()| {
                    supervisor
                        .pull_options(&reference)
                        .map_err(crate::update::UpdateError::PullOptions)
                })
                .map(|options| crate::update::Pull { reference, options });
            return relayed(
                source.and_then(|pull| {
                    crate::update::start(supervisor.update_settings(), Some(pull))
                }),
            );
        }
        Request::Exec {
            name,
            args,
            interactive,
            tty,
            tty_size,
            user,
            env,
            workdir,
        } => {
            let io = match exec_io(interactive, tty, tty_size) {
                Ok(io) => io,
                Err(err) => return Answer::done(Response::error(err)),
            };
            let (process_io, relay_io) = io;
            return match supervisor.exec(&name, args, user, env, workdir, process_io) {
                Ok(pid) => Answer {
                    response: Response {
                        pid: Some(pid.as_raw()),
                        ..Response::ok()
                    },
                    shutdown: None,
                    next: Next::Exec(relay_io.into_relay(pid, tty)),
                },
                Err(err) => Answer::done(refused(&err)),
            };
        }
        Request::Events { .. }
        | Request::Journal { .. }
        | Request::Dmesg { .. }
        | Request::Reboot
        | Request::Poweroff => Response::ok(),
    };
    Answer::done(response)
}

/// The answer for a process init started to serve a request (`update`, `version`,
/// `rollback`): its PID, then its output relayed as `exec`'s.
fn relayed(started: Result<(Pid, ExecIo, RelayIo), crate::update::UpdateError>) -> Answer {
    match started {
        Ok((pid, process_io, relay_io)) => {
            // The process holds its ends; ours close so that its exit ends the relay.
            drop(process_io);
            Answer {
                response: Response {
                    pid: Some(pid.as_raw()),
                    ..Response::ok()
                },
                shutdown: None,
                next: Next::Exec(relay_io.into_relay(pid, false)),
            }
        }
        Err(err) => Answer::done(Response::refusal(err.code(), err.to_string())),
    }
}

/// init's ends of an exec'd process' stdio.
pub(crate) struct RelayIo {
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
}

impl RelayIo {
    fn into_relay(self, pid: Pid, tty: bool) -> ExecRelay {
        for fd in [
            Some(&self.stdout),
            self.stdin.as_ref(),
            self.stderr.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            session::set_nonblocking(fd.as_fd());
        }
        ExecRelay {
            pid,
            stdin: self.stdin,
            stdin_pending: Vec::new(),
            stdin_closing: false,
            stdout: Some(self.stdout),
            stderr: self.stderr,
            tty,
        }
    }
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("create a pipe: {e}"))
}

fn set_cloexec(fd: &OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
}

/// The process' stdio and init's ends of it: a terminal, or pipes (stdin from /dev/null
/// unless the client relays its own).
pub(crate) fn exec_io(
    interactive: bool,
    tty: bool,
    size: Option<berth_control::TtySize>,
) -> Result<(ExecIo, RelayIo), String> {
    if tty {
        let winsize = size.map(|s| nix::pty::Winsize {
            ws_row: s.rows,
            ws_col: s.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        });
        let pty = nix::pty::openpty(winsize.as_ref(), None)
            .map_err(|e| format!("open a pseudo-terminal: {e}"))?;
        set_cloexec(&pty.master);
        set_cloexec(&pty.slave);
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("dup the terminal: {e}"));
        let process = ExecIo {
            stdin: dup(&pty.slave)?,
            stdout: dup(&pty.slave)?,
            stderr: pty.slave,
            tty: true,
        };
        let relay = RelayIo {
            stdin: interactive.then(|| dup(&pty.master)).transpose()?,
            stdout: pty.master,
            stderr: None,
        };
        return Ok((process, relay));
    }
    let (stdout_read, stdout_write) = cloexec_pipe()?;
    let (stderr_read, stderr_write) = cloexec_pipe()?;
    let (stdin, stdin_relay) = if interactive {
        let (read, write) = cloexec_pipe()?;
        (read, Some(write))
    } else {
        let null = std::fs::File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?;
        (OwnedFd::from(null), None)
    };
    Ok((
        ExecIo {
            stdin,
            stdout: stdout_write,
            stderr: stderr_write,
            tty: false,
        },
        RelayIo {
            stdin: stdin_relay,
            stdout: stdout_read,
            stderr: Some(stderr_read),
        },
    ))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::panic, reason = "tests")]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use berth_control::{encode_bytes, to_line, ExecInput, VERSION};

    use super::session::STDIN_HIGH_WATER;
    use super::*;

    /// A real process leading its own process group, as an exec'd one does (a hang-up
    /// signals its group, which must not be some other process' on the build machine).
    fn exec_process() -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap()
    }

    /// A control with one socket session relaying an exec whose stdin is a pipe; returns it,
    /// the client's end of the connection (non-blocking), the process' end of the pipe and
    /// the process.
    fn exec_session() -> (Control, UnixStream, std::fs::File, std::process::Child) {
        let child = exec_process();
        let (ours, client) = UnixStream::pair().unwrap();
        client.set_nonblocking(true).unwrap();
        let (stdin_read, stdin_write) = cloexec_pipe().unwrap();
        set_nonblocking(stdin_read.as_fd());
        set_nonblocking(stdin_write.as_fd());
        let mut session = Session::new(Conn::Unix(ours), true);
        session.state = State::Exec(ExecRelay {
            pid: Pid::from_raw(i32::try_from(child.id()).unwrap()),
            stdin: Some(stdin_write),
            stdin_pending: Vec::new(),
            stdin_closing: false,
            stdout: None,
            stderr: None,
            tty: false,
        });
        let control = Control {
            listener: None,
            sessions: vec![session],
            port_search_until: None,
        };
        (control, client, std::fs::File::from(stdin_read), child)
    }

    /// Writes 16 KiB stdin lines until the connection takes no more; returns the bytes sent.
    fn send_until_full(client: &mut UnixStream, line: &[u8]) -> usize {
        let mut sent = 0;
        loop {
            match client.write(line) {
                Ok(n) => sent += n,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return sent,
                Err(err) => panic!("{err}"),
            }
        }
    }

    fn session_flags(control: &Control) -> PollFlags {
        control
            .poll_fds()
            .into_iter()
            .find(|(slot, _, _)| *slot == Slot::Session(0))
            .map(|(_, _, flags)| flags)
            .unwrap()
    }

    fn pending(control: &Control) -> usize {
        match &control.sessions.first().unwrap().state {
            State::Exec(relay) => relay.stdin_pending.len(),
            _ => panic!("not an exec"),
        }
    }

    #[test]
    fn a_backed_up_stdin_stops_reading_the_client_until_the_process_drains_it() {
        let (mut control, mut client, mut process, mut child) = exec_session();
        let line = to_line(&ExecInput {
            v: VERSION,
            stdin: Some(encode_bytes(&[0u8; 16 << 10])),
            ..ExecInput::default()
        });
        // The process reads nothing: turn after turn, init fills its pipe, then its queue,
        // then stops asking for the client's input.
        let mut turns = 0;
        while session_flags(&control).contains(PollFlags::POLLIN) {
            send_until_full(&mut client, line.as_bytes());
            control.on_ready(&[Slot::Session(0)], None);
            turns += 1;
            assert!(
                turns < 100,
                "never backed up: {} bytes queued",
                pending(&control)
            );
        }
        let queued = pending(&control);
        assert!(queued > STDIN_HIGH_WATER, "{queued}");
        assert!(
            queued <= STDIN_HIGH_WATER + (64 << 10),
            "one turn's read at most: {queued}"
        );
        // The client keeps trying; its bytes wait in the connection, not in init.
        let waiting = send_until_full(&mut client, line.as_bytes());
        for _ in 0..10 {
            control.on_ready(&[Slot::Session(0)], None);
        }
        assert_eq!(pending(&control), queued, "nothing read while backed up");
        assert!(
            session_flags(&control).is_empty(),
            "{waiting} bytes sent meanwhile"
        );

        // The process reads its stdin: the queue goes into the pipe, and reading resumes.
        let mut buf = vec![0u8; 1 << 20];
        let mut drained = 0;
        while !session_flags(&control).contains(PollFlags::POLLIN) {
            drained += process.read(&mut buf).unwrap_or(0);
            control.on_ready(&[Slot::Stdin(0)], None);
        }
        assert!(pending(&control) <= STDIN_HIGH_WATER);
        assert!(drained > 0);
        // The next turn reads the client again, which makes room for it to send more.
        control.on_ready(&[Slot::Session(0)], None);
        assert!(send_until_full(&mut client, line.as_bytes()) > 0);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_client_that_hangs_up_while_backed_up_is_dropped() {
        let (mut control, mut client, _process, mut child) = exec_session();
        let line = to_line(&ExecInput {
            v: VERSION,
            stdin: Some(encode_bytes(&[7u8; 16 << 10])),
            ..ExecInput::default()
        });
        while session_flags(&control).contains(PollFlags::POLLIN) {
            send_until_full(&mut client, line.as_bytes());
            control.on_ready(&[Slot::Session(0)], None);
        }
        control.on_ready(&[Slot::Session(0)], None);
        assert!(!control.sessions.first().unwrap().dead, "still there");
        drop(client);
        control.on_ready(&[Slot::Session(0)], None);
        control.after_turn(None);
        assert!(control.sessions.is_empty(), "dropped with its relay");
        // ... and its process hung up, as a closed terminal would.
        assert_hung_up(&mut child);
    }

    #[test]
    fn an_exec_whose_client_left_in_the_turn_it_started_hangs_up() {
        let (mut control, client, _process, mut child) = exec_session();
        drop(client);
        // The client's end of file was read before its request was answered: the session is
        // marked gone while its exec has just started.
        if let Some(session) = control.sessions.first_mut() {
            session.dead = true;
        }
        control.after_turn(None);
        assert!(control.sessions.is_empty());
        assert_hung_up(&mut child);
    }

    /// The exec'd process ended by SIGHUP.
    fn assert_hung_up(child: &mut std::process::Child) {
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(nix::libc::SIGHUP),
            "{status}"
        );
    }

    #[test]
    fn a_request_after_what_an_earlier_port_client_left_is_found() {
        let request = r#"{"v":1,"id":7,"cmd":"ps"}"#;
        assert_eq!(port_line(request), request);
        let cut = format!(r#"{{"v":1,"stdin":"AAAAAAAA{request}"#);
        assert_eq!(port_line(&cut), request);
        let tail = format!(r#"AAAA"}}{request}"#);
        assert_eq!(port_line(&tail), request);
        assert_eq!(port_line("not json"), "not json");

        assert!(is_leftover_exec_input(r#"{"v":1,"stdin":"AAAA"}"#));
        assert!(is_leftover_exec_input(r#"{"v":1,"stdin_close":true}"#));
        assert!(!is_leftover_exec_input(request));
        assert!(!is_leftover_exec_input("not json"));
    }
}
