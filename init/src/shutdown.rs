//! Orderly shutdown: stop every process, flush and unmount, then ask the kernel to power off,
//! reboot or halt. Each phase is logged with its duration.

use std::fmt;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::event::Event;
use crate::watchdog::Watchdog;

/// How long to wait for SIGKILLed processes to be reaped.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// Pause between reaping rounds while waiting for processes to exit.
const REAP_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How long the last console lines (`shutdown-complete`) may take to leave before `reboot(2)`.
const CONSOLE_DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownAction {
    PowerOff,
    Reboot,
    Halt,
}

impl ShutdownAction {
    fn reboot_mode(self) -> RebootMode {
        match self {
            ShutdownAction::PowerOff => RebootMode::RB_POWER_OFF,
            ShutdownAction::Reboot => RebootMode::RB_AUTOBOOT,
            ShutdownAction::Halt => RebootMode::RB_HALT_SYSTEM,
        }
    }
}

impl fmt::Display for ShutdownAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShutdownAction::PowerOff => "poweroff",
            ShutdownAction::Reboot => "reboot",
            ShutdownAction::Halt => "halt",
        })
    }
}

/// Reaps every exited child without blocking; whether children are left.
pub fn reap_exited() -> bool {
    crate::reap::reap_exited().children_left
}

/// Sends `signal` to every process but PID 1 and waits, reaping, until none is left or
/// `grace` runs out. Returns whether processes remain.
/// The watchdog, when armed, is fed while it waits.
fn signal_all_and_wait(signal: Signal, grace: Duration, watchdog: &mut Option<Watchdog>) -> bool {
    match kill(Pid::from_raw(-1), signal) {
        // ESRCH: there was nobody to signal.
        Err(Errno::ESRCH) => return false,
        Err(err) => log::warn!("shutdown: cannot send {signal} to all processes: {err}"),
        Ok(()) => {}
    }
    let deadline = Instant::now() + grace;
    loop {
        if let Some(watchdog) = watchdog.as_mut() {
            watchdog.tick(Instant::now());
        }
        if !reap_exited() {
            return false;
        }
        if Instant::now() >= deadline {
            return true;
        }
        sleep(REAP_POLL_INTERVAL);
    }
}

fn phase<T>(name: &str, work: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = work();
    Event::new("shutdown-phase")
        .field("phase", name)
        .field("duration_ms", started.elapsed().as_millis())
        .emit();
    result
}

/// Says a shutdown begins; the containers stop after this, then [`shutdown`] runs.
pub fn announce(action: ShutdownAction, reason: &str) {
    Event::new("shutdown")
        .field("action", action)
        .field("reason", reason)
        .emit();
}

/// Runs the rest of the shutdown sequence and hands the machine to the kernel. Never
/// returns: if the kernel refuses, PID 1 stays alive and idle rather than exit (which would
/// panic the kernel). The watchdog is fed through the phases, so a shutdown that hangs is
/// still reset, and disarmed just before the end, so a halted host is not.
pub fn shutdown(
    action: ShutdownAction,
    started: Instant,
    terminate_grace: Duration,
    mut watchdog: Option<Watchdog>,
) -> ! {
    let survivors = phase("terminate", || {
        signal_all_and_wait(Signal::SIGTERM, terminate_grace, &mut watchdog)
    });
    if survivors {
        phase("kill", || {
            signal_all_and_wait(Signal::SIGKILL, KILL_GRACE, &mut watchdog)
        });
    }
    // The RTC keeps the network's time for the next boot; a clock never set from the network
    // is not written back (it is the RTC's own time, or the floor).
    if std::path::Path::new(crate::supervisor::TIME_SYNCED_MARKER).exists() {
        if let Err(err) = berth_netd::rtc::write_system_time() {
            log::warn!("shutdown: cannot write the time back to the RTC: {err}");
        }
    }
    phase("sync", nix::unistd::sync);
    let (unmounted, kept) = phase("unmount", crate::mounts::unmount_all);
    for mount in &kept {
        log::warn!("shutdown: could not unmount {mount}");
    }
    nix::unistd::sync();
    if let Some(watchdog) = watchdog {
        watchdog.disarm();
    }
    Event::new("shutdown-complete")
        .field("action", action)
        .field("unmounted", unmounted)
        .field("duration_ms", started.elapsed().as_millis())
        .emit();
    // The console is written without blocking: give the last lines a moment to get out.
    crate::logger::drain_console(CONSOLE_DRAIN);
    let err = match reboot(action.reboot_mode()) {
        Err(err) => err,
        Ok(never) => match never {},
    };
    log::error!("the kernel refused to {action}: {err}; staying up with nothing running");
    loop {
        nix::unistd::pause();
        reap_exited();
    }
}
