//! netd's DHCP client against a hostile server: a scripted one in the rig's namespace that
//! answers with crafted packets, in one boot and in this order:
//!
//! 1. to the first DISCOVER, a burst of bad OFFERs: one with another transaction's xid
//!    (ignored without a word: it may be another client's), a packet shorter than the BOOTP
//!    header, an option running past the end, a lease time of 0, a 255-byte hostname that is
//!    not UTF-8 with the mask and lease time after it, a multicast address and a mask that is
//!    no prefix (each refused, with a `dhcp-reply-refused` event);
//! 2. a good OFFER, then to the REQUEST an ACK from another server identifier, an ACK with a
//!    lease time of 0, an ACK whose last option runs past the end, an ACK of another address
//!    than the one asked for, a NAK from another server (all refused), and a NAK from the
//!    selected server (taken: discovery starts again, 1 s later);
//! 3. a lease without subnet mask or router and a T1 of 0: netd takes the classful /24 and no
//!    default route, and renews after half the lease, not at once; the renewal gets a NAK;
//! 4. an oversized OFFER and ACK, fragmented on the wire: 70 classless routes in three option
//!    121s (one through a gateway off the link), a 255-byte hostname of printable garbage, an
//!    MTU of 100, 2 KiB of site-specific options. The lease is taken without the hostname,
//!    the MTU and the routes past the 64th; the route the kernel refuses is reported and
//!    skipped; its renewal gets a NAK;
//! 5. a good lease of infinite time (0xffffffff), which must never be renewed.
//!
//! netd must never exit, must bind only the leases it should, and must end with the good one
//! as the only address and routes on the link; the server's log shows it never sent a storm
//! of DISCOVERs or REQUESTs. One arch suffices: the DHCP client is arch-independent Rust
//! (byte parsing with explicit big-endian reads, no `unsafe`, no arch-specific syscalls), and
//! the aarch64 guests cost four times the boot time under TCG.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use berth_tests::dhcp_script::{option, secs, Reply, ScriptedServer, Seen, Step};
use berth_tests::dhcp_script::{ACK, DISCOVER, NAK, OFFER, REQUEST};
use berth_tests::events;
use berth_tests::netns::{NetRig, BRIDGE_ADDR};

const MAC: &str = "52:54:00:77:00:02";
/// How long the whole script may take once the guest is up (about 35 s here).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the client must stay silent after binding the infinite lease.
const QUIET_AFTER_INFINITE: Duration = Duration::from_secs(20);
/// The smallest gap allowed between two DISCOVERs (retransmits wait 4 s, NAKs 1 s).
const MIN_DISCOVER_GAP: Duration = Duration::from_millis(900);

fn server() -> Ipv4Addr {
    BRIDGE_ADDR.parse().unwrap_or(Ipv4Addr::UNSPECIFIED)
}

fn addr(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 77, last)
}

const MASK_24: [u8; 4] = [255, 255, 255, 0];
const ROGUE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 9);
/// Option 121 routes in the oversized reply: more than netd's 64.
const OVERSIZED_ROUTES: u8 = 70;
/// The one of them through a gateway off the link, which the kernel refuses.
const OFF_LINK_ROUTE: u8 = 5;
const OFF_LINK_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 123, 0, 1);

/// An OFFER or ACK of `yiaddr` from the rig's server with a /24, the router and `lease`.
fn lease(seen: &Seen, kind: u8, yiaddr: Ipv4Addr, lease: u32) -> Reply {
    Reply::to(seen, kind, yiaddr, server())
        .option(option::SERVER_ID, &server().octets())
        .option(option::SUBNET_MASK, &MASK_24)
        .option(option::ROUTER, &server().octets())
        .option(option::LEASE_TIME, &secs(lease))
}

fn nak(seen: &Seen, from: Ipv4Addr) -> Vec<u8> {
    Reply::to(seen, NAK, Ipv4Addr::UNSPECIFIED, from)
        .option(option::SERVER_ID, &from.octets())
        .end()
}

