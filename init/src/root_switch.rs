//! Moving off the initramfs: the kernel unpacks the initrd into `rootfs`, which cannot be
//! `pivot_root`ed away from, and every container start pivots. So init first copies the
//! tree into a tmpfs, makes that the root (`MS_MOVE` + `chroot`, as `switch_root` does) and
//! re-executes itself there. LinuxKit's init does the same for the same reason.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};

/// Set in the environment of the re-executed init, so it knows the switch is done.
const SWITCHED_MARKER: &str = "BERTH_ROOT_SWITCHED";
/// Where the new root is assembled before it moves onto `/`.
const NEW_ROOT: &str = "/.berth-root";

/// True once init runs on the tmpfs root.
pub fn already_switched() -> bool {
    std::env::var_os(SWITCHED_MARKER).is_some()
}

/// When the first init started (since kernel start), carried across the re-exec so that
/// boot figures count the switch itself.
pub fn first_start() -> Option<std::time::Duration> {
    std::env::var(SWITCHED_MARKER)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(std::time::Duration::from_millis)
}

/// Copies the initramfs into a tmpfs, moves it onto `/` and re-executes init from it.
/// Returns only on failure, with what failed; init then carries on from rootfs.
pub fn switch_to_tmpfs_root(started: std::time::Duration) -> String {
    match try_switch(started) {
        Ok(never) => match never {},
        Err(err) => err,
    }
}

fn try_switch(started: std::time::Duration) -> Result<std::convert::Infallible, String> {
    let new_root = Path::new(NEW_ROOT);
    std::fs::create_dir_all(new_root).map_err(|e| format!("create {NEW_ROOT}: {e}"))?;
    mount(
        Some("rootfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| format!("mount tmpfs on {NEW_ROOT}: {e}"))?;
    for entry in std::fs::read_dir("/")
        .map_err(|e| format!("read /: {e}"))?
        .flatten()
    {
        let path = entry.path();
        if path == new_root {
            continue;
        }
        copy_tree(&path, &new_root.join(entry.file_name()))?;
        // Freed as we go, so the tree is never held twice in full.
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(err) = removed {
            log::warn!("root switch: cannot free {}: {err}", path.display());
        }
    }
    nix::unistd::chdir(new_root).map_err(|e| format!("chdir {NEW_ROOT}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("move {NEW_ROOT} onto /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot into the new root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    reexec(started)
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let meta =
        std::fs::symlink_metadata(from).map_err(|e| format!("stat {}: {e}", from.display()))?;
    let file_type = meta.file_type();
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what} {}: {e}", to.display());
    if file_type.is_symlink() {
        let target = std::fs::read_link(from).map_err(|e| fail("read link", &e))?;
        std::os::unix::fs::symlink(target, to).map_err(|e| fail("link", &e))?;
    } else if file_type.is_dir() {
        std::fs::create_dir_all(to).map_err(|e| fail("create", &e))?;
        for entry in std::fs::read_dir(from)
            .map_err(|e| fail("read", &e))?
            .flatten()
        {
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode()))
            .map_err(|e| fail("chmod", &e))?;
    } else if file_type.is_char_device() || file_type.is_block_device() {
        let kind = if file_type.is_char_device() {
            SFlag::S_IFCHR
        } else {
            SFlag::S_IFBLK
        };
        mknod(to, kind, Mode::from_bits_truncate(meta.mode()), meta.rdev())
            .map_err(|e| fail("create device", &e))?;
    } else {
        std::fs::copy(from, to).map_err(|e| fail("copy to", &e))?;
    }
    Ok(())
}

fn reexec(started: std::time::Duration) -> Result<std::convert::Infallible, String> {
    let to_cstring = |s: OsString| {
        CString::new(s.into_vec()).map_err(|_| "a NUL byte in argv or environment".to_string())
    };
    let args = std::env::args_os()
        .map(to_cstring)
        .collect::<Result<Vec<_>, _>>()?;
    let mut env = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            to_cstring(kv)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let started_ms = started.as_millis();
    env.push(to_cstring(OsString::from(format!(
        "{SWITCHED_MARKER}={started_ms}"
    )))?);
    nix::unistd::execve(c"/init", &args, &env).map_err(|e| format!("re-exec /init: {e}"))
}
