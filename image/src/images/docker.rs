//! A classic `docker save` archive (`manifest.json` listing each image's config file, its
//! `RepoTags` and its layer tars) converted into an OCI image layout.
//!
//! Docker's layers are uncompressed tars, a media type init does not unpack; each becomes a
//! gzip blob (`application/vnd.oci.image.layer.v1.tar+gzip`) instead. The image config already
//! names every uncompressed layer by its digest (`rootfs.diff_ids`): each layer tar is hashed
//! as it is compressed and the archive refused when one differs, so a damaged or tampered layer
//! never reaches an image.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use berth_oci::{
    index_json, Descriptor, Digest, ImageConfig, ImageManifest, OciError,
    MEDIA_TYPE_IMAGE_MANIFEST, MEDIA_TYPE_LAYER_TAR_GZIP, OCI_LAYOUT_FILE, OCI_LAYOUT_FILE_CONTENT,
};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::archive::{Members, DOCKER_MANIFEST};
use super::{ImageError, Origin};

/// The media type of an OCI image config; Docker's config JSON has the same fields.
const MEDIA_TYPE_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Read and compress layers in pieces of this size, so a large layer is never held whole.
const CHUNK: usize = 1 << 16;
/// The registry Docker's short names (`busybox:1.35`) stand for, as skopeo writes them out.
const DOCKER_HUB_PREFIXES: &[&str] = &["docker.io/library/", "docker.io/"];
/// Where a layer is compressed before it is named by its digest.
const STAGING: &str = "incoming.partial";

/// One entry of `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SavedImage {
    config: String,
    /// `null` for an image saved by its ID.
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Option<Vec<String>>,
}

impl SavedImage {
    fn tags(&self) -> &[String] {
        self.repo_tags.as_deref().unwrap_or_default()
    }
}

/// A reference as Docker shows it: `busybox:1.35` for `docker.io/library/busybox:1.35`.
fn familiar(reference: &str) -> &str {
    DOCKER_HUB_PREFIXES
        .iter()
        .find_map(|prefix| reference.strip_prefix(prefix))
        .unwrap_or(reference)
}

/// The tag of a reference, if it has one (`localhost:5000/web` has none).
fn tag_of(reference: &str) -> Option<&str> {
    reference
        .rsplit_once(':')
        .map(|(_, tag)| tag)
        .filter(|tag| !tag.contains('/'))
}

/// The image `name` stands for: one tagged `name`, else one whose tag is `name`'s, else the
/// archive's only image.
fn pick<'a>(images: &'a [SavedImage], name: &str) -> Option<&'a SavedImage> {
    let tagged = |wanted: &dyn Fn(&str) -> bool| {
        images
            .iter()
            .find(|image| image.tags().iter().any(|t| wanted(t)))
    };
    tagged(&|t| familiar(t) == familiar(name))
        .or_else(|| tag_of(name).and_then(|tag| tagged(&|t| tag_of(t) == Some(tag))))
        .or(match images {
            [only] => Some(only),
            _ => None,
        })
}

/// What the archive holds, for an error message.
fn known(images: &[SavedImage]) -> Vec<String> {
    images
        .iter()
        .flat_map(|image| match image.tags() {
            [] => vec![format!("an untagged image (config {})", image.config)],
            tags => tags.iter().map(|t| familiar(t).to_string()).collect(),
        })
        .collect()
}

