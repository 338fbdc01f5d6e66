//! Log lines go to the console (for people and tests) and to `/dev/kmsg` (for `dmesg`).
//!
//! Each line is written with one `write` so that lines from init never interleave mid-line.
//!
//! PID 1 never waits on the console: once `/dev` is mounted, console lines (init's own and
//! containers') go through a bounded queue ([`console_buffer`]) written to a non-blocking
//! console fd, so a slow serial line or one stopped by XOFF (Ctrl-S) costs dropped lines
//! (reported as `console-dropped`), never a stalled host. The event loop polls the console
//! for `POLLOUT` while lines wait ([`pending_console`]) and calls [`flush_console`] each turn.

mod console_buffer;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};
use nix::fcntl::OFlag;

use console_buffer::{ConsoleBuffer, Origin};

/// Prefix of every console line init writes.
pub const CONSOLE_PREFIX: &str = "berth";
/// syslog facility `user`, shifted as `/dev/kmsg` wants it (facility * 8 + level).
const KMSG_FACILITY_USER: u8 = 1 << 3;
/// The console init writes to once `/dev` is mounted, opened anew (not fd 1, whose open
/// file is shared with the children that inherit it and must stay blocking for them).
const CONSOLE: &str = "/dev/console";
/// The same device, reopened through init's own stdout, should `/dev/console` be missing.
const CONSOLE_FALLBACK: &str = "/proc/self/fd/1";
/// The kernel's rate limit on `/dev/kmsg` writes (10 lines per 5 s by default): `on` lets
/// every event line through.
const PRINTK_DEVKMSG: &str = "/proc/sys/kernel/printk_devkmsg";

static LOGGER: Logger = Logger {
    kmsg: OnceLock::new(),
    console: OnceLock::new(),
    queue: Mutex::new(ConsoleBuffer::new(console_buffer::CAPACITY)),
};

struct Logger {
    kmsg: OnceLock<File>,
    /// The non-blocking console; until it is open, lines go to stdout (blocking, at boot).
    console: OnceLock<File>,
    queue: Mutex<ConsoleBuffer>,
}

/// Installs the logger. Lines go to the console at once and to `/dev/kmsg` once it exists.
pub fn install(level: LevelFilter) {
    // Fails only if a logger is already set, which then keeps serving.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Called once `/dev` and `/proc` are mounted: lifts `/dev/kmsg`'s rate limit, starts
/// copying lines to `/dev/kmsg`, and switches the console to a non-blocking fd behind the
/// bounded queue.
pub fn attach_kmsg() {
    attach_console();
    if let Err(err) = std::fs::write(PRINTK_DEVKMSG, "on\n") {
        // Locked by `printk.devkmsg=` on the command line, or an older kernel.
        log::warn!(
            "cannot write `on` to {PRINTK_DEVKMSG}: {err}; the kernel may rate-limit init's lines in /dev/kmsg"
        );
    }
    match OpenOptions::new().write(true).open("/dev/kmsg") {
        Ok(file) => {
            let _ = LOGGER.kmsg.set(file);
        }
        Err(err) => log::warn!("cannot open /dev/kmsg, logging to the console only: {err}"),
    }
}

fn attach_console() {
    let open = |path: &str| {
        OpenOptions::new()
            .write(true)
            .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
            .open(path)
    };
    match open(CONSOLE).or_else(|first| open(CONSOLE_FALLBACK).map_err(|_| first)) {
        Ok(file) => {
            let _ = LOGGER.console.set(file);
        }
        Err(err) => {
            log::warn!("cannot open {CONSOLE} non-blocking: {err}; console writes may block init")
        }
    }
}

/// Writes one line, as is, to the console and `/dev/kmsg`.
pub fn write_line(level: Level, line: &str) {
    to_console(Origin::Init, line);
    if let Some(mut kmsg) = LOGGER.kmsg.get() {
        let priority = KMSG_FACILITY_USER + syslog_level(level);
        let _ = kmsg.write_all(format!("<{priority}>{line}\n").as_bytes());
    }
}

/// Writes one line of `container`'s output to the console only (it has its own log files),
/// as `<container> | <line>`.
pub fn console_line(container: &str, line: &str) {
    to_console(
        Origin::Container(container),
        &format!("{container} | {line}"),
    );
}

fn to_console(origin: Origin<'_>, line: &str) {
    let Some(console) = LOGGER.console.get() else {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(format!("{line}\n").as_bytes());
        let _ = stdout.flush();
        return;
    };
    let now = Instant::now();
    match LOGGER.queue.try_lock() {
        Ok(mut queue) => push_and_flush(&mut queue, console, origin, line, now),
        // Poisoned: a panic while the queue was held; its state is still consistent.
        Err(TryLockError::Poisoned(poisoned)) => {
            push_and_flush(&mut poisoned.into_inner(), console, origin, line, now)
        }
        // Held by this very thread (init has one): a line logged while the queue was being
        // written, by the panic hook say. Straight to the console, without waiting.
        Err(TryLockError::WouldBlock) => {
            let _ = (&*console).write(format!("{line}\n").as_bytes());
        }
    }
}

fn push_and_flush(
    queue: &mut ConsoleBuffer,
    console: &File,
    origin: Origin<'_>,
    line: &str,
    now: Instant,
) {
    queue.push(origin, line, now);
    // init's lines leave at once (they still reach the console while the event loop is
    // not turning, during shutdown); container lines leave together at the end of the turn
    // (`flush_console`), many per write.
    if origin == Origin::Init {
        let _ = queue.flush(&mut &*console, now);
    }
}

/// The console, while lines wait for it to become writable: what the event loop polls for
/// `POLLOUT`.
pub fn pending_console() -> Option<BorrowedFd<'static>> {
    let console = LOGGER.console.get()?;
    let pending = match LOGGER.queue.try_lock() {
        Ok(queue) => queue.is_pending(),
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner().is_pending(),
        Err(TryLockError::WouldBlock) => false,
    };
    pending.then(|| console.as_fd())
}

/// Writes what the console takes now; returns how many lines were dropped when that is to
/// be reported (the queue drained, or a flood has gone on for a while).
pub fn flush_console() -> Option<u64> {
    let console = LOGGER.console.get()?;
    let now = Instant::now();
    let mut queue = match LOGGER.queue.try_lock() {
        Ok(queue) => queue,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return None,
    };
    // A console that fails (not one that would block) has its queued lines dropped and
    // counted: the report says so.
    let _ = queue.flush(&mut &*console, now);
    queue.take_report(now)
}

/// Waits up to `timeout` for the queued lines to reach the console: the last lines before
/// the machine goes down. Lines still queued after it are lost.
pub fn drain_console(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while let Some(fd) = pending_console() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLOUT)];
        let wait = nix::poll::PollTimeout::try_from(left).unwrap_or(nix::poll::PollTimeout::MAX);
        if let Err(err) = nix::poll::poll(&mut fds, wait) {
            if err != nix::errno::Errno::EINTR {
                return;
            }
        }
        let _ = flush_console();
    }
}

fn syslog_level(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = match record.level() {
            Level::Info => format!("{CONSOLE_PREFIX}: {}", record.args()),
            level => format!(
                "{CONSOLE_PREFIX}: {}: {}",
                level.as_str().to_lowercase(),
                record.args()
            ),
        };
        write_line(record.level(), &line);
    }

    fn flush(&self) {}
}
