//! The host side of a rig operates the guest through the virtio-serial port
//! `org.berth.control` with `berth ctl --socket`: ps, logs (-f, --since), exec with its exit
//! code, stdin and isolation, and `exec -it` driven through a pseudo-terminal.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_arch::Arch;
use berth_tests::terminal::{read_until, spawn_on_pty, wait_exit};
use berth_tests::{
    berth_ctl, berth_ctl_command, berth_ctl_ok, boot_with_control_port, ps_row, wait_line,
};

const MANIFEST: &str = r#"
[containers.web]
image = "busybox:1.35"
restart = "always"
user = "1000:1000"
working_dir = "/srv"
environment = { GREETING = "hello" }
command = ["sh", "-c", "exec sleep 1000"]

[containers.counter]
image = "busybox:1.35"
command = ["sh", "-c", "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.3; done"]
"#;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits for the `counter` container to have printed a few lines.
fn wait_for_ticks(socket: &Path, at_least: usize) {
    let deadline = Instant::now() + berth_tests::LINE_TIMEOUT;
    while berth_ctl_ok(socket, &["logs", "counter"]).lines().count() < at_least {
        assert!(Instant::now() < deadline, "counter printed too little");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn ps_logs_and_exec(arch: Arch, test: &str) {
    let (_machine, socket) = boot_with_control_port(arch, MANIFEST, test);
    wait_for_ticks(&socket, 8);

    // ps: what runs, with state, restarts and uptime.
    let web = ps_row(&socket, "web");
    assert_eq!(web.get(1).map(String::as_str), Some("running"), "{web:?}");
    assert_eq!(web.get(2).map(String::as_str), Some("0"), "{web:?}");
    // Up for as long as the ticks took: whole seconds, at least one, under a few minutes.
    let uptime = web
        .get(3)
        .and_then(|u| u.strip_suffix('s'))
        .and_then(|u| u.parse::<u64>().ok());
    assert!(uptime.is_some_and(|s| (1..300).contains(&s)), "{web:?}");

    // exec: the command's exit code is berth ctl's, stdout and stderr come apart.
    let out = berth_ctl(
        &socket,
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo out-$GREETING; echo err >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(text(&out.stdout), "out-hello\n");
    assert_eq!(text(&out.stderr), "err\n");

    // It runs where the container runs: its namespaces, cgroup, user, working directory,
    // capabilities and seccomp filter.
    let inside = berth_ctl_ok(
        &socket,
        &[
            "exec", "web", "--", "sh", "-c",
            "hostname; id -u; pwd; cat /proc/self/cgroup; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; ps -o pid,comm | grep -c sleep",
        ],
    );
    let lines: Vec<&str> = inside.lines().collect();
    assert_eq!(lines.first(), Some(&"web"), "{inside}");
    assert_eq!(lines.get(1), Some(&"1000"), "{inside}");
    assert_eq!(lines.get(2), Some(&"/srv"), "{inside}");
    assert_eq!(
        lines.get(3),
        Some(&"0::/"),
        "its own cgroup namespace: {inside}"
    );
    assert!(
        inside.contains("CapEff:\t0000000000000000"),
        "uid 1000 keeps no capability: {inside}"
    );
    assert!(inside.contains("NoNewPrivs:\t1"), "{inside}");
    assert!(inside.contains("Seccomp:\t2"), "{inside}");
    assert_eq!(
        lines.last(),
        Some(&"1"),
        "sees the container's sleep in its PID namespace: {inside}"
    );
    let root = berth_ctl_ok(
        &socket,
        &[
            "exec",
            "-u",
            "0",
            "web",
            "--",
            "grep",
            "CapEff",
            "/proc/self/status",
        ],
    );
    assert_eq!(
        root.trim(),
        "CapEff:\t00000000a80425fb",
        "Docker's default set for root"
    );

    // exec -i: the client's stdin reaches the process, and its end is an end of file.
    let mut cat = berth_ctl_command(
        &socket,
        &["exec", "-i", "web", "--", "sh", "-c", "wc -l; exit 0"],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap_or_else(|e| panic!("{e}"));
    if let Some(mut stdin) = cat.stdin.take() {
        stdin
            .write_all(b"one\ntwo\nthree\n")
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let counted = berth_tests::output_within(cat, Duration::from_secs(60), "berth ctl exec -i");
    assert_eq!(counted.status.code(), Some(0));
    assert_eq!(text(&counted.stdout).trim(), "3");

    // An exec into a container that does not exist is refused as `not-found` (exit 4), and
    // so is `stop` of one; `start` of a running one is a `conflict` (exit 5).
    let missing = berth_ctl(&socket, &["exec", "nope", "--", "true"]);
    assert_eq!(missing.status.code(), Some(4), "{missing:?}");
    assert!(
        text(&missing.stderr).contains("no container `nope`"),
        "{missing:?}"
    );
    let stop_missing = berth_ctl(&socket, &["stop", "nosuch"]);
    assert_eq!(stop_missing.status.code(), Some(4), "{stop_missing:?}");
    let json = berth_ctl(&socket, &["--json", "stop", "nosuch"]);
    assert!(
        text(&json.stdout).contains(r#""code":"not-found""#),
        "{json:?}"
    );
    let running = berth_ctl(&socket, &["start", "counter"]);
    assert_eq!(running.status.code(), Some(5), "{running:?}");
    assert!(
        text(&running.stderr).contains("container `counter` is running"),
        "{running:?}"
    );

    // logs --tail and --since.
    let all = berth_ctl_ok(&socket, &["logs", "counter"]).lines().count();
    let tail = berth_ctl_ok(&socket, &["logs", "--tail", "2", "counter"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(tail.lines().all(|l| l.starts_with("tick-")), "{tail}");
    let recent = berth_ctl_ok(&socket, &["logs", "--since", "1s", "counter"])
        .lines()
        .count();
    assert!(
        (1..=6).contains(&recent) && recent < all,
        "{recent} of {all} in the last second"
    );

    // logs -f streams new lines as they come.
    let mut follow = berth_ctl_command(&socket, &["logs", "-f", "--tail", "0", "counter"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = follow.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut streamed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while streamed.len() < 3 && Instant::now() < deadline {
        if let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(1)) {
            streamed.push(line);
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(streamed.len() >= 3, "{streamed:?}");
    assert!(
        streamed.iter().all(|l| l.starts_with("tick-")),
        "{streamed:?}"
    );
    // The next client on the port starts afresh after the follower left.
    assert_eq!(
        ps_row(&socket, "counter").get(1).map(String::as_str),
        Some("running")
    );
}

#[test]
fn the_host_side_operates_the_guest_through_the_serial_port_x86_64() {
    ps_logs_and_exec(Arch::X86_64, "control-port-x86_64");
}

#[test]
fn the_host_side_operates_the_guest_through_the_serial_port_aarch64() {
    ps_logs_and_exec(Arch::Aarch64, "control-port-aarch64");
}

/// Reads what the terminal shows until `wanted` appears.
#[test]
fn exec_it_gives_an_interactive_shell_on_a_terminal() {
    let (mut machine, socket) =
        boot_with_control_port(Arch::X86_64, MANIFEST, "control-port-exec-it");
    // `ready` comes before the containers' images are unpacked (in a child of init).
    wait_line(&mut machine, r"^berth event=started container=web ");
    let (mut shell, mut master) = spawn_on_pty(berth_ctl_command(
        &socket,
        &["exec", "-it", "web", "--", "sh"],
    ));
    let mut seen = String::new();
    // busybox sh prints its prompt only on a terminal.
    read_until(&mut master, &mut seen, "$ ");
    master
        .write_all(b"[ -t 0 ] && echo on-a-tty; echo answer-$((6*7))\n")
        .unwrap_or_else(|e| panic!("{e}"));
    read_until(&mut master, &mut seen, "answer-42");
    assert!(seen.contains("on-a-tty"), "{seen:?}");
    // The terminal echoes what was typed, as a terminal does.
    assert!(seen.contains("echo answer-$((6*7))"), "{seen:?}");
    master
        .write_all(b"exit 5\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let status = wait_exit(&mut shell, &mut master, &seen);
    assert_eq!(status, Some(5), "{seen:?}");
}
