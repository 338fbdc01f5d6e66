//! Filesystem type, label and UUID from a device's first blocks. Written by hand: the few
//! fixed offsets below are all berth needs, and the crates that read them wrap libblkid (C).
//! Offsets are from the on-disk formats: ext2/3/4 (`struct ext4_super_block`), FAT's boot
//! sector, and ISO 9660's primary volume descriptor.

use std::io::{Read, Seek, SeekFrom};

/// What a superblock says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// As mount(2) names it: `ext4`, `vfat`, `iso9660`.
    pub fstype: String,
    pub label: Option<String>,
    /// As blkid prints it: lowercase, `8-4-4-4-12` for ext4, `XXXX-XXXX` for FAT.
    pub uuid: Option<String>,
}

/// Bytes read from the start of the device: enough for ISO 9660's descriptor at 32 KiB.
const PROBE_BYTES: usize = 0x8800;

const EXT_SUPERBLOCK: usize = 1024;
const EXT_MAGIC_OFFSET: usize = EXT_SUPERBLOCK + 0x38;
const EXT_MAGIC: [u8; 2] = [0x53, 0xEF];
const EXT_UUID_OFFSET: usize = EXT_SUPERBLOCK + 0x68;
const EXT_LABEL_OFFSET: usize = EXT_SUPERBLOCK + 0x78;
const EXT_FEATURE_COMPAT: usize = EXT_SUPERBLOCK + 0x5C;
const EXT_FEATURE_INCOMPAT: usize = EXT_SUPERBLOCK + 0x60;
const EXT3_HAS_JOURNAL: u32 = 0x4;
const EXT4_INCOMPAT_MASK: u32 = 0x40 | 0x80 | 0x200; // extents, 64bit, flex_bg

const BOOT_SIGNATURE_OFFSET: usize = 510;
const FAT16_ID_OFFSET: usize = 0x27;
const FAT16_LABEL_OFFSET: usize = 0x2B;
const FAT16_TYPE_OFFSET: usize = 0x36;
const FAT32_ID_OFFSET: usize = 0x43;
const FAT32_LABEL_OFFSET: usize = 0x47;
const FAT32_TYPE_OFFSET: usize = 0x52;

const ISO_PVD: usize = 0x8000;

fn bytes(buf: &[u8], offset: usize, len: usize) -> &[u8] {
    buf.get(offset..offset + len).unwrap_or_default()
}

fn text(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw)
        .trim_end_matches(['\0', ' '])
        .to_string();
    (!text.is_empty()).then_some(text)
}

fn le32(buf: &[u8], offset: usize) -> u32 {
    bytes(buf, offset, 4)
        .try_into()
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}

fn ext(buf: &[u8]) -> Option<FsInfo> {
    if bytes(buf, EXT_MAGIC_OFFSET, 2) != EXT_MAGIC {
        return None;
    }
    let uuid_bytes = bytes(buf, EXT_UUID_OFFSET, 16);
    let hex: String = uuid_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let uuid = (hex.len() == 32).then(|| {
        format!(
            "{}-{}-{}-{}-{}",
            hex.get(0..8).unwrap_or_default(),
            hex.get(8..12).unwrap_or_default(),
            hex.get(12..16).unwrap_or_default(),
            hex.get(16..20).unwrap_or_default(),
            hex.get(20..32).unwrap_or_default()
        )
    });
    let fstype = if le32(buf, EXT_FEATURE_INCOMPAT) & EXT4_INCOMPAT_MASK != 0 {
        "ext4"
    } else if le32(buf, EXT_FEATURE_COMPAT) & EXT3_HAS_JOURNAL != 0 {
        "ext3"
    } else {
        "ext2"
    };
    Some(FsInfo {
        fstype: fstype.to_string(),
        label: text(bytes(buf, EXT_LABEL_OFFSET, 16)),
        uuid,
    })
}

fn fat(buf: &[u8]) -> Option<FsInfo> {
    if bytes(buf, BOOT_SIGNATURE_OFFSET, 2) != [0x55, 0xAA] {
        return None;
    }
    let (id_offset, label_offset) = if bytes(buf, FAT32_TYPE_OFFSET, 5) == b"FAT32" {
        (FAT32_ID_OFFSET, FAT32_LABEL_OFFSET)
    } else if bytes(buf, FAT16_TYPE_OFFSET, 3) == b"FAT" {
        (FAT16_ID_OFFSET, FAT16_LABEL_OFFSET)
    } else {
        return None;
    };
    let id = le32(buf, id_offset);
    let label = text(bytes(buf, label_offset, 11)).filter(|l| l != "NO NAME");
    Some(FsInfo {
        fstype: "vfat".to_string(),
        label,
        uuid: Some(format!("{:04x}-{:04x}", id >> 16, id & 0xFFFF)),
    })
}

fn iso9660(buf: &[u8]) -> Option<FsInfo> {
    if bytes(buf, ISO_PVD, 6) != b"\x01CD001" {
        return None;
    }
    Some(FsInfo {
        fstype: "iso9660".to_string(),
        label: text(bytes(buf, ISO_PVD + 40, 32)),
        uuid: None,
    })
}

/// Identifies the filesystem on `device`, if berth knows it.
pub fn probe(device: &mut (impl Read + Seek)) -> Option<FsInfo> {
    device.seek(SeekFrom::Start(0)).ok()?;
    let mut buf = Vec::with_capacity(PROBE_BYTES);
    device.take(PROBE_BYTES as u64).read_to_end(&mut buf).ok()?;
    ext(&buf).or_else(|| fat(&buf)).or_else(|| iso9660(&buf))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::panic, reason = "tests")]
mod tests {
    use super::*;
    use std::process::Command;

    /// Formats a fresh image with a real mkfs, as an operator would.
    fn formatted(tool: &str, args: &[&str], name: &str) -> Option<std::fs::File> {
        let path = std::env::temp_dir().join(format!("berth-probe-{name}-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(8 << 20).unwrap();
        let status = Command::new(tool).args(args).arg(&path).output().ok()?;
        assert!(
            status.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let file = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        Some(file)
    }

    #[test]
    fn ext4_label_and_uuid_as_mkfs_wrote_them() {
        let uuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        let Some(mut file) =
            formatted("mkfs.ext4", &["-q", "-F", "-L", "data", "-U", uuid], "ext4")
        else {
            panic!("mkfs.ext4 is missing: scripts/setup installs e2fsprogs");
        };
        let info = probe(&mut file).unwrap();
        assert_eq!(info.fstype, "ext4");
        assert_eq!(info.label.as_deref(), Some("data"));
        assert_eq!(info.uuid.as_deref(), Some(uuid));
    }

    #[test]
    fn vfat_label_and_volume_id() {
        let Some(mut file) = formatted("mkfs.vfat", &["-n", "CIDATA", "-i", "1234ABCD"], "vfat")
        else {
            panic!("mkfs.vfat is missing: scripts/setup installs dosfstools");
        };
        let info = probe(&mut file).unwrap();
        assert_eq!(info.fstype, "vfat");
        assert_eq!(info.label.as_deref(), Some("CIDATA"));
        assert_eq!(info.uuid.as_deref(), Some("1234-abcd"));
    }

    #[test]
    fn unknown_content_is_none() {
        let mut zeros = std::io::Cursor::new(vec![0u8; PROBE_BYTES]);
        assert_eq!(probe(&mut zeros), None);
    }
}
