//! Addresses for the containers on the bridge: one per container, kept for it across its
//! restarts, the lowest free one first. The bridge itself has the subnet's first address.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// An IPv4 subnet, `172.30.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn mask(self) -> Ipv4Addr {
        let bits = u32::MAX
            .checked_shl(32 - u32::from(self.prefix.min(32)))
            .unwrap_or(0);
        Ipv4Addr::from(bits)
    }

    /// The bridge's address: the subnet's first.
    pub fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | 1)
    }

    fn broadcast(self) -> u32 {
        u32::from(self.network) | !u32::from(self.mask())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no address left in {network}/{prefix} for container {name}")]
pub struct Exhausted {
    network: Ipv4Addr,
    prefix: u8,
    name: String,
}

#[derive(Debug, Clone)]
pub struct AddressPool {
    subnet: Subnet,
    assigned: BTreeMap<String, Ipv4Addr>,
}

impl AddressPool {
    pub fn new(subnet: Subnet) -> AddressPool {
        AddressPool {
            subnet,
            assigned: BTreeMap::new(),
        }
    }

    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// The container's address: the one it had, or the lowest free one.
    pub fn assign(&mut self, name: &str) -> Result<Ipv4Addr, Exhausted> {
        if let Some(address) = self.assigned.get(name) {
            return Ok(*address);
        }
        let first = u32::from(self.subnet.gateway()) + 1;
        let free = (first..self.subnet.broadcast())
            .map(Ipv4Addr::from)
            .find(|candidate| !self.assigned.values().any(|a| a == candidate))
            .ok_or_else(|| Exhausted {
                network: self.subnet.network,
                prefix: self.subnet.prefix,
                name: name.to_string(),
            })?;
        self.assigned.insert(name.to_string(), free);
        Ok(free)
    }

    /// Every container's address, by name.
    pub fn assigned(&self) -> impl Iterator<Item = (&str, Ipv4Addr)> {
        self.assigned.iter().map(|(n, a)| (n.as_str(), *a))
    }

    /// The position of `name` among the assigned, for naming its veth (`vb<n>`).
    pub fn ordinal(&self, name: &str) -> Option<u32> {
        let address = self.assigned.get(name)?;
        Some(u32::from(*address) - u32::from(self.subnet.network))
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_stable_and_the_lowest_free_first() {
        let mut pool = AddressPool::new(Subnet {
            network: Ipv4Addr::new(172, 30, 0, 0),
            prefix: 16,
        });
        assert_eq!(pool.subnet().gateway(), Ipv4Addr::new(172, 30, 0, 1));
        assert_eq!(pool.assign("web").unwrap(), Ipv4Addr::new(172, 30, 0, 2));
        assert_eq!(pool.assign("db").unwrap(), Ipv4Addr::new(172, 30, 0, 3));
        assert_eq!(pool.assign("web").unwrap(), Ipv4Addr::new(172, 30, 0, 2));
        assert_eq!(pool.ordinal("db"), Some(3));
        let mut tiny = AddressPool::new(Subnet {
            network: Ipv4Addr::new(10, 0, 0, 0),
            prefix: 30,
        });
        assert_eq!(tiny.assign("a").unwrap(), Ipv4Addr::new(10, 0, 0, 2));
        assert!(tiny.assign("b").is_err());
    }
}
