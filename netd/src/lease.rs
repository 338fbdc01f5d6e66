//! What a DHCPACK grants, and the routes it implies (RFC 2131, RFC 3442).

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, OptionCode};

use crate::reply::Refused;

/// A lease as netd applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    /// The server that granted it (option 54), to renew with.
    pub server: Ipv4Addr,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// Option 42, at most [`MAX_NTP_SERVERS`] usable unicast addresses.
    pub ntp: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub hostname: Option<String>,
    /// Option 26.
    pub mtu: Option<u16>,
    /// Option 121: (destination, prefix, gateway).
    pub classless_routes: Vec<(Ipv4Addr, u8, Ipv4Addr)>,
    pub lease_time: Duration,
    /// When to renew (T1) and rebind (T2), from the lease's start.
    pub t1: Duration,
    pub t2: Duration,
}

/// NTP servers kept from one lease: the SNTP client asks each of them every round, so a
/// server listing hundreds must not make netd send hundreds of packets.
pub const MAX_NTP_SERVERS: usize = 4;

/// The longest DNS name, in text without its trailing dot (RFC 1035 §2.3.4, RFC 2181 §11).
const MAX_NAME: usize = 253;
/// The longest label of a DNS name (RFC 1035 §2.3.4).
const MAX_LABEL: usize = 63;
/// The longest hostname the kernel takes (`__NEW_UTS_LEN`).
const MAX_HOSTNAME: usize = 64;

/// A DNS name as netd lets it into `resolv.conf`, the lease file and the hostname: labels of
/// 1 to 63 letters, digits and `-` (and `_` when `underscore`), none starting or ending with
/// `-`, at most 253 characters, with an optional trailing dot. Anything else from a DHCP
/// server (a space, a newline and `nameserver ...` after it, a `=` or a NUL) could add lines
/// to those files or split a search list, so it is refused whole, never cleaned up.
pub fn is_dns_name(name: &str, underscore: bool) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || (underscore && b == b'_'))
        })
}

/// The least MTU (option 26) netd applies: a DHCP client must take messages of 576 bytes
/// (RFC 2131 §2), so a link with a smaller MTU could not even carry DHCP.
pub const MIN_MTU: u16 = 576;

/// The most option 121 routes netd installs: a server's list is bounded only by the packet
/// (hundreds of routes in a fragmented reply), and no host on a DHCP network needs more.
pub const MAX_CLASSLESS_ROUTES: usize = 64;

/// A name option refused by [`Lease::drop_invalid_names`]: the option and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedName {
    pub option: &'static str,
    pub value: String,
}

/// A lease with no time given is held for a day (a common server default).
const DEFAULT_LEASE: Duration = Duration::from_secs(86_400);

/// The prefix of a contiguous subnet mask of 1 to 32 bits; None for any other mask.
fn prefix_of(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    (ones > 0 && ones + bits.trailing_zeros() == 32)
        .then(|| u8::try_from(ones).ok())
        .flatten()
}

/// The classful prefix of `addr` (RFC 791's classes A, B and C), for a lease without a subnet
/// mask (RFC 2132 §3.3 makes option 1 optional); None for classes D and E, which are no
/// host's address.
fn classful_prefix(addr: Ipv4Addr) -> Option<u8> {
    match addr.octets() {
        [0..=127, ..] => Some(8),
        [128..=191, ..] => Some(16),
        [192..=223, ..] => Some(24),
        _ => None,
    }
}

/// Whether a server may grant `addr` to a host: not 0.0.0.0/8, loopback, multicast, class E
/// or the limited broadcast address.
fn is_host_address(addr: Ipv4Addr) -> bool {
    let [first, ..] = addr.octets();
    first != 0 && !addr.is_loopback() && classful_prefix(addr).is_some()
}

