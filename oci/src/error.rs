//! Every way reading an image or unpacking a layer can fail, one variant per step.
//!
//! Each message names the file, digest, reference or tar entry involved, so a log line from
//! PID 1 is enough to tell what was wrong without a debugger.

use std::io;
use std::path::PathBuf;

use crate::Digest;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("invalid digest `{text}`: {reason}")]
    InvalidDigest { text: String, reason: &'static str },

    #[error("cannot read {}: {source}", path.display())]
    ReadLayoutFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{}: invalid JSON: {source}", path.display())]
    ParseLayoutFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{}: unsupported image layout version `{version}` (expected 1.0.0)", path.display())]
    UnsupportedLayoutVersion { path: PathBuf, version: String },

    #[error("blob {digest} in {}: cannot read: {source}", path.display())]
    ReadBlob {
        digest: Digest,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "blob {digest} in {}: size mismatch, the descriptor says {expected} bytes, the file has {actual}",
        path.display()
    )]
    BlobSizeMismatch {
        digest: Digest,
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    #[error("blob {digest} in {}: digest mismatch, content hashes to {actual}", path.display())]
    BlobDigestMismatch {
        digest: Digest,
        path: PathBuf,
        actual: Digest,
    },

    #[error("blob {digest} in {}: invalid {document}: {source}", path.display())]
    ParseBlob {
        digest: Digest,
        path: PathBuf,
        /// What the blob was read as, e.g. "image manifest".
        document: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("no image `{reference}` in {} (known: {})", layout.display(), list_or_none(known))]
    UnknownReference {
        reference: String,
        layout: PathBuf,
        known: Vec<String>,
    },

    #[error(
        "image `{reference}` ({digest}) is an image index: image indexes are not supported yet"
    )]
    ImageIndexNotSupported { reference: String, digest: Digest },

    #[error("image `{reference}` ({digest}): unsupported manifest media type `{media_type}`")]
    UnsupportedManifestMediaType {
        reference: String,
        digest: Digest,
        media_type: String,
    },

    #[error(
        "image `{reference}`: manifest {manifest_digest} lists {layers} layers but config {config_digest} lists {diff_ids} diff_ids"
    )]
    LayerCountMismatch {
        reference: String,
        manifest_digest: Digest,
        config_digest: Digest,
        layers: usize,
        diff_ids: usize,
    },

    #[error("layer {diff_id}: unsupported media type `{media_type}`")]
    UnsupportedLayerMediaType { diff_id: Digest, media_type: String },

    #[error("layer {diff_id}: cannot create {}: {source}", path.display())]
    CreateLayerDir {
        diff_id: Digest,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("layer {diff_id}: cannot read the tar stream: {source}")]
    ReadLayer {
        diff_id: Digest,
        #[source]
        source: io::Error,
    },

    #[error("layer {diff_id}: refusing entry `{entry}`: {reason}")]
    UnsafeEntry {
        diff_id: Digest,
        entry: String,
        reason: String,
    },

    #[error("layer {diff_id}: cannot unpack entry `{entry}` into {}: {source}", dest.display())]
    UnpackEntry {
        diff_id: Digest,
        entry: String,
        dest: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("layer {diff_id}: whiteout `{entry}`: cannot create {}: {source}", path.display())]
    CreateWhiteout {
        diff_id: Digest,
        entry: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "layer {diff_id}: opaque marker `{entry}`: cannot mark {} opaque: {source}",
        path.display()
    )]
    MarkOpaque {
        diff_id: Digest,
        entry: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("layer {diff_id}: cannot set the mode and mtime of directory {}: {source}", path.display())]
    FinishDirectory {
        diff_id: Digest,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("layer {diff_id}: more than {limit} bytes uncompressed, the most a layer may hold")]
    LayerTooLarge { diff_id: Digest, limit: u64 },

    #[error(
        "layer {diff_id}: unpacking stopped with {free} bytes free in {}, the reserve is {reserve} bytes: the layer inflates to more than the store has room for",
        path.display()
    )]
    NoRoom {
        diff_id: Digest,
        path: PathBuf,
        free: u64,
        reserve: u64,
    },

    #[error("layer {diff_id}: more than {limit} entries, the most a layer may hold")]
    TooManyEntries { diff_id: Digest, limit: u64 },

    #[error("layer {diff_id}: diff_id mismatch, the uncompressed stream hashes to {actual}")]
    DiffIdMismatch { diff_id: Digest, actual: Digest },

    #[error("layer {diff_id}: cannot prepare the layer store {}: {source}", path.display())]
    PrepareStore {
        diff_id: Digest,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("layer {diff_id}: cannot move {} to {}: {source}", from.display(), to.display())]
    CommitLayer {
        diff_id: Digest,
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}
