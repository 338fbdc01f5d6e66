//! Block devices by name, label or UUID, as fstab's `LABEL=`, `UUID=`, `PARTLABEL=` and
//! `PARTUUID=` find them. There is no udev (and so no `/dev/disk/by-*`) in a berth image:
//! devices are listed from `/sys/class/block`, filesystem labels and UUIDs are read from
//! their superblocks, partition names and GUIDs from the GPT.

pub mod grow;
mod superblock;

use std::path::{Path, PathBuf};

pub use superblock::{probe, FsInfo};

/// Where the kernel lists block devices.
pub const SYS_CLASS_BLOCK: &str = "/sys/class/block";

/// How a `[[mount]]` entry names its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    Path(PathBuf),
    Label(String),
    Uuid(String),
    PartLabel(String),
    PartUuid(String),
}

impl DeviceSpec {
    pub fn parse(text: &str) -> Result<DeviceSpec, String> {
        let (kind, value) = text.split_once('=').unwrap_or(("", text));
        let spec = match kind {
            "LABEL" => DeviceSpec::Label(value.to_string()),
            "UUID" => DeviceSpec::Uuid(value.to_ascii_lowercase()),
            "PARTLABEL" => DeviceSpec::PartLabel(value.to_string()),
            "PARTUUID" => DeviceSpec::PartUuid(value.to_ascii_lowercase()),
            "" if value.starts_with("/dev/") => DeviceSpec::Path(PathBuf::from(value)),
            _ => {
                return Err(format!(
                "`{text}` is not a device: use /dev/NAME, LABEL=, UUID=, PARTLABEL= or PARTUUID="
            ))
            }
        };
        if matches!(&spec, DeviceSpec::Label(v) | DeviceSpec::Uuid(v) | DeviceSpec::PartLabel(v) | DeviceSpec::PartUuid(v) if v.is_empty())
        {
            return Err(format!("`{text}` names nothing after `=`"));
        }
        Ok(spec)
    }
}

/// What berth knows of one block device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name (`vda1`).
    pub name: String,
    /// Its node (`/dev/vda1`).
    pub node: PathBuf,
    pub fs: Option<FsInfo>,
    pub part_label: Option<String>,
    pub part_uuid: Option<String>,
}

impl BlockDevice {
    pub fn matches(&self, spec: &DeviceSpec) -> bool {
        match spec {
            DeviceSpec::Path(path) => &self.node == path,
            DeviceSpec::Label(label) => self
                .fs
                .as_ref()
                .is_some_and(|fs| fs.label.as_deref() == Some(label)),
            DeviceSpec::Uuid(uuid) => self
                .fs
                .as_ref()
                .is_some_and(|fs| fs.uuid.as_deref() == Some(uuid)),
            DeviceSpec::PartLabel(label) => self.part_label.as_deref() == Some(label),
            DeviceSpec::PartUuid(uuid) => self.part_uuid.as_deref() == Some(uuid),
        }
    }
}

/// Partition name and GUID of partition `number` (1-based) of the disk at `disk_node`.
fn gpt_entry(disk_node: &Path, number: u32) -> Option<(String, String)> {
    let disk = std::fs::File::open(disk_node).ok()?;
    partition_entry(disk, number)
}

/// Partition name and GUID (lowercase, as `PARTUUID=` is matched) of partition `number`
/// (1-based) in the GPT on `disk`, which is only read.
///
/// The `gpt` crate asserts on some tables a disk can carry (an entry size other than 128
/// bytes, with a valid header checksum): such a disk has no GPT berth can read, like one
/// whose header is corrupt. Without the catch, one such disk would fail the listing of every
/// disk, and with it the data partition and each `[[mount]]`.
pub fn partition_entry(disk: impl gpt::DiskDevice, number: u32) -> Option<(String, String)> {
    let open = std::panic::AssertUnwindSafe(|| {
        gpt::GptConfig::new().writable(false).open_from_device(disk)
    });
    let disk = std::panic::catch_unwind(open).ok()?.ok()?;
    let partition = disk.partitions().get(&number)?;
    Some((partition.name.clone(), partition.part_guid.to_string()))
}

