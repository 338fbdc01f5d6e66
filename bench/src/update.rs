//! `update`: an update in place on x86_64, from `berth ctl update` to `update-committed`, in
//! its phases. A v1 raw disk and a signed v2 bundle are built once; each run boots a fresh
//! copy of the disk through UEFI, streams the bundle in, reboots and waits for the commit.
//!
//! - verify: the stager's receiving and checking the whole bundle, from its start to the
//!   bundle verified (`update-staged verify_ms`; the bundle crosses the control port here);
//! - write: the rest of the stager's time, writing the slot on the ESP and its loader entry
//!   (`update-staged write_ms`);
//! - reboot: `berth ctl reboot` sent to the new slot's `ready` (QEMU restarts between, as a
//!   power cycle: the rig runs it with `-no-reboot`);
//! - commit: the new boot's `ready` to `update-committed`.
//!
//! `total` is the rig's clock from `berth ctl update` started to `update-committed` seen.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_arch::Arch;
use berth_image::{DiskFormat, DiskOptions};
use berth_qemu::{DiskBoot, GuestExit, Machine, MachineConfig};
use serde::Serialize;

use crate::guest::{build_signed, Built};
use crate::stats::Summary;
use berth_qemu::events::{self, ConsoleEvent};

/// How long a UEFI boot from the disk may take to `ready` (TCG: firmware, systemd-boot, then
/// the kernel).
const DISK_BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// How long the bundle may take to be staged, and the new slot to be committed once ready.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// The rig's limit on one `berth ctl` call.
const CTL_TIMEOUT_SECS: &str = "120";

