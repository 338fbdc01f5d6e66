//! A container that floods its output (`yes`) must not freeze PID 1: the control socket
//! answers, other containers' lines keep reaching the console and their logs, and the power
//! button still powers off cleanly.
//!
//! x86_64 only: the check lasts 30 s of guest time, and what it exercises (init's event loop,
//! the pipes and the console) is the same code on aarch64.

use std::time::{Duration, Instant};

use berth_arch::Arch;
use berth_qemu::GuestExit;
use berth_tests::{berth_ctl_ok, boot_with_control_port, events, pattern, timed_ps};

const MANIFEST: &str = r#"
[containers.flood]
image = "busybox:1.35"
command = ["sh", "-c", "yes berth-flood-line-that-is-long"]
stop_grace_period = "3s"

[containers.ticker]
image = "busybox:1.35"
command = ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done"]
stop_grace_period = "3s"
"#;

/// How long the flood runs beside the ticker while the test watches.
const WATCH: Duration = Duration::from_secs(30);
/// The longest a `ps` may take while the flood runs.
const PS_LIMIT: Duration = Duration::from_secs(1);
/// The longest gap allowed between two consecutive ticks seen on the console.
const TICK_GAP: Duration = Duration::from_secs(2);
/// From the power button to QEMU's exit.
const POWER_OFF_LIMIT: Duration = Duration::from_secs(30);

/// Each `ticker | tick N` console line: (N, when the rig saw it).
fn ticks_seen(machine: &berth_qemu::Machine) -> Vec<(u64, Duration)> {
    let tick = pattern(r"^ticker \| tick (\d+)$");
    machine
        .console_lines()
        .into_iter()
        .filter_map(|line| {
            let n = tick.captures(&line.text)?.get(1)?.as_str().parse().ok()?;
            Some((n, line.at))
        })
        .collect()
}

#[test]
fn a_flooding_container_never_stalls_init_or_the_other_containers() {
    let (mut machine, socket) = boot_with_control_port(Arch::X86_64, MANIFEST, "output-flood");
    let ctx = format!("console: {}", machine.console_log().display());
    // The flood is on once its first line is logged.
    let deadline = Instant::now() + berth_tests::LINE_TIMEOUT;
    while !berth_ctl_ok(&socket, &["logs", "flood", "--tail", "1"])
        .contains("berth-flood-line-that-is-long")
    {
        assert!(Instant::now() < deadline, "the flood never started; {ctx}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let watch_from = ticks_seen(&machine).len();
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < WATCH {
        let (took, out) = timed_ps(&socket);
        calls += 1;
        assert!(
            out.status.success(),
            "ps failed during the flood: {}; stderr: {}; {ctx}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            took <= PS_LIMIT,
            "ps took {took:?} during the flood (call {calls}); {ctx}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The ticker's lines kept reaching the console, one a second, with no long gap.
    let ticks: Vec<(u64, Duration)> = ticks_seen(&machine).into_iter().skip(watch_from).collect();
    assert!(
        ticks.len() >= 25,
        "only {} ticks reached the console in {WATCH:?}: {ticks:?}; {ctx}",
        ticks.len()
    );
    for pair in ticks.windows(2) {
        if let [(a, at_a), (b, at_b)] = pair {
            assert_eq!(*b, a + 1, "tick {b} came after tick {a}; {ctx}");
            let gap = at_b.saturating_sub(*at_a);
            assert!(
                gap <= TICK_GAP,
                "{gap:?} between ticks {a} and {b} on the console; {ctx}"
            );
        }
    }

    // ...and its log, which keeps every line.
    let last_seen = ticks.last().map_or(0, |(n, _)| *n);
    let tail = berth_ctl_ok(&socket, &["logs", "ticker", "--tail", "5"]);
    let logged: Vec<u64> = tail
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert_eq!(logged.len(), 5, "logs ticker --tail 5: {tail:?}; {ctx}");
    assert!(
        logged.last().is_some_and(|n| *n >= last_seen),
        "the log ends at {logged:?}, the console showed tick {last_seen}; {ctx}"
    );

    // Whether the console drops lines depends on how fast it drains compared with how fast
    // init reads (under TCG init is the slower one, and nothing is dropped); when it does,
    // init says how many.
    for dropped in events::events(&machine, "console-dropped", None) {
        assert!(
            dropped.number("lines").is_some_and(|n| n > 0),
            "{dropped:?}; {ctx}"
        );
    }

    // The power button still powers off cleanly, flood and all.
    machine
        .press_power_button()
        .unwrap_or_else(|e| panic!("{e}"));
    let exit = machine.wait_exit(POWER_OFF_LIMIT);
    assert!(
        matches!(exit, Ok(GuestExit::PowerOff)),
        "after the power button: {exit:?}; {ctx}"
    );
    let complete = events::events(&machine, "shutdown-complete", None);
    assert!(!complete.is_empty(), "no shutdown-complete; {ctx}");
}
