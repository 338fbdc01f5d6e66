//! `suite`: every figure of berth beside a peer measured in the same run, on each arch, as
//! one table (figure | arch | berth | peer | peer name | ratio) and one JSON file.
//!
//! Host-side figures come first (layer unpack against umoci; container start against crun
//! and runc; crun starting a batch; conmon's memory), then per arch: sizes, boot phases
//! beside a trivial `/init`, restart and start latency, memory with 1 to 100 idle
//! containers, 100 containers started at once, and the RAM floor. A section that fails is
//! one row saying why, and the suite goes on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use berth_arch::Arch;
use serde::{Deserialize, Serialize};

use crate::guest::{self, MemoryFigure, PhaseFigures};
use crate::host::{self, PeerFigures};
use crate::sizes;
use crate::stats::median;
use crate::{images, trivial};

/// One line of the table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub figure: String,
    pub arch: String,
    pub unit: String,
    pub berth: Option<f64>,
    pub peer: Option<f64>,
    pub peer_name: String,
    /// berth / peer.
    pub ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Row {
    fn new(figure: &str, arch: &str, unit: &str, berth: Option<f64>) -> Row {
        Row {
            figure: figure.to_string(),
            arch: arch.to_string(),
            unit: unit.to_string(),
            berth: berth.filter(|v| v.is_finite()),
            peer: None,
            peer_name: String::new(),
            ratio: None,
            note: None,
        }
    }

    fn peer(mut self, name: &str, value: Option<f64>) -> Row {
        self.peer = value.filter(|v| v.is_finite());
        self.peer_name = name.to_string();
        self.ratio = match (self.berth, self.peer) {
            (Some(b), Some(p)) if p != 0.0 => Some(b / p),
            _ => None,
        };
        self
    }

    fn note(mut self, note: &str) -> Row {
        self.note = Some(note.to_string());
        self
    }

    fn failed(section: &str, arch: &str, error: &str) -> Row {
        Row::new(section, arch, "", None).note(&format!("failed: {error}"))
    }
}

/// The machine the figures were measured on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineInfo {
    pub date: String,
    pub nproc: usize,
    pub cpu: String,
    pub mem_total_mib: f64,
    pub kernel_release: String,
    pub qemu_version: String,
    pub kvm: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub machine: MachineInfo,
    pub arches: Vec<String>,
    pub runs: usize,
    pub wall_s: f64,
    pub rows: Vec<Row>,
    /// Every section's raw figures, by name.
    pub details: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub arches: Vec<Arch>,
    pub runs: usize,
    pub json: PathBuf,
    pub manifest: PathBuf,
    pub berth: PathBuf,
    pub runtime_runs: usize,
    pub idle: Vec<usize>,
    pub batch: usize,
    pub floor: bool,
}

fn machine_info() -> MachineInfo {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    let mem_total_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let cpuinfo = read("/proc/cpuinfo");
    MachineInfo {
        date,
        nproc: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        cpu: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_default(),
        mem_total_mib: mem_total_kib / 1024.0,
        kernel_release: read("/proc/sys/kernel/osrelease").trim().to_string(),
        qemu_version: host::version("qemu-system-x86_64"),
        kvm: Arch::host().is_some_and(berth_qemu::kvm_usable),
    }
}

/// A value with its unit, as the table shows it.
pub fn show(value: Option<f64>, unit: &str) -> String {
    let Some(v) = value else {
        return "-".to_string();
    };
    match unit {
        "ms" if v.abs() < 10.0 => format!("{v:.1} ms"),
        "ms" | "KiB" => format!("{v:.0} {unit}"),
        "s" => format!("{v:.2} s"),
        "MiB" => format!("{v:.1} MiB"),
        "MB/s" => format!("{v:.0} MB/s"),
        _ => format!("{v:.2} {unit}"),
    }
}

pub fn show_ratio(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".to_string(), |r| format!("{r:.2}"))
}

