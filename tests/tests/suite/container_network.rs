//! Containers on the bridge: their own network stack, outbound NAT, published ports, names of
//! the other containers, the other network modes, and nothing left behind by restarts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use berth_arch::Arch;
use berth_qemu::Machine;
use berth_tests::free_port;
use berth_tests::{events, serve_on_loopback, wait_seen};

/// A busybox httpd serving `body` on port 80 of the container.
fn web(body: &str) -> String {
    format!(
        r#"["sh", "-c", "mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www"]"#
    )
}

/// GET / from 127.0.0.1:`port`; the body, or None while nothing answers.
fn http_get(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.trim().to_string())
}

/// Boots `manifest` with QEMU forwarding a free port of the test machine to the guest's
/// `guest_port`; returns the machine and that port. The port is free when picked, but
/// something else may take it before QEMU binds it (QEMU then exits at once): a new port is
/// picked and the boot tried again, three times at most.
fn boot_with_forward(arch: Arch, manifest: &str, test: &str, guest_port: u16) -> (Machine, u16) {
    let dir = berth_tests::log_dir(test);
    let image = berth_tests::build_image(arch, manifest, &dir).unwrap_or_else(|e| panic!("{e}"));
    let mut attempt = 0;
    loop {
        let host_port = free_port();
        let mut config = berth_tests::machine_config(arch, &image, &dir);
        // QEMU's plain CPU model (qemu64 on x86_64: no SSE4.2, so nf_tables' soft dependency
        // crc32c-intel refuses to load): NAT must work there too, not only on `-cpu max`.
        config.default_cpu_model = true;
        config.user_net = false;
        config.extra_args.extend([
            "-netdev".to_string(),
            format!("user,id=net0,hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}"),
            "-device".to_string(),
            "virtio-net-pci,netdev=net0,romfile=".to_string(),
        ]);
        match Machine::start(&config) {
            Ok(mut machine) => {
                machine
                    .wait_for_line(
                        &berth_tests::pattern(berth_tests::READY_PATTERN),
                        berth_tests::READY_TIMEOUT,
                    )
                    .unwrap_or_else(|e| panic!("{e}"));
                return (machine, host_port);
            }
            Err(err) if attempt < 2 => {
                eprintln!(
                    "QEMU did not start with port {host_port} forwarded ({err}); another port"
                );
                attempt += 1;
            }
            Err(err) => panic!("{err}"),
        }
    }
}

