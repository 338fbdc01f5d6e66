//! Starting a container: its dependencies met, its image on the host (pulled when its
//! `pull_policy` asks), its network prepared, its first process spawned.

use std::time::Instant;

use berth_manifest::{PullPolicy, Userns};
use nix::fcntl::OFlag;
use nix::unistd::Pid;

use super::exec::ExecDefaults;
use super::health::Health;
use super::lifecycle::{Input, Reason, State};
use super::logs::LogStream;
use super::pulls::PullState;
use super::{
    dependencies::Dependencies, marker_exists, millis, spec, Supervised, Supervisor,
    NETWORK_ONLINE_MARKER, NETWORK_POLL,
};
use crate::event::Event;
use crate::images::Prepared;

/// Exit code reported for a container whose start failed (as a shell's "cannot run").
const START_FAILED_CODE: i32 = 127;

impl Supervisor {
    /// A waiting container: started when its dependencies are met, stopped for good when
    /// one of them failed.
    pub(super) fn start_when_ready(&mut self, index: usize, now: Instant) {
        match self.dependencies(index) {
            Dependencies::Met => self.start(index, now),
            Dependencies::Pending(on) => self.report_waiting(index, &on),
            Dependencies::Failed(on) => {
                self.stop_for_good(index, Reason::DependencyFailed, Some(on), now)
            }
        }
    }

    /// Whether `index`'s image is on the host as its `pull_policy` wants it; if not, its
    /// pull is started (once the network is online) or awaited.
    pub(super) fn image_ready(&mut self, index: usize, now: Instant) -> bool {
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
        if due && marker_exists(NETWORK_ONLINE_MARKER) {
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

    pub(super) fn report_pull_failure(&self, reference: &str, error: &str) {
        let waiting: Vec<&str> = self
            .containers
            .iter()
            .filter(|c| c.config.image.get_ref() == reference && c.state == State::Waiting)
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

    /// Starts container `index` now: its image is made ready (pulled, unpacked), its network
    /// prepared and its first process spawned; the outcome goes to its state machine.
    pub(super) fn start(&mut self, index: usize, now: Instant) {
        let prepared = if self.image_ready(index, now) {
            let reference = self
                .containers
                .get(index)
                .map(|c| c.config.image.get_ref().clone())
                .unwrap_or_default();
            // Unpacking runs in a child of init; its exit brings the container back here.
            match self.images.prepare(&reference) {
                Ok(Prepared::Ready(image)) => Some(Ok(image)),
                Ok(Prepared::Unpacking) => None,
                Err(err) => Some(Err(err)),
            }
        } else {
            None
        };
        let Some(prepared) = prepared else {
            // Not yet: a restart due now looks again later instead of at every turn.
            if let Some(c) = self.containers.get_mut(index) {
                if matches!(c.state, State::BackingOff { .. }) {
                    c.state = State::BackingOff {
                        until: now + NETWORK_POLL,
                    };
                }
            }
            return;
        };
        let Some(c) = self.containers.get_mut(index) else {
            return;
        };
        if matches!(c.state, State::BackingOff { .. }) && !std::mem::take(&mut c.operator_restart) {
            c.restarts += 1;
        }
        Event::new("starting")
            .field("container", c.name())
            .field("restarts", c.restarts)
            .emit();
        let userns = self.userns;
        let running = running_pids(&self.containers);
        let Some(c) = self.containers.get_mut(index) else {
            return;
        };
        let networks = &mut self.networks;
        let result = prepared.and_then(|image| {
            let (network, mounts) = networks.prepare(c.name.as_str(), &c.config, |name| {
                running.iter().find(|(n, _)| n == name).map(|(_, pid)| *pid)
            })?;
            spawn_container(c, &image, &userns, network, mounts)
        });
        match result {
            Ok(pid) => {
                // The run is timed from the exec, not from the image preparation before it.
                let since = Instant::now();
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
                self.drive(index, Input::Spawned { pid, at: since });
                self.update_nat();
            }
            Err(error) => {
                Event::new("start-failed")
                    .field("container", c.name())
                    .field("error", &error)
                    .emit();
                self.exited(index, START_FAILED_CODE, now);
            }
        }
    }
}

/// (name, PID) of each running container.
fn running_pids(containers: &[Supervised]) -> Vec<(String, i32)> {
    containers
        .iter()
        .filter_map(|c| Some((c.name().to_string(), c.running_pid()?.as_raw())))
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
    // SAFETY: init is single-threaded: its helpers are processes, never threads.
    let spawned = unsafe { berth_runtime::spawn(&spec) }.map_err(|e| e.to_string())?;
    c.exec_defaults = Some(ExecDefaults::of(&spec));
    // The parent's write ends close with `spec`, so the streams end when the container does.
    drop(spec);
    c.streams = vec![LogStream::new(stdout_read), LogStream::new(stderr_read)];
    Ok(spawned.pid)
}
