//! The probes init runs on every block device it lists (`berth_blockdev::list`): the
//! filesystem superblock probe (`probe`: ext2/3/4, FAT, ISO 9660) and the GPT entry reader
//! (`partition_entry`, through the `gpt` crate) on the same bytes as a disk. The input is the
//! disk's start; the harness pads it to a small disk and gives GPT headers found at LBA 1 and
//! in the last sector valid CRC32s, so mutations reach the table instead of stopping at the
//! checksum. Besides not panicking: a found filesystem's type is one mount(2) knows, its
//! label has no trailing NUL or space, its UUID is in blkid's form, and a partition GUID is
//! lowercase, as `PARTUUID=` is matched.
#![no_main]

#[path = "caught.rs"]
mod caught;

use std::io::Cursor;

use berth_blockdev::{partition_entry, probe, BlockDevice, DeviceSpec};
use libfuzzer_sys::fuzz_target;

const SECTOR: usize = 512;
/// The smallest disk the harness makes: the GPT's 34 sectors at the start and room after.
const DISK_BYTES: usize = 64 << 10;
const GPT_HEADER_BYTES: usize = 92;
const GPT_CRC_OFFSET: usize = 16;

fuzz_target!(|data: &[u8]| {
    // `partition_entry` catches the `gpt` crate's asserts.
    caught::leave_caught_panics_to_the_code("/gpt-");
    let mut disk = data.to_vec();
    if disk.len() < DISK_BYTES {
        disk.resize(DISK_BYTES, 0);
    }
    disk.truncate(disk.len() / SECTOR * SECTOR);
    let last = disk.len() - SECTOR;
    fix_header_crc(&mut disk, SECTOR);
    fix_header_crc(&mut disk, last);

    if let Some(fs) = probe(&mut Cursor::new(&disk)) {
        assert!(["ext2", "ext3", "ext4", "vfat", "iso9660"].contains(&fs.fstype.as_str()));
        if let Some(label) = &fs.label {
            assert!(
                !label.is_empty() && !label.ends_with(['\0', ' ']),
                "{label:?}"
            );
        }
        if let Some(uuid) = &fs.uuid {
            let shape: Vec<usize> = uuid.split('-').map(str::len).collect();
            assert!(shape == [8, 4, 4, 4, 12] || shape == [4, 4], "{uuid}");
            assert!(uuid.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()));
            assert_eq!(uuid, &uuid.to_ascii_lowercase());
        }
    }
    for number in 1..=2 {
        if let Some((label, guid)) = partition_entry(Cursor::new(disk.clone()), number) {
            let device = BlockDevice {
                part_label: Some(label),
                part_uuid: Some(guid.clone()),
                ..BlockDevice::default()
            };
            let spec = DeviceSpec::parse(&format!("PARTUUID={}", guid.to_ascii_uppercase()));
            assert!(device.matches(&spec.unwrap()), "{guid}");
        }
    }
});

/// A GPT header at `at` gets the CRC32 its 92 bytes need.
fn fix_header_crc(disk: &mut [u8], at: usize) {
    let Some(header) = disk.get_mut(at..at + GPT_HEADER_BYTES) else {
        return;
    };
    if !header.starts_with(b"EFI PART") {
        return;
    }
    header[GPT_CRC_OFFSET..GPT_CRC_OFFSET + 4].fill(0);
    let crc = crc32(header);
    header[GPT_CRC_OFFSET..GPT_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}

/// CRC-32 (ISO-HDLC, as the GPT uses), bit by bit: the headers are 92 bytes.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
