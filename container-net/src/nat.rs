//! The nf_tables table `ip berth`: outbound masquerade for the bridge's subnet, and DNAT for
//! each published port. The whole table is replaced in one transaction whenever the set of
//! running containers changes, so a restart never leaves a rule behind and no half-made table
//! is ever seen by a packet.

use std::net::Ipv4Addr;

use crate::pool::Subnet;
use berth_netlink::nft::{Batch, CmpOp, Expr, Hook, MetaKey, PayloadBase, Reg};

pub const TABLE: &str = "berth";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// A published port: `host_ip:host_port` (every host address when `host_ip` is None) to the
/// container's `container:container_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub protocol: Protocol,
    pub container: Ipv4Addr,
    pub container_port: u16,
}

/// An interface name as nf_tables compares it: NUL-padded to IFNAMSIZ.
fn ifname(name: &str) -> Vec<u8> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.resize(16, 0);
    bytes
}

fn source_in(network: Ipv4Addr, mask: Ipv4Addr) -> [Expr; 3] {
    [
        Expr::Payload {
            base: PayloadBase::Network,
            offset: 12,
            len: 4,
            into: Reg::R1,
        },
        Expr::Bitwise {
            reg: Reg::R1,
            mask: mask.octets().to_vec(),
        },
        Expr::Cmp(Reg::R1, CmpOp::Eq, network.octets().to_vec()),
    ]
}

fn destination_is(address: Ipv4Addr) -> [Expr; 2] {
    [
        Expr::Payload {
            base: PayloadBase::Network,
            offset: 16,
            len: 4,
            into: Reg::R1,
        },
        Expr::Cmp(Reg::R1, CmpOp::Eq, address.octets().to_vec()),
    ]
}

fn interface(key: MetaKey, op: CmpOp, name: &str) -> [Expr; 2] {
    [
        Expr::Meta(key, Reg::R1),
        Expr::Cmp(Reg::R1, op, ifname(name)),
    ]
}

fn dnat(port: &Published) -> [Expr; 7] {
    [
        Expr::Meta(MetaKey::L4Proto, Reg::R1),
        Expr::Cmp(Reg::R1, CmpOp::Eq, vec![port.protocol.number()]),
        Expr::Payload {
            base: PayloadBase::Transport,
            offset: 2,
            len: 2,
            into: Reg::R1,
        },
        Expr::Cmp(Reg::R1, CmpOp::Eq, port.host_port.to_be_bytes().to_vec()),
        Expr::Immediate(Reg::R1, port.container.octets().to_vec()),
        Expr::Immediate(Reg::R2, port.container_port.to_be_bytes().to_vec()),
        Expr::Dnat {
            addr: Reg::R1,
            port: Reg::R2,
        },
    ]
}

/// The table's rules: (chain, expressions).
pub fn rules(
    bridge: &str,
    subnet: Subnet,
    published: &[Published],
) -> Vec<(&'static str, Vec<Expr>)> {
    let mut rules = Vec::new();
    // Containers reach the world with the host's address.
    let mut outbound: Vec<Expr> = source_in(subnet.network, subnet.mask()).into();
    outbound.extend(interface(MetaKey::OifName, CmpOp::Neq, bridge));
    outbound.push(Expr::Masquerade);
    rules.push(("postrouting", outbound));
    // The host's own connections to a port published on 127.0.0.1 reach the container with
    // the bridge's address as their source, which the container can answer.
    let mut from_loopback: Vec<Expr> =
        source_in(Ipv4Addr::new(127, 0, 0, 0), Ipv4Addr::new(255, 0, 0, 0)).into();
    from_loopback.extend(interface(MetaKey::OifName, CmpOp::Eq, bridge));
    from_loopback.push(Expr::Masquerade);
    rules.push(("postrouting", from_loopback));
    for port in published {
        let mut inbound: Vec<Expr> = interface(MetaKey::IifName, CmpOp::Neq, bridge).into();
        if let Some(host_ip) = port.host_ip {
            inbound.extend(destination_is(host_ip));
        }
        inbound.extend(dnat(port));
        rules.push(("prerouting", inbound));
        let mut local: Vec<Expr> =
            destination_is(port.host_ip.unwrap_or(Ipv4Addr::LOCALHOST)).into();
        local.extend(dnat(port));
        rules.push(("output", local));
    }
    rules
}

/// Replaces the table with masquerade for `subnet` (traffic leaving by any link but `bridge`)
/// and DNAT for `published`.
pub fn apply(bridge: &str, subnet: Subnet, published: &[Published]) -> std::io::Result<()> {
    let mut batch = Batch::new();
    // Add, delete, add: the delete cannot fail on a missing table, and the one transaction
    // leaves no moment without the rules.
    batch.add_table(TABLE);
    batch.delete_table(TABLE);
    batch.add_table(TABLE);
    batch.add_nat_chain(TABLE, "prerouting", Hook::Prerouting, -100);
    batch.add_nat_chain(TABLE, "output", Hook::Output, -100);
    batch.add_nat_chain(TABLE, "postrouting", Hook::Postrouting, 100);
    for (chain, expressions) in rules(bridge, subnet, published) {
        batch.add_rule(TABLE, chain, &expressions);
    }
    batch.send()
}

/// Rules per chain in the table (none when there is no table): for state dumps and tests.
pub fn rule_counts() -> std::io::Result<Vec<(String, usize)>> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for chain in berth_netlink::nft::rule_chains(TABLE)? {
        match counts.iter_mut().find(|(c, _)| *c == chain) {
            Some((_, n)) => *n += 1,
            None => counts.push((chain, 1)),
        }
    }
    Ok(counts)
}
