//! `berth-probe`: a static binary the isolation tests run as a container's process. It
//! reports facts as `key=value` lines, so tests assert on what the kernel says rather than
//! on a shell's messages.
//!
//! - `berth-probe status`: capability sets, no_new_privs and seccomp mode from
//!   `/proc/self/status`.
//! - `berth-probe syscalls`: tries `keyctl`, `unshare(CLONE_NEWUSER)` and `mount`, and prints
//!   `ok` or the errno name for each.
//! - `berth-probe net`: the host ends of container veths and the rules of each chain of
//!   berth's NAT table, read through netlink (run with the host's network and CAP_NET_ADMIN).

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
        Some("net") => net(),
        _ => {
            eprintln!("usage: berth-probe status|syscalls|net");
            return std::process::ExitCode::from(2);
        }
    }
    std::process::ExitCode::SUCCESS
}
