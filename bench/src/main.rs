//! `berth-bench`: figures for berth beside a peer measured in the same run.
//!
//! `boot`: per arch, the time from QEMU's start to init's ready line, beside the time to the
//! first line of a trivial static `/init` (Debian's busybox-static) that powers off at once,
//! under the same kernel and QEMU flags. Runs are interleaved so that a slow moment of the
//! machine hits both alike. The difference is what berth costs at boot.
//!
//! `update`: an update in place on x86_64, `berth ctl update` to `update-committed`, in its
//! phases (verify, write, reboot, commit; see `update.rs`).
//!
//! `api`: `berth ctl ps` over the remote API (mutual TLS) beside the control port, on one
//! x86_64 guest (see `api.rs`).
//!
//! `suite`: every figure beside its peer in one run, both arches, one table and one JSON
//! file (see `suite.rs`); `readme` puts that table into `docs/performance.md`.

#![expect(clippy::indexing_slicing, reason = "test code: a failed check panics")]

mod api;
mod guest;
mod host;
mod images;
mod kernel;
mod readme;
mod runtime;
mod sizes;
mod stats;
mod suite;
mod trivial;
mod update;

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_arch::Arch;
use berth_image::kernel::default_cache_dir;
use berth_image::{BuildOptions, KernelChoice};
use berth_qemu::{Machine, MachineConfig};
use clap::{Parser, Subcommand};
use regex::Regex;
use serde::Serialize;

use crate::stats::Summary;

