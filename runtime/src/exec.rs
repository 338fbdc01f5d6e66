//! Starting another process inside a running container (`berthctl exec`, health checks):
//! the same namespaces, cgroup, user, capabilities and seccomp filter as its first process.
//!
//! ```text
//! init ──clone──▶ joiner: moves itself into the cgroup, setns() into each namespace
//!                    └──clone(CLONE_PARENT)──▶ process: stdio, user, capabilities, seccomp, exec
//! ```
//! Joining a PID namespace only applies to children, so a second clone is needed; the
//! joiner makes it with `CLONE_PARENT`, so the process is init's own child (init reaps it and
//! sees its exit status) rather than an orphan handed to the container's first process. The
//! user namespace, when the container has one, is joined last, by the process itself: once
//! in it, nothing owned by the host's namespaces could be joined any more.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use nix::unistd::{pipe2, Pid};

use crate::child::{self, step, StepResult};
use crate::spawn::SETUP_FAILED_EXIT;
use crate::stack::CloneStack;
use crate::user::{read_account_file, resolve_groups, resolve_user};
use crate::{seccomp, security, RuntimeError, Security};

/// The joiner and the process run only setup code before exec; see spawn's stack.
const STACK_SIZE: usize = 1 << 20;

/// Namespaces joined, in this order, by their name under `/proc/PID/ns`. The cgroup
/// namespace follows the move into the cgroup; the mount namespace comes last of these
/// because joining it changes the root and working directory.
const NAMESPACES: &[(&str, CloneFlags)] = &[
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// A process to start in a running container.
#[derive(Debug)]
pub struct ExecSpec {
    /// The container's first process, as the host sees it: its namespaces are joined.
    pub container_pid: i32,
    pub args: Vec<String>,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    pub cwd: String,
    /// As [`crate::ContainerSpec::user`].
    pub user: Option<String>,
    pub group_add: Vec<String>,
    pub security: Security,
    pub rlimits: Vec<(String, u64, u64)>,
    /// The container's cgroup.
    pub cgroup: Option<PathBuf>,
    /// The container has a user namespace of its own.
    pub userns: bool,
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// stdin is a terminal, made the process' controlling terminal in a session of its own.
    pub tty: bool,
}

/// A namespace of the container that differs from init's, opened for setns().
struct Joined {
    file: std::fs::File,
    flag: CloneFlags,
}

fn open_namespaces(pid: i32, userns: bool) -> Result<(Vec<Joined>, Option<Joined>), RuntimeError> {
    let open = |name: &str, flag: CloneFlags| -> Result<Option<Joined>, RuntimeError> {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let file = std::fs::File::open(&theirs).map_err(|e| {
            RuntimeError::Setup(format!("open {theirs} (is the container running?): {e}"))
        })?;
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}")).map(|m| m.ino());
        let same = file.metadata().map(|m| m.ino()).ok() == ours.ok();
        Ok((!same).then_some(Joined { file, flag }))
    };
    let mut joined = Vec::new();
    for (name, flag) in NAMESPACES {
        joined.extend(open(name, *flag)?);
    }
    let user = if userns {
        open("user", CloneFlags::CLONE_NEWUSER)?
    } else {
        None
    };
    Ok((joined, user))
}

fn pipe(what: &'static str) -> Result<(OwnedFd, OwnedFd), RuntimeError> {
    pipe2(OFlag::O_CLOEXEC).map_err(|source| RuntimeError::Pipe { what, source })
}

/// Starts the process and returns its PID (a child of the caller) once it has exec'd, or
/// the error of the step that failed.
///
/// # Safety
///
/// The calling process must be single-threaded (init is), as for [`crate::spawn`]: the
/// children are copies of it that allocate before they exec.
pub unsafe fn exec(spec: &ExecSpec) -> Result<Pid, RuntimeError> {
    if spec.args.is_empty() {
        return Err(RuntimeError::NoCommand);
    }
    let (namespaces, user_namespace) = open_namespaces(spec.container_pid, spec.userns)?;
    let (error_read, error_write) = pipe("the error pipe")?;
    let (pid_read, pid_write) = pipe("the pid pipe")?;
    let mut stack = CloneStack::new(STACK_SIZE).map_err(RuntimeError::Clone)?;
    let joiner_main = Box::new(|| {
        joiner(
            spec,
            &namespaces,
            user_namespace.as_ref(),
            &error_write,
            &pid_write,
        )
    });
    // SAFETY: no CLONE_VM: the child works on its own copy of the address space, as after
    // fork(2). The caller is single threaded (this function's contract), so no other thread
    // holds a lock at the copy. `stack` outlives the call and is only used by the child.
    let joiner_pid = unsafe {
        nix::sched::clone(
            joiner_main,
            stack.as_mut_slice(),
            CloneFlags::empty(),
            Some(Signal::SIGCHLD as i32),
        )
    }
    .map_err(RuntimeError::Clone)?;
    drop(error_write);
    drop(pid_write);
    let mut pid_bytes = [0u8; 4];
    let got_pid = std::fs::File::from(pid_read).read_exact(&mut pid_bytes);
    let _ = waitpid(joiner_pid, None);
    let mut report = String::new();
    let _ = std::fs::File::from(error_read).read_to_string(&mut report);
    let pid = got_pid
        .ok()
        .map(|()| Pid::from_raw(i32::from_ne_bytes(pid_bytes)));
    match (pid, report.is_empty()) {
        (Some(pid), true) => Ok(pid),
        (pid, _) => {
            if let Some(pid) = pid {
                let _ = waitpid(pid, None);
            }
            Err(RuntimeError::Setup(if report.is_empty() {
                "the exec'd process did not start".to_string()
            } else {
                report
            }))
        }
    }
}

