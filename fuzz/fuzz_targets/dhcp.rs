//! netd's DHCP client on a packet from the network: `berth_netd::dhcp::decode` (dhcproto's
//! decoder behind netd's guard), then for an ACK `Lease::from_ack` and
//! `Lease::drop_invalid_names`, as `Client::request` does. Besides not panicking: the lease
//! is consistent (T1 <= T2 <= lease time, prefixes fit IPv4), the names it keeps are DNS
//! names, and the lease file netd writes for it reads back as the same lease.
#![no_main]

#[path = "caught.rs"]
mod caught;

use std::time::Duration;

use berth_netd::fuzzing::{decode, decode_saved, encode_saved, is_dns_name};
use berth_netd::Lease;
use dhcproto::v4::{DhcpOption, MessageType, OptionCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // netd catches dhcproto's panics (`decode`).
    caught::leave_caught_panics_to_the_code("/dhcproto-");
    let Some(message) = decode(data) else {
        return;
    };
    let kind = match message.opts().get(OptionCode::MessageType) {
        Some(DhcpOption::MessageType(kind)) => *kind,
        _ => return,
    };
    if kind != MessageType::Ack {
        return;
    }
    let Ok(mut lease) = Lease::from_ack(&message) else {
        return;
    };
    lease.drop_invalid_names();
    assert!(
        lease.t1 <= lease.t2 && lease.t2 <= lease.lease_time,
        "{lease:?}"
    );
    assert!(lease.prefix <= 32);
    for (_, prefix, _) in lease.routes() {
        assert!(prefix <= 32, "{lease:?}");
    }
    if let Some(domain) = &lease.domain {
        assert!(is_dns_name(domain, true), "{domain:?}");
    }
    if let Some(hostname) = &lease.hostname {
        assert!(is_dns_name(hostname, false), "{hostname:?}");
    }
    let acquired = Duration::from_millis(1234);
    let saved = encode_saved(&lease, acquired);
    assert_eq!(decode_saved(&saved), Some((lease, acquired)), "{saved}");
});
