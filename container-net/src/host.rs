//! The host side, run by init: the bridge, and each container's veth pair.

use std::net::Ipv4Addr;

use crate::{Attachment, CONTAINER_LINK};
use berth_netlink::messages as links;
use berth_netlink::rtnl::{Rtnl, RtnlError};

#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error(transparent)]
    Netlink(#[from] RtnlError),
    #[error("link {0} is not there after it was made")]
    Missing(String),
    #[error("{path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn sysctl(path: &str, value: &str) -> Result<(), HostNetError> {
    std::fs::write(path, value).map_err(|source| HostNetError::Sysctl {
        path: path.to_string(),
        source,
    })
}

/// The bridge `name` with `gateway/prefix`, up, and the host forwarding for it: made if
/// missing, left as it is otherwise. Returns its index.
pub fn ensure_bridge(name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<u32, HostNetError> {
    let mut rtnl = Rtnl::open()?;
    rtnl.ensure(links::new_bridge(name), &format!("create bridge {name}"))?;
    let index = rtnl
        .index_of(name)?
        .ok_or_else(|| HostNetError::Missing(name.to_string()))?;
    rtnl.ensure(
        links::new_address(index, gateway.into(), prefix),
        &format!("add {gateway}/{prefix} to {name}"),
    )?;
    rtnl.change(links::set_up(index), &format!("set {name} up"))?;
    // Containers reach the world through the host, and published ports on 127.0.0.1 are
    // DNATed to the bridge, which the kernel allows only with route_localnet.
    sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
    sysctl(
        &format!("/proc/sys/net/ipv4/conf/{name}/route_localnet"),
        "1",
    )?;
    Ok(index)
}

/// Wires the container whose first process is `pid`: a veth pair whose host end joins the
/// bridge and whose other end is made directly in the container's namespace as `eth0`.
/// A host end left by an earlier run of the same container (its namespace not yet torn down)
/// is removed first, so a restart gets the same name.
pub fn attach(attachment: &Attachment, pid: i32) -> Result<(), HostNetError> {
    let mut rtnl = Rtnl::open()?;
    let host_link = &attachment.host_link;
    if let Some(stale) = rtnl.index_of(host_link)? {
        match rtnl.change(
            links::delete_link(stale),
            &format!("remove stale {host_link}"),
        ) {
            // The earlier run's namespace was torn down between the look and the delete (the
            // kernel removes its veth pair with it, a moment after its last process exits):
            // gone is what was wanted. A replacement that `apply` starts in the very turn its
            // predecessor exited meets this.
            Err(err) if err.errno() == Some(nix::libc::ENODEV) => {}
            other => other?,
        }
    }
    let bridge = rtnl
        .index_of(&attachment.bridge)?
        .ok_or_else(|| HostNetError::Missing(attachment.bridge.clone()))?;
    rtnl.create(
        links::new_veth(host_link, CONTAINER_LINK, pid),
        &format!("create veth {host_link} for process {pid}"),
    )?;
    let index = rtnl
        .index_of(host_link)?
        .ok_or_else(|| HostNetError::Missing(host_link.clone()))?;
    rtnl.change(
        links::set_controller(index, bridge),
        &format!("add {host_link} to {}", attachment.bridge),
    )?;
    rtnl.change(links::set_up(index), &format!("set {host_link} up"))?;
    Ok(())
}

/// The host ends of container veths now present: what a test or a state dump counts.
pub fn veth_host_links() -> Result<Vec<String>, HostNetError> {
    let mut rtnl = Rtnl::open()?;
    Ok(rtnl
        .links()?
        .iter()
        .filter_map(berth_netlink::rtnl::link_name)
        .filter(|name| name.starts_with(crate::HOST_LINK_PREFIX))
        .map(str::to_string)
        .collect())
}
