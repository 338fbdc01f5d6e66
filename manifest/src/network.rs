//! `[network]`: how netd configures the host's links. Without the section, every Ethernet
//! link gets DHCP.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// The pseudo-dependency a container names to wait until the network is online.
pub const NETWORK_ONLINE: &str = "network-online";

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Links to configure, each found by name, MAC address or driver.
    #[serde(default)]
    pub interface: Vec<Interface>,
    /// Name servers, merged with those DHCP gives unless `dns_from_dhcp = false`.
    #[serde(default)]
    pub dns: Vec<IpAddr>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default = "yes")]
    pub dns_from_dhcp: bool,
    /// The bridge containers in bridge mode share.
    #[serde(default)]
    pub bridge: BridgeSettings,
}

/// `[network.bridge]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSettings {
    #[serde(default = "default_bridge_name")]
    pub name: String,
    /// IPv4; the bridge takes the first address, containers the next ones.
    #[serde(default = "default_bridge_subnet", deserialize_with = "bridge_subnet")]
    pub subnet: Cidr,
}

impl Default for BridgeSettings {
    fn default() -> BridgeSettings {
        BridgeSettings {
            name: default_bridge_name(),
            subnet: default_bridge_subnet(),
        }
    }
}

fn default_bridge_name() -> String {
    "berth0".to_string()
}

/// Clear of QEMU's user network (10.0.2.0/24), Docker's 172.17.0.0/16 and the ranges cloud
/// VPCs hand out by default (10.0.0.0/8, 172.31.0.0/16 on AWS, 192.168.0.0/16).
fn default_bridge_subnet() -> Cidr {
    Cidr {
        addr: IpAddr::V4(Ipv4Addr::new(172, 30, 0, 0)),
        prefix: 16,
    }
}

fn bridge_subnet<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Cidr, D::Error> {
    let cidr = Cidr::deserialize(deserializer)?;
    let IpAddr::V4(addr) = cidr.addr else {
        return Err(de::Error::custom(format!(
            "`{cidr}`: the bridge's subnet is IPv4"
        )));
    };
    if cidr.prefix > 30 {
        return Err(de::Error::custom(format!(
            "`{cidr}`: too small for a bridge and a container (at most /30)"
        )));
    }
    let host_bits = u32::MAX.checked_shr(u32::from(cidr.prefix)).unwrap_or(0);
    if u32::from(addr) & host_bits != 0 {
        return Err(de::Error::custom(format!(
            "`{cidr}` is not a network address (its host bits are set)"
        )));
    }
    Ok(cidr)
}

/// One `[[network.interface]]`: an existing link found by `match`, or a VLAN or bond that netd
/// creates, and what to configure on it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawInterface")]
pub struct Interface {
    pub link: LinkSelector,
    /// DHCPv4 on this link.
    pub dhcp: bool,
    pub addresses: Vec<Cidr>,
    pub gateway: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    pub routes: Vec<Route>,
    pub mtu: Option<u32>,
    /// Whether the network is online only once this link is configured.
    pub required: bool,
}

impl Interface {
    /// DHCP on the links `link` selects, nothing else: what every Ethernet link gets when the
    /// manifest has no `[network]` section.
    pub fn dhcp(link: LinkSelector) -> Interface {
        Interface {
            link,
            dhcp: true,
            addresses: Vec::new(),
            gateway: None,
            gateway6: None,
            routes: Vec::new(),
            mtu: None,
            required: true,
        }
    }

    /// The name of the link netd creates for this entry, if it creates one.
    pub fn created_name(&self) -> Option<&str> {
        match &self.link {
            LinkSelector::Match(_) => None,
            LinkSelector::Vlan(vlan) => Some(&vlan.name),
            LinkSelector::Bond(bond) => Some(&bond.name),
        }
    }
}

/// Which link an entry configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkSelector {
    /// Links the kernel made, found by name, MAC address or driver.
    Match(InterfaceMatch),
    /// An 802.1Q VLAN that netd creates on a parent link.
    Vlan(Vlan),
    /// A bond that netd creates from member links.
    Bond(Bond),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vlan {
    /// `name` in the entry, else `<parent>.<id>`, as `ip link` and systemd name them.
    pub name: String,
    /// A link by name: one the kernel made or a bond of this manifest.
    pub parent: String,
    pub id: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bond {
    pub name: String,
    /// Link names or globs (`eth*`); a member gets no configuration of its own.
    pub members: Vec<String>,
    pub mode: BondMode,
    /// How often the kernel checks each member's carrier, in ms (the bonding driver's
    /// `miimon`); 100 unless given, since with 0 a failed member is never noticed.
    pub miimon_ms: u32,
}

/// The bonding driver's modes, by the names `ip link` and the kernel's documentation use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BondMode {
    BalanceRr,
    #[default]
    ActiveBackup,
    BalanceXor,
    Broadcast,
    #[serde(rename = "802.3ad")]
    Ieee8023ad,
    BalanceTlb,
    BalanceAlb,
}

