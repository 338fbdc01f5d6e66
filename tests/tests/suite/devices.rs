//! Device access of containers: the cgroup device program lets a default container open the
//! OCI default devices only, whatever nodes it makes (it keeps CAP_MKNOD, as with Docker) or
//! its image ships; `devices = [...]` passes exactly the host devices named. Both arches: the
//! program runs on each kernel's BPF verifier and JIT.
//!
//! The machine gets two extra virtio disks with known bytes: `vda`, which no container is
//! given, and `vdb`, which the `passed` container is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_arch::Arch;
use berth_image::images::ImageSource;
use berth_qemu::Machine;
use berth_tests::images::variant_layout;
use berth_tests::{
    build_image_with_images, events, log_dir, machine_config, start_to_ready, wait_seen,
};

/// The first bytes of each extra disk.
const VDA_BYTES: &str = "berth-vda-bytes";
const VDB_BYTES: &str = "berth-vdb-bytes";
const DISK_SIZE: u64 = 1 << 20;
/// Block majors the kernel may give virtio_blk (it takes a free one from 254 down); the
/// hostile image ships a node for each, so one is vda's whatever the kernel chose.
const DYNAMIC_BLOCK_MAJORS: std::ops::RangeInclusive<u32> = 230..=254;

/// A shell prelude: `try NAME 'SNIPPET'` prints `NAME=ok`, or `NAME=failed: ` and what the
/// snippet wrote on stderr; `vda` is the disk's `major:minor` from `/proc/partitions`.
const PRELUDE: &str = r#"
try() { if out=$(eval "$2" 2>&1 >/dev/null); then echo "$1=ok"; else echo "$1=failed: $out"; fi; }
vda=$(awk '$4 == "vda" { print $1 ":" $2 }' /proc/partitions)
echo vda=$vda
"#;

/// The default container's attacks and the devices it must keep.
const DEFAULT_SCRIPT: &str = r#"
try mknod_vda 'mknod /tmp/vda b ${vda%:*} ${vda#*:}'
try read_vda 'head -c 16 /tmp/vda'
console=$(cat /sys/class/tty/$(cat /sys/class/tty/console/active | awk '{ print $NF }')/dev)
echo console=$console
try mknod_console 'mknod /tmp/console c ${console%:*} ${console#*:}'
try write_console 'echo berth-container-wrote-the-console > /tmp/console'
try image_node 'head -c 16 /dev-in-image/disk-${vda%:*}'
try null 'echo x > /dev/null && head -c 1 /dev/null'
try zero 'test "$(head -c 4 /dev/zero | od -An -tx1 | tr -d " ")" = 00000000'
try urandom 'head -c 16 /dev/urandom && echo x > /dev/urandom'
try random 'head -c 16 /dev/random'
try full 'head -c 4 /dev/full'
try ptmx 'exec 3<>/dev/ptmx'
try tty_exists 'test -c /dev/tty'
try tty 'exec 3<>/dev/tty'
echo done=1
"#;

/// The container given `/dev/vdb`: that disk and nothing else. `self_*` use a node the
/// container made itself, which tests the device program alone.
const PASSED_SCRIPT: &str = r#"
vdb=$(awk '$4 == "vdb" { print $1 ":" $2 }' /proc/partitions)
try self_mknod 'mknod /tmp/vdb b ${vdb%:*} ${vdb#*:}'
echo self_read=$(head -c 15 /tmp/vdb)
try vdb_node 'test -b /dev/vdb'
echo vdb=$(head -c 15 /dev/vdb)
try vdb_write 'dd if=/dev/vdb of=/dev/vdb bs=512 count=1 conv=notrunc'
try mknod_vda 'mknod /tmp/vda b ${vda%:*} ${vda#*:}'
try read_vda 'head -c 16 /tmp/vda'
echo done=1
"#;

