//! Disk images: UEFI boot through systemd-boot on both arches from raw and qcow2, state on
//! the data partition across the power button and a power cut, the data partition grown
//! with its disk, and manifests from QEMU's fw_cfg and a NoCloud seed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_arch::Arch;
use berth_image::{DiskFormat, DiskOptions};
use berth_qemu::{GuestExit, Machine};
use berth_tests::{
    boot_disk_to_ready as boot_disk, disk_machine_config as disk_config, events, wait_seen,
};

fn build_disk(arch: Arch, manifest: &str, dir: &Path, format: DiskFormat) -> (PathBuf, PathBuf) {
    let image = berth_tests::build_image_with_disk(
        arch,
        manifest,
        dir,
        Some(DiskOptions {
            format,
            data_mib: 256,
        }),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let disk = image.join(format.file_name());
    (image, disk)
}

const HELLO: &str = r#"
[containers.hello]
image = "busybox:1.35"
command = ["sh", "-c", "echo hello-from-$(uname -m)"]
"#;

fn boots_through_uefi(arch: Arch, format: DiskFormat) {
    let test = format!("disk-uefi-{arch}-{}", format.qemu_name());
    let dir = berth_tests::log_dir(&test);
    let (image, disk) = build_disk(arch, HELLO, &dir, format);
    let machine = boot_disk(&disk_config(arch, &image, &disk, format, &dir));
    let c = format!("console: {}", machine.console_log().display());
    wait_seen(&machine, r"^berth event=boot-slot slot=a ");
    let mounted = wait_seen(&machine, r"^berth event=data-mounted ");
    assert!(mounted.contains("fs=ext4"), "{mounted}; {c}");
    wait_seen(&machine, r"^hello \| hello-from-");
    // No -kernel: the kernel came from the disk, through the firmware.
    assert!(
        !machine.console_text().contains("berth event=data-volatile"),
        "{c}"
    );
}

#[test]
fn x86_64_raw_disk_boots_through_uefi() {
    boots_through_uefi(Arch::X86_64, DiskFormat::Raw);
}

#[test]
fn aarch64_raw_disk_boots_through_uefi() {
    boots_through_uefi(Arch::Aarch64, DiskFormat::Raw);
}

#[test]
fn aarch64_qcow2_disk_boots_through_uefi() {
    boots_through_uefi(Arch::Aarch64, DiskFormat::Qcow2);
}

const WRITER: &str = r#"
[containers.writer]
image = "busybox:1.35"
volumes = ["data:/data"]
command = ["sh", "-c", "[ -f /data/first ] && echo seen=$(cat /data/first); echo first > /data/first; sync; echo written; i=0; while true; do echo line-$i >> /data/stream; i=$((i+1)); [ $((i % 100)) = 0 ] && sync; done"]
# The shell, PID 1 of its namespace, ignores SIGTERM: the power button's stop ends in SIGKILL,
# after one second rather than the default ten.
stop_grace_period = "1s"
"#;

#[test]
fn data_survives_the_power_button_and_a_power_cut() {
    data_survives(Arch::X86_64, "disk-persistence", WRITER, None);
}

/// aarch64's persistence and growth in one run of three UEFI boots (the slowest kind here):
/// its disk is grown before the first boot, which must grow the data partition and its
/// filesystem as [`the_data_partition_grows_with_its_disk`] does, before the writer's data
/// must survive the power button and a power cut as on x86_64.
#[test]
fn data_survives_the_power_button_and_a_power_cut_and_grows_with_its_disk_aarch64() {
    let manifest = [WRITER, DF].concat();
    data_survives(
        Arch::Aarch64,
        "disk-persistence-aarch64",
        &manifest,
        Some(GROW_BY),
    );
}

/// Boots a qcow2 disk whose `writer` container is [`WRITER`]'s three times: powered off by
/// the button, then cut off while writing, then checked. With `grow_by`, the disk is grown
/// that much first, and the first boot must grow its data partition.
fn data_survives(arch: Arch, test: &str, manifest: &str, grow_by: Option<&str>) {
    let format = DiskFormat::Qcow2;
    let dir = berth_tests::log_dir(test);
    let (image, disk) = build_disk(arch, manifest, &dir, format);
    if let Some(grow_by) = grow_by {
        grow_disk(&disk, format, grow_by);
    }
    let boot = |n: u32| {
        let log = dir.join(format!("boot-{n}"));
        boot_disk(&disk_config(arch, &image, &disk, format, &log))
    };

    let mut first = boot(1);
    let c1 = format!("console: {}", first.console_log().display());
    if grow_by.is_some() {
        assert_grown(&first);
    }
    wait_seen(&first, r"^writer \| written$");
    let id1 = events::events(&first, "machine-id", None);
    assert_eq!(
        id1.first().and_then(|e| e.get("persistent")),
        Some("true"),
        "{c1}"
    );
    first.press_power_button().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        first
            .wait_exit(berth_tests::SHUTDOWN_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}")),
        GuestExit::PowerOff,
        "{c1}"
    );

    let mut second = boot(2);
    let c2 = format!("console: {}", second.console_log().display());
    wait_seen(&second, r"^writer \| seen=first$");
    wait_seen(&second, r"^writer \| written$");
    let id2 = events::events(&second, "machine-id", None);
    assert_eq!(
        id2.first().and_then(|e| e.get("id")),
        id1.first().and_then(|e| e.get("id")),
        "the machine-id lives on the data partition; {c2}"
    );
    // The power cut: QEMU killed while the container writes.
    std::thread::sleep(Duration::from_secs(2));
    second.kill();

    let third = boot(3);
    let c3 = format!("console: {}", third.console_log().display());
    let mounted = wait_seen(&third, r"^berth event=data-mounted ");
    assert!(mounted.contains("fs=ext4"), "{mounted}; {c3}");
    wait_seen(&third, r"^writer \| seen=first$");
}

