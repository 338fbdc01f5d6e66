//! `[time]`: the NTP servers netd's SNTP client asks.

use serde::{de, Deserialize, Deserializer};

/// The name a container's `depends_on` uses to wait for the first network time.
pub const TIME_SYNCED: &str = "time-synced";
/// Asked when the manifest names no server: the NTP pool, whose name resolves to several.
pub const DEFAULT_TIME_SERVERS: &[&str] = &["pool.ntp.org"];
/// NTP's port, when a server is given without one.
pub const NTP_PORT: u16 = 123;

/// The `[time]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TimeSettings {
    /// `HOST`, `HOST:PORT` or `[IPV6]:PORT`. Unset: the servers the network offers (DHCP
    /// option 42, the cloud platform's), else [`DEFAULT_TIME_SERVERS`]. Empty: no network
    /// time at all.
    pub servers: Option<Vec<TimeServer>>,
}

impl TimeSettings {
    /// Whether netd keeps the clock from the network at all (`servers = []` says no).
    pub fn enabled(&self) -> bool {
        self.servers
            .as_ref()
            .is_none_or(|servers| !servers.is_empty())
    }

    /// The servers to ask in one round: the manifest's when it lists any; else those the
    /// network offered (`offered`: DHCP option 42's, the platform's), and the default pool
    /// when it offered none.
    pub fn servers_for_round(&self, offered: &[TimeServer]) -> Vec<TimeServer> {
        match &self.servers {
            Some(listed) => listed.clone(),
            None if !offered.is_empty() => offered.to_vec(),
            None => DEFAULT_TIME_SERVERS
                .iter()
                .map(|host| TimeServer {
                    host: (*host).to_string(),
                    port: NTP_PORT,
                })
                .collect(),
        }
    }
}

/// One NTP server: a host name or address, and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeServer {
    pub host: String,
    pub port: u16,
}

impl TimeServer {
    pub fn parse(text: &str) -> Result<TimeServer, String> {
        let (host, port) = parse_host_port(text, NTP_PORT).map_err(|why| {
            format!("`{text}` is not an NTP server (HOST, HOST:PORT or [IPV6]:PORT): {why}")
        })?;
        Ok(TimeServer { host, port })
    }
}

/// `HOST`, `HOST:PORT` or `[IPV6]:PORT` (a bare IPv6 address too), `default_port` when none
/// is given; the error says what is wrong.
pub(crate) fn parse_host_port(
    text: &str,
    default_port: u16,
) -> Result<(String, u16), &'static str> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("no `]`")?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err("text after `]`"),
        }
    } else if text.matches(':').count() == 1 {
        let (host, port) = text.split_once(':').ok_or("no port")?;
        (host, Some(port))
    } else {
        // No colon, or a bare IPv6 address.
        (text, None)
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("empty host or blanks in it");
    }
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or("the port is not 1 to 65535")?,
        None => default_port,
    };
    Ok((host.to_string(), port))
}

impl std::fmt::Display for TimeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl<'de> Deserialize<'de> for TimeServer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        TimeServer::parse(&String::deserialize(deserializer)?).map_err(de::Error::custom)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn servers_with_and_without_ports() {
        let server = |host: &str, port| TimeServer {
            host: host.to_string(),
            port,
        };
        assert_eq!(
            TimeServer::parse("time.example").unwrap(),
            server("time.example", 123)
        );
        assert_eq!(
            TimeServer::parse("10.0.2.2:11123").unwrap(),
            server("10.0.2.2", 11123)
        );
        assert_eq!(
            TimeServer::parse("fd00::1").unwrap(),
            server("fd00::1", 123)
        );
        assert_eq!(
            TimeServer::parse("[fd00::1]:1123").unwrap(),
            server("fd00::1", 1123)
        );
        assert!(TimeServer::parse("host:0").is_err());
        assert!(TimeServer::parse("host:ntp").is_err());
        assert!(TimeServer::parse("").is_err());
        assert!(TimeServer::parse("[fd00::1").is_err());
        assert_eq!(server("fd00::1", 123).to_string(), "[fd00::1]:123");
    }

    #[test]
    fn listed_servers_win_offered_ones_come_next_and_the_pool_last() {
        let offered = vec![TimeServer::parse("192.0.2.1").unwrap()];
        let listed = TimeSettings {
            servers: Some(vec![TimeServer::parse("time.example").unwrap()]),
        };
        assert_eq!(
            listed.servers_for_round(&offered),
            listed.servers.clone().unwrap()
        );
        let unset = TimeSettings::default();
        assert!(unset.enabled());
        assert_eq!(unset.servers_for_round(&offered), offered);
        assert_eq!(
            unset.servers_for_round(&[]),
            [TimeServer::parse("pool.ntp.org").unwrap()]
        );
        let off = TimeSettings {
            servers: Some(Vec::new()),
        };
        assert!(!off.enabled());
    }
}
