//! One request and its response over a Unix stream socket: init's own socket in the guest,
//! or, on the host, the QEMU chardev behind the guest's virtio-serial port. Both carry the
//! same lines; the serial port may also hold lines left over from an earlier session, which
//! is why each request carries an `id` and the response is the first line that echoes it.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_control::{to_line, Envelope, Request, Response, VERSION};

/// Request ids stay below 2^53, so that tools reading `--json` output as doubles (jq, a
/// browser) see the same number.
const ID_MASK: u64 = (1 << 53) - 1;

/// A connection to init, its response read.
#[derive(Debug)]
pub(crate) struct Answered {
    /// The response line as it came (for `--json`).
    pub raw: String,
    pub response: Response,
    /// The rest of the connection: a stream for `-f`, the process' output for `exec`.
    pub reader: BufReader<UnixStream>,
    /// The sending half, for `exec`'s input.
    pub writer: UnixStream,
}

/// A request id unlikely to be reused: the clock's nanoseconds and the PID.
pub(crate) fn new_id() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        d.as_secs()
            .wrapping_mul(1_000_000_000)
            .wrapping_add(u64::from(d.subsec_nanos()))
    });
    (now ^ (u64::from(std::process::id()) << 24)) & ID_MASK
}

/// Connects to `socket`, sends `request` with a fresh id and reads its response, waiting at
/// most `timeout` for it when one is given. The error says what failed (exit 3).
pub(crate) fn ask(
    socket: &Path,
    request: Request,
    timeout: Option<Duration>,
) -> Result<Answered, String> {
    let shown = socket.display();
    let mut writer =
        UnixStream::connect(socket).map_err(|e| format!("cannot reach init at {shown}: {e}"))?;
    let id = new_id();
    let envelope = Envelope {
        v: VERSION,
        id: Some(id),
        request,
    };
    // A refusal (a caller that is not root) is written and the connection closed before
    // init reads the request: the send then fails with EPIPE, but the answer is there to
    // read, and it says more than the broken pipe.
    let sent = writer.write_all(to_line(&envelope).as_bytes());
    if let Err(e) = &sent {
        if e.kind() != ErrorKind::BrokenPipe {
            return Err(format!("send to {shown}: {e}"));
        }
    }
    let stream = writer
        .try_clone()
        .map_err(|e| format!("cannot share the connection to {shown}: {e}"))?;
    stream
        .set_read_timeout(timeout)
        .map_err(|e| format!("cannot set a timeout on {shown}: {e}"))?;
    let mut reader = BufReader::new(stream);
    let (raw, response) = read_response(&mut reader, id).map_err(|e| match e.kind() {
        _ if sent.is_err() => format!("send to {shown}: the connection was closed ({e})"),
        ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
            "no answer from init at {shown} within {}s",
            timeout.map_or(0, |t| t.as_secs())
        ),
        _ => format!("read from {shown}: {e}"),
    })?;
    // Streams and exec output come at their own pace.
    reader
        .get_ref()
        .set_read_timeout(None)
        .map_err(|e| format!("cannot clear the timeout on {shown}: {e}"))?;
    Ok(Answered {
        raw,
        response,
        reader,
        writer,
    })
}

/// True when `response` answers request `id`: it echoes the id, or it is a refusal without
/// one (init could not read the request, so it could not read its id either).
fn answers(response: &Response, id: u64) -> bool {
    match response.id {
        Some(theirs) => theirs == id,
        None => !response.ok,
    }
}

/// Reads lines until the response to request `id`, skipping what an earlier session left
/// (stream lines, exec output, answers to other ids). Returns the line and its response.
pub(crate) fn read_response(
    reader: &mut impl BufRead,
    id: u64,
) -> std::io::Result<(String, Response)> {
    let mut skipped: Option<String> = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            let detail = skipped.map_or_else(
                || "no response".to_string(),
                |l| format!("no response for request {id}; last line: {}", l.trim_end()),
            );
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("init closed the connection: {detail}"),
            ));
        }
        match serde_json::from_str::<Response>(line.trim()) {
            Ok(response) if answers(&response, id) => return Ok((line, response)),
            _ => skipped = Some(line),
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn the_response_is_the_first_line_with_our_id() {
        let lines = concat!(
            "{\"v\":1,\"line\":\"left over from a followed stream\"}\n",
            "{\"v\":1,\"stdout\":\"aGkK\"}\n",
            "{\"v\":1,\"id\":6,\"ok\":true}\n",
            "not json at all\n",
            "{\"v\":1,\"id\":7,\"ok\":true,\"pid\":812}\n",
            "{\"v\":1,\"id\":7,\"ok\":false}\n",
        );
        let (raw, response) = read_response(&mut lines.as_bytes(), 7).unwrap();
        assert_eq!(raw, "{\"v\":1,\"id\":7,\"ok\":true,\"pid\":812}\n");
        assert_eq!(response.pid, Some(812));
    }

    #[test]
    fn a_refusal_without_an_id_answers_and_silence_is_an_error() {
        let refusal = "{\"v\":1,\"ok\":false,\"error\":\"bad request: x\"}\n";
        let (_, response) = read_response(&mut refusal.as_bytes(), 7).unwrap();
        assert_eq!(response.error.as_deref(), Some("bad request: x"));
        let other = "{\"v\":1,\"id\":6,\"ok\":true}\n";
        let err = read_response(&mut other.as_bytes(), 7).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
        assert!(
            err.to_string().contains("last line: {\"v\":1,\"id\":6"),
            "{err}"
        );
    }

    #[test]
    fn ids_fit_in_a_double() {
        assert!(new_id() <= ID_MASK);
    }
}