/// A container that says how big the data volume's filesystem is.
const DF: &str = r#"
[containers.df]
image = "busybox:1.35"
volumes = ["data:/data"]
command = ["sh", "-c", "df -m /data | tail -1 | tr -s ' ' | cut -d' ' -f2 | sed 's/^/size_mb=/'"]
"#;

/// How much a growth test adds to the disk's 256 MiB data partition.
const GROW_BY: &str = "+768M";

fn grow_disk(disk: &Path, format: DiskFormat, by: &str) {
    let status = std::process::Command::new("qemu-img")
        .args(["resize", "-f", format.qemu_name()])
        .arg(disk)
        .arg(by)
        .status()
        .unwrap_or_else(|e| panic!("qemu-img: {e}"));
    assert!(
        status.success(),
        "qemu-img resize {}: {status}",
        disk.display()
    );
}

/// The first boot after [`GROW_BY`]: the data partition grew from 256 MiB to most of the
/// disk, online, and [`DF`] sees the grown filesystem.
fn assert_grown(machine: &Machine) {
    let c = format!("console: {}", machine.console_log().display());
    let mounted = wait_seen(machine, r"^berth event=data-mounted ");
    let event = events::parse(&mounted).unwrap_or_else(|| panic!("{mounted}"));
    assert_eq!(event.get("grown_from_mb"), Some("256"), "{mounted}; {c}");
    let size = event.number("size_mb").unwrap_or(0);
    assert!(size > 900, "the filesystem grew online: {mounted}; {c}");
    let df = wait_seen(machine, r"^df \| size_mb=");
    let seen: u64 = df.trim_start_matches("df | size_mb=").parse().unwrap_or(0);
    assert!(seen > 900, "{df}; {c}");
}

#[test]
fn the_data_partition_grows_with_its_disk() {
    let arch = Arch::X86_64;
    let format = DiskFormat::Raw;
    let dir = berth_tests::log_dir("disk-grow");
    let (image, disk) = build_disk(arch, DF, &dir, format);
    grow_disk(&disk, format, GROW_BY);
    let machine = boot_disk(&disk_config(arch, &image, &disk, format, &dir));
    assert_grown(&machine);
}

/// A manifest whose one container says where the manifest came from.
fn says(source: &str) -> String {
    format!(
        "[containers.from_{source}]\nimage = \"busybox:1.35\"\ncommand = [\"echo\", \"manifest-from-{source}\"]\n"
    )
}

