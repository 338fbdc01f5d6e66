//! A container's network: `network_mode` and published `ports`, in Docker's vocabulary.

use std::fmt;
use std::net::Ipv4Addr;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::ContainerName;

/// Docker's `--network`: which network namespace a container gets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// Its own namespace with `eth0` on the host's bridge (the default).
    #[default]
    Bridge,
    /// The host's namespace.
    Host,
    /// Its own namespace with `lo` only.
    None,
    /// Another container's namespace, as the containers of a pod share one.
    Container(ContainerName),
}

impl NetworkMode {
    pub fn parse(text: &str) -> Result<NetworkMode, String> {
        match text {
            "bridge" => Ok(NetworkMode::Bridge),
            "host" => Ok(NetworkMode::Host),
            "none" => Ok(NetworkMode::None),
            other => match other.strip_prefix("container:") {
                Some(name) => ContainerName::new(name).map(NetworkMode::Container),
                None => Err(format!(
                    "`{other}` is not a network mode: `bridge`, `host`, `none` or `container:NAME`"
                )),
            },
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkMode::Bridge => f.write_str("bridge"),
            NetworkMode::Host => f.write_str("host"),
            NetworkMode::None => f.write_str("none"),
            NetworkMode::Container(name) => write!(f, "container:{}", name.as_str()),
        }
    }
}

impl<'de> Deserialize<'de> for NetworkMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        NetworkMode::parse(&String::deserialize(deserializer)?).map_err(de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
}

/// A published port in Docker's short syntax: `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: PortProtocol,
}

fn port(text: &str, whole: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("`{whole}`: `{text}` is not a port (1 to 65535)"))
}

impl PortMapping {
    pub fn parse(text: &str) -> Result<PortMapping, String> {
        let (ports, protocol) = match text.rsplit_once('/') {
            Some((ports, "tcp")) => (ports, PortProtocol::Tcp),
            Some((ports, "udp")) => (ports, PortProtocol::Udp),
            Some((_, other)) => {
                return Err(format!(
                    "`{text}`: `{other}` is not a protocol (tcp or udp)"
                ))
            }
            None => (text, PortProtocol::Tcp),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (host_ip, host_port, container_port) = match parts.as_slice() {
            [host, container] => (None, *host, *container),
            [ip, host, container] => {
                let ip = ip
                    .parse::<Ipv4Addr>()
                    .map_err(|_| format!("`{text}`: `{ip}` is not an IPv4 address of the host"))?;
                (Some(ip), *host, *container)
            }
            _ => {
                return Err(format!(
                    "`{text}` is not a published port: HOST_PORT:CONTAINER_PORT, optionally \
                     with HOST_IP: before and /udp after (\"8080:80\", \"127.0.0.1:9000:9000\", \
                     \"5353:53/udp\")"
                ))
            }
        };
        Ok(PortMapping {
            host_ip,
            host_port: port(host_port, text)?,
            container_port: port(container_port, text)?,
            protocol,
        })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(f, "{}:{}", self.host_port, self.container_port)?;
        if self.protocol == PortProtocol::Udp {
            f.write_str("/udp")?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for PortMapping {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        PortMapping::parse(&String::deserialize(deserializer)?).map_err(de::Error::custom)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn docker_short_syntax() {
        let p = PortMapping::parse("127.0.0.1:9000:9001").unwrap();
        assert_eq!(p.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!((p.host_port, p.container_port), (9000, 9001));
        assert_eq!(
            PortMapping::parse("5353:53/udp").unwrap().protocol,
            PortProtocol::Udp
        );
        assert_eq!(
            PortMapping::parse("8080:80").unwrap().to_string(),
            "8080:80"
        );
        for bad in ["80", "0:80", "8080:80/sctp", "x:1:2", "1:2:3:4", "70000:1"] {
            assert!(PortMapping::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            NetworkMode::parse("container:web").unwrap().to_string(),
            "container:web"
        );
        assert!(NetworkMode::parse("bridged").is_err());
    }
}
