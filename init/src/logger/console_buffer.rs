//! The console's bounded queue: lines wait here until the console takes them, written with
//! non-blocking writes, so a slow or stopped console (a serial line held by XOFF) never
//! blocks PID 1.
//!
//! When the queue is full, lines are dropped and counted. init's own lines (events, log
//! lines) may use the whole queue; container lines only the first [`CONTAINER_SHARE_NUM`] /
//! [`CONTAINER_SHARE_DEN`] of it, so events still get through a flood. Among containers the
//! queue is shared fairly: a line that does not fit evicts the newest queued line of the
//! container holding the most bytes, unless that is its own container, so one flooding
//! container cannot keep a quiet one off the console.

use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice, Write};
use std::time::{Duration, Instant};

/// Bytes of lines the console queue holds at most.
pub const CAPACITY: usize = 64 << 10;
/// Container lines may fill this fraction of the queue; the rest is kept for init's lines.
pub const CONTAINER_SHARE_NUM: usize = 3;
pub const CONTAINER_SHARE_DEN: usize = 4;
/// While lines go on being dropped and the queue never empties (a container floods without
/// end), the drops are reported this often instead of only once the console drains.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Lines handed to one `writev(2)`, at most.
const LINES_PER_WRITE: usize = 64;

/// Who wrote a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    /// init itself: events and log lines.
    Init,
    /// A container's output, by container name.
    Container(&'a str),
}

#[derive(Debug)]
struct Entry {
    /// The container that wrote it; None for init's own lines.
    container: Option<String>,
    /// The line with its newline.
    bytes: Vec<u8>,
}

/// Lines waiting for the console, and how many were dropped since the last report.
#[derive(Debug)]
pub struct ConsoleBuffer {
    capacity: usize,
    queue: VecDeque<Entry>,
    /// Bytes of the front entry already written.
    written: usize,
    /// Bytes of every queued entry (the front one whole).
    queued: usize,
    /// Queued bytes per container.
    per_container: Vec<(String, usize)>,
    dropped: u64,
    /// When the first drop since the last report happened.
    dropping_since: Option<Instant>,
}

impl ConsoleBuffer {
    pub const fn new(capacity: usize) -> ConsoleBuffer {
        ConsoleBuffer {
            capacity,
            queue: VecDeque::new(),
            written: 0,
            queued: 0,
            per_container: Vec::new(),
            dropped: 0,
            dropping_since: None,
        }
    }

    /// Whether lines wait for the console.
    pub fn is_pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Queues `line` (a newline is added), or drops it when there is no room; `now` dates a
    /// first drop. Returns whether the line was queued.
    pub fn push(&mut self, origin: Origin<'_>, line: &str, now: Instant) -> bool {
        let len = line.len() + 1;
        let limit = match origin {
            Origin::Init => self.capacity,
            Origin::Container(_) => self.capacity / CONTAINER_SHARE_DEN * CONTAINER_SHARE_NUM,
        };
        while self.queued + len > limit {
            let own = match origin {
                Origin::Init => None,
                Origin::Container(name) => Some(self.bytes_of(name)),
            };
            let victim = self
                .largest_container()
                .filter(|(_, bytes)| own.is_none_or(|own| *bytes > own + len))
                .map(|(name, _)| name.to_string());
            if !victim.is_some_and(|name| self.evict_newest_of(&name)) {
                self.count_drop(now);
                return false;
            }
            self.count_drop(now);
        }
        let container = match origin {
            Origin::Init => None,
            Origin::Container(name) => {
                self.add_bytes(name, len);
                Some(name.to_string())
            }
        };
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.queue.push_back(Entry { container, bytes });
        self.queued += len;
        true
    }

