//! rtnetlink messages for the few link, address and route changes container networks need.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
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

pub fn new_address(index: u32, address: Ipv4Addr, prefix: u8) -> RouteNetlinkMessage {
    let mut message = AddressMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.prefix_len = prefix;
    message.header.index = index;
    message
        .attributes
        .push(AddressAttribute::Local(IpAddr::V4(address)));
    message
        .attributes
        .push(AddressAttribute::Address(IpAddr::V4(address)));
    RouteNetlinkMessage::NewAddress(message)
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
