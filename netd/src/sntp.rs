//! An SNTP client (RFC 5905 client mode, with RFC 4330's checks on replies): sets the
//! host's clock from several NTP servers, refusing replies that cannot be true.
//!
//! Written here rather than taken from a crate: the packet is 48 fixed bytes, and what
//! matters is the checks a reply must pass and the choice between servers, which the NTP
//! crates on crates.io (`sntpc`, `ntp`) leave to their caller or do not do. It runs in netd,
//! never in PID 1: the replies are untrusted network input, and a server that never answers
//! must not hold anything up but this task.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use berth_event::Event;
use berth_manifest::{TimeServer, TimeSettings, NTP_PORT};

use crate::emit;
use crate::state::Shared;

/// netd writes this once the clock was first set; init's `depends_on = ["time-synced"]`
/// waits for it.
pub const TIME_SYNCED_MARKER: &str = "/run/berth/time-synced";
/// Where netd waits for the network first.
const NETWORK_ONLINE_MARKER: &str = crate::state::NETWORK_ONLINE_MARKER;
const PACKET_LEN: usize = 48;
/// LI 0, version 4, mode 3 (client).
const CLIENT_HEADER: u8 = 0b00_100_011;
const MODE_SERVER: u8 = 4;
/// LI 3: the server's clock is not synchronized.
const LEAP_ALARM: u8 = 3;
/// Highest stratum of a synchronized server (16 means unsynchronized).
const MAX_STRATUM: u8 = 15;
/// A server whose own error bound exceeds this knows no better than we do.
const MAX_ROOT_DISPERSION: Duration = Duration::from_secs(16);
/// Seconds from 1900 (NTP's era 0) to 1970.
const NTP_TO_UNIX: u64 = 2_208_988_800;
/// How long one server gets to answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Addresses asked per server name (a pool name resolves to several).
const ADDRESSES_PER_NAME: usize = 4;
/// Offsets within this of each other agree; a reply further from the rest is an outlier.
const AGREEMENT: Duration = Duration::from_secs(1);
/// At the first sync the clock is stepped when off by more than this; later, and below it,
/// it is slewed.
const STEP_THRESHOLD: Duration = Duration::from_secs(1);
/// Between syncs once synced.
const RESYNC: Duration = Duration::from_secs(1024);
/// After a failed round, first retry; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(4);
const RETRY_MAX: Duration = Duration::from_secs(512);
/// How often the task looks for the network at start.
const NETWORK_POLL: Duration = Duration::from_millis(200);

/// Why a reply was refused; each is a fact about the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Short,
    NotServerMode,
    /// The origin timestamp is not the transmit timestamp we sent: not an answer to us.
    OriginMismatch,
    /// Stratum 0: a kiss-of-death (`RATE`, `DENY`, ...).
    KissOfDeath,
    Unsynchronized,
    ZeroTransmit,
    /// The server's time is earlier than the image's build time: nonsense.
    BeforeFloor,
    /// Further than [`AGREEMENT`] from the time most servers agree on.
    Outlier,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Short => "short",
            Refusal::NotServerMode => "not-server-mode",
            Refusal::OriginMismatch => "origin-mismatch",
            Refusal::KissOfDeath => "kiss-of-death",
            Refusal::Unsynchronized => "unsynchronized",
            Refusal::ZeroTransmit => "zero-transmit",
            Refusal::BeforeFloor => "before-floor",
            Refusal::Outlier => "outlier",
        }
    }
}

/// A timestamp as NTP carries it: seconds since 1900 and a binary fraction.
fn ntp_bytes(unix: Duration) -> [u8; 8] {
    let seconds = unix.as_secs().wrapping_add(NTP_TO_UNIX);
    // Era 1 (from 2036) wraps; the low 32 bits are what goes on the wire.
    let seconds = u32::try_from(seconds & 0xffff_ffff).unwrap_or(0);
    let fraction =
        u32::try_from((u64::from(unix.subsec_nanos()) << 32) / 1_000_000_000).unwrap_or(u32::MAX);
    let [a, b, c, d] = seconds.to_be_bytes();
    let [e, f, g, h] = fraction.to_be_bytes();
    [a, b, c, d, e, f, g, h]
}