/// The container given `/dev/vdb` read-only, under another name.
const READ_ONLY_SCRIPT: &str = r#"
vdb=$(awk '$4 == "vdb" { print $1 ":" $2 }' /proc/partitions)
try self_mknod 'mknod /tmp/vdb b ${vdb%:*} ${vdb#*:}'
echo self_read=$(head -c 15 /tmp/vdb)
try self_write 'dd if=/dev/zero of=/tmp/vdb bs=512 count=1 conv=notrunc'
try node 'test -b /dev/disks/second'
echo vdb=$(head -c 15 /dev/disks/second)
try write 'dd if=/dev/zero of=/dev/disks/second bs=512 count=1 conv=notrunc'
echo done=1
"#;

fn manifest() -> String {
    // TOML literal strings: the scripts' quotes and `$` stay as they are.
    let command = |script: &str| format!("[\"sh\", \"-c\", '''{PRELUDE}{script}''']");
    format!(
        r#"
[containers.plain]
image = "devnodes:1.35"
command = {plain}

[containers.passed]
image = "busybox:1.35"
command = {passed}
devices = ["/dev/vdb"]
restart = "on-failure:5"

[containers.readonly]
image = "busybox:1.35"
command = {readonly}
devices = ["/dev/vdb:/dev/disks/second:r"]
restart = "on-failure:5"
depends_on = {{ passed = {{ condition = "service_completed_successfully" }} }}
"#,
        plain = command(DEFAULT_SCRIPT),
        passed = command(PASSED_SCRIPT),
        readonly = command(READ_ONLY_SCRIPT),
    )
}

