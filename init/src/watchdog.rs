//! The hardware watchdog: armed at boot, fed from the event loop, disarmed at a clean
//! shutdown.
//!
//! Once armed, the device resets the machine unless it is written to within its timeout.
//! Only PID 1's event loop feeds it, on a timer that is one of the loop's deadlines, so a
//! loop that stops turning (PID 1 hung in a call, or the kernel hung under it) stops the
//! feeding and the hardware brings the host back. A feed is one `write(2)` of a byte, which
//! the driver handles without waiting on anything. At a clean shutdown the magic close (`V`,
//! then close) disarms it, so a halted host is not reset behind the operator's back.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_control::WatchdogStatus;
use berth_manifest::{WatchdogSettings, DEFAULT_WATCHDOG_DEVICE};

use crate::event::Event;

/// Feeds per timeout: a feed late by up to two intervals still lands in time.
const FEEDS_PER_TIMEOUT: u32 = 3;
/// The byte that, written last before close, tells a driver with `WDIOF_MAGICCLOSE` to stop
/// the timer (the kernel's watchdog API, `Documentation/watchdog/watchdog-api.rst`).
const MAGIC_CLOSE: &[u8] = b"V";

// <linux/watchdog.h>: `WDIOC_SETTIMEOUT _IOWR('W', 6, int)`, `WDIOC_GETTIMEOUT _IOR('W', 7, int)`.
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, std::ffi::c_int);
nix::ioctl_read!(wdioc_gettimeout, b'W', 7, std::ffi::c_int);

/// What went wrong with the watchdog; each names the device.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error("the manifest's [watchdog] device {device} does not exist")]
    Missing { device: PathBuf },
    #[error("cannot open the watchdog {device}: {source}")]
    Open {
        device: PathBuf,
        source: std::io::Error,
    },
    #[error("the watchdog {device} refused a timeout of {seconds} s: {source}")]
    SetTimeout {
        device: PathBuf,
        seconds: u64,
        source: nix::Error,
    },
    #[error("cannot feed the watchdog {device}: {source}")]
    Feed {
        device: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot disarm the watchdog {device} (magic close): {source}")]
    Disarm {
        device: PathBuf,
        source: std::io::Error,
    },
}

/// What `ps` shows: set while a watchdog is armed.
static STATUS: Mutex<Option<WatchdogStatus>> = Mutex::new(None);

/// The armed watchdog, for `berthctl ps`.
pub fn status() -> Option<WatchdogStatus> {
    STATUS.lock().ok().and_then(|status| status.clone())
}

fn set_status(status: Option<WatchdogStatus>) {
    if let Ok(mut slot) = STATUS.lock() {
        *slot = status;
    }
}

/// How often to feed a watchdog with `timeout`.
pub fn feed_interval(timeout: Duration) -> Duration {
    timeout / FEEDS_PER_TIMEOUT
}

/// The device to arm: the manifest's (which must exist), else `/dev/watchdog0` when present.
pub fn device_to_arm(
    settings: &WatchdogSettings,
    exists: impl Fn(&Path) -> bool,
) -> Result<Option<PathBuf>, WatchdogError> {
    match &settings.device {
        Some(device) => {
            let device = PathBuf::from(&device.0);
            if exists(&device) {
                Ok(Some(device))
            } else {
                Err(WatchdogError::Missing { device })
            }
        }
        None => {
            let device = PathBuf::from(DEFAULT_WATCHDOG_DEVICE);
            Ok(exists(&device).then_some(device))
        }
    }
}

#[derive(Debug)]
pub struct Watchdog {
    file: File,
    device: PathBuf,
    feed_every: Duration,
    next_feed: Instant,
    /// False under `berth.test_watchdog_nofeed=1`: armed, never fed.
    feeding: bool,
    /// Whether the last feed failed, so a failing device is logged once, not every feed.
    failing: bool,
}

