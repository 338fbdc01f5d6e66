//! Container start: the same `/bin/true` container from the same busybox rootfs, started by
//! berth's runtime (`berth run-container`), crun and runc, interleaved in one run.
//!
//! Like with like: one rootfs directory for all three (no overlay), no network namespace, no
//! terminal, the root writable, no cgroup for berth and crun (`--cgroup-manager=disabled`;
//! runc cannot go without one, so it also creates and removes a cgroup per run). berth applies
//! Docker's defaults (14 capabilities, masked paths, seccomp filter); crun's and runc's default
//! spec (`crun spec`) has masked paths and 3 capabilities but no seccomp filter, so berth does
//! a little more work per start. The build machine mounts cgroups in hybrid mode, which crun
//! refuses: `scripts/bench runtime` runs this inside `unshare -m` with cgroup2 on
//! `/sys/fs/cgroup`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use berth_arch::Arch;
use berth_image::debian;
use berth_image::kernel::default_cache_dir;
use serde::Serialize;
use serde_json::Value;

use crate::stats::Summary;

#[derive(Debug, Serialize)]
pub struct RuntimeFigures {
    pub runs: usize,
    pub berth_ms: Summary,
    pub crun_ms: Summary,
    pub runc_ms: Summary,
    pub berth_to_crun: f64,
    pub berth_to_runc: f64,
}

/// A bundle in `dir` (`config.json` from `crun spec`, `rootfs/` with Debian's static busybox)
/// whose process is `args`; `/bin/true` and `/bin/sleep` are busybox applets there.
pub fn prepare_bundle(dir: &Path, args: &[&str]) -> Result<PathBuf, String> {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).map_err(|e| e.to_string())?;
    let arch = Arch::host().ok_or("unsupported host arch")?;
    let busybox =
        debian::unpacked_package("busybox-static", arch, &default_cache_dir(), |_| Ok(()))
            .map_err(|e| e.to_string())?
            .join("bin/busybox");
    std::fs::copy(busybox, rootfs.join("bin/busybox")).map_err(|e| e.to_string())?;
    for applet in ["true", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
            .map_err(|e| e.to_string())?;
    }
    let status = Command::new("crun")
        .arg("spec")
        .current_dir(dir)
        .status()
        .map_err(|e| format!("crun spec: {e} (scripts/setup installs crun)"))?;
    if !status.success() {
        return Err("crun spec failed".to_string());
    }
    let path = dir.join("config.json");
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(&path).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    config["process"]["terminal"] = Value::Bool(false);
    config["process"]["args"] = serde_json::json!(args);
    config["root"]["readonly"] = Value::Bool(false);
    if let Some(namespaces) = config["linux"]["namespaces"].as_array_mut() {
        namespaces.retain(|ns| ns["type"] != "network");
    }
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&config).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    Ok(rootfs)
}

fn timed(command: &mut Command) -> Result<f64, String> {
    let started = Instant::now();
    let status = command
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("{command:?}: {e}"))?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    if !status.success() {
        return Err(format!("{command:?} failed: {status}"));
    }
    Ok(elapsed)
}

pub fn bench(runs: usize, berth: &Path) -> Result<RuntimeFigures, String> {
    let dir = std::env::temp_dir().join(format!("berth-bench-runtime-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let rootfs = prepare_bundle(&dir, &["/bin/true"])?;
    let (mut b, mut c, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        b.push(timed(
            Command::new(berth)
                .args(["run-container", "--rootfs"])
                .arg(&rootfs)
                .args(["--", "/bin/true"]),
        )?);
        c.push(timed(
            Command::new("crun")
                .args(["--cgroup-manager=disabled", "run", "--bundle"])
                .arg(&dir)
                .arg(format!("bench-crun-{run}")),
        )?);
        r.push(timed(
            Command::new("runc")
                .args(["run", "--bundle"])
                .arg(&dir)
                .arg(format!("bench-runc-{run}")),
        )?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (berth_ms, crun_ms, runc_ms) = (Summary::of(&b), Summary::of(&c), Summary::of(&r));
    Ok(RuntimeFigures {
        runs,
        berth_to_crun: berth_ms.mean / crun_ms.mean,
        berth_to_runc: berth_ms.mean / runc_ms.mean,
        berth_ms,
        crun_ms,
        runc_ms,
    })
}
