//! The serial console stopped by XOFF for 20 s (issue 19, "PID 1 never waits"): init goes on
//! serving (`ps` answers within a second throughout), reports the console lines it dropped
//! (`console-dropped`, read over the control port since the console is stopped), and every
//! line a chatty container wrote meanwhile is in its log. XON starts the console again.
//!
//! The rig serves the serial line on a socket ([`berth_qemu::MachineConfig::serial_socket`]),
//! so the test sends XOFF (0x13) and XON (0x11) as a terminal on the line would; the guest's
//! console tty has IXON set, a tty's default.
//!
//! x86_64 only: the check lasts 20 s of guest time, and the logger is the same code on
//! aarch64.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use berth_arch::Arch;
use berth_tests::{
    berth_ctl_command, berth_ctl_ok, build_image, log_dir, machine_config, pattern, start_to_ready,
    timed_ps,
};

/// Ten lines of about 200 bytes at a time, five times a second: the console's queue (48 KiB
/// for containers) fills within seconds of the line stopping, and the log's in-memory ring
/// (64 KiB) holds the last 15 s or so, which the test reads every second.
fn manifest() -> String {
    let pad = "x".repeat(180);
    format!(
        r#"
[containers.chatty]
image = "busybox:1.35"
command = ["sh", "-c", "i=0; while true; do for j in 0 1 2 3 4 5 6 7 8 9; do echo chat-$i-{pad}; i=$((i+1)); done; sleep 0.2; done"]
"#
    )
}

/// XOFF and XON: stop and start a tty's output (IXON).
const XOFF: u8 = 0x13;
const XON: u8 = 0x11;
/// How long the console stays stopped.
const STOPPED: Duration = Duration::from_secs(20);
/// Lines already on their way to the rig when XOFF is sent may still arrive this long after.
const IN_FLIGHT: Duration = Duration::from_secs(2);
/// The longest a `ps` may take while the console is stopped.
const PS_LIMIT: Duration = Duration::from_secs(1);

/// The number of a `chat-N-...` line (as logged, or as the console shows it).
fn chat_number(line: &str) -> Option<u64> {
    line.strip_prefix("chatty | ")
        .unwrap_or(line)
        .strip_prefix("chat-")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Fails the test for a call init did not answer (in time), with what the guest's kernel
/// says init was doing: XON first, so that what init still writes reaches the console too.
fn unanswered(
    machine: &mut berth_qemu::Machine,
    what: &str,
    out: &std::process::Output,
    ctx: &str,
) -> ! {
    let _ = machine.write_serial(&[XON]);
    let state = machine.dump_guest_state();
    panic!(
        "{what}: {}; stderr: {}; {ctx}\n{state}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_console_stopped_by_xoff_costs_console_lines_never_service_or_logs() {
    let dir = log_dir("console-xoff");
    let image = build_image(Arch::X86_64, &manifest(), &dir).unwrap_or_else(|e| panic!("{e}"));
    let mut config = machine_config(Arch::X86_64, &image, &dir);
    // Lets the test ask the kernel what init is doing, should init stop answering.
    config.append.push("sysrq_always_enabled".into());
    let socket = dir.join("control.sock");
    config.control_socket = Some(socket.clone());
    config.serial_socket = true;
    let mut machine = start_to_ready(&config);
    let ctx = format!("console: {}", machine.console_log().display());
    berth_tests::wait_line(&mut machine, r"^chatty \| chat-\d+-");

    let console_chats = |machine: &berth_qemu::Machine, after: Duration| -> Vec<u64> {
        machine
            .console_lines()
            .into_iter()
            .filter(|l| l.at >= after)
            .filter_map(|l| chat_number(&l.text))
            .collect()
    };
    let mut logged = BTreeSet::new();
    let read_log = |machine: &mut berth_qemu::Machine, logged: &mut BTreeSet<u64>| {
        let out = berth_ctl_command(
            &socket,
            &["--timeout", "10", "logs", "--tail", "1000", "chatty"],
        )
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run berth ctl: {e}"));
        if !out.status.success() {
            unanswered(machine, "logs", &out, &ctx);
        }
        logged.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(chat_number),
        );
    };
    read_log(&mut machine, &mut logged);
    let first = logged.last().copied().unwrap_or(0);

    machine
        .write_serial(&[XOFF])
        .unwrap_or_else(|e| panic!("{e}"));
    let stopped_at = machine
        .console_lines()
        .last()
        .map_or(Duration::ZERO, |l| l.at);
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < STOPPED {
        let (took, out) = timed_ps(&socket);
        calls += 1;
        if !out.status.success() || took > PS_LIMIT {
            let what = format!("ps (call {calls}) with the console stopped, after {took:?}");
            unanswered(&mut machine, &what, &out, &ctx);
        }
        read_log(&mut machine, &mut logged);
        std::thread::sleep(Duration::from_millis(500));
    }
    // The console really stopped: no chatty line reached it once those in flight were in.
    let leaked = console_chats(&machine, stopped_at + IN_FLIGHT);
    assert!(
        leaked.is_empty(),
        "the console went on after XOFF: {} chatty lines; {ctx}",
        leaked.len()
    );
    let events = berth_ctl_ok(&socket, &["events", "--tail", "200"]);
    let dropped: Vec<&str> = events
        .lines()
        .filter(|l| l.contains("event=console-dropped"))
        .collect();
    assert!(
        !dropped.is_empty(),
        "no console-dropped event while the console was stopped: {events}; {ctx}"
    );
    let last = logged.last().copied().unwrap_or(0);

    // XON: the console comes back, with lines written after it.
    machine
        .write_serial(&[XON])
        .unwrap_or_else(|e| panic!("{e}"));
    let resumed = pattern(r"^chatty \| chat-(\d+)-");
    let deadline = Instant::now() + berth_tests::LINE_TIMEOUT;
    loop {
        let (_, out) = timed_ps(&socket);
        assert!(out.status.success(), "ps after XON; {ctx}");
        let back = machine.console_lines().into_iter().any(|l| {
            resumed
                .captures(&l.text)
                .and_then(|c| c.get(1)?.as_str().parse::<u64>().ok())
                .is_some_and(|n| n > last)
        });
        if back {
            break;
        }
        assert!(Instant::now() < deadline, "no chatty line after XON; {ctx}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Every line the container wrote while the console was stopped is in its log.
    assert!(
        last > first + 100,
        "chatty wrote only lines {first} to {last} in {STOPPED:?}; {ctx}"
    );
    let missing: Vec<u64> = (first..=last).filter(|n| !logged.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} of chatty's lines {first}..={last} are not in its log: {:?}; {ctx}",
        missing.len(),
        missing.iter().take(20).collect::<Vec<_>>()
    );
    eprintln!(
        "{} ps calls answered; chatty wrote lines {first} to {last} while stopped; {}",
        calls,
        dropped.join(" / ")
    );
}
