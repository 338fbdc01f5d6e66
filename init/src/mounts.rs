//! The filesystems the kernel does not mount for us, and taking them all down at shutdown.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

/// One early mount: what, where, which filesystem, flags and options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyMount {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In mount order: each target's parent is mounted before it (`/dev` before `/dev/pts`,
/// `/sys` before `/sys/fs/cgroup`). Flags follow what systemd gives the same mounts.
pub const EARLY_MOUNTS: &[EarlyMount] = &[
    EarlyMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    EarlyMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    EarlyMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    EarlyMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "gid=5,mode=0620,ptmxmode=0666",
    },
    EarlyMount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    EarlyMount {
        source: "run",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
    },
    EarlyMount {
        source: "tmp",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    EarlyMount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "nsdelegate",
    },
];

/// The mount syscalls, behind a trait so the order and flags are tested without root.
pub trait Mounter {
    fn create_dir(&mut self, path: &Path) -> std::io::Result<()>;
    fn mount(&mut self, mount: &EarlyMount) -> nix::Result<()>;
}

/// The real syscalls.
#[derive(Debug, Default)]
pub struct SystemMounter;

impl Mounter for SystemMounter {
    fn create_dir(&mut self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn mount(&mut self, m: &EarlyMount) -> nix::Result<()> {
        nix::mount::mount(
            Some(m.source),
            m.target,
            Some(m.fstype),
            m.flags,
            (!m.data.is_empty()).then_some(m.data),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot create mount point {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: Errno,
    },
}

/// Mounts every early filesystem, going on past failures; returns what failed.
pub fn mount_early(mounter: &mut dyn Mounter) -> Vec<MountError> {
    let mut failures = Vec::new();
    for m in EARLY_MOUNTS {
        let target = Path::new(m.target);
        if let Err(source) = mounter.create_dir(target) {
            failures.push(MountError::CreateDir {
                path: target.to_path_buf(),
                source,
            });
            continue;
        }
        match mounter.mount(m) {
            // EBUSY: already mounted there (a kernel that automounts devtmpfs, say).
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(source) => failures.push(MountError::Mount {
                fstype: m.fstype,
                target: m.target,
                source,
            }),
        }
    }
    failures
}

/// Mount points from `/proc/self/mountinfo`, in the order they were mounted.
pub fn mounted_targets() -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    parse_mountinfo_targets(&text)
}

fn parse_mountinfo_targets(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| PathBuf::from(unescape_octal(escaped)))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\NNN` octal.
fn unescape_octal(field: &str) -> String {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (b, octal) {
            (b'\\', Some(value)) => {
                out.push(value);
                i += 4;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True for the root and the early API filesystems: they hold no data worth flushing, and
/// init keeps files open on them (`/dev/kmsg`, the power button) until the very end.
fn stays_mounted(target: &Path) -> bool {
    target == Path::new("/") || EARLY_MOUNTS.iter().any(|m| Path::new(m.target) == target)
}

/// Unmounts everything but the root and the API filesystems, newest first; what will not
/// unmount is remounted read-only so that its data is safe when the power goes.
pub fn unmount_all() -> (usize, Vec<String>) {
    let mut unmounted = 0;
    let mut kept = Vec::new();
    for target in mounted_targets().iter().rev() {
        if stays_mounted(target) {
            continue;
        }
        match nix::mount::umount2(target, MntFlags::empty()) {
            Ok(()) => unmounted += 1,
            // EINVAL: no longer a mount point (a parent went first); nothing to do.
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(err) => {
                let remount = nix::mount::mount(
                    None::<&str>,
                    target,
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                );
                let how = match remount {
                    Ok(()) => "remounted read-only",
                    Err(_) => "left as is",
                };
                kept.push(format!("{} ({err}; {how})", target.display()));
            }
        }
    }
    (unmounted, kept)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        calls: Vec<String>,
        fail_target: Option<&'static str>,
    }

    impl Mounter for Recorder {
        fn create_dir(&mut self, path: &Path) -> std::io::Result<()> {
            self.calls.push(format!("mkdir {}", path.display()));
            Ok(())
        }

        fn mount(&mut self, m: &EarlyMount) -> nix::Result<()> {
            self.calls.push(format!("mount {} {}", m.fstype, m.target));
            if self.fail_target == Some(m.target) {
                return Err(Errno::ENODEV);
            }
            Ok(())
        }
    }

    #[test]
    fn parents_are_mounted_before_children() {
        let mut recorder = Recorder::default();
        assert!(mount_early(&mut recorder).is_empty());
        let mounts: Vec<&str> = recorder
            .calls
            .iter()
            .filter_map(|c| c.strip_prefix("mount "))
            .collect();
        let position = |t: &str| mounts.iter().position(|m| m.ends_with(t)).unwrap();
        assert!(position(" /dev") < position(" /dev/pts"));
        assert!(position(" /dev") < position(" /dev/shm"));
        assert!(position(" /sys") < position(" /sys/fs/cgroup"));
        assert_eq!(mounts.len(), EARLY_MOUNTS.len());
    }

    #[test]
    fn a_failed_mount_does_not_stop_the_rest() {
        let mut recorder = Recorder {
            fail_target: Some("/sys/fs/cgroup"),
            ..Recorder::default()
        };
        let failures = mount_early(&mut recorder);
        assert_eq!(failures.len(), 1);
        assert_eq!(
            failures[0].to_string(),
            "cannot mount cgroup2 on /sys/fs/cgroup: ENODEV: No such device"
        );
    }

    #[test]
    fn kernel_filesystems_are_nosuid() {
        for m in EARLY_MOUNTS {
            assert!(m.flags.contains(MsFlags::MS_NOSUID), "{}", m.target);
        }
    }

    #[test]
    fn api_filesystems_stay_mounted_and_data_mounts_do_not() {
        assert!(stays_mounted(Path::new("/")));
        assert!(stays_mounted(Path::new("/dev")));
        assert!(stays_mounted(Path::new("/sys/fs/cgroup")));
        assert!(!stays_mounted(Path::new("/var/lib/berth")));
    }

    #[test]
    fn mountinfo_targets_are_unescaped() {
        let text = "22 1 0:21 / / rw - rootfs rootfs rw\n\
                    23 22 0:22 / /mnt/with\\040space rw - tmpfs tmpfs rw\n";
        assert_eq!(
            parse_mountinfo_targets(text),
            [PathBuf::from("/"), PathBuf::from("/mnt/with space")]
        );
    }
}
