//! Events: one logfmt line per state change, `berth event=<kind> key=value ...`, the same
//! from init and netd.
//!
//! These lines are a contract: operators' scripts and the tests parse them. Add fields freely;
//! never rename a kind or a key.

use std::collections::HashMap;
use std::fmt::{Display, Write};

/// Reads an event line back: its fields by key (the kind under `event`), values unquoted as
/// [`Event::field`] quoted them. `None` for a line that is not an event.
pub fn parse_fields(line: &str) -> Option<HashMap<String, String>> {
    let rest = line.strip_prefix("berth event=")?;
    let mut fields = HashMap::new();
    let text = format!("event={rest}");
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ' ').collect();
        }
        fields.insert(key, value);
    }
    Some(fields)
}

/// One event line under construction.
#[derive(Debug)]
#[must_use = "an event is only seen once emitted"]
pub struct Event {
    line: String,
}

impl Event {
    pub fn new(kind: &str) -> Event {
        let mut line = String::from("berth event=");
        push_value(&mut line, kind);
        Event { line }
    }

    pub fn field(mut self, key: &str, value: impl Display) -> Event {
        let _ = write!(self.line, " {key}=");
        push_value(&mut self.line, &value.to_string());
        self
    }

    /// The line as it will be written.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// The finished line, stamped with the time since the kernel started (`uptime_ms`), on
    /// which intervals between events are measured.
    pub fn finish(self) -> String {
        let uptime = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(std::time::Duration::from)
            .unwrap_or_default()
            .as_millis();
        self.field("uptime_ms", uptime).line
    }
}

/// Appends a logfmt value, quoted when it holds a space, a quote, `=` or nothing at all.
fn push_value(line: &mut String, value: &str) {
    let needs_quotes = value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '=' || c.is_control());
    if !needs_quotes {
        line.push_str(value);
        return;
    }
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(line, "\\u{{{:x}}}", u32::from(c));
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_quoted_values() {
        let event = Event::new("ready")
            .field("boot_ms", 2345)
            .field("error", "m.toml:1:1: bad \"x\"")
            .field("empty", "");
        assert_eq!(
            event.line(),
            "berth event=ready boot_ms=2345 error=\"m.toml:1:1: bad \\\"x\\\"\" empty=\"\""
        );
        // What the writer quotes, the reader gives back.
        let fields = parse_fields(event.line()).unwrap_or_default();
        assert_eq!(fields.get("event").map(String::as_str), Some("ready"));
        assert_eq!(
            fields.get("error").map(String::as_str),
            Some("m.toml:1:1: bad \"x\"")
        );
        assert_eq!(fields.get("empty").map(String::as_str), Some(""));
        assert!(parse_fields("web | berth event=fake").is_none());
    }
}