/// busybox with device nodes in a layer: block `MAJOR:0` as `/dev-in-image/disk-MAJOR`, mode
/// 0666, for each major virtio_blk may get.
fn devnodes_image(arch: Arch) -> PathBuf {
    variant_layout(arch, "devnodes", |rootfs: &Path| {
        let dir = rootfs.join("dev-in-image");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let previous = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let made = DYNAMIC_BLOCK_MAJORS.clone().try_for_each(|major| {
            let path = dir.join(format!("disk-{major}"));
            nix::sys::stat::mknod(
                &path,
                nix::sys::stat::SFlag::S_IFBLK,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(u64::from(major), 0),
            )
            .map_err(|e| format!("mknod {}: {e}", path.display()))
        });
        nix::sys::stat::umask(previous);
        made
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A raw disk image of [`DISK_SIZE`] bytes starting with `bytes`.
fn disk(dir: &Path, name: &str, bytes: &str) -> PathBuf {
    let path = dir.join(name);
    let mut content = bytes.as_bytes().to_vec();
    content.resize(usize::try_from(DISK_SIZE).unwrap_or(0), 0);
    std::fs::write(&path, content).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

fn boot(arch: Arch, test: &str) -> Machine {
    let dir = log_dir(test);
    let images = vec![ImageSource {
        name: Some("devnodes:1.35".into()),
        dir: devnodes_image(arch),
    }];
    let image = build_image_with_images(arch, &manifest(), &dir, None, None, images)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut config = machine_config(arch, &image, &dir);
    for (id, bytes) in [("vda", VDA_BYTES), ("vdb", VDB_BYTES)] {
        let file = disk(&dir, &format!("{id}.img"), bytes);
        config.extra_args.extend([
            "-drive".to_string(),
            format!("if=none,id={id},format=raw,file={}", file.display()),
            "-device".to_string(),
            format!("virtio-blk-pci,drive={id}"),
        ]);
    }
    start_to_ready(&config)
}

/// A container's `key=value` lines, once it printed `done=1`.
fn results(machine: &Machine, container: &str) -> HashMap<String, String> {
    wait_seen(machine, &format!(r"^{container} \| done=1$"));
    events::output(machine, container)
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn get<'a>(facts: &'a HashMap<String, String>, key: &str, c: &str) -> &'a str {
    facts
        .get(key)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("no {key} line in {facts:?}; {c}"))
}

/// The cgroup device program's refusal: open(2) or mknod(2) fails with EPERM.
const EPERM: &str = "Operation not permitted";

fn assert_denied(facts: &HashMap<String, String>, key: &str, c: &str) {
    let value = get(facts, key, c);
    assert!(
        value.starts_with("failed") && value.contains(EPERM),
        "{key} must be refused with EPERM: {value}; {c}"
    );
}

fn assert_ok(facts: &HashMap<String, String>, key: &str, c: &str) {
    assert_eq!(get(facts, key, c), "ok", "{key}; {c}");
}

fn only_the_allowed_devices_open(arch: Arch, test: &str) {
    let machine = boot(arch, test);
    let c = format!("console: {}", machine.console_log().display());

    let plain = results(&machine, "plain");
    assert!(
        get(&plain, "vda", &c).contains(':'),
        "vda in /proc/partitions; {c}"
    );
    // mknod is allowed, as with Docker; opening what it made is not.
    assert_ok(&plain, "mknod_vda", &c);
    assert_denied(&plain, "read_vda", &c);
    assert_ok(&plain, "mknod_console", &c);
    assert_denied(&plain, "write_console", &c);
    assert!(
        !machine
            .console_text()
            .lines()
            .any(|l| l.starts_with("berth-container-wrote-the-console")),
        "the container wrote to the console; {c}"
    );
    // A node shipped in the image, mode 0666, is no way around it.
    assert_denied(&plain, "image_node", &c);
    for device in [
        "null",
        "zero",
        "urandom",
        "random",
        "full",
        "ptmx",
        "tty_exists",
    ] {
        assert_ok(&plain, device, &c);
    }
    // /dev/tty opens, as far as the program goes: without a controlling terminal the tty
    // driver says ENXIO, not the program's EPERM.
    let tty = get(&plain, "tty", &c);
    assert!(
        tty.contains("No such device or address") && !tty.contains(EPERM),
        "tty: {tty}; {c}"
    );

    // The program: the passed disk opens, the other one does not.
    let passed = results(&machine, "passed");
    assert_ok(&passed, "self_mknod", &c);
    assert_eq!(get(&passed, "self_read", &c), VDB_BYTES, "{c}");
    assert_ok(&passed, "mknod_vda", &c);
    assert_denied(&passed, "read_vda", &c);
    let readonly = results(&machine, "readonly");
    assert_eq!(get(&readonly, "self_read", &c), VDB_BYTES, "{c}");
    assert_denied(&readonly, "self_write", &c);

    // The nodes the runtime makes in the container's /dev, at the path the manifest gives.
    let made = "the runtime makes the node (devices.rs calls create_device_nodes)";
    assert_ok(&passed, "vdb_node", &format!("{made}; {c}"));
    assert_eq!(get(&passed, "vdb", &c), VDB_BYTES, "{c}");
    assert_ok(&passed, "vdb_write", &c);
    assert_ok(&readonly, "node", &format!("{made}; {c}"));
    assert_eq!(get(&readonly, "vdb", &c), VDB_BYTES, "{c}");
    assert_denied(&readonly, "write", &c);
}

#[test]
fn only_the_allowed_devices_open_x86_64() {
    only_the_allowed_devices_open(Arch::X86_64, "devices-x86_64");
}

#[test]
fn only_the_allowed_devices_open_aarch64() {
    only_the_allowed_devices_open(Arch::Aarch64, "devices-aarch64");
}

/// A device that is not there, or not a device, stops its container from starting with a
/// message naming both.
#[test]
fn a_missing_or_regular_file_device_fails_the_start() {
    let arch = Arch::X86_64;
    let dir = log_dir("devices-missing");
    let manifest = r#"
[containers.missing]
image = "busybox:1.35"
command = ["true"]
devices = ["/dev/berth-no-such-device"]

[containers.notdevice]
image = "busybox:1.35"
command = ["true"]
devices = ["/init:/dev/init"]
"#;
    let image = build_image_with_images(arch, manifest, &dir, None, None, Vec::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let machine = start_to_ready(&machine_config(arch, &image, &dir));
    let c = format!("console: {}", machine.console_log().display());
    let missing = wait_seen(&machine, r"^berth event=start-failed container=missing ");
    assert!(
        missing.contains("container missing: device /dev/berth-no-such-device: ENOENT"),
        "{missing}; {c}"
    );
    let notdevice = wait_seen(&machine, r"^berth event=start-failed container=notdevice ");
    assert!(
        notdevice.contains("device /init: not a character or block device"),
        "{notdevice}; {c}"
    );
}
