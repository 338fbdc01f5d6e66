//! The control protocol between init and `berthctl`, version 1: the client connects to
//! [`SOCKET`] (root only: init checks the peer's credentials), writes one request as a JSON
//! object on one line, and reads one response line; then the connection closes.
//!
//! ```text
//! > {"v":1,"cmd":"ps"}
//! < {"v":1,"ok":true,"containers":[{"name":"web","state":"running","pid":81,...}]}
//! > {"v":1,"cmd":"stop","name":"web"}
//! < {"v":1,"ok":true}
//! > {"v":1,"cmd":"logs","name":"nope"}
//! < {"v":1,"ok":false,"error":"no container `nope`","code":"not-found"}
//! ```
//!
//! Fields are only ever added; a client ignores fields it does not know, and init refuses a
//! request whose `v` is newer than its own with an error naming both versions.
//!
//! Two transports carry the same lines: the Unix socket [`SOCKET`] inside the guest (one
//! request per connection), and the virtio-serial port named [`PORT_NAME`] when QEMU provides
//! one, which a rig's host side connects to (one connection at a time: the host's connect and
//! disconnect bound a session, and requests are answered one after the other within it).
//!
//! ## Streams
//! `logs -f` and `events -f` keep the connection: each new line comes as a [`StreamLine`].
//! `exec` answers with the process' PID, then relays its I/O until it exits:
//!
//! ```text
//! > {"v":1,"cmd":"exec","name":"web","args":["sh","-c","cat; exit 3"],"interactive":true}
//! < {"v":1,"ok":true,"pid":812}
//! > {"v":1,"stdin":"aGkK"}                    (base64)
//! > {"v":1,"stdin_close":true}
//! < {"v":1,"stdout":"aGkK"}
//! < {"v":1,"exit":3}
//! ```
//! With `tty`, the process runs on a pseudo-terminal in the guest (stdout carries both
//! streams) and `{"v":1,"resize":{"rows":40,"cols":120}}` changes its size.

use serde::{Deserialize, Serialize};

