//! A container's stdout and stderr, line by line, to the console as `<name> | <line>` and
//! to `/var/log/berth/<name>.log`, which is rotated once it reaches its size cap.
//!
//! A stream is read at most [`READ_BUDGET`] bytes per event-loop turn: what is left stays in
//! the pipe, which `poll` reports readable again on the next turn, and every other stream,
//! the control socket, reaping and the power button are served in between. A container that
//! writes without end (`yes`) so gets its fair share of init and no more. The log file and
//! the in-memory ring keep every line; only the console may drop some (see the logger).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

/// Where container logs go.
pub const LOG_DIR: &str = "/var/log/berth";
/// A log file is rotated (to `<name>.log.1`, replacing the previous one) past this size.
pub const LOG_FILE_CAP: u64 = 1 << 20;
/// A line longer than this is cut into pieces, so one endless line cannot grow init.
const MAX_LINE: usize = 16 << 10;
/// Bytes read per `read(2)`.
const READ_CHUNK: usize = 8 << 10;
/// Bytes read from one stream per event-loop turn, at most. Small enough that a turn stays
/// short even when every line also goes to an emulated serial console (where each byte
/// costs the guest CPU), large enough for any steady logger.
pub const READ_BUDGET: usize = 32 << 10;
/// Bytes read from a stream whose container has exited, at most: all a pipe can hold
/// (`/proc/sys/fs/pipe-max-size`'s default), so its last lines are logged before its exit.
const EXIT_BUDGET: usize = 1 << 20;

/// One container's log file.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    /// The last lines with when they came, kept in memory so `berthctl logs` works without
    /// a data partition.
    recent: std::collections::VecDeque<(std::time::Instant, String)>,
    /// The bytes of the lines in `recent`.
    recent_bytes: usize,
    /// Lines not yet written to the file: written at the end of each turn's read of the
    /// stream (and every [`READ_CHUNK`] bytes), not one `write(2)` per line.
    pending: Vec<u8>,
}

/// Lines of each container's output kept in memory...
pub const RECENT_LINES: usize = 1000;
/// ...and at most this many bytes of them, so a hundred chatty containers cost init a few
/// MiB at most rather than a thousand long lines each.
pub const RECENT_BYTES: usize = 64 << 10;

impl LogFile {
    pub fn new(container: &str) -> LogFile {
        let path = PathBuf::from(LOG_DIR).join(format!("{container}.log"));
        LogFile {
            path,
            file: None,
            size: 0,
            recent: std::collections::VecDeque::new(),
            recent_bytes: 0,
            pending: Vec::new(),
        }
    }

    /// The last `tail` lines kept in memory (all of them when `tail` is None), of those
    /// that came within `since` of now when given.
    pub fn recent(&self, tail: Option<usize>, since: Option<std::time::Duration>) -> Vec<String> {
        let now = std::time::Instant::now();
        let lines: Vec<&String> = self
            .recent
            .iter()
            .filter(|(at, _)| since.is_none_or(|s| now.saturating_duration_since(*at) <= s))
            .map(|(_, line)| line)
            .collect();
        let skip = tail.map_or(0, |t| lines.len().saturating_sub(t));
        lines.into_iter().skip(skip).cloned().collect()
    }

    /// Every line kept, with when it came.
    pub fn recent_timed(&self) -> Vec<(std::time::Instant, String)> {
        self.recent.iter().cloned().collect()
    }

    fn open(&mut self) -> Option<&mut File> {
        if self.file.is_none() {
            let _ = std::fs::create_dir_all(LOG_DIR);
            match OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                Ok(file) => {
                    self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
                    self.file = Some(file);
                }
                Err(err) => log::warn!("cannot open {}: {err}", self.path.display()),
            }
        }
        self.file.as_mut()
    }

    fn remember(&mut self, line: &str) {
        self.recent
            .push_back((std::time::Instant::now(), line.to_string()));
        self.recent_bytes += line.len();
        while self.recent.len() > RECENT_LINES
            || (self.recent_bytes > RECENT_BYTES && self.recent.len() > 1)
        {
            if let Some((_, old)) = self.recent.pop_front() {
                self.recent_bytes -= old.len();
            }
        }
        // A deque keeps its largest capacity: give back what a burst made it take.
        if self.recent.capacity() > 2 * self.recent.len().max(16) {
            self.recent.shrink_to_fit();
        }
    }

    fn append(&mut self, line: &str) {
        self.remember(line);
        self.pending.extend_from_slice(line.as_bytes());
        self.pending.push(b'\n');
        if self.pending.len() >= READ_CHUNK {
            self.write_pending();
        }
    }

    /// Writes the lines appended since the last call to the file, rotating it first once it
    /// has reached its cap.
    fn write_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut self.pending);
        if self.size >= LOG_FILE_CAP {
            self.file = None;
            let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
        }
        let Some(file) = self.open() else { return };
        if file.write_all(&bytes).is_ok() {
            self.size += bytes.len() as u64;
        }
    }
}

