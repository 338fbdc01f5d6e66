//! Containers from the manifest: images packed by umoci, isolation, logs, restart policies
//! and dependencies, asserted on the guest's own event lines.

use std::time::Duration;

use berth_arch::Arch;
use berth_qemu::Machine;
use berth_tests::events::{self, EventLine};
use berth_tests::{boot_to_ready, wait_line};

/// Slack allowed on a restart delay, past the delay: how late init's loop may wake for the
/// timer on a slow TCG guest (the clock is the guest's).
const DELAY_TOLERANCE_MS: u64 = 400;
/// The events' `uptime_ms` stamps are taken as each line is written, a moment after the
/// instant the timer counts from: a restart may look a millisecond or two early.
const STAMP_SLACK_MS: u64 = 10;

fn evidence(machine: &Machine) -> String {
    format!("console: {}", machine.console_log().display())
}

const TOKEN_MANIFEST: &str = r#"
[containers.hello]
image = "busybox:1.35"
command = ["sh", "-c", "echo token-$((6 * 7))"]

[containers.reader]
image = "busybox:1.35"
command = ["sh", "-c", "cat /hostlogs/hello.log | sed 's/^/from-log: /'"]
volumes = ["/var/log/berth:/hostlogs:ro"]
depends_on = { hello = { condition = "service_completed_successfully" } }
"#;

fn token_reaches_console_and_log_file(arch: Arch) {
    let mut machine = boot_to_ready(arch, TOKEN_MANIFEST, &format!("containers-token-{arch}"));
    wait_line(&mut machine, r"^hello \| token-42$");
    wait_line(&mut machine, r"^reader \| from-log: token-42$");
    let exits = events::events(&machine, "exited", Some("hello"));
    assert_eq!(
        exits.first().and_then(|e| e.get("code")),
        Some("0"),
        "{}",
        evidence(&machine)
    );
}

#[test]
fn x86_64_container_token_reaches_console_and_log_file() {
    token_reaches_console_and_log_file(Arch::X86_64);
}

#[test]
fn aarch64_container_token_reaches_console_and_log_file() {
    token_reaches_console_and_log_file(Arch::Aarch64);
}

/// (announced, measured) delay of each restart: from the exit (`exited`'s `exited_ms`; the
/// line announces `next_in`) to
/// the next `starting`, the moment the delay ran out. Not to `started`: that adds the time
/// the start itself takes, which on a loaded TCG host is no part of the delay and varies
/// far more than it.
fn delays_between_exit_and_next_start(machine: &Machine, container: &str) -> Vec<(u64, u64)> {
    let exits = events::events(machine, "exited", Some(container));
    let starts = events::events(machine, "starting", Some(container));
    exits
        .iter()
        .zip(starts.iter().skip(1))
        .filter_map(|(exit, start): (&EventLine, &EventLine)| {
            let announced = exit.number("next_in")?;
            // From the exit's own moment (`exited_ms`), which the delay counts from: the
            // line's `uptime_ms` is stamped later, by as much as a busy host delays it (seen
            // 27 ms, which made a 100 ms delay look like 73).
            let measured = start
                .number("uptime_ms")?
                .checked_sub(exit.number("exited_ms")?)?;
            Some((announced, measured))
        })
        .collect()
}

#[test]
fn on_failure_3_restarts_exactly_three_times_with_growing_delays() {
    let manifest = r#"
[containers.flaky]
image = "busybox:1.35"
command = ["sh", "-c", "echo attempt; exit 1"]
restart = "on-failure:3"
"#;
    let mut machine = boot_to_ready(Arch::X86_64, manifest, "containers-on-failure");
    let stopped = wait_line(&mut machine, r"^berth event=stopped container=flaky ");
    assert!(stopped.contains("reason=restart-limit"), "{stopped}");
    // Nothing starts it again afterwards.
    std::thread::sleep(Duration::from_secs(2));
    let starts = events::events(&machine, "started", Some("flaky"));
    assert_eq!(
        starts.len(),
        4,
        "one run and exactly 3 restarts; {}",
        evidence(&machine)
    );
    let exits = events::events(&machine, "exited", Some("flaky"));
    let codes: Vec<_> = exits
        .iter()
        .map(|e| e.get("code").unwrap_or("?").to_string())
        .collect();
    assert_eq!(codes, ["1", "1", "1", "1"]);
    let delays = delays_between_exit_and_next_start(&machine, "flaky");
    let announced: Vec<u64> = delays.iter().map(|(a, _)| *a).collect();
    assert_eq!(announced, [100, 200, 400], "{}", evidence(&machine));
    for (announced, measured) in delays {
        assert!(
            measured + STAMP_SLACK_MS >= announced && measured <= announced + DELAY_TOLERANCE_MS,
            "restart after {measured} ms, announced {announced} ms; {}",
            evidence(&machine)
        );
    }
    assert_eq!(events::output(&machine, "flaky").len(), 4);
}

