//! netd's DHCP client against a real server: Debian's dnsmasq in a network namespace, wired to
//! the guest by a tap device. Short leases renew before they expire, a NAK sends the client
//! back to discovery, option 121 routes and option 26 MTU are applied, option 42's NTP server
//! sets the clock, and a netd killed mid-lease goes on renewing the lease it had.

use std::time::Duration;

use berth_qemu::Machine;
use berth_tests::netns::NetRig;
use berth_tests::{events, wait_seen};

const MAC: &str = "52:54:00:77:00:01";

/// Boots `manifest` with one NIC on the rig's tap0 (no user networking).
fn boot_on_rig(rig: &NetRig, manifest: &str, dir: &std::path::Path) -> Machine {
    rig.boot(manifest, dir, MAC)
}

/// Every console line that starts with `prefix`, as events.
fn all(machine: &Machine, prefix: &str) -> Vec<events::EventLine> {
    events::starting_with(machine, prefix)
}

/// Waits until `count` lines start with `prefix`; returns them.
fn wait_count(machine: &Machine, prefix: &str, count: usize) -> Vec<events::EventLine> {
    events::wait_count(machine, prefix, count, berth_tests::LINE_TIMEOUT)
}

/// A 2-minute lease (dnsmasq's shortest) renewed every 8 s, with a classless route and an
/// MTU; the container shows what the kernel holds, then kills netd once the lease has been
/// renewed, and the next netd must go on renewing the same lease, not discover a new one.
#[test]
fn short_leases_renew_options_apply_and_a_killed_netd_keeps_renewing() {
    let dir = berth_tests::log_dir("dhcp-server-renew");
    let mut rig = NetRig::new("renew", 1, &dir).unwrap_or_else(|e| panic!("{e}"));
    rig.start_dnsmasq(&[
        "--dhcp-range=192.168.77.50,192.168.77.59,255.255.255.0,2m",
        "--dhcp-option=option:T1,8",
        "--dhcp-option=option:T2,14",
        "--dhcp-option=option:mtu,1400",
        "--dhcp-option=121,10.99.0.0/16,192.168.77.254",
        "--dhcp-option=option:dns-server,192.168.77.1",
        "--dhcp-option=option:ntp-server,192.168.77.1",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    // The NTP server option 42 names, inside the rig: with no `[time] servers` netd asks it.
    berth_tests::ntp::scripted_server_in_netns(
        &rig.path(),
        (std::net::Ipv4Addr::new(192, 168, 77, 1), 123).into(),
        berth_tests::ntp::Answer::Honest,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let manifest = r#"
[containers.show]
image = "busybox:1.35"
network_mode = "host"
pid = "host"
depends_on = ["network-online"]
volumes = ["/run/berth:/hostrun:ro"]
command = ["sh", "-c", "ip -4 route show | sed 's/^/route:/'; echo mtu=$(cat /sys/class/net/eth0/mtu); first=$(grep acquired /hostrun/netd/eth0.lease); until [ \"$(grep acquired /hostrun/netd/eth0.lease)\" != \"$first\" ]; do sleep 0.5; done; echo renewed-before-kill; kill -KILL $(pidof netd)"]
"#;
    let machine = boot_on_rig(&rig, manifest, &dir);
    let c = format!(
        "console: {}; dnsmasq: {}",
        machine.console_log().display(),
        dir.join("dnsmasq.log").display()
    );
    let bound = wait_count(&machine, "berth event=dhcp-bound iface=eth0 ", 1);
    let bound = bound.first().unwrap_or_else(|| panic!("{c}"));
    let addr = bound.get("addr").unwrap_or_default().to_string();
    assert!(
        addr.starts_with("192.168.77.5") && addr.ends_with("/24"),
        "{addr}; {c}"
    );
    assert_eq!(bound.get("lease"), Some("120s"), "{c}");
    assert_eq!(bound.get("mtu"), Some("1400"), "{c}");
    assert_eq!(
        bound.get("routes"),
        Some("10.99.0.0/16>192.168.77.254"),
        "option 121 replaces the router option; {c}"
    );
    assert_eq!(bound.get("ntp"), Some("192.168.77.1"), "option 42; {c}");
    let synced = wait_seen(&machine, r"^berth event=time-synced ");
    assert!(
        synced.contains("server=192.168.77.1:123 "),
        "the time came from option 42's server: {synced}; {c}"
    );
    wait_seen(&machine, r"^show \| renewed-before-kill$");
    let out = events::output(&machine, "show");
    assert!(out.contains(&"mtu=1400".to_string()), "{out:?}; {c}");
    assert!(
        out.iter()
            .any(|l| l.starts_with("route:10.99.0.0/16 via 192.168.77.254 dev eth0")),
        "{out:?}; {c}"
    );
    assert!(
        !out.iter().any(|l| l.starts_with("route:default")),
        "RFC 3442: with option 121 the router option is ignored; {out:?}; {c}"
    );
    // The kill, the restart, and the new netd picking the lease up where the old one was.
    wait_seen(
        &machine,
        r"^berth event=service-exited service=netd .*code=137",
    );
    let resumed = wait_seen(&machine, r"^berth event=dhcp-resumed iface=eth0 ");
    assert!(resumed.contains(&format!("addr={addr} ")), "{resumed}; {c}");
    let renewals_before = all(&machine, "berth event=dhcp-renewed iface=eth0 ").len();
    let renewed = wait_count(
        &machine,
        "berth event=dhcp-renewed iface=eth0 ",
        renewals_before + 1,
    );
    let last = renewed.last().unwrap_or_else(|| panic!("{c}"));
    assert_eq!(last.get("addr"), Some(addr.as_str()), "{c}");
    assert_eq!(
        all(&machine, "berth event=dhcp-bound ").len(),
        1,
        "the restarted netd renews; it does not discover again; {c}"
    );
    // The server saw renewals (unicast REQUESTs for the same address), and no DISCOVER once
    // the lease was bound. Not "exactly one DISCOVER": a client may retransmit its first one
    // while the server is slow to offer (dnsmasq pings the address first), which is right.
    let log = rig.dnsmasq_log();
    let last_discover = log.rfind("DHCPDISCOVER");
    let first_ack = log.find("DHCPACK(");
    assert!(
        last_discover.is_some() && first_ack.is_some() && last_discover < first_ack,
        "discovery only before the first lease: {log}"
    );
    let ip = addr.trim_end_matches("/24");
    assert!(
        log.matches(&format!("DHCPACK(br0) {ip} ")).count() >= 3,
        "a bind and at least two renewals: {log}"
    );
}

/// The server forgets the lease and serves another range: the next renewal is refused with a
/// NAK and the client starts over and binds an address from the new range.
#[test]
fn a_nak_sends_the_client_back_to_discovery() {
    let dir = berth_tests::log_dir("dhcp-server-nak");
    let mut rig = NetRig::new("nak", 1, &dir).unwrap_or_else(|e| panic!("{e}"));
    rig.start_dnsmasq(&[
        "--dhcp-range=192.168.77.50,192.168.77.59,255.255.255.0,2m",
        "--dhcp-option=option:T1,6",
        "--dhcp-option=option:T2,100",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let machine = boot_on_rig(&rig, "", &dir);
    let c = format!(
        "console: {}; dnsmasq: {}",
        machine.console_log().display(),
        dir.join("dnsmasq.log").display()
    );
    let first = wait_count(&machine, "berth event=dhcp-bound iface=eth0 ", 1);
    let first_addr = first
        .first()
        .and_then(|e| e.get("addr"))
        .unwrap_or_default()
        .to_string();
    assert!(first_addr.starts_with("192.168.77.5"), "{first_addr}; {c}");
    rig.start_dnsmasq(&[
        "--dhcp-range=192.168.77.100,192.168.77.109,255.255.255.0,2m",
        "--dhcp-option=option:T1,60",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let nak = wait_seen(&machine, r"^berth event=dhcp-nak iface=eth0 ");
    assert!(nak.contains("state=renewing"), "{nak}; {c}");
    wait_seen(&machine, r"^berth event=dhcp-lost iface=eth0 ");
    let rebound = wait_count(&machine, "berth event=dhcp-bound iface=eth0 ", 2);
    let second = rebound
        .last()
        .and_then(|e| e.get("addr"))
        .unwrap_or_default();
    assert!(
        second.starts_with("192.168.77.10") && second.ends_with("/24"),
        "{second}; {c}"
    );
    let log = rig.dnsmasq_log();
    assert!(log.contains("DHCPNAK(br0)"), "{log}");
    assert!(
        rig.answers_within(second.trim_end_matches("/24"), Duration::from_secs(20)),
        "the new address answers; {c}"
    );
}
