//! The privileges a container keeps: capability sets, no_new_privs, rlimits, and the paths
//! of /proc and /sys it may not read or write. Defaults are Docker's and runc's.

use std::path::Path;

use caps::{CapSet, CapsHashSet};
use nix::mount::{mount, MsFlags};
use nix::sys::resource::{setrlimit, Resource};

/// runc's masked paths: they read as empty (files get /dev/null, directories an empty tmpfs).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's read-only paths.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Hides `MASKED_PATHS` and makes `READONLY_PATHS` read-only, inside the container root.
pub(crate) fn mask_and_protect_paths() -> Result<(), String> {
    for path in MASKED_PATHS {
        let target = Path::new(path);
        let result = if target.is_dir() {
            mount(
                Some("tmpfs"),
                target,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else if target.exists() {
            mount(
                Some("/dev/null"),
                target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        } else {
            continue;
        };
        result.map_err(|e| format!("mask {path}: {e}"))?;
    }
    for path in READONLY_PATHS {
        if !Path::new(path).exists() {
            continue;
        }
        let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
        mount(Some(*path), *path, None::<&str>, bind, None::<&str>)
            .and_then(|()| {
                mount(
                    None::<&str>,
                    *path,
                    None::<&str>,
                    bind | MsFlags::MS_REMOUNT
                        | MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC,
                    None::<&str>,
                )
            })
            .map_err(|e| format!("make {path} read-only: {e}"))?;
    }
    Ok(())
}

/// Makes the container's root filesystem read-only (`read_only = true`).
pub(crate) fn read_only_root() -> Result<(), String> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|e| format!("make the root read-only: {e}"))
}

fn capability_set(numbers: &[u8]) -> CapsHashSet {
    caps::all()
        .into_iter()
        .filter(|c| numbers.contains(&c.index()))
        .collect()
}

/// Drops from the bounding set every capability not kept. Needs CAP_SETPCAP, so it runs
/// before the uid changes.
pub(crate) fn limit_bounding_set(kept: &[u8]) -> Result<(), String> {
    let supported = caps::runtime::thread_all_supported();
    for capability in caps::all() {
        if !kept.contains(&capability.index()) && supported.contains(&capability) {
            caps::drop(None, CapSet::Bounding, capability)
                .map_err(|e| format!("drop {capability} from the bounding set: {e}"))?;
        }
    }
    Ok(())
}

/// Sets the effective, permitted and inheritable sets to what is kept, and clears the
/// ambient set. Runs after the uid change (with keep-caps set across it).
pub(crate) fn set_capabilities(kept: &[u8]) -> Result<(), String> {
    let set = capability_set(kept);
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("clear ambient capabilities: {e}"))?;
    // Effective must stay a subset of permitted while the sets change.
    caps::set(None, CapSet::Effective, &set)
        .map_err(|e| format!("set effective capabilities: {e}"))?;
    caps::set(None, CapSet::Permitted, &set)
        .map_err(|e| format!("set permitted capabilities: {e}"))?;
    caps::set(None, CapSet::Inheritable, &set)
        .map_err(|e| format!("set inheritable capabilities: {e}"))
}

/// Keeps the permitted set across the switch from root to another uid.
pub(crate) fn keep_capabilities_across_setuid(keep: bool) -> Result<(), String> {
    nix::sys::prctl::set_keepcaps(keep).map_err(|e| format!("set keep-caps: {e}"))
}

pub(crate) fn no_new_privileges() -> Result<(), String> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("set no_new_privs: {e}"))
}

/// rlimits by Compose's names.
const RLIMITS: &[(&str, Resource)] = &[
    ("cpu", Resource::RLIMIT_CPU),
    ("fsize", Resource::RLIMIT_FSIZE),
    ("data", Resource::RLIMIT_DATA),
    ("stack", Resource::RLIMIT_STACK),
    ("core", Resource::RLIMIT_CORE),
    ("rss", Resource::RLIMIT_RSS),
    ("nproc", Resource::RLIMIT_NPROC),
    ("nofile", Resource::RLIMIT_NOFILE),
    ("memlock", Resource::RLIMIT_MEMLOCK),
    ("as", Resource::RLIMIT_AS),
    ("locks", Resource::RLIMIT_LOCKS),
    ("sigpending", Resource::RLIMIT_SIGPENDING),
    ("msgqueue", Resource::RLIMIT_MSGQUEUE),
    ("nice", Resource::RLIMIT_NICE),
    ("rtprio", Resource::RLIMIT_RTPRIO),
    ("rttime", Resource::RLIMIT_RTTIME),
];

pub(crate) fn set_rlimits(limits: &[(String, u64, u64)]) -> Result<(), String> {
    for (name, soft, hard) in limits {
        let resource = RLIMITS
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| *r)
            .ok_or_else(|| format!("unknown rlimit {name}"))?;
        setrlimit(resource, *soft, *hard)
            .map_err(|e| format!("set rlimit {name} to {soft}:{hard}: {e}"))?;
    }
    Ok(())
}
