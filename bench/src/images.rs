//! The images the suite needs, packed by `umoci` (a tool that is not berth's) and kept under
//! `target/bench/images/`: Debian's busybox-static for each arch (the guest containers' image
//! and the unpack benchmark's small layer), and a synthetic ~32 MiB layer for unpack
//! throughput.

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_arch::Arch;
use berth_image::debian;
use berth_image::kernel::default_cache_dir;

/// The tag both layouts carry (umoci's ref name) and the name manifests use.
pub const BUSYBOX_TAG: &str = "1.35";
pub const BUSYBOX: &str = "busybox:1.35";
pub const SYNTHETIC_TAG: &str = "synthetic";
/// Bump when a recipe changes, so cached layouts are rebuilt.
const RECIPE: &str = "bench images 1";
/// The synthetic layer: many small files and a few large ones, half of the bytes random
/// (incompressible), half text.
const SMALL_FILES: usize = 2048;
const SMALL_FILE_BYTES: usize = 4096;
const LARGE_FILES: usize = 24;
const LARGE_FILE_BYTES: usize = 1 << 20;

const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

pub fn images_dir() -> PathBuf {
    crate::bench_dir().join("images")
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .map_err(|e| format!("{shown}: {e} (scripts/setup installs umoci and busybox-static)"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown}: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Builds a one-layer layout at `<base>/layout` tagged `tag`, whose rootfs `fill` writes;
/// kept while `<base>/.complete` holds the recipe.
fn layout(
    base: &Path,
    tag: &str,
    arch: Arch,
    fill: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, String> {
    let layout = base.join("layout");
    let stamp = base.join(".complete");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == RECIPE) {
        return Ok(layout);
    }
    let _ = std::fs::remove_dir_all(base);
    std::fs::create_dir_all(base).map_err(|e| format!("{}: {e}", base.display()))?;
    let image = format!("{}:{tag}", layout.display());
    let bundle = base.join("bundle");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    fill(&bundle.join("rootfs"))?;
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle))?;
    run(Command::new("umoci").args([
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
    run(Command::new("umoci").args(["gc", "--layout"]).arg(&layout))?;
    let _ = std::fs::remove_dir_all(&bundle);
    std::fs::write(&stamp, RECIPE).map_err(|e| e.to_string())?;
    Ok(layout)
}

/// The applets of Debian's busybox-static (one configuration for both arches).
fn applets() -> Result<Vec<String>, String> {
    let output = Command::new("busybox")
        .arg("--list")
        .output()
        .map_err(|e| format!("busybox --list: {e} (scripts/setup installs busybox-static)"))?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|a| *a != "busybox")
        .map(str::to_string)
        .collect())
}

/// Debian's static busybox for `arch`, from the package cache.
pub fn busybox_binary(arch: Arch) -> Result<PathBuf, String> {
    let root = debian::unpacked_package("busybox-static", arch, &default_cache_dir(), |_| Ok(()))
        .map_err(|e| e.to_string())?;
    Ok(root.join("bin/busybox"))
}

/// busybox for `arch` as `1.35`, with `/www/index.html` for httpd.
pub fn busybox_layout(arch: Arch) -> Result<PathBuf, String> {
    let busybox = busybox_binary(arch)?;
    let applets = applets()?;
    layout(
        &images_dir().join(format!("busybox-{arch}")),
        BUSYBOX_TAG,
        arch,
        |rootfs| {
            let io = |e: std::io::Error| format!("{}: {e}", rootfs.display());
            for dir in ["bin", "etc", "root", "tmp", "www"] {
                std::fs::create_dir_all(rootfs.join(dir)).map_err(io)?;
            }
            std::fs::copy(&busybox, rootfs.join("bin/busybox")).map_err(io)?;
            for applet in &applets {
                let link = rootfs.join("bin").join(applet);
                if !link.exists() {
                    std::os::unix::fs::symlink("busybox", link).map_err(io)?;
                }
            }
            std::fs::write(rootfs.join("etc/passwd"), PASSWD).map_err(io)?;
            std::fs::write(rootfs.join("etc/group"), GROUP).map_err(io)?;
            std::fs::write(rootfs.join("www/index.html"), "hello from berth\n").map_err(io)?;
            Ok(())
        },
    )
}

/// A deterministic byte stream (xorshift64), so the synthetic layer is the same every time.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Text that gzip compresses about as well as source code.
fn text(seed: u64, len: usize) -> Vec<u8> {
    let words = [
        "container",
        "berth",
        "layer",
        "overlay",
        "init",
        "kernel",
        "fn",
        "let",
        "mut",
        "{",
        "}",
        "\n",
    ];
    let picks = pseudo_random(seed, len);
    let mut out = Vec::with_capacity(len + 16);
    for pick in picks {
        if out.len() >= len {
            break;
        }
        out.extend_from_slice(words[usize::from(pick) % words.len()].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

/// The synthetic image: [`SMALL_FILES`] small files in 64 directories and [`LARGE_FILES`]
/// large ones, about 32 MiB in all.
pub fn synthetic_layout() -> Result<PathBuf, String> {
    let arch = Arch::host().ok_or("unsupported host arch")?;
    layout(
        &images_dir().join("synthetic"),
        SYNTHETIC_TAG,
        arch,
        |rootfs| {
            let io = |e: std::io::Error| format!("{}: {e}", rootfs.display());
            for i in 0..SMALL_FILES {
                let dir = rootfs.join(format!("small/d{:02}", i % 64));
                std::fs::create_dir_all(&dir).map_err(io)?;
                let seed = u64::try_from(i).unwrap_or_default();
                let data = if i % 2 == 0 {
                    pseudo_random(seed, SMALL_FILE_BYTES)
                } else {
                    text(seed, SMALL_FILE_BYTES)
                };
                std::fs::write(dir.join(format!("f{i:05}")), data).map_err(io)?;
            }
            let large = rootfs.join("large");
            std::fs::create_dir_all(&large).map_err(io)?;
            for i in 0..LARGE_FILES {
                let seed = 1_000_000 + u64::try_from(i).unwrap_or_default();
                let data = if i % 2 == 0 {
                    pseudo_random(seed, LARGE_FILE_BYTES)
                } else {
                    text(seed, LARGE_FILE_BYTES)
                };
                std::fs::write(large.join(format!("blob{i:02}")), data).map_err(io)?;
            }
            Ok(())
        },
    )
}