    /// Writes queued lines to `sink` until it would block. Any other error drops what is
    /// queued (counted) and is returned: a console that fails once is not retried forever
    /// with the same bytes.
    pub fn flush(&mut self, sink: &mut impl Write, now: Instant) -> std::io::Result<()> {
        while self.is_pending() {
            // Many lines per write: one syscall per line would cost PID 1 more than the lines.
            let slices: Vec<IoSlice<'_>> = self
                .queue
                .iter()
                .take(LINES_PER_WRITE)
                .enumerate()
                .map(|(i, entry)| {
                    let skip = if i == 0 { self.written } else { 0 };
                    IoSlice::new(entry.bytes.get(skip..).unwrap_or_default())
                })
                .collect();
            match sink.write_vectored(&slices) {
                Ok(0) => return Ok(()),
                Ok(n) => self.consume(n),
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(err) => {
                    while self.is_pending() {
                        self.pop_front();
                        self.count_drop(now);
                    }
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Takes `n` written bytes off the front of the queue.
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.queue.front() else {
                return;
            };
            let left = front.bytes.len().saturating_sub(self.written);
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.pop_front();
        }
    }

    /// The number of lines dropped, once it should be reported: when the queue has drained,
    /// or [`REPORT_INTERVAL`] after the first unreported drop. The count starts again.
    pub fn take_report(&mut self, now: Instant) -> Option<u64> {
        let since = self.dropping_since?;
        if self.is_pending() && now.saturating_duration_since(since) < REPORT_INTERVAL {
            return None;
        }
        self.dropping_since = None;
        Some(std::mem::take(&mut self.dropped))
    }

    fn count_drop(&mut self, now: Instant) {
        self.dropped += 1;
        self.dropping_since.get_or_insert(now);
    }

    fn bytes_of(&self, name: &str) -> usize {
        self.per_container
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, bytes)| *bytes)
    }

    fn largest_container(&self) -> Option<(&str, usize)> {
        self.per_container
            .iter()
            .max_by_key(|(_, bytes)| *bytes)
            .map(|(name, bytes)| (name.as_str(), *bytes))
    }

    fn add_bytes(&mut self, name: &str, len: usize) {
        match self.per_container.iter_mut().find(|(n, _)| n == name) {
            Some((_, bytes)) => *bytes += len,
            None => self.per_container.push((name.to_string(), len)),
        }
    }

    fn remove_bytes(&mut self, name: &str, len: usize) {
        if let Some((_, bytes)) = self.per_container.iter_mut().find(|(n, _)| n == name) {
            *bytes = bytes.saturating_sub(len);
        }
        self.per_container.retain(|(_, bytes)| *bytes > 0);
    }

    fn pop_front(&mut self) {
        self.written = 0;
        if let Some(entry) = self.queue.pop_front() {
            self.forget(&entry);
        }
    }

    /// Removes `name`'s newest queued line, never the one being written. Returns whether
    /// there was one.
    fn evict_newest_of(&mut self, name: &str) -> bool {
        let first = usize::from(self.written > 0);
        let Some(index) = self
            .queue
            .iter()
            .enumerate()
            .skip(first)
            .rev()
            .find(|(_, e)| e.container.as_deref() == Some(name))
            .map(|(i, _)| i)
        else {
            return false;
        };
        match self.queue.remove(index) {
            Some(entry) => {
                self.forget(&entry);
                true
            }
            None => false,
        }
    }

