//! Isolation and limits, each test an attack that must fail: capabilities, seccomp, masked
//! and read-only paths, a fork bomb, a memory hog. The container's own probe
//! (`/bin/berth-probe`) reports what the kernel says.

use berth_arch::Arch;
use berth_qemu::{GuestExit, Machine};
use berth_tests::events;
use berth_tests::{boot_to_ready, wait_line, wait_seen, SHUTDOWN_TIMEOUT};

/// Docker's default capability set as `/proc/self/status` prints it.
const DOCKER_DEFAULT_CAPS: &str = "00000000a80425fb";

use berth_tests::events::facts;

fn ctx(machine: &Machine) -> String {
    format!("console: {}", machine.console_log().display())
}

const CAPABILITIES: &str = r#"
[boot]
modules = ["bridge"]

[containers.default]
image = "busybox:1.35"
command = ["sh", "-c", "berth-probe status; ip link add br-default type bridge 2>/dev/null && echo link_add=ok || echo link_add=refused"]

[containers.netadmin]
image = "busybox:1.35"
command = ["sh", "-c", "ip link add br-netadmin type bridge && echo link_add=ok || echo link_add=refused"]
cap_add = ["NET_ADMIN"]
depends_on = { default = { condition = "service_completed_successfully" } }

[containers.nothing]
image = "busybox:1.35"
command = ["berth-probe", "status"]
cap_drop = ["ALL"]

[containers.www]
image = "busybox:1.35"
command = ["berth-probe", "status"]
user = "www"
group_add = ["daemon"]

[containers.system]
image = "busybox:1.35"
command = ["berth-probe", "status"]
privileged = true
"#;

#[test]
fn capabilities_follow_docker_defaults_cap_add_and_cap_drop() {
    let machine = boot_to_ready(Arch::X86_64, CAPABILITIES, "isolation-capabilities");
    for container in ["default", "netadmin", "nothing", "www", "system"] {
        wait_seen(
            &machine,
            &format!(r"^berth event=exited container={container} "),
        );
    }
    let c = ctx(&machine);
    let default = facts(&machine, "default");
    for set in ["CapBnd", "CapPrm", "CapEff"] {
        assert_eq!(
            default.get(set).map(String::as_str),
            Some(DOCKER_DEFAULT_CAPS),
            "{set}; {c}"
        );
    }
    // The inheritable set is empty for every container, privileged too, as runc and Docker
    // (20.10.14 on) leave it since CVE-2022-24769: a non-empty one lets a program with
    // inheritable file capabilities in the image gain them at exec, even as a non-root user.
    // (netadmin runs no probe.)
    for container in ["default", "nothing", "www", "system"] {
        assert_eq!(
            facts(&machine, container).get("CapInh").map(String::as_str),
            Some("0000000000000000"),
            "CapInh of {container}; {c}"
        );
    }
    assert_eq!(default.get("NoNewPrivs").map(String::as_str), Some("1"));
    assert_eq!(
        default.get("Seccomp").map(String::as_str),
        Some("2"),
        "filter mode; {c}"
    );
    assert_eq!(
        default.get("link_add").map(String::as_str),
        Some("refused"),
        "no NET_ADMIN; {c}"
    );
    assert_eq!(
        facts(&machine, "netadmin")
            .get("link_add")
            .map(String::as_str),
        Some("ok"),
        "{c}"
    );
    let nothing = facts(&machine, "nothing");
    for set in ["CapBnd", "CapPrm", "CapEff", "CapInh"] {
        assert_eq!(
            nothing.get(set).map(String::as_str),
            Some("0000000000000000"),
            "{set}; {c}"
        );
    }
    let www = facts(&machine, "www");
    assert_eq!(
        www.get("Uid").map(String::as_str),
        Some("1000,1000,1000,1000"),
        "{c}"
    );
    assert_eq!(
        www.get("CapEff").map(String::as_str),
        Some("0000000000000000"),
        "a non-root user keeps no capabilities"
    );
    assert!(
        events::output(&machine, "www")
            .iter()
            .any(|l| l.starts_with("Gid=1000")),
        "{c}"
    );
    // `logs` (4) lists www in /etc/group, `daemon` (1) comes from group_add.
    assert_eq!(www.get("Groups").map(String::as_str), Some("1,4"), "{c}");
    let system = facts(&machine, "system");
    assert_eq!(
        system.get("CapEff").map(String::as_str),
        Some("000001ffffffffff"),
        "privileged: every capability; {c}"
    );
    assert_eq!(
        system.get("Seccomp").map(String::as_str),
        Some("0"),
        "privileged: no filter; {c}"
    );
}

