//! The control socket: `berthctl` (and, later, a rig's serial port) asks init about and for
//! its containers with the versioned JSON lines of `berth-control`. Root only: the peer's
//! credentials are checked on every connection, and the socket itself is mode 0600.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use berth_control::{
    parse_request, to_line, ContainerStats, Request, Response, StreamLine, SOCKET, VERSION,
};
use nix::sys::socket::{getsockopt, sockopt};

use crate::shutdown::ShutdownAction;
use crate::supervisor::Supervisor;

/// A client that has not sent its request by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request line read.
const MAX_REQUEST: u64 = 64 * 1024;

/// What a `-f` client follows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Follow {
    Events,
    Logs(String),
}

/// A client that keeps its connection open for new lines.
#[derive(Debug)]
struct Follower {
    stream: UnixStream,
    follow: Follow,
}

#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    followers: Vec<Follower>,
}

impl ControlSocket {
    pub fn bind() -> Option<ControlSocket> {
        let _ = std::fs::create_dir_all("/run/berth");
        let _ = std::fs::remove_file(SOCKET);
        let bound = UnixListener::bind(SOCKET).and_then(|listener| {
            std::fs::set_permissions(SOCKET, std::fs::Permissions::from_mode(0o600))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        });
        match bound {
            Ok(listener) => Some(ControlSocket {
                listener,
                followers: Vec::new(),
            }),
            Err(err) => {
                log::error!("no control socket at {SOCKET}: {err}");
                None
            }
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Serves every waiting connection; a shutdown the operator asked for comes back.
    pub fn serve(
        &mut self,
        mut supervisor: Option<&mut Supervisor>,
    ) -> Option<(ShutdownAction, &'static str)> {
        let mut shutdown = None;
        while let Ok((stream, _)) = self.listener.accept() {
            let (asked, follower) = serve_one(stream, supervisor.as_deref_mut());
            if let Some(request) = asked {
                shutdown.get_or_insert(request);
            }
            self.followers.extend(follower);
        }
        self.mark_followed();
        shutdown
    }

    fn mark_followed(&self) {
        use std::sync::atomic::Ordering;
        let events = self.followers.iter().any(|f| f.follow == Follow::Events);
        let logs = self
            .followers
            .iter()
            .any(|f| matches!(f.follow, Follow::Logs(_)));
        crate::event::FOLLOWED.store(events, Ordering::Relaxed);
        crate::supervisor::logs::FOLLOWED.store(logs, Ordering::Relaxed);
    }

    /// Sends followers the lines that came since the last turn. A follower that has gone,
    /// or reads too slowly to keep its socket buffer from filling, is dropped.
    pub fn flush_followers(&mut self) {
        if self.followers.is_empty() {
            return;
        }
        let events = crate::event::take_new();
        let logs = crate::supervisor::logs::take_new();
        self.followers.retain_mut(|follower| {
            let lines: Vec<&String> = match &follower.follow {
                Follow::Events => events.iter().collect(),
                Follow::Logs(name) => logs
                    .iter()
                    .filter(|(container, _)| container == name)
                    .map(|(_, line)| line)
                    .collect(),
            };
            lines.into_iter().all(|line| {
                let message = StreamLine {
                    v: VERSION,
                    line: line.clone(),
                };
                follower
                    .stream
                    .write_all(to_line(&message).as_bytes())
                    .is_ok()
            })
        });
        self.mark_followed();
    }
}

type Served = (Option<(ShutdownAction, &'static str)>, Option<Follower>);

fn serve_one(stream: UnixStream, supervisor: Option<&mut Supervisor>) -> Served {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(_) => return (None, None),
    };
    let root = getsockopt(&stream, sockopt::PeerCredentials).is_ok_and(|c| c.uid() == 0);
    if !root {
        let refusal = Response::error("the control socket is for root only");
        let _ = writer.write_all(to_line(&refusal).as_bytes());
        return (None, None);
    }
    let mut line = String::new();
    let read = BufReader::new(std::io::Read::take(stream, MAX_REQUEST)).read_line(&mut line);
    let (response, shutdown, follow) = match read {
        Ok(_) => match parse_request(&line) {
            Ok(request) => answer(request, supervisor),
            Err(err) => (Response::error(err), None, None),
        },
        Err(err) => (
            Response::error(format!("cannot read the request: {err}")),
            None,
            None,
        ),
    };
    if writer.write_all(to_line(&response).as_bytes()).is_err() {
        return (shutdown, None);
    }
    // Followed from now on: writes must never block init.
    let follower = follow
        .filter(|_| response.ok && writer.set_nonblocking(true).is_ok())
        .map(|follow| Follower {
            stream: writer,
            follow,
        });
    (shutdown, follower)
}

/// A container's cgroup, as the supervisor makes it.
fn cgroup_of(name: &str) -> std::path::PathBuf {
    std::path::Path::new(crate::supervisor::CGROUP_PARENT).join(name)
}

fn cgroup_stats(name: &str) -> ContainerStats {
    let dir = cgroup_of(name);
    let number = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    };
    let cpu_usec = std::fs::read_to_string(dir.join("cpu.stat"))
        .ok()
        .and_then(|stat| {
            stat.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok())
        });
    ContainerStats {
        name: name.to_string(),
        memory_bytes: number("memory.current"),
        cpu_usec,
        pids: number("pids.current"),
    }
}

/// `PID COMMAND` of each process in the container's cgroup.
fn top(name: &str) -> Vec<String> {
    let procs = std::fs::read_to_string(cgroup_of(name).join("cgroup.procs")).unwrap_or_default();
    let mut lines = vec!["PID COMMAND".to_string()];
    for pid in procs.lines().filter(|l| !l.is_empty()) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let command = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        lines.push(format!("{pid} {command}"));
    }
    lines
}

