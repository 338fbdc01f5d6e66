//! The `[update]` table: which signed bundles a host accepts, and how long a newly booted
//! slot has to prove itself before it is committed.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::ComposeDuration;

/// How long a slot booted from an update has to become healthy when `commit_timeout` is
/// unset: five minutes, long enough for a registry pull on a slow link.
pub const DEFAULT_COMMIT_TIMEOUT: Duration = Duration::from_secs(300);

/// The `[update]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// The image's version: carried in its update bundle, shown by `berthctl version`.
    pub version: Option<ImageVersion>,
    /// The public keys (`ed25519:...`, from `berth key generate`) whose bundles the host
    /// accepts; none means the host accepts no update.
    #[serde(default)]
    pub keys: Vec<UpdateKey>,
    /// How long a slot booted from an update has to become ready and healthy.
    pub commit_timeout: Option<ComposeDuration>,
}

impl Update {
    /// `commit_timeout`, or its default.
    pub fn commit_timeout(&self) -> Duration {
        self.commit_timeout
            .map(|t| t.0)
            .unwrap_or(DEFAULT_COMMIT_TIMEOUT)
    }
}

/// An image version: 1 to 64 characters of letters, digits, `.`, `_`, `+` and `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageVersion(String);

impl ImageVersion {
    pub fn new(text: &str) -> Result<ImageVersion, String> {
        berth_update::check_version(text).map(|()| ImageVersion(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ImageVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ImageVersion::new(&text).map_err(de::Error::custom)
    }
}

impl fmt::Display for ImageVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A public key bundles may be signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateKey(pub berth_update::PublicKey);

impl<'de> Deserialize<'de> for UpdateKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        berth_update::PublicKey::parse(&text)
            .map(UpdateKey)
            .map_err(de::Error::custom)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::path::Path;

    use crate::Manifest;

    #[test]
    fn an_update_table_reads_its_keys_version_and_timeout() {
        let key = berth_update::generate_key_pair().unwrap().public_key();
        let text =
            format!("[update]\nversion = \"2.1\"\nkeys = [\"{key}\"]\ncommit_timeout = \"90s\"\n");
        let manifest = Manifest::parse(&text, Path::new("m.toml")).unwrap();
        assert_eq!(
            manifest.update.version.as_ref().map(|v| v.as_str()),
            Some("2.1")
        );
        assert_eq!(manifest.update.keys.first().map(|k| &k.0), Some(&key));
        assert_eq!(manifest.update.commit_timeout().as_secs(), 90);
    }

    #[test]
    fn no_update_table_accepts_no_update() {
        let manifest = Manifest::parse("", Path::new("m.toml")).unwrap();
        assert!(manifest.update.keys.is_empty());
        assert_eq!(manifest.update.commit_timeout().as_secs(), 300);
    }

    #[test]
    fn a_bad_key_is_refused_with_its_line() {
        let error = Manifest::parse(
            "hostname = \"a\"\n\n[update]\nkeys = [\"ed25519:AAAA\"]\n",
            Path::new("m.toml"),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(error.contains("m.toml:4:8: update.keys[0]"), "{error}");
        assert!(error.contains("3 bytes, not 32"), "{error}");
    }

    #[test]
    fn a_bad_version_is_refused() {
        let error = Manifest::parse("[update]\nversion = \"1 beta\"\n", Path::new("m.toml"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("may hold only"), "{error}");
    }
}