const SECCOMP: &str = r#"
[containers.confined]
image = "busybox:1.35"
command = ["berth-probe", "syscalls"]

[containers.unconfined]
image = "busybox:1.35"
command = ["berth-probe", "syscalls"]
security_opt = ["seccomp=unconfined"]
cap_add = ["SYS_ADMIN"]
"#;

#[test]
fn the_default_seccomp_profile_refuses_keyctl_userns_and_mount_and_unconfined_does_not() {
    let machine = boot_to_ready(Arch::X86_64, SECCOMP, "isolation-seccomp");
    seccomp_refuses_keyctl_userns_and_mount_unless_unconfined(&machine);
}

/// The checks of [`SECCOMP`]'s containers: the filter is built from the arch's own syscall
/// table, so each arch must refuse the same calls by their own numbers.
fn seccomp_refuses_keyctl_userns_and_mount_unless_unconfined(machine: &Machine) {
    wait_seen(machine, r"^berth event=exited container=confined ");
    wait_seen(machine, r"^berth event=exited container=unconfined ");
    let c = ctx(machine);
    let confined = facts(machine, "confined");
    for call in ["keyctl", "unshare_user", "mount"] {
        assert_eq!(
            confined.get(call).map(String::as_str),
            Some("EPERM"),
            "{call}; {c}"
        );
    }
    let unconfined = facts(machine, "unconfined");
    for call in ["keyctl", "unshare_user", "mount"] {
        assert_eq!(
            unconfined.get(call).map(String::as_str),
            Some("ok"),
            "{call}; {c}"
        );
    }
}

const PATHS: &str = r#"
[containers.paths]
image = "busybox:1.35"
command = ["sh", "-c", "echo kcore_bytes=$(cat /proc/kcore | wc -c); echo firmware_entries=$(ls /sys/firmware | wc -l); echo 10 > /proc/sys/vm/swappiness 2>/dev/null && echo sysctl_write=ok || echo sysctl_write=refused; echo root_write=$(touch /written 2>/dev/null && echo ok || echo refused)"]

[containers.readonly]
image = "busybox:1.35"
command = ["sh", "-c", "echo root_write=$(touch /written 2>/dev/null && echo ok || echo refused); echo tmp_write=$(touch /tmp/x && echo ok || echo refused)"]
read_only = true
tmpfs = ["/tmp"]
"#;

#[test]
fn masked_paths_read_empty_and_read_only_paths_refuse_writes() {
    let machine = boot_to_ready(Arch::X86_64, PATHS, "isolation-paths");
    wait_seen(&machine, r"^paths \| root_write=");
    wait_seen(&machine, r"^readonly \| tmp_write=");
    let c = ctx(&machine);
    let paths = facts(&machine, "paths");
    assert_eq!(
        paths.get("kcore_bytes").map(String::as_str),
        Some("0"),
        "{c}"
    );
    assert_eq!(
        paths.get("firmware_entries").map(String::as_str),
        Some("0"),
        "{c}"
    );
    assert_eq!(
        paths.get("sysctl_write").map(String::as_str),
        Some("refused"),
        "{c}"
    );
    assert_eq!(paths.get("root_write").map(String::as_str), Some("ok"));
    let readonly = facts(&machine, "readonly");
    assert_eq!(
        readonly.get("root_write").map(String::as_str),
        Some("refused"),
        "{c}"
    );
    assert_eq!(
        readonly.get("tmp_write").map(String::as_str),
        Some("ok"),
        "{c}"
    );
}

const HOSTILE: &str = r#"
[containers.bomb]
image = "busybox:1.35"
# The first process stays (exec sleep): were it to exit, its PID namespace would end the
# bomb at once, before any limit is reached.
command = ["sh", "-c", "echo bombing; b() { b | b & }; b; exec sleep 3600"]
pids_limit = 64
stop_grace_period = "1s"

[containers.hog]
image = "busybox:1.35"
command = ["sh", "-c", "echo hogging; x=0123456789abcdef; while true; do x=$x$x; done"]
mem_limit = "32M"
memswap_limit = "32M"
restart = "on-failure:1"

[containers.alive]
image = "busybox:1.35"
command = ["sh", "-c", "i=0; while true; do i=$((i + 1)); echo tick-$i; sleep 1; done"]
stop_grace_period = "1s"

