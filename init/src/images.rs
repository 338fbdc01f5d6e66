//! The image store in the guest: images baked by `berth build` as one OCI layout, and their
//! layers unpacked once each into a content-addressed directory that overlayfs stacks.
//!
//! Every blob is checked against its digest as it is read, and every layer's uncompressed
//! stream against the image config's `diff_id`, so a corrupted image never runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use berth_oci::{ContainerConfig, Layout};

/// The OCI layout `berth build` writes into the image: read-only, and outside
/// `/var/lib/berth` so that a data disk mounted there does not hide it.
pub const IMAGE_STORE: &str = "/usr/lib/berth/images";
/// Unpacked layers, one directory per `diff_id`, shared by every image and container.
pub const LAYER_STORE: &str = "/var/lib/berth/layers";

/// An image ready to run: its layers on disk and its default process settings.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// Layer directories, topmost first, as overlayfs' `lowerdir` wants them.
    pub lower_dirs: Vec<PathBuf>,
    pub config: ContainerConfig,
}

/// Images pulled from registries (by berth-pull), an OCI layout too: on the data partition
/// when there is one, so pulls are kept across boots.
pub const PULLED_STORE: &str = "/var/lib/berth/images";

/// Images prepared so far, by reference; each is prepared once per boot.
#[derive(Debug, Default)]
pub struct ImageCache {
    baked: Option<Layout>,
    pulled: Option<Layout>,
    prepared: HashMap<String, Result<PreparedImage, String>>,
}

impl ImageCache {
    pub fn new() -> ImageCache {
        ImageCache::default()
    }

    /// The image named `reference` (`name:tag`), unpacking its layers if this boot has not.
    pub fn prepare(&mut self, reference: &str) -> Result<PreparedImage, String> {
        if let Some(result) = self.prepared.get(reference) {
            return result.clone();
        }
        let result = self.prepare_uncached(reference);
        self.prepared.insert(reference.to_string(), result.clone());
        result
    }

    /// The names of the images on the host: baked into the image, then pulled.
    pub fn references(&mut self) -> Vec<String> {
        let mut references = self.baked().map(Layout::references).unwrap_or_default();
        references.extend(self.pulled().map(Layout::references).unwrap_or_default());
        references
    }

    /// Whether the host has `reference`, baked or pulled.
    pub fn has(&mut self, reference: &str) -> bool {
        self.references().iter().any(|r| r == reference)
    }

    /// Whether `reference` was baked into the image (it is never pulled then).
    pub fn is_baked(&mut self, reference: &str) -> bool {
        self.baked()
            .map(Layout::references)
            .is_ok_and(|refs| refs.iter().any(|r| r == reference))
    }

    /// A pull rewrote the pulled store: it is read again, and `reference` prepared anew.
    pub fn pulled_changed(&mut self, reference: &str) {
        self.pulled = None;
        self.prepared.remove(reference);
    }

    fn baked(&mut self) -> Result<&Layout, String> {
        if self.baked.is_none() {
            let layout = Layout::open(Path::new(IMAGE_STORE))
                .map_err(|e| format!("image store {IMAGE_STORE}: {e}"))?;
            self.baked = Some(layout);
        }
        self.baked
            .as_ref()
            .ok_or_else(|| format!("image store {IMAGE_STORE} is not open"))
    }

    fn pulled(&mut self) -> Result<&Layout, String> {
        if self.pulled.is_none() {
            let layout = Layout::open(Path::new(PULLED_STORE))
                .map_err(|e| format!("image store {PULLED_STORE}: {e}"))?;
            self.pulled = Some(layout);
        }
        self.pulled
            .as_ref()
            .ok_or_else(|| format!("image store {PULLED_STORE} is not open"))
    }

    /// The store that holds `reference`: the baked one first.
    fn layout(&mut self, reference: &str) -> Result<&Layout, String> {
        if self.is_baked(reference) {
            return self.baked();
        }
        let pulled = self
            .pulled()
            .is_ok_and(|l| l.references().iter().any(|r| r == reference));
        if pulled {
            return self.pulled();
        }
        Err(format!("no image `{reference}` on this host"))
    }

    /// The layer directories (`diff_id`s) every image on the host uses, to tell which
    /// unpacked layers an image prune may remove.
    pub fn layers_in_use(&mut self) -> std::collections::HashSet<PathBuf> {
        let mut dirs = std::collections::HashSet::new();
        for layout in [self.baked().ok().cloned(), self.pulled().ok().cloned()]
            .into_iter()
            .flatten()
        {
            for reference in layout.references() {
                if let Ok(image) = layout.resolve(&reference) {
                    for (_, diff_id) in image.layers() {
                        dirs.insert(berth_oci::layer_dir(Path::new(LAYER_STORE), diff_id));
                    }
                }
            }
        }
        dirs
    }

    /// Forgets every pulled image read so far (after an image prune).
    pub fn forget_pulled(&mut self) {
        self.pulled = None;
        self.prepared.clear();
    }

    fn prepare_uncached(&mut self, reference: &str) -> Result<PreparedImage, String> {
        let started = Instant::now();
        let layout = self.layout(reference)?;
        let image = layout.resolve(reference).map_err(|e| e.to_string())?;
        let mut lower_dirs = Vec::new();
        let mut unpacked = 0;
        for (descriptor, diff_id) in image.layers() {
            let dir = berth_oci::layer_dir(Path::new(LAYER_STORE), diff_id);
            if !dir.is_dir() {
                let blob = layout
                    .map_descriptor(descriptor)
                    .map_err(|e| e.to_string())?;
                berth_oci::unpack_layer_into_store(
                    &blob,
                    &descriptor.media_type,
                    diff_id,
                    Path::new(LAYER_STORE),
                )
                .map_err(|e| e.to_string())?;
                unpacked += 1;
            }
            lower_dirs.push(dir);
        }
        // The manifest lists layers bottom first; overlayfs wants the top first.
        lower_dirs.reverse();
        log::info!(
            "image {reference}: {} layers ({unpacked} unpacked now) in {} ms",
            lower_dirs.len(),
            started.elapsed().as_millis()
        );
        Ok(PreparedImage {
            lower_dirs,
            config: image.config.config.clone().unwrap_or_default(),
        })
    }
}
