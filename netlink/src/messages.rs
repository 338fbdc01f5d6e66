//! The rtnetlink messages berth sends: links (up, down, MTU, bond ports, bridges, veths,
//! bonds, VLANs), addresses and routes. Each is what `ip` would send for the same change.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    BondMode, InfoBond, InfoData, InfoKind, InfoVeth, InfoVlan, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

pub fn set_up(index: u32) -> RouteNetlinkMessage {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    RouteNetlinkMessage::SetLink(link)
}

pub fn set_down(index: u32) -> RouteNetlinkMessage {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.header.change_mask = LinkFlags::Up;
    RouteNetlinkMessage::SetLink(link)
}

pub fn set_mtu(index: u32, mtu: u32) -> RouteNetlinkMessage {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.attributes.push(LinkAttribute::Mtu(mtu));
    RouteNetlinkMessage::SetLink(link)
}

/// Makes `index` a port of the bond or bridge `controller` (`ip link set I master C`).
pub fn set_controller(index: u32, controller: u32) -> RouteNetlinkMessage {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.attributes.push(LinkAttribute::Controller(controller));
    RouteNetlinkMessage::SetLink(link)
}

pub fn delete_link(index: u32) -> RouteNetlinkMessage {
    let mut link = LinkMessage::default();
    link.header.index = index;
    RouteNetlinkMessage::DelLink(link)
}

pub fn new_bridge(name: &str) -> RouteNetlinkMessage {
    let mut link = LinkMessage::default();
    link.attributes
        .push(LinkAttribute::IfName(name.to_string()));
    link.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Bridge,
        )]));
    RouteNetlinkMessage::NewLink(link)
}

/// A veth pair: `host` here, `peer` made directly in the network namespace of `pid`.
pub fn new_veth(host: &str, peer: &str, pid: i32) -> RouteNetlinkMessage {
    let mut peer_link = LinkMessage::default();
    peer_link
        .attributes
        .push(LinkAttribute::IfName(peer.to_string()));
    peer_link
        .attributes
        .push(LinkAttribute::NetNsPid(u32::try_from(pid).unwrap_or(0)));
    let mut link = LinkMessage::default();
    link.attributes
        .push(LinkAttribute::IfName(host.to_string()));
    link.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_link))),
    ]));
    RouteNetlinkMessage::NewLink(link)
}

/// A bond called `name` in `mode`, checking its ports' carrier every `miimon_ms`.
pub fn new_bond(name: &str, mode: BondMode, miimon_ms: u32) -> RouteNetlinkMessage {
    let mut link = LinkMessage::default();
    link.attributes
        .push(LinkAttribute::IfName(name.to_string()));
    link.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Bond),
        LinkInfo::Data(InfoData::Bond(vec![
            InfoBond::Mode(mode),
            InfoBond::MiiMon(miimon_ms),
        ])),
    ]));
    RouteNetlinkMessage::NewLink(link)
}

/// VLAN `id` on link `parent`, called `name`.
pub fn new_vlan(name: &str, parent: u32, id: u16) -> RouteNetlinkMessage {
    let mut link = LinkMessage::default();
    link.attributes
        .push(LinkAttribute::IfName(name.to_string()));
    link.attributes.push(LinkAttribute::Link(parent));
    link.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Vlan),
        LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(id)])),
    ]));
    RouteNetlinkMessage::NewLink(link)
}

/// `address/prefix` on link `index`, IPv4 (with its broadcast address below a /31) or IPv6.
pub fn new_address(index: u32, address: IpAddr, prefix: u8) -> RouteNetlinkMessage {
    let mut message = AddressMessage::default();
    message.header.family = match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    message.header.prefix_len = prefix;
    message.header.index = index;
    message.attributes.push(AddressAttribute::Address(address));
    message.attributes.push(AddressAttribute::Local(address));
    if let (IpAddr::V4(v4), true) = (address, prefix < 31) {
        let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
        message
            .attributes
            .push(AddressAttribute::Broadcast(Ipv4Addr::from(
                u32::from(v4) | host_bits,
            )));
    }
    RouteNetlinkMessage::NewAddress(message)
}

