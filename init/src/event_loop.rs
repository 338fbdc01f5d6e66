//! PID 1's event loop: signals (reaping, shutdown requests) and the power button.
//!
//! One thread, one `poll(2)`. Each turn runs under `catch_unwind`, so a bug that panics in
//! one turn is logged and the next turn goes on; PID 1 itself never unwinds out.
//!
//! Nothing in a turn waits on output: each container stream is read at most its budget per
//! turn (level-triggered `poll` brings back one that still holds bytes), and console lines
//! wait in the logger's bounded queue, which the loop writes whenever the console is writable.

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;

use crate::cmdline::{BootParams, ButtonAction};
use crate::coldplug::Coldplug;
use crate::control::{Control, Slot};
use crate::event::Event;
use crate::logger;
use crate::power_button::{self, PowerButton};
use crate::reap;
use crate::services::Service;
use crate::shutdown::{self, ShutdownAction};
use crate::signals::{self, SignalAction};
use crate::supervisor::{StreamId, Supervisor};
use crate::update::{Trial, TrialStep};
use crate::watchdog::Watchdog;

/// How long after boot init keeps looking for a power button that has not appeared yet
/// (drivers may probe late, after deferred probing).
const POWER_BUTTON_SEARCH: Duration = Duration::from_secs(30);
/// How often it looks meanwhile.
const POWER_BUTTON_RESCAN: Duration = Duration::from_millis(500);
/// Pause after a panicking turn, so a bug that panics every turn cannot spin the CPU.
const PANIC_BACKOFF: Duration = Duration::from_millis(100);
/// What a poll slot belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Signals,
    Uevents,
    Console,
    /// A power button, by its index in `buttons` this turn.
    Button(usize),
    Stream(StreamId),
    Control(Slot),
}

/// A shutdown under way: the containers stop while the loop goes on serving.
#[derive(Debug, Clone, Copy)]
struct ShuttingDown {
    action: ShutdownAction,
    started: Instant,
    /// The stop phase's bound: past it the shutdown goes on whatever still runs.
    until: Instant,
}

#[derive(Debug)]
pub struct EventLoop {
    signals: SignalFd,
    buttons: Vec<PowerButton>,
    search_until: Instant,
    supervisor: Option<Supervisor>,
    power_button: ButtonAction,
    shutdown_timeout: Duration,
    coldplug: Option<Coldplug>,
    services: Vec<Service>,
    control: Control,
    shutting_down: Option<ShuttingDown>,
    /// The booted slot's update trial, if it is on one.
    trial: Trial,
    /// The armed hardware watchdog, fed on its own deadline every turn.
    watchdog: Option<Watchdog>,
}

impl EventLoop {
    pub fn new(signals: SignalFd, params: &BootParams, coldplug: Option<Coldplug>) -> EventLoop {
        let mut event_loop = EventLoop {
            signals,
            buttons: Vec::new(),
            search_until: Instant::now() + POWER_BUTTON_SEARCH,
            supervisor: None,
            power_button: params.power_button,
            shutdown_timeout: params.shutdown_timeout,
            coldplug,
            services: Vec::new(),
            control: Control::new(),
            shutting_down: None,
            trial: Trial::start(params.slot.as_deref()),
            watchdog: None,
        };
        event_loop.look_for_power_buttons();
        event_loop
    }

    pub fn power_buttons(&self) -> impl Iterator<Item = &PowerButton> {
        self.buttons.iter()
    }

    fn look_for_power_buttons(&mut self) {
        let known: HashSet<String> = self.buttons.iter().map(|b| b.node.clone()).collect();
        for button in power_button::find_new(Path::new(power_button::SYS_CLASS_INPUT), &known) {
            log::info!("power button: {} ({})", button.node, button.name);
            self.buttons.push(button);
        }
    }

    /// Takes a started service (netd) that the loop restarts whenever it exits.
    pub fn adopt_service(&mut self, service: Service) {
        self.services.push(service);
    }

