//! Image layers are unpacked by a child of init, never by PID 1 itself: an image whose layer
//! cannot be unpacked (a corrupt gzip stream, with the right digest) or inflates to more than
//! the store has room for (a decompression bomb: 2 GiB of zeros in 2 MiB of gzip, in a guest
//! of 256 MiB whose store is a tmpfs) fails its container's start with the image, the layer
//! and the reason, leaves no layer directory behind, leaves the host its room, and costs the
//! other containers and `berth ctl` nothing. Both arches: the unpack child forks from PID 1
//! on either kernel.

use std::path::PathBuf;

use berth_arch::Arch;
use berth_image::images::ImageSource;
use berth_qemu::Machine;
use berth_tests::events::{events, parse};
use berth_tests::images::{bomb_layer_layout, corrupt_layer_layout};
use berth_tests::{
    berth_ctl_ok, build_image_with_images, log_dir, machine_config, ps_row, start_to_ready,
    wait_seen,
};

const MANIFEST: &str = r#"
[containers.hostile]
image = "hostile:1"
command = ["true"]

[containers.bomb]
image = "bomb:1"
command = ["true"]

[containers.healthy]
image = "busybox:1.35"
command = ["sh", "-c", "echo healthy=up && exec sleep 3600"]

[containers.inspector]
image = "busybox:1.35"
command = ["sleep", "3600"]
pid = "host"
privileged = true
"#;

/// The booted machine, its control socket, and the diff_ids of the corrupt and bomb layers.
fn boot(arch: Arch, test: &str) -> (Machine, PathBuf, String, String) {
    let dir = log_dir(test);
    let (hostile, diff_id) = corrupt_layer_layout(arch).unwrap_or_else(|e| panic!("{e}"));
    let (bomb, bomb_diff_id) = bomb_layer_layout(arch).unwrap_or_else(|e| panic!("{e}"));
    let images = vec![
        ImageSource {
            name: Some("hostile:1".into()),
            dir: hostile,
        },
        ImageSource {
            name: Some("bomb:1".into()),
            dir: bomb,
        },
    ];
    let image = build_image_with_images(arch, MANIFEST, &dir, None, None, images)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut config = machine_config(arch, &image, &dir);
    let socket = dir.join("control.sock");
    config.control_socket = Some(socket.clone());
    (
        start_to_ready(&config),
        socket,
        diff_id.to_string(),
        bomb_diff_id.to_string(),
    )
}

fn a_corrupt_layer_fails_only_its_container(arch: Arch, test: &str) {
    let (machine, socket, diff_id, bomb_diff_id) = boot(arch, test);
    let console = format!("console: {}", machine.console_log().display());

    // The hostile container's start fails, naming the image, the layer and the reason.
    let failed = wait_seen(&machine, r"^berth event=start-failed container=hostile ");
    let error = parse(&failed)
        .and_then(|e| e.get("error").map(str::to_string))
        .unwrap_or_default();
    for expected in ["hostile:1", &diff_id, "corrupt deflate stream"] {
        assert!(
            error.contains(expected),
            "`{expected}` in: {failed}; {console}"
        );
    }
    let unpack_failed = wait_seen(
        &machine,
        r"^berth event=image-unpack-failed image=hostile:1 ",
    );
    assert!(
        unpack_failed.contains(&diff_id),
        "{unpack_failed}; {console}"
    );

    // The healthy image was unpacked by a child of init, with its figures.
    wait_seen(&machine, r"^healthy \| healthy=up");
    let unpacking = events(&machine, "image-unpacking", None);
    for image in ["busybox:1.35", "hostile:1"] {
        let started = unpacking
            .iter()
            .find(|e| e.get("image") == Some(image))
            .unwrap_or_else(|| panic!("image-unpacking for {image}; {console}"));
        let pid = started.number("pid").unwrap_or(1);
        assert!(
            pid > 1,
            "a child unpacks {image}: {}; {console}",
            started.line
        );
    }
    let unpacked = events(&machine, "image-unpacked", None);
    let busybox = unpacked
        .iter()
        .find(|e| e.get("image") == Some("busybox:1.35"))
        .unwrap_or_else(|| panic!("image-unpacked for busybox:1.35; {console}"));
    for figure in ["layers", "bytes", "entries", "duration_ms"] {
        assert!(
            busybox.number(figure).is_some(),
            "{figure} in {}; {console}",
            busybox.line
        );
    }
    assert!(busybox.number("bytes") > Some(1 << 20), "{}", busybox.line);
    assert!(busybox.number("entries") > Some(100), "{}", busybox.line);
    assert!(
        !unpacked.iter().any(|e| e.get("image") == Some("hostile:1")),
        "the hostile image is not reported unpacked; {console}"
    );

    // init still answers, and says where each container stands.
    assert_eq!(
        ps_row(&socket, "healthy").get(1).map(String::as_str),
        Some("running"),
        "{console}"
    );
    let hostile = ps_row(&socket, "hostile");
    assert!(
        hostile.iter().any(|c| c == "stopped"),
        "hostile: {hostile:?}; {console}"
    );

    // The bomb stops at the store's reserve, not at a full disk, and says so.
    let bomb_failed = wait_seen(&machine, r"^berth event=start-failed container=bomb ");
    let bomb_error = parse(&bomb_failed)
        .and_then(|e| e.get("error").map(str::to_string))
        .unwrap_or_default();
    for expected in [
        "bomb:1",
        &bomb_diff_id,
        "reserve",
        "more than the store has room for",
    ] {
        assert!(
            bomb_error.contains(expected),
            "`{expected}` in: {bomb_failed}; {console}"
        );
    }
    assert!(
        !events(&machine, "image-unpacked", None)
            .iter()
            .any(|e| e.get("image") == Some("bomb:1")),
        "the bomb is not reported unpacked; {console}"
    );
    // The room is back: a container writes 16 MiB (more than the reserve of this store).
    let wrote = berth_ctl_ok(
        &socket,
        &[
            "exec",
            "healthy",
            "sh",
            "-c",
            "dd if=/dev/zero of=/room bs=1M count=16 2>&1 && rm /room && echo wrote",
        ],
    );
    assert!(wrote.contains("wrote"), "{wrote}; {console}");

    // Nothing of the corrupt layer or the bomb is left in the store under any name, finished
    // or partial.
    let hex = diff_id.trim_start_matches("sha256:");
    let store = berth_ctl_ok(
        &socket,
        &[
            "exec",
            "inspector",
            "sh",
            "-c",
            "ls -a /proc/1/root/var/lib/berth/layers/sha256/; echo listed",
        ],
    );
    assert!(store.contains("listed"), "{store}; {console}");
    assert!(
        !store.contains(hex),
        "a directory of the corrupt layer: {store}; {console}"
    );
    let bomb_hex = bomb_diff_id.trim_start_matches("sha256:");
    assert!(
        !store.contains(bomb_hex),
        "a directory of the bomb layer: {store}; {console}"
    );
    assert!(
        store
            .lines()
            .filter(|l| !l.starts_with('.') && *l != "listed")
            .count()
            >= 1,
        "the busybox layer is there: {store}"
    );
    assert!(
        !store.contains(".partial-"),
        "no partial layer left: {store}; {console}"
    );
}

#[test]
fn a_corrupt_layer_fails_only_its_container_x86_64() {
    a_corrupt_layer_fails_only_its_container(Arch::X86_64, "image-unpack-x86_64");
}

#[test]
fn a_corrupt_layer_fails_only_its_container_aarch64() {
    a_corrupt_layer_fails_only_its_container(Arch::Aarch64, "image-unpack-aarch64");
}
