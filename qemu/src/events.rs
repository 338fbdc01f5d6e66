//! berth's event lines (`berth event=KIND key=value ... uptime_ms=N`) read back off a
//! guest's console, with the time the rig saw each: one reader for the test suite and the
//! bench.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::Machine;

/// How often [`wait_until`] looks at the console again.
const POLL: Duration = Duration::from_millis(50);

/// One event line, parsed.
#[derive(Debug, Clone)]
pub struct ConsoleEvent {
    pub kind: String,
    pub fields: HashMap<String, String>,
    /// The line as the console showed it.
    pub line: String,
    /// When the rig saw the line, counted from QEMU's start.
    pub at: Duration,
}

impl ConsoleEvent {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// A whole-number field (`next_in=800ms` reads as 800).
    pub fn number(&self, key: &str) -> Option<u64> {
        self.get(key)
            .map(|v| v.trim_end_matches("ms"))
            .and_then(|v| v.parse().ok())
    }

    /// A field read as a decimal (`ran=84.5ms` reads as 84.5).
    pub fn decimal(&self, key: &str) -> Option<f64> {
        self.get(key)
            .map(|v| v.trim_end_matches("ms"))
            .and_then(|v| v.parse().ok())
    }

    /// Milliseconds since the kernel started, which every event ends with.
    pub fn uptime_ms(&self) -> Option<f64> {
        self.decimal("uptime_ms")
    }

    pub fn container(&self) -> Option<&str> {
        self.get("container")
    }

    /// Whether this is a `kind` event of `container`.
    pub fn is(&self, kind: &str, container: &str) -> bool {
        self.kind == kind && self.container() == Some(container)
    }
}

/// Parses an event line seen at `at`; `None` for any other line.
pub fn parse(line: &str, at: Duration) -> Option<ConsoleEvent> {
    let fields = berth_event::parse_fields(line)?;
    Some(ConsoleEvent {
        kind: fields.get("event").cloned().unwrap_or_default(),
        fields,
        line: line.to_string(),
        at,
    })
}

/// Every event on the console so far.
pub fn all(machine: &Machine) -> Vec<ConsoleEvent> {
    machine
        .console_lines()
        .iter()
        .filter_map(|l| parse(&l.text, l.at))
        .collect()
}

/// The first of `events` of `kind` (for `container`, when given).
pub fn first<'a>(
    events: &'a [ConsoleEvent],
    kind: &str,
    container: Option<&str>,
) -> Option<&'a ConsoleEvent> {
    events
        .iter()
        .find(|e| e.kind == kind && container.is_none_or(|c| e.container() == Some(c)))
}

/// Waits until the events seen so far satisfy `done`; returns them. Fails when `timeout`
/// passes or QEMU exits first, naming `what` and the console log.
pub fn wait_until(
    machine: &mut Machine,
    timeout: Duration,
    what: &str,
    done: impl Fn(&[ConsoleEvent]) -> bool,
) -> Result<Vec<ConsoleEvent>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = all(machine);
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

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_and_quoted_fields_numbers_and_uptime() {
        let line = r#"berth event=exited container=web code=1 error="a \"b\" c" next_in=800ms ran=84.5ms uptime_ms=4401"#;
        let event = parse(line, Duration::from_secs(2)).unwrap();
        assert_eq!(event.kind, "exited");
        assert!(event.is("exited", "web"));
        assert_eq!(event.get("error"), Some(r#"a "b" c"#));
        assert_eq!(event.number("next_in"), Some(800));
        assert_eq!(event.decimal("ran"), Some(84.5));
        assert_eq!(event.uptime_ms(), Some(4401.0));
        assert_eq!(event.line, line);
        assert_eq!(event.at, Duration::from_secs(2));
        assert!(parse("web | berth event=fake", Duration::ZERO).is_none());
    }
}
