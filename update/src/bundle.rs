//! Writing a bundle on the build host and reading one on a berth host.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{PublicKey, SecretKey, UpdateError};

/// The bundle's file name in `berth build --out DIR`.
pub const BUNDLE_FILE: &str = "update.berth";
/// The signed header's entry.
pub const HEADER_ENTRY: &str = "bundle.json";
/// The signature's entry.
pub const SIGNATURE_ENTRY: &str = "bundle.sig";
/// The bundle format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The most a header may hold: it is read whole before its signature is checked.
pub const MAX_HEADER_BYTES: u64 = 64 << 10;
/// The most one part may hold: a kernel is about 10 MiB, an initrd with images baked in a few
/// hundred; the ESP that receives them is smaller than this.
pub const MAX_PART_BYTES: u64 = 1 << 30;
/// What the signature covers before the header's bytes, so that it can never be taken for a
/// signature over anything else.
pub const SIGNING_CONTEXT: &[u8] = b"berth update bundle v1\n";

/// The most characters in a version: it is shown in events and `berthctl version`.
const MAX_VERSION_CHARS: usize = 64;

/// What a bundle says of itself: signed, so trusted once its signature is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleHeader {
    /// [`FORMAT_VERSION`].
    pub format: u32,
    /// The image's version (`[update] version` of its manifest).
    pub version: String,
    /// `x86_64` or `aarch64`.
    pub arch: String,
    /// The kernel's release, for `berthctl version`.
    pub kernel_release: String,
    /// The parts that follow the signature, in order.
    pub parts: Vec<BundlePart>,
}

/// One file of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundlePart {
    /// `kernel` or `initrd`.
    pub name: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// A part to pack: its name in the bundle and the file that holds it.
#[derive(Debug, Clone, Copy)]
pub struct PartSource<'a> {
    pub name: &'a str,
    pub path: &'a Path,
}

/// A bundle whose signature, arch and parts were all checked.
#[derive(Debug, Clone)]
pub struct Verified {
    pub header: BundleHeader,
    /// The accepted key that signed it.
    pub key: PublicKey,
}

impl BundleHeader {
    /// Checks what the signature cannot: that the header is one this code can act on.
    fn check(&self, arch: &str) -> Result<(), UpdateError> {
        if self.format != FORMAT_VERSION {
            return Err(UpdateError::UnsupportedFormat {
                found: self.format,
                supported: FORMAT_VERSION,
            });
        }
        if self.arch != arch {
            return Err(UpdateError::OtherArch {
                found: self.arch.clone(),
                expected: arch.to_string(),
            });
        }
        check_version(&self.version).map_err(UpdateError::BadHeader)?;
        let mut seen = Vec::new();
        for part in &self.parts {
            let plain_name = !part.name.is_empty()
                && part.name.len() <= 32
                && part
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !plain_name || part.name == HEADER_ENTRY || part.name == SIGNATURE_ENTRY {
                return Err(UpdateError::BadHeader(format!(
                    "part name `{}` is not a plain lowercase name",
                    part.name
                )));
            }
            if seen.contains(&part.name.as_str()) {
                return Err(UpdateError::BadHeader(format!(
                    "part `{}` is listed twice",
                    part.name
                )));
            }
            seen.push(part.name.as_str());
            if part.size > MAX_PART_BYTES {
                return Err(UpdateError::EntryTooLarge {
                    entry: part.name.clone(),
                    size: part.size,
                    limit: MAX_PART_BYTES,
                });
            }
            let hex_digest =
                part.sha256.len() == 64 && part.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex_digest {
                return Err(UpdateError::BadHeader(format!(
                    "part `{}` has no SHA-256 in hex",
                    part.name
                )));
            }
        }
        Ok(())
    }
}

