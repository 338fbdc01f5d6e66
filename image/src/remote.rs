//! `berth ctl --endpoint HOST:PORT`: berthctl's verbs against a host's berth-apid, over
//! mutual TLS.
//!
//! berthctl speaks to a Unix socket. Rather than teach it TLS (it is also the guest's
//! `berthctl`, and TLS would grow every image), the host CLI opens the TLS connection itself,
//! serves it on a private Unix socket and runs berthctl against that: verbs, flags, output
//! and exit codes are those of the control port by construction. Each connection berthctl
//! opens (a verb opens one) becomes one TLS connection; the first is opened before berthctl
//! runs, so an endpoint that cannot be reached or a certificate that is refused is said
//! plainly, with exit code 3 as for an unreachable socket.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::{TcpStream, UnixListener};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How long the connection and the handshake may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Where and as whom to reach berth-apid.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `HOST:PORT`.
    pub address: String,
    /// How the server's certificate is checked.
    pub trust: ServerTrust,
    /// This client's certificate chain and key (PEM); none is a client the server refuses.
    pub client: Option<(PathBuf, PathBuf)>,
    /// The name the server's certificate must hold; the host part of `address` when unset.
    pub server_name: Option<String>,
}

/// How the server is told from an impostor.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Its certificate chains to this CA (PEM) and names the host.
    Ca(PathBuf),
    /// Its certificate is exactly this one: SHA-256 of the DER, as berth-apid prints for a
    /// key it generated (`api-key-generated sha256=`, `api-listening server_sha256=`).
    Pinned([u8; 32]),
}

impl ServerTrust {
    /// `--server-sha256 HEX` (colons between bytes allowed, as other tools print them).
    pub fn pinned(hex: &str) -> Result<ServerTrust, String> {
        let digits: String = hex.chars().filter(|c| *c != ':').collect();
        let bad = || format!("--server-sha256 {hex}: not 64 hexadecimal digits");
        if digits.len() != 64 || !digits.is_ascii() {
            return Err(bad());
        }
        let mut sha256 = [0u8; 32];
        for (byte, pair) in sha256.iter_mut().zip(digits.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(ServerTrust::Pinned(sha256))
    }
}

/// Accepts one server certificate, by its SHA-256, whatever names or issuer it has, and
/// checks the handshake's signature with its key as any verifier does.
#[derive(Debug)]
struct PinnedServer {
    sha256: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use sha2::Digest;
        let seen = sha2::Sha256::digest(end_entity.as_ref());
        if seen.as_slice() == self.sha256 {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            let seen: String = seen.iter().map(|b| format!("{b:02x}")).collect();
            Err(rustls::Error::General(format!(
                "the server's certificate has SHA-256 {seen}, not the one given with --server-sha256"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the certificates in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

fn client_config(endpoint: &Endpoint) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?;
    let builder = match &endpoint.trust {
        ServerTrust::Ca(ca) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(ca)? {
                roots
                    .add(certificate)
                    .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
            }
            versions.with_root_certificates(roots)
        }
        ServerTrust::Pinned(sha256) => {
            versions
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedServer {
                    sha256: *sha256,
                    provider,
                }))
        }
    };
    let config = match &endpoint.client {
        Some((cert, key)) => {
            let chain = certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read the private key in {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("--cert and --key: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The host part of `HOST:PORT` (`[V6]:PORT` too), as the certificate must name it.
fn server_name(endpoint: &Endpoint) -> Result<ServerName<'static>, String> {
    let host = match &endpoint.server_name {
        Some(name) => name.clone(),
        None => {
            let (host, _port) = endpoint
                .address
                .rsplit_once(':')
                .ok_or_else(|| format!("--endpoint {}: not HOST:PORT", endpoint.address))?;
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        }
    };
    match host.parse::<IpAddr>() {
        Ok(ip) => Ok(ServerName::IpAddress(ip.into())),
        Err(_) => ServerName::try_from(host.clone())
            .map_err(|e| format!("`{host}` is not a server name: {e}")),
    }
}

async fn connect(
    endpoint: &Endpoint,
    connector: &TlsConnector,
    name: &ServerName<'static>,
) -> Result<TlsStream<TcpStream>, String> {
    let address = &endpoint.address;
    let attempt = async {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot reach {address}: {e}"))?;
        connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS with {address} failed: {e}"))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("no TLS connection with {address} within {CONNECT_TIMEOUT:?}"))?
}

/// A private directory for the relay's socket, removed when dropped.
struct SocketDir(PathBuf);

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs berthctl with `args` against `endpoint`; its exit code.
pub fn run_ctl(endpoint: &Endpoint, args: Vec<String>) -> std::process::ExitCode {
    match relay_and_run(endpoint, args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("berth ctl: {err}");
            // berthctl's code for "cannot reach init".
            std::process::ExitCode::from(3)
        }
    }
}

fn relay_and_run(endpoint: &Endpoint, args: Vec<String>) -> Result<std::process::ExitCode, String> {
    let config = client_config(endpoint)?;
    let name = server_name(endpoint)?;
    let connector = TlsConnector::from(config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let first = runtime.block_on(connect(endpoint, &connector, &name))?;
    let dir = std::env::temp_dir().join(format!("berth-ctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dir = SocketDir(dir);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", dir.0.display()))?;
    let socket = dir.0.join("control.sock");
    // Left by an earlier process that had this PID and was killed before it cleaned up.
    let _ = std::fs::remove_file(&socket);
    let listener = {
        let _entered = runtime.enter();
        UnixListener::bind(&socket).map_err(|e| format!("{}: {e}", socket.display()))?
    };
    let endpoint_for_relay = endpoint.clone();
    runtime.spawn(async move {
        let mut next = Some(first);
        loop {
            let Ok((mut local, _)) = listener.accept().await else {
                return;
            };
            let tls = match next.take() {
                Some(tls) => tls,
                None => match connect(&endpoint_for_relay, &connector, &name).await {
                    Ok(tls) => tls,
                    Err(err) => {
                        eprintln!("berth ctl: {err}");
                        continue;
                    }
                },
            };
            let address = endpoint_for_relay.address.clone();
            tokio::spawn(async move {
                let mut tls = tls;
                if let Err(err) = tokio::io::copy_bidirectional(&mut tls, &mut local).await {
                    // A server that refuses the client certificate says so after the
                    // handshake, as a TLS alert on the first read.
                    if err.kind() != std::io::ErrorKind::BrokenPipe
                        && err.kind() != std::io::ErrorKind::ConnectionReset
                    {
                        eprintln!("berth ctl: the connection to {address} failed: {err}");
                    }
                }
            });
        }
    });
    let code = berth_ctl::run("berth ctl", &socket, args);
    runtime.shutdown_background();
    drop(dir);
    Ok(code)
}
