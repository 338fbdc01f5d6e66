//! Stops that never block PID 1 (issue 19): ten containers that ignore SIGTERM, each with a
//! 10 s grace period.
//! - `berthctl stop` of one answers only once it has stopped (after its grace period and
//!   SIGKILL), while `ps` goes on answering within 1 s the whole time.
//! - The power button then powers off in under 15 s: the other nine stop in parallel, not
//!   one grace period after the other (that would take 90 s).
//!
//! The stop is asked from inside the guest (a container in the host's PID namespace with
//! init's socket), so the host's `berth ctl ps` has the control port to itself.

use std::time::{Duration, Instant};

use berth_arch::Arch;
use berth_qemu::GuestExit;
use berth_tests::{
    berth_ctl_ok, boot_with_control_port, events, ps_row, timed_ps, wait_line, wait_seen,
};

const STUBBORN: usize = 10;
/// The longest a `ps` may take while a stop is under way.
const PS_LIMIT: Duration = Duration::from_secs(1);
/// The whole shutdown, from the button to the kernel's power-off, as the guest timed it.
const SHUTDOWN_LIMIT_MS: u64 = 15_000;

fn manifest() -> String {
    let mut manifest = String::from(
        r#"
[containers.ops]
image = "busybox:1.35"
pid = "host"
network_mode = "host"
volumes = ["/run/berth:/run/berth", "/usr/bin/berthctl:/usr/bin/berthctl:ro"]
command = ["sh", "-c", "while [ ! -e /run/berth/go ]; do sleep 0.2; done; a=$(cut -d' ' -f1 /proc/uptime); berthctl stop s0; c=$?; b=$(cut -d' ' -f1 /proc/uptime); echo stop-answered code=$c from=$a to=$b state=$(berthctl ps | grep '^s0 ' | tr -s ' ' | cut -d' ' -f2); sleep 100000"]
"#,
    );
    for n in 0..STUBBORN {
        manifest.push_str(&format!(
            "\n[containers.s{n}]\nimage = \"busybox:1.35\"\n\
             command = [\"sh\", \"-c\", \"trap '' TERM; echo up; while true; do sleep 1; done\"]\n\
             stop_grace_period = \"10s\"\n"
        ));
    }
    manifest
}

#[test]
fn stubborn_containers_stop_in_parallel_while_the_loop_serves() {
    let (mut machine, socket) = boot_with_control_port(Arch::X86_64, &manifest(), "stops-stubborn");
    let ctx = format!("console: {}", machine.console_log().display());
    for n in 0..STUBBORN {
        wait_seen(&machine, &format!(r"^s{n} \| up$"));
    }

    // The stop of s0 takes its 10 s grace period; ps answers all along.
    berth_ctl_ok(&socket, &["exec", "ops", "--", "touch", "/run/berth/go"]);
    let mut slowest = Duration::ZERO;
    let mut asked = 0;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(14) {
        let (took, ps) = timed_ps(&socket);
        assert!(
            ps.status.success(),
            "ps failed during the stop: {}; {ctx}",
            String::from_utf8_lossy(&ps.stderr)
        );
        slowest = slowest.max(took);
        asked += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        slowest <= PS_LIMIT,
        "the slowest of {asked} ps during the stop took {slowest:?}; {ctx}"
    );
    let answered = wait_line(&mut machine, r"^ops \| stop-answered ");
    let field = |key: &str| {
        answered
            .split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let seconds = |key: &str| field(key).parse::<f64>().unwrap_or(0.0);
    assert_eq!(field("code"), "0", "{answered}; {ctx}");
    assert!(
        seconds("to") - seconds("from") >= 9.0,
        "berthctl stop answered before the container had stopped: {answered}; {ctx}"
    );
    assert_eq!(field("state"), "stopped", "{answered}; {ctx}");
    let s0_exit = events::events(&machine, "exited", Some("s0"));
    assert_eq!(
        s0_exit.last().and_then(|e| e.get("code")),
        Some("137"),
        "SIGKILL after the grace period; {ctx}"
    );
    assert_eq!(
        ps_row(&socket, "s1").get(1).map(String::as_str),
        Some("running")
    );

    // Nine stubborn containers at once: one grace period, not nine.
    machine
        .press_power_button()
        .unwrap_or_else(|e| panic!("{e}"));
    let exit = machine
        .wait_exit(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit, GuestExit::PowerOff, "{ctx}");
    let complete = events::events(&machine, "shutdown-complete", None);
    let took = complete.last().and_then(|e| e.number("duration_ms"));
    assert!(
        took.is_some_and(|ms| ms < SHUTDOWN_LIMIT_MS),
        "the shutdown took {took:?} ms; {ctx}"
    );
    for n in 1..STUBBORN {
        let stopped = events::events(&machine, "stopped", Some(&format!("s{n}")));
        assert_eq!(
            stopped.last().and_then(|e| e.get("reason")),
            Some("shutdown"),
            "s{n}; {ctx}"
        );
    }
    assert!(
        events::events(&machine, "stop-stuck", None).is_empty(),
        "{ctx}"
    );
}
