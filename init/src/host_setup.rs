//! The host's identity and kernel settings from the manifest: `/etc/hosts`, `[boot] sysctl`,
//! and `/etc/machine-id`, kept across boots when `/var/lib/berth` is persistent storage.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use berth_manifest::Manifest;

use crate::event::Event;

/// cgroup v2's root, mounted by init.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The host's own processes (init, netd): protected memory, so that a container at its
/// limit never starves them.
const SYSTEM_CGROUP: &str = "/sys/fs/cgroup/system";
/// Memory the host's own processes keep whatever the containers do (memory.min).
const SYSTEM_MEMORY_RESERVE: &str = "16M";

/// Moves init into its protected cgroup and lets container cgroups use every controller.
pub fn cgroups() {
    let root = Path::new(CGROUP_ROOT);
    let delegated = berth_runtime::delegate_controllers(root);
    let system = Path::new(SYSTEM_CGROUP);
    let setup = std::fs::create_dir_all(system)
        .and_then(|()| std::fs::write(system.join("memory.min"), SYSTEM_MEMORY_RESERVE))
        .and_then(|()| std::fs::write(system.join("cgroup.procs"), "1"));
    if let Err(err) = setup {
        log::warn!("the host's memory reserve is not in place: {err}");
    }
    let containers = Path::new(crate::supervisor::CGROUP_PARENT);
    if let Err(err) = std::fs::create_dir_all(containers) {
        log::warn!("cannot create {}: {err}", containers.display());
    }
    let delegated_below = berth_runtime::delegate_controllers(containers);
    log::info!(
        "cgroups: controllers {} for containers, {SYSTEM_MEMORY_RESERVE} reserved for the host",
        if delegated_below.is_empty() {
            delegated.join(" ")
        } else {
            delegated_below.join(" ")
        }
    );
}

/// The machine-id's persistent copy.
const PERSISTENT_MACHINE_ID: &str = "/var/lib/berth/machine-id";
const MACHINE_ID: &str = "/etc/machine-id";

fn write(path: &str, contents: &str) -> Result<(), String> {
    if let Some(parent) = Path::new(path).parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    std::fs::write(path, contents).map_err(|e| format!("write {path}: {e}"))
}

pub fn write_hosts(hostname: &str) {
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    );
    if let Err(err) =
        write("/etc/hosts", &hosts).and_then(|()| write("/etc/hostname", &format!("{hostname}\n")))
    {
        log::error!("{err}");
    }
}

pub fn apply_sysctls(manifest: &Manifest) {
    for (key, value) in &manifest.boot.sysctl {
        match std::fs::write(key.proc_path(), &value.0) {
            Ok(()) => log::info!("sysctl {} = {}", key.0, value.0),
            Err(err) => Event::new("sysctl-failed")
                .field("key", &key.0)
                .field("value", &value.0)
                .field("error", err)
                .emit(),
        }
    }
}

fn is_machine_id(text: &str) -> bool {
    text.len() == 32
        && text
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn new_machine_id() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    let mut random =
        std::fs::File::open("/dev/urandom").map_err(|e| format!("open /dev/urandom: {e}"))?;
    std::io::Read::read_exact(&mut random, &mut bytes)
        .map_err(|e| format!("read /dev/urandom: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// True when `/var/lib/berth` is on another filesystem than the (tmpfs) root: a mount.
fn state_is_persistent() -> bool {
    let device = |path: &str| std::fs::metadata(path).map(|m| m.dev()).ok();
    matches!((device("/var/lib/berth"), device("/")), (Some(a), Some(b)) if a != b)
}

/// Reuses the persistent machine-id or makes one, and writes `/etc/machine-id`.
pub fn machine_id() {
    let persistent = state_is_persistent();
    let kept = std::fs::read_to_string(PERSISTENT_MACHINE_ID)
        .ok()
        .map(|id| id.trim().to_string())
        .filter(|id| is_machine_id(id));
    let (id, new) = match kept {
        Some(id) => (id, false),
        None => match new_machine_id() {
            Ok(id) => (id, true),
            Err(err) => {
                log::error!("no machine-id: {err}");
                return;
            }
        },
    };
    let line = format!("{id}\n");
    if new {
        if let Err(err) = write(PERSISTENT_MACHINE_ID, &line) {
            log::warn!("machine-id not kept: {err}");
        }
    }
    if let Err(err) = write(MACHINE_ID, &line) {
        log::error!("{err}");
    }
    Event::new("machine-id")
        .field("id", &id)
        .field("new", new)
        .field("persistent", persistent)
        .emit();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_32_lowercase_hex() {
        assert!(is_machine_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_machine_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_machine_id("0123"));
    }
}
