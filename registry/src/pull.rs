//! One pull, top to bottom: resolve the reference to a manifest for the guest's platform,
//! check that berth can run what it describes, store its config and layers, then the
//! manifest, then name it in `index.json`.
//!
//! The order matters: the image is named last, once everything it needs is stored, so a
//! reader of the store never finds a name whose blobs are missing.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use berth_oci::{
    Descriptor, Digest, ImageConfig, ImageIndex, ImageManifest, Platform,
    MEDIA_TYPE_DOCKER_LAYER_TAR_GZIP, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_IMAGE_INDEX, MEDIA_TYPE_IMAGE_MANIFEST, MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_LAYER_TAR_GZIP, MEDIA_TYPE_LAYER_TAR_ZSTD, REF_NAME_ANNOTATION,
};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::blob::fetch_blob;
use crate::client::{Client, FetchedManifest};
use crate::platform::{platform_name, select_manifest};
use crate::store::{store_error, LockMode, Store, PULLED_ANNOTATION};
use crate::{Arch, Reference, RegistryError};

/// The layer media types `berth_oci` unpacks.
const LAYER_MEDIA_TYPES: &[&str] = &[
    MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_LAYER_TAR_GZIP,
    MEDIA_TYPE_LAYER_TAR_ZSTD,
    MEDIA_TYPE_DOCKER_LAYER_TAR_GZIP,
];
const MEDIA_TYPE_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// What a pull reports as it goes, for progress lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The manifest to store is known.
    Manifest {
        digest: Digest,
        platform: String,
        layers: usize,
        bytes: u64,
    },
    /// The store has this blob already.
    BlobPresent { digest: Digest, size: u64 },
    /// A download starts, from `offset` when it resumes a partial file.
    BlobStart {
        digest: Digest,
        size: u64,
        offset: u64,
    },
    BlobProgress {
        digest: Digest,
        done: u64,
        size: u64,
    },
    /// The blob is verified and stored.
    BlobDone { digest: Digest, size: u64 },
    /// A partial download is thrown away and started again from zero.
    Restart { digest: Digest, reason: String },
    /// A request failed in a way worth trying again, after `delay`.
    Retry {
        what: String,
        attempt: u32,
        attempts: u32,
        delay: Duration,
        error: String,
    },
}

/// The outcome of a successful pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullReport {
    /// The normalised reference pulled.
    pub reference: String,
    /// The `ref.name` the image is stored under.
    pub name: String,
    /// The stored manifest's digest (for an index, the chosen platform's manifest).
    pub digest: Digest,
    pub layers: usize,
    /// The image's size in the store: manifest, config and layers.
    pub bytes: u64,
    /// What this pull received (blobs the store had are not downloaded again).
    pub downloaded: u64,
}

/// The manifest chosen for storing, with what is known about it.
pub(crate) struct Resolved {
    pub(crate) bytes: Vec<u8>,
    pub(crate) digest: Digest,
    pub(crate) media_type: String,
    pub(crate) manifest: ImageManifest,
    /// The index entry's platform, when the manifest was chosen from an index.
    pub(crate) platform: Option<Platform>,
    /// Manifest and index bytes received.
    pub(crate) received: u64,
}

