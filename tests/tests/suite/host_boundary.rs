//! The host boundary, attacked from hostile images and containers: symlinks in an image that
//! point at host paths (absolute and `../..` forms) must not make berth create, open or mount
//! anything outside the container's root, and a container's `kill(0, ...)` and `kill(-1, ...)`
//! must reach its own processes only. Both arches: the runtime's path resolution and the
//! signal paths run the same code, but on different kernels' syscall tables.
//!
//! What the host sees is read from a privileged `pid = "host"` container through
//! `/proc/1/root`, the host's root as PID 1 sees it.

use std::path::{Path, PathBuf};

use berth_arch::Arch;
use berth_image::images::ImageSource;
use berth_qemu::{GuestExit, Machine};
use berth_tests::images::variant_layout;
use berth_tests::{
    berth_ctl, berth_ctl_ok, build_image_with_images, log_dir, machine_config, ps_pid,
    start_to_ready, wait_seen, SHUTDOWN_TIMEOUT,
};

/// Host paths the hostile image's symlinks point at; none may exist on the host afterwards.
const ESCAPES: &[&str] = &[
    "/etc/berth-escape-hosts",
    "/etc/berth-escape-resolv",
    "/etc/berth-escape-volume",
    "/etc/berth-escape-workdir",
    "/etc/berth-escape-dev",
];

const MANIFEST: &str = r#"
[containers.hostile]
image = "hostile:1"
command = ["sh", "-c", "cat /etc/hosts /etc/resolv.conf >/dev/null && touch /data/from-hostile && echo hostile=up cwd=$(pwd) && exec sleep 3600"]
working_dir = "/work"
volumes = ["hv:/data"]

[containers.devlink]
image = "devlink:1"
command = ["true"]

[containers.inspector]
image = "busybox:1.35"
command = ["sleep", "3600"]
pid = "host"
privileged = true

[containers.bystander]
image = "busybox:1.35"
command = ["sleep", "3600"]

[containers.readonly]
image = "busybox:1.35"
command = ["sleep", "3600"]
volumes = ["/dev:/hostdev:ro"]

[containers.fifo]
image = "busybox:1.35"
command = ["sh", "-c", "rm -f /etc/passwd && mkfifo /etc/passwd && echo fifo=planted && exec sleep 3600"]
healthcheck = { test = ["CMD", "true"], interval = "1s", timeout = "2s", retries = 1 }

[containers.leaver]
image = "busybox:1.35"
pid = "host"
command = ["sh", "-c", "sleep 7777 & echo leaver=forked"]

[containers.killer]
image = "busybox:1.35"
command = ["sh", "-c", "echo killer=armed; while [ ! -e /tmp/go ]; do sleep 0.1; done; kill -USR2 0; kill -TERM 0; kill -9 -1; echo killer=sent; exec sleep 3600"]
"#;

