//! The netlink operations netd needs, over berth's one synchronous netlink layer
//! (`berth-netlink`, which init's container networks use too). Each operation opens its own
//! route-netlink socket: netd's DHCP clients run side by side, and the kernel answers these
//! requests while they are sent, so nothing here waits on another party.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use berth_manifest::BondMode;
use berth_netlink::messages;
use berth_netlink::rtnl::{Rtnl, RtnlError};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{self as nl_link, LinkAttribute, LinkLayerType};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink: {0}")]
    Rtnl(#[from] RtnlError),
    #[error("cannot wait for SIGTERM: {0}")]
    Signal(#[source] std::io::Error),
    #[error("no link named {0}")]
    NoSuchLink(String),
    #[error("link {0} was created but is not there")]
    Vanished(String),
    #[error("route to {to} via {via}: the two are not of one IP version")]
    Mixed { to: String, via: String },
}

/// An Ethernet link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    /// The kernel driver, from sysfs (`virtio_net`); empty for links software made.
    pub driver: String,
    /// The bond (or bridge) this link is a member of.
    pub controller: Option<u32>,
    /// A bond or VLAN: made by netd for the manifest, or by the kernel itself (a built-in
    /// bonding driver makes `bond0` at boot).
    pub virtual_link: bool,
}

fn bond_mode(mode: BondMode) -> nl_link::BondMode {
    match mode {
        BondMode::BalanceRr => nl_link::BondMode::BalanceRr,
        BondMode::ActiveBackup => nl_link::BondMode::ActiveBackup,
        BondMode::BalanceXor => nl_link::BondMode::BalanceXor,
        BondMode::Broadcast => nl_link::BondMode::Broadcast,
        BondMode::Ieee8023ad => nl_link::BondMode::Ieee8023Ad,
        BondMode::BalanceTlb => nl_link::BondMode::BalanceTlb,
        BondMode::BalanceAlb => nl_link::BondMode::BalanceAlb,
    }
}

/// netd's netlink operations; each opens its own socket (see the module doc).
#[derive(Debug, Clone, Copy, Default)]
pub struct Netlink;

impl Netlink {
    /// Checks that a route-netlink socket can be opened at all, so that a kernel without
    /// one fails netd at its start rather than at its first lease.
    pub fn connect() -> Result<Netlink, NetlinkError> {
        Rtnl::open()?;
        Ok(Netlink)
    }

    fn socket() -> Result<Rtnl, NetlinkError> {
        Ok(Rtnl::open()?)
    }

