//! What a container gets under `/proc`, `/sys` and `/dev`: the OCI runtime spec's defaults,
//! as crun and runc give them.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::mount::MsFlags;
use nix::sys::stat::{makedev, mknodat, Mode, SFlag};
use pathrs::{Handle, Root};

use crate::device_filter::DeviceNode;
use crate::inroot;

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
/// privileged container gets a writable `/sys` and the host's `/dev` instead. Each target is
/// resolved inside the root, and one the image made a symlink is refused.
pub(crate) fn mount_kernel_filesystems(
    root: &Root,
    privileged: bool,
    passed: &[DeviceNode],
) -> Result<(), String> {
    for top in TOP_LEVEL_KERNEL_TARGETS {
        inroot::refuse_symlink(root, top)?;
    }
    // The container's fresh /dev tmpfs, once mounted: what goes below it needs no resolving
    // inside the image (and pathrs' checks on a missing path cost ~30 syscalls each).
    let mut fresh_dev: Option<Handle> = None;
    for m in KERNEL_MOUNTS {
        if privileged && m.target.starts_with("/dev/") {
            continue;
        }
        let target = match (&fresh_dev, m.target.strip_prefix("/dev/")) {
            (Some(dev), Some(name)) => inroot::fresh_directory(dev, name, m.target)?,
            _ => inroot::directory(root, m.target)?,
        };
        if privileged && m.target == "/dev" {
            inroot::bind(Path::new("/dev"), &target, false, "the host's /dev")?;
            continue;
        }
        let flags = if privileged {
            m.flags - MsFlags::MS_RDONLY
        } else {
            m.flags
        };
        inroot::mount_on(
            &format!("{} on {}", m.fstype, m.target),
            Some(m.fstype),
            &target,
            Some(m.fstype),
            flags,
            (!m.data.is_empty()).then_some(m.data),
        )?;
        if m.target == "/dev" {
            // The handle names the directory under the mount; the devices go in the new tmpfs.
            let dev = inroot::directory(root, m.target)?;
            create_devices(dev.as_fd())?;
            // The manifest's `devices`, which the device filter lets the container open.
            crate::device_filter::create_device_nodes(dev.as_fd(), passed)?;
            fresh_dev = Some(dev);
        }
    }
    Ok(())
}

/// The kernel filesystems' mount points at the top of the root: an image may not make them
/// symlinks (the ones below them live in filesystems berth has just mounted).
const TOP_LEVEL_KERNEL_TARGETS: &[&str] = &["/proc", "/sys", "/dev"];

/// Creates the default devices and links in the container's fresh `/dev` tmpfs, through its
/// descriptor.
fn create_devices(dev: BorrowedFd<'_>) -> Result<(), String> {
    // mknod applies the umask; the devices must be world-usable as the spec says.
    let previous = nix::sys::stat::umask(Mode::empty());
    let result = DEVICES.iter().try_for_each(|(name, major, minor)| {
        mknodat(
            dev,
            *name,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        )
        .map_err(|e| format!("create /dev/{name}: {e}"))
    });
    nix::sys::stat::umask(previous);
    result?;
    for (name, target) in DEV_SYMLINKS {
        nix::unistd::symlinkat(*target, dev, *name)
            .map_err(|e| format!("link /dev/{name}: {e}"))?;
    }
    Ok(())
}
