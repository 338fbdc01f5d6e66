//! `healthcheck`: a command run inside a container at intervals, whose exit status says
//! whether the container is healthy, as Docker Compose writes it.

use std::fmt;
use std::time::Duration;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::duration::ComposeDuration;

/// Docker's defaults for the timings a `healthcheck` leaves out.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_HEALTH_RETRIES: u32 = 3;
pub const DEFAULT_HEALTH_START_PERIOD: Duration = Duration::ZERO;
pub const DEFAULT_HEALTH_START_INTERVAL: Duration = Duration::from_secs(5);

/// The shell a `CMD-SHELL` test runs in, as Docker runs it on Linux.
pub const HEALTH_SHELL: &str = "/bin/sh";

/// What a health check runs (Compose's `test`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthTest {
    /// `["CMD", program, args...]`: the program and its arguments, executed directly.
    Cmd(Vec<String>),
    /// `["CMD-SHELL", command]`, or the command as a plain string: run by `/bin/sh -c`.
    CmdShell(String),
    /// `["NONE"]`, or `disable = true`: no health check.
    None,
}

impl<'de> Deserialize<'de> for HealthTest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TestVisitor;
        impl<'de> Visitor<'de> for TestVisitor {
            type Value = HealthTest;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a command string, or a list [\"CMD\", ...], [\"CMD-SHELL\", \"...\"] or [\"NONE\"]",
                )
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<HealthTest, E> {
                shell_test(text.to_string()).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HealthTest, A::Error> {
                let mut words = Vec::new();
                while let Some(word) = seq.next_element::<String>()? {
                    words.push(word);
                }
                test_from_list(words).map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_any(TestVisitor)
    }
}

fn shell_test(command: String) -> Result<HealthTest, String> {
    if command.trim().is_empty() {
        return Err("the health check's shell command is empty".to_string());
    }
    Ok(HealthTest::CmdShell(command))
}

/// Reads Compose's list form, whose first word says how the rest is run.
fn test_from_list(words: Vec<String>) -> Result<HealthTest, String> {
    let mut words = words.into_iter();
    let Some(kind) = words.next() else {
        return Err(
            "the test is empty: write [\"CMD\", \"program\", \"arg\", ...], \
             [\"CMD-SHELL\", \"command\"] or [\"NONE\"] (an image's own HEALTHCHECK is not used)"
                .to_string(),
        );
    };
    let rest: Vec<String> = words.collect();
    match kind.as_str() {
        "CMD" => {
            if rest.is_empty() {
                return Err("\"CMD\" needs the program to run after it".to_string());
            }
            Ok(HealthTest::Cmd(rest))
        }
        "CMD-SHELL" => match <[String; 1]>::try_from(rest) {
            Ok([command]) => shell_test(command),
            Err(rest) => Err(format!(
                "\"CMD-SHELL\" takes exactly one string after it, the command for {HEALTH_SHELL} -c (got {})",
                rest.len()
            )),
        },
        "NONE" => {
            if !rest.is_empty() {
                return Err("\"NONE\" takes nothing after it".to_string());
            }
            Ok(HealthTest::None)
        }
        other => Err(format!(
            "`{other}` is not a test type: the list starts with \"CMD\", \"CMD-SHELL\" or \"NONE\" \
             (or write the test as one string, run by {HEALTH_SHELL} -c)"
        )),
    }
}

/// A container's health check. Timings are Docker's defaults where the manifest gives none.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawHealthCheck")]
pub struct HealthCheck {
    pub test: HealthTest,
    /// Between the end of one check and the start of the next, once `start_period` is over.
    pub interval: Duration,
    /// A check still running after this long is killed and counts as a failure.
    pub timeout: Duration,
    /// Consecutive failures that make the container unhealthy.
    pub retries: u32,
    /// After the container starts, failures do not count towards `retries` (a success
    /// still makes it healthy) for this long.
    pub start_period: Duration,
    /// The interval between checks during `start_period`.
    pub start_interval: Duration,
}

impl HealthCheck {
    /// Whether the check runs at all (`disable = true` and `["NONE"]` turn it off).
    pub fn is_enabled(&self) -> bool {
        self.test != HealthTest::None
    }

    /// The command line to run inside the container for one check (`/bin/sh -c COMMAND` for
    /// `CMD-SHELL`), or `None` when the check is disabled.
    pub fn argv(&self) -> Option<Vec<String>> {
        match &self.test {
            HealthTest::Cmd(argv) => Some(argv.clone()),
            HealthTest::CmdShell(command) => Some(vec![
                HEALTH_SHELL.to_string(),
                "-c".to_string(),
                command.clone(),
            ]),
            HealthTest::None => None,
        }
    }
}

/// The table as written, before defaults and the checks that relate its keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    test: Option<HealthTest>,
    interval: Option<PositiveDuration>,
    timeout: Option<PositiveDuration>,
    retries: Option<Retries>,
    start_period: Option<ComposeDuration>,
    start_interval: Option<PositiveDuration>,
    #[serde(default)]
    disable: bool,
}