/// Where init listens.
pub const SOCKET: &str = "/run/berth/control.sock";
/// The name of the virtio-serial port init serves the protocol on (`-device
/// virtserialport,name=org.berth.control`).
pub const PORT_NAME: &str = "org.berth.control";
/// The media type of an update bundle as a layer of an OCI artifact (`berthctl update
/// --pull`): `oras push REF update.berth:application/vnd.berth.update.bundle.v1`.
pub const UPDATE_MEDIA_TYPE: &str = "application/vnd.berth.update.bundle.v1";
/// The artifact type such an artifact's manifest carries (OCI 1.1 `artifactType`).
pub const UPDATE_ARTIFACT_TYPE: &str = "application/vnd.berth.update.v1";
/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Every container with its state.
    Ps,
    /// One container.
    Inspect {
        name: String,
    },
    /// A container's recent output lines (the last `tail`, all that init keeps by default);
    /// with `follow`, the connection stays open and each new line comes as a [`StreamLine`].
    Logs {
        name: String,
        tail: Option<usize>,
        #[serde(default)]
        follow: bool,
        /// Only lines from the last this many seconds (`--since 10m` becomes 600).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_secs: Option<u64>,
    },
    /// Recent event lines; `follow` as for logs.
    Events {
        tail: Option<usize>,
        #[serde(default)]
        follow: bool,
    },
    /// Events and every container's output together, for log shippers: the lines init
    /// keeps (events first, then the containers' lines by the time they came) as
    /// [`StreamLine`]s, then, with `follow`, each new one in the order init saw it. A
    /// container's line carries its name in [`StreamLine::container`]; an event has none.
    /// `tail: 0` skips what init kept.
    Journal {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tail: Option<usize>,
        #[serde(default)]
        follow: bool,
    },
    Start {
        name: String,
    },
    /// Stops a container and remembers it, so `unless-stopped` leaves it stopped.
    Stop {
        name: String,
    },
    Restart {
        name: String,
    },
    /// Memory, CPU time and process count of each running container, from its cgroup.
    Stats,
    /// The processes in a container's cgroup.
    Top {
        name: String,
    },
    /// The kernel's log.
    Dmesg {
        tail: Option<usize>,
    },
    Reboot,
    Poweroff,
    /// Writes an update bundle (`berth build --format update`) into the boot slot that is
    /// not running. The bundle follows the answer as `stdin` lines and `stdin_close`, as for
    /// `exec -i`; the staging process' messages come as `stdout`/`stderr` lines, and its exit
    /// code (0: staged, to boot at the next reboot) as `exit`.
    ///
    /// With `pull`, the bundle is not streamed: the host fetches it from a registry, the
    /// OCI artifact `pull` names (see [`UPDATE_MEDIA_TYPE`]), with the manifest's registry
    /// settings; the rest is as above.
    Update {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pull: Option<String>,
    },
    /// Both boot slots, their image versions and states (`committed`, `on-trial`, `failed`),
    /// newest first, the running one marked: lines as `stdout`, then `exit`.
    Version,
    /// Makes the slot that is not running the next to boot (committed); `reboot` then
    /// starts it. Its message as `stdout`/`stderr`, then `exit`.
    Rollback,
    /// Runs `args` inside a running container: its namespaces, cgroup, user, capabilities
    /// and seccomp filter, its environment with `env` over it.
    Exec {
        name: String,
        args: Vec<String>,
        /// Relay the client's stdin (otherwise the process reads /dev/null).
        #[serde(default)]
        interactive: bool,
        /// Run on a pseudo-terminal.
        #[serde(default)]
        tty: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tty_size: Option<TtySize>,
        /// `uid[:gid]` or a name; the container's own user when unset.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// `KEY=value` pairs.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        env: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workdir: Option<String>,
    },
    /// Validates `manifest` (the text of a manifest file; `file` names it in errors) and
    /// converges the running containers to it: starts the added, stops the removed,
    /// restarts the changed, leaves the rest alone. A bad manifest changes nothing.
    Apply {
        manifest: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<String>,
    },
    /// The images on the host, baked and pulled, with their sizes.
    Images,
    /// Removes pulled images no container of the running manifest uses, the blobs only they
    /// used, and unpacked layers no image on the host uses.
    ImagePrune,
}

/// One image on the host, as `images` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub reference: String,
    /// `baked` (in the boot image) or `pulled` (from a registry, in the data store).
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Bytes of blobs only this image uses (pulled images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_bytes: Option<u64>,
    /// Bytes of blobs it shares with other pulled images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_bytes: Option<u64>,
}

/// What `image-prune` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    pub removed_images: Vec<String>,
    pub removed_blobs: usize,
    pub removed_layers: usize,
    pub freed_bytes: u64,
}

/// The one JSON line `berth-pull` prints (pull, gc or usage); fields of the other
/// commands are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResult {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub layers: Option<u64>,
    #[serde(default)]
    pub bytes: Option<u64>,
    #[serde(default)]
    pub downloaded: Option<u64>,
    #[serde(default)]
    pub removed_refs: Option<Vec<String>>,
    #[serde(default)]
    pub removed_blobs: Option<Vec<String>>,
    #[serde(default)]
    pub freed_bytes: Option<u64>,
    #[serde(default)]
    pub images: Option<Vec<PulledUsage>>,
}

/// One image of `berth-pull usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PulledUsage {
    pub reference: String,
    pub digest: String,
    pub unique_bytes: u64,
    pub shared_bytes: u64,
}

/// Parses berth-pull's result line.
pub fn parse_pull_result(line: &str) -> Result<PullResult, String> {
    serde_json::from_str(line.trim()).map_err(|e| format!("bad berth-pull result: {e}"))
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// What `apply` did, by container name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Parts of the manifest other than containers that differ: they take effect at the
    /// next boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next_boot: Vec<String>,
}

/// From the client during an `exec`, after init's response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecInput {
    pub v: u32,
    /// Bytes for the process' stdin, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// The client's stdin ended: the process sees end of file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin_close: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<TtySize>,
}

