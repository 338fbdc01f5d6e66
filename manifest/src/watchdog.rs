//! `[watchdog]`: the hardware watchdog init arms and feeds.

use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

use crate::container::AbsolutePath;

/// The device init arms when the manifest names none and it exists.
pub const DEFAULT_WATCHDOG_DEVICE: &str = "/dev/watchdog0";
/// The timeout set when the manifest gives none: long enough that a loaded host never misses
/// a feed, short enough that a hung one is back within a minute or two.
pub const DEFAULT_WATCHDOG_TIMEOUT: Duration = Duration::from_secs(60);
/// The Linux watchdog API takes whole seconds in an `int`; drivers cap far lower (the
/// i6300esb at about 2046 s), and say so when init reads the timeout back.
const MAX_WATCHDOG_TIMEOUT_SECS: u64 = 86_400;

/// The `[watchdog]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WatchdogSettings {
    /// The watchdog device; `/dev/watchdog0` when it exists and this is unset.
    pub device: Option<AbsolutePath>,
    /// Seconds without a feed before the hardware resets the machine.
    pub timeout: Option<WatchdogTimeout>,
}

impl WatchdogSettings {
    pub fn timeout(&self) -> Duration {
        self.timeout
            .map_or(DEFAULT_WATCHDOG_TIMEOUT, |t| Duration::from_secs(t.0))
    }
}

/// Whole seconds, at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchdogTimeout(pub u64);

impl<'de> Deserialize<'de> for WatchdogTimeout {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let seconds = i64::deserialize(deserializer)?;
        match u64::try_from(seconds) {
            Ok(s) if (1..=MAX_WATCHDOG_TIMEOUT_SECS).contains(&s) => Ok(WatchdogTimeout(s)),
            _ => Err(de::Error::custom(format!(
                "{seconds} is not a watchdog timeout: whole seconds from 1 to \
                 {MAX_WATCHDOG_TIMEOUT_SECS}"
            ))),
        }
    }
}
