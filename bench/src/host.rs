//! The suite's host-side figures: the peers of the guest's figures run on the build machine
//! (crun starting a batch of detached containers, conmon supervising idle ones, and the
//! `runtime` bench), and layer unpack throughput, berth's against umoci's.
//!
//! The peers need root and cgroup2 on `/sys/fs/cgroup` (crun refuses the build machine's
//! hybrid layout), so the suite runs them as `berth-bench peers` inside `unshare -m`, as
//! `scripts/bench runtime` does, and reads their JSON.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_oci::Layout;
use serde::{Deserialize, Serialize};

use crate::runtime::{self, RuntimeFigures};
use crate::stats::median;

/// How long a conmon-started container may take to write its pid file.
const CREATE_TIMEOUT: Duration = Duration::from_secs(20);
/// Between the last container's start and reading conmon's memory.
const SETTLE: Duration = Duration::from_secs(1);

/// `crun run -d` of a batch of idle containers, one after the other.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchFigure {
    pub containers: usize,
    pub total_ms: f64,
}

/// N idle containers under conmon (one conmon per container, as Podman runs them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConmonFigure {
    pub containers: usize,
    /// The sum of every conmon's VmRSS.
    pub conmon_rss_kib: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PeerFigures {
    pub crun_version: String,
    pub runc_version: String,
    pub conmon_version: String,
    pub runtime: Option<RuntimeFiguresJson>,
    pub crun_batch: Option<BatchFigure>,
    pub conmon: Vec<ConmonFigure>,
    pub errors: Vec<String>,
}

/// [`RuntimeFigures`] as read back: the means only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeFiguresJson {
    pub runs: usize,
    pub berth_ms: f64,
    pub crun_ms: f64,
    pub runc_ms: f64,
}

impl From<&RuntimeFigures> for RuntimeFiguresJson {
    fn from(f: &RuntimeFigures) -> Self {
        RuntimeFiguresJson {
            runs: f.runs,
            berth_ms: f.berth_ms.mean,
            crun_ms: f.crun_ms.mean,
            runc_ms: f.runc_ms.mean,
        }
    }
}

/// The first line of `program --version`, as `crun 1.8.1`.
pub fn version(program: &str) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.replacen(" version ", " ", 1))
        })
        .unwrap_or_else(|| format!("{program} (version unknown)"))
}

fn quiet(command: &mut Command) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// As [`quiet`], for commands that leave a process behind (`crun run -d`, conmon): that
/// process inherits their stdio, so none of it may be a pipe this process waits on.
fn detached(command: &mut Command) -> Result<(), String> {
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("{command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?}: {status}"))
    }
}

fn crun() -> Command {
    let mut command = Command::new("crun");
    command.arg("--cgroup-manager=disabled");
    command
}

fn remove_containers(ids: &[String]) {
    for id in ids {
        let _ = quiet(crun().args(["delete", "-f", id]));
    }
}

/// Starts `containers` detached crun containers from the bundle in `dir`, timed, then
/// removes them.
fn crun_batch(dir: &Path, containers: usize) -> Result<BatchFigure, String> {
    let ids: Vec<String> = (0..containers)
        .map(|i| format!("bench-batch-{i}"))
        .collect();
    remove_containers(&ids);
    let started = Instant::now();
    let mut result = Ok(());
    for id in &ids {
        result = detached(crun().args(["run", "-d", "--bundle"]).arg(dir).arg(id));
        if result.is_err() {
            break;
        }
    }
    let total_ms = started.elapsed().as_secs_f64() * 1000.0;
    remove_containers(&ids);
    result.map(|()| BatchFigure {
        containers,
        total_ms,
    })
}

