//! The supervisor: one state machine per container, started in dependency order and kept
//! running by its restart policy.
//!
//! ```text
//! created ──deps met──▶ running ──exit──▶ backing-off ──delay──▶ running ...
//!    │                     │                                   
//!    └─dependency failed──▶ stopped ◀──policy says no / shutdown
//! ```
//! Every transition is one event line. Nothing here blocks on a container: restarts wait
//! on timers in the event loop, so a crash loop never delays the others.

pub mod logs;
mod network;
pub mod policy;
mod spec;

pub use spec::CGROUP_PARENT;

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_manifest::{
    Condition, Container, ContainerName, Manifest, RestartPolicy, Userns, NETWORK_ONLINE,
};
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::event::Event;
use crate::images::ImageCache;
use crate::reap;
pub use berth_control::ContainerStatus;
use logs::{LogFile, LogStream};
use network::ContainerNetworks;
use policy::Backoff;

/// Exit code reported for a container whose start failed (as a shell's "cannot run").
const START_FAILED_CODE: i32 = 127;
/// netd creates this file once every required link is configured.
pub const NETWORK_ONLINE_MARKER: &str = "/run/berth/network-online";
/// How often containers waiting for the network look for it.
const NETWORK_POLL: Duration = Duration::from_millis(200);
/// How often the shutdown loop looks for stopped containers.
const STOP_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Declared, waiting for its dependencies.
    Created,
    Running {
        pid: Pid,
        since: Instant,
    },
    BackingOff {
        until: Instant,
    },
    /// Will not run again this boot.
    Stopped,
}

#[derive(Debug)]
struct Supervised {
    name: ContainerName,
    config: Container,
    state: State,
    restarts: u32,
    backoff: Backoff,
    ever_started: bool,
    last_exit: Option<i32>,
    stopped_by_operator: bool,
    waiting_reported: bool,
    /// `oom_kill` in the cgroup's memory.events when last looked at.
    oom_kills: u64,
    streams: Vec<LogStream>,
    log_file: LogFile,
}

impl Supervised {
    fn name(&self) -> &str {
        self.name.as_str()
    }
}

/// A log stream the event loop should poll: (container index, stream index).
pub type StreamId = (usize, usize);