/// How long one boot may take before the run counts as failed.
pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Parser)]
#[command(name = "berth-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot time: berth's ready line against a trivial /init, per arch.
    Boot {
        /// Arches to measure (default: both).
        #[arg(long)]
        arch: Vec<Arch>,
        /// Boots of each kind per arch.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// The manifest of the berth image.
        #[arg(long, default_value = "examples/default.toml")]
        manifest: PathBuf,
        /// Also write the figures as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// berth on its own kernel against Debian's: boot to ready and initrd size, per arch.
    Kernel {
        /// Arches to measure (default: x86_64; aarch64 cross-builds its kernel first).
        #[arg(long)]
        arch: Vec<Arch>,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value = "examples/default.toml")]
        manifest: PathBuf,
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The whole suite: every figure beside its peer, per arch, as a table and JSON (run as
    /// root; `scripts/bench suite` builds and installs what it needs first).
    Suite {
        /// Arches to measure (default: both).
        #[arg(long)]
        arch: Vec<Arch>,
        /// Boots of each kind for the boot phases; interleaved runs for layer unpack.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long, default_value = "target/bench/suite.json")]
        json: PathBuf,
        /// The manifest whose image is measured for sizes.
        #[arg(long, default_value = "examples/default.toml")]
        manifest: PathBuf,
        /// The `berth` binary (`run-container` on the host, `ctl` for the guests).
        #[arg(long, default_value = "target/release/berth")]
        berth: PathBuf,
        /// Starts of each runtime for the host container-start figure.
        #[arg(long, default_value_t = 50)]
        runtime_runs: usize,
        /// Idle container counts for the memory boots; the largest also times a batch start.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
        idle: Vec<usize>,
        /// Skip the RAM floor search (the longest part).
        #[arg(long)]
        no_floor: bool,
    },
    /// The suite's host-side peers (crun, runc, conmon), as JSON; the suite runs it inside
    /// `unshare -m` with cgroup2 on /sys/fs/cgroup.
    #[command(hide = true)]
    Peers {
        #[arg(long, default_value_t = 50)]
        runtime_runs: usize,
        #[arg(long, default_value_t = 100)]
        batch: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
        idle: Vec<usize>,
        #[arg(long, default_value = "target/release/berth")]
        berth: PathBuf,
        #[arg(long)]
        json: PathBuf,
    },
    /// Regenerates `docs/performance.md`'s suite table (between its `bench:suite` markers) from the
    /// suite's JSON.
    Readme {
        #[arg(long, default_value = "target/bench/suite.json")]
        json: PathBuf,
        #[arg(long, default_value = "docs/performance.md")]
        readme: PathBuf,
    },
    /// `berth ctl ps` over the remote API (mutual TLS) beside the control port (x86_64).
    Api {
        /// Calls of each, interleaved.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// The `berth` binary whose `ctl` is timed.
        #[arg(long, default_value = "target/release/berth")]
        berth: PathBuf,
        /// Also write the figures as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// An update in place: `berth ctl update` to `update-committed`, in phases (x86_64; the
    /// disk boots through OVMF).
    Update {
        /// Updates to time, each on a fresh copy of the v1 disk.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// The `berth` binary whose `ctl` streams the bundle.
        #[arg(long, default_value = "target/release/berth")]
        berth: PathBuf,
        /// Also write the figures as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Container start: berth's runtime against crun and runc on the same rootfs (run as root,
    /// with cgroup2 on /sys/fs/cgroup: `scripts/bench runtime` arranges both).
    Runtime {
        /// Starts of each runtime.
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// The `berth` binary to measure.
        #[arg(long, default_value = "target/release/berth")]
        berth: PathBuf,
        /// Also write the figures as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Debug, Serialize)]
struct BootFigures {
    arch: String,
    runs: usize,
    berth_ready_s: Summary,
    berth_init_ms: Summary,
    trivial_init_s: Summary,
    berth_cost_s: f64,
}

/// Where the suite keeps its images, logs and figures (relative: the scripts run from the
/// workspace root).
pub(crate) fn bench_dir() -> PathBuf {
    PathBuf::from("target/bench")
}

pub(crate) fn work_dir() -> PathBuf {
    std::env::temp_dir().join(format!("berth-bench-{}", std::process::id()))
}

/// Boots once and returns the time from QEMU's start to the first line matching `marker`,
/// and that line.
pub(crate) fn time_to_line(
    config: &MachineConfig,
    marker: &Regex,
) -> Result<(Duration, String), String> {
    let mut machine = Machine::start(config).map_err(|e| e.to_string())?;
    let line = machine
        .wait_for_line(marker, BOOT_TIMEOUT)
        .map_err(|e| e.to_string())?;
    machine.kill();
    Ok((line.at, line.text))
}

fn init_ms(ready_line: &str) -> Option<f64> {
    ready_line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("init_ms="))
        .and_then(|v| v.parse().ok())
}

fn bench_boot(arch: Arch, runs: usize, manifest: &Path) -> Result<BootFigures, String> {
    let dir = work_dir().join(arch.name());
    let image = dir.join("berth");
    let metadata = berth_image::build(&BuildOptions {
        arch,
        manifest: manifest.to_path_buf(),
        out: image.clone(),
        kernel: KernelChoice::DebianDefault {
            cache_dir: default_cache_dir(),
        },
        init: None,
        netd: None,
        berthctl: None,
        puller: None,
        // The demo manifest's containers run busybox: the same layout the suite builds, so
        // that this benchmark needs no image store filled by an earlier `berth run`.
        images: vec![berth_image::images::ImageSource {
            name: Some(images::BUSYBOX.to_string()),
            dir: images::busybox_layout(arch)?,
        }],
        extra_modules: Vec::new(),
        disk: None,
        update_key: None,
    })
    .map_err(|e| format!("berth build: {e}"))?;
    let trivial_initrd = trivial::build_initrd(arch, &dir).map_err(|e| e.to_string())?;

    let berth_config = MachineConfig::new(
        arch,
        &image.join(&metadata.kernel),
        &image.join(&metadata.initrd),
        &dir.join("logs-berth"),
    );
    let mut trivial_config = berth_config.clone();
    trivial_config.initrd = trivial_initrd;
    trivial_config.log_dir = dir.join("logs-trivial");

    let ready = Regex::new(r"^berth event=ready ").map_err(|e| e.to_string())?;
    let trivial_marker = Regex::new(trivial::MARKER).map_err(|e| e.to_string())?;
    let (mut berth_ready, mut berth_init, mut trivial_times) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let (at, line) = time_to_line(&berth_config, &ready)?;
        berth_ready.push(at.as_secs_f64());
        berth_init.extend(init_ms(&line));
        let (at, _) = time_to_line(&trivial_config, &trivial_marker)?;
        trivial_times.push(at.as_secs_f64());
        eprintln!(
            "  {arch} run {run}/{runs}: berth ready {:.2} s, trivial init {:.2} s",
            berth_ready.last().copied().unwrap_or_default(),
            trivial_times.last().copied().unwrap_or_default()
        );
    }
    let berth_ready_s = Summary::of(&berth_ready);
    let trivial_init_s = Summary::of(&trivial_times);
    Ok(BootFigures {
        arch: arch.name().to_string(),
        runs,
        berth_cost_s: berth_ready_s.mean - trivial_init_s.mean,
        berth_ready_s,
        berth_init_ms: Summary::of(&berth_init),
        trivial_init_s,
    })
}

fn bench_kernels(
    arch: Vec<Arch>,
    runs: usize,
    manifest: &Path,
    json: Option<PathBuf>,
) -> std::process::ExitCode {
    let arches = if arch.is_empty() {
        vec![Arch::X86_64]
    } else {
        arch
    };
    let mut figures = Vec::new();
    for arch in arches {
        eprintln!("kernel benchmark, {arch}: {runs} boots of each");
        match kernel::bench(arch, runs, manifest) {
            Ok(f) => figures.push(f),
            Err(err) => {
                eprintln!("berth-bench: kernel {arch}: {err}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    println!("berth on its own kernel against Debian's, QEMU start to ready, TCG ({runs} runs each, mean ± sd)");
    println!(
        "{:<8} {:>16} {:>16} {:>7} {:>14} {:>14} {:>7}",
        "arch",
        "own kernel (s)",
        "Debian's (s)",
        "ratio",
        "own initrd KiB",
        "Debian's KiB",
        "ratio"
    );
    for f in &figures {
        println!(
            "{:<8} {:>16} {:>16} {:>7.2} {:>14} {:>14} {:>7.2}",
            f.arch,
            f.berth_kernel_ready_s.display(2),
            f.debian_kernel_ready_s.display(2),
            f.ready_ratio,
            f.berth_kernel_initrd_kib,
            f.debian_kernel_initrd_kib,
            f.initrd_ratio
        );
    }
    write_json(json, &figures);
    std::process::ExitCode::SUCCESS
}

fn write_json(path: Option<PathBuf>, figures: &impl Serialize) {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(figures).unwrap_or_default();
        if let Err(err) = std::fs::write(&path, text) {
            eprintln!("berth-bench: cannot write {}: {err}", path.display());
        }
    }
}

fn main() -> std::process::ExitCode {
    let (arch, runs, manifest, json) = match Cli::parse().command {
        Command::Boot {
            arch,
            runs,
            manifest,
            json,
        } => (arch, runs, manifest, json),
        Command::Kernel {
            arch,
            runs,
            manifest,
            json,
        } => return bench_kernels(arch, runs, &manifest, json),
        Command::Suite {
            arch,
            runs,
            json,
            manifest,
            berth,
            runtime_runs,
            idle,
            no_floor,
        } => {
            let mut idle = idle;
            idle.sort_unstable();
            idle.dedup();
            return suite::run(&suite::Options {
                arches: if arch.is_empty() {
                    Arch::ALL.to_vec()
                } else {
                    arch
                },
                runs,
                json,
                manifest,
                berth,
                runtime_runs,
                batch: idle.last().copied().unwrap_or_default(),
                idle,
                floor: !no_floor,
            });
        }
        Command::Peers {
            runtime_runs,
            batch,
            idle,
            berth,
            json,
        } => {
            let figures = host::peers(runtime_runs, batch, &idle, &berth);
            write_json(Some(json), &figures);
            return std::process::ExitCode::SUCCESS;
        }
        Command::Readme { json, readme } => {
            return match readme::run(&json, &readme) {
                Ok(()) => {
                    eprintln!("{} updated from {}", readme.display(), json.display());
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("berth-bench: readme: {e}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Command::Api { runs, berth, json } => {
            eprintln!("remote API benchmark, x86_64: {runs} calls of each, interleaved");
            return match api::bench(Arch::X86_64, runs, &api::work_dir(), &berth) {
                Ok(f) => {
                    api::print(&f);
                    write_json(json, &f);
                    std::process::ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("berth-bench: api: {err}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Command::Update { runs, berth, json } => {
            eprintln!("update benchmark, x86_64: {runs} updates, each on a fresh v1 disk");
            return match update::bench(Arch::X86_64, runs, &update::work_dir(), &berth) {
                Ok(f) => {
                    update::print(&f);
                    write_json(json, &f);
                    std::process::ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("berth-bench: update: {err}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
        Command::Runtime { runs, berth, json } => {
            eprintln!("container start benchmark: {runs} runs of each runtime, interleaved");
            return match runtime::bench(runs, &berth) {
                Ok(f) => {
                    println!(
                        "start and run /bin/true from a busybox rootfs ({} runs each, mean ± sd)",
                        f.runs
                    );
                    println!("{:<8} {:>16} {:>12}", "runtime", "time (ms)", "berth/this");
                    println!(
                        "{:<8} {:>16} {:>12}",
                        "berth",
                        f.berth_ms.display(1),
                        "1.00"
                    );
                    println!(
                        "{:<8} {:>16} {:>12.2}",
                        "crun",
                        f.crun_ms.display(1),
                        f.berth_to_crun
                    );
                    println!(
                        "{:<8} {:>16} {:>12.2}",
                        "runc",
                        f.runc_ms.display(1),
                        f.berth_to_runc
                    );
                    write_json(json, &f);
                    std::process::ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("berth-bench: runtime: {err}");
                    std::process::ExitCode::FAILURE
                }
            };
        }
    };
    let arches = if arch.is_empty() {
        Arch::ALL.to_vec()
    } else {
        arch
    };
    let mut figures = Vec::new();
    for arch in arches {
        eprintln!("boot benchmark, {arch}: {runs} runs of each");
        match bench_boot(arch, runs, &manifest) {
            Ok(f) => figures.push(f),
            Err(err) => {
                eprintln!("berth-bench: {arch}: {err}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    println!("QEMU start to first sign of life, TCG, same kernel and flags ({runs} runs each, mean ± sd)");
    println!(
        "{:<8} {:>18} {:>18} {:>12} {:>14}",
        "arch", "berth ready (s)", "trivial init (s)", "berth cost", "init work (ms)"
    );
    for f in &figures {
        println!(
            "{:<8} {:>18} {:>18} {:>10.2} s {:>14}",
            f.arch,
            f.berth_ready_s.display(2),
            f.trivial_init_s.display(2),
            f.berth_cost_s,
            f.berth_init_ms.display(0),
        );
    }
    write_json(json, &figures);
    let _ = std::fs::remove_dir_all(work_dir());
    std::process::ExitCode::SUCCESS
}