/// Nanoseconds since 1970 of an NTP timestamp, taking the era nearest `near` (a time after
/// 2036 is read in era 1).
fn unix_nanos(bytes: [u8; 8], near: Duration) -> i128 {
    let [a, b, c, d, e, f, g, h] = bytes;
    let seconds = i128::from(u32::from_be_bytes([a, b, c, d]));
    let fraction = i128::from(u32::from_be_bytes([e, f, g, h]));
    let era_length = 1i128 << 32;
    let near_ntp = i128::from(near.as_secs()) + i128::from(NTP_TO_UNIX);
    let era = (near_ntp - seconds + era_length / 2).div_euclid(era_length);
    let ntp_seconds = seconds + era * era_length;
    (ntp_seconds - i128::from(NTP_TO_UNIX)) * 1_000_000_000 + ((fraction * 1_000_000_000) >> 32)
}

/// The request: a client header and our transmit time, which the reply must echo.
pub fn request(transmit: Duration) -> [u8; PACKET_LEN] {
    let mut packet = [0u8; PACKET_LEN];
    let (header, rest) = packet.split_at_mut(1);
    header.fill(CLIENT_HEADER);
    if let Some(slot) = rest.get_mut(39..47) {
        slot.copy_from_slice(&ntp_bytes(transmit));
    }
    packet
}

/// What a checked reply says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// How far the server's clock is ahead of ours, in nanoseconds.
    pub offset_ns: i128,
    /// The round trip, less the server's own time.
    pub delay_ns: i128,
    pub stratum: u8,
}

fn field<const N: usize>(reply: &[u8], at: usize) -> Option<[u8; N]> {
    reply
        .get(at..at + N)
        .and_then(|bytes| bytes.try_into().ok())
}

/// Checks a reply to the request sent at `sent` (our clock), received at `received`;
/// `floor` is the image's build time, before which no true time lies.
pub fn check_reply(
    reply: &[u8],
    sent: Duration,
    received: Duration,
    floor: Duration,
) -> Result<Sample, Refusal> {
    let header = *reply.first().ok_or(Refusal::Short)?;
    if reply.len() < PACKET_LEN {
        return Err(Refusal::Short);
    }
    let leap = header >> 6;
    let mode = header & 0b111;
    let stratum = *reply.get(1).ok_or(Refusal::Short)?;
    if mode != MODE_SERVER {
        return Err(Refusal::NotServerMode);
    }
    let origin: [u8; 8] = field(reply, 24).ok_or(Refusal::Short)?;
    if origin != ntp_bytes(sent) {
        return Err(Refusal::OriginMismatch);
    }
    if stratum == 0 {
        return Err(Refusal::KissOfDeath);
    }
    let dispersion: [u8; 4] = field(reply, 8).ok_or(Refusal::Short)?;
    // 16.16 fixed point seconds.
    let dispersion = Duration::from_secs(u64::from(u32::from_be_bytes(dispersion) >> 16));
    if leap == LEAP_ALARM || stratum > MAX_STRATUM || dispersion > MAX_ROOT_DISPERSION {
        return Err(Refusal::Unsynchronized);
    }
    let receive: [u8; 8] = field(reply, 32).ok_or(Refusal::Short)?;
    let transmit: [u8; 8] = field(reply, 40).ok_or(Refusal::Short)?;
    if transmit == [0u8; 8] {
        return Err(Refusal::ZeroTransmit);
    }
    let t1 = i128::try_from(sent.as_nanos()).unwrap_or(i128::MAX);
    let t4 = i128::try_from(received.as_nanos()).unwrap_or(i128::MAX);
    let t2 = unix_nanos(receive, received);
    let t3 = unix_nanos(transmit, received);
    let floor_ns = i128::try_from(floor.as_nanos()).unwrap_or(0);
    if t3 < floor_ns {
        return Err(Refusal::BeforeFloor);
    }
    Ok(Sample {
        offset_ns: ((t2 - t1) + (t3 - t4)) / 2,
        delay_ns: (t4 - t1) - (t3 - t2),
        stratum,
    })
}