fn manifest(version: &str, key: &str) -> String {
    format!(
        r#"hostname = "bench-v{version}"

[update]
version = "{version}"
keys = ["{key}"]

[containers.app]
image = "busybox:1.35"
command = ["sleep", "100000"]
"#
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct UpdateFigures {
    pub arch: String,
    pub runs: usize,
    pub bundle_mib: f64,
    pub verify_ms: Summary,
    pub write_ms: Summary,
    pub reboot_ms: Summary,
    pub commit_ms: Summary,
    pub total_ms: Summary,
}

/// One run's phases, ms.
#[derive(Debug, Clone, Copy)]
struct Run {
    verify: f64,
    write: f64,
    reboot: f64,
    commit: f64,
    total: f64,
}

pub fn bench(arch: Arch, runs: usize, dir: &Path, berth: &Path) -> Result<UpdateFigures, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let secret = berth_update::generate_key_pair().map_err(|e| e.to_string())?;
    let key = dir.join("update.key");
    let _ = std::fs::remove_file(&key);
    secret.write(&key).map_err(|e| e.to_string())?;
    let public = secret.public_key().to_string();
    let disk_options = DiskOptions {
        format: DiskFormat::Raw,
        data_mib: 256,
    };
    let v1 = build_signed(
        arch,
        &dir.join("v1"),
        &manifest("1", &public),
        true,
        Some(disk_options),
        None,
    )?;
    let v2 = build_signed(
        arch,
        &dir.join("v2"),
        &manifest("2", &public),
        true,
        None,
        Some(&key),
    )?;
    let bundle = v2.dir.join("image").join(berth_update::BUNDLE_FILE);
    let bundle_bytes = std::fs::metadata(&bundle)
        .map_err(|e| format!("{}: {e}", bundle.display()))?
        .len();
    let mut done = Vec::new();
    for run in 1..=runs {
        let figures = one_run(arch, &v1, &bundle, &dir.join(format!("run-{run}")), berth)?;
        eprintln!(
            "  {arch} run {run}/{runs}: verify {:.0} ms, write {:.0} ms, reboot {:.0} ms, commit {:.0} ms, total {:.0} ms",
            figures.verify, figures.write, figures.reboot, figures.commit, figures.total
        );
        done.push(figures);
    }
    let of = |pick: fn(&Run) -> f64| Summary::of(&done.iter().map(pick).collect::<Vec<_>>());
    Ok(UpdateFigures {
        arch: arch.name().to_string(),
        runs,
        bundle_mib: bundle_bytes as f64 / f64::from(1u32 << 20),
        verify_ms: of(|r| r.verify),
        write_ms: of(|r| r.write),
        reboot_ms: of(|r| r.reboot),
        commit_ms: of(|r| r.commit),
        total_ms: of(|r| r.total),
    })
}

/// Boots a fresh copy of v1's disk, updates it to `bundle`, reboots and waits for the commit.
fn one_run(arch: Arch, v1: &Built, bundle: &Path, dir: &Path, berth: &Path) -> Result<Run, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let disk = dir.join(DiskFormat::Raw.file_name());
    let source = v1.dir.join("image").join(DiskFormat::Raw.file_name());
    std::fs::copy(&source, &disk).map_err(|e| format!("{}: {e}", source.display()))?;
    let socket = dir.join("control.sock");
    let config = disk_config(arch, v1, &disk, &socket, &dir.join("boot-1"));

    let mut first = Machine::start(&config).map_err(|e| e.to_string())?;
    events::wait_until(&mut first, DISK_BOOT_TIMEOUT, "v1 ready", |seen| {
        events::first(seen, "ready", None).is_some()
    })?;
    let started = Instant::now();
    ctl(berth, &socket, &["update", &bundle.display().to_string()])?;
    let seen = events::wait_until(&mut first, STEP_TIMEOUT, "update-staged", |seen| {
        events::first(seen, "update-staged", None).is_some()
    })?;
    let staged = events::first(&seen, "update-staged", None)
        .ok_or("no update-staged")?
        .clone();
    let number = |event: &ConsoleEvent, key: &str| {
        event
            .decimal(key)
            .ok_or_else(|| format!("`{}` has no {key}", event.kind))
    };
    let verify = number(&staged, "verify_ms")?;
    let write = number(&staged, "write_ms")?;

    let reboot_asked = Instant::now();
    ctl(berth, &socket, &["reboot"])?;
    let exit = first
        .wait_exit(STEP_TIMEOUT)
        .map_err(|e| format!("v1 reboot: {e}"))?;
    if exit != GuestExit::Reboot {
        return Err(format!(
            "v1 ended by {exit:?}, not a reboot; console log: {}",
            first.console_log().display()
        ));
    }
    let restarted = Instant::now();
    let mut second = Machine::start(&disk_config(arch, v1, &disk, &socket, &dir.join("boot-2")))
        .map_err(|e| e.to_string())?;
    let seen = events::wait_until(
        &mut second,
        DISK_BOOT_TIMEOUT + STEP_TIMEOUT,
        "update-committed",
        |seen| events::first(seen, "update-committed", None).is_some(),
    )?;
    let committed_seen = Instant::now();
    second.kill();
    let ready = events::first(&seen, "ready", None).ok_or("no ready on the new boot")?;
    let committed = events::first(&seen, "update-committed", None).ok_or("no update-committed")?;
    if ready.get("hostname") != Some("bench-v2") {
        return Err(format!(
            "the new boot is not v2: {ready:?}; console log: {}",
            second.console_log().display()
        ));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let uptime = |event: &ConsoleEvent| {
        event
            .uptime_ms()
            .ok_or_else(|| format!("`{}` has no uptime_ms", event.kind))
    };
    Ok(Run {
        verify,
        write,
        reboot: ms(restarted.duration_since(reboot_asked)) + ms(ready.at),
        commit: uptime(committed)? - uptime(ready)?,
        total: ms(committed_seen.duration_since(started)),
    })
}

fn disk_config(arch: Arch, v1: &Built, disk: &Path, socket: &Path, log: &Path) -> MachineConfig {
    let mut config = MachineConfig::new(arch, &v1.kernel(), &v1.initrd(), log);
    config.disk = Some(DiskBoot {
        image: disk.to_path_buf(),
        format: DiskFormat::Raw.qemu_name().to_string(),
    });
    config.control_socket = Some(socket.to_path_buf());
    config
}

/// `berth ctl --socket SOCKET ARGS`, which must succeed.
fn ctl(berth: &Path, socket: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new(berth)
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(["--timeout", CTL_TIMEOUT_SECS])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", berth.display()))?;
    if !output.status.success() {
        return Err(format!(
            "berth ctl {args:?}: {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Prints the figures as a table.
pub fn print(figures: &UpdateFigures) {
    println!(
        "update in place, {} ({:.1} MiB bundle), `berth ctl update` to update-committed, TCG ({} runs, mean ± sd)",
        figures.arch, figures.bundle_mib, figures.runs
    );
    println!("{:<8} {:>16}  what", "phase", "time (ms)");
    for (phase, summary, what) in [
        (
            "verify",
            &figures.verify_ms,
            "bundle received and verified into /run (update-staged verify_ms)",
        ),
        (
            "write",
            &figures.write_ms,
            "slot b's kernel, initrd and loader entry written, synced (write_ms)",
        ),
        (
            "reboot",
            &figures.reboot_ms,
            "`berth ctl reboot` to the new slot's ready (QEMU restarted)",
        ),
        ("commit", &figures.commit_ms, "ready to update-committed"),
        (
            "total",
            &figures.total_ms,
            "`berth ctl update` started to update-committed seen",
        ),
    ] {
        println!("{phase:<8} {:>16}  {what}", summary.display(0));
    }
}

/// Where the update bench keeps its disks and logs.
pub fn work_dir() -> PathBuf {
    crate::bench_dir().join("update")
}
