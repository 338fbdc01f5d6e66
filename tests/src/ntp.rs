//! NTP servers for the time tests: Debian's chrony as an honest server that never touches
//! the test machine's clock (`chronyd -x`), and a scripted UDP server that answers nonsense.
//!
//! Both listen on the test machine's loopback, on a free port; QEMU's user network forwards
//! the guest's `10.0.2.2:PORT` there.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from 1900 to 1970.
const NTP_TO_UNIX: u64 = 2_208_988_800;
/// How long chronyd may take to answer its first request.
const CHRONY_READY: Duration = Duration::from_secs(10);

/// A UDP port free on the loopback a moment ago.
pub fn free_udp_port() -> Result<u16, String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    socket
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn ntp_timestamp(time: SystemTime) -> [u8; 8] {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let seconds = u32::try_from((since.as_secs() + NTP_TO_UNIX) & 0xffff_ffff).unwrap_or(0);
    let fraction =
        u32::try_from((u64::from(since.subsec_nanos()) << 32) / 1_000_000_000).unwrap_or(0);
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&seconds.to_be_bytes());
    bytes[4..].copy_from_slice(&fraction.to_be_bytes());
    bytes
}

/// A client request for `port` on the loopback; whether a server reply came.
fn answers(port: u16) -> bool {
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(500)));
    let mut request = [0u8; 48];
    request[0] = 0x23;
    request[40..48].copy_from_slice(&ntp_timestamp(SystemTime::now()));
    if socket.send_to(&request, ("127.0.0.1", port)).is_err() {
        return false;
    }
    let mut reply = [0u8; 128];
    matches!(socket.recv(&mut reply), Ok(n) if n >= 48 && reply[1] != 0)
}

/// chronyd serving the test machine's clock on a loopback port; stopped when dropped.
#[derive(Debug)]
pub struct Chrony {
    pub port: u16,
    child: Child,
}

impl Chrony {
    /// Starts chronyd with a configuration, pid file and log of its own in `dir`: no
    /// sources, its local clock at stratum 3, no command port, `-x` so it never sets the
    /// test machine's clock; on `port` (from [`free_udp_port`]).
    pub fn start(dir: &Path, port: u16) -> Result<Chrony, String> {
        let config = dir.join("chrony.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbindaddress 127.0.0.1\ncmdport 0\nallow all\nlocal stratum 3\n\
                 pidfile {}\n",
                dir.join("chronyd.pid").display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("chronyd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("chronyd")
            .args(["-x", "-d", "-u", "root", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start chronyd (scripts/setup installs chrony): {e}"))?;
        let mut chrony = Chrony { port, child };
        let deadline = std::time::Instant::now() + CHRONY_READY;
        while !answers(port) {
            if std::time::Instant::now() >= deadline
                || chrony.child.try_wait().ok().flatten().is_some()
            {
                return Err(format!(
                    "chronyd did not answer on 127.0.0.1:{port}; see {}",
                    dir.join("chronyd.log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(chrony)
    }
}

impl Drop for Chrony {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the scripted server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The test machine's time, stratum 2: an honest second source.
    Honest,
    /// A kiss-of-death: stratum 0, reference id `RATE`.
    KissOfDeath,
    /// A synchronized-looking reply whose time is `years` years ahead.
    YearsAhead(u64),
    /// The same, years behind (before any image's build time).
    YearsBehind(u64),
}

/// Serves `answer` to every request on a loopback port, from a thread that lives as long as
/// the test process; returns the port.
pub fn scripted_server(answer: Answer) -> Result<u16, String> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = socket.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || serve(&socket, answer));
    Ok(port)
}

/// Serves `answer` on `addr` inside the network namespace `netns` (a file such as
/// `/run/netns/NAME`), from a thread that enters it (`setns` moves only the calling thread)
/// and lives as long as the test process.
pub fn scripted_server_in_netns(
    netns: &Path,
    addr: std::net::SocketAddr,
    answer: Answer,
) -> Result<(), String> {
    let namespace = std::fs::File::open(netns).map_err(|e| format!("{}: {e}", netns.display()))?;
    let (bound, outcome) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::spawn(move || {
        let socket = nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns: {e}"))
            .and_then(|()| UdpSocket::bind(addr).map_err(|e| format!("bind {addr}: {e}")));
        match socket {
            Ok(socket) => {
                let _ = bound.send(Ok(()));
                serve(&socket, answer);
            }
            Err(err) => {
                let _ = bound.send(Err(err));
            }
        }
    });
    outcome
        .recv_timeout(CHRONY_READY)
        .map_err(|e| format!("the NTP server thread did not start: {e}"))?
}

/// Answers every request on `socket` with `answer`, until the socket fails.
fn serve(socket: &UdpSocket, answer: Answer) {
    let mut request = [0u8; 512];
    while let Ok((length, from)) = socket.recv_from(&mut request) {
        if length < 48 {
            continue;
        }
        let year = Duration::from_secs(365 * 86_400);
        let now = SystemTime::now();
        let (stratum, time) = match answer {
            Answer::Honest => (2, now),
            Answer::KissOfDeath => (0, now),
            Answer::YearsAhead(years) => (2, now + year * u32::try_from(years).unwrap_or(1)),
            Answer::YearsBehind(years) => (2, now - year * u32::try_from(years).unwrap_or(1)),
        };
        let mut reply = [0u8; 48];
        reply[0] = 0x24; // LI 0, version 4, mode 4 (server)
        reply[1] = stratum;
        reply[2] = 6;
        reply[3] = 0xec;
        if answer == Answer::KissOfDeath {
            reply[12..16].copy_from_slice(b"RATE");
        } else {
            reply[12..16].copy_from_slice(b"TEST");
        }
        reply[16..24].copy_from_slice(&ntp_timestamp(time));
        // Origin: the client's transmit time, as RFC 5905 asks.
        reply[24..32].copy_from_slice(&request[40..48]);
        reply[32..40].copy_from_slice(&ntp_timestamp(time));
        reply[40..48].copy_from_slice(&ntp_timestamp(time));
        let _ = socket.send_to(&reply, from);
    }
}
