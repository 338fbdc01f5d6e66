//! `GET /metrics`: Prometheus' text exposition format (0.0.4), plain HTTP, on
//! `[api] metrics_listen`.
//!
//! The HTTP is written here rather than taken from a crate: one method on one path, a request
//! head read with a size cap and a deadline, a response closed after it is sent. A server
//! crate (hyper and its stack) would be most of berth-apid for that.
//!
//! The figures come from init over its control socket (`ps` and `stats`, as berthctl asks)
//! and from `/proc` and `/sys`; each scrape gathers them afresh.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use berth_control::{ContainerStats, ContainerStatus, Envelope, Request, Response, VERSION};
use berth_event::Event;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

use crate::emit;

/// The longest request head read; a longer one is refused.
const MAX_HEAD: usize = 8 << 10;
/// A client gets this long to send its request and init this long to answer ours.
const DEADLINE: Duration = Duration::from_secs(5);
/// The longest answer from init read.
const MAX_ANSWER: u64 = 4 << 20;
/// Connections served at once; more are closed at once, unread.
const MAX_SCRAPES: usize = 16;

/// Serves metrics on `address` until the listener fails.
pub async fn serve(address: SocketAddr) -> Result<(), String> {
    let listener =
        crate::listen::bind(address).map_err(|e| format!("metrics on {address}: {e}"))?;
    emit(Event::new("metrics-listening").field("addr", address));
    let active = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        use std::sync::atomic::Ordering;
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_SCRAPES {
            active.fetch_sub(1, Ordering::SeqCst);
            drop(stream);
            continue;
        }
        let active = std::sync::Arc::clone(&active);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DEADLINE * 2, handle(stream)).await;
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// The request's method and path, once its head is whole; None for a head too long or cut.
async fn read_head(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = tokio::time::timeout(DEADLINE, stream.read(&mut buffer))
            .await
            .ok()?
            .ok()?;
        if read == 0 || head.len() + read > MAX_HEAD {
            return None;
        }
        head.extend_from_slice(buffer.get(..read)?);
    }
    let text = String::from_utf8_lossy(&head);
    let mut words = text.lines().next()?.split(' ');
    Some((words.next()?.to_string(), words.next()?.to_string()))
}

