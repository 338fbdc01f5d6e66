//! PID 1's duties: drivers by hardware, reaping, signals, storage, degraded boots.

use berth_arch::Arch;
use berth_qemu::{GuestExit, Machine, MachineConfig};
use berth_tests::events;
use berth_tests::{
    boot_to_ready, build_image, log_dir, machine_config, pattern, wait_line, READY_PATTERN,
    READY_TIMEOUT, SHUTDOWN_TIMEOUT,
};

/// A blank raw disk of `mib` MiB for `-drive`.
fn blank_disk(path: &std::path::Path, mib: u64) {
    let file = std::fs::File::create(path).unwrap_or_else(|e| panic!("{e}"));
    file.set_len(mib << 20).unwrap_or_else(|e| panic!("{e}"));
}

fn with_virtio_disk(config: &mut MachineConfig, disk: &std::path::Path) {
    config.extra_args.extend([
        "-drive".to_string(),
        format!("file={},format=raw,if=none,id=disk0", disk.display()),
        "-device".to_string(),
        "virtio-blk-pci,drive=disk0".to_string(),
    ]);
}

const HARDWARE_PROBE: &str = r#"
[containers.probe]
image = "busybox:1.35"
network_mode = "host"
command = ["sh", "-c", "for n in /sys/class/net/* /sys/block/*; do echo found=${n##*/}; done"]
"#;