    fn forget(&mut self, entry: &Entry) {
        let len = entry.bytes.len();
        self.queued = self.queued.saturating_sub(len);
        if let Some(name) = &entry.container {
            self.remove_bytes(name, len);
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    /// A console that takes at most `room` bytes per line (a short write ends a vectored
    /// call), and nothing at all (`WouldBlock`) once `budget` bytes were taken.
    struct FakeConsole {
        taken: Vec<u8>,
        room: usize,
        budget: usize,
    }

    impl FakeConsole {
        fn new(room: usize, budget: usize) -> FakeConsole {
            FakeConsole {
                taken: Vec::new(),
                room,
                budget,
            }
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.taken).into_owned()
        }
    }

    impl Write for FakeConsole {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.room).min(self.budget);
            if n == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            self.budget -= n;
            self.taken
                .extend_from_slice(buf.get(..n).unwrap_or_default());
            Ok(n)
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            let mut taken = 0;
            for buf in bufs {
                match self.write(buf) {
                    Ok(n) if n < buf.len() => return Ok(taken + n),
                    Ok(n) => taken += n,
                    Err(err) if taken == 0 => return Err(err),
                    Err(_) => break,
                }
            }
            Ok(taken)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let now = Instant::now();
        let mut buffer = ConsoleBuffer::new(1024);
        assert!(buffer.push(Origin::Init, "first line", now));
        assert!(buffer.push(Origin::Container("web"), "second", now));
        // Three bytes per write, seven in all: stops mid-line on WouldBlock.
        let mut console = FakeConsole::new(3, 7);
        buffer.flush(&mut console, now).unwrap();
        assert_eq!(console.text(), "first l");
        assert!(buffer.is_pending());
        console.budget = usize::MAX;
        buffer.flush(&mut console, now).unwrap();
        assert_eq!(console.text(), "first line\nsecond\n");
        assert!(!buffer.is_pending());
        assert_eq!(buffer.queued, 0);
        assert!(buffer.per_container.is_empty());
        assert_eq!(buffer.take_report(now), None);
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_reports_once_drained() {
        let now = Instant::now();
        // Container lines may use 3/4 of 40 bytes: 30, so three lines of 9.
        let mut buffer = ConsoleBuffer::new(40);
        for i in 0..5 {
            buffer.push(Origin::Container("web"), &format!("web {i:04}"), now);
        }
        assert_eq!(buffer.queued, 27);
        assert_eq!(buffer.take_report(now), None, "not drained yet");
        let mut console = FakeConsole::new(usize::MAX, usize::MAX);
        buffer.flush(&mut console, now).unwrap();
        assert_eq!(console.text(), "web 0000\nweb 0001\nweb 0002\n");
        assert_eq!(buffer.take_report(now), Some(2));
        assert_eq!(buffer.take_report(now), None, "reported once");
    }

    #[test]
    fn drops_are_reported_periodically_while_the_console_never_drains() {
        let start = Instant::now();
        let mut buffer = ConsoleBuffer::new(40);
        for i in 0..4 {
            buffer.push(Origin::Container("web"), &format!("web {i:04}"), start);
        }
        assert_eq!(buffer.take_report(start + REPORT_INTERVAL / 2), None);
        assert_eq!(buffer.take_report(start + REPORT_INTERVAL), Some(1));
        assert_eq!(buffer.take_report(start + REPORT_INTERVAL * 3), None);
    }

    #[test]
    fn init_lines_use_the_room_containers_may_not() {
        let now = Instant::now();
        let mut buffer = ConsoleBuffer::new(40);
        for i in 0..3 {
            assert!(buffer.push(Origin::Container("web"), &format!("web {i:04}"), now));
        }
        assert!(!buffer.push(Origin::Container("web"), "web 0003", now));
        assert!(
            buffer.push(Origin::Init, "event 01", now),
            "the reserved quarter"
        );
        // Full: a further event evicts the newest container line rather than be dropped.
        assert!(buffer.push(Origin::Init, "event 02", now));
        let mut console = FakeConsole::new(usize::MAX, usize::MAX);
        buffer.flush(&mut console, now).unwrap();
        assert_eq!(
            console.text(),
            "web 0000\nweb 0001\nevent 01\nevent 02\n",
            "web 0002 made room"
        );
        assert_eq!(buffer.take_report(now), Some(2));
    }

    #[test]
    fn a_flooding_container_cannot_keep_a_quiet_one_off_the_console() {
        let now = Instant::now();
        let mut buffer = ConsoleBuffer::new(400);
        for i in 0..100 {
            buffer.push(Origin::Container("flood"), &format!("flood {i:03}"), now);
        }
        assert!(buffer.push(Origin::Container("ticker"), "tick 1", now));
        for i in 100..200 {
            buffer.push(Origin::Container("flood"), &format!("flood {i:03}"), now);
        }
        assert!(buffer.push(Origin::Container("ticker"), "tick 2", now));
        let mut console = FakeConsole::new(usize::MAX, usize::MAX);
        buffer.flush(&mut console, now).unwrap();
        let text = console.text();
        assert!(
            text.contains("tick 1\n") && text.contains("tick 2\n"),
            "{text}"
        );
        assert!(text.ends_with("tick 2\n"), "{text}");
        assert!(text.len() <= 300, "{}", text.len());
    }

    #[test]
    fn the_line_being_written_is_never_evicted() {
        let now = Instant::now();
        let mut buffer = ConsoleBuffer::new(40);
        assert!(buffer.push(Origin::Container("web"), "web 0000", now));
        let mut console = FakeConsole::new(usize::MAX, 4);
        buffer.flush(&mut console, now).unwrap();
        // Only web's half-written line is queued: an event still fits beside it...
        assert!(buffer.push(Origin::Init, "a long event line, 30 bytes", now));
        // ...and one that does not fit is dropped rather than cut the line being written.
        assert!(!buffer.push(Origin::Init, "another event", now));
        console.budget = usize::MAX;
        buffer.flush(&mut console, now).unwrap();
        assert_eq!(console.text(), "web 0000\na long event line, 30 bytes\n");
    }

    #[test]
    fn a_failing_console_drops_what_is_queued() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("EIO"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let now = Instant::now();
        let mut buffer = ConsoleBuffer::new(100);
        buffer.push(Origin::Init, "one", now);
        buffer.push(Origin::Container("web"), "two", now);
        assert!(buffer.flush(&mut Broken, now).is_err());
        assert!(!buffer.is_pending());
        assert_eq!(buffer.take_report(now), Some(2));
    }
}
