//! The log shipper (`berth-apid ship-logs`): a daemon init starts and restarts when the
//! manifest's `[logs] forward` names receivers. It follows init's journal (events and
//! containers' output) and the kernel's log, and sends each line to every receiver as RFC
//! 5424 syslog or a JSON line, over TCP (octet counting), TLS or UDP.
//!
//! Each receiver has a queue of its own, bounded by `[logs] queue_size` bytes in memory:
//! a receiver that is down or slow costs that much and no more, and the readers never wait
//! for one, so init is never held by a receiver either. Past the bound the oldest lines go
//! and a `logs-dropped` note (and event) says how many.

mod message;
mod queue;
mod sender;
mod sources;

use std::process::ExitCode;
use std::sync::Arc;

use berth_event::Event;
use berth_manifest::{LogFormat, Transport};

use crate::emit;

pub fn run(manifest: &std::path::Path) -> ExitCode {
    let settings = match berth_manifest::Manifest::load(manifest) {
        Ok(m) => m.logs,
        Err(err) => {
            emit(Event::new("logs-failed").field("error", err));
            return ExitCode::FAILURE;
        }
    };
    if !settings.enabled() {
        emit(Event::new("logs-failed").field("error", "the manifest's [logs] forwards nowhere"));
        return ExitCode::FAILURE;
    }
    let tls = if settings
        .forward
        .iter()
        .any(|t| t.transport == Transport::TcpTls)
    {
        match crate::tls::client_config(std::path::Path::new(berth_manifest::LOGS_CA_PATH)) {
            Ok(config) => Some(config),
            Err(err) => {
                emit(Event::new("logs-failed").field("error", err));
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let capacity = usize::try_from(settings.queue_size).unwrap_or(usize::MAX);
    let json = settings.format == LogFormat::Json;
    let mut queues = Vec::new();
    let mut senders = Vec::new();
    for target in settings.forward {
        let queue = Arc::new(queue::Shared::new(capacity));
        queues.push(Arc::clone(&queue));
        let tls = tls.clone();
        senders.push(std::thread::spawn(move || {
            sender::run(&target, json, tls, &queue);
        }));
    }
    let fanout = Arc::new(sources::Fanout::new(queues));
    if settings.kernel {
        let fanout = Arc::clone(&fanout);
        std::thread::spawn(move || sources::follow_kernel_log(&fanout));
    }
    emit(Event::new("logs-shipping").field("receivers", senders.len()));
    sources::follow_journal(berth_control::SOCKET, &fanout);
    ExitCode::FAILURE
}
