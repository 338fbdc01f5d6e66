//! The container side, run by the runtime's child inside the new network namespace, before
//! it drops its privileges: `lo` up, and for a bridged container `eth0` with its address and
//! a default route through the bridge.

use crate::{Attachment, CONTAINER_LINK};
use berth_netlink::messages as links;
use berth_netlink::rtnl::{Rtnl, RtnlError};

fn index(rtnl: &mut Rtnl, name: &str) -> Result<u32, String> {
    rtnl.index_of(name)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no link {name} in the container's network namespace"))
}

fn text(err: RtnlError) -> String {
    err.to_string()
}

/// `lo` up: what every new network namespace needs (the kernel gives it 127.0.0.1 and ::1
/// once it is up).
pub fn loopback_up() -> Result<(), String> {
    let mut rtnl = Rtnl::open().map_err(text)?;
    let lo = index(&mut rtnl, "lo")?;
    rtnl.change(links::set_up(lo), "set lo up").map_err(text)
}

/// `eth0` up with its address and the default route via the bridge.
pub fn configure(attachment: &Attachment) -> Result<(), String> {
    let mut rtnl = Rtnl::open().map_err(text)?;
    let eth0 = index(&mut rtnl, CONTAINER_LINK)?;
    rtnl.create(
        links::new_address(eth0, attachment.address.into(), attachment.prefix),
        &format!("add {}/{} to eth0", attachment.address, attachment.prefix),
    )
    .map_err(text)?;
    rtnl.change(links::set_up(eth0), "set eth0 up")
        .map_err(text)?;
    rtnl.create(
        links::new_default_route(eth0, attachment.gateway),
        &format!("default route via {}", attachment.gateway),
    )
    .map_err(text)
}
