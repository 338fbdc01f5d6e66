//! berth's kernel configuration (`kernel/*.config`) and the Buildroot tree that shares it.

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_arch::Arch;
use berth_image::KernelChoice;
use berth_tests::{berth_cli, events, wait_seen, workspace_root};

fn check_fragment(arch: Arch) {
    let berth = berth_cli().unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new(&berth)
        .args(["kernel", "check", "--arch", arch.name()])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("every symbol of the"),
        "{stdout}{stderr}"
    );
}

#[test]
fn the_aarch64_fragment_keeps_every_symbol_after_allnoconfig() {
    check_fragment(Arch::Aarch64);
}

#[test]
fn the_x86_64_fragment_keeps_every_symbol_after_allnoconfig() {
    check_fragment(Arch::X86_64);
}

/// Builds berth's kernel for x86_64 from linux-source-6.1 (minutes on two cores; cached after)
/// and boots berth on it: drivers built in, no module shipped or loaded.
#[test]
#[ignore = "heavy: builds a kernel; run with --ignored"]
fn berths_own_kernel_boots_to_ready() {
    let arch = Arch::X86_64;
    let dir = berth_tests::log_dir("kernel-own-boot");
    let berth = berth_cli().unwrap_or_else(|e| panic!("{e}"));
    let kernel_dir = dir.join("kernel-build");
    let status = Command::new(&berth)
        .args(["kernel", "build", "--arch", arch.name(), "--out"])
        .arg(&kernel_dir)
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success());
    let manifest = r#"
[containers.web]
image = "busybox:1.35"
command = ["sh", "-c", "echo running-on-$(uname -r); mkdir -p /www; echo ok > /www/index.html; exec httpd -f -p 80 -h /www"]

[containers.client]
image = "busybox:1.35"
depends_on = ["web", "network-online"]
command = ["sh", "-c", "until wget -q -O /dev/null http://web/; do sleep 1; done; echo reached-web"]
"#;
    let image = berth_tests::build_image_with(
        arch,
        manifest,
        &dir,
        Some(KernelChoice::Paths {
            image: kernel_dir.join("vmlinuz"),
            modules_dir: None,
        }),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let initrd_mb = std::fs::metadata(image.join("initrd")).map_or(0, |m| m.len()) / 1024;
    println!("initrd with berth's kernel: {initrd_mb} KiB");
    let machine = berth_tests::start_to_ready(&berth_tests::machine_config(arch, &image, &dir));
    let c = format!("console: {}", machine.console_log().display());
    let ready = wait_seen(&machine, r"^berth event=ready ");
    assert!(ready.contains("power_button=true"), "{ready}; {c}");
    wait_seen(&machine, r"^web \| running-on-6\.1\.\d+-berth$");
    wait_seen(&machine, r"^client \| reached-web$");
    assert!(
        !events::events(&machine, "dhcp-bound", None).is_empty(),
        "{c}"
    );
    assert!(!machine.console_text().contains("loaded module"), "{c}");
}

fn buildroot() -> PathBuf {
    workspace_root().join("buildroot")
}

/// `$(BR2_EXTERNAL_BERTH_PATH)/...` paths named in `text`, resolved.
fn referenced_paths(text: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for piece in text.split("$(BR2_EXTERNAL_BERTH_PATH)").skip(1) {
        let path: String = piece
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '"')
            .collect();
        found.push(buildroot().join(path.trim_start_matches('/')));
    }
    found
}

#[test]
fn the_buildroot_tree_names_files_that_exist() {
    let desc = std::fs::read_to_string(buildroot().join("external.desc"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(desc.lines().any(|l| l == "name: BERTH"), "{desc}");
    let mut checked = 0;
    for config in std::fs::read_dir(buildroot().join("configs")).unwrap_or_else(|e| panic!("{e}")) {
        let path = config.unwrap_or_else(|e| panic!("{e}")).path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(text.contains("BR2_PACKAGE_BERTH=y"), "{}", path.display());
        let references = referenced_paths(&text);
        assert!(references.len() >= 4, "{}: {references:?}", path.display());
        for reference in references {
            assert!(
                reference.exists(),
                "{} names {}",
                path.display(),
                reference.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 12);
    let package = std::fs::read_to_string(buildroot().join("package/berth/berth.mk"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(package.contains("$(eval $(cargo-package))"));
    assert!(package.contains("$(eval $(host-cargo-package))"));
    let status = Command::new("bash")
        .arg("-n")
        .arg(buildroot().join("board/berth/post-image.sh"))
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success());
}

/// Lays out what Buildroot would have made: the kernel in BINARIES_DIR, init and netd in
/// TARGET_DIR, the berth tool in HOST_DIR.
fn fake_buildroot_output(dir: &Path, arch: Arch) -> (PathBuf, PathBuf, PathBuf) {
    let binaries = dir.join("images");
    let target = dir.join("target");
    let host = dir.join("host");
    for d in [&binaries, &target.join("usr/lib/berth"), &host.join("bin")] {
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{e}"));
    }
    let kernel = berth_image::kernel::Kernel::debian_default(
        arch,
        &berth_image::kernel::default_cache_dir(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(&kernel.image, binaries.join("bzImage")).unwrap_or_else(|e| panic!("{e}"));
    let copy = |from: PathBuf, to: PathBuf| {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("{e}"));
    };
    copy(
        berth_tests::guest_init(arch).unwrap_or_else(|e| panic!("{e}")),
        target.join("init"),
    );
    copy(
        berth_tests::guest_binary("berth-netd", "netd", arch).unwrap_or_else(|e| panic!("{e}")),
        target.join("usr/lib/berth/netd"),
    );
    std::fs::create_dir_all(target.join("usr/bin")).unwrap_or_else(|e| panic!("{e}"));
    copy(
        berth_tests::guest_binary("berth-ctl", "berthctl", arch).unwrap_or_else(|e| panic!("{e}")),
        target.join("usr/bin/berthctl"),
    );
    copy(
        berth_cli().unwrap_or_else(|e| panic!("{e}")),
        host.join("bin/berth"),
    );
    (binaries, target, host)
}

#[test]
fn the_post_image_script_assembles_a_disk_image() {
    let arch = Arch::X86_64;
    let dir = berth_tests::log_dir("buildroot-post-image");
    let (binaries, target, host) = fake_buildroot_output(&dir, arch);
    let layout = berth_tests::images::busybox_layout(arch).unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new("bash")
        .arg(buildroot().join("board/berth/post-image.sh"))
        .args(["x86_64", "raw"])
        .env("BINARIES_DIR", &binaries)
        .env("TARGET_DIR", &target)
        .env("HOST_DIR", &host)
        .env("BR2_EXTERNAL_BERTH_PATH", buildroot())
        .env("BERTH_IMAGES", format!("busybox:1.35={}", layout.display()))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let out = binaries.join("berth");
    let metadata = berth_image::read_metadata(&out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(metadata.disk.as_deref(), Some("disk.raw"));
    assert!(
        metadata.modules.is_empty(),
        "a built-in kernel ships no modules"
    );
    for file in ["kernel", "initrd", "disk.raw"] {
        assert!(out.join(file).is_file(), "{file}");
    }
}
