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
}

/// One `[[network.interface]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    #[serde(rename = "match")]
    pub matcher: InterfaceMatch,
    /// DHCPv4 on this link.
    #[serde(default)]
    pub dhcp: bool,
    #[serde(default)]
    pub addresses: Vec<Cidr>,
    pub gateway: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    #[serde(default)]
    pub routes: Vec<Route>,
    pub mtu: Option<u32>,
    /// Whether the network is online only once this link is configured.
    #[serde(default = "yes")]
    pub required: bool,
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