fn nic_and_disk_come_up_with_no_module_list(arch: Arch) {
    let test = format!("pid1-coldplug-{arch}");
    let dir = log_dir(&test);
    let image = build_image(arch, HARDWARE_PROBE, &dir).unwrap_or_else(|e| panic!("{e}"));
    let mut config = machine_config(arch, &image, &dir);
    let disk = dir.join("disk.img");
    blank_disk(&disk, 16);
    with_virtio_disk(&mut config, &disk);
    let mut machine = Machine::start(&config).unwrap_or_else(|e| panic!("{e}"));
    machine
        .wait_for_line(&pattern(READY_PATTERN), READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    wait_line(&mut machine, r"^berth event=exited container=probe ");
    let found = events::output(&machine, "probe");
    let ctx = format!("console: {}", machine.console_log().display());
    assert!(
        found.contains(&"found=eth0".to_string()),
        "virtio NIC: {found:?}; {ctx}"
    );
    assert!(
        found.contains(&"found=vda".to_string()),
        "virtio disk: {found:?}; {ctx}"
    );
    let coldplug = events::events(&machine, "coldplug", None);
    assert!(
        coldplug
            .first()
            .and_then(|e| e.number("modules"))
            .is_some_and(|n| n > 0),
        "coldplug reports what it loaded; {ctx}"
    );
    let console = machine.console_text();
    assert!(console.contains("loaded module virtio_net"), "{ctx}");
    assert!(console.contains("loaded module virtio_blk"), "{ctx}");
}

/// How long a machine that must stay on is watched for an exit.
const STAYS_ON: std::time::Duration = std::time::Duration::from_secs(3);

#[test]
fn x86_64_nic_and_disk_come_up_with_no_module_list() {
    nic_and_disk_come_up_with_no_module_list(Arch::X86_64);
}

#[test]
fn aarch64_nic_and_disk_come_up_with_no_module_list() {
    nic_and_disk_come_up_with_no_module_list(Arch::Aarch64);
}

const ORPHANS_AND_HOST_SETUP: &str = r#"
hostname = "node-7"

[boot]
sysctl = { "vm.swappiness" = 17 }

# No such disk: only the container whose volume lives there is held back.
[[mount]]
device = "LABEL=nosuchdisk"
target = "/mnt/missing"
fstype = "ext4"

# In the host's PID namespace, the five `sleep`s are orphaned to berth's init when their
# subshells exit; once they end, init must reap them: their /proc entries go (a zombie keeps
# its entry), waited for up to 15 s rather than a fixed sleep.
[containers.orphans]
image = "busybox:1.35"
pid = "host"
command = ["sh", "-c", "for i in 1 2 3 4 5; do (sleep 1 & echo $! >> /tmp/orphans); done; for i in $(seq 150); do left=0; for p in $(cat /tmp/orphans); do [ -e /proc/$p ] && left=$((left+1)); done; [ $left = 0 ] && break; sleep 0.1; done; echo orphans_left=$left; echo zombies=$(cat /proc/[0-9]*/stat 2>/dev/null | awk '{print $3}' | grep -c Z); echo swappiness=$(cat /proc/sys/vm/swappiness); echo hosts=$(grep -c node-7 /hostetc/hosts); echo machine_id_bytes=$(cat /hostetc/machine-id | wc -c)"]
volumes = ["/etc:/hostetc:ro"]

[containers.needs-missing]
image = "busybox:1.35"
command = ["echo", "should-not-run"]
volumes = ["/mnt/missing/data:/data"]
"#;

#[test]
fn orphans_are_reaped_and_a_missing_disk_holds_back_only_its_users() {
    let mut machine = boot_to_ready(Arch::X86_64, ORPHANS_AND_HOST_SETUP, "pid1-orphans");
    wait_line(&mut machine, r"^orphans \| machine_id_bytes=");
    let out = events::output(&machine, "orphans");
    let ctx = format!("console: {}", machine.console_log().display());
    assert!(
        out.contains(&"orphans_left=0".to_string()),
        "{out:?}; {ctx}"
    );
    assert!(out.contains(&"zombies=0".to_string()), "{out:?}; {ctx}");
    assert!(
        out.contains(&"swappiness=17".to_string()),
        "sysctl applied: {out:?}"
    );
    assert!(
        out.contains(&"hosts=1".to_string()),
        "/etc/hosts names the host: {out:?}"
    );
    assert!(out.contains(&"machine_id_bytes=33".to_string()), "{out:?}");
    let failed = events::events(&machine, "mount-failed", None);
    assert!(
        failed.first().and_then(|e| e.get("device")) == Some("LABEL=nosuchdisk"),
        "{ctx}"
    );
    let held = events::events(&machine, "stopped", Some("needs-missing"));
    assert_eq!(
        held.first().and_then(|e| e.get("reason")),
        Some("mount-failed"),
        "{ctx}"
    );
    assert!(events::output(&machine, "needs-missing").is_empty());
}

/// Boots a host whose container sends `signal` to PID 1, and returns how the guest ended.
fn after_signal_to_init(arch: Arch, signal: &str) -> (Machine, Option<GuestExit>) {
    let manifest = format!(
        "[containers.sender]\nimage = \"busybox:1.35\"\npid = \"host\"\ncommand = [\"sh\", \"-c\", \"sleep 1; kill -{signal} 1\"]\n"
    );
    let mut machine = boot_to_ready(arch, &manifest, &format!("pid1-signal-{signal}-{arch}"));
    let exit = machine.wait_exit(SHUTDOWN_TIMEOUT).ok();
    (machine, exit)
}

fn assert_signal_does(arch: Arch, signal: &str, action: &str, exit: GuestExit) {
    let (machine, ended) = after_signal_to_init(arch, signal);
    let ctx = format!("console: {}", machine.console_log().display());
    assert_eq!(ended, Some(exit), "SIG{signal}; {ctx}");
    let shutdown = events::events(&machine, "shutdown", None);
    assert_eq!(
        shutdown.first().and_then(|e| e.get("action")),
        Some(action),
        "{ctx}"
    );
    assert_eq!(
        shutdown.first().and_then(|e| e.get("reason")),
        Some(format!("SIG{signal}").as_str())
    );
}

#[test]
fn sigterm_reboots() {
    assert_signal_does(Arch::X86_64, "TERM", "reboot", GuestExit::Reboot);
}

/// aarch64 reboots through PSCI rather than ACPI: one boot for the reboot signals there.
#[test]
fn sigterm_reboots_aarch64() {
    assert_signal_does(Arch::Aarch64, "TERM", "reboot", GuestExit::Reboot);
}

#[test]
fn sigint_reboots() {
    assert_signal_does(Arch::X86_64, "INT", "reboot", GuestExit::Reboot);
}

#[test]
fn sigusr2_powers_off() {
    assert_signal_does(Arch::X86_64, "USR2", "poweroff", GuestExit::PowerOff);
}

/// And one aarch64 boot for the power-off signals (PSCI's SYSTEM_OFF).
#[test]
fn sigusr2_powers_off_aarch64() {
    assert_signal_does(Arch::Aarch64, "USR2", "poweroff", GuestExit::PowerOff);
}

#[test]
fn sigpwr_powers_off() {
    assert_signal_does(Arch::X86_64, "PWR", "poweroff", GuestExit::PowerOff);
}

#[test]
fn sigusr1_halts() {
    let manifest = "[containers.sender]\nimage = \"busybox:1.35\"\npid = \"host\"\ncommand = [\"sh\", \"-c\", \"sleep 1; kill -USR1 1\"]\n";
    let mut machine = boot_to_ready(Arch::X86_64, manifest, "pid1-signal-USR1");
    wait_line(
        &mut machine,
        r"^berth event=shutdown action=halt reason=SIGUSR1",
    );
    // A halted machine stays on: QEMU does not exit, the kernel says so.
    wait_line(&mut machine, r"System halted");
    // Stays on: QEMU is still running seconds later (a reboot or power-off would end it).
    assert!(
        machine.wait_exit(STAYS_ON).is_err(),
        "a halted machine stays on"
    );
    machine
        .quit(SHUTDOWN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn sighup_changes_nothing_and_ctrl_alt_del_reboots() {
    let manifest = "[containers.sender]\nimage = \"busybox:1.35\"\npid = \"host\"\ncommand = [\"sh\", \"-c\", \"kill -HUP 1; echo sent\"]\n";
    let mut machine = boot_to_ready(Arch::X86_64, manifest, "pid1-signal-HUP-and-CAD");
    wait_line(&mut machine, r"received SIGHUP; nothing to do");
    assert!(
        machine.wait_exit(STAYS_ON).is_err(),
        "SIGHUP neither reboots nor powers off"
    );
    let key = |name: &str| serde_json::json!({ "type": "qcode", "data": name });
    machine
        .qmp(
            "send-key",
            Some(serde_json::json!({ "keys": [key("ctrl"), key("alt"), key("delete")] })),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    wait_line(
        &mut machine,
        r"^berth event=shutdown action=reboot reason=SIGINT",
    );
    let exit = machine
        .wait_exit(SHUTDOWN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        exit,
        GuestExit::Reboot,
        "console: {}",
        machine.console_log().display()
    );
}

fn data_disk_manifest(device: &str, container: &str, command: &str) -> String {
    format!(
        r#"
[[mount]]
device = "{device}"
target = "/var/lib/berth"
fstype = "ext4"
options = "noatime"

[containers.{container}]
image = "busybox:1.35"
command = ["sh", "-c", "{command}"]
volumes = ["notes:/data"]
"#
    )
}

#[test]
fn data_written_to_a_mounted_disk_survives_the_power_button_and_a_reboot() {
    const UUID: &str = "5e1f0c2a-3b4d-4e6f-8a9b-0c1d2e3f4a5b";
    let dir = log_dir("pid1-persistence");
    let disk = dir.join("data.img");
    blank_disk(&disk, 64);
    let mkfs = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "data", "-U", UUID])
        .arg(&disk)
        .output()
        .unwrap_or_else(|e| panic!("mkfs.ext4: {e} (scripts/setup installs e2fsprogs)"));
    assert!(
        mkfs.status.success(),
        "{}",
        String::from_utf8_lossy(&mkfs.stderr)
    );

    let boot_with = |manifest: &str, name: &str| {
        let boot_dir = dir.join(name);
        std::fs::create_dir_all(&boot_dir).unwrap_or_else(|e| panic!("{e}"));
        let image =
            build_image(Arch::X86_64, manifest, &boot_dir).unwrap_or_else(|e| panic!("{e}"));
        let mut config = machine_config(Arch::X86_64, &image, &boot_dir);
        with_virtio_disk(&mut config, &disk);
        let mut machine = Machine::start(&config).unwrap_or_else(|e| panic!("{e}"));
        machine
            .wait_for_line(&pattern(READY_PATTERN), READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        machine
    };

    let first = data_disk_manifest(
        "LABEL=data",
        "writer",
        "echo kept-$RANDOM > /data/note; cat /data/note",
    );
    let mut machine = boot_with(&first, "first-boot");
    let written = wait_line(&mut machine, r"^writer \| kept-\d+$");
    let note = written.trim_start_matches("writer | ").to_string();
    let first_id = events::events(&machine, "machine-id", None);
    assert_eq!(
        first_id.first().and_then(|e| e.get("persistent")),
        Some("true")
    );
    wait_line(&mut machine, r"^berth event=exited container=writer ");
    machine
        .press_power_button()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        machine.wait_exit(SHUTDOWN_TIMEOUT).ok(),
        Some(GuestExit::PowerOff)
    );

    let second = data_disk_manifest(&format!("UUID={UUID}"), "reader", "cat /data/note");
    let mut machine = boot_with(&second, "second-boot");
    let read = wait_line(&mut machine, r"^reader \| ");
    assert_eq!(
        read.trim_start_matches("reader | "),
        note,
        "console: {}",
        machine.console_log().display()
    );
    let second_id = events::events(&machine, "machine-id", None);
    assert_eq!(second_id.first().and_then(|e| e.get("new")), Some("false"));
    assert_eq!(
        second_id.first().and_then(|e| e.get("id")),
        first_id.first().and_then(|e| e.get("id")),
        "the machine-id is kept on the data disk"
    );
    let layers = events::events(&machine, "mounted", None);
    assert_eq!(
        layers.first().and_then(|e| e.get("device")),
        Some(format!("UUID={UUID}").as_str())
    );
}

#[test]
fn a_manifest_with_a_syntax_error_boots_degraded_and_still_powers_off() {
    let dir = log_dir("pid1-degraded");
    let image =
        build_image(Arch::X86_64, "hostname = \"fine\"\n", &dir).unwrap_or_else(|e| panic!("{e}"));
    // A second archive appended to the initrd replaces the manifest, as an operator's broken
    // edit would: berth build itself refuses to write a bad one.
    let mut overlay = berth_image::initramfs::Initramfs::new();
    overlay.file(
        "/etc/berth/manifest.toml",
        0o644,
        b"hostname = \"fine\"\n[containers.web\nimage = \"busybox:1.35\"\n".to_vec(),
    );
    let mut initrd = std::fs::read(image.join("initrd")).unwrap_or_else(|e| panic!("{e}"));
    initrd.extend(overlay.to_gzip().unwrap_or_else(|e| panic!("{e}")));
    let broken = dir.join("initrd-with-bad-manifest");
    std::fs::write(&broken, initrd).unwrap_or_else(|e| panic!("{e}"));
    let mut config = machine_config(Arch::X86_64, &image, &dir);
    config.initrd = broken;
    let mut machine = Machine::start(&config).unwrap_or_else(|e| panic!("{e}"));
    let invalid = wait_line(&mut machine, r"^berth event=manifest-invalid ");
    let event = events::parse(&invalid).unwrap_or_else(|| panic!("{invalid}"));
    assert_eq!(event.get("file"), Some("/etc/berth/manifest.toml"));
    assert_eq!(event.get("line"), Some("2"), "{invalid}");
    assert_eq!(event.get("field"), Some("containers.web"), "{invalid}");
    assert!(event.get("error").is_some_and(|e| !e.is_empty()));
    wait_line(&mut machine, r"^berth event=degraded reason=manifest ");
    machine
        .press_power_button()
        .unwrap_or_else(|e| panic!("{e}"));
    let exit = machine
        .wait_exit(SHUTDOWN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        exit,
        GuestExit::PowerOff,
        "console: {}",
        machine.console_log().display()
    );
    assert!(!machine.console_text().contains("Kernel panic"));
}

#[test]
fn shutdown_stops_containers_in_reverse_order_with_their_signals_and_grace() {
    stops_containers_in_reverse_order(Arch::X86_64, "pid1-ordered-stop");
}

/// The same shutdown from aarch64's power button (gpio-keys).
#[test]
fn shutdown_stops_containers_in_reverse_order_with_their_signals_and_grace_aarch64() {
    stops_containers_in_reverse_order(Arch::Aarch64, "pid1-ordered-stop-aarch64");
}

fn stops_containers_in_reverse_order(arch: Arch, test: &str) {
    let manifest = r#"
[containers.db]
image = "busybox:1.35"
command = ["sh", "-c", "trap 'echo stopping-db; exit 0' TERM; echo up; while true; do sleep 0.2; done"]

[containers.app]
image = "busybox:1.35"
command = ["sh", "-c", "trap 'echo stopping-app; exit 0' INT; echo up; while true; do sleep 0.2; done"]
depends_on = ["db"]
stop_signal = "SIGINT"

# Ignores its stop signal: SIGKILL after the grace period ends it (exit code 128 + 9).
[containers.stubborn]
image = "busybox:1.35"
command = ["sh", "-c", "trap '' TERM; echo up; while true; do sleep 0.2; done"]
depends_on = ["app"]
stop_grace_period = "1s"
"#;
    let mut machine = boot_to_ready(arch, manifest, test);
    wait_line(&mut machine, r"^stubborn \| up$");
    machine
        .press_power_button()
        .unwrap_or_else(|e| panic!("{e}"));
    let exit = machine
        .wait_exit(SHUTDOWN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let ctx = format!("console: {}", machine.console_log().display());
    assert_eq!(exit, GuestExit::PowerOff, "{ctx}");
    let stopping: Vec<String> = events::events(&machine, "stopping", None)
        .iter()
        .filter_map(|e| e.get("container").map(str::to_string))
        .collect();
    assert_eq!(
        stopping,
        ["stubborn", "app", "db"],
        "dependants first; {ctx}"
    );
    let announced = events::events(&machine, "shutdown", None);
    let first_stop = events::events(&machine, "stopping", Some("stubborn"));
    let announced_at = announced.first().and_then(|e| e.number("uptime_ms"));
    let first_stop_at = first_stop.first().and_then(|e| e.number("uptime_ms"));
    assert!(
        announced_at.is_some() && first_stop_at.is_some() && announced_at <= first_stop_at,
        "the shutdown ({announced_at:?}) is announced before the containers stop \
         ({first_stop_at:?}); {ctx}"
    );
    let exit_of = |name: &str| {
        events::events(&machine, "exited", Some(name))
            .last()
            .and_then(|e| e.get("code").map(str::to_string))
    };
    assert_eq!(exit_of("stubborn").as_deref(), Some("137"), "{ctx}");
    assert_eq!(
        exit_of("app").as_deref(),
        Some("0"),
        "app got its SIGINT; {ctx}"
    );
    assert_eq!(exit_of("db").as_deref(), Some("0"), "{ctx}");
    assert!(events::output(&machine, "app").contains(&"stopping-app".to_string()));
    let grace = events::events(&machine, "stopping", Some("stubborn"));
    assert_eq!(grace.first().and_then(|e| e.get("grace")), Some("1000ms"));
}
