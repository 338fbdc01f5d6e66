//! A content-addressed store of unpacked layers: `<store>/sha256/<diff_id hex>`, each a
//! directory ready to be an overlayfs lower directory, unpacked once and shared by every image
//! that has the layer.
//!
//! A layer is unpacked into a hidden sibling and renamed into place only when complete, so a
//! crash, a killed unpacker or a failed unpack never leaves a partial layer under its final
//! name.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::{unpack_layer_with_limits, Digest, LayerStats, OciError, UnpackLimits};

const PARTIAL_MARKER: &str = ".partial-";

/// Where the layer with this diff_id lives in `store`.
pub fn layer_dir(store: &Path, diff_id: &Digest) -> PathBuf {
    store.join(diff_id.algorithm()).join(diff_id.hex())
}

/// Unpacks a layer into `store` unless it is there already. True if it unpacked it, false if
/// the layer was present (it is never unpacked twice). The default [`UnpackLimits`] apply.
pub fn unpack_layer_into_store(
    blob: &[u8],
    media_type: &str,
    diff_id: &Digest,
    store: &Path,
) -> Result<bool, OciError> {
    unpack_layer_into_store_with_limits(blob, media_type, diff_id, store, &UnpackLimits::default())
        .map(|stats| stats.is_some())
}

/// As [`unpack_layer_into_store`], within `limits`: what the unpack went through, or `None`
/// if the layer was present.
pub fn unpack_layer_into_store_with_limits(
    blob: &[u8],
    media_type: &str,
    diff_id: &Digest,
    store: &Path,
    limits: &UnpackLimits,
) -> Result<Option<LayerStats>, OciError> {
    let final_dir = layer_dir(store, diff_id);
    if fs::symlink_metadata(&final_dir).is_ok() {
        return Ok(None);
    }
    let store_error = |path: &Path, source| OciError::PrepareStore {
        diff_id: diff_id.clone(),
        path: path.to_path_buf(),
        source,
    };
    let parent = store.join(diff_id.algorithm());
    fs::create_dir_all(&parent).map_err(|source| store_error(&parent, source))?;
    // The process id keeps two unpackers apart (two builders, or two of init's unpack
    // processes for images that share a layer).
    let partial = parent.join(format!(
        ".{}{PARTIAL_MARKER}{}",
        diff_id.hex(),
        std::process::id()
    ));
    remove_stale_partials(&parent, diff_id);
    match fs::symlink_metadata(&partial) {
        Ok(_) => fs::remove_dir_all(&partial).map_err(|source| store_error(&partial, source))?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(store_error(&partial, err)),
    }
    let stats = unpack_layer_with_limits(blob, media_type, diff_id, &partial, limits)?;
    match sync_and_rename(&partial, &final_dir) {
        Ok(()) => Ok(Some(stats)),
        Err(source) => {
            // The error being reported matters more than a failed cleanup.
            let _ = fs::remove_dir_all(&partial);
            if final_dir.is_dir() {
                // Another process unpacked the same layer meanwhile.
                Ok(None)
            } else {
                Err(OciError::CommitLayer {
                    diff_id: diff_id.clone(),
                    from: partial,
                    to: final_dir,
                    source,
                })
            }
        }
    }
}

/// Removes what unpackers of this layer that no longer run left behind (killed past their
/// time limit, or a power cut), best effort: process ids differ from one run to the next, so
/// nobody else would ever reuse those directories.
fn remove_stale_partials(parent: &Path, diff_id: &Digest) {
    let prefix = format!(".{}{PARTIAL_MARKER}", diff_id.hex());
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|name| name.strip_prefix(&prefix))
            .and_then(|pid| pid.parse::<i32>().ok());
        let Some(pid) = pid else {
            continue;
        };
        let gone = pid != i32::try_from(std::process::id()).unwrap_or(0)
            && nix::sys::signal::kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH);
        if gone {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Renames the complete layer into place once its content is on disk: otherwise a power cut
/// soon after could leave the final name on files whose data was never written.
fn sync_and_rename(partial: &Path, final_dir: &Path) -> io::Result<()> {
    let dir = File::open(partial)?;
    nix::unistd::syncfs(&dir)?;
    fs::rename(partial, final_dir)
}
