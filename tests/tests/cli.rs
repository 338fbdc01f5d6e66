//! The `berth` command line as operators' scripts use it: arguments, messages, exit codes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use berth_arch::Arch;
use berth_tests::{berth_cli, guest_init, log_dir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// `berth build`'s exit code for a manifest it refuses.
const EXIT_INVALID_MANIFEST: i32 = 3;

fn berth_build(dir: &Path, manifest: &str) -> Output {
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
        .output()
        .unwrap_or_else(|e| panic!("{e}"))
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
        "{}:4:1: boot.module: unknown field `module`, expected `modules` (did you mean `modules`?)",
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
