//! The links netd makes: bonds first (a VLAN may sit on one), their members enslaved, then
//! VLANs on their parents. Each is created only if missing, so a restarted netd finds them as
//! it left them and leaves the traffic on them alone.

use std::collections::BTreeSet;

use berth_event::Event;
use berth_manifest::{Bond, LinkSelector, Network, Vlan};

use crate::netlink::{Link, Netlink, NetlinkError};
use crate::{emit, glob_match};

/// Creates the manifest's bonds and VLANs; returns the indexes of bond members, which get no
/// configuration of their own. A link that cannot be made is reported and the rest go on.
pub fn create(netlink: &Netlink, network: &Network) -> Result<BTreeSet<u32>, NetlinkError> {
    let mut members = BTreeSet::new();
    let links = netlink.ethernet_links()?;
    for entry in &network.interface {
        if let LinkSelector::Bond(bond) = &entry.link {
            match create_bond(netlink, bond, &links) {
                Ok(enslaved) => members.extend(enslaved),
                Err(err) => failed(&bond.name, &err),
            }
        }
    }
    for entry in &network.interface {
        if let LinkSelector::Vlan(vlan) = &entry.link {
            if let Err(err) = create_vlan(netlink, vlan) {
                failed(&vlan.name, &err);
            }
        }
    }
    Ok(members)
}

fn failed(name: &str, err: &NetlinkError) {
    emit(
        Event::new("link-failed")
            .field("iface", name)
            .field("error", err),
    );
}

fn create_bond(netlink: &Netlink, bond: &Bond, links: &[Link]) -> Result<Vec<u32>, NetlinkError> {
    let index = netlink.create_bond(&bond.name, bond.mode, bond.miimon_ms)?;
    let mut enslaved = Vec::new();
    let mut names = Vec::new();
    for link in links.iter().filter(|link| {
        link.index != index
            && bond
                .members
                .iter()
                .any(|pattern| glob_match(pattern, &link.name))
    }) {
        // The kernel takes only a link that is down into a bond; one already in it (netd
        // restarted) is left up and carrying traffic.
        if link.controller != Some(index) {
            netlink.set_down(link.index)?;
            netlink.set_controller(link.index, index)?;
        }
        netlink.set_up(link.index)?;
        enslaved.push(link.index);
        names.push(link.name.as_str());
    }
    emit(
        Event::new("link-created")
            .field("iface", &bond.name)
            .field("kind", "bond")
            .field("mode", bond.mode.as_str())
            .field("members", names.join(",")),
    );
    Ok(enslaved)
}

fn create_vlan(netlink: &Netlink, vlan: &Vlan) -> Result<(), NetlinkError> {
    let parent = netlink
        .index_of(&vlan.parent)?
        .ok_or_else(|| NetlinkError::NoSuchLink(vlan.parent.clone()))?;
    netlink.create_vlan(&vlan.name, parent, vlan.id)?;
    // Frames reach a VLAN only through its parent, which may have no entry of its own.
    netlink.set_up(parent)?;
    emit(
        Event::new("link-created")
            .field("iface", &vlan.name)
            .field("kind", "vlan")
            .field("parent", &vlan.parent)
            .field("id", vlan.id),
    );
    Ok(())
}
