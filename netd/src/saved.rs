//! Leases kept under `/run` so that a restarted netd goes on holding and renewing them instead
//! of starting over: the address never left the kernel, and the server still counts the lease
//! as ours. One `key=value` file per link, written whole by rename so a crash mid-write leaves
//! the previous file or none.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

use crate::lease::Lease;

/// A tmpfs: leases do not outlive the boot, as the addresses do not.
const DIR: &str = "/run/berth/netd";

fn path(iface: &str) -> PathBuf {
    PathBuf::from(DIR).join(format!("{iface}.lease"))
}

/// Time since boot, suspend included, so that a lease's age survives a netd restart.
pub fn since_boot() -> Duration {
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .unwrap_or_default()
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The file's text for `lease`, granted at `acquired` (time since boot).
pub fn encode(lease: &Lease, acquired: Duration) -> String {
    let routes: Vec<String> = lease
        .classless_routes
        .iter()
        .map(|(to, prefix, via)| format!("{to}/{prefix}>{via}"))
        .collect();
    let mut text = String::new();
    let _ = writeln!(text, "addr={}", lease.addr);
    let _ = writeln!(text, "prefix={}", lease.prefix);
    let _ = writeln!(text, "server={}", lease.server);
    let _ = writeln!(text, "routers={}", join(&lease.routers));
    let _ = writeln!(text, "dns={}", join(&lease.dns));
    let _ = writeln!(text, "ntp={}", join(&lease.ntp));
    let _ = writeln!(text, "domain={}", lease.domain.clone().unwrap_or_default());
    let _ = writeln!(
        text,
        "hostname={}",
        lease.hostname.clone().unwrap_or_default()
    );
    let _ = writeln!(
        text,
        "mtu={}",
        lease.mtu.map(|m| m.to_string()).unwrap_or_default()
    );
    let _ = writeln!(text, "routes={}", routes.join(","));
    let _ = writeln!(text, "lease_s={}", lease.lease_time.as_secs());
    let _ = writeln!(text, "t1_s={}", lease.t1.as_secs());
    let _ = writeln!(text, "t2_s={}", lease.t2.as_secs());
    let _ = writeln!(text, "acquired_ms={}", acquired.as_millis());
    text
}

fn list<T: std::str::FromStr>(text: &str) -> Option<Vec<T>> {
    text.split(',')
        .filter(|item| !item.is_empty())
        .map(|item| item.parse().ok())
        .collect()
}

fn route(text: &str) -> Option<(Ipv4Addr, u8, Ipv4Addr)> {
    let (net, via) = text.split_once('>')?;
    let (to, prefix) = net.split_once('/')?;
    Some((to.parse().ok()?, prefix.parse().ok()?, via.parse().ok()?))
}

/// The lease in `text` and when it was granted; None for anything malformed.
pub fn decode(text: &str) -> Option<(Lease, Duration)> {
    let fields: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |key: &str| fields.get(key).copied();
    let text_field = |key: &str| get(key).filter(|v| !v.is_empty()).map(str::to_string);
    let secs = |key: &str| get(key)?.parse().ok().map(Duration::from_secs);
    let lease = Lease {
        addr: get("addr")?.parse().ok()?,
        prefix: get("prefix")?.parse().ok()?,
        server: get("server")?.parse().ok()?,
        routers: list(get("routers")?)?,
        dns: list(get("dns")?)?,
        // Absent from files written before option 42 was read; the list is checked again
        // because the file is as untrusted as the server it came from.
        ntp: crate::lease::usable_ntp_servers(&list(get("ntp").unwrap_or_default())?),
        domain: text_field("domain"),
        hostname: text_field("hostname"),
        mtu: match get("mtu")? {
            "" => None,
            mtu => Some(mtu.parse().ok()?),
        },
        classless_routes: get("routes")?
            .split(',')
            .filter(|r| !r.is_empty())
            .map(route)
            .collect::<Option<Vec<_>>>()?,
        lease_time: secs("lease_s")?,
        t1: secs("t1_s")?,
        t2: secs("t2_s")?,
    };
    let acquired = Duration::from_millis(get("acquired_ms")?.parse().ok()?);
    Some((lease, acquired))
}

pub fn save(iface: &str, lease: &Lease, acquired: Duration) -> std::io::Result<()> {
    std::fs::create_dir_all(DIR)?;
    let path = path(iface);
    let partial = path.with_extension("lease.partial");
    std::fs::write(&partial, encode(lease, acquired))?;
    std::fs::rename(&partial, &path)
}

/// The saved lease of `iface` and its age, if it has not expired.
pub fn load(iface: &str) -> Option<(Lease, Duration)> {
    let text = std::fs::read_to_string(path(iface)).ok()?;
    let (lease, acquired) = decode(&text)?;
    let age = since_boot().checked_sub(acquired)?;
    (age < lease.lease_time).then_some((lease, age))
}

pub fn forget(iface: &str) {
    let _ = std::fs::remove_file(path(iface));
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn a_lease_reads_back_as_written() {
        let lease = Lease {
            addr: Ipv4Addr::new(192, 168, 77, 50),
            prefix: 24,
            server: Ipv4Addr::new(192, 168, 77, 1),
            routers: vec![Ipv4Addr::new(192, 168, 77, 1)],
            dns: vec![Ipv4Addr::new(192, 168, 77, 1), Ipv4Addr::new(192, 0, 2, 53)],
            ntp: vec![Ipv4Addr::new(192, 168, 77, 1)],
            domain: Some("example.internal".to_string()),
            hostname: None,
            mtu: Some(1400),
            classless_routes: vec![(
                Ipv4Addr::new(10, 99, 0, 0),
                16,
                Ipv4Addr::new(192, 168, 77, 1),
            )],
            lease_time: Duration::from_secs(120),
            t1: Duration::from_secs(10),
            t2: Duration::from_secs(20),
        };
        let acquired = Duration::from_millis(4_321);
        assert_eq!(
            decode(&encode(&lease, acquired)).unwrap(),
            (lease, acquired)
        );
        assert!(decode("addr=10.0.2.15\n").is_none());
    }
}
