//! Updates in place, the staging half: a host booted through UEFI from a v1 disk takes a
//! signed v2 bundle over its control port (`berth ctl update`) into the slot it is not
//! running, refuses bundles that are signed by another key, unsigned, truncated, tampered
//! with or for the other arch (each with its reason, and the ESP byte for byte as it was),
//! and after a power cycle boots v2 from slot b, with the data v1 wrote on the data partition,
//! and commits it. The power cut in the middle of writing slot b leaves slot a and the
//! loader entries as they were. An update that never proves itself rolls back by itself.
//!
//! Named `ab_update` so that it sorts first: these are the suite's longest tests (the
//! rollbacks boot six times each), and libtest starts tests in name order, so they run while
//! the short ones fill the other core instead of running alone at the end.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_arch::Arch;
use berth_image::{DiskFormat, DiskOptions};
use berth_qemu::{GuestExit, Machine};
use berth_tests::{berth_ctl, berth_ctl_ok, events, log_dir, wait_seen};
use sha2::{Digest, Sha256};

fn manifest(version: &str, key: &str, container: &str) -> String {
    manifest_with(version, key, container, "")
}

/// [`manifest`] with `extra` lines in the container's table.
fn manifest_with(version: &str, key: &str, container: &str, extra: &str) -> String {
    format!(
        r#"hostname = "host-v{version}"

[update]
version = "{version}"
keys = ["{key}"]
commit_timeout = "{COMMIT_TIMEOUT_SECS}s"

[containers.{container}]
image = "busybox:1.35"
volumes = ["data:/data"]
command = ["sh", "-c", "echo seen=$(cat /data/mark 2>/dev/null || echo nothing); echo written-by-v{version} > /data/mark; sync; echo {container}-v{version}; exec sleep 100000"]
{extra}
"#
    )
}

/// A trial's time to prove itself in these tests.
const COMMIT_TIMEOUT_SECS: u64 = 10;

/// A key pair in `dir`: the secret key file and the public key line.
fn key_pair(dir: &Path, name: &str) -> (PathBuf, String) {
    let secret = berth_update::generate_key_pair().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join(format!("{name}.key"));
    let _ = std::fs::remove_file(&path);
    secret.write(&path).unwrap_or_else(|e| panic!("{e}"));
    (path, secret.public_key().to_string())
}

/// SHA-256 of the disk's bytes before its second partition: the GPT and the whole ESP.
fn esp_region_hash(disk: &Path) -> String {
    let mut file = std::fs::File::open(disk).unwrap_or_else(|e| panic!("{e}"));
    // The second GPT entry (LBA 2, 128 bytes each) holds the data partition's first LBA.
    let mut first_lba = [0u8; 8];
    file.seek(SeekFrom::Start(1024 + 128 + 32))
        .and_then(|_| file.read_exact(&mut first_lba))
        .unwrap_or_else(|e| panic!("{e}"));
    let end = u64::from_le_bytes(first_lba) * 512;
    assert!(end > 1 << 20, "the data partition starts at {end}");
    file.seek(SeekFrom::Start(0))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut hasher = Sha256::new();
    std::io::copy(&mut file.take(end), &mut hasher).unwrap_or_else(|e| panic!("{e}"));
    format!("{:x}", hasher.finalize())
}

/// The ESP's first byte and length on a raw disk, from its GPT entry (the first, at LBA 2).
fn esp_extent(file: &mut std::fs::File) -> (u64, u64) {
    let (mut first, mut last) = ([0u8; 8], [0u8; 8]);
    file.seek(SeekFrom::Start(1024 + 32))
        .and_then(|_| file.read_exact(&mut first))
        .and_then(|()| file.read_exact(&mut last))
        .unwrap_or_else(|e| panic!("{e}"));
    let (first, last) = (u64::from_le_bytes(first), u64::from_le_bytes(last));
    (first * 512, (last + 1 - first) * 512)
}

/// Runs `with` on the raw disk's ESP, a FAT filesystem, and writes the ESP back when
/// `write` is set.
fn on_esp<T>(
    disk: &Path,
    write: bool,
    with: impl FnOnce(&fatfs::FileSystem<&mut Cursor<Vec<u8>>>) -> T,
) -> T {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(disk)
        .unwrap_or_else(|e| panic!("{}: {e}", disk.display()));
    let (start, len) = esp_extent(&mut file);
    let mut bytes = vec![0u8; usize::try_from(len).unwrap_or_else(|e| panic!("{e}"))];
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.read_exact(&mut bytes))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut esp = Cursor::new(bytes);
    let fs = fatfs::FileSystem::new(&mut esp, fatfs::FsOptions::new())
        .unwrap_or_else(|e| panic!("the ESP of {}: {e}", disk.display()));
    let out = with(&fs);
    fs.unmount().unwrap_or_else(|e| panic!("{e}"));
    if write {
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.write_all(esp.get_ref()))
            .and_then(|()| file.sync_all())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    out
}

