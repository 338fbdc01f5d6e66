//! The suite's figures measured inside the guest, from init's own event timestamps: boot
//! phases, restart and start latency, memory with 1 to 100 idle containers, 100 containers
//! started at once, and the RAM floor, each beside the trivial `/init` under the same kernel
//! where one applies.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_arch::Arch;
use berth_image::images::ImageSource;
use berth_image::kernel::default_cache_dir;
use berth_image::{BuildOptions, DiskOptions, ImageMetadata, KernelChoice};
use berth_qemu::{Machine, MachineConfig};
use regex::Regex;
use serde::Serialize;

use crate::stats::{median, Summary};
use crate::{images, time_to_line, trivial, BOOT_TIMEOUT};
use berth_qemu::events::{self, ConsoleEvent};

/// The boot-phase image's container, and the line it is done with.
const FIRST: &str = "first";
/// Restarts of the crash-looping container to measure.
const RESTARTS: usize = 10;
/// Guest RAM for the memory boots: room for 100 containers, the same for every count.
pub const MEMORY_BOOT_MIB: u32 = 512;
/// How long the memory boots wait after the last start before reading memory.
const SETTLE: Duration = Duration::from_secs(2);
/// The RAM floor's search: the lowest amount tried is above this (assumed too little for
/// the kernel alone), the highest is the rig's default (the phase boots ran there), and it
/// stops once the bracket is this narrow.
const FLOOR_ASSUMED_FAIL_MIB: u32 = 32;
const FLOOR_KNOWN_PASS_MIB: u32 = berth_qemu::machine_defaults::MEMORY_MIB;
pub const FLOOR_RESOLUTION_MIB: u32 = 2;
/// What ends a floor boot as failed at once, besides QEMU exiting.
const FLOOR_FAILURE: &str = "Kernel panic|Out of memory|oom-kill";
/// The floor image's container serves a page (httpd in the background), fetches it from
/// itself until that works, and prints it.
const FLOOR_SERVED: &str = "hello from berth";

const PHASES_MANIFEST: &str = r#"hostname = "berth"

[boot]
modules = ["virtio_net"]

[containers.first]
image = "busybox:1.35"
command = ["sleep", "100000"]
"#;

const RESTART_MANIFEST: &str = r#"[containers.flap]
image = "busybox:1.35"
command = ["false"]
restart = "always"
restart_delay = "0s"
"#;

const FLOOR_MANIFEST: &str = r#"hostname = "berth"

[boot]
modules = ["virtio_net"]

[containers.web]
image = "busybox:1.35"
command = ["sh", "-c", "httpd -f -p 80 -h /www & until wget -q -O - http://127.0.0.1:80/; do sleep 1; done; wait"]
ports = ["8080:80"]
"#;

/// The memory probe: PID 1's and netd's resident set, and the kernel's view of memory.
const MEMORY_SCRIPT: &str = "echo init $(grep VmRSS /proc/1/status); \
for d in /proc/[0-9]*; do [ \"$(cat $d/comm 2>/dev/null)\" = netd ] && echo netd $(grep VmRSS $d/status); done; \
grep -E '^(MemTotal|MemAvailable|Shmem|Slab|KernelStack|PageTables):' /proc/meminfo";

fn memory_manifest(containers: usize) -> String {
    let mut text = String::from(
        "[containers.probe]\nimage = \"busybox:1.35\"\ncommand = [\"sleep\", \"100000\"]\n\
         network_mode = \"none\"\npid = \"host\"\nprivileged = true\n",
    );
    for i in 0..containers {
        text.push_str(&format!(
            "\n[containers.idle-{i:03}]\nimage = \"busybox:1.35\"\ncommand = [\"sleep\", \"100000\"]\n\
             network_mode = \"none\"\nrestart = \"no\"\n"
        ));
    }
    text
}

/// One image built for the suite, and how to boot it.
#[derive(Debug, Clone)]
pub struct Built {
    pub dir: PathBuf,
    pub metadata: ImageMetadata,
}

