//! `berth-pull` as init runs it: arguments, progress on stderr, one JSON line on stdout, exit
//! codes.

#![expect(clippy::indexing_slicing, reason = "test code: a failed check panics")]
#![expect(clippy::unwrap_used, reason = "tests")]

mod support;

use std::process::{Command, Output};

use berth_oci::Layout;
use serde_json::Value;
use support::{blob_bytes, FakeRegistry, State, TempDir, TestImage};

/// The binary under test: this build's, or another one (the static guest build) named by
/// `BERTH_PULL_BIN`.
fn berth_pull(args: &[&str]) -> (Output, Value) {
    let binary = std::env::var_os("BERTH_PULL_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_berth-pull").into());
    let output = Command::new(binary).args(args).output().unwrap();
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout: {stdout}");
    let value = serde_json::from_str(lines[0]).unwrap();
    (output, value)
}

#[test]
fn pull_then_gc_through_the_binary() {
    let image = TestImage::new("arm64", vec![blob_bytes(30, 100_000)]);
    let mut state = State {
        auth: true,
        ..State::default()
    };
    image.serve(&mut state, "team/app", Some("1.4"));
    let registry = FakeRegistry::start(state);
    let dir = TempDir::new("cli");
    let auth = registry.auth_file(dir.path());
    let store = dir.path().join("store");
    let store_arg = store.to_str().unwrap();
    let reference = format!("{}/team/app:1.4", registry.addr);

    let (output, line) = berth_pull(&[
        "--store",
        store_arg,
        "--arch",
        "aarch64",
        "--insecure",
        &registry.addr,
        "--auth-file",
        auth.to_str().unwrap(),
        "--name",
        "app:1.4",
        &reference,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{line} {stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with(r#"{"ok":true,"reference":"#), "{stdout}");
    assert_eq!(line["ok"], true);
    assert_eq!(line["reference"], reference.as_str());
    assert_eq!(line["digest"], image.digest().to_string().as_str());
    assert_eq!(line["layers"], 1);
    let bytes = (image.manifest.len() + image.config.len() + image.layers[0].len()) as u64;
    assert_eq!(line["bytes"], bytes);
    assert_eq!(line["downloaded"], bytes);
    let layer = berth_oci::Digest::sha256_of(&image.layers[0]);
    assert!(
        stderr.contains(&format!("pulling {layer} 0.1 MiB")),
        "{stderr}"
    );
    Layout::open(&store).unwrap().resolve("app:1.4").unwrap();

    // A failed pull says why in JSON, and exits 1.
    let missing = format!("{}/team/missing:1", registry.addr);
    let (output, line) = berth_pull(&[
        "--store",
        store_arg,
        "--arch",
        "aarch64",
        "--insecure",
        &registry.addr,
        "--auth-file",
        auth.to_str().unwrap(),
        &missing,
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(line["ok"], false);
    let error = line["error"].as_str().unwrap();
    assert!(error.contains("HTTP 404: MANIFEST_UNKNOWN"), "{error}");

    let (output, line) = berth_pull(&["gc", "--store", store_arg, "--keep", "app:1.4"]);
    assert!(output.status.success(), "{line}");
    assert_eq!(line["removed_refs"], serde_json::json!([]));
    assert_eq!(line["kept_bytes"], bytes);

    let (output, line) = berth_pull(&["usage", "--store", store_arg]);
    assert!(output.status.success(), "{line}");
    assert_eq!(line["images"][0]["reference"], "app:1.4");
    assert_eq!(line["images"][0]["unique_bytes"], bytes);

    let (output, line) = berth_pull(&["gc", "--store", store_arg]);
    assert!(output.status.success(), "{line}");
    assert_eq!(line["removed_refs"], serde_json::json!(["app:1.4"]));
    assert_eq!(line["freed_bytes"], bytes);
    assert_eq!(line["removed_blobs"].as_array().unwrap().len(), 3);
}

#[test]
fn bad_arguments_exit_2_with_a_json_error() {
    let (output, line) = berth_pull(&["--arch", "x86_64", "nginx"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(line["ok"], false);
    assert_eq!(line["error"], "--store DIR is required");
    assert!(String::from_utf8_lossy(&output.stderr).contains("usage: berth-pull"));

    let (output, line) = berth_pull(&["--store", "/nonexistent", "--arch", "x86_64", "Bad:Ref:"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(line["error"]
        .as_str()
        .unwrap()
        .contains("invalid image reference `Bad:Ref:`"));
}
