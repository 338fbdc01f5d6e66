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

/// The sets a container's process gets from [`set_capabilities`], in its order: (set, what
/// is kept in it). Inheritable stays empty, as runc and Docker (20.10.14 on) leave it since
/// CVE-2022-24769: at execve the new permitted set takes `inheritable & file inheritable`,
/// so with a non-empty inheritable set a program in the image marked `setcap cap_x+ei`
/// hands capabilities to a non-root user that an ordinary Linux non-root process would
/// never have; ambient capabilities, too, can only be raised from the inheritable set.
fn capability_sets(kept: &CapsHashSet) -> [(CapSet, CapsHashSet); 3] {
    [
        // Effective must stay a subset of permitted while the sets change.
        (CapSet::Effective, kept.clone()),
        (CapSet::Permitted, kept.clone()),
        (CapSet::Inheritable, CapsHashSet::new()),
    ]
}

/// Sets the effective and permitted sets to what is kept, empties the inheritable one and
/// clears the ambient set. Runs after the uid change (with keep-caps set across it).
pub(crate) fn set_capabilities(kept: &[u8]) -> Result<(), String> {
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("clear ambient capabilities: {e}"))?;
    for (which, set) in capability_sets(&capability_set(kept)) {
        caps::set(None, which, &set)
            .map_err(|e| format!("set {which:?} capabilities to {set:?}: {e}"))?;
    }
    Ok(())
}

/// Keeps the permitted set across the switch from root to another uid.
pub(crate) fn keep_capabilities_across_setuid(keep: bool) -> Result<(), String> {
    nix::sys::prctl::set_keepcaps(keep).map_err(|e| format!("set keep-caps: {e}"))
}

/// `PR_SET_DUMPABLE` 0: no core dumps, no ptrace and root-owned /proc files for this process
/// until execve, as runc does for the processes it starts in a container.
pub(crate) fn non_dumpable() -> Result<(), String> {
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("make the process non-dumpable: {e}"))
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

/// `close_range(2)`'s number, the same on x86_64 and aarch64 (asm-generic's table).
const SYS_CLOSE_RANGE: nix::libc::c_long = 436;
/// `CLOSE_RANGE_CLOEXEC` (`linux/close_range.h`, Linux 5.11).
const CLOSE_RANGE_CLOEXEC: nix::libc::c_uint = 1 << 2;

/// Marks every descriptor from 3 up close-on-exec, whatever opened it and however: the
/// process starts with stdin, stdout and stderr only.
pub(crate) fn close_on_exec_from_3() -> Result<(), String> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC takes three integers and only sets the
    // close-on-exec flag of this process' descriptors from 3 up; it closes none, so no
    // OwnedFd of ours is invalidated.
    let ret = unsafe {
        nix::libc::syscall(
            SYS_CLOSE_RANGE,
            3 as nix::libc::c_uint,
            nix::libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    nix::errno::Errno::result(ret)
        .map(drop)
        .map_err(|e| format!("mark descriptors from 3 up close-on-exec (close_range): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inheritable_set_is_always_empty() {
        // CAP_CHOWN, CAP_NET_BIND_SERVICE, CAP_SYS_ADMIN: whatever is kept.
        let kept = capability_set(&[0, 10, 21]);
        assert_eq!(kept.len(), 3);
        let sets = capability_sets(&kept);
        for (which, set) in &sets {
            match which {
                CapSet::Inheritable => assert!(set.is_empty(), "inheritable: {set:?}"),
                _ => assert_eq!(set, &kept, "{which:?}"),
            }
        }
        assert!(sets.iter().any(|(w, _)| matches!(w, CapSet::Inheritable)));
    }

    #[test]
    #[expect(clippy::unwrap_used, reason = "tests")]
    fn every_descriptor_from_3_up_is_marked_close_on_exec() {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        // A pipe made without O_CLOEXEC: what a careless open elsewhere in init would leave.
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::empty()).unwrap();
        let cloexec = |fd: &std::os::fd::OwnedFd| {
            FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).unwrap())
                .contains(FdFlag::FD_CLOEXEC)
        };
        assert!(!cloexec(&read) && !cloexec(&write));
        close_on_exec_from_3().unwrap();
        assert!(cloexec(&read) && cloexec(&write), "marked, and still open");
    }
}