/// A pipe end the container writes its output to, and the part of a line read so far.
#[derive(Debug)]
pub struct LogStream {
    fd: OwnedFd,
    partial: Vec<u8>,
}

impl LogStream {
    /// Takes the read end of the container's output pipe; reads never block.
    pub fn new(fd: OwnedFd) -> LogStream {
        if let Ok(flags) = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL) {
            let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
            let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags));
        }
        LogStream {
            fd,
            partial: Vec::new(),
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Reads what is there, at most [`READ_BUDGET`] bytes, and logs each complete line.
    /// Returns false at end of stream.
    pub fn drain(&mut self, container: &str, file: &mut LogFile) -> bool {
        let open = self.read_up_to(READ_BUDGET, container, file);
        file.write_pending();
        open
    }

    /// Reads what its exited container left in the pipe (bounded by what a pipe holds, since
    /// nothing writes to it any more). Returns false at end of stream.
    pub fn drain_to_end(&mut self, container: &str, file: &mut LogFile) -> bool {
        let open = self.read_up_to(EXIT_BUDGET, container, file);
        file.write_pending();
        open
    }

    fn read_up_to(&mut self, budget: usize, container: &str, file: &mut LogFile) -> bool {
        let mut buf = [0u8; READ_CHUNK];
        let mut read = 0;
        while read < budget {
            let want = READ_CHUNK.min(budget - read);
            match nix::unistd::read(&self.fd, buf.get_mut(..want).unwrap_or_default()) {
                Ok(0) => {
                    self.flush_partial(container, file);
                    return false;
                }
                Ok(n) => {
                    read += n;
                    self.partial
                        .extend_from_slice(buf.get(..n).unwrap_or_default());
                    self.emit_lines(container, file);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return true,
                Err(_) => return false,
            }
        }
        // Budget spent: the rest waits in the pipe for the next turn.
        true
    }

    fn emit_lines(&mut self, container: &str, file: &mut LogFile) {
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            emit(container, file, line.get(..end).unwrap_or_default());
        }
        while self.partial.len() >= MAX_LINE {
            let piece: Vec<u8> = self.partial.drain(..MAX_LINE).collect();
            emit(container, file, &piece);
        }
    }

    fn flush_partial(&mut self, container: &str, file: &mut LogFile) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            emit(container, file, &rest);
        }
    }
}

/// Whether a `berthctl logs -f` is connected: only then are new lines queued for it.
pub static FOLLOWED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static NEW: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// (container, line) of the output lines since the last call, for followers.
pub fn take_new() -> Vec<(String, String)> {
    NEW.lock()
        .map(|mut new| std::mem::take(&mut *new))
        .unwrap_or_default()
}

fn emit(container: &str, file: &mut LogFile, raw: &[u8]) {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches('\r');
    if FOLLOWED.load(std::sync::atomic::Ordering::Relaxed) {
        if let Ok(mut new) = NEW.lock() {
            new.push((container.to_string(), text.to_string()));
        }
    }
    crate::journal::push(Some(container), text);
    file.append(text);
    crate::logger::console_line(container, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_lines_within_its_line_and_byte_caps() {
        let mut file = LogFile::new("ring-test");
        for i in 0..(RECENT_LINES + 10) {
            file.remember(&format!("line-{i}"));
        }
        let kept = file.recent(None, None);
        assert_eq!(kept.len(), RECENT_LINES);
        assert_eq!(kept.last().map(String::as_str), Some("line-1009"));
        let long = "x".repeat(1024);
        for _ in 0..200 {
            file.remember(&long);
        }
        assert!(file.recent_bytes <= RECENT_BYTES, "{}", file.recent_bytes);
        assert_eq!(file.recent(None, None).len(), RECENT_BYTES / 1024);
        assert_eq!(file.recent(Some(2), None).len(), 2);
    }
}
