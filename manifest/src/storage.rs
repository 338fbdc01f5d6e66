//! `[[mount]]`: block devices to mount at boot, before the containers that use them.

use std::fmt;

use berth_blockdev::DeviceSpec;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::container::AbsolutePath;

/// One `[[mount]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountEntry {
    /// `/dev/NAME`, `LABEL=`, `UUID=`, `PARTLABEL=` or `PARTUUID=`.
    pub device: Device,
    /// Where it is mounted.
    pub target: AbsolutePath,
    /// The filesystem type, as mount(8) names it (`ext4`, `vfat`, `xfs`).
    pub fstype: String,
    /// mount(8) options: a string `"noatime,ro"` or a list.
    #[serde(default)]
    pub options: MountOptions,
}

/// A device spec that parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub spec: DeviceSpec,
    /// As the operator wrote it, for messages and events.
    pub text: String,
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let spec = DeviceSpec::parse(&text).map_err(de::Error::custom)?;
        Ok(Device { spec, text })
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Mount options, one per element.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions(pub Vec<String>);

impl<'de> Deserialize<'de> for MountOptions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OptionsVisitor;
        impl<'de> Visitor<'de> for OptionsVisitor {
            type Value = MountOptions;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a comma-separated string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<MountOptions, E> {
                Ok(MountOptions(
                    text.split(',')
                        .filter(|o| !o.is_empty())
                        .map(str::to_string)
                        .collect(),
                ))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MountOptions, A::Error> {
                let mut options = Vec::new();
                while let Some(option) = seq.next_element::<String>()? {
                    options.push(option);
                }
                Ok(MountOptions(options))
            }
        }
        deserializer.deserialize_any(OptionsVisitor)
    }
}

/// A sysctl name (`net.ipv4.ip_forward`) and its `/proc/sys` path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SysctlKey(pub String);

impl SysctlKey {
    pub fn new(key: &str) -> Result<SysctlKey, String> {
        let valid = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
            && !key
                .split(['.', '/'])
                .any(|part| part.is_empty() || part == "..");
        if valid {
            Ok(SysctlKey(key.to_string()))
        } else {
            Err(format!(
                "`{key}` is not a sysctl name such as net.ipv4.ip_forward"
            ))
        }
    }

    /// `net.ipv4.ip_forward` is `/proc/sys/net/ipv4/ip_forward`.
    pub fn proc_path(&self) -> String {
        format!("/proc/sys/{}", self.0.replace('.', "/"))
    }
}

impl<'de> Deserialize<'de> for SysctlKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        SysctlKey::new(&String::deserialize(deserializer)?).map_err(de::Error::custom)
    }
}

/// A sysctl value: TOML strings, integers and booleans are all written as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlValue(pub String);

impl<'de> Deserialize<'de> for SysctlValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl Visitor<'_> for ValueVisitor {
            type Value = SysctlValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, an integer or a boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SysctlValue, E> {
                Ok(SysctlValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SysctlValue, E> {
                Ok(SysctlValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SysctlValue, E> {
                Ok(SysctlValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<SysctlValue, E> {
                Ok(SysctlValue(u8::from(v).to_string()))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}