    /// Takes the armed watchdog: the loop feeds it until the shutdown disarms it.
    pub fn feed_watchdog(&mut self, watchdog: Watchdog) {
        self.watchdog = Some(watchdog);
    }

    /// Hands the containers to the loop; they start on its first turn.
    pub fn supervise(&mut self, supervisor: Supervisor) {
        self.supervisor = Some(supervisor);
    }

    /// Serves events until a shutdown is asked for, then goes on serving while the
    /// containers stop, then shuts down. Never returns.
    pub fn serve(mut self) -> ! {
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.turn())) {
                Ok(Some((action, reason))) if self.shutting_down.is_none() => {
                    self.begin_shutdown(action, reason)
                }
                // Asked again while shutting down: the first request stands.
                Ok(_) => {}
                Err(_) => {
                    log::error!("an event loop turn panicked; carrying on");
                    std::thread::sleep(PANIC_BACKOFF);
                }
            }
            if let Some(shutting_down) = self.shutting_down {
                let stopped = self.supervisor.as_ref().is_none_or(Supervisor::all_stopped);
                if stopped || Instant::now() >= shutting_down.until {
                    if !stopped {
                        log::warn!(
                            "containers still live at the stop phase's bound; shutting down"
                        );
                    }
                    let timeout = self.shutdown_timeout;
                    let watchdog = self.watchdog.take();
                    drop(self);
                    shutdown::shutdown(
                        shutting_down.action,
                        shutting_down.started,
                        timeout,
                        watchdog,
                    )
                }
            }
        }
    }

    /// Containers go first, each with its own stop signal and grace period, in parallel as
    /// their dependencies allow; the generic SIGTERM/SIGKILL sweep then takes what is left.
    fn begin_shutdown(&mut self, action: ShutdownAction, reason: &'static str) {
        let started = Instant::now();
        shutdown::announce(action, reason);
        let bound = self
            .supervisor
            .as_ref()
            .map_or(Duration::ZERO, Supervisor::stop_phase_bound);
        self.shutting_down = Some(ShuttingDown {
            action,
            started,
            until: started + bound,
        });
        if let Some(supervisor) = self.supervisor.as_mut() {
            let stopping = catch_unwind(AssertUnwindSafe(|| supervisor.begin_shutdown(started)));
            if stopping.is_err() {
                log::error!("stopping the containers panicked; going on with shutdown");
                self.supervisor = None;
            }
        }
    }

    /// One wait for events and their handling; `Some` when the host must shut down.
    fn turn(&mut self) -> Option<(ShutdownAction, &'static str)> {
        // First: a turn that panics below has fed it all the same.
        if let Some(watchdog) = self.watchdog.as_mut() {
            watchdog.tick(Instant::now());
        }
        for service in &mut self.services {
            service.tick(Instant::now());
        }
        if let Some(supervisor) = self.supervisor.as_mut() {
            supervisor.tick(Instant::now());
        }
        let searching = self.buttons.is_empty() && Instant::now() < self.search_until;
        let timeout = self.poll_timeout(searching);
        let ready = self.poll_ready(timeout);
        let mut request = None;
        let mut streams: Vec<StreamId> = Vec::new();
        let mut control_ready: Vec<Slot> = Vec::new();
        for token in ready {
            match token {
                Token::Signals => {
                    if let Some(asked) = self.handle_signals() {
                        request.get_or_insert(asked);
                    }
                }
                Token::Uevents => {
                    if let Some(coldplug) = self.coldplug.as_mut() {
                        coldplug.on_uevents();
                    }
                }
                // Written below, whether or not it was ready.
                Token::Console => {}
                Token::Button(index) => {
                    let pressed = self.buttons.get_mut(index).is_some_and(|b| b.pressed());
                    if pressed {
                        match self.power_button {
                            ButtonAction::Shutdown(action) => {
                                request.get_or_insert((action, "power-button"));
                            }
                            ButtonAction::Ignore => log::info!(
                                "power button pressed; ignored (berth.power_button=ignore)"
                            ),
                        }
                    }
                }
                Token::Stream(id) => streams.push(id),
                Token::Control(slot) => control_ready.push(slot),
            }
        }
        // A removed button polls ready forever: stop watching it (after this turn's tokens,
        // which name buttons by index, were handled).
        self.buttons.retain(|button| match &button.gone {
            Some(err) => {
                log::warn!(
                    "power button {} ({}) is gone ({err}); no longer watched",
                    button.node,
                    button.name
                );
                false
            }
            None => true,
        });
        if let Some(supervisor) = self.supervisor.as_mut() {
            // Highest index first: a stream that ends is removed, shifting those after it.
            streams.sort_unstable();
            for id in streams.into_iter().rev() {
                supervisor.on_stream_ready(id);
            }
        }
        if let Some(asked) = self
            .control
            .on_ready(&control_ready, self.supervisor.as_mut())
        {
            request.get_or_insert(asked);
        }
        self.control.after_turn(self.supervisor.as_ref());
        if let Some(asked) = self.advance_trial() {
            request.get_or_insert(asked);
        }
        // Whether or not the console slot was ready: this turn's lines leave now if they can
        // (a flush with nothing queued costs nothing).
        if let Some(lines) = logger::flush_console().filter(|lines| *lines > 0) {
            Event::new("console-dropped").field("lines", lines).emit();
        }
        if searching {
            self.look_for_power_buttons();
            if self.buttons.is_empty() && Instant::now() >= self.search_until {
                log::warn!(
                    "no power button found after {} s; the host powers off only by signal",
                    POWER_BUTTON_SEARCH.as_secs()
                );
            }
        }
        request
    }

    /// Polls every event source for up to `timeout`; the tokens of those that are ready.
    /// Each source is named by its token, not by its place in the poll set, so a source
    /// that comes or goes between turns cannot make another's readiness be misread.
    fn poll_ready(&self, timeout: PollTimeout) -> Vec<Token> {
        let mut tokens = vec![Token::Signals];
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        if let Some(uevents) = self.coldplug.as_ref().and_then(Coldplug::fd) {
            tokens.push(Token::Uevents);
            fds.push(PollFd::new(uevents, PollFlags::POLLIN));
        }
        // Polled for POLLOUT only while lines wait for it. Flushing once per turn alone would
        // not do: a loop asleep in `poll` with lines queued would leave them there until some
        // other event woke it.
        if let Some(console) = logger::pending_console() {
            tokens.push(Token::Console);
            fds.push(PollFd::new(console, PollFlags::POLLOUT));
        }
        for (index, button) in self.buttons.iter().enumerate() {
            tokens.push(Token::Button(index));
            fds.push(PollFd::new(button.file.as_fd(), PollFlags::POLLIN));
        }
        if let Some(supervisor) = self.supervisor.as_ref() {
            for (id, fd) in supervisor.streams() {
                tokens.push(Token::Stream(id));
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
        }
        for (slot, fd, flags) in self.control.poll_fds() {
            tokens.push(Token::Control(slot));
            fds.push(PollFd::new(fd, flags));
        }
        match poll(&mut fds, timeout) {
            Ok(_) => tokens
                .into_iter()
                .zip(&fds)
                .filter(|(_, fd)| fd.revents().is_some_and(|r| !r.is_empty()))
                .map(|(token, _)| token)
                .collect(),
            Err(nix::errno::Errno::EINTR) => Vec::new(),
            Err(err) => {
                log::error!("poll failed: {err}");
                std::thread::sleep(PANIC_BACKOFF);
                Vec::new()
            }
        }
    }

    /// Blesses a slot on trial once the supervisor has proved it, or asks for a reboot when
    /// its commit timeout has passed (systemd-boot then counts the try).
    fn advance_trial(&mut self) -> Option<(ShutdownAction, &'static str)> {
        if !matches!(self.trial, Trial::Running { .. }) {
            return None;
        }
        // No manifest loaded proves nothing: the trial runs out and the try is counted.
        let unproven = self
            .supervisor
            .as_ref()
            .map_or_else(|| vec!["manifest".to_string()], Supervisor::unproven);
        match self.trial.step(unproven, Instant::now()) {
            TrialStep::Nothing => None,
            TrialStep::Bless(slot) => {
                self.trial = self.trial.bless(slot);
                None
            }
            TrialStep::Reboot { waiting_for } => {
                if let Trial::Running { slot, .. } = self.trial {
                    Event::new("update-commit-failed")
                        .field("slot", slot)
                        .field("reason", "commit-timeout")
                        .field("waiting_for", waiting_for.join(","))
                        .emit();
                }
                self.trial = Trial::Settled;
                Some((ShutdownAction::Reboot, "update-commit-timeout"))
            }
        }
    }

    /// Until the next timer: the power-button rescan while searching, the earliest restart.
    fn poll_timeout(&self, searching: bool) -> PollTimeout {
        let now = Instant::now();
        let rescan = searching.then_some(POWER_BUTTON_RESCAN);
        let restart = self
            .supervisor
            .as_ref()
            .and_then(Supervisor::next_deadline)
            .into_iter()
            .chain(self.services.iter().filter_map(Service::next_deadline))
            .chain(self.control.next_deadline())
            .chain(self.trial.next_deadline())
            .chain(self.shutting_down.map(|s| s.until))
            .chain(self.watchdog.as_ref().and_then(Watchdog::next_deadline))
            .min()
            .map(|deadline| deadline.saturating_duration_since(now));
        match rescan.into_iter().chain(restart).min() {
            // Round up so that a timer is never woken for a millisecond early.
            Some(wait) => {
                PollTimeout::try_from(wait + Duration::from_millis(1)).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        }
    }

    /// Hands an exited child to whoever started it: a service, the supervisor (containers
    /// and their health checks), or the control (`exec`); orphans need nothing more.
    fn dispatch_exit(
        &mut self,
        pid: nix::unistd::Pid,
        status: nix::sys::wait::WaitStatus,
        now: Instant,
    ) {
        let commit_timeout = self
            .supervisor
            .as_ref()
            .map_or(berth_manifest::DEFAULT_COMMIT_TIMEOUT, |s| {
                s.update_settings().commit_timeout()
            });
        if let Some(next) = self.trial.on_exit(pid, now, commit_timeout) {
            self.trial = next;
            return;
        }
        if self
            .services
            .iter_mut()
            .any(|s| s.on_exit(pid, status, now))
        {
            return;
        }
        if self
            .supervisor
            .as_mut()
            .is_some_and(|s| s.on_exit(pid, status, now))
        {
            return;
        }
        self.control.on_exit(pid, status);
    }

    fn handle_signals(&mut self) -> Option<(ShutdownAction, &'static str)> {
        let mut request = None;
        while let Ok(Some(info)) = self.signals.read_signal() {
            let Ok(signal) = Signal::try_from(i32::try_from(info.ssi_signo).unwrap_or(0)) else {
                continue;
            };
            match signals::action_for(signal) {
                SignalAction::Reap => {
                    let now = Instant::now();
                    for (pid, status) in reap::reap_exited().exited {
                        self.dispatch_exit(pid, status, now);
                    }
                }
                SignalAction::ControlPort => self.control.on_port_signal(),
                SignalAction::Shutdown(action) => {
                    log::info!("received {signal}: {action}");
                    request.get_or_insert((action, signal.as_str()));
                }
                SignalAction::Log => log::info!("received {signal}; nothing to do"),
            }
        }
        request
    }
}
