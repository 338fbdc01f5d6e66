//! From a manifest entry and its image to what the runtime needs: Docker's rules for
//! combining the image's defaults with the operator's overrides.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use berth_manifest::{
    Capability, Container, PidMode, SecurityOpt, Userns, VolumeSource, CAPABILITIES,
};
use berth_runtime::{
    Access, CgroupLimits, ContainerSpec, DeviceKind, DeviceNode, ExtraMount, IdMap, Network,
    Rootfs, RootfsSpec, Security, DEFAULT_CAPABILITIES,
};

use nix::sys::stat::SFlag;

use crate::images::PreparedImage;

/// Per-container state: the writable layer and the mount point of the root.
pub const CONTAINERS_DIR: &str = "/var/lib/berth/containers";
/// Named volumes live here, one directory each.
pub const VOLUMES_DIR: &str = "/var/lib/berth/volumes";
/// The parent cgroup of every container.
pub const CGROUP_PARENT: &str = "/sys/fs/cgroup/berth";

/// The cgroup of the container `name`.
pub fn cgroup_dir(name: &str) -> PathBuf {
    Path::new(CGROUP_PARENT).join(name)
}

/// argv as Docker computes it: an overridden entrypoint drops the image's Cmd.
pub fn command_line(config: &Container, image: &PreparedImage) -> Vec<String> {
    let image_entrypoint = image.config.entrypoint.clone().unwrap_or_default();
    let image_cmd = image.config.cmd.clone().unwrap_or_default();
    match (&config.entrypoint, &config.command) {
        (Some(entrypoint), command) => {
            let mut args = entrypoint.0.clone();
            args.extend(command.as_ref().map(|c| c.0.clone()).unwrap_or_default());
            args
        }
        (None, Some(command)) => image_entrypoint
            .into_iter()
            .chain(command.0.clone())
            .collect(),
        (None, None) => image_entrypoint.into_iter().chain(image_cmd).collect(),
    }
}

/// The image's Env with the manifest's `environment` over it, in a stable order.
pub fn environment(config: &Container, image: &PreparedImage) -> Vec<String> {
    let mut env: BTreeMap<String, String> = image
        .config
        .env
        .iter()
        .flatten()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.extend(config.environment.0.clone());
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn create_dir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("create {}: {e}", path.display()))
}

/// The host directory a volume of `config` takes its data from.
fn volume_source(source: &VolumeSource) -> PathBuf {
    match source {
        VolumeSource::HostPath(path) => PathBuf::from(path),
        VolumeSource::Named(name) => Path::new(VOLUMES_DIR).join(name),
    }
}

/// The first of `targets` that holds one of `config`'s volumes.
pub fn volume_under<'a>(config: &Container, targets: &'a [PathBuf]) -> Option<&'a PathBuf> {
    targets.iter().find(|target| {
        config
            .volumes
            .iter()
            .any(|v| volume_source(&v.source).starts_with(target))
    })
}

pub fn mounts(config: &Container) -> Result<Vec<ExtraMount>, String> {
    let mut mounts = Vec::new();
    for volume in &config.volumes {
        let source = volume_source(&volume.source);
        if !source.exists() {
            create_dir(&source)?;
        }
        mounts.push(ExtraMount::Bind {
            source,
            target: volume.target.0.clone(),
            read_only: volume.read_only,
        });
    }
    for tmpfs in &config.tmpfs {
        mounts.push(ExtraMount::Tmpfs {
            target: tmpfs.target.0.clone(),
            options: tmpfs.options.clone(),
        });
    }
    Ok(mounts)
}

/// The capability numbers a container keeps: Docker's defaults, less `cap_drop`, plus
/// `cap_add` (`ALL` in either), or everything when privileged.
pub fn capabilities(config: &Container) -> Vec<u8> {
    let all: Vec<u8> = (0..CAPABILITIES.len())
        .filter_map(|n| u8::try_from(n).ok())
        .collect();
    if config.privileged {
        return all;
    }
    let mut kept: Vec<u8> = if config.cap_drop.contains(&Capability::All) {
        Vec::new()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .copied()
            .filter(|c| !config.cap_drop.contains(&Capability::Number(*c)))
            .collect()
    };
    for added in &config.cap_add {
        match added {
            Capability::All => kept = all.clone(),
            Capability::Number(n) if !kept.contains(n) => kept.push(*n),
            Capability::Number(_) => {}
        }
    }
    kept.sort_unstable();
    kept
}

pub fn security(config: &Container) -> Security {
    let unconfined = config
        .security_opt
        .contains(&SecurityOpt::SeccompUnconfined);
    let no_new_privs = !config
        .security_opt
        .contains(&SecurityOpt::NoNewPrivileges(false));
    Security {
        capabilities: capabilities(config),
        seccomp: !config.privileged && !unconfined,
        no_new_privs: !config.privileged && no_new_privs,
        protect_kernel_paths: !config.privileged,
        read_only_root: config.read_only,
        privileged: config.privileged,
    }
}