/// Whether `addr` is the network or the broadcast address of its `/prefix` (a /31 and a /32
/// have neither, RFC 3021).
fn is_network_or_broadcast(addr: Ipv4Addr, prefix: u8) -> bool {
    if prefix >= 31 {
        return false;
    }
    let host_bits = u32::MAX >> prefix;
    let host = u32::from(addr) & host_bits;
    host == 0 || host == host_bits
}

/// The server that sent `message`: its server identifier (option 54), else `siaddr`.
pub fn server_of(message: &Message) -> Ipv4Addr {
    match message.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => *ip,
        _ => message.siaddr(),
    }
}

impl Lease {
    /// The lease an OFFER proposes or an ACK grants, or why it is no lease at all: an address
    /// no host may hold, a subnet mask that is no prefix, or a lease time of 0 (which would
    /// have netd apply an address, lose it at once and ask again, as fast as the server
    /// answers). Without a subnet mask the address's classful prefix is used; without a
    /// router no default route is added. T1 and T2 are taken when 0 < T1 <= T2 <= lease time,
    /// else RFC 2131 §4.4.5's defaults (half and seven eighths of it): a T1 of 0 would renew
    /// in a loop. An infinite lease (RFC 2131 §3.3: 0xffffffff) is held as 2^32-1 seconds,
    /// 136 years with T1 at 68, which `Instant` arithmetic takes without overflow: it is
    /// never renewed.
    pub fn from_ack(message: &Message) -> Result<Lease, Refused> {
        let opts = message.opts();
        let server = server_of(message);
        let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
            Some(DhcpOption::AddressLeaseTime(0)) => return Err(Refused::ZeroLease),
            Some(DhcpOption::AddressLeaseTime(secs)) => Some(*secs),
            _ => None,
        };
        let lease_time = lease_secs.map_or(DEFAULT_LEASE, |s| Duration::from_secs(u64::from(s)));
        let given = |code| match opts.get(code) {
            Some(DhcpOption::Renewal(secs)) | Some(DhcpOption::Rebinding(secs)) => {
                Some(Duration::from_secs(u64::from(*secs)))
            }
            _ => None,
        };
        // The defaults in whole seconds, as DHCP's own times are: the lease file keeps
        // seconds, and a netd that reads it back must hold the same lease.
        let whole = lease_time.as_secs();
        let t1 = given(OptionCode::Renewal)
            .filter(|t1| !t1.is_zero() && *t1 <= lease_time)
            .unwrap_or(Duration::from_secs(whole / 2));
        let t2 = given(OptionCode::Rebinding)
            .filter(|t2| *t2 >= t1 && *t2 <= lease_time)
            .unwrap_or_else(|| Duration::from_secs(whole * 7 / 8).max(t1));
        let addr = message.yiaddr();
        if !is_host_address(addr) {
            return Err(Refused::NotUnicast { addr });
        }
        let prefix = match opts.get(OptionCode::SubnetMask) {
            Some(DhcpOption::SubnetMask(mask)) => {
                prefix_of(*mask).ok_or(Refused::Mask { mask: *mask })?
            }
            _ => classful_prefix(addr).ok_or(Refused::NotUnicast { addr })?,
        };
        if is_network_or_broadcast(addr, prefix) {
            return Err(Refused::NotHost { addr, prefix });
        }
        let list = |code| match opts.get(code) {
            Some(DhcpOption::Router(ips))
            | Some(DhcpOption::DomainNameServer(ips))
            | Some(DhcpOption::NtpServers(ips)) => ips.clone(),
            _ => Vec::new(),
        };
        let text = |code| match opts.get(code) {
            Some(DhcpOption::Hostname(s)) | Some(DhcpOption::DomainName(s)) => Some(s.clone()),
            _ => None,
        };
        let classless_routes = match opts.get(OptionCode::ClasslessStaticRoute) {
            Some(DhcpOption::ClasslessStaticRoute(routes)) => routes
                .iter()
                .map(|(net, gw)| (net.network(), net.prefix_len(), *gw))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Lease {
            addr,
            prefix,
            server,
            routers: list(OptionCode::Router),
            dns: list(OptionCode::DomainNameServer),
            ntp: usable_ntp_servers(&list(OptionCode::NtpServers)),
            domain: text(OptionCode::DomainName),
            hostname: text(OptionCode::Hostname),
            mtu: match opts.get(OptionCode::InterfaceMtu) {
                Some(DhcpOption::InterfaceMtu(mtu)) => Some(*mtu),
                _ => None,
            },
            classless_routes,
            lease_time,
            t1,
            t2,
        })
    }

    /// Drops the domain (option 15) and hostname (option 12) unless they are valid DNS
    /// names, and says which were dropped. The domain may hold `_` (it only ever becomes a
    /// search domain in `resolv.conf`, and internal zones such as Active Directory's use it;
    /// the resolvers take it); the hostname may not (RFC 952/1123 host names, which the kernel
    /// hostname and the containers' view of it follow), and is at most 64 characters.
    pub fn drop_invalid_names(&mut self) -> Vec<RefusedName> {
        let mut refused = Vec::new();
        let mut check = |option: &'static str, slot: &mut Option<String>, valid: bool| {
            if !valid {
                if let Some(value) = slot.take() {
                    refused.push(RefusedName { option, value });
                }
            }
        };
        let domain_ok = self.domain.as_deref().is_none_or(|d| is_dns_name(d, true));
        check("domain", &mut self.domain, domain_ok);
        let hostname_ok = self
            .hostname
            .as_deref()
            .is_none_or(|h| h.len() <= MAX_HOSTNAME && is_dns_name(h, false));
        check("hostname", &mut self.hostname, hostname_ok);
        refused
    }

    /// Drops an MTU below [`MIN_MTU`] (an MTU of 0 fails to apply; one of 68 leaves a host
    /// that can barely talk) and returns it.
    pub fn drop_small_mtu(&mut self) -> Option<u16> {
        self.mtu.take_if(|mtu| *mtu < MIN_MTU)
    }

    /// Keeps [`MAX_CLASSLESS_ROUTES`] of option 121's routes, default routes first and the
    /// rest in the server's order; returns how many the server sent when that was more.
    pub fn drop_excess_routes(&mut self) -> Option<usize> {
        let offered = self.classless_routes.len();
        (offered > MAX_CLASSLESS_ROUTES).then(|| {
            // Stable: the server's order stands among the rest.
            self.classless_routes
                .sort_by_key(|&(_, prefix, _)| prefix != 0);
            self.classless_routes.truncate(MAX_CLASSLESS_ROUTES);
            offered
        })
    }

    /// The routes to install: option 121's when present (RFC 3442: the router option is then
    /// ignored), else a default route via the first router.
    pub fn routes(&self) -> Vec<(Ipv4Addr, u8, Ipv4Addr)> {
        if !self.classless_routes.is_empty() {
            return self.classless_routes.clone();
        }
        self.routers
            .first()
            .map(|router| vec![(Ipv4Addr::UNSPECIFIED, 0, *router)])
            .unwrap_or_default()
    }
}