    pub fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        Ok(Self::socket()?.change(messages::set_up(index), &format!("set link {index} up"))?)
    }

    pub fn set_down(&self, index: u32) -> Result<(), NetlinkError> {
        Ok(Self::socket()?.change(messages::set_down(index), &format!("set link {index} down"))?)
    }

    /// Makes `member` a port of the bond `controller` (`ip link set M master C`).
    pub fn set_controller(&self, member: u32, controller: u32) -> Result<(), NetlinkError> {
        Ok(Self::socket()?.change(
            messages::set_controller(member, controller),
            &format!("add link {member} to bond {controller}"),
        )?)
    }

    /// Creates a bond unless one of that name is there (netd restarted); returns its index.
    pub fn create_bond(
        &self,
        name: &str,
        mode: BondMode,
        miimon_ms: u32,
    ) -> Result<u32, NetlinkError> {
        let mut rtnl = Self::socket()?;
        if let Some(index) = rtnl.index_of(name)? {
            return Ok(index);
        }
        rtnl.create(
            messages::new_bond(name, bond_mode(mode), miimon_ms),
            &format!("create bond {name}"),
        )?;
        rtnl.index_of(name)?
            .ok_or_else(|| NetlinkError::Vanished(name.to_string()))
    }

    /// Creates a VLAN on `parent` unless one of that name is there; returns its index.
    pub fn create_vlan(&self, name: &str, parent: u32, id: u16) -> Result<u32, NetlinkError> {
        let mut rtnl = Self::socket()?;
        if let Some(index) = rtnl.index_of(name)? {
            return Ok(index);
        }
        rtnl.create(
            messages::new_vlan(name, parent, id),
            &format!("create vlan {name}"),
        )?;
        rtnl.index_of(name)?
            .ok_or_else(|| NetlinkError::Vanished(name.to_string()))
    }

    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        Ok(Self::socket()?.change(
            messages::set_mtu(index, mtu),
            &format!("set link {index} mtu {mtu}"),
        )?)
    }

    /// Adds `addr/prefix` to link `index` unless it is there already.
    pub fn add_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        Ok(Self::socket()?.ensure(
            messages::new_address(index, addr, prefix),
            &format!("add {addr}/{prefix} to link {index}"),
        )?)
    }

    pub fn del_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), NetlinkError> {
        let mut rtnl = Self::socket()?;
        for listed in rtnl.addresses(index)? {
            let matches = listed.header.prefix_len == prefix
                && listed
                    .attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Address(a) if *a == addr));
            if matches {
                rtnl.change(
                    messages::delete_address(listed),
                    &format!("remove {addr}/{prefix}"),
                )?;
            }
        }
        Ok(())
    }

    /// A static route over link `index`, IPv4 or IPv6; `via` unspecified means on-link.
    pub fn add_route(
        &self,
        index: u32,
        to: IpAddr,
        prefix: u8,
        via: IpAddr,
        metric: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let message = messages::new_route(index, to, prefix, via, metric).ok_or_else(|| {
            NetlinkError::Mixed {
                to: to.to_string(),
                via: via.to_string(),
            }
        })?;
        Ok(Self::socket()?.ensure(message, &format!("add route {to}/{prefix} via {via}"))?)
    }

    /// `lo` up, with 127.0.0.1/8 and ::1/128.
    pub fn loopback_up(&self) -> Result<(), NetlinkError> {
        let index = self.index_of("lo")?.unwrap_or(1);
        self.set_up(index)?;
        self.add_address(index, IpAddr::V4(Ipv4Addr::LOCALHOST), 8)?;
        // ::1 is refused when IPv6 is off; lo still works for IPv4.
        let _ = self.add_address(index, IpAddr::V6(Ipv6Addr::LOCALHOST), 128);
        Ok(())
    }

    pub fn index_of(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        Ok(Self::socket()?.index_of(name)?)
    }

    /// Every Ethernet link but loopback and the containers' bridges and veths.
    pub fn ethernet_links(&self) -> Result<Vec<Link>, NetlinkError> {
        let mut found = Vec::new();
        for message in Self::socket()?.links()? {
            if message.header.link_layer_type != LinkLayerType::Ether {
                continue;
            }
            let mut name = String::new();
            let mut mac = Vec::new();
            let mut controller = None;
            let mut kind = None;
            for attribute in &message.attributes {
                match attribute {
                    LinkAttribute::IfName(n) => name = n.clone(),
                    LinkAttribute::Address(a) => mac = a.clone(),
                    LinkAttribute::Controller(c) => controller = Some(*c),
                    LinkAttribute::LinkInfo(infos) => {
                        kind = infos.iter().find_map(|info| match info {
                            nl_link::LinkInfo::Kind(kind) => Some(kind.clone()),
                            _ => None,
                        });
                    }
                    _ => {}
                }
            }
            // The containers' bridge and veths are init's (berth-container-net).
            if matches!(
                kind,
                Some(nl_link::InfoKind::Veth | nl_link::InfoKind::Bridge)
            ) {
                continue;
            }
            let virtual_link = matches!(
                kind,
                Some(nl_link::InfoKind::Bond | nl_link::InfoKind::Vlan)
            );
            let driver = std::fs::read_link(format!("/sys/class/net/{name}/device/driver"))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            found.push(Link {
                index: message.header.index,
                name,
                mac,
                driver,
                controller,
                virtual_link,
            });
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }
}
