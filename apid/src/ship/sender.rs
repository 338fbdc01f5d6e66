//! One receiver's connection: connect (again, with backoff, for as long as it takes), send
//! what the queue holds, and give back what a broken connection may not have delivered.
//!
//! TCP acknowledges bytes, not lines, and a receiver's kernel (or a proxy such as QEMU's
//! user network) acknowledges bytes the receiver itself never read when it dies. So a line
//! is kept after it is sent until the socket reports its bytes acknowledged (`SIOCOUTQ`)
//! *and* [`RESEND_WINDOW`] has passed; when the connection breaks, what is kept is sent
//! again first. A receiver so gets every line at least once, in order, and a few twice
//! after an outage, which the `sequenceId` (or JSON `seq`) tells apart. UDP gives no such
//! word: a datagram sent is a datagram forgotten.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use berth_event::Event;
use berth_manifest::{ForwardTarget, Transport};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::message::{datagram, frame, Message, Source};
use super::queue::Shared;

/// How long a sent line is kept for a resend after the socket acknowledged it.
pub const RESEND_WINDOW: Duration = Duration::from_secs(3);
/// The first wait before connecting again, doubled after each failure up to
/// [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// A connection attempt, a TLS handshake and a write get this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// How often an idle connection is looked at for a receiver that went away.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Bytes of lines taken from the queue at a time.
const BATCH_BYTES: usize = 64 << 10;
/// A receiver that stays unreachable is said again this often.
const FAILURE_NOTE_EVERY: Duration = Duration::from_secs(60);

/// A TCP stream that counts the bytes written to it.
struct Counted {
    stream: TcpStream,
    written: u64,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.stream.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

enum Link {
    Tcp(Counted),
    Tls(Box<StreamOwned<ClientConnection, Counted>>),
    Udp(UdpSocket),
}

impl Link {
    fn tcp(&self) -> Option<&Counted> {
        match self {
            Link::Tcp(counted) => Some(counted),
            Link::Tls(tls) => Some(&tls.sock),
            Link::Udp(_) => None,
        }
    }

    /// Bytes written to the socket so far, and how many of them the peer has not
    /// acknowledged; none for UDP.
    fn progress(&self) -> Option<(u64, u64)> {
        let counted = self.tcp()?;
        let mut unsent: nix::libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int to the pointer, which points at `unsent`, alive
        // for the call; the descriptor is the connected TCP socket `counted` owns.
        let result = unsafe {
            nix::libc::ioctl(
                counted.stream.as_raw_fd(),
                nix::libc::TIOCOUTQ,
                &mut unsent as *mut nix::libc::c_int,
            )
        };
        let unacked = if result == 0 {
            u64::try_from(unsent).unwrap_or(0)
        } else {
            // Unknown: count everything as unacknowledged.
            counted.written
        };
        Some((counted.written, unacked))
    }

    /// Why the connection is over, if the receiver closed it or it failed. Receivers say
    /// nothing on a syslog connection, so anything readable is looked at without waiting.
    fn closed(&mut self) -> Option<String> {
        let readable = {
            let fd = match self {
                Link::Tcp(counted) => counted.stream.as_fd(),
                Link::Tls(tls) => tls.sock.stream.as_fd(),
                Link::Udp(_) => return None,
            };
            let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
            matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
        };
        if !readable {
            return None;
        }
        let mut sink = [0u8; 4096];
        match self {
            Link::Tcp(counted) => match counted.stream.read(&mut sink) {
                Ok(0) => Some("the receiver closed the connection".to_string()),
                Ok(_) => None,
                Err(err) => Some(err.to_string()),
            },
            Link::Tls(tls) => {
                let tls = &mut **tls;
                match tls.conn.read_tls(&mut tls.sock) {
                    Ok(0) => return Some("the receiver closed the connection".to_string()),
                    Ok(_) => {}
                    Err(err) => return Some(err.to_string()),
                }
                if let Err(err) = tls.conn.process_new_packets() {
                    return Some(format!("TLS: {err}"));
                }
                match tls.conn.reader().read(&mut sink) {
                    Ok(0) => Some("the receiver closed the TLS session".to_string()),
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => None,
                    Ok(_) => None,
                    Err(err) => Some(err.to_string()),
                }
            }
            Link::Udp(_) => None,
        }
    }

