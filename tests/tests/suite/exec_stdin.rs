//! `berth ctl exec -i` fed stdin faster than its process reads it (issue 19, "PID 1 never
//! waits"): init stops reading the client once the process' stdin is backed up, so the client
//! is pushed back instead of PID 1 growing. Meanwhile init's resident set stays small and
//! `ps` keeps answering; once the client leaves, the port serves the next one.
//!
//! The host's `berth ctl` holds the control port for the whole exec (the port serves one
//! client at a time), so a container in the host's PID namespace watches init from inside:
//! it times `berthctl ps` on init's own socket and reads `/proc/1/status`, twice a second,
//! and prints what it saw on the console.
//!
//! x86_64 only: what it exercises (init's control sessions) is the same code on aarch64, and
//! the watch lasts 25 s of guest time.

use std::io::Write;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_arch::Arch;
use berth_tests::{berth_ctl_command, berth_ctl_ok, build_image, log_dir, machine_config, ps_row};

const MANIFEST: &str = r#"
[containers.sink]
image = "busybox:1.35"
command = ["sleep", "100000"]

[containers.watch]
image = "busybox:1.35"
pid = "host"
network_mode = "host"
volumes = ["/run/berth:/run/berth", "/usr/bin/berthctl:/usr/bin/berthctl:ro"]
command = ["sh", "-c", "while true; do a=$(cut -d' ' -f1 /proc/uptime); berthctl ps > /dev/null; c=$?; b=$(cut -d' ' -f1 /proc/uptime); echo watch rss_kib=$(grep VmRSS /proc/1/status | tr -s ' ' | cut -d' ' -f2) ps_code=$c ps_from=$a ps_to=$b; sleep 0.5; done"]
"#;

/// Guest RAM: a PID 1 that buffered the client's stdin would take it all.
const MEMORY_MIB: u32 = 256;
/// What the client would send, at most.
const STDIN_BYTES: u64 = 1 << 30;
/// How long the client is fed while the test watches.
const WATCH: Duration = Duration::from_secs(25);
/// init's resident set may not reach this while the client is fed (it is about 3 MiB idle).
const RSS_LIMIT_KIB: u64 = 8 << 10;
/// The longest a `ps` may take while the client is fed.
const PS_LIMIT_SECS: f64 = 1.0;
/// What the client may get through in the watch: the buffers between it and init (its
/// socket, QEMU's, the virtio queue, the process' pipe) and init's bound, with room to spare,
/// and far below the gigabyte it tries.
const SENT_LIMIT: u64 = 64 << 20;

/// One line of the watcher: init's resident set, `ps`'s exit code and how long it took.
#[derive(Debug)]
struct Watch {
    rss_kib: u64,
    ps_code: i32,
    ps_secs: f64,
}

fn parse_watch(line: &str) -> Option<Watch> {
    let fields: std::collections::HashMap<&str, &str> = line
        .strip_prefix("watch | watch ")?
        .split_whitespace()
        .filter_map(|field| field.split_once('='))
        .collect();
    let number = |key: &str| fields.get(key)?.parse::<f64>().ok();
    Some(Watch {
        rss_kib: fields.get("rss_kib")?.parse().ok()?,
        ps_code: fields.get("ps_code")?.parse().ok()?,
        ps_secs: number("ps_to")? - number("ps_from")?,
    })
}

#[test]
fn exec_stdin_faster_than_the_process_reads_pushes_the_client_back() {
    let dir = log_dir("exec-stdin");
    let image = build_image(Arch::X86_64, MANIFEST, &dir).unwrap_or_else(|e| panic!("{e}"));
    let mut config = machine_config(Arch::X86_64, &image, &dir);
    config.memory_mib = MEMORY_MIB;
    let socket = dir.join("control.sock");
    config.control_socket = Some(socket.clone());
    let mut machine = berth_tests::start_to_ready(&config);
    let ctx = format!("console: {}", machine.console_log().display());
    berth_tests::wait_line(&mut machine, r"^watch \| watch rss_kib=");

    // A client that streams zeros into a process that never reads them.
    let mut client = berth_ctl_command(&socket, &["exec", "-i", "sink", "--", "sleep", "60"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run berth ctl: {e}"));
    let mut stdin = client.stdin.take().unwrap_or_else(|| panic!("no stdin"));
    let sent = Arc::new(AtomicU64::new(0));
    let feeder = {
        let sent = Arc::clone(&sent);
        std::thread::spawn(move || {
            let zeros = vec![0u8; 64 << 10];
            while sent.load(Ordering::Relaxed) < STDIN_BYTES {
                if stdin.write_all(&zeros).is_err() {
                    return;
                }
                sent.fetch_add(zeros.len() as u64, Ordering::Relaxed);
            }
        })
    };
    let from = machine.console_lines().len();
    let watched = |machine: &berth_qemu::Machine| -> Vec<(String, Watch)> {
        machine
            .console_lines()
            .into_iter()
            .skip(from)
            .filter_map(|l| parse_watch(&l.text).map(|w| (l.text, w)))
            .collect()
    };
    let started = Instant::now();
    while started.elapsed() < WATCH {
        std::thread::sleep(Duration::from_millis(500));
        // A PID 1 that buffers without bound takes the guest down within seconds: say so
        // before anything else breaks.
        if let Some((line, _)) = watched(&machine)
            .into_iter()
            .find(|(_, w)| w.rss_kib >= RSS_LIMIT_KIB)
        {
            panic!("init's RSS grew while the client was fed: {line}; {ctx}");
        }
        assert!(
            client.try_wait().ok().flatten().is_none(),
            "berth ctl exec -i ended early; {ctx}"
        );
    }
    let pushed_back_at = sent.load(Ordering::Relaxed);
    let watched = watched(&machine);
    let _ = client.kill();
    let _ = client.wait();
    let _ = feeder.join();

    assert!(
        pushed_back_at < SENT_LIMIT,
        "the client sent {pushed_back_at} bytes in {WATCH:?}: nothing pushed it back; {ctx}"
    );
    assert!(
        watched.len() >= 10,
        "only {} watch lines in {WATCH:?}: {watched:?}; {ctx}",
        watched.len()
    );
    for (line, watch) in &watched {
        assert!(
            watch.rss_kib < RSS_LIMIT_KIB,
            "init's RSS reached {} KiB while the client was fed: {line}; {ctx}",
            watch.rss_kib
        );
        assert_eq!(watch.ps_code, 0, "ps failed: {line}; {ctx}");
        assert!(
            watch.ps_secs <= PS_LIMIT_SECS,
            "ps took {:.2} s: {line}; {ctx}",
            watch.ps_secs
        );
    }

    // The port serves the next client: what the one that left had sent and init had not
    // read yet is not taken for its request.
    let row = ps_row(&socket, "sink");
    assert_eq!(
        row.get(1).map(String::as_str),
        Some("running"),
        "{row:?}; {ctx}"
    );
    let echoed = berth_ctl_ok(&socket, &["exec", "sink", "--", "echo", "after"]);
    assert_eq!(echoed.trim(), "after", "{ctx}");
    eprintln!(
        "the client got {pushed_back_at} bytes through in {WATCH:?}; init's RSS peaked at {} KiB",
        watched.iter().map(|(_, w)| w.rss_kib).max().unwrap_or(0)
    );
}
