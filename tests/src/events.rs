//! Reading berth's event lines (`berth event=KIND key=value ...`) off a guest's console.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_qemu::Machine;

/// One parsed event line: the rig's reader, shared with the bench.
pub use berth_qemu::events::ConsoleEvent as EventLine;

/// Parses a logfmt event line; `None` for any other line.
pub fn parse(line: &str) -> Option<EventLine> {
    berth_qemu::events::parse(line, Duration::ZERO)
}

/// Every event of `kind` (for `container`, when given) seen on the console so far.
pub fn events(machine: &Machine, kind: &str, container: Option<&str>) -> Vec<EventLine> {
    berth_qemu::events::all(machine)
        .into_iter()
        .filter(|e| e.kind == kind)
        .filter(|e| container.is_none_or(|c| e.container() == Some(c)))
        .collect()
}

/// Every console line that starts with `prefix`, as events.
pub fn starting_with(machine: &Machine, prefix: &str) -> Vec<EventLine> {
    berth_qemu::events::all(machine)
        .into_iter()
        .filter(|e| e.line.starts_with(prefix))
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
