//! `berth-probe`: a static binary the isolation tests run as a container's process. It
//! reports facts as `key=value` lines, so tests assert on what the kernel says rather than
//! on a shell's messages.
//!
//! - `berth-probe status`: capability sets, no_new_privs and seccomp mode from
//!   `/proc/self/status`.
//! - `berth-probe syscalls`: tries `keyctl`, `unshare(CLONE_NEWUSER)` and `mount`, and prints
//!   `ok` or the errno name for each.
//! - `berth-probe io-uring-x32`: tries `io_uring_setup`, `io_uring_enter` and
//!   `io_uring_register` (the last two on fd -1: EBADF when they reach the kernel), and on
//!   x86_64 the x32 ABI's `getpid` and `unshare(CLONE_NEWNS)`, and prints `ok` or the errno
//!   name of each. With no filter, a kernel that leaves x32 off (Debian's) answers the x32
//!   calls ENOSYS, so a filter's EPERM shows that the filter answered first.
//! - `berth-probe net`: the host ends of container veths and the rules of each chain of
//!   berth's NAT table, read through netlink (run with the host's network and CAP_NET_ADMIN).
//! - `berth-probe control-abuse SOCKET CONTAINER`: a hostile client of init's control socket
//!   (see [`control_abuse`]).

mod control_abuse;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// `/proc/self/status` fields the isolation tests read.
const STATUS_FIELDS: &[&str] = &[
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Uid",
    "Gid",
    "Groups",
];
/// `KEYCTL_GET_KEYRING_ID` and `KEY_SPEC_SESSION_KEYRING` from `linux/keyctl.h`.
const KEYCTL_GET_KEYRING_ID: nix::libc::c_long = 0;
const KEY_SPEC_SESSION_KEYRING: nix::libc::c_long = -3;

fn outcome(result: Result<(), Errno>) -> String {
    match result {
        Ok(()) => "ok".to_string(),
        Err(errno) => format!("{errno:?}"),
    }
}

fn status() {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once(':') {
            if STATUS_FIELDS.contains(&key) {
                let value = value.split_whitespace().collect::<Vec<_>>().join(",");
                println!("{key}={value}");
            }
        }
    }
}

fn keyctl() -> Result<(), Errno> {
    // SAFETY: keyctl(KEYCTL_GET_KEYRING_ID, id, create=0) takes only integer arguments and
    // touches no memory of this process.
    let ret = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_keyctl,
            KEYCTL_GET_KEYRING_ID,
            KEY_SPEC_SESSION_KEYRING,
            0,
        )
    };
    Errno::result(ret).map(drop)
}

fn syscalls() {
    println!("keyctl={}", outcome(keyctl()));
    let target = "/tmp/berth-probe-mount";
    let _ = std::fs::create_dir_all(target);
    let mounted = mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    );
    println!("mount={}", outcome(mounted));
    // Last: a successful unshare moves this process into a user namespace that holds no
    // capability over the mounts above.
    println!(
        "unshare_user={}",
        outcome(unshare(CloneFlags::CLONE_NEWUSER))
    );
}

/// `sizeof(struct io_uring_params)`, all zero: the kernel picks every default.
const IO_URING_PARAMS_SIZE: usize = 120;
/// `__X32_SYSCALL_BIT`, and x86_64's numbers for getpid and unshare (x32 shares them).
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: nix::libc::c_long = 0x4000_0000;
#[cfg(target_arch = "x86_64")]
const NR_GETPID: nix::libc::c_long = 39;
#[cfg(target_arch = "x86_64")]
const NR_UNSHARE: nix::libc::c_long = 272;

/// A raw syscall's result: a returned descriptor is closed.
fn raw_outcome(ret: nix::libc::c_long, returns_fd: bool) -> String {
    match Errno::result(ret) {
        Ok(fd) => {
            if returns_fd {
                if let Ok(fd) = nix::libc::c_int::try_from(fd) {
                    // SAFETY: the kernel just returned this descriptor to us and nothing
                    // else holds it.
                    unsafe { nix::libc::close(fd) };
                }
            }
            "ok".to_string()
        }
        Err(errno) => format!("{errno:?}"),
    }
}

fn io_uring_x32() {
    let mut params = [0u8; IO_URING_PARAMS_SIZE];
    // SAFETY: io_uring_setup(entries, params) reads and writes `params`, a buffer of
    // io_uring_params' size that lives across the call.
    let setup =
        unsafe { nix::libc::syscall(nix::libc::SYS_io_uring_setup, 1, params.as_mut_ptr()) };
    println!("io_uring_setup={}", raw_outcome(setup, true));
    // SAFETY: on fd -1 the kernel fails with EBADF before it reads any argument.
    let enter = unsafe { nix::libc::syscall(nix::libc::SYS_io_uring_enter, -1, 0, 0, 0, 0, 0) };
    println!("io_uring_enter={}", raw_outcome(enter, false));
    // SAFETY: as for io_uring_enter: fd -1, no memory passed.
    let register = unsafe { nix::libc::syscall(nix::libc::SYS_io_uring_register, -1, 0, 0, 0) };
    println!("io_uring_register={}", raw_outcome(register, false));
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: x32's getpid takes no argument and touches no memory.
        let getpid = unsafe { nix::libc::syscall(X32_SYSCALL_BIT | NR_GETPID) };
        println!("x32_getpid={}", raw_outcome(getpid, false));
        // SAFETY: unshare takes one integer argument; should it succeed, this process only
        // has a mount namespace of its own, and exits next.
        let unshared = unsafe {
            nix::libc::syscall(
                X32_SYSCALL_BIT | NR_UNSHARE,
                nix::libc::c_long::from(nix::libc::CLONE_NEWNS),
            )
        };
        println!("x32_unshare_mnt={}", raw_outcome(unshared, false));
    }
}

fn net() {
    match berth_container_net::host::veth_host_links() {
        Ok(links) => println!("veths={}", links.join(",")),
        Err(err) => println!("veths_error={err}"),
    }
    match berth_container_net::nat::rule_counts() {
        Ok(counts) => {
            let counts: Vec<String> = counts.iter().map(|(c, n)| format!("{c}:{n}")).collect();
            println!("nat_rules={}", counts.join(","));
        }
        Err(err) => println!("nat_error={err}"),
    }
}

fn main() -> std::process::ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("status") => status(),
        Some("syscalls") => syscalls(),
        Some("io-uring-x32") => io_uring_x32(),
        Some("net") => net(),
        Some("control-abuse") => match (std::env::args().nth(2), std::env::args().nth(3)) {
            (Some(socket), Some(container)) => control_abuse::run(&socket, &container),
            _ => {
                eprintln!("usage: berth-probe control-abuse SOCKET CONTAINER");
                return std::process::ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: berth-probe status|syscalls|io-uring-x32|net|control-abuse");
            return std::process::ExitCode::from(2);
        }
    }
    std::process::ExitCode::SUCCESS
}
