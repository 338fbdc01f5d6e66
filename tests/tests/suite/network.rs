//! netd under QEMU user networking: DHCP gives the guest 10.0.2.15 with QEMU's router and DNS,
//! and a container on the host's network reaches a server on the test machine's loopback.

use berth_arch::Arch;
use berth_tests::events;
use berth_tests::{boot_to_ready, serve_on_loopback, wait_seen};

fn dhcp_and_a_page_from_the_host(arch: Arch) {
    let port = serve_on_loopback("page-from-the-host");
    let manifest = format!(
        r#"
[containers.fetch]
image = "busybox:1.35"
network_mode = "host"
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
    // At shutdown netd gets SIGTERM (it must not inherit init's blocked signals) and releases
    // its lease.
    let mut machine = machine;
    machine
        .press_power_button()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_seen(
        &machine,
        r"^berth event=dhcp-released iface=eth0 addr=10\.0\.2\.15 ",
    );
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
network_mode = "host"
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
    // The new netd takes over the lease the old one saved, rather than discovering again.
    let resumed = wait_seen(&machine, r"^berth event=dhcp-resumed iface=eth0 ");
    assert!(resumed.contains("addr=10.0.2.15/24 "), "{resumed}; {c}");
    assert_eq!(
        events::events(&machine, "dhcp-bound", None).len(),
        1,
        "one DISCOVER for the boot; {c}"
    );
}

const STATIC: &str = r#"
[network]
dns = ["192.0.2.53"]
search = ["example.internal"]

# Matched by MAC, whatever name the kernel gave each link.
[[network.interface]]
match = { mac = "52:54:00:00:00:0b" }
addresses = ["192.0.2.10/24", "2001:db8::10/64"]
gateway = "192.0.2.1"
gateway6 = "2001:db8::1"
routes = [{ to = "198.51.100.0/24", via = "192.0.2.254", metric = 100 }]

[[network.interface]]
match = { mac = "52:54:00:00:00:0a" }
addresses = ["203.0.113.7/24"]
required = false

[containers.show]
image = "busybox:1.35"
network_mode = "host"
depends_on = ["network-online"]
command = ["sh", "-c", "for l in /sys/class/net/eth*; do echo link=${l##*/}=$(cat $l/address); done; ip addr show | grep inet | tr -s ' ' | sed 's/^ /addr:/'; ip route show | sed 's/^/route4:/'; ip -6 route show | grep -v fe80 | sed 's/^/route6:/'; sed 's/^/resolv:/' /hostrun/resolv.conf"]
volumes = ["/run/berth:/hostrun:ro"]
"#;

#[test]
fn a_static_configuration_gets_exactly_its_addresses_and_routes_by_mac() {
    static_addresses_and_routes_by_mac(Arch::X86_64, "network-static");
}

/// Static IPv4 and IPv6 on aarch64, whose virtio NICs sit behind the `virt` board's PCIe
/// root and whose netd is the aarch64 build.
#[test]
fn a_static_configuration_gets_exactly_its_addresses_and_routes_by_mac_aarch64() {
    static_addresses_and_routes_by_mac(Arch::Aarch64, "network-static-aarch64");
}

fn static_addresses_and_routes_by_mac(arch: Arch, test: &str) {
    let dir = berth_tests::log_dir(test);
    let image = berth_tests::build_image(arch, STATIC, &dir).unwrap_or_else(|e| panic!("{e}"));
    let mut config = berth_tests::machine_config(arch, &image, &dir);
    config.user_net = false;
    // The MACs are given in the opposite order to the manifest's entries.
    for (id, mac) in [("n0", "52:54:00:00:00:0a"), ("n1", "52:54:00:00:00:0b")] {
        config.extra_args.extend([
            "-netdev".to_string(),
            format!("user,id={id},restrict=on"),
            "-device".to_string(),
            format!("virtio-net-pci,netdev={id},mac={mac},romfile="),
        ]);
    }
    let machine = berth_tests::start_to_ready(&config);
    wait_seen(&machine, r"^berth event=exited container=show ");
    let c = format!("console: {}", machine.console_log().display());
    let out = events::output(&machine, "show");
    let has = |needle: &str| out.iter().any(|l| l.contains(needle));
    // Which name got which MAC is the kernel's business; the addresses follow the MAC.
    let name_of = |mac: &str| {
        out.iter()
            .find_map(|l| {
                l.strip_prefix("link=")
                    .and_then(|l| l.strip_suffix(&format!("={mac}")))
            })
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no link with {mac}: {out:?}; {c}"))
    };
    let primary = name_of("52:54:00:00:00:0b");
    let secondary = name_of("52:54:00:00:00:0a");
    assert!(
        out.iter()
            .any(|l| l.contains("inet 192.0.2.10/24") && l.ends_with(&primary)),
        "{out:?}; {c}"
    );
    assert!(
        out.iter()
            .any(|l| l.contains("inet 203.0.113.7/24") && l.ends_with(&secondary)),
        "{out:?}; {c}"
    );
    assert!(has("inet6 2001:db8::10/64"), "{out:?}; {c}");
    // Exactly the declared addresses: nothing autoconfigured from QEMU's advertisements.
    let global: Vec<&String> = out
        .iter()
        .filter(|l| {
            l.starts_with("addr:inet") && !l.contains("scope host") && !l.contains("scope link")
        })
        .collect();
    assert_eq!(
        global.len(),
        3,
        "192.0.2.10, 203.0.113.7 and 2001:db8::10 only: {global:?}; {c}"
    );
    assert!(
        has(&format!("route4:default via 192.0.2.1 dev {primary}")),
        "{out:?}; {c}"
    );
    assert!(
        has(&format!(
            "route4:198.51.100.0/24 via 192.0.2.254 dev {primary}"
        )) && has("metric 100"),
        "{out:?}; {c}"
    );
    assert!(
        has(&format!("route6:default via 2001:db8::1 dev {primary}")),
        "{out:?}; {c}"
    );
    assert!(
        has("resolv:nameserver 192.0.2.53") && has("resolv:search example.internal"),
        "{out:?}; {c}"
    );
    let online = events::events(&machine, "network-online", None);
    let started = events::events(&machine, "started", Some("show"));
    assert!(
        online.first().and_then(|e| e.number("uptime_ms"))
            <= started.first().and_then(|e| e.number("uptime_ms")),
        "the container waited for network-online; {c}"
    );
    assert!(!online.is_empty(), "{c}");
}
