//! The client against a fake init on a Unix socket in a temporary directory.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::thread::JoinHandle;

use berth_control::{parse_envelope, ContainerStatus, Envelope, Request, Response};

use super::*;

/// Serves one connection: reads the request line, lets `answer` talk, and hands back the
/// request line and every later line the client sent.
fn fake_init(
    socket: &Path,
    answer: impl FnOnce(&Envelope, &mut BufReader<std::os::unix::net::UnixStream>, &mut dyn Write)
        + Send
        + 'static,
) -> JoinHandle<(String, Vec<String>)> {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        let mut request = String::new();
        reader.read_line(&mut request).unwrap();
        let envelope = parse_envelope(&request).unwrap();
        answer(&envelope, &mut reader, &mut writer);
        // Said all it had to: the client sees the end of the connection.
        writer.shutdown(std::net::Shutdown::Write).unwrap();
        let rest = reader.lines().map_while(Result::ok).collect();
        (request, rest)
    })
}

struct Run {
    code: u8,
    stdout: String,
    stderr: String,
}

fn run_client(socket: &Path, args: &[&str], stdin: &'static [u8]) -> Run {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut all = vec!["--socket".to_string(), socket.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let code = run_with(
        "berthctl",
        Path::new("/nonexistent/control.sock"),
        all,
        Io {
            stdin: Box::new(stdin),
            stdout: &mut out,
            stderr: &mut err,
            terminal: false,
        },
    );
    Run {
        code,
        stdout: String::from_utf8(out).unwrap(),
        stderr: String::from_utf8(err).unwrap(),
    }
}

fn send(to: &mut dyn Write, line: &str) {
    to.write_all(line.as_bytes()).unwrap();
    to.write_all(b"\n").unwrap();
    to.flush().unwrap();
}

