//! Health checks: a container becomes healthy when its check passes, a dependant with
//! `service_healthy` waits for that, and after `retries` failures in a row the container is
//! unhealthy and, with `restart_on_unhealthy`, restarted.

use berth_arch::Arch;
use berth_tests::{berth_ctl_ok, boot_with_control_port, events, ps_row, wait_line, wait_seen};

const MANIFEST: &str = r#"
[containers.svc]
image = "busybox:1.35"
command = ["sh", "-c", "sleep 3; touch /tmp/up; exec sleep 1000"]
healthcheck = { test = ["CMD", "test", "-f", "/tmp/up"], interval = "1s", timeout = "2s", retries = 2, start_period = "30s", start_interval = "1s" }
restart_on_unhealthy = true

[containers.app]
image = "busybox:1.35"
depends_on = { svc = { condition = "service_healthy" } }
command = ["sleep", "1000"]

[containers.plain]
image = "busybox:1.35"
healthcheck = { test = "exit 1", interval = "1s", retries = 1 }
command = ["sleep", "1000"]
"#;

#[test]
fn health_checks_gate_dependants_and_restart_an_unhealthy_container() {
    let (mut machine, socket) = boot_with_control_port(Arch::X86_64, MANIFEST, "health");
    let c = format!("console: {}", machine.console_log().display());
    // app waits while svc is starting; it starts only once svc is healthy.
    let waiting = wait_seen(&machine, r"^berth event=waiting container=app ");
    assert!(
        waiting.contains("for=svc:service_healthy"),
        "{waiting}; {c}"
    );
    wait_line(
        &mut machine,
        r"^berth event=health container=svc status=healthy ",
    );
    wait_line(&mut machine, r"^berth event=started container=app ");
    let started_svc = events::events(&machine, "started", Some("svc"));
    assert_eq!(started_svc.len(), 1, "{c}");
    let row = ps_row(&socket, "svc");
    assert_eq!(
        row.last().map(String::as_str),
        Some("healthy"),
        "{row:?}; {c}"
    );

    // A failing check makes `plain` unhealthy after its one retry; no restart was asked.
    wait_seen(
        &machine,
        r"^berth event=health container=plain status=unhealthy failing_streak=1 ",
    );
    // Failures inside the start period still count once a check has passed: svc goes
    // unhealthy after 2 failures and is restarted.
    berth_ctl_ok(&socket, &["exec", "svc", "--", "rm", "/tmp/up"]);
    let unhealthy = wait_line(
        &mut machine,
        r"^berth event=health container=svc status=unhealthy ",
    );
    assert!(unhealthy.contains("failing_streak=2"), "{unhealthy}; {c}");
    let stopping = wait_line(&mut machine, r"^berth event=stopping container=svc ");
    assert!(stopping.contains("reason=unhealthy"), "{stopping}; {c}");
    let restarted = wait_line(&mut machine, r"^berth event=started container=svc ");
    assert!(restarted.contains("restarts=1"), "{restarted}; {c}");
    wait_line(
        &mut machine,
        r"^berth event=health container=svc status=healthy ",
    );
    assert_eq!(
        events::events(&machine, "stopping", Some("plain")).len(),
        0,
        "no restart_on_unhealthy: left running; {c}"
    );
    assert_eq!(
        ps_row(&socket, "plain").get(1).map(String::as_str),
        Some("running")
    );
    assert_eq!(
        ps_row(&socket, "plain").last().map(String::as_str),
        Some("unhealthy")
    );
}
