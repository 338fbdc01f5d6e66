//! The guest's architecture, and picking its manifest out of a multi-platform image index.

use std::fmt;

use berth_oci::{Descriptor, ImageIndex, Platform};

const OS_LINUX: &str = "linux";
/// The only arm64 variant berth runs on; an arm64 entry without a variant means the same.
const ARM64_VARIANT: &str = "v8";

/// The architectures berth builds guests for, named as berth names them (`x86_64`,
/// `aarch64`) and as OCI platforms do (`amd64`, `arm64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// `x86_64` or `aarch64` (the OCI names `amd64` and `arm64` are accepted too).
    pub fn parse(text: &str) -> Option<Arch> {
        match text {
            "x86_64" | "amd64" => Some(Arch::X86_64),
            "aarch64" | "arm64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// The OCI platform architecture: `amd64` or `arm64`.
    pub fn oci_architecture(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The platform an index entry must have to run here.
    pub fn platform(self) -> Platform {
        Platform {
            architecture: self.oci_architecture().to_string(),
            os: OS_LINUX.to_string(),
            variant: match self {
                Arch::X86_64 => None,
                Arch::Aarch64 => Some(ARM64_VARIANT.to_string()),
            },
        }
    }

    /// Whether an image of this platform runs on this architecture: os `linux`, the same
    /// architecture, and for arm64 the variant `v8` or none. amd64 takes no variant: `v2`
    /// and `v3` entries need CPU features an old host may lack, and every multi-platform
    /// image that has them also has a plain amd64 entry.
    pub fn runs(self, platform: &Platform) -> bool {
        platform.os == OS_LINUX
            && platform.architecture == self.oci_architecture()
            && match self {
                Arch::X86_64 => platform.variant.is_none(),
                Arch::Aarch64 => matches!(platform.variant.as_deref(), None | Some(ARM64_VARIANT)),
            }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        })
    }
}

/// `os/architecture[/variant]`, as Docker prints platforms.
pub fn platform_name(platform: &Platform) -> String {
    match &platform.variant {
        Some(variant) => format!("{}/{}/{variant}", platform.os, platform.architecture),
        None => format!("{}/{}", platform.os, platform.architecture),
    }
}

/// The index entry to pull for `arch`, or the platforms the index offers (entries without a
/// platform, such as build attestations, are not images and are left out).
pub fn select_manifest(index: &ImageIndex, arch: Arch) -> Result<&Descriptor, Vec<String>> {
    index
        .manifests
        .iter()
        .find(|entry| entry.platform.as_ref().is_some_and(|p| arch.runs(p)))
        .ok_or_else(|| {
            index
                .manifests
                .iter()
                .filter_map(|entry| entry.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(platform_name)
                .collect()
        })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    /// An index as Docker Hub serves one: several platforms plus attestation manifests.
    fn index_json() -> String {
        let entry = |n, arch: &str, variant: Option<&str>, os: &str| {
            let variant = variant.map_or(String::new(), |v| format!(r#","variant":"{v}""#));
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{n},
                    "platform":{{"architecture":"{arch}","os":"{os}"{variant}}}}}"#,
                digest(n)
            )
        };
        let entries = [
            entry(1, "arm", Some("v7"), "linux"),
            entry(2, "amd64", Some("v3"), "linux"),
            entry(3, "amd64", None, "linux"),
            entry(4, "arm64", Some("v8"), "linux"),
            entry(5, "unknown", None, "unknown"),
            entry(6, "amd64", None, "windows"),
        ];
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
            entries.join(",")
        )
    }

    #[test]
    fn picks_the_entry_for_each_arch() {
        let index: ImageIndex = serde_json::from_str(&index_json()).unwrap();
        let amd64 = select_manifest(&index, Arch::X86_64).unwrap();
        assert_eq!(amd64.digest.to_string(), digest(3));
        let arm64 = select_manifest(&index, Arch::Aarch64).unwrap();
        assert_eq!(arm64.digest.to_string(), digest(4));
    }

    #[test]
    fn arm64_without_variant_is_accepted() {
        let json = index_json().replace(
            r#""architecture":"arm64","os":"linux","variant":"v8""#,
            r#""architecture":"arm64","os":"linux""#,
        );
        let index: ImageIndex = serde_json::from_str(&json).unwrap();
        assert_eq!(
            select_manifest(&index, Arch::Aarch64)
                .unwrap()
                .digest
                .to_string(),
            digest(4)
        );
    }

    #[test]
    fn no_match_lists_what_the_index_has() {
        let json = index_json().replace(r#""architecture":"arm64""#, r#""architecture":"riscv64""#);
        let index: ImageIndex = serde_json::from_str(&json).unwrap();
        let available = select_manifest(&index, Arch::Aarch64).unwrap_err();
        assert_eq!(
            available,
            [
                "linux/arm/v7",
                "linux/amd64/v3",
                "linux/amd64",
                "linux/riscv64/v8",
                "windows/amd64"
            ]
        );
    }

    #[test]
    fn arch_names() {
        assert_eq!(Arch::parse("x86_64"), Some(Arch::X86_64));
        assert_eq!(Arch::parse("arm64"), Some(Arch::Aarch64));
        assert_eq!(Arch::parse("riscv64"), None);
        assert_eq!(Arch::Aarch64.oci_architecture(), "arm64");
        assert_eq!(platform_name(&Arch::Aarch64.platform()), "linux/arm64/v8");
        assert_eq!(Arch::X86_64.to_string(), "x86_64");
    }
}
