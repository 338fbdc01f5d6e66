//! The DHCPv4 client of one link, with RFC 2131's state machine: INIT (DISCOVER), SELECTING
//! (OFFER), REQUESTING (REQUEST, then ACK or NAK), BOUND, RENEWING at T1 (unicast to the
//! server), REBINDING at T2 (broadcast), and back to INIT when the lease expires or a NAK
//! comes. Packets are `dhcproto`'s, sent over a UDP socket bound to the link, with the
//! broadcast flag set so that servers answer a client that has no address yet.
//!
//! Servers are hostile until checked. A reply to another transaction (another xid or hardware
//! address) is ignored without a word; a reply to this one is refused, with a
//! `dhcp-reply-refused` event, when its bytes are malformed ([`crate::reply`]), when it is no
//! lease ([`Lease::from_ack`]: no host address, a mask that is no prefix, a lease time of 0),
//! or when an ACK or NAK comes from another server than the one this client selected or
//! renews with. A refused reply changes nothing: the client waits on for the right one, as
//! after a lost packet. A lease without a subnet mask takes its address's classful prefix
//! (RFC 2132 leaves the option out to the server), one without a router gets no default route,
//! and an infinite lease (0xffffffff) is never renewed. After a NAK the client waits 1 s, then
//! twice as long after each further NAK up to 64 s, before it discovers again, so a server
//! that NAKs everything cannot make it send a storm of DISCOVERs.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use berth_event::Event;
use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::Encodable;
use nix::sys::socket::{
    bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
};
use tokio::net::UdpSocket;
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::emit;
use crate::lease::{server_of, Lease, MAX_CLASSLESS_ROUTES, MIN_MTU};
use crate::netlink::{Link, Netlink};
use crate::reply::{self, Refused};
use crate::saved;
use crate::state::Shared;

const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;
/// RFC 2131 §4.1: retransmit after 4 s, doubling to 64 s.
const FIRST_RETRANSMIT: Duration = Duration::from_secs(4);
const MAX_RETRANSMIT: Duration = Duration::from_secs(64);
/// While renewing or rebinding, ask again after half the time left, but at least this often.
const MIN_RENEW_RETRY: Duration = Duration::from_secs(60);
/// After the first NAK, wait this long before discovering again; doubled after each further
/// NAK up to [`MAX_RETRANSMIT`], and cleared once a lease is bound.
const FIRST_NAK_DELAY: Duration = Duration::from_secs(1);
/// The largest UDP payload: a reply is never cut short by the buffer it is read into.
const MAX_REPLY: usize = 65_535;
/// Refused replies reported per transaction (one client message): a server that floods them
/// cannot flood the console.
const MAX_REFUSALS_REPORTED: u32 = 8;
/// After an error that is not the server's answer (a socket or netlink failure): soon, since
/// such errors are mostly the link or its firewall settling at boot.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// The options netd asks for: subnet, router, DNS, hostname, domain, MTU, lease time, T1, T2,
/// classless static routes and NTP servers.
pub(crate) const REQUESTED: &[OptionCode] = &[
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::Hostname,
    OptionCode::DomainName,
    OptionCode::InterfaceMtu,
    OptionCode::AddressLeaseTime,
    OptionCode::Renewal,
    OptionCode::Rebinding,
    OptionCode::ClasslessStaticRoute,
    OptionCode::NtpServers,
];

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("socket on {iface}: {source}")]
    Socket {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encode a {kind} message: {detail}")]
    Encode { kind: &'static str, detail: String },
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
}

/// How the server answered a REQUEST.
enum Reply {
    Ack(Box<Lease>),
    Nak,
}

/// Where a REQUEST goes and what it carries, by state.
#[derive(Clone, Copy)]
enum RequestKind {
    /// After an OFFER: broadcast, with the offered address and the server's id.
    Selecting { offered: Ipv4Addr, server: Ipv4Addr },
    /// At T1: unicast to the server, from the leased address.
    Renewing { addr: Ipv4Addr, server: Ipv4Addr },
    /// At T2: broadcast, from the leased address.
    Rebinding { addr: Ipv4Addr },
}

impl RequestKind {
    /// RFC 2131 §4.3.1: the ACK grants the address asked for (the offered one, or the one
    /// held); a server that grants another is answering some other request, or lying.
    fn check_address(self, reply: &Message) -> Result<(), Refused> {
        let expected = match self {
            RequestKind::Selecting { offered, .. } => offered,
            RequestKind::Renewing { addr, .. } | RequestKind::Rebinding { addr } => addr,
        };
        let got = reply.yiaddr();
        if got == expected {
            Ok(())
        } else {
            Err(Refused::Address { got, expected })
        }
    }

    /// RFC 2131 §4.4.1: the ACK or NAK comes from the server selected (or renewed with); while
    /// rebinding, any server may answer.
    fn check_server(self, reply: &Message) -> Result<(), Refused> {
        let expected = match self {
            RequestKind::Selecting { server, .. } | RequestKind::Renewing { server, .. } => server,
            RequestKind::Rebinding { .. } => return Ok(()),
        };
        let got = server_of(reply);
        if got == expected {
            Ok(())
        } else {
            Err(Refused::Server { got, expected })
        }
    }
}

/// The wait before the next DISCOVER after one more NAK, from the wait after the last.
fn after_nak(delay: Duration) -> Duration {
    (delay * 2).clamp(FIRST_NAK_DELAY, MAX_RETRANSMIT)
}

#[derive(Debug)]
pub struct Client {
    link: Link,
    netlink: Netlink,
    shared: Arc<Shared>,
    xid: u32,
    /// Refused replies reported in the current transaction.
    refusals: u32,
    /// How long to wait before the next DISCOVER, after NAKs; zero once bound.
    nak_delay: Duration,
}

fn udp_socket(iface: &str) -> std::io::Result<UdpSocket> {
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::Broadcast, &true)?;
    setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from(iface))?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT)),
    )?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

