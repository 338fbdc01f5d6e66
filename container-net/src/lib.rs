//! Container networks: a bridge on the host, a veth pair per container with one end in the
//! container's network namespace, an address per container from the bridge's subnet, and the
//! nf_tables rules for outbound NAT and published ports.
//!
//! One owner: init. It knows when a container starts and stops, so it makes the bridge and the
//! rules (through [`host`] and [`nat`]); the runtime moves a veth end into each new namespace as
//! part of the container's start and configures it from inside ([`inside`]). netd owns the
//! host's own links and leaves bridges and veths alone. Everything goes through netlink
//! (`berth-netlink`, shared with netd, for links, addresses, routes and nf_tables): no `ip`,
//! no `nft`.

pub mod host;
pub mod inside;
pub mod nat;
pub mod pool;

use std::net::Ipv4Addr;

/// The bridge's name unless `[network.bridge]` gives one.
pub const DEFAULT_BRIDGE: &str = "berth0";
/// Host ends of veth pairs are `vb<n>`; netd leaves links so named alone.
pub const HOST_LINK_PREFIX: &str = "vb";
/// The container-side end of the veth pair, as Docker names it.
pub const CONTAINER_LINK: &str = "eth0";

/// How a container on the bridge is wired: the host end of its veth pair goes into `bridge`,
/// the other end becomes `eth0` in the container with `address/prefix` and a default route
/// via `gateway` (the bridge's own address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub bridge: String,
    /// The host end's name: `vb<n>`, stable for the container, so that a restart reuses it.
    pub host_link: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}