/// VmRSS of every process named `name`, summed, in KiB.
pub fn rss_of(name: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter_map(|status| {
            status.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .sum()
}

fn wait_for_file(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Runs `containers` idle containers as Podman does, each created by its own conmon
/// (crun as the runtime) and then started; sums conmon's memory; removes them.
fn conmon_idle(dir: &Path, bundle: &Path, containers: usize) -> Result<ConmonFigure, String> {
    let state = dir.join(format!("conmon-{containers}"));
    let _ = std::fs::remove_dir_all(&state);
    for sub in ["exits", "sockets", "logs", "pids"] {
        std::fs::create_dir_all(state.join(sub)).map_err(|e| e.to_string())?;
    }
    let ids: Vec<String> = (0..containers)
        .map(|i| format!("bench-conmon-{i}"))
        .collect();
    remove_containers(&ids);
    let run = || -> Result<ConmonFigure, String> {
        for id in &ids {
            let pid_file = state.join("pids").join(format!("{id}.pid"));
            detached(
                Command::new("conmon")
                    .args(["--api-version", "1", "-c", id, "-u", id, "-n", id])
                    .args([
                        "-r",
                        "/usr/bin/crun",
                        "--runtime-arg",
                        "--cgroup-manager=disabled",
                    ])
                    .arg("-b")
                    .arg(bundle)
                    .arg("-p")
                    .arg(&pid_file)
                    .arg("-P")
                    .arg(state.join("pids").join(format!("{id}.conmon.pid")))
                    .arg("-l")
                    .arg(format!(
                        "k8s-file:{}",
                        state.join("logs").join(id).display()
                    ))
                    .arg("--exit-dir")
                    .arg(state.join("exits"))
                    .arg("--socket-dir-path")
                    .arg(state.join("sockets"))
                    .args(["--log-level", "error"]),
            )?;
            if !wait_for_file(&pid_file, CREATE_TIMEOUT) {
                return Err(format!(
                    "conmon for {id} wrote no pid file within {CREATE_TIMEOUT:?}"
                ));
            }
            quiet(crun().args(["start", id]))?;
        }
        std::thread::sleep(SETTLE);
        Ok(ConmonFigure {
            containers,
            conmon_rss_kib: rss_of("conmon"),
        })
    };
    let result = run();
    remove_containers(&ids);
    // conmon exits once its container is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while rss_of("conmon") > 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&state);
    result
}

/// `berth-bench peers`: every host-side peer figure, as JSON. Run as root inside `unshare
/// -m` with cgroup2 on `/sys/fs/cgroup`.
pub fn peers(runtime_runs: usize, batch: usize, idle: &[usize], berth: &Path) -> PeerFigures {
    let mut figures = PeerFigures {
        crun_version: version("crun"),
        runc_version: version("runc"),
        conmon_version: version("conmon"),
        runtime: None,
        crun_batch: None,
        conmon: Vec::new(),
        errors: Vec::new(),
    };
    eprintln!("  host: berth run-container, crun and runc, {runtime_runs} runs each");
    match runtime::bench(runtime_runs, berth) {
        Ok(f) => figures.runtime = Some(RuntimeFiguresJson::from(&f)),
        Err(e) => figures.errors.push(format!("runtime: {e}")),
    }
    let dir = std::env::temp_dir().join(format!("berth-bench-peers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bundle = dir.join("bundle");
    if let Err(e) = std::fs::create_dir_all(&bundle)
        .map_err(|e| e.to_string())
        .and_then(|()| runtime::prepare_bundle(&bundle, &["/bin/sleep", "100000"]))
    {
        figures.errors.push(format!("bundle: {e}"));
        return figures;
    }
    eprintln!("  host: crun run -d of {batch} containers");
    match crun_batch(&bundle, batch) {
        Ok(f) => figures.crun_batch = Some(f),
        Err(e) => figures.errors.push(format!("crun batch: {e}")),
    }
    for &n in idle {
        eprintln!("  host: {n} idle containers under conmon");
        match conmon_idle(&dir, &bundle, n) {
            Ok(f) => figures.conmon.push(f),
            Err(e) => {
                figures.errors.push(format!("conmon, {n} containers: {e}"));
                break;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    figures
}

/// Unpacking one image's layers: berth's code against `umoci raw unpack`.
#[derive(Debug, Clone, Serialize)]
pub struct UnpackFigure {
    pub image: String,
    pub layers: usize,
    pub compressed_bytes: u64,
    /// The uncompressed tar stream, on which throughput is counted.
    pub uncompressed_bytes: u64,
    pub entries: u64,
    pub berth_s: Vec<f64>,
    pub umoci_s: Vec<f64>,
    pub berth_mb_s: f64,
    pub umoci_mb_s: f64,
}

/// Opens the layout, resolves `tag`, reads each layer blob (digest checked) and unpacks it
/// with berth's unpacker (diff_id checked) into `dest/<n>`: what init does per layer, less
/// the store's final syncfs and rename.
fn berth_unpack(layout: &Path, tag: &str, dest: &Path) -> Result<(u64, u64, u64, usize), String> {
    std::fs::create_dir_all(dest).map_err(|e| e.to_string())?;
    let layout = Layout::open(layout).map_err(|e| e.to_string())?;
    let image = layout.resolve(tag).map_err(|e| e.to_string())?;
    let (mut compressed, mut bytes, mut entries, mut layers) = (0, 0, 0, 0);
    for (index, (descriptor, diff_id)) in image.layers().enumerate() {
        let blob = layout
            .read_descriptor(descriptor)
            .map_err(|e| e.to_string())?;
        let stats = berth_oci::unpack_layer(
            &blob,
            &descriptor.media_type,
            diff_id,
            &dest.join(index.to_string()),
        )
        .map_err(|e| e.to_string())?;
        compressed += descriptor.size;
        bytes += stats.bytes;
        entries += stats.entries;
        layers += 1;
    }
    Ok((compressed, bytes, entries, layers))
}

/// Interleaved runs of both unpackers on the same layout, into fresh directories on the
/// same filesystem (`target/bench/unpack`).
pub fn unpack(name: &str, layout: &Path, tag: &str, runs: usize) -> Result<UnpackFigure, String> {
    let work: PathBuf = crate::bench_dir().join("unpack");
    let (berth_dest, umoci_dest) = (work.join("berth"), work.join("umoci"));
    let mut figure = UnpackFigure {
        image: name.to_string(),
        layers: 0,
        compressed_bytes: 0,
        uncompressed_bytes: 0,
        entries: 0,
        berth_s: Vec::new(),
        umoci_s: Vec::new(),
        berth_mb_s: f64::NAN,
        umoci_mb_s: f64::NAN,
    };
    for _ in 0..runs {
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        let started = Instant::now();
        let (compressed, bytes, entries, layers) = berth_unpack(layout, tag, &berth_dest)?;
        figure.berth_s.push(started.elapsed().as_secs_f64());
        (
            figure.compressed_bytes,
            figure.uncompressed_bytes,
            figure.entries,
            figure.layers,
        ) = (compressed, bytes, entries, layers);

        let started = Instant::now();
        quiet(
            Command::new("umoci")
                .args(["raw", "unpack", "--image"])
                .arg(format!("{}:{tag}", layout.display()))
                .arg(&umoci_dest),
        )?;
        figure.umoci_s.push(started.elapsed().as_secs_f64());
    }
    let _ = std::fs::remove_dir_all(&work);
    let megabytes = figure.uncompressed_bytes as f64 / 1e6;
    figure.berth_mb_s = megabytes / median(&figure.berth_s);
    figure.umoci_mb_s = megabytes / median(&figure.umoci_s);
    Ok(figure)
}
