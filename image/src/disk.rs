//! Bootable disk images: GPT with an EFI system partition that boots through systemd-boot,
//! two boot slots on it, and an ext4 data partition for `/var/lib/berth`.
//!
//! Why systemd-boot with loader entries rather than a unified kernel image: Debian's kernels
//! are EFI-stub PE files already, systemd-boot loads them with their initrd and command line
//! from a text entry (no PE section surgery, for which Debian ships no tool for arm64), and
//! its entries are the A/B mechanism: `loader.conf` names the active slot, and an update
//! writes the other slot's files and entry and switches `default`, with systemd-boot's boot
//! counting (`berth-b+3.conf`) to fall back to the previous slot if the new one never comes
//! up.
//!
//! The ESP is a FAT filesystem written with `fatfs`, the partition table with `gpt`; ext4 is
//! made by `mke2fs` from e2fsprogs (no Rust crate writes ext4), and qcow2 by `qemu-img`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_arch::Arch;
use gpt::partition_types;

use crate::debian::{self, DebianError};

/// Partition names: what init finds the data partition by (`PARTLABEL=berth-data`).
pub const ESP_NAME: &str = "berth-esp";
pub const DATA_NAME: &str = "berth-data";
/// The boot slots on the ESP.
pub const SLOTS: [&str; 2] = ["a", "b"];
/// The disk's sector size and the alignment of its partitions.
const SECTOR: u64 = 512;
const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    pub fn file_name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "disk.raw",
            DiskFormat::Qcow2 => "disk.qcow2",
        }
    }

    pub fn qemu_name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("partition table of {}: {detail}", path.display())]
    Gpt { path: PathBuf, detail: String },
    #[error(transparent)]
    Debian(#[from] DebianError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What goes on the disk.
#[derive(Debug, Clone)]
pub struct DiskLayout<'a> {
    pub arch: Arch,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// The kernel command line of both slots.
    pub cmdline: String,
    pub data_mib: u64,
    pub format: DiskFormat,
    /// The image's version, recorded in both slots' entries (`# berth-version`).
    pub version: &'a str,
}

/// A slot's loader entry. `sort-key` and `version` order the entries for systemd-boot: the
/// highest version whose boot counter is not spent boots (init's `boot_entries` module says
/// how updates use it); slot a starts as generation 1, slot b as 0.
fn entry(slot: &str, cmdline: &str, version: &str) -> String {
    let generation = u8::from(slot == "a");
    format!(
        "title berth (slot {})\nlinux /berth/{slot}/vmlinuz\ninitrd /berth/{slot}/initrd\noptions {cmdline} berth.slot={slot}\nsort-key berth\nversion {generation}\n# berth-version {version}\n",
        slot.to_uppercase()
    )
}

/// Rounds `bytes` up to whole MiB.
fn mib_ceil(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

/// Writes the ESP's FAT filesystem into `esp` (a file of its final size).
fn write_esp(layout: &DiskLayout, systemd_boot: &Path, esp: &Path) -> Result<(), DiskError> {
    let read = |path: &Path| std::fs::read(path).map_err(io(path));
    let kernel = read(layout.kernel)?;
    let initrd = read(layout.initrd)?;
    let boot = read(systemd_boot)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(esp)
        .map_err(io(esp))?;
    fatfs::format_volume(
        &file,
        fatfs::FormatVolumeOptions::new().volume_label(*b"BERTH-ESP  "),
    )
    .map_err(io(esp))?;
    let fs = fatfs::FileSystem::new(&file, fatfs::FsOptions::new()).map_err(io(esp))?;
    let root = fs.root_dir();
    let put = |path: &str, data: &[u8]| -> Result<(), DiskError> {
        let mut dir = root.clone();
        let parts: Vec<&str> = path.split('/').collect();
        let (name, dirs) = parts.split_last().unwrap_or((&"", &[]));
        for d in dirs {
            dir = match dir.open_dir(d) {
                Ok(existing) => existing,
                Err(_) => dir.create_dir(d).map_err(io(esp))?,
            };
        }
        let mut out = dir.create_file(name).map_err(io(esp))?;
        out.truncate().map_err(io(esp))?;
        out.write_all(data).map_err(io(esp))
    };
    put(layout.arch.efi_removable_path(), &boot)?;
    // No menu: the newest good slot boots at once; a key held at power-on still shows it.
    put(
        "loader/loader.conf",
        b"default berth-*\ntimeout 0\nconsole-mode keep\n",
    )?;
    for slot in SLOTS {
        put(&format!("berth/{slot}/vmlinuz"), &kernel)?;
        put(&format!("berth/{slot}/initrd"), &initrd)?;
        put(
            &format!("loader/entries/berth-{slot}.conf"),
            entry(slot, &layout.cmdline, layout.version).as_bytes(),
        )?;
    }
    put("berth/active", b"a\n")?;
    drop(root);
    fs.unmount().map_err(io(esp))
}

/// Copies `from` into `to` at `offset`.
fn copy_at(from: &Path, to: &mut File, to_path: &Path, offset: u64) -> Result<(), DiskError> {
    let mut source = File::open(from).map_err(io(from))?;
    to.seek(SeekFrom::Start(offset)).map_err(io(to_path))?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = source.read(&mut buffer).map_err(io(from))?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(buffer.get(..n).unwrap_or_default())
            .map_err(io(to_path))?;
    }
}

