//! The peer for boot figures: an initramfs whose `/init` is a busybox script that mounts
//! `/proc`, prints one line with the kernel's uptime and powers off at once.

use std::path::{Path, PathBuf};

use berth_arch::Arch;
use berth_image::debian;
use berth_image::initramfs::Initramfs;
use berth_image::kernel::default_cache_dir;

/// The line the trivial init prints first.
pub const MARKER: &str = "^trivial-init: started";

/// The script: `uptime=` is the kernel's uptime (seconds) once `/proc` is mounted, a few
/// milliseconds after the kernel ran `/init`.
const INIT_SCRIPT: &str = "#!/bin/busybox sh\n\
/bin/busybox mount -t proc proc /proc\n\
read up rest < /proc/uptime\n\
/bin/busybox echo trivial-init: started uptime=$up\n\
/bin/busybox poweroff -f\n";

/// The kernel's uptime in milliseconds from the trivial init's line.
pub fn uptime_ms(line: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("uptime="))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|s| s * 1000.0)
}

/// Debian's static busybox for `arch`, from the package cache.
fn busybox(arch: Arch) -> Result<PathBuf, String> {
    let root = debian::unpacked_package("busybox-static", arch, &default_cache_dir(), |_| Ok(()))
        .map_err(|e| e.to_string())?;
    Ok(root.join("bin/busybox"))
}

pub fn build_initrd(arch: Arch, dir: &Path) -> Result<PathBuf, String> {
    let busybox = std::fs::read(busybox(arch)?).map_err(|e| e.to_string())?;
    let mut initramfs = Initramfs::new();
    initramfs
        .char_device("/dev/console", 0o600, 5, 1)
        .directory("/proc", 0o555)
        .file("/bin/busybox", 0o755, busybox)
        .file("/init", 0o755, INIT_SCRIPT.as_bytes().to_vec());
    let data = initramfs.to_gzip().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let path = dir.join("trivial-initrd");
    std::fs::write(&path, data).map_err(|e| e.to_string())?;
    Ok(path)
}
