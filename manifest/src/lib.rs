//! The berth manifest: one TOML file that says what a host is and runs.
//!
//! Parsing and validation live here so that `berth build` and init refuse exactly the same
//! inputs with exactly the same messages. Every check that can be phrased as "this value is
//! wrong" runs inside deserialization, so the error carries the value's line and column; a
//! check that relates several fields keeps their spans with [`toml::Spanned`].

mod error;
mod names;

use std::path::Path;

use serde::Deserialize;

pub use error::ManifestError;
pub use names::{Hostname, ModuleName};

/// Where init reads the manifest inside the image.
pub const MANIFEST_PATH: &str = "/etc/berth/manifest.toml";

/// The whole manifest.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The host's name; `berth` when unset.
    pub hostname: Option<Hostname>,
    /// What init does before anything else.
    #[serde(default)]
    pub boot: Boot,
}

/// The `[boot]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// Kernel modules loaded at boot, with their dependencies, in this order.
    #[serde(default)]
    pub modules: Vec<toml::Spanned<ModuleName>>,
}

impl Manifest {
    /// The hostname used when the manifest sets none.
    pub const DEFAULT_HOSTNAME: &'static str = "berth";

    /// Parses and validates a manifest. `origin` names the file in error messages.
    pub fn parse(text: &str, origin: &Path) -> Result<Manifest, ManifestError> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|err| ManifestError::from_toml(origin, text, "", &err))?;
        serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let field = err.path().to_string();
            ManifestError::from_toml(origin, text, &field, err.inner())
        })
    }

    /// Reads, parses and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Manifest::parse(&text, path)
    }

    pub fn hostname(&self) -> &str {
        self.hostname
            .as_ref()
            .map_or(Manifest::DEFAULT_HOSTNAME, Hostname::as_str)
    }

    /// The boot modules' names, in manifest order.
    pub fn boot_modules(&self) -> impl Iterator<Item = &ModuleName> {
        self.boot.modules.iter().map(toml::Spanned::get_ref)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("m.toml"))
    }

    #[test]
    fn empty_manifest_takes_defaults() {
        let manifest = parse("").unwrap();
        assert_eq!(manifest.hostname(), "berth");
        assert_eq!(manifest.boot_modules().count(), 0);
    }

    #[test]
    fn reads_hostname_and_modules_in_order() {
        let manifest =
            parse("hostname = \"node-1\"\n[boot]\nmodules = [\"virtio_net\", \"e1000\"]\n")
                .unwrap();
        assert_eq!(manifest.hostname(), "node-1");
        let modules: Vec<&str> = manifest.boot_modules().map(ModuleName::as_str).collect();
        assert_eq!(modules, ["virtio_net", "e1000"]);
    }

    #[test]
    fn unknown_key_names_file_line_field_and_suggests() {
        let err = parse("hostname = \"a\"\n\n[boot]\nmodule = []\n").unwrap_err();
        assert_eq!(err.to_string(), "m.toml:4:1: boot.module: unknown field `module`, expected `modules` (did you mean `modules`?)");
    }

    #[test]
    fn wrong_type_inside_a_list_names_the_element() {
        let err = parse("[boot]\nmodules = [\"a\", 7]\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.toml:2:17: boot.modules[1]: invalid type: integer `7`, expected a string"
        );
    }

    #[test]
    fn invalid_hostname_is_refused_at_its_value() {
        let err = parse("\nhostname = \"bad_name\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("m.toml:2:12: hostname: "), "{text}");
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let err = parse("hostname = \"a\"\n[boot\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("m.toml:2:6: "), "{text}");
    }
}
