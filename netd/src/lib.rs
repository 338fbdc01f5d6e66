//! netd: the host's network, through netlink only (no `ip`, no shell).
//!
//! It brings `lo` up with 127.0.0.1/8 and ::1, creates the manifest's bonds and VLANs, then
//! gives each Ethernet link the first `[[network.interface]]` entry that selects it: static
//! addresses and routes, a DHCPv4 client, or both. With no `[network]` section every Ethernet
//! link gets DHCP. Each change is an event line on stdout, which init passes to the console.

pub mod dhcp;
mod lease;
mod links;
mod netlink;
mod platform;
mod reply;
mod resolv;
pub mod rtc;
mod saved;
mod sntp;
mod state;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use berth_event::Event;
use berth_manifest::{Interface, InterfaceMatch, LinkSelector, Manifest, Network};

pub use lease::Lease;
use netlink::{Link, Netlink, NetlinkError};
use state::Shared;

pub(crate) use berth_kmod::glob_match;

/// What netd does with bytes from the network, for the fuzz targets in `fuzz/`.
#[doc(hidden)]
pub mod fuzzing {
    /// A reply as netd takes it from the network: its raw bytes checked, then decoded.
    pub fn decode(bytes: &[u8]) -> Option<dhcproto::v4::Message> {
        crate::reply::parse(bytes).ok()
    }
    pub use crate::lease::is_dns_name;
    pub use crate::saved::{decode as decode_saved, encode as encode_saved};
}

/// The manifest netd reads unless init passes `--manifest`.
const DEFAULT_MANIFEST: &str = "/etc/berth/manifest.toml";

/// Writes one event line.
pub(crate) fn emit(event: Event) {
    println!("{}", event.finish());
}

/// The network section, whether the manifest names the host, and the NTP servers. A manifest that does not
/// parse leaves the defaults (DHCP everywhere): a bad manifest never takes the network down.
fn read_config() -> (Option<Network>, bool, berth_manifest::TimeSettings) {
    let mut args = std::env::args().skip(1);
    let mut path = PathBuf::from(DEFAULT_MANIFEST);
    while let Some(arg) = args.next() {
        if arg == "--manifest" {
            if let Some(value) = args.next() {
                path = PathBuf::from(value);
            }
        }
    }
    match Manifest::load(&path) {
        Ok(manifest) => (manifest.network, manifest.hostname.is_some(), manifest.time),
        Err(err) => {
            emit(Event::new("network-config-invalid").field("error", err));
            (None, false, berth_manifest::TimeSettings::default())
        }
    }
}

