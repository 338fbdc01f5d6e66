//! Air-gapped images: `--image NAME:TAG=FILE` with a `docker save` archive and an
//! `oci-archive`, both written by skopeo from the busybox test layout, baked into one image
//! that boots without any network and runs a container from each.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use berth_arch::Arch;
use berth_image::images::ImageSource;
use berth_image::kernel::default_cache_dir;
use berth_image::{BuildOptions, KernelChoice};
use berth_tests::images::{busybox_layout, BUSYBOX_TAG};
use berth_tests::{events, guest_init, log_dir, machine_config, wait_seen};

/// The names the manifest uses; the archives' own names differ on purpose for the OCI one (its
/// ref name is the bare tag `1`, picked by the tag of `NAME:TAG`).
const FROM_DOCKER: &str = "busybox-save:1";
const FROM_OCI: &str = "busybox-oci:1";

const MANIFEST: &str = r#"
[containers.from_docker]
image = "busybox-save:1"
command = ["sh", "-c", "echo marker-from-docker-archive"]

[containers.from_oci]
image = "busybox-oci:1"
command = ["sh", "-c", "echo marker-from-oci-archive"]
"#;

/// `skopeo copy --quiet oci:LAYOUT:TAG DESTINATION`; panics with skopeo's stderr.
fn skopeo_copy(layout: &Path, destination: &str) {
    let source = format!("oci:{}:{BUSYBOX_TAG}", layout.display());
    let output = Command::new("skopeo")
        .args(["copy", "--quiet", &source, destination])
        .output()
        .unwrap_or_else(|e| panic!("skopeo: {e} (Debian's skopeo package)"));
    assert!(
        output.status.success(),
        "skopeo copy {source} {destination}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn x86_64_docker_and_oci_archives_boot_without_a_network() {
    let started = Instant::now();
    let arch = Arch::X86_64;
    let dir = log_dir("image-import");
    let layout = busybox_layout(arch).unwrap_or_else(|e| panic!("{e}"));
    // skopeo appends to an existing docker archive: always start from nothing.
    let docker_archive = dir.join("busybox-save.tar");
    let oci_archive = dir.join("busybox-oci.tar");
    let _ = std::fs::remove_file(&docker_archive);
    let _ = std::fs::remove_file(&oci_archive);
    skopeo_copy(
        &layout,
        &format!("docker-archive:{}:{FROM_DOCKER}", docker_archive.display()),
    );
    skopeo_copy(&layout, &format!("oci-archive:{}:1", oci_archive.display()));

    let manifest = dir.join("manifest.toml");
    std::fs::write(&manifest, MANIFEST).unwrap_or_else(|e| panic!("{e}"));
    let image = dir.join("image");
    let options = BuildOptions {
        arch,
        manifest,
        out: image.clone(),
        kernel: KernelChoice::DebianDefault {
            cache_dir: default_cache_dir(),
        },
        init: Some(guest_init(arch).unwrap_or_else(|e| panic!("{e}"))),
        netd: None,
        berthctl: None,
        puller: None,
        images: vec![
            ImageSource {
                name: Some(FROM_DOCKER.to_string()),
                dir: docker_archive,
            },
            ImageSource {
                name: Some(FROM_OCI.to_string()),
                dir: oci_archive,
            },
        ],
        extra_modules: Vec::new(),
        disk: None,
        update_key: None,
    };
    let metadata = berth_image::build(&options).unwrap_or_else(|e| panic!("berth build: {e}"));
    assert_eq!(metadata.images, [FROM_DOCKER, FROM_OCI]);

    let mut config = machine_config(arch, &image, &dir);
    // Air-gapped: no NIC at all, so nothing can come from a registry.
    config.user_net = false;
    let machine = berth_tests::start_to_ready(&config);
    let console = format!("console: {}", machine.console_log().display());
    for (container, marker) in [
        ("from_docker", "marker-from-docker-archive"),
        ("from_oci", "marker-from-oci-archive"),
    ] {
        wait_seen(&machine, &format!(r"^{container} \| {marker}$"));
        wait_seen(
            &machine,
            &format!(r"^berth event=exited container={container} "),
        );
        assert_eq!(
            events::output(&machine, container),
            [marker],
            "{container}; {console}"
        );
        let exits = events::events(&machine, "exited", Some(container));
        assert_eq!(
            exits.first().and_then(|e| e.get("code")),
            Some("0"),
            "{container}: {exits:?}; {console}"
        );
    }
    eprintln!("image-import: {:?} wall time", started.elapsed());
}