/// The addresses of option 42 worth asking: unicast ones (not 0.0.0.0, broadcast, multicast
/// or loopback, which a server has no business naming), without repeats, the first
/// [`MAX_NTP_SERVERS`].
pub fn usable_ntp_servers(offered: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
    let mut usable: Vec<Ipv4Addr> = Vec::new();
    for addr in offered {
        let unicast = !(addr.is_unspecified()
            || addr.is_broadcast()
            || addr.is_multicast()
            || addr.is_loopback());
        if unicast && !usable.contains(addr) && usable.len() < MAX_NTP_SERVERS {
            usable.push(*addr);
        }
    }
    usable
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use dhcproto::v4::{MessageType, Opcode};

    const INFINITE_LEASE: u32 = u32::MAX;

    fn ack(options: Vec<DhcpOption>) -> Message {
        let mut message = Message::new(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 2, 15),
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::UNSPECIFIED,
            &[0x52, 0x54, 0, 0x12, 0x34, 0x56],
        );
        message.set_opcode(Opcode::BootReply);
        message
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Ack));
        for option in options {
            message.opts_mut().insert(option);
        }
        message
    }

    #[test]
    fn a_plain_lease_routes_through_its_router() {
        let lease = Lease::from_ack(&ack(vec![
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]),
            DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 0, 2, 3)]),
            DhcpOption::AddressLeaseTime(86_400),
            DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)),
        ]))
        .unwrap();
        assert_eq!(
            (lease.addr, lease.prefix),
            (Ipv4Addr::new(10, 0, 2, 15), 24)
        );
        assert_eq!(lease.t1, Duration::from_secs(43_200));
        assert_eq!(lease.t2, Duration::from_secs(75_600));
        assert_eq!(
            lease.routes(),
            [(Ipv4Addr::UNSPECIFIED, 0, Ipv4Addr::new(10, 0, 2, 2))]
        );
    }

    #[test]
    fn ntp_servers_are_kept_unicast_once_and_at_most_four() {
        let lease = Lease::from_ack(&ack(vec![DhcpOption::NtpServers(vec![
            Ipv4Addr::new(0, 0, 0, 0),
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(255, 255, 255, 255),
            Ipv4Addr::new(224, 0, 1, 1),
            Ipv4Addr::new(127, 0, 0, 1),
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(192, 0, 2, 2),
            Ipv4Addr::new(192, 0, 2, 3),
            Ipv4Addr::new(192, 0, 2, 4),
            Ipv4Addr::new(192, 0, 2, 5),
        ])]))
        .unwrap();
        assert_eq!(
            lease.ntp,
            (1..=4)
                .map(|n| Ipv4Addr::new(192, 0, 2, n))
                .collect::<Vec<_>>()
        );
    }

    /// Found by `fuzz/fuzz_targets/dhcp.rs`: a lease time that 8 does not divide made T2
    /// 86066.75 s, which the lease file keeps as 86066 s, so a restarted netd held a lease
    /// other than the one granted.
    #[test]
    fn default_renewal_times_survive_the_lease_file() {
        let lease = Lease::from_ack(&ack(vec![DhcpOption::AddressLeaseTime(98_362)])).unwrap();
        assert_eq!(
            (lease.t1, lease.t2),
            (Duration::from_secs(49_181), Duration::from_secs(86_066))
        );
        let acquired = Duration::from_millis(1234);
        let text = crate::saved::encode(&lease, acquired);
        assert_eq!(crate::saved::decode(&text), Some((lease, acquired)));
    }

    #[test]
    fn classless_routes_override_the_router_option() {
        let net = "192.0.2.0/24".parse().unwrap();
        let lease = Lease::from_ack(&ack(vec![
            DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]),
            DhcpOption::ClasslessStaticRoute(vec![(net, Ipv4Addr::new(10, 0, 2, 9))]),
            DhcpOption::InterfaceMtu(1400),
        ]))
        .unwrap();
        assert_eq!(
            lease.routes(),
            [(Ipv4Addr::new(192, 0, 2, 0), 24, Ipv4Addr::new(10, 0, 2, 9))]
        );
        assert_eq!(lease.mtu, Some(1400));
    }

    /// Failed before: every route of a fragmented reply's option 121s was installed.
    #[test]
    fn classless_routes_past_the_cap_are_dropped_the_default_kept() {
        let gateway = Ipv4Addr::new(10, 0, 2, 9);
        let mut routes: Vec<_> = (0..=MAX_CLASSLESS_ROUTES)
            .map(|n| {
                let third = u8::try_from(n).unwrap();
                (format!("10.99.{third}.0/24").parse().unwrap(), gateway)
            })
            .collect();
        // The default route last: past the cap, and kept all the same.
        routes.push(("0.0.0.0/0".parse().unwrap(), gateway));
        let mut lease =
            Lease::from_ack(&ack(vec![DhcpOption::ClasslessStaticRoute(routes)])).unwrap();
        assert_eq!(lease.drop_excess_routes(), Some(MAX_CLASSLESS_ROUTES + 2));
        let kept = lease.routes();
        assert_eq!(kept.len(), MAX_CLASSLESS_ROUTES);
        assert_eq!(kept.first(), Some(&(Ipv4Addr::UNSPECIFIED, 0, gateway)));
        assert_eq!(kept.get(1).map(|r| r.0), Some(Ipv4Addr::new(10, 99, 0, 0)));
        assert_eq!(lease.drop_excess_routes(), None);
    }

    #[test]
    fn dns_names_follow_the_label_rules() {
        for good in [
            "example.internal",
            "example.internal.",
            "a",
            "xn--bcher-kva.example",
            "10.in-addr.arpa",
            &format!("{}.com", "a".repeat(63)),
            &["b".repeat(63).as_str(); 4].join(".")[..253],
        ] {
            assert!(is_dns_name(good, false), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "example..internal",
            ".example",
            "-example.internal",
            "example-.internal",
            "exa mple.internal",
            "example.internal\nnameserver 6.6.6.6",
            "example.internal nameserver",
            "example\0internal",
            "example=internal",
            "exämple.internal",
            &format!("{}.com", "a".repeat(64)),
            &format!("{}.c", ["b".repeat(63).as_str(); 4].join(".")),
        ] {
            assert!(!is_dns_name(bad, true), "{bad:?}");
        }
        assert!(is_dns_name("corp_lan.example", true));
        assert!(!is_dns_name("corp_lan.example", false));
    }

    #[test]
    fn an_ack_with_injected_names_keeps_neither() {
        let mut lease = Lease::from_ack(&ack(vec![
            DhcpOption::DomainName("example.internal\nnameserver 6.6.6.6".into()),
            DhcpOption::Hostname("host name".into()),
        ]))
        .unwrap();
        let refused = lease.drop_invalid_names();
        assert_eq!((lease.domain, lease.hostname), (None, None));
        assert_eq!(
            refused,
            [
                RefusedName {
                    option: "domain",
                    value: "example.internal\nnameserver 6.6.6.6".into()
                },
                RefusedName {
                    option: "hostname",
                    value: "host name".into()
                },
            ]
        );
        let mut good = Lease::from_ack(&ack(vec![
            DhcpOption::DomainName("corp_lan.example.".into()),
            DhcpOption::Hostname("web-1".into()),
        ]))
        .unwrap();
        assert!(good.drop_invalid_names().is_empty());
        assert_eq!(good.domain.as_deref(), Some("corp_lan.example."));
        assert_eq!(good.hostname.as_deref(), Some("web-1"));
        let mut long = Lease::from_ack(&ack(vec![DhcpOption::Hostname("h".repeat(65))])).unwrap();
        assert_eq!(
            long.drop_invalid_names().len(),
            1,
            "longer than the kernel takes"
        );
    }

    /// Failed before: a lease time of 0 was applied, lost at once and asked for again, as
    /// fast as the server answered.
    #[test]
    fn a_zero_lease_is_refused() {
        assert_eq!(
            Lease::from_ack(&ack(vec![DhcpOption::AddressLeaseTime(0)])),
            Err(Refused::ZeroLease)
        );
    }

    /// An infinite lease is held for 2^32-1 seconds, renewed after half of that, and the
    /// renewal time fits an `Instant`.
    #[test]
    fn an_infinite_lease_never_renews_and_does_not_overflow() {
        let lease =
            Lease::from_ack(&ack(vec![DhcpOption::AddressLeaseTime(INFINITE_LEASE)])).unwrap();
        assert_eq!(lease.lease_time, Duration::from_secs(u64::from(u32::MAX)));
        assert_eq!(lease.t1, Duration::from_secs(u64::from(u32::MAX) / 2));
        let now = std::time::Instant::now();
        assert!(now.checked_add(lease.lease_time).is_some());
        assert!(lease.t2 >= lease.t1 && lease.t2 <= lease.lease_time);
    }

    /// Failed before: a T1 of 0 made netd renew at once, and again after every ACK.
    #[test]
    fn renewal_times_out_of_order_fall_back_to_the_defaults() {
        let lease = Lease::from_ack(&ack(vec![
            DhcpOption::AddressLeaseTime(16),
            DhcpOption::Renewal(0),
            DhcpOption::Rebinding(0),
        ]))
        .unwrap();
        assert_eq!(lease.t1, Duration::from_secs(8));
        assert_eq!(lease.t2, Duration::from_secs(14));
        let lease = Lease::from_ack(&ack(vec![
            DhcpOption::AddressLeaseTime(100),
            DhcpOption::Renewal(200),
            DhcpOption::Rebinding(40),
        ]))
        .unwrap();
        assert_eq!(
            (lease.t1, lease.t2),
            (Duration::from_secs(50), Duration::from_secs(87))
        );
        let lease = Lease::from_ack(&ack(vec![
            DhcpOption::AddressLeaseTime(100),
            DhcpOption::Renewal(60),
            DhcpOption::Rebinding(40),
        ]))
        .unwrap();
        assert_eq!(
            (lease.t1, lease.t2),
            (Duration::from_secs(60), Duration::from_secs(87))
        );
    }

    /// Without option 1 the address's class gives the prefix; without option 3 there is no
    /// default route.
    #[test]
    fn a_lease_without_mask_or_router_takes_the_classful_prefix() {
        let with = |addr: [u8; 4]| {
            let mut message = ack(Vec::new());
            message.set_yiaddr(Ipv4Addr::from(addr));
            Lease::from_ack(&message)
        };
        assert_eq!(with([10, 0, 2, 15]).unwrap().prefix, 8);
        assert_eq!(with([172, 16, 0, 9]).unwrap().prefix, 16);
        let lease = with([192, 168, 77, 211]).unwrap();
        assert_eq!(lease.prefix, 24);
        assert!(lease.routes().is_empty());
        for bad in [
            [0, 0, 0, 0],
            [0, 1, 2, 3],
            [127, 0, 0, 1],
            [224, 0, 0, 5],
            [240, 0, 0, 1],
            [255, 255, 255, 255],
        ] {
            assert_eq!(
                with(bad),
                Err(Refused::NotUnicast {
                    addr: Ipv4Addr::from(bad)
                })
            );
        }
        assert_eq!(
            with([192, 168, 77, 255]),
            Err(Refused::NotHost {
                addr: Ipv4Addr::new(192, 168, 77, 255),
                prefix: 24
            })
        );
    }

    /// Failed before: a mask of 255.0.255.0 counted as a /16.
    #[test]
    fn a_mask_that_is_no_prefix_is_refused() {
        for mask in [[255, 0, 255, 0], [0, 0, 0, 0], [0, 255, 255, 255]] {
            let mask = Ipv4Addr::from(mask);
            assert_eq!(
                Lease::from_ack(&ack(vec![DhcpOption::SubnetMask(mask)])),
                Err(Refused::Mask { mask })
            );
        }
        let lease = Lease::from_ack(&ack(vec![DhcpOption::SubnetMask(Ipv4Addr::BROADCAST)]));
        assert_eq!(lease.unwrap().prefix, 32);
    }

    /// Failed before: an MTU of 100 from the server was set on the link.
    #[test]
    fn an_mtu_below_576_is_dropped() {
        let mut lease = Lease::from_ack(&ack(vec![DhcpOption::InterfaceMtu(100)])).unwrap();
        assert_eq!(lease.drop_small_mtu(), Some(100));
        assert_eq!(lease.mtu, None);
        let mut lease = Lease::from_ack(&ack(vec![DhcpOption::InterfaceMtu(576)])).unwrap();
        assert_eq!(lease.drop_small_mtu(), None);
        assert_eq!(lease.mtu, Some(576));
    }
}