impl TryFrom<RawHealthCheck> for HealthCheck {
    type Error = String;

    fn try_from(raw: RawHealthCheck) -> Result<HealthCheck, String> {
        let test = match (raw.test, raw.disable) {
            (Some(_), true) => {
                return Err(
                    "`test` and `disable = true` exclude each other: give one of them".to_string(),
                )
            }
            (None, true) => HealthTest::None,
            (Some(test), false) => test,
            (None, false) => {
                return Err(
                    "a healthcheck needs a `test` (or `disable = true`): an image's own HEALTHCHECK is not used"
                        .to_string(),
                )
            }
        };
        Ok(HealthCheck {
            test,
            interval: raw.interval.map_or(DEFAULT_HEALTH_INTERVAL, |d| d.0),
            timeout: raw.timeout.map_or(DEFAULT_HEALTH_TIMEOUT, |d| d.0),
            retries: raw.retries.map_or(DEFAULT_HEALTH_RETRIES, |r| r.0),
            start_period: raw
                .start_period
                .map_or(DEFAULT_HEALTH_START_PERIOD, |d| d.0),
            start_interval: raw
                .start_interval
                .map_or(DEFAULT_HEALTH_START_INTERVAL, |d| d.0),
        })
    }
}

/// A duration that must be more than zero: a zero interval or timeout would run checks
/// back to back, or kill each one at once.
struct PositiveDuration(Duration);

impl<'de> Deserialize<'de> for PositiveDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let duration = crate::parse_duration(&text).map_err(de::Error::custom)?;
        if duration.is_zero() {
            return Err(de::Error::custom(format!(
                "`{text}` is zero: it must be more than zero, e.g. `1s`"
            )));
        }
        Ok(PositiveDuration(duration))
    }
}

/// `retries`: at least one failure makes a container unhealthy.
struct Retries(u32);

impl<'de> Deserialize<'de> for Retries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(deserializer)?;
        match u32::try_from(value) {
            Ok(retries) if retries > 0 => Ok(Retries(retries)),
            _ => Err(de::Error::custom(format!(
                "{value} is not a number of retries: use 1 to {} (the consecutive failures that make the container unhealthy)",
                u32::MAX
            ))),
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn list(words: &[&str]) -> Result<HealthTest, String> {
        test_from_list(words.iter().map(|w| w.to_string()).collect())
    }

    #[test]
    fn test_list_forms() {
        assert_eq!(
            list(&["CMD", "curl", "-f", "http://localhost"]).unwrap(),
            HealthTest::Cmd(vec!["curl".into(), "-f".into(), "http://localhost".into()])
        );
        assert_eq!(
            list(&["CMD-SHELL", "curl -f localhost || exit 1"]).unwrap(),
            HealthTest::CmdShell("curl -f localhost || exit 1".into())
        );
        assert_eq!(list(&["NONE"]).unwrap(), HealthTest::None);
        for bad in [
            &[][..],
            &["CMD"],
            &["CMD-SHELL"],
            &["CMD-SHELL", "a", "b"],
            &["CMD-SHELL", " "],
            &["NONE", "x"],
            &["cmd", "true"],
            &["curl", "-f"],
        ] {
            assert!(list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn argv_runs_shell_commands_through_bin_sh() {
        let check = HealthCheck {
            test: HealthTest::CmdShell("test -e /ready".into()),
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            retries: DEFAULT_HEALTH_RETRIES,
            start_period: DEFAULT_HEALTH_START_PERIOD,
            start_interval: DEFAULT_HEALTH_START_INTERVAL,
        };
        assert_eq!(check.argv().unwrap(), ["/bin/sh", "-c", "test -e /ready"]);
        assert!(check.is_enabled());
        let none = HealthCheck {
            test: HealthTest::None,
            ..check
        };
        assert_eq!(none.argv(), None);
        assert!(!none.is_enabled());
    }
}
