//! What a DHCPACK grants, and the routes it implies (RFC 2131, RFC 3442).

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Message, OptionCode};

/// A lease as netd applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    /// The server that granted it (option 54), to renew with.
    pub server: Ipv4Addr,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
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

/// A name option refused by [`Lease::drop_invalid_names`]: the option and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedName {
    pub option: &'static str,
    pub value: String,
}

/// A lease with no time given is held for a day (a common server default).
const DEFAULT_LEASE: Duration = Duration::from_secs(86_400);

fn prefix_of(mask: Ipv4Addr) -> u8 {
    u8::try_from(u32::from(mask).count_ones()).unwrap_or(32)
}

impl Lease {
    pub fn from_ack(message: &Message) -> Result<Lease, String> {
        let opts = message.opts();
        let server = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => *ip,
            _ => message.siaddr(),
        };
        let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
            Some(DhcpOption::AddressLeaseTime(secs)) => u64::from(*secs),
            _ => DEFAULT_LEASE.as_secs(),
        };
        let lease_time = Duration::from_secs(lease_secs);
        // T1 and T2 default to 1/2 and 7/8 of the lease (RFC 2131 §4.4.5), in whole seconds
        // as DHCP's own times are: the lease file keeps seconds, and a netd that reads it back
        // must hold the same lease.
        let t1 = match opts.get(OptionCode::Renewal) {
            Some(DhcpOption::Renewal(secs)) => Duration::from_secs(u64::from(*secs)),
            _ => Duration::from_secs(lease_secs / 2),
        };
        let t2 = match opts.get(OptionCode::Rebinding) {
            Some(DhcpOption::Rebinding(secs)) => Duration::from_secs(u64::from(*secs)),
            _ => Duration::from_secs(lease_secs * 7 / 8),
        };
        let prefix = match opts.get(OptionCode::SubnetMask) {
            Some(DhcpOption::SubnetMask(mask)) => prefix_of(*mask),
            _ => 24,
        };
        let list = |code| match opts.get(code) {
            Some(DhcpOption::Router(ips)) | Some(DhcpOption::DomainNameServer(ips)) => ips.clone(),
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
        let addr = message.yiaddr();
        if addr.is_unspecified() {
            return Err("the ACK grants no address".to_string());
        }
        Ok(Lease {
            addr,
            prefix,
            server,
            routers: list(OptionCode::Router),
            dns: list(OptionCode::DomainNameServer),
            domain: text(OptionCode::DomainName),
            hostname: text(OptionCode::Hostname),
            mtu: match opts.get(OptionCode::InterfaceMtu) {
                Some(DhcpOption::InterfaceMtu(mtu)) => Some(*mtu),
                _ => None,
            },
            classless_routes,
            lease_time,
            t1: t1.min(lease_time),
            t2: t2.min(lease_time).max(t1.min(lease_time)),
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

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use dhcproto::v4::{MessageType, Opcode};

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
}
