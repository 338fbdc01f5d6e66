//! `scripts/install --prefix DIR`: the installed `berth` builds a bootable aarch64 image from
//! any directory, with the guest binaries it installed beside itself.

use std::process::{Command, Stdio};

use berth_arch::Arch;
use berth_qemu::MachineConfig;
use berth_tests::{log_dir, start_to_ready, workspace_root};

/// Seen failing with `lib/berth/<arch>` missing from `guest_binary_candidates`: the installed
/// berth found no init.
#[test]
fn an_installed_berth_builds_a_bootable_image_from_any_directory() {
    let dir = log_dir("install");
    let prefix = dir.join("prefix");
    let _ = std::fs::remove_dir_all(&prefix);
    // The dev profile: the suite has built it already (release would take minutes).
    let install = Command::new(workspace_root().join("scripts/install"))
        .arg("--prefix")
        .arg(&prefix)
        .args(["--profile", "dev"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("scripts/install: {e}"));
    assert!(install.status.success(), "scripts/install: {install:?}");
    let manifest = dir.join("manifest.toml");
    std::fs::write(&manifest, "hostname = \"installed\"\n").unwrap_or_else(|e| panic!("{e}"));
    let out = dir.join("image");
    let build = Command::new(prefix.join("bin/berth"))
        .current_dir("/")
        .args(["build", "--arch", "aarch64", "--manifest"])
        .arg(&manifest)
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("berth build: {e}"));
    assert!(build.status.success(), "installed berth build: {build:?}");
    let config = MachineConfig::new(
        Arch::Aarch64,
        &out.join("kernel"),
        &out.join("initrd"),
        &dir.join("boot"),
    );
    let machine = start_to_ready(&config);
    let ready = machine
        .console_lines()
        .into_iter()
        .find(|l| l.text.starts_with("berth event=ready "))
        .map(|l| l.text)
        .unwrap_or_default();
    assert!(ready.contains("hostname=installed"), "{ready}");
}
