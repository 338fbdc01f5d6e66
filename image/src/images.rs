//! Baking OCI images into the initrd: `--image name:tag=DIR` (or `--image DIR`, named by
//! the layout's `org.opencontainers.image.ref.name`). All images go into one OCI layout at
//! `/var/lib/berth/images`, each blob once, which init reads at boot.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::str::FromStr;

use berth_arch::Arch;
use berth_oci::{Descriptor, Layout, OciError};

use crate::initramfs::Initramfs;

/// Where the image store goes inside the image (init's `IMAGE_STORE`).
pub const IMAGE_STORE: &str = "/usr/lib/berth/images";
/// The media type of an OCI image manifest, for manifests that do not say.
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// One `--image` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    /// The name the manifest uses (`busybox:1.35`); `None` takes the layout's own names.
    pub name: Option<String>,
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
            Some(_) => Err(format!("`{text}` is not NAME:TAG=DIR or DIR")),
            None => Ok(ImageSource {
                name: None,
                dir: PathBuf::from(text),
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image layout {}: {source}", dir.display())]
    Layout {
        dir: PathBuf,
        #[source]
        source: OciError,
    },
    #[error("image layout {} has no image to name {name}: it holds {}", dir.display(), if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    NoMatch {
        dir: PathBuf,
        name: String,
        known: Vec<String>,
    },
    #[error("image {name} from {} is built for {found}, not {arch} ({expected})", dir.display())]
    WrongArch {
        name: String,
        dir: PathBuf,
        arch: Arch,
        expected: &'static str,
        found: String,
    },
    #[error("two --image arguments name {0}")]
    Duplicate(String),
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
pub fn bake(
    sources: &[ImageSource],
    arch: Arch,
    initramfs: &mut Initramfs,
) -> Result<Vec<String>, ImageError> {
    let mut names = Vec::new();
    let mut index = Vec::new();
    let mut blobs_written = BTreeSet::new();
    for source in sources {
        let layout_error = |source_err: OciError| ImageError::Layout {
            dir: source.dir.clone(),
            source: source_err,
        };
        let layout = Layout::open(&source.dir).map_err(layout_error)?;
        let pairs: Vec<(String, String)> = match &source.name {
            Some(name) => {
                let reference =
                    pick_reference(&layout, name).ok_or_else(|| ImageError::NoMatch {
                        dir: source.dir.clone(),
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
                    dir: source.dir.clone(),
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
