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
//! < {"v":1,"ok":false,"error":"no container `nope`"}
//! ```
//!
//! Fields are only ever added; a client ignores fields it does not know, and init refuses a
//! request whose `v` is newer than its own with an error naming both versions.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented
)]

use serde::{Deserialize, Serialize};

/// Where init listens.
pub const SOCKET: &str = "/run/berth/control.sock";
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
    },
    /// Recent event lines; `follow` as for logs.
    Events {
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
    #[serde(flatten)]
    pub request: Request,
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
    pub network: String,
    pub addr: Option<String>,
    pub stopped_by_operator: bool,
}

/// init's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Response {
    pub v: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers: Option<Vec<ContainerStatus>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Vec<ContainerStats>>,
}

impl Response {
    pub fn ok() -> Response {
        Response {
            v: VERSION,
            ok: true,
            ..Response::default()
        }
    }

    pub fn error(message: impl Into<String>) -> Response {
        Response {
            v: VERSION,
            ok: false,
            error: Some(message.into()),
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

/// One more line of a followed log or event stream, after the response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamLine {
    pub v: u32,
    pub line: String,
}

/// Parses one request line; the error is what init answers.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let envelope: Envelope =
        serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}"))?;
    if envelope.v > VERSION {
        return Err(format!(
            "protocol version {} is newer than this init's ({VERSION})",
            envelope.v
        ));
    }
    Ok(envelope.request)
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
    fn requests_round_trip_as_documented() {
        let stop = Envelope {
            v: VERSION,
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
            to_line(&Response::error("no container `x`")),
            "{\"v\":1,\"ok\":false,\"error\":\"no container `x`\"}\n"
        );
    }
}
