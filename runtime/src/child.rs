//! The child half of a container start: runs inside the new namespaces, builds the root
//! filesystem, drops to the container's user and execs. One helper per step, in order.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{chdir, execve, pivot_root, setgid, setgroups, sethostname, setuid, Gid, Uid};

use crate::spawn::SETUP_FAILED_EXIT;
use crate::user::{read_account_file, resolve_groups, resolve_user, ResolvedUser};
use crate::{
    devices, inroot, seccomp, security, ContainerSpec, ExtraMount, Network, Rootfs, RootfsSpec,
};

pub(crate) type StepResult<T = ()> = Result<T, String>;

pub(crate) fn step<T, E: std::fmt::Display>(
    what: impl FnOnce() -> String,
    result: Result<T, E>,
) -> StepResult<T> {
    result.map_err(|err| format!("{}: {err}", what()))
}

/// Entry point of the cloned child. Returns only on failure, after reporting it.
pub(crate) fn run(
    spec: &ContainerSpec,
    join: Option<&std::fs::File>,
    go: &OwnedFd,
    errors: &OwnedFd,
    userns: &OwnedFd,
) -> isize {
    let message = match setup_and_exec(spec, join, go, userns) {
        Err(message) => message,
        Ok(never) => match never {},
    };
    let _ = nix::unistd::write(errors, message.as_bytes());
    SETUP_FAILED_EXIT
}

fn setup_and_exec(
    spec: &ContainerSpec,
    join: Option<&std::fs::File>,
    go: &OwnedFd,
    userns: &OwnedFd,
) -> StepResult<Infallible> {
    // The parent moves us into our cgroup first, so that the cgroup namespace entered next is
    // rooted there, and wires a bridged namespace's veth before it lets us go.
    // Not dumpable until exec (which makes an ordinary program dumpable again): the
    // container's other processes, once they run, cannot ptrace it or read its /proc files.
    security::non_dumpable()?;
    wait_for_parent(go)?;
    // A session (and process group) of its own: `kill(0, sig)` or `kill(-pgid, sig)` from
    // the container must reach its own processes only, never PID 1's group (init, netd, the
    // other containers' first processes).
    step(|| "start a new session".into(), nix::unistd::setsid())?;
    enter_network(&spec.network, join)?;
    step(
        || "enter a new cgroup namespace".into(),
        unshare(CloneFlags::CLONE_NEWCGROUP),
    )?;
    redirect_stdio(spec)?;
    // Private propagation before any mount, so nothing mounted below leaks to the host.
    step(
        || "make mounts private".into(),
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
    )?;
    mount_rootfs(&spec.rootfs)?;
    let root_path = spec.rootfs.root();
    // Every target below is resolved inside the root: the image's symlinks cannot lead out.
    let root = inroot::open_root(root_path)?;
    mount_extra(&root, &spec.mounts)?;
    // /proc, /sys and /dev go in after the operator's mounts so that none can shadow them.
    devices::mount_kernel_filesystems(&root, spec.security.privileged, &spec.devices)?;
    drop(root);
    pivot_into(root_path)?;
    step(
        || format!("set hostname {}", spec.name),
        sethostname(&spec.name),
    )?;
    let security = &spec.security;
    if security.protect_kernel_paths {
        inroot::check_dev_null(Path::new("/dev/null"))?;
        security::mask_and_protect_paths()?;
    }
    // The user is looked up in the container's own /etc/passwd, so after pivot_root.
    let group_file = read_account_file(Path::new("/etc/group"))?;
    let mut user = resolve_user(
        spec.user.as_deref(),
        &read_account_file(Path::new("/etc/passwd"))?,
        &group_file,
    )?;
    user.additional_gids
        .extend(resolve_groups(&spec.group_add, &group_file)?);
    // Created as root, before the root goes read-only and the privileges go.
    enter_working_dir(&spec.cwd)?;
    if security.read_only_root {
        security::read_only_root()?;
    }
    security::set_rlimits(&spec.rlimits)?;
    // Every mount is in place: from here on the process may lose its say over them.
    if spec.userns.is_some() {
        enter_user_namespace(go, userns)?;
    }
    // The bounding set shrinks while CAP_SETPCAP is still held; the other sets are set after
    // the uid change, which keep-caps makes survive.
    security::limit_bounding_set(&security.capabilities)?;
    security::keep_capabilities_across_setuid(true)?;
    drop_privileges(&user)?;
    security::set_capabilities(&security.capabilities)?;
    if security.no_new_privs {
        security::no_new_privileges()?;
    }
    reset_signals()?;
    // Last: the filter may refuse what the steps above needed.
    if security.seccomp {
        seccomp::install(&seccomp::default_profile(&security.capabilities)?)?;
    }
    exec_command(&spec.args, &spec.env, &user)
}