impl BondMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BondMode::BalanceRr => "balance-rr",
            BondMode::ActiveBackup => "active-backup",
            BondMode::BalanceXor => "balance-xor",
            BondMode::Broadcast => "broadcast",
            BondMode::Ieee8023ad => "802.3ad",
            BondMode::BalanceTlb => "balance-tlb",
            BondMode::BalanceAlb => "balance-alb",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVlan {
    parent: String,
    id: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBond {
    members: Vec<String>,
    #[serde(default)]
    mode: BondMode,
    miimon: Option<u32>,
}

/// `[[network.interface]]` as written; [`Interface`] once its link is known to be one thing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    #[serde(rename = "match")]
    matcher: Option<InterfaceMatch>,
    /// The name of a created link (VLAN or bond).
    name: Option<String>,
    vlan: Option<RawVlan>,
    bond: Option<RawBond>,
    #[serde(default)]
    dhcp: bool,
    #[serde(default)]
    addresses: Vec<Cidr>,
    gateway: Option<Ipv4Addr>,
    gateway6: Option<Ipv6Addr>,
    #[serde(default)]
    routes: Vec<Route>,
    mtu: Option<u32>,
    #[serde(default = "yes")]
    required: bool,
}

/// The kernel's rule for link names: 1 to 15 bytes, no `/`, no whitespace, not `.` or `..`.
fn link_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.contains(['/', ':'])
        && !name.chars().any(char::is_whitespace);
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a link name: 1 to 15 characters, no `/`, `:` or spaces"
        ))
    }
}

impl TryFrom<RawInterface> for Interface {
    type Error = String;

    fn try_from(raw: RawInterface) -> Result<Interface, String> {
        let link = match (raw.matcher, raw.vlan, raw.bond) {
            (Some(matcher), None, None) => {
                if raw.name.is_some() {
                    return Err(
                        "`name` names a VLAN or bond that netd creates; an existing \
                                link is found with `match = { name = \"...\" }`"
                            .to_string(),
                    );
                }
                LinkSelector::Match(matcher)
            }
            (None, Some(vlan), None) => {
                if !(1..=4094).contains(&vlan.id) {
                    return Err(format!("vlan.id {} is not between 1 and 4094", vlan.id));
                }
                link_name(&vlan.parent)?;
                let name = raw
                    .name
                    .unwrap_or_else(|| format!("{}.{}", vlan.parent, vlan.id));
                link_name(&name)?;
                LinkSelector::Vlan(Vlan {
                    name,
                    parent: vlan.parent,
                    id: vlan.id,
                })
            }
            (None, None, Some(bond)) => {
                let name = raw
                    .name
                    .ok_or("a bond needs a `name` (such as \"bond0\")")?;
                link_name(&name)?;
                if bond.members.is_empty() {
                    return Err("bond.members is empty: name the links to bond".to_string());
                }
                LinkSelector::Bond(Bond {
                    name,
                    members: bond.members,
                    mode: bond.mode,
                    miimon_ms: bond.miimon.unwrap_or(100),
                })
            }
            (None, None, None) => {
                return Err("give `match` (an existing link), `vlan` or `bond`".to_string())
            }
            _ => {
                return Err(
                    "`match`, `vlan` and `bond` exclude each other: give exactly one".to_string(),
                )
            }
        };
        Ok(Interface {
            link,
            dhcp: raw.dhcp,
            addresses: raw.addresses,
            gateway: raw.gateway,
            gateway6: raw.gateway6,
            routes: raw.routes,
            mtu: raw.mtu,
            required: raw.required,
        })
    }
}

/// Which link an entry configures: every given criterion must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceMatch {
    /// A name or a glob (`eth*`).
    pub name: Option<String>,
    pub mac: Option<MacAddress>,
    /// The kernel driver (`virtio_net`, `e1000`).
    pub driver: Option<String>,
}

/// A MAC address, `52:54:00:12:34:56`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddress(pub [u8; 6]);

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl<'de> Deserialize<'de> for MacAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes: Vec<u8> = text
            .split(':')
            .map(|part| {
                u8::from_str_radix(part, 16)
                    .ok()
                    .filter(|_| part.len() == 2)
            })
            .collect::<Option<Vec<u8>>>()
            .unwrap_or_default();
        <[u8; 6]>::try_from(bytes).map(MacAddress).map_err(|_| {
            de::Error::custom(format!(
                "`{text}` is not a MAC address such as 52:54:00:12:34:56"
            ))
        })
    }
}

/// An address with its prefix length, `192.0.2.10/24` or `2001:db8::10/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let invalid = || format!("`{text}` is not an address with a prefix, such as 192.0.2.10/24");
        let (addr, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let addr: IpAddr = addr.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("`{text}`: the prefix is longer than {max}"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Cidr::parse(&String::deserialize(deserializer)?).map_err(de::Error::custom)
    }
}

/// One static route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub to: Cidr,
    pub via: IpAddr,
    pub metric: Option<u32>,
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert_eq!(Cidr::parse("192.0.2.10/24").unwrap().prefix, 24);
        assert!(Cidr::parse("2001:db8::10/64").unwrap().addr.is_ipv6());
        for bad in ["192.0.2.10", "192.0.2.10/33", "x/24", "::1/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