pub fn limits(config: &Container) -> CgroupLimits {
    CgroupLimits {
        memory_max: config.mem_limit.map(|m| m.0),
        memory_and_swap_max: config.memswap_limit.map(|m| m.0),
        cpus: config.cpus.map(|c| c.0),
        cpu_shares: config.cpu_shares.map(|s| s.0),
        pids_max: config.pids_limit.map(|p| p.0),
        blkio_weight: config.blkio_weight.map(|w| w.0),
    }
}

pub fn rlimits(config: &Container) -> Vec<(String, u64, u64)> {
    let mut limits: Vec<(String, u64, u64)> = config
        .ulimits
        .0
        .iter()
        .map(|(name, limit)| (name.clone(), limit.soft, limit.hard))
        .collect();
    if !config.ulimits.0.contains_key("nofile") {
        limits.push((
            "nofile".to_string(),
            berth_runtime::DEFAULT_NOFILE.0,
            berth_runtime::DEFAULT_NOFILE.1,
        ));
    }
    limits
}

/// The host devices `config` passes in, as they are now on the host: each must exist and be
/// a character or block device. None for a privileged container, which has the host's /dev.
pub fn devices(name: &str, config: &Container) -> Result<Vec<DeviceNode>, String> {
    if config.privileged {
        return Ok(Vec::new());
    }
    config
        .devices
        .iter()
        .map(|device| {
            let host = &device.host.0;
            let fail = |why: String| format!("container {name}: device {host}: {why}");
            let stat = nix::sys::stat::stat(host.as_str()).map_err(|e| fail(e.to_string()))?;
            let kind = match SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) {
                SFlag::S_IFCHR => DeviceKind::Char,
                SFlag::S_IFBLK => DeviceKind::Block,
                _ => return Err(fail("not a character or block device".to_string())),
            };
            let access = Access::parse(&device.permissions)
                .ok_or_else(|| fail(format!("bad permissions `{}`", device.permissions)))?;
            let number = |n: u64| u32::try_from(n).map_err(|_| fail(format!("device number {n}")));
            Ok(DeviceNode {
                path: device.container.0.clone(),
                kind,
                major: number(nix::sys::stat::major(stat.st_rdev))?,
                minor: number(nix::sys::stat::minor(stat.st_rdev))?,
                mode: stat.st_mode & 0o7777,
                access,
            })
        })
        .collect()
}

/// The id map of a `userns = true` container: the manifest's `[userns]` ranges.
pub fn id_map(config: &Container, userns: &Userns) -> Option<IdMap> {
    config.userns.then(|| IdMap {
        host_uid: userns.uid_range.start,
        host_gid: userns.gid_range.start,
        count: userns.uid_range.count.min(userns.gid_range.count),
    })
}

pub fn build(
    name: &str,
    config: &Container,
    userns: &Userns,
    image: &PreparedImage,
    (network, network_mounts): (Network, Vec<ExtraMount>),
    (stdout, stderr): (OwnedFd, OwnedFd),
) -> Result<ContainerSpec, String> {
    let dir = Path::new(CONTAINERS_DIR).join(name);
    let rootfs = RootfsSpec {
        lower_dirs: image.lower_dirs.clone(),
        upper_dir: dir.join("upper"),
        work_dir: dir.join("work"),
        merged_dir: dir.join("rootfs"),
    };
    for d in [&rootfs.upper_dir, &rootfs.work_dir, &rootfs.merged_dir] {
        create_dir(d)?;
    }
    // The writable layer belongs to the container's root, whoever that is on the host; its
    // root directory is the container's `/`.
    let map = id_map(config, userns);
    let (owner_uid, owner_gid) = map.map_or((0, 0), |m| (m.host_uid, m.host_gid));
    std::os::unix::fs::chown(&rootfs.upper_dir, Some(owner_uid), Some(owner_gid))
        .map_err(|e| format!("chown {}: {e}", rootfs.upper_dir.display()))?;
    let cwd = config
        .working_dir
        .as_ref()
        .map(|w| w.0.clone())
        .or_else(|| image.config.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".to_string());
    let user = config
        .user
        .clone()
        .or_else(|| image.config.user.clone().filter(|u| !u.is_empty()));
    Ok(ContainerSpec {
        name: name.to_string(),
        rootfs: Rootfs::Overlay(rootfs),
        // The operator's mounts last, so a volume over /etc/hosts wins, as with Docker.
        mounts: network_mounts.into_iter().chain(mounts(config)?).collect(),
        args: command_line(config, image),
        env: environment(config, image),
        cwd,
        user,
        host_pid: config.pid == Some(PidMode::Host),
        userns: map,
        security: security(config),
        group_add: config.group_add.clone(),
        rlimits: rlimits(config),
        limits: limits(config),
        cgroup: Some(cgroup_dir(name)),
        devices: devices(name, config)?,
        network,
        stdout,
        stderr,
    })
}