#[test]
fn exec_relays_stdin_and_output_and_exits_with_the_process_code() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let server = fake_init(&socket, |envelope, reader, writer| {
        let id = envelope.id.unwrap();
        // What an earlier session left on the serial port comes first.
        send(writer, r#"{"v":1,"stdout":"c3RhbGUK"}"#);
        send(writer, &format!(r#"{{"v":1,"id":{},"ok":true}}"#, id ^ 1));
        send(
            writer,
            &format!(r#"{{"v":1,"id":{id},"ok":true,"pid":812}}"#),
        );
        // The output comes once stdin is closed, so the test sees both in order.
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 0 && !line.contains("stdin_close") {}
        send(writer, r#"{"v":1,"stdout":"aGVsbG8g"}"#);
        send(writer, r#"{"v":1,"stderr":"b29wcwo="}"#);
        send(writer, r#"{"v":1,"stdout":"d29ybGQK"}"#);
        send(writer, r#"{"v":1,"exit":3}"#);
    });
    let run = run_client(
        &socket,
        &[
            "exec",
            "-i",
            "-u",
            "1000",
            "-e",
            "A=1",
            "-w",
            "/tmp",
            "web",
            "--",
            "sh",
            "-c",
            "cat; exit 3",
        ],
        b"hi\n",
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert_eq!(run.stdout, "hello world\n");
    assert_eq!(run.stderr, "oops\n");
    let (request, _) = server.join().unwrap();
    let envelope = parse_envelope(&request).unwrap();
    assert!(envelope.id.is_some(), "{request}");
    assert_eq!(
        envelope.request,
        Request::Exec {
            name: "web".to_string(),
            args: ["sh", "-c", "cat; exit 3"].map(str::to_string).to_vec(),
            interactive: true,
            tty: false,
            tty_size: None,
            user: Some("1000".to_string()),
            env: vec!["A=1".to_string()],
            workdir: Some("/tmp".to_string()),
        }
    );
    let value: serde_json::Value = serde_json::from_str(&request).unwrap();
    assert_eq!(value["cmd"], "exec", "{request}");
    assert_eq!(value["interactive"], true, "{request}");
}

#[test]
fn exec_sends_stdin_as_base64_then_closes_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let server = fake_init(&socket, |envelope, reader, writer| {
        let id = envelope.id.unwrap();
        send(writer, &format!(r#"{{"v":1,"id":{id},"ok":true,"pid":9}}"#));
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 0 && !line.contains("stdin_close") {}
        // Hand the client's lines back as the process' stdout, then end.
        let echoed = berth_control::encode_bytes(line.as_bytes());
        send(
            writer,
            &format!(r#"{{"v":1,"stdout":"{echoed}","exit":0}}"#),
        );
    });
    let run = run_client(&socket, &["exec", "-i", "web", "cat"], b"hi\n");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "{\"v\":1,\"stdin\":\"aGkK\"}\n{\"v\":1,\"stdin_close\":true}\n"
    );
    server.join().unwrap();
}

#[test]
fn exec_without_an_exit_line_fails_and_a_refusal_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let server = fake_init(&socket, |envelope, _, writer| {
        let id = envelope.id.unwrap();
        send(writer, &format!(r#"{{"v":1,"id":{id},"ok":true,"pid":9}}"#));
        send(writer, r#"{"v":1,"stdout":"aGkK"}"#);
    });
    let run = run_client(&socket, &["exec", "-t", "web", "sh"], b"");
    assert_eq!(run.code, 1);
    assert_eq!(run.stdout, "hi\n");
    assert_eq!(
        run.stderr,
        "berthctl: the connection to init ended before the process exited\n"
    );
    let (request, rest) = server.join().unwrap();
    assert!(request.contains("\"tty\":true"), "{request}");
    assert!(!request.contains("tty_size"), "no terminal here: {request}");
    assert!(rest.is_empty(), "no -i, no stdin: {rest:?}");

    std::fs::remove_file(&socket).unwrap();
    let server = fake_init(&socket, |envelope, _, writer| {
        let id = envelope.id.unwrap();
        send(
            writer,
            &format!(r#"{{"v":1,"id":{id},"ok":false,"error":"container `web` is not running"}}"#),
        );
    });
    let run = run_client(&socket, &["exec", "web", "true"], b"");
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (1, "berthctl: container `web` is not running\n")
    );
    server.join().unwrap();
}

#[test]
fn exit_codes_are_clamped_to_a_byte() {
    for (sent, expected) in [(300, 255), (-1, 0), (137, 137)] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("control.sock");
        let server = fake_init(&socket, move |envelope, _, writer| {
            let id = envelope.id.unwrap();
            send(writer, &format!(r#"{{"v":1,"id":{id},"ok":true,"pid":9}}"#));
            send(writer, &format!(r#"{{"v":1,"exit":{sent}}}"#));
        });
        assert_eq!(
            run_client(&socket, &["exec", "web", "x"], b"").code,
            expected
        );
        server.join().unwrap();
    }
}

#[test]
fn apply_sends_the_file_and_prints_the_changes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let manifest = dir.path().join("m.toml");
    std::fs::write(&manifest, "[containers.web]\nimage = \"busybox:1.35\"\n").unwrap();
    let server = fake_init(&socket, |envelope, _, writer| {
        let response = Response {
            id: envelope.id,
            changes: Some(Changes {
                added: vec!["a".to_string(), "b".to_string()],
                removed: vec![],
                changed: vec!["web".to_string()],
                unchanged: vec!["db".to_string()],
                next_boot: vec!["network".to_string()],
            }),
            ..Response::ok()
        };
        writer
            .write_all(berth_control::to_line(&response).as_bytes())
            .unwrap();
    });
    let run = run_client(&socket, &["apply", &manifest.display().to_string()], b"");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "added: a b\nremoved:\nchanged: web\nunchanged: db\nnext boot: network\n"
    );
    let (request, _) = server.join().unwrap();
    assert_eq!(
        parse_envelope(&request).unwrap().request,
        Request::Apply {
            manifest: "[containers.web]\nimage = \"busybox:1.35\"\n".to_string(),
            file: Some(manifest.display().to_string()),
        }
    );
}

#[test]
fn apply_of_a_missing_file_is_a_bad_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml").display().to_string();
    let run = run_client(&dir.path().join("control.sock"), &["apply", &missing], b"");
    assert_eq!(run.code, exit::USAGE);
    assert!(
        run.stderr
            .starts_with(&format!("berthctl: cannot read {missing}: ")),
        "{}",
        run.stderr
    );
}

#[test]
fn a_refused_apply_exits_1_with_init_s_message() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let manifest = dir.path().join("m.toml");
    std::fs::write(&manifest, "nonsense").unwrap();
    let server = fake_init(&socket, |envelope, _, writer| {
        let response = Response {
            id: envelope.id,
            ..Response::error("m.toml: expected `=`")
        };
        writer
            .write_all(berth_control::to_line(&response).as_bytes())
            .unwrap();
    });
    let run = run_client(&socket, &["apply", &manifest.display().to_string()], b"");
    assert_eq!(run.code, exit::REFUSED);
    assert_eq!(run.stderr, "berthctl: m.toml: expected `=`\n");
    server.join().unwrap();
}

#[test]
fn ps_shows_health_as_the_last_column() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let server = fake_init(&socket, |envelope, _, writer| {
        let container = |name: &str, health: Option<&str>| ContainerStatus {
            name: name.to_string(),
            image: "busybox:1.35".to_string(),
            state: "running".to_string(),
            pid: Some(81),
            restarts: 0,
            uptime_s: Some(75),
            last_exit: None,
            restart_policy: "always".to_string(),
            health: health.map(str::to_string),
            network: "bridge".to_string(),
            addr: Some("10.88.0.2".to_string()),
            stopped_by_operator: false,
            oom_kills: 0,
        };
        let response = Response {
            id: envelope.id,
            ..Response::containers(vec![
                container("web", Some("healthy")),
                container("db", None),
            ])
        };
        writer
            .write_all(berth_control::to_line(&response).as_bytes())
            .unwrap();
    });
    let run = run_client(&socket, &["ps"], b"");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec![
                "NAME", "STATE", "RESTARTS", "UPTIME", "PID", "IMAGE", "NETWORK", "ADDR", "HEALTH"
            ],
            vec![
                "web",
                "running",
                "0",
                "1m15s",
                "81",
                "busybox:1.35",
                "bridge",
                "10.88.0.2",
                "healthy"
            ],
            vec![
                "db",
                "running",
                "0",
                "1m15s",
                "81",
                "busybox:1.35",
                "bridge",
                "10.88.0.2",
                "-"
            ],
        ]
    );
    server.join().unwrap();
}

#[test]
fn ps_names_an_armed_watchdog_above_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let server = fake_init(&socket, |envelope, _, writer| {
        let response = Response {
            id: envelope.id,
            watchdog: Some(berth_control::WatchdogStatus {
                device: "/dev/watchdog0".to_string(),
                timeout_s: 5,
                feeding: true,
            }),
            ..Response::containers(Vec::new())
        };
        writer
            .write_all(berth_control::to_line(&response).as_bytes())
            .unwrap();
    });
    let run = run_client(&socket, &["ps"], b"");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout.lines().next(),
        Some("watchdog: /dev/watchdog0 timeout 5s fed")
    );
    server.join().unwrap();
}

#[test]
fn logs_since_goes_into_the_request_and_json_prints_the_raw_line() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let server = fake_init(&socket, |envelope, _, writer| {
        let response = Response {
            id: envelope.id,
            ..Response::lines(vec!["tick-1".to_string()])
        };
        writer
            .write_all(berth_control::to_line(&response).as_bytes())
            .unwrap();
    });
    let run = run_client(&socket, &["--json", "logs", "--since", "1h30m", "web"], b"");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("\"lines\":[\"tick-1\"]"),
        "{}",
        run.stdout
    );
    let (request, _) = server.join().unwrap();
    assert!(request.contains("\"since_secs\":5400"), "{request}");
}

#[test]
fn no_server_is_exit_3_and_a_silent_one_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let run = run_client(&socket, &["ps"], b"");
    assert_eq!(run.code, exit::NO_CONNECTION);
    assert!(
        run.stderr.starts_with("berthctl: cannot reach init at "),
        "{}",
        run.stderr
    );

    let server = fake_init(&socket, |_, reader, _| {
        // Says nothing until the client gives up and goes away.
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
    });
    let run = run_client(&socket, &["--timeout", "1", "ps"], b"");
    assert_eq!(run.code, exit::NO_CONNECTION);
    assert!(run.stderr.contains("no answer from init"), "{}", run.stderr);
    server.join().unwrap();
}

#[test]
fn no_terminal_has_no_size() {
    if !std::io::stdin().is_terminal() {
        assert_eq!(terminal::size(), None);
    }
}