/// Writes the layout of the archive's images at `layout`: the one `name` picks, named `name`,
/// or every image under each of its tags.
pub(super) fn convert(
    members: &Members,
    name: Option<&str>,
    layout: &Path,
) -> Result<(), ImageError> {
    let archive = members.archive();
    let images: Vec<SavedImage> = serde_json::from_slice(
        &members.read(DOCKER_MANIFEST, "the archive")?,
    )
    .map_err(|source| ImageError::ParseMember {
        archive: archive.to_path_buf(),
        member: DOCKER_MANIFEST.to_string(),
        source,
    })?;
    let chosen: Vec<(String, &SavedImage)> = match name {
        Some(name) => {
            let image = pick(&images, name).ok_or_else(|| ImageError::NoMatch {
                origin: Origin::archive(archive),
                name: name.to_string(),
                known: known(&images),
            })?;
            vec![(name.to_string(), image)]
        }
        None => {
            let mut chosen = Vec::new();
            for image in &images {
                if image.tags().is_empty() {
                    return Err(ImageError::Untagged {
                        archive: archive.to_path_buf(),
                        config: image.config.clone(),
                    });
                }
                chosen.extend(
                    image
                        .tags()
                        .iter()
                        .map(|t| (familiar(t).to_string(), image)),
                );
            }
            chosen
        }
    };

    let mut writer = LayoutWriter::new(members, layout)?;
    let mut index = Vec::new();
    // Two tags of one image share its manifest.
    let mut manifests: BTreeMap<&str, Descriptor> = BTreeMap::new();
    for (name, image) in chosen {
        let descriptor = match manifests.get(image.config.as_str()) {
            Some(descriptor) => descriptor.clone(),
            None => {
                let descriptor = writer.image(image)?;
                manifests.insert(&image.config, descriptor.clone());
                descriptor
            }
        };
        index.push((name, descriptor));
    }
    writer.write(
        &layout.join(OCI_LAYOUT_FILE),
        OCI_LAYOUT_FILE_CONTENT.as_bytes(),
    )?;
    writer.write(&layout.join(berth_oci::INDEX_FILE), &index_json(&index))
}

/// Writes blobs into a new layout, each once.
struct LayoutWriter<'a> {
    members: &'a Members,
    blobs: std::path::PathBuf,
    /// Layer member name to its compressed blob, for layers two images share.
    layers: BTreeMap<String, Descriptor>,
}

impl<'a> LayoutWriter<'a> {
    fn new(members: &'a Members, layout: &Path) -> Result<LayoutWriter<'a>, ImageError> {
        let blobs = layout.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(|e| members.work_error(&blobs, e))?;
        Ok(LayoutWriter {
            members,
            blobs,
            layers: BTreeMap::new(),
        })
    }

    fn write(&self, path: &Path, data: &[u8]) -> Result<(), ImageError> {
        fs::write(path, data).map_err(|e| self.members.work_error(path, e))
    }

    fn blob(&self, media_type: &str, data: &[u8]) -> Result<Descriptor, ImageError> {
        let digest = Digest::sha256_of(data);
        self.write(&self.blobs.join(digest.hex()), data)?;
        Ok(descriptor(media_type, digest, data.len() as u64))
    }

    /// The image's config, layers and manifest as blobs; returns the manifest's descriptor.
    fn image(&mut self, image: &SavedImage) -> Result<Descriptor, ImageError> {
        let archive = self.members.archive();
        let config_bytes = self.members.read(&image.config, DOCKER_MANIFEST)?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|source| ImageError::ParseMember {
                archive: archive.to_path_buf(),
                member: image.config.clone(),
                source,
            })?;
        let layer_names = image.layers.as_deref().unwrap_or_default();
        if layer_names.len() != config.rootfs.diff_ids.len() {
            return Err(ImageError::LayerCountMismatch {
                archive: archive.to_path_buf(),
                config: image.config.clone(),
                layers: layer_names.len(),
                diff_ids: config.rootfs.diff_ids.len(),
            });
        }
        let mut layers = Vec::with_capacity(layer_names.len());
        for (layer, diff_id) in layer_names.iter().zip(&config.rootfs.diff_ids) {
            layers.push(self.layer(layer, diff_id)?);
        }
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_IMAGE_MANIFEST.to_string()),
            config: self.blob(MEDIA_TYPE_IMAGE_CONFIG, &config_bytes)?,
            layers,
        };
        // Serialising structs of strings, integers and string-keyed maps cannot fail.
        let manifest_bytes = serde_json::to_vec(&manifest).unwrap_or_default();
        self.blob(MEDIA_TYPE_IMAGE_MANIFEST, &manifest_bytes)
    }

    /// The layer tar `name` as a gzip blob, once its digest is checked against `diff_id`.
    fn layer(&mut self, name: &str, diff_id: &Digest) -> Result<Descriptor, ImageError> {
        if let Some(done) = self.layers.get(name) {
            return Ok(done.clone());
        }
        let source = self.members.file(name, DOCKER_MANIFEST)?;
        let staging = self.blobs.join(STAGING);
        let (read, written, size) = compress(&source, &staging).map_err(|err| match err {
            Step::Read(e) => self.members.work_error(&source, e),
            Step::Write(e) => self.members.work_error(&staging, e),
        })?;
        let digest_error = |source: OciError| ImageError::ArchiveLayout {
            archive: self.members.archive().to_path_buf(),
            source,
        };
        let actual = digest_of(read).map_err(digest_error)?;
        if actual != *diff_id {
            return Err(ImageError::DiffIdMismatch {
                archive: self.members.archive().to_path_buf(),
                layer: name.to_string(),
                expected: diff_id.clone(),
                actual,
            });
        }
        let blob = digest_of(written).map_err(digest_error)?;
        let path = self.blobs.join(blob.hex());
        fs::rename(&staging, &path).map_err(|e| self.members.work_error(&path, e))?;
        let descriptor = descriptor(MEDIA_TYPE_LAYER_TAR_GZIP, blob, size);
        self.layers.insert(name.to_string(), descriptor.clone());
        Ok(descriptor)
    }
}