fn print_table(rows: &[Row]) {
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.figure.clone(),
                r.arch.clone(),
                show(r.berth, &r.unit),
                show(r.peer, &r.unit),
                r.peer_name.clone(),
                show_ratio(r.ratio),
            ]
        })
        .collect();
    let header = ["figure", "arch", "berth", "peer", "peer name", "ratio"];
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let pad = w.saturating_sub(cell.chars().count());
            if i >= 2 && i != 4 {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            }
            out.push_str("  ");
        }
        out.trim_end().to_string()
    };
    println!("{}", line(&header.map(str::to_string)));
    for row in &cells {
        println!("{}", line(row));
    }
    for row in rows.iter().filter(|r| r.note.is_some()) {
        println!(
            "note: {} ({}): {}",
            row.figure,
            row.arch,
            row.note.as_deref().unwrap_or_default()
        );
    }
}

/// Runs `berth-bench peers` in a private mount namespace with cgroup2 mounted, as
/// `scripts/bench runtime` runs the runtime bench, and reads its JSON.
fn run_peers(options: &Options, dir: &Path) -> Result<PeerFigures, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let json = dir.join("peers.json");
    let idle: Vec<String> = options.idle.iter().map(ToString::to_string).collect();
    let status = Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount -t cgroup2 none /sys/fs/cgroup && exec \"$0\" \"$@\"",
        ])
        .arg(&exe)
        .arg("peers")
        .args(["--runtime-runs", &options.runtime_runs.to_string()])
        .args(["--batch", &options.batch.to_string()])
        .args(["--idle", &idle.join(",")])
        .arg("--berth")
        .arg(&options.berth)
        .arg("--json")
        .arg(&json)
        .status()
        .map_err(|e| format!("unshare: {e}"))?;
    if !status.success() {
        return Err(format!("berth-bench peers: {status}"));
    }
    let text = std::fs::read(&json).map_err(|e| format!("{}: {e}", json.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", json.display()))
}

struct Suite {
    rows: Vec<Row>,
    details: serde_json::Map<String, serde_json::Value>,
    started: Instant,
}

impl Suite {
    fn detail(&mut self, name: String, value: &impl Serialize) {
        self.details
            .insert(name, serde_json::to_value(value).unwrap_or_default());
    }

    fn progress(&self, what: &str) {
        eprintln!("[{:>5.0} s] {what}", self.started.elapsed().as_secs_f64());
    }
}

fn host_rows(suite: &mut Suite, options: &Options, dir: &Path) -> Option<PeerFigures> {
    let host = format!("{} host", Arch::host().map_or("?", Arch::name));
    suite.progress("host: layer unpack, berth against umoci raw unpack");
    let umoci = host::version("umoci");
    let layouts = [
        (
            "unpack: busybox layer",
            Arch::host()
                .ok_or_else(|| "unsupported host arch".to_string())
                .and_then(images::busybox_layout),
            images::BUSYBOX_TAG,
        ),
        (
            "unpack: synthetic 32 MiB layer",
            images::synthetic_layout(),
            images::SYNTHETIC_TAG,
        ),
    ];
    for (figure, layout, tag) in layouts {
        match layout.and_then(|l| host::unpack(figure, &l, tag, options.runs.max(3))) {
            Ok(f) => {
                suite.rows.push(
                    Row::new(figure, &host, "MB/s", Some(f.berth_mb_s))
                        .peer(&format!("{umoci}, raw unpack"), Some(f.umoci_mb_s))
                        .note(&format!(
                            "{:.1} MB uncompressed, {:.1} MB gzip, {} entries; higher is better",
                            f.uncompressed_bytes as f64 / 1e6,
                            f.compressed_bytes as f64 / 1e6,
                            f.entries
                        )),
                );
                suite.detail(figure.to_string(), &f);
            }
            Err(e) => suite.rows.push(Row::failed(figure, &host, &e)),
        }
    }
    suite.progress("host: container start, batch and supervisor memory (crun, runc, conmon)");
    match run_peers(options, dir) {
        Ok(peers) => {
            if let Some(r) = &peers.runtime {
                let figure = format!("host start: run /bin/true ({} runs, mean)", r.runs);
                suite.rows.push(
                    Row::new(&figure, &host, "ms", Some(r.berth_ms))
                        .peer(&peers.crun_version, Some(r.crun_ms)),
                );
                suite.rows.push(
                    Row::new(&figure, &host, "ms", Some(r.berth_ms))
                        .peer(&peers.runc_version, Some(r.runc_ms)),
                );
            }
            for error in &peers.errors {
                suite.rows.push(Row::failed("host peers", &host, error));
            }
            suite.detail("peers".to_string(), &peers);
            Some(peers)
        }
        Err(e) => {
            suite.rows.push(Row::failed("host peers", &host, &e));
            None
        }
    }
}

fn phase_rows(suite: &mut Suite, arch: &str, f: &PhaseFigures) {
    let m = |v: &[f64]| Some(median(v));
    let trivial = "trivial /init";
    suite.rows.push(
        Row::new(
            "boot: kernel start → /init",
            arch,
            "ms",
            m(&f.kernel_to_init_ms),
        )
        .peer(trivial, m(&f.trivial_kernel_to_init_ms)),
    );
    for (figure, values) in [
        (
            "boot: kernel start → init-started (root off rootfs, /proc mounted)",
            &f.init_started_ms,
        ),
        ("boot: kernel start → coldplug done", &f.coldplug_done_ms),
        ("boot: kernel start → manifest read (config)", &f.config_ms),
        ("boot: kernel start → ready", &f.ready_ms),
        ("boot: kernel start → network-online", &f.network_online_ms),
        (
            "boot: kernel start → first container started",
            &f.first_started_ms,
        ),
    ] {
        suite.rows.push(Row::new(figure, arch, "ms", m(values)));
    }
    suite.rows.push(
        Row::new("boot: QEMU start → ready", arch, "s", m(&f.qemu_to_ready_s))
            .peer("trivial /init, first line", m(&f.trivial_qemu_to_line_s)),
    );
    suite.rows.push(
        Row::new(
            "boot: QEMU start → first container started",
            arch,
            "s",
            m(&f.qemu_to_started_s),
        )
        .peer("trivial /init, first line", m(&f.trivial_qemu_to_line_s)),
    );
}

fn memory_rows(
    suite: &mut Suite,
    arch: &str,
    figures: &[MemoryFigure],
    peers: Option<&PeerFigures>,
) {
    let conmon = |n: usize| {
        peers
            .and_then(|p| p.conmon.iter().find(|c| c.containers == n))
            .map(|c| c.conmon_rss_kib)
    };
    let conmon_name = peers.map_or_else(|| "conmon".to_string(), |p| p.conmon_version.clone());
    for f in figures {
        let n = f.containers;
        suite.rows.push(
            Row::new(
                &format!("memory: init RSS, {n} idle"),
                arch,
                "KiB",
                Some(f.init_rss_kib),
            )
            .peer(&format!("{conmon_name} ×{n}, RSS sum (host)"), conmon(n)),
        );
        suite.rows.push(Row::new(
            &format!("memory: guest used (MemTotal − MemAvailable), {n} idle"),
            arch,
            "MiB",
            Some(f.used_kib / 1024.0),
        ));
    }
    if let Some(f) = figures.first() {
        suite.rows.push(Row::new(
            "memory: netd RSS",
            arch,
            "KiB",
            Some(f.netd_rss_kib),
        ));
        suite.rows.push(Row::new(
            &format!(
                "memory: guest tmpfs and shared (Shmem), {} idle",
                f.containers
            ),
            arch,
            "MiB",
            Some(f.shmem_kib / 1024.0),
        ));
    }
    if let (Some(low), Some(high)) = (figures.first(), figures.last()) {
        if high.containers > low.containers {
            let span = (high.containers - low.containers) as f64;
            let per_conmon = conmon(high.containers).map(|kib| kib / high.containers as f64);
            suite.rows.push(
                Row::new(
                    "memory: supervisor per container",
                    arch,
                    "KiB",
                    Some((high.init_rss_kib - low.init_rss_kib) / span),
                )
                .peer(&format!("{conmon_name}, one per container"), per_conmon)
                .note(&format!(
                    "berth: init's RSS growth from {} to {} containers, per container",
                    low.containers, high.containers
                )),
            );
            suite.rows.push(Row::new(
                "memory: guest used per container",
                arch,
                "KiB",
                Some((high.used_kib - low.used_kib) / span),
            ));
        }
    }
}

fn arch_rows(
    suite: &mut Suite,
    options: &Options,
    arch: Arch,
    dir: &Path,
    peers: Option<&PeerFigures>,
) {
    let name = arch.name();
    let dir = dir.join(name);
    let trivial_initrd = match trivial::build_initrd(arch, &dir) {
        Ok(path) => path,
        Err(e) => {
            suite.rows.push(Row::failed("trivial initrd", name, &e));
            return;
        }
    };

    suite.progress(&format!("{name}: sizes"));
    match sizes::sizes(arch, &dir, &options.manifest, &trivial_initrd) {
        Ok(f) => {
            let size_of = |wanted: &str| {
                f.binaries_kib
                    .iter()
                    .find(|(binary, _)| binary == wanted)
                    .and_then(|(_, kib)| *kib)
            };
            for (binary, kib) in &f.binaries_kib {
                let row = Row::new(
                    &format!("size: {binary} (guest profile)"),
                    name,
                    "KiB",
                    *kib,
                );
                suite.rows.push(match binary.as_str() {
                    "init" => row.note("shipped; netd and berthctl are names of it"),
                    "netd" | "berthctl" => row.note("stand-alone build; images ship init's"),
                    _ => row,
                });
            }
            let apart = [size_of("init"), size_of("netd"), size_of("berthctl")]
                .into_iter()
                .sum::<Option<f64>>();
            suite.rows.push(
                Row::new(
                    "size: init, netd and berthctl as shipped (one binary)",
                    name,
                    "KiB",
                    size_of("init"),
                )
                .peer("the three built apart", apart),
            );
            suite.rows.push(
                Row::new(
                    "size: initrd, default image",
                    name,
                    "KiB",
                    Some(f.initrd_kib),
                )
                .peer("trivial /init initrd", Some(f.trivial_initrd_kib))
                .note(&format!("{} kernel modules shipped", f.modules)),
            );
            suite.rows.push(
                Row::new(
                    "size: initrd unpacked (held in RAM)",
                    name,
                    "KiB",
                    Some(f.initrd_unpacked_kib),
                )
                .peer("trivial /init initrd", Some(f.trivial_initrd_unpacked_kib))
                .note("the files of the initrd: the kernel keeps them in its rootfs"),
            );
            suite.rows.push(Row::new(
                "size: disk.raw, default image, allocated",
                name,
                "MiB",
                Some(f.disk_allocated_mib),
            ));
            suite.rows.push(Row::new(
                "size: disk.raw, default image, apparent",
                name,
                "MiB",
                Some(f.disk_apparent_mib),
            ));
            suite.detail(format!("sizes-{name}"), &f);
        }
        Err(e) => suite.rows.push(Row::failed("sizes", name, &e)),
    }

    suite.progress(&format!("{name}: boot phases, {} boots each", options.runs));
    let phases = match guest::phases(arch, options.runs, &dir, &trivial_initrd) {
        Ok(f) => {
            phase_rows(suite, name, &f);
            suite.detail(format!("phases-{name}"), &f);
            Some(f)
        }
        Err(e) => {
            suite.rows.push(Row::failed("boot phases", name, &e));
            None
        }
    };

    suite.progress(&format!("{name}: restart and start latency"));
    match guest::restarts(arch, &dir) {
        Ok(f) => {
            suite.rows.push(Row::new(
                &format!(
                    "restart: exited → started (median of {})",
                    f.restart_ms.len()
                ),
                name,
                "ms",
                Some(f.restart_median_ms),
            ));
            suite.rows.push(Row::new(
                "start: starting → started, first (unpacks the layer)",
                name,
                "ms",
                Some(f.first_start_ms),
            ));
            suite.rows.push(Row::new(
                "start: starting → started, later (median)",
                name,
                "ms",
                Some(f.later_start_median_ms),
            ));
            suite.detail(format!("restarts-{name}"), &f);
        }
        Err(e) => suite.rows.push(Row::failed("restarts", name, &e)),
    }

    let mut memory = Vec::new();
    for &n in &options.idle {
        suite.progress(&format!("{name}: memory with {n} idle containers"));
        match guest::memory(arch, &dir, n, &options.berth) {
            Ok(f) => memory.push(f),
            Err(e) => suite
                .rows
                .push(Row::failed(&format!("memory, {n} idle"), name, &e)),
        }
    }
    memory_rows(suite, name, &memory, peers);
    if let Some(f) = memory.iter().find(|f| f.containers == options.batch) {
        let batch = peers.and_then(|p| p.crun_batch.as_ref());
        let crun = peers.map_or("crun", |p| p.crun_version.as_str());
        suite.rows.push(
            Row::new(
                &format!(
                    "start: {} containers at once, first starting → last started",
                    f.containers
                ),
                name,
                "ms",
                Some(f.all_started_ms),
            )
            .peer(
                &format!("{crun} run -d ×{} (host)", f.containers),
                batch.map(|b| b.total_ms),
            )
            .note("berth in the guest under TCG, crun on the host natively"),
        );
        suite.rows.push(Row::new(
            &format!(
                "start: starting → started in the batch of {} (median)",
                f.containers
            ),
            name,
            "ms",
            Some(f.start_median_ms),
        ));
    }
    suite.detail(format!("memory-{name}"), &memory);

    if !options.floor {
        return;
    }
    let Some(phases) = phases else {
        suite.rows.push(Row::failed(
            "ram floor",
            name,
            "needs the boot phases' times",
        ));
        return;
    };
    suite.progress(&format!("{name}: RAM floor"));
    match guest::floor(arch, &dir, &trivial_initrd, &phases) {
        Ok(f) => {
            let resolution = guest::FLOOR_RESOLUTION_MIB;
            suite.rows.push(
                Row::new(
                    "ram floor: default image + 1 serving container",
                    name,
                    "MiB",
                    Some(f64::from(f.berth_mib)),
                )
                .peer("trivial /init", Some(f64::from(f.trivial_mib)))
                .note(&format!(
                    "smallest -m that worked, within {resolution} MiB; {} + {} boots",
                    f.berth_trials.len(),
                    f.trivial_trials.len()
                )),
            );
            suite.rows.push(Row::new(
                "ram floor: berth + 1 container − trivial",
                name,
                "MiB",
                Some(f64::from(f.berth_mib) - f64::from(f.trivial_mib)),
            ));
            suite.detail(format!("floor-{name}"), &f);
        }
        Err(e) => suite.rows.push(Row::failed("ram floor", name, &e)),
    }
}

pub fn run(options: &Options) -> std::process::ExitCode {
    let mut suite = Suite {
        rows: Vec::new(),
        details: serde_json::Map::new(),
        started: Instant::now(),
    };
    let dir = crate::bench_dir().join("suite");
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("berth-bench: {}: {e}", dir.display());
        return std::process::ExitCode::FAILURE;
    }
    let machine = machine_info();
    let peers = host_rows(&mut suite, options, &dir);
    for &arch in &options.arches {
        arch_rows(&mut suite, options, arch, &dir, peers.as_ref());
    }
    let wall_s = suite.started.elapsed().as_secs_f64();
    println!(
        "berth beside its peers, {} ({} cores, {:.0} MiB, {}, {}), {} runs, {:.1} min",
        machine.date,
        machine.nproc,
        machine.mem_total_mib,
        machine.qemu_version,
        if machine.kvm { "KVM" } else { "TCG" },
        options.runs,
        wall_s / 60.0
    );
    println!("ratio = berth / peer; guest figures in the kernel's uptime (init's events), medians");
    print_table(&suite.rows);
    let report = Report {
        machine,
        arches: options
            .arches
            .iter()
            .map(|a| a.name().to_string())
            .collect(),
        runs: options.runs,
        wall_s,
        rows: suite.rows,
        details: suite.details,
    };
    if let Some(parent) = options.json.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    match serde_json::to_string_pretty(&report).map(|text| std::fs::write(&options.json, text)) {
        Ok(Ok(())) => eprintln!(
            "figures written to {}; evidence (console logs) in {}",
            options.json.display(),
            dir.display()
        ),
        Ok(Err(e)) => eprintln!("berth-bench: cannot write {}: {e}", options.json.display()),
        Err(e) => eprintln!("berth-bench: {e}"),
    }
    if report
        .rows
        .iter()
        .any(|r| r.note.as_deref().is_some_and(|n| n.starts_with("failed")))
    {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
