//! The supervisor: one state machine per container ([`lifecycle`]), started in dependency
//! order and kept running by its restart policy.
//!
//! [`lifecycle::step`] decides, as a pure function, what each input (a spawn, an exit, a stop
//! asked for, time passing) does to a container; this module and its parts perform the
//! effects it returns: `start` (images, networks, spawning), `dependencies` (what a
//! container waits for), `stops` (stop requests, the shutdown order), `operator` (the
//! `berthctl` verbs), `apply`. Nothing here blocks on a container: restarts, SIGKILL after a
//! grace period and the final give-up are timers the event loop wakes for.

mod apply;
mod dependencies;
mod exec;
mod health;
mod image_admin;
pub mod lifecycle;
pub mod logs;
mod network;
mod operator;
pub mod policy;
mod pulls;
pub use pulls::PULLER;
mod spec;
mod start;
mod stops;

pub use exec::ExecIo;
pub use spec::CGROUP_PARENT;

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_manifest::{
    Container, ContainerName, Manifest, RestartPolicy, Userns, NETWORK_ONLINE, TIME_SYNCED,
};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::event::Event;
use crate::images::ImageCache;
pub use berth_control::ContainerStatus;
use exec::ExecDefaults;
use health::{Health, HealthStatus};
use lifecycle::{Effect, Input, Reason, State, Then, Verdict};
use logs::{LogFile, LogStream};
use network::ContainerNetworks;
pub use operator::OperatorError;
use policy::Backoff;
use pulls::Pulls;