/// Step 1: every OFFER in it is refused or ignored.
fn bad_offers(seen: &Seen) -> Vec<Vec<u8>> {
    let mut garbage_name = vec![0xff_u8; 255];
    garbage_name[0] = b'a';
    vec![
        lease(seen, OFFER, addr(201), 60)
            .xid(seen.xid ^ 0x5a5a_5a5a)
            .end(),
        lease(seen, OFFER, addr(207), 60).end()[..200].to_vec(),
        Reply::to(seen, OFFER, addr(202), server())
            .option(option::SERVER_ID, &server().octets())
            .raw(&[option::SUBNET_MASK, 200, 255, 255, 255, 0])
            .bytes(),
        lease(seen, OFFER, addr(203), 0).end(),
        Reply::to(seen, OFFER, addr(204), server())
            .option(option::SERVER_ID, &server().octets())
            .option(option::HOSTNAME, &garbage_name)
            .option(option::SUBNET_MASK, &MASK_24)
            .option(option::LEASE_TIME, &secs(60))
            .end(),
        lease(seen, OFFER, Ipv4Addr::new(224, 0, 0, 251), 60).end(),
        Reply::to(seen, OFFER, addr(206), server())
            .option(option::SERVER_ID, &server().octets())
            .option(option::SUBNET_MASK, &[255, 0, 255, 0])
            .end(),
    ]
}

/// Step 3: to the REQUEST for .205, every ACK is refused, then the right server's NAK.
fn bad_acks_then_nak(seen: &Seen) -> Vec<Vec<u8>> {
    vec![
        Reply::to(seen, ACK, addr(205), ROGUE)
            .option(option::SERVER_ID, &ROGUE.octets())
            .option(option::SUBNET_MASK, &MASK_24)
            .option(option::LEASE_TIME, &secs(60))
            .end(),
        lease(seen, ACK, addr(205), 0).end(),
        lease(seen, ACK, addr(205), 60)
            .raw(&[option::DNS, 8, 192, 168, 77, 1])
            .bytes(),
        lease(seen, ACK, addr(206), 60).end(),
        nak(seen, ROGUE),
        nak(seen, server()),
    ]
}

/// Steps 4 and 5: no mask, no router, a 16 s lease and a T1 of 0.
fn no_mask(seen: &Seen, kind: u8) -> Vec<Vec<u8>> {
    vec![Reply::to(seen, kind, addr(211), server())
        .option(option::SERVER_ID, &server().octets())
        .option(option::LEASE_TIME, &secs(16))
        .option(option::RENEWAL, &secs(0))
        .end()]
}

/// Steps 7 and 8: a well-formed reply of about 3 KiB.
fn oversized(seen: &Seen, kind: u8) -> Vec<Vec<u8>> {
    let mut routes = Vec::new();
    for n in 0..OVERSIZED_ROUTES {
        routes.extend([32, 10, 99, n, 1]);
        if n == OFF_LINK_ROUTE {
            routes.extend(OFF_LINK_GATEWAY.octets());
        } else {
            routes.extend(addr(254).octets());
        }
    }
    let name: Vec<u8> = (0..255u8).map(|n| b' ' + n % 90).collect();
    let mut reply = lease(seen, kind, addr(212), 12)
        .option(option::HOSTNAME, &name)
        .option(option::MTU, &100u16.to_be_bytes())
        .option(option::CLASSLESS_ROUTES, &routes);
    for code in 224..232u8 {
        reply = reply.option(code, &[code; 255]);
    }
    vec![reply.end()]
}

fn script() -> Vec<Step> {
    vec![
        Step::new(DISCOVER, "bad-offers", bad_offers),
        Step::new(DISCOVER, "good-offer", |s| {
            vec![lease(s, OFFER, addr(205), 60).end()]
        }),
        Step::new(REQUEST, "bad-acks-then-nak", bad_acks_then_nak),
        Step::new(DISCOVER, "offer-no-mask", |s| no_mask(s, OFFER)),
        Step::new(REQUEST, "ack-no-mask", |s| no_mask(s, ACK)),
        Step::new(REQUEST, "nak-renewal", |s| vec![nak(s, server())]),
        Step::new(DISCOVER, "offer-oversized", |s| oversized(s, OFFER)),
        Step::new(REQUEST, "ack-oversized", |s| oversized(s, ACK)),
        Step::new(REQUEST, "nak-renewal-2", |s| vec![nak(s, server())]),
        Step::new(DISCOVER, "offer-infinite", |s| {
            vec![lease(s, OFFER, addr(250), u32::MAX)
                .option(option::DNS, &server().octets())
                .end()]
        }),
        Step::new(REQUEST, "ack-infinite", |s| {
            vec![lease(s, ACK, addr(250), u32::MAX)
                .option(option::DNS, &server().octets())
                .end()]
        }),
    ]
}