/// Configures the network namespace from inside, while the process still has every
/// capability in it: `lo` up, and a bridged container's `eth0`.
fn enter_network(network: &Network, join: Option<&std::fs::File>) -> StepResult {
    use berth_container_net::inside;
    match network {
        Network::Host => Ok(()),
        Network::Isolated => inside::loopback_up(),
        Network::Bridge(attachment) => {
            inside::loopback_up()?;
            inside::configure(attachment)
        }
        Network::Join(pid) => match join {
            Some(netns) => step(
                || format!("join the network namespace of process {pid}"),
                nix::sched::setns(netns, CloneFlags::CLONE_NEWNET),
            ),
            None => Err(format!("no network namespace of process {pid} to join")),
        },
    }
}

/// Enters a new user namespace and becomes its root once the parent has written the id maps:
/// container root is then an unprivileged host uid.
fn enter_user_namespace(go: &OwnedFd, userns: &OwnedFd) -> StepResult {
    step(
        || "enter a new user namespace".into(),
        unshare(CloneFlags::CLONE_NEWUSER),
    )?;
    step(
        || "ask for the id maps".into(),
        nix::unistd::write(userns, b"u"),
    )?;
    let mut byte = [0u8; 1];
    match nix::unistd::read(go.as_fd(), &mut byte) {
        Ok(1) => {}
        _ => return Err("the parent did not write the user namespace's id maps".into()),
    }
    step(
        || "become root of the user namespace (gid)".into(),
        setgid(Gid::from_raw(0)),
    )?;
    step(
        || "become root of the user namespace (uid)".into(),
        setuid(Uid::from_raw(0)),
    )
}

fn wait_for_parent(go: &OwnedFd) -> StepResult {
    let mut byte = [0u8; 1];
    match nix::unistd::read(go.as_fd(), &mut byte) {
        Ok(1) => Ok(()),
        _ => Err("the parent did not let the container start (cgroup placement failed)".into()),
    }
}

fn redirect_stdio(spec: &ContainerSpec) -> StepResult {
    let null = step(|| "open /dev/null".into(), std::fs::File::open("/dev/null"))?;
    dup_stdio(null.as_fd(), spec.stdout.as_fd(), spec.stderr.as_fd())
}

/// Makes the three fds the process' stdin, stdout and stderr.
pub(crate) fn dup_stdio(
    stdin: std::os::fd::BorrowedFd<'_>,
    stdout: std::os::fd::BorrowedFd<'_>,
    stderr: std::os::fd::BorrowedFd<'_>,
) -> StepResult {
    step(|| "redirect stdin".into(), nix::unistd::dup2_stdin(stdin))?;
    step(
        || "redirect stdout".into(),
        nix::unistd::dup2_stdout(stdout),
    )?;
    step(
        || "redirect stderr".into(),
        nix::unistd::dup2_stderr(stderr),
    )
}

fn mount_rootfs(rootfs: &Rootfs) -> StepResult {
    match rootfs {
        Rootfs::Overlay(overlay) => mount_overlay(overlay),
        Rootfs::Directory(dir) => step(
            || format!("bind {} onto itself", dir.display()),
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            ),
        ),
    }
}

fn mount_overlay(rootfs: &RootfsSpec) -> StepResult {
    let lower = rootfs
        .lower_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let options = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        rootfs.upper_dir.display(),
        rootfs.work_dir.display()
    );
    step(
        || {
            format!(
                "mount overlay on {} ({options})",
                rootfs.merged_dir.display()
            )
        },
        mount(
            Some("overlay"),
            &rootfs.merged_dir,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        ),
    )
}

