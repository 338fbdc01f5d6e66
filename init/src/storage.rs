//! `[[mount]]`: find each device (by path, label, UUID or GPT name), load its filesystem's
//! module, and mount it before any container starts. A device that does not come is one
//! error event; only the containers whose volumes live under its target are held back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_blockdev::{find, SYS_CLASS_BLOCK};
use berth_manifest::MountEntry;
use nix::mount::MsFlags;

use crate::coldplug::{self, Coldplug};
use crate::event::Event;

/// How long a device may take to appear (drivers probing, disks spinning up).
const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often to look again meanwhile.
const DEVICE_POLL: Duration = Duration::from_millis(100);

/// mount(8) options that are flags to mount(2); everything else goes to the filesystem.
const FLAG_OPTIONS: &[(&str, MsFlags, bool)] = &[
    ("ro", MsFlags::MS_RDONLY, true),
    ("rw", MsFlags::MS_RDONLY, false),
    ("nosuid", MsFlags::MS_NOSUID, true),
    ("suid", MsFlags::MS_NOSUID, false),
    ("nodev", MsFlags::MS_NODEV, true),
    ("dev", MsFlags::MS_NODEV, false),
    ("noexec", MsFlags::MS_NOEXEC, true),
    ("exec", MsFlags::MS_NOEXEC, false),
    ("sync", MsFlags::MS_SYNCHRONOUS, true),
    ("async", MsFlags::MS_SYNCHRONOUS, false),
    ("dirsync", MsFlags::MS_DIRSYNC, true),
    ("noatime", MsFlags::MS_NOATIME, true),
    ("atime", MsFlags::MS_NOATIME, false),
    ("nodiratime", MsFlags::MS_NODIRATIME, true),
    ("relatime", MsFlags::MS_RELATIME, true),
    ("strictatime", MsFlags::MS_STRICTATIME, true),
    ("lazytime", MsFlags::MS_LAZYTIME, true),
];

/// Splits mount(8) options into mount(2) flags and the filesystem's own data string.
pub fn split_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        match FLAG_OPTIONS.iter().find(|(name, _, _)| name == option) {
            Some((_, flag, true)) => flags |= *flag,
            Some((_, flag, false)) => flags &= !*flag,
            None if option == "defaults" => {}
            None => data.push(option.as_str()),
        }
    }
    (flags, data.join(","))
}

fn wait_for_device(entry: &MountEntry, coldplug: &mut Option<Coldplug>) -> Option<PathBuf> {
    let deadline = Instant::now() + DEVICE_TIMEOUT;
    loop {
        if let Some(device) = find(
            &entry.device.spec,
            Path::new(SYS_CLASS_BLOCK),
            Path::new("/dev"),
        ) {
            return Some(device.node);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // Drivers for devices that show up late come through uevents.
        if let Some(coldplug) = coldplug.as_mut() {
            coldplug.on_uevents();
        }
        std::thread::sleep(DEVICE_POLL);
    }
}

fn mount_one(entry: &MountEntry, coldplug: &mut Option<Coldplug>) -> Result<PathBuf, String> {
    let node = wait_for_device(entry, coldplug).ok_or_else(|| {
        format!(
            "no device {} after {} s",
            entry.device,
            DEVICE_TIMEOUT.as_secs()
        )
    })?;
    if let Some(coldplug) = coldplug.as_mut() {
        coldplug::load_filesystem(coldplug.loading(), &entry.fstype);
    }
    let target = Path::new(&entry.target.0);
    std::fs::create_dir_all(target).map_err(|e| format!("create {}: {e}", target.display()))?;
    let (flags, data) = split_options(&entry.options.0);
    nix::mount::mount(
        Some(&node),
        target,
        Some(entry.fstype.as_str()),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|e| {
        format!(
            "mount {} ({}) on {} as {}: {e}",
            entry.device,
            node.display(),
            target.display(),
            entry.fstype
        )
    })?;
    Ok(node)
}

/// Mounts every entry in order; returns the targets that could not be mounted.
pub fn mount_all(entries: &[MountEntry], coldplug: &mut Option<Coldplug>) -> Vec<PathBuf> {
    let mut failed = Vec::new();
    for entry in entries {
        let started = Instant::now();
        match mount_one(entry, coldplug) {
            Ok(node) => Event::new("mounted")
                .field("device", &entry.device)
                .field("source", node.display())
                .field("target", &entry.target.0)
                .field("fstype", &entry.fstype)
                .field("duration_ms", started.elapsed().as_millis())
                .emit(),
            Err(error) => {
                Event::new("mount-failed")
                    .field("device", &entry.device)
                    .field("target", &entry.target.0)
                    .field("error", error)
                    .emit();
                failed.push(PathBuf::from(&entry.target.0));
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let options: Vec<String> = [
            "noatime",
            "ro",
            "commit=30",
            "defaults",
            "errors=remount-ro",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (flags, data) = split_options(&options);
        assert_eq!(flags, MsFlags::MS_NOATIME | MsFlags::MS_RDONLY);
        assert_eq!(data, "commit=30,errors=remount-ro");
        let (flags, _) = split_options(&["ro".to_string(), "rw".to_string()]);
        assert_eq!(flags, MsFlags::empty());
    }
}