fn message_type(message: &Message) -> Option<MessageType> {
    match message.opts().get(OptionCode::MessageType) {
        Some(DhcpOption::MessageType(kind)) => Some(*kind),
        _ => None,
    }
}

/// A client message for `mac`, with the broadcast flag and netd's parameter request list.
fn build_message(xid: u32, mac: &[u8], kind: MessageType, ciaddr: Ipv4Addr) -> Message {
    let mut message = Message::new_with_id(
        xid,
        ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        mac.get(..6).unwrap_or_default(),
    );
    message
        .set_opcode(Opcode::BootRequest)
        .set_htype(HType::Eth)
        .set_flags(Flags::default().set_broadcast());
    message.opts_mut().insert(DhcpOption::MessageType(kind));
    message
        .opts_mut()
        .insert(DhcpOption::ParameterRequestList(REQUESTED.to_vec()));
    message
}

async fn send_message(
    socket: &UdpSocket,
    iface: &str,
    message: &Message,
    to: Ipv4Addr,
    kind: &'static str,
) -> Result<(), DhcpError> {
    let bytes = message.to_vec().map_err(|e| DhcpError::Encode {
        kind,
        detail: e.to_string(),
    })?;
    socket
        .send_to(&bytes, SocketAddrV4::new(to, SERVER_PORT))
        .await
        .map_err(|source| DhcpError::Socket {
            iface: iface.to_string(),
            source,
        })?;
    Ok(())
}

impl Client {
    pub fn new(link: Link, netlink: Netlink, shared: Arc<Shared>) -> Client {
        let xid = u32::from_le_bytes([
            link.mac.get(2).copied().unwrap_or(0),
            link.mac.get(3).copied().unwrap_or(0),
            link.mac.get(4).copied().unwrap_or(0),
            link.mac.get(5).copied().unwrap_or(0),
        ]) ^ std::process::id();
        Client {
            link,
            netlink,
            shared,
            xid,
            refusals: 0,
            nak_delay: Duration::ZERO,
        }
    }

    /// Runs the state machine for as long as netd runs.
    pub async fn run(mut self) {
        loop {
            if let Err(err) = self.cycle().await {
                emit(
                    Event::new("dhcp-error")
                        .field("iface", &self.link.name)
                        .field("error", err),
                );
                sleep(ERROR_BACKOFF).await;
            }
        }
    }

    fn message(&mut self, kind: MessageType, ciaddr: Ipv4Addr) -> Message {
        self.xid = self.xid.wrapping_add(1);
        self.refusals = 0;
        build_message(self.xid, &self.link.mac, kind, ciaddr)
    }

