//! Sizes: the guest binaries (guest profile), the default image's initrd and raw disk,
//! beside the trivial `/init`'s initrd.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_arch::Arch;
use berth_image::assemble::guest_binary_candidates;
use berth_image::{DiskFormat, DiskOptions};
use serde::Serialize;

use crate::guest;

/// The data partition of the measured disk: `berth build --format raw`'s default.
const DATA_MIB: u64 = 256;
/// The guest binaries, by file name.
pub const BINARIES: [&str; 4] = ["init", "netd", "berthctl", "berth-pull"];

#[derive(Debug, Clone, Serialize)]
pub struct SizeFigures {
    pub arch: String,
    /// KiB of each of [`BINARIES`], `None` when it was not built.
    pub binaries_kib: Vec<(String, Option<f64>)>,
    pub initrd_kib: f64,
    pub trivial_initrd_kib: f64,
    /// The initrd's files once unpacked: what the kernel's rootfs holds in RAM.
    pub initrd_unpacked_kib: f64,
    pub trivial_initrd_unpacked_kib: f64,
    pub disk_apparent_mib: f64,
    pub disk_allocated_mib: f64,
    pub modules: usize,
}

fn kib(path: &Path) -> Result<f64, String> {
    std::fs::metadata(path)
        .map(|m| m.len() as f64 / 1024.0)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The total size of the files in a gzip-compressed newc initrd.
fn unpacked_kib(initrd: &Path) -> Result<f64, String> {
    let compressed = std::fs::read(initrd).map_err(|e| format!("{}: {e}", initrd.display()))?;
    let mut archive = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::MultiGzDecoder::new(compressed.as_slice()),
        &mut archive,
    )
    .map_err(|e| format!("{}: {e}", initrd.display()))?;
    let entries = berth_image::initramfs::read_cpio(&archive)
        .map_err(|e| format!("{}: {e}", initrd.display()))?;
    Ok(entries.iter().map(|(_, _, data)| data.len()).sum::<usize>() as f64 / 1024.0)
}

fn built_binary(arch: Arch, name: &str) -> Option<PathBuf> {
    guest_binary_candidates(arch, name)
        .into_iter()
        .find(|p| p.exists())
}

pub fn sizes(
    arch: Arch,
    dir: &Path,
    manifest: &Path,
    trivial_initrd: &Path,
) -> Result<SizeFigures, String> {
    let text =
        std::fs::read_to_string(manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let built = guest::build(
        arch,
        &dir.join("default"),
        &text,
        false,
        Some(DiskOptions {
            format: DiskFormat::Raw,
            data_mib: DATA_MIB,
        }),
    )?;
    let disk = built.dir.join("image").join(
        built
            .metadata
            .disk
            .as_deref()
            .unwrap_or(DiskFormat::Raw.file_name()),
    );
    let disk_meta = std::fs::metadata(&disk).map_err(|e| format!("{}: {e}", disk.display()))?;
    let mib = 1024.0 * 1024.0;
    Ok(SizeFigures {
        arch: arch.name().to_string(),
        binaries_kib: BINARIES
            .iter()
            .map(|b| {
                (
                    b.to_string(),
                    built_binary(arch, b).and_then(|p| kib(&p).ok()),
                )
            })
            .collect(),
        initrd_kib: kib(&built.initrd())?,
        trivial_initrd_kib: kib(trivial_initrd)?,
        initrd_unpacked_kib: unpacked_kib(&built.initrd())?,
        trivial_initrd_unpacked_kib: unpacked_kib(trivial_initrd)?,
        disk_apparent_mib: disk_meta.len() as f64 / mib,
        disk_allocated_mib: disk_meta.blocks() as f64 * 512.0 / mib,
        modules: built.metadata.modules.len(),
    })
}
