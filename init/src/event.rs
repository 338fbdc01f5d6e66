//! init's events: the shared line format (`berth-event`), written to the console and
//! `/dev/kmsg` through init's logger.

use std::fmt::Display;

/// One event line under construction.
#[derive(Debug)]
#[must_use = "an event is only seen once emitted"]
pub struct Event(berth_event::Event);

impl Event {
    pub fn new(kind: &str) -> Event {
        Event(berth_event::Event::new(kind))
    }

    pub fn field(self, key: &str, value: impl Display) -> Event {
        Event(self.0.field(key, value))
    }

    pub fn emit(self) {
        crate::logger::write_line(log::Level::Info, &self.0.finish());
    }
}
