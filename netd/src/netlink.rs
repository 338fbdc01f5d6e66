//! The netlink operations netd needs, over `rtnetlink`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use berth_manifest::BondMode;
use futures::TryStreamExt;
use netlink_packet_route::link::{self as nl_link, LinkAttribute, LinkLayerType};
use rtnetlink::{Handle, LinkBond, LinkUnspec, LinkVlan, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("netlink: {what}: {source}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
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

#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

/// EEXIST from the kernel: the address or route is there already, which is what was wanted.
fn exists(err: &rtnetlink::Error) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(message) if message.raw_code() == -nix::libc::EEXIST)
}

impl Netlink {
    pub fn connect() -> Result<Netlink, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    fn failed(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
        let what = what.into();
        move |source| NetlinkError::Request { what, source }
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(Self::failed(format!("set link {index} up")))
    }

    pub async fn set_down(&self, index: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).down().build())
            .execute()
            .await
            .map_err(Self::failed(format!("set link {index} down")))
    }

    /// Makes `member` a port of the bond `controller` (`ip link set M master C`).
    pub async fn set_controller(&self, member: u32, controller: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(member)
                    .controller(controller)
                    .build(),
            )
            .execute()
            .await
            .map_err(Self::failed(format!(
                "add link {member} to bond {controller}"
            )))
    }

    /// Creates a bond unless one of that name is there (netd restarted); returns its index.
    pub async fn create_bond(
        &self,
        name: &str,
        mode: BondMode,
        miimon_ms: u32,
    ) -> Result<u32, NetlinkError> {
        if let Some(index) = self.index_of(name).await? {
            return Ok(index);
        }
        self.handle
            .link()
            .add(
                LinkBond::new(name)
                    .mode(bond_mode(mode))
                    .miimon(miimon_ms)
                    .build(),
            )
            .execute()
            .await
            .map_err(Self::failed(format!("create bond {name}")))?;
        self.index_of(name)
            .await?
            .ok_or_else(|| NetlinkError::Vanished(name.to_string()))
    }

    /// Creates a VLAN on `parent` unless one of that name is there; returns its index.
    pub async fn create_vlan(&self, name: &str, parent: u32, id: u16) -> Result<u32, NetlinkError> {
        if let Some(index) = self.index_of(name).await? {
            return Ok(index);
        }
        self.handle
            .link()
            .add(LinkVlan::new(name, parent, id).build())
            .execute()
            .await
            .map_err(Self::failed(format!("create vlan {name}")))?;
        self.index_of(name)
            .await?
            .ok_or_else(|| NetlinkError::Vanished(name.to_string()))
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(Self::failed(format!("set link {index} mtu {mtu}")))
    }

    pub async fn add_address(
        &self,
        index: u32,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        match self
            .handle
            .address()
            .add(index, addr, prefix)
            .execute()
            .await
        {
            Err(err) if !exists(&err) => {
                Err(Self::failed(format!("add {addr}/{prefix} to link {index}"))(err))
            }
            _ => Ok(()),
        }
    }

    pub async fn del_address(
        &self,
        index: u32,
        addr: IpAddr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let mut found = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(message) = found
            .try_next()
            .await
            .map_err(Self::failed("list addresses"))?
        {
            let matches = message.attributes.iter().any(|a| {
                matches!(a, netlink_packet_route::address::AddressAttribute::Address(a) if *a == addr)
            }) && message.header.prefix_len == prefix;
            if matches {
                self.handle
                    .address()
                    .del(message)
                    .execute()
                    .await
                    .map_err(Self::failed(format!("remove {addr}/{prefix}")))?;
            }
        }
        Ok(())
    }

    /// A static route over link `index`, IPv4 or IPv6; `via` unspecified means on-link.
    pub async fn add_route(
        &self,
        index: u32,
        to: IpAddr,
        prefix: u8,
        via: IpAddr,
        metric: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let message = match (to, via) {
            (IpAddr::V4(to), IpAddr::V4(via)) => {
                let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(to, prefix)
                    .output_interface(index);
                if !via.is_unspecified() {
                    builder = builder.gateway(via);
                }
                if let Some(metric) = metric {
                    builder = builder.priority(metric);
                }
                builder.build()
            }
            (IpAddr::V6(to), IpAddr::V6(via)) => {
                let mut builder = RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(to, prefix)
                    .output_interface(index);
                if !via.is_unspecified() {
                    builder = builder.gateway(via);
                }
                if let Some(metric) = metric {
                    builder = builder.priority(metric);
                }
                builder.build()
            }
            _ => {
                return Err(NetlinkError::Mixed {
                    to: to.to_string(),
                    via: via.to_string(),
                })
            }
        };
        match self.handle.route().add(message).execute().await {
            Err(err) if !exists(&err) => Err(Self::failed(format!(
                "add route {to}/{prefix} via {via}"
            ))(err)),
            _ => Ok(()),
        }
    }

    /// `lo` up, with 127.0.0.1/8 and ::1/128.
    pub async fn loopback_up(&self) -> Result<(), NetlinkError> {
        let index = self.index_of("lo").await?.unwrap_or(1);
        self.set_up(index).await?;
        self.add_address(index, IpAddr::V4(Ipv4Addr::LOCALHOST), 8)
            .await?;
        // ::1 is refused when IPv6 is off; lo still works for IPv4.
        let _ = self
            .add_address(index, IpAddr::V6(Ipv6Addr::LOCALHOST), 128)
            .await;
        Ok(())
    }

    pub async fn index_of(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link.map(|l| l.header.index)),
            // The kernel answers a lookup by a name it does not know with ENODEV.
            Err(rtnetlink::Error::NetlinkError(message))
                if message.raw_code() == -nix::libc::ENODEV =>
            {
                Ok(None)
            }
            Err(err) => Err(Self::failed(format!("find link {name}"))(err)),
        }
    }

    /// Every Ethernet link but loopback and the containers' bridges and veths.
    pub async fn ethernet_links(&self) -> Result<Vec<Link>, NetlinkError> {
        let mut found = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(message) = links.try_next().await.map_err(Self::failed("list links"))? {
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