/// Pulls `reference` for `arch` into the store at `store_dir`, and names it `name` there
/// (the `ref.name` annotation, exactly as given).
pub fn pull(
    client: &mut Client,
    store_dir: &Path,
    reference: &Reference,
    name: &str,
    arch: Arch,
    events: &mut dyn FnMut(Event),
) -> Result<PullReport, RegistryError> {
    let store = Store::create(store_dir)?;
    // Shared: other pulls may run beside this one, a collection waits for all of them.
    let _pulling = store.lock(LockMode::Shared)?;

    let resolved = resolve_manifest(client, reference, arch, events)?;
    check_media_types(reference, &resolved.manifest)?;
    let manifest = &resolved.manifest;
    let bytes = resolved.bytes.len() as u64
        + manifest.config.size
        + manifest.layers.iter().map(|layer| layer.size).sum::<u64>();
    events(Event::Manifest {
        digest: resolved.digest.clone(),
        platform: resolved
            .platform
            .as_ref()
            .map_or_else(|| platform_name(&arch.platform()), platform_name),
        layers: manifest.layers.len(),
        bytes,
    });

    // The config first: it is small, and it tells whether the image is for this platform
    // before any layer is downloaded.
    let mut downloaded = resolved.received;
    downloaded += fetch_blob(client, &store, reference, &manifest.config, events)?;
    let config = read_config(&store, reference, &manifest.config)?;
    check_config(reference, &manifest.config.digest, &config, manifest, arch)?;
    for layer in &manifest.layers {
        downloaded += fetch_blob(client, &store, reference, layer, events)?;
    }
    store.write_blob(&resolved.digest, &resolved.bytes)?;

    let annotations = BTreeMap::from([
        (REF_NAME_ANNOTATION.to_string(), name.to_string()),
        (
            PULLED_ANNOTATION.to_string(),
            reference.pinned(&resolved.digest),
        ),
    ]);
    let platform = Platform {
        architecture: config.architecture.clone(),
        os: config.os.clone(),
        variant: resolved.platform.and_then(|platform| platform.variant),
    };
    store.record_image(Descriptor {
        media_type: resolved.media_type,
        digest: resolved.digest.clone(),
        size: resolved.bytes.len() as u64,
        annotations,
        platform: Some(platform),
    })?;
    Ok(PullReport {
        reference: reference.to_string(),
        name: name.to_string(),
        digest: resolved.digest,
        layers: manifest.layers.len(),
        bytes,
        downloaded,
    })
}

/// The fields that tell a manifest from an index when no media type says it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<IgnoredAny>,
    #[serde(default)]
    config: Option<IgnoredAny>,
}

/// The document's media type: its own `mediaType` field (covered by its digest), else the
/// answer's `Content-Type`, else its shape.
fn media_type_of(
    reference: &Reference,
    fetched: &FetchedManifest,
    digest: &Digest,
) -> Result<String, RegistryError> {
    let probe: Probe =
        serde_json::from_slice(&fetched.bytes).map_err(|source| RegistryError::ParseDocument {
            reference: reference.to_string(),
            document: "manifest",
            digest: digest.clone(),
            source,
        })?;
    let media_type = probe
        .media_type
        .or_else(|| fetched.content_type.clone())
        .filter(|media_type| media_type != "application/json");
    Ok(match media_type {
        Some(media_type) => media_type,
        None if probe.manifests.is_some() => MEDIA_TYPE_IMAGE_INDEX.to_string(),
        None if probe.config.is_some() => MEDIA_TYPE_IMAGE_MANIFEST.to_string(),
        None => String::from("(none)"),
    })
}

fn is_manifest(media_type: &str) -> bool {
    matches!(
        media_type,
        MEDIA_TYPE_IMAGE_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST
    )
}

fn is_index(media_type: &str) -> bool {
    matches!(
        media_type,
        MEDIA_TYPE_IMAGE_INDEX | MEDIA_TYPE_DOCKER_MANIFEST_LIST
    )
}