/// Removes an address as the kernel listed it.
pub fn delete_address(listed: AddressMessage) -> RouteNetlinkMessage {
    RouteNetlinkMessage::DelAddress(listed)
}

/// A static route to `to/prefix` out of link `index`, through `via` (unspecified: on-link),
/// with `metric` if given; `None` when `to` and `via` are not of one IP version.
pub fn new_route(
    index: u32,
    to: IpAddr,
    prefix: u8,
    via: IpAddr,
    metric: Option<u32>,
) -> Option<RouteNetlinkMessage> {
    let (family, destination, gateway) = match (to, via) {
        (IpAddr::V4(to), IpAddr::V4(via)) => (
            AddressFamily::Inet,
            RouteAddress::Inet(to),
            RouteAddress::Inet(via),
        ),
        (IpAddr::V6(to), IpAddr::V6(via)) => (
            AddressFamily::Inet6,
            RouteAddress::Inet6(to),
            RouteAddress::Inet6(via),
        ),
        _ => return None,
    };
    let mut route = RouteMessage::default();
    route.header = RouteHeader {
        address_family: family,
        destination_prefix_length: prefix,
        table: RouteHeader::RT_TABLE_MAIN,
        protocol: RouteProtocol::Static,
        scope: RouteScope::Universe,
        kind: RouteType::Unicast,
        ..RouteHeader::default()
    };
    route
        .attributes
        .push(RouteAttribute::Destination(destination));
    route.attributes.push(RouteAttribute::Oif(index));
    if !via.is_unspecified() {
        route.attributes.push(RouteAttribute::Gateway(gateway));
    }
    if let Some(metric) = metric {
        route.attributes.push(RouteAttribute::Priority(metric));
    }
    Some(RouteNetlinkMessage::NewRoute(route))
}

pub fn new_default_route(index: u32, gateway: Ipv4Addr) -> RouteNetlinkMessage {
    let mut route = RouteMessage::default();
    route.header = RouteHeader {
        address_family: AddressFamily::Inet,
        table: RouteHeader::RT_TABLE_MAIN,
        protocol: RouteProtocol::Boot,
        scope: RouteScope::Universe,
        kind: RouteType::Unicast,
        ..RouteHeader::default()
    };
    route
        .attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
    route.attributes.push(RouteAttribute::Oif(index));
    RouteNetlinkMessage::NewRoute(route)
}

#[cfg(test)]
#[expect(clippy::panic, reason = "tests")]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn address_attributes(message: RouteNetlinkMessage) -> (AddressFamily, Vec<AddressAttribute>) {
        match message {
            RouteNetlinkMessage::NewAddress(m) => (m.header.family, m.attributes),
            other => panic!("not an address: {other:?}"),
        }
    }

    #[test]
    fn an_ipv4_address_carries_its_broadcast_below_a_31() {
        let (family, attributes) =
            address_attributes(new_address(3, Ipv4Addr::new(10, 0, 2, 15).into(), 24));
        assert_eq!(family, AddressFamily::Inet);
        assert!(attributes.contains(&AddressAttribute::Broadcast(Ipv4Addr::new(10, 0, 2, 255))));
        let (_, point_to_point) =
            address_attributes(new_address(3, Ipv4Addr::new(10, 0, 2, 15).into(), 32));
        assert!(!point_to_point
            .iter()
            .any(|a| matches!(a, AddressAttribute::Broadcast(_))));
        let (family, v6) = address_attributes(new_address(1, Ipv6Addr::LOCALHOST.into(), 128));
        assert_eq!(family, AddressFamily::Inet6);
        assert_eq!(v6.len(), 2);
    }

    #[test]
    fn a_route_is_on_link_without_a_gateway_and_refused_across_families() {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let Some(RouteNetlinkMessage::NewRoute(on_link)) =
            new_route(2, Ipv4Addr::new(10, 1, 0, 0).into(), 16, any, Some(50))
        else {
            panic!("no route");
        };
        assert!(!on_link
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Gateway(_))));
        assert!(on_link.attributes.contains(&RouteAttribute::Priority(50)));
        assert_eq!(on_link.header.destination_prefix_length, 16);
        assert!(new_route(2, any, 0, Ipv6Addr::LOCALHOST.into(), None).is_none());
    }
}
