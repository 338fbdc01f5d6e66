//! Stopping containers without waiting for them: a stop is a request to the container's
//! state machine (stop signal now, SIGKILL after the grace period, give up after that), and
//! the callers (`berthctl stop`, `apply`, a shutdown) learn that it is over by asking
//! [`Supervisor::settled`] or [`Supervisor::all_stopped`] on a later turn.
//!
//! At shutdown every container stops as soon as no live container depends on it, so
//! independent containers stop in parallel and dependants still stop before their
//! dependencies.

use std::time::{Duration, Instant};

use super::lifecycle::{self, Input, Reason, State, Then};
use super::Supervisor;

impl Supervisor {
    /// Asks container `index` to stop; `why` is the `reason` of its `stopping` event.
    pub(super) fn request_stop(
        &mut self,
        index: usize,
        then: Then,
        why: &'static str,
        now: Instant,
    ) {
        let Some(c) = self.containers.get_mut(index) else {
            return;
        };
        c.stop_why = why;
        let grace = c.config.stop_grace();
        self.drive(
            index,
            Input::Stop {
                then,
                grace,
                at: now,
            },
        );
    }

    /// Begins the shutdown: nothing starts any more, and the containers stop as their
    /// dependants allow (see [`Supervisor::tick`]). The event loop goes on serving until
    /// [`Supervisor::all_stopped`].
    pub fn begin_shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        self.advance(now);
    }

    /// One shutdown round: containers that do not run are done; those that run stop once
    /// nothing live depends on them.
    pub(super) fn shutdown_stops(&mut self, now: Instant) {
        for index in (0..self.containers.len()).rev() {
            let Some(state) = self.containers.get(index).map(|c| c.state) else {
                continue;
            };
            match state {
                State::Waiting | State::BackingOff { .. } => {
                    self.stop_for_good(index, Reason::Shutdown, None, now)
                }
                State::Running { .. } if !self.has_live_dependants(index) => {
                    self.request_stop(index, Then::Stay(Reason::Shutdown), "shutdown", now)
                }
                // A stop under way (an operator's, a restart) ends the shutdown's way.
                State::Stopping { stop, .. } if stop.then == Then::Restart => {
                    self.request_stop(index, Then::Stay(Reason::Shutdown), "shutdown", now)
                }
                _ => {}
            }
        }
    }

    /// Whether every container has stopped (or was given up on).
    pub fn all_stopped(&self) -> bool {
        !self.containers.iter().any(|c| c.is_live())
    }

    /// An upper bound on the whole stop phase of a shutdown: every container's grace period
    /// and SIGKILL wait one after the other, as a chain of dependencies would take them.
    pub fn stop_phase_bound(&self) -> Duration {
        self.containers
            .iter()
            .map(|c| c.config.stop_grace() + lifecycle::KILL_WAIT)
            .sum::<Duration>()
            + Duration::from_secs(1)
    }

    /// Whether none of the containers named is stopping any more (an operator's `stop`,
    /// `restart` or an `apply` is answered then).
    pub fn settled(&self, names: &[String]) -> bool {
        !self.containers.iter().any(|c| {
            matches!(c.state, State::Stopping { .. }) && names.iter().any(|n| n == c.name())
        })
    }
}
