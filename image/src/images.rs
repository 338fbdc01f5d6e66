//! Baking OCI images into the initrd: `--image name:tag=PATH` (or `--image PATH`, named by
//! the layout's `org.opencontainers.image.ref.name`), where PATH is an OCI image layout
//! directory or an image archive file (an `oci-archive` or a `docker save` archive, see
//! [`archive`]). All images go into one OCI layout at `/usr/lib/berth/images`, each blob once,
//! which init reads at boot.

mod archive;
mod docker;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use berth_arch::Arch;
use berth_oci::{Descriptor, Digest, Layout, OciError};

use crate::initramfs::Initramfs;
use crate::kernel::default_cache_dir;

/// Where the image store goes inside the image (init's `IMAGE_STORE`).
pub const IMAGE_STORE: &str = "/usr/lib/berth/images";
/// The media type of an OCI image manifest, for manifests that do not say.
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Under the cache directory: where image archives are imported as layouts while an image is
/// built (one directory per archive, removed once its blobs are baked).
const IMPORT_DIR: &str = "imports";

/// One `--image` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    /// The name the manifest uses (`busybox:1.35`); `None` takes the layout's own names.
    pub name: Option<String>,
    /// An OCI image layout directory, or an image archive file (`oci-archive` or `docker
    /// save`, plain or gzip-compressed), told apart by their content.
    pub dir: PathBuf,
}

impl FromStr for ImageSource {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('=') {
            Some((name, dir)) if !name.is_empty() && !dir.is_empty() => Ok(ImageSource {
                name: Some(name.to_string()),
                dir: PathBuf::from(dir),
            }),
            Some(_) => Err(format!("`{text}` is not NAME:TAG=PATH or PATH")),
            None => Ok(ImageSource {
                name: None,
                dir: PathBuf::from(text),
            }),
        }
    }
}

/// Where an image comes from, as error messages name it: `image layout DIR` or `image archive
/// FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub path: PathBuf,
    pub archive: bool,
}

impl Origin {
    fn layout(path: &Path) -> Origin {
        Origin {
            path: path.to_path_buf(),
            archive: false,
        }
    }

