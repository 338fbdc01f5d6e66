//! A syslog receiver on the test machine's loopback (reached as `10.0.2.2` from a guest on
//! QEMU's user network): RFC 6587 octet-counted RFC 5424 messages over TCP, kept in the order
//! they came. It can go down (its listener and every connection closed, so the port
//! refuses) and come back on the same port, to make a receiver outage.

use std::io::{BufRead, BufReader, Read};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One received message: RFC 5424's fields a test looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub priority: u8,
    pub app: String,
    pub msgid: String,
    /// `meta sequenceId`, when present.
    pub seq: Option<u64>,
    pub text: String,
}

/// Parses `<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG`.
pub fn parse(message: &str) -> Option<Received> {
    let rest = message.strip_prefix('<')?;
    let (priority, rest) = rest.split_once('>')?;
    let rest = rest.strip_prefix("1 ")?;
    let mut fields = rest.splitn(5, ' ');
    let _timestamp = fields.next()?;
    let _host = fields.next()?;
    let app = fields.next()?.to_string();
    let _procid = fields.next()?;
    let rest = fields.next()?;
    let (msgid, rest) = rest.split_once(' ')?;
    let (seq, text) = if let Some(sd) = rest.strip_prefix("[meta sequenceId=\"") {
        let (seq, text) = sd.split_once("\"] ")?;
        (Some(seq.parse().ok()?), text)
    } else {
        (None, rest.strip_prefix("- ")?)
    };
    Some(Received {
        priority: priority.parse().ok()?,
        app,
        msgid: msgid.to_string(),
        seq,
        text: text.to_string(),
    })
}

#[derive(Debug)]
pub struct Receiver {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    /// Malformed frames, kept for the failure message.
    malformed: Arc<Mutex<Vec<String>>>,
    up: Option<Up>,
}

/// What a receiver that is up holds: its accept loop's flag and its connections.
#[derive(Debug)]
struct Up {
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl Receiver {
    /// A receiver up on an ephemeral loopback port.
    pub fn start() -> Receiver {
        let mut receiver = Receiver {
            port: 0,
            received: Arc::default(),
            malformed: Arc::default(),
            up: None,
        };
        receiver.up();
        receiver
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Listens (again, on the same port once it has one).
    pub fn up(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("syslog receiver on port {}: {e}", self.port));
        self.port = listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (flag, open) = (Arc::clone(&stop), Arc::clone(&connections));
        let (received, malformed) = (Arc::clone(&self.received), Arc::clone(&self.malformed));
        std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        if let (Ok(clone), Ok(mut open)) = (stream.try_clone(), open.lock()) {
                            open.push(clone);
                        }
                        let (received, malformed) = (Arc::clone(&received), Arc::clone(&malformed));
                        std::thread::spawn(move || read_frames(stream, &received, &malformed));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        self.up = Some(Up { stop, connections });
    }

    /// Goes down: stops listening and closes every connection.
    pub fn down(&mut self) {
        if let Some(up) = self.up.take() {
            up.stop.store(true, Ordering::SeqCst);
            if let Ok(open) = up.connections.lock() {
                for stream in open.iter() {
                    let _ = stream.shutdown(Shutdown::Both);
                }
            }
            // The accept loop sees the flag within one sleep and drops the listener.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn malformed(&self) -> Vec<String> {
        self.malformed.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

/// Reads `LEN SP MSG` frames until the connection ends.
fn read_frames(stream: TcpStream, received: &Mutex<Vec<Received>>, malformed: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = Vec::new();
        match reader.read_until(b' ', &mut length) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let Some(length) = std::str::from_utf8(&length)
            .ok()
            .and_then(|l| l.trim_end().parse::<usize>().ok())
        else {
            if let Ok(mut bad) = malformed.lock() {
                bad.push(format!(
                    "bad frame length {:?}",
                    String::from_utf8_lossy(&length)
                ));
            }
            return;
        };
        let mut message = vec![0u8; length];
        if reader.read_exact(&mut message).is_err() {
            return;
        }
        let message = String::from_utf8_lossy(&message).into_owned();
        match parse(&message) {
            Some(parsed) => {
                if let Ok(mut all) = received.lock() {
                    all.push(parsed);
                }
            }
            None => {
                if let Ok(mut bad) = malformed.lock() {
                    bad.push(message);
                }
            }
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_shipper_writes() {
        let parsed = parse(
            "<14>1 2026-12-03T14:00:00.250Z berth web - - [meta sequenceId=\"12\"] hello there",
        )
        .unwrap();
        assert_eq!(parsed.priority, 14);
        assert_eq!(parsed.app, "web");
        assert_eq!(parsed.seq, Some(12));
        assert_eq!(parsed.text, "hello there");
        let note = parse("<44>1 2026-12-03T14:00:00.250Z h berth - logs-dropped - 3 gone").unwrap();
        assert_eq!((note.msgid.as_str(), note.seq), ("logs-dropped", None));
        assert_eq!(note.text, "3 gone");
        assert!(parse("hello").is_none());
    }
}
