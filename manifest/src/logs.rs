//! `[logs]`: shipping events, containers' output and the kernel's log to remote receivers
//! (berth-apid's shipper, outside PID 1). The addresses take Docker's syslog driver's
//! spelling: `tcp://HOST:PORT`, `udp://HOST:PORT`, `tcp+tls://HOST:PORT`.

use std::path::PathBuf;

use serde::Deserialize;

use crate::security::ByteSize;
use crate::time::parse_host_port;

/// Where `berth build` puts `[logs] ca`, and the shipper reads it.
pub const LOGS_CA_PATH: &str = "/etc/berth/logs/ca.pem";
/// The queue each receiver gets when `queue_size` is not given.
pub const DEFAULT_LOG_QUEUE: u64 = 4 << 20;

/// The `[logs]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(try_from = "RawLogSettings")]
pub struct LogSettings {
    /// The receivers; each gets every line, with a queue of its own.
    pub forward: Vec<ForwardTarget>,
    pub format: LogFormat,
    /// PEM certificates of the CA that signs `tcp+tls` receivers' certificates.
    pub ca: Option<PathBuf>,
    /// Bytes queued per receiver while it cannot take them; past this the oldest lines go,
    /// and a `logs-dropped` line says how many.
    pub queue_size: u64,
    /// Ship the kernel's log too.
    pub kernel: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogSettings {
    #[serde(default)]
    forward: Vec<ForwardTarget>,
    #[serde(default)]
    format: LogFormat,
    ca: Option<PathBuf>,
    queue_size: Option<ByteSize>,
    #[serde(default = "yes")]
    kernel: bool,
}

fn yes() -> bool {
    true
}

impl TryFrom<RawLogSettings> for LogSettings {
    type Error = String;

    fn try_from(raw: RawLogSettings) -> Result<LogSettings, String> {
        if let Some(target) = raw
            .forward
            .iter()
            .find(|t| t.transport == Transport::TcpTls)
        {
            if raw.ca.is_none() {
                return Err(format!(
                    "forward: `{target}` needs `ca`, the CA that signs the receiver's certificate"
                ));
            }
        }
        let queue_size = match raw.queue_size {
            None => DEFAULT_LOG_QUEUE,
            Some(ByteSize(bytes)) if bytes >= 64 << 10 => bytes.unsigned_abs(),
            Some(ByteSize(bytes)) => {
                return Err(format!(
                    "queue_size: {bytes} bytes is too small: 64k at least"
                ))
            }
        };
        Ok(LogSettings {
            forward: raw.forward,
            format: raw.format,
            ca: raw.ca,
            queue_size,
            kernel: raw.kernel,
        })
    }
}

impl LogSettings {
    /// Whether anything is shipped (the shipper runs).
    pub fn enabled(&self) -> bool {
        !self.forward.is_empty()
    }
}

/// How each line is written.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// RFC 5424 syslog (octet-counted on TCP, RFC 6587; one datagram each on UDP).
    #[default]
    Rfc5424,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
    TcpTls,
}

/// One receiver.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ForwardTarget {
    pub transport: Transport,
    /// An address or a DNS name.
    pub host: String,
    pub port: u16,
}

impl TryFrom<String> for ForwardTarget {
    type Error = String;

    fn try_from(text: String) -> Result<ForwardTarget, String> {
        let bad = |why: &str| {
            format!(
                "`{text}` is not a log receiver (tcp://HOST:PORT, udp://HOST:PORT or \
                 tcp+tls://HOST:PORT): {why}"
            )
        };
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("no `tcp://`, `udp://` or `tcp+tls://`"))?;
        let (transport, default_port) = match scheme {
            "tcp" => (Transport::Tcp, 514),
            "udp" => (Transport::Udp, 514),
            "tcp+tls" => (Transport::TcpTls, 6514),
            _ => return Err(bad("the scheme is not tcp, udp or tcp+tls")),
        };
        let (host, port) = parse_host_port(rest, default_port).map_err(bad)?;
        let name_like = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
        if !name_like || host.len() > 253 {
            return Err(bad("the host is not an address or a DNS name"));
        }
        Ok(ForwardTarget {
            transport,
            host,
            port,
        })
    }
}

impl std::fmt::Display for ForwardTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.transport {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::TcpTls => "tcp+tls",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LogSettings, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn receivers_take_docker_syslog_addresses() {
        let settings = parse(
            "forward = [\"tcp://10.0.2.2:5140\", \"udp://logs.example\", \"tcp+tls://[fd00::1]:6514\"]\nca = \"ca.pem\"\n",
        )
        .unwrap();
        let shown: Vec<String> = settings.forward.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "tcp://10.0.2.2:5140",
                "udp://logs.example:514",
                "tcp+tls://[fd00::1]:6514"
            ]
        );
        assert_eq!(settings.format, LogFormat::Rfc5424);
        assert_eq!(settings.queue_size, DEFAULT_LOG_QUEUE);
        assert!(settings.kernel && settings.enabled());
        assert!(!LogSettings::default().enabled());
    }

    #[test]
    fn bad_receivers_and_settings_are_refused_with_the_reason() {
        let err = parse("forward = [\"http://x:1\"]\n").unwrap_err();
        assert!(
            err.contains("the scheme is not tcp, udp or tcp+tls"),
            "{err}"
        );
        let err = parse("forward = [\"tcp://x:0\"]\n").unwrap_err();
        assert!(err.contains("the port is not 1 to 65535"), "{err}");
        let err = parse("forward = [\"tcp://a b:1\"]\n").unwrap_err();
        assert!(err.contains("blanks"), "{err}");
        let err = parse("forward = [\"tcp://a/b:1\"]\n").unwrap_err();
        assert!(err.contains("not an address or a DNS name"), "{err}");
        let err = parse("forward = [\"tcp+tls://x:1\"]\n").unwrap_err();
        assert!(err.contains("needs `ca`"), "{err}");
        let err = parse("forward = [\"tcp://x:1\"]\nqueue_size = \"1k\"\n").unwrap_err();
        assert!(err.contains("64k at least"), "{err}");
        let err = parse("forward = [\"tcp://x:1\"]\nformat = \"xml\"\n").unwrap_err();
        assert!(err.contains("xml"), "{err}");
        let json = parse("forward = [\"tcp://x:1\"]\nformat = \"json\"\nkernel = false\n").unwrap();
        assert_eq!(json.format, LogFormat::Json);
        assert!(!json.kernel);
    }
}
