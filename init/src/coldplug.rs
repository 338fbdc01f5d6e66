//! Drivers by hardware, with no udev: at boot every device's `modalias` is matched against
//! `modules.alias` and the matching modules are loaded (rounds repeat while loading a driver
//! reveals more devices: virtio_pci, then virtio_net); afterwards the kernel's uevent netlink
//! socket reports devices that appear later, and their drivers are loaded as they come.

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use crate::event::Event;
use crate::kmod::{KernelLoader, ModuleLoading};

/// Where each bus lists its devices.
const SYS_BUS: &str = "/sys/bus";
/// Coldplug rounds at most: each round may reveal devices behind the drivers it loaded.
const MAX_ROUNDS: usize = 8;
/// The kernel's uevent multicast group.
const KERNEL_UEVENT_GROUP: u32 = 1;
/// Largest uevent message.
const UEVENT_BUFFER: usize = 8192;

/// Every device's modalias, as sysfs shows them now.
fn current_modaliases() -> Vec<String> {
    let Ok(buses) = std::fs::read_dir(SYS_BUS) else {
        return Vec::new();
    };
    let mut aliases = Vec::new();
    for bus in buses.flatten() {
        let Ok(devices) = std::fs::read_dir(bus.path().join("devices")) else {
            continue;
        };
        for device in devices.flatten() {
            if let Ok(alias) = std::fs::read_to_string(device.path().join("modalias")) {
                let alias = alias.trim();
                if !alias.is_empty() {
                    aliases.push(alias.to_string());
                }
            }
        }
    }
    aliases.sort();
    aliases.dedup();
    aliases
}

/// The kernel's uevent socket, non-blocking.
fn open_uevent_socket() -> nix::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_UEVENT_GROUP))?;
    Ok(fd)
}

/// The `MODALIAS=` of an `add` uevent (`add@/devices/...\0ACTION=add\0...MODALIAS=...\0`).
pub fn modalias_of_add_event(message: &[u8]) -> Option<String> {
    let mut fields = message.split(|b| *b == 0).map(String::from_utf8_lossy);
    let header = fields.next()?;
    if !header.starts_with("add@") {
        return None;
    }
    fields.find_map(|field| field.strip_prefix("MODALIAS=").map(str::to_string))
}

#[derive(Debug)]
pub struct Coldplug {
    loading: ModuleLoading<KernelLoader>,
    uevents: Option<OwnedFd>,
}

impl Coldplug {
    /// Opens the uevent socket first, so that no device added during the scan is missed.
    pub fn new(loading: ModuleLoading<KernelLoader>) -> Coldplug {
        let uevents = match open_uevent_socket() {
            Ok(fd) => Some(fd),
            Err(err) => {
                log::warn!("no uevent socket, devices added after boot get no driver: {err}");
                None
            }
        };
        Coldplug { loading, uevents }
    }

    pub fn loading(&mut self) -> &mut ModuleLoading<KernelLoader> {
        &mut self.loading
    }

    /// Loads drivers for every device present, round after round until nothing new loads.
    pub fn scan(&mut self) {
        let started = Instant::now();
        let mut total = 0;
        let mut rounds = 0;
        let mut scanning = std::time::Duration::ZERO;
        // A device already matched needs no second look: its drivers loaded (or failed) in
        // an earlier round, and matching is every alias pattern of every shipped module.
        let mut matched = HashSet::new();
        while rounds < MAX_ROUNDS {
            rounds += 1;
            let scan_started = Instant::now();
            let new_aliases: Vec<String> = current_modaliases()
                .into_iter()
                .filter(|alias| matched.insert(alias.clone()))
                .collect();
            scanning += scan_started.elapsed();
            let loaded: usize = new_aliases
                .iter()
                .map(|alias| self.loading.load_for_alias(alias))
                .sum();
            total += loaded;
            if loaded == 0 {
                break;
            }
        }
        Event::new("coldplug")
            .field("modules", total)
            .field("rounds", rounds)
            .field("devices", matched.len())
            .field("duration_ms", started.elapsed().as_millis())
            .field("scan_ms", scanning.as_millis())
            .emit();
    }

    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.uevents.as_ref().map(AsFd::as_fd)
    }

    /// Reads pending uevents and loads the drivers of added devices.
    pub fn on_uevents(&mut self) {
        let Some(fd) = self.uevents.as_ref() else {
            return;
        };
        let mut buf = vec![0u8; UEVENT_BUFFER];
        let mut aliases = Vec::new();
        while let Ok(n) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            if n == 0 {
                break;
            }
            aliases.extend(modalias_of_add_event(buf.get(..n).unwrap_or_default()));
        }
        for alias in aliases {
            self.loading.load_for_alias(&alias);
        }
    }
}

/// Loads the module of filesystem `fstype` (alias `fs-<type>`) unless the kernel already
/// knows it: there is no `/sbin/modprobe` for the kernel to ask.
pub fn load_filesystem(loading: &mut ModuleLoading<KernelLoader>, fstype: &str) {
    let known = std::fs::read_to_string("/proc/filesystems").is_ok_and(|known| {
        known
            .lines()
            .any(|l| l.split_whitespace().last() == Some(fstype))
    });
    if !known {
        loading.load_for_alias(&format!("fs-{fstype}"));
    }
    // FAT names files through code pages the kernel would load on demand with modprobe: the
    // mount fails with EINVAL without them.
    if fstype == "vfat" {
        for nls in FAT_CODEPAGES {
            if let Err(err) = loading.load(nls) {
                log::warn!("module {nls}: {err}");
            }
        }
    }
}

/// The code page and character sets a vfat mount uses by default (Debian's kernels:
/// `FAT_DEFAULT_CODEPAGE=437`, `FAT_DEFAULT_IOCHARSET="ascii"`, `FAT_DEFAULT_UTF8=y`).
const FAT_CODEPAGES: &[&str] = &["nls_cp437", "nls_ascii", "nls_utf8"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_modalias_of_add_events_only() {
        let add = b"add@/devices/pci0000:00/0000:00:02.0/virtio0\0ACTION=add\0SUBSYSTEM=virtio\0MODALIAS=virtio:d00000001v00001AF4\0SEQNUM=1\0";
        assert_eq!(
            modalias_of_add_event(add).as_deref(),
            Some("virtio:d00000001v00001AF4")
        );
        let remove = b"remove@/devices/x\0ACTION=remove\0MODALIAS=virtio:d1\0";
        assert_eq!(modalias_of_add_event(remove), None);
        assert_eq!(modalias_of_add_event(b"add@/devices/y\0ACTION=add\0"), None);
    }
}