/// Fetches what the reference names and, for an index, the entry for `arch`; verifies every
/// document fetched by digest.
pub(crate) fn resolve_manifest(
    client: &mut Client,
    reference: &Reference,
    arch: Arch,
    events: &mut dyn FnMut(Event),
) -> Result<Resolved, RegistryError> {
    let top = client.fetch_manifest(reference, &reference.manifest_target(), events)?;
    let top_digest = Digest::sha256_of(&top.bytes);
    if let Some(expected) = reference.digest() {
        if *expected != top_digest {
            return Err(RegistryError::DigestMismatch {
                expected: expected.clone(),
                actual: top_digest,
            });
        }
    }
    let media_type = media_type_of(reference, &top, &top_digest)?;
    let mut received = top.bytes.len() as u64;
    if is_manifest(&media_type) {
        let manifest = parse_manifest(reference, &top.bytes, &top_digest)?;
        return Ok(Resolved {
            bytes: top.bytes,
            digest: top_digest,
            media_type,
            manifest,
            platform: None,
            received,
        });
    }
    if !is_index(&media_type) {
        return Err(RegistryError::UnsupportedManifest {
            reference: reference.to_string(),
            media_type,
        });
    }

    let index: ImageIndex =
        serde_json::from_slice(&top.bytes).map_err(|source| RegistryError::ParseDocument {
            reference: reference.to_string(),
            document: "image index",
            digest: top_digest.clone(),
            source,
        })?;
    let entry =
        select_manifest(&index, arch).map_err(|available| RegistryError::NoMatchingPlatform {
            reference: reference.to_string(),
            wanted: platform_name(&arch.platform()),
            available,
        })?;
    let fetched = client.fetch_manifest(reference, &entry.digest.to_string(), events)?;
    received += fetched.bytes.len() as u64;
    let digest = Digest::sha256_of(&fetched.bytes);
    if digest != entry.digest {
        return Err(RegistryError::DigestMismatch {
            expected: entry.digest.clone(),
            actual: digest,
        });
    }
    if fetched.bytes.len() as u64 != entry.size {
        return Err(RegistryError::SizeMismatch {
            digest,
            expected: entry.size,
            actual: fetched.bytes.len() as u64,
        });
    }
    let media_type = media_type_of(reference, &fetched, &digest)?;
    if is_index(&media_type) {
        return Err(RegistryError::NestedIndex {
            reference: reference.to_string(),
            digest,
        });
    }
    if !is_manifest(&media_type) {
        return Err(RegistryError::UnsupportedManifest {
            reference: reference.to_string(),
            media_type,
        });
    }
    let manifest = parse_manifest(reference, &fetched.bytes, &digest)?;
    Ok(Resolved {
        bytes: fetched.bytes,
        digest,
        media_type,
        manifest,
        platform: entry.platform.clone(),
        received,
    })
}

fn parse_manifest(
    reference: &Reference,
    bytes: &[u8],
    digest: &Digest,
) -> Result<ImageManifest, RegistryError> {
    serde_json::from_slice(bytes).map_err(|source| RegistryError::ParseDocument {
        reference: reference.to_string(),
        document: "manifest",
        digest: digest.clone(),
        source,
    })
}

/// Refuses, before any download, an image whose config or layers berth could not use.
fn check_media_types(reference: &Reference, manifest: &ImageManifest) -> Result<(), RegistryError> {
    let config = &manifest.config;
    if !matches!(
        config.media_type.as_str(),
        MEDIA_TYPE_IMAGE_CONFIG | MEDIA_TYPE_DOCKER_CONFIG
    ) {
        return Err(RegistryError::UnsupportedConfig {
            reference: reference.to_string(),
            digest: config.digest.clone(),
            media_type: config.media_type.clone(),
        });
    }
    if let Some(layer) = manifest
        .layers
        .iter()
        .find(|layer| !LAYER_MEDIA_TYPES.contains(&layer.media_type.as_str()))
    {
        return Err(RegistryError::UnsupportedLayer {
            reference: reference.to_string(),
            digest: layer.digest.clone(),
            media_type: layer.media_type.clone(),
        });
    }
    Ok(())
}

fn read_config(
    store: &Store,
    reference: &Reference,
    descriptor: &Descriptor,
) -> Result<ImageConfig, RegistryError> {
    let path = store.blob_path(&descriptor.digest);
    let data = fs::read(&path).map_err(store_error("read", &path))?;
    serde_json::from_slice(&data).map_err(|source| RegistryError::ParseDocument {
        reference: reference.to_string(),
        document: "image config",
        digest: descriptor.digest.clone(),
        source,
    })
}

/// The config must be for this platform and list one diff_id per layer, as
/// `berth_oci::Layout::resolve` will insist.
fn check_config(
    reference: &Reference,
    digest: &Digest,
    config: &ImageConfig,
    manifest: &ImageManifest,
    arch: Arch,
) -> Result<(), RegistryError> {
    let platform = Platform {
        architecture: config.architecture.clone(),
        os: config.os.clone(),
        variant: None,
    };
    if config.os != arch.platform().os || config.architecture != arch.oci_architecture() {
        return Err(RegistryError::WrongPlatform {
            reference: reference.to_string(),
            digest: digest.clone(),
            found: platform_name(&platform),
            wanted: platform_name(&arch.platform()),
        });
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(RegistryError::LayerCountMismatch {
            reference: reference.to_string(),
            layers: manifest.layers.len(),
            diff_ids: config.rootfs.diff_ids.len(),
        });
    }
    Ok(())
}
