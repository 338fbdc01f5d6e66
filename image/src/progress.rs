//! What `berth` says while it works on something slow (a kernel fetched on first use, the
//! modules compressed on a cold cache, a kernel build, QEMU before the guest's first line):
//! a line that updates in place on a terminal, plain lines otherwise, as cargo does. On
//! stderr, so that stdout stays the commands' output.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// A terminal's line is redrawn at most this often.
const REDRAW: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct Progress {
    what: String,
    started: Instant,
    drawn: Option<Instant>,
    terminal: bool,
}

impl Progress {
    /// Says that `what` starts.
    pub fn start(what: impl Into<String>) -> Progress {
        let what = what.into();
        let terminal = std::io::stderr().is_terminal();
        if !terminal {
            say(&format!("berth: {what}\n"));
        }
        let mut progress = Progress {
            what,
            started: Instant::now(),
            drawn: None,
            terminal,
        };
        progress.update(0, 0);
        progress
    }

    /// How far along it is (`done` of `total`; a total of 0 shows the time only). Redrawn on a
    /// terminal; nothing otherwise (the start and the end are said).
    pub fn update(&mut self, done: u64, total: u64) {
        if !self.terminal || self.drawn.is_some_and(|at| at.elapsed() < REDRAW) {
            return;
        }
        self.drawn = Some(Instant::now());
        let elapsed = self.started.elapsed().as_secs();
        let count = match (done, total) {
            (_, 0) if done > 0 => format!(" {done}"),
            (_, 0) => String::new(),
            _ => format!(" {done}/{total}"),
        };
        say(&format!(
            "\r\x1b[2Kberth: {}{count} ({elapsed} s)",
            self.what
        ));
    }

    /// Says that it is done, and how long it took.
    pub fn finish(self) {
        let took = self.started.elapsed().as_secs_f64();
        let line = format!("berth: {}: done in {took:.1} s\n", self.what);
        if self.terminal {
            say(&format!("\r\x1b[2K{line}"));
        } else {
            say(&line);
        }
    }
}

fn say(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr
        .write_all(text.as_bytes())
        .and_then(|()| stderr.flush());
}
