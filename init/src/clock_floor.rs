//! The clock floor: a host never runs with its clock earlier than its image's build time.
//!
//! A board without a battery-backed RTC starts in 1970, a drifted or reset RTC years off;
//! either way TLS certificates look not yet valid and logs sort wrong. The image's build time
//! (`berth build` writes it to [`BUILD_TIME_PATH`]) is a time the host has certainly passed,
//! so init sets the clock to it when the clock reads earlier, as systemd does with its
//! build-time epoch. Network time, when it comes, corrects the rest.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use berth_manifest::BUILD_TIME_PATH;
use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, clock_settime, ClockId};

use crate::event::Event;

/// Why the floor could not be applied; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum ClockFloorError {
    #[error("cannot read the image's build time from {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds {text:?}, not a count of seconds since the epoch")]
    Malformed { path: String, text: String },
    #[error("cannot read the clock (CLOCK_REALTIME): {0}")]
    ReadClock(nix::Error),
    #[error("cannot set the clock (CLOCK_REALTIME) to {seconds}: {source}")]
    SetClock { seconds: u64, source: nix::Error },
}

/// Set once the floor raised the clock at this boot: the clock is then only the image's
/// build time, which pulls wait on network time for (see [`raised`]).
static RAISED: AtomicBool = AtomicBool::new(false);

/// Whether the floor raised the clock at this boot.
pub fn raised() -> bool {
    RAISED.load(Ordering::Relaxed)
}

/// Where the clock must go: the floor when `now` is earlier, else nothing to do.
pub fn needs_floor(now: Duration, floor: Duration) -> Option<Duration> {
    (now < floor).then_some(floor)
}

/// Parses the build-time file's text: decimal seconds since the epoch.
pub fn parse_build_time(text: &str) -> Option<Duration> {
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The image's build time, read from `path`.
pub fn build_time(path: &Path) -> Result<Duration, ClockFloorError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClockFloorError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_build_time(&text).ok_or_else(|| ClockFloorError::Malformed {
        path: path.display().to_string(),
        text: text.chars().take(40).collect(),
    })
}

/// Sets the clock to the image's build time when it reads earlier; says so with
/// `clock-floor was=SECONDS floor=SECONDS`.
pub fn apply() {
    match apply_from(Path::new(BUILD_TIME_PATH)) {
        Ok(()) => {}
        // Images built before the floor existed have no build-time file.
        Err(err @ ClockFloorError::Read { .. }) => log::info!("no clock floor: {err}"),
        Err(err) => log::error!("clock floor: {err}"),
    }
}

fn apply_from(path: &Path) -> Result<(), ClockFloorError> {
    let floor = build_time(path)?;
    let now =
        Duration::from(clock_gettime(ClockId::CLOCK_REALTIME).map_err(ClockFloorError::ReadClock)?);
    if let Some(target) = needs_floor(now, floor) {
        clock_settime(ClockId::CLOCK_REALTIME, TimeSpec::from_duration(target)).map_err(
            |source| ClockFloorError::SetClock {
                seconds: target.as_secs(),
                source,
            },
        )?;
        RAISED.store(true, Ordering::Relaxed);
        Event::new("clock-floor")
            .field("was", now.as_secs())
            .field("floor", target.as_secs())
            .emit();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_before_the_build_time_goes_to_it_and_a_later_one_stays() {
        let floor = Duration::from_secs(1_800_000_000);
        assert_eq!(
            needs_floor(Duration::from_secs(978_307_200), floor),
            Some(floor)
        );
        assert_eq!(needs_floor(floor, floor), None);
        assert_eq!(needs_floor(floor + Duration::from_secs(1), floor), None);
    }

    #[test]
    fn the_build_time_file_is_decimal_seconds() {
        assert_eq!(
            parse_build_time("1800000000\n"),
            Some(Duration::from_secs(1_800_000_000))
        );
        assert_eq!(parse_build_time("yesterday"), None);
        assert_eq!(parse_build_time("-5"), None);
    }
}
