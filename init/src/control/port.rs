//! The virtio-serial port `org.berth.control`, when QEMU gives the guest one: found by name
//! under `/sys/class/virtio-ports` (no udev names it), opened non-blocking with O_ASYNC so
//! the driver's SIGIO says when the host side connects or goes away.
//!
//! Why SIGIO: while no host is connected the port polls readable and hung up at once, so it
//! cannot sit in init's poll set; the driver signals each change of the host's connection.

use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

pub const SYS_CLASS_VIRTIO_PORTS: &str = "/sys/class/virtio-ports";

/// The device node of the port named `name`, if the guest has one.
pub fn find(sys: &Path, name: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir(sys).ok()?.flatten().find_map(|entry| {
        let port_name = std::fs::read_to_string(entry.path().join("name")).ok()?;
        (port_name.trim() == name).then(|| Path::new("/dev").join(entry.file_name()))
    })
}

/// Opens the port for init: non-blocking, SIGIO to init on every change of the host's side.
pub fn open(node: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
        .open(node)?;
    // SAFETY: F_SETOWN takes a PID as its integer argument and touches no memory of ours;
    // the fd is open for the duration of the call.
    let owned = unsafe {
        nix::libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            nix::libc::F_SETOWN,
            nix::unistd::getpid().as_raw(),
        )
    };
    if owned < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let flags = fcntl(&file, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    fcntl(
        &file,
        FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_ASYNC),
    )
    .map_err(std::io::Error::from)?;
    Ok(file)
}

/// Whether a host is connected to the port now (the driver reports POLLHUP while none is).
pub fn host_connected(file: &std::fs::File) -> bool {
    let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => !fds
            .first()
            .and_then(PollFd::revents)
            .is_some_and(|r| r.contains(PollFlags::POLLHUP)),
        Err(_) => false,
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_by_its_name() {
        let sys = std::env::temp_dir().join(format!("berth-ports-{}", std::process::id()));
        for (dir, name) in [
            ("vport1p1", "org.qemu.guest_agent.0"),
            ("vport2p1", "org.berth.control"),
        ] {
            std::fs::create_dir_all(sys.join(dir)).unwrap();
            std::fs::write(sys.join(dir).join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(
            find(&sys, "org.berth.control"),
            Some(Path::new("/dev/vport2p1").to_path_buf())
        );
        assert_eq!(find(&sys, "nope"), None);
        std::fs::remove_dir_all(&sys).unwrap();
    }
}