/// Chooses among the samples: the largest group whose offsets agree within [`AGREEMENT`] of
/// each other wins, when it is more than half of them (or the only one); within it, the
/// sample with the shortest round trip. Returns the winner's index and those refused as
/// outliers; `None` when no group has a majority.
pub fn select(samples: &[Sample]) -> Option<(usize, Vec<usize>)> {
    let agreement = i128::try_from(AGREEMENT.as_nanos()).unwrap_or(i128::MAX);
    let group_of = |centre: &Sample| -> Vec<usize> {
        samples
            .iter()
            .enumerate()
            .filter(|(_, s)| (s.offset_ns - centre.offset_ns).abs() <= agreement)
            .map(|(i, _)| i)
            .collect()
    };
    let best = samples
        .iter()
        .map(group_of)
        .max_by_key(Vec::len)
        .filter(|group| group.len() * 2 > samples.len())?;
    let winner = best
        .iter()
        .copied()
        .min_by_key(|i| samples.get(*i).map_or(i128::MAX, |s| s.delay_ns))?;
    let outliers = (0..samples.len()).filter(|i| !best.contains(i)).collect();
    Some((winner, outliers))
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// The image's build time, the earliest true time (init's clock floor reads the same file).
fn floor() -> Duration {
    std::fs::read_to_string(berth_manifest::BUILD_TIME_PATH)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .map_or(Duration::ZERO, Duration::from_secs)
}

fn refused(server: &str, reason: &str) {
    emit(
        Event::new("time-reply-refused")
            .field("server", server)
            .field("reason", reason),
    );
}

/// Asks one address; a checked sample, or why not (already reported).
async fn query(address: SocketAddr, label: &str, floor: Duration) -> Option<Sample> {
    let bind: SocketAddr = if address.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = match tokio::net::UdpSocket::bind(bind).await {
        Ok(socket) => socket,
        Err(err) => {
            refused(label, &format!("socket: {err}"));
            return None;
        }
    };
    if let Err(err) = socket.connect(address).await {
        refused(label, &format!("connect: {err}"));
        return None;
    }
    let sent = now();
    if let Err(err) = socket.send(&request(sent)).await {
        refused(label, &format!("send: {err}"));
        return None;
    }
    let mut buffer = [0u8; 512];
    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    // Until a reply that answers this request, or the deadline: a stray or forged packet
    // (wrong origin) is refused and the wait goes on.
    loop {
        let received = tokio::time::timeout_at(deadline, socket.recv(&mut buffer)).await;
        let length = match received {
            Err(_) => {
                refused(label, "no-reply");
                return None;
            }
            Ok(Err(err)) => {
                refused(label, &format!("receive: {err}"));
                return None;
            }
            Ok(Ok(length)) => length,
        };
        let reply = buffer.get(..length).unwrap_or_default();
        match check_reply(reply, sent, now(), floor) {
            Ok(sample) => return Some(sample),
            Err(Refusal::OriginMismatch) => refused(label, Refusal::OriginMismatch.as_str()),
            Err(refusal) => {
                refused(label, refusal.as_str());
                return None;
            }
        }
    }
}

/// Moves the clock by `offset_ns`: a step (`clock_settime`) at the first sync when off by
/// more than [`STEP_THRESHOLD`], else a slew (`adjtimex`, the kernel's adjtime mode).
fn correct(offset_ns: i128, first: bool) -> Result<&'static str, String> {
    let threshold = i128::try_from(STEP_THRESHOLD.as_nanos()).unwrap_or(i128::MAX);
    if first && offset_ns.abs() > threshold {
        let target = i128::try_from(now().as_nanos()).unwrap_or(0) + offset_ns;
        let target = u64::try_from(target.max(0)).unwrap_or(0);
        let spec = nix::sys::time::TimeSpec::from_duration(Duration::from_nanos(target));
        nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, spec)
            .map_err(|err| format!("clock_settime: {err}"))?;
        return Ok("step");
    }
    // SAFETY: `timex` is plain data; all zero is a valid value the kernel reads.
    let mut timex: nix::libc::timex = unsafe { std::mem::zeroed() };
    timex.modes = nix::libc::ADJ_OFFSET_SINGLESHOT as _;
    // In microseconds; the kernel slews at most 500 ppm, so large offsets take a while.
    timex.offset = i64::try_from(offset_ns / 1000).unwrap_or(0) as _;
    // SAFETY: `timex` is a live, initialised struct the kernel reads and writes.
    let result = unsafe { nix::libc::adjtimex(&mut timex) };
    if result < 0 {
        return Err(format!("adjtimex: {}", std::io::Error::last_os_error()));
    }
    Ok("slew")
}