/// Checks a version string: 1 to 64 characters of `A-Z a-z 0-9 . _ + -`.
pub fn check_version(version: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-');
    if version.is_empty() || version.chars().count() > MAX_VERSION_CHARS {
        return Err(format!(
            "version `{version}` must have 1 to {MAX_VERSION_CHARS} characters"
        ));
    }
    if !version.chars().all(allowed) {
        return Err(format!(
            "version `{version}` may hold only letters, digits, `.`, `_`, `+` and `-`"
        ));
    }
    Ok(())
}

/// Writes a bundle of `parts` to `out` (through `out.partial`, renamed once complete),
/// signed with `key`. Returns its header.
pub fn write_bundle(
    out: &Path,
    version: &str,
    arch: &str,
    kernel_release: &str,
    parts: &[PartSource<'_>],
    key: &SecretKey,
) -> Result<BundleHeader, UpdateError> {
    let io_at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UpdateError::Io { path, source }
    };
    let mut listed = Vec::new();
    for part in parts {
        let mut file = File::open(part.path).map_err(io_at(part.path))?;
        let mut hasher = Sha256::new();
        let size = io::copy(&mut file, &mut hasher).map_err(io_at(part.path))?;
        listed.push(BundlePart {
            name: part.name.to_string(),
            size,
            sha256: hex(&hasher.finalize()),
        });
    }
    let header = BundleHeader {
        format: FORMAT_VERSION,
        version: version.to_string(),
        arch: arch.to_string(),
        kernel_release: kernel_release.to_string(),
        parts: listed,
    };
    header.check(arch)?;
    let header_bytes =
        serde_json::to_vec_pretty(&header).map_err(|e| UpdateError::BadHeader(e.to_string()))?;
    let signature = key.sign(&signed_message(&header_bytes));

    let partial = out.with_extension("berth.partial");
    let file = File::create(&partial).map_err(io_at(&partial))?;
    let mut archive = tar::Builder::new(io::BufWriter::new(file));
    append_bytes(&mut archive, HEADER_ENTRY, &header_bytes).map_err(io_at(&partial))?;
    append_bytes(&mut archive, SIGNATURE_ENTRY, &signature.to_bytes()).map_err(io_at(&partial))?;
    for (part, listed) in parts.iter().zip(&header.parts) {
        let mut tar_header = entry_header(listed.size);
        let file = File::open(part.path).map_err(io_at(part.path))?;
        // The part is read again: a file that changed since it was hashed is caught here.
        let mut hashed = HashingReader::new(file.take(listed.size));
        archive
            .append_data(&mut tar_header, &listed.name, &mut hashed)
            .map_err(io_at(part.path))?;
        if hashed.finish() != listed.sha256 {
            return Err(UpdateError::Io {
                path: part.path.to_path_buf(),
                source: io::Error::other("the file changed while the bundle was written"),
            });
        }
    }
    let writer = archive.into_inner().map_err(io_at(&partial))?;
    let file = writer.into_inner().map_err(|e| UpdateError::Io {
        path: partial.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io_at(&partial))?;
    std::fs::rename(&partial, out).map_err(io_at(out))?;
    Ok(header)
}

/// Reads a bundle from `reader`: its header, checked against `accepted` keys and this host's
/// `arch` before any part is read, then each part, streamed to the writer `open_part` gives
/// for it and checked against its size and digest. On any error the caller discards what the
/// writers received: a bundle is taken whole or not at all.
pub fn read_bundle<R: Read, W: Write>(
    reader: R,
    accepted: &[PublicKey],
    arch: &str,
    mut open_part: impl FnMut(&BundlePart) -> io::Result<W>,
) -> Result<Verified, UpdateError> {
    let mut archive = tar::Archive::new(BufReader::new(reader));
    let mut entries = archive.entries().map_err(UpdateError::Read)?;
    let mut next = |what: &str| -> Result<tar::Entry<'_, BufReader<R>>, UpdateError> {
        match entries.next() {
            Some(entry) => entry.map_err(UpdateError::Read),
            None => Err(UpdateError::Truncated {
                what: what.to_string(),
            }),
        }
    };

    let header_bytes = {
        let entry = next(HEADER_ENTRY)?;
        expect_name(&entry, 0, HEADER_ENTRY)?;
        read_small(entry, HEADER_ENTRY, MAX_HEADER_BYTES)?
    };
    let signature = {
        let entry = match next(SIGNATURE_ENTRY) {
            Err(UpdateError::Truncated { .. }) => {
                return Err(UpdateError::Unsigned(SIGNATURE_ENTRY))
            }
            other => other?,
        };
        if entry_name(&entry) != SIGNATURE_ENTRY {
            return Err(UpdateError::Unsigned(SIGNATURE_ENTRY));
        }
        let size = entry.header().size().map_err(UpdateError::Read)?;
        let bytes: [u8; 64] = read_small(entry, SIGNATURE_ENTRY, 64)?
            .try_into()
            .map_err(|_| UpdateError::SignatureLength(size))?;
        Signature::from_bytes(&bytes)
    };
    let message = signed_message(&header_bytes);
    let key = accepted
        .iter()
        .find(|key| key.verifies(&message, &signature))
        .cloned()
        .ok_or(UpdateError::NotSignedByAcceptedKey {
            accepted: accepted.len(),
        })?;
    let header: BundleHeader =
        serde_json::from_slice(&header_bytes).map_err(|e| UpdateError::BadHeader(e.to_string()))?;
    header.check(arch)?;

    for (index, part) in header.parts.iter().enumerate() {
        let entry = next(&format!("part `{}`", part.name))?;
        expect_name(&entry, index + 2, &part.name)?;
        let size = entry.header().size().map_err(UpdateError::Read)?;
        if size != part.size {
            return Err(UpdateError::PartSize {
                part: part.name.clone(),
                found: size,
                expected: part.size,
            });
        }
        let write_error = |source| UpdateError::WritePart {
            part: part.name.clone(),
            source,
        };
        let mut writer = open_part(part).map_err(write_error)?;
        let mut hashed = HashingReader::new(entry);
        let copied = io::copy(&mut hashed, &mut writer).map_err(|source| {
            // A short read is the bundle's fault; anything else is the writer's.
            if source.kind() == io::ErrorKind::UnexpectedEof {
                UpdateError::Truncated {
                    what: format!("the end of part `{}`", part.name),
                }
            } else {
                UpdateError::WritePart {
                    part: part.name.clone(),
                    source,
                }
            }
        })?;
        writer.flush().map_err(write_error)?;
        if copied != part.size {
            return Err(UpdateError::Truncated {
                what: format!("the end of part `{}`", part.name),
            });
        }
        let found = hashed.finish();
        if found != part.sha256.to_ascii_lowercase() {
            return Err(UpdateError::PartDigest {
                part: part.name.clone(),
                found,
                expected: part.sha256.clone(),
            });
        }
    }
    if let Some(entry) = entries.next() {
        let entry = entry.map_err(UpdateError::Read)?;
        return Err(UpdateError::TrailingEntry(entry_name(&entry)));
    }
    Ok(Verified { header, key })
}

