//! What netd's tasks share: held leases (released at shutdown), which required links are
//! configured (for `network-online`), and the name servers that make up resolv.conf.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;

use berth_event::Event;

use crate::lease::Lease;
use crate::netlink::Link;
use crate::{emit, resolv};

/// Created when every required link is configured; init's supervisor waits for it.
pub const NETWORK_ONLINE_MARKER: &str = "/run/berth/network-online";

#[derive(Debug, Default)]
struct Online {
    required: BTreeSet<u32>,
    configured: BTreeSet<u32>,
    announced: bool,
}

#[derive(Debug, Default)]
struct Resolv {
    static_servers: Vec<IpAddr>,
    search: Vec<String>,
    from_dhcp: bool,
    /// Per link index: servers and domain from its lease.
    dhcp: BTreeMap<u32, (Vec<IpAddr>, Option<String>)>,
}

#[derive(Debug, Default)]
pub struct Shared {
    leases: Mutex<Vec<(Link, Lease)>>,
    online: Mutex<Online>,
    resolv: Mutex<Resolv>,
    /// Set the hostname from DHCP (the manifest names none).
    pub hostname_from_dhcp: bool,
}

impl Shared {
    pub fn new(
        static_servers: Vec<IpAddr>,
        search: Vec<String>,
        from_dhcp: bool,
        hostname_from_dhcp: bool,
    ) -> Shared {
        let shared = Shared {
            resolv: Mutex::new(Resolv {
                static_servers,
                search,
                from_dhcp,
                dhcp: BTreeMap::new(),
            }),
            hostname_from_dhcp,
            ..Shared::default()
        };
        shared.write_resolv();
        shared
    }

    pub fn require(&self, index: u32) {
        if let Ok(mut online) = self.online.lock() {
            online.required.insert(index);
        }
    }

    /// A link is configured; the network is online once every required one is.
    pub fn configured(&self, index: u32) {
        if let Ok(mut online) = self.online.lock() {
            online.configured.insert(index);
        }
        self.check_online();
    }

    /// Announces `network-online` (once) when every required link is configured; at once
    /// when none is required.
    pub fn check_online(&self) {
        let Ok(mut online) = self.online.lock() else {
            return;
        };
        if !online.announced && online.required.is_subset(&online.configured) {
            online.announced = true;
            if let Err(err) = std::fs::write(NETWORK_ONLINE_MARKER, "") {
                emit(Event::new("network-online-failed").field("error", err));
            }
            emit(Event::new("network-online").field("links", online.configured.len()));
        }
    }

    pub fn lease_held(&self, link: &Link, lease: &Lease) {
        if let Ok(mut leases) = self.leases.lock() {
            leases.retain(|(l, _)| l.index != link.index);
            leases.push((link.clone(), lease.clone()));
        }
        if let Ok(mut resolv) = self.resolv.lock() {
            let servers = lease.dns.iter().copied().map(IpAddr::V4).collect();
            resolv
                .dhcp
                .insert(link.index, (servers, lease.domain.clone()));
        }
        self.write_resolv();
    }

    pub fn lease_lost(&self, index: u32) {
        if let Ok(mut leases) = self.leases.lock() {
            leases.retain(|(l, _)| l.index != index);
        }
        if let Ok(mut resolv) = self.resolv.lock() {
            resolv.dhcp.remove(&index);
        }
        self.write_resolv();
    }

    pub fn leases(&self) -> Vec<(Link, Lease)> {
        self.leases.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn write_resolv(&self) {
        let Ok(resolv) = self.resolv.lock() else {
            return;
        };
        let mut servers = resolv.static_servers.clone();
        let mut search = resolv.search.clone();
        if resolv.from_dhcp {
            for (dhcp_servers, domain) in resolv.dhcp.values() {
                servers.extend(
                    dhcp_servers
                        .iter()
                        .filter(|s| !resolv.static_servers.contains(s)),
                );
                search.extend(
                    domain
                        .iter()
                        .filter(|d| !resolv.search.contains(d))
                        .cloned(),
                );
            }
        }
        if let Err(err) = resolv::write(&servers, &search) {
            emit(Event::new("resolv-failed").field("error", err));
        }
    }
}
