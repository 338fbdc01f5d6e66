//! One shipped line and how it is written: RFC 5424 syslog or a JSON object.
//!
//! RFC 5424 is written by hand: it is one `format!` of six header fields, and the crates
//! that write it (`syslog`, `syslog_rfc5424`) either send through their own sockets or
//! parse rather than write. The sequence number goes in the standard `meta` element
//! (RFC 5424 7.3.1), so a receiver can drop the lines a reconnect sent twice.

use std::time::SystemTime;

/// Where a line came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// One of init's events; `kind` is its `event=` value.
    Event { kind: String },
    /// A container's output.
    Container { name: String },
    /// The kernel's log, at its level (0 to 7).
    Kernel { level: u8 },
    /// The shipper's own notes (`logs-dropped`).
    Shipper,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The line's place in the shipper's stream, from 1; none for the shipper's notes, which
    /// are not part of it.
    pub seq: Option<u64>,
    pub time: SystemTime,
    pub source: Source,
    pub text: String,
}

/// Syslog facilities and severities (RFC 5424 6.2.1).
const KERN: u8 = 0;
const USER: u8 = 1;
const DAEMON: u8 = 3;
const SYSLOG: u8 = 5;
const WARNING: u8 = 4;
const INFO: u8 = 6;

/// A UDP datagram carries at most this much (RFC 5426 asks receivers for 2048 at least;
/// rsyslog and syslog-ng take 8 KiB by default).
pub const MAX_DATAGRAM: usize = 8 << 10;

impl Message {
    /// What the line costs a queue: its text and a fixed allowance for the rest.
    pub fn cost(&self) -> usize {
        self.text.len() + 96
    }

    fn priority(&self) -> u8 {
        let (facility, severity) = match &self.source {
            Source::Event { .. } => (DAEMON, INFO),
            Source::Container { .. } => (USER, INFO),
            Source::Kernel { level } => (KERN, (*level).min(7)),
            Source::Shipper => (SYSLOG, WARNING),
        };
        facility * 8 + severity
    }

    /// RFC 5424's APP-NAME: the container's name, `kernel`, or `berth`.
    fn app_name(&self) -> &str {
        match &self.source {
            Source::Container { name } => name,
            Source::Kernel { .. } => "kernel",
            Source::Event { .. } | Source::Shipper => "berth",
        }
    }

    /// RFC 5424's MSGID: the event's kind; `-` for the rest.
    fn message_id(&self) -> &str {
        match &self.source {
            Source::Event { kind } => kind,
            Source::Shipper => "logs-dropped",
            Source::Container { .. } | Source::Kernel { .. } => "-",
        }
    }

    /// The RFC 5424 message (without framing).
    pub fn rfc5424(&self, hostname: &str) -> String {
        let structured = match self.seq {
            // sequenceId runs from 1 to 2147483647 and then starts again at 1.
            Some(seq) => format!("[meta sequenceId=\"{}\"]", (seq - 1) % 2_147_483_647 + 1),
            None => "-".to_string(),
        };
        format!(
            "<{}>1 {} {} {} - {} {} {}",
            self.priority(),
            timestamp(self.time),
            header_field(hostname, 255),
            header_field(self.app_name(), 48),
            header_field(self.message_id(), 32),
            structured,
            self.text
        )
    }

    /// The JSON object (one line, without its newline).
    pub fn json(&self, hostname: &str) -> String {
        let mut object = serde_json::Map::new();
        let mut put = |key: &str, value: serde_json::Value| {
            object.insert(key.to_string(), value);
        };
        if let Some(seq) = self.seq {
            put("seq", seq.into());
        }
        put("time", timestamp(self.time).into());
        put("host", hostname.into());
        let source = match &self.source {
            Source::Event { kind } => {
                put("kind", kind.as_str().into());
                "event"
            }
            Source::Container { name } => {
                put("container", name.as_str().into());
                "container"
            }
            Source::Kernel { level } => {
                put("level", (*level).into());
                "kernel"
            }
            Source::Shipper => "shipper",
        };
        put("source", source.into());
        put("message", self.text.as_str().into());
        serde_json::Value::Object(object).to_string()
    }
}

