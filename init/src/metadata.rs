//! The EC2-style instance metadata service: `http://169.254.169.254/latest/user-data`, asked
//! with an IMDSv2 session token when the service hands one out and plainly otherwise (IMDSv1).
//! Only tried when the machine says it is an EC2 instance (DMI `sys_vendor` is "Amazon EC2")
//! or the command line asks (`berth.metadata=ec2`), and only once the network is online: on
//! any other host it would cost a timeout at every boot.
//!
//! The service is outside init, so hostile until checked: the exchange runs in a helper child
//! of init ([`crate::helper_child`]) with one deadline for all of it ([`DEADLINE`]), so a
//! service that trickles or never ends its reply costs a child killed at the deadline, never
//! PID 1; the reply is read up to [`MAX_REPLY`] bytes and refused past it; a token that is
//! not plain visible ASCII is not sent back (it would inject headers).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const ADDRESS: &str = "169.254.169.254:80";
const TIMEOUT: Duration = Duration::from_secs(3);
/// The whole exchange (token, then user data) ends by then, answered or not.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// The most of one reply read: the manifest's limit and room for the headers.
const MAX_REPLY: u64 = crate::config_source::MANIFEST_LIMIT + (16 << 10);
/// The longest token sent back (AWS's are 56 characters).
const MAX_TOKEN: usize = 256;
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
        .take(MAX_REPLY + 1)
        .read_to_end(&mut reply)
        .map_err(|e| format!("read from {ADDRESS}: {e}"))?;
    if u64::try_from(reply.len()).map_or(true, |n| n > MAX_REPLY) {
        return Err(format!(
            "{ADDRESS}: a reply of more than {MAX_REPLY} bytes: refused"
        ));
    }
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

/// The instance's user data, asked for in a helper child within [`DEADLINE`]; None when it
/// has none (404).
pub fn user_data() -> Result<Option<String>, String> {
    let deadline = std::time::Instant::now() + DEADLINE;
    let limit = usize::try_from(MAX_REPLY).unwrap_or(usize::MAX);
    let answer = crate::helper_child::run_until("the metadata service", deadline, limit, || {
        match ask_user_data()? {
            Some(text) => Ok(format!("{USER_DATA}{text}")),
            None => Ok(NO_USER_DATA.to_string()),
        }
    })?;
    if let Some(text) = answer.strip_prefix(USER_DATA) {
        return Ok(Some(text.to_string()));
    }
    if answer == NO_USER_DATA {
        return Ok(None);
    }
    Err(format!(
        "the metadata service: unexpected answer from the helper: {answer}"
    ))
}

/// The helper child's answer, before the user data or instead of it.
const USER_DATA: &str = "user-data\n";
const NO_USER_DATA: &str = "none\n";

/// Whether `token` may go back in a header: plain visible ASCII of a sane length.
fn is_plain_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= MAX_TOKEN && token.bytes().all(|b| b.is_ascii_graphic())
}

fn ask_user_data() -> Result<Option<String>, String> {
    let token = match exchange(
        "PUT /latest/api/token HTTP/1.0\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nContent-Length: 0\r\n\r\n",
    ) {
        Ok((200, token)) if is_plain_token(token.trim()) => Some(token.trim().to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_token_goes_back_in_a_header() {
        assert!(is_plain_token("AQAEAKz-dG9rZW4="));
        assert!(!is_plain_token(""));
        assert!(!is_plain_token("abc\r\nX-Injected: 1"));
        assert!(!is_plain_token("with space"));
        assert!(!is_plain_token(&"a".repeat(MAX_TOKEN + 1)));
    }
}
