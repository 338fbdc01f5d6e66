//! The parent half of a container start, run by PID 1.

use std::io::Read;
use std::os::fd::OwnedFd;

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use nix::unistd::{pipe2, Pid};

use crate::stack::CloneStack;
use crate::{child, device_filter, ContainerSpec, IdMap, Network, RuntimeError};

/// Stack of the cloned child until it execs. It runs the setup steps, which format messages
/// and read small files; 1 MiB leaves room, untouched pages are never allocated, and a guard
/// page below it stops an overflow (see [`CloneStack`]).
const CHILD_STACK_SIZE: usize = 1 << 20;

/// The namespaces every container gets. The cgroup namespace is entered by the child itself,
/// once the parent has moved it into its cgroup, so that the container sees that cgroup as
/// its root.
fn namespaces(spec: &ContainerSpec) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if !spec.host_pid {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    if matches!(spec.network, Network::Isolated | Network::Bridge(_)) {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

/// A started container process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    /// The process' PID as the host sees it.
    pub pid: Pid,
}

fn pipe(what: &'static str) -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    pipe2(OFlag::O_CLOEXEC).map_err(|source| RuntimeError::Pipe { what, source })
}

/// Starts the container and returns once its process has exec'd its command, or with the
/// error of the step that failed (the child is reaped then).
///
/// # Safety
///
/// The calling process must be single-threaded (init is). The child is a copy of it made by
/// `clone` without `CLONE_VM`, as by `fork`, and it allocates and formats before it execs: a
/// lock another thread held at the copy (the allocator's) would be held in the child for
/// ever.
pub unsafe fn spawn(spec: &ContainerSpec) -> Result<Spawned, RuntimeError> {
    if spec.args.is_empty() {
        return Err(RuntimeError::NoCommand);
    }
    let (go_read, go_write) = pipe("the start pipe")?;
    let (error_read, error_write) = pipe("the error pipe")?;
    // The child says here when it has entered its user namespace and waits for the maps.
    let (userns_read, userns_write) = pipe("the user namespace pipe")?;
    // Opened here, while the other container surely runs; the child enters it.
    let join = match spec.network {
        Network::Join(pid) => {
            let path = format!("/proc/{pid}/ns/net");
            Some(std::fs::File::open(&path).map_err(|e| {
                RuntimeError::Network(format!("open {path} (is the container running?): {e}"))
            })?)
        }
        _ => None,
    };
    let mut stack = CloneStack::new(CHILD_STACK_SIZE).map_err(RuntimeError::Clone)?;
    let child_main =
        Box::new(|| child::run(spec, join.as_ref(), &go_read, &error_write, &userns_write));
    // SAFETY: without CLONE_VM the child gets its own copy of the address space, as after
    // fork(2), so nothing it does touches the parent's memory. The caller is single
    // threaded (this function's contract), so no lock can be held by another thread at the
    // time of the copy and the child may allocate. `stack` outlives the call and is only
    // used by the child.
    let pid = unsafe {
        nix::sched::clone(
            child_main,
            stack.as_mut_slice(),
            namespaces(spec),
            Some(Signal::SIGCHLD as i32),
        )
    }
    .map_err(RuntimeError::Clone)?;
    drop(go_read);
    drop(error_write);
    drop(userns_write);

    let abort = |error: RuntimeError| {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        error
    };
    if let Some(cgroup) = &spec.cgroup {
        let cgroup_error = |source| RuntimeError::Cgroup {
            cgroup: cgroup.clone(),
            source,
        };
        // Limits and the device filter first, so they hold from the process' first
        // instruction in the cgroup.
        std::fs::create_dir_all(cgroup)
            .and_then(|()| spec.limits.apply(cgroup).map_err(std::io::Error::other))
            .map_err(|source| abort(cgroup_error(source)))?;
        if spec.security.privileged {
            device_filter::detach(cgroup).map_err(abort)?;
        } else {
            device_filter::attach(cgroup, &spec.devices).map_err(abort)?;
        }
        std::fs::write(cgroup.join("cgroup.procs"), pid.as_raw().to_string())
            .map_err(|source| abort(cgroup_error(source)))?;
    }
    if let Network::Bridge(attachment) = &spec.network {
        berth_container_net::host::attach(attachment, pid.as_raw())
            .map_err(|e| abort(RuntimeError::Network(e.to_string())))?;
    }
    // Whether or not this write works, the child learns of it: it reads a byte or EOF.
    let _ = nix::unistd::write(&go_write, b"g");
    if let Some(map) = &spec.userns {
        // One byte when the child is in its new user namespace; EOF if it failed before.
        let mut byte = [0u8; 1];
        if nix::unistd::read(&userns_read, &mut byte) == Ok(1) {
            write_id_maps(pid, map).map_err(abort)?;
            let _ = nix::unistd::write(&go_write, b"m");
        }
    }
    drop(go_write);

    let mut report = String::new();
    let _ = std::fs::File::from(error_read).read_to_string(&mut report);
    if !report.is_empty() {
        let _ = waitpid(pid, None);
        return Err(RuntimeError::Setup(report));
    }
    Ok(Spawned { pid })
}

/// Maps container ids `0..count` onto the host range. Written by the (privileged) parent, so
/// the child keeps setgroups(2).
fn write_id_maps(pid: nix::unistd::Pid, map: &IdMap) -> Result<(), RuntimeError> {
    for (file, host) in [("uid_map", map.host_uid), ("gid_map", map.host_gid)] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, format!("0 {host} {}\n", map.count))
            .map_err(|source| RuntimeError::IdMap { path, source })?;
    }
    Ok(())
}

/// Waits for a container started by [`spawn`] and returns Docker's exit code for it (its own,
/// or 128 + the signal that ended it). For callers that run one container, not for init,
/// which reaps through its event loop.
pub fn wait(spawned: Spawned) -> Result<i32, RuntimeError> {
    loop {
        match waitpid(spawned.pid, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(nix::sys::wait::WaitStatus::Signaled(_, signal, _)) => {
                return Ok(128 + signal as i32)
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(err) => return Err(RuntimeError::Wait(err)),
        }
    }
}

/// The exit code of a container whose setup failed, as shells use for "command not found".
pub(crate) const SETUP_FAILED_EXIT: isize = 127;