impl Built {
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("image").join(&self.metadata.kernel)
    }

    pub fn initrd(&self) -> PathBuf {
        self.dir.join("image").join(&self.metadata.initrd)
    }

    pub fn config(&self, arch: Arch, run: &str) -> MachineConfig {
        MachineConfig::new(arch, &self.kernel(), &self.initrd(), &self.dir.join(run))
    }
}

/// Builds `manifest` for `arch` into `<dir>/image` (the manifest saved beside it), with the
/// busybox image baked in when `busybox` says so.
pub fn build(
    arch: Arch,
    dir: &Path,
    manifest: &str,
    busybox: bool,
    disk: Option<DiskOptions>,
) -> Result<Built, String> {
    build_signed(arch, dir, manifest, busybox, disk, None)
}

/// [`build`], and with `update_key` (a secret key file) also the signed update bundle,
/// `<dir>/image/update.berth`.
pub fn build_signed(
    arch: Arch,
    dir: &Path,
    manifest: &str,
    busybox: bool,
    disk: Option<DiskOptions>,
    update_key: Option<&Path>,
) -> Result<Built, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let manifest_path = dir.join("manifest.toml");
    std::fs::write(&manifest_path, manifest).map_err(|e| e.to_string())?;
    let images = if busybox {
        vec![ImageSource {
            name: Some(images::BUSYBOX.to_string()),
            dir: images::busybox_layout(arch)?,
        }]
    } else {
        Vec::new()
    };
    let metadata = berth_image::build(&BuildOptions {
        arch,
        manifest: manifest_path,
        out: dir.join("image"),
        kernel: KernelChoice::DebianDefault {
            cache_dir: default_cache_dir(),
        },
        init: None,
        netd: None,
        berthctl: None,
        puller: None,
        images,
        extra_modules: Vec::new(),
        disk,
        update_key: update_key.map(Path::to_path_buf),
    })
    .map_err(|e| format!("berth build {}: {e}", dir.display()))?;
    Ok(Built {
        dir: dir.to_path_buf(),
        metadata,
    })
}

fn regex(text: &str) -> Result<Regex, String> {
    Regex::new(text).map_err(|e| e.to_string())
}

/// Boot phases, in ms of the kernel's uptime (from init's events), and QEMU-side times.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseFigures {
    pub arch: String,
    pub runs: usize,
    /// Kernel start to berth's `/init` (`init-started kernel_ms`).
    pub kernel_to_init_ms: Vec<f64>,
    /// Kernel start to `init-started` printed (root moved off rootfs, `/proc` and `/dev` mounted).
    pub init_started_ms: Vec<f64>,
    pub coldplug_done_ms: Vec<f64>,
    pub config_ms: Vec<f64>,
    pub ready_ms: Vec<f64>,
    pub network_online_ms: Vec<f64>,
    pub first_started_ms: Vec<f64>,
    /// QEMU start to the ready line and to the container's `started`, seen by the rig.
    pub qemu_to_ready_s: Vec<f64>,
    pub qemu_to_started_s: Vec<f64>,
    /// The trivial `/init` under the same kernel and flags.
    pub trivial_kernel_to_init_ms: Vec<f64>,
    pub trivial_qemu_to_line_s: Vec<f64>,
    pub qemu_to_ready: Summary,
    pub trivial_qemu_to_line: Summary,
}

fn uptime_of(events: &[ConsoleEvent], kind: &str, container: Option<&str>) -> Result<f64, String> {
    events::first(events, kind, container)
        .and_then(ConsoleEvent::uptime_ms)
        .ok_or_else(|| format!("no `{kind}` event with uptime_ms"))
}