/// Shows the kernel's view once the good lease is in the lease file.
const MANIFEST: &str = r#"
[containers.show]
image = "busybox:1.35"
network_mode = "host"
depends_on = ["network-online"]
volumes = ["/run/berth:/hostrun:ro"]
command = ["sh", "-c", "until grep -q addr=192.168.77.250 /hostrun/netd/eth0.lease 2>/dev/null; do sleep 0.5; done; ip -4 addr show dev eth0 | sed 's/^/addr:/'; ip -4 route show | sed 's/^/route:/'; echo shown"]
"#;

fn step<'a>(seen: &'a [Seen], label: &str) -> &'a Seen {
    seen.iter()
        .find(|s| s.step == Some(label))
        .unwrap_or_else(|| panic!("step {label} never ran: {seen:?}"))
}

#[test]
fn hostile_replies_are_refused_and_only_the_good_lease_is_applied() {
    let dir = berth_tests::log_dir("dhcp-hostile");
    let rig = NetRig::new("hostile", 1, &dir).unwrap_or_else(|e| panic!("{e}"));
    let dhcp = ScriptedServer::start(&rig.path(), "br0", script(), dir.join("dhcp-server.log"))
        .unwrap_or_else(|e| panic!("{e}"));
    let machine = rig.boot(MANIFEST, &dir, MAC);
    let c = format!(
        "console: {}; server: {}",
        machine.console_log().display(),
        dir.join("dhcp-server.log").display()
    );
    let started = Instant::now();
    let bound = events::wait_count(
        &machine,
        "berth event=dhcp-bound iface=eth0 ",
        3,
        SCRIPT_TIMEOUT,
    );
    let final_ack = dhcp
        .wait_step("ack-infinite", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}; {c}"));
    eprintln!("script done {:?} after ready", started.elapsed());

    // Only the three leases that should bind did, in order, with what netd made of them.
    let got: Vec<(&str, &str, &str)> = bound
        .iter()
        .map(|b| {
            let field = |k| b.get(k).unwrap_or_default();
            (field("addr"), field("gateway"), field("lease"))
        })
        .collect();
    assert_eq!(
        got,
        [
            ("192.168.77.211/24", "", "16s"),
            ("192.168.77.212/24", "192.168.77.1", "12s"),
            ("192.168.77.250/24", "192.168.77.1", "4294967295s"),
        ],
        "classful /24 and no gateway without mask or router; {c}"
    );
    let oversized_routes = bound
        .get(1)
        .and_then(|b| b.get("routes"))
        .unwrap_or_default();
    assert_eq!(oversized_routes.split(',').count(), 64, "{c}");
    let capped = events::starting_with(
        &machine,
        "berth event=dhcp-option-refused iface=eth0 option=classless-routes ",
    );
    assert_eq!(
        capped.iter().map(|e| e.get("value")).collect::<Vec<_>>(),
        [Some("70")],
        "{c}"
    );
    let failed = events::starting_with(&machine, "berth event=dhcp-route-failed iface=eth0 ");
    assert_eq!(
        failed
            .iter()
            .map(|e| (e.get("to"), e.get("via")))
            .collect::<Vec<_>>(),
        [(Some("10.99.5.1/32"), Some("10.123.0.1"))],
        "the off-link gateway's route alone; {c}"
    );

    // netd asked for no address of a bogus OFFER.
    let requested: Vec<Option<Ipv4Addr>> = dhcp
        .seen()
        .iter()
        .filter(|s| s.kind == REQUEST && s.ciaddr.is_unspecified())
        .map(|s| s.requested)
        .collect();
    assert_eq!(
        requested,
        [addr(205), addr(211), addr(212), addr(250)].map(Some),
        "REQUESTs in SELECTING; {c}"
    );

    // Each bad reply to this client's transactions was refused, and said why.
    let refused: Vec<String> = events::starting_with(&machine, "berth event=dhcp-reply-refused ")
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e.get("reply").unwrap_or_default(),
                e.get("reason").unwrap_or_default()
            )
        })
        .collect();
    for (reply, reason) in [
        ("unknown", "200 bytes, shorter than the BOOTP header"),
        ("unknown", "option 1 at byte 249 runs past the end"),
        ("offer", "a lease time of 0"),
        ("unknown", "option 12 does not decode"),
        ("offer", "224.0.0.251 is not a host's unicast address"),
        ("offer", "subnet mask 255.0.255.0 is not a prefix"),
        ("ack", "server identifier 192.168.77.9, not 192.168.77.1"),
        ("ack", "a lease time of 0"),
        ("unknown", "option 6 at byte"),
        ("ack", "an ACK of 192.168.77.206, not of 192.168.77.205"),
        ("nak", "server identifier 192.168.77.9, not 192.168.77.1"),
    ] {
        assert!(
            refused
                .iter()
                .any(|r| r.starts_with(reply) && r.contains(reason)),
            "no refusal of {reply} `{reason}` in {refused:#?}; {c}"
        );
    }
    assert_eq!(refused.len(), 11, "{refused:#?}; {c}");
    let hostname = events::starting_with(
        &machine,
        "berth event=dhcp-option-refused iface=eth0 option=hostname ",
    );
    assert_eq!(hostname.len(), 1, "the oversized ACK's hostname; {c}");
    let mtu = events::starting_with(
        &machine,
        "berth event=dhcp-option-refused iface=eth0 option=mtu value=100 ",
    );
    assert_eq!(mtu.len(), 1, "the oversized ACK's MTU; {c}");
    assert_eq!(bound.get(1).and_then(|b| b.get("mtu")), Some(""), "{c}");

    // The client's pace, from the server's log.
    let seen = dhcp.seen();
    let discovers: Vec<Duration> = seen
        .iter()
        .filter(|s| s.kind == DISCOVER)
        .map(|s| s.at)
        .collect();
    for pair in discovers.windows(2) {
        if let [a, b] = pair {
            assert!(
                *b - *a >= MIN_DISCOVER_GAP,
                "DISCOVERs {:?} apart: {discovers:?}; {c}",
                *b - *a
            );
        }
    }
    let bad_offers = step(&seen, "bad-offers");
    let retransmit = step(&seen, "good-offer");
    assert!(
        retransmit.at - bad_offers.at >= Duration::from_secs(3),
        "no OFFER was taken from the bad burst; the DISCOVER was sent again after its timeout; {c}"
    );
    let no_mask_ack = step(&seen, "ack-no-mask");
    let renewal = step(&seen, "nak-renewal");
    assert_eq!(
        renewal.ciaddr,
        addr(211),
        "a renewal from the leased address; {c}"
    );
    let t1 = renewal.at - no_mask_ack.at;
    assert!(
        t1 >= Duration::from_secs(7) && t1 <= Duration::from_secs(10),
        "a T1 of 0 is ignored: renewal at half the 16 s lease, not {t1:?}; {c}"
    );

    let naks: Vec<String> = events::starting_with(&machine, "berth event=dhcp-nak iface=eth0 ")
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e.get("state").unwrap_or_default(),
                e.get("next_in").unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(naks, ["requesting 1s", "renewing 1s", "renewing 1s"], "{c}");

    // The infinite lease: no renewal, and no other message either.
    std::thread::sleep(QUIET_AFTER_INFINITE);
    let after: Vec<Seen> = dhcp
        .seen()
        .into_iter()
        .filter(|s| s.at > final_ack.at)
        .collect();
    assert!(
        after.is_empty(),
        "messages after the infinite lease: {after:?}; {c}"
    );

    // The kernel holds the good lease only: no address or route of the earlier ones.
    berth_tests::wait_seen(&machine, r"^show \| shown$");
    let out = events::output(&machine, "show");
    let inet: Vec<&String> = out.iter().filter(|l| l.contains(" inet ")).collect();
    assert_eq!(inet.len(), 1, "{out:?}; {c}");
    assert!(
        inet.iter().all(|l| l.contains("inet 192.168.77.250/24 ")),
        "{out:?}; {c}"
    );
    let routes: Vec<&String> = out.iter().filter(|l| l.starts_with("route:")).collect();
    assert!(
        routes
            .iter()
            .any(|l| l.starts_with("route:default via 192.168.77.1 dev eth0")),
        "{out:?}; {c}"
    );
    assert!(
        !routes.iter().any(|l| l.contains("10.99.")),
        "the oversized lease's routes went with it; {out:?}; {c}"
    );

    // netd never exited, and the host still works: the good address answers.
    assert!(
        events::starting_with(&machine, "berth event=service-exited service=netd").is_empty(),
        "{c}"
    );
    assert!(
        rig.answers_within("192.168.77.250", Duration::from_secs(20)),
        "the good address answers; {c}"
    );
    drop(dhcp);
}
