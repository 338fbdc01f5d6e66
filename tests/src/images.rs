//! Test images: Debian's busybox-static packed into an OCI layout by `umoci` with the recipe
//! of `berth image busybox` (`berth_image::sample`), so the tests read images as the outside
//! world writes them. The tests' image also holds `/bin/berth-probe`, the isolation tests'
//! probe.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use berth_arch::Arch;

use crate::target_dir;

use berth_image::sample::run_tool as run;
pub use berth_image::sample::{BUSYBOX, BUSYBOX_TAG};

/// Bump when the recipe changes, so cached test images are rebuilt.
const RECIPE_VERSION: u32 = 2;

/// An OCI layout holding busybox for `arch` as `1.35`, built once and kept under
/// `target/test-images/`.
pub fn busybox_layout(arch: Arch) -> Result<PathBuf, String> {
    static BUILDING: Mutex<()> = Mutex::new(());
    let _guard = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    let base = target_dir()
        .join("test-images")
        .join(format!("busybox-{arch}"));
    let layout = base.join("layout");
    // The image holds the probe, so a rebuilt probe means a rebuilt image.
    let probe = crate::guest_binary("berth-probe", "berth-probe", arch)?;
    let probe_stamp = std::fs::metadata(&probe)
        .and_then(|m| m.modified())
        .map(|t| format!("recipe {RECIPE_VERSION}, probe {t:?}"))
        .map_err(|e| format!("{}: {e}", probe.display()))?;
    if std::fs::read_to_string(base.join(".complete")).is_ok_and(|s| s == probe_stamp) {
        return Ok(layout);
    }
    // The isolation tests' probe goes in beside busybox.
    let layout = berth_image::sample::busybox_layout(arch, &base, |rootfs| {
        std::fs::copy(&probe, rootfs.join("bin/berth-probe"))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })?;
    std::fs::write(base.join(".complete"), probe_stamp).map_err(|e| e.to_string())?;
    Ok(layout)
}

/// An OCI layout tagged `1.35` holding the busybox image with `tweak` applied to its root
/// filesystem (run as root on the test machine, so it may `mknod` or plant symlinks): the
/// hostile images of the boundary tests. Rebuilt at every call, under
/// `target/test-images/variant-<name>-<arch>/`.
pub fn variant_layout(
    arch: Arch,
    name: &str,
    tweak: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, String> {
    let source = busybox_layout(arch)?;
    let base = target_dir()
        .join("test-images")
        .join(format!("variant-{name}-{arch}"));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    let layout = base.join("layout");
    run(Command::new("cp").arg("-a").arg(&source).arg(&layout))?;
    let image = format!("{}:{BUSYBOX_TAG}", layout.display());
    let bundle = base.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    tweak(&bundle.join("rootfs"))?;
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle))?;
    run(Command::new("umoci").args(["gc", "--layout"]).arg(&layout))?;
    let _ = std::fs::remove_dir_all(&bundle);
    Ok(layout)
}

/// A layer blob that is gzip by its header and corrupt right after it: the first deflate
/// block has the reserved type 3, which every inflater refuses at once.
pub const CORRUPT_GZIP_LAYER: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff,
];

/// An OCI layout tagged `1` holding busybox's config with one layer, whose blob is
/// [`CORRUPT_GZIP_LAYER`], its digest and size right: an image that reaches the unpack
/// and fails there, sharing no layer with busybox. Returns the layout and the corrupt layer's diff_id. Rebuilt at every call,
/// under `target/test-images/corrupt-layer-<arch>/`.
pub fn corrupt_layer_layout(arch: Arch) -> Result<(PathBuf, berth_oci::Digest), String> {
    single_layer_layout(arch, "corrupt-layer", CORRUPT_GZIP_LAYER)
}

/// The uncompressed size of [`bomb_layer_layout`]'s layer: far more than any test guest's
/// memory, from about 2 MiB of gzip.
pub const BOMB_INFLATED_BYTES: u64 = 2 << 30;

