//! Content digests (`sha256:<hex>`), and a reader that hashes what passes through it.
//!
//! Only sha256 is accepted: it is what every registry and `umoci`/`skopeo` write, and a digest
//! we cannot verify is worth nothing.

use std::fmt;
use std::io::{self, Read};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::OciError;

const SHA256: &str = "sha256";
const SHA256_HEX_LEN: usize = 64;

/// A verified-format content digest; sha256 only for now.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    /// 64 lowercase hex digits.
    hex: String,
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex digits>`.
    pub fn parse(text: &str) -> Result<Digest, OciError> {
        let invalid = |reason| OciError::InvalidDigest {
            text: text.to_string(),
            reason,
        };
        let (algorithm, hex) = text
            .split_once(':')
            .ok_or_else(|| invalid("expected `sha256:<hex>`"))?;
        if algorithm != SHA256 {
            return Err(invalid("unsupported algorithm (only sha256 is supported)"));
        }
        if hex.len() != SHA256_HEX_LEN {
            return Err(invalid("a sha256 digest has 64 hex digits"));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid("the hex part must be lowercase hex digits"));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    pub fn sha256_of(data: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(data))
    }

    fn from_hasher(hasher: Sha256) -> Digest {
        let hex = hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Digest { hex }
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    pub fn algorithm(&self) -> &str {
        SHA256
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHA256}:{}", self.hex)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Hashes every byte read through it, and counts them.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> HashingReader<R> {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    pub(crate) fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The digest and length of everything read so far.
    pub(crate) fn finish(self) -> (Digest, u64) {
        (Digest::from_hasher(self.hasher), self.bytes)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let count = self.inner.read(buf)?;
        let read = buf.get(..count).unwrap_or_default();
        self.hasher.update(read);
        self.bytes += read.len() as u64;
        Ok(count)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn sha256_of_empty_input_is_the_well_known_digest() {
        let digest = Digest::sha256_of(b"");
        assert_eq!(digest.to_string(), format!("sha256:{EMPTY_SHA256}"));
        assert_eq!(digest.algorithm(), "sha256");
        assert_eq!(digest.hex(), EMPTY_SHA256);
        assert_eq!(Digest::parse(&digest.to_string()).unwrap(), digest);
    }

    #[test]
    fn malformed_digests_are_refused_with_the_reason() {
        let cases = [
            ("e3b0c442".to_string(), "expected `sha256:<hex>`"),
            ("sha512:abcd".to_string(), "unsupported algorithm"),
            ("sha256:abcd".to_string(), "64 hex digits"),
            (
                format!("sha256:{}", EMPTY_SHA256.to_uppercase()),
                "lowercase",
            ),
            (
                format!("sha256:{}g", EMPTY_SHA256.get(1..).unwrap()),
                "lowercase",
            ),
        ];
        for (text, reason) in &cases {
            let message = Digest::parse(text).unwrap_err().to_string();
            assert!(message.contains(text.as_str()), "{message}");
            assert!(message.contains(reason), "{message}");
        }
    }

    #[test]
    fn digests_serialise_as_strings() {
        let digest = Digest::sha256_of(b"x");
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{digest}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
        assert!(serde_json::from_str::<Digest>("\"md5:00\"").is_err());
    }

    #[test]
    fn hashing_reader_matches_sha256_of() {
        let data = vec![7u8; 100_000];
        let mut reader = HashingReader::new(&data[..]);
        io::copy(&mut reader, &mut io::sink()).unwrap();
        assert_eq!(reader.finish(), (Digest::sha256_of(&data), 100_000));
    }
}
