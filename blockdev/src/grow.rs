//! Growing the last partition of a disk to the disk's end, as cloud images are expected to do
//! at first boot on a disk bigger than the image: the GPT is rewritten for the new size (its
//! backup header moves to the new last sector) and the kernel is told of the new partition
//! size with `BLKPG_RESIZE_PARTITION`, while the filesystem on it stays mounted. Growing the
//! filesystem itself is the caller's (`EXT4_IOC_RESIZE_FS` on the mount point).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// sysfs counts in 512-byte sectors whatever the device's block size.
const SYSFS_SECTOR: u64 = 512;
/// Partitions end on a MiB boundary.
const ALIGN_SECTORS: u64 = 2048;
/// What the backup GPT takes at the end of the disk: 32 sectors of entries and its header.
const BACKUP_GPT_SECTORS: u64 = 33;

#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a partition")]
    NotAPartition(String),
    #[error("partition table of {disk}: {detail}")]
    Gpt { disk: String, detail: String },
    #[error("tell the kernel of the new size of {partition}: {source}")]
    Blkpg {
        partition: String,
        #[source]
        source: std::io::Error,
    },
}

/// A partition's old and new size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    pub old_bytes: u64,
    pub new_bytes: u64,
}

fn read_number(path: &Path) -> Result<u64, GrowError> {
    let text = std::fs::read_to_string(path).map_err(|source| GrowError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.trim().parse().map_err(|_| GrowError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(format!("`{}` is not a number", text.trim())),
    })
}

/// `struct blkpg_partition` from `<linux/blkpg.h>`.
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg`.
#[repr(C)]
struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut BlkpgPartition,
}

const BLKPG: nix::libc::Ioctl = 0x1269;
const BLKPG_RESIZE_PARTITION: i32 = 3;

fn blkpg_resize(disk: &File, number: u32, start: u64, length: u64) -> std::io::Result<()> {
    let mut partition = BlkpgPartition {
        start: i64::try_from(start).map_err(std::io::Error::other)?,
        length: i64::try_from(length).map_err(std::io::Error::other)?,
        pno: i32::try_from(number).map_err(std::io::Error::other)?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: i32::try_from(std::mem::size_of::<BlkpgPartition>()).unwrap_or(0),
        data: &mut partition,
    };
    // SAFETY: BLKPG reads a `blkpg_ioctl_arg` whose `data` points at a `blkpg_partition` of
    // `datalen` bytes; both live on this stack frame for the duration of the call and have
    // the kernel's layout (repr(C)).
    let ret = unsafe { nix::libc::ioctl(disk.as_raw_fd(), BLKPG, &mut arg as *mut BlkpgIoctlArg) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Grows partition `name` (`vda2`) to the end of its disk when that adds at least a MiB and
/// no partition follows it; None when there is nothing to do.
pub fn grow_to_disk_end(
    sys_class_block: &Path,
    dev: &Path,
    name: &str,
) -> Result<Option<Grown>, GrowError> {
    let sys = sys_class_block.join(name);
    let number = u32::try_from(read_number(&sys.join("partition"))?)
        .map_err(|_| GrowError::NotAPartition(name.to_string()))?;
    let start = read_number(&sys.join("start"))?;
    let size = read_number(&sys.join("size"))?;
    let disk_name = std::fs::canonicalize(&sys)
        .ok()
        .and_then(|p| {
            p.parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .ok_or_else(|| GrowError::NotAPartition(name.to_string()))?;
    let disk_sectors = read_number(&sys_class_block.join(&disk_name).join("size"))?;
    let end = (disk_sectors.saturating_sub(BACKUP_GPT_SECTORS + 1) / ALIGN_SECTORS) * ALIGN_SECTORS;
    let new_size = end.saturating_sub(start);
    if new_size < size + ALIGN_SECTORS {
        return Ok(None);
    }
    let disk_node = dev.join(&disk_name);
    let gpt_error = |detail: String| GrowError::Gpt {
        disk: disk_name.clone(),
        detail,
    };
    let device = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk_node)
        .map_err(|source| GrowError::Io {
            path: disk_node.clone(),
            source,
        })?;
    let mut table = gpt::GptConfig::new()
        .writable(true)
        .open_from_device(device)
        .map_err(|e| gpt_error(e.to_string()))?;
    let block = u64::from(*table.logical_block_size());
    let mut partitions = table.partitions().clone();
    if partitions
        .values()
        .any(|p| p.is_used() && p.first_lba * block > start * SYSFS_SECTOR)
    {
        // Another partition follows: growing would run over it.
        return Ok(None);
    }
    let Some(entry) = partitions.get_mut(&number) else {
        return Err(gpt_error(format!("no entry {number}")));
    };
    entry.last_lba = (start + new_size) * SYSFS_SECTOR / block - 1;
    table
        .update_partitions(partitions)
        .map_err(|e| gpt_error(e.to_string()))?;
    let mut device = table.write().map_err(|e| gpt_error(e.to_string()))?;
    let lb_size = u32::try_from(disk_sectors * SYSFS_SECTOR / block - 1).unwrap_or(u32::MAX);
    gpt::mbr::ProtectiveMBR::with_lb_size(lb_size)
        .overwrite_lba0(&mut device)
        .map_err(|e| gpt_error(e.to_string()))?;
    device.sync_all().map_err(|source| GrowError::Io {
        path: disk_node.clone(),
        source,
    })?;
    blkpg_resize(
        &device,
        number,
        start * SYSFS_SECTOR,
        new_size * SYSFS_SECTOR,
    )
    .map_err(|source| GrowError::Blkpg {
        partition: name.to_string(),
        source,
    })?;
    Ok(Some(Grown {
        old_bytes: size * SYSFS_SECTOR,
        new_bytes: new_size * SYSFS_SECTOR,
    }))
}
