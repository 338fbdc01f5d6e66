//! A scripted DHCP server for tests that feed netd hostile replies: it answers each client
//! message that matches the next step of its script with that step's packets, crafted byte by
//! byte (wrong ids, cut-off options, garbage), and logs every client message it receives with
//! its time, so a test can assert on what the client did and how often.
//!
//! It serves from a thread of its own that joins the rig's network namespace: `setns` moves only
//! the calling thread, so the test's other threads stay where they are. The socket is bound to
//! the rig's bridge, and every reply goes to the broadcast address (netd sets the broadcast
//! flag), so it reaches the guest whether or not it has an address yet.

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
};

/// DHCP message types (option 53), RFC 2132 §9.6.
pub const DISCOVER: u8 = 1;
pub const OFFER: u8 = 2;
pub const REQUEST: u8 = 3;
pub const ACK: u8 = 5;
pub const NAK: u8 = 6;

/// Option codes the scripts use (RFC 2132, RFC 3442).
pub mod option {
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const MTU: u8 = 26;
    pub const REQUESTED_ADDRESS: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const RENEWAL: u8 = 58;
    pub const CLASSLESS_ROUTES: u8 = 121;
    pub const END: u8 = 255;
}

const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;
const BOOTP_HEADER: usize = 236;
const COOKIE: [u8; 4] = [99, 130, 83, 99];
/// How often the serving thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(200);
/// How long the thread may take to join the namespace and bind.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A client message as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Since the server started.
    pub at: Duration,
    /// The message type (option 53).
    pub kind: u8,
    pub xid: u32,
    pub chaddr: [u8; 6],
    pub ciaddr: Ipv4Addr,
    /// Options 50 and 54.
    pub requested: Option<Ipv4Addr>,
    pub server: Option<Ipv4Addr>,
    /// The step it set off, if any.
    pub step: Option<&'static str>,
}

/// The packets one step answers with.
pub type Replies = Box<dyn Fn(&Seen) -> Vec<Vec<u8>> + Send>;

/// One step of a script: the next client message of type `on` gets `replies`.
pub struct Step {
    pub on: u8,
    pub label: &'static str,
    pub replies: Replies,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Step({} on {})", self.label, self.on)
    }
}

impl Step {
    pub fn new(
        on: u8,
        label: &'static str,
        replies: impl Fn(&Seen) -> Vec<Vec<u8>> + Send + 'static,
    ) -> Step {
        Step {
            on,
            label,
            replies: Box::new(replies),
        }
    }
}

/// A reply packet under construction: a BOOTP reply to `seen` with its message type, then
/// whatever options (or raw bytes) the step adds.
#[derive(Debug, Clone)]
pub struct Reply {
    bytes: Vec<u8>,
}

impl Reply {
    /// A reply of `kind` to `seen`, offering `yiaddr`, with `siaddr` set to `server`.
    pub fn to(seen: &Seen, kind: u8, yiaddr: Ipv4Addr, server: Ipv4Addr) -> Reply {
        let mut bytes = vec![0u8; BOOTP_HEADER];
        bytes[0] = 2; // BOOTREPLY
        bytes[1] = 1; // Ethernet
        bytes[2] = 6;
        bytes[4..8].copy_from_slice(&seen.xid.to_be_bytes());
        bytes[10] = 0x80; // the broadcast flag, as the client set it
        bytes[16..20].copy_from_slice(&yiaddr.octets());
        bytes[20..24].copy_from_slice(&server.octets());
        bytes[28..34].copy_from_slice(&seen.chaddr);
        bytes.extend_from_slice(&COOKIE);
        Reply { bytes }.option(option::MESSAGE_TYPE, &[kind])
    }

    /// Adds option `code`; a value longer than 255 bytes is split into several options of
    /// the same code, which the client joins (RFC 3396).
    pub fn option(mut self, code: u8, value: &[u8]) -> Reply {
        if value.is_empty() {
            self.bytes.extend([code, 0]);
        }
        for chunk in value.chunks(255) {
            self.bytes.push(code);
            self.bytes
                .push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
            self.bytes.extend_from_slice(chunk);
        }
        self
    }

