//! berth's container runtime: starts one process in its own namespaces on an overlay root.
//!
//! [`spawn`] is called by PID 1 (and, later, by `berth run-container` on a build host). It
//! clones a child into new mount, PID, UTS and IPC namespaces; the parent places the child in
//! its cgroup and lets it go on; the child builds its root filesystem and execs. The child's
//! setup reads top to bottom in [`child::setup_and_exec`], one helper per step. A setup error
//! travels back to the parent over a close-on-exec pipe, so `spawn` returns it instead of
//! leaving a silent exit code 127.

mod cgroup;
mod child;
mod device_filter;
mod devices;
mod exec;
mod inroot;
mod seccomp;
mod security;
mod spawn;
mod stack;
mod user;

pub use cgroup::{delegate_controllers, oom_kills, CgroupLimits, CONTROLLERS};
pub use device_filter::{
    rules as device_rules, Access, DeviceKind, DeviceNode, DeviceRule, DEFAULT_RULES,
};
pub use exec::{exec, ExecSpec};
pub use security::{MASKED_PATHS, READONLY_PATHS};
pub use spawn::{spawn, wait, Spawned};
pub use user::{read_regular_file, resolve_user, FollowLinks, ResolvedUser};

use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// The container's root filesystem: an overlay of image layers under a writable directory.
#[derive(Debug, Clone)]
pub struct RootfsSpec {
    /// Image layer directories, topmost first (overlayfs `lowerdir` order).
    pub lower_dirs: Vec<PathBuf>,
    /// The container's own writable layer.
    pub upper_dir: PathBuf,
    /// overlayfs' scratch directory, on the same filesystem as `upper_dir`.
    pub work_dir: PathBuf,
    /// Where the overlay is mounted (inside the container's mount namespace only).
    pub merged_dir: PathBuf,
}

/// Where the container's root comes from.
#[derive(Debug, Clone)]
pub enum Rootfs {
    /// Image layers under a writable layer: what init runs.
    Overlay(RootfsSpec),
    /// A directory used as it is (`berth run-container --rootfs`, as crun and runc take a
    /// bundle's rootfs); it is bind-mounted onto itself so that it can be pivoted to.
    Directory(PathBuf),
}

impl Rootfs {
    /// Where the root is mounted before the pivot.
    pub fn root(&self) -> &std::path::Path {
        match self {
            Rootfs::Overlay(overlay) => &overlay.merged_dir,
            Rootfs::Directory(dir) => dir,
        }
    }
}

/// A mount added on top of the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraMount {
    Bind {
        source: PathBuf,
        target: String,
        read_only: bool,
    },
    Tmpfs {
        target: String,
        options: String,
    },
}

/// Everything needed to start one container process.
#[derive(Debug)]
pub struct ContainerSpec {
    /// The container's name, also its hostname.
    pub name: String,
    pub rootfs: Rootfs,
    pub mounts: Vec<ExtraMount>,
    /// argv; `args[0]` is looked up in the container's `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    /// Working directory inside the container (created if missing, as Docker does).
    pub cwd: String,
    /// `uid[:gid]` or names from the container's `/etc/passwd` and `/etc/group`; root when
    /// `None`.
    pub user: Option<String>,
    /// Share the host's PID namespace instead of getting a new one.
    pub host_pid: bool,
    /// Run in a user namespace whose root is this unprivileged host range.
    pub userns: Option<IdMap>,
    pub security: Security,
    /// Supplementary groups beyond the user's own (names or numbers).
    pub group_add: Vec<String>,
    /// (rlimit name as Compose writes it, soft, hard).
    pub rlimits: Vec<(String, u64, u64)>,
    pub limits: CgroupLimits,
    /// The cgroup directory the process is placed in before it runs anything. Unless the
    /// container is privileged, a device program is attached to it first: only the default
    /// devices and `devices` can be opened.
    pub cgroup: Option<PathBuf>,
    /// Host devices passed in (ignored when privileged: the host's `/dev` is there).
    pub devices: Vec<DeviceNode>,
    pub network: Network,
    /// Where the container's stdout and stderr go (write ends; stdin is `/dev/null`).
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Which network namespace the container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// The host's.
    Host,
    /// A new one with `lo` only.
    Isolated,
    /// A new one whose `eth0` is a veth on the host's bridge.
    Bridge(berth_container_net::Attachment),
    /// The one process `pid` (another container) is in.
    Join(i32),
}

/// A user namespace's mapping: container ids `0..count` are host ids `host_uid..` and
/// `host_gid..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub host_uid: u32,
    pub host_gid: u32,
    pub count: u32,
}

/// What the container's process may do. `Security::default()` is Docker's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    /// Capability numbers kept in the bounding, permitted, effective and inheritable sets.
    pub capabilities: Vec<u8>,
    /// Docker's default seccomp profile (adjusted for the capabilities held).
    pub seccomp: bool,
    pub no_new_privs: bool,
    /// runc's masked and read-only paths of /proc and /sys.
    pub protect_kernel_paths: bool,
    pub read_only_root: bool,
    /// The host's devices and a writable /sys.
    pub privileged: bool,
}

/// Docker's default `PATH` for a container whose image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Docker's default open-files limit (soft, hard), as Docker 25 and later set it.
pub const DEFAULT_NOFILE: (u64, u64) = (1024, 524_288);

/// Docker's default capability set, by number.
pub const DEFAULT_CAPABILITIES: &[u8] = &[0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

impl Default for Security {
    fn default() -> Self {
        Security {
            capabilities: DEFAULT_CAPABILITIES.to_vec(),
            seccomp: true,
            no_new_privs: true,
            protect_kernel_paths: true,
            read_only_root: false,
            privileged: false,
        }
    }
}

/// A failed container start, naming the step and what it acted on.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the container has no command: the image sets no Entrypoint or Cmd and the manifest no `command`")]
    NoCommand,
    #[error("cannot create {what}: {source}")]
    Pipe {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("cannot clone the container process: {0}")]
    Clone(#[source] nix::Error),
    #[error("cannot wait for the container process: {0}")]
    Wait(#[source] nix::Error),
    #[error("cannot write the user namespace map {path}: {source}")]
    IdMap {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot place the container in cgroup {}: {source}", cgroup.display())]
    Cgroup {
        cgroup: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {step} the device filter of cgroup {}: {source}{}", cgroup.display(), verifier_log(log))]
    DeviceFilter {
        cgroup: PathBuf,
        /// `generate`, `load`, `open` (the cgroup) or `attach`.
        step: &'static str,
        #[source]
        source: nix::Error,
        /// The verifier's log when the load failed.
        log: String,
    },
    /// A step inside the new namespaces failed; the child reported it before exiting.
    #[error("cannot wire the container to its network: {0}")]
    Network(String),
    #[error("{0}")]
    Setup(String),
}

fn verifier_log(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!("; verifier log:\n{log}")
    }
}
