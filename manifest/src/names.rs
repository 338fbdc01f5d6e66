//! Validated names: a value of these types is known to be well formed.

use std::fmt;

use serde::{de, Deserialize, Deserializer};

/// The longest hostname the kernel accepts (`__NEW_UTS_LEN`).
const HOSTNAME_MAX_LEN: usize = 64;
/// The longest DNS label (RFC 1123).
const LABEL_MAX_LEN: usize = 63;
/// Module names are short identifiers; the kernel's limit is 56 bytes (`MODULE_NAME_LEN` - 8).
const MODULE_NAME_MAX_LEN: usize = 56;

/// A hostname as RFC 1123 allows: dot-separated labels of letters, digits and inner hyphens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostname(String);

impl Hostname {
    pub fn new(name: &str) -> Result<Hostname, String> {
        if name.is_empty() || name.len() > HOSTNAME_MAX_LEN {
            return Err(format!(
                "`{name}` is not a valid hostname: it must have 1 to {HOSTNAME_MAX_LEN} characters"
            ));
        }
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= LABEL_MAX_LEN
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if !name.split('.').all(label_ok) {
            return Err(format!(
                "`{name}` is not a valid hostname: use letters, digits and inner hyphens, in labels separated by dots"
            ));
        }
        Ok(Hostname(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A kernel module name as written in a manifest (`virtio_net`, `virtio-net`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModuleName(String);

impl ModuleName {
    pub fn new(name: &str) -> Result<ModuleName, String> {
        let valid = !name.is_empty()
            && name.len() <= MODULE_NAME_MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(ModuleName(name.to_string()))
        } else {
            Err(format!(
                "`{name}` is not a kernel module name: use letters, digits, `_` and `-`"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name the kernel and `modules.dep` use: hyphens and underscores are the same.
    pub fn canonical(&self) -> String {
        self.0.replace('-', "_")
    }
}

/// The longest container name: it becomes the container's hostname.
const CONTAINER_NAME_MAX_LEN: usize = 63;

/// A container's name, as Docker allows it: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`. It names the
/// container in events, logs and cgroups, and is its hostname.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerName(String);

impl ContainerName {
    pub fn new(name: &str) -> Result<ContainerName, String> {
        let mut bytes = name.bytes();
        let valid = name.len() <= CONTAINER_NAME_MAX_LEN
            && bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
        if valid {
            Ok(ContainerName(name.to_string()))
        } else {
            Err(format!(
                "`{name}` is not a container name: start with a letter or digit, then letters, digits, `_`, `.` or `-` (at most {CONTAINER_NAME_MAX_LEN})"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! deserialize_validated_string {
    ($ty:ty) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                <$ty>::new(&text).map_err(de::Error::custom)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

deserialize_validated_string!(Hostname);
deserialize_validated_string!(ModuleName);
deserialize_validated_string!(ContainerName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for good in ["berth", "node-1", "a.b.c", "x"] {
            assert!(Hostname::new(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "a_b", "a..b", "a b", &"x".repeat(65)] {
            assert!(Hostname::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn module_names_fold_hyphens() {
        assert_eq!(
            ModuleName::new("virtio-net").map(|m| m.canonical()),
            Ok("virtio_net".to_string())
        );
        assert!(ModuleName::new("../evil").is_err());
        assert!(ModuleName::new("").is_err());
    }
}
