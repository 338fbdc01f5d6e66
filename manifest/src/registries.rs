//! `pull_policy` and `[registries."HOST[:PORT]"]`: where images a host does not have come
//! from. The pulling itself is berth-pull's (the `registry/` crate); this is only the model.

use serde::Deserialize;

/// Compose's `pull_policy` values berth supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Pull when the host does not have the image (Compose's `missing`, `if_not_present`).
    #[serde(alias = "if_not_present")]
    Missing,
    /// Pull once every boot, even if the host has the image.
    Always,
    /// Only images the host has (baked in, or pulled on an earlier boot).
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Missing => "missing",
            PullPolicy::Always => "always",
            PullPolicy::Never => "never",
        }
    }
}

/// Whether `image` names its registry (`registry.example.com/app:1`, `localhost:5000/x`,
/// `10.0.2.2:5000/x`): Docker's rule, a first path component with a `.` or a `:`, or
/// `localhost`.
pub fn names_registry(image: &str) -> bool {
    match image.split_once('/') {
        Some((first, _)) => first.contains('.') || first.contains(':') || first == "localhost",
        None => false,
    }
}

/// The registry part of a reference that names one.
pub fn registry_of(image: &str) -> Option<&str> {
    names_registry(image)
        .then(|| image.split_once('/').map(|(host, _)| host))
        .flatten()
}

/// One `[registries."HOST[:PORT]"]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    /// Plain HTTP instead of HTTPS (for a registry on a private network or a test rig).
    #[serde(default)]
    pub insecure: bool,
    /// Basic credentials, also sent to the registry's token service.
    pub username: Option<toml::Spanned<String>>,
    pub password: Option<String>,
    /// PEM certificates trusted for this registry, on top of the bundled roots.
    pub ca: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_names_its_registry_as_docker_tells() {
        for named in [
            "registry.example.com/team/app:1.4",
            "localhost:5000/x:y",
            "10.0.2.2:5000/busybox:1.35",
            "localhost/x",
            "ghcr.io/org/app@sha256:0",
        ] {
            assert!(names_registry(named), "{named}");
        }
        for short in ["nginx", "busybox:1.35", "library/nginx:1.27", "team/app"] {
            assert!(!names_registry(short), "{short}");
        }
        assert_eq!(
            registry_of("10.0.2.2:5000/busybox:1.35"),
            Some("10.0.2.2:5000")
        );
        assert_eq!(registry_of("busybox:1.35"), None);
    }
}
