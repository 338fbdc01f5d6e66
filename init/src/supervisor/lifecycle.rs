//! A container's life as data: its [`State`], the [`Input`]s that move it, and [`step`], a
//! pure function from (state, input) to the next state and the [`Effect`]s the supervisor
//! then performs (signals, spawns, events). No kernel, no clock: time comes in with the
//! input, so every transition is unit-tested below.
//!
//! ```text
//!            Spawned                    Stop                    Exited (then = stay)
//! Waiting ───────────▶ Running ─────────────────▶ Stopping ──────────────────────▶ Stopped
//!    ▲                  │   ▲                     │  │ Tick ≥ kill_at: Kill
//!    │                  │   │ Spawned             │  └ Tick ≥ give_up_at: Stuck ──▶ Stopped
//!    │                  │   │                     │
//!    │       Exited     ▼   │   Tick ≥ until      │ Exited (then = restart)
//!    │  (restart in d) BackingOff ◀───────────────┘
//!    └── Stop (then = restart) of a container that is not running
//! ```
//! A stop never blocks: the stop signal goes at once, SIGKILL (to the first process and to
//! everything in the container's cgroup) when the grace period ends, and past a final
//! deadline the container is reported stuck and counted as stopped, so neither an operator's
//! `stop` nor a shutdown waits on a process that does not die.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

/// How long after SIGKILL a container may take to be reaped before it is reported stuck
/// (a process in uninterruptible sleep on a dead NFS server, a kernel bug).
pub const KILL_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Declared, waiting for its dependencies or its image.
    Waiting,
    Running {
        pid: Pid,
        since: Instant,
    },
    /// Sent its stop signal; `then` says what follows its exit.
    Stopping {
        pid: Pid,
        since: Instant,
        stop: Stop,
    },
    BackingOff {
        until: Instant,
    },
    /// Will not run again unless an operator starts it.
    Stopped,
}

/// A stop under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    pub then: Then,
    /// SIGKILL when the grace period ends.
    pub kill_at: Instant,
    /// Reported stuck if it has not exited by then.
    pub give_up_at: Instant,
    pub killed: bool,
}

/// What a stop leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Start again at once (`restart`, an unhealthy container).
    Restart,
    /// Stay stopped, for this reason.
    Stay(Reason),
}

/// Why a container stopped for good: the `reason` of its `stopped` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Operator,
    Shutdown,
    Apply,
    Exited,
    RestartLimit,
    DependencyFailed,
    MountFailed,
    StopStuck,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Operator => "operator",
            Reason::Shutdown => "shutdown",
            Reason::Apply => "apply",
            Reason::Exited => "exited",
            Reason::RestartLimit => "restart-limit",
            Reason::DependencyFailed => "dependency-failed",
            Reason::MountFailed => "mount-failed",
            Reason::StopStuck => "stop-stuck",
        }
    }
}

/// The restart policy's answer for a run that ended without being asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    RestartIn(Duration),
    Stay(Reason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Its first process started.
    Spawned { pid: Pid, at: Instant },
    /// Its first process exited (or its start failed) with `code`.
    Exited {
        code: i32,
        verdict: Verdict,
        at: Instant,
    },
    /// Asked to stop, with its grace period.
    Stop {
        then: Then,
        grace: Duration,
        at: Instant,
    },
    /// Time passed: timers that are due fire.
    Tick { at: Instant },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Send the container's stop signal to its first process (and announce it).
    SendStopSignal { pid: Pid, grace: Duration },
    /// SIGKILL the first process and everything else in the container's cgroup.
    Kill { pid: Pid },
    /// Start it (again); the outcome comes back as `Spawned` or `Exited`.
    Spawn,
    /// The run ended: the `exited` event, with the delay to the next start if there is one.
    ReportExited {
        code: i32,
        ran: Duration,
        next_in: Option<Duration>,
    },
    /// The `stopped` event.
    ReportStopped(Reason),
    /// The `stop-stuck` event: `pid` outlived SIGKILL by [`KILL_WAIT`].
    ReportStuck { pid: Pid },
}

