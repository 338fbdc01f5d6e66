//! Each container's network: its namespace (`network_mode`), its address on the bridge, the
//! `/etc/hosts` and `/etc/resolv.conf` it sees, and the host's NAT rules for the running
//! ones. init owns the bridge and the rules; the runtime wires each veth as the container
//! starts (see `berth-container-net`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use crate::event::Event;
use berth_container_net::nat::{self, Protocol, Published};
use berth_container_net::pool::{AddressPool, Subnet};
use berth_container_net::{host, Attachment, HOST_LINK_PREFIX};
use berth_manifest::{BridgeSettings, Container, Manifest, NetworkMode, PortProtocol};
use berth_runtime::{ExtraMount, Network};

/// Per-container files the container sees as its `/etc/hosts` and `/etc/resolv.conf`.
const FILES_DIR: &str = "/run/berth/containers";
/// The host's resolver configuration, kept by netd.
const HOST_RESOLV: &str = "/run/berth/resolv.conf";
const HOST_HOSTS: &str = "/etc/hosts";

#[derive(Debug)]
pub struct ContainerNetworks {
    bridge: String,
    pool: AddressPool,
    /// Whether the bridge has been made this boot.
    bridge_up: bool,
    /// Whether any container uses the bridge: the NAT table exists only then.
    uses_bridge: bool,
}

fn subnet_of(settings: &BridgeSettings) -> Subnet {
    let network = match settings.subnet.addr {
        IpAddr::V4(v4) => v4,
        // The manifest refuses an IPv6 bridge subnet.
        IpAddr::V6(_) => Ipv4Addr::new(172, 30, 0, 0),
    };
    Subnet {
        network,
        prefix: settings.subnet.prefix,
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

impl ContainerNetworks {
    /// Gives every bridged container its address now, in name order, so that each one's
    /// `/etc/hosts` can name all the others and an address stays with its container.
    pub fn new(manifest: &Manifest) -> ContainerNetworks {
        let settings = manifest.bridge();
        let mut pool = AddressPool::new(subnet_of(&settings));
        for (name, container) in &manifest.containers {
            if *container.network_mode() == NetworkMode::Bridge {
                if let Err(err) = pool.assign(name.as_str()) {
                    log::error!("{err}");
                }
            }
        }
        let mut networks = ContainerNetworks {
            bridge: settings.name,
            pool,
            bridge_up: false,
            uses_bridge: manifest.uses_bridge(),
        };
        // The bridge and the masquerade rule are there before the first container, so that a
        // container on the host's network sees the same host whatever the start order.
        if networks.uses_bridge {
            if let Err(err) = networks.ensure_bridge() {
                Event::new("bridge-failed").field("error", err).emit();
            }
            networks.update_nat(std::iter::empty());
        }
        networks
    }

    /// Takes an applied manifest: bridged containers it adds get their addresses when they
    /// start, and the NAT table exists from the first of them.
    pub fn adopt(&mut self, manifest: &Manifest) {
        self.uses_bridge |= manifest.uses_bridge();
    }

    fn ensure_bridge(&mut self) -> Result<(), String> {
        if !self.bridge_up {
            let subnet = self.pool.subnet();
            host::ensure_bridge(&self.bridge, subnet.gateway(), subnet.prefix)
                .map_err(|e| format!("bridge {}: {e}", self.bridge))?;
            self.bridge_up = true;
        }
        Ok(())
    }

    fn attachment(&mut self, name: &str) -> Result<Attachment, String> {
        let address = self.pool.assign(name).map_err(|e| e.to_string())?;
        let subnet = self.pool.subnet();
        self.ensure_bridge()?;
        Ok(Attachment {
            bridge: self.bridge.clone(),
            host_link: format!(
                "{HOST_LINK_PREFIX}{}",
                self.pool.ordinal(name).unwrap_or_default()
            ),
            address,
            prefix: subnet.prefix,
            gateway: subnet.gateway(),
        })
    }

    /// `/etc/hosts` for a container on the bridge: itself and every other bridged container.
    fn bridge_hosts(&self) -> String {
        let mut hosts =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        for (name, address) in self.pool.assigned() {
            hosts.push_str(&format!("{address}\t{name}\n"));
        }
        hosts
    }

    /// The namespace `name` gets and the files mounted over its `/etc/hosts` and
    /// `/etc/resolv.conf`. `running` finds the PID of another running container.
    pub fn prepare(
        &mut self,
        name: &str,
        config: &Container,
        running: impl Fn(&str) -> Option<i32>,
    ) -> Result<(Network, Vec<ExtraMount>), String> {
        let dir = PathBuf::from(FILES_DIR).join(name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let host_resolv = std::fs::read_to_string(HOST_RESOLV).unwrap_or_default();
        let (network, hosts, resolv) = match config.network_mode() {
            NetworkMode::Host => (
                Network::Host,
                std::fs::read_to_string(HOST_HOSTS).unwrap_or_default(),
                host_resolv,
            ),
            NetworkMode::None => (
                Network::Isolated,
                format!("127.0.0.1\tlocalhost {name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
                String::new(),
            ),
            NetworkMode::Bridge => (
                Network::Bridge(self.attachment(name)?),
                self.bridge_hosts(),
                // A resolver on the host's loopback is not the container's: as Docker does,
                // such servers are left out.
                host_resolv
                    .lines()
                    .filter(|l| !l.starts_with("nameserver 127.") && *l != "nameserver ::1")
                    .map(|l| format!("{l}\n"))
                    .collect(),
            ),
            NetworkMode::Container(target) => {
                let pid = running(target.as_str())
                    .ok_or_else(|| format!("container `{}` is not running", target.as_str()))?;
                // The files of the container whose network it shares.
                let shared = PathBuf::from(FILES_DIR).join(target.as_str());
                (
                    Network::Join(pid),
                    std::fs::read_to_string(shared.join("hosts")).unwrap_or_default(),
                    std::fs::read_to_string(shared.join("resolv.conf")).unwrap_or_default(),
                )
            }
        };
        write(&dir.join("hosts"), &hosts)?;
        write(&dir.join("resolv.conf"), &resolv)?;
        let mounts = ["hosts", "resolv.conf"]
            .into_iter()
            .map(|file| ExtraMount::Bind {
                source: dir.join(file),
                target: format!("/etc/{file}"),
                read_only: false,
            })
            .collect();
        Ok((network, mounts))
    }

    /// Replaces the NAT rules with those of the running bridged containers.
    pub fn update_nat<'a>(&mut self, running: impl Iterator<Item = (&'a str, &'a Container)>) {
        if !self.uses_bridge {
            return;
        }
        let mut published = Vec::new();
        for (name, config) in running {
            if *config.network_mode() != NetworkMode::Bridge {
                continue;
            }
            let Ok(address) = self.pool.assign(name) else {
                continue;
            };
            for port in &config.ports {
                let port = port.get_ref();
                published.push(Published {
                    host_ip: port.host_ip,
                    host_port: port.host_port,
                    protocol: match port.protocol {
                        PortProtocol::Tcp => Protocol::Tcp,
                        PortProtocol::Udp => Protocol::Udp,
                    },
                    container: address,
                    container_port: port.container_port,
                });
            }
        }
        match nat::apply(&self.bridge, self.pool.subnet(), &published) {
            Ok(()) => Event::new("nat-applied")
                .field("published", published.len())
                .emit(),
            Err(err) => Event::new("nat-failed").field("error", err).emit(),
        }
    }

    /// The address of a bridged container, for its events.
    pub fn address_of(&self, name: &str) -> Option<Ipv4Addr> {
        self.pool
            .assigned()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| a)
    }
}
