//! Docker's restart semantics, as pure functions of what happened.

use std::time::Duration;

use berth_manifest::RestartPolicy;

/// The first restart delay.
pub const INITIAL_DELAY: Duration = Duration::from_millis(100);
/// The delay doubles up to this.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// A run at least this long resets the delay to [`INITIAL_DELAY`].
pub const RESET_AFTER: Duration = Duration::from_secs(10);

/// The restart delay of one container: 100 ms, doubling to 1 min, reset by a long run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::starting_at(INITIAL_DELAY)
    }
}

impl Backoff {
    /// A backoff whose first delay is `first` (a container's `restart_delay`); zero restarts
    /// at once every time.
    pub fn starting_at(first: Duration) -> Backoff {
        Backoff { first, next: first }
    }

    /// The delay before the restart that follows a run of `run_lasted`.
    pub fn delay_after(&mut self, run_lasted: Duration) -> Duration {
        if run_lasted >= RESET_AFTER {
            self.next = self.first;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_DELAY);
        delay
    }
}

/// Whether a container that exited with `code` after `restarts` restarts is started again.
pub fn should_restart(
    policy: RestartPolicy,
    code: i32,
    restarts: u32,
    stopped_by_operator: bool,
) -> bool {
    // Docker: a container an operator stopped stays stopped until an operator starts it.
    if stopped_by_operator {
        return false;
    }
    match policy {
        RestartPolicy::No => false,
        RestartPolicy::Always => true,
        RestartPolicy::UnlessStopped => true,
        RestartPolicy::OnFailure { max_restarts } => {
            code != 0 && max_restarts.is_none_or(|max| restarts < max)
        }
    }
}

/// Operator stops are remembered on the state directory (the data partition when there is
/// one), so an `unless-stopped` container stays stopped after a reboot, as with Docker.
const OPERATOR_STOPPED_DIR: &str = "/var/lib/berth/operator-stopped";

pub fn remember_operator_stop(name: &str, stopped: bool) {
    let path = std::path::Path::new(OPERATOR_STOPPED_DIR).join(name);
    let result = if stopped {
        std::fs::create_dir_all(OPERATOR_STOPPED_DIR).and_then(|()| std::fs::write(&path, ""))
    } else {
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    };
    if let Err(err) = result {
        log::warn!("cannot record the operator's stop of {name}: {err}");
    }
}

pub fn was_stopped_by_operator(name: &str) -> bool {
    std::path::Path::new(OPERATOR_STOPPED_DIR)
        .join(name)
        .exists()
}

/// Docker's exit code: the process' own, or 128 + the signal that killed it.
pub fn exit_code(status: nix::sys::wait::WaitStatus) -> Option<i32> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_restart_delay_restarts_at_once_every_time() {
        let mut backoff = Backoff::starting_at(Duration::ZERO);
        for _ in 0..5 {
            assert_eq!(
                backoff.delay_after(Duration::from_millis(5)),
                Duration::ZERO
            );
        }
        let mut backoff = Backoff::starting_at(Duration::from_secs(1));
        assert_eq!(backoff.delay_after(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(backoff.delay_after(Duration::ZERO), Duration::from_secs(2));
        assert_eq!(backoff.delay_after(RESET_AFTER), Duration::from_secs(1));
    }

    #[test]
    fn delays_double_to_a_minute_and_reset_after_a_long_run() {
        let mut backoff = Backoff::default();
        let short = Duration::from_millis(10);
        let delays: Vec<u128> = (0..12)
            .map(|_| backoff.delay_after(short).as_millis())
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 60000, 60000]
        );
        assert_eq!(backoff.delay_after(RESET_AFTER), INITIAL_DELAY);
        assert_eq!(backoff.delay_after(short), Duration::from_millis(200));
    }

    #[test]
    fn policies() {
        let on_failure_3 = RestartPolicy::OnFailure {
            max_restarts: Some(3),
        };
        assert!(should_restart(on_failure_3, 1, 2, false));
        assert!(!should_restart(on_failure_3, 1, 3, false));
        assert!(!should_restart(on_failure_3, 0, 0, false));
        assert!(should_restart(
            RestartPolicy::OnFailure { max_restarts: None },
            2,
            1000,
            false
        ));
        assert!(!should_restart(RestartPolicy::Always, 0, 0, true));
        assert!(!should_restart(RestartPolicy::UnlessStopped, 0, 0, true));
        assert!(should_restart(RestartPolicy::UnlessStopped, 0, 0, false));
        assert!(!should_restart(RestartPolicy::No, 1, 0, false));
    }
}