/// The next state and what to do to get there.
pub fn step(state: State, input: Input) -> (State, Vec<Effect>) {
    match (state, input) {
        (_, Input::Spawned { pid, at }) => (State::Running { pid, since: at }, Vec::new()),
        (State::Stopped, Input::Exited { .. }) => (State::Stopped, Vec::new()),
        (state, Input::Exited { code, verdict, at }) => exited(state, code, verdict, at),
        (state, Input::Stop { then, grace, at }) => stop(state, then, grace, at),
        (state, Input::Tick { at }) => tick(state, at),
    }
}

fn exited(state: State, code: i32, verdict: Verdict, at: Instant) -> (State, Vec<Effect>) {
    let ran = match state {
        State::Running { since, .. } | State::Stopping { since, .. } => {
            at.saturating_duration_since(since)
        }
        _ => Duration::ZERO,
    };
    // A stop asked for decides what follows, not the restart policy.
    let verdict = match state {
        State::Stopping { stop, .. } => match stop.then {
            Then::Restart => Verdict::RestartIn(Duration::ZERO),
            Then::Stay(reason) => Verdict::Stay(reason),
        },
        _ => verdict,
    };
    match verdict {
        Verdict::RestartIn(delay) => (
            State::BackingOff { until: at + delay },
            vec![Effect::ReportExited {
                code,
                ran,
                next_in: Some(delay),
            }],
        ),
        Verdict::Stay(reason) => (
            State::Stopped,
            vec![
                Effect::ReportExited {
                    code,
                    ran,
                    next_in: None,
                },
                Effect::ReportStopped(reason),
            ],
        ),
    }
}

fn stop(state: State, then: Then, grace: Duration, at: Instant) -> (State, Vec<Effect>) {
    match (state, then) {
        (State::Running { pid, since }, then) => (
            State::Stopping {
                pid,
                since,
                stop: Stop {
                    then,
                    kill_at: at + grace,
                    give_up_at: at + grace + KILL_WAIT,
                    killed: false,
                },
            },
            vec![Effect::SendStopSignal { pid, grace }],
        ),
        // Already stopping: staying stopped wins over a restart; the timers run on.
        (State::Stopping { pid, since, stop }, then) => {
            let then = match (stop.then, then) {
                (Then::Stay(reason), _) | (Then::Restart, Then::Stay(reason)) => Then::Stay(reason),
                (Then::Restart, Then::Restart) => Then::Restart,
            };
            (
                State::Stopping {
                    pid,
                    since,
                    stop: Stop { then, ..stop },
                },
                Vec::new(),
            )
        }
        (State::Stopped, Then::Stay(_)) => (State::Stopped, Vec::new()),
        (State::Waiting | State::BackingOff { .. }, Then::Stay(reason)) => {
            (State::Stopped, vec![Effect::ReportStopped(reason)])
        }
        // A restart of a container that does not run starts it.
        (State::Waiting | State::BackingOff { .. } | State::Stopped, Then::Restart) => {
            (State::Waiting, Vec::new())
        }
    }
}

fn tick(state: State, at: Instant) -> (State, Vec<Effect>) {
    match state {
        State::Stopping { pid, stop, .. } if at >= stop.give_up_at => (
            State::Stopped,
            vec![
                Effect::ReportStuck { pid },
                Effect::ReportStopped(Reason::StopStuck),
            ],
        ),
        State::Stopping { pid, since, stop } if !stop.killed && at >= stop.kill_at => (
            State::Stopping {
                pid,
                since,
                stop: Stop {
                    killed: true,
                    ..stop
                },
            },
            vec![Effect::Kill { pid }],
        ),
        State::BackingOff { until } if at >= until => (state, vec![Effect::Spawn]),
        _ => (state, Vec::new()),
    }
}

/// When `state` next needs a `Tick`.
pub fn deadline(state: State) -> Option<Instant> {
    match state {
        State::Stopping { stop, .. } if stop.killed => Some(stop.give_up_at),
        State::Stopping { stop, .. } => Some(stop.kill_at),
        State::BackingOff { until } => Some(until),
        _ => None,
    }
}

#[cfg(test)]
#[expect(clippy::panic, reason = "tests")]
mod tests {
    use super::*;

    const PID: Pid = Pid::from_raw(42);
    const GRACE: Duration = Duration::from_secs(10);

    fn t0() -> Instant {
        Instant::now()
    }

    fn running(at: Instant) -> State {
        State::Running {
            pid: PID,
            since: at,
        }
    }

