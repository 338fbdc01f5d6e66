//! Moving off the initramfs: the kernel unpacks the initrd into `rootfs`, the root of the
//! mount tree, and `pivot_root(2)` refuses a process whose root has no parent mount; every
//! container start pivots. init therefore binds rootfs onto a directory of itself and moves
//! that bind mount onto `/` (`MS_MOVE` + `chroot`, as `switch_root` does): the root is then
//! a mount whose parent is rootfs, holding the same files.
//!
//! LinuxKit's init copies the tree into a fresh tmpfs instead. That held the initrd twice
//! while copying, cost 0.4 s (x86_64) to 0.7 s (aarch64) of boot under TCG, and needed a
//! re-exec; the bind costs a few system calls and no memory.

use std::path::Path;

use nix::mount::{mount, MsFlags};

/// Where rootfs is bound before the bind moves onto `/`.
const NEW_ROOT: &str = "/.berth-root";

/// Makes a bind mount of rootfs the root. On failure init carries on from rootfs itself,
/// where containers cannot start; the error says what failed.
pub fn switch_off_rootfs() -> Result<(), String> {
    let new_root = Path::new(NEW_ROOT);
    std::fs::create_dir_all(new_root).map_err(|e| format!("create {NEW_ROOT}: {e}"))?;
    mount(
        Some("/"),
        new_root,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind / on {NEW_ROOT}: {e}"))?;
    nix::unistd::chdir(new_root).map_err(|e| format!("chdir {NEW_ROOT}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("move {NEW_ROOT} onto /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot into the new root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    // The directory is empty in the new root (the bind does not nest into itself).
    if let Err(err) = std::fs::remove_dir(new_root) {
        log::debug!("root switch: {NEW_ROOT} stays: {err}");
    }
    Ok(())
}