    async fn send(
        &self,
        socket: &UdpSocket,
        message: &Message,
        to: Ipv4Addr,
        kind: &'static str,
    ) -> Result<(), DhcpError> {
        send_message(socket, &self.link.name, message, to, kind).await
    }

    /// Says that a reply (`kind`, as far as it is known) to the current transaction was
    /// refused and why, up to [`MAX_REFUSALS_REPORTED`] times per transaction.
    fn refused(&mut self, kind: &str, reason: &Refused) {
        self.refusals = self.refusals.saturating_add(1);
        if self.refusals <= MAX_REFUSALS_REPORTED {
            emit(
                Event::new("dhcp-reply-refused")
                    .field("iface", &self.link.name)
                    .field("reply", kind)
                    .field("reason", reason),
            );
        }
    }

    /// The next well-formed reply to this client's current transaction, until `deadline`.
    async fn receive(&mut self, socket: &UdpSocket, deadline: Instant) -> Option<Message> {
        let mut buf = vec![0u8; MAX_REPLY];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (n, _) = timeout(left, socket.recv_from(&mut buf)).await.ok()?.ok()?;
            let bytes = buf.get(..n).unwrap_or_default();
            if !reply::for_transaction(bytes, self.xid, &self.link.mac) {
                continue;
            }
            match reply::parse(bytes) {
                Ok(message) => return Some(message),
                Err(reason) => self.refused("unknown", &reason),
            }
        }
    }

    /// INIT and SELECTING: DISCOVER until an OFFER comes.
    async fn discover(&mut self, socket: &UdpSocket) -> Result<Message, DhcpError> {
        let mut wait = FIRST_RETRANSMIT;
        loop {
            let discover = self.message(MessageType::Discover, Ipv4Addr::UNSPECIFIED);
            self.send(socket, &discover, Ipv4Addr::BROADCAST, "DISCOVER")
                .await?;
            let deadline = Instant::now() + wait;
            while let Some(reply) = self.receive(socket, deadline).await {
                if message_type(&reply) != Some(MessageType::Offer) {
                    continue;
                }
                match Lease::from_ack(&reply) {
                    Ok(_) => return Ok(reply),
                    Err(reason) => self.refused("offer", &reason),
                }
            }
            wait = (wait * 2).min(MAX_RETRANSMIT);
        }
    }

    /// One REQUEST and its answer; None when no answer came by `deadline`.
    async fn request(
        &mut self,
        socket: &UdpSocket,
        kind: RequestKind,
        deadline: Instant,
    ) -> Result<Option<Reply>, DhcpError> {
        let (ciaddr, to) = match kind {
            RequestKind::Selecting { .. } => (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST),
            RequestKind::Renewing { addr, server } => (addr, server),
            RequestKind::Rebinding { addr } => (addr, Ipv4Addr::BROADCAST),
        };

        let mut request = self.message(MessageType::Request, ciaddr);
        if let RequestKind::Selecting { offered, server } = kind {
            request
                .opts_mut()
                .insert(DhcpOption::RequestedIpAddress(offered));
            request
                .opts_mut()
                .insert(DhcpOption::ServerIdentifier(server));
        }
        self.send(socket, &request, to, "REQUEST").await?;
        while let Some(reply) = self.receive(socket, deadline).await {
            let name = match message_type(&reply) {
                Some(MessageType::Ack) => "ack",
                Some(MessageType::Nak) => "nak",
                _ => continue,
            };
            if let Err(reason) = kind.check_server(&reply) {
                self.refused(name, &reason);
                continue;
            }
            if name == "nak" {
                return Ok(Some(Reply::Nak));
            }
            if let Err(reason) = kind.check_address(&reply) {
                self.refused(name, &reason);
                continue;
            }
            match Lease::from_ack(&reply) {
                Ok(mut lease) => {
                    self.drop_invalid_options(&mut lease);
                    return Ok(Some(Reply::Ack(Box::new(lease))));
                }
                Err(reason) => self.refused(name, &reason),
            }
        }
        Ok(None)
    }

    /// Drops an MTU below [`MIN_MTU`], option 121 routes past [`MAX_CLASSLESS_ROUTES`] and
    /// [`Self::drop_invalid_names`], saying so.
    fn drop_invalid_options(&self, lease: &mut Lease) {
        if let Some(mtu) = lease.drop_small_mtu() {
            emit(
                Event::new("dhcp-option-refused")
                    .field("iface", &self.link.name)
                    .field("option", "mtu")
                    .field("value", mtu)
                    .field("reason", format!("below {MIN_MTU}")),
            );
        }
        if let Some(offered) = lease.drop_excess_routes() {
            emit(
                Event::new("dhcp-option-refused")
                    .field("iface", &self.link.name)
                    .field("option", "classless-routes")
                    .field("value", offered)
                    .field(
                        "reason",
                        format!("more than {MAX_CLASSLESS_ROUTES}: the first are kept"),
                    ),
            );
        }
        self.drop_invalid_names(lease);
    }

    /// Drops a domain or hostname that is not a valid DNS name before it can reach
    /// `resolv.conf`, the lease file or the hostname, and says so, with the value escaped.
    fn drop_invalid_names(&self, lease: &mut Lease) {
        for refused in lease.drop_invalid_names() {
            emit(
                Event::new("dhcp-option-refused")
                    .field("iface", &self.link.name)
                    .field("option", refused.option)
                    .field("value", refused.value.escape_default())
                    .field("reason", "not a valid DNS name"),
            );
        }
    }

    /// Applies a lease just granted and saves it for a netd that may follow this one.
    fn apply(&self, lease: &Lease, previous: Option<&Lease>) -> Result<(), DhcpError> {
        self.apply_lease(lease, previous)?;
        if let Err(err) = saved::save(&self.link.name, lease, saved::since_boot()) {
            emit(
                Event::new("dhcp-save-failed")
                    .field("iface", &self.link.name)
                    .field("error", err),
            );
        }
        // After the save: whoever waits for network-online finds the lease file in place.
        self.shared.configured(self.link.index);
        Ok(())
    }

    fn apply_lease(&self, lease: &Lease, previous: Option<&Lease>) -> Result<(), DhcpError> {
        let index = self.link.index;
        if let Some(old) =
            previous.filter(|old| old.addr != lease.addr || old.prefix != lease.prefix)
        {
            self.netlink
                .del_address(index, old.addr.into(), old.prefix)?;
        }
        if let Some(mtu) = lease.mtu {
            self.netlink.set_mtu(index, u32::from(mtu))?;
        }
        self.netlink
            .add_address(index, lease.addr.into(), lease.prefix)?;
        // A route the kernel refuses (a gateway it cannot reach, say) is reported and
        // skipped: one bad route of a server's must not cost the host its address.
        for (to, prefix, via) in lease.routes() {
            if let Err(err) = self
                .netlink
                .add_route(index, to.into(), prefix, via.into(), None)
            {
                emit(
                    Event::new("dhcp-route-failed")
                        .field("iface", &self.link.name)
                        .field("to", format!("{to}/{prefix}"))
                        .field("via", via)
                        .field("error", err),
                );
            }
        }
        self.shared.lease_held(&self.link, lease);
        if self.shared.hostname_from_dhcp {
            if let Some(hostname) = &lease.hostname {
                match nix::unistd::sethostname(hostname) {
                    Ok(()) => emit(
                        Event::new("hostname-set")
                            .field("hostname", hostname)
                            .field("from", "dhcp"),
                    ),
                    Err(err) => emit(
                        Event::new("hostname-failed")
                            .field("hostname", hostname)
                            .field("error", err),
                    ),
                }
            }
        }
        Ok(())
    }

    fn bound_event(&self, kind: &str, lease: &Lease) {
        let join = |ips: &[Ipv4Addr]| {
            ips.iter()
                .map(Ipv4Addr::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let routes: Vec<String> = lease
            .routes()
            .iter()
            .map(|(to, prefix, via)| format!("{to}/{prefix}>{via}"))
            .collect();
        emit(
            Event::new(kind)
                .field("iface", &self.link.name)
                .field("addr", format!("{}/{}", lease.addr, lease.prefix))
                .field("gateway", join(&lease.routers))
                .field("dns", join(&lease.dns))
                .field("routes", routes.join(","))
                .field("mtu", lease.mtu.map_or(String::new(), |m| m.to_string()))
                .field("lease", format!("{}s", lease.lease_time.as_secs()))
                .field("ntp", join(&lease.ntp)),
        );
    }

    /// One pass: from INIT (or a lease an earlier netd saved) to a lease, then holding it
    /// until it is lost.
    async fn cycle(&mut self) -> Result<(), DhcpError> {
        let socket = udp_socket(&self.link.name).map_err(|source| DhcpError::Socket {
            iface: self.link.name.clone(),
            source,
        })?;
        let held = match self.resume()? {
            Some(held) => Some(held),
            None => self
                .acquire(&socket)
                .await?
                .map(|lease| (lease, Instant::now())),
        };
        match held {
            Some((lease, started)) => self.hold(&socket, lease, started).await,
            None => Ok(()),
        }
    }

    /// A lease that an earlier netd bound and saved, still valid: applied again (the kernel
    /// most likely kept it) and held from when it was granted.
    fn resume(&self) -> Result<Option<(Lease, Instant)>, DhcpError> {
        let Some((mut lease, age)) = saved::load(&self.link.name) else {
            return Ok(None);
        };
        // Saved after the same checks, unless written by a netd older than they are.
        self.drop_invalid_options(&mut lease);
        self.apply_lease(&lease, None)?;
        self.shared.configured(self.link.index);
        emit(
            Event::new("dhcp-resumed")
                .field("iface", &self.link.name)
                .field("addr", format!("{}/{}", lease.addr, lease.prefix))
                .field("age", format!("{}s", age.as_secs()))
                .field("lease", format!("{}s", lease.lease_time.as_secs())),
        );
        let started = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        Ok(Some((lease, started)))
    }

    /// A NAK in `state`: said, and the wait before the next DISCOVER lengthened.
    fn nak(&mut self, state: &str) {
        self.nak_delay = after_nak(self.nak_delay);
        emit(
            Event::new("dhcp-nak")
                .field("iface", &self.link.name)
                .field("state", state)
                .field("next_in", format!("{}s", self.nak_delay.as_secs())),
        );
    }

    /// INIT, SELECTING, REQUESTING: a new lease, applied, or None to start over.
    async fn acquire(&mut self, socket: &UdpSocket) -> Result<Option<Lease>, DhcpError> {
        sleep(self.nak_delay).await;
        let offer = self.discover(socket).await?;
        let server = server_of(&offer);
        let selecting = RequestKind::Selecting {
            offered: offer.yiaddr(),
            server,
        };
        let lease = match self
            .request(socket, selecting, Instant::now() + FIRST_RETRANSMIT)
            .await?
        {
            Some(Reply::Ack(lease)) => *lease,
            Some(Reply::Nak) => {
                self.nak("requesting");
                return Ok(None);
            }
            None => return Ok(None),
        };
        self.nak_delay = Duration::ZERO;
        self.apply(&lease, None)?;
        self.bound_event("dhcp-bound", &lease);
        Ok(Some(lease))
    }

    /// BOUND, RENEWING, REBINDING: until the lease is lost.
    async fn hold(
        &mut self,
        socket: &UdpSocket,
        mut lease: Lease,
        mut started: Instant,
    ) -> Result<(), DhcpError> {
        loop {
            sleep_until(started + lease.t1).await;
            let expiry = started + lease.lease_time;
            let rebind_at = started + lease.t2;
            let renewed = loop {
                let now = Instant::now();
                if now >= expiry {
                    break None;
                }
                let kind = if now < rebind_at {
                    RequestKind::Renewing {
                        addr: lease.addr,
                        server: lease.server,
                    }
                } else {
                    RequestKind::Rebinding { addr: lease.addr }
                };
                let until = if now < rebind_at { rebind_at } else { expiry };
                let wait = (until.saturating_duration_since(now) / 2)
                    .max(MIN_RENEW_RETRY.min(until.saturating_duration_since(now)));
                match self
                    .request(socket, kind, now + wait.max(Duration::from_millis(500)))
                    .await?
                {
                    Some(Reply::Ack(new)) => break Some(*new),
                    Some(Reply::Nak) => {
                        self.nak("renewing");
                        break None;
                    }
                    None => {}
                }
            };
            match renewed {
                Some(new) => {
                    self.apply(&new, Some(&lease))?;
                    self.bound_event("dhcp-renewed", &new);
                    lease = new;
                    started = Instant::now();
                }
                None => {
                    self.netlink
                        .del_address(self.link.index, lease.addr.into(), lease.prefix)?;
                    self.shared.lease_lost(self.link.index);
                    saved::forget(&self.link.name);
                    emit(
                        Event::new("dhcp-lost")
                            .field("iface", &self.link.name)
                            .field("addr", lease.addr),
                    );
                    return Ok(());
                }
            }
        }
    }
}

/// Sends a DHCPRELEASE for each held lease (at shutdown).
pub async fn release_all(shared: &Shared) {
    for (link, lease) in shared.leases() {
        let mut release = build_message(
            std::process::id(),
            &link.mac,
            MessageType::Release,
            lease.addr,
        );
        release
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(lease.server));
        if let Ok(socket) = udp_socket(&link.name) {
            if send_message(&socket, &link.name, &release, lease.server, "RELEASE")
                .await
                .is_ok()
            {
                saved::forget(&link.name);
                emit(
                    Event::new("dhcp-released")
                        .field("iface", &link.name)
                        .field("addr", lease.addr),
                );
            }
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;

    const GOOD: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);

    /// An ACK (or NAK) of 192.168.77.205 from server identifier `server`, as bytes.
    fn reply_from(kind: u8, server: [u8; 4]) -> Message {
        let mut bytes = vec![0u8; reply::OPTIONS_START];
        bytes[0] = 2;
        bytes[16..20].copy_from_slice(&[192, 168, 77, 205]);
        bytes[236..240].copy_from_slice(&[99, 130, 83, 99]);
        bytes.extend([53, 1, kind, 54, 4]);
        bytes.extend(server);
        bytes.extend([51, 4, 0, 0, 0, 60, 255]);
        reply::parse(&bytes).unwrap()
    }

    /// Failed before: the ACK of another server than the one selected was taken, and its
    /// server became the one to renew with.
    #[test]
    fn an_answer_from_another_server_is_refused_unless_rebinding() {
        let rogue = reply_from(5, [192, 168, 77, 9]);
        let selecting = RequestKind::Selecting {
            offered: Ipv4Addr::new(192, 168, 77, 205),
            server: GOOD,
        };
        let refused = Refused::Server {
            got: Ipv4Addr::new(192, 168, 77, 9),
            expected: GOOD,
        };
        assert_eq!(selecting.check_server(&rogue), Err(refused.clone()));
        let nak = reply_from(6, [192, 168, 77, 9]);
        assert_eq!(selecting.check_server(&nak), Err(refused));
        let renewing = RequestKind::Renewing {
            addr: Ipv4Addr::new(192, 168, 77, 205),
            server: GOOD,
        };
        assert!(renewing.check_server(&rogue).is_err());
        assert!(selecting
            .check_server(&reply_from(5, GOOD.octets()))
            .is_ok());
        let rebinding = RequestKind::Rebinding {
            addr: Ipv4Addr::new(192, 168, 77, 205),
        };
        assert!(rebinding.check_server(&rogue).is_ok());
    }

    /// Failed before: an ACK of another address than the one asked for was bound.
    #[test]
    fn an_ack_of_another_address_is_refused() {
        let ack = reply_from(5, GOOD.octets());
        let asked = |last| Ipv4Addr::new(192, 168, 77, last);
        let selecting = |offered| RequestKind::Selecting {
            offered,
            server: GOOD,
        };
        assert!(selecting(asked(205)).check_address(&ack).is_ok());
        assert_eq!(
            selecting(asked(206)).check_address(&ack),
            Err(Refused::Address {
                got: asked(205),
                expected: asked(206)
            })
        );
        let rebinding = RequestKind::Rebinding { addr: asked(7) };
        assert!(rebinding.check_address(&ack).is_err());
    }

    /// Failed before: after a NAK the client discovered again at once, so a server that NAKs
    /// every REQUEST had it send DISCOVERs as fast as it answered.
    #[test]
    fn naks_in_a_row_wait_longer_each_time() {
        let mut delay = Duration::ZERO;
        let mut waits = Vec::new();
        for _ in 0..9 {
            delay = after_nak(delay);
            waits.push(delay.as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
    }
}
