//! What a container gets under `/proc`, `/sys` and `/dev`: the OCI runtime spec's defaults,
//! as crun and runc give them.

use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::child::inside;

/// A kernel filesystem mounted into every container, in this order.
struct KernelMount {
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

const KERNEL_MOUNTS: &[KernelMount] = &[
    KernelMount {
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    KernelMount {
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC.union(MsFlags::MS_RDONLY),
        data: "",
    },
    // The container's own cgroup (its cgroup namespace's root), read-only as Docker mounts it.
    KernelMount {
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC.union(MsFlags::MS_RDONLY),
        data: "",
    },
    KernelMount {
        target: "/dev",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_STRICTATIME),
        data: "mode=755,size=65536k",
    },
    KernelMount {
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "newinstance,ptmxmode=0666,mode=0620,gid=5",
    },
    KernelMount {
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "mode=1777,size=65536k",
    },
    KernelMount {
        target: "/dev/mqueue",
        fstype: "mqueue",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
];

/// The OCI default devices: (name, major, minor), all mode 0666.
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The OCI default symlinks under `/dev`.
const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// Mounts `/proc`, `/sys` and `/dev` (with its devices) into the container root `root`. A
/// privileged container gets a writable `/sys` and the host's `/dev` instead.
pub(crate) fn mount_kernel_filesystems(root: &Path, privileged: bool) -> Result<(), String> {
    for m in KERNEL_MOUNTS {
        let target = inside(root, m.target)?;
        std::fs::create_dir_all(&target).map_err(|e| format!("create {}: {e}", m.target))?;
        if privileged && m.target == "/dev" {
            mount(
                Some("/dev"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| format!("bind the host's /dev: {e}"))?;
            continue;
        }
        if privileged && m.target.starts_with("/dev/") {
            continue;
        }
        let flags = if privileged {
            m.flags - MsFlags::MS_RDONLY
        } else {
            m.flags
        };
        mount(
            Some(m.fstype),
            &target,
            Some(m.fstype),
            flags,
            (!m.data.is_empty()).then_some(m.data),
        )
        .map_err(|e| format!("mount {} on {}: {e}", m.fstype, m.target))?;
        if m.target == "/dev" {
            create_devices(&target)?;
        }
    }
    Ok(())
}

fn create_devices(dev: &Path) -> Result<(), String> {
    // mknod applies the umask; the devices must be world-usable as the spec says.
    let previous = nix::sys::stat::umask(Mode::empty());
    let result = DEVICES.iter().try_for_each(|(name, major, minor)| {
        mknod(
            &dev.join(name),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        )
        .map_err(|e| format!("create /dev/{name}: {e}"))
    });
    nix::sys::stat::umask(previous);
    result?;
    for (name, target) in DEV_SYMLINKS {
        std::os::unix::fs::symlink(target, dev.join(name))
            .map_err(|e| format!("link /dev/{name}: {e}"))?;
    }
    Ok(())
}
