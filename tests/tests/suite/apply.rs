//! `berth ctl apply FILE` converges the running host to a new manifest: exactly the added,
//! removed and changed containers change, the others keep their processes; a bad file is
//! refused whole, naming its line, and changes nothing.

use berth_arch::Arch;
use berth_tests::{
    berth_ctl, berth_ctl_ok, boot_with_control_port, events, ps_pid, ps_row, wait_seen,
};

const SLEEPER: &str = r#"image = "busybox:1.35"
command = ["sleep", "1000"]"#;

fn manifest(containers: &[(&str, &str)]) -> String {
    containers
        .iter()
        .map(|(name, body)| format!("[containers.{name}]\n{body}\n\n"))
        .collect()
}

#[test]
fn apply_changes_exactly_what_the_new_manifest_changes() {
    let first = manifest(&[
        ("keep", SLEEPER),
        ("gone", SLEEPER),
        ("change", SLEEPER),
        ("base", SLEEPER),
    ]);
    let (machine, socket) = boot_with_control_port(Arch::X86_64, &first, "apply-converges");
    for name in ["keep", "gone", "change", "base"] {
        wait_seen(
            &machine,
            &format!(r"^berth event=started container={name} "),
        );
    }
    let pid = |name: &str| ps_pid(&socket, name);
    let (keep, change, base, gone) = (pid("keep"), pid("change"), pid("base"), pid("gone"));
    assert!(keep.is_some() && change.is_some() && base.is_some() && gone.is_some());

    // A bad file: refused with its name, line and field, and nothing changes.
    let dir = berth_tests::target_dir()
        .join("test-logs")
        .join("apply-converges");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[containers.keep]\nimage = \"busybox:1.35\"\nrestart = \"sometimes\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let refused = berth_ctl(&socket, &["apply", bad.to_str().unwrap_or_default()]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(stderr.contains("bad.toml:3:"), "{stderr}");
    assert!(stderr.contains("containers.keep.restart"), "{stderr}");
    let unknown_image = dir.join("unknown-image.toml");
    std::fs::write(
        &unknown_image,
        "[containers.keep]\nimage = \"nginx:1.27\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let refused = berth_ctl(
        &socket,
        &["apply", unknown_image.to_str().unwrap_or_default()],
    );
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("nginx:1.27"),
        "the refusal names the image: {stderr}"
    );
    // Both refused files left every container's process alone, including the one a good
    // file of the same shape would remove.
    assert_eq!(pid("gone"), gone, "a refused apply changes nothing");
    assert_eq!(pid("keep"), keep, "a refused apply changes nothing");
    assert!(ps_row(&socket, "gone")
        .get(1)
        .is_some_and(|s| s == "running"));

    // One added, one removed, one changed; `base` is also a dependency of the new one.
    let second = manifest(&[
        ("keep", SLEEPER),
        (
            "change",
            "image = \"busybox:1.35\"\ncommand = [\"sleep\", \"2000\"]",
        ),
        ("base", SLEEPER),
        (
            "added",
            "image = \"busybox:1.35\"\ndepends_on = [\"base\"]\ncommand = [\"sleep\", \"1000\"]",
        ),
    ]);
    let good = dir.join("second.toml");
    std::fs::write(&good, &second).unwrap_or_else(|e| panic!("{e}"));
    let applied = berth_ctl_ok(&socket, &["apply", good.to_str().unwrap_or_default()]);
    assert!(applied.contains("added: added"), "{applied}");
    assert!(applied.contains("removed: gone"), "{applied}");
    assert!(applied.contains("changed: change"), "{applied}");
    wait_seen(&machine, r"^berth event=started container=added ");
    wait_seen(
        &machine,
        r"^berth event=stopped container=gone reason=apply",
    );
    assert_eq!(
        pid("keep"),
        keep,
        "an unchanged container keeps its process"
    );
    assert_eq!(
        pid("base"),
        base,
        "an unchanged container keeps its process"
    );
    // `apply` answers once the changed container's old run has exited (its new run starts
    // as soon as its cgroup and address are free: at once, or a turn or two later).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut changed = pid("change");
    while !(changed.is_some() && changed != change) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(250));
        changed = pid("change");
    }
    assert!(
        changed.is_some() && changed != change,
        "{changed:?} vs {change:?}"
    );
    let top = berth_ctl_ok(&socket, &["top", "change"]);
    assert!(top.contains("sleep 2000"), "the new settings: {top}");
    assert!(
        ps_row(&socket, "gone").is_empty(),
        "a removed container leaves ps"
    );
    assert!(ps_row(&socket, "added")
        .get(1)
        .is_some_and(|s| s == "running"));
    let starts = |name: &str| events::events(&machine, "started", Some(name)).len();
    assert_eq!(starts("keep"), 1);
    assert_eq!(starts("base"), 1);
    assert_eq!(starts("change"), 2);
}