/// The kernel log's records as `[seconds] message`, the last `tail` of them.
fn dmesg(tail: Option<usize>) -> Vec<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut kmsg) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    let mut record = vec![0u8; 8192];
    // Each read returns one record; EAGAIN ends the buffer, EPIPE means one was overwritten.
    loop {
        match kmsg.read(&mut record) {
            Ok(0) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(record.get(..n).unwrap_or_default());
                let (header, message) = text.split_once(';').unwrap_or(("", &text));
                let micros: u64 = header
                    .split(',')
                    .nth(2)
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                let message = message.lines().next().unwrap_or_default();
                lines.push(format!(
                    "[{:>5}.{:06}] {message}",
                    micros / 1_000_000,
                    micros % 1_000_000
                ));
            }
            Err(err) if err.raw_os_error() == Some(nix::libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    let skip = tail.map_or(0, |t| lines.len().saturating_sub(t));
    lines.split_off(skip.min(lines.len()))
}

type Answer = (
    Response,
    Option<(ShutdownAction, &'static str)>,
    Option<Follow>,
);

fn answer(request: Request, supervisor: Option<&mut Supervisor>) -> Answer {
    let done = |result: Result<(), String>| match result {
        Ok(()) => Response::ok(),
        Err(err) => Response::error(err),
    };
    match request {
        Request::Reboot => (
            Response::ok(),
            Some((ShutdownAction::Reboot, "berthctl")),
            None,
        ),
        Request::Poweroff => (
            Response::ok(),
            Some((ShutdownAction::PowerOff, "berthctl")),
            None,
        ),
        Request::Dmesg { tail } => (Response::lines(dmesg(tail)), None, None),
        Request::Events { tail, follow } => (
            Response::lines(crate::event::recent(tail)),
            None,
            follow.then_some(Follow::Events),
        ),
        request => {
            let Some(supervisor) = supervisor else {
                return (
                    Response::error("no containers: the manifest was not loaded"),
                    None,
                    None,
                );
            };
            let mut follow = None;
            let response = match request {
                Request::Ps => Response::containers(supervisor.statuses()),
                Request::Inspect { name } => {
                    let found: Vec<_> = supervisor
                        .statuses()
                        .into_iter()
                        .filter(|c| c.name == name)
                        .collect();
                    if found.is_empty() {
                        Response::error(format!("no container `{name}`"))
                    } else {
                        Response::containers(found)
                    }
                }
                Request::Logs {
                    name,
                    tail,
                    follow: following,
                } => match supervisor.logs(&name, tail) {
                    Ok(lines) => {
                        follow = following.then_some(Follow::Logs(name));
                        Response::lines(lines)
                    }
                    Err(err) => Response::error(err),
                },
                Request::Stats => Response {
                    stats: Some(
                        supervisor
                            .statuses()
                            .into_iter()
                            .filter(|c| c.state == "running")
                            .map(|c| cgroup_stats(&c.name))
                            .collect(),
                    ),
                    ..Response::ok()
                },
                Request::Top { name } => {
                    match supervisor.statuses().iter().find(|c| c.name == name) {
                        Some(c) if c.state == "running" => Response::lines(top(&name)),
                        Some(_) => Response::error(format!("container `{name}` is not running")),
                        None => Response::error(format!("no container `{name}`")),
                    }
                }
                Request::Start { name } => done(supervisor.operator_start(&name)),
                Request::Stop { name } => done(supervisor.operator_stop(&name)),
                Request::Restart { name } => done(supervisor.operator_restart(&name)),
                Request::Events { .. }
                | Request::Dmesg { .. }
                | Request::Reboot
                | Request::Poweroff => Response::ok(),
            };
            (response, None, follow)
        }
    }
}