/// One round: every address of every server asked, the replies checked and one chosen,
/// the clock corrected. Whether the clock was set.
async fn sync_once(servers: &[TimeServer], first: bool) -> Result<(), String> {
    let floor = floor();
    let mut samples: Vec<(String, Sample)> = Vec::new();
    for server in servers {
        let label = server.to_string();
        let addresses: Vec<SocketAddr> =
            match tokio::net::lookup_host((server.host.as_str(), server.port)).await {
                Ok(addresses) => addresses.take(ADDRESSES_PER_NAME).collect(),
                Err(err) => {
                    refused(&label, &format!("resolve: {err}"));
                    continue;
                }
            };
        for address in addresses {
            let label = if address.to_string() == label {
                label.clone()
            } else {
                format!("{label}({address})")
            };
            if let Some(sample) = query(address, &label, floor).await {
                samples.push((label, sample));
            }
        }
    }
    if samples.is_empty() {
        return Err("no-usable-reply".to_string());
    }
    let only: Vec<Sample> = samples.iter().map(|(_, s)| *s).collect();
    let (winner, outliers) = select(&only).ok_or_else(|| "servers-disagree".to_string())?;
    for index in outliers {
        if let Some((label, _)) = samples.get(index) {
            refused(label, Refusal::Outlier.as_str());
        }
    }
    let (server, sample) = samples.get(winner).ok_or("no-usable-reply")?;
    let how = correct(sample.offset_ns, first)?;
    if first {
        if let Err(err) = std::fs::write(TIME_SYNCED_MARKER, "") {
            emit(Event::new("time-synced-marker-failed").field("error", err));
        }
    }
    emit(
        Event::new("time-synced")
            .field("offset_ms", sample.offset_ns / 1_000_000)
            .field("server", server)
            .field("stratum", sample.stratum)
            .field("correction", how),
    );
    // The next boot starts near this time, network or not.
    if let Err(err) = crate::rtc::write_system_time() {
        emit(Event::new("rtc-write-failed").field("error", err));
    }
    Ok(())
}

/// The servers the network offers this round: option 42 of every lease held, then the
/// platform's, each once.
fn offered(shared: &Shared, platform: Option<&TimeServer>) -> Vec<TimeServer> {
    let mut offered: Vec<TimeServer> = Vec::new();
    let from_leases = shared.leases().into_iter().flat_map(|(_, lease)| lease.ntp);
    for addr in from_leases {
        let server = TimeServer {
            host: addr.to_string(),
            port: NTP_PORT,
        };
        if !offered.contains(&server) {
            offered.push(server);
        }
    }
    offered.extend(platform.filter(|p| !offered.contains(p)).cloned());
    offered
}