/// The joiner: enters the cgroup and namespaces, clones the process, reports its PID.
fn joiner(
    spec: &ExecSpec,
    namespaces: &[Joined],
    user_namespace: Option<&Joined>,
    errors: &OwnedFd,
    pid_out: &OwnedFd,
) -> isize {
    // Not dumpable from its first instruction: once in the container's namespaces, nothing
    // there may ptrace it or open its /proc files (its memory is a copy of init's).
    let joined = security::non_dumpable().and_then(|()| join(spec, namespaces));
    let result = joined.and_then(|()| {
        let mut stack =
            CloneStack::new(STACK_SIZE).map_err(|e| format!("map a stack for the process: {e}"))?;
        let process_main = Box::new(|| {
            let message = match setup_and_exec(spec, user_namespace) {
                Err(message) => message,
                Ok(never) => match never {},
            };
            let _ = nix::unistd::write(errors, message.as_bytes());
            SETUP_FAILED_EXIT
        });
        // SAFETY: as for the joiner: a copy of this single-threaded process' memory, with a
        // stack that outlives the call. CLONE_PARENT makes it init's child, not ours.
        unsafe {
            nix::sched::clone(
                process_main,
                stack.as_mut_slice(),
                CloneFlags::CLONE_PARENT,
                Some(Signal::SIGCHLD as i32),
            )
        }
        .map_err(|e| format!("clone the process inside the container: {e}"))
    });
    match result {
        Ok(pid) => {
            let _ = nix::unistd::write(pid_out, &pid.as_raw().to_ne_bytes());
            0
        }
        Err(message) => {
            let _ = nix::unistd::write(errors, message.as_bytes());
            SETUP_FAILED_EXIT
        }
    }
}

fn join(spec: &ExecSpec, namespaces: &[Joined]) -> StepResult {
    // Into the cgroup first, so the process counts against the container's limits from its
    // first instruction and the cgroup namespace's view is the container's.
    if let Some(cgroup) = &spec.cgroup {
        step(
            || format!("join cgroup {}", cgroup.display()),
            std::fs::write(cgroup.join("cgroup.procs"), "0"),
        )?;
    }
    for namespace in namespaces {
        step(
            || format!("join the container's {:?} namespace", namespace.flag),
            nix::sched::setns(namespace.file.as_fd(), namespace.flag),
        )?;
    }
    Ok(())
}

/// The process, inside the container's namespaces: the same steps as a container's start
/// after its root is built, in the same order and for the same reasons (see `child`).
fn setup_and_exec(
    spec: &ExecSpec,
    user_namespace: Option<&Joined>,
) -> StepResult<std::convert::Infallible> {
    // Already so by inheritance from the joiner; said again where the process starts. execve
    // of an ordinary program makes it dumpable again.
    security::non_dumpable()?;
    step(|| "start a new session".into(), nix::unistd::setsid())?;
    if spec.tty {
        // SAFETY: TIOCSCTTY takes an int argument (0: do not steal from another session);
        // the fd is a terminal we own for the duration of the call.
        let made = unsafe { nix::libc::ioctl(spec.stdin.as_raw_fd(), nix::libc::TIOCSCTTY, 0) };
        if made != 0 {
            return Err(format!(
                "make the terminal the controlling one: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    child::dup_stdio(spec.stdin.as_fd(), spec.stdout.as_fd(), spec.stderr.as_fd())?;
    let group_file = read_account_file(std::path::Path::new("/etc/group"))?;
    let mut user = resolve_user(
        spec.user.as_deref(),
        &read_account_file(std::path::Path::new("/etc/passwd"))?,
        &group_file,
    )?;
    user.additional_gids
        .extend(resolve_groups(&spec.group_add, &group_file)?);
    step(
        || format!("chdir to working directory {}", spec.cwd),
        nix::unistd::chdir(spec.cwd.as_str()),
    )?;
    security::set_rlimits(&spec.rlimits)?;
    if let Some(namespace) = user_namespace {
        step(
            || "join the container's user namespace".into(),
            nix::sched::setns(namespace.file.as_fd(), namespace.flag),
        )?;
    }
    let security = &spec.security;
    security::limit_bounding_set(&security.capabilities)?;
    security::keep_capabilities_across_setuid(true)?;
    child::drop_privileges(&user)?;
    security::set_capabilities(&security.capabilities)?;
    if security.no_new_privs {
        security::no_new_privileges()?;
    }
    child::reset_signals()?;
    if security.seccomp {
        seccomp::install(&seccomp::default_profile(&security.capabilities)?)?;
    }
    child::exec_command(&spec.args, &spec.env, &user)
}