/// From init during an `exec`: output as it comes, then the exit code (Docker's: 128 +
/// signal for a killed process), after which the exec is over.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<i32>,
}

/// Bytes as the protocol carries them (standard base64 with padding).
pub fn encode_bytes(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The bytes of an `encode_bytes` string.
pub fn decode_bytes(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("bad base64: {e}"))
}

/// One container's resource use, as `stats` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    pub name: String,
    pub memory_bytes: Option<u64>,
    pub cpu_usec: Option<u64>,
    pub pids: Option<u64>,
}

/// A request on the wire: the version, then the request's own fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    /// Echoed in the response, so a client on the serial port can tell its answer from a
    /// line left over from an earlier session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(flatten)]
    pub request: Request,
}

/// The hardware watchdog init feeds, as `ps` shows it above the containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchdogStatus {
    pub device: String,
    /// The timeout the driver accepted, in seconds.
    pub timeout_s: u64,
    /// False only under the test parameter `berth.test_watchdog_nofeed=1`.
    pub feeding: bool,
}

/// One container, as `ps` and `inspect` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    /// `created`, `waiting`, `running`, `restarting` (backing off) or `stopped`.
    pub state: String,
    pub pid: Option<i32>,
    pub restarts: u32,
    /// Seconds since it started, while it runs.
    pub uptime_s: Option<u64>,
    pub last_exit: Option<i32>,
    pub restart_policy: String,
    /// `starting`, `healthy` or `unhealthy` for a container with a health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    pub network: String,
    pub addr: Option<String>,
    pub stopped_by_operator: bool,
    /// Processes the kernel's OOM killer ended in this container since boot.
    #[serde(default)]
    pub oom_kills: u64,
}

/// init's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Response {
    pub v: u32,
    /// The request's `id`, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `error`: what kind of refusal it is, for scripts and berthctl's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<Vec<ContainerStatus>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Vec<ContainerStats>>,
    /// The process `exec` started, as the host sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Changes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<ImageInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<PruneReport>,
    /// With `ps`: the armed hardware watchdog, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<WatchdogStatus>,
    /// With `stats`: how many events of each kind init has emitted since boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_counts: Option<std::collections::BTreeMap<String, u64>>,
}

impl Response {
    pub fn ok() -> Response {
        Response {
            v: VERSION,
            ok: true,
            ..Response::default()
        }
    }

    /// A refusal of no more particular kind (`internal`).
    pub fn error(message: impl Into<String>) -> Response {
        Response::refusal(ErrorCode::Internal, message)
    }

    pub fn refusal(code: ErrorCode, message: impl Into<String>) -> Response {
        Response {
            v: VERSION,
            ok: false,
            error: Some(message.into()),
            code: Some(code),
            ..Response::default()
        }
    }

    pub fn containers(containers: Vec<ContainerStatus>) -> Response {
        Response {
            containers: Some(containers),
            ..Response::ok()
        }
    }

    pub fn lines(lines: Vec<String>) -> Response {
        Response {
            lines: Some(lines),
            ..Response::ok()
        }
    }
}

/// What kind of refusal a response with `error` is. Stable: scripts test it, and berthctl's
/// exit code follows it. Codes are only ever added; a client takes one it does not know as
/// `internal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The request names a container (or other thing) the host does not have.
    NotFound,
    /// The thing is in a state that refuses the request (`start` of a running container).
    Conflict,
    /// The request, or what it carries (a manifest), is malformed or invalid.
    Invalid,
    /// init is at a limit (control clients): try again later.
    Busy,
    /// Anything else: the operation failed.
    #[serde(other)]
    Internal,
}

/// One more line of a followed log or event stream, after the response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamLine {
    pub v: u32,
    pub line: String,
    /// On a `journal` stream: the container whose output the line is (none: an event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// Parses one request line; the error is what init answers.
pub fn parse_request(line: &str) -> Result<Request, String> {
    parse_envelope(line).map(|e| e.request)
}

