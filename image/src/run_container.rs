//! `berth run-container`: one container from a plain root filesystem on this host, with the
//! same runtime code and defaults as init uses in the guest. For comparing berth's runtime
//! with crun and runc on the same rootfs (bench/), and for trying a rootfs quickly.

use std::os::fd::AsFd;
use std::path::PathBuf;

use berth_runtime::{
    CgroupLimits, ContainerSpec, Rootfs, RuntimeError, Security, DEFAULT_NOFILE, DEFAULT_PATH,
};

#[derive(Debug, Clone)]
pub struct RunContainerOptions {
    pub rootfs: PathBuf,
    pub name: String,
    pub args: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunContainerError {
    #[error("cannot pass this terminal's output to the container: {0}")]
    Output(#[source] std::io::Error),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(
        "run-container needs a single-threaded process to clone from; this one has {0} threads"
    )]
    Threads(usize),
}

/// Runs the container to completion; its exit code (128 + signal when killed).
pub fn run_container(options: &RunContainerOptions) -> Result<i32, RunContainerError> {
    let stdout = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(RunContainerError::Output)?;
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(RunContainerError::Output)?;
    // Docker's default, unless this host's own hard limit is lower (raising it would need
    // CAP_SYS_RESOURCE, which a host may not give).
    let host_hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(DEFAULT_NOFILE.1, |(_, hard)| hard);
    let nofile = (
        DEFAULT_NOFILE.0.min(host_hard),
        DEFAULT_NOFILE.1.min(host_hard),
    );
    let spec = ContainerSpec {
        name: options.name.clone(),
        rootfs: Rootfs::Directory(options.rootfs.clone()),
        mounts: Vec::new(),
        args: options.args.clone(),
        env: vec![format!("PATH={DEFAULT_PATH}")],
        cwd: "/".to_string(),
        user: None,
        host_pid: false,
        userns: None,
        security: Security::default(),
        group_add: Vec::new(),
        rlimits: vec![("nofile".to_string(), nofile.0, nofile.1)],
        limits: CgroupLimits::default(),
        // The host's cgroup layout is its own business: no cgroup, as crun's
        // `--cgroup-manager=disabled`.
        cgroup: None,
        devices: Vec::new(),
        // As `crun spec`'s default: a network namespace of its own, with lo up.
        network: berth_runtime::Network::Isolated,
        stdout,
        stderr,
    };
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, |tasks| tasks.count());
    if threads != 1 {
        return Err(RunContainerError::Threads(threads));
    }
    // SAFETY: this process has one thread, checked just above; nothing here starts another.
    let spawned = unsafe { berth_runtime::spawn(&spec) }?;
    drop(spec);
    Ok(berth_runtime::wait(spawned)?)
}
