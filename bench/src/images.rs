//! The images the suite needs, packed by `umoci` (a tool that is not berth's) and kept under
//! `target/bench/images/`: Debian's busybox-static for each arch (the guest containers' image
//! and the unpack benchmark's small layer), and a synthetic ~32 MiB layer for unpack
//! throughput.

use std::path::{Path, PathBuf};

use berth_arch::Arch;
use berth_image::sample;

/// The tag both layouts carry (umoci's ref name) and the name manifests use.
pub use berth_image::sample::{BUSYBOX, BUSYBOX_TAG};
pub const SYNTHETIC_TAG: &str = "synthetic";
/// Bump when a recipe changes, so cached layouts are rebuilt.
const RECIPE: &str = "bench images 2";
/// The synthetic layer: many small files and a few large ones, half of the bytes random
/// (incompressible), half text.
const SMALL_FILES: usize = 2048;
const SMALL_FILE_BYTES: usize = 4096;
const LARGE_FILES: usize = 24;
const LARGE_FILE_BYTES: usize = 1 << 20;

pub fn images_dir() -> PathBuf {
    crate::bench_dir().join("images")
}

/// A one-layer layout at `<base>/layout` tagged `tag`, whose rootfs `fill` writes (umoci, the
/// recipe `berth image busybox` uses); kept while `<base>/.complete` holds the recipe.
fn layout(
    base: &Path,
    tag: &str,
    arch: Arch,
    fill: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, String> {
    let stamp = base.join(".complete");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == RECIPE) {
        return Ok(base.join("layout"));
    }
    let layout = sample::oci_layout(base, tag, arch, fill)?;
    std::fs::write(&stamp, RECIPE).map_err(|e| e.to_string())?;
    Ok(layout)
}

/// busybox for `arch` as `1.35` (`berth image busybox`'s image), with `/www/index.html` for
/// httpd.
pub fn busybox_layout(arch: Arch) -> Result<PathBuf, String> {
    let base = images_dir().join(format!("busybox-{arch}"));
    let stamp = base.join(".complete");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == RECIPE) {
        return Ok(base.join("layout"));
    }
    let layout = sample::busybox_layout(arch, &base, |_| Ok(()))?;
    std::fs::write(&stamp, RECIPE).map_err(|e| e.to_string())?;
    Ok(layout)
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
