//! An OCI image layout on disk (`oci-layout`, `index.json`, `blobs/sha256/...`), as `umoci` and
//! `skopeo copy ... oci:DIR:NAME` write it, and images resolved in it by name.
//!
//! Every blob is verified against its digest when read: a layout may sit on a disk we do not
//! trust to be intact, and a wrong config would silently run the wrong program.

use std::fs;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::image::{
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_IMAGE_MANIFEST,
};
use crate::mapped::MappedBlob;
use crate::{
    Descriptor, Digest, ImageConfig, ImageIndex, ImageManifest, OciError, REF_NAME_ANNOTATION,
};

/// The content of the `oci-layout` file this crate writes and accepts.
pub const OCI_LAYOUT_FILE_CONTENT: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";
pub const OCI_LAYOUT_FILE: &str = "oci-layout";
pub const INDEX_FILE: &str = "index.json";
const SUPPORTED_LAYOUT_VERSION: &str = "1.0.0";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutMarker {
    image_layout_version: String,
}

/// An image resolved in a layout: everything needed to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub reference: String,
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config_digest: Digest,
    pub config: ImageConfig,
}

impl Image {
    /// Each layer's descriptor with its diff_id, bottom layer first. [`Layout::resolve`] has
    /// checked that there are as many diff_ids as layers.
    pub fn layers(&self) -> impl Iterator<Item = (&Descriptor, &Digest)> {
        self.manifest
            .layers
            .iter()
            .zip(self.config.rootfs.diff_ids.iter())
    }
}

/// An opened image layout: its root directory and parsed `index.json`.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
    index: ImageIndex,
}

/// Refuses `data` (read from `path`) unless it hashes to `digest`.
fn check_digest(digest: &Digest, path: PathBuf, data: &[u8]) -> Result<(), OciError> {
    let actual = Digest::sha256_of(data);
    if actual != *digest {
        return Err(OciError::BlobDigestMismatch {
            digest: digest.clone(),
            path,
            actual,
        });
    }
    Ok(())
}

