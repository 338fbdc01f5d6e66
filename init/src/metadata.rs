//! The EC2-style instance metadata service: `http://169.254.169.254/latest/user-data`, asked
//! with an IMDSv2 session token when the service hands one out and plainly otherwise (IMDSv1).
//! Only tried when the machine says it is an EC2 instance (DMI `sys_vendor` is "Amazon EC2")
//! or the command line asks (`berth.metadata=ec2`), and only once the network is online: on
//! any other host it would cost a timeout at every boot.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const ADDRESS: &str = "169.254.169.254:80";
const TIMEOUT: Duration = Duration::from_secs(3);
const DMI_VENDOR: &str = "/sys/class/dmi/id/sys_vendor";

/// Whether this boot should ask the metadata service.
pub fn wanted(forced: bool) -> bool {
    forced || std::fs::read_to_string(DMI_VENDOR).is_ok_and(|vendor| vendor.trim() == "Amazon EC2")
}

/// One HTTP/1.0 exchange; (status, body).
fn exchange(request: &str) -> Result<(u16, String), String> {
    let address: SocketAddr = ADDRESS.parse().map_err(|e| format!("{ADDRESS}: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&address, TIMEOUT)
        .map_err(|e| format!("connect {ADDRESS}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send to {ADDRESS}: {e}"))?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .map_err(|e| format!("read from {ADDRESS}: {e}"))?;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{ADDRESS}: not an HTTP reply"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "{ADDRESS}: no status in `{}`",
                head.lines().next().unwrap_or_default()
            )
        })?;
    Ok((status, body.to_string()))
}

/// The instance's user data; None when it has none (404).
pub fn user_data() -> Result<Option<String>, String> {
    let token = match exchange(
        "PUT /latest/api/token HTTP/1.0\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 0\r\n\r\n",
    ) {
        Ok((200, token)) => Some(token.trim().to_string()),
        // An IMDSv1-only service (or one that refuses tokens): ask without one.
        _ => None,
    };
    let header = token
        .map(|t| format!("X-aws-ec2-metadata-token: {t}\r\n"))
        .unwrap_or_default();
    let (status, body) = exchange(&format!(
        "GET /latest/user-data HTTP/1.0\r\nHost: 169.254.169.254\r\n{header}\r\n"
    ))?;
    match status {
        200 => Ok(Some(body)),
        404 => Ok(None),
        other => Err(format!("GET /latest/user-data: HTTP {other}")),
    }
}