    fn archive(path: &Path) -> Origin {
        Origin {
            path: path.to_path_buf(),
            archive: true,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.archive { "archive" } else { "layout" };
        write!(f, "image {kind} {}", self.path.display())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{origin}: {source}")]
    Layout {
        origin: Origin,
        #[source]
        source: OciError,
    },
    #[error("{origin} has no image to name {name}: it holds {}", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    NoMatch {
        origin: Origin,
        name: String,
        known: Vec<String>,
    },
    #[error("image {name} from {origin} is built for {found}, not {arch} ({expected})")]
    WrongArch {
        name: String,
        origin: Origin,
        arch: Arch,
        expected: &'static str,
        found: String,
    },
    #[error("two --image arguments name {0}")]
    Duplicate(String),
    #[error("cannot read image archive {}: {source}", archive.display())]
    ReadArchive {
        archive: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is neither an image layout directory nor an image archive: {reason}", archive.display())]
    NotAnArchive {
        archive: PathBuf,
        reason: &'static str,
    },
    #[error("image archive {}: member `{member}`: {reason}", archive.display())]
    ArchiveMember {
        archive: PathBuf,
        member: String,
        reason: String,
    },
    #[error("image archive {}: no member `{member}`, which {named_by} names", archive.display())]
    MissingMember {
        archive: PathBuf,
        member: String,
        named_by: String,
    },
    #[error("image archive {}: {member}: invalid JSON: {source}", archive.display())]
    ParseMember {
        archive: PathBuf,
        member: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("image archive {}: image config {config} lists {diff_ids} diff_ids for {layers} layers", archive.display())]
    LayerCountMismatch {
        archive: PathBuf,
        config: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error("image archive {}: layer {layer} hashes to {actual}, but its image config gives its diff_id as {expected}", archive.display())]
    DiffIdMismatch {
        archive: PathBuf,
        layer: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("image archive {}: the image with config {config} has no RepoTags; give it a name with --image NAME:TAG={}", archive.display(), archive.display())]
    Untagged { archive: PathBuf, config: String },
    #[error("image archive {}: {source}", archive.display())]
    ArchiveLayout {
        archive: PathBuf,
        #[source]
        source: OciError,
    },
    #[error("importing image archive {}: {}: {source}", archive.display(), path.display())]
    WorkDir {
        archive: PathBuf,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The reference inside `layout` that `name` stands for: the same string, its tag, or the
/// layout's only image.
fn pick_reference(layout: &Layout, name: &str) -> Option<String> {
    let refs = layout.references();
    let tag = name.rsplit_once(':').map(|(_, tag)| tag);
    refs.iter()
        .find(|r| r.as_str() == name)
        .or_else(|| tag.and_then(|t| refs.iter().find(|r| r.as_str() == t)))
        .or_else(|| if refs.len() == 1 { refs.first() } else { None })
        .cloned()
}

/// Adds every image to `initramfs` and returns their names, as the manifest may use them.
/// Image archives are imported under the cache directory's `imports/`.
pub fn bake(
    sources: &[ImageSource],
    arch: Arch,
    initramfs: &mut Initramfs,
) -> Result<Vec<String>, ImageError> {
    bake_with_import_dir(
        sources,
        arch,
        initramfs,
        &default_cache_dir().join(IMPORT_DIR),
    )
}

/// As [`bake`], importing image archives into directories under `import_dir`.
pub fn bake_with_import_dir(
    sources: &[ImageSource],
    arch: Arch,
    initramfs: &mut Initramfs,
    import_dir: &Path,
) -> Result<Vec<String>, ImageError> {
    let mut names = Vec::new();
    let mut index = Vec::new();
    let mut blobs_written = BTreeSet::new();
    for source in sources {
        // An archive becomes a layout of its own first, removed once its blobs are baked (when
        // `imported` is dropped at the end of this iteration).
        let imported = if source.dir.is_file() {
            Some(archive::import(
                &source.dir,
                source.name.as_deref(),
                import_dir,
            )?)
        } else {
            None
        };
        let (origin, layout_dir) = match &imported {
            Some(imported) => (Origin::archive(&source.dir), imported.layout()),
            None => (Origin::layout(&source.dir), source.dir.as_path()),
        };
        let layout_error = |source_err: OciError| ImageError::Layout {
            origin: origin.clone(),
            source: source_err,
        };
        let layout = Layout::open(layout_dir).map_err(layout_error)?;
        let pairs: Vec<(String, String)> = match &source.name {
            Some(name) => {
                let reference =
                    pick_reference(&layout, name).ok_or_else(|| ImageError::NoMatch {
                        origin: origin.clone(),
                        name: name.clone(),
                        known: layout.references(),
                    })?;
                vec![(name.clone(), reference)]
            }
            None => layout
                .references()
                .into_iter()
                .map(|r| (r.clone(), r))
                .collect(),
        };
        for (name, reference) in pairs {
            if names.contains(&name) {
                return Err(ImageError::Duplicate(name));
            }
            let image = layout.resolve(&reference).map_err(layout_error)?;
            if image.config.architecture != arch.debian_arch() {
                return Err(ImageError::WrongArch {
                    name,
                    origin: origin.clone(),
                    arch,
                    expected: arch.debian_arch(),
                    found: image.config.architecture.clone(),
                });
            }
            let manifest_bytes = layout
                .read_blob(&image.manifest_digest)
                .map_err(layout_error)?;
            let mut blobs = vec![(image.manifest_digest.clone(), manifest_bytes.clone())];
            blobs.push((
                image.config_digest.clone(),
                layout
                    .read_blob(&image.config_digest)
                    .map_err(layout_error)?,
            ));
            for (layer, _) in image.layers() {
                blobs.push((
                    layer.digest.clone(),
                    layout.read_descriptor(layer).map_err(layout_error)?,
                ));
            }
            for (digest, data) in blobs {
                if blobs_written.insert(digest.clone()) {
                    initramfs.file(
                        &format!(
                            "{IMAGE_STORE}/blobs/{}/{}",
                            digest.algorithm(),
                            digest.hex()
                        ),
                        0o644,
                        data,
                    );
                }
            }
            let descriptor = Descriptor {
                media_type: image
                    .manifest
                    .media_type
                    .clone()
                    .unwrap_or_else(|| OCI_MANIFEST.to_string()),
                digest: image.manifest_digest.clone(),
                size: manifest_bytes.len() as u64,
                annotations: Default::default(),
                platform: None,
            };
            index.push((name.clone(), descriptor));
            names.push(name);
        }
    }
    initramfs
        .file(
            &format!("{IMAGE_STORE}/oci-layout"),
            0o644,
            berth_oci::OCI_LAYOUT_FILE_CONTENT.as_bytes().to_vec(),
        )
        .file(
            &format!("{IMAGE_STORE}/index.json"),
            0o644,
            berth_oci::index_json(&index),
        );
    Ok(names)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests;
