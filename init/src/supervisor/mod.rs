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

mod apply;
mod exec;
mod health;
mod image_admin;
pub mod logs;
mod network;
pub mod policy;
mod pulls;
mod spec;

pub use exec::ExecIo;
pub use spec::CGROUP_PARENT;

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_manifest::{
    Condition, Container, ContainerName, Manifest, PullPolicy, RestartPolicy, Userns,
    NETWORK_ONLINE,
};
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::event::Event;
use crate::images::ImageCache;
use crate::reap;
pub use berth_control::ContainerStatus;
use exec::ExecDefaults;
use health::{Health, HealthStatus};
use logs::{LogFile, LogStream};
use network::ContainerNetworks;
use policy::Backoff;
use pulls::{PullState, Pulls};

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
    /// What an `exec` into the running container inherits from its start.
    exec_defaults: Option<ExecDefaults>,
    /// While it runs, for a container with a health check.
    health: Option<Health>,
    /// A stop sent without waiting (an unhealthy container's restart): SIGKILL follows then.
    kill_at: Option<Instant>,
    /// Start again as soon as the current run ends, whatever the restart policy.
    restart_after_exit: bool,
    /// Stopped by `apply` (removed or changed): the restart policy does not apply.
    retiring: bool,
    /// Waiting for its image to be pulled.
    pulling: bool,
}

impl Supervised {
    fn new(name: &ContainerName, config: Container) -> Supervised {
        let backoff = config
            .restart_delay
            .map_or_else(Backoff::default, |d| Backoff::starting_at(d.0));
        Event::new("created")
            .field("container", name.as_str())
            .field("image", config.image.get_ref())
            .field("restart", config.restart)
            .emit();
        Supervised {
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
            exec_defaults: None,
            health: None,
            kill_at: None,
            restart_after_exit: false,
            retiring: false,
            pulling: false,
        }
    }

    fn name(&self) -> &str {
        self.name.as_str()
    }