fn published_port_reaches_a_bridged_container(arch: Arch) {
    let manifest = format!(
        "[containers.web]\nimage = \"busybox:1.35\"\ncommand = {}\nports = [\"8080:80\"]\n",
        web("page-from-web")
    );
    let (machine, host_port) = boot_with_forward(
        arch,
        &manifest,
        &format!("container-network-ports-{arch}"),
        8080,
    );
    let c = format!("console: {}", machine.console_log().display());
    let started = wait_seen(&machine, r"^berth event=started container=web ");
    assert!(
        started.contains("network=bridge addr=172.30.0.2 "),
        "{started}; {c}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut body = None;
    while body.is_none() && Instant::now() < deadline {
        body = http_get(host_port);
        if body.is_none() {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    assert_eq!(body.as_deref(), Some("page-from-web"), "{c}");
    assert!(
        !machine.console_text().contains("event=nat-failed"),
        "NAT rules load on the plain CPU model; {c}"
    );
}

#[test]
fn x86_64_a_published_port_reaches_a_bridged_container() {
    published_port_reaches_a_bridged_container(Arch::X86_64);
}

#[test]
fn aarch64_a_published_port_reaches_a_bridged_container() {
    published_port_reaches_a_bridged_container(Arch::Aarch64);
}

#[test]
fn bridged_containers_reach_the_host_through_nat_and_each_other_by_name() {
    let port = serve_on_loopback("page-from-the-host");
    let manifest = format!(
        r#"
[containers.web]
image = "busybox:1.35"
command = {web}

[containers.client]
image = "busybox:1.35"
depends_on = ["web", "network-online"]
command = ["sh", "-c", "ip -4 -o addr show eth0 | tr -s ' ' | cut -d' ' -f4 | sed 's/^/addr=/'; ip route | grep default | sed 's/^/route=/'; until wget -q -O- http://10.0.2.2:{port}/; do sleep 1; done; echo; until wget -q -O- http://web/; do sleep 1; done; grep -c . /sys/class/net/eth0/address | sed 's/^/eth0=/'; ls /sys/class/net | tr '\n' ' ' | sed 's/^/links=/'; echo"]
"#,
        web = web("page-from-web")
    );
    let machine =
        berth_tests::boot_to_ready(Arch::X86_64, &manifest, "container-network-nat-and-names");
    let c = format!("console: {}", machine.console_log().display());
    wait_seen(&machine, r"^berth event=exited container=client ");
    let out = events::output(&machine, "client");
    assert_eq!(
        out,
        [
            "addr=172.30.0.2/16",
            "route=default via 172.30.0.1 dev eth0 ",
            "page-from-the-host",
            "page-from-web",
            "eth0=1",
            "links=eth0 lo ",
        ],
        "{c}"
    );
}

#[test]
fn none_container_and_host_network_modes() {
    let manifest = format!(
        r#"
[containers.web]
image = "busybox:1.35"
command = {web}

[containers.isolated]
image = "busybox:1.35"
network_mode = "none"
command = ["sh", "-c", "echo links=$(ls /sys/class/net | tr '\n' ' ')"]

[containers.sidecar]
image = "busybox:1.35"
network_mode = "container:web"
command = ["sh", "-c", "echo addr=$(ip -4 -o addr show eth0 | tr -s ' ' | cut -d' ' -f4); until wget -q -O- http://127.0.0.1/; do sleep 1; done"]

[containers.hostnet]
image = "busybox:1.35"
network_mode = "host"
command = ["sh", "-c", "for l in lo eth0 berth0; do [ -e /sys/class/net/$l ] && echo has=$l; done; true"]
"#,
        web = web("page-from-web")
    );
    let machine = berth_tests::boot_to_ready(Arch::X86_64, &manifest, "container-network-modes");
    let c = format!("console: {}", machine.console_log().display());
    for name in ["isolated", "sidecar", "hostnet"] {
        wait_seen(&machine, &format!(r"^berth event=exited container={name} "));
    }
    assert_eq!(events::output(&machine, "isolated"), ["links=lo"], "{c}");
    assert_eq!(
        events::output(&machine, "sidecar"),
        ["addr=172.30.0.2/16", "page-from-web"],
        "the sidecar shares web's interfaces and its loopback; {c}"
    );
    assert_eq!(
        events::output(&machine, "hostnet"),
        ["has=lo", "has=eth0", "has=berth0"],
        "{c}"
    );
    // The sidecar waited for web (an implied dependency).
    let web_started = events::events(&machine, "started", Some("web"));
    let sidecar_started = events::events(&machine, "started", Some("sidecar"));
    let web_at = web_started.first().and_then(|e| e.number("uptime_ms"));
    let sidecar_at = sidecar_started.first().and_then(|e| e.number("uptime_ms"));
    assert!(
        web_at.is_some() && sidecar_at.is_some() && web_at <= sidecar_at,
        "web started ({web_at:?}) before its sidecar ({sidecar_at:?}); {c}"
    );
}

#[test]
fn twenty_restarts_leave_one_veth_and_one_set_of_rules() {
    let manifest = r#"
[containers.flaky]
image = "busybox:1.35"
restart = "on-failure"
restart_delay = "0s"
ports = ["9090:90", "5353:53/udp"]
volumes = ["count:/count"]
command = ["sh", "-c", "n=$(( $(cat /count/n 2>/dev/null || echo 0) + 1 )); echo $n > /count/n; [ $n -gt 20 ] && exec sleep 1000; exit 1"]

# Ran once and stopped: its veth and its port's rules must be gone.
[containers.once]
image = "busybox:1.35"
ports = ["7070:70"]
command = ["true"]

[containers.inspect]
image = "busybox:1.35"
network_mode = "host"
cap_add = ["NET_ADMIN"]
volumes = ["count:/count"]
command = ["sh", "-c", "until [ \"$(cat /count/n 2>/dev/null)\" = 21 ]; do sleep 0.5; done; sleep 2; berth-probe net"]
"#;
    let machine = berth_tests::boot_to_ready(Arch::X86_64, manifest, "container-network-restarts");
    let c = format!("console: {}", machine.console_log().display());
    wait_seen(&machine, r"^berth event=exited container=inspect ");
    assert_eq!(
        events::events(&machine, "started", Some("once"))
            .first()
            .and_then(|e| e.get("addr")),
        Some("172.30.0.3"),
        "{c}"
    );
    let restarts = events::events(&machine, "started", Some("flaky"));
    assert_eq!(restarts.len(), 21, "{c}");
    assert!(
        restarts.iter().all(|e| e.get("addr") == Some("172.30.0.2")),
        "every restart got the same address; {c}"
    );
    assert_eq!(
        events::output(&machine, "inspect"),
        ["veths=vb2", "nat_rules=prerouting:2,output:2,postrouting:2"],
        "one veth, masquerade and loopback rules, and one DNAT pair per published port of the \
         running container (none of `once`, which stopped); {c}"
    );
}
