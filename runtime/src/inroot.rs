//! Paths inside a container's root, resolved within it, and mounts that target file
//! descriptors rather than path strings.
//!
//! Before `pivot_root` the container's process still has the host's root: a plain
//! `root.join("/etc/hosts")` follows an image's symlink `/etc/hosts -> /etc/anything` to the
//! host's `/etc/anything`, and `../..` links climb out the same way. Every path the runtime
//! creates, opens or mounts on inside the root therefore goes through [`pathrs`] (libpathrs:
//! `openat2(RESOLVE_IN_ROOT)`, with its own checked fallback), which treats the container's
//! root as `/` for every component, symlinks included. The handle it returns is an `O_PATH`
//! descriptor, and mounts go onto that descriptor (`/proc/self/fd/N`, as runc's
//! `mountViaFds`, or `move_mount(2)`), so nothing can swap the target between the check and
//! the mount.
//!
//! Binds are made with the new mount API (`open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`,
//! `mount_setattr(AT_RECURSIVE)`, `move_mount`): a read-only volume becomes read-only with
//! every mount below it, and keeps its source's `nosuid`, `nodev` and `noexec`, which a
//! `MS_REMOUNT | MS_BIND | MS_RDONLY` would have reset.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::libc;
use nix::mount::{mount, MsFlags};
use pathrs::flags::OpenFlags;
use pathrs::{Handle, Root};

use crate::child::StepResult;

/// How many dangling symlinks in a row a created file may go through (Linux's own limit on
/// nested links is 40; an image needs one at most).
const MAX_LINK_HOPS: usize = 8;
/// Mode of directories the runtime creates inside a container's root.
const DIR_MODE: u32 = 0o755;
/// Mode of files it creates there (bind-mount targets).
const FILE_MODE: u32 = 0o644;

// The new mount API's flags (`linux/mount.h`), which the libc crate does not carry.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// `struct mount_attr`, the argument of `mount_setattr(2)` (first version, 32 bytes).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// The container's root, opened once; every path below is resolved inside it.
pub(crate) fn open_root(path: &Path) -> StepResult<Root> {
    Root::open(path).map_err(|e| format!("open the container's root {}: {e}", path.display()))
}

/// The directory `target` inside `root`, created with its parents when missing. A dangling
/// symlink there is followed inside the root, and the directory it names is created.
pub(crate) fn directory(root: &Root, target: &str) -> StepResult<Handle> {
    // Most targets exist: one resolution, and nothing to create (a container start resolves
    // a dozen of these, and pathrs' mkdir_all checks each component at length).
    if let Ok(handle) = root.resolve(target) {
        if is_directory(&handle) {
            return Ok(handle);
        }
    }
    let path = through_dangling_links(root, target)?;
    root.mkdir_all(&path, &std::fs::Permissions::from_mode(DIR_MODE))
        .map_err(|e| {
            format!(
                "create directory {target}{} inside the container's root: {e}",
                shown_if_other(target, &path)
            )
        })
}

/// The file `target` inside `root`, created (empty) with its parent directories when missing.
/// A dangling symlink there is followed inside the root, and the file it names is created.
pub(crate) fn file(root: &Root, target: &str) -> StepResult<Handle> {
    let path = through_dangling_links(root, target)?;
    if let Ok(handle) = root.resolve(&path) {
        return Ok(handle);
    }
    if let Some(parent) = path.parent() {
        directory(root, &parent.to_string_lossy())?;
    }
    let created = root.create_file(
        &path,
        OpenFlags::O_WRONLY | OpenFlags::O_CLOEXEC,
        &std::fs::Permissions::from_mode(FILE_MODE),
    );
    created.and_then(|_| root.resolve(&path)).map_err(|e| {
        format!(
            "create {target}{} inside the container's root: {e}",
            shown_if_other(target, &path)
        )
    })
}

/// The directory `name` right below `parent`, a filesystem berth has just mounted (the
/// container's `/dev` tmpfs), created when missing; opened without following a symlink.
pub(crate) fn fresh_directory(parent: &Handle, name: &str, shown: &str) -> StepResult<Handle> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{mkdirat, Mode};
    match mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(DIR_MODE)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(format!("create directory {shown}: {e}")),
    }
    openat(
        parent.as_fd(),
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(Handle::from_fd)
    .map_err(|e| format!("open directory {shown}: {e}"))
}

fn is_directory(handle: &Handle) -> bool {
    nix::sys::stat::fstat(handle.as_fd()).is_ok_and(|st| {
        nix::sys::stat::SFlag::from_bits_truncate(st.st_mode) & nix::sys::stat::SFlag::S_IFMT
            == nix::sys::stat::SFlag::S_IFDIR
    })
}