/// Keeps the clock: waits for the network, syncs, and syncs again every [`RESYNC`]; a
/// failed round is `time-sync-failed` and retried with backoff. Each round asks the servers
/// [`TimeSettings::servers_for_round`] chooses, so a lease that comes or goes with its
/// option 42 is followed. `servers = []`: nothing at all.
pub async fn run(settings: TimeSettings, shared: Arc<Shared>) {
    if !settings.enabled() {
        return;
    }
    let platform = crate::platform::time_server();
    while !std::path::Path::new(NETWORK_ONLINE_MARKER).exists() {
        tokio::time::sleep(NETWORK_POLL).await;
    }
    let mut first = !std::path::Path::new(TIME_SYNCED_MARKER).exists();
    let mut retry = RETRY_FIRST;
    loop {
        let servers = settings.servers_for_round(&offered(&shared, platform.as_ref()));
        match sync_once(&servers, first).await {
            Ok(()) => {
                first = false;
                retry = RETRY_FIRST;
                tokio::time::sleep(RESYNC).await;
            }
            Err(reason) => {
                emit(
                    Event::new("time-sync-failed")
                        .field("reason", reason)
                        .field("servers", servers.len())
                        .field("retry_in", format!("{}s", retry.as_secs())),
                );
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    const SENT: Duration = Duration::from_secs(1_800_000_000);
    const FLOOR: Duration = Duration::from_secs(1_700_000_000);

    /// A server's reply to a request sent at `SENT`, its clock `ahead` of ours.
    fn reply(ahead: Duration) -> [u8; PACKET_LEN] {
        let mut packet = [0u8; PACKET_LEN];
        packet[0] = 0b00_100_100;
        packet[1] = 2;
        packet[24..32].copy_from_slice(&ntp_bytes(SENT));
        packet[32..40].copy_from_slice(&ntp_bytes(SENT + ahead));
        packet[40..48].copy_from_slice(&ntp_bytes(SENT + ahead));
        packet
    }

    #[test]
    fn a_good_reply_gives_the_offset() {
        let sample = check_reply(&reply(Duration::from_secs(30)), SENT, SENT, FLOOR).unwrap();
        assert_eq!(sample.offset_ns / 1_000_000, 30_000);
        assert_eq!(sample.stratum, 2);
    }

    #[test]
    fn nonsense_is_refused() {
        let ahead = Duration::from_secs(1);
        let mut kod = reply(ahead);
        kod[1] = 0;
        assert_eq!(
            check_reply(&kod, SENT, SENT, FLOOR),
            Err(Refusal::KissOfDeath)
        );
        let mut alarm = reply(ahead);
        alarm[0] |= 0b11 << 6;
        assert_eq!(
            check_reply(&alarm, SENT, SENT, FLOOR),
            Err(Refusal::Unsynchronized)
        );
        let mut zero = reply(ahead);
        zero[40..48].fill(0);
        assert_eq!(
            check_reply(&zero, SENT, SENT, FLOOR),
            Err(Refusal::ZeroTransmit)
        );
        let mut forged = reply(ahead);
        forged[24] ^= 1;
        assert_eq!(
            check_reply(&forged, SENT, SENT, FLOOR),
            Err(Refusal::OriginMismatch)
        );
        let mut client = reply(ahead);
        client[0] = CLIENT_HEADER;
        assert_eq!(
            check_reply(&client, SENT, SENT, FLOOR),
            Err(Refusal::NotServerMode)
        );
        assert_eq!(
            check_reply(&reply(ahead)[..47], SENT, SENT, FLOOR),
            Err(Refusal::Short)
        );
        let mut past = reply(ahead);
        past[40..48].copy_from_slice(&ntp_bytes(Duration::from_secs(978_307_200)));
        assert_eq!(
            check_reply(&past, SENT, SENT, FLOOR),
            Err(Refusal::BeforeFloor)
        );
    }

    #[test]
    fn the_majority_wins_and_a_time_far_from_it_is_an_outlier() {
        let sample = |offset_s: i128, delay_ms: i128| Sample {
            offset_ns: offset_s * 1_000_000_000,
            delay_ns: delay_ms * 1_000_000,
            stratum: 2,
        };
        let years = 3 * 365 * 86_400;
        let (winner, outliers) = select(&[sample(years, 1), sample(5, 9), sample(5, 3)]).unwrap();
        assert_eq!((winner, outliers), (2, vec![0]));
        assert_eq!(select(&[sample(7, 1)]), Some((0, vec![])));
        assert_eq!(select(&[sample(years, 1), sample(5, 1)]), None);
    }

    #[test]
    fn timestamps_round_trip_across_the_2036_era() {
        for seconds in [1_800_000_000u64, 2_200_000_000] {
            let time = Duration::new(seconds, 250_000_000);
            let back = unix_nanos(ntp_bytes(time), time);
            assert!((back - i128::try_from(time.as_nanos()).unwrap()).abs() < 10);
        }
    }
}
