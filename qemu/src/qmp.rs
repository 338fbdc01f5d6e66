//! A QMP client: commands and their answers, and the events QEMU sends meanwhile.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long QEMU may take to answer a command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often to retry connecting while QEMU creates its socket.
const CONNECT_RETRY: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP at {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP closed the connection (QEMU has exited)")]
    Closed,
    #[error("QMP command `{command}` got no answer in {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("QMP command `{command}` failed: {error}")]
    Command { command: String, error: Value },
}

/// A connected QMP session. Events are collected by a reader thread.
#[derive(Debug)]
pub struct Qmp {
    stream: UnixStream,
    answers: Receiver<Value>,
    events: Arc<Mutex<Vec<Value>>>,
}

impl Qmp {
    /// Connects, retrying until `deadline` while QEMU starts, and leaves capability
    /// negotiation done.
    pub fn connect(path: &Path, deadline: Instant) -> Result<Qmp, QmpError> {
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(source) if Instant::now() >= deadline => {
                    return Err(QmpError::Connect {
                        path: path.display().to_string(),
                        source,
                    })
                }
                Err(_) => std::thread::sleep(CONNECT_RETRY),
            }
        };
        let (answer_tx, answers) = mpsc::channel();
        let events = Arc::new(Mutex::new(Vec::new()));
        let reader = BufReader::new(stream.try_clone()?);
        let events_sink = Arc::clone(&events);
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                let Ok(message) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if message.get("event").is_some() {
                    if let Ok(mut events) = events_sink.lock() {
                        events.push(message);
                    }
                } else if message.get("QMP").is_none() && answer_tx.send(message).is_err() {
                    break;
                }
            }
        });
        let mut qmp = Qmp {
            stream,
            answers,
            events,
        };
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs a command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let (Some(arguments), Some(object)) = (arguments, request.as_object_mut()) {
            object.insert("arguments".into(), arguments);
        }
        let mut line = request.to_string();
        line.push('\n');
        self.stream.write_all(line.as_bytes())?;
        let answer = match self.answers.recv_timeout(COMMAND_TIMEOUT) {
            Ok(answer) => answer,
            Err(RecvTimeoutError::Timeout) => {
                return Err(QmpError::Timeout {
                    command: command.into(),
                    timeout: COMMAND_TIMEOUT,
                })
            }
            Err(RecvTimeoutError::Disconnected) => return Err(QmpError::Closed),
        };
        match (answer.get("return"), answer.get("error")) {
            (Some(value), _) => Ok(value.clone()),
            (None, error) => Err(QmpError::Command {
                command: command.into(),
                error: error.cloned().unwrap_or(answer),
            }),
        }
    }

    /// Every event seen so far, in order.
    pub fn events(&self) -> Vec<Value> {
        self.events
            .lock()
            .map(|events| events.clone())
            .unwrap_or_default()
    }

    /// The `reason` of the last SHUTDOWN event (`guest-shutdown`, `guest-reset`, ...).
    pub fn shutdown_reason(&self) -> Option<String> {
        self.events()
            .iter()
            .rev()
            .find(|e| e.get("event").and_then(Value::as_str) == Some("SHUTDOWN"))
            .and_then(|e| e.pointer("/data/reason"))
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}
