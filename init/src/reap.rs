//! Reaping: PID 1 collects every exited child, its own and the orphans re-parented to it.

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// What one round of reaping found.
#[derive(Debug, Default)]
pub struct Reaped {
    /// Exited children with their status.
    pub exited: Vec<(Pid, WaitStatus)>,
    /// Whether children remain (running).
    pub children_left: bool,
}

/// Reaps every exited child without blocking.
pub fn reap_exited() -> Reaped {
    let mut reaped = Reaped::default();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                reaped.children_left = true;
                return reaped;
            }
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    reaped.exited.push((pid, status));
                }
            }
            Err(Errno::EINTR) => {}
            // ECHILD: no children at all.
            Err(_) => return reaped,
        }
    }
}

/// Exits reaped where their owner could not be told (a container's stop loop reaps
/// everything); the event loop hands them on at its next turn.
static DEFERRED: std::sync::Mutex<Vec<(Pid, WaitStatus)>> = std::sync::Mutex::new(Vec::new());

pub fn defer(pid: Pid, status: WaitStatus) {
    if let Ok(mut deferred) = DEFERRED.lock() {
        deferred.push((pid, status));
    }
}

pub fn take_deferred() -> Vec<(Pid, WaitStatus)> {
    DEFERRED
        .lock()
        .map(|mut d| std::mem::take(&mut *d))
        .unwrap_or_default()
}
