//! `berth-probe control-abuse SOCKET CONTAINER`: a hostile client of init's control socket,
//! run from a root container that has the socket. It tries what a buggy or malicious client
//! can do and prints what init made of each as `key=value` lines:
//!
//! - `garbage`: bytes that are no request (NUL, invalid UTF-8, broken JSON) get an error
//!   answer, and init goes on.
//! - `oversized`: a 2 MiB line with no end: init answers that it is too long and closes.
//! - `slow_follower_ps_max_ms`: a `logs -f` and an `events -f` client that never reads, while
//!   other clients run `ps`: the longest `ps` took this long. `init_rss_kib` after it.
//! - `flood_served`/`flood_refused`: 100 connections held open at once (each an `events -f`).
//!   `ps_during_flood` is what a further client got; `ps_after_flood` once they closed.
//! - `exec_left`: processes left of an `exec` whose client left at once, once its command
//!   wrote to the closed relay; `zombies` under init.
//! - `init_fds_before`/`init_fds_after`: init's open descriptors before all this and after
//!   every connection closed (a leak shows as a difference).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use berth_control::{to_line, Envelope, Request, VERSION};

/// How long any read from init may take before the probe calls it unanswered.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How many connections the flood holds at once.
const FLOOD: usize = 100;

fn request_line(request: Request) -> String {
    to_line(&Envelope {
        v: VERSION,
        id: None,
        request,
    })
}

fn connect(socket: &str) -> std::io::Result<UnixStream> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    Ok(stream)
}

/// The first line init answers on `stream`, classified: `ok`, `error:<message>`, `closed`
/// or `timeout`.
fn first_answer(stream: &UnixStream) -> String {
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(0) => "closed".to_string(),
        Ok(_) if line.contains("\"ok\":true") => "ok".to_string(),
        Ok(_) => {
            let message = line
                .split("\"error\":\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("?");
            format!("error:{message}")
        }
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => "closed".to_string(),
        Err(_) => "timeout".to_string(),
    }
}

/// One `ps` on a new connection: its answer and how long it took.
fn ps(socket: &str) -> (String, Duration) {
    let started = Instant::now();
    let answer = match connect(socket) {
        Ok(mut stream) => match stream.write_all(request_line(Request::Ps).as_bytes()) {
            Ok(()) => first_answer(&stream),
            // A busy init answers and closes before it reads the request: the write fails
            // with EPIPE, and the answer waits to be read (as berthctl reads it).
            Err(err) => match first_answer(&stream) {
                answer if answer.starts_with("error:") => answer,
                _ => format!("write:{err}"),
            },
        },
        Err(err) => format!("connect:{err}"),
    };
    (answer, started.elapsed())
}

fn init_status(field: &str) -> String {
    std::fs::read_to_string("/proc/1/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|v| v.trim().trim_end_matches(" kB").to_string())
        .unwrap_or_default()
}

fn init_fds() -> usize {
    std::fs::read_dir("/proc/1/fd").map_or(0, Iterator::count)
}

fn garbage(socket: &str) -> String {
    let Ok(mut stream) = connect(socket) else {
        return "connect-failed".to_string();
    };
    let _ = stream.write_all(b"\x00\xff\xfe{\"v\":1,\"cmd\":\n");
    first_answer(&stream)
}

fn oversized(socket: &str) -> String {
    let Ok(mut stream) = connect(socket) else {
        return "connect-failed".to_string();
    };
    let chunk = vec![b'a'; 64 << 10];
    for _ in 0..32 {
        if stream.write_all(&chunk).is_err() {
            break;
        }
    }
    first_answer(&stream)
}

fn slow_follower(socket: &str, container: &str) {
    let followers: Vec<UnixStream> = [
        Request::Logs {
            name: container.to_string(),
            tail: Some(1000),
            follow: true,
            since_secs: None,
        },
        Request::Events {
            tail: Some(1000),
            follow: true,
        },
    ]
    .into_iter()
    .filter_map(|request| {
        let mut stream = connect(socket).ok()?;
        stream.write_all(request_line(request).as_bytes()).ok()?;
        Some(stream)
    })
    .collect();
    println!("slow_followers={}", followers.len());
    let until = Instant::now() + Duration::from_secs(8);
    let mut longest = Duration::ZERO;
    let mut failed = 0;
    while Instant::now() < until {
        let (answer, took) = ps(socket);
        longest = longest.max(took);
        if answer != "ok" {
            failed += 1;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("slow_follower_ps_max_ms={}", longest.as_millis());
    println!("slow_follower_ps_failed={failed}");
    println!("init_rss_kib={}", init_status("VmRSS:"));
    drop(followers);
}

fn flood(socket: &str) {
    let mut held = Vec::new();
    for _ in 0..FLOOD {
        let Ok(mut stream) = connect(socket) else {
            continue;
        };
        let request = request_line(Request::Events {
            tail: Some(0),
            follow: true,
        });
        // init may refuse a connection as busy and close it before reading the request:
        // the write then fails with EPIPE, and the refusal is still there to read.
        let _ = stream.write_all(request.as_bytes());
        held.push(stream);
    }
    let (mut served, mut refused, mut other) = (0, 0, Vec::new());
    for stream in &held {
        match first_answer(stream) {
            answer if answer == "ok" => served += 1,
            answer if answer.starts_with("error:busy") => refused += 1,
            answer => other.push(answer),
        }
    }
    println!("flood_served={served}");
    println!("flood_refused={refused}");
    println!("flood_other={}", other.join(","));
    println!("init_fds_during_flood={}", init_fds());
    println!("ps_during_flood={}", ps(socket).0);
    drop(held);
    // init notices the hang-ups on its next turns.
    std::thread::sleep(Duration::from_secs(1));
    println!("ps_after_flood={}", ps(socket).0);
}

/// Processes whose command line holds `needle`.
fn processes_with(needle: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
        })
        .count()
}

/// Zombies whose parent is init: children it has not reaped.
fn zombies_of_init() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // `pid (comm) state ppid ...`: the fields after the command's closing parenthesis.
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let mut fields = after.split_whitespace();
            fields.next() == Some("Z") && fields.next() == Some("1")
        })
        .count()
}

fn exec_and_leave(socket: &str, container: &str) {
    const MARK: &str = "sleep 4243";
    if let Ok(mut stream) = connect(socket) {
        let request = Request::Exec {
            name: container.to_string(),
            args: vec![
                "sh".to_string(),
                "-c".to_string(),
                format!("{MARK} & sleep 2; echo after-the-client-left; kill $!"),
            ],
            interactive: false,
            tty: false,
            tty_size: None,
            user: None,
            env: Vec::new(),
            workdir: None,
        };
        let _ = stream.write_all(request_line(request).as_bytes());
    }
    std::thread::sleep(Duration::from_secs(5));
    println!("exec_left={}", processes_with(MARK));
    println!("zombies={}", zombies_of_init());
}

pub fn run(socket: &str, container: &str) {
    let fds_before = init_fds();
    println!("init_fds_before={fds_before}");
    println!("garbage={}", garbage(socket));
    println!("oversized={}", oversized(socket));
    slow_follower(socket, container);
    flood(socket);
    exec_and_leave(socket, container);
    std::thread::sleep(Duration::from_secs(2));
    println!("init_fds_after={}", init_fds());
    println!("ps_at_end={}", ps(socket).0);
    println!("abuse=done");
}