/// `target`, or where the dangling symlinks at its end lead (each resolved inside the
/// root, as the container itself would see them): the path to create. Docker creates
/// what such a link names too.
fn through_dangling_links(root: &Root, target: &str) -> StepResult<PathBuf> {
    let mut path = PathBuf::from(target);
    for _ in 0..MAX_LINK_HOPS {
        if root.resolve(&path).is_ok() {
            return Ok(path);
        }
        match root.readlink(&path) {
            Ok(link) => {
                path = lexically_inside_root(&match path.parent() {
                    Some(parent) if link.is_relative() => parent.join(link),
                    _ => link,
                });
            }
            // Missing: created there.
            Err(_) => return Ok(path),
        }
    }
    Err(format!(
        "{target}: more than {MAX_LINK_HOPS} dangling symlinks in a row inside the container's root"
    ))
}

/// `path` as an absolute path without `.` or `..`, a `..` at the top staying at the top as
/// it does in the root. Only ever a path inside the root, which is all that matters here:
/// pathrs resolves whatever it is given within the root.
fn lexically_inside_root(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut clean = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(name) => clean.push(name),
            Component::ParentDir => {
                clean.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    clean
}

/// ` (through symlinks: PATH)` when a link led elsewhere, for errors.
fn shown_if_other(target: &str, path: &Path) -> String {
    if Path::new(target) == path {
        String::new()
    } else {
        format!(" (through symlinks: {})", path.display())
    }
}

/// Refuses `target` (`/proc`, `/sys`, `/dev`) when the image made it a symlink: the kernel
/// filesystems berth mounts there must be where every process of the container looks.
pub(crate) fn refuse_symlink(root: &Root, target: &str) -> StepResult {
    match root.resolve_nofollow(target) {
        Ok(handle) => {
            let metadata = std::fs::File::from(OwnedFd::from(handle))
                .metadata()
                .map_err(|e| format!("stat {target} inside the container's root: {e}"))?;
            if metadata.file_type().is_symlink() {
                return Err(format!(
                    "the image's {target} is a symlink; berth mounts a kernel filesystem there and refuses to follow it"
                ));
            }
            Ok(())
        }
        // Missing: created by the caller.
        Err(_) => Ok(()),
    }
}

/// The path through which `fd`'s file can be named to `mount(2)`.
fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Mounts a filesystem (`fstype`, or a bind of `source` with `MS_BIND`) on the file `target`
/// names; `what` names the mount in errors.
pub(crate) fn mount_on(
    what: &str,
    source: Option<&str>,
    target: &Handle,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> StepResult {
    mount(
        source,
        fd_path(target.as_fd()).as_str(),
        fstype,
        flags,
        data,
    )
    .map_err(|e| format!("mount {what}: {e}"))
}

/// Binds `source` (a host path, with every mount below it) onto `target`, read-only with
/// every mount below it when `read_only`; the source's other mount flags are kept.
pub(crate) fn bind(source: &Path, target: &Handle, read_only: bool, what: &str) -> StepResult {
    let source_c = CString::new(source.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("bind {what}: the source path contains a NUL byte"))?;
    // SAFETY: open_tree(2) reads the NUL-terminated path for the duration of the call and
    // returns a new descriptor or -1; no memory of ours is kept.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source_c.as_ptr(),
            OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC.cast_unsigned(),
        )
    };
    let tree = owned_fd(tree).map_err(|e| {
        format!(
            "bind {what}: clone the mount tree of {}: {e}",
            source.display()
        )
    })?;
    if read_only {
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let empty = c"";
        // SAFETY: the path is a NUL-terminated empty string (AT_EMPTY_PATH: the descriptor
        // itself), `attr` is a valid mount_attr of the size passed, both live across the call.
        let set = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_EMPTY_PATH.cast_unsigned() | AT_RECURSIVE,
                &raw const attr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if set != 0 {
            return Err(format!(
                "bind {what}: make it read-only (recursively): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let empty = c"";
    // SAFETY: both paths are NUL-terminated empty strings naming the two descriptors
    // themselves (the *_EMPTY_PATH flags); both descriptors are open for the call.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            target.as_fd().as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if moved != 0 {
        return Err(format!(
            "bind {what}: attach it: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// A raw syscall's descriptor result as an owned descriptor.
fn owned_fd(result: libc::c_long) -> std::io::Result<OwnedFd> {
    let fd = i32::try_from(result).map_err(|_| std::io::Error::other("descriptor out of range"))?;
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Checks that `path` (the container's `/dev/null`, before masked paths are bound over with
/// it) is the character device 1:3, so a mask can never bind something else.
pub(crate) fn check_dev_null(path: &Path) -> StepResult {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::symlink_metadata(path)
        .map_err(|e| format!("stat {} before masking paths: {e}", path.display()))?;
    let rdev = metadata.rdev();
    if metadata.file_type().is_char_device()
        && nix::sys::stat::major(rdev) == 1
        && nix::sys::stat::minor(rdev) == 3
    {
        Ok(())
    } else {
        Err(format!(
            "{} is not the character device 1:3; masked paths are not bound over with it",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_dot_never_climbs_above_the_root() {
        assert_eq!(
            lexically_inside_root(Path::new("/etc/../../../../etc/x")),
            Path::new("/etc/x")
        );
        assert_eq!(
            lexically_inside_root(Path::new("a/./b/../c")),
            Path::new("/a/c")
        );
    }
}
