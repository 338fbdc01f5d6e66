//! Every way a pull, a collection or a usage count can fail, one variant per step.
//!
//! Each message names the URL, digest, reference or file involved: `berth-pull` prints it as
//! the `error` of its JSON line, and init logs that line as it is.

use std::io;
use std::path::PathBuf;

use berth_oci::{Digest, OciError};

use crate::ReferenceError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),

    #[error("cannot read the {what} {}: {source}", path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("auth file {}: {reason}", path.display())]
    InvalidAuthFile { path: PathBuf, reason: String },

    #[error("CA file {}: {reason}", path.display())]
    InvalidCaFile { path: PathBuf, reason: String },

    #[error("no trusted root certificates: --no-bundled-roots needs at least one --ca file")]
    NoRoots,

    /// The request never got an answer: DNS, connection, TLS, timeout. Retried.
    #[error("GET {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: ureq::Error,
    },

    /// The TLS handshake failed: not retried, the next try would fail the same way.
    #[error("GET {url}: TLS: {source} (a registry with a private CA needs --ca FILE; one that speaks plain HTTP needs --insecure HOST[:PORT])")]
    Tls {
        url: String,
        #[source]
        source: ureq::Error,
    },

    /// The answer's body broke off. Retried (a blob download resumes where it stopped).
    #[error("GET {url}: reading the answer: {source}")]
    ReadBody {
        url: String,
        #[source]
        source: io::Error,
    },

    /// A status we do not handle; 5xx and 429 are retried first.
    #[error("GET {url}: HTTP {status}{detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },

    #[error("GET {url}: answer larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },

    #[error("GET {url}: HTTP 401 (unauthorized) even with {how}{detail}")]
    Unauthorized {
        url: String,
        how: &'static str,
        detail: String,
    },

    #[error(
        "GET {url}: cannot understand the registry's WWW-Authenticate header `{header}`: {reason}"
    )]
    BadChallenge {
        url: String,
        header: String,
        reason: String,
    },

    #[error("{registry} asks for Basic credentials, and no --auth-file entry has any for it")]
    NoCredentials { registry: String },

    #[error(
        "the token realm {realm} of {registry} is plain HTTP, and {registry} is not --insecure"
    )]
    InsecureRealm { registry: String, realm: String },

    #[error("token endpoint {url}: {reason}")]
    TokenResponse { url: String, reason: String },

    #[error("{reference}: unsupported manifest media type `{media_type}` (OCI and Docker v2 manifests and indexes are supported)")]
    UnsupportedManifest {
        reference: String,
        media_type: String,
    },

    #[error("{reference}: the image index entry {digest} is itself an index; nested indexes are not supported")]
    NestedIndex { reference: String, digest: Digest },

    #[error("{reference}: invalid {document} {digest}: {source}")]
    ParseDocument {
        reference: String,
        document: &'static str,
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },

    #[error(
        "{reference}: no image for {wanted} in the index; it has {}",
        list_or_none(available)
    )]
    NoMatchingPlatform {
        reference: String,
        wanted: String,
        available: Vec<String>,
    },

    #[error("{reference}: the image config {digest} is for {found}, not {wanted}")]
    WrongPlatform {
        reference: String,
        digest: Digest,
        found: String,
        wanted: String,
    },

    #[error(
        "{reference}: the artifact has no layer of media type `{media_type}` (it has: {found})"
    )]
    NoArtifactLayer {
        reference: String,
        media_type: String,
        found: String,
    },

    #[error("{reference}: the artifact's {digest} is {size} bytes, more than the {limit} allowed")]
    ArtifactTooLarge {
        reference: String,
        digest: Digest,
        size: u64,
        limit: u64,
    },

    #[error("{reference}: layer {digest} has media type `{media_type}`; supported are tar, tar+gzip and tar+zstd layers")]
    UnsupportedLayer {
        reference: String,
        digest: Digest,
        media_type: String,
    },

    #[error(
        "{reference}: config {digest} has media type `{media_type}`, which is no image config"
    )]
    UnsupportedConfig {
        reference: String,
        digest: Digest,
        media_type: String,
    },

    #[error(
        "{reference}: the manifest has {layers} layers but its config lists {diff_ids} diff_ids"
    )]
    LayerCountMismatch {
        reference: String,
        layers: usize,
        diff_ids: usize,
    },

    #[error("digest mismatch for {expected}: got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },

    #[error(
        "{digest}: the blob is {size} bytes, more than the {free} bytes free in {} (less a reserve of {reserve}): refused",
        store.display()
    )]
    NoRoom {
        digest: Digest,
        size: u64,
        free: u64,
        reserve: u64,
        store: std::path::PathBuf,
    },

    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },

    #[error("{digest}: cannot resume the download: {reason}")]
    CannotResume {
        digest: Digest,
        reason: &'static str,
    },

    #[error("GET {url}: asked for bytes from {offset} on, got `Content-Range: {header}`")]
    BadContentRange {
        url: String,
        offset: u64,
        header: String,
    },

    #[error("store: cannot {action} {}: {source}", path.display())]
    Store {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("store: {}: {reason}", path.display())]
    InvalidStore { path: PathBuf, reason: String },

    #[error("store: {0}")]
    Oci(#[from] OciError),
}

impl RegistryError {
    /// Whether trying again may help: the network or the registry failed, not the content.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Transport { source, .. } => matches!(
                source,
                ureq::Error::Io(_)
                    | ureq::Error::Timeout(_)
                    | ureq::Error::HostNotFound
                    | ureq::Error::ConnectionFailed
                    | ureq::Error::Protocol(_)
                    | ureq::Error::ConnectProxyFailed(_)
                    | ureq::Error::BodyStalled
            ),
            RegistryError::ReadBody { .. } => true,
            RegistryError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "no platforms listed".to_string()
    } else {
        items.join(", ")
    }
}
