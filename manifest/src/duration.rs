//! Durations as Docker Compose writes them: `10s`, `1m30s`, `500ms`, `1h`, `2.5s`.

use std::fmt;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

/// Units Compose (Go's `time.ParseDuration`) accepts, in nanoseconds.
const UNITS: &[(&str, f64)] = &[
    ("ns", 1.0),
    ("us", 1e3),
    ("µs", 1e3),
    ("ms", 1e6),
    ("s", 1e9),
    ("m", 60e9),
    ("h", 3600e9),
];

/// A duration read from the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ComposeDuration(pub Duration);

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!("`{text}` is not a duration: write a number and a unit (ns, us, ms, s, m, h), e.g. `10s` or `1m30s`")
    };
    if text.is_empty() {
        return Err(invalid());
    }
    if text.starts_with('-') {
        return Err(format!("`{text}` is negative: a duration is zero or more"));
    }
    let mut rest = text;
    let mut total_ns = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, after) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(invalid)?;
        total_ns += value * scale;
        rest = after;
    }
    if !total_ns.is_finite() || total_ns > u64::MAX as f64 {
        return Err(invalid());
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "checked finite, non-negative (no sign is accepted) and below u64::MAX above"
    )]
    Ok(Duration::from_nanos(total_ns.round() as u64))
}

impl<'de> Deserialize<'de> for ComposeDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(ComposeDuration)
            .map_err(de::Error::custom)
    }
}

impl fmt::Display for ComposeDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn compose_durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        for bad in ["", "10", "s", "10x", "-1s", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration("-1s").unwrap_err(),
            "`-1s` is negative: a duration is zero or more"
        );
    }
}