    fn stop_input(then: Then, at: Instant) -> Input {
        Input::Stop {
            then,
            grace: GRACE,
            at,
        }
    }

    fn stopping(at: Instant, then: Then) -> State {
        step(running(at), stop_input(then, at)).0
    }

    #[test]
    fn spawned_runs_from_waiting_or_backing_off() {
        let at = t0();
        for from in [State::Waiting, State::BackingOff { until: at }] {
            let (next, effects) = step(from, Input::Spawned { pid: PID, at });
            assert_eq!(next, running(at));
            assert!(effects.is_empty());
        }
    }

    #[test]
    fn an_exit_the_policy_restarts_backs_off() {
        let at = t0();
        let later = at + Duration::from_secs(3);
        let (next, effects) = step(
            running(at),
            Input::Exited {
                code: 1,
                verdict: Verdict::RestartIn(Duration::from_secs(2)),
                at: later,
            },
        );
        assert_eq!(
            next,
            State::BackingOff {
                until: later + Duration::from_secs(2)
            }
        );
        assert_eq!(
            effects,
            [Effect::ReportExited {
                code: 1,
                ran: Duration::from_secs(3),
                next_in: Some(Duration::from_secs(2))
            }]
        );
    }

    #[test]
    fn an_exit_the_policy_keeps_stopped_stops() {
        let at = t0();
        let (next, effects) = step(
            running(at),
            Input::Exited {
                code: 0,
                verdict: Verdict::Stay(Reason::Exited),
                at,
            },
        );
        assert_eq!(next, State::Stopped);
        assert_eq!(
            effects,
            [
                Effect::ReportExited {
                    code: 0,
                    ran: Duration::ZERO,
                    next_in: None
                },
                Effect::ReportStopped(Reason::Exited)
            ]
        );
    }

    #[test]
    fn a_failed_start_goes_by_the_policy_too() {
        let at = t0();
        let (next, effects) = step(
            State::Waiting,
            Input::Exited {
                code: 127,
                verdict: Verdict::RestartIn(Duration::from_millis(100)),
                at,
            },
        );
        assert_eq!(
            next,
            State::BackingOff {
                until: at + Duration::from_millis(100)
            }
        );
        assert_eq!(effects.len(), 1);
    }

    #[test]
    fn a_stop_signals_and_sets_both_timers() {
        let at = t0();
        let (next, effects) = step(running(at), stop_input(Then::Stay(Reason::Operator), at));
        assert_eq!(
            next,
            State::Stopping {
                pid: PID,
                since: at,
                stop: Stop {
                    then: Then::Stay(Reason::Operator),
                    kill_at: at + GRACE,
                    give_up_at: at + GRACE + KILL_WAIT,
                    killed: false,
                }
            }
        );
        assert_eq!(
            effects,
            [Effect::SendStopSignal {
                pid: PID,
                grace: GRACE
            }]
        );
        assert_eq!(deadline(next), Some(at + GRACE));
    }

    #[test]
    fn the_grace_period_ends_in_one_kill() {
        let at = t0();
        let state = stopping(at, Then::Stay(Reason::Shutdown));
        let (same, nothing) = step(state, Input::Tick { at: at + GRACE / 2 });
        assert_eq!(same, state);
        assert!(nothing.is_empty());
        let (killed, effects) = step(state, Input::Tick { at: at + GRACE });
        assert_eq!(effects, [Effect::Kill { pid: PID }]);
        assert_eq!(deadline(killed), Some(at + GRACE + KILL_WAIT));
        let (again, none) = step(killed, Input::Tick { at: at + GRACE });
        assert_eq!(again, killed);
        assert!(none.is_empty(), "SIGKILL goes once");
    }

    #[test]
    fn a_process_that_outlives_the_kill_is_reported_stuck_and_counted_stopped() {
        let at = t0();
        let killed = step(
            stopping(at, Then::Stay(Reason::Shutdown)),
            Input::Tick { at: at + GRACE },
        )
        .0;
        let (next, effects) = step(
            killed,
            Input::Tick {
                at: at + GRACE + KILL_WAIT,
            },
        );
        assert_eq!(next, State::Stopped);
        assert_eq!(
            effects,
            [
                Effect::ReportStuck { pid: PID },
                Effect::ReportStopped(Reason::StopStuck)
            ]
        );
        assert_eq!(deadline(next), None);
    }