/// An OCI layout tagged `1` holding busybox's config with one gzip layer that inflates to a
/// tar of one file of [`BOMB_INFLATED_BYTES`] zeros: a decompression bomb, its digest and size
/// right. Built with the host's `tar` and `gzip` (fast, and tools that are not berth's), once.
pub fn bomb_layer_layout(arch: Arch) -> Result<(PathBuf, berth_oci::Digest), String> {
    static BUILDING: Mutex<()> = Mutex::new(());
    let _building = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let cache = target_dir().join("test-images").join("bomb-layer");
    let blob_path = cache.join(format!("zeros-{BOMB_INFLATED_BYTES}.tar.gz"));
    if !blob_path.exists() {
        let _ = std::fs::remove_dir_all(&cache);
        let content = cache.join("content");
        std::fs::create_dir_all(&content).map_err(|e| format!("{}: {e}", content.display()))?;
        let zeros = std::fs::File::create(content.join("zeros"))
            .map_err(|e| format!("{}: {e}", content.display()))?;
        // Sparse on the host; tar reads it as zeros.
        zeros
            .set_len(BOMB_INFLATED_BYTES)
            .map_err(|e| format!("{}: {e}", content.display()))?;
        let partial = cache.join("blob.partial");
        run(Command::new("sh").arg("-c").arg(format!(
            "tar -C '{}' -c zeros | gzip -9 > '{}'",
            content.display(),
            partial.display()
        )))?;
        std::fs::rename(&partial, &blob_path)
            .map_err(|e| format!("{}: {e}", blob_path.display()))?;
        let _ = std::fs::remove_dir_all(&content);
    }
    let blob = std::fs::read(&blob_path).map_err(|e| format!("{}: {e}", blob_path.display()))?;
    single_layer_layout(arch, "bomb-layer", &blob)
}

/// An OCI layout tagged `1` with busybox's config and the one gzip layer `blob`, under
/// `test-images/<name>-<arch>`, and the diff_id its config names (any: the tests that use
/// these layers never inflate them to the end).
fn single_layer_layout(
    arch: Arch,
    name: &str,
    blob: &[u8],
) -> Result<(PathBuf, berth_oci::Digest), String> {
    use berth_oci::{Descriptor, Digest, Layout, MEDIA_TYPE_IMAGE_MANIFEST};
    let source = busybox_layout(arch)?;
    let base = target_dir()
        .join("test-images")
        .join(format!("{name}-{arch}"));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    let layout_dir = base.join("layout");
    run(Command::new("cp").arg("-a").arg(&source).arg(&layout_dir))?;
    let layout = Layout::open(&layout_dir).map_err(|e| e.to_string())?;
    let image = layout.resolve(BUSYBOX_TAG).map_err(|e| e.to_string())?;
    let write_blob = |data: &[u8]| -> Result<Digest, String> {
        let digest = Digest::sha256_of(data);
        let path = layout.blob_path(&digest);
        std::fs::write(&path, data).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(digest)
    };
    let descriptor = |media_type: &str, digest: Digest, size: usize| Descriptor {
        media_type: media_type.to_string(),
        digest,
        size: size as u64,
        annotations: Default::default(),
        platform: None,
    };
    // Any digest will do: the stream never inflates far enough to be compared with it.
    let diff_id = Digest::sha256_of(format!("the {name}'s stream").as_bytes());
    let mut config = image.config.clone();
    config.rootfs.diff_ids = vec![diff_id.clone()];
    let config_bytes = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
    let mut manifest = image.manifest.clone();
    manifest.config = descriptor(
        &manifest.config.media_type,
        write_blob(&config_bytes)?,
        config_bytes.len(),
    );
    manifest.layers = vec![descriptor(
        berth_oci::MEDIA_TYPE_LAYER_TAR_GZIP,
        write_blob(blob)?,
        blob.len(),
    )];
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let manifest_descriptor = descriptor(
        MEDIA_TYPE_IMAGE_MANIFEST,
        write_blob(&manifest_bytes)?,
        manifest_bytes.len(),
    );
    let index = berth_oci::index_json(&[("1".to_string(), manifest_descriptor)]);
    let index_path = layout_dir.join(berth_oci::INDEX_FILE);
    std::fs::write(&index_path, index).map_err(|e| format!("{}: {e}", index_path.display()))?;
    Ok((layout_dir, diff_id))
}
