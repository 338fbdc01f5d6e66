//! Where the shipped lines come from: init's journal stream (events and containers' output,
//! over the control socket, as `berthctl journal -f` reads it) and the kernel's log
//! (`/dev/kmsg`, kernel records only: init's own lines there are the events, shipped once
//! from the journal). Each source is a thread that reads as fast as lines come and hands
//! them to every receiver's queue; it never waits for a receiver.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_control::{Request, Response, StreamLine, VERSION};

use super::message::{Message, Source};
use super::queue::Shared;

/// Hands each line to every receiver, numbered in the order the sources gave them.
#[derive(Debug)]
pub struct Fanout {
    receivers: Vec<Arc<Shared>>,
    next_seq: AtomicU64,
}

impl Fanout {
    pub fn new(receivers: Vec<Arc<Shared>>) -> Fanout {
        Fanout {
            receivers,
            next_seq: AtomicU64::new(1),
        }
    }

    pub fn send(&self, source: Source, text: String) {
        let message = Arc::new(Message {
            seq: Some(self.next_seq.fetch_add(1, Ordering::Relaxed)),
            time: SystemTime::now(),
            source,
            text,
        });
        for receiver in &self.receivers {
            receiver.push(Arc::clone(&message));
        }
    }
}

/// A line from the journal stream as a shipped line's source and text.
pub fn journal_line(stream: StreamLine) -> (Source, String) {
    match stream.container {
        Some(name) => (Source::Container { name }, stream.line),
        None => {
            let kind = berth_event::parse_fields(&stream.line)
                .and_then(|mut fields| fields.remove("event"))
                .unwrap_or_else(|| "-".to_string());
            (Source::Event { kind }, stream.line)
        }
    }
}

/// Follows init's journal for good. The first connection takes what init kept since boot;
/// a reconnection (init dropped a reader that fell behind, which this one should never be)
/// takes only what is new, and says lines may be missing.
pub fn follow_journal(socket: &str, fanout: &Fanout) {
    let mut first = true;
    loop {
        let tail = if first { None } else { Some(0) };
        match read_journal(socket, tail, fanout) {
            Ok(()) => crate::emit(
                berth_event::Event::new("logs-failed")
                    .field("source", "journal")
                    .field("error", "init closed the journal stream"),
            ),
            Err(err) => crate::emit(
                berth_event::Event::new("logs-failed")
                    .field("source", "journal")
                    .field("error", err),
            ),
        }
        if !first {
            fanout.send(
                Source::Shipper,
                "the journal stream from init was interrupted: lines may be missing".to_string(),
            );
        }
        first = false;
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn read_journal(socket: &str, tail: Option<usize>, fanout: &Fanout) -> Result<(), String> {
    let mut stream =
        UnixStream::connect(socket).map_err(|e| format!("cannot connect to {socket}: {e}"))?;
    let request = berth_control::to_line(&berth_control::Envelope {
        v: VERSION,
        id: None,
        request: Request::Journal { tail, follow: true },
    });
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot ask init for the journal: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("no answer from init: {e}"))?;
    let response: Response =
        serde_json::from_str(line.trim()).map_err(|e| format!("a bad answer from init: {e}"))?;
    if !response.ok {
        return Err(response.error.unwrap_or_else(|| "init refused".to_string()));
    }
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .map_err(|e| format!("reading the journal: {e}"))?;
        if read == 0 {
            return Ok(());
        }
        if let Ok(stream_line) = serde_json::from_str::<StreamLine>(line.trim()) {
            let (source, text) = journal_line(stream_line);
            fanout.send(source, text);
        }
    }
}

/// One `/dev/kmsg` record (`PRI,SEQ,USEC,FLAGS;TEXT`, then continuation lines): the level
/// and text of a kernel record; none for records other facilities wrote (user space's, such
/// as init's) or a malformed one.
pub fn kernel_record(record: &str) -> Option<(u8, String)> {
    let (header, text) = record.split_once(';')?;
    let priority: u32 = header.split(',').next()?.parse().ok()?;
    if priority >> 3 != 0 {
        return None;
    }
    let text = text.lines().next().unwrap_or("").to_string();
    Some((u8::try_from(priority & 7).ok()?, text))
}

fn kernel_log_failed(err: std::io::Error) {
    crate::emit(
        berth_event::Event::new("logs-failed")
            .field("source", "/dev/kmsg")
            .field("error", err),
    );
}

/// Follows the kernel's log from its oldest kept record.
pub fn follow_kernel_log(fanout: &Fanout) {
    let mut kmsg = match std::fs::File::open("/dev/kmsg") {
        Ok(file) => file,
        Err(err) => return kernel_log_failed(err),
    };
    // One read is one record; records are 1 KiB at most, with their continuation lines.
    let mut buffer = vec![0u8; 16 << 10];
    loop {
        match kmsg.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => {
                let record = String::from_utf8_lossy(buffer.get(..n).unwrap_or_default());
                if let Some((level, text)) = kernel_record(&record) {
                    fanout.send(Source::Kernel { level }, text);
                }
            }
            // Records were overwritten before they were read: the next read goes on.
            Err(err) if err.raw_os_error() == Some(nix::libc::EPIPE) => {}
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return kernel_log_failed(err),
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn only_kernel_records_are_taken_from_kmsg() {
        assert_eq!(
            kernel_record("3,812,4015620,-;virtio_net: oops\n SUBSYSTEM=net\n"),
            Some((3, "virtio_net: oops".to_string()))
        );
        assert_eq!(kernel_record("14,813,4015700,-;berth event=x"), None);
        assert_eq!(kernel_record("6,1,2,-"), None);
        assert_eq!(kernel_record("x;y"), None);
    }

    #[test]
    fn journal_lines_become_events_or_container_lines() {
        let (source, text) = journal_line(StreamLine {
            v: 1,
            line: "berth event=container-exited container=a code=0".to_string(),
            container: None,
        });
        assert_eq!(
            source,
            Source::Event {
                kind: "container-exited".to_string()
            }
        );
        assert!(text.starts_with("berth event="));
        let (source, _) = journal_line(StreamLine {
            v: 1,
            line: "hello".to_string(),
            container: Some("web".to_string()),
        });
        assert_eq!(
            source,
            Source::Container {
                name: "web".to_string()
            }
        );
        let fanout = Fanout::new(vec![Arc::new(Shared::new(1 << 20))]);
        fanout.send(Source::Shipper, "a".to_string());
        fanout.send(Source::Shipper, "b".to_string());
        let taken = fanout
            .receivers
            .first()
            .unwrap()
            .take(Duration::ZERO, 1 << 20)
            .0;
        let seqs: Vec<_> = taken.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [Some(1), Some(2)]);
    }
}
