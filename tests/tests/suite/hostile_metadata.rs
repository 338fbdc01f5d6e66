//! A hostile EC2 metadata service (issue 23's hostile inputs): one whose user data never
//! ends, one that trickles its reply a byte at a time, and one whose session token would
//! inject a header. init asks the service in a helper child with one deadline and a bound on
//! the reply, so each costs a `config-invalid` event and the image's own manifest, never a
//! host that does not boot; a token that is not plain text is not sent back.
//!
//! x86_64 only: the client is arch-independent Rust over TCP, reached the same way on both.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_arch::Arch;
use berth_qemu::Machine;
use berth_tests::wait_seen;

/// How the service misbehaves.
#[derive(Debug, Clone, Copy)]
enum Service {
    /// A token, then user data that never ends.
    Endless,
    /// A token, then the reply's headers and a byte every half second, forever.
    Trickle,
    /// A token with a header in it; the user data to whoever asks without it.
    InjectingToken,
}

/// A manifest whose one container says where the manifest came from.
fn says(source: &str) -> String {
    format!(
        "[containers.from_{source}]\nimage = \"busybox:1.35\"\ncommand = [\"echo\", \"manifest-from-{source}\"]\n"
    )
}

/// Reads a request's head; its lines.
fn request_head(stream: &TcpStream) -> Vec<String> {
    let mut reader = BufReader::new(stream);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            return head;
        }
        head.push(line.trim_end().to_string());
    }
}

fn answer(mut stream: &TcpStream, service: Service, head: &[String]) {
    let request = head.first().cloned().unwrap_or_default();
    if request.starts_with("PUT /latest/api/token ") {
        let token = match service {
            Service::InjectingToken => "token\r\nX-Injected: yes",
            _ => "token-1234",
        };
        let _ = write!(
            stream,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{token}",
            token.len()
        );
        return;
    }
    match service {
        Service::Endless => {
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
            let chunk = vec![b'#'; 64 << 10];
            while stream.write_all(&chunk).is_ok() {}
        }
        Service::Trickle => {
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
            while stream.write_all(b"#").is_ok() {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        Service::InjectingToken => {
            let body = says("ec2");
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    }
}

/// Serves `service` on the loopback; returns its port and the request heads it got.
fn serve(service: Service) -> (u16, Arc<Mutex<Vec<Vec<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(stream) = stream else { continue };
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let head = request_head(&stream);
                if let Ok(mut log) = log.lock() {
                    log.push(head.clone());
                }
                answer(&stream, service, &head);
            });
        }
    });
    (port, seen)
}

fn boot(service: Service, test: &str) -> (Machine, Arc<Mutex<Vec<Vec<String>>>>) {
    let dir = berth_tests::log_dir(test);
    let image = berth_tests::build_image(Arch::X86_64, &says("image"), &dir)
        .unwrap_or_else(|e| panic!("{e}"));
    let (port, seen) = serve(service);
    let mut config = berth_tests::machine_config(Arch::X86_64, &image, &dir);
    config.user_net = false;
    config
        .extra_args
        .extend(berth_tests::ec2_machine_args(port));
    (berth_tests::start_to_ready(&config), seen)
}

/// The service's reply is refused or given up on, and the image's manifest runs.
fn falls_back_to_the_image(service: Service, test: &str, reason: &str) {
    let (machine, _) = boot(service, test);
    let c = format!("console: {}", machine.console_log().display());
    let invalid = wait_seen(&machine, r"^berth event=config-invalid source=ec2 ");
    assert!(invalid.contains(reason), "{invalid}; {c}");
    wait_seen(&machine, r"^from_image \| manifest-from-image$");
    assert!(
        !machine.console_text().contains("Kernel panic"),
        "init survived; {c}"
    );
}

#[test]
fn user_data_that_never_ends_is_refused_past_its_bound() {
    falls_back_to_the_image(Service::Endless, "metadata-endless", "bytes: refused");
}

#[test]
fn a_service_that_trickles_is_given_up_at_the_deadline() {
    falls_back_to_the_image(Service::Trickle, "metadata-trickle", "no answer in time");
}

#[test]
fn a_token_that_would_inject_a_header_is_not_sent_back() {
    let (machine, seen) = boot(Service::InjectingToken, "metadata-token");
    let c = format!("console: {}", machine.console_log().display());
    let source = wait_seen(&machine, r"^berth event=config ");
    assert!(source.contains("source=ec2 "), "{source}; {c}");
    wait_seen(&machine, r"^from_ec2 \| manifest-from-ec2$");
    let heads = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let get = heads
        .iter()
        .find(|h| {
            h.first()
                .is_some_and(|r| r.starts_with("GET /latest/user-data "))
        })
        .unwrap_or_else(|| panic!("no GET for the user data: {heads:?}; {c}"));
    assert!(
        get.iter()
            .all(|h| !h.starts_with("X-Injected") && !h.starts_with("X-aws-ec2-metadata-token:")),
        "the bad token went back: {get:?}; {c}"
    );
}