pub fn phases(
    arch: Arch,
    runs: usize,
    dir: &Path,
    trivial_initrd: &Path,
) -> Result<PhaseFigures, String> {
    let built = build(arch, &dir.join("phases"), PHASES_MANIFEST, true, None)?;
    let mut trivial_config = built.config(arch, "logs-trivial");
    trivial_config.initrd = trivial_initrd.to_path_buf();
    let trivial_marker = regex(trivial::MARKER)?;
    let mut f = PhaseFigures {
        arch: arch.name().to_string(),
        runs,
        kernel_to_init_ms: Vec::new(),
        init_started_ms: Vec::new(),
        coldplug_done_ms: Vec::new(),
        config_ms: Vec::new(),
        ready_ms: Vec::new(),
        network_online_ms: Vec::new(),
        first_started_ms: Vec::new(),
        qemu_to_ready_s: Vec::new(),
        qemu_to_started_s: Vec::new(),
        trivial_kernel_to_init_ms: Vec::new(),
        trivial_qemu_to_line_s: Vec::new(),
        qemu_to_ready: Summary::of(&[]),
        trivial_qemu_to_line: Summary::of(&[]),
    };
    for run in 1..=runs {
        let mut machine = Machine::start(&built.config(arch, &format!("logs-berth-{run}")))
            .map_err(|e| e.to_string())?;
        let seen = events::wait_until(
            &mut machine,
            BOOT_TIMEOUT,
            "the first container's start and network-online",
            |seen| {
                events::first(seen, "started", Some(FIRST)).is_some()
                    && events::first(seen, "network-online", None).is_some()
            },
        )?;
        machine.kill();
        let init = events::first(&seen, "init-started", None).ok_or("no init-started event")?;
        f.kernel_to_init_ms.push(
            init.decimal("kernel_ms")
                .ok_or("init-started has no kernel_ms")?,
        );
        f.init_started_ms
            .push(init.uptime_ms().ok_or("init-started has no uptime_ms")?);
        f.coldplug_done_ms.push(uptime_of(&seen, "coldplug", None)?);
        f.config_ms.push(uptime_of(&seen, "config", None)?);
        f.ready_ms.push(uptime_of(&seen, "ready", None)?);
        f.network_online_ms
            .push(uptime_of(&seen, "network-online", None)?);
        f.first_started_ms
            .push(uptime_of(&seen, "started", Some(FIRST))?);
        let at = |kind: &str, container: Option<&str>| {
            events::first(&seen, kind, container).map(|e| e.at.as_secs_f64())
        };
        f.qemu_to_ready_s.extend(at("ready", None));
        f.qemu_to_started_s.extend(at("started", Some(FIRST)));

        let (at, line) = time_to_line(&trivial_config, &trivial_marker)?;
        f.trivial_qemu_to_line_s.push(at.as_secs_f64());
        f.trivial_kernel_to_init_ms
            .push(trivial::uptime_ms(&line).ok_or_else(|| format!("no uptime in `{line}`"))?);
        eprintln!(
            "  {arch} boot {run}/{runs}: ready {:.0} ms, first container {:.0} ms (uptime); trivial /init at {:.0} ms",
            f.ready_ms.last().copied().unwrap_or_default(),
            f.first_started_ms.last().copied().unwrap_or_default(),
            f.trivial_kernel_to_init_ms.last().copied().unwrap_or_default()
        );
    }
    f.qemu_to_ready = Summary::of(&f.qemu_to_ready_s);
    f.trivial_qemu_to_line = Summary::of(&f.trivial_qemu_to_line_s);
    Ok(f)
}