    fn send(&mut self, batch: &[Arc<Message>], json: bool, hostname: &str) -> std::io::Result<()> {
        match self {
            Link::Udp(socket) => {
                for message in batch {
                    // Refused datagrams (an ICMP error from an earlier one) are not retried.
                    let _ = socket.send(&datagram(message, json, hostname));
                }
                Ok(())
            }
            Link::Tcp(counted) => {
                counted.write_all(&frames(batch, json, hostname))?;
                counted.flush()
            }
            Link::Tls(tls) => {
                tls.write_all(&frames(batch, json, hostname))?;
                tls.flush()
            }
        }
    }
}

fn frames(batch: &[Arc<Message>], json: bool, hostname: &str) -> Vec<u8> {
    batch
        .iter()
        .flat_map(|message| frame(message, json, hostname))
        .collect()
}

fn connect(target: &ForwardTarget, tls: Option<&Arc<ClientConfig>>) -> Result<Link, String> {
    let addresses: Vec<_> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .collect();
    let mut last = format!("{} has no address", target.host);
    for address in addresses {
        if target.transport == Transport::Udp {
            let local = if address.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            return UdpSocket::bind(local)
                .and_then(|socket| socket.connect(address).map(|()| Link::Udp(socket)))
                .map_err(|e| format!("{address}: {e}"));
        }
        match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                stream
                    .set_write_timeout(Some(WRITE_TIMEOUT))
                    .and_then(|()| stream.set_read_timeout(Some(CONNECT_TIMEOUT)))
                    .map_err(|e| e.to_string())?;
                let counted = Counted { stream, written: 0 };
                return match (target.transport, tls) {
                    (Transport::TcpTls, Some(config)) => handshake(target, config, counted),
                    (Transport::TcpTls, None) => Err("no CA for TLS".to_string()),
                    _ => Ok(Link::Tcp(counted)),
                };
            }
            Err(err) => last = format!("{address}: {err}"),
        }
    }
    Err(last)
}

fn handshake(
    target: &ForwardTarget,
    config: &Arc<ClientConfig>,
    mut counted: Counted,
) -> Result<Link, String> {
    let name = ServerName::try_from(target.host.clone())
        .map_err(|e| format!("{} is not a TLS server name: {e}", target.host))?;
    let mut conn =
        ClientConnection::new(Arc::clone(config), name).map_err(|e| format!("TLS: {e}"))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut counted)
            .map_err(|e| format!("TLS handshake: {e}"))?;
    }
    Ok(Link::Tls(Box::new(StreamOwned::new(conn, counted))))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "-".to_string())
}

