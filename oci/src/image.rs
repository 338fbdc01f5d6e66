//! The OCI image spec's JSON documents: descriptors, indexes, manifests and image configs.
//!
//! Field names follow the spec exactly (camelCase for the distribution documents, PascalCase
//! inside the container config). Unknown fields are ignored, so newer writers still parse, and
//! JSON `null` reads as "absent" wherever a field is optional, as Docker writes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Digest;

/// The annotation that names an image inside a layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

pub const MEDIA_TYPE_IMAGE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_IMAGE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker's schema 2 manifest has the same shape as the OCI manifest.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

/// Points at a blob: what it is, its digest and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// The `org.opencontainers.image.ref.name` annotation, if any.
    pub fn reference(&self) -> Option<&str> {
        self.annotations
            .get(REF_NAME_ANNOTATION)
            .map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// `index.json`, or a nested image index blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default, deserialize_with = "null_as_default")]
    pub layers: Vec<Descriptor>,
}

/// The image config blob: platform, how to run the image, and the layers' diff_ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
}

/// What the image asks to run, as the image config's `config` object records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    /// The digests of the layers' uncompressed tar streams, bottom layer first.
    #[serde(default, deserialize_with = "null_as_default")]
    pub diff_ids: Vec<Digest>,
}

/// Reads JSON `null` as the type's default: Go writers emit `null` for empty maps and slices.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn docker_style_config_with_nulls_parses() {
        let json = format!(
            r#"{{"architecture":"amd64","os":"linux","created":"2024-01-01T00:00:00Z",
                "config":{{"Entrypoint":null,"Cmd":["/bin/sh"],"Env":["PATH=/bin"],
                           "WorkingDir":"","User":null,"Labels":null}},
                "rootfs":{{"type":"layers","diff_ids":["sha256:{HEX}"]}}}}"#
        );
        let config: ImageConfig = serde_json::from_str(&json).unwrap();
        let run = config.config.unwrap();
        assert_eq!(run.entrypoint, None);
        assert_eq!(run.cmd, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(run.working_dir.as_deref(), Some(""));
        assert_eq!(run.user, None);
        assert_eq!(config.rootfs.kind, "layers");
        assert_eq!(config.rootfs.diff_ids.len(), 1);
    }

    #[test]
    fn descriptors_round_trip_with_spec_field_names() {
        let json = format!(
            r#"{{"mediaType":"{MEDIA_TYPE_IMAGE_MANIFEST}","digest":"sha256:{HEX}","size":7,
                "annotations":{{"{REF_NAME_ANNOTATION}":"web"}},
                "platform":{{"architecture":"arm64","os":"linux","variant":"v8"}},
                "urls":["ignored"]}}"#
        );
        let descriptor: Descriptor = serde_json::from_str(&json).unwrap();
        assert_eq!(descriptor.reference(), Some("web"));
        assert_eq!(
            descriptor.platform.as_ref().unwrap().variant.as_deref(),
            Some("v8")
        );
        let written = serde_json::to_string(&descriptor).unwrap();
        assert!(written.contains(r#""mediaType":"#), "{written}");
        assert_eq!(
            serde_json::from_str::<Descriptor>(&written).unwrap(),
            descriptor
        );

        let bare = Descriptor {
            annotations: BTreeMap::new(),
            platform: None,
            ..descriptor
        };
        let written = serde_json::to_string(&bare).unwrap();
        assert!(
            !written.contains("annotations") && !written.contains("platform"),
            "{written}"
        );
    }
}
