//! The filesystem operations the tar crate does not do for us: overlayfs whiteouts and opaque
//! directories, device nodes and fifos, and directory metadata applied after the fact.
//!
//! None of them follows a symlink: parents are walked one component at a time and must be real
//! directories, and the final component is never dereferenced.

use std::ffi::CString;
use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::AT_FDCWD;
use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

/// Mode of directories a layer needs but does not list (Docker always lists them).
const IMPLICIT_DIR_MODE: u32 = 0o755;
const OPAQUE_XATTR: &std::ffi::CStr = c"trusted.overlay.opaque";
const OPAQUE_XATTR_VALUE: &[u8] = b"y";

/// Why a path inside the layer could not be used as a directory.
#[derive(Debug)]
pub(crate) enum DirError {
    /// Something other than a directory is in the way (a symlink, file, ...): refuse the entry.
    NotADirectory(String),
    Io(PathBuf, io::Error),
}

/// `root/relative` as a real directory, creating what is missing. Every component must be a
/// directory, not a symlink to one, so nothing done inside it can land outside `root`.
pub(crate) fn real_directory(root: &Path, relative: &Path) -> Result<PathBuf, DirError> {
    let mut path = root.to_path_buf();
    let mut walked = PathBuf::new();
    for component in relative.components() {
        path.push(component);
        walked.push(component);
        match fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(metadata) => {
                return Err(DirError::NotADirectory(format!(
                    "`{}` is a {} in this layer, not a directory",
                    walked.display(),
                    describe(&metadata.file_type())
                )))
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => DirBuilder::new()
                .mode(IMPLICIT_DIR_MODE)
                .create(&path)
                .map_err(|err| DirError::Io(path.clone(), err))?,
            Err(err) => return Err(DirError::Io(path, err)),
        }
    }
    Ok(path)
}

fn describe(file_type: &fs::FileType) -> &'static str {
    if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_file() {
        "file"
    } else {
        "special file"
    }
}

/// The overlayfs whiteout: a character device 0:0 with no permissions.
pub(crate) fn make_whiteout(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))?;
    lchown(path, Some(uid), Some(gid))
}

/// Marks `dir` opaque for overlayfs, so the lower layers' content of it is hidden.
pub(crate) fn mark_opaque(dir: &Path) -> io::Result<()> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: `path` and `OPAQUE_XATTR` are NUL-terminated C strings that live until the call
    // returns; the value pointer and length describe `OPAQUE_XATTR_VALUE` exactly, which the
    // kernel only reads; lsetxattr keeps no pointer after returning, and, unlike setxattr, does
    // not follow a symlink at `path`.
    let result = unsafe {
        nix::libc::lsetxattr(
            path.as_ptr(),
            OPAQUE_XATTR.as_ptr(),
            OPAQUE_XATTR_VALUE.as_ptr().cast(),
            OPAQUE_XATTR_VALUE.len(),
            0,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What a device node or fifo entry asks for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NodeSpec {
    pub kind: SFlag,
    pub major: u32,
    pub minor: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
}

/// Creates a device node or fifo at `path`, replacing a non-directory already there (a later
/// entry for the same path wins, as with regular files).
pub(crate) fn make_node(path: &Path, node: &NodeSpec) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a directory is in the way",
            ))
        }
        Ok(_) => fs::remove_file(path)?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let device = makedev(u64::from(node.major), u64::from(node.minor));
    mknod(path, node.kind, Mode::empty(), device)?;
    // Owner first: chown clears the setuid and setgid bits that the mode may carry.
    lchown(path, Some(node.uid), Some(node.gid))?;
    fs::set_permissions(path, Permissions::from_mode(node.mode & 0o7777))?;
    set_mtime(path, node.mtime)
}

/// Sets a directory's mode and mtime once nothing more will be created in it.
pub(crate) fn finish_directory(
    path: &Path,
    mode: Option<u32>,
    mtime: Option<u64>,
) -> io::Result<()> {
    if let Some(mode) = mode {
        fs::set_permissions(path, Permissions::from_mode(mode & 0o7777))?;
    }
    if let Some(mtime) = mtime {
        set_mtime(path, mtime)?;
    }
    Ok(())
}

/// Sets both atime and mtime, as tar does, on `path` itself (never a symlink's target).
fn set_mtime(path: &Path, mtime: u64) -> io::Result<()> {
    let time = TimeSpec::from_duration(Duration::from_secs(mtime));
    utimensat(
        AT_FDCWD,
        path,
        &time,
        &time,
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}