impl Watchdog {
    /// Arms the watchdog the manifest names, or `/dev/watchdog0`; `None` when there is none.
    /// Says so with `watchdog-armed`.
    pub fn arm(
        settings: &WatchdogSettings,
        feeding: bool,
    ) -> Result<Option<Watchdog>, WatchdogError> {
        let Some(device) = device_to_arm(settings, Path::exists)? else {
            return Ok(None);
        };
        // Opening starts the timer, with the driver's own timeout until the one below is set.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&device)
            .map_err(|source| WatchdogError::Open {
                device: device.clone(),
                source,
            })?;
        let wanted = settings.timeout();
        let mut seconds =
            std::ffi::c_int::try_from(wanted.as_secs()).unwrap_or(std::ffi::c_int::MAX);
        // SAFETY: the fd is an open watchdog device for the call's duration and `seconds` is
        // a live c_int the kernel reads and writes back (the timeout it set).
        let set = unsafe { wdioc_settimeout(file.as_raw_fd(), &mut seconds) };
        let mut watchdog = Watchdog {
            file,
            device,
            feed_every: feed_interval(wanted),
            next_feed: Instant::now(),
            feeding,
            failing: false,
        };
        if let Err(source) = set {
            let err = WatchdogError::SetTimeout {
                device: watchdog.device.clone(),
                seconds: wanted.as_secs(),
                source,
            };
            // Armed all the same with the driver's timeout: disarm so the host is not reset
            // on a timeout it did not ask for.
            watchdog.disarm();
            return Err(err);
        }
        // The driver may round; the feeding follows what it set.
        let mut actual: std::ffi::c_int = 0;
        // SAFETY: as above; `actual` is a live c_int the kernel writes.
        let timeout = match unsafe { wdioc_gettimeout(watchdog.file.as_raw_fd(), &mut actual) } {
            Ok(_) => u64::try_from(actual).map_or(wanted, Duration::from_secs),
            Err(_) => u64::try_from(seconds).map_or(wanted, Duration::from_secs),
        };
        watchdog.feed_every = feed_interval(timeout);
        watchdog.feed(Instant::now());
        Event::new("watchdog-armed")
            .field("device", watchdog.device.display())
            .field("timeout", timeout.as_secs())
            .field("feeding", feeding)
            .emit();
        if !feeding {
            log::warn!(
                "berth.test_watchdog_nofeed: the watchdog {} is armed and never fed; the \
                 machine resets in {} s (a test parameter, never for a real host)",
                watchdog.device.display(),
                timeout.as_secs()
            );
        }
        set_status(Some(WatchdogStatus {
            device: watchdog.device.display().to_string(),
            timeout_s: timeout.as_secs(),
            feeding,
        }));
        Ok(Some(watchdog))
    }

    /// When the loop must turn next to feed it; none when it is not fed.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.feeding.then_some(self.next_feed)
    }

    /// Feeds it when a feed is due.
    pub fn tick(&mut self, now: Instant) {
        if self.feeding && now >= self.next_feed {
            self.feed(now);
        }
    }

    fn feed(&mut self, now: Instant) {
        if !self.feeding {
            return;
        }
        self.next_feed = now + self.feed_every;
        match self.file.write_all(b"\0") {
            Ok(()) => self.failing = false,
            Err(source) if !self.failing => {
                self.failing = true;
                let err = WatchdogError::Feed {
                    device: self.device.clone(),
                    source,
                };
                log::error!("{err}");
                Event::new("watchdog-failed").field("error", err).emit();
            }
            Err(_) => {}
        }
    }

    /// The magic close: the timer stops, and the host may halt without being reset.
    /// Says so with `watchdog-disarmed`.
    pub fn disarm(mut self) {
        set_status(None);
        match self.file.write_all(MAGIC_CLOSE) {
            Ok(()) => Event::new("watchdog-disarmed")
                .field("device", self.device.display())
                .emit(),
            Err(source) => {
                let err = WatchdogError::Disarm {
                    device: self.device.clone(),
                    source,
                };
                log::error!("{err}");
                Event::new("watchdog-failed").field("error", err).emit();
            }
        }
        // Closing after the `V` is what stops the timer.
        drop(self.file);
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use berth_manifest::AbsolutePath;

    #[test]
    fn fed_three_times_per_timeout() {
        assert_eq!(
            feed_interval(Duration::from_secs(60)),
            Duration::from_secs(20)
        );
        assert_eq!(
            feed_interval(Duration::from_secs(6)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn the_default_device_only_when_present_and_a_named_one_must_exist() {
        let none = WatchdogSettings::default();
        assert_eq!(device_to_arm(&none, |_| false).unwrap(), None);
        assert_eq!(
            device_to_arm(&none, |p| p == Path::new("/dev/watchdog0")).unwrap(),
            Some(PathBuf::from("/dev/watchdog0"))
        );
        let named = WatchdogSettings {
            device: Some(AbsolutePath("/dev/watchdog1".to_string())),
            timeout: None,
        };
        assert!(matches!(
            device_to_arm(&named, |_| false),
            Err(WatchdogError::Missing { .. })
        ));
        assert_eq!(
            device_to_arm(&named, |_| true).unwrap(),
            Some(PathBuf::from("/dev/watchdog1"))
        );
    }
}