#[derive(Debug)]
pub struct Supervisor {
    /// In start order (dependencies first).
    containers: Vec<Supervised>,
    images: ImageCache,
    shutting_down: bool,
    /// Host ids for `userns = true` containers.
    userns: Userns,
    networks: ContainerNetworks,
}

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl Supervisor {
    /// Takes the manifest's containers; those with a volume under one of `failed_mounts` are
    /// held back (their data would land on the wrong filesystem).
    pub fn new(manifest: &Manifest, failed_mounts: &[PathBuf], images: ImageCache) -> Supervisor {
        let containers: Vec<Supervised> = manifest
            .start_order()
            .into_iter()
            .filter_map(|name| {
                let config = manifest.containers.get(name)?.clone();
                let backoff = config
                    .restart_delay
                    .map_or_else(Backoff::default, |d| Backoff::starting_at(d.0));
                Event::new("created")
                    .field("container", name.as_str())
                    .field("image", config.image.get_ref())
                    .field("restart", config.restart)
                    .emit();
                Some(Supervised {
                    name: name.clone(),
                    log_file: LogFile::new(name.as_str()),
                    config,
                    state: State::Created,
                    restarts: 0,
                    backoff,
                    ever_started: false,
                    last_exit: None,
                    stopped_by_operator: false,
                    waiting_reported: false,
                    oom_kills: 0,
                    streams: Vec::new(),
                })
            })
            .collect();
        let mut supervisor = Supervisor {
            containers,
            images,
            shutting_down: false,
            userns: manifest.userns,
            networks: ContainerNetworks::new(manifest),
        };
        for index in 0..supervisor.containers.len() {
            let kept_stopped = supervisor.containers.get_mut(index).is_some_and(|c| {
                let stopped = c.config.restart == RestartPolicy::UnlessStopped
                    && policy::was_stopped_by_operator(c.name());
                c.stopped_by_operator = stopped;
                stopped
            });
            if kept_stopped {
                supervisor.stop_for_good(index, "operator", None);
                continue;
            }
            let blocked_by = supervisor
                .containers
                .get(index)
                .and_then(|c| spec::volume_under(&c.config, failed_mounts));
            if let Some(target) = blocked_by {
                supervisor.stop_for_good(
                    index,
                    "mount-failed",
                    Some(&target.display().to_string()),
                );
            }
        }
        supervisor
    }

    /// Starts every container whose time has come: dependencies met, or backoff elapsed.
    pub fn tick(&mut self, now: Instant) {
        if self.shutting_down {
            return;
        }
        for index in 0..self.containers.len() {
            let Some(state) = self.containers.get(index).map(|c| c.state) else {
                continue;
            };
            match state {
                State::Created => match self.dependencies(index) {
                    Dependencies::Met => self.start(index, now),
                    Dependencies::Pending(on) => self.report_waiting(index, &on),
                    Dependencies::Failed(on) => {
                        self.stop_for_good(index, "dependency-failed", Some(&on))
                    }
                },
                State::BackingOff { until } if now >= until => self.start(index, now),
                _ => {}
            }
        }
    }

    fn dependencies(&self, index: usize) -> Dependencies {
        let Some(container) = self.containers.get(index) else {
            return Dependencies::Met;
        };
        for (dependency, condition) in &container.config.depends_on.0 {
            if dependency.get_ref() == NETWORK_ONLINE {
                if !Path::new(NETWORK_ONLINE_MARKER).exists() {
                    return Dependencies::Pending(NETWORK_ONLINE.to_string());
                }
                continue;
            }
            let Some(dep) = self
                .containers
                .iter()
                .find(|c| c.name() == dependency.get_ref())
            else {
                continue;
            };
            let met = match condition {
                Condition::ServiceStarted => dep.ever_started,
                Condition::ServiceCompletedSuccessfully => {
                    dep.last_exit == Some(0) && !matches!(dep.state, State::Running { .. })
                }
            };
            if met {
                continue;
            }
            let on = format!("{}:{}", dep.name(), condition_name(*condition));
            return if dep.state == State::Stopped {
                Dependencies::Failed(on)
            } else {
                Dependencies::Pending(on)
            };
        }
        Dependencies::Met
    }

    fn report_waiting(&mut self, index: usize, on: &str) {
        if let Some(c) = self.containers.get_mut(index) {
            if !c.waiting_reported {
                c.waiting_reported = true;
                Event::new("waiting")
                    .field("container", c.name())
                    .field("for", on)
                    .emit();
            }
        }
    }

    fn start(&mut self, index: usize, now: Instant) {
        let Some(c) = self.containers.get_mut(index) else {
            return;
        };
        if matches!(c.state, State::BackingOff { .. }) {
            c.restarts += 1;
        }
        Event::new("starting")
            .field("container", c.name())
            .field("restarts", c.restarts)
            .emit();
        let reference = c.config.image.get_ref().clone();
        let userns = self.userns;
        let running = running_pids(&self.containers);
        let Some(c) = self.containers.get_mut(index) else {
            return;
        };
        let networks = &mut self.networks;
        let result = self.images.prepare(&reference).and_then(|image| {
            let (network, mounts) = networks.prepare(c.name.as_str(), &c.config, |name| {
                running.iter().find(|(n, _)| n == name).map(|(_, pid)| *pid)
            })?;
            spawn_container(c, &image, &userns, network, mounts)
        });
        match result {
            Ok(pid) => {
                // The run is timed from the exec, not from the image preparation before it.
                c.state = State::Running {
                    pid,
                    since: Instant::now(),
                };
                c.ever_started = true;
                let mut event = Event::new("started")
                    .field("container", c.name())
                    .field("pid", pid)
                    .field("restarts", c.restarts)
                    .field("network", c.config.network_mode());
                if let Some(address) = self.networks.address_of(c.name.as_str()) {
                    event = event.field("addr", address);
                }
                event.emit();
                self.update_nat();
            }
            Err(error) => {
                Event::new("start-failed")
                    .field("container", c.name())
                    .field("error", &error)
                    .emit();
                self.after_exit(index, START_FAILED_CODE, Duration::ZERO, now);
            }
        }
    }

    /// Handles a reaped child. False when it was not one of the containers.
    pub fn on_exit(&mut self, pid: Pid, status: WaitStatus, now: Instant) -> bool {
        let Some(index) = self
            .containers
            .iter()
            .position(|c| matches!(c.state, State::Running { pid: p, .. } if p == pid))
        else {
            return false;
        };
        let Some(code) = policy::exit_code(status) else {
            return true;
        };
        let ran = match self.containers.get(index).map(|c| c.state) {
            Some(State::Running { since, .. }) => now.saturating_duration_since(since),
            _ => Duration::ZERO,
        };
        if let Some(c) = self.containers.get_mut(index) {
            // Output written before the exit is logged before the exit event.
            drain_streams(c);
            report_oom_kills(c);
        }
        self.after_exit(index, code, ran, now);
        // Once its state says it no longer runs, so its published ports leave the rules.
        if !self.shutting_down {
            self.update_nat();
        }
        true
    }

    /// NAT rules for the containers running now.
    fn update_nat(&mut self) {
        let running = self
            .containers
            .iter()
            .filter(|c| matches!(c.state, State::Running { .. }))
            .map(|c| (c.name.as_str(), &c.config));
        self.networks.update_nat(running);
    }

    fn after_exit(&mut self, index: usize, code: i32, ran: Duration, now: Instant) {
        let shutting_down = self.shutting_down;
        let Some(c) = self.containers.get_mut(index) else {
            return;
        };
        c.last_exit = Some(code);
        let restart = !shutting_down
            && policy::should_restart(c.config.restart, code, c.restarts, c.stopped_by_operator);
        let event = Event::new("exited")
            .field("container", c.name())
            .field("code", code)
            .field("restarts", c.restarts)
            .field("ran", millis(ran));
        if restart {
            let delay = c.backoff.delay_after(ran);
            c.state = State::BackingOff { until: now + delay };
            event.field("next_in", millis(delay)).emit();
            return;
        }
        event.emit();
        let reason = match (shutting_down, c.config.restart) {
            (true, _) => "shutdown",
            _ if c.stopped_by_operator => "operator",
            (
                false,
                RestartPolicy::OnFailure {
                    max_restarts: Some(_),
                },
            ) if code != 0 => "restart-limit",
            _ => "exited",
        };
        self.stop_for_good(index, reason, None);
    }

    fn stop_for_good(&mut self, index: usize, reason: &str, dependency: Option<&str>) {
        if let Some(c) = self.containers.get_mut(index) {
            c.state = State::Stopped;
            let mut event = Event::new("stopped")
                .field("container", c.name())
                .field("reason", reason);
            if let Some(dependency) = dependency {
                event = event.field("dependency", dependency);
            }
            event.emit();
        }
    }

    /// The earliest restart timer, or the next look at the network while a container waits
    /// for it, for the event loop's poll timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        let waiting_for_network = self.containers.iter().any(|c| {
            c.state == State::Created
                && c.config
                    .depends_on
                    .0
                    .iter()
                    .any(|(d, _)| d.get_ref() == NETWORK_ONLINE)
        });
        self.containers
            .iter()
            .filter_map(|c| match c.state {
                State::BackingOff { until } => Some(until),
                _ => None,
            })
            .chain(waiting_for_network.then(|| Instant::now() + NETWORK_POLL))
            .min()
    }

    /// Every open log stream, to poll for output.
    pub fn streams(&self) -> Vec<(StreamId, BorrowedFd<'_>)> {
        self.containers
            .iter()
            .enumerate()
            .flat_map(|(ci, c)| {
                c.streams
                    .iter()
                    .enumerate()
                    .map(move |(si, s)| ((ci, si), s.fd()))
            })
            .collect()
    }

    /// Logs what a stream has; closes it at end of stream.
    pub fn on_stream_ready(&mut self, (container, stream): StreamId) {
        let Some(c) = self.containers.get_mut(container) else {
            return;
        };
        let name = c.name.as_str().to_string();
        let open = match c.streams.get_mut(stream) {
            Some(s) => s.drain(&name, &mut c.log_file),
            None => return,
        };
        if !open && stream < c.streams.len() {
            c.streams.remove(stream);
        }
    }

    /// Stops every container, dependants before their dependencies, each with its stop
    /// signal and grace period; then SIGKILL. Blocks until all are down.
    pub fn stop_all(&mut self) {
        self.shutting_down = true;
        for index in (0..self.containers.len()).rev() {
            let Some(state) = self.containers.get(index).map(|c| c.state) else {
                continue;
            };
            match state {
                State::Running { pid, .. } => self.stop_one(index, pid),
                State::Stopped => {}
                State::Created | State::BackingOff { .. } => {
                    self.stop_for_good(index, "shutdown", None)
                }
            }
        }
    }

    fn index_of(&self, name: &str) -> Result<usize, String> {
        self.containers
            .iter()
            .position(|c| c.name() == name)
            .ok_or_else(|| format!("no container `{name}`"))
    }

    /// Every container's state, for `berthctl ps`.
    pub fn statuses(&self) -> Vec<ContainerStatus> {
        let now = Instant::now();
        self.containers
            .iter()
            .map(|c| {
                let (state, pid, uptime_s) = match c.state {
                    State::Created if c.waiting_reported => ("waiting", None, None),
                    State::Created => ("created", None, None),
                    State::Running { pid, since } => (
                        "running",
                        Some(pid.as_raw()),
                        Some(now.saturating_duration_since(since).as_secs()),
                    ),
                    State::BackingOff { .. } => ("restarting", None, None),
                    State::Stopped => ("stopped", None, None),
                };
                ContainerStatus {
                    name: c.name().to_string(),
                    image: c.config.image.get_ref().clone(),
                    state: state.to_string(),
                    pid,
                    restarts: c.restarts,
                    uptime_s,
                    last_exit: c.last_exit,
                    restart_policy: c.config.restart.to_string(),
                    network: c.config.network_mode().to_string(),
                    addr: self.networks.address_of(c.name()).map(|a| a.to_string()),
                    stopped_by_operator: c.stopped_by_operator,
                }
            })
            .collect()
    }

    /// A container's recent output lines.
    pub fn logs(&self, name: &str, tail: Option<usize>) -> Result<Vec<String>, String> {
        let index = self.index_of(name)?;
        Ok(self
            .containers
            .get(index)
            .map(|c| c.log_file.recent(tail))
            .unwrap_or_default())
    }

    /// `berthctl stop`: stops the container with its stop signal and grace period and keeps
    /// it stopped (across reboots too for `unless-stopped`) until an operator starts it.
    pub fn operator_stop(&mut self, name: &str) -> Result<(), String> {
        let index = self.index_of(name)?;
        let Some(c) = self.containers.get_mut(index) else {
            return Err(format!("no container `{name}`"));
        };
        c.stopped_by_operator = true;
        policy::remember_operator_stop(name, true);
        match c.state {
            State::Running { pid, .. } => self.stop_one(index, pid),
            State::Stopped => {}
            State::Created | State::BackingOff { .. } => {
                self.stop_for_good(index, "operator", None)
            }
        }
        Ok(())
    }

    /// `berthctl start`: starts a container that is not running, as soon as its dependencies
    /// allow.
    pub fn operator_start(&mut self, name: &str) -> Result<(), String> {
        let index = self.index_of(name)?;
        let Some(c) = self.containers.get_mut(index) else {
            return Err(format!("no container `{name}`"));
        };
        if matches!(c.state, State::Running { .. }) {
            return Err(format!("container `{name}` is running"));
        }
        c.stopped_by_operator = false;
        policy::remember_operator_stop(name, false);
        c.backoff = c
            .config
            .restart_delay
            .map_or_else(Backoff::default, |d| Backoff::starting_at(d.0));
        c.state = State::Created;
        c.waiting_reported = false;
        self.tick(Instant::now());
        Ok(())
    }

    /// `berthctl restart`.
    pub fn operator_restart(&mut self, name: &str) -> Result<(), String> {
        self.operator_stop(name)?;
        self.operator_start(name)
    }

    fn stop_one(&mut self, index: usize, pid: Pid) {
        let Some(c) = self.containers.get(index) else {
            return;
        };
        let signal = Signal::try_from(c.config.stop_signal_number()).unwrap_or(Signal::SIGTERM);
        let grace = c.config.stop_grace();
        Event::new("stopping")
            .field("container", c.name())
            .field("signal", signal.as_str())
            .field("grace", millis(grace))
            .emit();
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = Instant::now() + grace;
        let mut killed = false;
        loop {
            for (exited, status) in reap::reap_exited().exited {
                self.on_exit(exited, status, Instant::now());
            }
            let still_running = self
                .containers
                .get(index)
                .is_some_and(|c| matches!(c.state, State::Running { .. }));
            if !still_running {
                return;
            }
            if !killed && Instant::now() >= deadline {
                // A PID namespace's first process ignores signals it has no handler for, so
                // SIGKILL (sent from outside the namespace) is what ends most of them.
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                killed = true;
            }
            std::thread::sleep(STOP_POLL);
        }
    }
}

