//! berth's event lines (`berth event=KIND key=value ... uptime_ms=N`) read off a guest's
//! console, with the time the rig saw each one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_qemu::Machine;

/// How often a wait looks at the console again.
const POLL: Duration = Duration::from_millis(50);

/// One parsed event line.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: String,
    pub fields: HashMap<String, String>,
    /// When the rig saw the line, counted from QEMU's start.
    pub at: Duration,
}

impl Event {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// A numeric field (`ran=84ms` reads as 84).
    pub fn number(&self, key: &str) -> Option<f64> {
        self.get(key)
            .map(|v| v.trim_end_matches("ms"))
            .and_then(|v| v.parse().ok())
    }

    /// Milliseconds since the kernel started, which every event ends with.
    pub fn uptime_ms(&self) -> Option<f64> {
        self.number("uptime_ms")
    }

    pub fn container(&self) -> Option<&str> {
        self.get("container")
    }

    pub fn is(&self, kind: &str, container: &str) -> bool {
        self.kind == kind && self.container() == Some(container)
    }
}

/// Parses a logfmt event line; `None` for any other line.
pub fn parse(line: &str, at: Duration) -> Option<Event> {
    let fields = berth_event::parse_fields(line)?;
    Some(Event {
        kind: fields.get("event").cloned().unwrap_or_default(),
        fields,
        at,
    })
}

/// Every event on the console so far.
pub fn events(machine: &Machine) -> Vec<Event> {
    machine
        .console_lines()
        .iter()
        .filter_map(|l| parse(&l.text, l.at))
        .collect()
}

/// Waits until the events seen so far satisfy `done`; returns them. Fails when `timeout`
/// passes or QEMU exits first, naming `what` and the console log.
pub fn wait_until(
    machine: &mut Machine,
    timeout: Duration,
    what: &str,
    done: impl Fn(&[Event]) -> bool,
) -> Result<Vec<Event>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = events(machine);
        if done(&seen) {
            return Ok(seen);
        }
        let exited = machine.has_exited();
        if exited || Instant::now() >= deadline {
            return Err(format!(
                "{what}: not seen within {timeout:?}{}; console log: {}",
                if exited { " (QEMU exited)" } else { "" },
                machine.console_log().display()
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// The first event of `kind` (for `container`, when given).
pub fn first<'a>(events: &'a [Event], kind: &str, container: Option<&str>) -> Option<&'a Event> {
    events
        .iter()
        .find(|e| e.kind == kind && container.is_none_or(|c| e.container() == Some(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_quoted_values_and_uptime() {
        let line = "berth event=data-volatile reason=\"no data partition\" uptime_ms=4401";
        let event = parse(line, Duration::ZERO);
        let event = event.as_ref();
        assert_eq!(event.map(|e| e.kind.as_str()), Some("data-volatile"));
        assert_eq!(
            event.and_then(|e| e.get("reason")),
            Some("no data partition")
        );
        assert_eq!(event.and_then(Event::uptime_ms), Some(4401.0));
        assert!(parse("web | hello", Duration::ZERO).is_none());
    }
}
