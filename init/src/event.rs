//! init's events: the shared line format (`berth-event`), written to the console and
//! `/dev/kmsg` through init's logger.

use std::fmt::Display;

/// One event line under construction.
#[derive(Debug)]
#[must_use = "an event is only seen once emitted"]
pub struct Event {
    line: berth_event::Event,
    kind: String,
}

impl Event {
    pub fn new(kind: &str) -> Event {
        Event {
            line: berth_event::Event::new(kind),
            kind: kind.to_string(),
        }
    }

    pub fn field(self, key: &str, value: impl Display) -> Event {
        Event {
            line: self.line.field(key, value),
            kind: self.kind,
        }
    }

    pub fn emit(self) {
        if let Ok(mut counts) = COUNTS.lock() {
            *counts.entry(self.kind).or_insert(0) += 1;
        }
        let line = self.line.finish();
        crate::logger::write_line(log::Level::Info, &line);
        if FOLLOWED.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(mut new) = NEW.lock() {
                new.push(line.clone());
            }
        }
        crate::journal::push(None, &line);
        if let Ok(mut recent) = RECENT.lock() {
            if recent.len() >= RECENT_EVENTS {
                recent.pop_front();
            }
            recent.push_back(line);
        }
    }
}

/// Events emitted since boot, by kind (a few dozen kinds: the map stays small).
static COUNTS: std::sync::Mutex<std::collections::BTreeMap<String, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// How many events of each kind were emitted since boot.
pub fn counts() -> std::collections::BTreeMap<String, u64> {
    COUNTS.lock().map(|c| c.clone()).unwrap_or_default()
}

/// Event lines kept in memory for `berthctl events`, whatever the storage.
const RECENT_EVENTS: usize = 1000;
static RECENT: std::sync::Mutex<std::collections::VecDeque<String>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// Whether a `berthctl events -f` is connected: only then are new lines queued for it.
pub static FOLLOWED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static NEW: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Event lines emitted since the last call, for followers.
pub fn take_new() -> Vec<String> {
    NEW.lock()
        .map(|mut new| std::mem::take(&mut *new))
        .unwrap_or_default()
}

/// The last `tail` event lines (all that are kept when None).
pub fn recent(tail: Option<usize>) -> Vec<String> {
    let Ok(recent) = RECENT.lock() else {
        return Vec::new();
    };
    let skip = tail.map_or(0, |t| recent.len().saturating_sub(t));
    recent.iter().skip(skip).cloned().collect()
}