# Reads the bomb's cgroup from the host's side: how often pids.max refused a fork.
[containers.watcher]
image = "busybox:1.35"
pid = "host"
privileged = true
command = ["sh", "-c", "for i in $(seq 1 120); do m=$(grep '^max ' /proc/1/root/sys/fs/cgroup/berth/bomb/pids.events | cut -d ' ' -f 2); [ \"${m:-0}\" -gt 0 ] && { echo pids_max_hit=$m; exit 0; }; sleep 0.5; done; echo pids_max_hit=0"]
"#;

#[test]
fn a_fork_bomb_and_a_memory_hog_are_contained_and_the_host_powers_off_cleanly() {
    fork_bomb_and_memory_hog_are_contained(Arch::X86_64, "isolation-hostile");
}

/// The OOM kill and the power button (gpio-keys there) on aarch64, in a boot of its own: the
/// bomb at its limit slows everything else under TCG.
#[test]
fn a_fork_bomb_and_a_memory_hog_are_contained_and_the_host_powers_off_cleanly_aarch64() {
    fork_bomb_and_memory_hog_are_contained(Arch::Aarch64, "isolation-hostile-aarch64");
}

fn fork_bomb_and_memory_hog_are_contained(arch: Arch, test: &str) {
    let mut machine = boot_to_ready(arch, HOSTILE, test);
    // The hog is killed by the OOM killer, reported, restarted once, killed again.
    wait_line(&mut machine, r"^berth event=oom-killed container=hog ");
    wait_line(
        &mut machine,
        r"^berth event=stopped container=hog reason=restart-limit",
    );
    let c = ctx(&machine);
    let exits = events::events(&machine, "exited", Some("hog"));
    assert_eq!(exits.len(), 2, "{c}");
    assert!(
        exits.iter().all(|e| e.get("code") == Some("137")),
        "SIGKILL by the OOM killer; {c}"
    );
    // The other container keeps answering while the bomb is at its limit.
    // Counted, not waited for with `wait_line`: the next matching line after the console's
    // cursor may be one printed, and counted, before `ticks_before`.
    let ticks_before = events::output(&machine, "alive").len();
    let deadline = std::time::Instant::now() + berth_tests::LINE_TIMEOUT;
    while events::output(&machine, "alive").len() < ticks_before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "alive stopped ticking beside the bomb; {c}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(!events::output(&machine, "bomb").is_empty());
    // The bomb was stopped by pids.max, not by something else.
    let hit = wait_seen(&machine, r"^watcher \| pids_max_hit=");
    let hits: u64 = hit
        .rsplit('=')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(hits > 0, "pids.max refused forks: {hit}; {c}");
    machine
        .press_power_button()
        .unwrap_or_else(|e| panic!("{e}"));
    let exit = machine
        .wait_exit(SHUTDOWN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit, GuestExit::PowerOff, "{c}");
    assert!(!machine.console_text().contains("Kernel panic"), "{c}");
}

const USERNS: &str = r#"
[userns]
uid_range = "200000:65536"
gid_range = "300000:65536"

[containers.remapped]
image = "busybox:1.35"
command = ["sh", "-c", "echo inside_uid=$(id -u); echo inside_map=$(tr -s ' ' < /proc/self/uid_map); echo marker > /owned-by-root; exec sleep 1000"]
userns = true
stop_grace_period = "1s"

# Reads the remapped container's process and writable layer from the host's side.
[containers.observer]
image = "busybox:1.35"
pid = "host"
command = ["sh", "-c", "for i in $(seq 300); do p=$(pidof sleep | cut -d ' ' -f 1); [ -n \"$p\" ] && [ -e /containers/remapped/upper/owned-by-root ] && break; sleep 0.1; done; echo host_uid=$(grep '^Uid:' /proc/$p/status | tr -s '\\t ' ' ' | cut -d ' ' -f 2); echo upper_owner=$(stat -c %u:%g /containers/remapped/upper/owned-by-root)"]
volumes = ["/var/lib/berth/containers:/containers:ro"]
depends_on = ["remapped"]
"#;

#[test]
fn with_userns_container_root_is_an_unprivileged_uid_on_the_host() {
    let machine = boot_to_ready(Arch::X86_64, USERNS, "isolation-userns");
    container_root_is_an_unprivileged_uid_on_the_host(&machine);
}