impl Layout {
    /// Checks the `oci-layout` marker and reads `index.json`.
    pub fn open(dir: &Path) -> Result<Layout, OciError> {
        let marker_path = dir.join(OCI_LAYOUT_FILE);
        let marker: LayoutMarker = read_json_file(&marker_path)?;
        if marker.image_layout_version != SUPPORTED_LAYOUT_VERSION {
            return Err(OciError::UnsupportedLayoutVersion {
                path: marker_path,
                version: marker.image_layout_version,
            });
        }
        let index = read_json_file(&dir.join(INDEX_FILE))?;
        Ok(Layout {
            root: dir.to_path_buf(),
            index,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn index(&self) -> &ImageIndex {
        &self.index
    }

    /// The `ref.name` annotations of `index.json`'s manifests, in order.
    pub fn references(&self) -> Vec<String> {
        self.index
            .manifests
            .iter()
            .filter_map(Descriptor::reference)
            .map(str::to_string)
            .collect()
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm())
            .join(digest.hex())
    }

    /// Reads a blob and checks that its content hashes to `digest`.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, OciError> {
        let path = self.blob_path(digest);
        let data = fs::read(&path).map_err(|source| OciError::ReadBlob {
            digest: digest.clone(),
            path: path.clone(),
            source,
        })?;
        check_digest(digest, path, &data)?;
        Ok(data)
    }

    /// Reads the blob a descriptor points at, checking its size before reading (so a wrong
    /// descriptor cannot make us read a huge file) and its digest after.
    pub fn read_descriptor(&self, descriptor: &Descriptor) -> Result<Vec<u8>, OciError> {
        let digest = &descriptor.digest;
        let path = self.blob_path(digest);
        let size_on_disk = fs::metadata(&path)
            .map_err(|source| OciError::ReadBlob {
                digest: digest.clone(),
                path: path.clone(),
                source,
            })?
            .len();
        if size_on_disk != descriptor.size {
            return Err(OciError::BlobSizeMismatch {
                digest: digest.clone(),
                path,
                expected: descriptor.size,
                actual: size_on_disk,
            });
        }
        self.read_blob(digest)
    }

    /// The blob a descriptor points at, mapped rather than read (see [`MappedBlob`]), its
    /// size and digest checked as [`Layout::read_descriptor`] checks them.
    pub fn map_descriptor(&self, descriptor: &Descriptor) -> Result<MappedBlob, OciError> {
        let digest = &descriptor.digest;
        let path = self.blob_path(digest);
        let read_error = |source| OciError::ReadBlob {
            digest: digest.clone(),
            path: path.clone(),
            source,
        };
        let file = fs::File::open(&path).map_err(read_error)?;
        let size_on_disk = file.metadata().map_err(read_error)?.len();
        if size_on_disk != descriptor.size {
            return Err(OciError::BlobSizeMismatch {
                digest: digest.clone(),
                path,
                expected: descriptor.size,
                actual: size_on_disk,
            });
        }
        let blob = MappedBlob::map(&file, size_on_disk).map_err(read_error)?;
        check_digest(digest, path, &blob)?;
        Ok(blob)
    }

    /// The image whose `ref.name` annotation is exactly `reference`, with its manifest and
    /// config read and verified. The first match wins when a name is listed twice.
    pub fn resolve(&self, reference: &str) -> Result<Image, OciError> {
        let descriptor = self
            .index
            .manifests
            .iter()
            .find(|descriptor| descriptor.reference() == Some(reference))
            .ok_or_else(|| OciError::UnknownReference {
                reference: reference.to_string(),
                layout: self.root.clone(),
                known: self.references(),
            })?;
        check_manifest_media_type(reference, &descriptor.digest, &descriptor.media_type)?;
        let manifest: ImageManifest = self.read_json_blob(descriptor, "image manifest")?;
        if let Some(media_type) = &manifest.media_type {
            check_manifest_media_type(reference, &descriptor.digest, media_type)?;
        }
        let config: ImageConfig = self.read_json_blob(&manifest.config, "image config")?;
        if manifest.layers.len() != config.rootfs.diff_ids.len() {
            return Err(OciError::LayerCountMismatch {
                reference: reference.to_string(),
                manifest_digest: descriptor.digest.clone(),
                config_digest: manifest.config.digest.clone(),
                layers: manifest.layers.len(),
                diff_ids: config.rootfs.diff_ids.len(),
            });
        }
        Ok(Image {
            reference: reference.to_string(),
            manifest_digest: descriptor.digest.clone(),
            config_digest: manifest.config.digest.clone(),
            manifest,
            config,
        })
    }

    fn read_json_blob<T: DeserializeOwned>(
        &self,
        descriptor: &Descriptor,
        document: &'static str,
    ) -> Result<T, OciError> {
        let data = self.read_descriptor(descriptor)?;
        serde_json::from_slice(&data).map_err(|source| OciError::ParseBlob {
            digest: descriptor.digest.clone(),
            path: self.blob_path(&descriptor.digest),
            document,
            source,
        })
    }
}

fn check_manifest_media_type(
    reference: &str,
    digest: &Digest,
    media_type: &str,
) -> Result<(), OciError> {
    match media_type {
        MEDIA_TYPE_IMAGE_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST => Ok(()),
        MEDIA_TYPE_IMAGE_INDEX | MEDIA_TYPE_DOCKER_MANIFEST_LIST => {
            Err(OciError::ImageIndexNotSupported {
                reference: reference.to_string(),
                digest: digest.clone(),
            })
        }
        other => Err(OciError::UnsupportedManifestMediaType {
            reference: reference.to_string(),
            digest: digest.clone(),
            media_type: other.to_string(),
        }),
    }
}

fn read_json_file<T: DeserializeOwned>(path: &Path) -> Result<T, OciError> {
    let data = fs::read(path).map_err(|source| OciError::ReadLayoutFile {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&data).map_err(|source| OciError::ParseLayoutFile {
        path: path.to_path_buf(),
        source,
    })
}

/// The content of an `index.json` that names each image by its `ref.name` annotation, so the
/// image builder can bake several images into one layout.
pub fn index_json(images: &[(String, Descriptor)]) -> Vec<u8> {
    let manifests = images
        .iter()
        .map(|(name, descriptor)| {
            let mut named = descriptor.clone();
            named
                .annotations
                .insert(REF_NAME_ANNOTATION.to_string(), name.clone());
            named
        })
        .collect();
    let index = ImageIndex {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_IMAGE_INDEX.to_string()),
        manifests,
    };
    // Serialising structs of strings, integers and string-keyed maps cannot fail.
    serde_json::to_vec(&index).unwrap_or_default()
}
