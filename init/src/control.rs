//! The control socket: `berthctl` (and, later, a rig's serial port) asks init about and for
//! its containers with the versioned JSON lines of `berth-control`. Root only: the peer's
//! credentials are checked on every connection, and the socket itself is mode 0600.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use berth_control::{parse_request, to_line, Request, Response, SOCKET};
use nix::sys::socket::{getsockopt, sockopt};

use crate::shutdown::ShutdownAction;
use crate::supervisor::Supervisor;

/// A client that has not sent its request by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request line read.
const MAX_REQUEST: u64 = 64 * 1024;

#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
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
            Ok(listener) => Some(ControlSocket { listener }),
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
        &self,
        mut supervisor: Option<&mut Supervisor>,
    ) -> Option<(ShutdownAction, &'static str)> {
        let mut shutdown = None;
        while let Ok((stream, _)) = self.listener.accept() {
            if let Some(request) = serve_one(stream, supervisor.as_deref_mut()) {
                shutdown.get_or_insert(request);
            }
        }
        shutdown
    }
}

fn serve_one(
    stream: UnixStream,
    supervisor: Option<&mut Supervisor>,
) -> Option<(ShutdownAction, &'static str)> {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let mut writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(_) => return None,
    };
    let root = getsockopt(&stream, sockopt::PeerCredentials).is_ok_and(|c| c.uid() == 0);
    if !root {
        let _ = writer
            .write_all(to_line(&Response::error("the control socket is for root only")).as_bytes());
        return None;
    }
    let mut line = String::new();
    let read = BufReader::new(std::io::Read::take(stream, MAX_REQUEST)).read_line(&mut line);
    let (response, shutdown) = match read {
        Ok(_) => match parse_request(&line) {
            Ok(request) => answer(request, supervisor),
            Err(err) => (Response::error(err), None),
        },
        Err(err) => (
            Response::error(format!("cannot read the request: {err}")),
            None,
        ),
    };
    let _ = writer.write_all(to_line(&response).as_bytes());
    shutdown
}

fn answer(
    request: Request,
    supervisor: Option<&mut Supervisor>,
) -> (Response, Option<(ShutdownAction, &'static str)>) {
    let done = |result: Result<(), String>| match result {
        Ok(()) => Response::ok(),
        Err(err) => Response::error(err),
    };
    match request {
        Request::Reboot => (Response::ok(), Some((ShutdownAction::Reboot, "berthctl"))),
        Request::Poweroff => (Response::ok(), Some((ShutdownAction::PowerOff, "berthctl"))),
        Request::Events { tail } => (Response::lines(crate::event::recent(tail)), None),
        request => {
            let Some(supervisor) = supervisor else {
                return (
                    Response::error("no containers: the manifest was not loaded"),
                    None,
                );
            };
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
                Request::Logs { name, tail } => match supervisor.logs(&name, tail) {
                    Ok(lines) => Response::lines(lines),
                    Err(err) => Response::error(err),
                },
                Request::Start { name } => done(supervisor.operator_start(&name)),
                Request::Stop { name } => done(supervisor.operator_stop(&name)),
                Request::Restart { name } => done(supervisor.operator_restart(&name)),
                Request::Events { .. } | Request::Reboot | Request::Poweroff => Response::ok(),
            };
            (response, None)
        }
    }
}