/// A vfat volume labelled CIDATA with `user-data`, as cloud-localds makes one.
fn nocloud_seed(path: &Path, user_data: &str) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{e}"));
    file.set_len(4 * 1024 * 1024)
        .unwrap_or_else(|e| panic!("{e}"));
    fatfs::format_volume(
        &file,
        fatfs::FormatVolumeOptions::new().volume_label(*b"CIDATA     "),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let fs =
        fatfs::FileSystem::new(&file, fatfs::FsOptions::new()).unwrap_or_else(|e| panic!("{e}"));
    let mut out = fs
        .root_dir()
        .create_file("user-data")
        .unwrap_or_else(|e| panic!("{e}"));
    std::io::Write::write_all(&mut out, user_data.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
}

fn boot_with_sources(arch: Arch, test: &str, fw_cfg: Option<&str>, seed: Option<&str>) -> Machine {
    let dir = berth_tests::log_dir(test);
    let image =
        berth_tests::build_image(arch, &says("image"), &dir).unwrap_or_else(|e| panic!("{e}"));
    let mut config = berth_tests::machine_config(arch, &image, &dir);
    if let Some(manifest) = fw_cfg {
        let path = dir.join("fw_cfg.toml");
        std::fs::write(&path, manifest).unwrap_or_else(|e| panic!("{e}"));
        config.extra_args.extend([
            "-fw_cfg".to_string(),
            format!("name=opt/berth/manifest,file={}", path.display()),
        ]);
    }
    if let Some(user_data) = seed {
        let path = dir.join("seed.img");
        nocloud_seed(&path, user_data);
        config.extra_args.extend([
            "-drive".to_string(),
            format!(
                "if=none,id=seed,format=raw,readonly=on,file={}",
                path.display()
            ),
            "-device".to_string(),
            "virtio-blk-pci,drive=seed".to_string(),
        ]);
    }
    berth_tests::start_to_ready(&config)
}

#[test]
fn a_manifest_from_fw_cfg_decides_which_containers_run() {
    fw_cfg_decides(Arch::X86_64, "disk-config-fw-cfg");
}

/// fw_cfg is an MMIO device on aarch64's `virt` (found through the device tree), an I/O port
/// device on x86_64's q35 (found through ACPI).
#[test]
fn a_manifest_from_fw_cfg_decides_which_containers_run_aarch64() {
    fw_cfg_decides(Arch::Aarch64, "disk-config-fw-cfg-aarch64");
}

fn fw_cfg_decides(arch: Arch, test: &str) {
    let machine = boot_with_sources(arch, test, Some(&says("fw_cfg")), Some(&says("nocloud")));
    let c = format!("console: {}", machine.console_log().display());
    let config = wait_seen(&machine, r"^berth event=config ");
    assert!(config.contains("source=fw_cfg "), "{config}; {c}");
    wait_seen(&machine, r"^from_fw_cfg \| manifest-from-fw_cfg$");
    assert!(
        events::events(&machine, "created", Some("from_image")).is_empty(),
        "{c}"
    );
    assert!(
        events::events(&machine, "created", Some("from_nocloud")).is_empty(),
        "{c}"
    );
}

#[test]
fn a_bad_fw_cfg_manifest_is_reported_and_the_nocloud_seed_is_used() {
    bad_fw_cfg_falls_back_to_nocloud(Arch::X86_64, "disk-config-nocloud");
}

/// The NoCloud seed on aarch64: a vfat volume on a virtio disk behind the `virt` board's
/// PCIe root, after a bad manifest read from its MMIO fw_cfg.
#[test]
fn a_bad_fw_cfg_manifest_is_reported_and_the_nocloud_seed_is_used_aarch64() {
    bad_fw_cfg_falls_back_to_nocloud(Arch::Aarch64, "disk-config-nocloud-aarch64");
}

fn bad_fw_cfg_falls_back_to_nocloud(arch: Arch, test: &str) {
    let bad = "[containers.broken]\nimage = \"busybox:1.35\"\nrestart = \"sometimes\"\n";
    let machine = boot_with_sources(arch, test, Some(bad), Some(&says("nocloud")));
    let c = format!("console: {}", machine.console_log().display());
    let invalid = wait_seen(&machine, r"^berth event=config-invalid source=fw_cfg ");
    assert!(
        invalid.contains("fw_cfg:opt/berth/manifest:3:11: containers.broken.restart"),
        "the error names the source, line and field: {invalid}; {c}"
    );
    let config = wait_seen(&machine, r"^berth event=config ");
    assert!(config.contains("source=nocloud "), "{config}; {c}");
    wait_seen(&machine, r"^from_nocloud \| manifest-from-nocloud$");
    assert!(
        events::events(&machine, "created", Some("broken")).is_empty(),
        "{c}"
    );
}

/// Serves an IMDSv2 metadata service on the test machine's loopback: a token for
/// `PUT /latest/api/token`, and `user_data` for `GET /latest/user-data` with that token only.
fn serve_metadata(user_data: String) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(match stream.try_clone() {
                Ok(s) => s,
                Err(_) => continue,
            });
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push(line.trim_end().to_string());
            }
            let request = head.first().cloned().unwrap_or_default();
            let has_token = head
                .iter()
                .any(|h| h.eq_ignore_ascii_case("X-aws-ec2-metadata-token: token-1234"));
            let (status, body) = if request.starts_with("PUT /latest/api/token ") {
                ("200 OK", "token-1234".to_string())
            } else if request.starts_with("GET /latest/user-data ") && has_token {
                ("200 OK", user_data.clone())
            } else {
                ("401 Unauthorized", String::new())
            };
            let _ = write!(
                stream,
                "HTTP/1.0 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn the_metadata_service_supplies_the_manifest_of_an_ec2_instance() {
    let arch = Arch::X86_64;
    let dir = berth_tests::log_dir("disk-config-ec2");
    let image =
        berth_tests::build_image(arch, &says("image"), &dir).unwrap_or_else(|e| panic!("{e}"));
    let port = serve_metadata(says("ec2"));
    let mut config = berth_tests::machine_config(arch, &image, &dir);
    config.user_net = false;
    config
        .extra_args
        .extend(berth_tests::ec2_machine_args(port));
    let machine = berth_tests::start_to_ready(&config);
    let c = format!("console: {}", machine.console_log().display());
    let source = wait_seen(&machine, r"^berth event=config ");
    assert!(source.contains("source=ec2 "), "{source}; {c}");
    wait_seen(&machine, r"^from_ec2 \| manifest-from-ec2$");
    // netd took the new manifest by re-executing itself and kept its lease.
    wait_seen(&machine, r"^berth event=netd-reload ");
    let resumed = wait_seen(&machine, r"^berth event=dhcp-resumed iface=eth0 ");
    assert!(resumed.contains("addr=169.254.0.15/16 "), "{resumed}; {c}");
    assert!(
        events::events(&machine, "created", Some("from_image")).is_empty(),
        "{c}"
    );
}