/// The operator's volumes and tmpfs mounts, each target resolved inside the root.
fn mount_extra(root: &pathrs::Root, mounts: &[ExtraMount]) -> StepResult {
    for extra in mounts {
        match extra {
            ExtraMount::Bind {
                source,
                target,
                read_only,
            } => {
                let handle = if source.is_dir() {
                    inroot::directory(root, target)?
                } else {
                    inroot::file(root, target)?
                };
                inroot::bind(
                    source,
                    &handle,
                    *read_only,
                    &format!("{} on {target}", source.display()),
                )?;
            }
            ExtraMount::Tmpfs { target, options } => {
                let handle = inroot::directory(root, target)?;
                inroot::mount_on(
                    &format!("tmpfs on {target}"),
                    Some("tmpfs"),
                    &handle,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    (!options.is_empty()).then_some(options.as_str()),
                )?;
            }
        }
    }
    Ok(())
}

/// Makes `root` the root of this mount namespace and lets go of the host's tree.
fn pivot_into(root: &Path) -> StepResult {
    step(|| format!("chdir {}", root.display()), chdir(root))?;
    // pivot_root(".", ".") stacks the old root under the new one; detaching it leaves only
    // the container's tree (runc does the same).
    step(
        || format!("pivot_root into {}", root.display()),
        pivot_root(".", "."),
    )?;
    step(
        || "detach the host's root".into(),
        umount2(".", MntFlags::MNT_DETACH),
    )?;
    step(|| "chdir /".into(), chdir("/"))
}

/// Creates the working directory when missing (as Docker does; through a dangling symlink,
/// the directory it names inside the root) and enters it. Runs after `pivot_root`, so the
/// root is the container's.
pub(crate) fn enter_working_dir(cwd: &str) -> StepResult {
    // Usually there: after pivot_root a plain chdir cannot leave the container's root.
    if chdir(Path::new(cwd)).is_ok() {
        return Ok(());
    }
    let root = inroot::open_root(Path::new("/"))?;
    inroot::directory(&root, cwd)?;
    step(
        || format!("chdir to working directory {cwd}"),
        chdir(Path::new(cwd)),
    )
}

pub(crate) fn drop_privileges(user: &ResolvedUser) -> StepResult {
    let groups: Vec<Gid> = user
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    step(|| "set supplementary groups".into(), setgroups(&groups))?;
    step(
        || format!("set gid {}", user.gid),
        setgid(Gid::from_raw(user.gid)),
    )?;
    step(
        || format!("set uid {}", user.uid),
        setuid(Uid::from_raw(user.uid)),
    )
}

/// init blocks the signals it reads through a signalfd, and Rust's runtime ignores SIGPIPE;
/// both would be inherited across exec.
pub(crate) fn reset_signals() -> StepResult {
    step(
        || "unblock signals".into(),
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None),
    )?;
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: SIG_DFL installs no handler code, so no Rust function can run in signal
        // context; the previous disposition is discarded.
        let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) };
    }
    Ok(())
}

fn find_in_path(program: &str, env: &[String]) -> StepResult<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let path = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(crate::DEFAULT_PATH);
    path.split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| nix::unistd::access(candidate, nix::unistd::AccessFlags::X_OK).is_ok())
        .ok_or_else(|| format!("exec {program}: not found in PATH {path}"))
}

fn cstrings(items: &[String], what: &str) -> StepResult<Vec<CString>> {
    items
        .iter()
        .map(|item| {
            CString::new(item.as_str()).map_err(|_| format!("{what} `{item}` contains a NUL byte"))
        })
        .collect()
}

/// execve with `args[0]` looked up in `env`'s PATH, and HOME from the user when unset.
pub(crate) fn exec_command(
    args: &[String],
    env: &[String],
    user: &ResolvedUser,
) -> StepResult<Infallible> {
    let program = args.first().ok_or("no command")?;
    let path = find_in_path(program, env)?;
    let mut env = env.to_vec();
    if !env.iter().any(|kv| kv.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home));
    }
    let path_c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("program path {} contains a NUL byte", path.display()))?;
    let args = cstrings(args, "argument")?;
    let env = cstrings(&env, "environment entry")?;
    // Last before execve: nothing of init's past the process' own stdio crosses it. Marked
    // close-on-exec rather than closed, so the error pipe still reports a failed execve.
    security::close_on_exec_from_3()?;
    step(
        || format!("exec {}", path.display()),
        execve(&path_c, &args, &env),
    )
}
