//! The `berth` command line as operators' scripts use it: arguments, messages, exit codes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use berth_arch::Arch;
use berth_tests::images::busybox_layout;
use berth_tests::{berth_cli, guest_binary, guest_init, log_dir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// `berth build`'s exit code for a manifest it refuses.
const EXIT_INVALID_MANIFEST: i32 = 3;

/// `berth build` for x86_64 of `manifest` into `<dir>/image`, with `extra` arguments.
fn berth_build_with(dir: &Path, manifest: &str, extra: &[String]) -> Output {
    let manifest_path = dir.join("manifest.toml");
    std::fs::write(&manifest_path, manifest).unwrap_or_else(|e| panic!("{e}"));
    let init = guest_init(Arch::X86_64).unwrap_or_else(|e| panic!("{e}"));
    Command::new(berth_cli().unwrap_or_else(|e| panic!("{e}")))
        .args(["build", "--arch", "x86_64", "--manifest"])
        .arg(&manifest_path)
        .arg("--out")
        .arg(dir.join("image"))
        .arg("--init")
        .arg(init)
        .arg("--netd")
        .arg(guest_binary("berth-netd", "netd", Arch::X86_64).unwrap_or_else(|e| panic!("{e}")))
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn berth_build(dir: &Path, manifest: &str) -> Output {
    berth_build_with(dir, manifest, &[])
}

fn refused_with(dir: &Path, manifest: &str) -> String {
    let output = berth_build(dir, manifest);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(EXIT_INVALID_MANIFEST),
        "stderr: {stderr}"
    );
    assert!(
        !dir.join("image").exists(),
        "nothing is written for a refused manifest"
    );
    stderr
}

#[test]
fn unknown_key_is_refused_with_file_line_field_and_suggestion() {
    let dir = log_dir("cli-unknown-key");
    let stderr = refused_with(&dir, "hostname = \"a\"\n\n[boot]\nmodule = [\"evdev\"]\n");
    let expected = format!(
        "{}:4:1: boot.module: unknown field `module`, expected `modules` or `sysctl` (did you mean `modules`?)",
        dir.join("manifest.toml").display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

#[test]
fn syntax_error_is_refused_with_its_line() {
    let dir = log_dir("cli-syntax-error");
    let stderr = refused_with(&dir, "hostname = \"a\"\n[boot\nmodules = []\n");
    let expected = format!("{}:2:", dir.join("manifest.toml").display());
    assert!(stderr.contains(&expected), "{stderr}");
}

#[test]
fn bad_hostname_and_wrong_types_name_the_field() {
    let dir = log_dir("cli-bad-values");
    let stderr = refused_with(&dir, "hostname = \"no_underscores\"\n");
    assert!(
        stderr.contains(":1:12: hostname: `no_underscores` is not a valid hostname"),
        "{stderr}"
    );
    let stderr = refused_with(&dir, "[boot]\nmodules = [\"evdev\", 42]\n");
    assert!(
        stderr.contains(":2:21: boot.modules[1]: invalid type: integer `42`"),
        "{stderr}"
    );
}

#[test]
fn a_module_the_kernel_lacks_is_refused_at_its_entry() {
    let dir = log_dir("cli-missing-module");
    let stderr = refused_with(
        &dir,
        "[boot]\nmodules = [\n  \"evdev\",\n  \"no_such_driver\",\n]\n",
    );
    assert!(
        stderr.contains(":4:3: boot.modules[1]: kernel 6.")
            && stderr.contains("has no module `no_such_driver`"),
        "{stderr}"
    );
}

#[test]
fn berth_run_boots_the_image_and_ctrl_c_powers_it_off() {
    let dir = log_dir("cli-run");
    let output = berth_build(
        &dir,
        "hostname = \"cli-run\"\n[boot]\nmodules = [\"virtio_net\"]\n",
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut child = Command::new(berth_cli().unwrap_or_else(|e| panic!("{e}")))
        .arg("run")
        .arg(dir.join("image"))
        .args(["--timeout", "120"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.starts_with("berth event=ready "));
    assert!(
        ready.is_some_and(|l| l.contains("hostname=cli-run")),
        "console: {}",
        dir.join("image/run/console.log").display()
    );
    let pid = i32::try_from(child.id()).unwrap_or_else(|e| panic!("{e}"));
    kill(Pid::from_raw(pid), Signal::SIGINT).unwrap_or_else(|e| panic!("{e}"));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        rest.iter()
            .any(|l| l.contains("event=shutdown action=poweroff reason=power-button")),
        "{rest:?}"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "berth run exits 0 when the guest powers off"
    );
}

fn berth_build_with_busybox(dir: &Path, manifest: &str) -> Output {
    let layout = busybox_layout(Arch::X86_64).unwrap_or_else(|e| panic!("{e}"));
    let image = format!("busybox:1.35={}", layout.display());
    berth_build_with(dir, manifest, &["--image".to_string(), image])
}

#[test]
fn unknown_images_cycles_and_bad_durations_are_refused_with_line_and_field() {
    let dir = log_dir("cli-container-errors");
    let cases = [
        (
            "[containers.web]\nimage = \"busybox:1.36\"\n",
            ":2:9: containers.web.image: no image `busybox:1.36` in the image store (it has: busybox:1.35) (did you mean `busybox:1.35`?)",
        ),
        (
            "[containers.a]\nimage = \"busybox:1.35\"\ndepends_on = [\"b\"]\n[containers.b]\nimage = \"busybox:1.35\"\ndepends_on = [\"a\"]\n",
            ":3:15: containers.a.depends_on: dependency cycle: a -> b -> a",
        ),
        (
            "[containers.web]\nimage = \"busybox:1.35\"\nstop_grace_period = \"ten seconds\"\n",
            ":3:21: containers.web.stop_grace_period: `ten seconds` is not a duration",
        ),
        (
            "[containers.web]\nimage = \"busybox:1.35\"\nrestrat = \"always\"\n",
            ":3:1: containers.web.restrat: unknown field `restrat`",
        ),
    ];
    for (manifest, expected) in cases {
        let output = berth_build_with_busybox(&dir, manifest);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(EXIT_INVALID_MANIFEST),
            "{stderr}"
        );
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in: {stderr}"
        );
        assert!(!dir.join("image").exists());
    }
    let fine = berth_build_with_busybox(&dir, "[containers.web]\nimage = \"busybox:1.35\"\n");
    assert!(
        fine.status.success(),
        "{}",
        String::from_utf8_lossy(&fine.stderr)
    );
}

#[test]
fn an_image_layout_for_the_wrong_arch_is_refused() {
    let dir = log_dir("cli-wrong-arch-image");
    std::fs::write(dir.join("manifest.toml"), "").unwrap_or_else(|e| panic!("{e}"));
    let layout = busybox_layout(Arch::Aarch64).unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new(berth_cli().unwrap_or_else(|e| panic!("{e}")))
        .args(["build", "--arch", "x86_64", "--manifest"])
        .arg(dir.join("manifest.toml"))
        .arg("--out")
        .arg(dir.join("image"))
        .arg("--image")
        .arg(format!("busybox:1.35={}", layout.display()))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is built for arm64, not x86_64"),
        "{stderr}"
    );
}

/// `berth key generate` and `berth build --format update --sign-key`: the bundle holds the
/// image's kernel and initrd, names the manifest's version, and is accepted with the key
/// generated beside it and refused with any other.
#[test]
fn a_signed_update_bundle_is_built_with_a_generated_key() {
    let dir = log_dir("cli-update-bundle");
    let keys = dir.join("keys");
    let generated = Command::new(berth_cli().unwrap_or_else(|e| panic!("{e}")))
        .args(["key", "generate", "--out"])
        .arg(&keys)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(generated.status.success(), "{generated:?}");
    let public = String::from_utf8_lossy(&generated.stdout)
        .trim()
        .to_string();
    assert!(public.starts_with("ed25519:"), "{public}");
    let secret = keys.join(berth_update::SECRET_KEY_FILE);

    // Without --sign-key, --format update is refused before anything is built.
    let manifest =
        format!("hostname = \"v2\"\n\n[update]\nversion = \"2.0\"\nkeys = [\"{public}\"]\n");
    let unsigned = berth_build_with(&dir, &manifest, &["--format".into(), "update".into()]);
    assert!(!unsigned.status.success());
    assert!(
        String::from_utf8_lossy(&unsigned.stderr).contains("--sign-key"),
        "{unsigned:?}"
    );

    let built = berth_build_with(
        &dir,
        &manifest,
        &[
            "--format".into(),
            "update".into(),
            "--sign-key".into(),
            secret.display().to_string(),
        ],
    );
    assert!(built.status.success(), "{built:?}");
    let image = dir.join("image");
    let bundle =
        std::fs::read(image.join(berth_update::BUNDLE_FILE)).unwrap_or_else(|e| panic!("{e}"));
    let accepted = berth_update::PublicKey::parse(&public).unwrap_or_else(|e| panic!("{e}"));
    let mut parts = Vec::new();
    let verified = berth_update::read_bundle(&bundle[..], &[accepted], "x86_64", |part| {
        parts.push(part.name.clone());
        std::fs::File::create(dir.join(format!("read-{}", part.name)))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(verified.header.version, "2.0");
    assert_eq!(parts, ["kernel", "initrd"]);
    for part in ["kernel", "initrd"] {
        let read =
            std::fs::read(dir.join(format!("read-{part}"))).unwrap_or_else(|e| panic!("{e}"));
        let built = std::fs::read(image.join(part)).unwrap_or_else(|e| panic!("{e}"));
        assert!(read == built, "{part} differs from the image's");
    }

    let other = berth_update::generate_key_pair()
        .unwrap_or_else(|e| panic!("{e}"))
        .public_key();
    let refused =
        berth_update::read_bundle(&bundle[..], &[other], "x86_64", |_| Ok(std::io::sink()));
    assert!(refused.is_err(), "another key is refused");
}

/// Writing a disk image says so on stderr (plain lines, stderr not being a terminal), and
/// the qcow2 image is there after. Seen failing without `write_disk`'s progress.
#[test]
fn writing_a_disk_image_shows_its_progress() {
    let dir = log_dir("cli-disk-progress");
    let built = berth_build_with(
        &dir,
        "hostname = \"disk\"\n",
        &[
            "--format".into(),
            "qcow2".into(),
            "--data-size".into(),
            "64".into(),
        ],
    );
    let said = String::from_utf8_lossy(&built.stderr);
    assert!(built.status.success(), "{built:?}");
    let start = said
        .lines()
        .position(|l| l.starts_with("berth: writing the disk.qcow2 disk image ("));
    let end = said.lines().position(|l| {
        l.starts_with("berth: writing the disk.qcow2 disk image (") && l.contains("): done in ")
    });
    assert!(
        start.is_some() && end.is_some() && start < end,
        "no start and end lines in: {said}"
    );
    assert!(dir.join("image/disk.qcow2").is_file(), "{said}");
}