/// Writes the disk image into `out` and returns its path.
pub fn write_disk(layout: &DiskLayout, cache_dir: &Path, out: &Path) -> Result<PathBuf, DiskError> {
    let boot_root =
        debian::unpacked_package("systemd-boot-efi", layout.arch, cache_dir, |_| Ok(()))?;
    let systemd_boot = boot_root.join(layout.arch.systemd_boot_path());
    let size_of = |path: &Path| std::fs::metadata(path).map(|m| m.len()).map_err(io(path));
    // Two slots of kernel and initrd, systemd-boot, and room for an update to write a bigger
    // kernel into the other slot.
    let payload = 2 * (size_of(layout.kernel)? + size_of(layout.initrd)?) + size_of(&systemd_boot)?;
    let esp_mib = (mib_ceil(payload) * 3 / 2 + 8).max(64);
    let esp_start = MIB;
    let data_start = esp_start + esp_mib * MIB;
    let disk_size = data_start + layout.data_mib * MIB + MIB;

    let qcow2 = layout.format == DiskFormat::Qcow2;
    let steps = 3 + u64::from(qcow2);
    let mut progress = crate::progress::Progress::start(format!(
        "writing the {} disk image ({} MiB: ESP, partition table, ext4 data{})",
        layout.format.file_name(),
        disk_size / MIB,
        if qcow2 { ", qcow2" } else { "" }
    ));
    let esp_path = out.join("esp.img");
    File::create(&esp_path)
        .and_then(|f| f.set_len(esp_mib * MIB))
        .map_err(io(&esp_path))?;
    write_esp(layout, &systemd_boot, &esp_path)?;
    progress.update(1, steps);

    let raw = out.join(DiskFormat::Raw.file_name());
    let _ = std::fs::remove_file(&raw);
    let mut disk = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&raw)
        .map_err(io(&raw))?;
    disk.set_len(disk_size).map_err(io(&raw))?;
    let gpt_error = |detail: String| DiskError::Gpt {
        path: raw.clone(),
        detail,
    };
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(
        u32::try_from(disk_size / SECTOR - 1).unwrap_or(u32::MAX),
    );
    mbr.overwrite_lba0(&mut disk)
        .map_err(|e| gpt_error(e.to_string()))?;
    let mut table = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(&mut disk, None)
        .map_err(|e| gpt_error(e.to_string()))?;
    table
        .add_partition_at(
            ESP_NAME,
            1,
            esp_start / SECTOR,
            esp_mib * MIB / SECTOR,
            partition_types::EFI,
            0,
        )
        .map_err(|e| gpt_error(e.to_string()))?;
    table
        .add_partition_at(
            DATA_NAME,
            2,
            data_start / SECTOR,
            layout.data_mib * MIB / SECTOR,
            partition_types::LINUX_FS,
            0,
        )
        .map_err(|e| gpt_error(e.to_string()))?;
    table.write().map_err(|e| gpt_error(e.to_string()))?;
    copy_at(&esp_path, &mut disk, &raw, esp_start)?;
    drop(disk);
    let _ = std::fs::remove_file(&esp_path);
    progress.update(2, steps);
    // ext4 with a journal: a power cut loses at most the last moments, never the filesystem.
    debian::run_tool(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", DATA_NAME])
            .arg("-E")
            .arg(format!("offset={data_start},nodiscard"))
            .arg(&raw)
            .arg(format!("{}k", layout.data_mib * 1024)),
    )?;
    progress.update(3, steps);
    let written = match layout.format {
        DiskFormat::Raw => raw,
        DiskFormat::Qcow2 => {
            let qcow2 = out.join(DiskFormat::Qcow2.file_name());
            debian::run_tool(
                Command::new("qemu-img")
                    .args(["convert", "-f", "raw", "-O", "qcow2"])
                    .arg(&raw)
                    .arg(&qcow2),
            )?;
            let _ = std::fs::remove_file(&raw);
            qcow2
        }
    };
    progress.finish();
    Ok(written)
}
