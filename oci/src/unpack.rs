//! Unpacks one layer into its own directory, ready to be an overlayfs lower directory.
//!
//! Layers are not applied on top of each other here: overlayfs stacks them at mount time. So
//! OCI whiteouts become overlayfs whiteouts (`dir/.wh.NAME` a character device 0:0 at
//! `dir/NAME`, `dir/.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on `dir`), as
//! containerd's overlay snapshotter does. Per the image spec a whiteout hides only what the
//! lower layers have: an entry of the same layer at that path, before or after it, is kept.
//!
//! Regular files, directories, symlinks and hard links go through the tar crate's
//! `Entry::unpack_in`, which keeps them inside the layer directory; device nodes, fifos and
//! whiteouts are created here, through real directories only.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{lchown, DirBuilderExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::SFlag;
use tar::{Entry, EntryType, Header};

use crate::digest::HashingReader;
use crate::entry_path::{self, EntryRole};
use crate::nodes::{self, DirError, NodeSpec};
use crate::room::RoomGuard;
use crate::{decompress, Digest, OciError};

/// The most uncompressed bytes one layer may hold by default: 16 GiB. Docker and containerd
/// set no such limit, and the largest layers in common use (CUDA and machine-learning images)
/// reach a few GiB; four times that leaves room while a decompression bomb (a few KiB of gzip
/// that inflate to terabytes) stops long before the disk is full.
pub const MAX_LAYER_BYTES: u64 = 16 << 30;
/// The most tar entries one layer may hold by default: a million. A full Debian or TeX Live
/// layer has a few hundred thousand files; a layer of millions of empty files is an attack on
/// the inode table (and on the time an unpack takes), not an image.
pub const MAX_LAYER_ENTRIES: u64 = 1_000_000;

/// What one layer may hold, checked as it is unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of the uncompressed tar stream (what `diff_id` covers).
    pub max_bytes: u64,
    /// Tar entries, whiteouts and pax headers included.
    pub max_entries: u64,
    /// Stop when the destination's filesystem is down to its reserve ([`crate::store_reserve`]).
    pub keep_reserve: bool,
}

impl Default for UnpackLimits {
    fn default() -> UnpackLimits {
        UnpackLimits {
            max_bytes: MAX_LAYER_BYTES,
            max_entries: MAX_LAYER_ENTRIES,
            keep_reserve: true,
        }
    }
}

/// What unpacking a layer went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Tar entries read, whiteouts included.
    pub entries: u64,
    /// Length of the uncompressed tar stream, the bytes `diff_id` covers.
    pub bytes: u64,
}

/// Unpacks a layer blob (its compressed bytes, already verified against the descriptor's digest
/// by the caller) into `dest`, which must not exist yet, and checks that the uncompressed tar
/// stream hashes to `diff_id`. On error `dest` is removed again (best effort). The default
/// [`UnpackLimits`] apply.
pub fn unpack_layer(
    blob: &[u8],
    media_type: &str,
    diff_id: &Digest,
    dest: &Path,
) -> Result<LayerStats, OciError> {
    unpack_layer_with_limits(blob, media_type, diff_id, dest, &UnpackLimits::default())
}

