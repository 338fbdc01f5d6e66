//! netd under QEMU user networking: DHCP gives the guest 10.0.2.15 with QEMU's router and DNS,
//! and a container on the host's network reaches a server on the test machine's loopback.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use berth_arch::Arch;
use berth_tests::events;
use berth_tests::{boot_to_ready, wait_seen};

/// Serves `body` to every HTTP request on an ephemeral loopback port, from a thread that ends
/// with the test; returns the port.
fn serve_on_loopback(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let reply = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    port
}

fn dhcp_and_a_page_from_the_host(arch: Arch) {
    let port = serve_on_loopback("page-from-the-host");
    let manifest = format!(
        r#"
[containers.fetch]
image = "busybox:1.35"
command = ["sh", "-c", "until wget -q -O- http://10.0.2.2:{port}/; do sleep 1; done; echo; cat /hostrun/resolv.conf"]
volumes = ["/run/berth:/hostrun:ro"]
restart = "on-failure:3"
"#
    );
    let machine = boot_to_ready(arch, &manifest, &format!("network-dhcp-{arch}"));
    let bound = wait_seen(&machine, r"^berth event=dhcp-bound iface=eth0 ");
    let event = events::parse(&bound).unwrap_or_else(|| panic!("{bound}"));
    let c = format!("console: {}", machine.console_log().display());
    assert_eq!(event.get("addr"), Some("10.0.2.15/24"), "{c}");
    assert_eq!(event.get("gateway"), Some("10.0.2.2"), "{c}");
    assert_eq!(event.get("dns"), Some("10.0.2.3"), "{c}");
    assert_eq!(event.get("routes"), Some("0.0.0.0/0>10.0.2.2"), "{c}");
    wait_seen(&machine, r"^fetch \| page-from-the-host$");
    wait_seen(&machine, r"^fetch \| nameserver 10\.0\.2\.3$");
    let started = events::events(&machine, "service-started", None);
    assert_eq!(
        started.first().and_then(|e| e.get("service")),
        Some("netd"),
        "{c}"
    );
}

#[test]
fn x86_64_gets_its_address_by_dhcp_and_reaches_the_host() {
    dhcp_and_a_page_from_the_host(Arch::X86_64);
}

#[test]
fn aarch64_gets_its_address_by_dhcp_and_reaches_the_host() {
    dhcp_and_a_page_from_the_host(Arch::Aarch64);
}

#[test]
fn init_restarts_a_killed_netd_and_the_address_survives() {
    let manifest = r#"
[containers.killer]
image = "busybox:1.35"
pid = "host"
command = ["sh", "-c", "until ip -4 addr show eth0 | grep -q 10.0.2.15; do sleep 1; done; kill -KILL $(pidof netd); sleep 1; echo after_kill=$(ip -4 addr show eth0 | grep -c 10.0.2.15)"]
"#;
    let machine = boot_to_ready(Arch::X86_64, manifest, "network-netd-restart");
    wait_seen(&machine, r"^killer \| after_kill=");
    let c = format!("console: {}", machine.console_log().display());
    assert_eq!(
        events::output(&machine, "killer"),
        ["after_kill=1"],
        "the address stays in the kernel while netd is down; {c}"
    );
    let exited = wait_seen(&machine, r"^berth event=service-exited service=netd ");
    assert!(exited.contains("code=137"), "{exited}; {c}");
    wait_seen(
        &machine,
        r"^berth event=service-started service=netd pid=\d+ restarts=1 ",
    );
    // The new netd binds the same lease again.
    let bound_twice = || {
        machine
            .console_lines()
            .iter()
            .filter(|l| {
                l.text
                    .starts_with("berth event=dhcp-bound iface=eth0 addr=10.0.2.15/24 ")
            })
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while bound_twice() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        bound_twice(),
        2,
        "the restarted netd holds the same address; {c}"
    );
}
