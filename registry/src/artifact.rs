//! An artifact pull (`berth-pull artifact`): the one blob of a given media type that an OCI
//! manifest lists as a layer, as `oras push` writes one (OCI 1.1's `artifactType` with the
//! empty config) or as any image manifest holds it. Used for update bundles, so that a fleet
//! updates from the registry it takes its images from.
//!
//! The blob is fetched into the store like a layer (resumable, its digest verified), but no
//! image names it: the caller reads it at [`ArtifactReport::path`], and the store's next
//! collection frees it. Nothing in the artifact is trusted beyond its digest; the update
//! bundle inside carries its own signature, which the caller checks.

use std::path::{Path, PathBuf};

use berth_oci::Digest;
use serde::Serialize;

use crate::blob::fetch_blob;
use crate::client::Client;
use crate::pull::{resolve_manifest, Event};
use crate::store::{LockMode, Store};
use crate::{Arch, Reference, RegistryError};

/// What `berth-pull artifact` reports on success.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactReport {
    pub reference: String,
    /// The manifest's digest (the reference pinned).
    pub manifest: Digest,
    /// The blob's digest and size.
    pub digest: Digest,
    pub size: u64,
    /// Where the blob is in the store.
    pub path: PathBuf,
    /// Bytes received by this run (0 when the blob was there already).
    pub downloaded: u64,
}

/// Fetches the layer of `media_type` that `reference` (an index is resolved for `arch`)
/// lists, refusing one over `max_bytes` before any download.
pub fn pull_artifact(
    client: &mut Client,
    store_dir: &Path,
    reference: &Reference,
    arch: Arch,
    media_type: &str,
    max_bytes: u64,
    events: &mut dyn FnMut(Event),
) -> Result<ArtifactReport, RegistryError> {
    let store = Store::create(store_dir)?;
    let _pulling = store.lock(LockMode::Shared)?;
    let resolved = resolve_manifest(client, reference, arch, events)?;
    let layers = &resolved.manifest.layers;
    let Some(layer) = layers.iter().find(|l| l.media_type == media_type) else {
        let found: Vec<&str> = layers.iter().map(|l| l.media_type.as_str()).collect();
        return Err(RegistryError::NoArtifactLayer {
            reference: reference.to_string(),
            media_type: media_type.to_string(),
            found: if found.is_empty() {
                "no layers".to_string()
            } else {
                found.join(", ")
            },
        });
    };
    if layer.size > max_bytes {
        return Err(RegistryError::ArtifactTooLarge {
            reference: reference.to_string(),
            digest: layer.digest.clone(),
            size: layer.size,
            limit: max_bytes,
        });
    }
    events(Event::Manifest {
        digest: resolved.digest.clone(),
        platform: format!("artifact {media_type}"),
        layers: 1,
        bytes: layer.size,
    });
    let downloaded = resolved.received + fetch_blob(client, &store, reference, layer, events)?;
    Ok(ArtifactReport {
        reference: reference.to_string(),
        manifest: resolved.digest,
        digest: layer.digest.clone(),
        size: layer.size,
        path: store.blob_path(&layer.digest),
        downloaded,
    })
}
