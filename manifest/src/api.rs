//! `[api]`: berth-apid, the remote control API (the control protocol over mutual TLS).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

/// The port the API listens on when `listen` is not given.
pub const DEFAULT_API_PORT: u16 = 7443;
/// Where `berth build` puts the files `[api]` names, and berth-apid reads them.
pub const API_CA_PATH: &str = "/etc/berth/api/ca.pem";
pub const API_CERT_PATH: &str = "/etc/berth/api/cert.pem";
pub const API_KEY_PATH: &str = "/etc/berth/api/key.pem";

/// Where berth-apid keeps the server key and certificate it generates when `[api]` gives
/// none: on the data partition, so that clients pin one fingerprint for the host's life.
pub const API_GENERATED_DIR: &str = "/var/lib/berth/api";

/// The `[api]` table. The files are read by `berth build`, relative to the manifest's
/// directory, and baked into the image at [`API_CA_PATH`], [`API_CERT_PATH`] and
/// [`API_KEY_PATH`].
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(try_from = "RawApiSettings")]
pub struct ApiSettings {
    /// Addresses to listen on; `0.0.0.0:7443` and `[::]:7443` when unset.
    pub listen: Option<Vec<SocketAddr>>,
    /// PEM certificates of the CA that signs client certificates: a client must present one.
    pub ca: PathBuf,
    /// The server's certificate chain (PEM), leaf first, and its private key (PEM: PKCS#8,
    /// PKCS#1 or SEC1); both or neither. Without them berth-apid generates a key and a
    /// self-signed certificate at first boot in [`API_GENERATED_DIR`] and prints the
    /// certificate's fingerprint, which clients pin (`berth ctl --server-sha256`).
    pub server: Option<ServerIdentity>,
    /// Where to serve Prometheus metrics (`GET /metrics`, plain HTTP); off when unset.
    pub metrics_listen: Option<SocketAddr>,
}

/// The server's certificate chain and key files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiSettings {
    listen: Option<Vec<SocketAddr>>,
    ca: PathBuf,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    metrics_listen: Option<SocketAddr>,
}

impl TryFrom<RawApiSettings> for ApiSettings {
    type Error = String;

    fn try_from(raw: RawApiSettings) -> Result<ApiSettings, String> {
        let server = match (raw.cert, raw.key) {
            (Some(cert), Some(key)) => Some(ServerIdentity { cert, key }),
            (None, None) => None,
            (Some(_), None) => return Err("`cert` without `key`: give both or neither".into()),
            (None, Some(_)) => return Err("`key` without `cert`: give both or neither".into()),
        };
        Ok(ApiSettings {
            listen: raw.listen,
            ca: raw.ca,
            server,
            metrics_listen: raw.metrics_listen,
        })
    }
}

impl ApiSettings {
    pub fn listen(&self) -> Vec<SocketAddr> {
        self.listen.clone().unwrap_or_else(|| {
            vec![
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_API_PORT)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, DEFAULT_API_PORT)),
            ]
        })
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn listens_on_both_families_by_default_and_takes_a_list() {
        let parsed: ApiSettings =
            toml::from_str("ca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n").unwrap();
        assert_eq!(
            parsed.listen(),
            [
                "0.0.0.0:7443".parse::<SocketAddr>().unwrap(),
                "[::]:7443".parse().unwrap()
            ]
        );
        let parsed: ApiSettings = toml::from_str(
            "listen = [\"10.0.0.5:9443\"]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
        )
        .unwrap();
        assert_eq!(parsed.listen(), ["10.0.0.5:9443".parse().unwrap()]);
        let generated: ApiSettings = toml::from_str("ca = \"ca.pem\"\n").unwrap();
        assert_eq!(generated.server, None);
        let err = toml::from_str::<ApiSettings>("ca = \"ca.pem\"\ncert = \"c.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("give both or neither"), "{err}");
        assert!(toml::from_str::<ApiSettings>("cert = \"c.pem\"\n").is_err());
    }
}