    #[test]
    fn the_exit_of_a_stop_follows_its_then_not_the_policy() {
        let at = t0();
        let exit = |state| {
            step(
                state,
                Input::Exited {
                    code: 143,
                    verdict: Verdict::RestartIn(Duration::from_secs(60)),
                    at,
                },
            )
        };
        let (next, effects) = exit(stopping(at, Then::Stay(Reason::Operator)));
        assert_eq!(next, State::Stopped);
        assert_eq!(
            effects.last(),
            Some(&Effect::ReportStopped(Reason::Operator))
        );
        let (next, _) = exit(stopping(at, Then::Restart));
        assert_eq!(next, State::BackingOff { until: at });
    }

    #[test]
    fn staying_stopped_wins_over_a_restart_while_stopping() {
        let at = t0();
        let restarting = stopping(at, Then::Restart);
        let (next, effects) = step(restarting, stop_input(Then::Stay(Reason::Shutdown), at));
        assert!(effects.is_empty(), "no second stop signal");
        let State::Stopping { stop, .. } = next else {
            panic!("{next:?}")
        };
        assert_eq!(stop.then, Then::Stay(Reason::Shutdown));
        let (next, _) = step(next, stop_input(Then::Restart, at));
        let State::Stopping { stop, .. } = next else {
            panic!("{next:?}")
        };
        assert_eq!(stop.then, Then::Stay(Reason::Shutdown));
    }

    #[test]
    fn a_stop_of_a_container_that_does_not_run_is_immediate() {
        let at = t0();
        for from in [State::Waiting, State::BackingOff { until: at }] {
            let (next, effects) = step(from, stop_input(Then::Stay(Reason::Apply), at));
            assert_eq!(next, State::Stopped);
            assert_eq!(effects, [Effect::ReportStopped(Reason::Apply)]);
        }
        let (next, effects) = step(State::Stopped, stop_input(Then::Stay(Reason::Shutdown), at));
        assert_eq!(next, State::Stopped);
        assert!(effects.is_empty(), "stopped once is reported once");
    }

    #[test]
    fn a_restart_of_a_container_that_does_not_run_starts_it() {
        let at = t0();
        for from in [
            State::Waiting,
            State::BackingOff { until: at },
            State::Stopped,
        ] {
            assert_eq!(
                step(from, stop_input(Then::Restart, at)),
                (State::Waiting, Vec::new())
            );
        }
    }

    #[test]
    fn backing_off_spawns_when_due() {
        let at = t0();
        let state = State::BackingOff {
            until: at + Duration::from_secs(1),
        };
        assert!(step(state, Input::Tick { at }).1.is_empty());
        assert_eq!(
            step(
                state,
                Input::Tick {
                    at: at + Duration::from_secs(1)
                }
            )
            .1,
            [Effect::Spawn]
        );
        assert_eq!(deadline(state), Some(at + Duration::from_secs(1)));
    }

    #[test]
    fn a_late_exit_of_a_stopped_container_changes_nothing() {
        let at = t0();
        let (next, effects) = step(
            State::Stopped,
            Input::Exited {
                code: 137,
                verdict: Verdict::RestartIn(Duration::ZERO),
                at,
            },
        );
        assert_eq!(next, State::Stopped);
        assert!(effects.is_empty());
    }

    #[test]
    fn waiting_and_running_have_no_timer() {
        let at = t0();
        assert_eq!(deadline(State::Waiting), None);
        assert_eq!(deadline(running(at)), None);
        assert_eq!(step(running(at), Input::Tick { at }).0, running(at));
    }

    #[test]
    fn reasons_keep_their_event_names() {
        let names: Vec<&str> = [
            Reason::Operator,
            Reason::Shutdown,
            Reason::Apply,
            Reason::Exited,
            Reason::RestartLimit,
            Reason::DependencyFailed,
            Reason::MountFailed,
            Reason::StopStuck,
        ]
        .map(Reason::as_str)
        .to_vec();
        assert_eq!(
            names,
            [
                "operator",
                "shutdown",
                "apply",
                "exited",
                "restart-limit",
                "dependency-failed",
                "mount-failed",
                "stop-stuck"
            ]
        );
    }
}
