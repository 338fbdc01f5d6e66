//! What a waiting container waits for: `depends_on` (Compose's conditions and
//! `network-online`), and, after an `apply` changed it, the end of its previous run.

use berth_manifest::{Condition, NETWORK_ONLINE, TIME_SYNCED};

use super::health::HealthStatus;
use super::lifecycle::State;
use super::{marker_exists, Supervisor, NETWORK_ONLINE_MARKER, TIME_SYNCED_MARKER};
use crate::event::Event;

pub(super) enum Dependencies {
    Met,
    Pending(String),
    Failed(String),
}

impl Supervisor {
    pub(super) fn dependencies(&self, index: usize) -> Dependencies {
        let Some(container) = self.containers.get(index) else {
            return Dependencies::Met;
        };
        // A changed container's new run shares its name (cgroup, address) with the old one.
        if self
            .containers
            .iter()
            .any(|c| c.retiring && c.name == container.name && c.state != State::Stopped)
        {
            return Dependencies::Pending(format!("{}:previous-run", container.name()));
        }
        for (dependency, condition) in &container.config.depends_on.0 {
            if dependency.get_ref() == NETWORK_ONLINE {
                if !marker_exists(NETWORK_ONLINE_MARKER) {
                    return Dependencies::Pending(NETWORK_ONLINE.to_string());
                }
                continue;
            }
            if dependency.get_ref() == TIME_SYNCED {
                if !marker_exists(TIME_SYNCED_MARKER) {
                    return Dependencies::Pending(TIME_SYNCED.to_string());
                }
                continue;
            }
            let Some(dep) = self
                .containers
                .iter()
                .find(|c| c.name() == dependency.get_ref() && !c.retiring)
            else {
                continue;
            };
            let met = match condition {
                Condition::ServiceStarted => dep.ever_started,
                Condition::ServiceCompletedSuccessfully => {
                    dep.last_exit == Some(0) && !dep.is_live()
                }
                Condition::ServiceHealthy => {
                    dep.running_pid().is_some()
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

    pub(super) fn report_waiting(&mut self, index: usize, on: &str) {
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

    /// Whether a live container depends on container `index` (it then stops first).
    pub(super) fn has_live_dependants(&self, index: usize) -> bool {
        let Some(container) = self.containers.get(index) else {
            return false;
        };
        self.containers.iter().any(|c| {
            c.is_live()
                && c.config
                    .depends_on
                    .0
                    .iter()
                    .any(|(d, _)| container.name() == d.get_ref())
        })
    }
}

fn condition_name(condition: Condition) -> &'static str {
    match condition {
        Condition::ServiceStarted => "service_started",
        Condition::ServiceCompletedSuccessfully => "service_completed_successfully",
        Condition::ServiceHealthy => "service_healthy",
    }
}