#[test]
fn always_restarts_after_success_no_does_not_and_a_long_run_resets_the_delay() {
    let manifest = r#"
[containers.always]
image = "busybox:1.35"
command = ["sh", "-c", "echo ran; exit 0"]
restart = "always"

[containers.once]
image = "busybox:1.35"
command = ["sh", "-c", "echo once; exit 3"]
restart = "no"

# Runs 1 and 2 are short, run 3 lasts 11 s: the delay after it is back to 100 ms. The count
# lives in the container's writable layer, which a restart keeps.
[containers.slowly]
image = "busybox:1.35"
command = ["sh", "-c", "n=$(cat /count 2>/dev/null || echo 0); n=$((n + 1)); echo $n > /count; echo run-$n; if [ $n -eq 3 ]; then sleep 11; fi; exit 1"]
restart = "always"
"#;
    let mut machine = boot_to_ready(Arch::X86_64, manifest, "containers-always-no-reset");
    wait_line(&mut machine, r"^slowly \| run-4$");
    let always_starts = events::events(&machine, "started", Some("always"));
    assert!(
        always_starts.len() >= 3,
        "always restarts after exit 0; {}",
        evidence(&machine)
    );
    let once = events::events(&machine, "started", Some("once"));
    assert_eq!(once.len(), 1, "{}", evidence(&machine));
    let once_stopped = events::events(&machine, "stopped", Some("once"));
    assert_eq!(
        once_stopped.first().and_then(|e| e.get("reason")),
        Some("exited")
    );
    let announced: Vec<u64> = events::events(&machine, "exited", Some("slowly"))
        .iter()
        .take(3)
        .filter_map(|e| e.number("next_in"))
        .collect();
    assert_eq!(announced, [100, 200, 100], "{}", evidence(&machine));
}

#[test]
fn depends_on_orders_starts_and_waits_for_completion() {
    let manifest = r#"
[containers.db]
image = "busybox:1.35"
command = ["sh", "-c", "echo db-up; sleep 1000"]

[containers.migrate]
image = "busybox:1.35"
command = ["sh", "-c", "sleep 2; echo migrated"]
depends_on = ["db"]

[containers.app]
image = "busybox:1.35"
command = ["sh", "-c", "echo app-up; sleep 1000"]
depends_on = { db = { condition = "service_started" }, migrate = { condition = "service_completed_successfully" } }
"#;
    let mut machine = boot_to_ready(Arch::X86_64, manifest, "containers-depends-on");
    wait_line(&mut machine, r"^app \| app-up$");
    let at = |kind: &str, container: &str| {
        events::events(&machine, kind, Some(container))
            .first()
            .and_then(|e| e.number("uptime_ms"))
            .unwrap_or_else(|| panic!("no {kind} event for {container}; {}", evidence(&machine)))
    };
    assert!(at("started", "db") <= at("starting", "migrate"));
    let migrate_exit = events::events(&machine, "exited", Some("migrate"));
    assert_eq!(migrate_exit.first().and_then(|e| e.get("code")), Some("0"));
    assert!(
        at("exited", "migrate") <= at("starting", "app"),
        "{}",
        evidence(&machine)
    );
    assert!(!events::events(&machine, "waiting", Some("app")).is_empty());
}

#[test]
fn containers_are_isolated_and_share_their_image_layers() {
    let manifest = r#"
[containers.probe]
image = "busybox:1.35"
command = ["sh", "-c", "echo pid=$$; echo procs=$(ls -d /proc/[0-9]* | wc -l); echo host=$(hostname); grep -c ' /run ' /proc/self/mountinfo; grep ' / / ' /proc/self/mountinfo | sed 's/.*lowerdir=\\([^,]*\\).*/lower=\\1/'; echo secret > /etc/written-by-probe; echo wrote"]

[containers.other]
image = "busybox:1.35"
command = ["sh", "-c", "cat /etc/written-by-probe 2>/dev/null || echo absent; grep ' / / ' /proc/self/mountinfo | sed 's/.*lowerdir=\\([^,]*\\).*/lower=\\1/'; ls /layers/sha256 | wc -l | sed 's/^/layers=/'"]
volumes = ["/var/lib/berth/layers:/layers:ro"]
depends_on = { probe = { condition = "service_completed_successfully" } }

[containers.broken]
image = "busybox:1.35"
command = ["/no/such/program"]
"#;
    let mut machine = boot_to_ready(Arch::X86_64, manifest, "containers-isolation");
    wait_line(&mut machine, r"^other \| layers=");
    let probe = events::output(&machine, "probe");
    let other = events::output(&machine, "other");
    let ctx = evidence(&machine);
    assert!(
        probe.contains(&"pid=1".to_string()),
        "own PID namespace: {probe:?}; {ctx}"
    );
    let procs: u32 = probe
        .iter()
        .find_map(|l| l.strip_prefix("procs="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(u32::MAX);
    // sh, the command substitution's subshell, ls and wc: nothing of the host's ~80.
    assert!(procs <= 5, "sees only its own processes: {procs}; {ctx}");
    assert!(
        probe.contains(&"host=probe".to_string()),
        "own hostname: {probe:?}"
    );
    assert!(
        probe.contains(&"0".to_string()),
        "no host mounts such as /run: {probe:?}"
    );
    assert!(probe.contains(&"wrote".to_string()));
    assert!(
        other.contains(&"absent".to_string()),
        "writes stay in the writer's layer: {other:?}"
    );
    let lower = |lines: &[String]| lines.iter().find(|l| l.starts_with("lower=")).cloned();
    assert!(
        lower(&probe).is_some_and(|l| l.contains("/var/lib/berth/layers/sha256/")),
        "{probe:?}"
    );
    assert_eq!(
        lower(&probe),
        lower(&other),
        "both containers stack the same layer directory"
    );
    assert!(
        other.contains(&"layers=1".to_string()),
        "one copy of the layer on disk: {other:?}"
    );
    let failed = events::events(&machine, "start-failed", Some("broken"));
    assert!(
        failed
            .first()
            .and_then(|e| e.get("error"))
            .is_some_and(|e| e.contains("/no/such/program")),
        "a container that cannot start says why: {ctx}"
    );
}