/// Intervals between pairs of events of one container: each `from` to the next `to`.
fn intervals(events: &[ConsoleEvent], container: &str, from: &str, to: &str) -> Vec<f64> {
    let mut out = Vec::new();
    let mut open: Option<f64> = None;
    for event in events.iter().filter(|e| e.container() == Some(container)) {
        if event.kind == from {
            open = event.uptime_ms();
        } else if event.kind == to {
            if let (Some(start), Some(end)) = (open.take(), event.uptime_ms()) {
                out.push(end - start);
            }
        }
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct RestartFigures {
    pub arch: String,
    /// `exited` to the next `started`, ms.
    pub restart_ms: Vec<f64>,
    /// `starting` to `started`, ms; the first one unpacks the layer and makes the bridge.
    pub start_ms: Vec<f64>,
    pub restart_median_ms: f64,
    pub first_start_ms: f64,
    pub later_start_median_ms: f64,
}

pub fn restarts(arch: Arch, dir: &Path) -> Result<RestartFigures, String> {
    let built = build(arch, &dir.join("restart"), RESTART_MANIFEST, true, None)?;
    let mut machine = Machine::start(&built.config(arch, "logs")).map_err(|e| e.to_string())?;
    let seen = events::wait_until(
        &mut machine,
        BOOT_TIMEOUT + Duration::from_secs(60),
        &format!("{RESTARTS} restarts of `flap`"),
        |seen| seen.iter().filter(|e| e.is("started", "flap")).count() > RESTARTS,
    )?;
    machine.kill();
    let restart_ms = intervals(&seen, "flap", "exited", "started");
    let start_ms = intervals(&seen, "flap", "starting", "started");
    let later: Vec<f64> = start_ms.iter().skip(1).copied().collect();
    Ok(RestartFigures {
        arch: arch.name().to_string(),
        restart_median_ms: median(&restart_ms),
        first_start_ms: start_ms.first().copied().unwrap_or(f64::NAN),
        later_start_median_ms: median(&later),
        restart_ms,
        start_ms,
    })
}

/// Memory with `containers` idle containers running (plus the probe).
#[derive(Debug, Clone, Serialize)]
pub struct MemoryFigure {
    pub containers: usize,
    pub init_rss_kib: f64,
    pub netd_rss_kib: f64,
    pub mem_total_kib: f64,
    pub mem_available_kib: f64,
    /// MemTotal - MemAvailable.
    pub used_kib: f64,
    pub shmem_kib: f64,
    pub slab_kib: f64,
    pub kernel_stack_kib: f64,
    pub page_tables_kib: f64,
    /// First `starting` to the last `started` of the idle containers, ms of uptime.
    pub all_started_ms: f64,
    /// Median `starting` to `started` of the idle containers.
    pub start_median_ms: f64,
    pub ready_ms: f64,
}

fn kib_after(output: &str, prefix: &str) -> Option<f64> {
    output.lines().find_map(|line| {
        let rest = line.strip_prefix(prefix)?;
        rest.split_whitespace().find_map(|w| w.parse::<f64>().ok())
    })
}

fn idle(name: &str) -> bool {
    name.starts_with("idle-")
}

pub fn memory(
    arch: Arch,
    dir: &Path,
    containers: usize,
    berth: &Path,
) -> Result<MemoryFigure, String> {
    let built = build(
        arch,
        &dir.join(format!("memory-{containers}")),
        &memory_manifest(containers),
        true,
        None,
    )?;
    let mut config = built.config(arch, "logs");
    config.memory_mib = MEMORY_BOOT_MIB;
    let socket = built.dir.join("control.sock");
    config.control_socket = Some(socket.clone());
    let mut machine = Machine::start(&config).map_err(|e| e.to_string())?;
    let timeout =
        BOOT_TIMEOUT + Duration::from_secs(3 * u64::try_from(containers).unwrap_or(u64::MAX));
    let seen = events::wait_until(
        &mut machine,
        timeout,
        &format!("{containers} idle containers and the probe started"),
        |seen| {
            let started = seen
                .iter()
                .filter(|e| e.kind == "started" && e.container().is_some_and(idle))
                .count();
            started >= containers && events::first(seen, "started", Some("probe")).is_some()
        },
    )?;
    std::thread::sleep(SETTLE);
    let output = Command::new(berth)
        .arg("ctl")
        .arg("--socket")
        .arg(&socket)
        .args([
            "--timeout",
            "60",
            "exec",
            "probe",
            "--",
            "sh",
            "-c",
            MEMORY_SCRIPT,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", berth.display()))?;
    machine.kill();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "berth ctl exec probe: {}: {}{text}; console log: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            machine.console_log().display()
        ));
    }
    let field = |prefix: &str| {
        kib_after(&text, prefix)
            .ok_or_else(|| format!("no `{prefix}` in the probe's output: {text}"))
    };
    let idle_events: Vec<&ConsoleEvent> = seen
        .iter()
        .filter(|e| e.container().is_some_and(idle))
        .collect();
    let first_starting = idle_events
        .iter()
        .filter(|e| e.kind == "starting")
        .filter_map(|e| e.uptime_ms())
        .fold(f64::INFINITY, f64::min);
    let last_started = idle_events
        .iter()
        .filter(|e| e.kind == "started")
        .filter_map(|e| e.uptime_ms())
        .fold(f64::NEG_INFINITY, f64::max);
    let mut starts = Vec::new();
    for i in 0..containers {
        starts.extend(intervals(
            &seen,
            &format!("idle-{i:03}"),
            "starting",
            "started",
        ));
    }
    let (total, available) = (field("MemTotal:")?, field("MemAvailable:")?);
    Ok(MemoryFigure {
        containers,
        init_rss_kib: field("init VmRSS:")?,
        netd_rss_kib: field("netd VmRSS:")?,
        mem_total_kib: total,
        mem_available_kib: available,
        used_kib: total - available,
        shmem_kib: field("Shmem:")?,
        slab_kib: field("Slab:")?,
        kernel_stack_kib: field("KernelStack:")?,
        page_tables_kib: field("PageTables:")?,
        all_started_ms: last_started - first_starting,
        start_median_ms: median(&starts),
        ready_ms: uptime_of(&seen, "ready", None)?,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct FloorFigures {
    pub arch: String,
    /// The smallest `-m` (MiB) at which it worked, within [`FLOOR_RESOLUTION_MIB`].
    pub berth_mib: u32,
    pub trivial_mib: u32,
    pub berth_timeout_s: f64,
    pub trivial_timeout_s: f64,
    /// Every boot tried: memory and whether it worked.
    pub berth_trials: Vec<(u32, bool)>,
    pub trivial_trials: Vec<(u32, bool)>,
}

/// Boots `config` with `memory` MiB: true when `success` shows up before a failure marker,
/// QEMU's exit or the timeout.
fn boots_with(
    config: &MachineConfig,
    memory: u32,
    success: &str,
    timeout: Duration,
) -> Result<bool, String> {
    let mut config = config.clone();
    config.memory_mib = memory;
    config.log_dir = config.log_dir.join(format!("m{memory}"));
    let pattern = regex(&format!("{success}|{FLOOR_FAILURE}"))?;
    let success = regex(success)?;
    let mut machine = Machine::start(&config).map_err(|e| e.to_string())?;
    let worked = machine
        .wait_for_line(&pattern, timeout)
        .is_ok_and(|line| success.is_match(&line.text));
    machine.kill();
    Ok(worked)
}

/// The smallest memory between `fail` (exclusive, known or assumed to fail) and `pass` at
/// which `boot` works: first galloping up from `fail` when `gallop`, then bisecting.
fn search_floor(
    mut fail: u32,
    mut pass: u32,
    gallop: bool,
    trials: &mut Vec<(u32, bool)>,
    mut boot: impl FnMut(u32) -> Result<bool, String>,
) -> Result<u32, String> {
    let mut try_boot = |memory: u32, trials: &mut Vec<(u32, bool)>| -> Result<bool, String> {
        let worked = boot(memory)?;
        trials.push((memory, worked));
        Ok(worked)
    };
    if gallop {
        let mut step = FLOOR_RESOLUTION_MIB;
        while fail + step < pass {
            if try_boot(fail + step, trials)? {
                pass = fail + step;
                break;
            }
            fail += step;
            step *= 2;
        }
    }
    while pass - fail > FLOOR_RESOLUTION_MIB {
        let memory = fail + (pass - fail) / 2;
        if try_boot(memory, trials)? {
            pass = memory;
        } else {
            fail = memory;
        }
    }
    if !trials.iter().any(|(m, worked)| *m == pass && *worked) && !try_boot(pass, trials)? {
        return Err(format!("it did not boot even with {pass} MiB"));
    }
    Ok(pass)
}

/// The RAM floors: the trivial `/init` bisected in (32, 256] MiB, then berth with one
/// container galloping up from the trivial init's highest failure (the kernel alone cannot
/// boot there) and bisecting. Timeouts come from the phase boots' times.
pub fn floor(
    arch: Arch,
    dir: &Path,
    trivial_initrd: &Path,
    phases: &PhaseFigures,
) -> Result<FloorFigures, String> {
    let built = build(arch, &dir.join("floor"), FLOOR_MANIFEST, true, None)?;
    let berth_config = built.config(arch, "logs-berth");
    let mut trivial_config = built.config(arch, "logs-trivial");
    trivial_config.initrd = trivial_initrd.to_path_buf();
    let trivial_timeout =
        Duration::from_secs_f64((4.0 * median(&phases.trivial_qemu_to_line_s)).max(15.0));
    let berth_timeout =
        Duration::from_secs_f64((3.0 * median(&phases.qemu_to_started_s) + 10.0).max(30.0));
    let mut trivial_trials = Vec::new();
    let trivial_mib = search_floor(
        FLOOR_ASSUMED_FAIL_MIB,
        FLOOR_KNOWN_PASS_MIB,
        false,
        &mut trivial_trials,
        |memory| {
            let worked = boots_with(&trivial_config, memory, trivial::MARKER, trivial_timeout)?;
            eprintln!(
                "  {arch} floor: trivial /init with {memory} MiB: {}",
                if worked { "booted" } else { "failed" }
            );
            Ok(worked)
        },
    )?;
    let highest_trivial_failure = trivial_trials
        .iter()
        .filter(|(_, worked)| !worked)
        .map(|(m, _)| *m)
        .max()
        .unwrap_or(FLOOR_ASSUMED_FAIL_MIB);
    let mut berth_trials = Vec::new();
    let served = format!("^web \\| {FLOOR_SERVED}");
    let berth_mib = search_floor(
        highest_trivial_failure,
        FLOOR_KNOWN_PASS_MIB,
        true,
        &mut berth_trials,
        |memory| {
            let worked = boots_with(&berth_config, memory, &served, berth_timeout)?;
            eprintln!(
                "  {arch} floor: berth + 1 container with {memory} MiB: {}",
                if worked { "served" } else { "failed" }
            );
            Ok(worked)
        },
    )?;
    Ok(FloorFigures {
        arch: arch.name().to_string(),
        berth_mib,
        trivial_mib,
        berth_timeout_s: berth_timeout.as_secs_f64(),
        trivial_timeout_s: trivial_timeout.as_secs_f64(),
        berth_trials,
        trivial_trials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_search_brackets_the_threshold() {
        for threshold in [33, 70, 75, 100, 255] {
            for gallop in [false, true] {
                let mut trials = Vec::new();
                let found = search_floor(32, 256, gallop, &mut trials, |m| Ok(m >= threshold));
                let found = found.unwrap_or_default();
                assert!(
                    found >= threshold && found < threshold + FLOOR_RESOLUTION_MIB + 1,
                    "{threshold} {gallop}: {found} {trials:?}"
                );
            }
        }
        let mut trials = Vec::new();
        assert!(search_floor(32, 256, true, &mut trials, |_| Ok(false)).is_err());
    }

    #[test]
    fn intervals_pair_each_start_with_the_next_end() {
        let line = |text: &str| events::parse(text, Duration::ZERO);
        let seen: Vec<ConsoleEvent> = [
            "berth event=starting container=a restarts=0 uptime_ms=100",
            "berth event=started container=a pid=9 restarts=0 uptime_ms=150",
            "berth event=exited container=a code=1 restarts=0 uptime_ms=160",
            "berth event=starting container=b restarts=0 uptime_ms=161",
            "berth event=starting container=a restarts=1 uptime_ms=170",
            "berth event=started container=a pid=10 restarts=1 uptime_ms=190",
        ]
        .iter()
        .filter_map(|t| line(t))
        .collect();
        assert_eq!(
            intervals(&seen, "a", "starting", "started"),
            vec![50.0, 20.0]
        );
        assert_eq!(intervals(&seen, "a", "exited", "started"), vec![30.0]);
    }
}
