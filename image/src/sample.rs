//! `berth image busybox`: Debian's busybox-static packed into an OCI layout tagged `1.35` by
//! `umoci`, a tool that is not berth's (so berth reads the image as the outside world writes
//! it). The demo's stack runs on it, and the tests build theirs with the same recipe, adding
//! their probe.

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_arch::Arch;

use crate::debian;
use crate::kernel::default_cache_dir;

/// The tag the layout carries (umoci's `org.opencontainers.image.ref.name`).
pub const BUSYBOX_TAG: &str = "1.35";
/// The name manifests use for it.
pub const BUSYBOX: &str = "busybox:1.35";

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
www:x:1000:1000:www:/www:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\ndaemon:x:1:\nwww:x:1000:\nlogs:x:4:www\nnogroup:x:65534:\n";

/// Runs a tool; its stderr is the error.
pub fn run_tool(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let output = command.output().map_err(|e| format!("{shown}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown}: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// The applets of Debian's busybox-static; both arches are built from one configuration, so
/// the host's busybox lists them for either.
fn applets() -> Result<Vec<String>, String> {
    let output = Command::new("busybox")
        .arg("--list")
        .output()
        .map_err(|e| format!("busybox --list: {e} (scripts/setup installs busybox-static)"))?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .filter(|a| a != "busybox")
        .collect())
}

fn busybox_rootfs(arch: Arch, rootfs: &Path) -> Result<(), String> {
    let busybox = busybox_binary(arch)?;
    let bin = rootfs.join("bin");
    for dir in ["bin", "etc", "root", "tmp", "www"] {
        std::fs::create_dir_all(rootfs.join(dir)).map_err(|e| e.to_string())?;
    }
    std::fs::copy(busybox, bin.join("busybox")).map_err(|e| e.to_string())?;
    for applet in applets()? {
        let link = bin.join(&applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).map_err(|e| e.to_string())?;
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), PASSWD).map_err(|e| e.to_string())?;
    std::fs::write(rootfs.join("etc/group"), GROUP).map_err(|e| e.to_string())?;
    std::fs::write(rootfs.join("www/index.html"), "hello from berth\n").map_err(|e| e.to_string())
}

/// Debian's static busybox for `arch`, from the package cache (fetched on first use).
pub fn busybox_binary(arch: Arch) -> Result<PathBuf, String> {
    let root = debian::unpacked_package("busybox-static", arch, &default_cache_dir(), |_| Ok(()))
        .map_err(|e| e.to_string())?;
    Ok(root.join("bin/busybox"))
}

/// Writes the busybox image for `arch` into `base/layout` (replacing what `base` held),
/// `extra` adding files to its root filesystem first; the layout's path.
pub fn busybox_layout(
    arch: Arch,
    base: &Path,
    extra: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, String> {
    oci_layout(base, BUSYBOX_TAG, arch, |rootfs| {
        busybox_rootfs(arch, rootfs)?;
        extra(rootfs)
    })
}

/// A one-layer OCI layout at `base/layout` (replacing what `base` held) tagged `tag`, for
/// `arch`, whose root filesystem `fill` writes, packed by umoci; the layout's path.
pub fn oci_layout(
    base: &Path,
    tag: &str,
    arch: Arch,
    fill: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, String> {
    let _ = std::fs::remove_dir_all(base);
    std::fs::create_dir_all(base).map_err(|e| format!("{}: {e}", base.display()))?;
    let layout = base.join("layout");
    let image = format!("{}:{tag}", layout.display());
    let bundle = base.join("bundle");
    run_tool(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
    )?;
    run_tool(Command::new("umoci").args(["new", "--image", &image]))?;
    run_tool(
        Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle),
    )?;
    fill(&bundle.join("rootfs"))?;
    run_tool(
        Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle),
    )?;
    run_tool(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--architecture",
        arch.debian_arch(),
        "--os",
        "linux",
        "--config.cmd",
        "sh",
        "--config.env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]))?;
    run_tool(Command::new("umoci").args(["gc", "--layout"]).arg(&layout))?;
    let _ = std::fs::remove_dir_all(&bundle);
    Ok(layout)
}
