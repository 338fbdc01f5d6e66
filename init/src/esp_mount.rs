//! The ESP, mounted for one `berth-update` helper at a time.
//!
//! Helpers run side by side: the boot's `check` with an operator's `berthctl version`, a
//! `stage` with a `version`. Each mounts the ESP, and two mounts of one FAT device share
//! its superblock, so a read-only mount while a read-write one is up (or the reverse) fails
//! with `EBUSY`, and one helper's unmount of the shared mount point could take away the
//! mount another is still writing through. So a helper first takes an exclusive `flock` on
//! a file under /run, waiting for it [`LOCK_WAIT`] at most, then mounts; [`MountedEsp`]
//! unmounts when dropped and only then lets go of the lock. The waiting is in the helper,
//! never in PID 1.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_blockdev::DeviceSpec;
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::kmod::{self, KernelLoader, ModuleLoading};

/// The ESP's GPT partition name, as `berth build --format` writes it.
const ESP_PART_LABEL: &str = "berth-esp";
/// Where the ESP is mounted while a helper reads or writes it.
const ESP_MOUNT: &str = "/run/berth/update-esp";
/// The lock a helper holds while the ESP is mounted.
const ESP_LOCK: &str = "/run/berth/update-esp.lock";
/// How long a helper waits for another to finish with the ESP: longer than a slot's
/// writing takes, short enough that a stuck helper is reported, not waited for forever.
const LOCK_WAIT: Duration = Duration::from_secs(120);
/// How often a waiting helper tries the lock again.
const LOCK_RETRY: Duration = Duration::from_millis(50);

/// The ESP, mounted at [`MountedEsp::path`] for this helper alone until dropped.
pub struct MountedEsp {
    path: PathBuf,
    // Dropped after `drop` below has unmounted: the next helper mounts afresh.
    _lock: Flock<File>,
}

impl MountedEsp {
    /// Finds the ESP by its partition name, waits for the lock and mounts it (`MS_RDONLY`
    /// in `read_only`, or empty).
    pub fn mount(read_only: MsFlags) -> Result<MountedEsp, String> {
        let spec = DeviceSpec::PartLabel(ESP_PART_LABEL.to_string());
        let device =
            berth_blockdev::find(&spec, Path::new("/sys/class/block"), Path::new("/dev"))
                .ok_or_else(|| {
                    format!("no partition named `{ESP_PART_LABEL}`: this host did not boot from a berth disk image")
                })?;
        let target = PathBuf::from(ESP_MOUNT);
        std::fs::create_dir_all(&target).map_err(|e| format!("{ESP_MOUNT}: {e}"))?;
        let lock = lock(Path::new(ESP_LOCK), LOCK_WAIT)?;
        // A helper killed while it had the ESP (a shutdown during `stage`) left its mount
        // behind: gone before this one, which would stack on it or meet EBUSY.
        while umount2(&target, MntFlags::MNT_DETACH).is_ok() {}
        load_vfat();
        mount(
            Some(&device.node),
            &target,
            Some("vfat"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | read_only,
            Some("umask=0077"),
        )
        .map_err(|e| format!("mount {} on {ESP_MOUNT}: {e}", device.node.display()))?;
        Ok(MountedEsp {
            path: target,
            _lock: lock,
        })
    }

    /// Where the ESP's files are.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for MountedEsp {
    fn drop(&mut self) {
        // Detached only when busy (a file still open): then the next helper's stale-mount
        // sweep sees none, and the kernel lets the superblock go with the last file.
        if umount2(&self.path, MntFlags::empty()).is_err() {
            let _ = umount2(&self.path, MntFlags::MNT_DETACH);
        }
    }
}

/// An exclusive lock on `file` (created if missing), tried until `wait` has passed.
fn lock(file: &Path, wait: Duration) -> Result<Flock<File>, String> {
    let deadline = Instant::now() + wait;
    loop {
        let handle = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(file)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        match Flock::lock(handle, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                std::thread::sleep(LOCK_RETRY);
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(format!(
                    "{}: another berth-update helper still has the ESP after {} s",
                    file.display(),
                    wait.as_secs()
                ))
            }
            Err((_, err)) => return Err(format!("{}: flock: {err}", file.display())),
        }
    }
}

/// Loads vfat and its code pages when the kernel lacks them (nothing else mounts FAT).
fn load_vfat() {
    let Ok(index) = kmod::index_for_running_kernel() else {
        return;
    };
    let mut loading = ModuleLoading::new(index, KernelLoader);
    crate::coldplug::load_filesystem(&mut loading, "vfat");
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_and_then_is_refused_naming_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("esp.lock");
        let held = lock(&file, Duration::ZERO).unwrap();
        let started = Instant::now();
        let refused = lock(&file, Duration::from_millis(200)).err().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(refused.contains("esp.lock") && refused.contains("another berth-update helper"));
        drop(held);
        assert!(lock(&file, Duration::ZERO).is_ok());
    }
}