pub fn run() -> ExitCode {
    let (network, hostname_given, time) = read_config();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("netd: cannot start its runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(serve(network, !hostname_given, time));
    // Without waiting for blocking work still under way: a name lookup for an NTP server
    // (getaddrinfo, in tokio's blocking pool) may take the resolver's whole timeout, and
    // neither the exit at shutdown nor a reload must wait for it.
    runtime.shutdown_background();
    match outcome {
        Ok(Outcome::Terminated) => ExitCode::SUCCESS,
        Ok(Outcome::Reload) => {
            // A fresh netd on the new manifest, in this process (init keeps supervising the
            // same PID); the leases saved under /run are resumed, not released.
            let err = std::os::unix::process::CommandExt::exec(
                std::process::Command::new("/proc/self/exe").args(std::env::args_os().skip(1)),
            );
            eprintln!("netd: cannot re-execute itself to reload: {err}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("netd: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The entry that configures `link`: the one that created it (a bond or VLAN shares its MAC
/// with a member or parent, so `match` must not reach it), else the first `match` whose every
/// criterion holds.
fn entry_for<'a>(link: &Link, network: &'a Network) -> Option<&'a Interface> {
    if let Some(entry) = network
        .interface
        .iter()
        .find(|entry| entry.created_name() == Some(link.name.as_str()))
    {
        return Some(entry);
    }
    network.interface.iter().find(|entry| match &entry.link {
        LinkSelector::Match(matcher) => matches(matcher, link),
        LinkSelector::Vlan(_) | LinkSelector::Bond(_) => false,
    })
}

fn matches(matcher: &InterfaceMatch, link: &Link) -> bool {
    let name = matcher
        .name
        .as_ref()
        .is_none_or(|glob| glob_match(glob, &link.name));
    let mac = matcher
        .mac
        .is_none_or(|mac| link.mac.get(..6) == Some(mac.0.as_slice()));
    let driver = matcher.driver.as_ref().is_none_or(|d| *d == link.driver);
    name && mac && driver
}

fn mac_text(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A link with a static IPv6 setup, or with no DHCP at all, gets exactly what it declares:
/// no router advertisements, no autoconfigured addresses. Only a DHCP link with no static
/// IPv6 takes what the network's routers advertise.
fn static_ipv6(link: &Link, entry: &Interface) {
    let declares_ipv6 =
        entry.gateway6.is_some() || entry.addresses.iter().any(|a| a.addr.is_ipv6());
    if entry.dhcp && !declares_ipv6 {
        return;
    }
    for setting in ["accept_ra", "autoconf"] {
        let path = format!("/proc/sys/net/ipv6/conf/{}/{setting}", link.name);
        if let Err(err) = std::fs::write(&path, "0") {
            emit(
                Event::new("sysctl-failed")
                    .field("key", path)
                    .field("error", err),
            );
        }
    }
}

fn configure_static(netlink: &Netlink, link: &Link, entry: &Interface) -> Result<(), NetlinkError> {
    if let Some(mtu) = entry.mtu {
        netlink.set_mtu(link.index, mtu)?;
    }
    for cidr in &entry.addresses {
        netlink.add_address(link.index, cidr.addr, cidr.prefix)?;
    }
    if let Some(gateway) = entry.gateway {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        netlink.add_route(link.index, any, 0, IpAddr::V4(gateway), None)?;
    }
    if let Some(gateway) = entry.gateway6 {
        let any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        netlink.add_route(link.index, any, 0, IpAddr::V6(gateway), None)?;
    }
    for route in &entry.routes {
        netlink.add_route(
            link.index,
            route.to.addr,
            route.to.prefix,
            route.via,
            route.metric,
        )?;
    }
    Ok(())
}

/// How [`serve`] ended.
enum Outcome {
    /// SIGTERM: leases released.
    Terminated,
    /// SIGHUP: start over on the manifest as it is now, keeping the leases.
    Reload,
}

async fn serve(
    network: Option<Network>,
    hostname_from_dhcp: bool,
    time: berth_manifest::TimeSettings,
) -> Result<Outcome, NetlinkError> {
    let netlink = Netlink::connect()?;
    netlink.loopback_up()?;
    emit(
        Event::new("link-up")
            .field("iface", "lo")
            .field("addr", "127.0.0.1/8,::1/128"),
    );
    // Before any lease: SIGTERM (init's shutdown) must find the handler in place.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(NetlinkError::Signal)?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(NetlinkError::Signal)?;
    let (servers, search, from_dhcp) = network
        .as_ref()
        .map_or((Vec::new(), Vec::new(), true), |n| {
            (n.dns.clone(), n.search.clone(), n.dns_from_dhcp)
        });
    let shared = Arc::new(Shared::new(servers, search, from_dhcp, hostname_from_dhcp));
    let default = Interface::dhcp(LinkSelector::Match(InterfaceMatch::default()));
    // Without interface entries (a `[network]` with only DNS or bridge settings), every
    // Ethernet link gets DHCP, as with no `[network]` at all.
    let entries = network.as_ref().filter(|n| !n.interface.is_empty());
    let members = match entries {
        Some(network) => links::create(&netlink, network)?,
        None => Default::default(),
    };
    let mut plan = Vec::new();
    for link in netlink.ethernet_links()? {
        if members.contains(&link.index) {
            continue;
        }
        // DHCP everywhere means every Ethernet port, not a bond or VLAN nobody asked for.
        if entries.is_none() && link.virtual_link {
            emit(Event::new("link-unmanaged").field("iface", &link.name));
            continue;
        }
        let entry = match entries {
            None => Some(&default),
            Some(network) => entry_for(&link, network),
        };
        match entry {
            Some(entry) => {
                if entry.required {
                    shared.require(link.index);
                }
                plan.push((link, entry.clone()));
            }
            None => emit(Event::new("link-unmanaged").field("iface", &link.name)),
        }
    }
    let mut clients = Vec::new();
    for (link, entry) in plan {
        // Before the link comes up, so no advertisement is acted on in between.
        static_ipv6(&link, &entry);
        netlink.set_up(link.index)?;
        if let Err(err) = configure_static(&netlink, &link, &entry) {
            emit(
                Event::new("link-failed")
                    .field("iface", &link.name)
                    .field("error", err),
            );
            continue;
        }
        let addresses: Vec<String> = entry.addresses.iter().map(ToString::to_string).collect();
        emit(
            Event::new("link-configured")
                .field("iface", &link.name)
                .field("mac", mac_text(&link.mac))
                .field("driver", &link.driver)
                .field("addresses", addresses.join(","))
                .field("dhcp", entry.dhcp),
        );
        if entry.dhcp {
            let client = dhcp::Client::new(link, netlink, Arc::clone(&shared));
            clients.push(tokio::spawn(client.run()));
        } else {
            shared.configured(link.index);
        }
    }
    // No required link (or none at all): online at once.
    shared.check_online();
    // Network time once the network is online; its own task, so a silent server holds up
    // nothing else.
    let time = tokio::spawn(sntp::run(time, Arc::clone(&shared)));
    clients.push(time);
    let reload = tokio::select! {
        _ = terminate.recv() => false,
        _ = hangup.recv() => true,
    };
    for client in &clients {
        client.abort();
    }
    if reload {
        emit(Event::new("netd-reload"));
        return Ok(Outcome::Reload);
    }
    // The addresses stay in the kernel until the host goes; the servers learn now.
    dhcp::release_all(&shared).await;
    Ok(Outcome::Terminated)
}
