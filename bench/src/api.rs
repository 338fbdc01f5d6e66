//! `api`: the round trip of `berth ctl ps` from the test machine, over the remote API
//! (`--endpoint`: TCP through QEMU's user network, mutual TLS 1.3, berth-apid's relay to
//! init's socket) beside the control port (`--socket`: QEMU's virtio-serial chardev), against
//! one guest, interleaved. Each call is a whole `berth ctl` process, as an operator runs it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_arch::Arch;
use berth_image::api_cert::{make_ca, make_certificate_for_days, Role};
use berth_qemu::Machine;
use serde::Serialize;

use crate::guest::build;
use crate::stats::Summary;
use berth_qemu::events;

const READY_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Serialize)]
pub struct ApiFigures {
    pub arch: String,
    pub runs: usize,
    pub control_port_ms: Summary,
    pub api_ms: Summary,
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// One `berth ctl ... ps`, timed; it must succeed.
fn timed_ps(berth: &Path, how: &[String]) -> Result<f64, String> {
    let started = Instant::now();
    let output = Command::new(berth)
        .arg("ctl")
        .args(how)
        .args(["--timeout", "60", "ps"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", berth.display()))?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    if !output.status.success() {
        return Err(format!(
            "berth ctl {how:?} ps: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(elapsed)
}

pub fn bench(arch: Arch, runs: usize, dir: &Path, berth: &Path) -> Result<ApiFigures, String> {
    // The manifest names the certificates by absolute paths (relative ones are taken from
    // the manifest's directory).
    let dir = &std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let pki = dir.join("pki");
    make_ca(&pki, 30)?;
    let names = ["127.0.0.1".to_string()];
    make_certificate_for_days(&pki, Role::Server, &names, &pki, 30)?;
    make_certificate_for_days(&pki, Role::Client, &["bench".to_string()], &pki, 30)?;
    let manifest = format!(
        "[api]\nca = \"{p}/ca.pem\"\ncert = \"{p}/server.pem\"\nkey = \"{p}/server.key\"\n\n\
         [containers.app]\nimage = \"busybox:1.35\"\ncommand = [\"sleep\", \"100000\"]\n",
        p = pki.display()
    );
    let built = build(arch, dir, &manifest, true, None)?;
    let port = free_port()?;
    let socket = dir.join("control.sock");
    let mut config = built.config(arch, "boot");
    config.control_socket = Some(socket.clone());
    config.user_net = false;
    config.extra_args.extend([
        "-netdev".to_string(),
        format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:7443"),
        "-device".to_string(),
        "virtio-net-pci,netdev=net0,romfile=".to_string(),
    ]);
    let mut machine = Machine::start(&config).map_err(|e| e.to_string())?;
    events::wait_until(&mut machine, READY_TIMEOUT, "api-listening", |seen| {
        events::first(seen, "api-listening", None).is_some()
            && events::first(seen, "started", Some("app")).is_some()
    })?;
    let control_port = vec!["--socket".to_string(), socket.display().to_string()];
    let file = |name: &str| pki.join(name).display().to_string();
    let api = vec![
        "--endpoint".to_string(),
        format!("127.0.0.1:{port}"),
        "--ca".to_string(),
        file("ca.pem"),
        "--cert".to_string(),
        file("client.pem"),
        "--key".to_string(),
        file("client.key"),
    ];
    // One of each first: the page cache and the guest's first answers are not measured.
    timed_ps(berth, &control_port)?;
    timed_ps(berth, &api)?;
    let mut by_port = Vec::new();
    let mut by_api = Vec::new();
    for _ in 0..runs {
        by_port.push(timed_ps(berth, &control_port)?);
        by_api.push(timed_ps(berth, &api)?);
    }
    machine.kill();
    Ok(ApiFigures {
        arch: arch.name().to_string(),
        runs,
        control_port_ms: Summary::of(&by_port),
        api_ms: Summary::of(&by_api),
    })
}

pub fn print(figures: &ApiFigures) {
    println!(
        "`berth ctl ps` round trip from the test machine, {} guest, TCG ({} runs each, interleaved, mean ± sd)",
        figures.arch, figures.runs
    );
    println!("{:<14} {:>14}", "path", "time (ms)");
    println!(
        "{:<14} {:>14}",
        "control port",
        figures.control_port_ms.display(1)
    );
    println!("{:<14} {:>14}", "API (mTLS)", figures.api_ms.display(1));
}

pub fn work_dir() -> PathBuf {
    crate::bench_dir().join("api")
}