/// As [`unpack_layer`], refusing a layer past `limits`: the unpack stops at the first byte
/// or entry over the limit, and `dest` is removed.
pub fn unpack_layer_with_limits(
    blob: &[u8],
    media_type: &str,
    diff_id: &Digest,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<LayerStats, OciError> {
    let stream = decompress::tar_stream(blob, media_type).ok_or_else(|| {
        OciError::UnsupportedLayerMediaType {
            diff_id: diff_id.clone(),
            media_type: media_type.to_string(),
        }
    })?;
    fs::create_dir(dest).map_err(|source| OciError::CreateLayerDir {
        diff_id: diff_id.clone(),
        path: dest.to_path_buf(),
        source,
    })?;
    let result = unpack_stream(stream, diff_id, dest, limits);
    if result.is_err() {
        // The error being reported matters more than a failed cleanup.
        let _ = fs::remove_dir_all(dest);
    }
    result
}

fn unpack_stream(
    stream: impl Read,
    diff_id: &Digest,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<LayerStats, OciError> {
    let read_error = |source| OciError::ReadLayer {
        diff_id: diff_id.clone(),
        source,
    };
    let mut hashed = HashingReader::new(RoomGuard::new(
        Limited::new(stream, limits.max_bytes),
        dest,
        limits.keep_reserve,
    ));
    let mut unpacker = Unpacker {
        diff_id,
        dest,
        entries: 0,
        headers: 0,
        max_entries: limits.max_entries,
        whiteouts: HashSet::new(),
        directories: BTreeMap::new(),
    };
    let result = unpack_entries(&mut hashed, &mut unpacker)
        .and_then(|()| unpacker.finish_directories())
        // The tar end marker may be followed by padding that diff_id covers too.
        .and_then(|()| {
            io::copy(&mut hashed, &mut io::sink())
                .map(drop)
                .map_err(read_error)
        });
    // Past the limit every read fails; whatever error that became, the limit is the cause.
    if hashed.get_ref().get_ref().exceeded {
        return Err(OciError::LayerTooLarge {
            diff_id: diff_id.clone(),
            limit: limits.max_bytes,
        });
    }
    if let Some(room) = hashed.get_ref().exhausted {
        return Err(OciError::NoRoom {
            diff_id: diff_id.clone(),
            path: dest.to_path_buf(),
            free: room.free,
            reserve: room.reserve,
        });
    }
    result?;
    let (actual, bytes) = hashed.finish();
    if actual != *diff_id {
        return Err(OciError::DiffIdMismatch {
            diff_id: diff_id.clone(),
            actual,
        });
    }
    Ok(LayerStats {
        entries: unpacker.entries,
        bytes,
    })
}

fn unpack_entries(stream: impl Read, unpacker: &mut Unpacker<'_>) -> Result<(), OciError> {
    let diff_id = unpacker.diff_id;
    let read_error = |source| OciError::ReadLayer {
        diff_id: diff_id.clone(),
        source,
    };
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(read_error)? {
        unpacker.unpack(&mut entry.map_err(read_error)?)?;
    }
    Ok(())
}

/// Reads at most `limit` bytes of a stream and fails every read after that, remembering that
/// it did: a decompression bomb stops at the limit instead of filling the disk.
struct Limited<R> {
    inner: R,
    read: u64,
    limit: u64,
    exceeded: bool,
}

impl<R: Read> Limited<R> {
    fn new(inner: R, limit: u64) -> Limited<R> {
        Limited {
            inner,
            read: 0,
            limit,
            exceeded: false,
        }
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.exceeded {
            return Err(over_limit());
        }
        // One byte more than allowed tells a stream that ends at the limit from a longer one.
        let allowed = self.limit.saturating_sub(self.read).saturating_add(1);
        let count = self.inner.by_ref().take(allowed).read(buf)?;
        self.read = self.read.saturating_add(count as u64);
        if self.read > self.limit {
            self.exceeded = true;
            return Err(over_limit());
        }
        Ok(count)
    }
}

fn over_limit() -> io::Error {
    io::Error::other("the layer is larger than its limit")
}

/// Mode and mtime of a directory entry, applied once the whole layer is written: creating its
/// children would change the mtime, and a directory may be listed after its children.
#[derive(Debug, Clone, Copy)]
struct DirectoryMetadata {
    mode: Option<u32>,
    mtime: Option<u64>,
}

struct Unpacker<'a> {
    diff_id: &'a Digest,
    dest: &'a Path,
    entries: u64,
    /// Every entry read, pax headers too: what [`UnpackLimits::max_entries`] counts.
    headers: u64,
    max_entries: u64,
    /// Whiteouts created so far, relative to `dest`.
    whiteouts: HashSet<PathBuf>,
    /// Directory entries by path relative to `dest`; a later entry for a path wins.
    directories: BTreeMap<PathBuf, DirectoryMetadata>,
}

impl Unpacker<'_> {
    fn unpack<R: Read>(&mut self, entry: &mut Entry<'_, R>) -> Result<(), OciError> {
        let kind = entry.header().entry_type();
        self.headers += 1;
        if self.headers > self.max_entries {
            return Err(OciError::TooManyEntries {
                diff_id: self.diff_id.clone(),
                limit: self.max_entries,
            });
        }
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            return Ok(());
        }
        self.entries += 1;
        let raw_path = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        let relative =
            entry_path::normalise(&raw_path).map_err(|reason| self.refuse(&name, reason))?;
        match entry_path::role(&relative).map_err(|reason| self.refuse(&name, reason))? {
            EntryRole::AufsMetadata => Ok(()),
            EntryRole::OpaqueMarker { dir } => self.opaque_marker(&name, dir),
            EntryRole::Whiteout { parent, hidden } => {
                self.whiteout(&name, &parent.join(hidden), entry.header())
            }
            EntryRole::Content if relative.as_os_str().is_empty() => {
                self.layer_root(&name, entry.header())
            }
            EntryRole::Content => {
                // Like tar, an old-style header for a regular file whose name ends in `/`
                // is a directory.
                let is_directory = kind.is_dir()
                    || (kind == EntryType::Regular
                        && entry.header().as_ustar().is_none()
                        && raw_path.ends_with(b"/"));
                self.content(&name, &relative, entry, is_directory)
            }
        }
    }

    fn content<R: Read>(
        &mut self,
        name: &str,
        relative: &Path,
        entry: &mut Entry<'_, R>,
        is_directory: bool,
    ) -> Result<(), OciError> {
        self.reclaim_whiteout_ancestors(name, relative)?;
        let replaces_whiteout = self.remove_whiteout_at(name, relative)?;
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::Char | EntryType::Block | EntryType::Fifo) {
            self.node(name, relative, entry.header())?;
        } else {
            let inside = entry
                .unpack_in(self.dest)
                .map_err(|source| self.unpack_error(name, source))?;
            if !inside {
                return Err(self.refuse(name, "it would land outside the layer".to_string()));
            }
        }
        if is_directory {
            self.directories
                .insert(relative.to_path_buf(), directory_metadata(entry.header()));
            if replaces_whiteout {
                // The directory replaces a deleted one: the lower layers' content stays hidden.
                let path = self.dest.join(relative);
                nodes::mark_opaque(&path)
                    .map_err(|source| self.opaque_error(name, path, source))?;
            }
        }
        Ok(())
    }

    /// The entry for the layer root (`./`) carries the root directory's owner, mode and mtime.
    fn layer_root(&mut self, name: &str, header: &Header) -> Result<(), OciError> {
        if !header.entry_type().is_dir() {
            return Err(self.refuse(name, "the layer root must be a directory".to_string()));
        }
        let (uid, gid) = owner(header).map_err(|source| self.unpack_error(name, source))?;
        lchown(self.dest, Some(uid), Some(gid))
            .map_err(|source| self.unpack_error(name, source))?;
        self.directories
            .insert(PathBuf::new(), directory_metadata(header));
        Ok(())
    }

    fn node(&mut self, name: &str, relative: &Path, header: &Header) -> Result<(), OciError> {
        let kind = match header.entry_type() {
            EntryType::Char => SFlag::S_IFCHR,
            EntryType::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        let spec = node_spec(kind, header).map_err(|source| self.unpack_error(name, source))?;
        let parent = relative.parent().unwrap_or(Path::new(""));
        let file_name = relative.file_name().unwrap_or_default();
        let path = self.real_directory(name, parent)?.join(file_name);
        nodes::make_node(&path, &spec).map_err(|source| self.unpack_error(name, source))
    }

    fn whiteout(&mut self, name: &str, hidden: &Path, header: &Header) -> Result<(), OciError> {
        self.reclaim_whiteout_ancestors(name, hidden)?;
        let parent = hidden.parent().unwrap_or(Path::new(""));
        let file_name = hidden.file_name().unwrap_or_default();
        let path = self.real_directory(name, parent)?.join(file_name);
        let whiteout_error = |source| OciError::CreateWhiteout {
            diff_id: self.diff_id.clone(),
            entry: name.to_string(),
            path: path.clone(),
            source,
        };
        match fs::symlink_metadata(&path) {
            // Already whited out, or an entry of this very layer, which the whiteout must not
            // hide: either way the lower layers' file is hidden.
            Ok(_) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(whiteout_error(err)),
        }
        let (uid, gid) = owner(header).map_err(whiteout_error)?;
        nodes::make_whiteout(&path, uid, gid).map_err(whiteout_error)?;
        self.whiteouts.insert(hidden.to_path_buf());
        Ok(())
    }

    fn opaque_marker(&mut self, name: &str, dir: &Path) -> Result<(), OciError> {
        self.reclaim_whiteout_ancestors(name, dir)?;
        self.remove_whiteout_at(name, dir)?;
        let path = self.real_directory(name, dir)?;
        nodes::mark_opaque(&path).map_err(|source| self.opaque_error(name, path, source))
    }

    /// An entry under a path this layer whited out earlier recreates that path as a directory,
    /// which must be opaque: the whiteout said the lower layers' content is gone.
    fn reclaim_whiteout_ancestors(&mut self, name: &str, relative: &Path) -> Result<(), OciError> {
        if self.whiteouts.is_empty() {
            return Ok(());
        }
        let mut ancestor = PathBuf::new();
        let parent = relative.parent().unwrap_or(Path::new(""));
        for component in parent.components() {
            ancestor.push(component);
            if self.remove_whiteout_at(name, &ancestor)? {
                let path = self.dest.join(&ancestor);
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&path)
                    .and_then(|()| nodes::mark_opaque(&path))
                    .map_err(|source| self.opaque_error(name, path, source))?;
            }
        }
        Ok(())
    }

    /// Removes the whiteout this layer made at `relative`, if any, so an entry can take its
    /// place. True if there was one.
    fn remove_whiteout_at(&mut self, name: &str, relative: &Path) -> Result<bool, OciError> {
        if !self.whiteouts.remove(relative) {
            return Ok(false);
        }
        // Whiteouts are only ever created through real directories, so this path is too.
        let path = self.dest.join(relative);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(source) => Err(OciError::CreateWhiteout {
                diff_id: self.diff_id.clone(),
                entry: name.to_string(),
                path,
                source,
            }),
        }
    }

    fn real_directory(&self, name: &str, relative: &Path) -> Result<PathBuf, OciError> {
        nodes::real_directory(self.dest, relative).map_err(|err| match err {
            DirError::NotADirectory(reason) => self.refuse(name, reason),
            DirError::Io(path, source) => OciError::UnpackEntry {
                diff_id: self.diff_id.clone(),
                entry: name.to_string(),
                dest: path,
                source,
            },
        })
    }

    /// Applies the deferred directory metadata, deepest directories first.
    fn finish_directories(&self) -> Result<(), OciError> {
        let finish_error = |path: &Path, source| OciError::FinishDirectory {
            diff_id: self.diff_id.clone(),
            path: path.to_path_buf(),
            source,
        };
        let canonical_dest = self
            .dest
            .canonicalize()
            .map_err(|source| finish_error(self.dest, source))?;
        for (relative, metadata) in self.directories.iter().rev() {
            let path = self.dest.join(relative);
            let is_real_directory = fs::symlink_metadata(&path)
                .map_err(|source| finish_error(&path, source))?
                .is_dir();
            // The tar crate let parent symlinks that stay inside the layer through; make sure
            // the directory still resolves inside it before changing its mode.
            let inside = path
                .canonicalize()
                .map_err(|source| finish_error(&path, source))?
                .starts_with(&canonical_dest);
            if is_real_directory && inside {
                nodes::finish_directory(&path, metadata.mode, metadata.mtime)
                    .map_err(|source| finish_error(&path, source))?;
            }
        }
        Ok(())
    }

    fn refuse(&self, name: &str, reason: String) -> OciError {
        OciError::UnsafeEntry {
            diff_id: self.diff_id.clone(),
            entry: name.to_string(),
            reason,
        }
    }

    fn unpack_error(&self, name: &str, source: io::Error) -> OciError {
        OciError::UnpackEntry {
            diff_id: self.diff_id.clone(),
            entry: name.to_string(),
            dest: self.dest.to_path_buf(),
            source,
        }
    }

    fn opaque_error(&self, name: &str, path: PathBuf, source: io::Error) -> OciError {
        OciError::MarkOpaque {
            diff_id: self.diff_id.clone(),
            entry: name.to_string(),
            path,
            source,
        }
    }
}

fn directory_metadata(header: &Header) -> DirectoryMetadata {
    DirectoryMetadata {
        mode: header.mode().ok(),
        mtime: header.mtime().ok(),
    }
}

fn owner(header: &Header) -> io::Result<(u32, u32)> {
    let id = |value: u64| {
        u32::try_from(value).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("owner id {value} is too large"),
            )
        })
    };
    Ok((id(header.uid()?)?, id(header.gid()?)?))
}

fn node_spec(kind: SFlag, header: &Header) -> io::Result<NodeSpec> {
    let (uid, gid) = owner(header)?;
    // A fifo has no device number, and GNU tar leaves the fields empty (NULs) for one, which
    // do not read as a number: only device nodes' are read.
    let (major, minor) = match kind {
        SFlag::S_IFIFO => (0, 0),
        _ => (
            header.device_major()?.unwrap_or(0),
            header.device_minor()?.unwrap_or(0),
        ),
    };
    Ok(NodeSpec {
        kind,
        major,
        minor,
        mode: header.mode()?,
        uid,
        gid,
        mtime: header.mtime()?,
    })
}
