//! What a container's processes can reach past their own: syscalls the seccomp filter must
//! refuse (io_uring, the x32 ABI on x86_64), and descriptors of init's that must not be
//! inherited by a container's first process or by `berth ctl exec`. The probe
//! (`/bin/berth-probe`) and `ls` inside the container report what the kernel says.

use std::collections::HashMap;

use berth_arch::Arch;
use berth_qemu::Machine;
use berth_tests::{berth_ctl_ok, boot_to_ready, boot_with_control_port, events, wait_seen};

use berth_tests::events::facts;

fn ctx(machine: &Machine) -> String {
    format!("console: {}", machine.console_log().display())
}

const SYSCALLS: &str = r#"
[containers.confined]
image = "busybox:1.35"
command = ["berth-probe", "io-uring-x32"]

[containers.unconfined]
image = "busybox:1.35"
command = ["berth-probe", "io-uring-x32"]
security_opt = ["seccomp=unconfined"]
"#;

/// io_uring is refused as Docker's profile refuses it since 2023, and on x86_64 the x32 ABI
/// is refused by the filter (EPERM) before the kernel could answer (ENOSYS where x32 is off,
/// as in Debian's kernels; the call itself where it is on).
fn io_uring_and_x32_are_refused(arch: Arch, test: &str) {
    let machine = boot_to_ready(arch, SYSCALLS, test);
    wait_seen(&machine, r"^berth event=exited container=confined ");
    wait_seen(&machine, r"^berth event=exited container=unconfined ");
    let c = ctx(&machine);
    let confined = facts(&machine, "confined");
    let unconfined = facts(&machine, "unconfined");
    let get = |facts: &HashMap<String, String>, key: &str| facts.get(key).cloned();
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert_eq!(
            get(&confined, call).as_deref(),
            Some("EPERM"),
            "{call}; {c}"
        );
    }
    // Without the filter the same calls reach the kernel: a ring, and EBADF for fd -1.
    assert_eq!(
        get(&unconfined, "io_uring_setup").as_deref(),
        Some("ok"),
        "{c}"
    );
    assert_eq!(
        get(&unconfined, "io_uring_enter").as_deref(),
        Some("EBADF"),
        "{c}"
    );
    if arch == Arch::X86_64 {
        for call in ["x32_getpid", "x32_unshare_mnt"] {
            assert_eq!(
                get(&confined, call).as_deref(),
                Some("EPERM"),
                "{call}: the filter must answer, not the kernel; {c}"
            );
        }
        let unfiltered = get(&unconfined, "x32_getpid");
        assert!(
            matches!(unfiltered.as_deref(), Some("ENOSYS" | "ok")),
            "x32 getpid without a filter: {unfiltered:?}; {c}"
        );
    } else {
        assert_eq!(get(&confined, "x32_getpid"), None, "{c}");
    }
}

#[test]
fn io_uring_and_x32_are_refused_x86_64() {
    io_uring_and_x32_are_refused(Arch::X86_64, "process-boundary-syscalls-x86_64");
}

#[test]
fn io_uring_and_x32_are_refused_aarch64() {
    io_uring_and_x32_are_refused(Arch::Aarch64, "process-boundary-syscalls-aarch64");
}

const FDS: &str = r#"
[containers.fds]
image = "busybox:1.35"
command = ["ls", "-1", "/proc/self/fd"]

[containers.web]
image = "busybox:1.35"
user = "1000:1000"
command = ["sleep", "1000"]
"#;

/// `ls /proc/self/fd` run straight as the process: its stdio and the directory it opened
/// to list (3), nothing of init's.
const OWN_FDS_ONLY: [&str; 4] = ["0", "1", "2", "3"];

fn no_descriptor_of_init_is_inherited(arch: Arch, test: &str) {
    let (machine, socket) = boot_with_control_port(arch, FDS, test);
    wait_seen(&machine, r"^berth event=exited container=fds ");
    let c = ctx(&machine);
    assert_eq!(
        events::output(&machine, "fds"),
        OWN_FDS_ONLY,
        "a container's first process; {c}"
    );
    let exec_fds = berth_ctl_ok(&socket, &["exec", "web", "--", "ls", "-1", "/proc/self/fd"]);
    assert_eq!(
        exec_fds.lines().collect::<Vec<_>>(),
        OWN_FDS_ONLY,
        "berth ctl exec; {c}"
    );
    // The same as root, with every default capability.
    let root_fds = berth_ctl_ok(
        &socket,
        &[
            "exec",
            "--user",
            "0",
            "web",
            "--",
            "ls",
            "-1",
            "/proc/self/fd",
        ],
    );
    assert_eq!(
        root_fds.lines().collect::<Vec<_>>(),
        OWN_FDS_ONLY,
        "berth ctl exec as root; {c}"
    );
}

#[test]
fn no_descriptor_of_init_is_inherited_x86_64() {
    no_descriptor_of_init_is_inherited(Arch::X86_64, "process-boundary-fds-x86_64");
}