fn signed_message(header_bytes: &[u8]) -> Vec<u8> {
    let mut message = SIGNING_CONTEXT.to_vec();
    message.extend_from_slice(header_bytes);
    message
}

fn entry_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

fn append_bytes<W: Write>(
    archive: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
) -> io::Result<()> {
    let mut header = entry_header(bytes.len() as u64);
    archive.append_data(&mut header, name, bytes)
}

fn entry_name<R: Read>(entry: &tar::Entry<'_, R>) -> String {
    String::from_utf8_lossy(&entry.path_bytes()).into_owned()
}

fn expect_name<R: Read>(
    entry: &tar::Entry<'_, R>,
    index: usize,
    expected: &str,
) -> Result<(), UpdateError> {
    let found = entry_name(entry);
    if found == expected && entry.header().entry_type() == tar::EntryType::Regular {
        Ok(())
    } else {
        Err(UpdateError::UnexpectedEntry {
            index,
            found,
            expected: expected.to_string(),
        })
    }
}

/// Reads an entry of at most `limit` bytes whole.
fn read_small<R: Read>(
    entry: tar::Entry<'_, R>,
    name: &str,
    limit: u64,
) -> Result<Vec<u8>, UpdateError> {
    let size = entry.header().size().map_err(UpdateError::Read)?;
    if size > limit {
        return Err(UpdateError::EntryTooLarge {
            entry: name.to_string(),
            size,
            limit,
        });
    }
    let mut bytes = Vec::new();
    entry
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(UpdateError::Read)?;
    if bytes.len() as u64 != size {
        return Err(UpdateError::Truncated {
            what: format!("the end of {name}"),
        });
    }
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> HashingReader<R> {
        HashingReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    fn finish(self) -> String {
        hex(&self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let count = self.inner.read(buf)?;
        self.hasher.update(buf.get(..count).unwrap_or_default());
        Ok(count)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::generate_key_pair;

    struct Fixture {
        dir: PathBuf,
        key: SecretKey,
        bundle: Vec<u8>,
        kernel: Vec<u8>,
        initrd: Vec<u8>,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture(name: &str) -> Fixture {
        let dir =
            std::env::temp_dir().join(format!("berth-update-bundle-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let kernel: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let initrd: Vec<u8> = (0..130_000u32).map(|i| (i % 241) as u8).collect();
        std::fs::write(dir.join("kernel"), &kernel).unwrap();
        std::fs::write(dir.join("initrd"), &initrd).unwrap();
        let key = generate_key_pair().unwrap();
        let out = dir.join(BUNDLE_FILE);
        let kernel_path = dir.join("kernel");
        let initrd_path = dir.join("initrd");
        write_bundle(
            &out,
            "2.0",
            "x86_64",
            "6.1.0-57-cloud-amd64",
            &[
                PartSource {
                    name: "kernel",
                    path: &kernel_path,
                },
                PartSource {
                    name: "initrd",
                    path: &initrd_path,
                },
            ],
            &key,
        )
        .unwrap();
        let bundle = std::fs::read(&out).unwrap();
        Fixture {
            dir,
            key,
            bundle,
            kernel,
            initrd,
        }
    }

    /// The parts a read wrote, by name.
    type Written = Vec<(String, Vec<u8>)>;

    /// Reads `bundle`, returning the parts as written.
    fn read(
        bundle: &[u8],
        keys: &[PublicKey],
        arch: &str,
    ) -> (Result<Verified, UpdateError>, Written) {
        let written = std::cell::RefCell::new(Vec::new());
        let result = read_bundle(bundle, keys, arch, |part| {
            written.borrow_mut().push((part.name.clone(), Vec::new()));
            Ok(PartSink(&written))
        });
        (result, written.into_inner())
    }

    struct PartSink<'a>(&'a std::cell::RefCell<Written>);

    impl Write for PartSink<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(last) = self.0.borrow_mut().last_mut() {
                last.1.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn error_of(result: Result<Verified, UpdateError>) -> String {
        match result {
            Ok(verified) => format!("accepted: {verified:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn a_signed_bundle_reads_back_whole() {
        let f = fixture("whole");
        let (result, written) = read(&f.bundle, &[f.key.public_key()], "x86_64");
        let verified = result.unwrap();
        assert_eq!(verified.header.version, "2.0");
        assert_eq!(verified.key, f.key.public_key());
        assert_eq!(written.len(), 2);
        assert_eq!(written[0], ("kernel".to_string(), f.kernel.clone()));
        assert_eq!(written[1], ("initrd".to_string(), f.initrd.clone()));
    }

    #[test]
    fn another_key_is_refused_before_any_part_is_read() {
        let f = fixture("other-key");
        let other = generate_key_pair().unwrap().public_key();
        let (result, written) = read(&f.bundle, &[other], "x86_64");
        assert!(error_of(result).contains("not signed by a key this host accepts"));
        assert!(written.is_empty());
        let (result, _) = read(&f.bundle, &[], "x86_64");
        assert!(error_of(result).contains("0 accepted"));
    }

    #[test]
    fn the_other_arch_is_refused() {
        let f = fixture("arch");
        let (result, written) = read(&f.bundle, &[f.key.public_key()], "aarch64");
        assert!(error_of(result).contains("for x86_64; this host is aarch64"));
        assert!(written.is_empty());
    }

    #[test]
    fn an_unsigned_bundle_is_refused() {
        let f = fixture("unsigned");
        // The header entry alone: its 512-byte tar header and its data, padded to 512.
        let header_len = 512
            + f.bundle[124..135]
                .iter()
                .fold(0usize, |n, d| n * 8 + usize::from(d - b'0'))
                .div_ceil(512)
                * 512;
        let mut unsigned = f.bundle[..header_len].to_vec();
        unsigned.extend_from_slice(&[0u8; 1024]);
        let (result, _) = read(&unsigned, &[f.key.public_key()], "x86_64");
        assert!(
            error_of(result).contains("unsigned"),
            "{}",
            error_of(read(&unsigned, &[f.key.public_key()], "x86_64").0)
        );
    }

    #[test]
    fn a_tampered_part_is_refused() {
        let f = fixture("tampered");
        let mut tampered = f.bundle.clone();
        // The last byte of the initrd, the bundle's last data before the tar padding.
        let at = tampered.len() - 1024 - (512 - f.initrd.len() % 512) % 512 - 1;
        tampered[at] ^= 0xff;
        let (result, _) = read(&tampered, &[f.key.public_key()], "x86_64");
        let error = error_of(result);
        assert!(
            error.contains("part `initrd` does not match its digest"),
            "{error}"
        );
    }

    #[test]
    fn a_tampered_header_fails_its_signature() {
        let f = fixture("header");
        let mut tampered = f.bundle.clone();
        let text = String::from_utf8_lossy(&tampered[512..1024]).into_owned();
        let at = 512 + text.find("2.0").unwrap();
        tampered[at] = b'9';
        let (result, written) = read(&tampered, &[f.key.public_key()], "x86_64");
        assert!(error_of(result).contains("not signed by a key this host accepts"));
        assert!(written.is_empty());
    }

    #[test]
    fn every_truncation_is_refused() {
        let f = fixture("truncated");
        let keys = [f.key.public_key()];
        // Every cut short of the parts' end; past it only the tar trailer is lost.
        let data_end = f.bundle.len() - 1024;
        for cut in (0..data_end).step_by(997).chain([data_end - 1]) {
            let (result, _) = read(&f.bundle[..cut], &keys, "x86_64");
            assert!(result.is_err(), "accepted when cut at {cut}");
        }
    }

    #[test]
    fn a_trailing_entry_is_refused() {
        let f = fixture("trailing");
        let mut longer = f.bundle[..f.bundle.len() - 1024].to_vec();
        let mut extra = tar::Builder::new(Vec::new());
        append_bytes(&mut extra, "extra", b"hello").unwrap();
        longer.extend_from_slice(&extra.into_inner().unwrap());
        let (result, _) = read(&longer, &[f.key.public_key()], "x86_64");
        assert!(error_of(result).contains("entry `extra` after its last part"));
    }

    #[test]
    fn versions_are_plain() {
        assert!(check_version("2.0.1+build-7").is_ok());
        assert!(check_version("").is_err());
        assert!(check_version("a b").is_err());
        assert!(check_version("x\n").is_err());
        assert!(check_version(&"9".repeat(65)).is_err());
    }
}
