//! `berth.*` parameters on the kernel command line: what an operator can change at the boot
//! prompt or in a rig without rebuilding the image. `docs/kernel-parameters.md` lists them.

use std::path::PathBuf;
use std::time::Duration;

use berth_blockdev::DeviceSpec;
use berth_manifest::{parse_duration, MANIFEST_PATH};
use log::LevelFilter;

use crate::shutdown::ShutdownAction;

/// Default time between SIGTERM and SIGKILL for processes left after the containers stopped.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the power button does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ButtonAction {
    Shutdown(ShutdownAction),
    Ignore,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// `berth.manifest=PATH`: the manifest to read instead of `/etc/berth/manifest.toml`.
    pub manifest: PathBuf,
    /// `berth.log_level=error|warn|info|debug|trace`.
    pub log_level: LevelFilter,
    /// `berth.shutdown_timeout=DURATION`: SIGTERM to SIGKILL for leftover processes.
    pub shutdown_timeout: Duration,
    /// `berth.power_button=poweroff|reboot|halt|ignore`.
    pub power_button: ButtonAction,
    /// `berth.data=PARTLABEL=berth-data` (or LABEL=, UUID=, /dev/...): the partition mounted
    /// on `/var/lib/berth`. Disk images set it in their boot entries.
    pub data: Option<DeviceSpec>,
    /// `berth.slot=a|b`: the boot slot the boot loader started, for the record.
    pub slot: Option<String>,
    /// `berth.metadata=ec2`: ask the EC2 metadata service for the manifest even when DMI does
    /// not say this is an EC2 instance.
    pub metadata_ec2: bool,
    /// `berth.test_watchdog_nofeed=1`, for tests only: arm the hardware watchdog and never
    /// feed it, so a test can see the machine reset.
    pub test_watchdog_nofeed: bool,
    /// `berth.test_update_pause=DURATION`, for tests only: `berth-update stage` stops this
    /// long with the slot half written (the kernel's temporary file synced; the initrd, the
    /// renames and the loader entry not yet), after saying so on the console, so that a test
    /// can cut the power there.
    pub test_update_pause: Option<Duration>,
}

impl Default for BootParams {
    fn default() -> Self {
        BootParams {
            manifest: PathBuf::from(MANIFEST_PATH),
            log_level: LevelFilter::Info,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            power_button: ButtonAction::Shutdown(ShutdownAction::PowerOff),
            data: None,
            slot: None,
            metadata_ec2: false,
            test_watchdog_nofeed: false,
            test_update_pause: None,
        }
    }
}

/// Parses the command line; unknown or malformed `berth.*` parameters come back as warnings
/// and leave the default in place.
pub fn parse(cmdline: &str) -> (BootParams, Vec<String>) {
    let mut params = BootParams::default();
    let mut warnings = Vec::new();
    for word in cmdline.split_whitespace() {
        let Some(setting) = word.strip_prefix("berth.") else {
            continue;
        };
        let (key, value) = setting.split_once('=').unwrap_or((setting, ""));
        let applied = match key {
            "manifest" if value.starts_with('/') => {
                params.manifest = PathBuf::from(value);
                true
            }
            "log_level" => value
                .parse::<LevelFilter>()
                .map(|level| params.log_level = level)
                .is_ok(),
            "data" => DeviceSpec::parse(value)
                .map(|spec| params.data = Some(spec))
                .is_ok(),
            "metadata" if value == "ec2" => {
                params.metadata_ec2 = true;
                true
            }
            "test_watchdog_nofeed" if value == "1" => {
                params.test_watchdog_nofeed = true;
                true
            }
            "test_update_pause" => parse_duration(value)
                .map(|pause| params.test_update_pause = Some(pause))
                .is_ok(),
            "slot" if !value.is_empty() => {
                params.slot = Some(value.to_string());
                true
            }
            "shutdown_timeout" => parse_duration(value)
                .map(|timeout| params.shutdown_timeout = timeout)
                .is_ok(),
            "power_button" => {
                let action = match value {
                    "poweroff" => Some(ButtonAction::Shutdown(ShutdownAction::PowerOff)),
                    "reboot" => Some(ButtonAction::Shutdown(ShutdownAction::Reboot)),
                    "halt" => Some(ButtonAction::Shutdown(ShutdownAction::Halt)),
                    "ignore" => Some(ButtonAction::Ignore),
                    _ => None,
                };
                action.map(|a| params.power_button = a).is_some()
            }
            _ => false,
        };
        if !applied {
            warnings.push(format!("kernel command line: ignoring `{word}`"));
        }
    }
    (params, warnings)
}

/// Reads `/proc/cmdline`.
pub fn read() -> (BootParams, Vec<String>) {
    match std::fs::read_to_string("/proc/cmdline") {
        Ok(text) => parse(&text),
        Err(err) => (
            BootParams::default(),
            vec![format!("cannot read /proc/cmdline: {err}")],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn berth_parameters_override_defaults_and_others_are_left_alone() {
        let (params, warnings) = parse(
            "console=ttyS0 quiet berth.manifest=/etc/berth/other.toml berth.log_level=debug \
             berth.shutdown_timeout=2s berth.power_button=reboot berth.test_watchdog_nofeed=1 \
             berth.test_update_pause=30s",
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(params.manifest, PathBuf::from("/etc/berth/other.toml"));
        assert_eq!(params.log_level, LevelFilter::Debug);
        assert_eq!(params.shutdown_timeout, Duration::from_secs(2));
        assert!(params.test_watchdog_nofeed);
        assert_eq!(params.test_update_pause, Some(Duration::from_secs(30)));
        assert_eq!(
            params.power_button,
            ButtonAction::Shutdown(ShutdownAction::Reboot)
        );
    }

    #[test]
    fn bad_values_warn_and_keep_the_default() {
        let (params, warnings) =
            parse("berth.manifest=relative berth.log_level=loud berth.nope=1 berth.power_button=x");
        assert_eq!(params, BootParams::default());
        assert_eq!(warnings.len(), 4);
    }
}