/// Ships `queue` to `target` for good.
pub fn run(target: &ForwardTarget, json: bool, tls: Option<Arc<ClientConfig>>, queue: &Shared) {
    let receiver = target.to_string();
    let mut backoff = RECONNECT_MIN;
    let mut failure_noted: Option<Instant> = None;
    loop {
        match connect(target, tls.as_ref()) {
            Ok(link) => {
                crate::emit(Event::new("logs-connected").field("receiver", &receiver));
                backoff = RECONNECT_MIN;
                failure_noted = None;
                let (error, unsure) = pump(link, json, queue, &receiver);
                crate::emit(
                    Event::new("logs-disconnected")
                        .field("receiver", &receiver)
                        .field("error", error)
                        .field("resending", unsure.len()),
                );
                queue.requeue(unsure);
            }
            Err(err) => {
                if failure_noted.is_none_or(|at| at.elapsed() >= FAILURE_NOTE_EVERY) {
                    crate::emit(
                        Event::new("logs-failed")
                            .field("receiver", &receiver)
                            .field("error", err),
                    );
                    failure_noted = Some(Instant::now());
                }
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// Sends until the connection fails: why, and the lines it may not have delivered, oldest
/// first.
fn pump(mut link: Link, json: bool, queue: &Shared, receiver: &str) -> (String, Vec<Arc<Message>>) {
    let mut kept: VecDeque<(Arc<Message>, u64, Instant)> = VecDeque::new();
    let unsure = |kept: VecDeque<(Arc<Message>, u64, Instant)>, more: Vec<Arc<Message>>| {
        kept.into_iter().map(|(m, _, _)| m).chain(more).collect()
    };
    loop {
        if let Some(why) = link.closed() {
            return (why, unsure(kept, Vec::new()));
        }
        let (mut batch, dropped) = queue.take(IDLE_CHECK, BATCH_BYTES);
        if dropped > 0 {
            crate::emit(
                Event::new("logs-dropped")
                    .field("receiver", receiver)
                    .field("count", dropped),
            );
            batch.insert(
                0,
                Arc::new(Message {
                    seq: None,
                    time: SystemTime::now(),
                    source: Source::Shipper,
                    text: format!("berth event=logs-dropped receiver={receiver} count={dropped}"),
                }),
            );
        }
        if !batch.is_empty() {
            let hostname = hostname();
            // A receiver that closed while the queue was waited on: nothing is lost to it.
            if let Some(why) = link.closed() {
                return (why, unsure(kept, batch));
            }
            if let Err(err) = link.send(&batch, json, &hostname) {
                return (err.to_string(), unsure(kept, batch));
            }
            if let Some((written, _)) = link.progress() {
                let now = Instant::now();
                kept.extend(batch.into_iter().map(|m| (m, written, now)));
            }
        }
        forget_delivered(&mut kept, link.progress(), Instant::now());
    }
}

/// Drops the kept lines whose bytes the peer acknowledged more than [`RESEND_WINDOW`] ago.
fn forget_delivered<T>(
    kept: &mut VecDeque<(T, u64, Instant)>,
    progress: Option<(u64, u64)>,
    now: Instant,
) {
    let Some((written, unacked)) = progress else {
        kept.clear();
        return;
    };
    let acknowledged = written.saturating_sub(unacked);
    while kept.front().is_some_and(|(_, end, sent)| {
        *end <= acknowledged && now.saturating_duration_since(*sent) >= RESEND_WINDOW
    }) {
        kept.pop_front();
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn line(text: &str) -> Arc<Message> {
        Arc::new(Message {
            seq: Some(1),
            time: SystemTime::UNIX_EPOCH,
            source: Source::Container {
                name: "web".to_string(),
            },
            text: text.to_string(),
        })
    }

    /// A TLS receiver on the loopback with a certificate for `localhost` from a fresh CA: the
    /// CA's PEM file, the port, and what the receiver reads from its one connection.
    fn tls_receiver() -> (std::path::PathBuf, u16, std::sync::mpsc::Receiver<Vec<u8>>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        let ca_file = std::env::temp_dir().join(format!("ship-ca-{}.pem", std::process::id()));
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (got, seen) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut buffer = [0u8; 4096];
            let mut all = Vec::new();
            // Until the client goes (without close_notify, rustls says UnexpectedEof).
            while let Ok(n) = tls.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(buffer.get(..n).unwrap());
                if all.ends_with(b"second") {
                    break;
                }
            }
            got.send(all).unwrap();
        });
        (ca_file, port, seen)
    }

    #[test]
    fn lines_go_over_tls_to_a_receiver_the_ca_vouches_for() {
        let (ca, port, seen) = tls_receiver();
        let config = crate::tls::client_config(&ca).unwrap();
        let target = ForwardTarget {
            transport: Transport::TcpTls,
            host: "localhost".to_string(),
            port,
        };
        let mut link = connect(&target, Some(&config)).unwrap();
        link.send(&[line("first"), line("second")], false, "h")
            .unwrap();
        let got = String::from_utf8(seen.recv_timeout(Duration::from_secs(10)).unwrap()).unwrap();
        assert!(
            got.contains(" web - - [meta sequenceId=\"1\"] first"),
            "{got}"
        );
        assert!(got.ends_with("second"), "{got}");
        // The receiver went away: the link says so before the next send.
        let deadline = Instant::now() + Duration::from_secs(10);
        while link.closed().is_none() {
            assert!(
                Instant::now() < deadline,
                "the closed connection was not seen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Another CA's receiver is refused at the handshake.
        let (_, other_port, _) = tls_receiver();
        let wrong = ForwardTarget {
            port: other_port,
            ..target
        };
        let refused = connect(&wrong, Some(&config)).err().unwrap();
        assert!(refused.contains("TLS handshake"), "{refused}");
        let _ = std::fs::remove_file(ca);
    }

    #[test]
    fn lines_are_kept_until_acknowledged_and_the_window_passed() {
        let t0 = Instant::now();
        let mut kept: VecDeque<(u32, u64, Instant)> =
            [(1, 100, t0), (2, 200, t0), (3, 300, t0 + RESEND_WINDOW)].into();
        forget_delivered(&mut kept, Some((300, 150)), t0 + RESEND_WINDOW);
        assert_eq!(kept.front().unwrap().0, 2, "only the first is acknowledged");
        forget_delivered(&mut kept, Some((300, 0)), t0 + RESEND_WINDOW);
        assert_eq!(kept.len(), 1, "the third was sent within the window");
        forget_delivered(&mut kept, Some((300, 0)), t0 + RESEND_WINDOW * 2);
        assert!(kept.is_empty());
        kept.push_back((4, 400, t0));
        forget_delivered(&mut kept, None, t0);
        assert!(kept.is_empty(), "UDP keeps nothing");
    }
}