/// The hostile image: busybox whose `/etc/hosts`, `/etc/resolv.conf`, volume target and
/// working directory are symlinks to host paths.
fn hostile_image(arch: Arch) -> PathBuf {
    variant_layout(arch, "hostile", |rootfs: &Path| {
        let link = |target: &str, at: &str| {
            let path = rootfs.join(at);
            let _ = std::fs::remove_file(&path);
            std::os::unix::fs::symlink(target, &path).map_err(|e| format!("{at}: {e}"))
        };
        link("/etc/berth-escape-hosts", "etc/hosts")?;
        // Enough `..` to climb from any depth of the host's container directories.
        link(
            "../../../../../../../../etc/berth-escape-resolv",
            "etc/resolv.conf",
        )?;
        link("/etc/berth-escape-volume", "data")?;
        link("/etc/berth-escape-workdir", "work")
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// An image whose `/dev` is a symlink to a host path.
fn devlink_image(arch: Arch) -> PathBuf {
    variant_layout(arch, "devlink", |rootfs: &Path| {
        let dev = rootfs.join("dev");
        let _ = std::fs::remove_dir_all(&dev);
        std::os::unix::fs::symlink("/etc/berth-escape-dev", &dev).map_err(|e| format!("dev: {e}"))
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn boot(arch: Arch, test: &str) -> (Machine, PathBuf) {
    let dir = log_dir(test);
    let images = vec![
        ImageSource {
            name: Some("hostile:1".into()),
            dir: hostile_image(arch),
        },
        ImageSource {
            name: Some("devlink:1".into()),
            dir: devlink_image(arch),
        },
    ];
    let image = build_image_with_images(arch, MANIFEST, &dir, None, None, images)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut config = machine_config(arch, &image, &dir);
    let socket = dir.join("control.sock");
    config.control_socket = Some(socket.clone());
    (start_to_ready(&config), socket)
}

/// `sh -c SCRIPT` in `container`; its stdout.
fn sh(socket: &Path, container: &str, script: &str) -> String {
    berth_ctl_ok(socket, &["exec", container, "sh", "-c", script])
}

fn boundary_holds(arch: Arch, test: &str) {
    let (machine, socket) = boot(arch, test);
    let console = format!("console: {}", machine.console_log().display());

    // Symlinks: the container runs with each path inside its own root.
    wait_seen(&machine, r"^berth event=started container=hostile ");
    let hostile = wait_seen(&machine, r"^hostile \| hostile=up");
    // `pwd` prints the physical path: the link's target, inside the container's root.
    assert!(
        hostile.contains("cwd=/etc/berth-escape-workdir"),
        "{hostile}; {console}"
    );
    let inside = sh(
        &socket,
        "hostile",
        "for f in /etc/berth-escape-hosts /etc/berth-escape-resolv /etc/berth-escape-workdir; do [ -e $f ] && echo in=$f; done; [ -f /etc/berth-escape-volume/from-hostile ] && echo in=volume; true",
    );
    for expected in [
        "in=/etc/berth-escape-hosts",
        "in=/etc/berth-escape-resolv",
        "in=/etc/berth-escape-workdir",
        "in=volume",
    ] {
        assert!(
            inside.lines().any(|l| l == expected),
            "{expected} inside the container's root: {inside}; {console}"
        );
    }
    // The named volume really is mounted there: the file is in its host directory.
    let host = sh(
        &socket,
        "inspector",
        "for f in /etc/berth-escape-hosts /etc/berth-escape-resolv /etc/berth-escape-volume /etc/berth-escape-workdir /etc/berth-escape-dev; do [ -e /proc/1/root$f ] && echo escaped=$f; done; [ -f /proc/1/root/var/lib/berth/volumes/hv/from-hostile ] && echo volume=ok; true",
    );
    assert!(
        !host.contains("escaped="),
        "created on the host: {host}; {console}"
    );
    assert!(
        host.lines().any(|l| l == "volume=ok"),
        "the volume holds the file: {host}; {console}"
    );
    assert_eq!(ESCAPES.len(), 5);

    // A read-only volume is read-only with every mount below it (the host's /dev/shm under
    // its /dev), and keeps its source's nosuid and nodev.
    let readonly = sh(
        &socket,
        "readonly",
        "touch /hostdev/shm/berth-ro 2>/dev/null && echo shm=writable || echo shm=refused; awk '$5 == \"/hostdev\" || $5 == \"/hostdev/shm\" { print \"mount\", $5, $6 }' /proc/self/mountinfo",
    );
    assert!(
        readonly.lines().any(|l| l == "shm=refused"),
        "a mount under a read-only volume is read-only: {readonly}; {console}"
    );
    for (target, flags) in [
        ("/hostdev", &["ro", "nosuid"][..]),
        ("/hostdev/shm", &["ro", "nosuid", "nodev"][..]),
    ] {
        let options = readonly
            .lines()
            .find_map(|l| l.strip_prefix(&format!("mount {target} ")))
            .unwrap_or_else(|| panic!("{target} is mounted: {readonly}; {console}"));
        for flag in flags {
            assert!(
                options.split(',').any(|o| o == *flag),
                "{target} has {flag}: {options}; {console}"
            );
        }
    }

    // A FIFO planted at /etc/passwd: the health check (an exec, which looks the user up)
    // fails cleanly instead of hanging in open(2), and init keeps answering.
    wait_seen(
        &machine,
        r"^berth event=health container=fifo status=unhealthy ",
    );
    for _ in 0..3 {
        let asked = std::time::Instant::now();
        assert!(ps_pid(&socket, "fifo").is_some(), "fifo runs; {console}");
        assert!(
            asked.elapsed() < std::time::Duration::from_secs(1),
            "ps answered in {:?}; {console}",
            asked.elapsed()
        );
    }

    // What a `pid = "host"` container leaves behind ends with it.
    wait_seen(&machine, r"^berth event=exited container=leaver ");
    let left = sh(
        &socket,
        "inspector",
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^sleep 7777' && echo left=${p#/proc/}; done; echo checked",
    );
    assert_eq!(
        left.trim(),
        "checked",
        "leftovers of leaver: {left}; {console}"
    );

    // A symlinked /dev is refused, naming the path; the others keep running.
    let failed = wait_seen(&machine, r"^berth event=start-failed container=devlink ");
    assert!(
        failed.contains("/dev is a symlink"),
        "the refusal names /dev: {failed}"
    );

    // Signals: kill(0, ...) and kill(-1, ...) from a container's first process.
    let bystander = ps_pid(&socket, "bystander").unwrap_or_else(|| panic!("bystander; {console}"));
    let inspector = ps_pid(&socket, "inspector").unwrap_or_else(|| panic!("inspector; {console}"));
    wait_seen(&machine, r"^killer \| killer=armed");
    let out = berth_ctl(&socket, &["exec", "killer", "touch", "/tmp/go"]);
    assert!(out.status.success(), "exec touch: {out:?}; {console}");
    wait_seen(&machine, r"^killer \| killer=sent");
    // A round trip through init's loop: any signal that reached init or netd has been handled
    // by the time this answers.
    assert_eq!(ps_pid(&socket, "bystander"), Some(bystander), "{console}");
    assert_eq!(ps_pid(&socket, "inspector"), Some(inspector), "{console}");
    let log = machine.console_text();
    for forbidden in [
        "berth event=shutdown",
        "berth event=service-exited service=netd",
        "berth event=exited container=bystander",
        "berth event=exited container=inspector",
    ] {
        assert!(
            !log.contains(forbidden),
            "`{forbidden}` after the container's kill(0)/kill(-1); {console}"
        );
    }
    // netd still holds its lease: its process is the one that started.
    let netd = sh(&socket, "inspector", "pidof netd || echo none");
    assert_ne!(netd.trim(), "none", "netd runs; {console}");

    // The host's /sbin/poweroff (what the kernel's orderly_poweroff runs) asks init for a
    // clean power-off.
    let mut machine = machine;
    let _ = berth_ctl(
        &socket,
        &[
            "exec",
            "inspector",
            "chroot",
            "/proc/1/root",
            "/sbin/poweroff",
        ],
    );
    wait_seen(&machine, r"^berth event=shutdown action=poweroff ");
    let exit = machine
        .wait_exit(SHUTDOWN_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit, GuestExit::PowerOff, "{console}");
}

#[test]
fn hostile_images_and_signals_stay_inside_the_container_x86_64() {
    boundary_holds(Arch::X86_64, "host-boundary-x86_64");
}

#[test]
fn hostile_images_and_signals_stay_inside_the_container_aarch64() {
    boundary_holds(Arch::Aarch64, "host-boundary-aarch64");
}