async fn handle(mut stream: TcpStream) {
    let (status, body) = match read_head(&mut stream).await {
        Some((method, path)) if method == "GET" && path == "/metrics" => ("200 OK", gather().await),
        Some((method, _)) if method != "GET" => ("405 Method Not Allowed", String::new()),
        Some(_) => ("404 Not Found", String::new()),
        None => ("400 Bad Request", String::new()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// One request to init and its response.
async fn ask(request: Request) -> Result<Response, String> {
    let exchange = async {
        let mut init = UnixStream::connect(berth_control::SOCKET)
            .await
            .map_err(|e| format!("{}: {e}", berth_control::SOCKET))?;
        let envelope = Envelope {
            v: VERSION,
            id: Some(1),
            request,
        };
        init.write_all(berth_control::to_line(&envelope).as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(init.take(MAX_ANSWER))
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_str::<Response>(&line).map_err(|e| e.to_string())
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .map_err(|_| "init did not answer in time".to_string())?
}

/// One sample line: `name{labels} value`.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    let labels: Vec<String> = labels
        .iter()
        .map(|(key, value)| format!("{key}=\"{}\"", escape(value)))
        .collect();
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
    }
}

/// A label value as the text format escapes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One metric with a sample per container: `(name, type)`, its help, and the values.
fn per_container<'a>(
    out: &mut String,
    (name, kind): (&str, &str),
    help: &str,
    values: impl Iterator<Item = (&'a str, String)>,
) {
    header(out, name, kind, help);
    for (container, value) in values {
        sample(out, name, &[("container", container)], value);
    }
}

/// The container states `ps` shows; each is one series per container, 1 for its state.
const STATES: &[&str] = &[
    "created",
    "waiting",
    "pulling",
    "unpacking",
    "running",
    "stopping",
    "restarting",
    "stopped",
];

/// The text for the containers in `ps` and their cgroup figures in `stats`.
pub fn containers_text(containers: &[ContainerStatus], stats: &[ContainerStats]) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "berth_container_state",
        "gauge",
        "1 for the state the container is in (as berthctl ps shows it).",
    );
    for c in containers {
        for state in STATES {
            let value = u8::from(c.state == *state);
            sample(
                &mut out,
                "berth_container_state",
                &[("container", &c.name), ("state", state)],
                value,
            );
        }
    }
    per_container(
        &mut out,
        ("berth_container_restarts_total", "counter"),
        "Restarts by the restart policy since boot.",
        containers
            .iter()
            .map(|c| (c.name.as_str(), c.restarts.to_string())),
    );
    per_container(
        &mut out,
        ("berth_container_oom_kills_total", "counter"),
        "Processes the OOM killer ended in the container since boot.",
        containers
            .iter()
            .map(|c| (c.name.as_str(), c.oom_kills.to_string())),
    );
    per_container(
        &mut out,
        ("berth_container_healthy", "gauge"),
        "1 when the health check passes, 0 when it fails or is starting.",
        containers.iter().filter_map(|c| {
            let health = c.health.as_ref()?;
            Some((c.name.as_str(), u8::from(health == "healthy").to_string()))
        }),
    );
    #[expect(clippy::cast_precision_loss, reason = "CPU seconds as a float")]
    let cpu_seconds = |usec: u64| (usec as f64 / 1e6).to_string();
    per_container(
        &mut out,
        ("berth_container_cpu_seconds_total", "counter"),
        "CPU time of the running container (cgroup cpu.stat).",
        stats
            .iter()
            .filter_map(|s| Some((s.name.as_str(), cpu_seconds(s.cpu_usec?)))),
    );
    per_container(
        &mut out,
        ("berth_container_memory_bytes", "gauge"),
        "Memory of the running container (cgroup memory.current).",
        stats
            .iter()
            .filter_map(|s| Some((s.name.as_str(), s.memory_bytes?.to_string()))),
    );
    per_container(
        &mut out,
        ("berth_container_pids", "gauge"),
        "Processes of the running container (cgroup pids.current).",
        stats
            .iter()
            .filter_map(|s| Some((s.name.as_str(), s.pids?.to_string()))),
    );
    out
}

/// `KEY: VALUE kB` from a `/proc` status-like file, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let value = line.get(key.len()..)?.trim_start_matches(':').trim();
    let kib: u64 = value.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The host's figures: memory, load, uptime, init's resident memory, the links.
fn host_text() -> String {
    let mut out = String::new();
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    for (name, key, help) in [
        (
            "berth_host_memory_total_bytes",
            "MemTotal",
            "Memory the kernel manages.",
        ),
        (
            "berth_host_memory_available_bytes",
            "MemAvailable",
            "Memory available without swapping.",
        ),
    ] {
        if let Some(bytes) = kib_field(&meminfo, key) {
            header(&mut out, name, "gauge", help);
            sample(&mut out, name, &[], bytes);
        }
    }
    let loadavg = read("/proc/loadavg");
    let loads: Vec<&str> = loadavg.split_whitespace().take(3).collect();
    if let [one, five, fifteen] = loads.as_slice() {
        for (name, value) in [
            ("berth_host_load1", one),
            ("berth_host_load5", five),
            ("berth_host_load15", fifteen),
        ] {
            header(&mut out, name, "gauge", "The kernel's load average.");
            sample(&mut out, name, &[], value);
        }
    }
    if let Some(uptime) = read("/proc/uptime").split_whitespace().next() {
        header(
            &mut out,
            "berth_host_uptime_seconds",
            "gauge",
            "Seconds since boot.",
        );
        sample(&mut out, "berth_host_uptime_seconds", &[], uptime);
    }
    if let Some(rss) = kib_field(&read("/proc/1/status"), "VmRSS") {
        header(
            &mut out,
            "berth_init_resident_bytes",
            "gauge",
            "init's resident memory.",
        );
        sample(&mut out, "berth_init_resident_bytes", &[], rss);
    }
    header(
        &mut out,
        "berth_link_up",
        "gauge",
        "1 when the network link's operational state is up.",
    );
    if let Ok(links) = std::fs::read_dir("/sys/class/net") {
        let mut names: Vec<String> = links
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "lo")
            .collect();
        names.sort();
        for name in names {
            let state = read(&format!("/sys/class/net/{name}/operstate"));
            sample(
                &mut out,
                "berth_link_up",
                &[("iface", &name)],
                u8::from(state.trim() == "up"),
            );
        }
    }
    let leases = std::fs::read_dir("/run/berth/netd")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".lease"))
                .count()
        })
        .unwrap_or(0);
    header(
        &mut out,
        "berth_netd_leases",
        "gauge",
        "DHCP leases netd holds.",
    );
    sample(&mut out, "berth_netd_leases", &[], leases);
    out
}

/// `berth_events_total{kind=...}` from init's counts.
pub fn events_text(counts: &std::collections::BTreeMap<String, u64>) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "berth_events_total",
        "counter",
        "Events init emitted since boot, by kind.",
    );
    for (kind, count) in counts {
        sample(&mut out, "berth_events_total", &[("kind", kind)], *count);
    }
    out
}

