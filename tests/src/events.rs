//! Reading berth's event lines (`berth event=KIND key=value ...`) off a guest's console.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_qemu::Machine;

/// One parsed event line.
#[derive(Debug, Clone)]
pub struct EventLine {
    pub kind: String,
    pub fields: HashMap<String, String>,
    pub line: String,
}

impl EventLine {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// A numeric field, for the figures tests compare.
    pub fn number(&self, key: &str) -> Option<u64> {
        self.get(key)
            .map(|v| v.trim_end_matches("ms"))
            .and_then(|v| v.parse().ok())
    }
}

/// Parses a logfmt event line; `None` for any other line.
pub fn parse(line: &str) -> Option<EventLine> {
    let fields = berth_event::parse_fields(line)?;
    Some(EventLine {
        kind: fields.get("event").cloned().unwrap_or_default(),
        fields,
        line: line.to_string(),
    })
}

/// Every event of `kind` (for `container`, when given) seen on the console so far.
pub fn events(machine: &Machine, kind: &str, container: Option<&str>) -> Vec<EventLine> {
    machine
        .console_lines()
        .iter()
        .filter_map(|l| parse(&l.text))
        .filter(|e| e.kind == kind)
        .filter(|e| container.is_none_or(|c| e.get("container") == Some(c)))
        .collect()
}

/// Every console line that starts with `prefix`, as events.
pub fn starting_with(machine: &Machine, prefix: &str) -> Vec<EventLine> {
    machine
        .console_lines()
        .iter()
        .filter(|l| l.text.starts_with(prefix))
        .filter_map(|l| parse(&l.text))
        .collect()
}

/// Waits until `count` lines start with `prefix`, for at most `within`; returns them. Panics
/// (failing the test) with the console log's path otherwise.
pub fn wait_count(
    machine: &Machine,
    prefix: &str,
    count: usize,
    within: Duration,
) -> Vec<EventLine> {
    let deadline = Instant::now() + within;
    loop {
        let found = starting_with(machine, prefix);
        if found.len() >= count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} `{prefix}` lines within {within:?}; console: {}",
            found.len(),
            machine.console_log().display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Lines a container wrote, as the console shows them (`<name> | <line>`).
pub fn output(machine: &Machine, container: &str) -> Vec<String> {
    let prefix = format!("{container} | ");
    machine
        .console_lines()
        .iter()
        .filter_map(|l| l.text.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

/// A container's `key=value` output lines (what the probe prints), by key; a later line wins.
pub fn facts(machine: &Machine, container: &str) -> HashMap<String, String> {
    output(machine, container)
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_quoted_fields() {
        let e = parse(r#"berth event=exited container=web code=1 error="a \"b\" c" next_in=800ms"#);
        let e = e.unwrap_or_else(|| panic!("not parsed"));
        assert_eq!(e.kind, "exited");
        assert_eq!(e.get("error"), Some(r#"a "b" c"#));
        assert_eq!(e.number("next_in"), Some(800));
        assert!(parse("web | berth event=fake").is_none());
    }
}
