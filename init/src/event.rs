//! Events: one logfmt line per state change, `berth event=<kind> key=value ...`.
//!
//! These lines are a contract: operators' scripts and the tests parse them. Add fields freely;
//! never rename a kind or a key.

use std::fmt::{Display, Write};

/// One event line under construction.
#[derive(Debug)]
#[must_use = "an event is only seen once emitted"]
pub struct Event {
    line: String,
}

impl Event {
    pub fn new(kind: &str) -> Event {
        let mut line = format!("{} event=", crate::logger::CONSOLE_PREFIX);
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

    /// Writes the line, stamped with the time since the kernel started (`uptime_ms`), which
    /// is what intervals between events are measured on.
    pub fn emit(self) {
        let uptime = crate::clock::millis(crate::clock::since_kernel_start());
        let line = self.field("uptime_ms", uptime).line;
        crate::logger::write_line(log::Level::Info, &line);
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
    }
}
