//! berth-apid: berthctl's control protocol over the network, with mutual TLS.
//!
//! A daemon init starts and restarts (as it does netd) when the manifest has `[api]`. It
//! terminates TLS 1.3, requires a client certificate signed by the manifest's CA, and then
//! relays the connection byte for byte to init's control socket: the protocol, its versions
//! and its verbs are init's, unchanged, and every verb that works on the socket works here.
//! TLS and the network stay out of PID 1; init sees one more root client on its socket.
//!
//! What a network peer can do before it holds a certificate: open connections (at most
//! [`MAX_CONNECTIONS`] at once, each given [`HANDSHAKE_TIMEOUT`] to finish its handshake) and
//! send handshake bytes to rustls. Each refusal is an `api-refused` event.

mod identity;
mod listen;
mod metrics;
mod ship;
mod tls;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_event::Event;
use sha2::{Digest, Sha256};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsAcceptor;

pub use tls::{server_config, TlsError};

/// Connections served at once; more are closed at once (and said).
pub const MAX_CONNECTIONS: usize = 32;
/// A peer that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn emit(event: Event) {
    println!("{}", event.finish());
}

/// The argument that makes berth-apid the log shipper (`[logs] forward`) instead of the API.
pub const SHIP_LOGS: &str = "ship-logs";

/// The manifest berth-apid reads unless given `--manifest`.
const DEFAULT_MANIFEST: &str = berth_manifest::MANIFEST_PATH;

pub fn run() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut manifest = std::path::PathBuf::from(DEFAULT_MANIFEST);
    let mut ship_logs = false;
    while let Some(arg) = args.next() {
        if arg == "--manifest" {
            if let Some(path) = args.next() {
                manifest = path.into();
            }
        } else if arg == SHIP_LOGS {
            ship_logs = true;
        }
    }
    if ship_logs {
        return ship::run(&manifest);
    }
    let settings = match berth_manifest::Manifest::load(&manifest) {
        Ok(m) => m.api,
        Err(err) => {
            emit(Event::new("api-failed").field("error", err));
            return ExitCode::FAILURE;
        }
    };
    let Some(settings) = settings else {
        emit(Event::new("api-failed").field("error", "the manifest has no [api] table"));
        return ExitCode::FAILURE;
    };
    let generated_dir = std::path::Path::new(berth_manifest::API_GENERATED_DIR);
    let identity = match identity::server_identity(
        std::path::Path::new(berth_manifest::API_CERT_PATH),
        std::path::Path::new(berth_manifest::API_KEY_PATH),
        generated_dir,
    ) {
        Ok((identity, origin)) => {
            if origin == identity::Origin::New {
                emit(
                    Event::new("api-key-generated")
                        .field("sha256", &identity.sha256)
                        .field("path", identity.cert.display())
                        .field("persistent", identity::persistent(generated_dir)),
                );
            }
            identity
        }
        Err(err) => {
            emit(Event::new("api-failed").field("error", err));
            return ExitCode::FAILURE;
        }
    };
    let config = match server_config(
        std::path::Path::new(berth_manifest::API_CA_PATH),
        &identity.cert,
        &identity.key,
    ) {
        Ok(config) => config,
        Err(err) => {
            emit(Event::new("api-failed").field("error", err));
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            emit(Event::new("api-failed").field("error", err));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        if let Some(address) = settings.metrics_listen {
            tokio::spawn(async move {
                if let Err(err) = metrics::serve(address).await {
                    emit(Event::new("metrics-failed").field("error", err));
                }
            });
        }
        serve(
            settings.listen(),
            TlsAcceptor::from(config),
            &identity.sha256,
        )
        .await
    });
    if let Err(err) = result {
        emit(Event::new("api-failed").field("error", err));
    }
    ExitCode::FAILURE
}

/// Listens on every address and serves connections until a listener fails.
async fn serve(
    addresses: Vec<SocketAddr>,
    acceptor: TlsAcceptor,
    server_sha256: &str,
) -> Result<(), String> {
    let active = Arc::new(AtomicUsize::new(0));
    let mut listeners = Vec::new();
    for address in addresses {
        let listener = listen::bind(address).map_err(|e| format!("listen on {address}: {e}"))?;
        emit(
            Event::new("api-listening")
                .field("addr", address)
                .field("server_sha256", server_sha256),
        );
        listeners.push(tokio::spawn(accept_loop(
            listener,
            acceptor.clone(),
            Arc::clone(&active),
        )));
    }
    for listener in listeners {
        match listener.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(err),
            Err(err) => return Err(format!("a listener ended: {err}")),
        }
    }
    Ok(())
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    active: Arc<AtomicUsize>,
) -> Result<(), String> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors or a connection reset before accept: the listener is
            // fine, the next one may succeed.
            Err(err) => {
                emit(Event::new("api-accept-failed").field("error", err));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            emit(
                Event::new("api-refused")
                    .field("peer", peer)
                    .field("reason", format!("{MAX_CONNECTIONS} connections already")),
            );
            continue;
        }
        let acceptor = acceptor.clone();
        let active = Arc::clone(&active);
        tokio::spawn(async move {
            serve_connection(stream, peer, acceptor).await;
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// The client certificate's SHA-256, in hex: what names a client in the events.
fn fingerprint(certificate: &[u8]) -> String {
    Sha256::digest(certificate)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor) {
    let refused = |reason: String| {
        emit(
            Event::new("api-refused")
                .field("peer", peer)
                .field("reason", reason),
        );
    };
    let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => return refused(err.to_string()),
        Err(_) => return refused("handshake timed out".to_string()),
    };
    let client = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| fingerprint(leaf.as_ref()))
        .unwrap_or_default();
    emit(
        Event::new("api-connected")
            .field("peer", peer)
            .field("client_sha256", &client),
    );
    let mut init = match UnixStream::connect(berth_control::SOCKET).await {
        Ok(init) => init,
        Err(err) => {
            emit(
                Event::new("api-relay-failed")
                    .field("peer", peer)
                    .field("error", format!("{}: {err}", berth_control::SOCKET)),
            );
            return;
        }
    };
    // Either side closing ends the relay; an error is a peer gone, nothing to report.
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut init).await;
}