/// Every file on the raw disk's ESP (`loader/entries/berth-a.conf`, ...) with its SHA-256.
fn esp_files(disk: &Path) -> BTreeMap<String, String> {
    fn walk(
        dir: fatfs::Dir<'_, &mut Cursor<Vec<u8>>>,
        prefix: &str,
        out: &mut BTreeMap<String, String>,
    ) {
        for entry in dir.iter() {
            let entry = entry.unwrap_or_else(|e| panic!("{e}"));
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = format!("{prefix}{name}");
            if entry.is_dir() {
                walk(entry.to_dir(), &format!("{path}/"), out);
            } else {
                let mut hasher = Sha256::new();
                std::io::copy(&mut entry.to_file(), &mut hasher)
                    .unwrap_or_else(|e| panic!("{path}: {e}"));
                out.insert(path, format!("{:x}", hasher.finalize()));
            }
        }
    }
    on_esp(disk, false, |fs| {
        let mut files = BTreeMap::new();
        walk(fs.root_dir(), "", &mut files);
        files
    })
}

/// The test-only `berth.test_update_pause=` (see init's `cmdline`) put on slot a's command
/// line on the raw disk, or taken off it: `berth build` has no way to add it, and a test
/// needs it on one boot only.
fn set_update_pause(disk: &Path, pause: Option<&str>) {
    const ENTRY: &str = "loader/entries/berth-a.conf";
    on_esp(disk, true, |fs| {
        let mut text = String::new();
        fs.root_dir()
            .open_file(ENTRY)
            .and_then(|mut f| f.read_to_string(&mut text))
            .unwrap_or_else(|e| panic!("{ENTRY}: {e}"));
        let lines: Vec<String> = text
            .lines()
            .map(|line| match line.strip_prefix("options ") {
                Some(options) => {
                    let mut words: Vec<&str> = options
                        .split_whitespace()
                        .filter(|w| !w.starts_with("berth.test_update_pause="))
                        .collect();
                    let setting = pause.map(|p| format!("berth.test_update_pause={p}"));
                    words.extend(setting.as_deref());
                    format!("options {}", words.join(" "))
                }
                None => line.to_string(),
            })
            .collect();
        let mut file = fs
            .root_dir()
            .create_file(ENTRY)
            .unwrap_or_else(|e| panic!("{ENTRY}: {e}"));
        file.truncate()
            .and_then(|()| file.write_all(format!("{}\n", lines.join("\n")).as_bytes()))
            .and_then(|()| file.flush())
            .unwrap_or_else(|e| panic!("{ENTRY}: {e}"));
    });
}

