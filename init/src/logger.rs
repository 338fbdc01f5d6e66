//! Log lines go to the console (for people and tests) and to `/dev/kmsg` (for `dmesg`).
//!
//! Each line is written with one `write` so that lines from init never interleave mid-line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::OnceLock;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Prefix of every console line init writes.
pub const CONSOLE_PREFIX: &str = "berth";
/// syslog facility `user`, shifted as `/dev/kmsg` wants it (facility * 8 + level).
const KMSG_FACILITY_USER: u8 = 1 << 3;

static LOGGER: Logger = Logger {
    kmsg: OnceLock::new(),
};

struct Logger {
    kmsg: OnceLock<File>,
}

/// Installs the logger. Lines go to the console at once and to `/dev/kmsg` once it exists.
pub fn install(level: LevelFilter) {
    // Fails only if a logger is already set, which then keeps serving.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Starts copying lines to `/dev/kmsg`; called once `/dev` is mounted.
pub fn attach_kmsg() {
    match OpenOptions::new().write(true).open("/dev/kmsg") {
        Ok(file) => {
            let _ = LOGGER.kmsg.set(file);
        }
        Err(err) => log::warn!("cannot open /dev/kmsg, logging to the console only: {err}"),
    }
}

/// Writes one line, as is, to the console and `/dev/kmsg`.
pub fn write_line(level: Level, line: &str) {
    let mut console = std::io::stdout().lock();
    let _ = console.write_all(format!("{line}\n").as_bytes());
    let _ = console.flush();
    if let Some(mut kmsg) = LOGGER.kmsg.get() {
        let priority = KMSG_FACILITY_USER + syslog_level(level);
        let _ = kmsg.write_all(format!("<{priority}>{line}\n").as_bytes());
    }
}

/// Writes one line to the console only (container output: it has its own log files).
pub fn console_line(line: &str) {
    let mut console = std::io::stdout().lock();
    let _ = console.write_all(format!("{line}\n").as_bytes());
    let _ = console.flush();
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
