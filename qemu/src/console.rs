//! The guest's serial console, captured line by line with the time each line arrived.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One console line and when the rig saw it, counted from QEMU's start.
#[derive(Debug, Clone)]
pub struct ConsoleLine {
    pub at: Duration,
    pub text: String,
}

#[derive(Debug, Default)]
struct State {
    lines: Vec<ConsoleLine>,
    closed: bool,
}

/// Lines shared between the reader thread and the test.
#[derive(Debug, Default)]
pub(crate) struct Console {
    state: Mutex<State>,
    changed: Condvar,
}

impl Console {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads `source` until it closes, recording lines, copying raw bytes to `log` and, when
    /// asked, to this process' stdout.
    pub(crate) fn spawn_reader(
        self: &Arc<Self>,
        source: impl Read + Send + 'static,
        mut log: File,
        echo: bool,
        started: Instant,
    ) {
        let console = Arc::clone(self);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(source);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match reader.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let _ = log.write_all(&raw);
                if echo {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&raw);
                    let _ = out.flush();
                }
                let text = String::from_utf8_lossy(&raw)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                let mut state = console.lock();
                state.lines.push(ConsoleLine {
                    at: started.elapsed(),
                    text,
                });
                console.changed.notify_all();
            }
            let _ = log.flush();
            console.lock().closed = true;
            console.changed.notify_all();
        });
    }

    /// Waits until a line at index `from` or later satisfies `matches`; returns its index.
    /// `None` when the deadline passes, the console closes or the guest's kernel panics
    /// first (a guest whose init died prints no more lines: waiting on would only cost time).
    /// The first line from index `from` on that says the guest's kernel panicked.
    pub(crate) fn fatal_line(&self, from: usize) -> Option<String> {
        self.lock()
            .lines
            .iter()
            .skip(from)
            .find(|line| is_fatal(&line.text))
            .map(|line| line.text.clone())
    }

    pub(crate) fn wait_for(
        &self,
        from: usize,
        deadline: Instant,
        matches: impl Fn(&str) -> bool,
    ) -> Option<(usize, ConsoleLine)> {
        let mut state = self.lock();
        let mut next = from;
        loop {
            if let Some((offset, line)) = state
                .lines
                .iter()
                .enumerate()
                .skip(next)
                .find(|(_, line)| matches(&line.text))
            {
                return Some((offset, line.clone()));
            }
            let fatal = state
                .lines
                .iter()
                .skip(next)
                .any(|line| is_fatal(&line.text));
            next = state.lines.len().max(from);
            let now = Instant::now();
            if fatal || state.closed || now >= deadline {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    pub(crate) fn wait_closed(&self, deadline: Instant) -> bool {
        let mut state = self.lock();
        while !state.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        true
    }

    pub(crate) fn lines(&self) -> Vec<ConsoleLine> {
        self.lock().lines.clone()
    }
}

/// A console line after which the guest does nothing useful: its kernel panicked (init
/// exiting is one such panic: "Attempted to kill init!").
fn is_fatal(line: &str) -> bool {
    line.contains(KERNEL_PANIC_MARKER)
}

/// What the kernel prints when it panics, whatever the arch.
pub(crate) const KERNEL_PANIC_MARKER: &str = "Kernel panic - not syncing";

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn waits_for_a_line_that_arrives_later_and_reports_closing() {
        let console = Arc::new(Console::default());
        let dir = std::env::temp_dir().join(format!("berth-console-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = File::create(dir.join("console.log")).unwrap();
        let (reader, mut writer) = std::io::pipe().unwrap();
        console.spawn_reader(reader, log, false, Instant::now());
        writer
            .write_all(b"booting\r\nberth event=ready boot_ms=1\n")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (index, line) = console
            .wait_for(0, deadline, |l| l.contains("event=ready"))
            .unwrap();
        assert_eq!(
            (index, line.text.as_str()),
            (1, "berth event=ready boot_ms=1")
        );
        drop(writer);
        assert!(console
            .wait_for(2, deadline, |l| l.contains("never"))
            .is_none());
        assert!(console.wait_closed(deadline));
        let logged = std::fs::read_to_string(dir.join("console.log")).unwrap();
        assert!(logged.starts_with("booting\r\n"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_kernel_panic_ends_the_wait_at_once() {
        let console = Arc::new(Console::default());
        let dir = std::env::temp_dir().join(format!("berth-console-panic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = File::create(dir.join("console.log")).unwrap();
        let (reader, mut writer) = std::io::pipe().unwrap();
        console.spawn_reader(reader, log, false, Instant::now());
        writer
            .write_all(
                b"[    2.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n",
            )
            .unwrap();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        assert!(console
            .wait_for(0, deadline, |l| l.contains("event=ready"))
            .is_none());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no wait to the deadline"
        );
        assert!(console
            .fatal_line(0)
            .is_some_and(|l| l.contains("Attempted to kill init")));
        drop(writer);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