enum Dependencies {
    Met,
    Pending(String),
    Failed(String),
}

fn condition_name(condition: Condition) -> &'static str {
    match condition {
        Condition::ServiceStarted => "service_started",
        Condition::ServiceCompletedSuccessfully => "service_completed_successfully",
    }
}

/// Reports an `oom-killed` event when the kernel's OOM killer ended a process of `c` since
/// the last look; the restart policy then handles the exit like any other.
fn report_oom_kills(c: &mut Supervised) {
    let cgroup = std::path::Path::new(spec::CGROUP_PARENT).join(c.name());
    let kills = berth_runtime::oom_kills(&cgroup);
    if kills > c.oom_kills {
        Event::new("oom-killed")
            .field("container", c.name())
            .field("kills", kills - c.oom_kills)
            .field("mem_limit", c.config.mem_limit.map_or(-1, |m| m.0))
            .emit();
    }
    c.oom_kills = kills;
}

fn drain_streams(c: &mut Supervised) {
    let name = c.name.as_str().to_string();
    let log_file = &mut c.log_file;
    c.streams.retain_mut(|s| s.drain(&name, log_file));
}

/// (name, PID) of each running container.
fn running_pids(containers: &[Supervised]) -> Vec<(String, i32)> {
    containers
        .iter()
        .filter_map(|c| match c.state {
            State::Running { pid, .. } => Some((c.name().to_string(), pid.as_raw())),
            _ => None,
        })
        .collect()
}

fn spawn_container(
    c: &mut Supervised,
    image: &crate::images::PreparedImage,
    userns: &Userns,
    network: berth_runtime::Network,
    network_mounts: Vec<berth_runtime::ExtraMount>,
) -> Result<Pid, String> {
    let pipe =
        || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("create output pipe: {e}"));
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    let spec = spec::build(
        c.name.as_str(),
        &c.config,
        userns,
        image,
        (network, network_mounts),
        (stdout_write, stderr_write),
    )?;
    let spawned = berth_runtime::spawn(&spec).map_err(|e| e.to_string())?;
    // The parent's write ends close with `spec`, so the streams end when the container does.
    drop(spec);
    c.streams = vec![LogStream::new(stdout_read), LogStream::new(stderr_read)];
    Ok(spawned.pid)
}
