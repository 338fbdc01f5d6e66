//! The journal: events and every container's output lines in one stream, in the order init
//! emits them, for `journal -f` followers (berth-apid's log shipper). Lines are queued only
//! while a follower is connected, and the queue is emptied at the end of every loop turn.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// One journal line: the container whose output it is (none: an event), and the line.
pub type Entry = (Option<String>, String);

/// Whether a `journal -f` is connected.
pub static FOLLOWED: AtomicBool = AtomicBool::new(false);
static NEW: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// Queues `line` for followers, if there are any.
pub fn push(container: Option<&str>, line: &str) {
    if !FOLLOWED.load(Ordering::Relaxed) {
        return;
    }
    if let Ok(mut new) = NEW.lock() {
        new.push((container.map(str::to_string), line.to_string()));
    }
}

/// The lines queued since the last call.
pub fn take_new() -> Vec<Entry> {
    NEW.lock()
        .map(|mut new| std::mem::take(&mut *new))
        .unwrap_or_default()
}

/// What init kept, oldest first: the events, then every container's lines merged by the
/// time they came (the events' times are not kept, so the two are not interleaved).
pub fn backlog(
    events: Vec<String>,
    containers: Vec<(String, Vec<(std::time::Instant, String)>)>,
    tail: Option<usize>,
) -> Vec<Entry> {
    let mut lines: Vec<(std::time::Instant, String, String)> = containers
        .into_iter()
        .flat_map(|(name, lines)| {
            lines
                .into_iter()
                .map(move |(at, line)| (at, name.clone(), line))
        })
        .collect();
    lines.sort_by_key(|(at, _, _)| *at);
    let all: Vec<Entry> = events
        .into_iter()
        .map(|line| (None, line))
        .chain(lines.into_iter().map(|(_, name, line)| (Some(name), line)))
        .collect();
    let skip = tail.map_or(0, |t| all.len().saturating_sub(t));
    all.into_iter().skip(skip).collect()
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_backlog_has_events_then_lines_by_time_and_keeps_the_tail() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(5);
        let containers = vec![
            ("b".to_string(), vec![(later, "b1".to_string())]),
            ("a".to_string(), vec![(t0, "a1".to_string())]),
        ];
        let all = backlog(vec!["e1".to_string()], containers.clone(), None);
        assert_eq!(
            all,
            [
                (None, "e1".to_string()),
                (Some("a".to_string()), "a1".to_string()),
                (Some("b".to_string()), "b1".to_string()),
            ]
        );
        let tail = backlog(vec!["e1".to_string()], containers, Some(1));
        assert_eq!(tail.first().unwrap().1, "b1");
        assert_eq!(tail.len(), 1);
        assert!(backlog(Vec::new(), Vec::new(), Some(0)).is_empty());
    }
}