/// Everything, gathered now.
async fn gather() -> String {
    let mut out = String::new();
    match (ask(Request::Ps).await, ask(Request::Stats).await) {
        (Ok(ps), Ok(stats)) => {
            out.push_str(&containers_text(
                &ps.containers.unwrap_or_default(),
                &stats.stats.unwrap_or_default(),
            ));
            out.push_str(&events_text(&stats.event_counts.unwrap_or_default()));
            header(&mut out, "berth_up", "gauge", "1 when init answered.");
            sample(&mut out, "berth_up", &[], 1);
        }
        (Err(err), _) | (_, Err(err)) => {
            emit(Event::new("metrics-failed").field("error", err));
            header(&mut out, "berth_up", "gauge", "1 when init answered.");
            sample(&mut out, "berth_up", &[], 0);
        }
    }
    out.push_str(&host_text());
    out
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    /// What the metrics port answers `request` with (the whole response), or None when it
    /// closed without a word; with how long that took.
    fn exchange(port: u16, request: &[u8]) -> (Option<String>, Duration) {
        use std::io::{Read, Write};
        let started = std::time::Instant::now();
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let _ = stream.write_all(request);
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        ((!answer.is_empty()).then_some(answer), started.elapsed())
    }

    #[test]
    fn the_metrics_port_refuses_what_is_not_a_short_get_within_its_deadline() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let address: SocketAddr = ([127, 0, 0, 1], port).into();
            let _ = runtime.block_on(serve(address));
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the port never opened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = |answer: Option<String>| {
            answer
                .unwrap_or_default()
                .lines()
                .next()
                .map(str::to_string)
        };
        let long = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert_eq!(
            status(exchange(port, long.as_bytes()).0).as_deref(),
            Some("HTTP/1.1 400 Bad Request"),
            "a head over {MAX_HEAD} bytes"
        );
        assert_eq!(
            status(exchange(port, b"POST /metrics HTTP/1.1\r\n\r\n").0).as_deref(),
            Some("HTTP/1.1 405 Method Not Allowed")
        );
        assert_eq!(
            status(exchange(port, b"GET /secrets HTTP/1.1\r\n\r\n").0).as_deref(),
            Some("HTTP/1.1 404 Not Found")
        );
        // A client that never finishes its head is let go after the deadline.
        let (answer, took) = exchange(port, b"GET /metrics HTTP/1.1\r\n");
        assert_eq!(status(answer).as_deref(), Some("HTTP/1.1 400 Bad Request"));
        assert!(took >= DEADLINE && took < DEADLINE * 3, "{took:?}");
        // Past MAX_SCRAPES connections at once, the next is closed unread.
        let silent: Vec<_> = (0..MAX_SCRAPES)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let (answer, took) = exchange(port, b"GET /nothing HTTP/1.1\r\n\r\n");
        assert!(
            answer.is_none() && took < DEADLINE,
            "{answer:?} after {took:?}"
        );
        drop(silent);
    }

    fn status(name: &str, state: &str, restarts: u32) -> ContainerStatus {
        ContainerStatus {
            name: name.to_string(),
            image: "busybox:1.35".to_string(),
            state: state.to_string(),
            pid: None,
            restarts,
            uptime_s: None,
            last_exit: Some(1),
            restart_policy: "on-failure".to_string(),
            health: Some("healthy".to_string()),
            network: "bridge".to_string(),
            addr: None,
            stopped_by_operator: false,
            oom_kills: 2,
        }
    }

    #[test]
    fn containers_become_labelled_series() {
        let text = containers_text(
            &[status("web", "stopped", 3)],
            &[ContainerStats {
                name: "web".to_string(),
                memory_bytes: Some(4096),
                cpu_usec: Some(1_500_000),
                pids: Some(2),
            }],
        );
        for line in [
            "berth_container_state{container=\"web\",state=\"stopped\"} 1",
            "berth_container_state{container=\"web\",state=\"running\"} 0",
            "berth_container_restarts_total{container=\"web\"} 3",
            "berth_container_oom_kills_total{container=\"web\"} 2",
            "berth_container_healthy{container=\"web\"} 1",
            "berth_container_cpu_seconds_total{container=\"web\"} 1.5",
            "berth_container_memory_bytes{container=\"web\"} 4096",
            "berth_container_pids{container=\"web\"} 2",
            "# TYPE berth_container_restarts_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\n");
        assert_eq!(
            kib_field("VmRSS:\t  1200 kB\n", "VmRSS").unwrap(),
            1_228_800
        );
    }
}
