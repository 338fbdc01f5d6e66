//! Links netd creates: a bond whose traffic survives the loss of its active member, and VLANs
//! whose frames carry their tag (two guests on one wire reach each other only on the VLAN
//! they share).

use std::net::UdpSocket;
use std::time::Duration;

use berth_arch::Arch;
use berth_qemu::Machine;
use berth_tests::netns::NetRig;
use berth_tests::{events, wait_seen};
use serde_json::json;

/// Also guards against the bonding driver's own `bond0` (it makes one on load unless told
/// `max_bonds=0`) standing in for the manifest's, in round-robin mode with no link monitor.
#[test]
fn an_active_backup_bond_gets_dhcp_and_survives_its_active_member_going_down() {
    let dir = berth_tests::log_dir("links-bond");
    let mut rig = NetRig::new("bond", 2, &dir).unwrap_or_else(|e| panic!("{e}"));
    rig.start_dnsmasq(&["--dhcp-range=192.168.77.50,192.168.77.59,255.255.255.0,2m"])
        .unwrap_or_else(|e| panic!("{e}"));
    let manifest = r#"
[[network.interface]]
name = "bond0"
bond = { members = ["eth*"], mode = "active-backup" }
dhcp = true

[containers.watch]
image = "busybox:1.35"
network_mode = "host"
command = ["sh", "-c", "last=; while true; do now=$(sed -n 's/^Currently Active Slave: //p' /proc/net/bonding/bond0); [ \"$now\" != \"$last\" ] && echo active=$now; last=$now; sleep 0.2; done"]
"#;
    let image =
        berth_tests::build_image(Arch::X86_64, manifest, &dir).unwrap_or_else(|e| panic!("{e}"));
    let mut config = berth_tests::machine_config(Arch::X86_64, &image, &dir);
    config.user_net = false;
    config.netns = Some(rig.path());
    config
        .extra_args
        .extend(NetRig::nic_args(0, "52:54:00:77:00:0a"));
    config
        .extra_args
        .extend(NetRig::nic_args(1, "52:54:00:77:00:0b"));
    let mut machine = berth_tests::start_to_ready(&config);
    let c = format!("console: {}", machine.console_log().display());
    let created = wait_seen(&machine, r"^berth event=link-created iface=bond0 ");
    let created = events::parse(&created).unwrap_or_else(|| panic!("{c}"));
    assert_eq!(created.get("kind"), Some("bond"), "{c}");
    assert_eq!(created.get("mode"), Some("active-backup"), "{c}");
    assert_eq!(created.get("members"), Some("eth0,eth1"), "{c}");
    let bound = wait_seen(&machine, r"^berth event=dhcp-bound iface=bond0 ");
    let addr = events::parse(&bound)
        .and_then(|e| e.get("addr").map(str::to_string))
        .unwrap_or_else(|| panic!("{bound}; {c}"));
    let ip = addr.trim_end_matches("/24");
    assert!(ip.starts_with("192.168.77.5"), "{addr}; {c}");
    // The members got no lease of their own.
    assert!(
        events::events(&machine, "dhcp-bound", None)
            .iter()
            .all(|e| e.get("iface") == Some("bond0")),
        "{c}"
    );
    let first = wait_seen(&machine, r"^watch \| active=eth\d$");
    assert!(
        rig.answers_within(ip, Duration::from_secs(20)),
        "bond0 answers through {first}; {c}"
    );
    // Pull the cable of the active member: its carrier drops and the bond moves to the other.
    let active_netdev = if first.ends_with("eth0") { "n0" } else { "n1" };
    machine
        .qmp(
            "set_link",
            Some(json!({ "name": active_netdev, "up": false })),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let other = if first.ends_with("eth0") {
        "eth1"
    } else {
        "eth0"
    };
    wait_seen(&machine, &format!(r"^watch \| active={other}$"));
    assert!(
        rig.answers_within(ip, Duration::from_secs(20)),
        "bond0 answers through {other} after the failover; {c}"
    );
}

/// Two UDP ports on the loopback, free when asked: the two ends of a QEMU socket "wire".
fn free_udp_ports() -> (u16, u16) {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let b = UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = |s: &UdpSocket| {
        s.local_addr()
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    (port(&a), port(&b))
}

/// Boots `manifest` with its only NIC on a UDP wire from `local` to `remote`.
fn boot_on_wire(test: &str, manifest: &str, mac: &str, local: u16, remote: u16) -> Machine {
    let dir = berth_tests::log_dir(test);
    let image =
        berth_tests::build_image(Arch::X86_64, manifest, &dir).unwrap_or_else(|e| panic!("{e}"));
    let mut config = berth_tests::machine_config(Arch::X86_64, &image, &dir);
    config.user_net = false;
    config.extra_args.extend([
        "-netdev".to_string(),
        format!("socket,id=wire,udp=127.0.0.1:{remote},localaddr=127.0.0.1:{local}"),
        "-device".to_string(),
        format!("virtio-net-pci,netdev=wire,mac={mac},romfile="),
    ]);
    berth_tests::start_to_ready(&config)
}

#[test]
fn vlans_carry_their_tag_between_two_guests() {
    let (port_a, port_b) = free_udp_ports();
    // Guest A: VLAN 42 and VLAN 43, nothing untagged.
    let a = r#"
[[network.interface]]
match = { mac = "52:54:00:42:00:0a" }
required = false

[[network.interface]]
vlan = { parent = "eth0", id = 42 }
addresses = ["192.168.42.1/24"]

[[network.interface]]
name = "v43"
vlan = { parent = "eth0", id = 43 }
addresses = ["192.168.43.1/24"]
"#;
    // Guest B: VLAN 42, and 192.168.43.0/24 untagged: its frames for 192.168.43.1 carry no
    // tag, so A's VLAN 43 must not see them.
    let b = r#"
[[network.interface]]
match = { mac = "52:54:00:42:00:0b" }
addresses = ["192.168.43.2/24"]

[[network.interface]]
vlan = { parent = "eth0", id = 42 }
addresses = ["192.168.42.2/24"]

[containers.probe]
image = "busybox:1.35"
network_mode = "host"
depends_on = ["network-online"]
command = ["sh", "-c", "n=0; until ping -c 1 -W 1 192.168.42.1 >/dev/null; do n=$((n+1)); [ $n -gt 60 ] && break; done; ping -c 2 -W 2 192.168.42.1 >/dev/null && echo vlan42=reached || echo vlan42=unreached; ping -c 2 -W 2 192.168.43.1 >/dev/null && echo untagged=reached || echo untagged=unreached; grep '^eth0.42 ' /proc/net/vlan/config | tr -s ' '"]
"#;
    let guest_a = boot_on_wire("links-vlan-a", a, "52:54:00:42:00:0a", port_a, port_b);
    let guest_b = boot_on_wire("links-vlan-b", b, "52:54:00:42:00:0b", port_b, port_a);
    let c = format!(
        "consoles: {} and {}",
        guest_a.console_log().display(),
        guest_b.console_log().display()
    );
    let created = wait_seen(&guest_a, r"^berth event=link-created iface=v43 ");
    assert!(
        created.contains("kind=vlan parent=eth0 id=43"),
        "{created}; {c}"
    );
    wait_seen(&guest_b, r"^berth event=exited container=probe ");
    assert_eq!(
        events::output(&guest_b, "probe"),
        [
            "vlan42=reached",
            "untagged=unreached",
            "eth0.42 | 42 | eth0"
        ],
        "{c}"
    );
}