/// Every block device the kernel lists, probed. Devices that cannot be read are listed with
/// what sysfs says.
pub fn list(sys_class_block: &Path, dev: &Path) -> Vec<BlockDevice> {
    let Ok(entries) = std::fs::read_dir(sys_class_block) else {
        return Vec::new();
    };
    let mut devices: Vec<BlockDevice> = entries
        .flatten()
        .map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let node = dev.join(&name);
            let fs = std::fs::File::open(&node)
                .ok()
                .and_then(|mut f| probe(&mut f));
            let partition_number = std::fs::read_to_string(entry.path().join("partition"))
                .ok()
                .and_then(|n| n.trim().parse::<u32>().ok());
            // A partition's sysfs directory sits inside its disk's.
            let disk_name = std::fs::canonicalize(entry.path()).ok().and_then(|p| {
                p.parent()
                    .and_then(|d| d.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            });
            let (part_label, part_uuid) = match (partition_number, disk_name) {
                (Some(number), Some(disk)) => match gpt_entry(&dev.join(disk), number) {
                    Some((label, uuid)) => (Some(label), Some(uuid)),
                    None => (None, None),
                },
                _ => (None, None),
            };
            BlockDevice {
                name,
                node,
                fs,
                part_label,
                part_uuid,
            }
        })
        .collect();
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    devices
}

/// The first device `spec` names, among those listed now.
pub fn find(spec: &DeviceSpec, sys_class_block: &Path, dev: &Path) -> Option<BlockDevice> {
    if let DeviceSpec::Path(path) = spec {
        if path.exists() {
            return Some(BlockDevice {
                name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                node: path.clone(),
                ..BlockDevice::default()
            });
        }
    }
    list(sys_class_block, dev)
        .into_iter()
        .find(|d| d.matches(spec))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn partition_names_and_guids_come_from_the_gpt() {
        let path = std::env::temp_dir().join(format!("berth-gpt-{}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let mbr =
            gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from((4 << 20) / 512 - 1).unwrap());
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        mbr.overwrite_lba0(&mut file).unwrap();
        let mut disk = gpt::GptConfig::new()
            .writable(true)
            .create_from_device(file, None)
            .unwrap();
        disk.add_partition("esp", 1 << 20, gpt::partition_types::EFI, 0, None)
            .unwrap();
        disk.add_partition("data", 1 << 20, gpt::partition_types::LINUX_FS, 0, None)
            .unwrap();
        let guid = disk.partitions().get(&2).unwrap().part_guid.to_string();
        disk.write().unwrap();
        let entry = gpt_entry(&path, 2);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(entry, Some(("data".to_string(), guid)));
    }

    /// Found by `fuzz/fuzz_targets/disk.rs`: a GPT header with a valid checksum and an entry
    /// size of 0 tripped the `gpt` crate's `assert_eq!(header.part_size, 128)`.
    #[test]
    fn a_table_the_gpt_crate_asserts_on_is_no_table() {
        let sector = gpt::disk::LogicalBlockSize::Lb512;
        let mut disk = std::io::Cursor::new(vec![0u8; 64 << 10]);
        gpt::header::HeaderBuilder::new()
            .backup_lba((64 << 10) / 512 - 1)
            .part_size(0)
            .build(sector)
            .unwrap()
            .write_primary(&mut disk, sector)
            .unwrap();
        assert_eq!(partition_entry(disk, 1), None);
    }

    #[test]
    fn device_specs() {
        assert_eq!(
            DeviceSpec::parse("LABEL=data").unwrap(),
            DeviceSpec::Label("data".into())
        );
        assert_eq!(
            DeviceSpec::parse("UUID=ABCD-1234").unwrap(),
            DeviceSpec::Uuid("abcd-1234".into())
        );
        assert_eq!(
            DeviceSpec::parse("/dev/vda1").unwrap(),
            DeviceSpec::Path("/dev/vda1".into())
        );
        for bad in ["data", "LABEL=", "FOO=bar", "vda"] {
            assert!(DeviceSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