/// A header field as RFC 5424 allows it: printable US-ASCII without spaces, `max` bytes at
/// most, `-` when nothing is left.
fn header_field(text: &str, max: usize) -> String {
    let field: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if field.is_empty() {
        "-".to_string()
    } else {
        field
    }
}

/// RFC 3339 in UTC with milliseconds, as RFC 5424 wants it.
fn timestamp(time: SystemTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from(time)
        .format(format)
        .unwrap_or_else(|_| "-".to_string())
}

/// One message framed for a stream (RFC 6587's octet counting: `LEN SP MSG`) or a JSON line.
pub fn frame(message: &Message, json: bool, hostname: &str) -> Vec<u8> {
    if json {
        let mut line = message.json(hostname);
        line.push('\n');
        return line.into_bytes();
    }
    let text = message.rfc5424(hostname);
    format!("{} {text}", text.len()).into_bytes()
}

/// One message as a datagram (RFC 5426: the message alone), cut to [`MAX_DATAGRAM`].
pub fn datagram(message: &Message, json: bool, hostname: &str) -> Vec<u8> {
    let mut bytes = if json {
        message.json(hostname)
    } else {
        message.rfc5424(hostname)
    }
    .into_bytes();
    bytes.truncate(MAX_DATAGRAM);
    bytes
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(seconds * 1000 + 250)
    }

    #[test]
    fn syslog_lines_carry_facility_app_kind_and_sequence() {
        let event = Message {
            seq: Some(7),
            time: at(1_796_000_000),
            source: Source::Event {
                kind: "container-started".to_string(),
            },
            text: "berth event=container-started container=web".to_string(),
        };
        assert_eq!(
            event.rfc5424("host1"),
            "<30>1 2026-11-30T00:53:20.250Z host1 berth - container-started \
             [meta sequenceId=\"7\"] berth event=container-started container=web"
        );
        let line = Message {
            seq: Some(2_147_483_648),
            time: at(0),
            source: Source::Container {
                name: "web".to_string(),
            },
            text: "hello world".to_string(),
        };
        let framed = String::from_utf8(frame(&line, false, "h")).unwrap();
        let (length, text) = framed.split_once(' ').unwrap();
        assert_eq!(length.parse::<usize>().unwrap(), text.len());
        assert_eq!(
            text,
            "<14>1 1970-01-01T00:00:00.250Z h web - - [meta sequenceId=\"1\"] hello world"
        );
        let kernel = Message {
            seq: Some(1),
            time: at(0),
            source: Source::Kernel { level: 3 },
            text: "oops".to_string(),
        };
        assert!(kernel
            .rfc5424("bad host\u{7f}")
            .starts_with("<3>1 1970-01-01T00:00:00.250Z badhost kernel - - "));
        let note = Message {
            seq: None,
            time: at(0),
            source: Source::Shipper,
            text: "12 lines dropped".to_string(),
        };
        assert!(note
            .rfc5424("")
            .contains(" - berth - logs-dropped - 12 lines dropped"));
    }

    #[test]
    fn json_lines_name_the_source_and_datagrams_are_cut() {
        let line = Message {
            seq: Some(3),
            time: at(0),
            source: Source::Container {
                name: "web".to_string(),
            },
            text: "x".repeat(MAX_DATAGRAM * 2),
        };
        let framed = frame(&line, true, "h");
        assert_eq!(framed.last(), Some(&b'\n'));
        let parsed: serde_json::Value = serde_json::from_slice(&framed).unwrap();
        assert_eq!(parsed["seq"], 3);
        assert_eq!(parsed["container"], "web");
        assert_eq!(parsed["source"], "container");
        assert_eq!(parsed["host"], "h");
        assert_eq!(datagram(&line, false, "h").len(), MAX_DATAGRAM);
    }
}
