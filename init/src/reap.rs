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
