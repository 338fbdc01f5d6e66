//! What a container may do and use: capabilities, seccomp, read-only root, cgroup limits and
//! rlimits, with Docker Compose's keys and units.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

/// Linux capabilities by number (`linux/capability.h`), without the `CAP_` prefix.
pub const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// A capability name as Compose writes it (`NET_ADMIN`, `CAP_NET_ADMIN`, `ALL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    All,
    /// Index into [`CAPABILITIES`], the kernel's number.
    Number(u8),
}

impl Capability {
    pub fn new(text: &str) -> Result<Capability, String> {
        let upper = text.to_ascii_uppercase();
        let name = upper.strip_prefix("CAP_").unwrap_or(&upper);
        if name == "ALL" {
            return Ok(Capability::All);
        }
        CAPABILITIES
            .iter()
            .position(|c| *c == name)
            .and_then(|n| u8::try_from(n).ok())
            .map(Capability::Number)
            .ok_or_else(|| format!("`{text}` is not a capability such as NET_ADMIN or ALL"))
    }
}

impl<'de> Deserialize<'de> for Capability {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Capability::new(&String::deserialize(deserializer)?).map_err(de::Error::custom)
    }
}

/// `security_opt` entries berth understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityOpt {
    /// `seccomp=unconfined`: no seccomp filter.
    SeccompUnconfined,
    /// `no-new-privileges[=true|false]` (on by default in berth).
    NoNewPrivileges(bool),
}

impl<'de> Deserialize<'de> for SecurityOpt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "seccomp=unconfined" | "seccomp:unconfined" => Ok(SecurityOpt::SeccompUnconfined),
            "no-new-privileges" | "no-new-privileges=true" | "no-new-privileges:true" => {
                Ok(SecurityOpt::NoNewPrivileges(true))
            }
            "no-new-privileges=false" | "no-new-privileges:false" => Ok(SecurityOpt::NoNewPrivileges(false)),
            _ => Err(de::Error::custom(format!(
                "`{text}` is not a security option berth knows: use \"seccomp=unconfined\" or \"no-new-privileges=false\""
            ))),
        }
    }
}

/// A byte size as Compose writes it: an integer, or `32m`, `1g`, `512k`, `1.5gb` (powers of
/// 1024, case-insensitive); `-1` means unlimited where Compose allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub i64);

pub fn parse_bytes(text: &str) -> Result<i64, String> {
    let invalid = || {
        format!("`{text}` is not a size: write bytes or a number with b, k, m or g (e.g. `32m`)")
    };
    let lower = text.trim().to_ascii_lowercase();
    if lower == "-1" {
        return Ok(-1);
    }
    let digits_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let scale: f64 = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(invalid()),
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 0.0 || bytes > i64::MAX as f64 {
        return Err(invalid());
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "checked finite and in range above"
    )]
    Ok(bytes.round() as i64)
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"32m\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                if v < -1 {
                    return Err(E::custom(format!("{v} is not a size")));
                }
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_bytes(v).map(ByteSize).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// `cpus = 0.5` or `"1.5"`: a CPU quota in whole and fractional CPUs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cpus(pub f64);

impl Eq for Cpus {}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CpusVisitor;
        impl Visitor<'_> for CpusVisitor {
            type Value = Cpus;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of CPUs such as 0.5")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cpus, E> {
                if v > 0.0 && v.is_finite() {
                    Ok(Cpus(v))
                } else {
                    Err(E::custom(format!("{v} is not a positive number of CPUs")))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cpus, E> {
                #[expect(clippy::cast_precision_loss, reason = "CPU counts are small")]
                self.visit_f64(v as f64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Cpus, E> {
                let value: f64 = v
                    .parse()
                    .map_err(|_| E::custom(format!("`{v}` is not a number of CPUs")))?;
                self.visit_f64(value)
            }
        }
        deserializer.deserialize_any(CpusVisitor)
    }
}

/// An integer that must lie in `MIN..=MAX` (Docker's ranges for weights and counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranged<const MIN: i64, const MAX: i64>(pub i64);