/// netd creates this file once every required link is configured.
pub const NETWORK_ONLINE_MARKER: &str = "/run/berth/network-online";
/// netd writes this once its SNTP client first set the clock (`time-synced`).
pub const TIME_SYNCED_MARKER: &str = "/run/berth/time-synced";
/// How often containers waiting for the network (or an image) look for it.
const NETWORK_POLL: Duration = Duration::from_millis(200);

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
    /// Every OOM kill since boot, across restarts (for `ps` and the metrics).
    oom_kills_total: u64,
    streams: Vec<LogStream>,
    log_file: LogFile,
    /// What an `exec` into the running container inherits from its start.
    exec_defaults: Option<ExecDefaults>,
    /// While it runs, for a container with a health check.
    health: Option<Health>,
    /// Replaced or removed by `apply`: it stops, then leaves the supervisor.
    retiring: bool,
    /// Waiting for its image to be pulled.
    pulling: bool,
    /// Why the current stop was asked for (the `reason` of its `stopping` event).
    stop_why: &'static str,
    /// What the `stopped` event names beside its reason (the failed dependency or mount).
    stop_detail: Option<String>,
    /// The next start is an operator's `restart`, which is not counted as a restart.
    operator_restart: bool,
    /// Its health check has passed at least once since boot: what an update on trial waits
    /// for before it is committed.
    healthy_once: bool,
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
            state: State::Waiting,
            restarts: 0,
            backoff,
            ever_started: false,
            last_exit: None,
            stopped_by_operator: false,
            waiting_reported: false,
            oom_kills: 0,
            oom_kills_total: 0,
            streams: Vec::new(),
            exec_defaults: None,
            health: None,
            retiring: false,
            pulling: false,
            stop_why: "",
            stop_detail: None,
            operator_restart: false,
            healthy_once: false,
        }
    }

    fn name(&self) -> &str {
        self.name.as_str()
    }

    /// Its first process while it runs and has not been asked to stop.
    fn running_pid(&self) -> Option<Pid> {
        match self.state {
            State::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// Its first process, running or stopping.
    fn live_pid(&self) -> Option<Pid> {
        match self.state {
            State::Running { pid, .. } | State::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    fn is_live(&self) -> bool {
        self.live_pid().is_some()
    }

    fn health_status(&self) -> Option<HealthStatus> {
        self.health.as_ref().map(|h| h.status)
    }
}

/// A log stream the event loop should poll: (container index, stream index).
pub type StreamId = (usize, usize);

#[derive(Debug)]
pub struct Supervisor {
    /// In start order (dependencies first); containers `apply` retired follow, until they
    /// have stopped.
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

pub(super) fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl Supervisor {
    /// What an update on trial still waits for before it is committed: the containers with
    /// a health check that have not yet been healthy, and `network-online` while a container
    /// depends on it and the network is not online. Empty: the host has proved itself.
    pub fn unproven(&self) -> Vec<String> {
        let live = || self.containers.iter().filter(|c| !c.retiring);
        let mut waiting: Vec<String> = live()
            .filter(|c| c.config.healthcheck.is_some() && !c.healthy_once)
            .map(|c| c.name().to_string())
            .collect();
        let needs_network = live().any(|c| {
            c.config
                .depends_on
                .0
                .iter()
                .any(|(dependency, _)| dependency.get_ref() == NETWORK_ONLINE)
        });
        if needs_network && !marker_exists(NETWORK_ONLINE_MARKER) {
            waiting.push(NETWORK_ONLINE.to_string());
        }
        waiting
    }

    /// berth-pull's registry options for `reference` (plain HTTP, CA, credentials, a wait
    /// for network time), as an image pull from that registry gets them: for `berthctl
    /// update --pull`.
    pub fn pull_options(&self, reference: &str) -> Result<Vec<String>, String> {
        self.pulls.options(reference)
    }

    /// The `[update]` settings in force (the last applied manifest's).
    pub fn update_settings(&self) -> &berth_manifest::Update {
        &self.host_settings.update
    }

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
        let now = Instant::now();
        for index in 0..supervisor.containers.len() {
            let kept_stopped = supervisor.containers.get_mut(index).is_some_and(|c| {
                let stopped = c.config.restart == RestartPolicy::UnlessStopped
                    && policy::was_stopped_by_operator(c.name());
                c.stopped_by_operator = stopped;
                stopped
            });
            if kept_stopped {
                supervisor.stop_for_good(index, Reason::Operator, None, now);
                continue;
            }
            let blocked_by = supervisor
                .containers
                .get(index)
                .and_then(|c| spec::volume_under(&c.config, failed_mounts));
            if let Some(target) = blocked_by {
                let target = target.display().to_string();
                supervisor.stop_for_good(index, Reason::MountFailed, Some(target), now);
            }
        }
        supervisor
    }

    /// One turn's work: containers `apply` retired that have stopped leave, then every
    /// container whose time has come moves on (see [`Supervisor::advance`]).
    pub fn tick(&mut self, now: Instant) {
        self.containers
            .retain(|c| !(c.retiring && c.state == State::Stopped));
        self.advance(now);
    }

    /// Starts what may start, fires due timers (restarts, SIGKILL, the final give-up), runs
    /// health checks, and during a shutdown stops what may stop now.
    fn advance(&mut self, now: Instant) {
        self.images.kill_overdue(now);
        if self.shutting_down {
            self.shutdown_stops(now);
        }
        for index in 0..self.containers.len() {
            let Some(c) = self.containers.get(index) else {
                continue;
            };
            let state = c.state;
            let may_start = !self.shutting_down && !c.retiring;
            match state {
                State::Waiting if may_start => self.start_when_ready(index, now),
                State::Running { .. } => self.run_health_check(index, now),
                _ => {}
            }
            if lifecycle::deadline(state).is_some_and(|due| now >= due) {
                self.drive(index, Input::Tick { at: now });
            }
        }
    }

    /// Feeds `input` to container `index`'s state machine and performs what it returns.
    fn drive(&mut self, index: usize, input: Input) {
        let Some(c) = self.containers.get_mut(index) else {
            return;
        };
        let (next, effects) = lifecycle::step(c.state, input);
        c.state = next;
        let now = match input {
            Input::Spawned { at, .. }
            | Input::Exited { at, .. }
            | Input::Stop { at, .. }
            | Input::Tick { at } => at,
        };
        for effect in effects {
            self.perform(index, effect, now);
        }
    }

    fn perform(&mut self, index: usize, effect: Effect, now: Instant) {
        if effect == Effect::Spawn {
            if !self.shutting_down {
                self.start(index, now);
            }
            return;
        }
        let Some(c) = self.containers.get_mut(index) else {
            return;
        };
        match effect {
            Effect::Spawn => {}
            Effect::SendStopSignal { pid, grace } => {
                let signal =
                    Signal::try_from(c.config.stop_signal_number()).unwrap_or(Signal::SIGTERM);
                Event::new("stopping")
                    .field("container", c.name())
                    .field("signal", signal.as_str())
                    .field("grace", millis(grace))
                    .field("reason", c.stop_why)
                    .emit();
                let _ = nix::sys::signal::kill(pid, signal);
            }
            Effect::Kill { pid } => {
                log::info!("{}: grace period over; SIGKILL", c.name());
                // A PID namespace's first process ignores signals it has no handler for, so
                // SIGKILL (sent from outside the namespace) is what ends most of them.
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                kill_leftovers(c.name());
            }
            Effect::ReportExited { code, ran, next_in } => {
                c.last_exit = Some(code);
                let mut event = Event::new("exited")
                    .field("container", c.name())
                    .field("code", code)
                    .field("restarts", c.restarts)
                    .field("ran", millis(ran));
                if let Some(delay) = next_in {
                    // The restart is due `next_in` after `now`, the exit's moment, which may
                    // be some milliseconds before this line's own `uptime_ms` on a busy host.
                    let exit_uptime =
                        crate::clock::since_kernel_start().saturating_sub(now.elapsed());
                    event = event
                        .field("next_in", millis(delay))
                        .field("exited_ms", exit_uptime.as_millis());
                }
                event.emit();
            }
            Effect::ReportStopped(reason) => {
                let mut event = Event::new("stopped")
                    .field("container", c.name())
                    .field("reason", reason.as_str());
                if let Some(detail) = c.stop_detail.take() {
                    event = event.field("dependency", detail);
                }
                event.emit();
            }
            Effect::ReportStuck { pid } => {
                Event::new("stop-stuck")
                    .field("container", c.name())
                    .field("pid", pid)
                    .field("waited", millis(lifecycle::KILL_WAIT))
                    .emit();
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
        if status == HealthStatus::Healthy {
            c.healthy_once = true;
        }
        Event::new("health")
            .field("container", c.name())
            .field("status", status.as_str())
            .field("failing_streak", failing_streak)
            .emit();
        if status == HealthStatus::Unhealthy && c.config.restarts_on_unhealthy() {
            self.request_stop(index, Then::Restart, "unhealthy", now);
        }
    }

    /// Handles a reaped child. False when it was not one of the containers.
    pub fn on_exit(&mut self, pid: Pid, status: WaitStatus, now: Instant) -> bool {
        if self.images.on_exit(pid, status) {
            self.advance(now);
            return true;
        }
        if let Some(finished) = self.pulls.on_exit(pid, status) {
            match finished.result {
                Ok(()) => self.images.pulled_changed(&finished.reference),
                Err(err) => self.report_pull_failure(&finished.reference, &err),
            }
            self.advance(now);
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
            .position(|c| c.live_pid() == Some(pid))
        else {
            return false;
        };
        let Some(code) = policy::exit_code(status) else {
            return true;
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
            c.exec_defaults = None;
        }
        self.exited(index, code, now);
        // Once its state says it no longer runs, so its published ports leave the rules.
        if !self.shutting_down {
            self.update_nat();
        }
        // What waited for this exit starts in this turn: a restart without delay, or the
        // replacement of a container `apply` retired (whose answer goes at the turn's end).
        self.advance(now);
        true
    }

    /// Container `index`'s first process ended (or never started) with `code`.
    fn exited(&mut self, index: usize, code: i32, now: Instant) {
        let shutting_down = self.shutting_down;
        let Some(c) = self.containers.get_mut(index) else {
            return;
        };
        let ran = match c.state {
            State::Running { since, .. } | State::Stopping { since, .. } => {
                now.saturating_duration_since(since)
            }
            _ => Duration::ZERO,
        };
        let verdict = if shutting_down {
            Verdict::Stay(Reason::Shutdown)
        } else if c.retiring {
            Verdict::Stay(Reason::Apply)
        } else if policy::should_restart(c.config.restart, code, c.restarts, c.stopped_by_operator)
        {
            Verdict::RestartIn(c.backoff.delay_after(ran))
        } else if c.stopped_by_operator {
            Verdict::Stay(Reason::Operator)
        } else if matches!(
            c.config.restart,
            RestartPolicy::OnFailure {
                max_restarts: Some(_)
            }
        ) && code != 0
        {
            Verdict::Stay(Reason::RestartLimit)
        } else {
            Verdict::Stay(Reason::Exited)
        };
        self.drive(
            index,
            Input::Exited {
                code,
                verdict,
                at: now,
            },
        );
    }

    /// NAT rules for the containers running now.
    fn update_nat(&mut self) {
        let running = self
            .containers
            .iter()
            .filter(|c| c.running_pid().is_some())
            .map(|c| (c.name.as_str(), &c.config));
        self.networks.update_nat(running);
    }

    /// Moves a container that is not running to `Stopped` (one that runs is asked to stop
    /// first), with `detail` in its `stopped` event.
    fn stop_for_good(
        &mut self,
        index: usize,
        reason: Reason,
        detail: Option<String>,
        now: Instant,
    ) {
        if let Some(c) = self.containers.get_mut(index) {
            c.stop_detail = detail;
            c.stop_why = reason.as_str();
        }
        let grace = self
            .containers
            .get(index)
            .map_or(Duration::ZERO, |c| c.config.stop_grace());
        self.drive(
            index,
            Input::Stop {
                then: Then::Stay(reason),
                grace,
                at: now,
            },
        );
    }

    /// The earliest timer (a restart, a SIGKILL, a give-up, a health check), or the next look
    /// at the network while a container waits for it, for the event loop's poll timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        let waiting_for_network = !self.shutting_down
            && self.containers.iter().any(|c| {
                c.state == State::Waiting
                    && (c.pulling
                        || c.config.depends_on.0.iter().any(|(d, _)| {
                            d.get_ref() == NETWORK_ONLINE || d.get_ref() == TIME_SYNCED
                        }))
            });
        self.containers
            .iter()
            .flat_map(|c| {
                let health = c
                    .health
                    .as_ref()
                    .filter(|_| c.running_pid().is_some())
                    .map(Health::next_deadline);
                [lifecycle::deadline(c.state), health]
            })
            .flatten()
            .chain(waiting_for_network.then(|| Instant::now() + NETWORK_POLL))
            .chain(
                self.pulls.next_deadline(
                    self.containers
                        .iter()
                        .filter(|c| c.state == State::Waiting && c.pulling)
                        .map(|c| c.config.image.get_ref().as_str()),
                    Instant::now() + NETWORK_POLL,
                ),
            )
            .chain(self.images.next_deadline())
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

    /// The container in force named `name` (not one that `apply` retired).
    fn index_of(&self, name: &str) -> Result<usize, OperatorError> {
        self.containers
            .iter()
            .position(|c| c.name() == name && !c.retiring)
            .ok_or_else(|| OperatorError::NotFound(name.to_string()))
    }

    /// Every container's state, for `berthctl ps`.
    pub fn statuses(&self) -> Vec<ContainerStatus> {
        let now = Instant::now();
        self.containers
            .iter()
            .filter(|c| !c.retiring)
            .map(|c| {
                let (state, pid, uptime_s) = match c.state {
                    State::Waiting if c.pulling => ("pulling", None, None),
                    State::Waiting if self.images.is_unpacking(c.config.image.get_ref()) => {
                        ("unpacking", None, None)
                    }
                    State::Waiting if c.waiting_reported => ("waiting", None, None),
                    State::Waiting => ("created", None, None),
                    State::Running { pid, since } => (
                        "running",
                        Some(pid.as_raw()),
                        Some(now.saturating_duration_since(since).as_secs()),
                    ),
                    State::Stopping { pid, since, .. } => (
                        "stopping",
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
                    oom_kills: c.oom_kills_total,
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
    ) -> Result<Vec<String>, OperatorError> {
        let index = self.index_of(name)?;
        Ok(self
            .containers
            .get(index)
            .map(|c| c.log_file.recent(tail, since))
            .unwrap_or_default())
    }

    /// Every container's kept lines with when they came, for the journal's backlog.
    pub fn all_logs(&self) -> Vec<(String, Vec<(std::time::Instant, String)>)> {
        self.containers
            .iter()
            .map(|c| (c.name().to_string(), c.log_file.recent_timed()))
            .collect()
    }
}

/// Reports an `oom-killed` event when the kernel's OOM killer ended a process of `c` since
/// the last look; the restart policy then handles the exit like any other.
fn report_oom_kills(c: &mut Supervised) {
    let cgroup = spec::cgroup_dir(c.name());
    let kills = berth_runtime::oom_kills(&cgroup);
    if kills > c.oom_kills {
        c.oom_kills_total += kills - c.oom_kills;
        Event::new("oom-killed")
            .field("container", c.name())
            .field("kills", kills - c.oom_kills)
            .field("mem_limit", c.config.mem_limit.map_or(-1, |m| m.0))
            .emit();
    }
    c.oom_kills = kills;
}

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

/// After its container exited: what is left in its pipes (bounded, see `drain_to_end`).
fn drain_streams(c: &mut Supervised) {
    let name = c.name.as_str().to_string();
    let log_file = &mut c.log_file;
    c.streams.retain_mut(|s| s.drain_to_end(&name, log_file));
}

/// Whether `path` exists, for markers such as [`NETWORK_ONLINE_MARKER`].
fn marker_exists(path: &str) -> bool {
    Path::new(path).exists()
}
