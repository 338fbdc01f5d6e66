//! What can be wrong with a key or a bundle, each naming what it refused.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("public key `{text}`: {reason} (expected `ed25519:` and 32 bytes in base64)")]
    BadPublicKey { text: String, reason: String },

    #[error("secret key {}: {reason}", path.display())]
    BadSecretKey { path: PathBuf, reason: String },

    #[error("cannot gather random bytes for a key: {0}")]
    Random(String),

    #[error("the bundle cannot be read: {0}")]
    Read(#[source] io::Error),

    #[error("the bundle is truncated: {what} is missing")]
    Truncated { what: String },

    #[error("the bundle's entry {index} is `{found}`, expected `{expected}`")]
    UnexpectedEntry {
        index: usize,
        found: String,
        expected: String,
    },

    #[error("the bundle is unsigned: it has no {0} entry")]
    Unsigned(&'static str),

    #[error("the bundle's {entry} is {size} bytes, more than the {limit} allowed")]
    EntryTooLarge {
        entry: String,
        size: u64,
        limit: u64,
    },

    #[error("the bundle's signature is not 64 bytes but {0}")]
    SignatureLength(u64),

    #[error("the bundle is not signed by a key this host accepts ({accepted} accepted)")]
    NotSignedByAcceptedKey { accepted: usize },

    #[error("the bundle's header is not valid: {0}")]
    BadHeader(String),

    #[error("the bundle's format is {found}; this host reads format {supported}")]
    UnsupportedFormat { found: u32, supported: u32 },

    #[error("the bundle is for {found}; this host is {expected}")]
    OtherArch { found: String, expected: String },

    #[error("part `{part}` is {found} bytes; the header says {expected}")]
    PartSize {
        part: String,
        found: u64,
        expected: u64,
    },

    #[error("part `{part}` does not match its digest: sha256:{found}, the header says sha256:{expected}")]
    PartDigest {
        part: String,
        found: String,
        expected: String,
    },

    #[error("part `{part}` cannot be written: {source}")]
    WritePart {
        part: String,
        #[source]
        source: io::Error,
    },

    #[error("the bundle has an entry `{0}` after its last part")]
    TrailingEntry(String),
}
