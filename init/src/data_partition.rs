//! `/var/lib/berth` on the data partition of a disk image (`berth.data=PARTLABEL=berth-data`
//! on the command line, as `berth build --format` writes it): container state, volumes, the
//! machine-id and the image store survive reboots. Without one it stays on the root tmpfs and
//! the console says so. At first boot on a disk larger than the image, the partition and its
//! ext4 filesystem grow to the disk's end, online.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use berth_blockdev::grow::grow_to_disk_end;
use berth_blockdev::{find, DeviceSpec, SYS_CLASS_BLOCK};

use crate::coldplug::{self, Coldplug};
use crate::event::Event;

/// Where container state lives.
pub const STATE_DIR: &str = "/var/lib/berth";
/// How long to wait for the data partition's disk to show up.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(20);
const DEVICE_POLL: Duration = Duration::from_millis(100);

nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

fn volatile(reason: &str) {
    log::warn!("{STATE_DIR} is on a tmpfs: containers' state, volumes and pulled images are lost at shutdown ({reason})");
    Event::new("data-volatile").field("reason", reason).emit();
}

/// Mounts the data partition on [`STATE_DIR`] (growing it first if the disk grew); reports
/// a volatile state directory otherwise.
pub fn mount(spec: Option<&DeviceSpec>, coldplug: &mut Option<Coldplug>) {
    let Some(spec) = spec else {
        volatile("no data partition on the kernel command line (berth.data=)");
        return;
    };
    let deadline = Instant::now() + DEVICE_TIMEOUT;
    let device = loop {
        if let Some(device) = find(spec, Path::new(SYS_CLASS_BLOCK), Path::new("/dev")) {
            break device;
        }
        if Instant::now() >= deadline {
            volatile("the data partition did not appear");
            return;
        }
        if let Some(coldplug) = coldplug.as_mut() {
            coldplug.on_uevents();
        }
        std::thread::sleep(DEVICE_POLL);
    };
    let fstype = device
        .fs
        .as_ref()
        .map_or_else(|| "ext4".to_string(), |fs| fs.fstype.to_string());
    if let Some(coldplug) = coldplug.as_mut() {
        coldplug::load_filesystem(coldplug.loading(), &fstype);
    }
    if let Err(err) = std::fs::create_dir_all(STATE_DIR) {
        log::error!("create {STATE_DIR}: {err}");
    }
    if let Err(err) = nix::mount::mount(
        Some(&device.node),
        STATE_DIR,
        Some(fstype.as_str()),
        nix::mount::MsFlags::MS_NOATIME,
        None::<&str>,
    ) {
        volatile(&format!("mount {}: {err}", device.node.display()));
        return;
    }
    // The grow touches the partition table: a bug there must cost the growth, not PID 1.
    let grown = std::panic::catch_unwind(|| grow(&device.name))
        .unwrap_or_else(|_| Err("the partition table code panicked".to_string()));
    let size_mb = nix::sys::statvfs::statvfs(STATE_DIR)
        .map(|s| s.blocks() * s.fragment_size() / (1024 * 1024))
        .unwrap_or(0);
    let mut event = Event::new("data-mounted")
        .field("device", device.node.display())
        .field("fs", &fstype)
        .field("size_mb", size_mb);
    match grown {
        Ok(Some(grown_mb)) => event = event.field("grown_from_mb", grown_mb),
        Ok(None) => {}
        Err(err) => {
            Event::new("data-grow-failed").field("error", &err).emit();
        }
    }
    event.emit();
}

/// Grows the partition and its ext4 filesystem to the disk's end; the old size in MiB when
/// it grew.
fn grow(partition: &str) -> Result<Option<u64>, String> {
    let Some(grown) = grow_to_disk_end(Path::new(SYS_CLASS_BLOCK), Path::new("/dev"), partition)
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let stats = nix::sys::statvfs::statvfs(STATE_DIR).map_err(|e| format!("statvfs: {e}"))?;
    let block = stats.block_size();
    let blocks = grown.new_bytes / block.max(1);
    let dir = std::fs::File::open(STATE_DIR).map_err(|e| format!("open {STATE_DIR}: {e}"))?;
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 (the new block count) from the pointer, which
    // points at a live local; the descriptor is the mounted filesystem's root directory.
    unsafe { ext4_resize_fs(dir.as_raw_fd(), &blocks) }
        .map_err(|e| format!("grow the filesystem to {blocks} blocks: {e}"))?;
    Ok(Some(grown.old_bytes / (1024 * 1024)))
}
