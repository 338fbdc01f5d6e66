//! A content-addressed store of unpacked layers: `<store>/sha256/<diff_id hex>`, each a
//! directory ready to be an overlayfs lower directory, unpacked once and shared by every image
//! that has the layer.
//!
//! A layer is unpacked into a hidden sibling and renamed into place only when complete, so a
//! crash or a failed unpack never leaves a partial layer under its final name.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::{unpack_layer, Digest, OciError};

/// Where the layer with this diff_id lives in `store`.
pub fn layer_dir(store: &Path, diff_id: &Digest) -> PathBuf {
    store.join(diff_id.algorithm()).join(diff_id.hex())
}

/// Unpacks a layer into `store` unless it is there already. True if it unpacked it, false if
/// the layer was present (it is never unpacked twice).
pub fn unpack_layer_into_store(
    blob: &[u8],
    media_type: &str,
    diff_id: &Digest,
    store: &Path,
) -> Result<bool, OciError> {
    let final_dir = layer_dir(store, diff_id);
    if fs::symlink_metadata(&final_dir).is_ok() {
        return Ok(false);
    }
    let store_error = |path: &Path, source| OciError::PrepareStore {
        diff_id: diff_id.clone(),
        path: path.to_path_buf(),
        source,
    };
    let parent = store.join(diff_id.algorithm());
    fs::create_dir_all(&parent).map_err(|source| store_error(&parent, source))?;
    // The process id keeps two builders apart; in the guest PID 1 always gets the same name,
    // so a partial directory left by a crash is found and replaced.
    let partial = parent.join(format!(".{}.partial-{}", diff_id.hex(), std::process::id()));
    match fs::symlink_metadata(&partial) {
        Ok(_) => fs::remove_dir_all(&partial).map_err(|source| store_error(&partial, source))?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(store_error(&partial, err)),
    }
    unpack_layer(blob, media_type, diff_id, &partial)?;
    match sync_and_rename(&partial, &final_dir) {
        Ok(()) => Ok(true),
        Err(source) => {
            // The error being reported matters more than a failed cleanup.
            let _ = fs::remove_dir_all(&partial);
            if final_dir.is_dir() {
                // Another process unpacked the same layer meanwhile.
                Ok(false)
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

/// Renames the complete layer into place once its content is on disk: otherwise a power cut
/// soon after could leave the final name on files whose data was never written.
fn sync_and_rename(partial: &Path, final_dir: &Path) -> io::Result<()> {
    let dir = File::open(partial)?;
    nix::unistd::syncfs(&dir)?;
    fs::rename(partial, final_dir)
}