fn descriptor(media_type: &str, digest: Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest,
        size,
        annotations: BTreeMap::new(),
        platform: None,
    }
}

/// Which side of [`compress`] failed.
enum Step {
    Read(io::Error),
    Write(io::Error),
}

/// A digest from a finished hasher.
fn digest_of(hasher: Sha256) -> Result<Digest, OciError> {
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    Digest::parse(&format!("sha256:{hex}"))
}

/// Gzips `source` into `target`; returns the hashes of what was read and of what was written,
/// and the written length.
fn compress(source: &Path, target: &Path) -> Result<(Sha256, Sha256, u64), Step> {
    let mut input = File::open(source).map_err(Step::Read)?;
    let output = HashingWriter {
        inner: BufWriter::new(File::create(target).map_err(Step::Write)?),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let mut encoder = GzEncoder::new(output, Compression::default());
    let mut read_hasher = Sha256::new();
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let count = match input.read(&mut chunk) {
            Ok(0) => break,
            Ok(count) => count,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(Step::Read(err)),
        };
        let data = chunk.get(..count).unwrap_or_default();
        read_hasher.update(data);
        encoder.write_all(data).map_err(Step::Write)?;
    }
    let mut output = encoder.finish().map_err(Step::Write)?;
    output.inner.flush().map_err(Step::Write)?;
    Ok((read_hasher, output.hasher, output.bytes))
}

/// Hashes and counts every byte written through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let count = self.inner.write(buf)?;
        let written = buf.get(..count).unwrap_or_default();
        self.hasher.update(written);
        self.bytes += written.len() as u64;
        Ok(count)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_names_compare_in_their_short_form() {
        assert_eq!(familiar("docker.io/library/busybox:1"), "busybox:1");
        assert_eq!(familiar("docker.io/me/web:2"), "me/web:2");
        assert_eq!(familiar("quay.io/me/web:2"), "quay.io/me/web:2");
        assert_eq!(tag_of("localhost:5000/web"), None);
        assert_eq!(tag_of("localhost:5000/web:3"), Some("3"));
    }

    #[test]
    fn a_name_picks_by_tag_then_by_being_alone() {
        let image = |config: &str, tags: &[&str]| SavedImage {
            config: config.to_string(),
            repo_tags: Some(tags.iter().map(|t| t.to_string()).collect()),
            layers: None,
        };
        let images = [
            image("a.json", &["docker.io/library/web:1"]),
            image("b.json", &["db:2", "db:latest"]),
        ];
        let config = |name| pick(&images, name).map(|i| i.config.as_str());
        assert_eq!(config("web:1"), Some("a.json"));
        assert_eq!(config("other:2"), Some("b.json"));
        assert_eq!(config("other:3"), None);
        assert_eq!(
            pick(&images[..1], "other:3").map(|i| i.config.as_str()),
            Some("a.json")
        );
        assert_eq!(known(&images), ["web:1", "db:2", "db:latest"]);
    }
}