    /// Appends raw bytes: a malformed option, say.
    pub fn raw(mut self, bytes: &[u8]) -> Reply {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// Replaces the transaction id.
    pub fn xid(mut self, xid: u32) -> Reply {
        self.bytes[4..8].copy_from_slice(&xid.to_be_bytes());
        self
    }

    /// The packet with the End option.
    pub fn end(self) -> Vec<u8> {
        self.raw(&[option::END]).bytes
    }

    /// The packet as it is, without an End option.
    pub fn bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// A lease time or other 32-bit option value.
pub fn secs(value: u32) -> [u8; 4] {
    value.to_be_bytes()
}

/// The client message in `bytes`, if it is one.
fn parse(bytes: &[u8], at: Duration) -> Option<Seen> {
    if bytes.first() != Some(&1) || bytes.get(BOOTP_HEADER..BOOTP_HEADER + 4)? != COOKIE {
        return None;
    }
    let ip = |b: &[u8]| <[u8; 4]>::try_from(b).ok().map(Ipv4Addr::from);
    let mut seen = Seen {
        at,
        kind: 0,
        xid: u32::from_be_bytes(bytes.get(4..8)?.try_into().ok()?),
        chaddr: bytes.get(28..34)?.try_into().ok()?,
        ciaddr: ip(bytes.get(12..16)?)?,
        requested: None,
        server: None,
        step: None,
    };
    let mut at = BOOTP_HEADER + 4;
    while let Some(&code) = bytes.get(at) {
        match code {
            0 => at += 1,
            option::END => break,
            _ => {
                let len = usize::from(*bytes.get(at + 1)?);
                let value = bytes.get(at + 2..at + 2 + len)?;
                match code {
                    option::MESSAGE_TYPE => seen.kind = *value.first()?,
                    option::REQUESTED_ADDRESS => seen.requested = ip(value),
                    option::SERVER_ID => seen.server = ip(value),
                    _ => {}
                }
                at += 2 + len;
            }
        }
    }
    Some(seen)
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        DISCOVER => "DISCOVER",
        REQUEST => "REQUEST",
        4 => "DECLINE",
        7 => "RELEASE",
        8 => "INFORM",
        _ => "OTHER",
    }
}

/// A UDP socket on port 67 of `iface` in the namespace at `netns`, for the calling thread.
fn server_socket(netns: &Path, iface: &str) -> Result<UdpSocket, String> {
    let ns = File::open(netns).map_err(|e| format!("{}: {e}", netns.display()))?;
    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {}: {e}", netns.display()))?;
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    let opts = || -> nix::Result<()> {
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        setsockopt(&fd, sockopt::Broadcast, &true)?;
        setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from(iface))?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT)),
        )
    };
    opts().map_err(|e| format!("bind port {SERVER_PORT} on {iface}: {e}"))?;
    let socket = UdpSocket::from(fd);
    socket
        .set_read_timeout(Some(POLL))
        .map_err(|e| format!("read timeout: {e}"))?;
    Ok(socket)
}

/// The server: stops and writes the rest of its log when dropped.
#[derive(Debug)]
pub struct ScriptedServer {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ScriptedServer {
    /// Serves `script` on `iface` (the rig's bridge) in the namespace at `netns`, logging to
    /// `log` as it goes; returns once the socket is bound.
    pub fn start(
        netns: &Path,
        iface: &str,
        script: Vec<Step>,
        log: PathBuf,
    ) -> Result<ScriptedServer, String> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, started) = mpsc::channel();
        let (netns, iface) = (netns.to_path_buf(), iface.to_string());
        let (thread_seen, thread_stop) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread = std::thread::spawn(move || match server_socket(&netns, &iface) {
            Ok(socket) => {
                let _ = ready.send(Ok(()));
                serve(&socket, script, &thread_seen, &thread_stop, &log);
            }
            Err(err) => {
                let _ = ready.send(Err(err));
            }
        });
        started
            .recv_timeout(START_TIMEOUT)
            .map_err(|e| format!("the DHCP server thread did not start: {e}"))??;
        Ok(ScriptedServer {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// Every client message so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until the step `label` has answered, for at most `within`.
    pub fn wait_step(&self, label: &str, within: Duration) -> Result<Seen, String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(seen) = self.seen().into_iter().find(|s| s.step == Some(label)) {
                return Ok(seen);
            }
            if Instant::now() >= deadline {
                return Err(format!("step {label} did not run within {within:?}"));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    socket: &UdpSocket,
    script: Vec<Step>,
    seen: &Mutex<Vec<Seen>>,
    stop: &AtomicBool,
    log: &Path,
) {
    let started = Instant::now();
    let mut log = File::create(log).ok();
    let mut steps = script.into_iter().peekable();
    let mut buf = vec![0u8; 65_536];
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT);
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Some(mut message) = parse(buf.get(..n).unwrap_or_default(), started.elapsed()) else {
            continue;
        };
        let mut sent = Vec::new();
        if let Some(step) = steps.next_if(|step| step.on == message.kind) {
            message.step = Some(step.label);
            for packet in (step.replies)(&message) {
                let result = socket.send_to(&packet, to);
                sent.push(match result {
                    Ok(_) => format!("{}", packet.len()),
                    Err(e) => format!("{}:{e}", packet.len()),
                });
            }
        }
        if let Some(log) = log.as_mut() {
            let _ = writeln!(
                log,
                "{:>8.3}s {} from {from} xid={:08x} ciaddr={} requested={:?} server={:?} step={} sent={}",
                message.at.as_secs_f64(),
                kind_name(message.kind),
                message.xid,
                message.ciaddr,
                message.requested,
                message.server,
                message.step.unwrap_or("-"),
                sent.join(","),
            );
        }
        if let Ok(mut seen) = seen.lock() {
            seen.push(message);
        }
    }
}