/// The checks of [`USERNS`]'s containers.
fn container_root_is_an_unprivileged_uid_on_the_host(machine: &Machine) {
    wait_seen(machine, r"^observer \| upper_owner=");
    let c = ctx(machine);
    let inside = facts(machine, "remapped");
    assert_eq!(
        inside.get("inside_uid").map(String::as_str),
        Some("0"),
        "{c}"
    );
    assert_eq!(
        inside.get("inside_map").map(String::as_str),
        Some(" 0 200000 65536"),
        "{c}"
    );
    let outside = facts(machine, "observer");
    assert_eq!(
        outside.get("host_uid").map(String::as_str),
        Some("200000"),
        "{c}"
    );
    assert_eq!(
        outside.get("upper_owner").map(String::as_str),
        Some("200000:300000"),
        "{c}"
    );
}

const LIMITS: &str = r#"
[containers.limited]
image = "busybox:1.35"
command = ["sh", "-c", "cd /sys/fs/cgroup; for f in memory.max memory.swap.max cpu.max cpu.weight pids.max io.weight; do echo $f=$(head -n 1 $f | tr ' ' '_'); done; echo nofile=$(ulimit -n); echo cgroup_write=$(echo 1 > pids.max 2>/dev/null && echo ok || echo refused)"]
mem_limit = "48m"
memswap_limit = "64m"
cpus = 0.5
cpu_shares = 512
pids_limit = 100
blkio_weight = 300
ulimits = { nofile = { soft = 2048, hard = 4096 } }

[containers.defaults]
image = "busybox:1.35"
command = ["sh", "-c", "echo nofile=$(ulimit -n); echo nofile_hard=$(ulimit -Hn)"]

# In the host's PID namespace: which cgroup is init in?
[containers.host-view]
image = "busybox:1.35"
pid = "host"
privileged = true
command = ["sh", "-c", "echo init_cgroup=$(cut -d : -f 3 /proc/1/cgroup)"]
"#;

#[test]
fn cgroup_limits_and_ulimits_are_applied_and_init_keeps_its_reserve() {
    let machine = boot_to_ready(Arch::X86_64, LIMITS, "isolation-limits");
    limits_and_ulimits_are_applied_and_init_keeps_its_reserve(&machine);
}

/// The checks of [`LIMITS`]'s containers.
fn limits_and_ulimits_are_applied_and_init_keeps_its_reserve(machine: &Machine) {
    for container in ["limited", "defaults", "host-view"] {
        wait_seen(
            machine,
            &format!(r"^berth event=exited container={container} "),
        );
    }
    let c = ctx(machine);
    let limited = facts(machine, "limited");
    let expected = [
        ("memory.max", "50331648"),
        ("memory.swap.max", "16777216"),
        ("cpu.max", "50000_100000"),
        ("cpu.weight", "20"),
        ("pids.max", "100"),
        ("nofile", "2048"),
        ("cgroup_write", "refused"),
    ];
    for (key, value) in expected {
        assert_eq!(
            limited.get(key).map(String::as_str),
            Some(value),
            "{key}; {c}"
        );
    }
    // blkio_weight 300 on Docker's [10, 1000] is 1 + 290 * 9999 / 990 = 2930 on io.weight's
    // [1, 10000], as runc converts it; the kernel's default would read `default 100`.
    assert_eq!(
        limited.get("io.weight").map(String::as_str),
        Some("default_2930"),
        "io.weight; {c}"
    );
    let defaults = facts(machine, "defaults");
    assert_eq!(
        defaults.get("nofile").map(String::as_str),
        Some("1024"),
        "Docker's default; {c}"
    );
    assert_eq!(
        defaults.get("nofile_hard").map(String::as_str),
        Some("524288"),
        "{c}"
    );
    let host = facts(machine, "host-view");
    assert!(
        host.get("init_cgroup")
            .is_some_and(|g| g.ends_with("/system")),
        "init sits in its reserved cgroup: {:?}; {c}",
        host.get("init_cgroup")
    );
}

/// Seccomp (whose syscall table is aarch64's own), user namespaces and cgroup limits on
/// aarch64, folded into one boot: the three manifests' containers have distinct names and
/// the same checks as the x86_64 tests above run on their output.
#[test]
fn seccomp_userns_and_cgroup_limits_hold_aarch64() {
    let manifest = [SECCOMP, USERNS, LIMITS].concat();
    let machine = boot_to_ready(Arch::Aarch64, &manifest, "isolation-aarch64");
    seccomp_refuses_keyctl_userns_and_mount_unless_unconfined(&machine);
    container_root_is_an_unprivileged_uid_on_the_host(&machine);
    limits_and_ulimits_are_applied_and_init_keeps_its_reserve(&machine);
}