/// Parses one request line with its `id`.
pub fn parse_envelope(line: &str) -> Result<Envelope, String> {
    let envelope: Envelope =
        serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}"))?;
    if envelope.v > VERSION {
        return Err(format!(
            "protocol version {} is newer than this init's ({VERSION})",
            envelope.v
        ));
    }
    Ok(envelope)
}

/// Parses one line a client sends during an `exec`.
pub fn parse_exec_input(line: &str) -> Result<ExecInput, String> {
    serde_json::from_str(line.trim()).map_err(|e| format!("bad exec input: {e}"))
}

/// One line of JSON for `value` (with its newline).
pub fn to_line(value: &impl Serialize) -> String {
    let mut line = serde_json::to_string(value).unwrap_or_else(|_| {
        r#"{"v":1,"ok":false,"error":"cannot encode the response"}"#.to_string()
    });
    line.push('\n');
    line
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_a_stable_code_and_an_unknown_one_reads_as_internal() {
        let line = to_line(&Response::refusal(ErrorCode::NotFound, "no container `x`"));
        assert!(line.contains(r#""code":"not-found""#), "{line}");
        let plain = to_line(&Response::error("failed"));
        assert!(plain.contains(r#""code":"internal""#), "{plain}");
        let newer: Response =
            serde_json::from_str(r#"{"v":1,"ok":false,"error":"e","code":"rate-limited"}"#)
                .unwrap();
        assert_eq!(newer.code, Some(ErrorCode::Internal));
        let older: Response = serde_json::from_str(r#"{"v":1,"ok":false,"error":"e"}"#).unwrap();
        assert_eq!(older.code, None);
    }

    #[test]
    fn update_without_pull_is_the_bare_verb_older_clients_send() {
        let bare = Request::Update { pull: None };
        assert_eq!(serde_json::to_string(&bare).unwrap(), r#"{"cmd":"update"}"#);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"update"}"#).unwrap(),
            bare
        );
        let pulled: Request =
            serde_json::from_str(r#"{"cmd":"update","pull":"10.0.2.2:5000/host:2"}"#).unwrap();
        assert_eq!(
            pulled,
            Request::Update {
                pull: Some("10.0.2.2:5000/host:2".to_string())
            }
        );
    }

    #[test]
    fn exec_messages_carry_bytes_as_base64() {
        let input = ExecInput {
            v: VERSION,
            stdin: Some(encode_bytes(b"hi\n")),
            ..ExecInput::default()
        };
        assert_eq!(to_line(&input), "{\"v\":1,\"stdin\":\"aGkK\"}\n");
        let output: ExecOutput = serde_json::from_str(r#"{"v":1,"exit":3}"#).unwrap();
        assert_eq!(output.exit, Some(3));
        assert_eq!(decode_bytes("aGkK").unwrap(), b"hi\n");
        assert!(decode_bytes("a!").is_err());
        let exec = parse_request(r#"{"v":1,"cmd":"exec","name":"web","args":["true"]}"#).unwrap();
        assert!(matches!(
            exec,
            Request::Exec {
                interactive: false,
                tty: false,
                ..
            }
        ));
    }

    #[test]
    fn requests_round_trip_as_documented() {
        let stop = Envelope {
            v: VERSION,
            id: None,
            request: Request::Stop {
                name: "web".to_string(),
            },
        };
        assert_eq!(
            to_line(&stop),
            "{\"v\":1,\"cmd\":\"stop\",\"name\":\"web\"}\n"
        );
        assert_eq!(parse_request(r#"{"v":1,"cmd":"ps"}"#).unwrap(), Request::Ps);
        assert!(parse_request(r#"{"v":2,"cmd":"ps"}"#)
            .unwrap_err()
            .contains("newer"));
        assert!(parse_request("ps").unwrap_err().starts_with("bad request"));
        assert_eq!(
            to_line(&Response::refusal(ErrorCode::NotFound, "no container `x`")),
            "{\"v\":1,\"ok\":false,\"error\":\"no container `x`\",\"code\":\"not-found\"}\n"
        );
    }
}
