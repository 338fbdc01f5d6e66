//! berth's own daemons (netd, and berth-apid when the manifest has `[api]`), started by init
//! and restarted whenever they exit, with the same backoff as containers. They run in init's
//! cgroup, under its memory reserve.

use std::path::PathBuf;
use std::time::Instant;

use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::event::Event;
use crate::supervisor::policy::{self, Backoff};

/// Where `berth build` puts netd in the image.
pub const NETD: &str = "/usr/lib/berth/netd";
/// Where `berth build` puts berth-apid, in images whose manifest has `[api]`.
pub const APID: &str = "/usr/lib/berth/apid";
/// berth-apid's argument that makes it the log shipper (`berth_apid::SHIP_LOGS`).
pub const SHIP_LOGS: &str = "ship-logs";

#[derive(Debug)]
pub struct Service {
    name: &'static str,
    path: PathBuf,
    args: Vec<String>,
    pid: Option<Pid>,
    started: Instant,
    backoff: Backoff,
    restart_at: Option<Instant>,
    restarts: u32,
}

impl Service {
    pub fn new(name: &'static str, path: &str, args: Vec<String>) -> Service {
        Service {
            name,
            path: PathBuf::from(path),
            args,
            pid: None,
            started: Instant::now(),
            backoff: Backoff::default(),
            restart_at: None,
            restarts: 0,
        }
    }

    /// Sends `signal` to the running service, if it runs.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid {
            if let Err(err) = nix::sys::signal::kill(pid, signal) {
                log::warn!("signal {signal} to {}: {err}", self.name);
            }
        }
    }

    pub fn start(&mut self, now: Instant) {
        self.restart_at = None;
        if !self.path.exists() {
            log::warn!(
                "{} is not in this image ({}); not started",
                self.name,
                self.path.display()
            );
            return;
        }
        let mut command = std::process::Command::new(&self.path);
        command.args(&self.args);
        start_unblocked(&mut command);
        match command.spawn() {
            Ok(child) => {
                let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
                self.pid = Some(pid);
                self.started = now;
                Event::new("service-started")
                    .field("service", self.name)
                    .field("pid", pid)
                    .field("restarts", self.restarts)
                    .emit();
            }
            Err(err) => {
                Event::new("service-failed")
                    .field("service", self.name)
                    .field("error", err)
                    .emit();
                self.schedule_restart(now, now);
            }
        }
    }

    fn schedule_restart(&mut self, ran_since: Instant, now: Instant) -> std::time::Duration {
        let delay = self
            .backoff
            .delay_after(now.saturating_duration_since(ran_since));
        self.restart_at = Some(now + delay);
        delay
    }

    /// Handles a reaped child; false when it was not this service.
    pub fn on_exit(&mut self, pid: Pid, status: WaitStatus, now: Instant) -> bool {
        if self.pid != Some(pid) {
            return false;
        }
        self.pid = None;
        let delay = self.schedule_restart(self.started, now);
        self.restarts += 1;
        Event::new("service-exited")
            .field("service", self.name)
            .field("code", policy::exit_code(status).unwrap_or(-1))
            .field("next_in", format!("{}ms", delay.as_millis()))
            .emit();
        true
    }

    pub fn tick(&mut self, now: Instant) {
        if self.restart_at.is_some_and(|at| now >= at) {
            self.start(now);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.restart_at
    }
}

/// Makes `command`'s process start with no signal blocked, in a session of its own. init
/// blocks the signals its signalfd reads; a child inherits that mask through fork and exec
/// (measured: netd ran with init's mask), and a netd with SIGTERM and SIGHUP blocked would
/// never release its leases or reload. The session keeps it out of PID 1's process group:
/// `kill(0, sig)` or `kill(-pgid, sig)` from any other process in that group (a container's,
/// before containers got sessions of their own) reached netd and berth-pull, and they must
/// not reach init through netd's group either.
pub fn start_unblocked(command: &mut std::process::Command) {
    // SAFETY: runs in the child between fork and exec, calling only the async-signal-safe
    // sigprocmask(2) and setsid(2); it touches no memory of the parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, || {
            nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&nix::sys::signal::SigSet::empty()),
                None,
            )
            .map_err(std::io::Error::from)?;
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
}
