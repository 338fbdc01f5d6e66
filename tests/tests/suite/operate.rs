//! Operating a running host through init's control socket with `berthctl` (shipped at
//! /usr/bin/berthctl): ps, logs, events, stop and start remembered as the operator's,
//! refusal of non-root callers, and a power-off asked for over the socket.

use berth_arch::Arch;
use berth_qemu::GuestExit;
use berth_tests::{boot_to_ready, events, wait_seen};

const MANIFEST: &str = r#"
[containers.web]
image = "busybox:1.35"
restart = "always"
command = ["sh", "-c", "mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p 80 -h /www"]

[containers.counter]
image = "busybox:1.35"
command = ["sh", "-c", "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.3; done"]

# Opens the socket's file mode up, so that the stranger below reaches init's own check of
# its caller (SO_PEERCRED) instead of being stopped by the file mode alone.
[containers.loosen]
image = "busybox:1.35"
volumes = ["/run/berth:/run/berth"]
command = ["chmod", "0666", "/run/berth/control.sock"]

[containers.stranger]
image = "busybox:1.35"
user = "1000"
network_mode = "host"
volumes = ["/run/berth:/run/berth", "/usr/bin/berthctl:/usr/bin/berthctl:ro"]
depends_on = { loosen = { condition = "service_completed_successfully" } }
command = ["sh", "-c", "berthctl ps 2>&1; echo stranger-code=$?"]

[containers.ops]
image = "busybox:1.35"
network_mode = "host"
depends_on = ["web", "counter"]
volumes = ["/run/berth:/run/berth", "/usr/bin/berthctl:/usr/bin/berthctl:ro"]
command = ["sh", "-c", "for i in $(seq 300); do [ $(berthctl logs --tail 2 counter | wc -l) -ge 2 ] && break; sleep 0.1; done; berthctl ps | sed 's/^/ps1:/'; berthctl logs --tail 2 counter | sed 's/^/log:/'; berthctl logs -f --tail 0 counter > /tmp/follow & f=$!; berthctl events -f --tail 0 > /tmp/events & e=$!; sleep 2; kill $f; echo followed=$(grep -c '^tick-' /tmp/follow); berthctl stats | grep '^counter ' | sed 's/^/stats:/'; berthctl top counter | sed 's/^/top:/'; echo dmesg=$(berthctl dmesg | grep -c 'Linux version'); berthctl stop web && echo stopped-web; berthctl ps | grep '^web ' | sed 's/^/ps2:/'; berthctl start web && echo started-web; for i in $(seq 100); do berthctl ps | grep -Eq '^web +running' && break; sleep 0.1; done; berthctl ps | grep '^web ' | sed 's/^/ps3:/'; berthctl logs nope; echo missing-code=$?; berthctl events --tail 50 | grep -c 'event=stopped container=web reason=operator' | sed 's/^/operator-stops=/'; kill $e; echo followed-starts=$(grep -c 'event=started container=web' /tmp/events); berthctl version; echo version-code=$?; berthctl poweroff"]
"#;

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

#[test]
fn berthctl_operates_the_host_over_the_control_socket() {
    let mut machine = boot_to_ready(Arch::X86_64, MANIFEST, "operate-berthctl");
    let c = format!("console: {}", machine.console_log().display());
    let exit = machine
        .wait_exit(berth_tests::LINE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}; {c}"));
    assert_eq!(exit, GuestExit::PowerOff, "berthctl poweroff; {c}");
    let shutdown = wait_seen(&machine, r"^berth event=shutdown ");
    assert!(shutdown.contains("reason=berthctl"), "{shutdown}; {c}");

    let out = events::output(&machine, "ops");
    let ps1: Vec<&String> = out.iter().filter(|l| l.starts_with("ps1:")).collect();
    let row = |name: &str| {
        ps1.iter()
            .find(|l| l.starts_with(&format!("ps1:{name} ")))
            .map(|l| words(l))
            .unwrap_or_else(|| panic!("no {name} in {ps1:?}; {c}"))
    };
    assert_eq!(row("web").get(1), Some(&"running"), "{ps1:?}; {c}");
    assert_eq!(row("counter").get(1), Some(&"running"), "{ps1:?}; {c}");
    let logs: Vec<&String> = out.iter().filter(|l| l.starts_with("log:")).collect();
    assert_eq!(logs.len(), 2, "{out:?}; {c}");
    assert!(
        logs.iter().all(|l| l.starts_with("log:tick-")),
        "{logs:?}; {c}"
    );
    assert!(out.contains(&"stopped-web".to_string()), "{out:?}; {c}");
    let ps2 = out
        .iter()
        .find(|l| l.starts_with("ps2:"))
        .unwrap_or_else(|| panic!("{out:?}; {c}"));
    assert_eq!(
        words(ps2).get(1),
        Some(&"stopped"),
        "restart=always does not undo an operator's stop; {ps2}; {c}"
    );
    let ps3 = out
        .iter()
        .find(|l| l.starts_with("ps3:"))
        .unwrap_or_else(|| panic!("{out:?}; {c}"));
    assert_eq!(words(ps3).get(1), Some(&"running"), "{ps3}; {c}");
    assert!(
        out.contains(&"berthctl: no container `nope`".to_string()),
        "{out:?}; {c}"
    );
    // `not-found`: exit 4 (docs/control-protocol.md).
    assert!(out.contains(&"missing-code=4".to_string()), "{out:?}; {c}");
    // `conflict`, exit 5: a host booted from a kernel and an initrd has no boot slots.
    assert!(
        out.iter()
            .any(|l| l.starts_with("berthctl: ") && l.contains("has no boot slots")),
        "{out:?}; {c}"
    );
    assert!(out.contains(&"version-code=5".to_string()), "{out:?}; {c}");
    assert!(
        out.contains(&"operator-stops=1".to_string()),
        "{out:?}; {c}"
    );
    // `logs -f` streamed the counter's new lines as they came (one every 0.3 s for 2 s), and
    // `events -f` saw web started again.
    let followed: usize = out
        .iter()
        .find_map(|l| l.strip_prefix("followed="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(followed >= 3, "{out:?}; {c}");
    assert!(
        out.contains(&"followed-starts=1".to_string()),
        "{out:?}; {c}"
    );
    // stats and top read the container's cgroup; dmesg the kernel's log.
    let stats = out
        .iter()
        .find(|l| l.starts_with("stats:counter "))
        .unwrap_or_else(|| panic!("{out:?}; {c}"));
    let columns = words(stats);
    assert!(
        columns.get(1).is_some_and(|m| m.ends_with("MiB")),
        "{stats}; {c}"
    );
    assert!(
        columns
            .get(3)
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|p| p >= 2),
        "sh and its sleep: {stats}; {c}"
    );
    assert!(
        out.iter()
            .any(|l| l.starts_with("top:") && l.contains("sh -c i=0")),
        "{out:?}; {c}"
    );
    assert!(out.contains(&"dmesg=1".to_string()), "{out:?}; {c}");

    // A process that is not root in the host's view cannot use the socket.
    let stranger = events::output(&machine, "stranger");
    assert!(
        stranger
            .iter()
            .any(|l| l.starts_with("stranger-code=") && l != "stranger-code=0"),
        "{stranger:?}; {c}"
    );
    assert!(
        !stranger.iter().any(|l| l.starts_with("NAME")),
        "no listing for a non-root caller: {stranger:?}; {c}"
    );
    assert!(
        stranger
            .iter()
            .any(|l| l.contains("the control socket is for root only")),
        "refused by init's check of the caller, not by the file mode: {stranger:?}; {c}"
    );
}
