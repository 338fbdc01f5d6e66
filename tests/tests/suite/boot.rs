//! The foundation: an image boots on each arch, says it is ready, and powers off cleanly on
//! the power button.

use berth_arch::Arch;
use berth_qemu::GuestExit;
use berth_tests::{boot, boot_to_ready, pattern, READY_PATTERN, READY_TIMEOUT, SHUTDOWN_TIMEOUT};

const MANIFEST: &str = "hostname = \"boot-test\"\n";

fn boots_to_ready_and_powers_off_on_the_button(arch: Arch) {
    let test = format!("boot-{arch}");
    let mut machine = boot(arch, MANIFEST, &test).unwrap_or_else(|e| panic!("{e}"));
    let ready = machine
        .wait_for_line(&pattern(READY_PATTERN), READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ready.text.contains("hostname=boot-test"),
        "ready line names the manifest's hostname: {}",
        ready.text
    );
    assert!(
        ready.text.contains("power_button=true"),
        "init found the power button before ready: {}; console: {}",
        ready.text,
        machine.console_log().display()
    );
    machine
        .press_power_button()
        .unwrap_or_else(|e| panic!("{e}"));
    machine
        .wait_for_line(
            &pattern(r"^berth event=shutdown action=poweroff reason=power-button"),
            SHUTDOWN_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let exit = machine
        .wait_exit(SHUTDOWN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        exit,
        GuestExit::PowerOff,
        "QEMU exits by itself with a clean power-off; console: {}",
        machine.console_log().display()
    );
    let console = machine.console_text();
    assert!(
        !console.contains("Kernel panic"),
        "no kernel panic; console: {}",
        machine.console_log().display()
    );
    assert!(console.contains("berth event=shutdown-complete action=poweroff"));
}

#[test]
fn x86_64_boots_to_ready_and_powers_off_on_the_button() {
    boots_to_ready_and_powers_off_on_the_button(Arch::X86_64);
}

#[test]
fn aarch64_boots_to_ready_and_powers_off_on_the_button() {
    boots_to_ready_and_powers_off_on_the_button(Arch::Aarch64);
}

#[test]
fn qmp_quit_ends_the_guest_without_a_guest_shutdown() {
    let mut machine = boot_to_ready(Arch::X86_64, MANIFEST, "boot-qmp-quit");
    let exit = machine
        .quit(SHUTDOWN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit, GuestExit::Other("host-qmp-quit".to_string()));
    assert!(!machine.console_text().contains("event=shutdown "));
}

/// The initrd's files stay in the guest's RAM for good, so an image ships each kernel module
/// compressed (init decompresses the ones it loads: gzip for those it loads on every boot, XZ
/// for drivers of hardware that may not be there) and one guest binary: netd and berthctl are
/// links to `/init`. The boots above load modules from these files and run netd through its
/// link.
#[test]
fn the_initrd_ships_compressed_modules_and_one_guest_binary() {
    use std::io::Read;
    let manifest = "[containers.web]\nimage = \"busybox:1.35\"\ncommand = [\"true\"]\n";
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let dir = berth_tests::log_dir(&format!("initrd-contents-{arch}"));
        let image =
            berth_tests::build_image(arch, manifest, &dir).unwrap_or_else(|e| panic!("{e}"));
        let compressed = std::fs::read(image.join("initrd")).unwrap_or_else(|e| panic!("{e}"));
        let mut archive = Vec::new();
        flate2::read::MultiGzDecoder::new(compressed.as_slice())
            .read_to_end(&mut archive)
            .unwrap_or_else(|e| panic!("{e}"));
        let entries = berth_image::initramfs::read_cpio(&archive).unwrap_or_else(|e| panic!("{e}"));
        let symlink_target = |path: &str| {
            entries
                .iter()
                .find(|(p, mode, _)| p == path && mode & 0o170000 == 0o120000)
                .map(|(_, _, target)| String::from_utf8_lossy(target).into_owned())
        };
        assert_eq!(
            symlink_target("usr/lib/berth/netd").as_deref(),
            Some("/init")
        );
        assert_eq!(symlink_target("usr/bin/berthctl").as_deref(), Some("/init"));

        let modules: Vec<_> = entries
            .iter()
            .filter(|(p, mode, _)| p.starts_with("lib/modules/") && mode & 0o170000 == 0o100000)
            .filter(|(p, _, _)| p.contains(".ko"))
            .collect();
        assert!(modules.len() > 10, "{arch}: {} modules", modules.len());
        let file_of = |name: &str| {
            modules
                .iter()
                .map(|(p, _, _)| p.as_str())
                .find(|p| {
                    p.rsplit('/')
                        .next()
                        .is_some_and(|f| f.starts_with(&format!("{name}.ko")))
                })
                .unwrap_or_else(|| panic!("{arch}: no {name} module"))
        };
        // Loaded on every boot of this manifest: overlay and the bridge. Coldplug's own
        // pick: the NIC drivers.
        assert!(
            file_of("overlay").ends_with(".ko.gz"),
            "{}",
            file_of("overlay")
        );
        assert!(
            file_of("bridge").ends_with(".ko.gz"),
            "{}",
            file_of("bridge")
        );
        assert!(
            file_of("vmxnet3").ends_with(".ko.xz"),
            "{}",
            file_of("vmxnet3")
        );
        for (path, _, data) in &modules {
            let mut module = Vec::new();
            let read = if path.ends_with(".ko.xz") {
                lzma_rust2::XzReader::new(data.as_slice(), false).read_to_end(&mut module)
            } else if path.ends_with(".ko.gz") {
                flate2::read::GzDecoder::new(data.as_slice()).read_to_end(&mut module)
            } else {
                panic!("{arch}: {path} is not compressed")
            };
            read.unwrap_or_else(|e| panic!("{arch}: {path}: {e}"));
            assert!(
                module.starts_with(b"\x7fELF"),
                "{arch}: {path} is no module"
            );
            assert!(data.len() < module.len(), "{arch}: {path} did not shrink");
        }
        let (_, _, dep) = entries
            .iter()
            .find(|(p, _, _)| p.ends_with("/modules.dep"))
            .unwrap_or_else(|| panic!("{arch}: no modules.dep"));
        let dep = String::from_utf8_lossy(dep);
        for word in dep.split_whitespace() {
            let file = word.trim_end_matches(':');
            assert!(
                modules.iter().any(|(p, _, _)| p.ends_with(file)),
                "{arch}: modules.dep names {file}, which the image does not ship"
            );
        }
    }
}