/// The v1 image with a raw disk (256 MiB of data partition) built from `manifest` in
/// `dir/v1`: the image directory and the disk.
fn v1_disk(arch: Arch, dir: &Path, manifest: &str) -> (PathBuf, PathBuf) {
    let v1_dir = dir.join("v1");
    std::fs::create_dir_all(&v1_dir).unwrap_or_else(|e| panic!("{e}"));
    let image = berth_tests::build_image_with_disk(
        arch,
        manifest,
        &v1_dir,
        Some(DiskOptions {
            format: DiskFormat::Raw,
            data_mib: 256,
        }),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let disk = image.join(DiskFormat::Raw.file_name());
    (image, disk)
}

fn boot(arch: Arch, image: &Path, disk: &Path, log: &Path) -> (Machine, PathBuf) {
    let mut config = berth_tests::disk_machine_config(arch, image, disk, DiskFormat::Raw, log);
    let socket = log.join("control.sock");
    config.control_socket = Some(socket.clone());
    (berth_tests::boot_disk_to_ready(&config), socket)
}

/// `berth ctl update [--reboot] FILE`: its exit code and stderr.
fn update(socket: &Path, bundle: &Path, reboot: bool) -> (Option<i32>, String) {
    update_with(socket, &[&bundle.display().to_string()], reboot)
}

/// `berth ctl update [--reboot] ARGS...` (a file, or `--pull REF`): its exit code, and its
/// stdout and stderr together.
fn update_with(socket: &Path, source: &[&str], reboot: bool) -> (Option<i32>, String) {
    let mut args = vec!["update"];
    if reboot {
        args.push("--reboot");
    }
    args.extend_from_slice(source);
    let out = berth_ctl(socket, &args);
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn write_variant(from: &Path, to: &Path, change: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(from).unwrap_or_else(|e| panic!("{e}"));
    change(&mut bytes);
    std::fs::write(to, &bytes).unwrap_or_else(|e| panic!("{e}"));
    to.to_path_buf()
}

fn stages_and_boots_the_other_slot(arch: Arch, test: &str) {
    let dir = log_dir(test);
    let (key, public) = key_pair(&dir, "update");
    let (other_key, _) = key_pair(&dir, "other");

    let (image, disk) = v1_disk(arch, &dir, &manifest("1", &public, "app"));
    let bundle_for = |name: &str, arch: Arch, key: &Path| {
        let out = dir.join(name);
        std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{e}"));
        berth_tests::build_update_bundle(arch, &manifest("2", &public, "app2"), &out, key)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let good = bundle_for("v2", arch, &key);
    let other_signer = bundle_for("v2-other-key", arch, &other_key);
    let other_arch = bundle_for(
        "v2-other-arch",
        match arch {
            Arch::X86_64 => Arch::Aarch64,
            Arch::Aarch64 => Arch::X86_64,
        },
        &key,
    );
    let truncated = write_variant(&good, &dir.join("truncated.berth"), |b| {
        b.truncate(b.len() / 2)
    });
    let tampered = write_variant(&good, &dir.join("tampered.berth"), |b| {
        // A byte of the initrd, the last part: past the 1 KiB tar trailer and any padding.
        let at = b.len() - 4096;
        if let Some(byte) = b.get_mut(at) {
            *byte ^= 0x55;
        }
    });
    let unsigned = write_variant(&good, &dir.join("unsigned.berth"), |b| {
        // bundle.json alone: its tar header, its data padded to 512, and the trailer.
        let size = b
            .get(124..135)
            .map(|digits| {
                digits
                    .iter()
                    .fold(0usize, |n, d| n * 8 + usize::from(d.saturating_sub(b'0')))
            })
            .unwrap_or(0);
        b.truncate(512 + size.div_ceil(512) * 512);
        b.extend_from_slice(&[0u8; 1024]);
    });

    let (mut first, socket) = boot(arch, &image, &disk, &dir.join("boot-1"));
    let c1 = format!("console: {}", first.console_log().display());
    wait_seen(&first, r"^app \| app-v1$");
    let slot = wait_seen(&first, r"^berth event=boot-slot ");
    assert!(slot.contains("slot=a"), "{slot}; {c1}");

    // Every bad bundle is refused with its reason, and the ESP is left as it was.
    let before = esp_region_hash(&disk);
    // (`--reboot` with a refused bundle reboots nothing.)
    for (bundle, reason, reboot) in [
        (
            &other_signer,
            "not signed by a key this host accepts",
            false,
        ),
        (&other_arch, "this host is", false),
        (&truncated, "truncated", false),
        (&tampered, "part `initrd` does not match its digest", false),
        (&unsigned, "unsigned", true),
    ] {
        let (code, said) = update(&socket, bundle, reboot);
        assert_eq!(code, Some(1), "{}: {said}; {c1}", bundle.display());
        assert!(
            said.contains(reason),
            "{}: `{reason}` in {said}; {c1}",
            bundle.display()
        );
    }
    assert_eq!(
        esp_region_hash(&disk),
        before,
        "a refused bundle changed the ESP; {c1}"
    );
    let refused = events::events(&first, "update-refused", None);
    assert_eq!(refused.len(), 5, "{c1}");

    assert!(berth_ctl_ok(&socket, &["ps"]).contains("app"), "{c1}");

    // The good one is staged into slot b and, with `--reboot`, booted at once.
    let (code, said) = update(&socket, &good, true);
    assert_eq!(code, Some(0), "{said}; {c1}");
    assert!(said.contains("staged slot=b version=2"), "{said}; {c1}");
    let staged = wait_seen(&first, r"^berth event=update-staged ");
    assert!(
        staged.contains("slot=b") && staged.contains("version=2"),
        "{staged}; {c1}"
    );
    assert_eq!(
        first
            .wait_exit(berth_tests::SHUTDOWN_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}")),
        GuestExit::Reboot,
        "update --reboot; {c1}"
    );
    assert_ne!(esp_region_hash(&disk), before, "the ESP took the update");

    // The next boot is v2, from slot b, on trial, with v1's data; with no health check to
    // wait for, it is committed at once.
    let (mut second, socket) = boot(arch, &image, &disk, &dir.join("boot-2"));
    let c2 = format!("console: {}", second.console_log().display());
    let slot = wait_seen(&second, r"^berth event=boot-slot ");
    assert!(slot.contains("slot=b"), "{slot}; {c2}");
    wait_seen(&second, r"^app2 \| seen=written-by-v1$");
    wait_seen(&second, r"^app2 \| app2-v2$");
    let ready = wait_seen(&second, r"^berth event=ready ");
    assert!(ready.contains("hostname=host-v2"), "{ready}; {c2}");
    wait_seen(&second, r"^berth event=update-trial slot=b ");
    wait_seen(&second, r"^berth event=update-committed slot=b ");
    berth_ctl_ok(&socket, &["poweroff"]);
    assert_eq!(
        second
            .wait_exit(berth_tests::SHUTDOWN_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}")),
        GuestExit::PowerOff,
        "{c2}"
    );

    // Committed: slot b boots again, no longer on trial.
    let (mut third, socket) = boot(arch, &image, &disk, &dir.join("boot-3"));
    let c3 = format!("console: {}", third.console_log().display());
    let slot = wait_seen(&third, r"^berth event=boot-slot ");
    assert!(slot.contains("slot=b"), "{slot}; {c3}");
    wait_seen(&third, r"^app2 \| seen=written-by-v2$");
    let checked = wait_seen(&third, r"^berth event=update-checked ");
    assert!(checked.contains("result=committed"), "{checked}; {c3}");
    assert!(
        events::events(&third, "update-trial", None).is_empty(),
        "a committed slot is not on trial; {c3}"
    );

    // `version` shows both slots; `rollback` makes slot a the next boot, by hand.
    let version = berth_ctl_ok(&socket, &["version"]);
    assert_eq!(
        version.lines().collect::<Vec<_>>(),
        [
            "slot=b version=2 generation=2 state=committed running",
            "slot=a version=1 generation=1 state=committed"
        ],
        "{c3}"
    );
    let rolled = berth_ctl_ok(&socket, &["rollback"]);
    assert!(rolled.contains("slot a boots next"), "{rolled}; {c3}");
    berth_ctl_ok(&socket, &["poweroff"]);
    third
        .wait_exit(berth_tests::SHUTDOWN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let (fourth, _) = boot(arch, &image, &disk, &dir.join("boot-4"));
    let c4 = format!("console: {}", fourth.console_log().display());
    let slot = wait_seen(&fourth, r"^berth event=boot-slot ");
    assert!(slot.contains("slot=a"), "{slot}; {c4}");
    wait_seen(&fourth, r"^app \| seen=written-by-v2$");
    let checked = wait_seen(&fourth, r"^berth event=update-checked ");
    assert!(checked.contains("result=committed"), "{checked}; {c4}");
}

/// QEMU killed in the middle of the ESP's writes (held there by the test-only
/// `berth.test_update_pause`, with slot b's kernel written to its temporary name) leaves slot
/// a and the loader entries as they were: the next boot is slot a, unchanged, and a new
/// `update` then succeeds. That v2's container never becomes healthy: each boot of it reboots itself once
/// `commit_timeout` has passed; after systemd-boot's three tries the host is back on v1 by
/// itself, says so, and stays there with its data.
fn an_unhealthy_update_rolls_back_by_itself(arch: Arch, test: &str) {
    let dir = log_dir(test);
    let (key, public) = key_pair(&dir, "update");
    let (image, disk) = v1_disk(arch, &dir, &manifest("1", &public, "app"));
    let v2_dir = dir.join("v2");
    std::fs::create_dir_all(&v2_dir).unwrap_or_else(|e| panic!("{e}"));
    let sick = manifest_with(
        "2",
        &public,
        "sick",
        "healthcheck = { test = \"exit 1\", interval = \"1s\", retries = 1 }",
    );
    let bundle = berth_tests::build_update_bundle(arch, &sick, &v2_dir, &key)
        .unwrap_or_else(|e| panic!("{e}"));

    // QEMU killed in the middle of writing slot b: the next boot is slot a, unchanged.
    set_update_pause(&disk, Some("60s"));
    let before = esp_files(&disk);
    let (mut cut, socket) = boot(arch, &image, &disk, &dir.join("boot-0"));
    let c0 = format!("console: {}", cut.console_log().display());
    let versions = berth_ctl_ok(&socket, &["version"]);
    let bundle_arg = bundle.display().to_string();
    let mut streaming = berth_tests::berth_ctl_command(&socket, &["update", &bundle_arg])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_seen(&cut, r"^berth-update: test pause: slot b half written ");
    cut.kill();
    let _ = streaming.kill();
    let _ = streaming.wait();
    assert!(
        events::events(&cut, "update-staged", None).is_empty(),
        "staged before the cut; {c0}"
    );
    let after = esp_files(&disk);
    assert!(
        after.contains_key("berth/b/vmlinuz.new"),
        "the cut came before slot b was written to: {after:?}; {c0}"
    );
    let outside_b = |files: &BTreeMap<String, String>| {
        files
            .iter()
            .filter(|(path, _)| !path.starts_with("berth/b/"))
            .map(|(path, hash)| (path.clone(), hash.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        outside_b(&after),
        outside_b(&before),
        "the cut changed the ESP outside slot b's files; {c0}"
    );
    set_update_pause(&disk, None);

    let (mut first, socket) = boot(arch, &image, &disk, &dir.join("boot-1"));
    let c1 = format!("console: {}", first.console_log().display());
    let slot = wait_seen(&first, r"^berth event=boot-slot ");
    assert!(slot.contains("slot=a"), "{slot}; {c1}");
    let checked = wait_seen(&first, r"^berth event=update-checked ");
    assert!(checked.contains("result=committed"), "{checked}; {c1}");
    wait_seen(&first, r"^app \| app-v1$");
    assert_eq!(berth_ctl_ok(&socket, &["version"]), versions, "{c1}");
    let (code, said) = update(&socket, &bundle, false);
    assert_eq!(code, Some(0), "{said}; {c1}");
    assert!(said.contains("staged slot=b version=2"), "{said}; {c1}");
    berth_ctl_ok(&socket, &["poweroff"]);
    first
        .wait_exit(berth_tests::SHUTDOWN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));

    // Three tries of slot b, each ended by init when the commit timeout passes.
    for n in 2..=4 {
        let (mut trying, _) = boot(arch, &image, &disk, &dir.join(format!("boot-{n}")));
        let c = format!("console: {}", trying.console_log().display());
        let slot = wait_seen(&trying, r"^berth event=boot-slot ");
        assert!(slot.contains("slot=b"), "try {n}: {slot}; {c}");
        wait_seen(&trying, r"^berth event=update-trial slot=b ");
        let exit = trying
            .wait_exit(Duration::from_secs(COMMIT_TIMEOUT_SECS) + berth_tests::SHUTDOWN_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(exit, GuestExit::Reboot, "try {n}; {c}");
        let failed = wait_seen(&trying, r"^berth event=update-commit-failed ");
        assert!(
            failed.contains("reason=commit-timeout") && failed.contains("waiting_for=sick"),
            "try {n}: {failed}; {c}"
        );
    }

    // The tries are spent: systemd-boot boots slot a, and init says why.
    let (back, _) = boot(arch, &image, &disk, &dir.join("boot-5"));
    let c5 = format!("console: {}", back.console_log().display());
    let slot = wait_seen(&back, r"^berth event=boot-slot ");
    assert!(slot.contains("slot=a"), "{slot}; {c5}");
    let rolled_back = wait_seen(&back, r"^berth event=update-rolled-back ");
    assert!(
        rolled_back.contains("from=b to=a reason=boot-tries-spent"),
        "{rolled_back}; {c5}"
    );
    wait_seen(&back, r"^app \| seen=written-by-v2$");
    wait_seen(&back, r"^app \| app-v1$");
}

#[test]
fn an_unhealthy_update_rolls_back_by_itself_x86_64() {
    an_unhealthy_update_rolls_back_by_itself(Arch::X86_64, "update-rollback");
}

/// The same through aarch64's UEFI (AAVMF): the cut mid-write, the boot counter that
/// systemd-boot for arm64 counts down, and the fall back to slot a.
#[test]
fn an_unhealthy_update_rolls_back_by_itself_aarch64() {
    an_unhealthy_update_rolls_back_by_itself(Arch::Aarch64, "update-rollback-aarch64");
}

#[test]
fn a_signed_bundle_is_staged_into_the_other_slot_and_boots_there() {
    stages_and_boots_the_other_slot(Arch::X86_64, "update-stage");
}

/// The same through aarch64's UEFI (AAVMF) and its boot loader entries.
#[test]
fn a_signed_bundle_is_staged_into_the_other_slot_and_boots_there_aarch64() {
    stages_and_boots_the_other_slot(Arch::Aarch64, "update-stage-aarch64");
}

/// `berthctl update --pull REF`: the bundle comes from the registry the host pulls its images
/// from, as an OCI artifact (what `oras push` makes). An artifact signed by another key, one
/// without a bundle layer, and a "reference" that is an option of berth-pull's are refused
/// with their reason, the ESP untouched; the good one
/// is staged into slot b and, with `--reboot`, boots there. Seen failing with the staging
/// process reading stdin whatever it was asked (the pull was never made).
#[test]
fn a_bundle_pulled_from_a_registry_is_staged_and_boots() {
    use berth_tests::registry::{push_artifact, Registry};
    let arch = Arch::X86_64;
    let dir = log_dir("update-pull");
    let registry = Registry::start(&dir.join("registry"));
    let (key, public) = key_pair(&dir, "update");
    let (other_key, _) = key_pair(&dir, "other");
    let registries = format!(
        "\n[registries.\"{}\"]\ninsecure = true\n",
        registry.guest_addr()
    );
    let (image, disk) = v1_disk(
        arch,
        &dir,
        &format!("{}{registries}", manifest("1", &public, "app")),
    );
    let v2 = format!("{}{registries}", manifest("2", &public, "app2"));
    let push = |tag: &str, signer: &Path, media_type: &str| {
        let out = dir.join(format!("bundle-{tag}"));
        std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{e}"));
        let bundle = berth_tests::build_update_bundle(arch, &v2, &out, signer)
            .unwrap_or_else(|e| panic!("{e}"));
        let bytes = std::fs::read(&bundle).unwrap_or_else(|e| panic!("{e}"));
        push_artifact(
            &registry.host_addr(),
            "berth/host",
            tag,
            berth_control::UPDATE_ARTIFACT_TYPE,
            media_type,
            &bytes,
        )
        .unwrap_or_else(|e| panic!("pushing {tag}: {e}; {}", registry.log().display()));
        format!("{}/berth/host:{tag}", registry.guest_addr())
    };
    let good = push("2", &key, berth_control::UPDATE_MEDIA_TYPE);
    let other_signer = push("2-other-key", &other_key, berth_control::UPDATE_MEDIA_TYPE);
    let not_a_bundle = push("2-not-a-bundle", &key, "application/octet-stream");

    let (first, socket) = boot(arch, &image, &disk, &dir.join("boot-1"));
    let c1 = format!("console: {}", first.console_log().display());
    wait_seen(&first, r"^app \| app-v1$");
    let before = esp_region_hash(&disk);
    let pull = |reference: &str, reboot: bool| update_with(&socket, &["--pull", reference], reboot);
    let flag = "--store=/etc".to_string();
    for (reference, reason) in [
        (&flag, "is not an image reference"),
        (&other_signer, "not signed by a key this host accepts"),
        (
            &not_a_bundle,
            "has no layer of media type `application/vnd.berth.update.bundle.v1`",
        ),
    ] {
        let (code, said) = pull(reference, false);
        assert_eq!(code, Some(1), "{reference}: {said}; {c1}");
        assert!(
            said.contains(reason),
            "{reference}: `{reason}` in {said}; {c1}"
        );
    }
    assert_eq!(
        esp_region_hash(&disk),
        before,
        "a refused pull changed the ESP; {c1}"
    );

    let (code, said) = pull(&good, true);
    assert_eq!(code, Some(0), "{said}; {c1}");
    assert!(
        said.contains("pulled ") && said.contains("staged slot=b version=2"),
        "{said}; {c1}"
    );
    let mut first = first;
    assert_eq!(
        first
            .wait_exit(berth_tests::SHUTDOWN_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}")),
        GuestExit::Reboot,
        "update --pull --reboot; {c1}"
    );

    let (second, _) = boot(arch, &image, &disk, &dir.join("boot-2"));
    let c2 = format!("console: {}", second.console_log().display());
    let slot = wait_seen(&second, r"^berth event=boot-slot ");
    assert!(slot.contains("slot=b"), "{slot}; {c2}");
    wait_seen(&second, r"^app2 \| app2-v2$");
    wait_seen(&second, r"^berth event=update-committed ");
}
