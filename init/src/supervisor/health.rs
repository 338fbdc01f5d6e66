//! A container's health, as Docker keeps it: `starting` until a check passes, `healthy`
//! while they pass, `unhealthy` after `retries` failures in a row. Failures within the start
//! period do not count (the service may still be starting); a pass there counts at once.
//! Checks run every `start_interval` during the start period, every `interval` after it.
//!
//! This is the state machine alone: the supervisor runs the probes (with `exec`) and tells
//! it what happened.

use std::time::{Duration, Instant};

use berth_manifest::HealthCheck;
use nix::unistd::Pid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    Starting,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

/// A probe running now.
#[derive(Debug, Clone, Copy)]
struct Probe {
    pid: Pid,
    deadline: Instant,
}

#[derive(Debug, Clone)]
pub struct Health {
    check: HealthCheck,
    pub status: HealthStatus,
    pub failing_streak: u32,
    started: Instant,
    next_probe: Instant,
    probe: Option<Probe>,
}

impl Health {
    /// The health of a container that started at `now`.
    pub fn new(check: HealthCheck, now: Instant) -> Health {
        let mut health = Health {
            check,
            status: HealthStatus::Starting,
            failing_streak: 0,
            started: now,
            next_probe: now,
            probe: None,
        };
        health.next_probe = now + health.period(now);
        health
    }

    fn in_start_period(&self, now: Instant) -> bool {
        now < self.started + self.check.start_period
    }

    fn period(&self, now: Instant) -> Duration {
        if self.in_start_period(now) {
            self.check.start_interval
        } else {
            self.check.interval
        }
    }

    /// The command to run when a probe is due now.
    pub fn due(&self, now: Instant) -> Option<Vec<String>> {
        (self.probe.is_none() && now >= self.next_probe)
            .then(|| self.check.argv())
            .flatten()
    }

    pub fn probe_started(&mut self, pid: Pid, now: Instant) {
        self.probe = Some(Probe {
            pid,
            deadline: now + self.check.timeout,
        });
    }

    pub fn probe_pid(&self) -> Option<Pid> {
        self.probe.map(|p| p.pid)
    }

    /// A probe past its timeout, to kill; its exit then counts as a failure.
    pub fn overdue(&self, now: Instant) -> Option<Pid> {
        self.probe.filter(|p| now >= p.deadline).map(|p| p.pid)
    }

    /// Records a probe's result (or a probe that could not start); returns the new status
    /// when it changed.
    pub fn record(&mut self, passed: bool, now: Instant) -> Option<HealthStatus> {
        self.probe = None;
        self.next_probe = now + self.period(now);
        let before = self.status;
        if passed {
            self.failing_streak = 0;
            self.status = HealthStatus::Healthy;
        } else if !(self.in_start_period(now) && self.status == HealthStatus::Starting) {
            self.failing_streak += 1;
            if self.failing_streak >= self.check.retries {
                self.status = HealthStatus::Unhealthy;
            }
        }
        (self.status != before).then_some(self.status)
    }

    /// When the supervisor must look again: the probe's timeout, or the next probe.
    pub fn next_deadline(&self) -> Instant {
        self.probe.map_or(self.next_probe, |p| p.deadline)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn check(start_period: u64) -> HealthCheck {
        let text = format!(
            "[containers.a]\nimage = \"x:1\"\nhealthcheck = {{ test = [\"CMD\", \"true\"], interval = \"10s\", timeout = \"2s\", retries = 3, start_period = \"{start_period}s\", start_interval = \"1s\" }}\n"
        );
        let manifest =
            berth_manifest::Manifest::parse(&text, std::path::Path::new("m.toml")).unwrap();
        manifest
            .containers
            .values()
            .next()
            .unwrap()
            .healthcheck
            .clone()
            .unwrap()
    }

    #[test]
    fn unhealthy_after_retries_failures_in_a_row_and_healthy_after_a_pass() {
        let t0 = Instant::now();
        let mut health = Health::new(check(0), t0);
        assert_eq!(health.status, HealthStatus::Starting);
        assert!(
            health.due(t0).is_none(),
            "the first probe waits an interval"
        );
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(health.due(t1).unwrap(), ["true"]);
        health.probe_started(Pid::from_raw(7), t1);
        assert!(health.due(t1).is_none(), "one probe at a time");
        assert_eq!(
            health.overdue(t1 + Duration::from_secs(2)),
            Some(Pid::from_raw(7))
        );
        assert_eq!(health.record(false, t1), None);
        assert_eq!(health.record(false, t1), None);
        assert_eq!(health.record(false, t1), Some(HealthStatus::Unhealthy));
        assert_eq!(health.failing_streak, 3);
        assert_eq!(health.record(true, t1), Some(HealthStatus::Healthy));
        assert_eq!(health.failing_streak, 0);
        assert_eq!(health.next_deadline(), t1 + Duration::from_secs(10));
    }

    #[test]
    fn failures_in_the_start_period_do_not_count_but_a_pass_does() {
        let t0 = Instant::now();
        let mut health = Health::new(check(5), t0);
        assert_eq!(
            health.next_deadline(),
            t0 + Duration::from_secs(1),
            "start_interval"
        );
        for _ in 0..4 {
            assert_eq!(health.record(false, t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(health.failing_streak, 0);
        assert_eq!(
            health.record(true, t0 + Duration::from_secs(2)),
            Some(HealthStatus::Healthy)
        );
        // Once healthy, a failure counts even inside the start period.
        health.record(false, t0 + Duration::from_secs(3));
        assert_eq!(health.failing_streak, 1);
    }
}