    fn running_pid(&self) -> Option<Pid> {
        match self.state {
            State::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    fn health_status(&self) -> Option<HealthStatus> {
        self.health.as_ref().map(|h| h.status)
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
    /// The manifest in force less its containers, to tell what an `apply` cannot change
    /// before the next boot.
    host_settings: Manifest,
    pulls: Pulls,
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
                Some(Supervised::new(name, config))
            })
            .collect();
        let mut supervisor = Supervisor {
            containers,
            images,
            shutting_down: false,
            userns: manifest.userns,
            networks: ContainerNetworks::new(manifest),
            host_settings: apply::host_settings(manifest),
            pulls: Pulls::new(manifest),
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
                State::Running { pid, .. } => {
                    self.escalate_stop(index, pid, now);
                    self.run_health_check(index, now);
                }
                _ => {}
            }
        }
    }

    /// SIGKILL for a container that outlived the grace period of a stop sent without
    /// waiting.
    fn escalate_stop(&mut self, index: usize, pid: Pid, now: Instant) {
        if let Some(c) = self.containers.get_mut(index) {
            if c.kill_at.is_some_and(|at| now >= at) {
                c.kill_at = None;
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            }
        }
    }

    /// Starts a due probe, or kills one past its timeout.
    fn run_health_check(&mut self, index: usize, now: Instant) {
        let Some(c) = self.containers.get_mut(index) else {
            return;
        };
        let Some(health) = c.health.as_mut() else {
            return;
        };
        if let Some(probe) = health.overdue(now) {
            let _ = nix::sys::signal::kill(probe, Signal::SIGKILL);
            return;
        }
        let Some(command) = health.due(now) else {
            return;
        };
        let started =
            exec::probe_io().and_then(|io| exec::start(c, command, None, Vec::new(), None, io));
        match started {
            Ok(pid) => {
                if let Some(health) = c.health.as_mut() {
                    health.probe_started(pid, now);
                }
            }
            Err(err) => {
                log::warn!("{}: health check did not start: {err}", c.name());
                self.health_result(index, false, now);
            }
        }
    }

    /// A probe's outcome; an unhealthy container is restarted when the manifest asks.
    fn health_result(&mut self, index: usize, passed: bool, now: Instant) {
        let Some(c) = self.containers.get_mut(index) else {
            return;
        };
        let Some(health) = c.health.as_mut() else {
            return;
        };
        let Some(status) = health.record(passed, now) else {
            return;
        };
        let failing_streak = health.failing_streak;
        Event::new("health")
            .field("container", c.name())
            .field("status", status.as_str())
            .field("failing_streak", failing_streak)
            .emit();
        if status == HealthStatus::Unhealthy && c.config.restarts_on_unhealthy() {
            if let Some(pid) = c.running_pid() {
                self.stop_without_waiting(index, pid, "unhealthy", now);
            }
        }
    }

    /// Sends the stop signal and goes on; SIGKILL follows after the grace period, and the
    /// container starts again once it has exited.
    fn stop_without_waiting(&mut self, index: usize, pid: Pid, reason: &str, now: Instant) {
        let Some(grace) = self.send_stop_signal(index, pid, Some(reason)) else {
            return;
        };
        if let Some(c) = self.containers.get_mut(index) {
            c.kill_at = Some(now + grace);
            c.restart_after_exit = true;
        }
    }

    /// The container's stop signal, announced; returns its grace period.
    fn send_stop_signal(&self, index: usize, pid: Pid, reason: Option<&str>) -> Option<Duration> {
        let c = self.containers.get(index)?;
        let signal = Signal::try_from(c.config.stop_signal_number()).unwrap_or(Signal::SIGTERM);
        let grace = c.config.stop_grace();
        let mut event = Event::new("stopping")
            .field("container", c.name())
            .field("signal", signal.as_str())
            .field("grace", millis(grace));
        if let Some(reason) = reason {
            event = event.field("reason", reason);
        }
        event.emit();
        let _ = nix::sys::signal::kill(pid, signal);
        Some(grace)
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
                Condition::ServiceHealthy => {
                    matches!(dep.state, State::Running { .. })
                        && dep.health_status() == Some(HealthStatus::Healthy)
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

    /// Whether `index`'s image is on the host as its `pull_policy` wants it; if not, its
    /// pull is started (once the network is online) or awaited.
    fn image_ready(&mut self, index: usize, now: Instant) -> bool {
        let Some(c) = self.containers.get(index) else {
            return false;
        };
        let reference = c.config.image.get_ref().clone();
        let needs_pull = match c.config.pull_policy() {
            PullPolicy::Never => false,
            PullPolicy::Missing => !self.images.has(&reference),
            PullPolicy::Always => {
                !self.images.is_baked(&reference) && self.pulls.state(&reference) != PullState::Done
            }
        };
        if !needs_pull {
            if let Some(c) = self.containers.get_mut(index) {
                c.pulling = false;
            }
            return true;
        }
        let due = match self.pulls.state(&reference) {
            PullState::Running => false,
            PullState::RetryAt(at) => now >= at,
            PullState::NotStarted => true,
            // Pulled, yet not found under its name: preparing it says why.
            PullState::Done => return true,
        };
        if due && Path::new(NETWORK_ONLINE_MARKER).exists() {
            if let Err(err) = self.pulls.start(&reference) {
                self.pulls.failed_to_start(&reference, now);
                self.report_pull_failure(&reference, &err);
            }
        }
        if let Some(c) = self.containers.get_mut(index) {
            c.pulling = true;
        }
        false
    }

    fn report_pull_failure(&self, reference: &str, error: &str) {
        let waiting: Vec<&str> = self
            .containers
            .iter()
            .filter(|c| c.config.image.get_ref() == reference && c.state == State::Created)
            .map(Supervised::name)
            .collect();
        Event::new("image-pull-failed")
            .field("image", reference)
            .field(
                "containers",
                if waiting.is_empty() {
                    "-".to_string()
                } else {
                    waiting.join(",")
                },
            )
            .field("error", error)
            .field("retry_in", millis(self.pulls.retry_in(reference)))
            .emit();
    }

    fn start(&mut self, index: usize, now: Instant) {
        if !self.image_ready(index, now) {
            return;
        }
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
                let since = Instant::now();
                c.state = State::Running { pid, since };
                c.ever_started = true;
                c.health = c
                    .config
                    .enabled_healthcheck()
                    .cloned()
                    .map(|check| Health::new(check, since));
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
        if let Some(finished) = self.pulls.on_exit(pid, status) {
            match finished.result {
                Ok(()) => self.images.pulled_changed(&finished.reference),
                Err(err) => self.report_pull_failure(&finished.reference, &err),
            }
            self.tick(now);
            return true;
        }
        if let Some(index) = self
            .containers
            .iter()
            .position(|c| c.health.as_ref().and_then(Health::probe_pid) == Some(pid))
        {
            let passed = policy::exit_code(status) == Some(0);
            self.health_result(index, passed, now);
            return true;
        }
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
            // What the first process left behind goes with it: processes of a `pid = "host"`
            // container (no PID namespace ends them) and exec'd ones. Before the streams
            // are drained, so no leftover holds them open.
            kill_leftovers(c.name());
            // Output written before the exit is logged before the exit event.
            drain_streams(c);
            report_oom_kills(c);
            if let Some(probe) = c.health.take().and_then(|h| h.probe_pid()) {
                let _ = nix::sys::signal::kill(probe, Signal::SIGKILL);
            }
            c.kill_at = None;
            c.exec_defaults = None;
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
        let asked_again = std::mem::take(&mut c.restart_after_exit);
        let restart = !shutting_down
            && !c.retiring
            && (asked_again
                || policy::should_restart(
                    c.config.restart,
                    code,
                    c.restarts,
                    c.stopped_by_operator,
                ));
        let event = Event::new("exited")
            .field("container", c.name())
            .field("code", code)
            .field("restarts", c.restarts)
            .field("ran", millis(ran));
        if restart {
            let delay = if asked_again {
                Duration::ZERO
            } else {
                c.backoff.delay_after(ran)
            };
            c.state = State::BackingOff { until: now + delay };
            event.field("next_in", millis(delay)).emit();
            return;
        }
        event.emit();
        let reason = match (shutting_down, c.config.restart) {
            (true, _) => "shutdown",
            _ if c.retiring => "apply",
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
                && (c.pulling
                    || c.config
                        .depends_on
                        .0
                        .iter()
                        .any(|(d, _)| d.get_ref() == NETWORK_ONLINE))
        });
        self.containers
            .iter()
            .flat_map(|c| {
                let backoff = match c.state {
                    State::BackingOff { until } => Some(until),
                    _ => None,
                };
                let health = c.health.as_ref().map(Health::next_deadline);
                [backoff, health, c.kill_at]
            })
            .flatten()
            .chain(waiting_for_network.then(|| Instant::now() + NETWORK_POLL))
            .chain(
                self.pulls.next_deadline(
                    self.containers
                        .iter()
                        .filter(|c| c.state == State::Created && c.pulling)
                        .map(|c| c.config.image.get_ref().as_str()),
                    Instant::now() + NETWORK_POLL,
                ),
            )
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
                    State::Created if c.pulling => ("pulling", None, None),
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
                    health: c.health_status().map(|h| h.as_str().to_string()),
                    network: c.config.network_mode().to_string(),
                    addr: self.networks.address_of(c.name()).map(|a| a.to_string()),
                    stopped_by_operator: c.stopped_by_operator,
                }
            })
            .collect()
    }

    /// A container's recent output lines: the last `tail`, of those from within `since`.
    pub fn logs(
        &self,
        name: &str,
        tail: Option<usize>,
        since: Option<Duration>,
    ) -> Result<Vec<String>, String> {
        let index = self.index_of(name)?;
        Ok(self
            .containers
            .get(index)
            .map(|c| c.log_file.recent(tail, since))
            .unwrap_or_default())
    }

    /// `berthctl exec`: starts `args` in the running container `name`.
    pub fn exec(
        &mut self,
        name: &str,
        args: Vec<String>,
        user: Option<String>,
        env: Vec<String>,
        workdir: Option<String>,
        io: ExecIo,
    ) -> Result<Pid, String> {
        let index = self.index_of(name)?;
        let c = self
            .containers
            .get(index)
            .ok_or_else(|| format!("no container `{name}`"))?;
        let pid = exec::start(c, args, user, env, workdir, io)?;
        Event::new("exec")
            .field("container", name)
            .field("pid", pid)
            .emit();
        Ok(pid)
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
        let Some(grace) = self.send_stop_signal(index, pid, None) else {
            return;
        };
        let deadline = Instant::now() + grace;
        let mut killed = false;
        loop {
            for (exited, status) in reap::reap_exited().exited {
                // Not ours (netd, an exec'd process): the event loop hands it on later.
                if !self.on_exit(exited, status, Instant::now()) {
                    reap::defer(exited, status);
                }
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
        Condition::ServiceHealthy => "service_healthy",
    }
}

/// Reports an `oom-killed` event when the kernel's OOM killer ended a process of `c` since
/// the last look; the restart policy then handles the exit like any other.
fn report_oom_kills(c: &mut Supervised) {
    let cgroup = spec::cgroup_dir(c.name());
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

/// After its container exited: what is left in its pipes (bounded, see `drain_to_end`).
/// SIGKILL to every process still in the container's cgroup (`cgroup.kill`, Linux 5.14):
/// one write, which does not wait for them to die.
fn kill_leftovers(name: &str) {
    let kill = spec::cgroup_dir(name).join("cgroup.kill");
    match std::fs::write(&kill, "1") {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => log::warn!(
            "{name}: cannot kill what is left in its cgroup ({}): {err}",
            kill.display()
        ),
    }
}

fn drain_streams(c: &mut Supervised) {
    let name = c.name.as_str().to_string();
    let log_file = &mut c.log_file;
    c.streams.retain_mut(|s| s.drain_to_end(&name, log_file));
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
    c.exec_defaults = Some(ExecDefaults::of(&spec));
    // The parent's write ends close with `spec`, so the streams end when the container does.
    drop(spec);
    c.streams = vec![LogStream::new(stdout_read), LogStream::new(stderr_read)];
    Ok(spawned.pid)
}