impl<'de, const MIN: i64, const MAX: i64> Deserialize<'de> for Ranged<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(deserializer)?;
        if (MIN..=MAX).contains(&value) {
            Ok(Ranged(value))
        } else {
            Err(de::Error::custom(format!(
                "{value} is out of range: use {MIN} to {MAX}"
            )))
        }
    }
}

/// A host id range as `/etc/subuid` writes it: `start:count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub start: u32,
    pub count: u32,
}

impl<'de> Deserialize<'de> for IdRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let invalid = || {
            de::Error::custom(format!(
                "`{text}` is not an id range: write start:count, e.g. \"100000:65536\""
            ))
        };
        let (start, count) = text.split_once(':').ok_or_else(invalid)?;
        let start: u32 = start.parse().map_err(|_| invalid())?;
        let count: u32 = count.parse().map_err(|_| invalid())?;
        if start == 0 || count == 0 || start.checked_add(count).is_none() {
            return Err(de::Error::custom(format!(
                "`{text}`: the range must start above 0 (root) and hold at least one id"
            )));
        }
        Ok(IdRange { start, count })
    }
}

/// Docker's userns-remap default: 65536 ids from 100000, as `/etc/subuid` usually holds.
pub const DEFAULT_ID_RANGE: IdRange = IdRange {
    start: 100_000,
    count: 65_536,
};

/// `[userns]`: the host ids that containers with `userns = true` run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Userns {
    #[serde(default = "default_id_range")]
    pub uid_range: IdRange,
    #[serde(default = "default_id_range")]
    pub gid_range: IdRange,
}

fn default_id_range() -> IdRange {
    DEFAULT_ID_RANGE
}

impl Default for Userns {
    fn default() -> Self {
        Userns {
            uid_range: DEFAULT_ID_RANGE,
            gid_range: DEFAULT_ID_RANGE,
        }
    }
}

/// One `ulimits` entry: `nofile = 1024` or `nofile = { soft = 1024, hard = 4096 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ulimit {
    pub soft: u64,
    pub hard: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UlimitPair {
    soft: u64,
    hard: u64,
}

impl<'de> Deserialize<'de> for Ulimit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UlimitVisitor;
        impl<'de> Visitor<'de> for UlimitVisitor {
            type Value = Ulimit;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or { soft = N, hard = N }")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ulimit, E> {
                let v = u64::try_from(v).map_err(|_| E::custom(format!("{v} is not a limit")))?;
                Ok(Ulimit { soft: v, hard: v })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Ulimit, A::Error> {
                let pair = UlimitPair::deserialize(de::value::MapAccessDeserializer::new(map))?;
                if pair.soft > pair.hard {
                    return Err(de::Error::custom("the soft limit is above the hard limit"));
                }
                Ok(Ulimit {
                    soft: pair.soft,
                    hard: pair.hard,
                })
            }
        }
        deserializer.deserialize_any(UlimitVisitor)
    }
}

/// The rlimits Compose names, by name (without `RLIMIT_`, lowercase).
pub const ULIMIT_NAMES: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
    "as",
];

/// `ulimits`: rlimit name to limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ulimits(pub BTreeMap<String, Ulimit>);

impl<'de> Deserialize<'de> for Ulimits {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, Ulimit>::deserialize(deserializer)?;
        if let Some(name) = map.keys().find(|k| !ULIMIT_NAMES.contains(&k.as_str())) {
            return Err(de::Error::custom(format!(
                "`{name}` is not an rlimit: use one of {}",
                ULIMIT_NAMES.join(", ")
            )));
        }
        Ok(Ulimits(map))
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_capabilities() {
        assert_eq!(parse_bytes("32M").unwrap(), 32 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512k").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert_eq!(parse_bytes("-1").unwrap(), -1);
        assert!(parse_bytes("32q").is_err());
        assert_eq!(
            Capability::new("cap_net_admin").unwrap(),
            Capability::Number(12)
        );
        assert_eq!(Capability::new("ALL").unwrap(), Capability::All);
        assert!(Capability::new("NET_GOD").is_err());
        assert_eq!(CAPABILITIES.len(), 41);
    }
}
